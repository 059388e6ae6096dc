"""A process-wide cache of loaded engines, keyed by the pair and its load options.

Framework adapters construct cheaply and call :func:`get_engine` on first use, so copies,
``bind``/``model_copy`` variants and several adapter instances share one set of weights.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from .engine import BacoEngine
from .pair import ModelPair

_ENGINES: dict[str, BacoEngine] = {}
_LOCK = threading.Lock()


def engine_key(
    base_model: str | None,
    aligned_model: str | None,
    *,
    aligned_adapter: str | None = None,
    dtype: str | None = None,
    device_map: Any = None,
    model_kwargs: dict[str, Any] | None = None,
) -> str:
    """A stable string key for one pair + load options."""
    return json.dumps(
        [base_model, aligned_model, aligned_adapter, dtype, device_map, model_kwargs or {}],
        sort_keys=True,
        default=str,
    )


def get_engine(
    base_model: str | None = None,
    aligned_model: str | None = None,
    *,
    aligned_adapter: str | None = None,
    dtype: str | None = None,
    device_map: Any = None,
    model_kwargs: dict[str, Any] | None = None,
) -> BacoEngine:
    """Load (once per process) and return the engine for a pair.

    With no models given this is the embedded demo pair. Raises ``ValueError`` when only one
    of the two models is given.
    """
    key = engine_key(
        base_model,
        aligned_model,
        aligned_adapter=aligned_adapter,
        dtype=dtype,
        device_map=device_map,
        model_kwargs=model_kwargs,
    )
    with _LOCK:
        engine = _ENGINES.get(key)
        if engine is not None:
            return engine
        if base_model is None and aligned_model is None and aligned_adapter is None:
            pair = ModelPair.demo(dtype=dtype, device_map=device_map)
        elif base_model is None or (aligned_model is None and aligned_adapter is None):
            raise ValueError(
                "pass both base_model and aligned_model (or aligned_adapter), or neither to use "
                "the embedded demo pair"
            )
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
        _ENGINES[key] = engine
        return engine


def register_engine(engine: BacoEngine, **key_options: Any) -> None:
    """Put an already-built engine in the cache (e.g. a pair built from in-memory models)."""
    with _LOCK:
        _ENGINES[engine_key(**key_options)] = engine


def clear_engines() -> None:
    """Forget every cached engine (their weights are freed when no one else holds them)."""
    with _LOCK:
        _ENGINES.clear()
