"""Compare sampling filters on the demo pair: per setting, the mean scores over the prompts
that every run shares, from ``baco eval`` output folders (scores.jsonl).

    python scripts/sampling_defaults_table.py "top_p 0.95=docs/results/frontier_dpo" \
        "min_p 0.05=docs/results/sampling/min_p_0.05" "min_p 0.1=docs/results/sampling/min_p_0.1"
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

METRICS = ("distinct_2", "self_bleu", "cosine_distance", "vendi", "fluency", "relevance")


def load(folder: Path) -> dict[tuple[str, str], dict[str, float]]:
    """``(setting, prompt_id) -> scores`` of one run."""
    rows = {}
    for line in (folder / "scores.jsonl").read_text().splitlines():
        record = json.loads(line)
        rows[(record["setting"], record["prompt_id"])] = record["scores"]
    return rows


def main(specs: list[str]) -> None:
    runs = {}
    for spec in specs:
        label, _, path = spec.partition("=")
        runs[label] = load(Path(path))
    settings = set.intersection(*({s for s, _ in run} for run in runs.values()))
    print("| setting | filter | prompts | " + " | ".join(METRICS) + " |")
    print("|---|---|---:|" + "---:|" * len(METRICS))
    for setting in sorted(settings):
        prompts = set.intersection(*({p for s, p in run if s == setting} for run in runs.values()))
        for label, run in runs.items():
            sums: dict[str, float] = defaultdict(float)
            for prompt in prompts:
                for metric in METRICS:
                    sums[metric] += run[(setting, prompt)][metric]
            means = " | ".join(f"{sums[m] / len(prompts):.3f}" for m in METRICS)
            print(f"| {setting.replace('|', ', ')} | {label} | {len(prompts)} | {means} |")


if __name__ == "__main__":
    main(sys.argv[1:])
