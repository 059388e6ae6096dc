"""Evaluation metrics for the diversity-quality trade-off (DESIGN.md section 5).

Framework-free pure functions: lexical and semantic diversity of k samples per prompt, an
LM-judge for fluency / relevance, and Pareto Coverage / Dominance over method sweeps. Heavy
dependencies (torch, transformers, sacrebleu) are imported only inside the functions that
need them.
"""

from __future__ import annotations

from .judge import Judge, RewardModelJudge, smollm2_gguf_path
from .lexical import (
    compression_ratio,
    distinct_n,
    lexical_diversity,
    ngram_entropy,
    ngrams,
    self_bleu,
    tokenize,
)
from .pareto import (
    aggregate_planes,
    coverage,
    dominance,
    normalise,
    pareto_front,
    pareto_mask,
    tradeoff_summary,
)
from .semantic import (
    DEFAULT_CLASS_THRESHOLD,
    Embedder,
    MiniLMEmbedder,
    cosine_similarity_matrix,
    distinct_classes,
    equivalence_classes,
    load_minilm_embedder,
    mean_pairwise_cosine_distance,
    minilm_model_dir,
    semantic_diversity,
    vendi_score,
)

__all__ = [
    "DEFAULT_CLASS_THRESHOLD",
    "Embedder",
    "Judge",
    "MiniLMEmbedder",
    "RewardModelJudge",
    "aggregate_planes",
    "compression_ratio",
    "cosine_similarity_matrix",
    "coverage",
    "distinct_classes",
    "distinct_n",
    "dominance",
    "equivalence_classes",
    "lexical_diversity",
    "load_minilm_embedder",
    "mean_pairwise_cosine_distance",
    "minilm_model_dir",
    "ngram_entropy",
    "ngrams",
    "normalise",
    "pareto_front",
    "pareto_mask",
    "self_bleu",
    "semantic_diversity",
    "smollm2_gguf_path",
    "tokenize",
    "tradeoff_summary",
    "vendi_score",
]
