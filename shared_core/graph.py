"""The graph decode path: static KV caches, one compiled step, CUDA graphs on a GPU.

The eager loop (:mod:`shared_core.engine`) pays host work every step: Python dispatch of a
few hundred small kernels, a dynamic cache that grows, and a host read of the chosen tokens.
On a GPU that host work, not the models, bounds the speed. This path keeps a decode on the
device:

- both models' KV caches are static (transformers ``StaticLayer`` s) sized to a *batch
  bucket* (rows rounded up to a power of two) and a *length bucket* (columns rounded up to
  a power of two, at least 128, so varied ``max_new_tokens`` share a compiled step), filled
  from the eager prefill (shared across the ``n`` samples as usual); a
  one-weights pair keeps one cache of twice the rows, base views then aligned views
  (:mod:`shared_core.lora_split`);
- :func:`graph_step` does one whole BACO step with fixed shapes and no host
  synchronisation: :func:`~shared_core.step.decode_step` (masking, signals, router, both
  candidates, guards), the finished/length bookkeeping, then both models' forwards of the
  chosen token into their static caches (``logits_to_keep=1``: only the last hidden state
  goes through the output layer). It is compiled with ``torch.compile(fullgraph=True,
  dynamic=False)`` and, on CUDA, captured once per bucket as a ``torch.cuda.CUDAGraph``
  that every later step replays. γ, the router and the sampling knobs are per-row tensors
  of the step's :class:`~shared_core.step.RowState`, so rows of any settings share the graph;
- the host reads the chosen tokens once every ``sync_every`` steps (on CUDA through pinned
  memory with an event, while the device runs the next chunk), and detokenisation, stop
  strings and streaming happen then. A row the host finds finished late discards its extra
  tokens: each row draws from its own random stream, so outputs equal the eager path's.

Used only when it can hold the batch (:func:`~shared_core.graph_executor.
batch_fallback_reason`); otherwise the eager executor runs, with the reason in a debug log.
"""

from __future__ import annotations

import logging
import threading
import types
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from .decode_attention import decode_attention
from .forward import _PLAIN_HEAD, _cache_argument, _unwrap, head_logits
from .lora_split import RowSplit
from .model_state import Handover
from .step import RowState, StepRules, decode_step

logger = logging.getLogger(__name__)

#: Batch buckets: a decode of ``r`` rows runs in the smallest bucket holding ``r``.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
#: The smallest cache length bucket; longer ones are powers of two.
LENGTH_BUCKET = 128


def batch_bucket(rows: int) -> int | None:
    """The smallest batch bucket holding ``rows`` rows (``None``: too many rows)."""
    return next((b for b in BATCH_BUCKETS if b >= rows), None)


def length_bucket(columns: int) -> int:
    """Cache columns allocated for a decode needing ``columns``: a power of two ≥ 128."""
    return max(LENGTH_BUCKET, 1 << max(0, columns - 1).bit_length())


def _sliding_window(config: Any) -> int | None:
    """The attention window of a model with sliding-window layers (``None``: all layers
    attend to everything; ``0``: layer kinds the graph path does not know)."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None:
        return getattr(config, "sliding_window", None)
    kinds = set(layer_types)
    if kinds <= {"full_attention"}:
        return None
    if kinds <= {"full_attention", "sliding_attention"}:
        return getattr(config, "sliding_window", None) or 0
    return 0


def static_length(model: Any, columns: int) -> int:
    """Cache columns to allocate for a decode needing ``columns``: its
    :func:`length_bucket`, capped below a sliding-window model's window (inside it, its
    sliding layers attend to everything, like full-attention layers)."""
    length = length_bucket(columns)
    window = _sliding_window(_unwrap(model).config.get_text_config())
    return min(length, window - 1) if window else length


def _graph_model_reason(model: Any, columns: int) -> str | None:
    """Why ``model`` cannot run a decode of ``columns`` cache columns in the graph path."""
    inner = _unwrap(model)
    config = inner.config.get_text_config()
    if getattr(config, "model_type", "") not in _PLAIN_HEAD or not hasattr(inner, "get_decoder"):
        return f"model type {getattr(config, 'model_type', '?')!r} is not a plain decoder"
    window = _sliding_window(config)
    if window == 0:
        return f"attention layer kinds {sorted(set(config.layer_types))} are not supported"
    if window is not None and columns > window - 1:
        return (
            f"prompt + max_new_tokens need {columns} cache columns, more than the sliding "
            f"window ({window}) holds (static sliding caches are not supported)"
        )
    return None


def _hub_kernel_wrapper(forward: Any) -> Any:
    """The forward a ``kernels`` hub-layer wrapper (``use_kernel_forward_from_hub``) wraps,
    or ``None`` when ``forward`` is not such a wrapper."""
    code = getattr(forward, "__code__", None)
    wrapped = getattr(forward, "__wrapped__", None)
    where = "" if code is None else code.co_filename.replace("\\", "/")
    return wrapped if "/kernels/" in where and wrapped is not None else None


def plain_forwards(model: Any) -> int:
    """Give every layer of ``model`` whose class forward is the ``kernels`` package's hub-layer
    dispatch wrapper its plain forward, as an instance attribute; returns how many.

    transformers decorates its layers with those wrappers whenever ``kernels`` is installed.
    Each call sets and resets a context variable that routes function-level kernels
    (``use_kernelized_func``) to the model's own copies; tracing that under ``torch.compile``
    failed with ``SpeculationLogDivergence`` while another thread ran the same layers, so a
    compile fell back to the eager executor for good. Without the wrapper those functions
    run their torch implementation (what the compiled step wants: the compiler fuses them);
    module-level kernels that kernelization set on a layer itself are kept."""
    inner = _unwrap(model)
    changed = 0
    for module in inner.modules():
        plain = _hub_kernel_wrapper(type(module).forward)
        if plain is not None and "forward" not in module.__dict__:
            module.forward = types.MethodType(plain, module)
            changed += 1
    return changed


@dataclass
class _ModelBuffers:
    """One model's static cache and the fixed-address tensors its forward reads.

    ``halves`` is 2 for a one-weights pair's joint buffers: rows ``[0, bucket)`` are the
    base view and rows ``[bucket, 2 * bucket)`` the aligned view of the same samples.
    """

    model: Any
    cache: Any
    bucket: int
    halves: int
    mask: torch.Tensor  # [halves * B, L] attention mask over the cache columns
    position: torch.Tensor  # [halves * B] position id of the next token fed
    column: torch.Tensor  # [1] cache column the next token goes to
    logits: torch.Tensor  # [halves * B, V] next-token logits (float32)

    def rows(self, samples: torch.Tensor) -> torch.Tensor:
        """Buffer rows of the samples at positions ``samples`` (in every half)."""
        return torch.cat([samples + half * self.bucket for half in range(self.halves)])


@dataclass(frozen=True)
class ModelLayout:
    """What the graph path allocates one model's static buffers from: the model, each cache
    layer's ``(key heads, key size, value heads, value size)``, the cache dtype and device,
    and the length bucket. It holds no tensor, so no eager cache outlives its decode."""

    model: Any
    layers: tuple[tuple[int, int, int, int], ...]
    dtype: torch.dtype
    device: torch.device
    length: int

    @classmethod
    def of(cls, model: Any, layers: Sequence[Any], length: int) -> ModelLayout:
        """The layout of ``model``'s eager cache ``layers`` (with ``keys``/``values``)."""
        shapes = tuple(
            (lay.keys.shape[1], lay.keys.shape[3], lay.values.shape[1], lay.values.shape[3])
            for lay in layers
        )
        first = layers[0].keys
        return cls(model, shapes, first.dtype, first.device, length)


def _allocate(layout: ModelLayout, bucket: int, halves: int, vocab_width: int) -> _ModelBuffers:
    """Static buffers of ``halves * bucket`` rows for ``layout``'s model."""
    from transformers.cache_utils import Cache, StaticLayer

    device, length, rows = layout.device, layout.length, halves * bucket
    # Plain static layers throughout: a sliding-window model runs here only while the whole
    # decode fits in its window (see static_length), where its sliding layers see everything.
    cache = Cache(layers=[StaticLayer(max_cache_len=length) for _ in layout.layers])
    for layer, (key_heads, key_size, value_heads, value_size) in zip(
        cache.layers, layout.layers, strict=True
    ):
        layer.lazy_initialization(
            torch.zeros((rows, key_heads, 1, key_size), dtype=layout.dtype, device=device),
            torch.zeros((rows, value_heads, 1, value_size), dtype=layout.dtype, device=device),
        )
    return _ModelBuffers(
        model=layout.model,
        cache=cache,
        bucket=bucket,
        halves=halves,
        mask=torch.zeros((rows, length), dtype=torch.long, device=device),
        position=torch.zeros(rows, dtype=torch.long, device=device),
        column=torch.zeros(1, dtype=torch.long, device=device),
        logits=torch.zeros((rows, vocab_width), dtype=torch.float32, device=device),
    )


def _clear(buffers: _ModelBuffers) -> None:
    for layer in buffers.cache.layers:
        layer.keys.zero_()
        layer.values.zero_()
    buffers.mask.zero_()
    buffers.mask[:, 0] = 1  # padding rows attend to one slot: their softmax stays finite
    buffers.position.zero_()
    buffers.logits.zero_()


def _load_rows(buffers: _ModelBuffers, source: _ModelBuffers, index: torch.Tensor) -> None:
    """Copy the samples ``index`` of another runner's buffers (compaction to a smaller
    bucket)."""
    target = buffers.rows(torch.arange(index.shape[0], device=index.device))
    picked = source.rows(index)
    _clear(buffers)
    for layer, other in zip(buffers.cache.layers, source.cache.layers, strict=True):
        layer.keys[target] = other.keys[picked]
        layer.values[target] = other.values[picked]
        layer.cumulative_length.copy_(other.cumulative_length)
    buffers.mask[target] = source.mask[picked]
    buffers.position[target] = source.position[picked]
    buffers.column.copy_(source.column)
    buffers.logits[target] = source.logits[picked]


def _load(buffers: _ModelBuffers, state: Handover) -> None:
    """Copy an eager model state (dynamic cache after the first step) into ``buffers``; a
    joint state's rows are its samples' base views, then their aligned views. Rows are a
    prefix, so plain slices address them (no index tensor)."""
    columns = state.columns
    samples = state.mask.shape[0] // buffers.halves
    parts = [slice(h * buffers.bucket, h * buffers.bucket + samples) for h in range(buffers.halves)]
    _clear(buffers)
    for layer, (keys, values) in zip(buffers.cache.layers, state.layers, strict=True):
        for half, rows in enumerate(parts):
            own = slice(half * samples, (half + 1) * samples)
            layer.keys[rows, :, :columns] = keys[own]
            layer.values[rows, :, :columns] = values[own]
        layer.cumulative_length.fill_(columns)
    for half, rows in enumerate(parts):
        own = slice(half * samples, (half + 1) * samples)
        buffers.mask[rows, :columns] = state.mask[own, :columns]
        buffers.position[rows] = state.next_position[own]
        buffers.logits[rows] = state.logits[own, : buffers.logits.shape[1]]
    buffers.column.fill_(columns)


def feed(buffers: _ModelBuffers, tokens: torch.Tensor, cache_arg: str) -> None:
    """Append one token per row to a model's static cache and store its next logits."""
    buffers.mask.index_fill_(1, buffers.column, 1)
    decoder = _unwrap(buffers.model).get_decoder()
    out = decoder(
        input_ids=tokens.unsqueeze(-1),
        attention_mask=buffers.mask,
        position_ids=buffers.position.unsqueeze(-1),
        use_cache=True,
        **{cache_arg: buffers.cache},
    )
    logits = head_logits(buffers.model, out.last_hidden_state[:, -1, :])
    buffers.logits.copy_(logits[:, : buffers.logits.shape[1]])  # output layers may be wider
    buffers.position.add_(1)
    buffers.column.add_(1)


@dataclass
class GraphState:
    """Everything one graph step reads and writes, at fixed addresses.

    The models' buffers are ``base`` and/or ``aligned``, or for a one-weights pair ``joint``
    alone (both views in one batch, see :mod:`shared_core.lora_split`).
    """

    rows: RowState
    step: torch.Tensor  # [] the step being decoded
    generated: torch.Tensor  # [B] tokens decided so far per row (end tokens included)
    budget: torch.Tensor  # [B] the row's max_new_tokens after the context-window clamp
    #: [4, B, 2 * sync_every] per step: chosen token, owner (1 = base), NaN flags of the
    #: base and the aligned model; a ring of two chunks, chunk k in half k % 2
    out: torch.Tensor
    base: _ModelBuffers | None = None
    aligned: _ModelBuffers | None = None
    joint: _ModelBuffers | None = None

    def models(self) -> list[_ModelBuffers]:
        return [b for b in (self.base, self.aligned, self.joint) if b is not None]

    def view_logits(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The base and aligned models' next-token logits ``[B, V]`` (``None``: not run)."""
        if self.joint is not None:
            half = self.joint.bucket
            return self.joint.logits[:half], self.joint.logits[half:]
        return tuple(None if b is None else b.logits for b in (self.base, self.aligned))


def graph_step(rules: StepRules, state: GraphState, cache_arg: str) -> None:
    """One BACO step on fixed-shape buffers: choose, record, book-keep, feed both models."""
    base_logits, aligned_logits = state.view_logits()
    result = decode_step(rules, state.rows, base_logits, aligned_logits)
    slot = (state.step - 1).remainder(state.out.shape[2]).view(1)  # graph steps start at 1
    state.out[0].index_copy_(1, slot, result.token.unsqueeze(-1))
    state.out[1].index_copy_(1, slot, result.owner.long().unsqueeze(-1))
    for part, flags in enumerate((result.base_broken, result.aligned_broken)):
        if flags is not None:
            state.out[2 + part].index_copy_(1, slot, flags.long().unsqueeze(-1))
    state.rows.owner.copy_(result.owner)
    state.rows.prev_token.copy_(result.token)
    state.rows.step.add_(1)
    state.generated.add_(1)
    ended = rules.vocab.is_end[result.token] | (state.generated >= state.budget)
    state.rows.finished.logical_or_(ended)
    for buffers in state.models():
        tokens = result.token.repeat(buffers.halves) if buffers.halves > 1 else result.token
        feed(buffers, tokens, cache_arg)
    state.step.add_(1)


def _new_state(
    bucket: int, sync_every: int, models: dict[str, _ModelBuffers], device: torch.device
) -> GraphState:
    def zeros(*shape: int, dtype: torch.dtype = torch.long) -> torch.Tensor:
        return torch.zeros(shape, dtype=dtype, device=device)

    ring = 2 * sync_every
    return GraphState(
        rows=RowState.zeros(bucket, device),
        step=zeros(),
        generated=zeros(bucket),
        budget=zeros(bucket),
        out=zeros(4, bucket, ring),
        **models,
    )


class GraphRunner:
    """Runs :func:`graph_step` for one bucket: compiled, and on CUDA replayed as a CUDA graph.

    Built once per engine and shape key (compiled and captured on its own, cleared buffers
    by :meth:`prepare`, so a build needs no request), then reused by decodes, which copy
    their state and their γ and sampling knobs into its buffers (:meth:`load`); the compiled
    step and the captured graph read those buffers at fixed addresses, so decodes whose rules
    share :meth:`StepRules.structure` share the runner whatever their knobs. ``layouts`` maps
    ``"base"`` and/or ``"aligned"`` (or ``"joint"``: a one-weights pair's shared model, both
    views in one batch) to the models. The per-chunk transfers use buffers allocated here
    (pinned, with an event per ring half, on CUDA): the chunk loop allocates nothing, copies
    nothing host-to-device synchronously and reads no device value.
    """

    def __init__(
        self,
        rules: StepRules,
        layouts: dict[str, ModelLayout],
        *,
        bucket: int,
        vocab_width: int,
        sync_every: int,
        backend: str,
        device: torch.device,
        pool: Any = None,
    ) -> None:
        self.rules = rules
        self.bucket = bucket
        self.sync_every = sync_every
        models = {
            name: _allocate(layout, bucket, 2 if name == "joint" else 1, vocab_width)
            for name, layout in layouts.items()
        }
        self.state = _new_state(bucket, sync_every, models, device)
        self._split = RowSplit(layouts["joint"].model) if "joint" in layouts else None
        # the base view of a one-weights pair runs with the adapter disabled
        self._views = [
            m.model.adapter_context for m in layouts.values() if hasattr(m.model, "adapter_context")
        ]
        self._configs = [_unwrap(m.model).config for m in layouts.values()]
        if backend != "eager":
            for layout in layouts.values():
                plain_forwards(layout.model)
        model = next(iter(layouts.values())).model
        self.cache_arg = _cache_argument(type(_unwrap(model).get_decoder()).forward)
        state, cache_arg = self.state, self.cache_arg

        def step() -> None:
            graph_step(rules, state, cache_arg)

        self._step: Callable[[], None] = _with_own_code(step)
        if backend != "eager":
            self._step = torch.compile(self._step, fullgraph=True, dynamic=False, backend=backend)
        self._cuda = device.type == "cuda"
        self._pool = pool
        self._graph: Any = None
        self._ready = False
        pinned = {"dtype": torch.long, "pin_memory": self._cuda}
        self._out_host = [torch.zeros((4, bucket, sync_every), **pinned) for _ in range(2)]
        self._out_done = [torch.cuda.Event() if self._cuda else None for _ in range(2)]
        self._send_host = torch.zeros(bucket, **pinned)
        self._send_device = torch.zeros(bucket, dtype=torch.long, device=device)
        self._sent = torch.cuda.Event() if self._cuda else None

    @property
    def nbytes(self) -> int:
        """Device memory held by the runner's buffers (static caches included)."""
        return sum(t.numel() * t.element_size() for t in _tensors(self.state))

    @contextmanager
    def _model_context(self) -> Iterator[None]:
        """What the step's forwards run under: one-token attention that reads the caches in
        place; the row split of a joint model, or the adapter switched off for the base view
        of a one-weights pair."""
        with ExitStack() as stack:
            stack.enter_context(decode_attention(self._configs))
            if self._split is not None:
                stack.enter_context(self._split.active(self.bucket))
            for view in self._views:
                stack.enter_context(view())
            yield

    def load(
        self,
        rules: StepRules,
        rows: RowState,
        budget: Sequence[int],
        generated: Sequence[int],
        handovers: dict[str, Handover],
    ) -> None:
        """Copy a batch's rows (their settings included) and model states into the buffers
        (``handovers``: the eager model states under the names of ``layouts``; ``generated``:
        tokens each row has decided); padding rows are finished from the start."""
        state, count = self.state, rows.seeds.shape[0]
        for target, source in zip(state.rows.tensors(), rows.tensors(), strict=True):
            target.zero_()
            target[:count] = source
        state.rows.finished[count:] = True
        state.step.fill_(1)
        state.generated.zero_()
        state.generated[:count] = self._send(generated)
        state.budget.zero_()
        state.budget[:count] = self._send(budget)
        for name, handover in handovers.items():
            _load(getattr(state, name), handover)

    def load_rows(self, other: GraphRunner, positions: Sequence[int]) -> None:
        """Continue ``other``'s decode with only its rows at ``positions`` (the live ones)."""
        state, source = self.state, other.state
        index = self._send(positions)
        count = index.shape[0]
        for target, values in zip(state.rows.tensors(), source.rows.tensors(), strict=True):
            target.zero_()
            target[:count] = values[index]
        state.rows.finished[count:] = True
        state.step.copy_(source.step)
        for target, values in ((state.generated, source.generated), (state.budget, source.budget)):
            target.zero_()
            target[:count] = values[index]
        for buffers, other_buffers in zip(state.models(), source.models(), strict=True):
            _load_rows(buffers, other_buffers, index)

    def _send(self, values: Sequence[int]) -> torch.Tensor:
        """``values`` as a device tensor, through the runner's fixed (pinned) buffers: an
        asynchronous copy, no allocation. The previous send must have left the host buffer,
        which the stream order makes all but certain by the time the host sends again."""
        if self._sent is not None:
            self._sent.synchronize()
        count = len(values)
        self._send_host.numpy()[:count] = values
        target = self._send_device[:count]
        target.copy_(self._send_host[:count], non_blocking=True)
        if self._sent is not None:
            self._sent.record()
        return target

    def prepare(self) -> None:
        """Compile the step and, on CUDA, capture it as a graph (in the shared memory pool,
        with thread-local capture errors, so other threads' device work goes on), by running
        it on the runner's own cleared buffers: no decode's state is needed or touched."""
        if self._ready:
            return
        for buffers in self.state.models():
            _clear(buffers)
        self.state.rows.finished.fill_(True)
        with self._model_context():
            if self._cuda:
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(3):
                        self._step()
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                    self._step()
                self._graph = graph
            else:
                self._step()
        self._ready = True

    def run(self, steps: int) -> None:
        """Launch ``steps`` steps (asynchronous on CUDA)."""
        if self._graph is not None:
            for _ in range(steps):
                self._graph.replay()
            return
        with self._model_context():
            for _ in range(steps):
                self._step()

    def read(self, first_step: int, steps: int) -> Callable[[], list[list[list[int]]]]:
        """Start copying the results of the chunk of steps ``first_step …`` (chunks start at
        steps ``1 + k · sync_every``) to the host; returns a callable giving ``[4][row][step]``
        (tokens, owners, base NaN flags, aligned NaN flags) once the copy is done."""
        chunk, offset = divmod(first_step - 1, self.sync_every)
        if offset or not 0 < steps <= self.sync_every:
            raise ValueError(f"steps {first_step}+{steps} are not one chunk of the ring")
        half = chunk % 2
        start = half * self.sync_every
        source = self.state.out[:, :, start : start + steps]
        done = self._out_done[half]
        if done is None:
            host = source.tolist()
            return lambda: host
        target = self._out_host[half][:, :, :steps]
        target.copy_(source, non_blocking=True)
        done.record()

        def wait() -> list[list[list[int]]]:
            done.synchronize()
            return target.tolist()

        return wait

    def finish(self, positions: Sequence[int]) -> None:
        """Mark rows the host found finished (stop strings): they decode padding from now."""
        if positions:
            self.state.rows.finished.index_fill_(0, self._send(positions), True)


def _with_own_code(function: Callable[[], None]) -> Callable[[], None]:
    """``function`` with a code object of its own.

    Dynamo keeps the compiled variants of a function on its code object, at most
    ``recompile_limit`` (8) of them, and with ``fullgraph=True`` the next one is an error.
    Every runner (bucket, model lengths, rule structure) compiles its own variant, so each
    gets its own code object and its own cache entry.
    """
    code = function.__code__.replace()
    return types.FunctionType(
        code, function.__globals__, function.__name__, function.__defaults__, function.__closure__
    )


def _tensors(state: GraphState) -> list[torch.Tensor]:
    out = [*state.rows.tensors(), state.step, state.generated, state.budget, state.out]
    for buffers in state.models():
        out += [buffers.mask, buffers.position, buffers.column, buffers.logits]
        for layer in buffers.cache.layers:
            out += [layer.keys, layer.values, layer.cumulative_length]
    return out


class GraphCache:
    """Graph runners kept by an engine, keyed by settings and shapes; one decode at a time
    each.

    A key's first runner is built (compiled, and captured on CUDA) by :meth:`get`: on a
    background thread while the batch goes on on the eager executor, or in the caller with
    ``wait=True``. Once :attr:`frozen` (after a warm-up) keys that were not built are never
    compiled: no request waits behind a compile. At most ``max_free`` idle runners are kept
    (least recently used go first; each holds static KV caches); :meth:`release_idle` frees
    them under memory pressure. Keys whose build failed are remembered, so later batches stay
    eager at once; an out-of-memory is not remembered (the build is tried again later).
    """

    def __init__(self, max_free: int = 4) -> None:
        self._lock = threading.Lock()
        self._free: OrderedDict[Any, list[GraphRunner]] = OrderedDict()
        self._failed: dict[Any, str] = {}
        self._building: dict[Any, threading.Event] = {}
        self._pool: Any = None
        self._built: set[Any] = set()
        self.max_free = max_free
        #: after a warm-up (:meth:`~shared_core.engine.BacoEngine.warmup`): shapes not built
        #: then are never compiled, they run on the eager executor
        self.frozen = False
        #: runners built so far (each compiled, and captured on CUDA, once)
        self.builds = 0

    def pool(self, device: torch.device) -> Any:
        """The CUDA graph memory pool every runner of this cache captures into."""
        if device.type != "cuda":
            return None
        with self._lock:
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            return self._pool

    def failure(self, key: Any) -> str | None:
        """Why runners for ``key`` could not be built (``None``: no failure recorded)."""
        return self._failed.get(key)

    def record_failure(self, key: Any, error: BaseException) -> str:
        """Remember that ``key`` failed to compile or capture (it is not tried again)."""
        reason = f"{type(error).__name__}: {error}"
        with self._lock:
            self._failed[key] = reason
        return reason

    def get(self, key: Any, build: Callable[[], GraphRunner], *, wait: bool) -> GraphRunner | None:
        """An idle runner for ``key``, or a new one from ``build``: built here when ``wait``,
        else on the background builder (``None`` is returned meanwhile). ``None`` also when
        the key's build failed (the reason is logged once)."""
        with self._lock:
            runner = self._take(key)
            if runner is not None or key in self._failed:
                return runner
            if self.frozen and key not in self._built:
                return None  # outside the warmed set: eager, never a compile on the way
            pending = self._building.get(key)
            mine = pending is None
            if mine:
                pending = self._building[key] = threading.Event()
        if mine and wait:
            runner = self._build(key, build)
            self._done_building(key, pending)
            return runner
        if mine:
            # not a daemon: the interpreter waits for a compile running at exit (a daemon
            # thread killed inside the compiler aborted the process, exit code 134)
            threading.Thread(
                target=self._build_in_background,
                args=(key, build, pending),
                name="baco-graph-build",
                daemon=False,
            ).start()
            return None
        if not wait:
            return None
        pending.wait()
        return self.acquire(key)

    def _build_in_background(
        self, key: Any, build: Callable[[], GraphRunner], pending: threading.Event
    ) -> None:
        runner = self._build(key, build)
        if runner is not None:
            self.release(key, runner)
        self._done_building(key, pending)

    def _build(self, key: Any, build: Callable[[], GraphRunner]) -> GraphRunner | None:
        try:
            runner = build()
        except torch.OutOfMemoryError as error:
            logger.warning(
                "baco: out of memory while preparing a graph step (%s); this decode stays on "
                "the eager loop and the shape is tried again later",
                error,
            )
            return None
        except Exception as error:  # any compiler or capture failure
            reason = self.record_failure(key, error)
            logger.warning(
                "baco: the graph path could not compile or capture a step (%s); the eager "
                "loop runs this shape from now on",
                reason,
            )
            return None
        with self._lock:
            self.builds += 1
            self._built.add(key)
        return runner

    def _done_building(self, key: Any, pending: threading.Event) -> None:
        with self._lock:
            self._building.pop(key, None)
        pending.set()

    def _take(self, key: Any) -> GraphRunner | None:
        runners = self._free.get(key)
        if not runners:
            return None
        runner = runners.pop()
        if not runners:
            del self._free[key]
        return runner

    def acquire(self, key: Any) -> GraphRunner | None:
        with self._lock:
            return self._take(key)

    def release(self, key: Any, runner: GraphRunner) -> None:
        with self._lock:
            self._free.setdefault(key, []).append(runner)
            self._free.move_to_end(key)
            while sum(len(r) for r in self._free.values()) > self.max_free:
                oldest = next(iter(self._free))
                self._free[oldest].pop(0)
                if not self._free[oldest]:
                    del self._free[oldest]

    def idle_bytes(self) -> int:
        """Memory held by idle runners (freed by :meth:`release_idle`)."""
        with self._lock:
            return sum(r.nbytes for runners in self._free.values() for r in runners)

    def release_idle(self) -> int:
        """Drop every idle runner (their shapes rebuild on next use); returns bytes freed."""
        with self._lock:
            freed = sum(r.nbytes for runners in self._free.values() for r in runners)
            self._free.clear()
        if freed and torch.cuda.is_available():
            torch.cuda.empty_cache()
        return freed
