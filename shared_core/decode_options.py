"""What a decode is given: engine options and prepared prompts."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DecodeOptions:
    """Engine-level switches that change speed, never outputs (benchmarked in benchmarks/).

    ``share_prefill``: prefill each prompt once and repeat its KV cache for the ``n`` samples.
    ``compact_finished``: kept for compatibility and ignored: the scheduler always drops rows
    from the batch (and their cache rows) as they finish.
    ``joint_forward``: for a one-weights (base + LoRA) pair, run both views as one batch with
    the adapter switched per row, reading the shared weights once per step.
    ``batch_requests``: continuous batching (:mod:`shared_core.scheduler`): concurrent
    calls and streams, whatever their settings, share one batch of at most
    ``max_batch_rows`` rows, joining and leaving at step boundaries; ``False`` runs one
    request at a time (the baseline the benchmarks compare against).
    ``lazy_aligned`` (opt-in; changes outputs): in a one-row batch (one prompt, ``n=1``, no
    other request running; others wait until it ends)
    with a built-in router that reads only base signals, run the aligned model only when its
    distribution can matter, catching it up on the skipped tokens in one chunk. The
    ``aligned_can_stop`` guard is then not checked while the base model owns the text, so
    the aligned model cannot end the response in the middle of a base span; with
    ``aligned_can_stop=False`` the outputs are those of the eager decode.
    ``graph``: decode on the device with static KV caches and one compiled step, replayed as
    a CUDA graph on a GPU (:mod:`shared_core.graph`); ``None`` (default) turns it on for
    CUDA pairs only. A one-weights pair's joint forward runs there as a fixed row split
    (:mod:`shared_core.lora_split`). When it takes the batch and when it hands it back to the
    eager executor (rows joining) is in :mod:`shared_core.graph_executor`; batches it cannot
    hold (custom router callables, grammar constraints, log-probabilities, LoRA variants
    other than plain LoRA on linear layers, lazy mode, a sliding-window model's decode
    longer than its window) stay on the eager executor, with the reason in a debug log.
    ``graph_sync_every``: steps between host reads of the chosen tokens (stream events arrive
    in chunks of this many tokens). ``graph_backend``: the ``torch.compile`` backend
    (``"eager"`` runs the static-cache step uncompiled). ``graph_wait``: a decode whose
    shape has no compiled step yet waits for its compile; by default (``False``, what a
    server wants) the step compiles on a background thread while the batch goes on on the
    eager executor, and the graph path takes it once the build is ready
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
