"""Lexical diversity of a set of k samples generated for one prompt.

All functions take the k samples (strings) of one prompt and return one float; average them over
prompts yourself. Every metric here is computed *across* the set (pooled n-gram counts), which is
what separates "ten different answers" from "ten times the same fluent answer".

Tokenisation (:func:`tokenize`) is deliberately simple and language-agnostic: the text is
lower-cased and split into runs of word characters (``\\w+``) and single non-space punctuation
characters, so ``"Hello, world!"`` -> ``["hello", ",", "world", "!"]``. Self-BLEU instead uses
sacrebleu's own standard ``13a`` tokeniser, so its numbers match sacrebleu's.

Orientation: distinct-n, compression ratio (as defined here) and n-gram entropy are *higher = more
diverse*; self-BLEU is *lower = more diverse* (use ``1 - self_bleu`` on a diversity axis; the
summary :func:`lexical_diversity` does that for you under the key ``"self_bleu_diversity"``).
"""

from __future__ import annotations

import gzip
import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

__all__ = [
    "compression_ratio",
    "distinct_n",
    "lexical_diversity",
    "ngram_entropy",
    "ngrams",
    "self_bleu",
    "tokenize",
]

_TOKEN_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def tokenize(text: str) -> list[str]:
    """Lower-case ``text`` and split it into word runs and single punctuation marks."""
    return _TOKEN_RE.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """All contiguous n-grams of ``tokens`` (empty if the sequence is shorter than ``n``)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _pooled_ngram_counts(samples: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    counts: Counter[tuple[str, ...]] = Counter()
    for text in samples:
        counts.update(ngrams(tokenize(text), n))
    return counts


def distinct_n(samples: Sequence[str], n: int = 1) -> float:
    """Distinct-n across the set: #unique n-grams / #n-grams, pooled over all samples.

    E.g. ``distinct_n(["a b", "a c"], 1) == 3 / 4``. Returns 0.0 when the samples contain no
    n-gram at all (all empty or shorter than ``n``), i.e. "no diversity observed".
    """
    counts = _pooled_ngram_counts(samples, n)
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def self_bleu(samples: Sequence[str]) -> float:
    """Self-BLEU in [0, 1]: mean over i of BLEU(sample_i, references = all other samples).

    Uses sacrebleu's sentence BLEU (``13a`` tokeniser, exponential smoothing, effective order so
    that short samples are not zeroed by missing 4-grams), divided by 100. Lower = more diverse.
    Needs at least two samples.
    """
    from sacrebleu.metrics import BLEU

    if len(samples) < 2:
        raise ValueError("self_bleu needs at least two samples")
    bleu = BLEU(effective_order=True)
    scores = [
        bleu.sentence_score(hyp, [s for j, s in enumerate(samples) if j != i]).score
        for i, hyp in enumerate(samples)
    ]
    return float(np.mean(scores)) / 100.0


def compression_ratio(samples: Sequence[str], separator: str = "\n") -> float:
    """Compressed size / raw size of the joined samples (gzip level 9, UTF-8, ``mtime=0``).

    Defined this way round so that *higher = more diverse*: repeated content compresses well and
    gives a small ratio. (Shaib et al., 2024 report the inverse, raw / compressed, where higher
    means more repetitive.) gzip's fixed ~20-byte header makes the value exceed 1 for very short
    inputs; compare sets of similar length. Returns 0.0 for empty input.
    """
    raw = separator.join(samples).encode("utf-8")
    if not raw:
        return 0.0
    return len(gzip.compress(raw, compresslevel=9, mtime=0)) / len(raw)


def ngram_entropy(samples: Sequence[str], n: int = 1) -> float:
    """Shannon entropy (bits) of the n-gram frequency distribution pooled over the samples.

    E.g. unigrams of ``["a b", "a c"]`` have frequencies (1/2, 1/4, 1/4) -> 1.5 bits.
    Returns 0.0 when there is no n-gram.
    """
    counts = _pooled_ngram_counts(samples, n)
    if not counts:
        return 0.0
    freqs = np.fromiter(counts.values(), dtype=np.float64)
    p = freqs / freqs.sum()
    return float(-(p * np.log2(p)).sum())


def lexical_diversity(samples: Sequence[str], ns: Sequence[int] = (1, 2, 3)) -> dict[str, float]:
    """All lexical metrics for one prompt's samples, keyed by name.

    Keys: ``distinct_{n}`` and ``entropy_{n}`` for each n in ``ns``, ``self_bleu`` (raw, lower =
    more diverse), ``self_bleu_diversity`` (= 1 - self_bleu, higher = more diverse; NaN when
    fewer than two samples) and ``compression_ratio``. Every key except ``self_bleu`` is
    higher = more diverse.
    """
    out: dict[str, float] = {}
    for n in ns:
        out[f"distinct_{n}"] = distinct_n(samples, n)
    for n in ns:
        out[f"entropy_{n}"] = ngram_entropy(samples, n)
    sb = self_bleu(samples) if len(samples) >= 2 else math.nan
    out["self_bleu"] = sb
    out["self_bleu_diversity"] = 1.0 - sb
    out["compression_ratio"] = compression_ratio(samples)
    return out
