"""Continuous batching (shared_core/scheduler.py): requests of any settings join and leave one
running batch, and a seeded request gets exactly the samples it gets alone."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared_core import BacoEngine
from shared_core.engine import DecodeOptions

PROMPTS = ["Tell me a story about a girl and her dog.", "Name a color.", "Write a haiku."]
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}},
    "required": ["name"],
    "additionalProperties": False,
}
#: Requests that differ in every per-call setting.
MIXED = [
    {"router": "p-punc", "gamma": 0.3, "n": 2, "max_new_tokens": 24, "temperature": 1.0},
    {"router": "rand", "gamma": 0.6, "n": 1, "max_new_tokens": 16, "top_p": 0.9, "top_k": 40},
    {"router": "h", "gamma": 2.5, "n": 3, "max_new_tokens": 30, "min_p": 0.05, "stop": ["e t"]},
    {"router": "aligned", "n": 2, "max_new_tokens": 12, "temperature": 0.7},
    {"router": "base", "n": 1, "max_new_tokens": 20, "min_new_tokens": 8},
    {"router": "p-fc", "gamma": 0.9, "n": 2, "max_new_tokens": 18, "temperature": 0},
    {"router": "nudging", "gamma": 0.4, "n": 1, "max_new_tokens": 14, "logprobs": 2},
    {"router": "p", "gamma": 0.5, "n": 2, "max_new_tokens": 20, "content_source": "aligned"},
    {"router": "p-punc", "n": 2, "max_new_tokens": 40, "json_schema": SCHEMA},
    {"router": "rand", "gamma": 0.5, "n": 1, "max_new_tokens": 10, "aligned_starts": False},
]


class _Samples(list):
    """A request's samples: tokens, owners, finish and text compared exactly; log-probabilities
    to 1e-4 (a forward's float rounding depends on the batch's shape)."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, list) or len(self) != len(other):
            return False
        for (*mine, my_lp), (*theirs, their_lp) in zip(self, other, strict=True):
            if mine != theirs or (my_lp is None) != (their_lp is None):
                return False
            if my_lp is not None and [i for i, _ in my_lp] != [i for i, _ in their_lp]:
                return False
            if my_lp is not None and [p for _, p in my_lp] != pytest.approx(
                [p for _, p in their_lp], abs=1e-4
            ):
                return False
        return True

    __hash__ = None  # type: ignore[assignment]


def _summary(samples) -> _Samples:
    return _Samples(
        (
            g.token_ids,
            g.sources,
            g.finish_reason,
            g.text,
            None if g.logprobs is None else [(e.token_id, e.logprob) for e in g.logprobs],
        )
        for g in samples
    )


def _alone(pair, prompt, options) -> list:
    engine = BacoEngine(pair, options=DecodeOptions(batch_requests=False))
    return _summary(engine.generate(prompt, **options)[0])


def _concurrently(engine, calls) -> list:
    """Run ``calls`` (prompt, options) at once from threads; their samples in order."""
    results: list = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def call(i: int, prompt, options) -> None:
        start.wait()
        results[i] = _summary(engine.generate(prompt, **options)[0])

    threads = [threading.Thread(target=call, args=(i, *c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return results


def test_mixed_settings_share_steps_and_keep_their_samples(tiny_pair):
    """Ten concurrent requests, each with other settings (routers, γ, sampling knobs, budgets,
    stop strings, logprobs, a grammar, guards): one batch, and every request's samples are
    those it gets alone."""
    engine = BacoEngine(tiny_pair)
    calls = [(PROMPTS[i % 3], {**options, "seed": i}) for i, options in enumerate(MIXED)]
    together = _concurrently(engine, calls)
    for (prompt, options), got in zip(calls, together, strict=True):
        assert got == _alone(tiny_pair, prompt, options), options
    assert engine.scheduler.peak_rows > max(o["n"] for o in MIXED)  # requests shared steps
    assert engine.scheduler.steps < sum(o["max_new_tokens"] for o in MIXED)


def test_a_request_joining_mid_decode_keeps_both_requests_samples(tiny_pair):
    engine = BacoEngine(tiny_pair)
    long = {"n": 2, "max_new_tokens": 48, "min_new_tokens": 48, "seed": 1}
    short = {"router": "rand", "gamma": 0.5, "n": 3, "max_new_tokens": 10, "seed": 2}
    stream = engine.stream(PROMPTS[0], **long)
    events = [next(stream) for _ in range(10)]  # 5 steps of the long request
    joined = _summary(engine.generate(PROMPTS[1], **short)[0])  # joins the running batch
    events += list(stream)
    finals = sorted((e for e in events if e.generation is not None), key=lambda e: e.sample_index)
    assert _summary(e.generation for e in finals) == _alone(tiny_pair, PROMPTS[0], long)
    assert joined == _alone(tiny_pair, PROMPTS[1], short)


def test_a_new_request_gets_its_first_token_within_its_prefill_and_two_steps(tiny_pair):
    """Queued while a long batch decodes, a request is admitted at the next step boundary:
    its first token comes from the step after the one in flight when it arrived."""
    from shared_core.scheduler import Request

    engine = BacoEngine(tiny_pair)
    stream = engine.stream(PROMPTS[0], n=4, max_new_tokens=200, min_new_tokens=200, seed=0)
    next(stream)
    seen: list[Request] = []
    submit = engine.scheduler.submit

    def spy(request: Request) -> Request:
        seen.append(request)
        return submit(request)

    engine.scheduler.submit = spy  # type: ignore[method-assign]
    for _ in range(3):
        assert len(engine.generate(PROMPTS[1], max_new_tokens=2, seed=3)[0]) == 1
    stream.close()
    assert len(seen) == 3
    for request in seen:
        assert request.first_token_at - request.queued_at <= 2


def test_closing_a_stream_frees_its_rows_at_the_next_step(tiny_pair):
    engine = BacoEngine(tiny_pair)
    stream = engine.stream(PROMPTS[0], n=3, max_new_tokens=200, min_new_tokens=200, seed=0)
    next(stream)
    scheduler = engine.scheduler
    assert scheduler.running_rows == 3
    stream.close()
    closed_at = scheduler.steps
    deadline = time.monotonic() + 30
    while scheduler.running_rows and time.monotonic() < deadline:
        time.sleep(0.01)
    assert scheduler.running_rows == 0 and scheduler.steps - closed_at <= 2


def test_a_cancelled_request_leaves_and_the_others_keep_their_samples(tiny_pair):
    engine = BacoEngine(tiny_pair)
    cancel = threading.Event()
    options = {"n": 2, "max_new_tokens": 30, "seed": 4}
    out: list = []
    worker = threading.Thread(
        target=lambda: out.append(
            engine.generate(PROMPTS[0], cancel=cancel, max_new_tokens=200, min_new_tokens=200)
        )
    )
    worker.start()
    while engine.scheduler.running_rows == 0:
        time.sleep(0.01)
    other = threading.Thread(target=lambda: out.append(engine.generate(PROMPTS[2], **options)))
    other.start()
    time.sleep(0.05)
    cancel.set()
    worker.join(60)
    other.join(60)
    cancelled = next(r for r in out if r == [[]])
    kept = next(r for r in out if r is not cancelled)
    assert _summary(kept[0]) == _alone(tiny_pair, PROMPTS[2], options)


def test_a_failing_row_fails_its_request_only(tiny_pair):
    """A custom router that raises fails its own request; the request beside it finishes with
    the samples it gets alone."""

    def broken(signals):
        raise RuntimeError("router bug")

    engine = BacoEngine(tiny_pair)
    options = {"n": 2, "max_new_tokens": 12, "seed": 6, "router": "p-punc"}
    errors: list = []
    results: list = []
    start = threading.Barrier(2)

    def bad() -> None:
        start.wait()
        try:
            engine.generate(PROMPTS[0], router=broken, max_new_tokens=12, min_new_tokens=12)
        except RuntimeError as exc:
            errors.append(exc)

    def good() -> None:
        start.wait()
        results.append(_summary(engine.generate(PROMPTS[1], **options)[0]))

    threads = [threading.Thread(target=bad), threading.Thread(target=good)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors and "router bug" in str(errors[0])
    assert results == [_alone(tiny_pair, PROMPTS[1], options)]


def test_a_request_too_large_for_memory_fails_alone(tiny_pair, monkeypatch):
    import shared_core.memory as memory

    engine = BacoEngine(tiny_pair)
    real = memory.check_fits

    def tight(models, rows, tokens, vocab, device):
        if rows > 8:
            raise ValueError(f"this request needs {rows} rows (simulated)")
        return real(models, rows, tokens, vocab, device)

    monkeypatch.setattr(memory, "check_fits", tight)
    with pytest.raises(ValueError, match="simulated"):
        engine.generate(PROMPTS[0], n=9, max_new_tokens=4)
    assert len(engine.generate(PROMPTS[0], n=4, max_new_tokens=4, seed=0)[0]) == 4


def test_requests_beyond_the_row_cap_wait_for_room(tiny_pair):
    engine = BacoEngine(tiny_pair, options=DecodeOptions(max_batch_rows=4))
    calls = [(PROMPTS[i % 3], {"n": 2, "max_new_tokens": 8, "seed": i}) for i in range(5)]
    together = _concurrently(engine, calls)
    for (prompt, options), got in zip(calls, together, strict=True):
        assert got == _alone(tiny_pair, prompt, options)
    assert engine.scheduler.peak_rows <= 4


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    schedule=st.lists(
        st.tuples(
            st.integers(0, len(MIXED) - 1),  # settings
            st.integers(0, 2),  # prompt
            st.floats(0, 0.05),  # arrival delay
        ),
        min_size=2,
        max_size=5,
    )
)
def test_random_arrival_schedules_keep_every_request_s_samples(tiny_pair, schedule):
    engine = BacoEngine(tiny_pair)
    results: dict[int, list] = {}

    def call(i: int, setting: int, prompt: int, delay: float) -> None:
        time.sleep(delay)
        options = {**MIXED[setting], "seed": i}
        results[i] = _summary(engine.generate(PROMPTS[prompt], **options)[0])

    threads = [threading.Thread(target=call, args=(i, *s)) for i, s in enumerate(schedule)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for i, (setting, prompt, _) in enumerate(schedule):
        options = {**MIXED[setting], "seed": i}
        assert results[i] == _alone(tiny_pair, PROMPTS[prompt], options)


def test_one_request_at_a_time_without_batching(tiny_pair):
    engine = BacoEngine(tiny_pair, options=DecodeOptions(batch_requests=False))
    calls = [(PROMPTS[i % 3], {"n": 2, "max_new_tokens": 6, "seed": i}) for i in range(3)]
    _concurrently(engine, calls)
    assert engine.scheduler.peak_rows == 2


def test_a_closed_engine_fails_waiting_requests_and_reopens(tiny_pair):
    engine = BacoEngine(tiny_pair)
    engine.generate(PROMPTS[1], max_new_tokens=2, seed=0)
    engine.close()
    assert len(engine.generate(PROMPTS[1], max_new_tokens=2, seed=0)[0]) == 1


def test_a_failure_outside_the_step_fails_the_batch_and_the_loop_goes_on(tiny_pair, monkeypatch):
    engine = BacoEngine(tiny_pair)
    scheduler = engine.scheduler

    def broken(rows):
        raise RuntimeError("host bug")

    monkeypatch.setattr(scheduler, "_allowed", broken)
    with pytest.raises(RuntimeError, match="host bug"):
        engine.generate(PROMPTS[0], max_new_tokens=4, seed=0)
    monkeypatch.undo()
    assert len(engine.generate(PROMPTS[0], max_new_tokens=4, seed=0)[0]) == 1


def test_an_idle_engine_keeps_no_thread_and_is_freed(tiny_pair):
    """The loop's thread ends when idle, so an engine nobody references is garbage collected
    (with its executor's states), and a later call starts a new thread."""
    import gc
    import weakref

    from shared_core import scheduler as scheduler_module

    engine = BacoEngine(tiny_pair)
    engine.generate(PROMPTS[1], max_new_tokens=2, seed=0)
    deadline = time.monotonic() + scheduler_module.IDLE_EXIT_SECONDS + 10
    while engine.scheduler._thread is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.scheduler._thread is None
    assert len(engine.generate(PROMPTS[1], max_new_tokens=2, seed=0)[0]) == 1  # restarts
    ref = weakref.ref(engine.scheduler)
    del engine
    deadline = time.monotonic() + scheduler_module.IDLE_EXIT_SECONDS + 10
    while ref() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    assert ref() is None
