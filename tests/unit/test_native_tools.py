"""Tool conversations through a chat template with native ``tools``/``tool_calls``/``tool``
support (aligned model), while the base model keeps the Hermes-style plain transcript."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared_core.prompts import (
    PlainTemplate,
    ToolPrompt,
    aligned_prompt_ids,
    base_prompt_ids,
    chat_template_ids,
    normalise_messages,
    template_supports_tools,
)
from shared_core.testing import ADD_TOOL as ADD
from shared_core.testing import CHATML_TEMPLATE, build_tiny_tokenizer
from shared_core.tools import (
    format_call,
    normalise_tools,
    tool_request,
    tool_response_message,
    tools_format_block,
    tools_system_block,
)

#: A small Qwen-like template: lists the tools, renders assistant tool calls and tool results.
TOOL_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{%- else %}{% set system = '' %}{% endif %}"
    "{%- if tools or system %}{{ '<|im_start|>system\\n' + system }}"
    "{%- if tools %}{{ '\\n# Tools' }}{% for tool in tools %}"
    "{{ '\\n' + tool['function']['name'] + ': ' }}{{ tool['function']['parameters'] | tojson }}"
    "{%- endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}"
    "{%- elif message['role'] == 'tool' %}"
    "{{ '<|im_start|>tool ' + message['name'] + ' ' + message['tool_call_id'] + '\\n' }}"
    "{{ message['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] }}"
    "{%- for call in message['tool_calls'] or [] %}"
    "{{ '\\n[' + call['id'] + '] ' + call['function']['name'] }}"
    "{{ call['function']['arguments'] | tojson }}"
    "{%- endfor %}{{ '<|im_end|>\\n' }}{% endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

#: Mentions tools but enforces user/assistant alternation (as Gemma-3's template does).
ALTERNATING_TEMPLATE = (
    "{# tools are ignored #}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate') }}{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

HISTORY: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "1+2?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}, "id": "c1"}],
    },
    {"role": "tool", "content": "3", "name": "add", "tool_call_id": "c1"},
]


def _tokenizer(template: str) -> Any:
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = template
    return tokenizer


def _native_ids(
    tokenizer: Any, mode: str = "auto", tools: list[dict[str, Any]] | None = None
) -> list[int]:
    """The template's own rendering of the history in the transformers tool format."""
    native = [
        {"role": "system", "content": f"Be brief.\n\n{tools_format_block(mode)}"},
        {"role": "user", "content": "1+2?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "add", "arguments": {"a": 1, "b": 2}},
                }
            ],
        },
        {"role": "tool", "content": "3", "name": "add", "tool_call_id": "c1"},
    ]
    ids = tokenizer.apply_chat_template(
        native, tools=tools or [ADD], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return list(ids)


def _hermes_messages(
    mode: str = "auto", tools: list[dict[str, Any]] | None = None
) -> list[dict[str, str]]:
    """The Hermes-style text conversation (what the base model and tool-less templates get)."""
    system = f"Be brief.\n\n{tools_system_block(normalise_tools(tools or [ADD]), mode)}"
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": "1+2?"},
        {"role": "assistant", "content": format_call("add", {"a": 1, "b": 2})},
        tool_response_message("3", name="add", call_id="c1"),
    ]


def test_tool_support_is_detected_by_rendering_a_probe() -> None:
    assert template_supports_tools(_tokenizer(TOOL_TEMPLATE))
    assert not template_supports_tools(_tokenizer(CHATML_TEMPLATE))  # never mentions tools
    assert not template_supports_tools(_tokenizer(ALTERNATING_TEMPLATE))  # rejects the tool role


@pytest.mark.parametrize("choice", ["auto", "required"])
def test_aligned_prompt_is_the_templates_native_rendering(choice: str) -> None:
    tokenizer = _tokenizer(TOOL_TEMPLATE)
    request = tool_request([ADD], choice)
    prompt = request.messages(HISTORY)
    assert isinstance(prompt, ToolPrompt)
    ids = aligned_prompt_ids(tokenizer, prompt)
    assert ids == _native_ids(tokenizer, request.mode)
    text = tokenizer.decode(ids)
    assert "<|im_start|>tool add c1\n3<|im_end|>" in text
    assert '[c1] add{"a": 1, "b": 2}' in text
    assert "<tool_call>\n" in text and "# Tools\nadd:" in text  # format stated, tools listed
    assert "<tools>" not in text  # the template lists the tools, not the Hermes block
    # the base model keeps the Hermes-style plain transcript
    assert list(prompt) == _hermes_messages(request.mode)
    hermes = normalise_messages(_hermes_messages(request.mode))
    base_ids = base_prompt_ids(tokenizer, normalise_messages(prompt), PlainTemplate())
    assert base_ids == base_prompt_ids(tokenizer, hermes, PlainTemplate())
    assert "User: <tool_response>" in PlainTemplate().render(hermes)


def test_templates_without_tool_support_keep_the_hermes_text() -> None:
    for template in (CHATML_TEMPLATE, ALTERNATING_TEMPLATE):
        tokenizer = _tokenizer(template)
        prompt = tool_request([ADD]).messages(HISTORY)
        hermes = chat_template_ids(tokenizer, normalise_messages(_hermes_messages()))
        assert aligned_prompt_ids(tokenizer, prompt) == hermes


def test_conversations_without_tools_are_plain_lists() -> None:
    prompt = tool_request(None).messages([{"role": "user", "content": "hi"}])
    assert type(prompt) is list
    tokenizer = _tokenizer(TOOL_TEMPLATE)
    assert aligned_prompt_ids(tokenizer, prompt) == chat_template_ids(
        tokenizer, normalise_messages(prompt)
    )


def test_rendering_again_keeps_the_structure() -> None:
    """Adapters render the history first, then add the bound tools."""
    tokenizer = _tokenizer(TOOL_TEMPLATE)
    history = tool_request(None).messages(HISTORY)
    assert isinstance(history, ToolPrompt) and history.tools is None
    prompt = tool_request([ADD]).messages(history)
    assert aligned_prompt_ids(tokenizer, prompt) == _native_ids(tokenizer)


@pytest.fixture(scope="module")
def native_pair_paths(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny pair (2048-token window) whose aligned tokenizer has ``TOOL_TEMPLATE``."""
    from transformers import AutoTokenizer

    from shared_core.testing import save_tiny_pair

    base, aligned = save_tiny_pair(tmp_path_factory.mktemp("native_tools"), context_window=2048)
    tokenizer = AutoTokenizer.from_pretrained(str(aligned))
    tokenizer.chat_template = TOOL_TEMPLATE
    tokenizer.save_pretrained(str(aligned))
    return base, aligned


def test_langchain_tool_history_reaches_the_engine_natively(
    native_pair_paths: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_core.utils.function_calling import convert_to_openai_tool

    from langchain_baco import ChatBaco

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    base, aligned = map(str, native_pair_paths)
    llm = ChatBaco(base_model=base, aligned_model=aligned, max_tokens=8, seed=0)
    engine = llm._get_engine()
    assert template_supports_tools(engine.pair.tokenizer)
    prepared = []
    prepare = engine.prepare

    def spy(prompt: Any, index: int = 0, **kwargs: Any) -> Any:
        prepared.append(prepare(prompt, index, **kwargs))
        return prepared[-1]

    monkeypatch.setattr(engine, "prepare", spy)
    history = [
        SystemMessage("Be brief."),
        HumanMessage("1+2?"),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1"}]),
        ToolMessage("3", tool_call_id="c1", name="add"),
    ]
    llm.bind_tools([add]).invoke(history)
    (sample,) = prepared
    tokenizer = engine.pair.tokenizer
    schema = [convert_to_openai_tool(add)]
    assert sample.aligned_ids == _native_ids(tokenizer, tools=schema)
    hermes = normalise_messages(_hermes_messages(tools=schema))
    pair = engine.pair
    assert sample.base_ids == base_prompt_ids(pair.base_tokenizer, hermes, pair.base_template)


def test_llama_index_tool_history_is_native() -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock

    from llama_index_baco.base import to_engine_messages

    call = ToolCallBlock(tool_call_id="c1", tool_name="add", tool_kwargs={"a": 1, "b": 2})
    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content="Be brief."),
        ChatMessage(role=MessageRole.USER, content="1+2?"),
        ChatMessage(role=MessageRole.ASSISTANT, blocks=[call]),
        ChatMessage(
            role=MessageRole.TOOL,
            content="3",
            additional_kwargs={"tool_call_id": "c1", "name": "add"},
        ),
    ]
    prompt = tool_request([ADD]).messages(to_engine_messages(messages))
    tokenizer = _tokenizer(TOOL_TEMPLATE)
    assert aligned_prompt_ids(tokenizer, prompt) == _native_ids(tokenizer)
    assert list(prompt) == _hermes_messages()
