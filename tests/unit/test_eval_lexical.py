"""Lexical diversity metrics on hand-computed examples."""

from __future__ import annotations

import gzip
import math

import pytest

from shared_core.eval.lexical import (
    compression_ratio,
    distinct_n,
    lexical_diversity,
    ngram_entropy,
    ngrams,
    self_bleu,
    tokenize,
)


def test_tokenize_lowercases_and_splits_punctuation() -> None:
    assert tokenize("Hello, World!  x2") == ["hello", ",", "world", "!", "x2"]
    assert tokenize("") == []


def test_ngrams() -> None:
    assert ngrams(["a", "b", "c"], 2) == [("a", "b"), ("b", "c")]
    assert ngrams(["a"], 2) == []
    with pytest.raises(ValueError):
        ngrams(["a"], 0)


def test_distinct_n_by_hand() -> None:
    samples = ["a b", "a c"]
    assert distinct_n(samples, 1) == pytest.approx(3 / 4)  # {a, b, c} / 4 tokens
    assert distinct_n(samples, 2) == pytest.approx(2 / 2)  # (a b), (a c)
    assert distinct_n(samples, 3) == 0.0  # no trigram at all
    # "a b a b" + "a b": unigrams a,b / 6 ; bigrams {ab, ba} / (3 + 1)
    assert distinct_n(["a b a b", "a b"], 1) == pytest.approx(2 / 6)
    assert distinct_n(["a b a b", "a b"], 2) == pytest.approx(2 / 4)
    assert distinct_n([], 1) == 0.0


def test_distinct_n_identical_samples_shrink_with_k() -> None:
    assert distinct_n(["x y z"] * 5, 1) == pytest.approx(3 / 15)


def test_self_bleu_by_hand() -> None:
    # Identical -> 1; disjoint vocabularies -> 0.
    assert self_bleu(["the cat sat", "the cat sat"]) == pytest.approx(1.0)
    assert self_bleu(["x y", "p q"]) == pytest.approx(0.0)
    # hyp "a b c d e" vs ref "a b c d f": p1..p4 = 4/5, 3/4, 2/3, 1/2, BP = 1
    # BLEU = (4/5 * 3/4 * 2/3 * 1/2) ** (1/4) = 0.2 ** 0.25 (symmetric, so the mean is the same)
    assert self_bleu(["a b c d e", "a b c d f"]) == pytest.approx(0.2**0.25)
    with pytest.raises(ValueError):
        self_bleu(["only one"])


def test_self_bleu_uses_all_other_samples_as_references() -> None:
    # Sample 0 matches sample 1 exactly -> 1; same for sample 1; sample 2 ("z w") shares nothing.
    assert self_bleu(["a b c d", "a b c d", "z w"]) == pytest.approx(2 / 3)


def test_compression_ratio() -> None:
    samples = ["alpha beta gamma", "delta epsilon"]
    raw = b"alpha beta gamma\ndelta epsilon"
    expected = len(gzip.compress(raw, compresslevel=9, mtime=0)) / len(raw)
    assert compression_ratio(samples) == pytest.approx(expected)
    assert compression_ratio([]) == 0.0
    repetitive = ["the same answer every time, word for word."] * 10
    varied = [
        "Maui is a lovely island with beaches.",
        "Try hiking the Grand Canyon at dawn.",
        "Yellowstone has geysers and bison herds.",
        "New Orleans offers jazz clubs and food.",
        "Alaska cruises show glaciers and whales.",
        "Chicago's architecture tour is by boat.",
        "Santa Fe mixes adobe, art and chiles.",
        "Acadia park has rocky Maine coastline.",
        "Nashville is the home of country music.",
        "Zion's slot canyons are red sandstone.",
    ]
    # higher = more diverse
    assert compression_ratio(varied) > compression_ratio(repetitive)


def test_ngram_entropy_by_hand() -> None:
    # unigrams a:2, b:1, c:1 -> -(1/2 log2 1/2 + 2 * 1/4 log2 1/4) = 0.5 + 1 = 1.5 bits
    assert ngram_entropy(["a b", "a c"], 1) == pytest.approx(1.5)
    # bigrams (a b), (a c) uniform -> 1 bit
    assert ngram_entropy(["a b", "a c"], 2) == pytest.approx(1.0)
    assert ngram_entropy(["a a a"], 1) == pytest.approx(0.0)
    assert ngram_entropy(["w x y z"], 1) == pytest.approx(2.0)
    assert ngram_entropy([""], 1) == 0.0


def test_lexical_diversity_summary() -> None:
    out = lexical_diversity(["a b", "a c"])
    assert out["distinct_1"] == pytest.approx(0.75)
    assert out["entropy_1"] == pytest.approx(1.5)
    assert out["self_bleu_diversity"] == pytest.approx(1 - out["self_bleu"])
    assert set(out) == {
        "distinct_1",
        "distinct_2",
        "distinct_3",
        "entropy_1",
        "entropy_2",
        "entropy_3",
        "self_bleu",
        "self_bleu_diversity",
        "compression_ratio",
    }
    assert math.isnan(lexical_diversity(["solo"])["self_bleu"])
