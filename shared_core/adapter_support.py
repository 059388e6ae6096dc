"""What the LangChain and LlamaIndex adapters share: option merging, usage and statistics.

Adapters call these so that option names, defaults, validation and reported numbers are the
same in every framework.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .params import GenerationParams
from .types import Generation

#: Adapter field name -> engine option name, for every per-call decoding option.
OPTION_FIELDS: dict[str, str] = {
    "router": "router",
    "gamma": "gamma",
    "content_source": "content_source",
    "aligned_starts": "aligned_starts",
    "aligned_can_stop": "aligned_can_stop",
    "temperature": "temperature",
    "max_tokens": "max_new_tokens",
    "max_new_tokens": "max_new_tokens",
    "min_tokens": "min_new_tokens",
    "min_new_tokens": "min_new_tokens",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "n": "n",
    "seed": "seed",
    "stop": "stop",
}


#: Adapter fields that are per-call decoding options (both adapters declare these fields).
ADAPTER_OPTION_FIELDS: tuple[str, ...] = (
    "router",
    "gamma",
    "content_source",
    "aligned_starts",
    "aligned_can_stop",
    "temperature",
    "max_tokens",
    "min_tokens",
    "top_p",
    "top_k",
    "min_p",
    "n",
    "seed",
    "target_base_share",
    "calibration",
)


def field_options(adapter: object) -> dict[str, Any]:
    """The values of an adapter's decoding-option fields (absent fields are skipped)."""
    return {
        name: getattr(adapter, name) for name in ADAPTER_OPTION_FIELDS if hasattr(adapter, name)
    }


def merge_options(
    defaults: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Engine options from adapter field values with per-call ``overrides`` on top.

    ``target_base_share`` (with an optional ``calibration`` file from ``baco eval
    --calibrate``; default: the shipped demo-pair calibration) sets gamma to the value that
    gives that mean base share, unless a per-call gamma is given.
    Keys not in :data:`OPTION_FIELDS` are ignored (frameworks pass extras such as ``timeout``);
    ``None`` means "not set". A per-call ``router`` without a per-call ``gamma`` uses that
    router's default gamma (a field gamma tuned for another router family may not even be in
    range). The result is validated (``ValueError``/``TypeError``).
    """
    options: dict[str, Any] = {}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    for source in (defaults, overrides):
        for key, value in source.items():
            if key in OPTION_FIELDS and value is not None:
                options[OPTION_FIELDS[key]] = value
    if "router" in overrides and "gamma" not in overrides:
        options.pop("gamma", None)
    target = overrides.get("target_base_share", defaults.get("target_base_share"))
    if target is not None and "gamma" not in overrides:
        from .calibration import gamma_for_base_share

        calibration = overrides.get("calibration", defaults.get("calibration"))
        router = options.get("router", "p-punc")
        if not isinstance(router, str):
            raise TypeError("target_base_share needs a named router, not a callable")
        options["gamma"] = gamma_for_base_share(router, target, calibration)
    GenerationParams().with_overrides(**options)
    return options


def combine_stop(*stops: str | Sequence[str] | None) -> list[str] | None:
    """Union of several stop settings (field default and per-call), order kept."""
    out: list[str] = []
    for stop in stops:
        if stop is None:
            continue
        for s in [stop] if isinstance(stop, str) else list(stop):
            if s not in out:
                out.append(s)
    return out or None


def usage_dict(generations: Sequence[Generation]) -> dict[str, int]:
    """Token usage of one request: the prompt counted once, completions summed."""
    if not generations:
        return {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    prompt = generations[0].usage.prompt_tokens
    completion = sum(g.usage.completion_tokens for g in generations)
    return {
        "input_tokens": prompt,
        "output_tokens": completion,
        "total_tokens": prompt + completion,
    }


def statistics_dict(generation: Generation, *, with_sources: bool = False) -> dict[str, Any]:
    """BACO statistics of one sample (router, gamma, base share, switches[, sources])."""
    stats = generation.statistics()
    stats["finish_reason"] = generation.finish_reason
    if with_sources:
        stats["sources"] = list(generation.sources)
    return stats
