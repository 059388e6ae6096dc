"""Incremental detokenisation (shared_core/streaming.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared_core.streaming import IncrementalDecoder, ResponseText
from shared_core.testing import build_tiny_tokenizer

TOKENIZER = build_tiny_tokenizer()
TEXTS = ["Café déjà vu 東京 😀!", "plain words and spaces", "  leading space\nnew line ü"]


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_concatenate_to_full_decode_and_never_split_characters(text):
    ids = TOKENIZER(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text) // 4  # multi-byte characters are split across byte tokens
    decoder = IncrementalDecoder(TOKENIZER)
    deltas = [decoder.push(i) for i in ids]
    deltas.append(decoder.flush())
    assert "".join(deltas) == TOKENIZER.decode(ids)
    assert all("\ufffd" not in d for d in deltas)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(TOKENIZER) - 1), max_size=30))
def test_random_token_sequences_decode_like_full_decoding(ids):
    decoder = IncrementalDecoder(TOKENIZER)
    text = "".join(decoder.push(i) for i in ids) + decoder.flush()
    assert text == TOKENIZER.decode(ids)


def test_response_text_trims_leading_whitespace_and_applies_stops():
    ids = TOKENIZER(" Hello world\nUser: more", add_special_tokens=False)["input_ids"]
    response = ResponseText(TOKENIZER, ("\nUser:",))
    deltas = [response.push(i) for i in ids]
    deltas.append(response.finish())
    assert response.stopped
    assert response.text == "Hello world" == "".join(deltas)
