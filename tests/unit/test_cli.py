"""The ``baco`` command line (shared_core/cli.py)."""

from __future__ import annotations

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
            "1",
        ]
    )
    assert code == 0
    assert capsys.readouterr().out.strip()


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
