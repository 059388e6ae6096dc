"""Diversity-quality trade-off summaries: Pareto fronts, Coverage and Dominance.

Each *method* (a router, or a baseline such as "aligned") contributes a sweep of settings, each
setting one point ``(x, y)`` = (diversity, quality) on one *plane* (one diversity metric against
one quality metric). Both axes are higher = better; flip lower-is-better metrics (e.g. use
``1 - self_bleu``) before calling.

Definitions used here:

- **Dominates**: p dominates q iff ``p >= q`` on both axes and ``p > q`` on at least one.
  A point is on the **Pareto front** of a set iff no point of the set dominates it (exact
  duplicates are both kept on the front).
- **Normalisation** (:func:`normalise`): min-max per axis over the points of *all* methods pooled
  (``(v - min) / (max - min)``), so the pooled points span the unit square. An axis on which
  every pooled point is equal maps to 1.0 (all methods attain the best observed value). Pass
  ``bounds`` to use fixed ranges instead; values are then clipped to [0, 1].
- **Coverage** (:func:`coverage`): area, in the normalised unit square, of the region
  dominated by the method's points and anchored at the origin, i.e. the union of the
  rectangles ``[0, x_i] x [0, y_i]`` (a staircase under the method's Pareto front; equal to the
  2-D hypervolume with reference point (0, 0)). A single point (1, 1) covers 1; points
  {(0, 1), (1, 0)} cover 0; {(0.5, 1), (1, 0.5)} cover 0.75.
- **Dominance** (:func:`dominance`): fraction of the points on the Pareto front of all
  methods' points pooled that belong to the method; values sum to 1 over methods.
  Dominance is invariant to any per-axis increasing rescaling, so normalisation does not
  change it.
- **Aggregation** (:func:`aggregate_planes`): per method, the unweighted mean of a
  score over the planes of each group (e.g. "lexical", "semantic"), and "overall" = the mean
  over all planes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "aggregate_planes",
    "coverage",
    "dominance",
    "normalise",
    "pareto_front",
    "pareto_mask",
    "tradeoff_summary",
]

Bounds = tuple[tuple[float, float], tuple[float, float]]


def _as_points(points: ArrayLike) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.size == 0:
        return np.zeros((0, 2))
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"points must have shape (n, 2), got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("points must be finite (drop NaN settings first)")
    return p


def pareto_mask(points: ArrayLike) -> np.ndarray:
    """Boolean mask of the non-dominated points (maximising both coordinates)."""
    p = _as_points(points)
    if len(p) == 0:
        return np.zeros(0, dtype=bool)
    ge = (p[:, None, :] >= p[None, :, :]).all(-1)  # ge[j, i]: p_j >= p_i on both axes
    gt = (p[:, None, :] > p[None, :, :]).any(-1)
    dominated = (ge & gt).any(0)
    return ~dominated


def pareto_front(points: ArrayLike) -> np.ndarray:
    """The non-dominated points, sorted by x ascending (so y descending)."""
    p = _as_points(points)
    front = p[pareto_mask(p)]
    return front[np.lexsort((-front[:, 1], front[:, 0]))]


def normalise(
    points_by_method: Mapping[str, ArrayLike], bounds: Bounds | None = None
) -> dict[str, np.ndarray]:
    """Min-max normalise every method's points with ranges pooled over all methods.

    ``bounds=((x_min, x_max), (y_min, y_max))`` fixes the ranges instead (results clipped to
    [0, 1]). A degenerate axis (max == min) maps to 1.0.
    """
    pts = {m: _as_points(v) for m, v in points_by_method.items()}
    if bounds is None:
        pooled = np.concatenate([v for v in pts.values()] or [np.zeros((0, 2))])
        if len(pooled) == 0:
            return pts
        lo, hi = pooled.min(0), pooled.max(0)
    else:
        lo = np.array([bounds[0][0], bounds[1][0]], dtype=np.float64)
        hi = np.array([bounds[0][1], bounds[1][1]], dtype=np.float64)
    span = hi - lo
    degenerate = span <= 0
    safe = np.where(degenerate, 1.0, span)
    out = {}
    for m, v in pts.items():
        z = np.clip((v - lo) / safe, 0.0, 1.0)
        z[:, degenerate] = 1.0
        out[m] = z
    return out


def coverage(points: ArrayLike) -> float:
    """Area of the union of ``[0, x] x [0, y]`` over the points (staircase under the front).

    Expects normalised points in the unit square; coordinates are clipped to [0, 1].
    """
    p = np.clip(_as_points(points), 0.0, 1.0)
    if len(p) == 0:
        return 0.0
    front = pareto_front(p)
    widths = np.diff(np.concatenate([[0.0], front[:, 0]]))
    return float((widths * front[:, 1]).sum())


def dominance(points_by_method: Mapping[str, ArrayLike]) -> dict[str, float]:
    """Share of the pooled Pareto front's points contributed by each method (sums to 1)."""
    pts = {m: _as_points(v) for m, v in points_by_method.items()}
    labels = np.concatenate([np.full(len(v), i) for i, v in enumerate(pts.values())] or [[]])
    pooled = np.concatenate([v for v in pts.values()] or [np.zeros((0, 2))])
    mask = pareto_mask(pooled)
    n_front = int(mask.sum())
    return {
        m: (float(np.sum(labels[mask] == i)) / n_front if n_front else 0.0)
        for i, m in enumerate(pts)
    }


def tradeoff_summary(
    points_by_method: Mapping[str, ArrayLike], bounds: Bounds | None = None
) -> dict[str, dict[str, float]]:
    """``{method: {"coverage": ..., "dominance": ...}}`` on one plane (points normalised
    jointly first, see :func:`normalise`)."""
    norm = normalise(points_by_method, bounds)
    dom = dominance(norm)
    return {m: {"coverage": coverage(v), "dominance": dom[m]} for m, v in norm.items()}


def aggregate_planes(
    per_plane: Mapping[str, Mapping[str, Mapping[str, float]]],
    groups: Mapping[str, str | Sequence[str]],
) -> dict[str, dict[str, dict[str, float]]]:
    """Average per-plane scores into groups and overall.

    ``per_plane[plane][method][score]`` is e.g. the output of :func:`tradeoff_summary` for each
    plane; ``groups[plane]`` names the plane's group(s) (e.g. "lexical" or "semantic").
    Returns ``{group: {method: {score: mean}}}`` with an extra ``"overall"`` group averaging all
    planes. A method missing from a plane is averaged over the planes where it appears.
    """
    members: dict[str, list[str]] = {}
    for plane in per_plane:
        g = groups.get(plane, ())
        for name in [g] if isinstance(g, str) else list(g):
            members.setdefault(name, []).append(plane)
    members["overall"] = list(per_plane)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for group, planes in members.items():
        acc: dict[str, dict[str, list[float]]] = {}
        for plane in planes:
            for method, scores in per_plane[plane].items():
                for key, val in scores.items():
                    acc.setdefault(method, {}).setdefault(key, []).append(float(val))
        out[group] = {m: {k: float(np.mean(v)) for k, v in s.items()} for m, s in acc.items()}
    return out
