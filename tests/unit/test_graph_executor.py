"""The graph executor as a server needs it (shared_core/graph_executor.py, GraphCache builds):
compiles off the request path, few of them, freed prefill caches, nothing built per chunk,
the batch handed back to the eager executor when rows join."""

from __future__ import annotations

import gc
import importlib.util
import logging
import subprocess
import sys
import threading
import time
import weakref

import pytest
import torch

from shared_core import BacoEngine, ModelPair
from shared_core.engine import DecodeOptions
from shared_core.graph import GraphRunner
from shared_core.model_state import ModelRows

PROMPTS = ["Tell me a story about a girl and her dog.", "Name a color.", "Write a haiku."]


def _engine(pair, **options) -> BacoEngine:
    options = {"batch_requests": False, "graph": True, "graph_backend": "eager", **options}
    return BacoEngine(pair, options=DecodeOptions(**options))


def _summary(result) -> list:
    return [[(g.token_ids, g.sources, g.finish_reason, g.text) for g in row] for row in result]


def _runs(monkeypatch) -> list[int]:
    """Buckets of every GraphRunner.run call (the graph path decoding)."""
    calls: list[int] = []
    run = GraphRunner.run

    def spy(runner, steps):
        calls.append(runner.bucket)
        run(runner, steps)

    monkeypatch.setattr(GraphRunner, "run", spy)
    return calls


def _wait_for(condition, seconds: float = 60.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_a_decode_on_a_compiled_shape_finishes_while_another_shape_compiles(tiny_pair, monkeypatch):
    engine = _engine(tiny_pair)  # graph_wait off: new shapes build in the background
    eager = _engine(tiny_pair, graph=False)
    options = {"router": "p-punc", "n": 2, "max_new_tokens": 20}
    assert engine.warmup(rows=[2], freeze=False, **options) == 1
    runs = _runs(monkeypatch)
    compiling, release = threading.Event(), threading.Event()
    prepare = GraphRunner.prepare

    def slow_prepare(runner):  # a compile that takes as long as the test wants
        compiling.set()
        assert release.wait(120)
        prepare(runner)

    monkeypatch.setattr(GraphRunner, "prepare", slow_prepare)
    try:
        # a new shape (8 rows): its build starts and blocks; the decode goes on eagerly
        wide = {**options, "n": 8, "seed": 5}
        assert _summary(engine.generate(PROMPTS[0], **wide)) == _summary(
            eager.generate(PROMPTS[0], **wide)
        )
        assert compiling.wait(30) and engine._graphs.builds == 1  # still compiling
        assert runs == []  # that decode ran on the eager loop
        # a decode on the compiled shape runs on the graph path and finishes meanwhile
        result: list = []
        worker = threading.Thread(
            target=lambda: result.append(engine.generate(PROMPTS[1], seed=2, **options))
        )
        worker.start()
        worker.join(120)
        assert not worker.is_alive() and not release.is_set()
        assert _summary(result[0]) == _summary(eager.generate(PROMPTS[1], seed=2, **options))
        assert runs and set(runs) == {2}
    finally:
        release.set()
    assert _wait_for(lambda: engine._graphs.builds == 2)
    runs.clear()
    assert _summary(engine.generate(PROMPTS[0], **wide)) == _summary(
        eager.generate(PROMPTS[0], **wide)
    )
    assert runs and runs[0] == 8  # the new shape's runner, once built


def test_varied_max_new_tokens_reuse_one_compiled_step_per_length_bucket(tiny_pair):
    import torch._dynamo.utils

    engine = _engine(tiny_pair, graph_backend="aot_eager", graph_wait=True)
    eager = _engine(tiny_pair, graph=False)
    counters = torch._dynamo.utils.counters["stats"]
    before = counters["unique_graphs"]
    for max_new_tokens in (20, 45, 70, 100):  # prompt + new tokens all within 128 columns
        options = {"n": 2, "max_new_tokens": max_new_tokens, "seed": max_new_tokens}
        assert _summary(engine.generate(PROMPTS[1], **options)) == _summary(
            eager.generate(PROMPTS[1], **options)
        )
    assert engine._graphs.builds == 1
    assert counters["unique_graphs"] - before == 1  # one compile served every length
    engine.generate(PROMPTS[1], n=2, max_new_tokens=200, seed=0)  # the 256 bucket
    assert engine._graphs.builds == 2


def test_the_prefill_cache_is_freed_once_the_static_caches_hold_it(tiny_pair, monkeypatch):
    caches: list[weakref.ref] = []
    hand_over = ModelRows.hand_over

    def spy(state):
        caches.append(weakref.ref(state.cache))
        return hand_over(state)

    monkeypatch.setattr(ModelRows, "hand_over", spy)
    runs = _runs(monkeypatch)
    engine = _engine(tiny_pair, graph_wait=True, graph_sync_every=2)
    stream = engine.stream(PROMPTS[0], n=2, max_new_tokens=40, seed=1, min_new_tokens=30)
    for _ in range(12):  # step 0 and a few graph chunks: the decode is still running
        next(stream)
    assert runs and len(caches) == 2  # both models handed over, on the graph path
    gc.collect()
    assert all(ref() is None for ref in caches)
    stream.close()


def test_an_out_of_memory_while_preparing_falls_back_for_that_decode_only(tiny_pair, monkeypatch):
    prepare, calls = GraphRunner.prepare, []

    def out_of_memory_once(runner):
        calls.append(runner.bucket)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        prepare(runner)

    monkeypatch.setattr(GraphRunner, "prepare", out_of_memory_once)
    runs = _runs(monkeypatch)
    engine = _engine(tiny_pair, graph_wait=True)
    expected = _engine(tiny_pair, graph=False).generate(PROMPTS[:2], n=2, seed=3)
    assert _summary(engine.generate(PROMPTS[:2], n=2, seed=3)) == _summary(expected)
    assert runs == [] and not engine._graphs._failed  # eager, and not marked as failed
    assert _summary(engine.generate(PROMPTS[:2], n=2, seed=3)) == _summary(expected)
    assert calls == [4, 4] and runs  # tried again: the graph path ran


def test_top_k_values_in_one_bucket_share_a_compiled_step(tiny_pair):
    engine = _engine(tiny_pair, graph_wait=True)
    eager = _engine(tiny_pair, graph=False)
    for top_k in (5, 20, 40):  # all read from one 64-wide topk
        options = {"n": 2, "max_new_tokens": 16, "seed": top_k, "top_k": top_k}
        assert _summary(engine.generate(PROMPTS[:2], **options)) == _summary(
            eager.generate(PROMPTS[:2], **options)
        )
    assert engine._graphs.builds == 1


def test_pairs_whose_output_layers_differ_in_width_use_the_graph_path(tiny_pair, monkeypatch):
    from shared_core.testing import build_tiny_model

    tokenizer = tiny_pair.tokenizer
    wider = build_tiny_model(len(tokenizer) + 24, 2)  # a padded output layer
    pair = ModelPair(tiny_pair.base, wider, tokenizer)
    runs = _runs(monkeypatch)
    options = {"router": "p-punc", "n": 2, "max_new_tokens": 20, "seed": 7}
    expected = _engine(pair, graph=False).generate(PROMPTS, **options)
    assert _summary(_engine(pair, graph_wait=True).generate(PROMPTS, **options)) == _summary(
        expected
    )
    assert runs


def test_the_chunk_loop_builds_no_tensor_from_host_values(tiny_pair, monkeypatch):
    """A CPU proxy of "no host-to-device copy per chunk": after the handover the host side
    of the loop never calls ``torch.tensor`` (row positions and finished flags go through
    the runner's fixed buffers). The step itself is left out (uncompiled here; compiled and
    captured on a GPU). The CUDA module checks the real thing with sync-debug mode."""
    load, run, tensor = GraphRunner.load, GraphRunner.run, torch.tensor
    made, in_step, runs = [], [False], []

    def counting_tensor(*args, **kwargs):
        if not in_step[0]:
            made.append(args[0] if args else None)
        return tensor(*args, **kwargs)

    def load_then_count(runner, *args, **kwargs):
        load(runner, *args, **kwargs)
        monkeypatch.setattr(torch, "tensor", counting_tensor)

    def run_uncounted(runner, steps):
        runs.append(runner.bucket)
        in_step[0] = True
        try:
            run(runner, steps)
        finally:
            in_step[0] = False

    engine = _engine(tiny_pair, graph_wait=True, graph_sync_every=2)
    engine._graphs.max_free = 16
    # stop strings end rows at different steps: finished rows are sent to the device, and
    # live rows move to smaller buckets
    options = {"router": "rand", "n": 3, "max_new_tokens": 30, "seed": 2, "stop": ["a", "o"]}
    expected = _engine(tiny_pair, graph=False).generate(PROMPTS, **options)
    engine.generate(PROMPTS, **options)  # builds every bucket's runner (builds allocate)
    monkeypatch.setattr(GraphRunner, "load", load_then_count)
    monkeypatch.setattr(GraphRunner, "run", run_uncounted)
    assert _summary(engine.generate(PROMPTS, **options)) == _summary(expected)
    assert len(set(runs)) > 1 and made == []


def test_idle_runners_are_released_when_a_request_needs_their_memory(tiny_pair, monkeypatch):
    import shared_core.memory as engine_module

    engine = _engine(tiny_pair, graph_wait=True)
    engine.generate(PROMPTS[1], n=2, max_new_tokens=8, seed=0)
    held = engine._graphs.idle_bytes()
    assert held > 0
    check_fits, calls = engine_module.check_fits, []

    def tight(*args):
        calls.append(engine._graphs.idle_bytes())
        if engine._graphs.idle_bytes():
            raise ValueError("this request needs about 1 GiB ... (simulated)")
        return check_fits(*args)

    monkeypatch.setattr(engine_module, "check_fits", tight)
    engine.generate(PROMPTS[0], n=2, max_new_tokens=8, seed=0)
    assert calls[:2] == [held, 0]  # refused with idle runners, fits once they are freed

    def refuse(*args):
        raise ValueError("too big")

    monkeypatch.setattr(engine_module, "check_fits", refuse)
    with pytest.raises(ValueError, match="too big"):  # nothing idle left to free: refused
        engine.generate(PROMPTS[0], n=2, max_new_tokens=8, seed=0)


def test_warmup_builds_shapes_ahead_and_is_a_no_op_without_the_graph_path(tiny_pair):
    engine = _engine(tiny_pair)
    assert engine.warmup(rows=[1, 3], lengths=[100, 200]) == 4  # 2 row × 2 length buckets
    assert engine.warmup(rows=[1], lengths=[100]) == 0  # already built
    assert _engine(tiny_pair, graph=False).warmup(rows=[1]) == 0


def test_rows_joining_a_graph_batch_hand_it_back_and_keep_every_sample(tiny_pair, monkeypatch):
    """A request arriving while the graph path runs the batch: at the next chunk boundary the
    batch goes back to the eager executor (static caches copied into dynamic ones), the
    newcomer joins, and the graph path takes the merged batch again; both requests get the
    samples they get alone."""
    runs = _runs(monkeypatch)
    engine = _engine(tiny_pair, graph_wait=True, graph_sync_every=2, batch_requests=True)
    eager = _engine(tiny_pair, graph=False)
    long = {"router": "p-punc", "n": 2, "max_new_tokens": 40, "min_new_tokens": 40, "seed": 1}
    short = {"router": "rand", "gamma": 0.5, "n": 1, "max_new_tokens": 12, "seed": 2}
    stream = engine.stream(PROMPTS[0], **long)
    events = [next(stream) for _ in range(12)]
    assert runs  # the long request is on the graph path
    executor = engine.scheduler.executor
    taken = executor.taken
    joined = engine.generate(PROMPTS[1], **short)
    events += list(stream)
    finals = sorted((e for e in events if e.generation), key=lambda e: e.sample_index)
    expected = eager.generate(PROMPTS[0], **long)[0]
    assert [e.generation.token_ids for e in finals] == [g.token_ids for g in expected]
    assert _summary(joined) == _summary(eager.generate(PROMPTS[1], **short))
    assert executor.taken > taken  # handed back for the join, then taken again


def test_after_a_warm_up_other_shapes_run_eager_and_nothing_compiles(tiny_pair, caplog):
    """No request waits behind a compile: once warmed up (and frozen), a batch of another
    shape runs on the eager executor with the same samples, no build starts, and the
    fallback is counted by reason."""
    engine = _engine(tiny_pair, batch_requests=True)
    eager = _engine(tiny_pair, graph=False)
    assert engine.warmup(rows=[2], n=2, max_new_tokens=20) == 1
    options = {"n": 8, "max_new_tokens": 20, "seed": 5}  # an 8-row bucket: not warmed
    with caplog.at_level(logging.INFO, logger="shared_core"):
        got = engine.generate(PROMPTS[0], **options)
    assert _summary(got) == _summary(eager.generate(PROMPTS[0], **options))
    assert engine._graphs.builds == 1 and not engine._graphs._building
    assert "outside the warmed set" in caplog.text
    assert engine.scheduler.executor.fallbacks["no graph runner for a 8-row bucket"] >= 1


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("kernels") is None,
    reason="checks the compiled step beside transformers' `kernels` hub-layer wrappers",
)
def test_steps_compile_with_kernels_installed_while_a_warm_request_runs(tiny_pair, monkeypatch):
    """With ``kernels`` installed (transformers wraps the attention layers in its hub-layer
    dispatch), a new shape compiles with ``aot_eager`` while a request on a compiled shape
    runs its layers on another thread: no compile fails, and both give the eager samples."""
    engine = _engine(tiny_pair, graph_backend="aot_eager", batch_requests=True)
    eager = _engine(tiny_pair, graph=False)
    warm = {"n": 1, "max_new_tokens": 60, "min_new_tokens": 60, "seed": 3}
    assert engine.warmup(rows=[1], freeze=False, max_new_tokens=60, min_new_tokens=60) == 1
    runs = _runs(monkeypatch)
    results: list = []
    worker = threading.Thread(target=lambda: results.append(engine.generate(PROMPTS[1], **warm)))
    worker.start()
    assert _wait_for(lambda: runs)  # the warm request is on the graph path
    # a new bucket: it joins, the batch goes back to the eager executor, and the new shape
    # compiles on a background thread while the models run on the scheduler's
    cold = {"n": 4, "max_new_tokens": 30, "seed": 4}
    got_cold = engine.generate(PROMPTS[0], **cold)
    worker.join(300)
    assert _wait_for(lambda: not engine._graphs._building, 300)
    assert engine._graphs._failed == {}  # no SpeculationLogDivergence, no fallback for good
    assert engine._graphs.builds == 2
    assert _summary(results[0]) == _summary(eager.generate(PROMPTS[1], **warm))
    assert _summary(got_cold) == _summary(eager.generate(PROMPTS[0], **cold))


@pytest.mark.slow
def test_a_process_that_compiles_in_the_background_exits_cleanly(tiny_pair_paths):
    """A process whose last request left a compile running on a background thread waits for
    it and exits 0 (a daemon build thread killed inside the compiler aborted the process with
    "terminate called without an active exception", exit code 134)."""
    base, aligned = tiny_pair_paths
    # the build waits for the main thread's last line, so the compile runs while the
    # interpreter shuts down however fast this machine compiles
    script = f"""
import threading
from shared_core import BacoEngine, ModelPair
from shared_core.engine import DecodeOptions
from shared_core.graph import GraphCache
main_done = threading.Event()
original_build = GraphCache._build
def held_build(self, key, build):
    main_done.wait()
    runner = original_build(self, key, build)
    print("built", flush=True)
    return runner
GraphCache._build = held_build
pair = ModelPair.from_pretrained({str(base)!r}, {str(aligned)!r})
options = DecodeOptions(graph=True, graph_backend="aot_eager")
engine = BacoEngine(pair, options=options)
engine.generate("Name a color.", n=2, max_new_tokens=12, seed=0)
assert engine._graphs._building, "a background compile is running at exit"
print("done", flush=True)
main_done.set()
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # the compile ran to its end inside the shutting-down interpreter (it may fail there:
    # torch cannot register its atexit hooks any more) and the process still exits 0
    assert done.stdout.split() == ["done", "built"], done.stdout
    assert "terminate called" not in done.stderr


def test_graph_fallbacks_reach_the_metrics(tiny_pair):
    pytest.importorskip("prometheus_client", reason="the serve extra exports /metrics")
    from shared_core.serve.metrics import ServeMetrics

    engine = _engine(tiny_pair, batch_requests=True)
    engine.generate(PROMPTS[1], n=2, max_new_tokens=6, seed=0, logprobs=1)
    text = ServeMetrics(engine).render()[0].decode()
    line = next(x for x in text.splitlines() if x.startswith("baco_graph_fallbacks_total{"))
    assert 'reason="log-probabilities requested"' in line and float(line.split()[-1]) >= 1
