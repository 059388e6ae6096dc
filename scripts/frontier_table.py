"""Coverage and Dominance per plane group (lexical/semantic × fluency/relevance) of one or
more ``baco eval`` summaries, side by side, with each BACO method ÷ the aligned temperature
sweep. Reads ``summary.json`` files; prints Markdown tables.

    python scripts/frontier_table.py dpo=docs/results/frontier_dpo sft=docs/results/frontier_sft
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

CROSS = [(d, q) for d in ("lexical", "semantic") for q in ("fluency", "relevance")]


def cross_groups(summary: dict[str, Any], measure: str) -> dict[str, dict[str, float]]:
    """``{method: {"lexical × fluency": mean over those planes, ...}}``."""
    out: dict[str, dict[str, float]] = {}
    for method in summary["methods"]:
        row = {}
        for diversity, quality in CROSS:
            values = [
                plane["scores"][method][measure]
                for plane in summary["planes"].values()
                if plane["group"] == diversity and plane["y"] == quality
            ]
            row[f"{diversity} × {quality}"] = sum(values) / len(values)
        row["overall"] = summary["groups"]["overall"][method][measure]
        out[method] = row
    return out


def table(label: str, summary: dict[str, Any], measure: str) -> str:
    groups = cross_groups(summary, measure)
    columns = [f"{d} × {q}" for d, q in CROSS] + ["overall"]
    lines = [f"**{label}** ({measure}, {summary['meta'].get('n_prompts')} prompts)", ""]
    lines.append("| method | " + " | ".join(columns) + " |")
    lines.append("|---|" + "---:|" * len(columns))
    for method, row in groups.items():
        lines.append(f"| {method} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
    aligned = groups.get("aligned")
    if aligned is not None:
        for method, row in groups.items():
            if method in ("aligned", "base"):
                continue
            ratios = [row[c] / aligned[c] if aligned[c] else float("nan") for c in columns]
            cells = " | ".join(f"{r:.2f}×" for r in ratios)
            lines.append(f"| {method} ÷ aligned | " + cells + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="LABEL=FOLDER (a baco eval --out folder)")
    parser.add_argument("--measure", choices=["coverage", "dominance"], default="coverage")
    args = parser.parse_args()
    for run in args.runs:
        label, _, folder = run.partition("=")
        summary = json.loads((Path(folder) / "summary.json").read_text())
        print(table(label, summary, args.measure), end="\n\n")


if __name__ == "__main__":
    main()
