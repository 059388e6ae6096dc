"""``baco eval``: generate → score → summarise → plot a diversity-quality sweep.

Every stage is resumable: generations and scores are appended to JSONL files in ``--out`` and
a rerun skips what is already there (models are loaded only if something is missing); the
summary and the plots are recomputed from the scores each time. Files in ``--out``::

    run.json            the options of the last invocation
    generations.jsonl   one record per (setting, prompt), see shared_core.eval.runner
    scores.jsonl        one record per (setting, prompt), see shared_core.eval.score
    summary.json summary.md summary.csv settings.csv
    plots/*.png         one Pareto plot per plane, overview.png, base_share.png
    calibration.json    with --calibrate: γ → mean base share per router
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..cli_common import HelpFormatter, add_model_args
from ..routers import ROUTER_NAMES

__all__ = ["STAGES", "add_eval_parser", "run_eval_command"]

STAGES = ("generate", "score", "summary", "plot")

_DESCRIPTION = """\
Generate -> score -> summarise -> plot a diversity-quality sweep of BACO routers and
baselines. Every stage resumes: generations and scores are appended to JSONL files in --out
and a rerun skips what is already there. Files in --out:

  run.json            the options of the last invocation
  generations.jsonl   one record per (setting, prompt)
  scores.jsonl        one record per (setting, prompt)
  summary.json, summary.md, summary.csv, settings.csv
  plots/*.png         one Pareto plot per plane, overview.png, base_share.png
  calibration.json    with --calibrate: gamma -> mean base share per router

Scoring needs the eval extra and its two model packages (bash scripts/install.sh eval)."""

#: Module -> what needs it, checked before generating when scoring is asked for.
_SCORING_MODULES = {
    "numpy": "every metric",
    "sacrebleu": "self-BLEU",
}


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _grid(text: str) -> tuple[str, tuple[float, ...]]:
    name, sep, values = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected ROUTER=G1,G2,..., got {text!r}")
    return name.strip(), _floats(values)


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand to ``subparsers`` (from ``add_subparsers``)."""
    p = subparsers.add_parser(
        "eval",
        help="diversity-quality sweep: generate, score, summarise (Coverage/Dominance), plot",
        description=_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--prompts",
        default=None,
        help="JSONL file with a 'prompt' field per line (default: the NoveltyBench curated "
        "prompts shipped with baco, shared_core/assets/noveltybench/curated.jsonl)",
    )
    p.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    p.add_argument("-k", type=int, default=10, help="samples per prompt")
    p.add_argument(
        "--methods",
        "--routers",
        dest="methods",
        action="append",
        default=None,
        help=f"comma-separated methods (repeatable); default all: {', '.join(ROUTER_NAMES)}",
    )
    p.add_argument(
        "--grid",
        type=_grid,
        action="append",
        default=None,
        metavar="ROUTER=G1,G2",
        help="override a router's γ grid (repeatable)",
    )
    p.add_argument(
        "--aligned-temperatures",
        type=_floats,
        default=None,
        help="temperatures of the aligned-alone baseline (default: 0.7,1.0,1.3,1.6)",
    )
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens per sample")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass, every method")
    p.add_argument(
        "--min-p", type=float, default=0.0, help="min-p truncation, every method (0: off)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every setting")
    p.add_argument("--batch-prompts", type=int, default=4, help="prompts per batched decode")
    p.add_argument("--out", default="baco_eval", help="output folder")
    add_model_args(p)
    p.add_argument(
        "--precision",
        choices=("bf16", "fp32"),
        default="fp32",
        help="fp32 (exact) or bf16 autocast: faster only on CPUs with bf16 matrix "
        "units (AMX); measured slower on a 2-core AMD EPYC (benchmarks/RESULTS.md)",
    )
    p.add_argument(
        "--judge", default=None, help="judge LM: hub id, folder or .gguf (default: SmolLM2-135M)"
    )
    p.add_argument("--no-judge", action="store_true", help="skip fluency/relevance")
    p.add_argument("--reward-model", default=None, help="HF reward model id (third quality axis)")
    p.add_argument(
        "--no-semantic", action="store_true", help="skip MiniLM semantic-diversity metrics"
    )
    p.add_argument("--calibrate", action="store_true", help="write calibration.json from the run")
    p.add_argument(
        "--stages",
        default=",".join(STAGES),
        help=f"comma-separated stages to run (default: {','.join(STAGES)})",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--tasks",
        default=None,
        help="judge-free task evaluation instead of the sweep: comma-separated of tools, "
        "rewrite, lists, or all (shared_core/eval/tasks.py; default methods aligned at "
        "T 0.7/1.0/1.3, base, p-punc/p/nudging at γ 0.1/0.3/0.5)",
    )
    p.add_argument(
        "--task-k",
        default=None,
        help="samples per prompt per task, e.g. tools=1,rewrite=2,lists=2 (the default)",
    )
    return p


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _methods(args: argparse.Namespace) -> list[str] | None:
    if not args.methods:
        return None
    return [m.strip() for item in args.methods for m in item.split(",") if m.strip()]


def _check_scoring_packages(args: argparse.Namespace) -> None:
    """Refuse to start when scoring would fail later for want of a package (before the
    minutes of generation, not after)."""
    import importlib.util

    from .judge import SMOLLM2_PACKAGE
    from .semantic import MINILM_PACKAGE

    needed = dict(_SCORING_MODULES)
    if not args.no_semantic:
        needed[MINILM_PACKAGE] = "semantic diversity (--no-semantic skips it)"
    if not args.no_judge and args.judge is None:
        needed[SMOLLM2_PACKAGE] = "the default judge (--judge or --no-judge avoid it)"
        needed["gguf"] = "reading the default judge's GGUF"
    missing = [f"{m} ({why})" for m, why in needed.items() if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(
            f"baco eval cannot score without {', '.join(missing)}; install them with: bash "
            "scripts/install.sh eval (or pass --stages generate to only generate now)"
        )


def _load_judge(spec: str | None) -> Any:
    from ..loading import split_model_ref
    from .judge import Judge

    if spec is None:
        return Judge.default()
    location, extra = split_model_ref(spec)
    return Judge.from_pretrained(location, **extra)


def run_eval_command(args: argparse.Namespace) -> int:
    """Run the stages selected by ``args`` (parsed by :func:`add_eval_parser`)."""
    from ..cli_common import check_generation_options, set_torch_threads
    from .runner import (
        build_settings,
        default_prompts_path,
        load_prompts,
        prompts_label,
        run_generation,
    )
    from .score import LazyScorer, aggregate_scores, score_generations

    if getattr(args, "tasks", None):
        from .tasks import run_task_command

        return run_task_command(args)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; valid: {', '.join(STAGES)}")
    if args.k < 2:
        raise ValueError("-k must be >= 2: diversity is measured across a prompt's samples")
    if args.no_judge and args.judge:
        raise ValueError("--judge and --no-judge contradict each other")
    check_generation_options(
        {
            "n": args.k,
            "max_new_tokens": args.max_new_tokens,
            "top_p": args.top_p,
            "min_p": args.min_p,
            "seed": args.seed,
        },
        n_flag="-k",
    )
    if args.batch_prompts < 1:
        raise ValueError(f"--batch-prompts must be >= 1, got {args.batch_prompts}")
    if "score" in stages:
        _check_scoring_packages(args)
    set_torch_threads(args.threads)
    grids = dict(args.grid or [])
    temps = {"aligned_temperatures": args.aligned_temperatures} if args.aligned_temperatures else {}
    settings = build_settings(_methods(args), grids=grids, **temps)
    if args.prompts is None:
        args.prompts = str(default_prompts_path())
    prompts = load_prompts(args.prompts, args.limit)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gen_path, score_path = out / "generations.jsonl", out / "scores.jsonl"
    options = {k: v for k, v in vars(args).items() if k != "func"}
    options["prompts"] = prompts_label(args.prompts)
    for flag in ("base", "aligned", "aligned_adapter"):
        if options.get(flag) and Path(options[flag]).exists():
            options[flag] = Path(options[flag]).resolve().name  # a folder name, not a path
    (out / "run.json").write_text(json.dumps(options, indent=2, default=str) + "\n")
    _say(f"{len(prompts)} prompts × {len(settings)} settings × k={args.k} → {out}")

    if "generate" in stages:

        def make_engine() -> Any:
            import torch

            from ..cli_common import load_pair
            from ..engine import BacoEngine

            t0 = time.perf_counter()
            pair = load_pair(args)
            _say(f"loaded {pair.short_name} in {time.perf_counter() - t0:.1f} s")
            autocast = torch.bfloat16 if args.precision == "bf16" else None
            return BacoEngine(pair, autocast_dtype=autocast)

        stats = run_generation(
            make_engine,
            prompts,
            settings,
            gen_path,
            k=args.k,
            max_new_tokens=args.max_new_tokens,
            top_p=args.top_p,
            min_p=args.min_p,
            seed=args.seed,
            batch_prompts=args.batch_prompts,
            progress=False if args.quiet else None,
        )
        _say(
            f"generate: {stats.generated} new (setting, prompt) records in {stats.seconds:.1f} s"
            f", {stats.done_before} already done"
        )

    keys = {(s.key, p.id) for s in settings for p in prompts}
    table: list[dict[str, Any]] = []
    if "score" in stages or "summary" in stages or "plot" in stages or args.calibrate:
        embed = judge = reward = None
        if "score" in stages:
            if not args.no_semantic:
                from .semantic import load_minilm_embedder

                embed = LazyScorer(load_minilm_embedder, "all-MiniLM-L6-v2")
            if not args.no_judge:
                judge = LazyScorer(lambda: _load_judge(args.judge), args.judge or "SmolLM2-135M")
            if args.reward_model:
                from .judge import RewardModelJudge

                reward = LazyScorer(lambda: RewardModelJudge(args.reward_model), args.reward_model)
            t0 = time.perf_counter()
            cache = score_generations(
                gen_path,
                score_path,
                embed=embed,
                judge=judge,
                reward_model=reward,
                progress=False if args.quiet else None,
            )
            _say(f"score: {len(cache)} records scored ({time.perf_counter() - t0:.1f} s)")
        else:
            from .score import load_scores

            cache = load_scores(score_path)
        table = aggregate_scores(r for key, r in cache.items() if key in keys)

    if not table:
        _say("nothing scored yet: run the generate and score stages")
        return 0
    meta = {
        "prompts": prompts_label(args.prompts),
        "n_prompts": min(row["n_prompts"] for row in table),
        "k": args.k,
        "max_new_tokens": args.max_new_tokens,
        "top_p": args.top_p,
        "min_p": args.min_p,
    }
    if "summary" in stages or "plot" in stages:
        from .summary import summarise, write_summary

        summary = summarise(table, meta=meta)
        if "summary" in stages:
            paths = write_summary(summary, out)
            _say(f"summary: {paths['markdown']}")
            _print_overall(summary)
        if "plot" in stages:
            from .plots import plot_all

            files = plot_all(summary, out / "plots")
            _say(f"plots: {len(files)} PNG files in {out / 'plots'}")
    if args.calibrate:
        from ..calibration import calibration_from_table, save_calibration
        from .runner import read_jsonl

        pairs = sorted({str(r.get("pair")) for r in read_jsonl(gen_path)})
        cal_meta = {**meta, "pair": pairs[0] if len(pairs) == 1 else pairs}
        path = save_calibration(
            calibration_from_table(table, meta=cal_meta), out / "calibration.json"
        )
        _say(f"calibration: {path}")
    return 0


def _print_overall(summary: dict[str, Any]) -> None:
    overall = summary["groups"].get("overall")
    if not overall:
        return
    print(f"{'method':<10}{'coverage':>10}{'dominance':>11}  (overall, mean over planes)")
    for method in sorted(overall, key=lambda m: -overall[m]["coverage"]):
        s = overall[method]
        print(f"{method:<10}{s['coverage']:>10.3f}{s['dominance']:>11.3f}")
