"""Message normalisation and prompt rendering (shared_core/prompts.py)."""

from __future__ import annotations

import pytest

from shared_core.prompts import (
    PlainTemplate,
    base_prompt_ids,
    chat_template_ids,
    fold_system,
    normalise_messages,
    start_with_user,
)
from shared_core.testing import build_tiny_tokenizer

TOKENIZER = build_tiny_tokenizer()
GEMMA_LIKE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}"
    "<turn>{{ m['role'] }}\n{{ m['content'] }}</turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<turn>assistant\n{% endif %}"
)


def test_string_is_one_user_message():
    assert normalise_messages("hi") == [{"role": "user", "content": "hi"}]


def test_consecutive_roles_merge_and_aliases_map():
    msgs = [
        {"role": "system", "content": "A"},
        {"role": "developer", "content": "B"},
        {"role": "human", "content": "q1"},
        {"role": "user", "content": "q2"},
        {"role": "ai", "content": "a"},
    ]
    assert normalise_messages(msgs) == [
        {"role": "system", "content": "A\n\nB"},
        {"role": "user", "content": "q1\n\nq2"},
        {"role": "assistant", "content": "a"},
    ]


@pytest.mark.parametrize(
    ("prompt", "error", "match"),
    [
        ("", ValueError, "empty"),
        ("   ", ValueError, "empty"),
        ([], ValueError, "empty"),
        ([{"role": "wizard", "content": "x"}], ValueError, "allowed roles"),
        ([{"role": "user", "content": 3}], TypeError, "content must be a string"),
        ([{"role": "user", "content": ""}], ValueError, "every message is empty"),
        (42, TypeError, "must be a string or a list"),
        ({"role": "user", "content": "x"}, TypeError, "must be a string or a list"),
        (["not a mapping"], TypeError, "must be a mapping"),
    ],
)
def test_bad_prompts(prompt, error, match):
    with pytest.raises(error, match=match):
        normalise_messages(prompt)


def test_error_names_prompt_index():
    with pytest.raises(ValueError, match="prompt 3"):
        normalise_messages("", index=3)


def test_fold_system_and_start_with_user():
    msgs = [{"role": "system", "content": "S"}, {"role": "assistant", "content": "A"}]
    assert fold_system(msgs) == [
        {"role": "user", "content": "S"},
        {"role": "assistant", "content": "A"},
    ]
    assert start_with_user([{"role": "assistant", "content": "A"}])[0] == {
        "role": "user",
        "content": "",
    }


def test_chat_template_tokenized_once_without_double_bos():
    msgs = normalise_messages([{"role": "user", "content": "Hello"}])
    ids = chat_template_ids(TOKENIZER, msgs)
    expected = TOKENIZER.apply_chat_template(
        msgs, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert ids == list(expected)
    assert TOKENIZER.decode(ids) == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"


def test_strict_template_gets_system_folded_and_user_first():
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = GEMMA_LIKE
    msgs = normalise_messages(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": "Name a color."},
        ]
    )
    text = tokenizer.decode(chat_template_ids(tokenizer, msgs))
    assert text.startswith("<turn>user\nBe brief.</turn>")
    assert text.endswith("<turn>user\nName a color.</turn>\n<turn>assistant\n")


def test_missing_chat_template_is_a_clear_error():
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        chat_template_ids(tokenizer, [{"role": "user", "content": "x"}])


def test_plain_template():
    template = PlainTemplate()
    msgs = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Name a color."},
    ]
    assert template.render(msgs) == (
        "Be kind.\n\nUser: Hi\nAssistant: Hello\nUser: Name a color.\nAssistant:"
    )
    assert template.render(msgs[1:2]) == "User: Hi\nAssistant:"
    assert template.stop_strings == ("\nUser:", "\nAssistant:")
    ids = base_prompt_ids(TOKENIZER, msgs[1:2], template)
    assert TOKENIZER.decode(ids) == "User: Hi\nAssistant:"
