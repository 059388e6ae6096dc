"""A short version of benchmarks/stress_long_run.py: memory does not grow across calls."""

from __future__ import annotations

import gc
import os

import pytest

pytestmark = pytest.mark.slow  # 60 bursts of generations


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_repeated_generations_do_not_grow_memory(tiny_engine):
    prompts = ["Tell me a story.", "Name a color.", "Write a haiku about rain."]

    def burst(start: int) -> None:
        for i in range(start, start + 20):
            tiny_engine.generate(prompts[: 1 + i % 3], n=1 + i % 3, max_new_tokens=16, seed=i)
            list(tiny_engine.stream(prompts[i % 3], max_new_tokens=8, seed=i))
        gc.collect()

    burst(0)  # warm-up: allocator pools, tokenizer caches
    before = rss_mb()
    burst(20)
    burst(40)
    growth = rss_mb() - before
    assert growth < 40, f"RSS grew by {growth:.1f} MiB over 40 generations"
