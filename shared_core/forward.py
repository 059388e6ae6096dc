"""One forward pass that returns only the last position's logits."""

from __future__ import annotations

import inspect
from functools import cache as _memoize
from typing import Any

import torch

#: Architectures whose ``ForCausalLM`` head is exactly ``lm_head(decoder(x))`` (plus Gemma's
#: optional final soft-capping). For these the decoder body is run directly and the output
#: layer applied to the last hidden state only: with transformers 5 on CPU,
#: ``logits_to_keep=1`` on a left-padded batch was seen to copy the full-vocabulary output
#: layer per row and take ~100x longer.
_PLAIN_HEAD = {
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3",
    "gemma3_text",
    "phi3",
    "olmo",
    "olmo2",
    "granite_moe_shared",
    "smollm3",
    "ministral",
}


def _unwrap(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (LoRA layers stay injected)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


#: peft's name for "no adapter" in a mixed-adapter batch.
NO_ADAPTER = "__base__"


def supports_row_adapters(model: Any) -> bool:
    """True if ``model`` is a PEFT LoRA model that can run a different adapter on each row
    (peft's mixed-adapter batches refuse DoRA adapters)."""
    config = getattr(model, "active_peft_config", None)
    return (
        config is not None
        and str(getattr(config, "peft_type", "")).endswith("LORA")
        and not getattr(config, "modules_to_save", None)
        and not getattr(config, "use_dora", False)
        and hasattr(model, "_enable_peft_forward_hooks")
    )


@_memoize
def _cache_argument(forward: Any) -> str:
    """The name a model's ``forward`` takes its KV cache by.

    transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns and goes
    away in 5.40); earlier 5.x releases only know ``past_key_values``.
    """
    try:
        parameters = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def run_with_cache(module: Any, cache: Any, **inputs: Any) -> tuple[Any, Any]:
    """``module(**inputs)`` with ``cache`` under the argument name its forward expects.

    Returns ``(output, cache after the call)``.
    """
    target = getattr(module, "peft_model", module)  # the base view of a one-weights pair
    target = _unwrap(target)  # PEFT passes keyword arguments through to the wrapped model
    name = _cache_argument(type(target).forward)
    out = module(**inputs, **{name: cache})
    new_cache = getattr(out, "cache", None) if name == "cache" else None
    return out, new_cache if new_cache is not None else out.past_key_values


def head_logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """The output layer (plus Gemma's final soft-capping) on hidden states, as float32."""
    inner = _unwrap(model)
    logits = inner.get_output_embeddings()(hidden)
    cap = getattr(inner.config.get_text_config(), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.float()


def forward_last_logits(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    cache: Any,
    *,
    adapter_names: list[str] | None = None,
) -> tuple[torch.Tensor, Any]:
    """Run ``model`` on ``input_ids`` and return ``(last-position logits [B, V], cache)``.

    A model exposing ``adapter_context()`` (the base view of a one-weights pair) runs inside it.
    ``adapter_names`` (one per row, :data:`NO_ADAPTER` for the bare weights) runs a PEFT LoRA
    model as a mixed-adapter batch: the shared weights are read once for all rows.
    """
    context = getattr(model, "adapter_context", None)
    if context is not None:
        with context():
            return forward_last_logits(
                model.peft_model, input_ids, attention_mask, position_ids, cache
            )
    if adapter_names is not None:
        # peft's own mixed-batch mechanism (what PeftModel.forward(adapter_names=...) uses),
        # entered directly so the decoder-only fast path below still applies.
        with model._enable_peft_forward_hooks(adapter_names=adapter_names):
            return forward_last_logits(model, input_ids, attention_mask, position_ids, cache)
    inner = _unwrap(model)
    model_type = getattr(inner.config, "model_type", "")
    if model_type in _PLAIN_HEAD and hasattr(inner, "get_decoder"):
        out, cache = run_with_cache(
            inner.get_decoder(),
            cache,
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
        )
        return head_logits(inner, out.last_hidden_state[:, -1, :]), cache
    out, cache = run_with_cache(
        model,
        cache,
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[:, -1, :].float(), cache
