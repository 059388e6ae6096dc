"""Diversity-quality trade-off summary of a sweep: Coverage and Dominance per method.

Input is the per-setting table of :func:`~shared_core.eval.score.aggregate_scores` (one row per
setting with ``method``, ``gamma``, ``temperature`` and the mean of every score). Every
*plane* pairs one diversity metric (x) with one quality metric (y); on each plane a method
contributes one point per setting of its sweep, and :func:`~shared_core.eval.pareto.
tradeoff_summary` gives its Coverage and Dominance there. The planes are then averaged into
groups with :func:`~shared_core.eval.pareto.aggregate_planes`: ``lexical`` and ``semantic``
(by the diversity metric), one group per quality metric (``fluency``, ``relevance``, ...)
and ``overall`` (all planes).

Files written by :func:`write_summary`: ``summary.json`` (everything), ``summary.md``
(Coverage and Dominance tables, best method vs strongest baseline, per-setting table with
mean base share), ``summary.csv`` (one row per method, ``coverage_<group>`` /
``dominance_<group>`` columns) and ``settings.csv`` (one row per setting, all mean scores).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .pareto import aggregate_planes, tradeoff_summary
from .runner import BASELINE_METHODS, Setting, json_safe

__all__ = [
    "LEXICAL_AXES",
    "QUALITY_AXES",
    "SEMANTIC_AXES",
    "Plane",
    "markdown_summary",
    "planes_for",
    "summarise",
    "write_summary",
]

#: Diversity metrics (higher = more diverse) on the x axes, by group.
LEXICAL_AXES = (
    "distinct_1",
    "distinct_2",
    "distinct_3",
    "self_bleu_diversity",
    "compression_ratio",
    "entropy_2",
)
SEMANTIC_AXES = ("cosine_distance", "vendi", "distinct_classes")
#: Quality metrics (higher = better) on the y axes.
QUALITY_AXES = ("fluency", "relevance", "reward")

#: Columns of the per-setting table in ``summary.md`` (those present).
SETTING_COLUMNS = (
    "base_share",
    "switches",
    "length",
    "distinct_2",
    "self_bleu_diversity",
    "cosine_distance",
    "vendi",
    "fluency",
    "relevance",
    "reward",
)


@dataclass(frozen=True)
class Plane:
    """One diversity (x) × quality (y) plane and the diversity group it belongs to."""

    x: str
    y: str
    group: str

    @property
    def name(self) -> str:
        return f"{self.x}__{self.y}"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _has(table: Sequence[Mapping[str, Any]], metric: str) -> bool:
    return any(_finite(row.get(metric)) for row in table)


def planes_for(
    table: Sequence[Mapping[str, Any]],
    *,
    lexical: Sequence[str] = LEXICAL_AXES,
    semantic: Sequence[str] = SEMANTIC_AXES,
    quality: Sequence[str] = QUALITY_AXES,
) -> list[Plane]:
    """Every (diversity × quality) plane whose two metrics appear in ``table``."""
    ys = [q for q in quality if _has(table, q)]
    planes = []
    for group, axes in (("lexical", lexical), ("semantic", semantic)):
        for x in axes:
            if _has(table, x):
                planes.extend(Plane(x, y, group) for y in ys)
    return planes


def _label(row: Mapping[str, Any]) -> str:
    gamma = row.get("gamma")
    temperature = row.get("temperature")
    setting = Setting(
        str(row.get("method")),
        str(row.get("router", row.get("method"))),
        float(gamma) if _finite(gamma) else None,
        float(temperature) if _finite(temperature) else 1.0,
    )
    return setting.label


def method_order(table: Sequence[Mapping[str, Any]]) -> list[str]:
    """Methods in first-appearance order."""
    return list(dict.fromkeys(str(row["method"]) for row in table))


def summarise(
    table: Sequence[Mapping[str, Any]],
    *,
    lexical: Sequence[str] = LEXICAL_AXES,
    semantic: Sequence[str] = SEMANTIC_AXES,
    quality: Sequence[str] = QUALITY_AXES,
    baselines: Sequence[str] = BASELINE_METHODS,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The trade-off summary of a per-setting table (see the module docstring).

    Returns ``{"methods", "planes", "groups", "best", "settings", "meta"}`` where
    ``planes[name] = {"x", "y", "group", "scores": {method: {"coverage", "dominance"}},
    "points": {method: [{"setting", "label", "x", "y"}, ...]}}`` and
    ``groups[group][method] = {"coverage", "dominance"}`` (means over the group's planes).
    """
    methods = method_order(table)
    planes = planes_for(table, lexical=lexical, semantic=semantic, quality=quality)
    plane_out: dict[str, Any] = {}
    per_plane: dict[str, dict[str, dict[str, float]]] = {}
    groups: dict[str, list[str]] = {}
    for plane in planes:
        points: dict[str, list[dict[str, Any]]] = {}
        for row in table:
            x, y = row.get(plane.x), row.get(plane.y)
            if _finite(x) and _finite(y):
                points.setdefault(str(row["method"]), []).append(
                    {"setting": row["setting"], "label": _label(row), "x": x, "y": y}
                )
        if not points:
            continue
        scores = tradeoff_summary({m: [(p["x"], p["y"]) for p in v] for m, v in points.items()})
        per_plane[plane.name] = scores
        groups[plane.name] = [plane.group, plane.y]
        plane_out[plane.name] = {
            "x": plane.x,
            "y": plane.y,
            "group": plane.group,
            "scores": scores,
            "points": points,
        }
    grouped = aggregate_planes(per_plane, groups) if per_plane else {}
    return {
        "meta": dict(meta or {}),
        "methods": methods,
        "baselines": [m for m in methods if m in baselines],
        "planes": plane_out,
        "groups": grouped,
        "best": _best(grouped, baselines),
        "settings": [dict(row) for row in table],
    }


def _best(
    grouped: Mapping[str, Mapping[str, Mapping[str, float]]], baselines: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per group: the best method by Coverage and the gain over the strongest baseline."""
    out: dict[str, dict[str, Any]] = {}
    for group, scores in grouped.items():
        ranked = sorted(scores, key=lambda m: -scores[m]["coverage"])
        if not ranked:
            continue
        entry: dict[str, Any] = {"method": ranked[0], "coverage": scores[ranked[0]]["coverage"]}
        others = [m for m in ranked if m not in baselines]
        base = [m for m in ranked if m in baselines]
        if others and base:
            best, ref = others[0], base[0]
            entry.update(
                best_baco=best,
                best_baco_coverage=scores[best]["coverage"],
                best_baseline=ref,
                best_baseline_coverage=scores[ref]["coverage"],
                relative_gain=(
                    scores[best]["coverage"] / scores[ref]["coverage"] - 1.0
                    if scores[ref]["coverage"] > 0
                    else math.nan
                ),
            )
        out[group] = entry
    return out


# ---------------------------------------------------------------------- output files


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "–"
    return str(value)


def _group_names(summary: Mapping[str, Any]) -> list[str]:
    names = list(summary["groups"])
    order = ["lexical", "semantic", *QUALITY_AXES, "overall"]
    return sorted(names, key=lambda g: order.index(g) if g in order else len(order))


def markdown_summary(summary: Mapping[str, Any]) -> str:
    """The summary as Markdown tables."""
    meta = summary.get("meta", {})
    lines = ["# BACO diversity-quality trade-off", ""]
    if meta:
        lines += [", ".join(f"{k}: {v}" for k, v in meta.items()), ""]
    groups = _group_names(summary)
    methods = summary["methods"]
    if groups:
        lines += [
            f"{len(summary['planes'])} planes (diversity × quality). Coverage = area under the "
            "method's Pareto staircase in the jointly normalised unit square; Dominance = "
            "share of the pooled Pareto front's points that are the method's. Group = mean "
            "over its planes.",
            "",
        ]
        for score in ("coverage", "dominance"):
            lines += [f"## {score.capitalize()}", ""]
            lines.append("| method | " + " | ".join(groups) + " |")
            lines.append("|---|" + "---:|" * len(groups))
            for m in methods:
                cells = [_fmt(summary["groups"][g].get(m, {}).get(score)) for g in groups]
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += ["## Best method vs strongest baseline (Coverage)", ""]
        lines.append("| group | best | best BACO | strongest baseline | relative gain |")
        lines.append("|---|---|---|---|---:|")
        for g in groups:
            b = summary["best"].get(g, {})
            baco = f"{b.get('best_baco', '–')} ({_fmt(b.get('best_baco_coverage'))})"
            ref = f"{b.get('best_baseline', '–')} ({_fmt(b.get('best_baseline_coverage'))})"
            gain = b.get("relative_gain")
            gain_s = f"{gain:+.1%}" if _finite(gain) else "–"
            lines.append(
                f"| {g} | {b.get('method', '–')} ({_fmt(b.get('coverage'))}) | {baco} | "
                f"{ref} | {gain_s} |"
            )
        lines.append("")
    else:
        lines += ["No quality scores (run with a judge) — no trade-off planes.", ""]
    settings = summary["settings"]
    cols = [c for c in SETTING_COLUMNS if _has(settings, c)]
    lines += ["## Settings (mean over prompts)", ""]
    lines.append("| setting | n | " + " | ".join(cols) + " |")
    lines.append("|---|---:|" + "---:|" * len(cols))
    for row in settings:
        cells = [_fmt(row.get(c)) for c in cols]
        lines.append(
            f"| {row['setting']} | {row.get('n_prompts', '')} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def write_summary(summary: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``summary.json``, ``summary.md``, ``summary.csv`` and ``settings.csv``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "summary.json",
        "markdown": out / "summary.md",
        "csv": out / "summary.csv",
        "settings_csv": out / "settings.csv",
    }
    paths["json"].write_text(
        json.dumps(json_safe(dict(summary)), indent=2, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    paths["markdown"].write_text(markdown_summary(summary), encoding="utf-8")
    groups = _group_names(summary)
    with paths["csv"].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["method"] + [f"{s}_{g}" for g in groups for s in ("coverage", "dominance")]
        )
        for m in summary["methods"]:
            row: list[Any] = [m]
            for g in groups:
                scores = summary["groups"][g].get(m, {})
                row += [scores.get("coverage", ""), scores.get("dominance", "")]
            writer.writerow(row)
    settings = summary["settings"]
    columns = list(dict.fromkeys(key for row in settings for key in row))
    with paths["settings_csv"].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in settings:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return paths
