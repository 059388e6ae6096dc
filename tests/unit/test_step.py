"""One decode step as a function of tensors (shared_core/step.py)."""

from __future__ import annotations

import pytest
import torch

from shared_core.routers import resolve_router
from shared_core.step import RowState, StepRules, decode_step
from shared_core.testing import build_tiny_tokenizer
from shared_core.vocab import build_vocab_tables, end_token_ids

TOKENIZER = build_tiny_tokenizer()
VOCAB = build_vocab_tables(TOKENIZER, end_token_ids(TOKENIZER))


def _inputs(rows: int, seed: int) -> tuple[RowState, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    width = VOCAB.size + 16  # a padded output layer: the step slices to the tokenizer
    base = torch.randn(rows, width, generator=generator) * 3
    aligned = torch.randn(rows, width, generator=generator) * 3
    state = RowState.start(
        torch.arange(rows, dtype=torch.long) * 7919 + seed, torch.arange(rows) % 4, 0
    )
    state.owner = torch.rand(rows, generator=generator) < 0.5
    state.prev_token = torch.randint(0, VOCAB.size, (rows,), generator=generator)
    return state, base, aligned


@pytest.mark.parametrize("router", ["p-punc", "h", "rand", "aligned", "base"])
@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_static_shapes_choose_what_the_eager_step_chooses(router, top_p):
    rules = StepRules(VOCAB, resolve_router(router), top_p=top_p, top_k=50, min_new_tokens=3)
    for seed in range(4):
        state, base, aligned = _inputs(32, seed)
        for step in (1, 2, 5):
            eager = decode_step(rules, state, base, aligned, step, first_step=False)
            static = decode_step(
                rules.with_static_shapes(),
                state,
                base,
                aligned,
                torch.tensor(step),
                first_step=False,
            )
            assert torch.equal(eager.token, static.token)
            assert torch.equal(eager.owner, static.owner)


def test_finished_rows_get_the_pad_token_and_banned_tokens_never_win():
    rules = StepRules(VOCAB, resolve_router("rand", 0.5), pad_id=3, min_new_tokens=10)
    state, base, aligned = _inputs(16, 0)
    ends = torch.tensor(VOCAB.end_ids)
    base[:, ends] = 1e4  # the end token is by far the likeliest, but min_new_tokens bans it
    aligned[:, ends] = 1e4
    state.finished[::2] = True
    out = decode_step(rules, state, base, aligned, 0, first_step=True)
    assert (out.token[::2] == 3).all()
    assert not VOCAB.is_end[out.token[1::2]].any()
    assert not VOCAB.never_generate[out.token[1::2]].any()
    assert not out.owner[1::2].any()  # the aligned model writes the first word


def test_the_step_compiles_as_one_graph():
    """``fullgraph=True``: no graph break, so no host synchronisation inside the step."""
    rules = StepRules(VOCAB, resolve_router("p-punc", 0.5), top_p=0.9).with_static_shapes()
    state, base, aligned = _inputs(8, 1)

    def step(seeds, sample_index, owner, prev, finished, base, aligned, step):
        rows = RowState(seeds, sample_index, owner, prev, finished)
        out = decode_step(rules, rows, base, aligned, step, first_step=False)
        return out.token, out.owner

    compiled = torch.compile(step, fullgraph=True, dynamic=False, backend="aot_eager")
    for n in (1, 2, 3):
        args = (*state.tensors(), base, aligned, torch.tensor(n))
        expected = step(*args)
        got = compiled(*args)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
