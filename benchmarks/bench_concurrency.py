"""Concurrent requests on one engine: per-step lock vs the request queue, in one run.

16 clients (threads) each ask for one sample of their own prompt with their own seed, all at
once. Modes, all on the same engine weights and settings:

  serial         the requests one after another (no concurrency)
  lock           16 threads, request batching off: decodes interleave step by step
  queue          16 threads, request batching on: waiting requests share one batched decode
  one_batch      one ``generate`` call with all 16 prompts (the ideal batch, for reference)

Reports wall time, generated tokens/s, the ratio to ``serial``, mean and max request latency,
and whether every request got the same tokens in every mode. Prints a table and writes JSON.

    python benchmarks/bench_concurrency.py --threads 1            # demo pair, CPU
    python benchmarks/bench_concurrency.py --tiny                 # quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

SUBJECTS = [
    "a coffee shop", "a cat", "a rocket", "a bakery", "a river", "a robot", "a garden",
    "a violin", "a mountain village", "a detective", "a lighthouse", "a library",
    "a dragon", "a bicycle", "a storm", "a teapot",
]  # fmt: skip


def load_engine(args: argparse.Namespace, batch_requests: bool, pair=None):
    from shared_core import BacoEngine, ModelPair
    from shared_core.engine import DecodeOptions

    if pair is None:
        if args.tiny:
            from shared_core.testing import save_tiny_pair

            folder = Path(args.out).parent / "tiny_pair"
            if not (folder / "base").exists():
                save_tiny_pair(folder)
            pair = ModelPair.from_pretrained(folder / "base", folder / "aligned")
        else:
            pair = ModelPair.demo()
    return BacoEngine(pair, options=DecodeOptions(batch_requests=batch_requests))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--router", default="p-punc")
    parser.add_argument("--gamma", type=float, default=0.3)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--tiny", action="store_true", help="tiny random pair (smoke test)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--out", default="benchmarks/out/bench_concurrency.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    prompts = [f"Suggest a name for {SUBJECTS[i % len(SUBJECTS)]}." for i in range(args.clients)]
    options = {
        "router": args.router,
        "gamma": args.gamma,
        "top_p": args.top_p,
        "max_new_tokens": args.max_new_tokens,
        "min_new_tokens": args.max_new_tokens,  # equal work in every mode
    }
    lock_engine = load_engine(args, batch_requests=False)
    queue_engine = load_engine(args, batch_requests=True, pair=lock_engine.pair)
    warm = {**options, "max_new_tokens": 2, "min_new_tokens": 2}
    lock_engine.generate(prompts[0], seed=0, **warm)  # warm-up

    def request(engine, i: int) -> tuple[list[int], float]:
        start = time.perf_counter()
        sample = engine.generate(prompts[i], seed=i, **options)[0][0]
        return sample.token_ids, time.perf_counter() - start

    def concurrent(engine) -> list[tuple[list[int], float]]:
        barrier = threading.Barrier(args.clients)

        def client(i: int):
            barrier.wait()
            return request(engine, i)

        with ThreadPoolExecutor(args.clients) as pool:
            return list(pool.map(client, range(args.clients)))

    def one_batch() -> list[tuple[list[int], float]]:
        # One decode of all prompts, each with its own seed (the queue's batch runner).
        start = time.perf_counter()
        params = queue_engine.params(**options)
        prepared = [queue_engine.prepare(p, i, params=params) for i, p in enumerate(prompts)]
        out = queue_engine._run_batch(prepared, params, list(range(args.clients)))
        return [(row[0].token_ids, time.perf_counter() - start) for row in out]

    modes: dict[str, Any] = {
        "serial": lambda: [request(lock_engine, i) for i in range(args.clients)],
        "lock": lambda: concurrent(lock_engine),
        "queue": lambda: concurrent(queue_engine),
        "one_batch": one_batch,
    }
    rows, outputs = [], {}
    for name, run in modes.items():
        start = time.perf_counter()
        results = run()
        wall = time.perf_counter() - start
        outputs[name] = [tokens for tokens, _ in results]
        latencies = [latency for _, latency in results]
        tokens = sum(len(t) for t in outputs[name])
        rows.append(
            {
                "mode": name,
                "wall_s": wall,
                "tokens": tokens,
                "tokens_per_s": tokens / wall,
                "mean_latency_s": sum(latencies) / len(latencies),
                "max_latency_s": max(latencies),
            }
        )
        print(f"done {name}: {wall:.1f} s", flush=True)
    serial = rows[0]["tokens_per_s"]
    for row in rows:
        row["ratio_vs_serial"] = row["tokens_per_s"] / serial
        row["same_tokens_as_serial"] = outputs[row["mode"]] == outputs["serial"]
    print(
        f"{'mode':<12}{'wall s':>9}{'tok/s':>9}{'× serial':>10}{'mean lat s':>12}"
        f"{'max lat s':>11}{'same tokens':>13}"
    )
    for r in rows:
        print(
            f"{r['mode']:<12}{r['wall_s']:>9.1f}{r['tokens_per_s']:>9.1f}"
            f"{r['ratio_vs_serial']:>10.2f}{r['mean_latency_s']:>12.1f}{r['max_latency_s']:>11.1f}"
            f"{r['same_tokens_as_serial']!s:>13}"
        )
    meta = {
        "clients": args.clients,
        "max_new_tokens": args.max_new_tokens,
        "router": args.router,
        "gamma": args.gamma,
        "top_p": args.top_p,
        "pair": "tiny" if args.tiny else "demo",
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "queue_batches": queue_engine._queue.batches_run if queue_engine._queue else None,
    }
    Path(args.out).write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
