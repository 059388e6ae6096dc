"""Token sampling with per-row random streams.

Every prompt of a request gets its own seed (:func:`prompt_seeds`: the request seed, the
prompt's content and how many identical prompts precede it), and every sample of that prompt
owns a counter-based random stream keyed by ``(prompt seed, sample_index, step, purpose)``:
the uniforms are a hash of those integers computed on the device. A sample's tokens therefore
depend only on its prompt, settings and seed, never on batch size, batch order or which other
prompts or requests share the batch, and two identical prompts of one call draw different
samples.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch

_MASK32 = 0xFFFFFFFF
#: Purposes of a random draw; each gets an independent stream.
BASE_DRAW, ALIGNED_DRAW, ROUTER_DRAW = 0, 1, 2


def prompt_seeds(seed: int, prompts: Sequence[Any]) -> list[int]:
    """One 63-bit seed per prompt of a request seeded with ``seed``.

    The seed of a prompt hashes the request seed, the prompt's ``repr`` (its content) and the
    number of identical prompts before it in the request. So a prompt draws the same samples
    whatever other prompts share its call, while repeating a prompt in one call gives each
    copy its own samples.
    """
    seen: dict[str, int] = {}
    out = []
    for prompt in prompts:
        content = repr(prompt)
        occurrence = seen.get(content, 0)
        seen[content] = occurrence + 1
        digest = hashlib.blake2b(
            f"{seed}:{occurrence}:{content}".encode(), digest_size=8, person=b"baco-prompt"
        ).digest()
        out.append(int.from_bytes(digest, "little") >> 1)
    return out


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit avalanche hash (lowbias32) on int64 tensors holding values < 2**32."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    x = x ^ (x >> 16)
    return x


def row_streams(
    seeds: torch.Tensor, sample_index: torch.Tensor, step: int | torch.Tensor, purpose: int
) -> torch.Tensor:
    """The 32-bit key of each row's ``(seed, sample, step, purpose)`` random stream.

    ``step`` may be a 0-d tensor (compiled graphs replay one step function for every step).
    """
    h = _mix32(seeds ^ (seeds >> 32))
    h = _mix32(h ^ _mix32(sample_index + 0x9E3779B9))
    key = step * 4 + (purpose + 0x85EBCA6B)
    key = torch.full_like(h, key) if isinstance(key, int) else key.to(h.dtype).expand_as(h)
    return _mix32(h ^ _mix32(key))


def _to_unit(h: torch.Tensor) -> torch.Tensor:
    """53 hashed bits of ``h`` as float64 in (0, 1); never exactly 0 or 1."""
    h2 = _mix32(h ^ 0x27D4EB2F)
    bits = ((h << 21) ^ (h2 & 0x1FFFFF)).to(torch.float64)
    return ((bits + 0.5) / float(2**53)).clamp(1e-12, 1 - 1e-12)


def row_uniforms(
    seeds: torch.Tensor, sample_index: torch.Tensor, step: int | torch.Tensor, purpose: int
) -> torch.Tensor:
    """One uniform in (0, 1) per row from its ``(seed, sample, step, purpose)`` stream."""
    return _to_unit(row_streams(seeds, sample_index, step, purpose))


def stream_uniforms(streams: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Uniforms ``[rows, K]``: entry ``(r, j)`` depends only on row ``r``'s stream and
    ``index[r, j]`` (or ``index[j]`` for a 1-D ``index``), e.g. a token id."""
    return _to_unit(_mix32(streams.unsqueeze(-1) ^ _mix32(index + 0x165667B1)))


def _knob(value: float | torch.Tensor | None, neutral: float) -> float | torch.Tensor | None:
    """``None`` for a knob that leaves the distribution as it is (absent, or the neutral
    number); a tensor (per-row ``[rows, 1]`` or a 0-d graph input) is always applied: a row
    at the neutral value comes out of the transform unchanged."""
    if value is None or (not isinstance(value, torch.Tensor) and value == neutral):
        return None
    return value


def sampling_probs(
    logits: torch.Tensor,
    *,
    temperature: float | torch.Tensor | None = None,
    top_k: int | torch.Tensor | None = None,
    top_k_width: int = 0,
    min_p: float | torch.Tensor | None = None,
    raw_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Probabilities after temperature, top-k and min-p (float32, ``[batch, vocab]``).

    Each knob is a number for the whole batch or a tensor: ``temperature`` and ``min_p``
    ``[batch, 1]`` (or 0-d), ``top_k`` ``[batch]`` (0: off for that row), read from a
    ``topk`` of ``top_k_width`` (≥ every row's value) columns. ``raw_probs`` (the
    temperature-1 softmax, already computed for the router signals) is reused when no
    transform applies.
    """
    temperature = _knob(temperature, 1.0)
    min_p = _knob(min_p, 0.0)
    top_k = _knob(top_k, 0)
    if raw_probs is not None and temperature is None and top_k is None and min_p is None:
        return raw_probs
    scores = logits.float()
    if temperature is not None:
        scores = scores / temperature
    vocab = scores.shape[-1]
    if isinstance(top_k, torch.Tensor):
        width = min(top_k_width or vocab, vocab)
        values = torch.topk(scores, width, dim=-1).values
        k = top_k.reshape(-1).expand(scores.shape[0])
        kth = values.gather(-1, (k.clamp(1, width) - 1).unsqueeze(-1))
        active = ((k > 0) & (k < vocab)).unsqueeze(-1)
        kth = torch.where(active, kth, float("-inf"))
        scores = scores.masked_fill(scores < kth, float("-inf"))
    elif top_k is not None and 0 < top_k < vocab:
        kth = torch.topk(scores, int(top_k), dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if min_p is not None:
        threshold = probs.max(-1, keepdim=True).values * min_p
        probs = probs.masked_fill(probs < threshold, 0.0)
    return probs


#: Tokens per block of the two-level draw over the whole vocabulary.
_BLOCK = 1024
_BLOCK_STREAM = 0x5BD1E995


#: The nucleus is first looked for among this many most likely tokens of each row.
_NUCLEUS_FIRST = 256


def sample_tokens(
    probs: torch.Tensor,
    streams: torch.Tensor,
    *,
    top_p: float | torch.Tensor | None = None,
    full: bool = True,
    static_shapes: bool = False,
) -> torch.Tensor:
    """Draw one token per row from ``probs`` using the row's random stream (:func:`row_streams`).

    The draw is an exponential race (the Gumbel-max trick): each token gets a hashed uniform
    keyed by its id, and the winner is ``argmax log p - log(-log u)``. A change of the
    probabilities by float rounding (another batch shape, padding or kernel) alters the winner
    only at a near-tie of the two best keys, so a seeded sample does not depend on what else
    shares its batch. (Inverse-CDF sampling over 262k tokens flips between neighbouring tail
    tokens at the rounding level of the cumulative sum, several percent of draws.)

    ``top_p`` (a number, or per row ``[rows, 1]``; rows at 1 sample the whole distribution)
    keeps only the nucleus: the smallest set of most likely tokens whose mass reaches
    ``top_p``, plus any token as likely as its least likely one. A row whose nucleus lies
    within its ``_NUCLEUS_FIRST`` most likely tokens (the usual case) races among those; a
    wider nucleus races over the whole vocabulary by blocks, as ``top_p = 1`` does. ``full``
    says whether some row samples the whole distribution (False: every row has a nucleus).
    ``static_shapes`` (no host synchronisation, for compiled graphs) computes every path
    for every row and picks per row; the eager path computes each row's path only. Both
    give the same token, whatever order a sort puts equal probabilities in.
    """
    streams = streams.to(probs.device)
    if top_p is None or (not isinstance(top_p, torch.Tensor) and top_p >= 1.0):
        return _sample_full(probs, streams)
    if not isinstance(top_p, torch.Tensor) or top_p.dim() == 0 or not full:
        return _sample_nucleus(probs, streams, top_p, static_shapes)
    nucleus = (top_p < 1.0).reshape(-1)
    if static_shapes:
        whole = _sample_full(probs, streams)
        return torch.where(nucleus, _sample_nucleus(probs, streams, top_p, True), whole)
    rows = nucleus.nonzero().squeeze(-1)
    if rows.numel() == 0:
        return _sample_full(probs, streams)
    if rows.numel() == nucleus.numel():
        return _sample_nucleus(probs, streams, top_p, False)
    rest = (~nucleus).nonzero().squeeze(-1)
    token = torch.empty(nucleus.shape[0], dtype=torch.long, device=probs.device)
    token[rows] = _sample_nucleus(probs[rows], streams[rows], top_p[rows], False)
    token[rest] = _sample_full(probs[rest], streams[rest])
    return token


def _race(weights: torch.Tensor, streams: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Position of the winner of an exponential race among ``weights`` (``[rows, K]``)."""
    gumbel = -torch.log(-torch.log(stream_uniforms(streams, ids)))
    return (weights.double().log() + gumbel).argmax(-1)


def _sample_full(probs: torch.Tensor, streams: torch.Tensor) -> torch.Tensor:
    """A race among blocks of ``_BLOCK`` tokens by block mass, then among the chosen block's
    tokens: exact, and only ``blocks + _BLOCK`` hashed uniforms per row."""
    batch, vocab = probs.shape
    blocks = -(-vocab // _BLOCK)
    padded = torch.nn.functional.pad(probs, (0, blocks * _BLOCK - vocab))
    padded = padded.view(batch, blocks, _BLOCK)
    block_ids = torch.arange(blocks, device=probs.device)
    block = _race(padded.sum(-1), _mix32(streams ^ _BLOCK_STREAM), block_ids)
    rows = torch.arange(batch, device=probs.device)
    token_ids = block.unsqueeze(-1) * _BLOCK + torch.arange(_BLOCK, device=probs.device)
    within = _race(padded[rows, block], streams, token_ids)
    return block * _BLOCK + within


def _nucleus_floor(top_probs: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """The probability ``[rows, 1]`` of the nucleus' least likely token, read from the most
    likely tokens ``top_probs`` (descending; they must reach the nucleus' end).

    The nucleus is every token at least this likely: ties at its edge are all in, so it does
    not depend on how a sort orders equal probabilities."""
    size = ((top_probs.cumsum(-1) - top_probs) < bound).sum(-1, keepdim=True)
    return top_probs.gather(1, size.clamp(min=1) - 1)


def _sample_nucleus(
    probs: torch.Tensor,
    streams: torch.Tensor,
    top_p: float | torch.Tensor,
    static_shapes: bool,
) -> torch.Tensor:
    vocab = probs.shape[-1]
    first = min(_NUCLEUS_FIRST, vocab)
    bound = top_p * probs.sum(-1, keepdim=True)
    if static_shapes:  # one sort serves both: ties are kept whole, so their order is moot
        ranked, order = torch.sort(probs, dim=-1, descending=True)
        top_probs, top_idx = ranked[:, :first], order[:, :first]
    else:
        top_probs, top_idx = torch.topk(probs, first, dim=-1)
    floor = _nucleus_floor(top_probs, bound)
    # the nucleus lies among the top tokens when a token just outside them is less likely
    within = (top_probs[:, -1:] < floor).squeeze(-1) | (top_probs.shape[-1] == vocab)
    position = _race(top_probs * (top_probs >= floor), streams, top_idx)
    token = top_idx.gather(1, position.unsqueeze(-1)).squeeze(-1)
    if static_shapes:
        wide = _sample_wide(probs, streams, _nucleus_floor(ranked, bound))
        return torch.where(within, token, wide)
    if bool(within.all()):
        return token
    rows = (~within).nonzero().squeeze(-1)
    wide_probs, wide_bound = probs[rows], bound[rows]
    k = min(_NUCLEUS_FIRST * 8, vocab)
    while True:
        ranked = torch.topk(wide_probs, k, dim=-1).values
        floor = _nucleus_floor(ranked, wide_bound)
        if k == vocab or bool((ranked[:, -1:] < floor).all()):
            break
        k = min(k * 8, vocab)
    return token.index_put((rows,), _sample_wide(wide_probs, streams[rows], floor))


def _sample_wide(probs: torch.Tensor, streams: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    """A nucleus wider than ``_NUCLEUS_FIRST`` tokens (those at least ``floor`` likely): the
    race runs over the whole vocabulary by blocks (:func:`_sample_full`), the tokens outside
    the nucleus at zero."""
    return _sample_full(probs * (probs >= floor), streams)
