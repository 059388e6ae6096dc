"""Merging concurrent generate calls into one decode (shared_core/batching.py)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from shared_core import BacoEngine
from shared_core.batching import RequestQueue, batch_key
from shared_core.engine import DecodeOptions
from shared_core.params import GenerationParams
from shared_core.sampling import prompt_seeds


class FakeRunner:
    """Returns ``(prompt, seed)`` per sample; the first call blocks until ``release``."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.release = threading.Event()
        self.started = threading.Event()

    def __call__(self, prompts, params, seeds, cancelled=None):
        self.cancelled = cancelled
        if not self.started.is_set():
            self.started.set()
            assert self.release.wait(10)
        self.calls.append(list(prompts))
        if any(p == "bad" for p in prompts):
            raise ValueError("bad prompt")
        return [[(p, s)] * params.n for p, s in zip(prompts, seeds, strict=True)]


def _seed(seed: int, prompt: str) -> int:
    """The seed a one-prompt request seeded with ``seed`` gives its prompt."""
    return prompt_seeds(seed, [prompt])[0]


def _wait_for_pending(queue: RequestQueue, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(queue._pending) < count:
        assert time.monotonic() < deadline, "requests never queued"
        time.sleep(0.005)


def test_batch_key_ignores_only_the_seed():
    base = GenerationParams(router="p-punc", gamma=0.3, seed=1)
    assert batch_key(base) == batch_key(GenerationParams(router="p-punc", gamma=0.3, seed=2))
    assert batch_key(base) != batch_key(GenerationParams(router="p-punc", gamma=0.4))
    assert batch_key(base) != batch_key(GenerationParams(router="p", gamma=0.3))
    assert batch_key(base) != batch_key(GenerationParams(router="p-punc", gamma=0.3, n=2))
    assert batch_key(base) != batch_key(GenerationParams(router="p-punc", gamma=0.3, stop="x"))


def test_requests_waiting_behind_a_decode_run_as_one_batch():
    runner = FakeRunner()
    queue = RequestQueue(runner)
    params = [GenerationParams(seed=i, n=2) for i in range(9)]
    with ThreadPoolExecutor(9) as pool:
        first = pool.submit(queue.submit, ["p0"], params[0])
        assert runner.started.wait(10)
        rest = [pool.submit(queue.submit, [f"p{i}"], params[i]) for i in range(1, 9)]
        _wait_for_pending(queue, 8)
        runner.release.set()
        results = [first.result(10)] + [f.result(10) for f in rest]
    assert runner.calls[0] == ["p0"] and len(runner.calls) == 2
    assert sorted(runner.calls[1]) == sorted(f"p{i}" for i in range(1, 9))
    for i, result in enumerate(results):
        # each request gets its own prompt and seed
        assert result == [[(f"p{i}", _seed(i, f"p{i}"))] * 2]
    assert (queue.batches_run, queue.requests_run) == (2, 9)


def test_only_requests_with_the_same_settings_merge_and_rows_are_capped():
    runner = FakeRunner()
    queue = RequestQueue(runner, max_rows=4)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(queue.submit, ["x"], GenerationParams(seed=0))
        assert runner.started.wait(10)
        same = [pool.submit(queue.submit, [f"s{i}"], GenerationParams(seed=i)) for i in range(6)]
        _wait_for_pending(queue, 6)
        other = pool.submit(queue.submit, ["o"], GenerationParams(router="p", gamma=0.2, seed=0))
        # other settings do not wait for the decode
        assert other.result(10) == [[("o", _seed(0, "o"))]]
        runner.release.set()
        assert first.result(10) == [[("x", _seed(0, "x"))]]
        for i, future in enumerate(same):
            assert future.result(10) == [[(f"s{i}", _seed(i, f"s{i}"))]]
    merged = [c for c in runner.calls if c[0].startswith("s")]
    assert sorted(len(c) for c in merged) == [2, 4]  # 6 one-row requests, at most 4 rows a batch


def test_a_failing_request_does_not_cost_the_others_their_results():
    runner = FakeRunner()
    queue = RequestQueue(runner)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(queue.submit, ["a"], GenerationParams(seed=0))
        assert runner.started.wait(10)
        futures = [
            pool.submit(queue.submit, [p], GenerationParams(seed=i))
            for i, p in enumerate(["b", "bad", "c"], start=1)
        ]
        _wait_for_pending(queue, 3)
        runner.release.set()
        assert first.result(10) == [[("a", _seed(0, "a"))]]
        assert futures[0].result(10) == [[("b", _seed(1, "b"))]]
        with pytest.raises(ValueError, match="bad prompt"):
            futures[1].result(10)
        assert futures[2].result(10) == [[("c", _seed(3, "c"))]]
    assert sorted(runner.calls[1]) == ["b", "bad", "c"]  # merged first, then each alone
    assert sorted(runner.calls[2:]) == [["b"], ["bad"], ["c"]]


def test_prompts_of_one_request_get_their_own_seeds():
    runner = FakeRunner()
    runner.started.set()  # run at once
    queue = RequestQueue(runner)
    out = queue.submit(["q", "q", "r"], GenerationParams(seed=5))
    seeds = [row[0][1] for row in out]
    assert len(set(seeds)) == 3  # a repeated prompt draws its own samples
    assert seeds[2] == _seed(5, "r")  # a prompt draws what it would draw alone
    assert seeds[0] == _seed(5, "q")


def test_concurrent_engine_calls_are_merged_and_equal_serial_results(tiny_pair):
    engine = BacoEngine(tiny_pair)
    prompts = [f"Tell me about the number {i}." for i in range(8)]
    options = {"router": "p-punc", "n": 2, "max_new_tokens": 12, "temperature": 1.0}

    def call(i: int):
        row = engine.generate(prompts[i], seed=100 + i, **options)[0]
        return [(g.token_ids, g.sources, g.finish_reason) for g in row]

    serial = [call(i) for i in range(8)]
    before = engine._queue.batches_run
    barrier = threading.Barrier(8)

    def together(i: int):
        barrier.wait(10)
        return call(i)

    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(together, range(8)))
    assert concurrent == serial
    assert engine._queue.batches_run - before < 8  # some calls shared a decode


def test_request_batching_can_be_turned_off(tiny_pair):
    engine = BacoEngine(tiny_pair, options=DecodeOptions(batch_requests=False))
    assert engine._queue is None
    out = engine.generate("Hello", seed=1, max_new_tokens=4)
    assert len(out) == 1 and len(out[0]) == 1


def test_a_cancelled_request_names_only_its_own_prompts_in_a_merged_batch():
    runner = FakeRunner()
    queue = RequestQueue(runner)
    first = threading.Thread(target=queue.submit, args=(["a"], GenerationParams(seed=0)))
    first.start()
    assert runner.started.wait(10)  # holds the queue: the next two wait and merge
    cancel = threading.Event()
    threads = [
        threading.Thread(target=queue.submit, args=(["b", "c"], GenerationParams(seed=1))),
        threading.Thread(
            target=queue.submit, args=(["d"], GenerationParams(seed=2)), kwargs={"cancel": cancel}
        ),
    ]
    for count, thread in enumerate(threads, 1):
        thread.start()
        _wait_for_pending(queue, count)  # queued in this order
    runner.release.set()
    for thread in [first, *threads]:
        thread.join(10)
    assert runner.calls[-1] == ["b", "c", "d"]
    assert runner.cancelled() == set()
    cancel.set()
    assert runner.cancelled() == {2}  # prompt "d", the cancelled request's
