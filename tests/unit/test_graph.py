"""The graph decode path (shared_core/graph.py) on CPU: same samples as the eager loop.

``graph_backend="eager"`` runs the static-cache step uncompiled (fast); ``"aot_eager"``
traces it with ``torch.compile(fullgraph=True)`` (a graph break would fail) and runs the
same ATen ops, so outputs must match the eager loop token for token.
"""

from __future__ import annotations

import logging
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared_core import BacoEngine
from shared_core.engine import DecodeOptions
from shared_core.graph import BATCH_BUCKETS, batch_bucket, length_bucket
from shared_core.routers import ROUTER_NAMES

PROMPTS = ["Tell me a story about a girl and her dog.", "Name a color.", "Write a haiku."]
CASES = [
    ("p-punc", {}),
    ("rand", {"top_p": 0.9, "top_k": 40}),
    ("h", {"stop": ["e t"], "min_p": 0.05}),
    ("aligned", {}),
    ("base", {"min_new_tokens": 5}),
    ("p-fc", {"temperature": 0}),
]


def _engine(pair, **options) -> BacoEngine:
    """An engine whose decodes wait for their shape's compile (the tests compare the graph
    path's samples, so it must run); background builds are tested on their own."""
    options.setdefault("graph_wait", True)
    return BacoEngine(pair, options=DecodeOptions(batch_requests=False, **options))


def _summary(result) -> list:
    return [
        [(g.token_ids, g.sources, g.finish_reason, g.text, g.usage) for g in row] for row in result
    ]


@pytest.mark.parametrize(("router", "extra"), CASES)
def test_graph_path_gives_the_eager_samples(tiny_pair, router, extra):
    eager = _engine(tiny_pair, graph=False)
    graph = _engine(tiny_pair, graph=True, graph_backend="eager", graph_sync_every=3)
    options = {"router": router, "n": 3, "max_new_tokens": 20, "seed": 4, **extra}
    expected = eager.generate(PROMPTS, **options)
    assert _summary(graph.generate(PROMPTS, **options)) == _summary(expected)
    assert graph._graphs._free  # the graph path ran (its runner went back to the cache)


def test_compiled_graph_step_gives_the_eager_samples(tiny_pair):
    eager = _engine(tiny_pair, graph=False)
    graph = _engine(tiny_pair, graph=True, graph_backend="aot_eager", graph_sync_every=4)
    options = {"router": "p-punc", "gamma": 0.6, "n": 2, "max_new_tokens": 16, "top_p": 0.9}
    for seed in (1, 2):  # the second decode reuses the compiled runner
        expected = eager.generate(PROMPTS[:2], seed=seed, **options)
        assert _summary(graph.generate(PROMPTS[:2], seed=seed, **options)) == _summary(expected)
    assert sum(len(r) for r in graph._graphs._free.values()) == 1


def test_new_knob_values_reuse_the_compiled_runner(tiny_pair):
    """γ, temperature, top_p, min_p and min_new_tokens are graph inputs: one compiled step
    serves every value (only a knob's move to or from its neutral value recompiles)."""
    import torch._dynamo.utils

    eager = _engine(tiny_pair, graph=False)
    graph = _engine(tiny_pair, graph=True, graph_backend="aot_eager", graph_sync_every=4)
    settings = [
        {"router": "p-punc", "gamma": 0.2, "temperature": 0.7, "top_p": 0.8, "min_p": 0.02},
        {"router": "p-punc", "gamma": 0.9, "temperature": 1.3, "top_p": 0.95, "min_p": 0.1},
        {"router": "p-punc", "gamma": 1.0, "temperature": 0.9, "top_p": 0.5, "min_p": 0.05},
    ]
    counters = torch._dynamo.utils.counters["stats"]
    before = counters["unique_graphs"]
    for index, knobs in enumerate(settings):
        options = {"n": 2, "max_new_tokens": 14, "min_new_tokens": 3 + index, "seed": 8, **knobs}
        expected = eager.generate(PROMPTS[:2], **options)
        assert _summary(graph.generate(PROMPTS[:2], **options)) == _summary(expected)
        if index == 0:
            compiled = counters["unique_graphs"]
            assert compiled > before  # the first decode compiled the step
    assert counters["unique_graphs"] == compiled  # no recompilation for new values
    assert sum(len(r) for r in graph._graphs._free.values()) == 1  # one runner served all


def test_every_runner_compiles_its_own_step(tiny_pair):
    """Runners do not share dynamo's per-function cache: with room for one compiled variant
    per function, two runners (two rule structures) still compile (fullgraph=True makes
    hitting the limit an error)."""
    import torch._dynamo

    graph = _engine(tiny_pair, graph=True, graph_backend="aot_eager", graph_sync_every=4)
    eager = _engine(tiny_pair, graph=False)
    with torch._dynamo.config.patch(recompile_limit=1):
        for temperature in (1.0, 0.7):
            options = {"n": 2, "max_new_tokens": 8, "seed": 3, "temperature": temperature}
            expected = eager.generate(PROMPTS[1], **options)
            assert _summary(graph.generate(PROMPTS[1], **options)) == _summary(expected)
    assert sum(len(r) for r in graph._graphs._free.values()) == 2


_SHARED_ENGINES: dict[str, BacoEngine] = {}


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    router=st.sampled_from(ROUTER_NAMES),
    gamma=st.sampled_from([None, 0.1, 0.5, 0.9]),
    temperature=st.sampled_from([0.0, 0.7, 1.0, 1.4]),
    top_p=st.sampled_from([1.0, 0.9, 0.6]),
    top_k=st.sampled_from([0, 25]),
    min_p=st.sampled_from([0.0, 0.05]),
    n=st.integers(1, 3),
    prompts=st.sampled_from([PROMPTS[:1], PROMPTS[1:], PROMPTS]),
    stop=st.sampled_from([[], [" t"], ["a", "o"]]),
    seed=st.integers(0, 2**31),
)
def test_graph_path_property_same_samples_as_the_eager_loop(
    tiny_pair, router, gamma, temperature, top_p, top_k, min_p, n, prompts, stop, seed
):
    """Any built-in router and sampling setting: the graph path (one engine reused across
    examples, so runners are reloaded with other knobs and rows) gives the eager samples."""
    graph = _SHARED_ENGINES.setdefault(
        "graph", _engine(tiny_pair, graph=True, graph_backend="eager", graph_sync_every=3)
    )
    eager = _SHARED_ENGINES.setdefault("eager", _engine(tiny_pair, graph=False))
    options = {
        "router": router,
        "gamma": gamma,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "min_p": min_p,
        "n": n,
        "stop": stop,
        "seed": seed,
        "max_new_tokens": 18,
    }
    assert _summary(graph.generate(prompts, **options)) == _summary(
        eager.generate(prompts, **options)
    )


def test_graph_stream_events_add_up_to_the_eager_stream(tiny_pair):
    eager = _engine(tiny_pair, graph=False)
    graph = _engine(tiny_pair, graph=True, graph_backend="eager", graph_sync_every=5)
    options = {"router": "p-punc", "n": 2, "max_new_tokens": 24, "seed": 9}

    def collect(engine):
        texts: dict[int, str] = {}
        finals = {}
        for event in engine.stream(PROMPTS[0], **options):
            texts[event.row] = texts.get(event.row, "") + event.text_delta
            if event.generation is not None:
                finals[event.row] = event.generation
        assert texts == {row: g.text for row, g in finals.items()}  # deltas add up
        return texts, {row: g.token_ids for row, g in finals.items()}

    eager_texts, eager_ids = collect(eager)
    graph_texts, graph_ids = collect(graph)
    assert graph_texts == eager_texts and graph_ids == eager_ids
    assert len(graph_ids) == 2


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_one_weights_pair_runs_as_a_row_split_with_the_eager_samples(
    tiny_one_weights_pair, backend
):
    pair = tiny_one_weights_pair
    eager = _engine(pair, graph=False)  # the eager loop's joint forward (peft mixed batches)
    graph = _engine(pair, graph=True, graph_backend=backend, graph_sync_every=3)
    graph._graphs.max_free = 16
    # a stop string ends rows at different steps: the live rows move to a smaller bucket
    options = {"router": "p-punc", "gamma": 0.9, "n": 3, "max_new_tokens": 30, "stop": [" th"]}
    for seed in (4, 5):
        expected = eager.generate(PROMPTS, seed=seed, **options)
        got = graph.generate(PROMPTS, seed=seed, **options)
        assert _summary(got) == _summary(expected)
    assert any("base" in g.sources and "aligned" in g.sources for row in got for g in row)
    keys = list(graph._graphs._free)
    assert keys and all(key[3][1] == (("joint", 128),) for key in keys)  # one joint model
    assert len({key[3][0] for key in keys}) > 1  # compacted into a smaller bucket


@pytest.mark.parametrize("router", ["base", "aligned"])
def test_one_view_of_a_one_weights_pair_gives_the_eager_samples(tiny_one_weights_pair, router):
    pair = tiny_one_weights_pair
    options = {"router": router, "n": 2, "max_new_tokens": 16, "seed": 3}
    expected = _engine(pair, graph=False).generate(PROMPTS[:2], **options)
    graph = _engine(pair, graph=True, graph_backend="eager", graph_sync_every=4)
    assert _summary(graph.generate(PROMPTS[:2], **options)) == _summary(expected)
    assert graph._graphs._free
    # the two views really differ, so the base view cannot pass as the aligned one
    other = "aligned" if router == "base" else "base"
    assert _summary(expected) != _summary(
        _engine(pair, graph=False).generate(PROMPTS[:2], **{**options, "router": other})
    )


def test_two_views_without_the_joint_forward_fall_back(tiny_one_weights_pair, caplog):
    pair = tiny_one_weights_pair
    graph = _engine(pair, graph=True, graph_backend="eager", joint_forward=False)
    with caplog.at_level(logging.DEBUG, logger="shared_core"):
        graph.generate(PROMPTS[1], router="p-punc", max_new_tokens=8, seed=1)
    assert "joint_forward is off" in caplog.text
    assert not graph._graphs._free


def test_unsupported_adapters_fall_back_with_a_reason(tiny_pair_paths, tmp_path, caplog):
    pytest.importorskip("peft", reason="one-weights pairs need peft (in the dev extra)")
    from shared_core import ModelPair
    from shared_core.testing import save_tiny_adapter

    base, _ = tiny_pair_paths
    dora = save_tiny_adapter(base, tmp_path / "dora", target_modules=["q_proj"], use_dora=True)
    pair = ModelPair.from_pretrained(base, aligned_adapter=dora)
    graph = _engine(pair, graph=True, graph_backend="eager")
    options = {"router": "p-punc", "max_new_tokens": 8, "seed": 1}
    with caplog.at_level(logging.DEBUG, logger="shared_core"):
        out = graph.generate(PROMPTS[1], **options)
    assert "a LoRA variant" in caplog.text
    assert _summary(out) == _summary(_engine(pair, graph=False).generate(PROMPTS[1], **options))
    assert not graph._graphs._free


@pytest.fixture(scope="module")
def tiny_sliding_pair():
    """Gemma-3-style models: a sliding-window layer (96 tokens) and a full-attention one."""
    from shared_core import ModelPair
    from shared_core.testing import build_tiny_sliding_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    base, aligned = (build_tiny_sliding_model(len(tokenizer), seed) for seed in (1, 2))
    return ModelPair(base, aligned, tokenizer)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_sliding_window_models_run_while_the_decode_fits_the_window(
    tiny_sliding_pair, caplog, backend
):
    pair = tiny_sliding_pair
    eager = _engine(pair, graph=False)
    graph = _engine(pair, graph=True, graph_backend=backend, graph_sync_every=4)
    options = {"router": "p-punc", "gamma": 0.6, "n": 2, "max_new_tokens": 30, "seed": 2}
    expected = eager.generate(PROMPTS, **options)
    assert _summary(graph.generate(PROMPTS, **options)) == _summary(expected)
    (key,) = graph._graphs._free
    assert dict(key[3][1]) == {"base": 95, "aligned": 95}  # capped below the window
    # a decode longer than the window stays on the eager loop, with the reason
    longer = {**options, "max_new_tokens": 90}
    with caplog.at_level(logging.DEBUG, logger="shared_core"):
        out = graph.generate(PROMPTS[1], **longer)
    assert "sliding window (96)" in caplog.text
    assert _summary(out) == _summary(eager.generate(PROMPTS[1], **longer))
    assert len(graph._graphs._free) == 1


def test_requests_the_graph_cannot_hold_fall_back_with_a_reason(tiny_pair, caplog):
    graph = _engine(tiny_pair, graph=True, graph_backend="eager")
    eager = _engine(tiny_pair, graph=False)

    def mine(signals):
        return signals.p_base < 0.5

    options = {"router": mine, "max_new_tokens": 8, "seed": 1}
    with caplog.at_level(logging.DEBUG, logger="shared_core"):
        out = graph.generate(PROMPTS[1], **options)
    assert "custom router callable" in caplog.text
    assert _summary(out) == _summary(eager.generate(PROMPTS[1], **options))
    assert not graph._graphs._free  # nothing ran on the graph path


def test_lazy_decodes_stay_on_the_eager_loop(tiny_pair, caplog):
    graph = _engine(tiny_pair, graph=True, graph_backend="eager", lazy_aligned=True)
    options = {"router": "p-punc", "max_new_tokens": 12, "seed": 2}
    with caplog.at_level(logging.DEBUG, logger="shared_core"):
        out = graph.generate(PROMPTS[0], **options)
    assert "lazy aligned catch-up" in caplog.text
    expected = _engine(tiny_pair, graph=False, lazy_aligned=True).generate(PROMPTS[0], **options)
    assert _summary(out) == _summary(expected)
    assert not graph._graphs._free


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"json_schema": {"type": "object"}}, "grammar"),
        ({"logprobs": 2}, "log-probabilities"),
        ({"n": BATCH_BUCKETS[-1] + 1, "max_new_tokens": 2}, "bucket"),
    ],
)
def test_batches_the_graph_cannot_hold_stay_eager_with_a_reason(tiny_pair, caplog, options, reason):
    graph = _engine(tiny_pair, graph=True, graph_backend="eager")
    options = {"max_new_tokens": 6, "seed": 1, **options}
    with caplog.at_level(logging.DEBUG, logger="shared_core"):
        graph.generate(PROMPTS[1], **options)
    assert reason in caplog.text
    assert not graph._graphs._free


def test_graph_is_off_by_default_on_cpu(tiny_pair):
    # Graph builds run on background threads, so an empty cache right after the decode
    # proves nothing: wait for any build the decode started, then look at what was built.
    engine = BacoEngine(tiny_pair, options=DecodeOptions(batch_requests=False))
    engine.generate(PROMPTS[1], max_new_tokens=6, seed=0)
    for thread in threading.enumerate():
        if thread.name.startswith("baco-graph"):
            thread.join(timeout=120)
    graphs = engine._graphs
    assert (graphs.builds, dict(graphs._failed), list(graphs._free)) == (0, {}, [])
    assert not graphs._building


def test_buckets():
    assert [batch_bucket(r) for r in (1, 2, 3, 9, 64)] == [1, 2, 4, 16, 64]
    assert batch_bucket(BATCH_BUCKETS[-1] + 1) is None
    assert [length_bucket(c) for c in (1, 128, 129)] == [128, 128, 256]


def test_live_rows_move_to_smaller_buckets_with_the_same_samples(tiny_pair):
    eager = _engine(tiny_pair, graph=False)
    graph = _engine(tiny_pair, graph=True, graph_backend="eager", graph_sync_every=2)
    graph._graphs.max_free = 16  # keep every bucket's runner to look at them
    # Stop strings end rows at different steps; 12 rows start in the 16-row bucket.
    options = {"router": "rand", "n": 4, "max_new_tokens": 40, "seed": 2, "stop": ["a", "o"]}
    expected = eager.generate(PROMPTS, **options)
    got = graph.generate(PROMPTS, **options)
    assert _summary(got) == _summary(expected)
    lengths = sorted(len(g.token_ids) for row in got for g in row)
    assert lengths[0] < lengths[-1] - 4  # rows really ended at different steps
    buckets = {key[3][0] for key in graph._graphs._free}
    assert 16 in buckets and min(buckets) < 16  # compacted into a smaller bucket


def test_idle_runners_are_capped_least_recently_used_first():
    from shared_core.graph import GraphCache

    cache = GraphCache(max_free=2)
    runners = [object(), object(), object()]
    for key, runner in zip("abc", runners, strict=True):
        cache.release(key, runner)  # type: ignore[arg-type]
    assert cache.acquire("a") is None  # the oldest idle runner was dropped
    assert cache.acquire("c") is runners[2] and cache.acquire("b") is runners[1]
    assert cache.acquire("b") is None


def test_a_step_that_fails_to_compile_leaves_the_decode_to_the_eager_loop(
    tiny_pair, monkeypatch, caplog
):
    from shared_core.graph import GraphRunner

    calls = []

    def broken_prepare(runner):
        calls.append(runner.bucket)
        raise RuntimeError("no kernel for this operator")

    monkeypatch.setattr(GraphRunner, "prepare", broken_prepare)
    graph = _engine(tiny_pair, graph=True, graph_backend="eager")
    options = {"router": "p-punc", "n": 2, "max_new_tokens": 12, "seed": 6, "top_p": 0.9}
    expected = _engine(tiny_pair, graph=False).generate(PROMPTS[:2], **options)
    with caplog.at_level(logging.WARNING, logger="shared_core"):
        assert _summary(graph.generate(PROMPTS[:2], **options)) == _summary(expected)
    assert "no kernel for this operator" in caplog.text
    assert _summary(graph.generate(PROMPTS[:2], **options)) == _summary(expected)
    assert calls == [4]  # the failed shape is not compiled again
    assert not graph._graphs._free


def test_a_smaller_bucket_that_fails_keeps_the_decode_in_the_bigger_one(tiny_pair, monkeypatch):
    from shared_core.graph import GraphRunner

    prepare = GraphRunner.prepare

    def prepare_big_only(runner):
        if runner.bucket < 16:
            raise RuntimeError("capture failed")
        prepare(runner)

    monkeypatch.setattr(GraphRunner, "prepare", prepare_big_only)
    graph = _engine(tiny_pair, graph=True, graph_backend="eager", graph_sync_every=3)
    # a stop string ends rows at different steps, so the live rows fit a smaller bucket
    options = {"router": "p-punc", "gamma": 0.9, "n": 3, "max_new_tokens": 30, "stop": [" th"]}
    expected = _engine(tiny_pair, graph=False).generate(PROMPTS, seed=4, **options)
    assert _summary(graph.generate(PROMPTS, seed=4, **options)) == _summary(expected)
    assert [key[3][0] for key in graph._graphs._free] == [16]  # it ran, in the first bucket
    assert any(key[3][0] < 16 for key in graph._graphs._failed)  # compaction was tried
