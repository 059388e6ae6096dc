"""What a decode is given: engine options, prepared prompts, and what it borrows from its
engine (:class:`DecodeContext`). Shared by the engine and both decode loops."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from .graph import GraphCache
from .pair import ModelPair


@dataclass(frozen=True)
class DecodeOptions:
    """Engine-level switches that change speed, never outputs (benchmarked in benchmarks/).

    ``share_prefill``: prefill each prompt once and repeat its KV cache for the ``n`` samples.
    ``compact_finished``: drop finished rows from the batch (and the caches) as they finish.
    ``joint_forward``: for a one-weights (base + LoRA) pair, run both views as one batch with
    the adapter switched per row, reading the shared weights once per step.
    ``batch_requests``: merge concurrent ``generate`` calls with the same settings into one
    batched decode of at most ``max_batch_rows`` rows (see :mod:`shared_core.batching`).
    ``lazy_aligned`` (opt-in; changes outputs): in a batch-1 decode (one prompt, ``n=1``)
    with a built-in router that reads only base signals, run the aligned model only when its
    distribution can matter, catching it up on the skipped tokens in one chunk. The
    ``aligned_can_stop`` guard is then not checked while the base model owns the text, so
    the aligned model cannot end the response in the middle of a base span; with
    ``aligned_can_stop=False`` the outputs are those of the eager decode.
    ``graph``: decode on the device with static KV caches and one compiled step, replayed as
    a CUDA graph on a GPU (:mod:`shared_core.graph`); ``None`` (default) turns it on for
    CUDA pairs only. A one-weights pair's joint forward runs there as a fixed row split
    (:mod:`shared_core.lora_split`). Requests it cannot hold (custom router callables, grammar
    constraints, LoRA variants other than plain LoRA on linear layers, lazy mode, a
    sliding-window model's decode longer than its window) take the eager loop, with the
    reason in a debug log.
    ``graph_sync_every``: steps between host reads of the chosen tokens (stream events arrive
    in chunks of this many tokens). ``graph_backend``: the ``torch.compile`` backend
    (``"eager"`` runs the static-cache step uncompiled). ``graph_wait``: a decode whose
    shape has no compiled step yet waits for its compile; by default (``False``, what a
    server wants) the step compiles on a background thread while that decode runs on the
    eager loop, and later decodes of the shape use it. Compiles never hold the engine lock
    (:meth:`BacoEngine.warmup` compiles shapes ahead of use).
    """

    share_prefill: bool = True
    compact_finished: bool = True
    joint_forward: bool = True
    batch_requests: bool = True
    max_batch_rows: int = 64
    lazy_aligned: bool = False
    graph: bool | None = None
    graph_sync_every: int = 8
    graph_backend: str = "inductor"
    graph_wait: bool = False


@dataclass(frozen=True)
class PreparedPrompt:
    """A validated prompt with both models' token ids."""

    messages: list[dict[str, str]]
    aligned_ids: list[int]
    base_ids: list[int]


@dataclass(frozen=True)
class DecodeContext:
    """What a decode borrows from its engine.

    ``compute``: the engine lock with inference mode and autocast, held per step of model
    work that must not interleave with other decodes' (eager forwards, adapter switches);
    ``device_work``: inference mode and autocast without the lock, for work on a decode's
    own buffers (graph steps of pairs with two separate models).
    """

    pair: ModelPair
    options: DecodeOptions
    compute: Callable[[], AbstractContextManager[None]]
    device_work: Callable[[], AbstractContextManager[None]]
    graphs: GraphCache
