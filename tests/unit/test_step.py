"""One decode step as a function of tensors (shared_core/step.py)."""

from __future__ import annotations

import random

import pytest
import torch

from shared_core.routers import resolve_router
from shared_core.step import RowSettings, RowState, StepRules, decode_step
from shared_core.testing import build_tiny_tokenizer
from shared_core.vocab import build_vocab_tables, end_token_ids

TOKENIZER = build_tiny_tokenizer()
VOCAB = build_vocab_tables(TOKENIZER, end_token_ids(TOKENIZER))
ROUTERS = [resolve_router(name) for name in ("p-punc", "h", "rand", "aligned", "base", "nudging")]


def _settings(rng: random.Random, routers: int) -> RowSettings:
    return RowSettings(
        router=rng.randrange(routers),
        gamma=rng.choice([0.05, 0.3, 0.9]),
        temperature=rng.choice([0.0, 0.7, 1.0, 1.3]),
        top_k=rng.choice([0, 0, 5, 50]),
        top_p=rng.choice([1.0, 1.0, 0.9, 0.5]),
        min_p=rng.choice([0.0, 0.0, 0.05]),
        min_new_tokens=rng.choice([0, 3]),
        content_aligned=rng.random() < 0.3,
        aligned_starts=rng.random() < 0.8,
        aligned_can_stop=rng.random() < 0.8,
    )


def _inputs(settings: list[RowSettings], seed: int, routers=ROUTERS):
    generator = torch.Generator().manual_seed(seed)
    rows = len(settings)
    width = VOCAB.size + 16  # a padded output layer: the step slices to the tokenizer
    base = torch.randn(rows, width, generator=generator) * 3
    aligned = torch.randn(rows, width, generator=generator) * 3
    state = RowState.build(
        [r * 7919 + seed for r in range(rows)], [r % 4 for r in range(rows)], settings, 0
    )
    state.owner = torch.rand(rows, generator=generator) < 0.5
    state.prev_token = torch.randint(0, VOCAB.size, (rows,), generator=generator)
    state.step = torch.randint(0, 6, (rows,), generator=generator)
    return StepRules.for_rows(VOCAB, routers, settings), state, base, aligned


@pytest.mark.parametrize("seed", range(4))
def test_each_row_chooses_what_it_chooses_alone(seed):
    """Rows of mixed routers, γ, temperatures, top-k/top-p/min-p, guards and steps in one
    step: every row's token and owner equal those of the same row decided on its own."""
    rng = random.Random(seed)
    settings = [_settings(rng, len(ROUTERS)) for _ in range(24)]
    rules, state, base, aligned = _inputs(settings, seed)
    together = decode_step(rules, state, base, aligned)
    for row in range(len(settings)):
        index = torch.tensor([row])
        one = state.select(index)
        alone_rules = StepRules.for_rows(VOCAB, ROUTERS, [settings[row]])
        alone = decode_step(alone_rules, one, base[index], aligned[index])
        assert int(alone.token) == int(together.token[row]), (row, settings[row])
        assert bool(alone.owner) == bool(together.owner[row])


@pytest.mark.parametrize("seed", range(3))
def test_static_shapes_choose_what_the_eager_step_chooses(seed):
    rng = random.Random(10 + seed)
    settings = [_settings(rng, len(ROUTERS)) for _ in range(32)]
    rules, state, base, aligned = _inputs(settings, seed)
    static = StepRules.for_rows(VOCAB, ROUTERS, settings, static_shapes=True)
    eager = decode_step(rules, state, base, aligned)
    compiled_like = decode_step(static, state, base, aligned)
    assert torch.equal(eager.token, compiled_like.token)
    assert torch.equal(eager.owner, compiled_like.owner)


def test_single_model_rows_take_their_model_s_draw_unguarded():
    settings = [RowSettings(router=0), RowSettings(router=1)]
    routers = [resolve_router("base"), resolve_router("aligned")]
    rules, state, base, aligned = _inputs(settings, 0, routers)
    state.step.zero_()  # the start guard would give every two-model row to the aligned model
    out = decode_step(rules, state, base, aligned)
    assert out.owner.tolist() == [True, False]
    alone_base = decode_step(
        StepRules.for_rows(VOCAB, routers, settings[:1]),
        state.select(torch.tensor([0])),
        base[:1],
        None,
    )
    assert int(alone_base.token) == int(out.token[0])


def test_finished_rows_get_the_pad_token_and_banned_tokens_never_win():
    settings = [RowSettings(router=0, gamma=0.5, min_new_tokens=10)] * 16
    rules, state, base, aligned = _inputs(settings, 0, [resolve_router("rand", 0.5)])
    rules = StepRules.for_rows(VOCAB, [resolve_router("rand", 0.5)], settings, pad_id=3)
    state.step.zero_()
    ends = torch.tensor(VOCAB.end_ids)
    base[:, ends] = 1e4  # the end token is by far the likeliest, but min_new_tokens bans it
    aligned[:, ends] = 1e4
    state.finished[::2] = True
    out = decode_step(rules, state, base, aligned)
    assert (out.token[::2] == 3).all()
    assert not VOCAB.is_end[out.token[1::2]].any()
    assert not VOCAB.never_generate[out.token[1::2]].any()
    assert not out.owner[1::2].any()  # the aligned model writes the first word


def test_a_proposed_token_stands_for_the_owner_s_draw():
    """Chunk mode's input: proposing the token the step would draw changes nothing; a token
    the rules forbid is not kept and the local draw takes its place."""
    rng = random.Random(5)
    settings = [_settings(rng, 3) for _ in range(16)]
    routers = ROUTERS[:3]
    rules, state, base, aligned = _inputs(settings, 7, routers)
    plain = decode_step(rules, state, base, aligned)
    by_base = plain.owner.clone()
    same = decode_step(rules, state, base, aligned, proposed=(plain.token, by_base))
    assert torch.equal(same.token, plain.token) and torch.equal(same.owner, plain.owner)
    assert same.proposal_kept is not None and bool(same.proposal_kept.all())
    never = int(VOCAB.never_generate.nonzero()[0])
    banned = decode_step(
        rules, state, base, aligned, proposed=(torch.full_like(plain.token, never), by_base)
    )
    assert banned.proposal_kept is not None and not bool(banned.proposal_kept.any())
    assert torch.equal(banned.token, plain.token)


def test_the_step_compiles_as_one_graph():
    """``fullgraph=True``: no graph break, so no host synchronisation inside the step."""
    rng = random.Random(1)
    settings = [_settings(rng, 3) for _ in range(8)]
    routers = ROUTERS[:3]
    rules = StepRules.for_rows(VOCAB, routers, settings, static_shapes=True)
    _, state, base, aligned = _inputs(settings, 1, routers)
    names = [f for f in state.__dataclass_fields__]

    def step(tensors, base, aligned):
        rows = RowState(**dict(zip(names, tensors, strict=True)))
        out = decode_step(rules, rows, base, aligned)
        return out.token, out.owner

    compiled = torch.compile(step, fullgraph=True, dynamic=False, backend="aot_eager")
    for n in (1, 2, 3):
        state.step = state.step + n
        args = (state.tensors(), base, aligned)
        expected = step(*args)
        got = compiled(*args)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
