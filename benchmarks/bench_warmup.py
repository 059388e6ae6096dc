"""The graph path as a service, CPU proxy: warm-up time, and no request waits behind a compile.

On a CPU (no CUDA graphs) the graph path compiles with ``--backend`` (``aot_eager``: traces
the step with ``torch.compile`` and runs the same ATen ops). One engine, the tiny pair (or the
demo pair), in one run:

  warm-up       ``engine.warmup(rows=..., lengths=...)``: seconds and steps built
  alone         a request on a warmed shape, nothing else running (median of repeats)
  beside cold   the same request while a request of a shape outside the warmed set runs
                next to it (after a warm-up that shape runs eager: nothing compiles)
  lengths       requests of varied ``max_new_tokens`` after the warm-up: new graphs built

Prints a table and writes JSON.

    python benchmarks/bench_warmup.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch


def load_pair(args: argparse.Namespace):
    from shared_core import ModelPair

    if args.demo:
        return ModelPair.demo()
    from shared_core.testing import save_tiny_pair

    folder = Path(args.out).parent / "tiny_pair"
    if not (folder / "base").exists():
        save_tiny_pair(folder)
    return ModelPair.from_pretrained(folder / "base", folder / "aligned")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", action="store_true", help="the demo pair (default: tiny)")
    parser.add_argument("--backend", default="aot_eager", help="torch.compile backend")
    parser.add_argument("--rows", default="1,2,4", help="warm-up row counts")
    parser.add_argument("--lengths", default="128,256", help="warm-up cache lengths")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/out/bench_warmup.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from shared_core import BacoEngine
    from shared_core.engine import DecodeOptions

    options = DecodeOptions(graph=True, graph_backend=args.backend)
    engine = BacoEngine(load_pair(args), options=options)
    rows = [int(r) for r in args.rows.split(",")]
    lengths = [int(n) for n in args.lengths.split(",")]
    start = time.perf_counter()
    built = engine.warmup(rows=rows, lengths=lengths, router="p-punc")
    warmup_s = time.perf_counter() - start
    print(f"warm-up: {built} graph steps in {warmup_s:.1f} s")

    warm = {"n": rows[-1], "max_new_tokens": 48, "min_new_tokens": 48, "router": "p-punc"}
    cold = {"n": 1, "max_new_tokens": 48, "min_new_tokens": 48, "router": "rand"}

    def timed(**kw: Any) -> float:
        t = time.perf_counter()
        engine.generate("Name a color.", **kw)
        return time.perf_counter() - t

    alone = [timed(seed=i, **warm) for i in range(args.repeats)]
    beside = []
    for i in range(args.repeats):
        other = threading.Thread(
            target=engine.generate, args=("Tell me a story.",), kwargs={"seed": 50 + i, **cold}
        )
        other.start()
        beside.append(timed(seed=i, **warm))
        other.join()
    before = engine._graphs.builds
    for tokens in (20, 45, 70, 100, 150, 200):
        engine.generate("Write a haiku.", n=rows[0], max_new_tokens=tokens, seed=tokens)
    new_builds = engine._graphs.builds - before
    result = {
        "command": " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "torch_threads": torch.get_num_threads(),
        "backend": args.backend,
        "warmup": {"rows": rows, "lengths": lengths, "built": built, "seconds": warmup_s},
        "alone_s": alone,
        "beside_cold_s": beside,
        "ratio": statistics.median(beside) / statistics.median(alone),
        "builds_after_warmup": new_builds,
        "fallbacks": dict(engine.scheduler.executor.fallbacks),
    }
    print(f"{'measure':<36}{'value':>12}")
    print(f"{'warm-up time (s)':<36}{warmup_s:>12.1f}")
    print(f"{'warm request alone, median (s)':<36}{statistics.median(alone):>12.2f}")
    print(f"{'beside a cold-shape request (s)':<36}{statistics.median(beside):>12.2f}")
    print(f"{'ratio (beside / alone)':<36}{result['ratio']:>12.2f}")
    print(f"{'graphs built after warm-up':<36}{new_builds:>12d}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
