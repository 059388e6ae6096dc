"""The graph decode path: static KV caches, one compiled step, CUDA graphs on a GPU.

The eager loop (:mod:`shared_core.engine`) pays host work every step: Python dispatch of a
few hundred small kernels, a dynamic cache that grows, and a host read of the chosen tokens.
On a GPU that host work, not the models, bounds the speed. This path keeps a decode on the
device:

- both models' KV caches are static (transformers ``StaticLayer`` s) sized to a *batch
  bucket* (rows rounded up to a power of two) and a *length bucket* (a multiple of 128
  columns), filled from the eager prefill (shared across the ``n`` samples as usual); a
  one-weights pair keeps one cache of twice the rows, base views then aligned views
  (:mod:`shared_core.lora_split`);
- :func:`graph_step` does one whole BACO step with fixed shapes and no host
  synchronisation: :func:`~shared_core.step.decode_step` (masking, signals, router, both
  candidates, guards), the finished/length bookkeeping, then both models' forwards of the
  chosen token into their static caches (``logits_to_keep=1``: only the last hidden state
  goes through the output layer). It is compiled with ``torch.compile(fullgraph=True,
  dynamic=False)`` and, on CUDA, captured once per bucket as a ``torch.cuda.CUDAGraph``
  that every later step replays. γ and the sampling knobs are read from tensors
  (:class:`~shared_core.step.StepInputs`), so new values reuse the graph;
- the host reads the chosen tokens once every ``sync_every`` steps (on CUDA through pinned
  memory with an event, while the device runs the next chunk), and detokenisation, stop
  strings and streaming happen then. A row the host finds finished late discards its extra
  tokens: each row draws from its own random stream, so outputs equal the eager path's.

Used only when it can hold the request (see :func:`graph_fallback_reason`); otherwise the
eager loop runs, with the reason in a debug log.
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
from .lora_split import RowSplit, row_split_unsupported
from .step import RowState, StepInputs, StepRules, decode_step

logger = logging.getLogger(__name__)

#: Batch buckets: a decode of ``r`` rows runs in the smallest bucket holding ``r``.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
#: Cache lengths are rounded up to a multiple of this.
LENGTH_BUCKET = 128


def batch_bucket(rows: int) -> int | None:
    """The smallest batch bucket holding ``rows`` rows (``None``: too many rows)."""
    return next((b for b in BATCH_BUCKETS if b >= rows), None)


def length_bucket(columns: int) -> int:
    return -(-columns // LENGTH_BUCKET) * LENGTH_BUCKET


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
    """Cache columns to allocate for a decode needing ``columns``: a multiple of
    :data:`LENGTH_BUCKET`, capped below a sliding-window model's window (inside it, its
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


def graph_fallback_reason(
    pair: Any,
    params: Any,
    *,
    rows: int,
    joint: bool,
    lazy: bool,
    constrained: bool,
    columns: int = 0,
) -> str | None:
    """Why a decode must take the eager loop, or ``None`` when the graph path can run it.

    ``columns``: the cache columns the decode needs (prompt, space slot and new tokens)."""
    spec = params.spec
    if not isinstance(spec.source, str):
        return "a custom router callable (it may branch on tensors or run host code)"
    if constrained:
        return "grammar-constrained decoding (its token mask is filled on the host every step)"
    if joint:
        reason = row_split_unsupported(pair.aligned)
        if reason is not None:
            return f"a one-weights pair's joint forward: {reason}"
    elif getattr(pair, "shares_weights", False) and spec.uses_base and spec.uses_aligned:
        reason = row_split_unsupported(pair.aligned) or "DecodeOptions.joint_forward is off"
        return f"a one-weights pair's two views without the joint forward: {reason}"
    if lazy:
        return "lazy aligned catch-up (data-dependent forwards)"
    if batch_bucket(rows) is None:
        return f"{rows} rows exceed the largest batch bucket {BATCH_BUCKETS[-1]}"
    for name, model, used in (
        ("base", pair.base, spec.uses_base),
        ("aligned", pair.aligned, spec.uses_aligned),
    ):
        reason = _graph_model_reason(model, columns) if used else None
        if reason is not None:
            return f"the {name} model: {reason}"
    return None


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


def _allocate(
    model: Any, layers: Sequence[Any], bucket: int, halves: int, length: int, vocab_width: int
) -> _ModelBuffers:
    """Static buffers of ``halves * bucket`` rows for ``model``; ``layers`` (cache layers
    with ``keys``/``values``) give each layer's heads, head size, dtype and device."""
    from transformers.cache_utils import Cache, StaticLayer

    device = layers[0].keys.device
    rows = halves * bucket
    # Plain static layers throughout: a sliding-window model runs here only while the whole
    # decode fits in its window (see static_length), where its sliding layers see everything.
    cache = Cache(layers=[StaticLayer(max_cache_len=length) for _ in layers])
    for layer, source in zip(cache.layers, layers, strict=True):
        keys, values = source.keys, source.values
        layer.lazy_initialization(
            keys.new_zeros((rows, keys.shape[1], 1, keys.shape[3])),
            values.new_zeros((rows, values.shape[1], 1, values.shape[3])),
        )
    return _ModelBuffers(
        model=model,
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


def _load(buffers: _ModelBuffers, state: Any) -> None:
    """Copy an eager model state (dynamic cache after the first step) into ``buffers``; a
    joint state's rows are its samples' base views, then their aligned views."""
    columns = state.cache.get_seq_length()
    samples = state.mask.shape[0] // buffers.halves
    target = buffers.rows(torch.arange(samples, device=buffers.mask.device))
    _clear(buffers)
    for layer, source in zip(buffers.cache.layers, state.cache.layers, strict=True):
        layer.keys[target, :, :columns] = source.keys
        layer.values[target, :, :columns] = source.values
        layer.cumulative_length.fill_(columns)
    buffers.mask[target, :columns] = state.mask[:, :columns]
    buffers.position[target] = state.next_position + 1  # position of the step-1 token
    buffers.column.fill_(columns)
    buffers.logits[target] = state.logits


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
    buffers.logits.copy_(head_logits(buffers.model, out.last_hidden_state[:, -1, :]))
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
    out_token: torch.Tensor  # [B, 2 * sync_every] chosen tokens, a ring of two chunks
    out_owner: torch.Tensor  # [B, 2 * sync_every]
    out_broken: torch.Tensor  # [2, B, 2 * sync_every] NaN flags (base, aligned)
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
    result = decode_step(
        rules, state.rows, base_logits, aligned_logits, state.step, first_step=False
    )
    slot = state.step.remainder(state.out_token.shape[1]).view(1)
    state.out_token.index_copy_(1, slot, result.token.unsqueeze(-1))
    state.out_owner.index_copy_(1, slot, result.owner.unsqueeze(-1))
    for part, flags in enumerate((result.base_broken, result.aligned_broken)):
        if flags is not None:
            state.out_broken[part].index_copy_(1, slot, flags.unsqueeze(-1))
    state.rows.owner.copy_(result.owner)
    state.rows.prev_token.copy_(result.token)
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
        rows=RowState(
            seeds=zeros(bucket),
            sample_index=zeros(bucket),
            owner=zeros(bucket, dtype=torch.bool),
            prev_token=zeros(bucket),
            finished=zeros(bucket, dtype=torch.bool),
        ),
        step=zeros(),
        generated=zeros(bucket),
        budget=zeros(bucket),
        out_token=zeros(bucket, ring),
        out_owner=zeros(bucket, ring, dtype=torch.bool),
        out_broken=zeros(2, bucket, ring, dtype=torch.bool),
        **models,
    )


@dataclass(frozen=True)
class ModelSource:
    """A model the graph path feeds: the model, its eager cache layers after the first step
    (they give heads, head size, dtype and device) and its length bucket."""

    model: Any
    layers: Sequence[Any]
    length: int


class GraphRunner:
    """Runs :func:`graph_step` for one bucket: compiled, and on CUDA replayed as a CUDA graph.

    Built once per engine and shape key, then reused by later decodes, which copy their state
    and their γ and sampling knobs into its buffers (:meth:`load`); the compiled step and the
    captured graph read those buffers at fixed addresses, so decodes whose rules share
    :meth:`StepRules.structure` share the runner whatever their knobs. ``sources`` maps
    ``"base"`` and/or ``"aligned"`` (or ``"joint"``: a one-weights pair's shared model, both
    views in one batch) to the models.
    """

    def __init__(
        self,
        rules: StepRules,
        sources: dict[str, ModelSource],
        *,
        bucket: int,
        vocab_width: int,
        sync_every: int,
        backend: str,
        device: torch.device,
    ) -> None:
        self.inputs = StepInputs.allocate(device)
        self.rules = rules = rules.for_graph(self.inputs)
        self.bucket = bucket
        self.sync_every = sync_every
        models = {
            name: _allocate(
                source.model,
                source.layers,
                bucket,
                2 if name == "joint" else 1,
                source.length,
                vocab_width,
            )
            for name, source in sources.items()
        }
        self.state = _new_state(bucket, sync_every, models, device)
        self._split = RowSplit(sources["joint"].model) if "joint" in sources else None
        # the base view of a one-weights pair runs with the adapter disabled
        self._views = [
            s.model.adapter_context for s in sources.values() if hasattr(s.model, "adapter_context")
        ]
        self._configs = [_unwrap(s.model).config for s in sources.values()]
        model = next(iter(sources.values())).model
        self.cache_arg = _cache_argument(type(_unwrap(model).get_decoder()).forward)
        state, cache_arg = self.state, self.cache_arg

        def step() -> None:
            graph_step(rules, state, cache_arg)

        self._step: Callable[[], None] = _with_own_code(step)
        if backend != "eager":
            self._step = torch.compile(self._step, fullgraph=True, dynamic=False, backend=backend)
        self._cuda = device.type == "cuda"
        self._graph: Any = None
        self._ready = False

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
        budget: torch.Tensor,
        generated: int,
        model_states: dict[str, Any],
    ) -> None:
        """Copy a decode's knobs (from ``rules``) and its state after the first step into
        the buffers (``model_states``: the eager model states under the names of
        ``sources``); padding rows are finished from the start."""
        self.inputs.fill(rules)
        state, count = self.state, rows.seeds.shape[0]
        for target, source in zip(state.rows.tensors(), rows.tensors(), strict=True):
            target.zero_()
            target[:count] = source
        state.rows.finished[count:] = True
        state.step.fill_(generated)
        state.generated.zero_()
        state.generated[:count] = generated
        state.budget.zero_()
        state.budget[:count] = budget
        for name, model_state in model_states.items():
            _load(getattr(state, name), model_state)

    def load_rows(self, other: GraphRunner, positions: Sequence[int]) -> None:
        """Continue ``other``'s decode with only its rows at ``positions`` (the live ones)."""
        state, source = self.state, other.state
        self.inputs.copy_(other.inputs)
        index = torch.tensor(list(positions), device=state.step.device)
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

    def prepare(self) -> None:
        """Compile the step and, on CUDA, capture it as a graph, by running it on the loaded
        buffers (three times on a side stream before the capture on CUDA, once elsewhere);
        the buffers are restored afterwards, so preparing changes no output. A failure here
        (an unsupported operator, a capture error) leaves the decode's state untouched."""
        if self._ready:
            return
        saved = [t.clone() for t in _tensors(self.state)]
        with self._model_context():
            if self._cuda:
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(3):
                        self._step()
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self._step()
                self._graph = graph
            else:
                self._step()
        for target, value in zip(_tensors(self.state), saved, strict=True):
            target.copy_(value)
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

    def read(self, first_step: int, steps: int) -> Any:
        """Start copying the results of steps ``first_step …`` to the host; returns a
        callable giving ``(tokens, owners, base_broken, aligned_broken)`` as nested lists
        ``[row][step]`` once the copy is done."""
        ring = self.state.out_token.shape[1]
        slots = [(first_step + i) % ring for i in range(steps)]
        index = torch.tensor(slots, device=self.state.out_token.device)
        packed = torch.cat(
            [
                self.state.out_token.index_select(1, index),
                self.state.out_owner.index_select(1, index).long(),
                self.state.out_broken[0].index_select(1, index).long(),
                self.state.out_broken[1].index_select(1, index).long(),
            ],
            dim=1,
        )
        if not self._cuda:
            host = packed.tolist()
            return lambda: _unpack(host, steps)
        pinned = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
        pinned.copy_(packed, non_blocking=True)
        done = torch.cuda.Event()
        done.record()

        def wait() -> Any:
            done.synchronize()
            return _unpack(pinned.tolist(), steps)

        return wait

    def finish(self, positions: Sequence[int]) -> None:
        """Mark rows the host found finished (stop strings): they decode padding from now."""
        if positions:
            index = torch.tensor(list(positions), device=self.state.rows.finished.device)
            self.state.rows.finished.index_fill_(0, index, True)


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


def _unpack(host: list[list[int]], steps: int) -> tuple[list[list[int]], ...]:
    return tuple([row[i * steps : (i + 1) * steps] for row in host] for i in range(4))


def _tensors(state: GraphState) -> list[torch.Tensor]:
    out = [*state.rows.tensors(), state.step, state.generated, state.budget]
    out += [state.out_token, state.out_owner, state.out_broken]
    for buffers in state.models():
        out += [buffers.mask, buffers.position, buffers.column, buffers.logits]
        for layer in buffers.cache.layers:
            out += [layer.keys, layer.values, layer.cumulative_length]
    return out


class GraphCache:
    """Graph runners kept by an engine, keyed by settings and shapes; one decode at a time
    each. At most ``max_free`` idle runners are kept (least recently used go first), since
    each holds static KV caches. Keys whose runner failed to compile or capture are
    remembered, so later decodes take the eager loop at once."""

    def __init__(self, max_free: int = 4) -> None:
        self._lock = threading.Lock()
        self._free: OrderedDict[Any, list[GraphRunner]] = OrderedDict()
        self._failed: dict[Any, str] = {}
        self.max_free = max_free

    def failure(self, key: Any) -> str | None:
        """Why runners for ``key`` could not be built (``None``: no failure recorded)."""
        return self._failed.get(key)

    def record_failure(self, key: Any, error: BaseException) -> str:
        """Remember that ``key`` failed to compile or capture (it is not tried again)."""
        reason = f"{type(error).__name__}: {error}"
        with self._lock:
            self._failed[key] = reason
        return reason

    def acquire(self, key: Any) -> GraphRunner | None:
        with self._lock:
            runners = self._free.get(key)
            if not runners:
                return None
            runner = runners.pop()
            if not runners:
                del self._free[key]
            return runner

    def release(self, key: Any, runner: GraphRunner) -> None:
        with self._lock:
            self._free.setdefault(key, []).append(runner)
            self._free.move_to_end(key)
            while sum(len(r) for r in self._free.values()) > self.max_free:
                oldest = next(iter(self._free))
                self._free[oldest].pop(0)
                if not self._free[oldest]:
                    del self._free[oldest]
