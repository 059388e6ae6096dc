"""Pareto front, normalisation, Coverage and Dominance on constructed point sets."""

from __future__ import annotations

import numpy as np
import pytest

from shared_core.eval.pareto import (
    aggregate_planes,
    coverage,
    dominance,
    normalise,
    pareto_front,
    pareto_mask,
    tradeoff_summary,
)


def test_pareto_mask_and_front() -> None:
    pts = [(0.1, 0.9), (0.5, 0.5), (0.4, 0.4), (0.9, 0.1), (0.5, 0.2), (0.5, 0.5)]
    # (0.4, 0.4) and (0.5, 0.2) are dominated by (0.5, 0.5); the duplicate stays on the front.
    assert pareto_mask(pts).tolist() == [True, True, False, True, False, True]
    front = pareto_front(pts)
    np.testing.assert_allclose(front, [(0.1, 0.9), (0.5, 0.5), (0.5, 0.5), (0.9, 0.1)])
    # Equal on one axis, better on the other -> dominates.
    assert pareto_mask([(1.0, 0.5), (1.0, 0.7)]).tolist() == [False, True]
    assert pareto_mask(np.zeros((0, 2))).tolist() == []


def test_coverage_by_hand() -> None:
    assert coverage([(1.0, 1.0)]) == pytest.approx(1.0)
    assert coverage([(0.0, 1.0), (1.0, 0.0)]) == pytest.approx(0.0)
    assert coverage([(0.5, 1.0), (1.0, 0.5)]) == pytest.approx(0.75)
    assert coverage([(0.5, 0.5)]) == pytest.approx(0.25)
    # Dominated points add nothing; order does not matter.
    assert coverage([(1.0, 0.5), (0.2, 0.2), (0.5, 1.0)]) == pytest.approx(0.75)
    # Staircase 0.2 * 1 + 0.3 * 0.6 + 0.5 * 0.3 = 0.53
    assert coverage([(0.2, 1.0), (0.5, 0.6), (1.0, 0.3)]) == pytest.approx(0.53)
    assert coverage(np.zeros((0, 2))) == 0.0


def test_normalise_pools_methods() -> None:
    norm = normalise({"a": [(1.0, 10.0), (3.0, 30.0)], "b": [(2.0, 20.0), (5.0, 10.0)]})
    np.testing.assert_allclose(norm["a"], [(0.0, 0.0), (0.5, 1.0)])
    np.testing.assert_allclose(norm["b"], [(0.25, 0.5), (1.0, 0.0)])


def test_normalise_degenerate_axis_and_bounds() -> None:
    norm = normalise({"a": [(1.0, 5.0)], "b": [(3.0, 5.0)]})
    np.testing.assert_allclose(norm["a"], [(0.0, 1.0)])
    np.testing.assert_allclose(norm["b"], [(1.0, 1.0)])
    fixed = normalise({"a": [(0.5, -1.0), (2.0, 0.0)]}, bounds=((0.0, 1.0), (-2.0, 0.0)))
    np.testing.assert_allclose(fixed["a"], [(0.5, 0.5), (1.0, 1.0)])


def test_dominance_constructed() -> None:
    pts = {
        "a": [(0.0, 1.0), (0.4, 0.8), (0.2, 0.2)],  # 2 on the pooled front
        "b": [(1.0, 0.0), (0.3, 0.3)],  # 1 on the front
        "c": [(0.1, 0.1)],  # dominated
    }
    dom = dominance(pts)
    assert dom == pytest.approx({"a": 2 / 3, "b": 1 / 3, "c": 0.0})
    assert sum(dom.values()) == pytest.approx(1.0)
    # Identical points of two methods both count.
    assert dominance({"a": [(1.0, 1.0)], "b": [(1.0, 1.0)]}) == pytest.approx({"a": 0.5, "b": 0.5})


def test_dominance_invariant_to_normalisation() -> None:
    rng = np.random.default_rng(0)
    pts = {m: rng.normal(size=(6, 2)) * [3.0, 0.1] + [5.0, -2.0] for m in "abc"}
    assert dominance(pts) == pytest.approx(dominance(normalise(pts)))


def test_tradeoff_summary() -> None:
    # After pooled normalisation: a -> (0, 1), (1, 0); b -> (0.5, 0.5). Front = all three.
    pts = {"a": [(1.0, 3.0), (3.0, 1.0)], "b": [(2.0, 2.0)]}
    out = tradeoff_summary(pts)
    assert out["a"]["coverage"] == pytest.approx(0.0)
    assert out["b"]["coverage"] == pytest.approx(0.25)
    assert out["a"]["dominance"] == pytest.approx(2 / 3)
    assert out["b"]["dominance"] == pytest.approx(1 / 3)


def test_aggregate_planes() -> None:
    per_plane = {
        "distinct_1": {"a": {"coverage": 0.2}, "b": {"coverage": 0.4}},
        "self_bleu": {"a": {"coverage": 0.4}, "b": {"coverage": 0.0}},
        "vendi": {"a": {"coverage": 0.9}, "b": {"coverage": 0.3}},
    }
    groups = {"distinct_1": "lexical", "self_bleu": "lexical", "vendi": "semantic"}
    agg = aggregate_planes(per_plane, groups)
    assert agg["lexical"]["a"]["coverage"] == pytest.approx(0.3)
    assert agg["lexical"]["b"]["coverage"] == pytest.approx(0.2)
    assert agg["semantic"]["a"]["coverage"] == pytest.approx(0.9)
    assert agg["overall"]["a"]["coverage"] == pytest.approx(0.5)
    assert agg["overall"]["b"]["coverage"] == pytest.approx(0.7 / 3)


def test_rejects_nan_points() -> None:
    with pytest.raises(ValueError):
        coverage([(np.nan, 1.0)])
