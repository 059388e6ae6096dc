"""Stress: one ``ChatBaco`` and one ``Baco`` shared by 16 threads and by 16 coroutines.

Every concurrent call must return exactly what the same call returned when made alone
(text, token usage, router statistics and per-token sources), nothing may deadlock (every
wait has a timeout), no decode may run on the event loop thread while 16 async calls decode,
and the loop must tick between every two steps of a probe call decoded next to them (see
``LoopProbe`` in conftest.py), and no ``baco-stream`` worker thread may outlive its stream.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from llama_index.core.base.llms.types import ChatMessage

from langchain_baco import ChatBaco
from llama_index_baco import Baco

pytestmark = pytest.mark.slow  # 16 threads and 16 coroutines, twice per adapter: minutes

WORKERS = 16
TIMEOUT = 180.0  # seconds for one stress round; a deadlock fails instead of hanging
#: Tokens per sample (max_tokens == min_tokens: every sample has the same length).
TOKENS = 24
ASYNC_TOKENS = 48
#: Decode steps of the event-loop probe call made next to the 16 coroutines.
PROBE_STEPS = 16
ROUTERS = ("p-punc", "h", "rand", "aligned")
PROMPTS = (
    "Tell me a story about a girl and her dog.",
    "Name a color.",
    "Write a haiku about the sea.",
    "What is the question?",
    "Describe the moon at noon.",
    "List three things: first, second, third.",
    "Say something about gold.",
    "Write a line about the wind and the old pine trees.",
    "Once upon a time",
    "Give me a quoted phrase.",
    "Tell me about a journey of a thousand miles.",
    "Café, naïve, déjà vu: explain.",
    "Why is the sky blue?",
    "A quick brown fox",
    "Write about the lazy dog.",
    "Hi there",
)


@dataclass(frozen=True)
class Case:
    index: int
    prompt: str
    seed: int
    router: str
    n: int
    tokens: int

    @property
    def options(self) -> dict[str, Any]:
        """Per-call overrides of the adapter's fields."""
        return {
            "seed": self.seed,
            "router": self.router,
            "max_tokens": self.tokens,
            "min_tokens": self.tokens,
        }


def make_cases(tokens: int) -> tuple[Case, ...]:
    """16 distinct prompts and seeds, four routers, three cases with n=3."""
    return tuple(
        Case(i, PROMPTS[i], 100 + i, ROUTERS[i % len(ROUTERS)], 3 if i % 5 == 4 else 1, tokens)
        for i in range(WORKERS)
    )


CASES = make_cases(TOKENS)
ASYNC_CASES = make_cases(ASYNC_TOKENS)
assert len({c.prompt for c in CASES}) == WORKERS
assert {c.router for c in CASES} == set(ROUTERS)
assert any(c.n > 1 for c in CASES)


# ---------------------------------------------------------------- helpers


def stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("baco-stream")]


def thread_stacks() -> str:
    names = {t.ident: t.name for t in threading.enumerate()}
    return "\n".join(
        f"--- thread {names.get(ident, ident)}\n{''.join(traceback.format_stack(frame))}"
        for ident, frame in sys._current_frames().items()
    )


def assert_no_stream_thread_left() -> None:
    deadline = time.monotonic() + 2.0
    while stream_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not stream_threads(), f"stream worker threads left alive: {stream_threads()}"


async def async_assert_no_stream_thread_left() -> None:
    deadline = time.monotonic() + 2.0
    while stream_threads() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert not stream_threads(), f"stream worker threads left alive: {stream_threads()}"


def run_threads(jobs: list[Callable[[], Any]]) -> tuple[list[Any], list[tuple[float, float]]]:
    """Run ``jobs`` in 16 threads released together; returns (results, (start, end) per job)."""
    assert len(jobs) == WORKERS
    barrier = threading.Barrier(WORKERS)
    spans: list[tuple[float, float]] = [(0.0, 0.0)] * WORKERS

    def work(i: int) -> Any:
        barrier.wait(timeout=60)
        start = time.perf_counter()
        try:
            return jobs[i]()
        finally:
            spans[i] = (start, time.perf_counter())

    pool = ThreadPoolExecutor(max_workers=WORKERS)
    finished = False
    try:
        futures = [pool.submit(work, i) for i in range(WORKERS)]
        deadline = time.monotonic() + TIMEOUT
        try:
            results = [f.result(timeout=max(0.0, deadline - time.monotonic())) for f in futures]
        except concurrent.futures.TimeoutError:  # not the builtin one before Python 3.11
            pytest.fail(f"16 threads not done after {TIMEOUT:.0f} s (deadlock?)\n{thread_stacks()}")
        finished = True
    finally:
        # after a timeout (a deadlock) do not wait for the stuck threads: fail, don't hang
        pool.shutdown(wait=finished, cancel_futures=True)
    return results, spans


def assert_overlapped(spans: list[tuple[float, float]]) -> None:
    """The calls really ran at the same time: the last one started before the first ended."""
    last_start = max(start for start, _ in spans)
    first_end = min(end for _, end in spans)
    assert last_start < first_end, "the calls did not overlap (they ran one after another)"


async def within_timeout(
    make_calls: Callable[[], Awaitable[Any]], capsys: pytest.CaptureFixture[str]
) -> Any:
    """Await ``make_calls()``; fail (with every thread's stack) if it is not done in TIMEOUT."""
    calls = asyncio.ensure_future(make_calls())
    # asyncio.wait, not wait_for: cancelling a stuck async stream waits for its worker
    # thread, so after a deadlock wait_for would hang instead of failing
    finished, _ = await asyncio.wait({calls}, timeout=TIMEOUT)
    if not finished:
        message = f"16 coroutines not done after {TIMEOUT:.0f} s (deadlock?)\n{thread_stacks()}"
        with capsys.disabled():  # shown now: the loop's teardown may hang on the stuck calls
            print(message, file=sys.stderr)
        pytest.fail(message)
    return calls.result()


def assert_decoded_off_the_loop(threads: Any, probe: Any, calls: int) -> None:
    """No engine call or stream step ran on the loop thread, and the probe saw the loop tick."""
    assert threads.calls >= calls
    assert probe.loop_thread not in threads.generate | threads.stream, "decode on the loop"
    probe.check(steps=PROBE_STEPS)


# ---------------------------------------------------------------- ChatBaco results


STAT_KEYS = ("router", "gamma", "base_share", "switches", "finish_reason", "sources")


def summary(message: AIMessage | AIMessageChunk) -> dict[str, Any]:
    """What must be identical between a concurrent call and the serial one."""
    meta = message.response_metadata
    return {
        "content": message.content,
        "usage": dict(message.usage_metadata or {}),
        **{key: meta[key] for key in STAT_KEYS},
    }


def chat_kind(case: Case) -> str:
    """Sync call used by the thread stress: invoke, stream, or generate (all n samples)."""
    if case.n > 1:
        return "generate"
    return "stream" if case.index % 3 == 2 else "invoke"


def achat_kind(case: Case) -> str:
    if case.n > 1:
        return "agenerate"
    return "astream" if case.index % 2 else "ainvoke"


def chat_stream_summary(chunks: list[AIMessageChunk]) -> dict[str, Any]:
    last = chunks[-1]
    assert last.chunk_position == "last"
    assert all(c.chunk_position != "last" for c in chunks[:-1])
    return {**summary(last), "content": "".join(c.content for c in chunks)}


def chat_sync(chat: ChatBaco, case: Case, kind: str) -> Any:
    if kind == "invoke":
        return summary(chat.invoke(case.prompt, **case.options))
    if kind == "stream":
        return chat_stream_summary(list(chat.stream(case.prompt, **case.options)))
    result = chat.generate([[HumanMessage(case.prompt)]], n=case.n, **case.options)
    return [summary(g.message) for g in result.generations[0]]


async def chat_async(chat: ChatBaco, case: Case, kind: str) -> Any:
    if kind == "ainvoke":
        return summary(await chat.ainvoke(case.prompt, **case.options))
    if kind == "astream":
        return chat_stream_summary([c async for c in chat.astream(case.prompt, **case.options)])
    result = await chat.agenerate([[HumanMessage(case.prompt)]], n=case.n, **case.options)
    return [summary(g.message) for g in result.generations[0]]


def chat_expected(chat: ChatBaco, case: Case) -> Any:
    """The serial reference: invoke (n=1) or generate (all n samples)."""
    return chat_sync(chat, case, "generate" if case.n > 1 else "invoke")


# ---------------------------------------------------------------- Baco results


def is_chat_family(case: Case) -> bool:
    return case.index % 4 in (1, 3)


def baco_kind(case: Case) -> str:
    """Sync call used by the thread stress (streams need n=1)."""
    streaming = case.index % 4 == 3 or case.index % 8 == 6
    if is_chat_family(case):
        return "stream_chat" if streaming and case.n == 1 else "chat"
    return "stream_complete" if streaming and case.n == 1 else "complete"


def abaco_kind(case: Case) -> str:
    streaming = case.index % 4 in (2, 3)
    if is_chat_family(case):
        return "astream_chat" if streaming and case.n == 1 else "achat"
    return "astream_complete" if streaming and case.n == 1 else "acomplete"


def messages(case: Case) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=case.prompt)]


def baco_stream_result(chunks: list[Any]) -> tuple[str, dict[str, Any]]:
    """(text, raw) of a stream: joined deltas must equal the cumulative final text."""
    assert chunks, "empty stream"
    joined = "".join(c.delta for c in chunks)
    last = chunks[-1]
    final = last.message.content if hasattr(last, "message") else last.text
    assert joined == final, (joined, final)
    return final, last.raw


def baco_sync(baco: Baco, case: Case, kind: str) -> tuple[str, dict[str, Any]]:
    n = {"n": case.n} if case.n > 1 else {}
    if kind == "complete":
        response = baco.complete(case.prompt, **case.options, **n)
        return response.text, response.raw
    if kind == "chat":
        response = baco.chat(messages(case), **case.options, **n)
        return response.message.content, response.raw
    if kind == "stream_complete":
        return baco_stream_result(list(baco.stream_complete(case.prompt, **case.options)))
    return baco_stream_result(list(baco.stream_chat(messages(case), **case.options)))


async def baco_async(baco: Baco, case: Case, kind: str) -> tuple[str, dict[str, Any]]:
    n = {"n": case.n} if case.n > 1 else {}
    if kind == "acomplete":
        response = await baco.acomplete(case.prompt, **case.options, **n)
        return response.text, response.raw
    if kind == "achat":
        response = await baco.achat(messages(case), **case.options, **n)
        return response.message.content, response.raw
    if kind == "astream_complete":
        stream = await baco.astream_complete(case.prompt, **case.options)
    else:
        stream = await baco.astream_chat(messages(case), **case.options)
    return baco_stream_result([c async for c in stream])


def baco_expected(baco: Baco, case: Case) -> tuple[str, dict[str, Any]]:
    return baco_sync(baco, case, "chat" if is_chat_family(case) else "complete")


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def models(tiny_pair_paths) -> dict[str, str]:
    base, aligned = tiny_pair_paths
    return {"base_model": str(base), "aligned_model": str(aligned)}


@pytest.fixture(scope="module")
def chat(models) -> ChatBaco:
    return ChatBaco(
        **models,
        max_tokens=TOKENS,
        min_tokens=TOKENS,
        temperature=1.0,
        seed=0,
        return_sources=True,
    )


@pytest.fixture(scope="module")
def baco(models) -> Baco:
    return Baco(**models, max_tokens=TOKENS, min_tokens=TOKENS, temperature=1.0, seed=0)


@dataclass(frozen=True)
class Serial:
    """Results of the cases made one at a time."""

    results: list[Any]


def run_serially(call: Callable[[Case], Any], cases: tuple[Case, ...]) -> Serial:
    return Serial([call(case) for case in cases])


def chat_serial_results(chat: ChatBaco, cases: tuple[Case, ...]) -> Serial:
    chat.invoke("warm up")  # loads the shared engine
    serial = run_serially(partial(chat_expected, chat), cases)
    texts = [r[0]["content"] if isinstance(r, list) else r["content"] for r in serial.results]
    assert len(set(texts)) > WORKERS // 2, "the prompts/seeds should give varied outputs"
    for case, result in zip(cases, serial.results, strict=True):
        if case.n > 1:
            assert len(result) == case.n
            assert all(sample["usage"]["output_tokens"] == case.tokens for sample in result)
        else:
            assert result["usage"]["output_tokens"] == case.tokens
    return serial


def baco_serial_results(baco: Baco, cases: tuple[Case, ...]) -> Serial:
    baco.complete("warm up")
    serial = run_serially(partial(baco_expected, baco), cases)
    assert len({text for text, _ in serial.results}) > WORKERS // 2
    for case, (_, raw) in zip(cases, serial.results, strict=True):
        assert raw["usage"]["output_tokens"] == case.tokens * case.n
        if case.n > 1:
            assert len(raw["samples"]) == case.n
    return serial


@pytest.fixture(scope="module")
def chat_serial(chat: ChatBaco) -> Serial:
    return chat_serial_results(chat, CASES)


@pytest.fixture(scope="module")
def baco_serial(baco: Baco) -> Serial:
    return baco_serial_results(baco, CASES)


@pytest.fixture(scope="module")
def chat_serial_long(chat: ChatBaco) -> Serial:
    return chat_serial_results(chat, ASYNC_CASES)


@pytest.fixture(scope="module")
def baco_serial_long(baco: Baco) -> Serial:
    return baco_serial_results(baco, ASYNC_CASES)


async def collect(stream: Any) -> list[Any]:
    return [item async for item in stream]


async def warm_up(call: Callable[..., Awaitable[Any]], stream: Any) -> None:
    """Pay one-time costs before measuring: the async code paths, and the loop's default
    executor, whose worker threads ``asyncio.to_thread`` otherwise starts (from the loop) in
    the middle of the measurement."""
    short = {"max_tokens": 2, "min_tokens": 1}
    await asyncio.gather(*(call(f"warm up {i}", **short) for i in range(WORKERS)))
    await asyncio.gather(*(stream(f"warm up {i}", **short) for i in range(2)))


# ---------------------------------------------------------------- 16 threads


def test_chat_baco_shared_by_16_threads(chat: ChatBaco, chat_serial: Serial) -> None:
    kinds = [chat_kind(case) for case in CASES]
    assert {"invoke", "stream", "generate"} <= set(kinds)
    jobs = [partial(chat_sync, chat, c, k) for c, k in zip(CASES, kinds, strict=True)]
    results, spans = run_threads(jobs)
    assert_overlapped(spans)
    for case, kind, got, want in zip(CASES, kinds, results, chat_serial.results, strict=True):
        assert got == want, f"case {case} ({kind}) differs from the serial call"
    assert_no_stream_thread_left()


def test_baco_shared_by_16_threads(baco: Baco, baco_serial: Serial) -> None:
    kinds = [baco_kind(case) for case in CASES]
    assert {"complete", "chat", "stream_complete", "stream_chat"} <= set(kinds)
    jobs = [partial(baco_sync, baco, c, k) for c, k in zip(CASES, kinds, strict=True)]
    results, spans = run_threads(jobs)
    assert_overlapped(spans)
    for case, kind, got, want in zip(CASES, kinds, results, baco_serial.results, strict=True):
        assert got == want, f"case {case} ({kind}) differs from the serial call"
    assert_no_stream_thread_left()


# ---------------------------------------------------------------- 16 coroutines


async def test_chat_baco_shared_by_16_coroutines(
    chat: ChatBaco,
    chat_serial_long: Serial,
    capsys: pytest.CaptureFixture[str],
    loop_probe: Any,
    engine_threads: Any,
) -> None:
    kinds = [achat_kind(case) for case in ASYNC_CASES]
    assert {"ainvoke", "astream", "agenerate"} <= set(kinds)
    await warm_up(chat.ainvoke, lambda p, **kw: collect(chat.astream(p, **kw)))
    probe = loop_probe()
    probe_call = chat.ainvoke(
        "Hi", router=probe.router, max_tokens=PROBE_STEPS, min_tokens=PROBE_STEPS
    )

    *results, _ = await probe.run(
        within_timeout(
            capsys=capsys,
            make_calls=lambda: asyncio.gather(
                *(chat_async(chat, c, k) for c, k in zip(ASYNC_CASES, kinds, strict=True)),
                probe_call,
            ),
        )
    )
    for case, kind, got, want in zip(
        ASYNC_CASES, kinds, results, chat_serial_long.results, strict=True
    ):
        assert got == want, f"case {case} ({kind}) differs from the serial call"
    await async_assert_no_stream_thread_left()
    assert_decoded_off_the_loop(engine_threads, probe, calls=WORKERS)


async def test_baco_shared_by_16_coroutines(
    baco: Baco,
    baco_serial_long: Serial,
    capsys: pytest.CaptureFixture[str],
    loop_probe: Any,
    engine_threads: Any,
) -> None:
    kinds = [abaco_kind(case) for case in ASYNC_CASES]
    assert {"acomplete", "achat", "astream_complete", "astream_chat"} <= set(kinds)

    async def astream(prompt: str, **options: Any) -> list[Any]:
        return await collect(await baco.astream_complete(prompt, **options))

    await warm_up(baco.acomplete, astream)
    probe = loop_probe()
    probe_call = baco.acomplete(
        "Hi", router=probe.router, max_tokens=PROBE_STEPS, min_tokens=PROBE_STEPS
    )

    *results, _ = await probe.run(
        within_timeout(
            capsys=capsys,
            make_calls=lambda: asyncio.gather(
                *(baco_async(baco, c, k) for c, k in zip(ASYNC_CASES, kinds, strict=True)),
                probe_call,
            ),
        )
    )
    for case, kind, got, want in zip(
        ASYNC_CASES, kinds, results, baco_serial_long.results, strict=True
    ):
        assert got == want, f"case {case} ({kind}) differs from the serial call"
    await async_assert_no_stream_thread_left()
    assert_decoded_off_the_loop(engine_threads, probe, calls=WORKERS)
