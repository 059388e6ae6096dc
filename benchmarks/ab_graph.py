"""Eager loop vs graph path on one pair, in one process, timed alternately (A B A B …).

On a shared machine the speed drifts by tens of percent over minutes, so variants timed in
separate processes (``bench_decode.py``) can differ by more than the effect. Here both
engines share the pair's weights, are warmed up (compiled, captured) first, and then decode
the same request in turn; the table gives each round and the median ratio. Writes JSON.

    python benchmarks/ab_graph.py --arch mini --n 32 --max-new-tokens 64 --rounds 5
    python benchmarks/ab_graph.py --arch mini --n 32 --one-weights
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_decode import PROMPTS, eager_and_graph_engines, fixed_length_request, random_pair


def timed_decode(engine, options: dict) -> float:
    start = time.perf_counter()
    for _ in engine.stream(PROMPTS, **options):
        pass
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="mini")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one-weights", action="store_true", help="a base + LoRA pair")
    parser.add_argument("--graph-backend", default="inductor")
    parser.add_argument("--out", default="benchmarks/out/ab_graph.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pair = random_pair(args.arch, one_weights=args.one_weights)
    options = fixed_length_request(args.n, args.max_new_tokens)
    engines = eager_and_graph_engines(pair, args.graph_backend)
    with torch.inference_mode():
        warm = {name: timed_decode(engine, options) for name, engine in engines.items()}
        seconds: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(args.rounds):
            for name, engine in engines.items():
                seconds[name].append(timed_decode(engine, options))
    tokens = args.n * len(PROMPTS) * args.max_new_tokens
    ratios = [e / g for e, g in zip(seconds["eager loop"], seconds["graph path"], strict=True)]
    print(f"{'round':<8}{'eager tok/s':>13}{'graph tok/s':>13}{'graph × eager':>15}")
    for i, ratio in enumerate(ratios):
        eager, graph = seconds["eager loop"][i], seconds["graph path"][i]
        print(f"{i + 1:<8}{tokens / eager:>13.1f}{tokens / graph:>13.1f}{ratio:>15.2f}")
    median = statistics.median(ratios)
    print(f"median graph × eager: {median:.2f} (first calls incl. compile: {warm})")
    meta = {
        "arch": args.arch,
        "one_weights": args.one_weights,
        "rows": args.n * len(PROMPTS),
        "max_new_tokens": args.max_new_tokens,
        "graph_backend": args.graph_backend,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
    }
    result = {"meta": meta, "seconds": seconds, "first_call_s": warm, "ratios": ratios}
    result["median_ratio"] = median
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
