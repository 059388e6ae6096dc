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
