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
    """transformers' ``sdpa`` attention, with one query token per row of a grouped-query
    model attending on the key/value heads as they are (no copy of the cache)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    batch, heads, length, dim = query.shape
    shared_mask = attention_mask is None or attention_mask.shape[1] == 1
    plain = kwargs.get("position_bias") is None and kwargs.get("softcap") is None
    if groups == 1 or length != 1 or not shared_mask or not plain or dropout:
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
    # query heads h·groups … h·groups + groups − 1 share key/value head h: they become its rows
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


@contextmanager
def decode_attention(configs: Sequence[Any]) -> Iterator[None]:
    """Within the block, models whose config in ``configs`` uses ``sdpa`` attend with
    :func:`one_token_attention`; other implementations (eager, flash, flex) are left as
    they are. Not thread-safe: the engine runs it under its lock."""
    _register()
    unique = {id(config): config for config in configs}.values()
    switched = [config for config in unique if config._attn_implementation == "sdpa"]
    for config in switched:
        config._attn_implementation = ATTENTION_NAME
    try:
        yield
    finally:
        for config in switched:
            config._attn_implementation = "sdpa"
