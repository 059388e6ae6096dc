"""Concurrent calls on one engine against one batched call, old and new engine in one run.

Scenarios, each on the same weights, all rows generating exactly ``--max-new-tokens`` tokens
(``min_new_tokens`` = ``max_new_tokens``, so every scenario does the same work) except the
mixed one:

  one_call      one ``generate`` call holding all ``--clients`` prompts (the ideal batch)
  streams       ``--clients`` concurrent ``stream`` calls, one prompt each
  mixed         ``--clients`` concurrent ``generate`` calls whose settings differ
                (max_new_tokens 16-48, temperature 0.7/1.0, routers p-punc/rand/p/h-punc,
                γ 0.2/0.4)
  join          a long batch decoding; a new request arrives: wall time to its first token,
                against the time of one step of that batch

Reports generated tokens/s and its ratio to ``one_call`` (mixed: to ``one_call`` too), peak
RSS, and (new engine) the scheduler's steps between the join request's arrival and its first
token. ``--compare REV`` runs the whole benchmark a second time on the engine of git
revision ``REV`` (checked out into a temporary worktree, run in its own process) and prints
both, so the old and the new engine are measured in one run on one machine.

    python benchmarks/bench_concurrency.py --pair mid --threads 1 --compare 4898fce
    python benchmarks/bench_concurrency.py --pair demo --threads 1 --clients 32
    python benchmarks/bench_concurrency.py --pair tiny            # quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
SUBJECTS = [
    "a coffee shop", "a cat", "a rocket", "a bakery", "a river", "a robot", "a garden",
    "a violin", "a mountain village", "a detective", "a lighthouse", "a library",
    "a dragon", "a bicycle", "a storm", "a teapot",
]  # fmt: skip
#: The mixed scenario's settings, cycled over the clients.
MIXED = [
    {"router": "p-punc", "gamma": 0.2, "temperature": 0.7, "max_new_tokens": 16},
    {"router": "rand", "gamma": 0.4, "temperature": 1.0, "max_new_tokens": 48},
    {"router": "p", "gamma": 0.2, "temperature": 1.0, "max_new_tokens": 32},
    {"router": "h-punc", "gamma": 0.4, "temperature": 0.7, "max_new_tokens": 24},
]


def prompts(count: int) -> list[str]:
    return [f"Write a short story about {SUBJECTS[i % len(SUBJECTS)]}." for i in range(count)]


def load_pair(name: str, out: Path):
    from shared_core import ModelPair

    if name == "demo":
        return ModelPair.demo()
    if name == "tiny":
        from shared_core.testing import save_tiny_pair

        folder = out.parent / "tiny_pair"
        if not (folder / "base").exists():
            save_tiny_pair(folder)
        return ModelPair.from_pretrained(folder / "base", folder / "aligned")
    sys.path.insert(0, str(HERE))
    import bench_decode

    return bench_decode.random_pair(name, one_weights=False)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_scenarios(args: argparse.Namespace) -> dict[str, Any]:
    from shared_core import BacoEngine

    pair = load_pair(args.pair, Path(args.out))
    engine = BacoEngine(pair)
    texts = prompts(args.clients)
    fixed = {"max_new_tokens": args.max_new_tokens, "min_new_tokens": args.max_new_tokens}
    common = {"router": args.router, "gamma": args.gamma, **fixed}
    engine.generate(texts[:2], seed=0, max_new_tokens=4)  # warm-up: first-call costs
    rows: dict[str, Any] = {}

    def timed(name: str, work) -> None:
        start = time.perf_counter()
        tokens = work()
        seconds = time.perf_counter() - start
        rows[name] = {"seconds": seconds, "tokens": tokens, "tok_s": tokens / seconds}
        print(f"  {name:<10} {tokens:6d} tokens {seconds:8.2f} s {tokens / seconds:8.1f} tok/s")

    def one_call() -> int:
        out = engine.generate(texts, seed=1, **common)
        return sum(len(g.token_ids) for row in out for g in row)

    def concurrently(client) -> int:
        """Run ``client(i)`` (returns its tokens) for every prompt at once; total tokens."""
        counts = [0] * len(texts)
        threads = [
            threading.Thread(target=lambda i=i: counts.__setitem__(i, client(i)))
            for i in range(len(texts))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(counts)

    def stream_client(i: int) -> int:
        events = engine.stream(texts[i], seed=100 + i, **common)
        return sum(len(e.generation.token_ids) for e in events if e.generation is not None)

    def mixed_client(i: int) -> int:
        out = engine.generate(texts[i], seed=200 + i, **MIXED[i % len(MIXED)])
        return sum(len(g.token_ids) for g in out[0])

    def streams() -> int:
        return concurrently(stream_client)

    def mixed() -> int:
        return concurrently(mixed_client)

    timed("one_call", one_call)
    timed("streams", streams)
    timed("mixed", mixed)
    for name in ("streams", "mixed"):
        rows[name]["ratio"] = rows[name]["tok_s"] / rows["one_call"]["tok_s"]
    rows["join"] = join_latency(engine, texts, common)
    print(
        f"  join       first token after {rows['join']['first_token_s']:.2f} s "
        f"({rows['join']['step_s']:.3f} s per step of the running batch; "
        f"{rows['join']['steps']} scheduler steps)"
    )
    rows["peak_rss_mib"] = peak_rss_mib()
    return rows


def join_latency(engine, texts: list[str], common: dict[str, Any]) -> dict[str, Any]:
    """A long batch runs; a one-row request arrives: seconds (and scheduler steps, where the
    engine has a scheduler) until its first token."""
    long = {**common, "max_new_tokens": 4 * common["max_new_tokens"]}
    long["min_new_tokens"] = long["max_new_tokens"]
    times: list[float] = []
    stream = engine.stream(texts, seed=7, **long)
    for _ in range(len(texts) * 4):  # a few steps in
        next(stream)
        times.append(time.perf_counter())
    step = (times[-1] - times[0]) / 3
    scheduler = getattr(engine, "_scheduler", None)
    steps_before = getattr(scheduler, "steps", None)
    arrival = time.perf_counter()
    steps_at_first = None
    for _event in engine.stream(texts[0], seed=8, max_new_tokens=2):
        first = time.perf_counter() - arrival
        steps_at_first = getattr(scheduler, "steps", None)
        break
    stream.close()
    steps = None if steps_before is None else steps_at_first - steps_before
    return {"first_token_s": first, "step_s": step, "steps": steps}


def render(label: str, rows: dict[str, Any]) -> str:
    lines = [
        f"{label}",
        f"{'scenario':<12}{'tok/s':>10}{'× one_call':>12}",
        f"{'one_call':<12}{rows['one_call']['tok_s']:>10.1f}{1.0:>12.2f}",
        f"{'streams':<12}{rows['streams']['tok_s']:>10.1f}{rows['streams']['ratio']:>12.2f}",
        f"{'mixed':<12}{rows['mixed']['tok_s']:>10.1f}{rows['mixed']['ratio']:>12.2f}",
        f"join: first token {rows['join']['first_token_s']:.2f} s = "
        f"{rows['join']['first_token_s'] / rows['join']['step_s']:.1f} steps of "
        f"{rows['join']['step_s']:.3f} s (scheduler steps: {rows['join']['steps']})",
        f"peak RSS {rows['peak_rss_mib']:.0f} MiB",
    ]
    return "\n".join(lines)


def worktree(rev: str) -> Path:
    """A checkout of ``rev`` in a temporary git worktree (reused within a run)."""
    root = Path(tempfile.gettempdir()) / f"baco-bench-{rev}"
    if not root.exists():
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(root), rev],
            cwd=HERE.parent,
            check=True,
            capture_output=True,
        )
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", default="mid", help="demo, tiny, or a bench_decode arch")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--router", default="p-punc")
    parser.add_argument("--gamma", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--compare", default=None, help="git revision of an engine to compare")
    parser.add_argument("--engine-root", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="benchmarks/out/bench_concurrency.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "torch_threads": torch.get_num_threads(),
        "pair": args.pair,
        "clients": args.clients,
        "max_new_tokens": args.max_new_tokens,
    }
    if args.engine_root is not None:  # the child process of --compare: report and exit
        print(json.dumps(run_scenarios(args)))
        return
    engines = {"new": None}
    if args.compare:
        engines = {f"old ({args.compare})": worktree(args.compare), "new": None}
    for label, root in engines.items():
        print(f"{label} engine:")
        if root is None:
            rows = run_scenarios(args)
        else:
            env = {**os.environ, "PYTHONPATH": str(root)}
            cmd = [sys.executable, __file__, *sys.argv[1:], "--engine-root", str(root)]
            skip = {i for i, c in enumerate(cmd) if c == "--compare"}
            cmd = [c for i, c in enumerate(cmd) if i not in skip and i - 1 not in skip]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            print("\n".join(line for line in done.stdout.splitlines()[:-1]))
            rows = json.loads(done.stdout.splitlines()[-1])
        result[label] = rows
    print()
    for label in engines:
        print(render(f"{label} engine", result[label]))
        print()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
