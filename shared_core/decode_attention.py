"""Attention for the graph path's one-token decode steps that reads the KV cache in place.

transformers' ``sdpa`` attention decodes one token per row of a grouped-query model (more
query heads than key/value heads) by folding each key/value head's query heads into its
query rows, but only outside ``torch.compile``: a compiled step instead copies every layer's
keys and values ``num_key_value_groups`` times (``repeat_kv``), which for a static cache of
64 rows is more memory traffic per step than the weights. The graph path compiles its step,
so while it runs, its models use :func:`one_token_attention`, registered with transformers
under :data:`ATTENTION_NAME` (:func:`decode_attention`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

#: The attention implementation name the graph path's models use while it runs.
ATTENTION_NAME = "baco_one_token_sdpa"


def one_token_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' ``sdpa`` attention; inside a compiled step, one query token per row of a
    grouped-query model attends on the key/value heads as they are (no copy of the cache).

    Outside ``torch.compile`` it is exactly ``sdpa``: the switch to this implementation
    (:func:`decode_attention`) is process-wide while any graph step runs, and other threads'
    eager forwards of the same model must give what they give without it."""
    groups = getattr(module, "num_key_value_groups", 1)
    shared_mask = attention_mask is None or attention_mask.shape[1] == 1
    plain = kwargs.get("position_bias") is None and kwargs.get("softcap") is None
    packable = groups > 1 and query.shape[2] == 1 and shared_mask and plain and not dropout
    if packable and torch.compiler.is_compiling():
        return grouped_one_token_attention(query, key, value, attention_mask, groups, scaling)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(
        module,
        query,
        key,
        value,
        attention_mask,
        dropout=dropout,
        scaling=scaling,
        is_causal=is_causal,
        **kwargs,
    )


def grouped_one_token_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    groups: int,
    scaling: float | None,
) -> tuple[torch.Tensor, None]:
    """Attention of one query token per row (``query [B, H, 1, D]``) on key/value heads
    shared by ``groups`` query heads each, as one ``scaled_dot_product_attention`` call:
    query heads h·groups … h·groups + groups − 1 become the rows of key/value head h."""
    batch, heads, _, dim = query.shape
    packed = query.reshape(batch, heads // groups, groups, dim)
    out = torch.nn.functional.scaled_dot_product_attention(
        packed, key, value, attn_mask=attention_mask, scale=scaling
    )
    return out.reshape(batch, heads, 1, value.shape[-1]).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, one_token_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


#: How many running graph steps use each switched config (by id), under ``_SWITCH_LOCK``.
_USERS: dict[int, int] = {}
_SWITCH_LOCK = threading.Lock()


@contextmanager
def decode_attention(configs: Sequence[Any]) -> Iterator[None]:
    """Within the block, models whose config in ``configs`` uses ``sdpa`` attend with
    :func:`one_token_attention`; other implementations (eager, flash, flex) are left as
    they are. Thread-safe: the switch is counted per config, so overlapping blocks (graph
    steps of several decodes) restore ``sdpa`` only when the last one ends; meanwhile other
    threads' eager forwards still compute ``sdpa`` (see :func:`one_token_attention`)."""
    _register()
    unique = {id(config): config for config in configs}.values()
    switched = []
    with _SWITCH_LOCK:
        for config in unique:
            if id(config) in _USERS:
                _USERS[id(config)] += 1
            elif config._attn_implementation == "sdpa":
                config._attn_implementation = ATTENTION_NAME
                _USERS[id(config)] = 1
            else:
                continue
            switched.append(config)
    try:
        yield
    finally:
        with _SWITCH_LOCK:
            for config in switched:
                _USERS[id(config)] -= 1
                if not _USERS[id(config)]:
                    del _USERS[id(config)]
                    config._attn_implementation = "sdpa"
