"""``baco serve``: command-line options and the server loop (uvicorn, or Ray Serve replicas)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ..cli_common import PAIR_FLAGS, HelpFormatter
from ..loading import check_pair_args
from . import DEFAULT_MAX_QUEUE, require_serve
from .limits import ServeLimits


def add_serve_parser(
    commands: Any, add_model_args: Callable[[argparse.ArgumentParser], None]
) -> argparse.ArgumentParser:
    """Register ``baco serve`` on ``commands`` (model flags added by ``add_model_args``)."""
    serve = commands.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server (chat/completions, completions, models, metrics)",
        description="Serve BACO over OpenAI's API. Needs the serve extra "
        '(pip install -e ".[serve]"); --ray needs the ray extra.',
        formatter_class=HelpFormatter,
    )
    add_model_args(serve)
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument(
        "--max-queue",
        type=int,
        default=DEFAULT_MAX_QUEUE,
        help=f"generation requests in flight before answering 429 (default: {DEFAULT_MAX_QUEUE})",
    )
    serve.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY`")
    serve.add_argument(
        "--served-model-name",
        nargs="+",
        default=None,
        metavar="NAME",
        help="model id(s) the server answers to, first one reported in responses (several "
        "aliases: space- or comma-separated); other ids answer 404 model_not_found (default: "
        "the pair's short name, e.g. baco:demo)",
    )
    serve.add_argument(
        "--calibration", default=None, help="γ calibration JSON for target_base_share"
    )
    serve.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="on SIGTERM/SIGINT, seconds to let in-flight requests finish before cancelling",
    )
    serve.add_argument(
        "--warmup",
        nargs="?",
        const="1,2,4,8",
        default=None,
        metavar="ROWS",
        help="before listening (so /health answers only when ready), compile the GPU graph "
        "path's step for these batch row counts (default 1,2,4,8; without the flag, when "
        "the graph path is on, every batch bucket up to 64 rows) and each --warmup-lengths, "
        "with the default router and sampling settings; other shapes then run eager, never "
        "a compile on a request's way; nothing to do on CPU",
    )
    serve.add_argument(
        "--no-warmup",
        action="store_true",
        help="skip the warm-up (new shapes then compile on a background thread)",
    )
    serve.add_argument(
        "--warmup-lengths",
        default="256,1024",
        metavar="TOKENS",
        help="cache lengths (prompt + max_tokens) to compile with --warmup (default: 256,1024)",
    )
    limits = serve.add_argument_group("request limits (checked before a body is parsed)")
    defaults = ServeLimits()
    for flag, name, what in _LIMIT_FLAGS:
        limits.add_argument(
            flag,
            dest=name,
            type=int,
            default=getattr(defaults, name),
            help=f"{what} (default: {getattr(defaults, name)})",
        )
    serve.add_argument("--log-level", default="info", help="uvicorn log level")
    ray = serve.add_argument_group("Ray Serve (needs the ray extra)")
    ray.add_argument("--ray", action="store_true", help="serve replicas on Ray Serve")
    ray.add_argument("--replicas", type=int, default=1, help="replicas (one engine each)")
    ray.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs per replica")
    ray.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs per replica")
    ray.add_argument(
        "--ray-address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or local)"
    )
    return serve


#: (flag, ServeLimits field, help) of every request limit.
_LIMIT_FLAGS = (
    ("--max-request-bytes", "max_request_bytes", "largest request body in bytes; larger gets 413"),
    ("--max-json-depth", "max_json_depth", "deepest JSON nesting of a request body"),
    ("--max-stop-chars", "max_stop_chars", "longest stop sequence (at most 4 sequences)"),
    ("--max-n", "max_n", "largest n (samples per prompt)"),
    ("--max-tokens-limit", "max_tokens", "largest max_tokens / max_completion_tokens"),
    ("--max-prompts", "max_prompts", "most prompts in one /v1/completions request"),
)


def serve_limits(args: argparse.Namespace) -> ServeLimits:
    """The :class:`ServeLimits` of the flags (defaults where a flag is absent)."""
    defaults = ServeLimits()
    values = {name: getattr(args, name, getattr(defaults, name)) for _, name, _ in _LIMIT_FLAGS}
    try:
        return ServeLimits(**values)
    except ValueError as exc:
        flag = next(f for f, name, _ in _LIMIT_FLAGS if str(exc).startswith(name))
        raise ValueError(f"{flag} must be a positive integer") from exc


def _check_args(args: argparse.Namespace) -> None:
    """Refuse bad server flags before anything is imported or loaded."""
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    if args.max_queue < 1:
        raise ValueError(f"--max-queue must be >= 1, got {args.max_queue}")
    if args.shutdown_timeout < 0:
        raise ValueError(f"--shutdown-timeout must be >= 0, got {args.shutdown_timeout}")
    if args.replicas < 1:
        raise ValueError(f"--replicas must be >= 1, got {args.replicas}")
    if args.gpus_per_replica < 0 or args.cpus_per_replica < 0:
        raise ValueError("--gpus-per-replica and --cpus-per-replica must be >= 0")
    check_pair_args(args.base, args.aligned, args.aligned_adapter, names=PAIR_FLAGS)
    serve_limits(args)
    if args.warmup is not None:
        warmup_shapes(args)


def warmup_shapes(args: argparse.Namespace) -> tuple[list[int], list[int]]:
    """The ``--warmup`` row counts and ``--warmup-lengths``, checked."""
    shapes = []
    for flag, text in (("--warmup", args.warmup), ("--warmup-lengths", args.warmup_lengths)):
        try:
            values = [int(v) for v in str(text).split(",") if v.strip()]
        except ValueError:
            values = []
        if not values or min(values) < 1:
            raise ValueError(f"{flag} takes comma-separated positive integers, got {text!r}")
        shapes.append(values)
    return shapes[0], shapes[1]


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The engine's load options (``shared_core.registry.get_engine`` keywords) from the flags."""
    return {
        "base_model": args.base,
        "aligned_model": args.aligned,
        "aligned_adapter": args.aligned_adapter,
        "dtype": None if args.dtype in (None, "auto") else args.dtype,
        "device_map": args.device_map,
    }


def app_options(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`shared_core.serve.app.create_app` keywords from the flags."""
    return {
        "model_name": args.served_model_name,
        "max_queue": args.max_queue,
        "api_key": args.api_key,
        "calibration": args.calibration,
        "limits": serve_limits(args),
    }


def run_serve_command(args: argparse.Namespace, load_pair: Callable[[Any], Any]) -> int:
    """Run ``baco serve`` until SIGTERM/SIGINT; returns the exit status."""
    _check_args(args)
    require_serve(ray=args.ray)
    if args.ray:
        from .ray_app import run_ray

        return run_ray(args)
    from ..cli_common import set_torch_threads
    from ..engine import BacoEngine
    from .app import create_app

    set_torch_threads(args.threads)
    print("loading the model pair...", file=sys.stderr, flush=True)
    engine = BacoEngine(load_pair(args))
    if not args.no_warmup and engine._graph_wanted():
        from ..graph import BATCH_BUCKETS

        if args.warmup is None:  # as vLLM captures its batch sizes before serving
            cap = engine.options.max_batch_rows
            args.warmup = ",".join(str(b) for b in BATCH_BUCKETS if b <= cap)
        rows, lengths = warmup_shapes(args)
        start = time.monotonic()
        built = engine.warmup(rows=rows, lengths=lengths)
        seconds = time.monotonic() - start
        print(
            f"warm-up: {built} graph step(s) compiled in {seconds:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    app = create_app(engine, **app_options(args))
    return serve_uvicorn(app, args.host, args.port, args.shutdown_timeout, args.log_level)


def serve_uvicorn(
    app: Any, host: str, port: int, shutdown_timeout: float, log_level: str = "info"
) -> int:
    """Run ``app`` on uvicorn; SIGTERM/SIGINT shut it down gracefully and return 0."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=shutdown_timeout,
    )
    server = uvicorn.Server(config)
    if threading.current_thread() is threading.main_thread():
        # uvicorn re-raises the signal it caught once it has shut down; with these handlers
        # that re-raise is a no-op and the command returns 0 instead of dying by the signal.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
    server.run()
    return 0
