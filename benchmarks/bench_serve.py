"""``baco serve`` vs in-process calls: throughput and latency for 1, 8 and 32 clients.

One engine serves both sides in the same run: a uvicorn server on a free 127.0.0.1 port (the
real app, reached with the official ``openai`` SDK, one client object per user) and direct
calls on the engine from as many threads. Every client sends one request for one sample of
its own prompt with its own seed; all clients start together. Two request kinds:

  stream     SSE streaming (``engine.stream`` in-process): time to first token is measured
  generate   one JSON reply (``engine.generate`` in-process): latency only

Both kinds, on both sides, are continuously batched by the engine's scheduler.

Each configuration runs ``--repeats`` times per side in ABBA order (in-process, server,
server, in-process, ...), so a machine load that drifts during the run favours neither side.
Reported per (kind, clients, side): mean wall time, generated tokens/s, p50/p95 time to first
token (streams) and latency, the server/in-process throughput ratio, and whether both sides
produced the same text for every request. Prints a table and writes JSON.

    python benchmarks/bench_serve.py --threads 1              # demo pair, CPU
    python benchmarks/bench_serve.py --tiny --clients 1,4     # quick smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
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


def load_engine(args: argparse.Namespace) -> Any:
    from shared_core import BacoEngine, ModelPair

    if args.tiny:
        from shared_core.testing import save_tiny_pair

        folder = Path(args.out).parent / "tiny_pair"
        if not (folder / "base").exists():
            save_tiny_pair(folder)
        return BacoEngine(ModelPair.from_pretrained(folder / "base", folder / "aligned"))
    return BacoEngine(ModelPair.demo())


class Server:
    """The real app on uvicorn in a background thread, bound to a free loopback port."""

    def __init__(self, engine: Any) -> None:
        import uvicorn

        from shared_core.serve.app import create_app

        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}/v1"
        config = uvicorn.Config(create_app(engine, model_name="bench"), log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True
        )

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self.socket.close()


def _percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def _messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Suggest a name for {SUBJECTS[i % len(SUBJECTS)]}."}]


def run_in_process(engine: Any, kind: str, clients: int, options: dict[str, Any]) -> list[dict]:
    """``clients`` threads calling the engine at once; per request: text, TTFT, latency."""
    barrier = threading.Barrier(clients)

    def one(i: int) -> dict[str, Any]:
        barrier.wait()
        start = time.perf_counter()
        if kind == "generate":
            sample = engine.generate(_messages(i), seed=i, **options)[0][0]
            latency = time.perf_counter() - start
            return {"text": sample.text, "tokens": len(sample.token_ids), "ttft": latency,
                    "latency": latency}  # fmt: skip
        first = None
        text, tokens = "", 0
        for event in engine.stream(_messages(i), seed=i, **options):
            if event.text_delta and first is None:
                first = time.perf_counter() - start
            text += event.text_delta
            tokens += event.token_id is not None
        latency = time.perf_counter() - start
        return {"text": text, "tokens": tokens, "ttft": first or latency, "latency": latency}

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(clients)))


async def _run_server(
    url: str, kind: str, clients: int, options: dict[str, Any]
) -> tuple[list[dict], float]:
    """``clients`` SDK users sending at once (clients are built before the clock starts)."""
    import openai

    users = [
        openai.AsyncOpenAI(base_url=url, api_key="unused", timeout=600.0, max_retries=0)
        for _ in range(clients)
    ]
    body = {
        "max_tokens": options["max_new_tokens"],
        "temperature": options["temperature"],
        "top_p": options["top_p"],
    }
    extra = {
        "router": options["router"],
        "gamma": options["gamma"],
        "min_tokens": options["min_new_tokens"],
    }

    async def one(i: int) -> dict[str, Any]:
        start = time.perf_counter()
        call = users[i].chat.completions.create
        if kind == "generate":
            reply = await call(model="bench", messages=_messages(i), seed=i, extra_body=extra,
                               **body)  # fmt: skip
            latency = time.perf_counter() - start
            return {"text": reply.choices[0].message.content,
                    "tokens": reply.usage.completion_tokens, "ttft": latency,
                    "latency": latency}  # fmt: skip
        stream = await call(
            model="bench",
            messages=_messages(i),
            seed=i,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=extra,
            **body,
        )
        first = None
        text, tokens = "", 0
        async for chunk in stream:
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
            for choice in chunk.choices:
                if choice.delta.content:
                    if first is None:
                        first = time.perf_counter() - start
                    text += choice.delta.content
        latency = time.perf_counter() - start
        return {"text": text, "tokens": tokens, "ttft": first or latency, "latency": latency}

    start = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(clients)))
    wall = time.perf_counter() - start
    for user in users:
        await user.close()
    return list(results), wall


def summarise(results: list[dict], wall: float, repeats: int = 1) -> dict[str, float]:
    """Mean wall time per repeat, tokens/s over all repeats, percentiles over all requests."""
    tokens = sum(r["tokens"] for r in results) / repeats
    ttft = [r["ttft"] for r in results]
    latency = [r["latency"] for r in results]
    return {
        "wall_s": wall,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "ttft_p50_s": _percentile(ttft, 50),
        "ttft_p95_s": _percentile(ttft, 95),
        "latency_p50_s": _percentile(latency, 50),
        "latency_p95_s": _percentile(latency, 95),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,8,32", help="comma-separated client counts")
    parser.add_argument("--kinds", default="stream,generate", help="stream and/or generate")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--router", default="p-punc")
    parser.add_argument("--gamma", type=float, default=0.3)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs per side, in ABBA order (default 2)"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny random pair (smoke test)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--out", default="benchmarks/out/bench_serve.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    counts = [int(c) for c in args.clients.split(",")]
    kinds = [k.strip() for k in args.kinds.split(",")]
    options = {
        "router": args.router,
        "gamma": args.gamma,
        "top_p": args.top_p,
        "temperature": args.temperature,
        "max_new_tokens": args.max_new_tokens,
        "min_new_tokens": args.max_new_tokens,  # equal work on both sides
    }
    engine = load_engine(args)
    rows = []
    with Server(engine) as server:
        warm = {**options, "max_new_tokens": 2, "min_new_tokens": 2}
        run_in_process(engine, "generate", 1, warm)
        asyncio.run(_run_server(server.url, "stream", 1, warm))
        for kind in kinds:
            for clients in counts:
                runs: dict[str, list[tuple[list[dict], float]]] = {"in_process": [], "server": []}
                for repeat in range(args.repeats):
                    # ABBA order: a load that drifts during the run favours neither side.
                    order = ("in_process", "server")
                    for side in order if repeat % 2 == 0 else order[::-1]:
                        if side == "server":
                            run = asyncio.run(_run_server(server.url, kind, clients, options))
                        else:
                            start = time.perf_counter()
                            results = run_in_process(engine, kind, clients, options)
                            run = (results, time.perf_counter() - start)
                        runs[side].append(run)
                        print(f"done {kind} x{clients} {side}: {run[1]:.1f} s", flush=True)
                texts = {
                    side: [[r["text"] for r in results] for results, _ in side_runs]
                    for side, side_runs in runs.items()
                }
                same = all(t == texts["in_process"][0] for t in texts["server"])
                base_rate = None
                for side, side_runs in runs.items():
                    row = {"kind": kind, "clients": clients, "side": side}
                    row.update(
                        summarise(
                            [r for results, _ in side_runs for r in results],
                            sum(wall for _, wall in side_runs) / len(side_runs),
                            len(side_runs),
                        )
                    )
                    row["walls_s"] = [wall for _, wall in side_runs]
                    base_rate = base_rate or row["tokens_per_s"]
                    row["ratio_vs_in_process"] = row["tokens_per_s"] / base_rate
                    row["same_text"] = same
                    rows.append(row)
    header = (
        f"{'kind':<9}{'clients':>8} {'side':<11}{'wall s':>8}{'tok/s':>8}{'× in-proc':>10}"
        f"{'TTFT p50':>10}{'TTFT p95':>10}{'lat p50':>9}{'lat p95':>9}{'same':>6}"
    )
    print(header)
    for r in rows:
        ttft = (
            f"{r['ttft_p50_s']:>10.2f}{r['ttft_p95_s']:>10.2f}"
            if r["kind"] == "stream"
            else f"{'—':>10}{'—':>10}"
        )
        print(
            f"{r['kind']:<9}{r['clients']:>8} {r['side']:<11}{r['wall_s']:>8.1f}"
            f"{r['tokens_per_s']:>8.1f}{r['ratio_vs_in_process']:>10.2f}{ttft}"
            f"{r['latency_p50_s']:>9.2f}{r['latency_p95_s']:>9.2f}{r['same_text']!s:>6}"
        )
    meta = {
        **{k: v for k, v in options.items()},
        "pair": "tiny" if args.tiny else "demo",
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
    }
    Path(args.out).write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
