"""A one-weights pair's joint forward in a form that ``torch.compile`` and CUDA graphs hold.

The eager loop decodes both views of a base + LoRA pair as one batch through peft's
mixed-adapter batches (``adapter_names=``), which register hooks on every call and pick rows
with Python index lists: host work each step, and a new graph for each row layout. The graph
path instead lays its rows out as a fixed split, ``[base rows; aligned rows]``, runs the
shared weights with the adapter disabled, and lets a forward hook on every LoRA linear layer
add the low-rank update to the aligned half (a slice: no index lists, no per-call hooks).
The shared weights are still read once per step for both views.

The hooks are registered once per model and do nothing unless a :class:`RowSplit` is active,
which happens only under the engine's lock (as every use of the shared weights does).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["RowSplit", "row_split_unsupported"]


def _lora_layers(peft_model: Any) -> list[Any]:
    """The modules of ``peft_model`` that hold LoRA weights."""
    return [m for m in peft_model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]


def row_split_unsupported(peft_model: Any) -> str | None:
    """Why the row split cannot run ``peft_model``'s adapter, or ``None`` when it can.

    Supported: one active plain LoRA adapter on ``nn.Linear`` layers, not merged.
    """
    try:
        from peft import PeftModel
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # pragma: no cover - one-weights pairs need peft
        return "peft is not installed"
    if not isinstance(peft_model, PeftModel):
        return f"{type(peft_model).__name__} is not a peft model"
    adapters = list(getattr(peft_model, "active_adapters", None) or [])
    if len(adapters) != 1:
        return f"{len(adapters)} active adapters (the row split runs exactly one)"
    adapter = adapters[0]
    layers = _lora_layers(peft_model)
    if not layers:
        return "no LoRA layers found"
    for layer in layers:
        if type(layer) is not LoraLinear:
            return f"LoRA on {type(layer).__name__} layers (the row split handles Linear only)"
        if adapter in getattr(layer, "lora_variant", {}):
            return f"a LoRA variant ({type(layer.lora_variant[adapter]).__name__}, e.g. DoRA)"
        if getattr(layer, "merged", False):
            return "the adapter is merged into the weights"
    return None


class _Split:
    """Where the aligned rows start while a split is active (``None``: inactive)."""

    start: int | None = None


_SPLITS: weakref.WeakKeyDictionary[Any, _Split] = weakref.WeakKeyDictionary()


def _install(peft_model: Any, adapter: str) -> _Split:
    """Register the delta hooks on ``peft_model``'s LoRA layers (once per model)."""
    split = _SPLITS.get(peft_model)
    if split is not None:
        return split
    split = _Split()
    for layer in _lora_layers(peft_model):
        layer.register_forward_hook(_delta_hook(split, adapter))
    _SPLITS[peft_model] = split
    return split


def _delta_hook(split: _Split, adapter: str) -> Any:
    def add_delta(module: Any, args: tuple[Any, ...], output: torch.Tensor) -> Any:
        start = split.start
        if start is None:
            return None
        lora_a = module.lora_A[adapter]
        x = args[0][start:].to(lora_a.weight.dtype)
        update = module.lora_B[adapter](lora_a(module.lora_dropout[adapter](x)))
        output[start:] += (update * module.scaling[adapter]).to(output.dtype)
        return output

    return add_delta


class RowSplit:
    """Runs ``peft_model`` on ``[base rows; aligned rows]``: the adapter applies to the rows
    from ``start`` on. Check :func:`row_split_unsupported` first."""

    def __init__(self, peft_model: Any) -> None:
        reason = row_split_unsupported(peft_model)
        if reason is not None:
            raise ValueError(f"cannot split rows between the adapter views: {reason}")
        self.peft_model = peft_model
        self._split = _install(peft_model, peft_model.active_adapters[0])

    @contextmanager
    def active(self, start: int) -> Iterator[None]:
        """Within this block, forwards of the shared weights give the base view on rows
        ``[:start]`` and the aligned view on rows ``[start:]``."""
        with self.peft_model.disable_adapter():
            self._split.start = start
            try:
                yield
            finally:
                self._split.start = None
