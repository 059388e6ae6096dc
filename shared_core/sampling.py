"""Token sampling with per-row random streams.

Every sample of a request owns a counter-based random stream keyed by
``(seed, sample_index, step, purpose)``: the uniforms are a hash of those integers computed
on the device. A sample's tokens therefore depend only on its prompt, settings and seed,
never on batch size, batch order or which other requests share the batch.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
#: Purposes of a random draw; each gets an independent stream.
BASE_DRAW, ALIGNED_DRAW, ROUTER_DRAW = 0, 1, 2


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit avalanche hash (lowbias32) on int64 tensors holding values < 2**32."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    x = x ^ (x >> 16)
    return x


def row_uniforms(
    seeds: torch.Tensor, sample_index: torch.Tensor, step: int, purpose: int
) -> torch.Tensor:
    """One uniform in (0, 1) per row from its ``(seed, sample, step, purpose)`` stream."""
    h = _mix32(seeds ^ (seeds >> 32))
    h = _mix32(h ^ _mix32(sample_index + 0x9E3779B9))
    h = _mix32(h ^ _mix32(torch.full_like(h, step * 4 + purpose + 0x85EBCA6B)))
    h2 = _mix32(h ^ 0x27D4EB2F)
    # 53 random bits -> float64 in (0, 1); never exactly 0 or 1.
    bits = ((h << 21) ^ (h2 & 0x1FFFFF)).to(torch.float64)
    return ((bits + 0.5) / float(2**53)).clamp(1e-12, 1 - 1e-12)


def sampling_probs(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_k: int = 0,
    min_p: float = 0.0,
    raw_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Probabilities after temperature, top-k and min-p (float32, ``[batch, vocab]``).

    ``raw_probs`` (the temperature-1 softmax, already computed for the router signals) is
    reused when no transform changes it.
    """
    if raw_probs is not None and temperature == 1.0 and top_k == 0 and min_p == 0.0:
        return raw_probs
    scores = logits.float()
    if temperature != 1.0:
        scores = scores / temperature
    if 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if min_p > 0:
        threshold = probs.max(-1, keepdim=True).values * min_p
        probs = probs.masked_fill(probs < threshold, 0.0)
    return probs


def sample_tokens(
    probs: torch.Tensor, uniforms: torch.Tensor, *, top_p: float = 1.0
) -> torch.Tensor:
    """Draw one token per row by inverting the row's CDF at its uniform.

    With ``top_p < 1`` only the nucleus (smallest set of most likely tokens whose mass reaches
    ``top_p``) is kept; it is found with a partial sort that widens only when needed.
    """
    uniforms = uniforms.to(probs.device)
    if top_p < 1.0:
        return _sample_nucleus(probs, uniforms, top_p)
    return _sample_full(probs, uniforms)


def _sample_full(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling over the whole vocabulary in two levels (blocks, then tokens).

    Cumulative sums run in float32 inside blocks and in float64 across blocks, so the draw is
    accurate for large vocabularies without a float64 copy of the whole distribution. A token
    of probability zero is never drawn.
    """
    batch, vocab = probs.shape
    block = 1024
    blocks = -(-vocab // block)
    padded = torch.nn.functional.pad(probs, (0, blocks * block - vocab))
    inner = padded.view(batch, blocks, block).cumsum(-1)
    block_mass = inner[..., -1]
    outer = block_mass.double().cumsum(-1)
    target = uniforms.double() * outer[:, -1]
    chosen = torch.searchsorted(outer, target.unsqueeze(-1)).clamp_(max=blocks - 1)
    mass = block_mass.gather(1, chosen)
    before = outer.gather(1, chosen) - mass.double()
    rest = (target.unsqueeze(-1) - before).float()
    rest = torch.minimum(rest, mass).clamp_(min=torch.finfo(torch.float32).tiny)
    row_cdf = inner.gather(1, chosen.unsqueeze(-1).expand(batch, 1, block)).squeeze(1)
    within = torch.searchsorted(row_cdf, rest).clamp_(max=block - 1)
    return (chosen * block + within).squeeze(-1).clamp_(max=vocab - 1)


def _sample_nucleus(probs: torch.Tensor, uniforms: torch.Tensor, top_p: float) -> torch.Tensor:
    vocab = probs.shape[-1]
    k = min(256, vocab)
    while True:
        top_probs, top_idx = torch.topk(probs, k, dim=-1)
        if k == vocab or bool((top_probs.sum(-1) >= top_p * probs.sum(-1)).all()):
            break
        k = min(k * 8, vocab)
    total = probs.sum(-1, keepdim=True)
    cumulative = top_probs.cumsum(-1)
    keep = (cumulative - top_probs) < top_p * total
    kept = (top_probs * keep).double()
    cdf = kept.cumsum(-1)
    target = (uniforms.double() * cdf[:, -1]).unsqueeze(-1)
    pos = torch.searchsorted(cdf, target).clamp_(max=k - 1)
    return top_idx.gather(1, pos).squeeze(-1)
