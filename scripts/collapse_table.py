"""The demo pair's collapse table: base vs aligned before and after an adapter change.

Reads the per-setting means (``settings.csv``) of ``baco eval`` runs that hold the ``base``
setting and the aligned model at temperature 1 (``aligned|T=1.0``), one run per adapter, and
prints a Markdown table with the base/aligned ratio of each diversity measure and the
aligned-minus-base margin of each quality measure. ``--json`` also writes the numbers.

    python scripts/collapse_table.py --run "SFT only=runs/eval_sft" --run "SFT + DPO=runs/eval_dpo"
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

#: (column, label, higher means more diverse?) of the diversity measures.
DIVERSITY = [
    ("cosine_distance", "MiniLM distance", True),
    ("vendi", "Vendi", True),
    ("distinct_1", "distinct-1", True),
    ("distinct_2", "distinct-2", True),
    ("self_bleu", "self-BLEU", False),
]
QUALITY = [("fluency", "judge fluency"), ("relevance", "judge relevance (PMI)")]


def read_settings(folder: Path) -> dict[str, dict[str, float]]:
    """``setting -> {column: value}`` from a run's ``settings.csv``."""
    with (folder / "settings.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = {}
    for row in rows:
        values = {}
        for key, value in row.items():
            try:
                values[key] = float(value)
            except (TypeError, ValueError):
                continue
        out[row["setting"]] = values
    return out


def setting_key(settings: dict[str, dict[str, float]], method: str) -> str:
    """The ``method`` setting at temperature 1 of a run (``aligned|T=1``, ``base|T=1``)."""
    for key in settings:
        name, _, rest = key.partition("|")
        if name == method and rest in ("T=1", "T=1.0", ""):
            return key
    raise ValueError(f"no {method} setting at T=1 among {sorted(settings)}")


def collapse(folder: Path) -> dict[str, dict[str, float]]:
    """Base and aligned means, diversity ratios and quality margins of one run."""
    settings = read_settings(folder)
    base = settings[setting_key(settings, "base")]
    aligned = settings[setting_key(settings, "aligned")]
    ratios = {}
    for column, _, higher in DIVERSITY:
        a, b = aligned[column], base[column]
        ratios[column] = b / a if higher else a / b
    margins = {column: aligned[column] - base[column] for column, _ in QUALITY}
    return {"base": base, "aligned": aligned, "ratio": ratios, "margin": margins}


def markdown(runs: dict[str, dict[str, dict[str, float]]]) -> str:
    """The table: one row per measure, base / aligned / ratio (or margin) per run."""
    names = list(runs)
    header = "| measure | base | " + " | ".join(
        f"aligned ({n}) | base ÷ aligned ({n})" for n in names
    )
    lines = [header + " |", "|---" * (2 + 2 * len(names)) + "|"]
    first = runs[names[0]]
    for column, label, higher in DIVERSITY:
        direction = "↑ more diverse" if higher else "↓ more diverse; ratio aligned ÷ base"
        cells = [f"{label} ({direction})", f"{first['base'][column]:.3f}"]
        for n in names:
            cells += [f"{runs[n]['aligned'][column]:.3f}", f"**{runs[n]['ratio'][column]:.2f}×**"]
        lines.append("| " + " | ".join(cells) + " |")
    for column, label in QUALITY:
        cells = [f"{label} (↑ better; aligned − base)", f"{first['base'][column]:.3f}"]
        for n in names:
            cells += [f"{runs[n]['aligned'][column]:.3f}", f"{runs[n]['margin'][column]:+.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Print the table for the runs given as ``NAME=FOLDER``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", required=True, metavar="NAME=FOLDER")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    runs = {}
    for item in args.run:
        name, _, folder = item.partition("=")
        runs[name] = collapse(Path(folder))
    print(markdown(runs))
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2) + "\n")


if __name__ == "__main__":
    main()
