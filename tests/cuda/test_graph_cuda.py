"""The graph decode path on a GPU: CUDA graphs give the eager loop's samples.

Skipped where torch sees no CUDA device (CI has none); run by ``benchmarks/gpu_check.sh`` on
a GPU machine.
"""

from __future__ import annotations

import threading

import pytest
import torch

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (run benchmarks/gpu_check.sh there)"
)

PROMPTS = ["Tell me a story about a girl and her dog.", "Name a color.", "Write a haiku."]


@pytest.fixture(scope="module")
def cuda_pair(tiny_pair_paths):
    from shared_core import ModelPair

    base, aligned = tiny_pair_paths
    return ModelPair.from_pretrained(str(base), str(aligned), device_map="cuda")


def _engine(pair, **options):
    from shared_core import BacoEngine
    from shared_core.engine import DecodeOptions

    options.setdefault("graph_wait", True)
    return BacoEngine(pair, options=DecodeOptions(batch_requests=False, **options))


def _summary(result):
    return [[(g.token_ids, g.sources, g.finish_reason, g.text) for g in row] for row in result]


@pytest.mark.parametrize(
    ("router", "extra"),
    [("p-punc", {}), ("rand", {"top_p": 0.9}), ("h", {"stop": ["e t"]}), ("aligned", {})],
)
def test_cuda_graph_path_gives_the_eager_samples_in_fp32(cuda_pair, router, extra):
    eager = _engine(cuda_pair, graph=False)
    graph = _engine(cuda_pair)  # the default on CUDA: the graph path
    options = {"router": router, "n": 4, "max_new_tokens": 24, "seed": 3, **extra}
    for seed in (3, 4):  # the second decode replays the captured graph
        options["seed"] = seed
        assert _summary(graph.generate(PROMPTS, **options)) == _summary(
            eager.generate(PROMPTS, **options)
        )
    runners = [r for rs in graph._graphs._free.values() for r in rs]
    assert runners and all(r._graph is not None for r in runners)  # captured CUDA graphs


def test_cuda_graph_samples_equal_cpu_samples(cuda_pair, tiny_pair):
    options = {"router": "p-punc", "n": 3, "max_new_tokens": 16, "seed": 11}
    cpu = _engine(tiny_pair, graph=False).generate(PROMPTS, **options)
    gpu = _engine(cuda_pair).generate(PROMPTS, **options)
    assert _summary(gpu) == _summary(cpu)


def test_cuda_graph_streams_and_threads(cuda_pair):
    graph = _engine(cuda_pair)
    options = {"router": "p-punc", "n": 2, "max_new_tokens": 20}
    serial = [graph.generate(PROMPTS[i % 3], seed=i, **options) for i in range(4)]
    text = "".join(e.text_delta for e in graph.stream(PROMPTS[0], seed=0, **options) if e.row == 0)
    assert text == serial[0][0][0].text
    results: list = [None] * 4

    def call(i: int) -> None:
        results[i] = graph.generate(PROMPTS[i % 3], seed=i, **options)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [_summary(r) for r in results] == [_summary(r) for r in serial]


@pytest.fixture(scope="module")
def cuda_one_weights_pair(tiny_pair_paths, tmp_path_factory):
    pytest.importorskip("peft", reason="one-weights pairs need peft")
    from shared_core import ModelPair
    from shared_core.testing import save_tiny_adapter

    base, _ = tiny_pair_paths
    adapter = save_tiny_adapter(base, tmp_path_factory.mktemp("cuda_adapter") / "adapter")
    return ModelPair.from_pretrained(base, aligned_adapter=adapter, device_map="cuda")


@pytest.mark.parametrize("router", ["p-punc", "base"])
def test_cuda_one_weights_graph_gives_the_eager_samples(cuda_one_weights_pair, router):
    """The row-split joint forward (and the base view alone) captured as CUDA graphs."""
    eager = _engine(cuda_one_weights_pair, graph=False)
    graph = _engine(cuda_one_weights_pair)
    options = {"router": router, "n": 3, "max_new_tokens": 24, "stop": [" th"]}
    for seed in (3, 4):
        assert _summary(graph.generate(PROMPTS, seed=seed, **options)) == _summary(
            eager.generate(PROMPTS, seed=seed, **options)
        )
    runners = [r for rs in graph._graphs._free.values() for r in rs]
    assert runners and all(r._graph is not None for r in runners)


def test_cuda_sliding_window_model_graph_gives_the_eager_samples():
    """Gemma-3-style layers (a sliding window) inside the window, captured as CUDA graphs."""
    from shared_core import ModelPair
    from shared_core.testing import build_tiny_sliding_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    models = [build_tiny_sliding_model(len(tokenizer), seed).to("cuda") for seed in (1, 2)]
    pair = ModelPair(*models, tokenizer)
    options = {"router": "p-punc", "n": 3, "max_new_tokens": 30, "seed": 5}
    graph = _engine(pair)
    assert _summary(graph.generate(PROMPTS, **options)) == _summary(
        _engine(pair, graph=False).generate(PROMPTS, **options)
    )
    runners = [r for rs in graph._graphs._free.values() for r in rs]
    assert runners and all(r._graph is not None for r in runners)


def test_the_steady_state_chunk_loop_never_synchronises_the_device(cuda_pair, monkeypatch):
    """Once a decode runs on its runner, the chunk loop (launch t + 1, read t, mark
    finished rows) makes no blocking call: sync-debug mode turns any into an error."""
    from shared_core.graph import GraphRunner

    graph = _engine(cuda_pair, graph_sync_every=4)
    options = {"router": "rand", "n": 4, "max_new_tokens": 48, "seed": 1, "stop": ["a"]}
    graph.generate(PROMPTS, **options)  # builds every bucket's runner
    graph._graphs.max_free = 16
    graph.generate(PROMPTS, **options)
    load, seen = GraphRunner.load, []

    def load_then_strict(runner, *args, **kwargs):
        load(runner, *args, **kwargs)
        torch.cuda.synchronize()  # the handover's copies are done: steady state from here
        torch.cuda.set_sync_debug_mode("error")
        seen.append(runner.bucket)

    monkeypatch.setattr(GraphRunner, "load", load_then_strict)
    try:
        expected = _engine(cuda_pair, graph=False).generate(PROMPTS, **options)
        torch.cuda.set_sync_debug_mode("default")
        assert _summary(graph.generate(PROMPTS, **options)) == _summary(expected)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert seen


def test_a_capture_while_eight_threads_decode_eagerly_and_with_grammars(cuda_pair):
    """Captures use thread-local capture errors: other threads' device work (eager decodes,
    grammar masks copied to the device) neither breaks a capture nor is broken by it."""
    pytest.importorskip("llguidance", reason="grammar requests need llguidance")
    graph = _engine(cuda_pair, graph_wait=False)
    eager = _engine(cuda_pair, graph=False)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    options = {"router": "p-punc", "n": 2, "max_new_tokens": 24}
    expected = {
        i: eager.generate(PROMPTS[i % 3], seed=i, **options, json_schema=schema if i % 2 else None)
        for i in range(8)
    }
    errors: list[BaseException] = []
    results: dict[int, list] = {}

    def call(i: int) -> None:
        try:
            for _ in range(3):
                results[i] = graph.generate(
                    PROMPTS[i % 3], seed=i, **options, json_schema=schema if i % 2 else None
                )
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors
    assert {i: _summary(r) for i, r in results.items()} == {
        i: _summary(r) for i, r in expected.items()
    }
    assert graph._graphs.builds >= 1 and not graph._graphs._failed
