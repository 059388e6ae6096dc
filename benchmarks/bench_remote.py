"""RemotePair modes against the local engine: requests per generated token and tokens/s.

Three variants decode the same prompts with the same settings in one run:

- ``local``: :class:`BacoEngine` on the pair in-process, ``top_k=k`` (the baseline);
- ``token``: a :class:`RemotePair` in token mode (one request per model per step);
- ``chunk``: a :class:`RemotePair` in chunk mode (``--chunk-tokens`` per proposal).

Servers: in-process fake completion servers backed by the tiny test pair (default), or two
real servers (``--base-url``/``--aligned-url``/``--tokenizer``, plus ``--local-base`` /
``--local-aligned`` / ``--local-adapter`` for the local baseline on the same weights).
Prints a table and writes JSON (``--out``).

    python benchmarks/bench_remote.py --out benchmarks/results/bench_remote_fake.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from shared_core import BacoEngine, ModelPair
from shared_core.remote import RemotePair


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url")
    parser.add_argument("--aligned-url")
    parser.add_argument("--tokenizer")
    parser.add_argument("--base-model")
    parser.add_argument("--aligned-model")
    parser.add_argument("--local-base")
    parser.add_argument("--local-aligned")
    parser.add_argument("--local-adapter")
    parser.add_argument("--router", default="p-punc")
    parser.add_argument("--gamma", type=float, default=0.3)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--top-logprobs", type=int, default=20)
    parser.add_argument("--chunk-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    return parser.parse_args()


PROMPTS = [
    "Tell me a story about a lighthouse.",
    "Name three uses for a paperclip.",
    "Describe a city in the year 3000.",
    "Write a short poem about rain.",
]


def run(engine: BacoEngine, prompts: list[str], options: dict[str, Any]) -> tuple[float, int]:
    start = time.perf_counter()
    out = engine.generate(prompts, **options)
    seconds = time.perf_counter() - start
    return seconds, sum(len(g.token_ids) for row in out for g in row)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    prompts = PROMPTS[: args.prompts]
    options = {
        "n": args.n,
        "seed": 0,
        "max_new_tokens": args.max_new_tokens,
        "min_new_tokens": args.max_new_tokens,
        "router": args.router,
        "gamma": args.gamma,
    }
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        if args.base_url:
            urls = (args.base_url, args.aligned_url)
            tokenizer = args.tokenizer
            names = (args.base_model, args.aligned_model)
            local = None
            if args.local_base:
                local = ModelPair.from_pretrained(
                    args.local_base, args.local_aligned, aligned_adapter=args.local_adapter
                )
            servers = "real servers"
        else:
            from shared_core.testing import save_tiny_pair
            from shared_core.testing_server import FakeCompletionServer

            folder = stack.enter_context(tempfile.TemporaryDirectory())
            base_dir, aligned_dir = save_tiny_pair(Path(folder))
            local = ModelPair.from_pretrained(str(base_dir), str(aligned_dir))
            fakes = [
                stack.enter_context(
                    FakeCompletionServer(
                        m, name=n, end_ids=local.end_ids, tokenizer=local.tokenizer
                    )
                )
                for m, n in ((local.base, "base"), (local.aligned, "aligned"))
            ]
            urls = (fakes[0].url, fakes[1].url)
            tokenizer, names = str(aligned_dir), ("base", "aligned")
            servers = "in-process fake servers (tiny pair, full forward per token, no KV cache)"
        if local is not None:
            engine = BacoEngine(local)
            run(engine, prompts[:1], {**options, "max_new_tokens": 2, "min_new_tokens": 2})
            seconds, tokens = run(engine, prompts, {**options, "top_k": args.top_logprobs})
            rows.append({"variant": "local", "s": seconds, "tokens": tokens, "requests": 0})
        for mode in ("token", "chunk"):
            pair = RemotePair(
                *urls,
                tokenizer=tokenizer,
                base_model=names[0],
                aligned_model=names[1],
                mode=mode,
                top_logprobs=args.top_logprobs,
                chunk_tokens=args.chunk_tokens,
            )
            pair.connect()
            before = pair.requests
            seconds, tokens = run(BacoEngine(pair), prompts, options)
            rows.append(
                {
                    "variant": mode,
                    "s": seconds,
                    "tokens": tokens,
                    "requests": pair.requests - before,
                }
            )
    steps = args.max_new_tokens
    baseline = rows[0]["tokens"] / rows[0]["s"]
    print(
        f"servers: {servers}; {len(prompts)} prompts × n={args.n}, {steps} tokens each, "
        f"router {args.router} γ={args.gamma}, k={args.top_logprobs}, chunk {args.chunk_tokens}"
    )
    print(
        f"| variant | tok/s | × {rows[0]['variant']} | requests | requests / token "
        "| requests / step |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        rate = row["tokens"] / row["s"]
        row["tok_per_s"] = rate
        row["ratio"] = rate / baseline
        row["requests_per_token"] = row["requests"] / row["tokens"]
        row["requests_per_step"] = row["requests"] / steps
        print(
            f"| {row['variant']} | {rate:.1f} | {row['ratio']:.2f} | {row['requests']} | "
            f"{row['requests_per_token']:.3f} | {row['requests_per_step']:.2f} |"
        )
    if args.out:
        recorded = {  # folders by their last part: no paths of this machine in results
            k: Path(v).name
            if k in ("tokenizer", "local_base", "local_aligned", "local_adapter") and v
            else v
            for k, v in vars(args).items()
        }
        Path(args.out).write_text(
            json.dumps({"args": recorded, "servers": servers, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
