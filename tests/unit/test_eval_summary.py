"""Trade-off summary and plots on constructed per-setting score tables."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from shared_core.eval.plots import plot_all, plot_base_share, plot_overview, plot_plane
from shared_core.eval.summary import Plane, markdown_summary, planes_for, summarise, write_summary

PNG = b"\x89PNG\r\n\x1a\n"


def row(method: str, gamma=None, temperature=1.0, **scores) -> dict:
    parts = [method] + ([f"gamma={gamma:g}"] if gamma is not None else []) + [f"T={temperature:g}"]
    return {
        "setting": "|".join(parts),
        "method": method,
        "router": method,
        "gamma": gamma,
        "temperature": temperature,
        "n_prompts": 5,
        **scores,
    }


def two_plane_table() -> list[dict]:
    """m1: (0, 1) and (1, 0) on distinct_1; m2: (0.5, 0.5). On vendi: m1 (1, 1), (2, 0);
    m2 (3, 0.5). Fluency is the only quality metric; values already span [0, 1]."""
    return [
        row("m1", 0.1, distinct_1=0.0, vendi=1.0, fluency=1.0, base_share=0.1),
        row("m1", 0.5, distinct_1=1.0, vendi=2.0, fluency=0.0, base_share=0.4),
        row("m2", 0.3, distinct_1=0.5, vendi=3.0, fluency=0.5, base_share=0.2),
    ]


def test_planes_follow_the_metrics_present() -> None:
    table = two_plane_table()
    assert planes_for(table) == [
        Plane("distinct_1", "fluency", "lexical"),
        Plane("vendi", "fluency", "semantic"),
    ]
    assert planes_for([{**r, "fluency": math.nan} for r in table]) == []
    assert Plane("vendi", "fluency", "semantic").name == "vendi__fluency"


def test_coverage_and_dominance_known_values() -> None:
    s = summarise(two_plane_table(), baselines=())
    lex = s["planes"]["distinct_1__fluency"]["scores"]
    # m1 = {(0,1), (1,0)} covers 0; m2 = (0.5, 0.5) covers 0.25; all three points on the front
    assert lex["m1"]["coverage"] == pytest.approx(0.0)
    assert lex["m2"]["coverage"] == pytest.approx(0.25)
    assert lex["m1"]["dominance"] == pytest.approx(2 / 3)
    assert lex["m2"]["dominance"] == pytest.approx(1 / 3)
    sem = s["planes"]["vendi__fluency"]["scores"]
    # normalised: m1 (0, 1), (0.5, 0); m2 (1, 0.5) which dominates (0.5, 0)
    assert sem["m1"]["coverage"] == pytest.approx(0.0)
    assert sem["m2"]["coverage"] == pytest.approx(0.5)
    assert sem["m1"]["dominance"] == sem["m2"]["dominance"] == pytest.approx(0.5)
    groups = s["groups"]
    assert set(groups) == {"lexical", "semantic", "fluency", "overall"}
    assert groups["overall"]["m2"]["coverage"] == pytest.approx(0.375)
    assert groups["overall"]["m1"]["dominance"] == pytest.approx(7 / 12)
    assert groups["fluency"] == groups["overall"]
    assert groups["lexical"]["m2"] == lex["m2"]
    points = s["planes"]["distinct_1__fluency"]["points"]["m1"]
    assert [p["label"] for p in points] == ["γ=0.1", "γ=0.5"]
    assert s["best"]["overall"]["method"] == "m2"


def test_best_method_vs_strongest_baseline() -> None:
    table = [
        row("aligned", None, 0.7, distinct_2=0.0, relevance=0.0),
        row("aligned", None, 1.3, distinct_2=0.5, relevance=1.0),
        row("p-punc", 0.1, distinct_2=1.0, relevance=0.8),
    ]
    s = summarise(table)
    scores = s["planes"]["distinct_2__relevance"]["scores"]
    assert scores["aligned"]["coverage"] == pytest.approx(0.5)
    assert scores["p-punc"]["coverage"] == pytest.approx(0.8)
    assert scores["aligned"]["dominance"] == scores["p-punc"]["dominance"] == 0.5
    best = s["best"]["relevance"]
    assert best["method"] == "p-punc" and best["best_baseline"] == "aligned"
    assert best["relative_gain"] == pytest.approx(0.6)
    assert s["baselines"] == ["aligned"]
    labels = [p["label"] for p in s["planes"]["distinct_2__relevance"]["points"]["aligned"]]
    assert labels == ["T=0.7", "T=1.3"]
    md = markdown_summary(s)
    assert "+60.0%" in md and "| p-punc |" in md


def test_nan_settings_are_left_out_of_a_plane() -> None:
    table = [*two_plane_table(), row("m3", 0.2, distinct_1=math.nan, vendi=2.5, fluency=0.9)]
    s = summarise(table)
    assert "m3" not in s["planes"]["distinct_1__fluency"]["scores"]
    assert "m3" in s["planes"]["vendi__fluency"]["scores"]
    assert s["methods"] == ["m1", "m2", "m3"]


def test_write_summary_files(tmp_path: Path) -> None:
    s = summarise(two_plane_table(), meta={"k": 10})
    paths = write_summary(s, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["groups"]["overall"]["m2"]["coverage"] == pytest.approx(0.375)
    assert data["meta"] == {"k": 10}
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["method"] for r in rows] == ["m1", "m2"]
    assert float(rows[1]["coverage_overall"]) == pytest.approx(0.375)
    assert float(rows[0]["dominance_lexical"]) == pytest.approx(2 / 3)
    settings = list(csv.DictReader(paths["settings_csv"].open()))
    assert [float(r["base_share"]) for r in settings] == [0.1, 0.4, 0.2]
    md = paths["markdown"].read_text()
    assert "## Coverage" in md and "## Dominance" in md and "base_share" in md
    assert "| m1|gamma=0.1|T=1 |" in md
    # NaN is written as JSON null
    s2 = summarise([{**r, "reward": math.nan} for r in two_plane_table()])
    write_summary(s2, tmp_path / "nan")
    assert "NaN" not in (tmp_path / "nan" / "summary.json").read_text()


def test_plots_are_png_files(tmp_path: Path) -> None:
    s = summarise(two_plane_table())
    files = plot_all(s, tmp_path / "plots")
    names = sorted(p.name for p in files)
    assert names == [
        "base_share.png",
        "distinct_1__fluency.png",
        "overview.png",
        "vendi__fluency.png",
    ]
    for path in files:
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 1000
    single = plot_plane(s, "vendi__fluency", tmp_path / "one.png")
    assert single.read_bytes()[:8] == PNG
    empty = summarise([{**r, "fluency": math.nan} for r in two_plane_table()])
    assert plot_overview(empty, tmp_path / "none.png") is None
    assert plot_base_share([row("aligned", None, 1.0, base_share=0.0)], tmp_path / "b.png") is None


def test_plotting_leaves_pyplot_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    # Another test may have imported pyplot already: hide it for this test (monkeypatch puts
    # it back), so that an import of pyplot by the plotting code always shows.
    monkeypatch.delitem(sys.modules, "matplotlib.pyplot", raising=False)
    plot_all(summarise(two_plane_table()), tmp_path)
    assert "matplotlib.pyplot" not in sys.modules
