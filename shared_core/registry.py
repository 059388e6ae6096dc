"""A process-wide cache of loaded engines, keyed by the pair and its load options.

Framework adapters construct cheaply and call :func:`get_engine` on first use, so copies,
``bind``/``model_copy`` variants and several adapter instances share one set of weights.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from .engine import BacoEngine
from .loading import check_pair_args
from .pair import ModelPair

_ENGINES: dict[str, BacoEngine] = {}
_LOADING: dict[str, threading.Lock] = {}  # one lock per key while its pair loads
_LOCK = threading.Lock()  # guards the two dicts only; never held while weights load


def dtype_name(dtype: Any) -> str | None:
    """``torch.bfloat16``, ``"torch.bfloat16"`` and ``"bfloat16"`` all as ``"bfloat16"``."""
    if dtype is None:
        return None
    return str(dtype).strip().removeprefix("torch.")


def engine_key(
    base_model: str | None = None,
    aligned_model: str | None = None,
    *,
    aligned_adapter: str | None = None,
    dtype: Any = None,
    device_map: Any = None,
    model_kwargs: dict[str, Any] | None = None,
    remote: dict[str, Any] | None = None,
) -> str:
    """A stable string key for one pair + load options."""
    if remote is not None:
        return json.dumps(["remote", remote], sort_keys=True, default=str)
    return json.dumps(
        [
            base_model,
            aligned_model,
            aligned_adapter,
            dtype_name(dtype),
            device_map,
            model_kwargs or {},
        ],
        sort_keys=True,
        default=str,
    )


def get_engine(
    base_model: str | None = None,
    aligned_model: str | None = None,
    *,
    aligned_adapter: str | None = None,
    dtype: Any = None,
    device_map: Any = None,
    model_kwargs: dict[str, Any] | None = None,
    remote: dict[str, Any] | None = None,
) -> BacoEngine:
    """Load (once per process) and return the engine for a pair.

    With no models given this is the embedded demo pair; ``remote`` (the keyword arguments
    of a :class:`~shared_core.remote.RemotePair`) names a pair behind completion servers.
    Raises ``ValueError`` when only one of the two models is given. Loading one pair never
    blocks users of other pairs: the weights load under that pair's own lock, and concurrent
    callers of the same pair wait for the one load.
    """
    demo = remote is None and check_pair_args(base_model, aligned_model, aligned_adapter)
    key = engine_key(
        base_model,
        aligned_model,
        aligned_adapter=aligned_adapter,
        dtype=dtype,
        device_map=device_map,
        model_kwargs=model_kwargs,
        remote=remote,
    )
    with _LOCK:
        engine = _ENGINES.get(key)
        if engine is not None:
            return engine
        key_lock = _LOADING.setdefault(key, threading.Lock())
    with key_lock:
        with _LOCK:
            engine = _ENGINES.get(key)
        if engine is not None:
            return engine  # loaded by the caller we waited for
        if remote is not None:
            from .remote import RemotePair

            pair = RemotePair(**remote)
        elif demo:
            pair = ModelPair.demo(dtype=dtype, device_map=device_map)
        else:
            pair = ModelPair.from_pretrained(
                base_model,
                aligned_model,
                aligned_adapter=aligned_adapter,
                dtype=dtype,
                device_map=device_map,
                **(model_kwargs or {}),
            )
        engine = BacoEngine(pair)
        with _LOCK:
            _ENGINES[key] = engine
            _LOADING.pop(key, None)
        return engine


def register_engine(engine: BacoEngine, **key_options: Any) -> None:
    """Put an already-built engine in the cache (e.g. a pair built from in-memory models)."""
    with _LOCK:
        _ENGINES[engine_key(**key_options)] = engine


def clear_engines() -> None:
    """Forget every cached engine (their weights are freed when no one else holds them)."""
    with _LOCK:
        _ENGINES.clear()
