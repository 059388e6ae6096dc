"""Score the generation records of a sweep, cache the scores, aggregate them per setting.

Per record (one prompt's ``k`` samples under one setting) the scores are:

- lexical diversity (:func:`~shared_core.eval.lexical.lexical_diversity`): ``distinct_1..3``,
  ``entropy_1..3``, ``self_bleu``, ``self_bleu_diversity``, ``compression_ratio``;
- semantic diversity with an embedder (MiniLM by default): ``cosine_distance``, ``vendi``,
  ``distinct_classes``;
- quality from an LM judge, mean over the non-empty samples: ``fluency``, ``relevance``
  (and ``reward`` with a reward model);
- statistics: ``base_share``, ``switches``, ``length`` (tokens), ``stop_share`` (samples that
  ended by themselves), ``empty_share``.

Scores are appended to a second JSONL (``scores.jsonl``), one line per (setting, prompt) with
the setting's fields and a ``scores`` dict. A later line for the same pair supersedes (and is
merged over) an earlier one, so adding a judge later only computes the judge's scores. Each
group records which embedder / judge produced it (``embedder``, ``judge``, ``reward_model``);
a different one recomputes that group.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .lexical import lexical_diversity
from .runner import append_jsonl, read_jsonl, repair_jsonl
from .semantic import semantic_diversity

__all__ = [
    "SETTING_FIELDS",
    "LazyScorer",
    "aggregate_scores",
    "load_scores",
    "record_statistics",
    "score_generations",
    "score_record",
]

#: Fields copied from a generation record into its score record and the aggregated table.
SETTING_FIELDS = ("setting", "method", "router", "gamma", "temperature")

_GROUP_KEYS = {
    "lexical": "distinct_1",
    "semantic": "vendi",
    "judge": "fluency",
    "reward": "reward",
}
_GROUP_SOURCE = {"semantic": "embedder", "judge": "judge", "reward": "reward_model"}


def _nanmean(values: Iterable[float | None]) -> float:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(vals)) if vals else math.nan


def _name(obj: Any, given: str | None) -> str | None:
    if obj is None:
        return None
    if given is not None:
        return given
    return str(getattr(obj, "name", None) or getattr(obj, "model_id", None) or type(obj).__name__)


def record_statistics(record: Mapping[str, Any]) -> dict[str, float]:
    """Mean base share, switches, length; share of samples that stopped / are empty."""
    samples = record.get("samples") or []
    k = max(len(samples), 1)
    reasons = record.get("finish_reasons") or []
    return {
        "base_share": _nanmean(record.get("base_shares") or []),
        "switches": _nanmean(record.get("switches") or []),
        "length": _nanmean(record.get("n_tokens") or []),
        "stop_share": sum(r == "stop" for r in reasons) / k,
        "empty_share": sum(not s.strip() for s in samples) / k,
    }


def score_record(
    record: Mapping[str, Any],
    *,
    embed: Any = None,
    judge: Any = None,
    reward_model: Any = None,
    groups: Sequence[str] = ("lexical", "semantic", "judge", "reward"),
    judge_batch_size: int = 8,
) -> dict[str, float]:
    """Scores of one generation record; a group whose scorer is ``None`` is skipped."""
    samples = list(record["samples"])
    prompt = str(record.get("prompt", ""))
    out: dict[str, float] = {}
    if "lexical" in groups:
        out.update(lexical_diversity(samples))
    if "semantic" in groups and embed is not None:
        out.update(semantic_diversity(samples, embed))
    if "judge" in groups and judge is not None:
        rows = judge.score([prompt] * len(samples), samples, batch_size=judge_batch_size)
        out["fluency"] = _nanmean(r["fluency"] for r in rows)
        out["relevance"] = _nanmean(r["relevance"] for r in rows)
    if "reward" in groups and reward_model is not None:
        nonempty = [s for s in samples if s.strip()]
        rows = reward_model.score([prompt] * len(nonempty), nonempty) if nonempty else []
        out["reward"] = _nanmean(r["reward"] for r in rows)
    out.update(record_statistics(record))
    return out


def load_scores(path: str | os.PathLike[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """Score records by ``(setting, prompt_id)``; later lines are merged over earlier ones."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for row in read_jsonl(path):
        key = (str(row["setting"]), str(row["prompt_id"]))
        if key in merged:
            old = merged[key]
            scores = {**old.get("scores", {}), **row.get("scores", {})}
            merged[key] = {**old, **row, "scores": scores}
        else:
            merged[key] = dict(row)
    return merged


def _missing_groups(
    cached: Mapping[str, Any] | None, sources: Mapping[str, str | None]
) -> list[str]:
    """Groups to (re)compute for a cached score record given the current scorers."""
    wanted = ["lexical"] + [g for g, src in sources.items() if src is not None]
    if cached is None:
        return wanted
    scores = cached.get("scores", {})
    todo = []
    for group in wanted:
        present = _GROUP_KEYS[group] in scores
        same = group not in _GROUP_SOURCE or cached.get(_GROUP_SOURCE[group]) == sources[group]
        if not (present and same):
            todo.append(group)
    return todo


def score_generations(
    generations_path: str | os.PathLike[str],
    scores_path: str | os.PathLike[str],
    *,
    embed: Any = None,
    judge: Any = None,
    reward_model: Any = None,
    embedder_name: str | None = None,
    judge_name: str | None = None,
    reward_model_name: str | None = None,
    progress: bool | None = None,
) -> dict[tuple[str, str], dict[str, Any]]:
    """Score every generation record not yet (fully) scored; return all score records.

    ``embed`` (texts -> embeddings), ``judge`` (a :class:`~shared_core.eval.judge.Judge`) and
    ``reward_model`` (a :class:`~shared_core.eval.judge.RewardModelJudge`) are optional; wrap
    one in :class:`LazyScorer` to load it only if some record needs it. The ``*_name``
    arguments name the scorers in the cache (default: the scorer's ``name`` attribute or
    class name).
    """
    scores_path = Path(scores_path)
    scores_path.parent.mkdir(parents=True, exist_ok=True)
    repair_jsonl(scores_path)
    cache = load_scores(scores_path)
    sources = {
        "semantic": _name(embed, embedder_name),
        "judge": _name(judge, judge_name),
        "reward": _name(reward_model, reward_model_name),
    }
    todo = []
    for record in read_jsonl(generations_path):
        key = (str(record["setting"]), str(record["prompt_id"]))
        groups = _missing_groups(cache.get(key), sources)
        if groups:
            todo.append((key, record, groups))
    if not todo:
        return cache
    embed, judge, reward_model = (_resolve(x) for x in (embed, judge, reward_model))
    bar = _progress(len(todo), progress)
    try:
        with scores_path.open("a", encoding="utf-8") as handle:
            for key, record, groups in todo:
                scores = score_record(
                    record, embed=embed, judge=judge, reward_model=reward_model, groups=groups
                )
                row: dict[str, Any] = {f: record.get(f) for f in SETTING_FIELDS}
                row["prompt_id"] = record["prompt_id"]
                row.update({_GROUP_SOURCE[g]: sources[g] for g in groups if g in _GROUP_SOURCE})
                row["scores"] = scores
                append_jsonl(handle, [row])
                old = cache.get(key, {})
                cache[key] = {**old, **row, "scores": {**old.get("scores", {}), **scores}}
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return cache


class LazyScorer:
    """A zero-argument ``loader`` that :func:`score_generations` calls only when needed;
    ``name`` is recorded as the scorer's name in the score cache."""

    def __init__(self, loader: Any, name: str) -> None:
        self.loader = loader
        self.name = name


def _resolve(obj: Any) -> Any:
    return obj.loader() if isinstance(obj, LazyScorer) else obj


def _progress(total: int, enabled: bool | None) -> Any:
    if enabled is False:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, unit="record", desc="scoring", file=sys.stderr, dynamic_ncols=True)


def aggregate_scores(
    score_records: Iterable[Mapping[str, Any]], *, common_prompts: bool = True
) -> list[dict[str, Any]]:
    """One row per setting: its fields, ``n_prompts`` and the mean of every score over prompts.

    With ``common_prompts`` (default) only prompts scored under *every* setting count, so
    that all settings are compared on the same prompts (a warning says how many were left
    out, e.g. after an interrupted run). NaN scores are left out of the means.
    """
    records = list(score_records)
    by_setting: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        by_setting.setdefault(str(r["setting"]), []).append(r)
    if not by_setting:
        return []
    keep: set[str] | None = None
    if common_prompts:
        sets = [{str(r["prompt_id"]) for r in rows} for rows in by_setting.values()]
        keep = set.intersection(*sets)
        dropped = set.union(*sets) - keep
        if dropped:
            warnings.warn(
                f"{len(dropped)} prompt(s) are not scored under every setting and are left "
                f"out of the aggregate ({len(keep)} remain)",
                stacklevel=2,
            )
    table = []
    for setting, rows in by_setting.items():
        rows = [r for r in rows if keep is None or str(r["prompt_id"]) in keep]
        if not rows:
            continue
        out: dict[str, Any] = {f: rows[0].get(f) for f in SETTING_FIELDS}
        out["setting"] = setting
        out["n_prompts"] = len(rows)
        names = dict.fromkeys(name for r in rows for name in r.get("scores", {}))
        for name in names:
            out[name] = _nanmean(r.get("scores", {}).get(name) for r in rows)
        table.append(out)
    return table
