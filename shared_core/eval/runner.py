"""Generation runner for the diversity-quality sweep (docs/design.md, "Evaluation protocol").

For a prompt set and ``k`` samples per prompt, every *setting* (a method at one γ or
temperature) is decoded in batches of several prompts (all ``k`` samples of a prompt in the
same batched decode). One JSON record per (setting, prompt) is appended to a JSONL file and
flushed after each batch, so an interrupted run resumes where it stopped: pairs already in the
file are skipped and a truncated last line (a crash mid-write) is dropped.

Record fields (one line of ``generations.jsonl``)::

    setting        "p-punc|gamma=0.1|T=1"  (key of the setting, see :attr:`Setting.key`)
    method router gamma temperature top_p k max_new_tokens seed pair
    prompt_id prompt
    samples        list of k response texts
    base_shares switches n_tokens finish_reasons    per sample, in sample order
    seconds        wall time of the batch divided by the prompts in it
    batch_seconds batch_prompts

All methods use the same sampling (``top_p``, ``seed``) and, except the aligned model's
temperature sweep, temperature 1.0.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..routers import ROUTER_NAMES, canonical_router_name

__all__ = [
    "ALIGNED_TEMPERATURES",
    "BASELINE_METHODS",
    "DEFAULT_GRIDS",
    "PromptItem",
    "RunStats",
    "Setting",
    "build_settings",
    "default_prompts_path",
    "load_prompts",
    "pair_label",
    "prompts_label",
    "read_jsonl",
    "repair_jsonl",
    "run_generation",
]

P_GRID = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
H_GRID = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
RAND_GRID = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9)

#: γ grid per router that has a knob (routers without one get a single setting).
DEFAULT_GRIDS: dict[str, tuple[float, ...]] = {
    "p": P_GRID,
    "p-punc": P_GRID,
    "p-fc": P_GRID,
    "h": H_GRID,
    "h-punc": H_GRID,
    "rand": RAND_GRID,
    "nudging": P_GRID,
}
#: Temperatures of the "aligned model alone" baseline sweep.
ALIGNED_TEMPERATURES = (0.7, 1.0, 1.3, 1.6)
#: Methods that are baselines rather than BACO routers (used for "vs best baseline").
BASELINE_METHODS = ("aligned", "base", "nudging", "rand")

#: Fields that must agree between a resumed run and the records already in its file.
RUN_FIELDS = ("k", "max_new_tokens", "top_p", "min_p", "seed")
#: Values of run fields that records written before the field existed had.
_RUN_FIELD_DEFAULTS = {"min_p": 0.0}


def _fmt(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class Setting:
    """One point of a method's sweep: a router at one γ and sampling temperature."""

    method: str
    router: str
    gamma: float | None
    temperature: float = 1.0

    @property
    def key(self) -> str:
        """Stable identifier, e.g. ``"p-punc|gamma=0.1|T=1"`` or ``"aligned|T=0.7"``."""
        parts = [self.method]
        if self.gamma is not None:
            parts.append(f"gamma={_fmt(self.gamma)}")
        parts.append(f"T={_fmt(self.temperature)}")
        return "|".join(parts)

    @property
    def label(self) -> str:
        """Short point label for plots: ``"γ=0.1"``, ``"T=0.7"`` or ``""``."""
        if self.gamma is not None:
            return f"γ={_fmt(self.gamma)}"
        if self.method == "aligned":
            return f"T={_fmt(self.temperature)}"
        return ""

    def options(self) -> dict[str, Any]:
        """Engine options of this setting."""
        return {"router": self.router, "gamma": self.gamma, "temperature": self.temperature}


def build_settings(
    methods: Iterable[str] | None = None,
    *,
    grids: Mapping[str, Sequence[float]] | None = None,
    aligned_temperatures: Sequence[float] = ALIGNED_TEMPERATURES,
    temperature: float = 1.0,
) -> list[Setting]:
    """All settings of the sweep for ``methods`` (default: every built-in router).

    A method is a router name (``"aligned"``, ``"base"``, ``"p-punc"``, ``"nudging"``, ...).
    ``grids`` overrides :data:`DEFAULT_GRIDS` per router; the ``aligned`` baseline is swept
    over ``aligned_temperatures``; everything else runs at ``temperature``.
    """
    names = list(ROUTER_NAMES) if methods is None else [canonical_router_name(m) for m in methods]
    if not names:
        raise ValueError(f"no methods selected; valid: {', '.join(ROUTER_NAMES)}")
    grid_map = dict(DEFAULT_GRIDS)
    for name, grid in (grids or {}).items():
        key = canonical_router_name(name)
        if key not in DEFAULT_GRIDS:
            raise ValueError(f"router {key!r} has no γ; grids apply to {sorted(DEFAULT_GRIDS)}")
        grid_map[key] = tuple(float(g) for g in grid)
    settings: list[Setting] = []
    for name in dict.fromkeys(names):
        if name == "aligned":
            temps = tuple(dict.fromkeys(float(t) for t in aligned_temperatures))
            settings.extend(Setting("aligned", "aligned", None, t) for t in temps)
        elif name in grid_map:
            grid = tuple(dict.fromkeys(grid_map[name]))
            if not grid:
                raise ValueError(f"empty γ grid for router {name!r}")
            settings.extend(Setting(name, name, g, float(temperature)) for g in grid)
        else:
            settings.append(Setting(name, name, None, float(temperature)))
    _validate_settings(settings)
    return settings


def _validate_settings(settings: Sequence[Setting]) -> None:
    from ..params import GenerationParams

    for s in settings:
        GenerationParams(**s.options())  # raises ValueError for a γ out of range


@dataclass(frozen=True)
class PromptItem:
    """One evaluation prompt and its id (the ``id`` field, else ``line-N``)."""

    id: str
    prompt: str


def default_prompts_path() -> Path:
    """Return the NoveltyBench curated prompts shipped with baco (100 prompts, MIT).

    ``baco eval`` uses them when ``--prompts`` is not given; the licence notice is in
    ``LICENSE`` next to the file.
    """
    return Path(__file__).resolve().parents[1] / "assets" / "noveltybench" / "curated.jsonl"


def prompts_label(path: str | os.PathLike[str] | None) -> str:
    """How result files name a prompt file: its dataset, never a path of this machine.

    The shipped set is ``noveltybench/curated.jsonl (shipped with baco)``; another file is
    named by its folder and file name (``noveltybench/wildchat-1k.jsonl``).
    """
    if path is None or Path(path).resolve() == default_prompts_path():
        return "noveltybench/curated.jsonl (shipped with baco)"
    resolved = Path(path).resolve()
    return f"{resolved.parent.name}/{resolved.name}" if resolved.parent.name else resolved.name


def pair_label(pair: Any) -> str | None:
    """How result files name a model pair: its short name (no machine paths)."""
    if pair is None:
        return None
    return getattr(pair, "short_name", None) or getattr(pair, "name", None)


def load_prompts(
    path: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    *,
    field: str = "prompt",
) -> list[PromptItem]:
    """Read prompts from a JSONL file with a ``field`` (default ``"prompt"``) per line.

    ``path=None`` reads the shipped NoveltyBench curated set (:func:`default_prompts_path`).
    """
    path = default_prompts_path() if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    items: list[PromptItem] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not valid JSON ({exc})") from exc
            text = row.get(field) if isinstance(row, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{path}:{number}: no non-empty string field {field!r}")
            pid = str(row.get("id", f"line-{number}"))
            if pid in seen:
                raise ValueError(f"{path}:{number}: duplicate prompt id {pid!r}")
            seen.add(pid)
            items.append(PromptItem(pid, text))
            if limit is not None and len(items) >= limit:
                break
    if not items:
        raise ValueError(f"no prompts in {path}")
    return items


# ---------------------------------------------------------------------- JSONL helpers


def repair_jsonl(path: str | os.PathLike[str]) -> int:
    """Drop a truncated last line (no trailing newline, not valid JSON); return bytes removed.

    A complete last record that only lacks its newline gets the newline instead.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    cut = data.rfind(b"\n") + 1
    tail = data[cut:]
    try:
        json.loads(tail)
    except (json.JSONDecodeError, UnicodeDecodeError):
        with path.open("r+b") as handle:
            handle.truncate(cut)
        return len(tail)
    with path.open("ab") as handle:
        handle.write(b"\n")
    return 0


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a JSONL file; a truncated last line is ignored, other bad lines warned
    about and skipped. A missing file reads as empty."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):  # the last element has no newline: a truncated write
                warnings.warn(f"{path}:{number}: skipping a malformed line", stacklevel=2)
    return records


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats replaced by ``None`` (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def append_jsonl(handle: Any, records: Iterable[Mapping[str, Any]]) -> None:
    """Write records, one per line, then flush and fsync (a batch is all or nothing)."""
    for record in records:
        handle.write(json.dumps(json_safe(dict(record)), ensure_ascii=False) + "\n")
    handle.flush()
    with contextlib.suppress(OSError, AttributeError, ValueError):  # e.g. StringIO
        os.fsync(handle.fileno())


# ---------------------------------------------------------------------- runner


@dataclass
class RunStats:
    """What :func:`run_generation` did."""

    done_before: int = 0
    generated: int = 0
    batches: int = 0
    seconds: float = 0.0
    samples: int = 0
    per_setting_seconds: dict[str, float] = field(default_factory=dict)


def done_keys(records: Iterable[Mapping[str, Any]]) -> set[tuple[str, str]]:
    """``(setting key, prompt id)`` of records already written."""
    return {(str(r["setting"]), str(r["prompt_id"])) for r in records if "setting" in r}


def pending_pairs(
    path: str | os.PathLike[str], prompts: Sequence[PromptItem], settings: Sequence[Setting]
) -> list[tuple[Setting, PromptItem]]:
    """(setting, prompt) pairs not yet in the JSONL file at ``path``."""
    done = done_keys(read_jsonl(path))
    return [(s, p) for p in prompts for s in settings if (s.key, p.id) not in done]


def _check_compatible(
    records: Sequence[Mapping[str, Any]], run: Mapping[str, Any], path: Path
) -> None:
    for record in records:
        for name, value in run.items():
            recorded = record.get(name, _RUN_FIELD_DEFAULTS.get(name))
            if recorded is not None and recorded != value:
                raise ValueError(
                    f"{path} holds a run with {name}={recorded!r} but this run has "
                    f"{name}={value!r}; use another output folder (or the same settings) "
                    "to resume"
                )


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _progress(total: int, enabled: bool | None) -> Any:
    if enabled is False:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with the demo extra
        return None
    return tqdm(total=total, unit="sample", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)


def run_generation(
    engine: Any,
    prompts: Sequence[PromptItem],
    settings: Sequence[Setting],
    path: str | os.PathLike[str],
    *,
    k: int = 10,
    max_new_tokens: int = 256,
    top_p: float = 0.95,
    min_p: float = 0.0,
    seed: int | None = 0,
    batch_prompts: int = 4,
    progress: bool | None = None,
) -> RunStats:
    """Generate every pending (setting, prompt) pair and append its record to ``path``.

    ``engine`` is a :class:`~shared_core.engine.BacoEngine` or a zero-argument callable
    returning one; it is called only when something is pending (so a finished run loads no
    model). Prompts are processed in chunks of ``batch_prompts``; within a chunk every
    setting runs as one batched decode of ``len(chunk) * k`` rows, so an interrupted run has
    all settings on its first prompts. Raises ``ValueError`` if ``path`` holds records made
    with a different ``k``/``max_new_tokens``/``top_p``/``min_p``/``seed`` or model pair.
    """
    if batch_prompts < 1:
        raise ValueError(f"batch_prompts must be >= 1, got {batch_prompts}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_jsonl(path)
    existing = read_jsonl(path)
    run = {"k": k, "max_new_tokens": max_new_tokens, "top_p": top_p, "min_p": min_p, "seed": seed}
    _check_compatible(existing, run, path)
    done = done_keys(existing)
    stats = RunStats(done_before=len(done & {(s.key, p.id) for s in settings for p in prompts}))
    todo = [(s, p) for p in prompts for s in settings if (s.key, p.id) not in done]
    if not todo:
        return stats
    if callable(engine) and not hasattr(engine, "generate"):
        engine = engine()
    pair_name = pair_label(getattr(engine, "pair", None))
    if pair_name is not None:
        _check_compatible(existing, {"pair": pair_name}, path)
    bar = _progress(len(todo) * k, progress)
    start = time.perf_counter()
    try:
        with path.open("a", encoding="utf-8") as handle:
            for chunk in _chunks(prompts, batch_prompts):
                for setting in settings:
                    batch = [p for p in chunk if (setting.key, p.id) not in done]
                    if not batch:
                        continue
                    if bar is not None:
                        bar.set_postfix_str(setting.key, refresh=False)
                    t0 = time.perf_counter()
                    results = engine.generate(
                        [p.prompt for p in batch],
                        n=k,
                        max_new_tokens=max_new_tokens,
                        top_p=top_p,
                        min_p=min_p,
                        seed=seed,
                        **setting.options(),
                    )
                    seconds = time.perf_counter() - t0
                    records = [
                        _record(setting, item, gens, run, pair_name, seconds, len(batch))
                        for item, gens in zip(batch, results, strict=True)
                    ]
                    append_jsonl(handle, records)
                    done.update((setting.key, p.id) for p in batch)
                    stats.generated += len(batch)
                    stats.batches += 1
                    stats.samples += len(batch) * k
                    stats.per_setting_seconds[setting.key] = (
                        stats.per_setting_seconds.get(setting.key, 0.0) + seconds
                    )
                    if bar is not None:
                        bar.update(len(batch) * k)
    finally:
        if bar is not None:
            bar.close()
        stats.seconds = time.perf_counter() - start
    return stats


def _record(
    setting: Setting,
    item: PromptItem,
    generations: Sequence[Any],
    run: Mapping[str, Any],
    pair_name: str | None,
    seconds: float,
    batch_size: int,
) -> dict[str, Any]:
    return {
        "setting": setting.key,
        "method": setting.method,
        "router": setting.router,
        "gamma": setting.gamma,
        "temperature": setting.temperature,
        **run,
        "pair": pair_name,
        "prompt_id": item.id,
        "prompt": item.prompt,
        "samples": [g.text for g in generations],
        "base_shares": [g.base_share for g in generations],
        "switches": [g.switches for g in generations],
        "n_tokens": [len(g.token_ids) for g in generations],
        "finish_reasons": [g.finish_reason for g in generations],
        "seconds": seconds / batch_size,
        "batch_seconds": seconds,
        "batch_prompts": batch_size,
    }
