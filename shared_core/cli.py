"""The ``baco`` command line: ``baco generate``, ``baco demo`` and friends."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from .cli_common import (
    DTYPES,  # noqa: F401  (re-exported for callers of the old location)
    HelpFormatter,
    add_model_args,
    check_generation_options,
    load_pair,
    set_torch_threads,
)
from .routers import ROUTER_NAMES


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors read ``baco: error: …`` in every subcommand too."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"baco: error: {message}\n")


def _add_sampling_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", type=int, default=4, help="samples per prompt")
    parser.add_argument("--router", default="p-punc", help=f"one of {', '.join(ROUTER_NAMES)}")
    parser.add_argument(
        "--gamma", type=float, default=None, help="router threshold γ (default: the router's)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens per sample")
    parser.add_argument(
        "--min-new-tokens", type=int, default=None, help="end tokens banned before this many"
    )
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k likeliest (0: off)")
    parser.add_argument("--min-p", type=float, default=None, help="min-p truncation (off)")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: fresh randomness)")
    parser.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    from .demo import DEMO_MIN_P, DEMO_TOP_P

    parser = _Parser(
        prog="baco",
        description="BACO: diverse generation from a base + aligned model pair.",
        formatter_class=HelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser(
        "generate",
        help="generate samples for one prompt",
        description="Generate n samples for one prompt with BACO decoding and print them with "
        "their base share and switches.",
        formatter_class=HelpFormatter,
    )
    gen.add_argument("prompt", help="the user prompt")
    gen.add_argument("--system", default=None, help="optional system message")
    gen.add_argument(
        "--stream",
        action="store_true",
        help="print the first sample's tokens as they come (then every sample's statistics "
        "and the other samples' text)",
    )
    add_model_args(gen)
    _add_sampling_args(gen)

    demo = commands.add_parser(
        "demo",
        help="aligned model alone vs BACO, side by side, on the embedded pair",
        description="Sample the aligned model alone and BACO on the same prompts and show "
        "them side by side, base-model tokens highlighted, with a diversity figure for each.",
        formatter_class=HelpFormatter,
    )
    demo.add_argument("prompts", nargs="*", help="prompts (default: built-in open-ended ones)")
    demo.add_argument("-k", type=int, default=5, help="samples per prompt and method")
    demo.add_argument("--router", default="p-punc", help=f"one of {', '.join(ROUTER_NAMES)}")
    demo.add_argument(
        "--gamma", type=float, default=None, help="router threshold γ (default: the demo's)"
    )
    demo.add_argument("--max-new-tokens", type=int, default=64, help="tokens per sample")
    demo.add_argument(
        "--top-p",
        type=float,
        default=DEMO_TOP_P,
        help="nucleus sampling mass (1: off; min-p trims the tail, docs/results.md)",
    )
    demo.add_argument(
        "--min-p",
        type=float,
        default=DEMO_MIN_P,
        help="min-p truncation, measured on the demo pair (docs/results.md)",
    )
    demo.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    demo.add_argument("--seed", type=int, default=0, help="seed of every method")
    demo.add_argument("--no-color", action="store_true", help="mark base tokens with « »")
    demo.add_argument(
        "--precision",
        choices=("bf16", "fp32"),
        default="fp32",
        help="fp32 (exact) or bf16 autocast: faster only on CPUs with bf16 matrix "
        "units (AMX); measured slower on a 2-core AMD EPYC (benchmarks/RESULTS.md)",
    )
    add_model_args(demo)

    from .eval.cli import add_eval_parser

    add_eval_parser(commands)
    from .serve.cli import add_serve_parser

    add_serve_parser(commands, add_model_args)
    return parser


def _generation_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "n": args.n,
        "router": args.router,
        "gamma": args.gamma,
        "max_new_tokens": args.max_new_tokens,
        "min_new_tokens": args.min_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "min_p": args.min_p,
        "seed": args.seed,
        "stop": args.stop,
    }


def run_generate(args: argparse.Namespace) -> int:
    from .engine import BacoEngine
    from .prompts import normalise_messages

    prompt: Any = args.prompt
    if args.system:
        prompt = [{"role": "system", "content": args.system}, {"role": "user", "content": prompt}]
    normalise_messages(prompt)  # validate the prompt and options before any model work
    options = _generation_options(args)
    check_generation_options(options)
    set_torch_threads(args.threads)
    engine = BacoEngine(load_pair(args))
    if args.stream:
        # Sample 1's tokens as they come; every sample's statistics (and the other samples'
        # text, decoded in the same batch) once it is done.
        print(f"--- sample 1/{args.n}  (streamed)", flush=True)
        finished: dict[int, Any] = {}
        for event in engine.stream(prompt, **options):
            if event.sample_index == 0:
                print(event.text_delta, end="", flush=True)
            if event.generation is not None:
                finished[event.sample_index] = event.generation
        print()
        for index in sorted(finished):
            _print_sample(finished[index], args.n, text=index != 0)
        return 0
    for generation in engine.generate(prompt, **options)[0]:
        _print_sample(generation, args.n)
    return 0


def _print_sample(generation: Any, n: int, *, text: bool = True) -> None:
    """A sample's header line (base share, switches, finish reason), then its text."""
    print(
        f"--- sample {generation.sample_index + 1}/{n}  base share "
        f"{generation.base_share:.2f}  switches {generation.switches}  "
        f"({generation.finish_reason})"
    )
    if text:
        print(generation.text)


def run_demo_command(args: argparse.Namespace) -> int:
    import torch

    from .demo import DEMO_GAMMA, DEMO_PROMPTS, run_demo
    from .engine import BacoEngine
    from .prompts import normalise_messages

    gamma = (
        args.gamma
        if args.gamma is not None
        else (DEMO_GAMMA if args.router.lower().replace("_", "-") == "p-punc" else None)
    )
    check_generation_options(
        {
            "router": args.router,
            "gamma": gamma,
            "n": args.k,
            "max_new_tokens": args.max_new_tokens,
            "top_p": args.top_p,
            "min_p": args.min_p,
            "temperature": args.temperature,
            "seed": args.seed,
        },
        n_flag="-k",
    )
    prompts = args.prompts or list(DEMO_PROMPTS)
    for index, prompt in enumerate(prompts):
        normalise_messages(prompt, index=index)
    set_torch_threads(args.threads)
    print(
        "loading the model pair (the first run converts the demo base model once)...",
        file=sys.stderr,
        flush=True,
    )
    start = time.perf_counter()
    pair = load_pair(args)
    print(f"loaded {pair.short_name} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    autocast = torch.bfloat16 if args.precision == "bf16" else None
    run_demo(
        BacoEngine(pair, autocast_dtype=autocast),
        prompts,
        k=args.k,
        max_new_tokens=args.max_new_tokens,
        router=args.router,
        gamma=gamma,
        top_p=args.top_p,
        min_p=args.min_p,
        temperature=args.temperature,
        seed=args.seed,
        color=False if args.no_color else None,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``baco`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            return run_generate(args)
        if args.command == "demo":
            return run_demo_command(args)
        if args.command == "eval":
            from .eval.cli import run_eval_command

            return run_eval_command(args)
        if args.command == "serve":
            from .serve.cli import run_serve_command

            return run_serve_command(args, load_pair)
    except (ValueError, TypeError, FileNotFoundError, OSError, ImportError) as exc:
        print(f"baco: error: {exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:  # a model produced NaN/inf logits mid-generation
        print(f"baco: error: {exc}", file=sys.stderr)
        return 1
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
