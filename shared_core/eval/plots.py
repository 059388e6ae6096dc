"""Pareto plots of a trade-off summary (matplotlib's Agg canvas, imported lazily; pyplot's
global state is never touched, so this is safe in notebooks and threads).

- :func:`plot_plane`: one diversity × quality plane, each method's points labelled by γ or
  temperature and its Pareto staircase (the boundary of the region its Coverage measures);
- :func:`plot_overview`: all planes in one grid (rows = diversity metric, columns = quality);
- :func:`plot_base_share`: mean base share against γ per router (the γ calibration curves);
- :func:`plot_all`: all of the above into a folder.

Axes are the raw metric values (the Pareto front does not depend on the normalisation).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .pareto import pareto_front
from .runner import BASELINE_METHODS

__all__ = ["plot_all", "plot_base_share", "plot_overview", "plot_plane"]


def _figure(**kwargs: Any) -> Any:
    """A figure on the Agg canvas; pyplot (and its global backend) is never touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _colours(methods: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def _draw_plane(
    ax: Any,
    plane: Mapping[str, Any],
    colours: Mapping[str, Any],
    *,
    labels: bool = True,
    legend: bool = True,
) -> None:
    for method, points in plane["points"].items():
        xy = np.array([(p["x"], p["y"]) for p in points], dtype=float)
        colour = colours.get(method, "grey")
        baseline = method in BASELINE_METHODS
        ax.scatter(
            xy[:, 0],
            xy[:, 1],
            color=colour,
            s=18,
            marker="s" if baseline else "o",
            label=method,
            zorder=3,
        )
        front = pareto_front(xy)
        if len(front) > 1:
            ax.step(
                front[:, 0],
                front[:, 1],
                where="pre",
                color=colour,
                linestyle="--" if baseline else "-",
                linewidth=1.2,
                alpha=0.8,
            )
        if labels:
            for p in points:
                if p.get("label"):
                    ax.annotate(
                        p["label"],
                        (p["x"], p["y"]),
                        fontsize=6,
                        color=colour,
                        xytext=(2, 2),
                        textcoords="offset points",
                    )
    ax.set_xlabel(plane["x"])
    ax.set_ylabel(plane["y"])
    ax.grid(True, alpha=0.3)
    if legend:
        ax.legend(fontsize=7, loc="best")


def plot_plane(summary: Mapping[str, Any], plane_name: str, path: str | os.PathLike[str]) -> Path:
    """A PNG of one plane of ``summary`` (from :func:`~shared_core.eval.summary.summarise`)."""
    plane = summary["planes"][plane_name]
    fig = _figure(figsize=(6.4, 4.8))
    ax = fig.subplots()
    _draw_plane(ax, plane, _colours(summary["methods"]))
    scores = plane["scores"]
    best = max(scores, key=lambda m: scores[m]["coverage"])
    ax.set_title(
        f"{plane['y']} vs {plane['x']} (best Coverage: {best} {scores[best]['coverage']:.2f})",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def plot_overview(summary: Mapping[str, Any], path: str | os.PathLike[str]) -> Path | None:
    """One figure with every plane (rows: diversity metrics; columns: quality metrics)."""
    planes = summary["planes"]
    if not planes:
        return None
    from matplotlib.lines import Line2D

    xs = list(dict.fromkeys(p["x"] for p in planes.values()))
    ys = list(dict.fromkeys(p["y"] for p in planes.values()))
    fig = _figure(figsize=(3.4 * len(ys), 2.6 * len(xs) + 0.6))
    axes = fig.subplots(len(xs), len(ys), squeeze=False)
    colours = _colours(summary["methods"])
    for plane in planes.values():
        ax = axes[xs.index(plane["x"])][ys.index(plane["y"])]
        _draw_plane(ax, plane, colours, labels=False, legend=False)
        ax.tick_params(labelsize=6)
        ax.xaxis.label.set_size(8)
        ax.yaxis.label.set_size(8)
    for row in axes:
        for ax in row:
            if not ax.has_data():
                ax.set_visible(False)
    handles = [
        Line2D(
            [],
            [],
            color=colours[m],
            marker="s" if m in BASELINE_METHODS else "o",
            linestyle="--" if m in BASELINE_METHODS else "-",
            label=m,
        )
        for m in summary["methods"]
    ]
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 4), fontsize=8)
    top = 1.0 - (0.3 + 0.25 * ((len(handles) + 3) // 4)) / (2.6 * len(xs) + 0.6)
    fig.tight_layout(rect=(0, 0, 1, top))
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def plot_base_share(
    table: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]
) -> Path | None:
    """Mean base share against γ for every router with a γ sweep (log-scaled γ axis for the
    probability routers)."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for row in table:
        gamma, share = row.get("gamma"), row.get("base_share")
        if gamma is None or share is None or not np.isfinite(share):
            continue
        curves.setdefault(str(row["method"]), []).append((float(gamma), float(share)))
    if not curves:
        return None
    h_like = {m: v for m, v in curves.items() if m.startswith("h")}
    p_like = {m: v for m, v in curves.items() if m not in h_like}
    panels = [(name, c) for name, c in (("γ", p_like), ("γ (nats)", h_like)) if c]
    fig = _figure(figsize=(5.2 * len(panels), 4))
    axes = fig.subplots(1, len(panels), squeeze=False)
    colours = _colours(list(curves))
    for ax, (xlabel, group) in zip(axes[0], panels, strict=True):
        for method, pts in group.items():
            pts = sorted(pts)
            ax.plot(*zip(*pts, strict=True), marker="o", color=colours[method], label=method)
        if xlabel == "γ" and min(g for pts in group.values() for g, _ in pts) > 0:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean base share")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def plot_all(summary: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``<plane>.png`` per plane, ``overview.png`` and ``base_share.png`` into
    ``out_dir``; return the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_plane(summary, name, out / f"{name}.png") for name in summary["planes"]]
    for extra in (
        plot_overview(summary, out / "overview.png"),
        plot_base_share(summary["settings"], out / "base_share.png"),
    ):
        if extra is not None:
            written.append(extra)
    return written
