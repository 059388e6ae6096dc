"""The ``baco serve`` app as a Ray Serve deployment: one engine per replica.

Use it from the command line (``baco serve --ray --replicas 2 [--gpus-per-replica 1]``) or
with Ray's own CLI through the :func:`build_app` builder::

    serve run shared_core.serve.ray_app:build_app replicas=2 gpus_per_replica=1 \
        base=meta-llama/Llama-3.1-8B aligned=meta-llama/Llama-3.1-8B-Instruct

Every node of the cluster needs baco (with the ``ray`` extra) and access to the model files.
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Mapping
from typing import Any

from ray import serve

from . import DEFAULT_MAX_QUEUE
from .limits import ServeLimits, limit_names


@serve.ingress()
class BacoReplica:
    """One replica: loads its own engine, then serves the FastAPI app built for it."""

    def __init__(
        self, model: Mapping[str, Any], server: Mapping[str, Any], threads: int | None = None
    ) -> None:
        from ..registry import get_engine

        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        self.engine = get_engine(**dict(model))
        self.server = dict(server)

    def __serve_build_asgi_app__(self) -> Any:
        from .app import create_app

        return create_app(self.engine, **self.server)


def deployment(
    model: Mapping[str, Any],
    server: Mapping[str, Any],
    *,
    replicas: int = 1,
    gpus_per_replica: float = 0.0,
    cpus_per_replica: float = 1.0,
    threads: int | None = None,
) -> Any:
    """A bound Ray Serve application of ``replicas`` BACO replicas.

    ``model``: :func:`shared_core.registry.get_engine` keywords; ``server``:
    :func:`shared_core.serve.app.create_app` keywords. Each replica reserves
    ``gpus_per_replica`` GPUs and ``cpus_per_replica`` CPUs (``ray_actor_options``).
    """
    options: dict[str, Any] = {"num_cpus": cpus_per_replica}
    if gpus_per_replica:
        options["num_gpus"] = gpus_per_replica
    # Admission is per replica; Ray's own per-replica bound matches it.
    max_ongoing = int(server.get("max_queue") or DEFAULT_MAX_QUEUE)
    return (
        serve.deployment(BacoReplica)
        .options(
            name="baco",
            num_replicas=replicas,
            ray_actor_options=options,
            max_ongoing_requests=max_ongoing,
        )
        .bind(dict(model), dict(server), threads)
    )


def _number(value: Any, kind: type) -> Any:
    return None if value is None else kind(value)


#: The ``key=value`` arguments :func:`build_app` takes (the request limits are
#: :class:`~shared_core.serve.limits.ServeLimits`' fields).
BUILD_ARGS = (
    "base",
    "aligned",
    "aligned_adapter",
    "dtype",
    "device_map",
    "replicas",
    "gpus_per_replica",
    "cpus_per_replica",
    "threads",
    "max_queue",
    "api_key",
    "served_model_name",
    "calibration",
    *limit_names(),
)


def build_app(args: Mapping[str, Any]) -> Any:
    """Builder for ``serve run shared_core.serve.ray_app:build_app key=value ...``.

    Keys: :data:`BUILD_ARGS` (model, replica resources, server options and the request
    limits of :class:`~shared_core.serve.limits.ServeLimits`); an unknown key is an error
    naming the valid ones, not silently ignored.
    """
    unknown = sorted(set(args) - set(BUILD_ARGS))
    if unknown:
        raise ValueError(
            f"build_app: unknown argument(s) {', '.join(unknown)}; valid: {', '.join(BUILD_ARGS)}"
        )
    dtype = args.get("dtype")
    model = {
        "base_model": args.get("base"),
        "aligned_model": args.get("aligned"),
        "aligned_adapter": args.get("aligned_adapter"),
        "dtype": None if dtype in (None, "auto") else dtype,
        "device_map": args.get("device_map"),
    }
    server = {
        "model_name": args.get("served_model_name"),
        "max_queue": int(args.get("max_queue", DEFAULT_MAX_QUEUE)),
        "api_key": args.get("api_key"),
        "calibration": args.get("calibration"),
        "limits": ServeLimits(
            **{name: int(args[name]) for name in limit_names() if args.get(name) is not None}
        ),
    }
    return deployment(
        model,
        server,
        replicas=int(args.get("replicas", 1)),
        gpus_per_replica=float(args.get("gpus_per_replica", 0.0)),
        cpus_per_replica=float(args.get("cpus_per_replica", 1.0)),
        threads=_number(args.get("threads"), int),
    )


def connect(address: str | None = None) -> None:
    """Connect to the Ray cluster at ``address`` (default: ``$RAY_ADDRESS``, or a local one)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False)


def deploy(app: Any, host: str, port: int, *, name: str = "baco") -> None:
    """Start Serve's HTTP proxy on ``host:port`` and deploy ``app`` (returns when it is up)."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name=name, route_prefix="/", blocking=False)


def start(
    app: Any, host: str, port: int, *, address: str | None = None, name: str = "baco"
) -> None:
    """:func:`connect`, then :func:`deploy`."""
    connect(address)
    deploy(app, host, port, name=name)


def run_ray(args: argparse.Namespace) -> int:
    """``baco serve --ray``: deploy the replicas and wait for SIGTERM/SIGINT, then shut down."""
    from .cli import app_options, model_options

    app = deployment(
        model_options(args),
        app_options(args),
        replicas=args.replicas,
        gpus_per_replica=args.gpus_per_replica,
        cpus_per_replica=args.cpus_per_replica,
        threads=args.threads,
    )
    connect(args.ray_address)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which installs its own
        signal.signal(sig, lambda *_: stop.set())
    deploy(app, args.host, args.port)
    print(
        f"baco: {args.replicas} replica(s) serving on http://{args.host}:{args.port}/v1",
        flush=True,
    )
    stop.wait()
    print("baco: shutting down the replicas", flush=True)
    serve.shutdown()
    import ray

    ray.shutdown()
    return 0
