"""Long-run stability: many consecutive generations on one engine, memory sampled as we go.

    python benchmarks/stress_long_run.py               # tiny pair, 300 generations
    python benchmarks/stress_long_run.py --demo --count 300 --max-new-tokens 32

Prints RSS (and CUDA memory when on a GPU) every ``--every`` generations and the growth from
the first sample after warm-up to the end; writes JSON next to the other benchmark results.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path

import torch


def rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def run(engine, count: int, every: int, max_new_tokens: int) -> list[dict[str, float]]:
    """``count`` generations with varying prompts, n and seeds; memory every ``every``."""
    prompts = ["Tell me a story.", "Name a color.", "Write a haiku about rain.", "Hi"]
    samples = []
    start = time.perf_counter()
    for i in range(count):
        engine.generate(
            prompts[: 1 + i % len(prompts)],
            n=1 + i % 3,
            max_new_tokens=max_new_tokens,
            seed=i,
            top_p=0.95,
        )
        if i % every == every - 1:
            gc.collect()
            point = {
                "generation": i + 1,
                "rss_mb": rss_mb(),
                "seconds": time.perf_counter() - start,
            }
            if torch.cuda.is_available():
                point["cuda_allocated_mb"] = torch.cuda.memory_allocated() / 2**20
            samples.append(point)
            print(json.dumps(point), flush=True)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--demo", action="store_true", help="the demo pair instead of tiny")
    parser.add_argument("--out", default="benchmarks/out/stress_long_run.json")
    args = parser.parse_args()
    from shared_core import BacoEngine, ModelPair

    if args.demo:
        pair = ModelPair.demo()
    else:
        from shared_core.testing import tiny_pair_folders

        torch.set_num_threads(1)
        pair = ModelPair.from_pretrained(*tiny_pair_folders())
    samples = run(BacoEngine(pair), args.count, args.every, args.max_new_tokens)
    growth = samples[-1]["rss_mb"] - samples[0]["rss_mb"]
    print(
        f"RSS growth from generation {samples[0]['generation']} to {samples[-1]['generation']}:"
        f" {growth:+.1f} MiB"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"args": vars(args), "samples": samples, "rss_growth_mb": growth}, indent=2)
    )


if __name__ == "__main__":
    main()
