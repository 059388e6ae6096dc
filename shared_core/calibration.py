"""γ calibration: the map γ → mean base share per router, and its inverse.

A γ means different things on different model pairs (on a weak base, P routes almost every
step to the base already at γ=0.3), so users may ask for a *target base share* instead.
A calibration is measured by a sweep (``baco eval --calibrate`` or
:func:`calibration_from_table`) and stored as JSON::

    {"format": "baco-calibration", "version": 1,
     "meta": {"pair": ..., "prompts": ..., "n_prompts": ..., "k": ..., ...},
     "routers": {"p-punc": [{"gamma": 0.02, "base_share": 0.03}, ...], ...}}

:func:`gamma_for_base_share` inverts it by monotone piecewise-linear interpolation: the
measured shares are first made monotone in γ (isotonic regression, direction given by the
router: increasing for ``p``-style routers and ``rand``, decreasing for ``h``-style routers
and ``nudging``), then the target is located between two calibrated points. With no
calibration given it uses the one shipped for the demo pair
(``shared_core/assets/calibration_demo.json``); for any other pair pass your own.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from .routers import canonical_router_name

__all__ = [
    "DEMO_CALIBRATION_PATH",
    "Calibration",
    "CalibrationError",
    "base_share_for_gamma",
    "calibration_from_table",
    "gamma_for_base_share",
    "load_calibration",
    "save_calibration",
    "shipped_calibration",
]

FORMAT = "baco-calibration"
VERSION = 1
#: Calibration of the embedded demo pair, shipped with the package.
DEMO_CALIBRATION_PATH = Path(__file__).resolve().parent / "assets" / "calibration_demo.json"
#: Routers whose base share falls as γ grows (all others rise with γ).
DECREASING = frozenset({"h", "h-punc", "nudging"})
#: Routers without a γ have nothing to calibrate.
_NO_GAMMA = frozenset({"aligned", "base", "punc", "fc"})


class CalibrationError(ValueError):
    """No usable calibration for a request (missing file, router or out-of-range target)."""


@dataclass
class Calibration:
    """Measured ``(gamma, mean base share)`` points per router, sorted by γ."""

    routers: dict[str, list[tuple[float, float]]]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clean: dict[str, list[tuple[float, float]]] = {}
        for name, points in self.routers.items():
            key = _router_key(name)
            pts = sorted((float(g), float(s)) for g, s in points)
            for g, s in pts:
                if not (math.isfinite(g) and math.isfinite(s) and 0.0 <= s <= 1.0):
                    raise ValueError(f"bad calibration point for {key!r}: γ={g}, share={s}")
            if len({g for g, _ in pts}) != len(pts):
                raise ValueError(f"duplicate γ values in the calibration of {key!r}")
            if pts:
                clean[key] = pts
        self.routers = clean

    def points(self, router: str) -> list[tuple[float, float]]:
        """The calibrated points of ``router``; :class:`CalibrationError` if there are none."""
        key = _router_key(router)
        if key in _NO_GAMMA:
            raise CalibrationError(f"router {key!r} has no γ to calibrate")
        if key not in self.routers:
            available = ", ".join(sorted(self.routers)) or "none"
            raise CalibrationError(
                f"router {key!r} is not in this calibration (calibrated: {available}); "
                "run `baco eval --calibrate` with that router"
            )
        return self.routers[key]

    def monotone_points(self, router: str) -> list[tuple[float, float]]:
        """The points with shares made monotone in γ (isotonic fit, router's direction)."""
        key = _router_key(router)
        pts = self.points(key)
        shares = _isotonic([s for _, s in pts], increasing=key not in DECREASING)
        return [(g, s) for (g, _), s in zip(pts, shares, strict=True)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "meta": self.meta,
            "routers": {
                name: [{"gamma": g, "base_share": s} for g, s in pts]
                for name, pts in self.routers.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a baco calibration (format={data.get('format')!r})")
        if data.get("version") != VERSION:
            raise ValueError(f"unsupported calibration version {data.get('version')!r}")
        routers = {
            name: [(p["gamma"], p["base_share"]) for p in pts]
            for name, pts in data.get("routers", {}).items()
        }
        return cls(routers, dict(data.get("meta", {})))

    def save(self, path: str | os.PathLike[str]) -> Path:
        return save_calibration(self, path)


def _router_key(name: str) -> str:
    try:
        return canonical_router_name(name)
    except ValueError:
        return str(name)  # custom routers keep their own name


def _isotonic(values: Sequence[float], *, increasing: bool) -> list[float]:
    """Least-squares monotone fit (pool adjacent violators), equal weights."""
    sign = 1.0 if increasing else -1.0
    blocks: list[list[float]] = []  # [sum, count]
    for v in values:
        blocks.append([sign * v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    out: list[float] = []
    for total, count in blocks:
        out.extend([sign * total / count] * int(count))
    return out


def save_calibration(calibration: Calibration, path: str | os.PathLike[str]) -> Path:
    """Write ``calibration`` as JSON to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(calibration.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path


def load_calibration(path: str | os.PathLike[str]) -> Calibration:
    """Read a calibration JSON written by :func:`save_calibration`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CalibrationError(f"calibration file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"calibration file {path} is not valid JSON: {exc}") from exc
    try:
        return Calibration.from_dict(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise CalibrationError(f"calibration file {path}: {exc}") from exc


@lru_cache(maxsize=1)
def _shipped(path: str, mtime: float) -> Calibration:
    return load_calibration(path)


def shipped_calibration() -> Calibration:
    """The demo pair's calibration shipped with the package."""
    path = DEMO_CALIBRATION_PATH
    if not path.is_file():
        raise CalibrationError(
            "no shipped γ calibration exists yet for the demo pair "
            f"(expected {path}); pass a calibration measured with `baco eval --calibrate`"
        )
    return _shipped(str(path), path.stat().st_mtime)


def calibration_from_table(
    table: Iterable[Mapping[str, Any]],
    *,
    temperature: float = 1.0,
    meta: Mapping[str, Any] | None = None,
) -> Calibration:
    """Build a calibration from an aggregated sweep (rows with ``method``/``router``,
    ``gamma``, ``temperature`` and ``base_share``; see
    :func:`~shared_core.eval.score.aggregate_scores`). Only rows at ``temperature`` count."""
    routers: dict[str, list[tuple[float, float]]] = {}
    n_prompts: dict[str, int] = {}
    for row in table:
        gamma, share = row.get("gamma"), row.get("base_share")
        if gamma is None or share is None or not math.isfinite(float(share)):
            continue
        if not math.isclose(float(row.get("temperature", 1.0)), temperature):
            continue
        name = _router_key(str(row.get("router") or row.get("method")))
        routers.setdefault(name, []).append((float(gamma), float(share)))
        if "n_prompts" in row:
            n_prompts[name] = min(n_prompts.get(name, 1 << 30), int(row["n_prompts"]))
    if not routers:
        raise CalibrationError("the sweep has no router with a γ grid and a base share")
    info = {"temperature": temperature, **dict(meta or {})}
    if n_prompts:
        info.setdefault("n_prompts", min(n_prompts.values()))
    return Calibration(routers, info)


def _as_calibration(calibration: Calibration | str | os.PathLike[str] | Mapping | None):
    if calibration is None:
        return shipped_calibration()
    if isinstance(calibration, Calibration):
        return calibration
    if isinstance(calibration, (str, os.PathLike)):
        return load_calibration(calibration)
    if isinstance(calibration, Mapping):
        if "format" in calibration:
            return Calibration.from_dict(calibration)
        routers = {}
        for name, pts in calibration.items():
            items = pts.items() if isinstance(pts, Mapping) else pts
            routers[name] = [(g, s) for g, s in items]
        return Calibration(routers)
    raise TypeError(
        "calibration must be a Calibration, a path, a mapping {router: {gamma: share}} or None"
    )


def _check_target(target: float) -> float:
    if isinstance(target, bool) or not isinstance(target, (int, float)):
        raise TypeError(f"target base share must be a number, got {type(target).__name__}")
    if not math.isfinite(target) or not 0.0 <= target <= 1.0:
        raise ValueError(f"target base share must be in [0, 1], got {target!r}")
    return float(target)


def gamma_for_base_share(
    router: str,
    target: float,
    calibration: Calibration | str | os.PathLike[str] | Mapping | None = None,
) -> float:
    """The γ at which ``router`` gives a mean base share of ``target``.

    ``calibration`` is a :class:`Calibration`, a path to its JSON, a mapping
    ``{router: {gamma: base_share}}``, or ``None`` for the shipped demo-pair calibration.
    Raises :class:`CalibrationError` (a ``ValueError``) when there is no calibration for
    ``router`` or the target lies outside the calibrated range (the message names it).
    Where the monotone fit is flat at the target, the smallest such γ is returned.
    """
    target = _check_target(target)
    cal = _as_calibration(calibration)
    key = _router_key(router)
    pts = cal.monotone_points(key)
    if len(pts) == 1:
        g, s = pts[0]
        if math.isclose(s, target, abs_tol=1e-9):
            return g
        raise CalibrationError(
            f"target base share {target:g} for router {key!r} is outside the calibrated "
            f"range [{s:.3f}, {s:.3f}] (one point, γ={g:g})"
        )
    shares = [s for _, s in pts]
    low, high = min(shares), max(shares)
    tol = 1e-9
    if not low - tol <= target <= high + tol:
        gammas = [g for g, _ in pts]
        raise CalibrationError(
            f"target base share {target:g} for router {key!r} is outside the calibrated "
            f"range [{low:.3f}, {high:.3f}] (γ from {min(gammas):g} to {max(gammas):g}); "
            "choose a target inside it or calibrate a wider γ grid with `baco eval --calibrate`"
        )
    target = min(max(target, low), high)
    for (g0, s0), (g1, s1) in itertools.pairwise(pts):
        if min(s0, s1) - tol <= target <= max(s0, s1) + tol:
            if math.isclose(s0, s1, abs_tol=tol):
                return g0
            return g0 + (target - s0) / (s1 - s0) * (g1 - g0)
    raise AssertionError("unreachable: target inside the calibrated range")  # pragma: no cover


def base_share_for_gamma(
    router: str,
    gamma: float,
    calibration: Calibration | str | os.PathLike[str] | Mapping | None = None,
) -> float:
    """The calibrated mean base share of ``router`` at ``gamma`` (linear interpolation of the
    monotone fit; :class:`CalibrationError` outside the calibrated γ range)."""
    cal = _as_calibration(calibration)
    key = _router_key(router)
    pts = cal.monotone_points(key)
    gammas = [g for g, _ in pts]
    if not min(gammas) <= gamma <= max(gammas):
        raise CalibrationError(
            f"γ={gamma:g} for router {key!r} is outside the calibrated γ range "
            f"[{min(gammas):g}, {max(gammas):g}]"
        )
    for (g0, s0), (g1, s1) in itertools.pairwise(pts):
        if g0 <= gamma <= g1:
            return s0 + (gamma - g0) / (g1 - g0) * (s1 - s0)
    return pts[0][1]
