"""Per-row random streams and token sampling (shared_core/sampling.py)."""

from __future__ import annotations

import pytest
import torch

from shared_core.sampling import row_streams, row_uniforms, sample_tokens, sampling_probs


def uniforms(count: int, seed: int = 7, step: int = 0, purpose: int = 0) -> torch.Tensor:
    seeds = torch.full((count,), seed, dtype=torch.long)
    return row_uniforms(seeds, torch.arange(count), step, purpose)


def streams(count: int, seed: int = 7, step: int = 0, purpose: int = 0) -> torch.Tensor:
    seeds = torch.full((count,), seed, dtype=torch.long)
    return row_streams(seeds, torch.arange(count), step, purpose)


def test_uniforms_are_open_unit_interval_and_uniform():
    u = uniforms(200_000)
    assert u.min() > 0.0 and u.max() < 1.0
    assert u.mean().item() == pytest.approx(0.5, abs=0.005)
    assert u.var().item() == pytest.approx(1 / 12, abs=0.002)
    histogram = torch.histc(u.float(), bins=10, min=0, max=1) / u.numel()
    assert torch.allclose(histogram, torch.full((10,), 0.1), atol=0.005)


def test_streams_depend_only_on_seed_sample_step_purpose():
    a = uniforms(64)
    assert torch.equal(a, uniforms(64))
    # Row i's draw does not depend on the batch it sits in.
    seeds = torch.full((3,), 7, dtype=torch.long)
    subset = row_uniforms(seeds, torch.tensor([5, 40, 2]), 0, 0)
    assert torch.equal(subset, a[[5, 40, 2]])
    for other in (uniforms(64, seed=8), uniforms(64, step=1), uniforms(64, purpose=1)):
        assert not torch.equal(a, other)
        assert abs(torch.corrcoef(torch.stack([a, other]))[0, 1]) < 0.35


def test_sampling_matches_distribution_and_never_draws_zero_probability():
    probs = torch.zeros(5000)
    probs[[3, 1500, 4999]] = torch.tensor([0.2, 0.5, 0.3])
    tokens = sample_tokens(probs.expand(20_000, -1).contiguous(), streams(20_000))
    counts = torch.bincount(tokens, minlength=5000).float() / 20_000
    assert set(tokens.unique().tolist()) == {3, 1500, 4999}
    assert counts[[3, 1500, 4999]].tolist() == pytest.approx([0.2, 0.5, 0.3], abs=0.015)


def test_top_p_keeps_the_nucleus_renormalised():
    probs = torch.tensor([0.05, 0.6, 0.25, 0.1])
    tokens = sample_tokens(probs.expand(50_000, -1).contiguous(), streams(50_000), top_p=0.8)
    counts = torch.bincount(tokens, minlength=4).float() / 50_000
    assert counts.tolist() == pytest.approx([0.0, 0.6 / 0.85, 0.25 / 0.85, 0.0], abs=0.01)


def test_top_p_wider_than_partial_sort():
    probs = torch.full((3000,), 1 / 3000)
    tokens = sample_tokens(probs.expand(5000, -1).contiguous(), streams(5000), top_p=0.9)
    assert tokens.unique().numel() > 1900  # the nucleus holds ~2700 tokens, not 256


def _nucleus_rows() -> torch.Tensor:
    """Rows of 5000 tokens: peaked ones (small nucleus), flat ones (a nucleus of thousands)
    and ones with many equal probabilities (bf16-like logits) at the nucleus' edge."""
    torch.manual_seed(3)
    scale = torch.tensor([6.0, 3.0, 1.0, 0.3, 0.05, 0.0]).repeat(8).unsqueeze(-1)
    logits = torch.randn(48, 5000) * scale
    logits[::3] = logits[::3].to(torch.bfloat16).float()
    return torch.softmax(logits, -1)


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.99])
def test_static_shape_nucleus_draws_the_eager_tokens(top_p):
    probs = _nucleus_rows()
    tokens = [sample_tokens(probs, streams(48, step=s), top_p=top_p) for s in range(4)]
    static = [
        sample_tokens(probs, streams(48, step=s), top_p=top_p, static_shapes=True) for s in range(4)
    ]
    assert all(torch.equal(a, b) for a, b in zip(tokens, static, strict=True))
    # both branches ran: some rows' nucleus fits the first 256 tokens, some do not
    ranked = torch.sort(probs, descending=True).values
    nucleus = ((ranked.cumsum(-1) - ranked) < top_p).sum(-1)
    assert nucleus.min() < 256 < nucleus.max()
    # a row draws the same token alone (the eager path widens only the rows that need it)
    alone = torch.cat(
        [sample_tokens(probs[i : i + 1], streams(48)[i : i + 1], top_p=top_p) for i in range(48)]
    )
    assert torch.equal(alone, tokens[0])


@pytest.mark.parametrize("static_shapes", [False, True])
def test_equal_probabilities_at_the_nucleus_edge_are_all_kept(static_shapes):
    # 200 tokens at 0.004 (0.8), 100 at 0.001 (0.1), 1000 at 0.0001: top_p 0.85 ends inside
    # the 0.001 group, which straddles the first 256 tokens; every token of it is kept
    probs = torch.cat(
        [torch.full((200,), 0.004), torch.full((100,), 0.001), torch.full((1000,), 1e-4)]
    )
    count = 12_000
    tokens = sample_tokens(
        probs.expand(count, -1).contiguous(),
        streams(count),
        top_p=0.85,
        static_shapes=static_shapes,
    )
    drawn = torch.bincount(tokens, minlength=1300).float() / count
    assert drawn[300:].sum() == 0
    assert (drawn[200:300] > 0).all()
    assert drawn[:200].sum().item() == pytest.approx(0.8 / 0.9, abs=0.015)


def test_temperature_top_k_min_p():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    hot = sampling_probs(logits, temperature=2.0)
    assert torch.allclose(hot, torch.softmax(logits / 2, -1))
    top2 = sampling_probs(logits, temperature=1.0, top_k=2)
    assert top2[0, 2:].sum() == 0 and top2.sum().item() == pytest.approx(1.0)
    minp = sampling_probs(logits, temperature=1.0, min_p=0.3)
    p = torch.softmax(logits, -1)
    assert torch.equal(minp[0] > 0, p[0] >= 0.3 * p[0, 0])


def test_raw_probs_reused_only_without_transforms():
    logits = torch.randn(2, 10)
    raw = torch.softmax(logits, -1)
    assert sampling_probs(logits, temperature=1.0, raw_probs=raw) is raw
    assert sampling_probs(logits, temperature=0.5, raw_probs=raw) is not raw


def test_full_vocabulary_draw_matches_a_peaked_distribution():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(2500) * 2.5, -1)  # three blocks, the last one partial
    tokens = sample_tokens(probs.expand(20_000, -1).contiguous(), streams(20_000))
    counts = torch.bincount(tokens, minlength=2500).float() / 20_000
    top = probs.topk(20).indices
    assert torch.allclose(counts[top], probs[top], atol=0.015)
    blocks = [slice(0, 1024), slice(1024, 2048), slice(2048, 2500)]
    for block in blocks:  # the mass of each block, incl. the partial last one
        assert counts[block].sum().item() == pytest.approx(probs[block].sum().item(), abs=0.015)


def test_draw_is_robust_to_rounding_level_changes():
    """A seeded draw must not depend on float noise from another batch shape or kernel."""
    torch.manual_seed(1)
    logits = torch.randn(128, 262_144) * 4
    probs = torch.softmax(logits, -1)
    noisy = torch.softmax(logits + 1e-5 * torch.randn_like(logits), -1)
    changed = 0
    for step in range(8):
        rows = streams(128, seed=3, step=step)
        changed += (sample_tokens(probs, rows) != sample_tokens(noisy, rows)).sum().item()
    # Inverse-CDF sampling (the previous sampler) changed 14 of these 1024 draws.
    assert changed <= 1


def test_a_sample_keeps_its_token_in_any_batch():
    torch.manual_seed(2)
    probs = torch.softmax(torch.randn(16, 5000) * 2, -1)
    rows = streams(16, seed=11)
    together = sample_tokens(probs, rows)
    alone = torch.cat([sample_tokens(probs[i : i + 1], rows[i : i + 1]) for i in range(16)])
    assert torch.equal(together, alone)
