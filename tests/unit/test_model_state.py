"""Rows joining and leaving one model's batch (shared_core/model_state.py)."""

from __future__ import annotations

import pytest
import torch

from shared_core.model_state import ModelRows
from shared_core.testing import build_tiny_model, build_tiny_sliding_model, build_tiny_tokenizer

TOKENIZER = build_tiny_tokenizer()


def _ids(text: str) -> list[int]:
    return TOKENIZER(text)["input_ids"]


def _expected(model, ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([ids])).logits[0, -1]


@pytest.mark.parametrize("sliding", [False, True])
def test_rows_that_join_leave_and_trim_each_equal_an_unbatched_forward(sliding):
    """A long-running batch, joiners with shorter and longer prompts, a leaver, the dead
    columns trimmed: every row's logits equal a plain forward of its own tokens (a sliding
    window smaller than the rows' lengths checks the sliding layers' padding too)."""
    torch.manual_seed(0)
    vocab = len(TOKENIZER)
    if sliding:
        model = build_tiny_sliding_model(vocab, 0, sliding_window=6)
    else:
        model = build_tiny_model(vocab, 0)
    prompts = [_ids("User: hi there\nAssistant:"), _ids("Assistant:")]
    texts = [list(p) for p in prompts]
    with torch.inference_mode():
        batch = ModelRows.prefill(model, prompts, [1, 1], 0)
        tokens = torch.tensor([5, 9])
        for _ in range(3):
            batch.feed(tokens)
            for row, token in enumerate(tokens.tolist()):
                texts[row].append(token)
        joiner_prompts = [_ids("a"), _ids("User: a much longer prompt than the rest\nAssistant:")]
        joiners = ModelRows.prefill(model, joiner_prompts, [1, 1], 0)
        batch.merge(joiners)
        texts += [list(p) for p in joiner_prompts]
        for step in range(3):
            tokens = torch.tensor([7 + step, 11, 13, 17 + step])[: len(batch)]
            batch.feed(tokens)
            for row, token in enumerate(tokens.tolist()):
                texts[row].append(token)
        batch.select(torch.tensor([1, 2, 3]))  # the first row leaves
        texts = texts[1:]
        batch.trim()
        tokens = torch.tensor([19, 23, 29])
        batch.feed(tokens)
        for row, token in enumerate(tokens.tolist()):
            texts[row].append(token)
        for row, ids in enumerate(texts):
            torch.testing.assert_close(
                batch.logits[row, :vocab], _expected(model, ids)[:vocab], rtol=1e-4, atol=1e-4
            )


def test_leaving_rows_free_their_columns():
    """Once the longest rows leave, the columns only they used are dropped from the cache."""
    model = build_tiny_model(len(TOKENIZER), 0)
    long = _ids("User: " + "a very long prompt " * 6 + "\nAssistant:")
    with torch.inference_mode():
        batch = ModelRows.prefill(model, [long, _ids("hi")], [1, 1], 0)
        batch.feed(torch.tensor([5, 5]))
        before = batch.columns
        batch.select(torch.tensor([1]))
        assert batch.columns < before
        assert batch.cache.layers[0].keys.shape[2] == batch.columns
        assert int(batch.mask.sum()) == len(_ids("hi")) + 1
