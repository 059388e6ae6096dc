"""A pre-flight memory estimate, so an oversized request fails with advice instead of an OOM."""

from __future__ import annotations

from typing import Any

import torch


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (CUDA free memory, or Linux MemAvailable); None if unknown."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def kv_bytes_per_token(model: Any) -> int:
    """Bytes of KV cache one token costs in ``model`` (all layers, keys and values)."""
    config = model.config.get_text_config()
    layers = getattr(config, "num_hidden_layers", 0) or 0
    heads = getattr(config, "num_key_value_heads", None) or getattr(
        config, "num_attention_heads", 0
    )
    head_dim = getattr(config, "head_dim", None) or (
        getattr(config, "hidden_size", 0) // max(1, getattr(config, "num_attention_heads", 1))
    )
    element = next(model.parameters()).element_size()
    return 2 * layers * heads * head_dim * element


def estimate_decode_bytes(
    models: list[Any], rows: int, tokens_per_row: int, vocab_size: int
) -> int:
    """KV caches of every model plus the per-step float32 vocabulary work tensors."""
    kv = sum(kv_bytes_per_token(m) for m in models) * rows * tokens_per_row
    vocab_work = 8 * rows * vocab_size * 4  # logits, probabilities and cumulative sums
    return kv + vocab_work


def check_fits(
    models: list[Any], rows: int, tokens_per_row: int, vocab_size: int, device: torch.device
) -> None:
    """Raise ``ValueError`` when a decode clearly cannot fit in the free memory of ``device``."""
    free = available_bytes(device)
    if free is None:
        return
    need = estimate_decode_bytes(models, rows, tokens_per_row, vocab_size)
    if need > 0.9 * free:
        raise ValueError(
            f"this request needs about {need / 2**30:.1f} GiB for {rows} rows x "
            f"{tokens_per_row} tokens but only {free / 2**30:.1f} GiB is free on {device}; "
            "lower n, max_new_tokens or the number of prompts per call"
        )
