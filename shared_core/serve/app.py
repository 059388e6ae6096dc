"""The FastAPI app of ``baco serve``: OpenAI's chat and text completion endpoints.

Requests run the blocking engine calls in worker threads (:mod:`shared_core.aio`); every
request, streamed or not, joins the engine scheduler's running batch (continuous batching).
When a client disconnects (or the server's graceful-shutdown timeout passes) the response task
is cancelled, which closes the engine iterator and stops those rows at the next step, while
other requests continue.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..aio import iterate_in_thread, run_in_thread
from ..structured import ConstraintError
from ..tools import ToolCallStream
from ..types import Generation, StreamEvent
from . import DEFAULT_MAX_QUEUE
from .limits import ServeLimits, check_depth, check_request, read_body
from .metrics import ServeMetrics
from .openai_schema import (
    APIError,
    ParsedRequest,
    bad_request,
    choice_statistics,
    chunk_body,
    logprobs_body,
    new_id,
    now,
    parse_chat_request,
    parse_completion_request,
    response_body,
    sample_error_body,
    tool_call_body,
    usage_body,
)


@dataclass
class ServerState:
    """Everything a request handler needs: the engine, settings and live counters."""

    engine: Any
    model_names: tuple[str, ...]
    max_queue: int = DEFAULT_MAX_QUEUE
    api_key: str | None = None
    calibration: str | None = None
    limits: ServeLimits = field(default_factory=ServeLimits)
    in_flight: int = 0
    metrics: ServeMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = ServeMetrics(self.engine)

    @property
    def model_name(self) -> str:
        """The primary model id (the first alias): what responses report."""
        return self.model_names[0]

    def check_model(self, requested: str | None) -> None:
        """404 ``model_not_found`` for a model id this server does not serve."""
        if requested is not None and requested not in self.model_names:
            served = ", ".join(repr(name) for name in self.model_names)
            raise APIError(
                404,
                f"The model {requested!r} does not exist on this server; it serves {served} "
                "(--served-model-name)",
                param="model",
                code="model_not_found",
            )

    def admit(self) -> None:
        """Count a generation request in, or answer 429 when the queue is full."""
        if self.in_flight >= self.max_queue:
            raise APIError(
                429,
                f"the server queue is full ({self.in_flight} requests in flight, --max-queue "
                f"{self.max_queue}); retry later",
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": "1"},
            )
        self.in_flight += 1
        self.metrics.queue_depth.set(self.in_flight)

    def release(self) -> None:
        self.in_flight -= 1
        self.metrics.queue_depth.set(self.in_flight)


def served_names(engine: Any, model_name: str | Sequence[str] | None) -> tuple[str, ...]:
    """The model ids a server answers to: the given alias(es), else the pair's short name."""
    if model_name is None:
        pair = getattr(engine, "pair", None)
        return (getattr(pair, "short_name", None) or "baco",)
    names = [model_name] if isinstance(model_name, str) else list(model_name)
    names = [n.strip() for name in names for n in name.split(",") if n.strip()]
    if not names:
        raise ValueError("model_name: give at least one non-empty model id")
    return tuple(dict.fromkeys(names))


def create_app(
    engine: Any,
    *,
    model_name: str | Sequence[str] | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    api_key: str | None = None,
    calibration: str | None = None,
    limits: ServeLimits | None = None,
) -> FastAPI:
    """An OpenAI-compatible app serving ``engine`` (a :class:`~shared_core.BacoEngine`).

    ``model_name`` is the served model id, or several aliases (a list, or one comma-separated
    string; the first is reported in responses); requests naming another model answer 404
    ``model_not_found``. ``max_queue`` bounds the generation requests in flight (more answer
    429 with ``Retry-After``); with ``api_key`` every ``/v1`` route and ``/metrics`` need
    ``Authorization: Bearer <api_key>``. ``calibration`` is the γ calibration used for
    ``target_base_share``. ``limits`` bound each request (:class:`ServeLimits`).
    """
    if max_queue < 1:
        raise ValueError(f"max_queue must be >= 1, got {max_queue}")
    state = ServerState(
        engine,
        served_names(engine, model_name),
        max_queue,
        api_key or None,
        calibration,
        limits or ServeLimits(),
    )
    app = FastAPI(title="baco", summary="OpenAI-compatible BACO server", docs_url=None)
    app.state.baco = state

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = APIError(exc.status_code, str(exc.detail), type="invalid_request_error")
        return JSONResponse(error.body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception) -> JSONResponse:
        error = APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")
        return JSONResponse(error.body(), status_code=500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": state.model_name,
            "pid": os.getpid(),
            "in_flight": state.in_flight,
            "max_queue": state.max_queue,
        }

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        _authorize(state, request)
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        _authorize(state, request)
        return {"object": "list", "data": [_model_card(name) for name in state.model_names]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> dict[str, Any]:
        _authorize(state, request)
        state.check_model(model_id)
        return _model_card(model_id)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _handle(state, request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _handle(state, request, "completion")

    return app


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "baco"}


def _authorize(state: ServerState, request: Request) -> None:
    """401 unless the request carries the server's bearer token (when one is set)."""
    if state.api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), state.api_key.encode()
    ):
        raise APIError(
            401,
            "missing or incorrect API key: send `Authorization: Bearer <key>`",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def _read_json(request: Request, limits: ServeLimits) -> Any:
    """The JSON body, read only up to the size limit and parsed only within the depth limit."""
    raw = await read_body(request.headers, request.stream(), limits.max_request_bytes)
    check_depth(raw, limits.max_json_depth)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"could not parse the JSON body: {exc}") from exc
    check_request(body, limits)
    return body


async def _handle(state: ServerState, request: Request, kind: str) -> Response:
    """Authorize, validate, admit and answer one generation request."""
    endpoint = "chat" if kind == "chat" else "completions"
    try:
        _authorize(state, request)
        body = await _read_json(request, state.limits)
        parse = parse_chat_request if kind == "chat" else parse_completion_request
        parsed = parse(body, calibration=state.calibration)
        state.check_model(parsed.model)
        state.admit()
    except APIError as exc:
        state.metrics.requests.labels(endpoint, str(exc.status)).inc()
        raise
    try:
        await run_in_thread(_check_prompts, state.engine, parsed)
        if parsed.stream:
            iterator = await run_in_thread(_start_stream, state.engine, parsed)
    except BaseException as exc:
        state.release()
        status = exc.status if isinstance(exc, APIError) else 500
        state.metrics.requests.labels(endpoint, str(status)).inc()
        raise
    state.metrics.request_rows.observe(len(parsed.prompts) * parsed.n)
    if parsed.stream:
        state.metrics.requests.labels(endpoint, "200").inc()
        return StreamingResponse(
            _sse(state, parsed, iterator),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    cancel = threading.Event()
    watcher = asyncio.create_task(_watch_disconnect(request, cancel))
    try:
        results = await run_in_thread(_generate, state.engine, parsed, cancel)
    except APIError as exc:
        state.metrics.requests.labels(endpoint, str(exc.status)).inc()
        raise
    finally:
        watcher.cancel()
        state.release()
    if cancel.is_set():  # the client went away: its rows stopped, nobody reads a reply
        state.metrics.cancelled.inc()
        state.metrics.requests.labels(endpoint, "499").inc()
        return Response(status_code=499)
    for row in results:
        state.metrics.prompt_tokens.inc(row[0].usage.prompt_tokens if row else 0)
        for generation in row:
            state.metrics.record_generation(generation)
    state.metrics.requests.labels(endpoint, "200").inc()
    return JSONResponse(response_body(parsed, results, model=state.model_name))


def _check_prompts(engine: Any, parsed: ParsedRequest) -> None:
    """Tokenize every prompt and refuse those over the context window (no model work)."""
    params = engine.params(**parsed.options)
    for index, prompt in enumerate(parsed.prompts):
        try:
            engine.prepare(prompt, index, params=params)
        except (TypeError, ValueError) as exc:
            message = str(exc)
            code = "context_length_exceeded" if "context window" in message else None
            raise bad_request(
                f"{parsed.prompt_param}: {message}", parsed.prompt_param, code
            ) from exc


def _engine_failure(exc: Exception) -> APIError:
    if isinstance(exc, ConstraintError):  # the grammar could not continue mid-decode
        return APIError(500, f"generation failed: {exc}", type="server_error", code="constraint")
    if isinstance(exc, (TypeError, ValueError)):  # e.g. the free-memory pre-check
        return bad_request(str(exc))
    return APIError(500, f"generation failed: {exc}", type="server_error")


async def _watch_disconnect(request: Request, cancel: threading.Event) -> None:
    """Set ``cancel`` once the client of a non-streamed request disconnects."""
    while not await request.is_disconnected():
        await asyncio.sleep(_DISCONNECT_POLL_SECONDS)
    cancel.set()


#: How often a non-streamed request checks that its client is still there.
_DISCONNECT_POLL_SECONDS = 0.2


def _generate(
    engine: Any, parsed: ParsedRequest, cancel: threading.Event | None = None
) -> list[list[Generation]]:
    """Every prompt's samples; a sample whose grammar could not continue stays in its row
    with ``finish_reason="error"`` (the other samples and prompts are kept). Setting
    ``cancel`` stops the request's rows at the next step."""
    try:
        results = engine.generate(
            parsed.prompts, return_exceptions=True, cancel=cancel, **parsed.options
        )
    except (TypeError, ValueError, FloatingPointError) as exc:
        raise _engine_failure(exc) from exc
    rows: list[list[Generation]] = []
    for row in results:
        if isinstance(row, ConstraintError) and getattr(row, "generations", None):
            rows.append(list(row.generations))
        elif isinstance(row, BaseException):
            raise _engine_failure(row) if isinstance(row, Exception) else row
        else:
            rows.append(row)
    return rows


def _start_stream(engine: Any, parsed: ParsedRequest) -> Iterator[StreamEvent]:
    """Validate and start a stream (its first model work happens on the first item)."""
    try:
        return engine.stream(parsed.prompts, **parsed.options)
    except (TypeError, ValueError) as exc:
        raise _engine_failure(exc) from exc


class _StreamChoices:
    """Turns engine stream events into chunks: text deltas, tool-call deltas, finishes."""

    def __init__(self, parsed: ParsedRequest, common: dict[str, Any]) -> None:
        self.parsed = parsed
        self.common = common
        self.splitters: dict[int, ToolCallStream] = {}
        self.calls: dict[int, int] = {}
        self.valid_calls: dict[int, int] = {}
        self.offsets: dict[int, int] = {}  # text offset of each choice's next logprob entry

    def _logprobs(self, row: int, event: StreamEvent) -> Any:
        body = logprobs_body(self.parsed, event.logprobs, self.offsets.get(row, 0))
        self.offsets[row] = self.offsets.get(row, 0) + sum(
            len(e.token) for e in event.logprobs or ()
        )
        return body

    def _chunk(self, row: int, **fields: Any) -> dict[str, Any]:
        return chunk_body(self.parsed, **self.common, index=row, **fields)

    def event(self, event: StreamEvent) -> list[dict[str, Any]]:
        row, out = event.row, []
        logprobs = self._logprobs(row, event) if event.logprobs else None
        if self.parsed.tools is None:
            if event.text_delta or logprobs is not None:
                out.append(self._chunk(row, text=event.text_delta, logprobs=logprobs))
        else:
            if logprobs is not None:
                out.append(self._chunk(row, logprobs=logprobs))
            splitter = self.splitters.setdefault(row, ToolCallStream())
            items = splitter.feed(event.text_delta) if event.text_delta else []
            if event.generation is not None:
                items += splitter.finish()
            for kind, item in items:
                if kind == "text":
                    out.append(self._chunk(row, text=item))
                else:  # a call, or one cut off by max_tokens (partial arguments)
                    index = self.calls.get(row, 0)
                    self.calls[row] = index + 1
                    if kind == "call":
                        self.valid_calls[row] = self.valid_calls.get(row, 0) + 1
                    out.append(self._chunk(row, tool_calls=[tool_call_body(item, index)]))
        generation = event.generation
        if generation is not None:
            statistics = choice_statistics(generation, self.parsed.return_sources)
            if generation.finish_reason == "error":
                statistics["error"] = sample_error_body(generation)
            reason = generation.finish_reason
            if self.valid_calls.get(row) and reason == "stop":
                reason = "tool_calls"
            out.append(self._chunk(row, finish_reason=reason, statistics=statistics))
        return out


def _counting(events: Iterator[StreamEvent], counter: Any) -> Iterator[StreamEvent]:
    """``events``, counting tokens as the engine yields them; closing it closes ``events``."""
    try:
        for event in events:
            if event.token_id is not None:
                counter.inc()
            yield event
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()


def _sse_line(payload: Any) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'), ensure_ascii=False)}\n\n"


async def _sse(
    state: ServerState, parsed: ParsedRequest, iterator: Iterator[StreamEvent]
) -> AsyncIterator[str]:
    """Server-sent events of one stream: role, content deltas, finish per choice, [DONE]."""
    response_id = new_id(parsed.kind)
    created = now()
    base = {"response_id": response_id, "created": created, "model": state.model_name}
    finished: list[Generation] = []
    completed = False
    iterator = _counting(iterator, state.metrics.stream_tokens)
    choices = _StreamChoices(parsed, base)
    try:
        if parsed.kind == "chat":
            for index in range(len(parsed.prompts) * parsed.n):
                yield _sse_line(chunk_body(parsed, **base, index=index, role=True, text=""))
        try:
            async for event in iterate_in_thread(lambda: iterator):
                for payload in choices.event(event):
                    yield _sse_line(payload)
                generation = event.generation
                if generation is not None:
                    finished.append(generation)
                    state.metrics.record_generation(generation)
        except (TypeError, ValueError, FloatingPointError) as exc:
            yield _sse_line(_engine_failure(exc).body())
            completed = True
            return
        by_prompt: dict[int, list[Generation]] = {}
        for generation in finished:
            by_prompt.setdefault(generation.prompt_index, []).append(generation)
        results = [by_prompt[i] for i in sorted(by_prompt)]
        state.metrics.prompt_tokens.inc(sum(row[0].usage.prompt_tokens for row in results))
        if parsed.include_usage:
            yield _sse_line(chunk_body(parsed, **base, usage=usage_body(results)))
        yield "data: [DONE]\n\n"
        completed = True
    finally:  # reached on completion, and on cancellation (client gone, shutdown timeout)
        if not completed:
            state.metrics.cancelled.inc()
        state.release()
