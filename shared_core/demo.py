"""The main job, ``baco demo``: aligned model alone vs BACO, side by side, on real models.

For a few open-ended prompts it draws ``k`` samples from the aligned model alone and ``k``
from BACO (same sampling settings), prints them in two columns with the base model's tokens
highlighted, and reports per-method diversity (distinct-n; mean pairwise embedding distance
when the ``eval`` extra's MiniLM is installed).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from .engine import BacoEngine
from .eval.lexical import distinct_n
from .types import Source

DEMO_PROMPTS = (
    "Give me a name for a new coffee shop, and say why in one sentence.",
    "Write the opening sentence of a fantasy story.",
    "Suggest an unusual hobby to try this weekend.",
)
#: γ for P-PUNC on the demo pair (see docs/results.md / the calibration in the note).
DEMO_GAMMA = 0.3
#: The demo pair's sampling filters, chosen by measurement (docs/results.md, "Sampling
#: defaults"): min-p 0.05 cuts the 262k vocabulary's junk tail that top-p 0.95 leaves to the
#: base model (base relevance 0.09 -> 0.35), and halves BACO's fluency cost.
DEMO_MIN_P = 0.05
DEMO_TOP_P = 1.0
BASE_STYLE = "\033[36;1m"  # bold cyan for base-model tokens
RESET = "\033[0m"


@dataclass
class Sample:
    """One sample as coloured segments: ``(text, source)`` per token, in order."""

    segments: list[tuple[str, Source | None]] = field(default_factory=list)
    base_share: float = 0.0
    finish_reason: str = ""

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.segments)


@dataclass
class MethodRun:
    """All samples of one method: ``samples[prompt][k]``, plus its timing and diversity."""

    label: str
    samples: list[list[Sample]]
    seconds: float
    tokens: int
    diversity: dict[str, float] = field(default_factory=dict)


def collect(engine: BacoEngine, prompts: Sequence[str], progress: Any = None, **options: Any):
    """Run one batched decode and return ``(samples[prompt][k], generated token count)``.

    ``progress`` counts token budget: one per token, and a finished sample's unused budget
    at once, so the bar ends exactly at ``samples × max_new_tokens`` and its ETA (an upper
    bound) never runs behind.
    """
    n = options.get("n", 1)
    budget = int(options.get("max_new_tokens", 0))
    samples = [[Sample() for _ in range(n)] for _ in prompts]
    counts = [[0] * n for _ in prompts]
    tokens = 0
    for event in engine.stream(list(prompts), **options):
        sample = samples[event.prompt_index][event.sample_index]
        if event.text_delta:
            sample.segments.append((event.text_delta, event.source))
        if event.token_id is not None:
            tokens += 1
            counts[event.prompt_index][event.sample_index] += 1
            if progress is not None:
                progress.update(1)
        if event.generation is not None:
            sample.base_share = event.generation.base_share
            sample.finish_reason = event.generation.finish_reason
            unused = budget - counts[event.prompt_index][event.sample_index]
            if progress is not None and unused > 0:
                progress.update(unused)
    return samples, tokens


def diversity(samples: list[list[Sample]], embed: Any = None) -> dict[str, float]:
    """Mean over prompts of distinct-1/2 (and mean pairwise embedding distance)."""
    texts = [[s.text for s in row] for row in samples]
    scores = {
        "distinct-1": sum(distinct_n(t, 1) for t in texts) / len(texts),
        "distinct-2": sum(distinct_n(t, 2) for t in texts) / len(texts),
    }
    if embed is not None:
        from .eval.semantic import mean_pairwise_cosine_distance

        scores["embedding distance"] = sum(
            mean_pairwise_cosine_distance(t, embed) for t in texts
        ) / len(texts)
    scores["base share"] = sum(s.base_share for row in samples for s in row) / sum(
        len(row) for row in samples
    )
    return scores


def _wrap(segments: list[tuple[str, Source | None]], width: int) -> list[list[tuple[str, bool]]]:
    """Wrap coloured text to ``width`` columns; returns lines of ``(text, is_base)`` runs."""
    chars = [(ch, source == "base") for text, source in segments for ch in text]
    lines: list[list[tuple[str, bool]]] = []
    line: list[tuple[str, bool]] = []
    for ch, is_base in chars:
        if ch == "\n":
            lines.append(line)
            line = []
            continue
        line.append((ch, is_base))
        if len(line) > width:
            cut = max((i for i, (c, _) in enumerate(line) if c == " "), default=width)
            lines.append(line[:cut])
            line = line[cut + 1 if line[cut][0] == " " else cut :]
    if line or not lines:
        lines.append(line)
    runs = []
    for chars_in_line in lines:
        merged: list[tuple[str, bool]] = []
        for ch, is_base in chars_in_line:
            if merged and merged[-1][1] == is_base:
                merged[-1] = (merged[-1][0] + ch, is_base)
            else:
                merged.append((ch, is_base))
        runs.append(merged)
    return runs


def _render_line(runs: list[tuple[str, bool]], width: int, color: bool) -> str:
    visible = sum(len(text) for text, _ in runs)
    parts = [f"{BASE_STYLE}{text}{RESET}" if is_base and color else text for text, is_base in runs]
    return "".join(parts) + " " * max(0, width - visible)


def side_by_side(
    left: list[Sample], right: list[Sample], titles: tuple[str, str], *, width: int, color: bool
) -> str:
    """Two columns of samples, row by row, each sample with its base share."""
    column = max(24, (width - 3) // 2)
    out = [f"{titles[0]:<{column}} | {titles[1]}", f"{'-' * column}-+-{'-' * column}"]
    for i, (a, b) in enumerate(zip(left, right, strict=True)):
        head_a = f"#{i + 1} base share {a.base_share:.2f}"
        head_b = f"#{i + 1} base share {b.base_share:.2f}"
        out.append(f"{head_a:<{column}} | {head_b}")
        lines_a, lines_b = _wrap(_marked(a, color), column), _wrap(_marked(b, color), column)
        for j in range(max(len(lines_a), len(lines_b))):
            la = lines_a[j] if j < len(lines_a) else []
            lb = lines_b[j] if j < len(lines_b) else []
            out.append(
                f"{_render_line(la, column, color)} | {_render_line(lb, column, color).rstrip()}"
            )
        out.append(f"{' ' * column} |")
    return "\n".join(out)


def _marked(sample: Sample, color: bool) -> list[tuple[str, Source | None]]:
    """Without colour, base-model spans are wrapped in « » so they stay visible."""
    if color:
        return sample.segments
    out: list[tuple[str, Source | None]] = []
    previous: Source | None = None
    for text, source in sample.segments:
        if source == "base" and previous != "base":
            text = "«" + text
        if source != "base" and previous == "base":
            out.append(("»", "aligned"))
        out.append((text, source))
        previous = source
    if previous == "base":
        out.append(("»", "aligned"))
    return out


def _load_embedder(say) -> Any:
    try:
        from .eval.semantic import load_minilm_embedder

        return load_minilm_embedder()
    except ImportError:
        say("(install the eval extra for embedding-distance diversity)")
        return None


def run_demo(
    engine: BacoEngine,
    prompts: Sequence[str] = DEMO_PROMPTS,
    *,
    k: int = 5,
    max_new_tokens: int = 64,
    router: str = "p-punc",
    gamma: float | None = DEMO_GAMMA,
    top_p: float = DEMO_TOP_P,
    min_p: float = DEMO_MIN_P,
    temperature: float = 1.0,
    seed: int | None = 0,
    color: bool | None = None,
    embed: Any = "auto",
    out: TextIO = sys.stdout,
) -> dict[str, MethodRun]:
    """Generate with the aligned model alone and with BACO; print the comparison."""
    color = out.isatty() and os.environ.get("NO_COLOR") is None if color is None else color
    width = shutil.get_terminal_size((120, 24)).columns

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    common = {
        "n": k,
        "max_new_tokens": max_new_tokens,
        "top_p": top_p,
        "min_p": min_p,
        "temperature": temperature,
        "seed": seed,
    }
    engine.params(router=router, gamma=gamma, **common)  # validate before decoding
    methods = {
        "aligned": ("aligned model alone", {"router": "aligned"}),
        "baco": (
            f"BACO {router} γ={gamma if gamma is not None else 'default'}",
            {"router": router, "gamma": gamma},
        ),
    }
    runs: dict[str, MethodRun] = {}
    progress = _progress(total=2 * len(prompts) * k * max_new_tokens, out=out)
    for key, (label, options) in methods.items():
        progress.set_description(f"generating ({label})")
        start = time.perf_counter()
        samples, tokens = collect(engine, prompts, progress, **common, **options)
        runs[key] = MethodRun(label, samples, time.perf_counter() - start, tokens)
    progress.close()
    embedder = _load_embedder(say) if embed == "auto" else embed
    for run in runs.values():
        run.diversity = diversity(run.samples, embedder)

    say("")
    legend = f"{BASE_STYLE}base-model tokens{RESET}" if color else "«base-model tokens»"
    say(f"Tokens marked {legend} came from the base model; the rest from the aligned model.")
    for i, prompt in enumerate(prompts):
        say(f"\n=== {prompt}")
        titles = (runs["aligned"].label, runs["baco"].label)
        say(
            side_by_side(
                runs["aligned"].samples[i],
                runs["baco"].samples[i],
                titles,
                width=width,
                color=color,
            )
        )
    say("\nDiversity across the samples of each prompt (mean over prompts; higher = more varied):")
    metrics = list(runs["aligned"].diversity)
    say(f"{'method':<32}" + "".join(f"{m:>20}" for m in metrics) + f"{'tokens/s':>12}")
    for run in runs.values():
        rate = run.tokens / run.seconds if run.seconds else 0.0
        row = "".join(f"{run.diversity[m]:>20.3f}" for m in metrics)
        say(f"{run.label:<32}{row}{rate:>12.1f}")
    return runs


def _progress(total: int, out: TextIO) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the demo extra
        return _NoProgress()
    return tqdm(total=total, unit="tok", file=sys.stderr, leave=False, dynamic_ncols=True)


class _NoProgress:
    def update(self, _n: int) -> None: ...

    def set_description(self, _text: str) -> None: ...

    def close(self) -> None: ...
