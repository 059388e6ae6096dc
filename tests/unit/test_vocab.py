"""Vocabulary tables (shared_core/vocab.py)."""

from __future__ import annotations

from shared_core.testing import build_tiny_tokenizer
from shared_core.vocab import build_vocab_tables, end_token_ids

TOKENIZER = build_tiny_tokenizer()
VOCAB = TOKENIZER.get_vocab()


def table_value(tables, name: str, token: str) -> bool:
    return bool(getattr(tables, name)[VOCAB[token]])


def test_tables_classify_tokens():
    ends = end_token_ids(TOKENIZER)
    tables = build_vocab_tables(TOKENIZER, ends)
    assert tables.size == len(TOKENIZER)
    assert table_value(tables, "is_word_start", "Ġthe")
    assert table_value(tables, "is_function_word", "Ġthe")
    assert table_value(tables, "is_punct", ",")
    assert table_value(tables, "is_word_start", ",")
    assert table_value(tables, "is_punct", "Ċ")
    assert table_value(tables, "ends_with_space", "Ċ")
    assert not table_value(tables, "is_word_start", "e")
    assert not table_value(tables, "is_function_word", "Ġsea")
    assert table_value(tables, "is_special", "<|im_start|>")
    assert table_value(tables, "never_generate", "<|im_start|>")
    assert table_value(tables, "never_generate", "<|pad|>")
    assert not table_value(tables, "never_generate", "<|im_end|>")
    assert table_value(tables, "is_end", "<|im_end|>")


def test_end_ids_include_eos_and_end_of_turn():
    ends = end_token_ids(TOKENIZER, [None])
    assert VOCAB["<|im_end|>"] in ends
    assert VOCAB["<|endoftext|>"] not in ends  # it is this tokenizer's BOS


def test_bos_is_never_generated():
    tables = build_vocab_tables(TOKENIZER, end_token_ids(TOKENIZER))
    assert table_value(tables, "never_generate", "<|endoftext|>")
