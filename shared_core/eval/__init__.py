"""Evaluation metrics for the diversity-quality trade-off (docs/design.md, "Evaluation protocol").

Framework-free pure functions: lexical and semantic diversity of k samples per prompt, an
LM-judge for fluency / relevance, and Pareto Coverage / Dominance over method sweeps. Heavy
dependencies (transformers, sacrebleu, matplotlib) are imported only inside the functions that
need them.

The sweep pipeline (``baco eval``): :mod:`.runner` generates k samples per prompt for every
setting into a resumable JSONL, :mod:`.score` scores and aggregates them, :mod:`.summary`
computes Coverage / Dominance tables and :mod:`.plots` draws the Pareto plots.
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
from .runner import (
    ALIGNED_TEMPERATURES,
    BASELINE_METHODS,
    DEFAULT_GRIDS,
    PromptItem,
    RunStats,
    Setting,
    build_settings,
    default_prompts_path,
    load_prompts,
    read_jsonl,
    run_generation,
)
from .score import LazyScorer, aggregate_scores, load_scores, score_generations, score_record
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
from .summary import (
    LEXICAL_AXES,
    QUALITY_AXES,
    SEMANTIC_AXES,
    Plane,
    markdown_summary,
    planes_for,
    summarise,
    write_summary,
)

__all__ = [
    "ALIGNED_TEMPERATURES",
    "BASELINE_METHODS",
    "DEFAULT_CLASS_THRESHOLD",
    "DEFAULT_GRIDS",
    "LEXICAL_AXES",
    "QUALITY_AXES",
    "SEMANTIC_AXES",
    "Embedder",
    "Judge",
    "LazyScorer",
    "MiniLMEmbedder",
    "Plane",
    "PromptItem",
    "RewardModelJudge",
    "RunStats",
    "Setting",
    "aggregate_planes",
    "aggregate_scores",
    "build_settings",
    "compression_ratio",
    "cosine_similarity_matrix",
    "coverage",
    "default_prompts_path",
    "distinct_classes",
    "distinct_n",
    "dominance",
    "equivalence_classes",
    "lexical_diversity",
    "load_minilm_embedder",
    "load_prompts",
    "load_scores",
    "markdown_summary",
    "mean_pairwise_cosine_distance",
    "minilm_model_dir",
    "ngram_entropy",
    "ngrams",
    "normalise",
    "pareto_front",
    "pareto_mask",
    "planes_for",
    "read_jsonl",
    "run_generation",
    "score_generations",
    "score_record",
    "self_bleu",
    "semantic_diversity",
    "smollm2_gguf_path",
    "summarise",
    "tokenize",
    "tradeoff_summary",
    "vendi_score",
    "write_summary",
]
