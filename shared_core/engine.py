"""The public BACO engine: request validation, batching of concurrent calls, streaming.

The decode itself (both models in lockstep, a router choosing each token) runs in
:mod:`shared_core.eager_loop` and, on the graph path, :mod:`shared_core.graph_loop`; both
share :mod:`shared_core.step` and :mod:`shared_core.rows`.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from typing import Any

import torch

from .batching import Cancelled, RequestQueue
from .decode_options import DecodeContext, DecodeOptions, PreparedPrompt
from .eager_loop import EagerDecode
from .graph import LENGTH_BUCKET, GraphCache
from .memory import check_fits
from .pair import ModelPair
from .params import GenerationParams
from .prompts import Prompt, aligned_prompt_ids, base_prompt_ids, normalise_messages
from .remote import RemotePair
from .sampling import prompt_seeds
from .structured import ConstraintError
from .types import Generation, StreamEvent

__all__ = ["BacoEngine", "DecodeOptions", "PreparedPrompt", "is_single_prompt"]

logger = logging.getLogger(__name__)


def _seed(params: GenerationParams) -> int:
    """The request's seed, or a fresh random one."""
    return params.seed if params.seed is not None else secrets.randbits(63)


def _constraint_failure(samples: list[Generation], index: int) -> ConstraintError | None:
    """The error of a prompt with a constrained sample that could not continue, if any."""
    failed = [g for g in samples if g.finish_reason == "error"]
    if not failed:
        return None
    first = failed[0]
    error = ConstraintError(
        f"prompt {index}, sample {first.sample_index}: constrained decoding failed: "
        f"{first.error} ({len(failed)} of {len(samples)} samples failed)"
    )
    error.generations = samples  # type: ignore[attr-defined]
    return error


def is_single_prompt(prompts: Any) -> bool:
    """True for one prompt (a string or a message list), False for a list of prompts."""
    if isinstance(prompts, str):
        return True
    return (
        isinstance(prompts, Sequence)
        and len(prompts) > 0
        and all(hasattr(m, "keys") for m in prompts)
    )


class BacoEngine:
    """Batched BACO decoding over a :class:`ModelPair`.

    One engine may be shared by threads and coroutines. Concurrent ``generate`` calls with the
    same settings are merged into one batched decode (:class:`~shared_core.batching.
    RequestQueue`); other decodes and streams interleave step by step, since each step's model
    work runs under a lock and a stream holds nothing between events (an abandoned stream
    blocks no one). Each decode batches all samples of all its prompts. ``autocast_dtype``
    (e.g. ``torch.bfloat16``) runs the forwards under autocast, which is faster on CPUs with
    bf16 units but changes numerics.
    """

    def __init__(
        self,
        pair: ModelPair | RemotePair,
        defaults: GenerationParams | None = None,
        *,
        autocast_dtype: torch.dtype | None = None,
        options: DecodeOptions | None = None,
    ) -> None:
        self.pair = pair
        self.defaults = defaults or GenerationParams()
        self.autocast_dtype = autocast_dtype
        self.options = options or DecodeOptions()
        self._lock = threading.Lock()
        self._graphs = GraphCache()
        self._queue = (
            RequestQueue(self._run_batch, max_rows=self.options.max_batch_rows)
            if self.options.batch_requests
            else None
        )

    @property
    def tokenizer(self) -> Any:
        return self.pair.tokenizer

    def params(self, **options: Any) -> GenerationParams:
        """The engine defaults with per-call ``options`` applied and validated."""
        return self.defaults.with_overrides(**options)

    def prepare(
        self, prompt: Prompt, index: int = 0, *, params: GenerationParams
    ) -> PreparedPrompt:
        """Validate and tokenize one prompt for both models (no model work)."""
        messages = normalise_messages(prompt, index=index)
        aligned_ids = aligned_prompt_ids(self.pair.tokenizer, prompt, messages)
        base_ids = base_prompt_ids(self.pair.base_tokenizer, messages, self.pair.base_template)
        window = self.pair.context_window
        longest = max(
            len(aligned_ids) if params.spec.uses_aligned else 0,
            len(base_ids) if params.spec.uses_base else 0,
        )
        if longest >= window:
            raise ValueError(
                f"prompt {index} is {longest} tokens long but the model context window is "
                f"{window} tokens; shorten the prompt"
            )
        return PreparedPrompt(messages=messages, aligned_ids=aligned_ids, base_ids=base_ids)

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` in the pair's tokenizer (no special tokens)."""
        return len(self.pair.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        *,
        return_exceptions: bool = False,
        cancel: threading.Event | None = None,
        **options: Any,
    ) -> list[list[Generation]]:
        """Generate ``n`` samples for each prompt; returns one list of samples per prompt.

        ``prompts`` is one prompt (a string or a list of ``{"role", "content"}`` messages) or
        a list of prompts, decoded together in one batch. ``options`` are
        :class:`GenerationParams` fields. Everything is validated before any model work: a bad
        prompt raises an error naming its index, or, with ``return_exceptions=True``, takes the
        exception's place in the result while the other prompts are still generated; a batch
        that fails while decoding (e.g. a server refused one prompt) is then retried prompt by
        prompt, each with the samples it would have drawn in the batch.
        Setting ``cancel`` (e.g. when the client of a server request went away) stops this
        call's rows at the next step; it then returns the samples finished so far.
        """
        params, prepared, failures = self._prepare_all(prompts, options, return_exceptions)
        results: list[list[Generation]] = []
        if prepared:
            batch = [p for _, p in prepared]
            if not return_exceptions or len(batch) == 1:
                results = self._submit(batch, params, cancel)
            else:
                if params.seed is None:  # one seed for the batch and any retry alone
                    params = replace(params, seed=_seed(params))
                try:
                    results = self._submit(batch, params, cancel)
                except Exception:  # e.g. a server refused one prompt: retry each alone
                    results = []
                    for one in batch:
                        try:
                            results.append(self._submit([one], params, cancel)[0])
                        except Exception as exc:
                            results.append(exc)
        out: list[Any] = [None] * (len(prepared) + len(failures))
        for (index, _), row in zip(prepared, results, strict=True):
            out[index] = row
        for index, error in failures.items():
            out[index] = error
        for index, row in enumerate(out):
            failed = None if isinstance(row, Exception) else _constraint_failure(row, index)
            if failed is not None:
                if not return_exceptions:
                    raise failed
                out[index] = failed
        return out

    def _submit(
        self,
        batch: list[PreparedPrompt],
        params: GenerationParams,
        cancel: threading.Event | None,
    ) -> list[list[Generation]]:
        """Decode ``batch`` through the request queue (or directly when it is off)."""
        if self._queue is not None:
            return self._queue.submit(batch, params, cancel)
        cancelled = (
            None
            if cancel is None
            else (lambda: set(range(len(batch))) if cancel.is_set() else set())
        )
        return self._run_batch(batch, params, prompt_seeds(_seed(params), batch), cancelled)

    def _run_batch(
        self,
        prompts: Sequence[PreparedPrompt],
        params: GenerationParams,
        seeds: Sequence[int],
        cancelled: Cancelled | None = None,
    ) -> list[list[Generation]]:
        """Decode ``prompts`` (one seed each, see :func:`prompt_seeds`) in one batch; ``n``
        samples per prompt; the rows of prompts ``cancelled`` names stop early."""
        prompts = list(prompts)
        self._check_memory(prompts, params)
        results: list[list[Generation | None]] = [[None] * params.n for _ in prompts]
        for event in self._decode(prompts, params, seeds, cancelled):
            if event.generation is not None:
                results[event.prompt_index][event.sample_index] = event.generation
        return [[g for g in row if g is not None] for row in results]

    def stream(self, prompts: Prompt | Sequence[Prompt], **options: Any) -> Iterator[StreamEvent]:
        """Stream the samples of one prompt (or of several, batched) as :class:`StreamEvent` s.

        Validation happens eagerly, when ``stream`` is called. Closing the iterator early
        (``break``, ``close()``) stops the decode and releases the engine.
        """
        params, prepared, _ = self._prepare_all(prompts, options, False)
        batch = [p for _, p in prepared]
        self._check_memory(batch, params)
        return self._decode(batch, params, prompt_seeds(_seed(params), batch))

    def _prepare_all(
        self, prompts: Prompt | Sequence[Prompt], options: dict[str, Any], keep_going: bool
    ) -> tuple[GenerationParams, list[tuple[int, PreparedPrompt]], dict[int, Exception]]:
        """Validate options and every prompt; collect per-prompt errors when ``keep_going``."""
        batch = [prompts] if is_single_prompt(prompts) else list(prompts)  # type: ignore[list-item]
        if not batch:
            raise ValueError("no prompts given")
        params = self.params(**options)
        prepared: list[tuple[int, PreparedPrompt]] = []
        failures: dict[int, Exception] = {}
        for index, prompt in enumerate(batch):
            try:
                prepared.append((index, self.prepare(prompt, index, params=params)))
            except (ValueError, TypeError) as exc:
                if not keep_going:
                    raise
                failures[index] = exc
        return params, prepared, failures

    def _check_memory(self, prompts: list[PreparedPrompt], params: GenerationParams) -> None:
        """Refuse, with advice, a batch whose KV caches and logits cannot fit in free memory."""
        if self.remote:
            return  # the servers hold the KV caches
        spec = params.spec
        models = [
            m
            for m, used in (
                (self.pair.base, spec.uses_base),
                (self.pair.aligned, spec.uses_aligned),
            )
            if used
        ]
        longest = max(max(len(p.aligned_ids), len(p.base_ids)) for p in prompts)
        need = (models, len(prompts) * params.n, longest + params.max_new_tokens)
        try:
            check_fits(*need, self.pair.vocab_size, self.pair.device)
        except ValueError:
            # idle graph runners' static caches are memory this request may have
            if not self._graphs.release_idle():
                raise
            logger.info("baco: released idle graph runners to make room for a request")
            check_fits(*need, self.pair.vocab_size, self.pair.device)

    def warmup(
        self,
        *,
        rows: Sequence[int] = (1,),
        lengths: Sequence[int] = (LENGTH_BUCKET,),
        **options: Any,
    ) -> int:
        """Compile (and on CUDA capture) the graph path's step ahead of use, for decodes of
        ``options`` (router, sampling knobs: those of the requests to come) with each number
        of ``rows`` (prompts × ``n``) and cache length in ``lengths`` (prompt + new tokens;
        see :func:`~shared_core.graph.length_bucket`). Each shape runs the first steps of a
        decode, waiting for its compile; returns the number of steps built. Nothing to do
        (0) when the graph path is off."""
        wanted = self.options.graph
        if self.remote or not (self.pair.device.type == "cuda" if wanted is None else wanted):
            return 0
        before = self._graphs.builds
        params = self.params(**options)
        prompt = self.prepare("Hi", params=params)
        longest = max(len(prompt.aligned_ids), len(prompt.base_ids))
        context = self._context(replace(self.options, graph_wait=True))
        for count in rows:
            for length in lengths:
                budget = max(2, min(length, self.pair.context_window) - longest - 2)
                shape = params.with_overrides(n=count, max_new_tokens=budget, stop=[])
                events = EagerDecode(context, [prompt], shape, [0]).run()
                for seen, _ in enumerate(events):
                    if seen >= count:  # past step 0: the graph loop has its runner
                        break
                events.close()
        return self._graphs.builds - before

    # ------------------------------------------------------------------ decoding loop

    @property
    def remote(self) -> bool:
        """True for a :class:`~shared_core.remote.RemotePair` (models behind servers)."""
        return isinstance(self.pair, RemotePair)

    def _context(self, options: DecodeOptions) -> DecodeContext:
        # a remote decode waits on HTTP, never on the lock that serialises local model work
        compute = self._device_work if self.remote else self._compute
        return DecodeContext(self.pair, options, compute, self._device_work, self._graphs)

    def _decode(
        self,
        prompts: list[PreparedPrompt],
        params: GenerationParams,
        seeds: Sequence[int],
        cancelled: Cancelled | None = None,
    ) -> Iterator[StreamEvent]:
        context = self._context(self.options)
        if self.remote and self.pair.mode == "chunk":
            from .remote_chunk import ChunkDecode

            return ChunkDecode(context, prompts, params, seeds, cancelled).run()
        return EagerDecode(context, prompts, params, seeds, cancelled).run()

    def _autocast(self) -> Any:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.pair.device.type, dtype=self.autocast_dtype)

    @contextmanager
    def _compute(self) -> Iterator[None]:
        """Model work of one step: under the engine lock, inference mode and autocast.

        The lock is held per step, never across a ``yield``: an abandoned or slow stream never
        blocks other calls, and concurrent decodes interleave step by step. (It also keeps the
        two views of a one-weights pair from toggling the adapter under each other.)
        """
        with self._lock, torch.inference_mode(), self._autocast():
            yield

    @contextmanager
    def _device_work(self) -> Iterator[None]:
        """Inference mode and autocast without the lock: work on a decode's own buffers."""
        with torch.inference_mode(), self._autocast():
            yield
