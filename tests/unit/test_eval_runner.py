"""The sweep runner (shared_core/eval/runner.py), scoring cache and ``baco eval`` end to end."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from shared_core.eval.runner import (
    ALIGNED_TEMPERATURES,
    PromptItem,
    Setting,
    build_settings,
    default_prompts_path,
    load_prompts,
    read_jsonl,
    repair_jsonl,
    run_generation,
)
from shared_core.eval.score import (
    LazyScorer,
    aggregate_scores,
    load_scores,
    score_generations,
    score_record,
)
from shared_core.routers import ROUTER_NAMES, default_gamma, resolve_router

PROMPTS = [
    PromptItem("a", "Tell me a story"),
    PromptItem("b", "Name a color"),
    PromptItem("c", "Hi"),
]
SETTINGS = [
    Setting("aligned", "aligned", None, 1.0),
    Setting("p", "p", 0.5, 1.0),
    Setting("base", "base", None, 1.0),
]
RUN = {"k": 3, "max_new_tokens": 6, "top_p": 0.95, "seed": 0, "progress": False}


class CountingEngine:
    """Wraps an engine; counts (setting, prompt) pairs generated; can fail on call N."""

    def __init__(self, engine, fail_on_call: int | None = None) -> None:
        self.engine = engine
        self.pair = engine.pair
        self.calls = 0
        self.prompts: list[tuple[str, str]] = []
        self.fail_on_call = fail_on_call

    def generate(self, prompts, **options):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise KeyboardInterrupt("simulated interruption")
        key = Setting(
            options["router"], options["router"], options["gamma"], options["temperature"]
        ).key
        self.prompts.extend((key, p) for p in prompts)
        return self.engine.generate(prompts, **options)


def _keys(path: Path) -> list[tuple[str, str]]:
    return [(r["setting"], r["prompt_id"]) for r in read_jsonl(path)]


# ---------------------------------------------------------------------- settings and prompts


def test_default_settings_cover_every_method_and_grid() -> None:
    # What docs/design.md section 5 asks of the sweep, not the grid constants restated: every
    # router (the registry is pinned to the documented names in test_properties.py) over a γ
    # grid valid for it and reaching small values, the aligned baseline over temperatures.
    settings = build_settings()
    keys = [s.key for s in settings]
    assert len(keys) == len(set(keys))
    assert {s.method for s in settings} == set(ROUTER_NAMES)
    for name in ROUTER_NAMES:
        gammas = [s.gamma for s in settings if s.method == name]
        if name == "aligned" or default_gamma(name) is None:
            assert gammas == [None] * len(gammas), name  # no knob: no γ grid
            continue
        assert len(gammas) >= 4 and gammas == sorted(set(gammas)), (name, gammas)
        for gamma in gammas:
            resolve_router(name, gamma)  # every grid point is a valid γ for its router
        if name in ("p", "p-punc", "p-fc"):
            assert min(gammas) <= 0.02 and max(gammas) >= 0.9, gammas  # reaches small γ
    temps = [s.temperature for s in settings if s.method == "aligned"]
    assert len(temps) >= 3 and 1.0 in temps and min(temps) < 1.0 < max(temps)
    assert all(s.temperature == 1.0 for s in settings if s.method != "aligned")
    assert Setting("p-punc", "p-punc", 0.1).key == "p-punc|gamma=0.1|T=1"
    assert Setting("aligned", "aligned", None, 0.7).label == "T=0.7"
    assert Setting("h", "h", 1.5).label == "γ=1.5"


def test_settings_selection_grid_override_and_errors() -> None:
    settings = build_settings(["P_PUNC", "aligned"], grids={"p-punc": [0.1, 0.3]})
    assert [s.key for s in settings] == [
        "p-punc|gamma=0.1|T=1",
        "p-punc|gamma=0.3|T=1",
        *[f"aligned|T={t:g}" for t in ALIGNED_TEMPERATURES],
    ]
    with pytest.raises(ValueError, match="unknown router"):
        build_settings(["bogus"])
    with pytest.raises(ValueError, match="no γ"):
        build_settings(["punc"], grids={"punc": [0.1]})
    with pytest.raises(ValueError, match="gamma"):
        build_settings(["rand"], grids={"rand": [1.5]})
    with pytest.raises(ValueError, match="no methods"):
        build_settings([])


def test_load_prompts(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "x", "prompt": "one"}\n\n{"prompt": "two"}\n{"prompt": "three"}\n')
    items = load_prompts(path)
    assert items == [
        PromptItem("x", "one"),
        PromptItem("line-3", "two"),
        PromptItem("line-4", "three"),
    ]
    assert len(load_prompts(path, limit=2)) == 2
    path.write_text('{"text": "no prompt field"}\n')
    with pytest.raises(ValueError, match="'prompt'"):
        load_prompts(path)
    path.write_text('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n')
    with pytest.raises(ValueError, match="duplicate"):
        load_prompts(path)
    with pytest.raises(FileNotFoundError):
        load_prompts(tmp_path / "missing.jsonl")


def test_shipped_noveltybench_curated_is_the_default() -> None:
    path = default_prompts_path()
    assert path.is_file()
    assert "MIT License" in (path.parent / "LICENSE").read_text()
    items = load_prompts(path, limit=5)
    assert len(items) == 5 and items[0].id == "curated-0"
    everything = load_prompts()  # no path: the shipped set
    assert len(everything) == 100 and everything[:5] == items
    assert len({item.prompt for item in everything}) == 100


def test_read_and_repair_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    assert read_jsonl(path) == [] and repair_jsonl(path) == 0
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b": [1, 2')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]  # the truncated last line is ignored
    removed = repair_jsonl(path)
    assert removed == len('{"a": 3, "b": [1, 2')
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'
    path.write_text('{"a": 1}\n{"a": 2}')  # complete record, newline missing
    assert repair_jsonl(path) == 0 and path.read_text().endswith("}\n")
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.warns(UserWarning, match="malformed"):
        assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


# ---------------------------------------------------------------------- runner on the tiny pair


def test_runner_writes_one_record_per_setting_and_prompt(tiny_engine, tmp_path: Path) -> None:
    path = tmp_path / "gen.jsonl"
    stats = run_generation(tiny_engine, PROMPTS, SETTINGS, path, batch_prompts=2, **RUN)
    records = read_jsonl(path)
    assert stats.generated == len(records) == len(PROMPTS) * len(SETTINGS)
    # chunk-major order: all settings of the first two prompts come first
    assert _keys(path)[:6] == [(s.key, p) for s in SETTINGS for p in ("a", "b")]
    assert stats.batches == 2 * len(SETTINGS)
    for r in records:
        assert len(r["samples"]) == len(r["base_shares"]) == len(r["switches"]) == 3
        assert len(r["finish_reasons"]) == len(r["n_tokens"]) == 3
        assert all(isinstance(t, str) for t in r["samples"])
        assert all(n <= 6 for n in r["n_tokens"])
        assert r["k"] == 3 and r["top_p"] == 0.95 and r["seed"] == 0
        assert r["pair"] == tiny_engine.pair.short_name
        assert r["seconds"] > 0 and r["batch_prompts"] in (1, 2)
        assert r["prompt"] == {p.id: p.prompt for p in PROMPTS}[r["prompt_id"]]
        if r["method"] == "base":
            assert set(r["base_shares"]) <= {1.0}
        if r["method"] == "aligned":
            assert set(r["base_shares"]) <= {0.0}
            assert r["temperature"] == 1.0 and r["gamma"] is None


def test_runner_resumes_after_an_interruption(tiny_engine, tmp_path: Path) -> None:
    path = tmp_path / "gen.jsonl"
    crashing = CountingEngine(tiny_engine, fail_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        run_generation(crashing, PROMPTS, SETTINGS, path, batch_prompts=2, **RUN)
    first = _keys(path)
    assert len(first) == 4  # two finished batches of two prompts
    counting = CountingEngine(tiny_engine)
    stats = run_generation(counting, PROMPTS, SETTINGS, path, batch_prompts=2, **RUN)
    assert stats.done_before == 4 and stats.generated == 5
    assert len(counting.prompts) == 5  # nothing finished was generated again
    assert set(first).isdisjoint({(k, p) for k, p in _keys(path)[4:]})
    keys = _keys(path)
    assert len(keys) == len(set(keys)) == 9

    # A crash mid-write leaves a truncated last line: it is dropped and regenerated.
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    lost = _keys(path)
    assert len(lost) == 8
    counting = CountingEngine(tiny_engine)
    stats = run_generation(counting, PROMPTS, SETTINGS, path, batch_prompts=2, **RUN)
    assert stats.generated == 1 and counting.calls == 1
    keys = _keys(path)
    assert len(keys) == len(set(keys)) == 9
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_finished_run_loads_no_model_and_config_must_match(tiny_engine, tmp_path: Path) -> None:
    path = tmp_path / "gen.jsonl"
    run_generation(tiny_engine, PROMPTS[:1], SETTINGS[:1], path, **RUN)

    def factory():
        raise AssertionError("the engine must not be built when nothing is pending")

    stats = run_generation(factory, PROMPTS[:1], SETTINGS[:1], path, **RUN)
    assert stats.generated == 0 and stats.done_before == 1
    with pytest.raises(ValueError, match="k=3 but this run has k=4"):
        run_generation(tiny_engine, PROMPTS, SETTINGS, path, **{**RUN, "k": 4})
    with pytest.raises(ValueError, match="batch_prompts"):
        run_generation(tiny_engine, PROMPTS, SETTINGS, path, batch_prompts=0, **RUN)


# ---------------------------------------------------------------------- scoring


def fake_embed(texts: list[str]) -> np.ndarray:
    """Deterministic bag-of-characters embedding (cheap stand-in for MiniLM)."""
    out = np.zeros((len(texts), 16))
    for i, t in enumerate(texts):
        for ch in t:
            out[i, ord(ch) % 16] += 1.0
        out[i, 0] += 1e-3
    return out


class FakeJudge:
    name = "fake-judge"

    def __init__(self) -> None:
        self.calls = 0

    def score(self, prompts, responses, batch_size=8):
        self.calls += 1
        return [
            {"fluency": -float(len(r)), "relevance": 1.0 if r else float("nan")} for r in responses
        ]


def _record(setting: str, pid: str, samples: list[str], share: float) -> dict:
    return {
        "setting": setting,
        "method": setting.split("|")[0],
        "router": setting.split("|")[0],
        "gamma": 0.1,
        "temperature": 1.0,
        "prompt_id": pid,
        "prompt": "Name a color",
        "samples": samples,
        "base_shares": [share] * len(samples),
        "switches": [1] * len(samples),
        "n_tokens": [3] * len(samples),
        "finish_reasons": ["stop"] * (len(samples) - 1) + ["length"],
    }


def test_score_record_groups() -> None:
    rec = _record("p|gamma=0.1|T=1", "a", ["red sky", "blue sea", ""], 0.5)
    scores = score_record(rec, embed=fake_embed, judge=FakeJudge())
    assert 0 < scores["distinct_1"] <= 1 and "self_bleu_diversity" in scores
    assert "vendi" in scores and "cosine_distance" in scores and "distinct_classes" in scores
    assert scores["fluency"] == pytest.approx(-(7 + 8 + 0) / 3)
    assert scores["relevance"] == 1.0  # NaN of the empty sample left out
    assert scores["base_share"] == 0.5 and scores["switches"] == 1.0 and scores["length"] == 3
    assert scores["stop_share"] == pytest.approx(2 / 3)
    assert scores["empty_share"] == pytest.approx(1 / 3)
    lexical_only = score_record(rec)
    assert "vendi" not in lexical_only and "fluency" not in lexical_only


def test_score_cache_resumes_and_adds_groups(tmp_path: Path) -> None:
    gen = tmp_path / "gen.jsonl"
    recs = [
        _record("p|gamma=0.1|T=1", "a", ["red", "blue"], 0.2),
        _record("p|gamma=0.1|T=1", "b", ["green", "green"], 0.4),
        _record("aligned|T=1", "a", ["red", "red"], 0.0),
    ]
    gen.write_text("".join(json.dumps(r) + "\n" for r in recs))
    scores = tmp_path / "scores.jsonl"
    cache = score_generations(gen, scores, progress=False)
    assert len(cache) == 3 and "vendi" not in cache[("aligned|T=1", "a")]["scores"]
    # adding an embedder and a judge later computes only those groups
    judge = FakeJudge()
    loads = []
    lazy_judge = LazyScorer(lambda: loads.append(1) or judge, "fake-judge")
    cache = score_generations(gen, scores, embed=fake_embed, judge=lazy_judge, progress=False)
    assert loads == [1] and judge.calls == 3
    assert all("vendi" in c["scores"] and "fluency" in c["scores"] for c in cache.values())
    assert all(c["judge"] == "fake-judge" for c in cache.values())
    # everything cached: the lazy judge is not even loaded
    cache2 = score_generations(gen, scores, embed=fake_embed, judge=lazy_judge, progress=False)
    assert loads == [1] and cache2 == cache
    assert load_scores(scores) == cache
    # a truncated last line of the score cache is recomputed
    data = scores.read_bytes()
    scores.write_bytes(data[:-10])
    cache3 = score_generations(gen, scores, embed=fake_embed, judge=judge, progress=False)
    assert cache3.keys() == cache.keys() and judge.calls == 4

    table = aggregate_scores(cache3.values(), common_prompts=False)
    by_setting = {row["setting"]: row for row in table}
    assert by_setting["p|gamma=0.1|T=1"]["n_prompts"] == 2
    assert by_setting["p|gamma=0.1|T=1"]["base_share"] == pytest.approx(0.3)
    with pytest.warns(UserWarning, match="left out"):
        common = aggregate_scores(cache3.values())
    assert {row["n_prompts"] for row in common} == {1}


# ---------------------------------------------------------------------- baco eval end to end


def _eval_args(argv: list[str]) -> argparse.Namespace:
    from shared_core.eval.cli import add_eval_parser

    parser = argparse.ArgumentParser(prog="baco")
    add_eval_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["eval", *argv])


@pytest.fixture
def prompt_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "prompt": p}) + "\n"
            for i, p in enumerate(["Tell me a story", "Name a color", "Write a haiku"])
        )
    )
    return path


def _common(prompt_file: Path, tiny_pair_paths, out: Path) -> list[str]:
    base, aligned = tiny_pair_paths
    return [
        "--prompts", str(prompt_file), "--limit", "2", "-k", "2", "--max-new-tokens", "6",
        "--base", str(base), "--aligned", str(aligned), "--out", str(out),
        "--methods", "aligned,p", "--grid", "p=0.3,0.9", "--aligned-temperatures", "0.7,1.0",
        "--precision", "fp32", "--quiet",
    ]  # fmt: skip


def test_eval_cli_no_judge_with_calibration(prompt_file, tiny_pair_paths, tmp_path) -> None:
    from shared_core.calibration import gamma_for_base_share, load_calibration
    from shared_core.eval.cli import run_eval_command

    out = tmp_path / "run"
    args = _eval_args([*_common(prompt_file, tiny_pair_paths, out), "--no-judge", "--calibrate"])
    assert run_eval_command(args) == 0
    records = read_jsonl(out / "generations.jsonl")
    assert len(records) == 2 * 4  # 2 prompts × (2 aligned temperatures + 2 γ)
    scores = load_scores(out / "scores.jsonl")
    assert len(scores) == 8
    assert all("vendi" in s["scores"] and "fluency" not in s["scores"] for s in scores.values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["planes"] == {} and len(summary["settings"]) == 4
    assert "No quality scores" in (out / "summary.md").read_text()
    assert "base_share" in (out / "settings.csv").read_text().splitlines()[0]
    assert (out / "plots" / "base_share.png").is_file()
    cal = load_calibration(out / "calibration.json")
    assert list(cal.routers) == ["p"] and [g for g, _ in cal.routers["p"]] == [0.3, 0.9]
    shares = [s for _, s in cal.monotone_points("p")]
    low, high = min(shares), max(shares)
    assert high > low  # seeded: γ 0.9 routes more to the base than γ 0.3 on the tiny pair
    g = gamma_for_base_share("p", (low + high) / 2, out / "calibration.json")
    assert 0.3 <= g <= 0.9
    # a rerun finds everything done: no new records
    before = (out / "generations.jsonl").read_bytes()
    assert run_eval_command(args) == 0
    assert (out / "generations.jsonl").read_bytes() == before


def test_eval_cli_with_judge_writes_summary_and_plots(
    prompt_file, tiny_pair_paths, tmp_path, capsys
) -> None:
    from shared_core.eval.cli import run_eval_command

    out = tmp_path / "run"
    _, aligned = tiny_pair_paths
    argv = [*_common(prompt_file, tiny_pair_paths, out), "--no-semantic", "--judge", str(aligned)]
    assert run_eval_command(_eval_args(argv)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["planes"] and set(summary["methods"]) == {"aligned", "p"}
    assert {p["y"] for p in summary["planes"].values()} == {"fluency", "relevance"}
    assert set(summary["groups"]) == {"lexical", "fluency", "relevance", "overall"}
    dom = summary["groups"]["overall"]
    assert all(0.0 <= v["coverage"] <= 1.0 for v in dom.values())
    pngs = sorted((out / "plots").glob("*.png"))
    assert len(pngs) == len(summary["planes"]) + 2  # + overview + base share
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert "coverage" in capsys.readouterr().out
    # a summary-only rerun works from the caches
    argv2 = [*argv, "--stages", "summary"]
    assert run_eval_command(_eval_args(argv2)) == 0


def test_eval_cli_defaults_to_the_shipped_prompts(tiny_pair_paths, tmp_path) -> None:
    from shared_core.eval.cli import run_eval_command

    base, aligned = tiny_pair_paths
    out = tmp_path / "run"
    argv = [
        "--limit", "2", "-k", "2", "--max-new-tokens", "2", "--methods", "aligned",
        "--aligned-temperatures", "1.0", "--base", str(base), "--aligned", str(aligned),
        "--out", str(out), "--stages", "generate", "--precision", "fp32", "--quiet",
    ]  # fmt: skip
    args = _eval_args(argv)
    assert args.prompts is None
    assert run_eval_command(args) == 0
    records = read_jsonl(out / "generations.jsonl")
    assert [r["prompt_id"] for r in records] == ["curated-0", "curated-1"]
    assert records[0]["prompt"] == load_prompts(limit=1)[0].prompt
    run = json.loads((out / "run.json").read_text())
    assert run["prompts"] == "noveltybench/curated.jsonl (shipped with baco)"
    assert str(default_prompts_path().parent) not in json.dumps(run)


def test_eval_cli_rejects_bad_options(prompt_file, tiny_pair_paths, tmp_path) -> None:
    from shared_core.eval.cli import run_eval_command

    common = _common(prompt_file, tiny_pair_paths, tmp_path / "x")
    with pytest.raises(ValueError, match="stage"):
        run_eval_command(_eval_args([*common, "--stages", "generate,bogus"]))
    with pytest.raises(ValueError, match="-k"):
        run_eval_command(_eval_args([*common, "-k", "1"]))
    with pytest.raises(ValueError, match="unknown router"):
        run_eval_command(_eval_args([*common, "--methods", "nope"]))
    with pytest.raises(ValueError, match="--threads"):
        run_eval_command(_eval_args([*common, "--threads", "0"]))
    with pytest.raises(ValueError, match="contradict"):
        run_eval_command(_eval_args([*common, "--no-judge", "--judge", "x"]))
    with pytest.raises(SystemExit):
        _eval_args([*common, "--grid", "p"])


def test_result_files_name_prompts_and_pairs_without_machine_paths(tmp_path, tiny_pair) -> None:
    from shared_core.eval.runner import default_prompts_path, pair_label, prompts_label

    assert prompts_label(None) == prompts_label(default_prompts_path())
    assert prompts_label(None).startswith("noveltybench/curated.jsonl")
    other = tmp_path / "noveltybench" / "wildchat-1k.jsonl"
    other.parent.mkdir()
    other.write_text("")
    assert prompts_label(other) == "noveltybench/wildchat-1k.jsonl"
    assert pair_label(tiny_pair) == tiny_pair.short_name
    assert str(tmp_path) not in prompts_label(other) and "/" not in pair_label(tiny_pair)[5:]
