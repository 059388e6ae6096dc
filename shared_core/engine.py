"""The public BACO engine: request validation, the scheduler that batches every call, streaming.

Every ``generate`` and ``stream`` call becomes a :class:`~shared_core.scheduler.Request`; the
engine's :class:`~shared_core.scheduler.Scheduler` runs all of them in one continuously
batched decode (rows join and leave at step boundaries) through an executor chosen by the
pair's capabilities: :class:`~shared_core.executors.EagerExecutor` (local pairs, remote
token mode; with the graph path on, :class:`~shared_core.graph_executor.GraphExecutor`
serves it) or :class:`~shared_core.chunk_executor.ChunkExecutor` (remote chunk mode).
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from typing import Any

import torch

from .decode_options import DecodeOptions, PreparedPrompt
from .graph import LENGTH_BUCKET, GraphCache
from .pair import ModelPair
from .params import GenerationParams
from .prompts import Prompt, aligned_prompt_ids, base_prompt_ids, normalise_messages
from .remote import RemotePair
from .rows import row_book
from .sampling import prompt_seeds
from .scheduler import Request, Scheduler
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
        self._graphs = GraphCache()
        self._lock = threading.Lock()
        self._scheduler: Scheduler | None = None
        self._scheduler_lock = threading.Lock()

    @property
    def tokenizer(self) -> Any:
        return self.pair.tokenizer

    @property
    def capabilities(self) -> Any:
        """What the pair can do (:class:`~shared_core.backends.Capabilities`)."""
        return self.pair.capabilities

    @property
    def scheduler(self) -> Scheduler:
        """The engine's scheduler (started on first use)."""
        with self._scheduler_lock:
            if self._scheduler is None:
                self._scheduler = self._new_scheduler()
            return self._scheduler

    def _new_scheduler(self) -> Scheduler:
        capabilities = self.capabilities
        if capabilities.executor == "chunk":
            from .chunk_executor import ChunkExecutor

            executor: Any = ChunkExecutor(self.pair, self._device_work)
        else:
            from .executors import EagerExecutor

            executor = EagerExecutor(self.pair, self.options, self._compute)
            if self._graph_wanted():
                from .graph_executor import GraphExecutor

                executor = GraphExecutor(executor, self._graphs, self._compute, self._device_work)
        return Scheduler(
            executor,
            max_rows=self.options.max_batch_rows,
            batch_requests=self.options.batch_requests,
            joins=capabilities.joins,
            fits=self._check_fits if self._holds_caches else None,
            device=self.pair.device,
        )

    def close(self) -> None:
        """Stop the scheduler's loop (requests still running fail); the engine can be used
        again afterwards (a new loop starts on the next call)."""
        with self._scheduler_lock:
            scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.close()

    def params(self, **options: Any) -> GenerationParams:
        """The engine defaults with per-call ``options`` applied and validated."""
        params = self.defaults.with_overrides(**options)
        capabilities = self.capabilities
        limit = capabilities.logprobs_limit
        if limit is not None and params.logprobs is not None and params.logprobs > limit:
            raise ValueError(
                f"logprobs={params.logprobs} exceeds the remote pair's top_logprobs={limit}: "
                "ask for at most k alternatives (or raise top_logprobs)"
            )
        if params.constraint is not None and not capabilities.grammars:
            raise ValueError(
                "structured output and tools on a RemotePair need mode='token' (a proposal "
                "sampled by the server cannot follow a grammar)"
            )
        k = capabilities.top_k_limit
        if k is not None:  # sampling reads the servers' top-k: the local rules with top_k=k
            params = replace(params, top_k=min(params.top_k or k, k))
        return params

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
        exception's place in the result while the other prompts are still generated; a
        request that fails while decoding (e.g. a server refused one prompt) is then retried
        prompt by prompt, each with the samples it would have drawn in the batch.
        Setting ``cancel`` (e.g. when the client of a server request went away) stops this
        call's rows at the next step; it then returns the samples finished so far.
        """
        params, prepared, failures = self._prepare_all(prompts, options, return_exceptions)
        results: list[Any] = []
        if prepared:
            batch = [p for _, p in prepared]
            seeds = prompt_seeds(_seed(params), batch)
            if not return_exceptions or len(batch) == 1:
                results = self._run(batch, params, seeds, cancel)
            else:
                try:
                    results = self._run(batch, params, seeds, cancel)
                except Exception:  # e.g. a server refused one prompt: retry each alone
                    results = []
                    for one, seed in zip(batch, seeds, strict=True):
                        try:
                            results.append(self._run([one], params, [seed], cancel)[0])
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

    def _request(
        self,
        prompts: list[PreparedPrompt],
        params: GenerationParams,
        seeds: Sequence[int],
        *,
        emit: Any = None,
        cancel: threading.Event | None = None,
    ) -> Request:
        spec = params.spec
        longest = max(
            max(len(p.aligned_ids) if spec.uses_aligned else 0, len(p.base_ids)) for p in prompts
        )
        return Request(
            prompts,
            params,
            seeds,
            row_book(self.pair, prompts, params),
            emit=emit,
            cancel=cancel,
            tokens_per_row=longest + params.max_new_tokens + 1,
        )

    def _run(
        self,
        prompts: list[PreparedPrompt],
        params: GenerationParams,
        seeds: Sequence[int],
        cancel: threading.Event | None = None,
    ) -> list[list[Generation]]:
        """Decode ``prompts`` (one seed each) through the scheduler and wait for them."""
        results: list[list[Generation | None]] = [[None] * params.n for _ in prompts]

        def collect(event: StreamEvent) -> None:
            if event.generation is not None:
                results[event.prompt_index][event.sample_index] = event.generation

        request = self._request(prompts, params, seeds, emit=collect, cancel=cancel)
        self.scheduler.submit(request)
        request.done.wait()
        if request.error is not None:
            raise request.error
        return [[g for g in row if g is not None] for row in results]

    def stream(self, prompts: Prompt | Sequence[Prompt], **options: Any) -> Iterator[StreamEvent]:
        """Stream the samples of one prompt (or of several, batched) as :class:`StreamEvent` s.

        Validation happens eagerly, when ``stream`` is called; the request joins the running
        batch when the iterator is first advanced. Closing the iterator early (``break``,
        ``close()``, garbage collection) cancels the request: its rows leave the batch at the
        next step.
        """
        params, prepared, _ = self._prepare_all(prompts, options, False)
        batch = [p for _, p in prepared]
        seeds = prompt_seeds(_seed(params), batch)
        self._check_alone(batch, params)
        return self._stream(batch, params, seeds)

    def _stream(
        self, prompts: list[PreparedPrompt], params: GenerationParams, seeds: Sequence[int]
    ) -> Iterator[StreamEvent]:
        events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        done = object()
        request = self._request(prompts, params, seeds, emit=events.put)
        request.on_done(lambda _: events.put(done))
        self.scheduler.submit(request)
        try:
            while True:
                item = events.get()
                if item is done:
                    break
                yield item
            if request.error is not None:
                raise request.error
        finally:
            request.cancel.set()

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

    def _check_alone(self, prompts: list[PreparedPrompt], params: GenerationParams) -> None:
        """Refuse, eagerly and with advice, a request that cannot fit in memory even alone."""
        if self._holds_caches:
            self._check_fits([self._request(prompts, params, [0] * len(prompts))])

    def _check_fits(self, requests: Sequence[Request]) -> None:
        """Raise ``ValueError`` when ``requests``' rows together cannot fit in free memory."""
        uses = [(r.params.spec.uses_base, r.params.spec.uses_aligned) for r in requests]
        rows = sum(r.rows for r in requests)
        longest = max(r.tokens_per_row for r in requests)
        try:
            self.pair.check_fits(uses, rows, longest)
        except ValueError:
            # idle graph runners' static caches are memory this request may have
            if not self._graphs.release_idle():
                raise
            logger.info("baco: released idle graph runners to make room for a request")
            self.pair.check_fits(uses, rows, longest)

    def warmup(
        self,
        *,
        rows: Sequence[int] = (1,),
        lengths: Sequence[int] = (LENGTH_BUCKET,),
        freeze: bool = True,
        **options: Any,
    ) -> int:
        """Compile (and on CUDA capture) the graph path's step ahead of use, for batches of
        ``options`` (router, sampling knobs: those of the requests to come) with each number
        of ``rows`` (batch rows) and cache length in ``lengths`` (prompt + new tokens; see
        :func:`~shared_core.graph.length_bucket`), as vLLM captures its batch sizes at start.
        With ``freeze`` (default) no other shape is ever compiled afterwards: a batch of
        another shape runs on the eager executor, so no request waits behind a compile (call
        ``warmup`` again to add shapes). Returns the number of steps built; nothing to do (0)
        when the graph path is off."""
        if not self._graph_wanted():
            return 0
        executor = self.scheduler.executor
        before = self._graphs.builds
        params = self.params(**options)
        prompt = self.prepare("Hi", params=params)
        self._graphs.frozen = False
        try:
            for count in rows:
                for length in lengths:
                    executor.warm(self, prompt, params, count, length)  # type: ignore[attr-defined]
        finally:
            self._graphs.frozen = freeze
        return self._graphs.builds - before

    # ------------------------------------------------------------------ model work

    @property
    def _holds_caches(self) -> bool:
        """Whether the pair's KV caches live in this process (memory is checked before a
        request joins); a remote pair's servers hold theirs."""
        return hasattr(self.pair, "check_fits")

    @property
    def remote(self) -> bool:
        """True for a :class:`~shared_core.remote.RemotePair` (models behind servers)."""
        return isinstance(self.pair, RemotePair)

    def _graph_wanted(self) -> bool:
        """Whether the graph path serves this engine (``DecodeOptions.graph``; by default
        on for CUDA pairs)."""
        if not self.capabilities.graphs:
            return False
        wanted = self.options.graph
        return self.pair.device.type == "cuda" if wanted is None else wanted

    def _autocast(self) -> Any:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.pair.device.type, dtype=self.autocast_dtype)

    @contextmanager
    def _compute(self) -> Iterator[None]:
        """Model work: inference mode, autocast and the engine lock. The scheduler's thread
        does all request work; the lock keeps a graph build that runs the models (on its
        own thread) from toggling a one-weights pair's adapter under a step."""
        with self._lock, torch.inference_mode(), self._autocast():
            yield

    @contextmanager
    def _device_work(self) -> Iterator[None]:
        """Inference mode and autocast without the lock: work on buffers of one's own."""
        with torch.inference_mode(), self._autocast():
            yield
