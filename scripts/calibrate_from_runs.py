"""Build a γ → base-share calibration from the generation records of ``baco eval`` runs.

Base shares are recorded per sample at generation time, so no scoring is needed. Rows of
every run given are pooled per (router, γ) at temperature 1 (mean over all their samples);
the adapter's sha256 is recorded so a test notices when the adapter changes.

    python scripts/calibrate_from_runs.py runs/frontier_dpo runs/calib_extra \
        --out shared_core/assets/calibration_demo.json --note "..."
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from shared_core.calibration import calibration_from_table, save_calibration  # noqa: E402
from shared_core.demo_models import demo_adapter_path  # noqa: E402


def pooled_rows(folders: list[Path]) -> tuple[list[dict], dict[str, int]]:
    """One row per (router, γ) at T=1: mean base share over every sample of the runs."""
    shares: dict[tuple[str, float], list[float]] = defaultdict(list)
    prompts: dict[tuple[str, float], set[str]] = defaultdict(set)
    for folder in folders:
        for line in (folder / "generations.jsonl").read_text().splitlines():
            record = json.loads(line)
            gamma = record.get("gamma")
            if gamma is None or not math.isclose(float(record.get("temperature", 1.0)), 1.0):
                continue
            key = (record["router"], float(gamma))
            shares[key].extend(float(s) for s in record["base_shares"])
            prompts[key].add(record["prompt_id"])
    rows = [
        {
            "router": router,
            "gamma": gamma,
            "temperature": 1.0,
            "base_share": sum(values) / len(values),
            "n_prompts": len(prompts[(router, gamma)]),
        }
        for (router, gamma), values in sorted(shares.items())
    ]
    samples = {f"{r}|{g}": len(v) for (r, g), v in shares.items()}
    return rows, samples


def main(argv: list[str] | None = None) -> None:
    """Write the calibration of the runs given."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="baco eval output folders")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--note", default="", help="how the runs were made (recorded in meta)")
    args = p.parse_args(argv)
    rows, samples = pooled_rows(args.runs)
    weights = demo_adapter_path() / "adapter_model.safetensors"
    meta = {
        "pair": "demo: gemma-3-270m (GGUF Q4_K_M, converted) + shared_core/assets/demo_adapter "
        "(LoRA SFT + DPO + task-format stage with rehearsal)",
        "adapter_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "samples_per_point": samples,
        "note": args.note,
        "command": "python scripts/calibrate_from_runs.py " + " ".join(map(str, args.runs)),
    }
    path = save_calibration(calibration_from_table(rows, meta=meta), args.out)
    print(f"wrote {path}: {sorted({r['router'] for r in rows})}")


if __name__ == "__main__":
    main()
