"""Sharing one engine: threads, abandoned streams, no leaked grad mode (engine.py)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch

OPTIONS = {"n": 2, "max_new_tokens": 10, "gamma": 0.8}
PROMPTS = ["Tell me a story.", "Name a color.", "Write a haiku.", "Hi there"]


def tokens(result):
    return [[g.token_ids for g in row] for row in result]


def test_threads_get_the_same_results_as_serial_calls(tiny_engine):
    serial = [tokens(tiny_engine.generate(p, seed=i, **OPTIONS)) for i, p in enumerate(PROMPTS)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [
            pool.submit(tiny_engine.generate, p, seed=i, **OPTIONS) for i, p in enumerate(PROMPTS)
        ]
        parallel = [tokens(f.result(timeout=300)) for f in futures]
    assert parallel == serial


def test_abandoned_stream_does_not_block_other_calls(tiny_engine):
    stream = tiny_engine.stream("Tell me a story.", max_new_tokens=50, min_new_tokens=50)
    first = next(stream)  # the stream is left open and referenced
    assert first.token_id is not None
    done = threading.Event()

    def other_call():
        tiny_engine.generate("Name a color.", max_new_tokens=4)
        done.set()

    worker = threading.Thread(target=other_call)
    worker.start()
    worker.join(timeout=120)
    assert done.is_set(), "a half-consumed stream blocked another call"
    rest = list(stream)  # and the abandoned stream can still be finished afterwards
    assert rest[-1].generation is not None
    assert len(rest[-1].generation.token_ids) == 50


def test_interleaved_streams_match_their_separate_runs(tiny_engine):
    a_alone = tiny_engine.generate(PROMPTS[0], seed=3, **OPTIONS)
    b_alone = tiny_engine.generate(PROMPTS[1], seed=4, **OPTIONS)
    finals: dict[str, dict[int, list[int]]] = {"a": {}, "b": {}}
    streams = {
        "a": tiny_engine.stream(PROMPTS[0], seed=3, **OPTIONS),
        "b": tiny_engine.stream(PROMPTS[1], seed=4, **OPTIONS),
    }
    while streams:
        for key in list(streams):
            event = next(streams[key], None)
            if event is None:
                del streams[key]
            elif event.generation is not None:
                finals[key][event.sample_index] = event.generation.token_ids
    assert [finals["a"][i] for i in range(2)] == tokens(a_alone)[0]
    assert [finals["b"][i] for i in range(2)] == tokens(b_alone)[0]


def test_consumer_code_does_not_run_in_inference_mode(tiny_engine):
    for _event in tiny_engine.stream("Hi", max_new_tokens=3):
        assert not torch.is_inference_mode_enabled()
        assert torch.is_grad_enabled()
