"""The ``baco`` command line (shared_core/cli.py)."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
import torch

from shared_core.cli import main


def test_generate_prints_samples_with_base_share(tiny_pair_paths, capsys):
    base, aligned = tiny_pair_paths
    code = main(
        [
            "generate",
            "Tell me a story",
            "--base",
            str(base),
            "--aligned",
            str(aligned),
            "-n",
            "3",
            "--router",
            "p",
            "--gamma",
            "0.9",
            "--max-new-tokens",
            "8",
            "--seed",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("--- sample") == 3
    assert "base share" in out


def test_generate_stream(tiny_pair_paths, capsys):
    base, aligned = tiny_pair_paths
    code = main(
        [
            "generate",
            "Hi",
            "--base",
            str(base),
            "--aligned",
            str(aligned),
            "--stream",
            "--max-new-tokens",
            "6",
            "--seed",
            "2",
            "-n",
            "3",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    from shared_core import BacoEngine, ModelPair

    expected = BacoEngine(ModelPair.from_pretrained(str(base), str(aligned))).generate(
        "Hi", n=3, max_new_tokens=6, seed=2
    )[0]
    # every sample with its statistics, as the README says; sample 1 streamed first
    for g in expected:
        header = (
            f"--- sample {g.sample_index + 1}/3  base share {g.base_share:.2f}  "
            f"switches {g.switches}  ({g.finish_reason})"
        )
        assert header in out
        assert g.text in out
    assert out.startswith(f"--- sample 1/3  (streamed)\n{expected[0].text}")
    assert out.count("--- sample") == 4  # the streamed one's opening line, then 3 headers


def test_bad_router_is_reported_without_loading(capsys):
    code = main(
        ["generate", "Hi", "--base", "./missing", "--aligned", "./missing", "--router", "judge"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown router 'judge'" in err and "p-punc" in err


def test_missing_model_folder(capsys):
    code = main(["generate", "Hi", "--base", "./missing-base", "--aligned", "./missing"])
    assert code == 2
    assert "model folder not found" in capsys.readouterr().err


# ---------------------------------------------------------------------- bad input matrix


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """(exit status, stderr) of ``baco ARGV``: argparse errors exit, the others return 2."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def _assert_usage_error(code: int, err: str, fragment: str) -> None:
    assert code == 2, err
    assert "baco: error:" in err and fragment in err, err
    assert "Traceback" not in err


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the command tries to load any model pair."""
    from shared_core.pair import ModelPair

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was loaded before the options were validated")

    monkeypatch.setattr(ModelPair, "from_pretrained", refuse)
    monkeypatch.setattr(ModelPair, "demo", refuse)


GENERATE_BEFORE_LOADING = [
    pytest.param(["--router", "judge"], "unknown router 'judge'", id="unknown-router"),
    pytest.param(["--router", "p", "--gamma", "-1"], "--gamma for router 'p'", id="gamma-neg"),
    pytest.param(["--router", "rand", "--gamma", "1.5"], "got 1.5", id="gamma-above-1"),
    pytest.param(["--router", "p", "--gamma", "nan"], "got nan", id="gamma-nan"),
    pytest.param(["--router", "p", "--gamma", "inf"], "got inf", id="gamma-inf"),
    pytest.param(["--gamma", "high"], "argument --gamma: invalid float value", id="gamma-text"),
    pytest.param(["--temperature", "-1"], "--temperature must be", id="temperature-neg"),
    pytest.param(["--temperature", "nan"], "--temperature must be", id="temperature-nan"),
    pytest.param(["--temperature", "inf"], "--temperature must be", id="temperature-inf"),
    pytest.param(["--top-p", "0"], "--top-p must be in (0, 1]", id="top-p-0"),
    pytest.param(["--top-p", "1.5"], "--top-p must be", id="top-p-above-1"),
    pytest.param(["--min-p", "1.5"], "--min-p must be", id="min-p-above-1"),
    pytest.param(["--top-k", "-1"], "--top-k must be", id="top-k-neg"),
    pytest.param(["--top-k", "2.5"], "argument --top-k: invalid int value", id="top-k-float"),
    pytest.param(["-n", "0"], "-n must be between 1 and 4096", id="n-0"),
    pytest.param(["-n", "5000"], "-n must be between 1 and 4096, got 5000", id="n-huge"),
    pytest.param(["-n", "two"], "argument -n: invalid int value", id="n-text"),
    pytest.param(["--max-new-tokens", "0"], "--max-new-tokens must be", id="max-new-0"),
    pytest.param(["--max-new-tokens", "200000"], "131072, got 200000", id="max-new-huge"),
    pytest.param(["--max-new-tokens", "1e3"], "invalid int value: '1e3'", id="max-new-float"),
    pytest.param(
        ["--max-new-tokens", "8", "--min-new-tokens", "9"],
        "--min-new-tokens must be between 0 and 8, got 9",
        id="min-new-above-max",
    ),
    pytest.param(["--stop", ""], "stop[0] is an empty string", id="empty-stop"),
    pytest.param(["--seed", "x"], "argument --seed: invalid int value", id="seed-text"),
    pytest.param(["--seed", "-1"], "--seed must be", id="seed-neg"),
    pytest.param(["--dtype", "int8"], "argument --dtype: invalid choice", id="dtype"),
]


@pytest.mark.parametrize(("extra", "fragment"), GENERATE_BEFORE_LOADING)
def test_generate_rejects_bad_option_before_loading(
    extra: list[str], fragment: str, tiny_pair_paths, no_model_load, capsys
) -> None:
    base, aligned = tiny_pair_paths
    argv = ["generate", "Hi", "--base", str(base), "--aligned", str(aligned), *extra]
    _assert_usage_error(*_run(argv, capsys), fragment)


PAIR = ["--base", "BASE", "--aligned", "ALIGNED"]


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        pytest.param(["generate", "", *PAIR], "prompt is empty", id="empty-prompt"),
        pytest.param(["generate", "  \n", *PAIR], "prompt is empty", id="blank-prompt"),
        pytest.param(["generate", *PAIR], "required: prompt", id="no-prompt"),
        pytest.param(
            ["generate", "Hi", "--aligned", "ALIGNED"], "--base is required", id="aligned-only"
        ),
        pytest.param(
            ["generate", "Hi", "--base", "BASE"],
            "exactly one of --aligned or --aligned-adapter",
            id="base-only",
        ),
        pytest.param(
            ["generate", "Hi", *PAIR, "--aligned-adapter", "x"],
            "exactly one of --aligned or --aligned-adapter",
            id="aligned-and-adapter",
        ),
        pytest.param(["frobnicate"], "invalid choice: 'frobnicate'", id="unknown-command"),
    ],
)
def test_generate_rejects_bad_prompt_or_pair_before_loading(
    argv: list[str], fragment: str, tiny_pair_paths, no_model_load, capsys
) -> None:
    paths = dict(zip(("BASE", "ALIGNED"), map(str, tiny_pair_paths), strict=True))
    argv = [paths.get(a, a) for a in argv]
    _assert_usage_error(*_run(argv, capsys), fragment)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_map_without_cuda(tiny_pair_paths, no_model_load, capsys) -> None:
    base, aligned = tiny_pair_paths
    argv = ["generate", "Hi", "--base", str(base), "--aligned", str(aligned)]
    code, err = _run([*argv, "--device-map", "cuda"], capsys)
    _assert_usage_error(code, err, "--device-map cuda: CUDA is not available")


@pytest.mark.parametrize(
    ("which", "path", "fragment"),
    [
        pytest.param("--base", "./missing-base", "model folder not found", id="base-folder"),
        pytest.param("--aligned", "./missing-aligned", "model folder not found", id="aligned"),
        pytest.param("--base", "./missing.gguf", "GGUF file not found", id="base-gguf"),
    ],
)
def test_missing_model_files(which: str, path: str, fragment: str, tiny_pair_paths, capsys) -> None:
    base, aligned = tiny_pair_paths
    paths = {"--base": str(base), "--aligned": str(aligned), which: path}
    argv = ["generate", "Hi", *(x for kv in paths.items() for x in kv), "-n", "1"]
    _assert_usage_error(*_run(argv, capsys), f"{fragment}: {path}")


def test_prompt_longer_than_context_window(tiny_pair_paths, capsys) -> None:
    base, aligned = tiny_pair_paths
    argv = ["generate", "word " * 600, "--base", str(base), "--aligned", str(aligned), "-n", "1"]
    code, err = _run(argv, capsys)
    _assert_usage_error(code, err, "the model context window is 512 tokens")


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        pytest.param(["--threads", "0"], "--threads must be >= 1, got 0", id="threads-0"),
        pytest.param(["--threads", "-1"], "--threads must be >= 1, got -1", id="threads-neg"),
        pytest.param(["--threads", "two"], "argument --threads: invalid int", id="threads-text"),
        pytest.param(["--precision", "fp16"], "argument --precision: invalid choice", id="prec"),
        pytest.param(["-k", "0"], "-k must be between 1 and 4096, got 0", id="k-0"),
        pytest.param(["-k", "9999"], "-k must be between 1 and 4096", id="k-huge"),
        pytest.param(["--router", "judge"], "unknown router 'judge'", id="router"),
        pytest.param(["--gamma", "nan"], "got nan", id="gamma-nan"),
        pytest.param(["--max-new-tokens", "0"], "--max-new-tokens must be", id="max-new-0"),
        pytest.param(["--top-p", "0"], "--top-p must be in (0, 1]", id="top-p-0"),
        pytest.param(["--temperature", "-0.5"], "--temperature must be", id="temperature"),
        pytest.param(["--seed", "1.5"], "argument --seed: invalid int value", id="seed"),
        pytest.param(["Tell me", " "], "prompt 1: prompt is empty", id="empty-prompt"),
    ],
)
def test_demo_rejects_bad_option_before_loading(
    extra: list[str], fragment: str, tiny_pair_paths, no_model_load, capsys
) -> None:
    base, aligned = tiny_pair_paths
    argv = ["demo", "--base", str(base), "--aligned", str(aligned), *extra]
    _assert_usage_error(*_run(argv, capsys), fragment)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        pytest.param(["--prompts", "MISSING"], "prompt file", id="missing-prompt-file"),
        pytest.param(["-k", "1"], "-k must be >= 2", id="k-1"),
        pytest.param(["-k", "5000"], "-k must be between 1 and 4096", id="k-huge"),
        pytest.param(["-k", "ten"], "argument -k: invalid int value", id="k-text"),
        pytest.param(["--max-new-tokens", "0"], "--max-new-tokens must be", id="tokens-0"),
        pytest.param(["--max-new-tokens", "10**6"], "invalid int value", id="tokens-text"),
        pytest.param(["--max-new-tokens", "200000"], "131072, got 200000", id="tokens-huge"),
        pytest.param(["--top-p", "2"], "--top-p must be", id="top-p"),
        pytest.param(["--seed", "-3"], "--seed must be", id="seed-neg"),
        pytest.param(["--limit", "0"], "limit must be >= 1, got 0", id="limit-0"),
        pytest.param(["--batch-prompts", "0"], "--batch-prompts must be >= 1", id="batch-0"),
        pytest.param(["--threads", "0"], "--threads must be >= 1, got 0", id="threads-0"),
        pytest.param(["--stages", "generate,bogus"], "unknown stage(s) ['bogus']", id="stage"),
        pytest.param(["--methods", "judge"], "unknown router 'judge'", id="method"),
        pytest.param(["--grid", "p"], "argument --grid: expected ROUTER=G1,G2", id="grid"),
        pytest.param(["--judge", "x"], "contradict", id="judge-and-no-judge"),
    ],
)
def test_eval_rejects_bad_option_before_loading(
    extra: list[str], fragment: str, tiny_pair_paths, no_model_load, tmp_path, capsys
) -> None:
    base, aligned = tiny_pair_paths
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Name a color"}\n')
    extra = [str(tmp_path / "missing.jsonl") if a == "MISSING" else a for a in extra]
    out = tmp_path / "out"
    argv = ["eval", "--prompts", str(prompts), "--out", str(out), "--no-judge", "--no-semantic"]
    argv += ["--base", str(base), "--aligned", str(aligned), "--quiet", *extra]
    _assert_usage_error(*_run(argv, capsys), fragment)
    assert not out.exists()


def test_eval_prompts_default_to_the_shipped_set() -> None:
    from shared_core.cli import build_parser
    from shared_core.eval import default_prompts_path, load_prompts

    assert build_parser().parse_args(["eval"]).prompts is None  # resolved when the run starts
    assert len(load_prompts(str(default_prompts_path()), 3)) == 3


def test_model_with_nan_logits_is_a_clear_error(tiny_pair_paths, monkeypatch, capsys):
    from shared_core import ModelPair, cli

    base, aligned = tiny_pair_paths
    pair = ModelPair.from_pretrained(str(base), str(aligned))
    with torch.no_grad():
        pair.aligned.lm_head.weight.fill_(float("nan"))
    monkeypatch.setattr(cli, "load_pair", lambda args: pair)
    code = main(["generate", "Hi", "--base", str(base), "--aligned", str(aligned), "-n", "1"])
    err = capsys.readouterr().err
    assert code == 1
    assert "baco: error:" in err and "NaN" in err and str(aligned) in err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["generate", "demo", "eval", "serve"])
def test_every_subcommand_takes_the_common_flags_and_shows_defaults(command, capsys) -> None:
    from shared_core.cli import build_parser

    parser = build_parser()
    extra = ["a prompt"] if command == "generate" else []
    args = parser.parse_args([command, *extra, "--threads", "1", "--base", "b", "--aligned", "a"])
    assert args.threads == 1
    with pytest.raises(SystemExit):
        parser.parse_args([command, "--help"])
    help_text = capsys.readouterr().out
    assert "(default: " in help_text and ":class:" not in help_text and "``" not in help_text
    subparser = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    ).choices[command]
    formatter = subparser._get_formatter()
    for action in subparser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        text = formatter._expand_help(action) if action.help else ""
        assert text.strip(), f"{command} {action.option_strings[0]} has no help"
        assert text.count("(default") <= 1, f"{command} {action.option_strings[0]}: {text}"
        if action.default not in (None, False, argparse.SUPPRESS):
            assert "(default: " in text, (
                f"{command} {action.option_strings[0]} hides its default: {text}"
            )


def test_generate_applies_threads(tiny_pair_paths, capsys, monkeypatch) -> None:
    seen: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    base, aligned = tiny_pair_paths
    argv = ["generate", "Hi", "-n", "1", "--max-new-tokens", "2", "--threads", "1"]
    assert main([*argv, "--base", str(base), "--aligned", str(aligned)]) == 0
    assert seen == [1]


def test_eval_refuses_to_start_without_its_scoring_packages(tmp_path, capsys, monkeypatch):
    import importlib.util

    from shared_core.eval.semantic import MINILM_PACKAGE

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == MINILM_PACKAGE else real(name)
    )
    loads: list[Any] = []
    monkeypatch.setattr("shared_core.cli_common.load_pair", lambda args: loads.append(args))
    code = main(["eval", "--limit", "1", "-k", "2", "--out", str(tmp_path), "--methods", "base"])
    assert code == 2 and not loads
    err = capsys.readouterr().err
    assert MINILM_PACKAGE in err and "scripts/install.sh eval" in err
    assert not (tmp_path / "generations.jsonl").exists()
