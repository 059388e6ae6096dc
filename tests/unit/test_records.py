"""Committed records and assets name their data by dataset, never by a path of the machine
that produced them (issue 29): a reader elsewhere has no ``../shared`` or ``/root``, and a
path tells them nothing about which data was used."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Every committed text file that is not code: generated records (docs/results,
#: benchmarks/results, training summaries), shipped assets (shared_core/assets) and the
#: write-ups whose commands reproduce them (docs/results.md, benchmarks/RESULTS.md, README).
TEXT = {".json", ".jsonl", ".csv", ".md", ".txt", ".yaml", ".yml", ".toml"}
RECORDS = [f"*{suffix}" for suffix in sorted(TEXT)]
#: A path outside the repository: ``../`` out of it, a machine root, a home folder.
MACHINE_PATH = re.compile(
    r"\.\./shared|(?<![\w.:/])\.\./\.\./"
    r"|(?<![\w.:/])/(?:work|root|tmp|home|Users|opt|mnt|var|usr|private|scratch|data|content)/"
    r"|\b[A-Z]:\\\\"
)


def committed_records() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "--", *RECORDS], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [ROOT / p for p in out if Path(p).suffix in TEXT]


def machine_paths(text: str) -> list[tuple[int, str]]:
    return [
        (number, line.strip()[:160])
        for number, line in enumerate(text.splitlines(), 1)
        if MACHINE_PATH.search(line)
    ]


@pytest.mark.parametrize(
    ("line", "found"),
    [
        ('"data": "../shared/data/alpaca/alpaca_5000.json"', True),
        ("prompts: /work/main/data/x.jsonl", True),
        ('"output": "/root/runs/adapter"', True),
        ("--work-dir /tmp/run", True),
        ('"data": "alpaca/alpaca_5000.json"', False),
        ("prompts: noveltybench/curated.jsonl (shipped with baco)", False),
        ("https://github.com/tatsu-lab/stanford_alpaca/tmp/x", False),
        ("runs/demo_dpo/sft and docs/results/collapse", False),
    ],
)
def test_the_scan_finds_machine_paths(line: str, found: bool) -> None:
    assert bool(machine_paths(line)) is found


def test_committed_records_name_no_machine_path() -> None:
    files = committed_records()
    assert len(files) > 100, f"the scan found only {len(files)} record files: is git available?"
    names = {str(path.relative_to(ROOT)) for path in files}
    assert {"docs/results/summary.md", "shared_core/assets/demo_adapter/README.md"} <= names
    found = {
        str(path.relative_to(ROOT)): hits
        for path in files
        if (hits := machine_paths(path.read_text(encoding="utf-8", errors="replace")))
    }
    assert not found, (
        "records must name datasets (e.g. alpaca/alpaca_5000.json, noveltybench/curated.jsonl),"
        f" not paths of the machine that wrote them: {found}"
    )


def test_training_scripts_record_public_names(import_script) -> None:
    script = import_script("train_demo_adapter")
    argv = ["--data", "../shared/data/alpaca/alpaca_5000.json", "--output", "/root/x/adapter"]
    argv += ["--work-dir", "runs/demo", "--steps", "3"]
    command = script.public_command("train_demo_dpo.py", argv)
    assert command == (
        "python scripts/train_demo_dpo.py --data alpaca/alpaca_5000.json --output x/adapter"
        " --work-dir runs/demo --steps 3"
    )
    assert not machine_paths(command)
    assert script.public_name(ROOT / "runs" / "sft") == "runs/sft"


def test_demo_pair_tests_skip_only_for_the_missing_weights_package(monkeypatch) -> None:
    """The shipped adapter is no reason to skip: with it gone the demo tests must fail."""
    from pathlib import Path

    from shared_core import demo_models
    from shared_core.testing import demo_pair_skips

    monkeypatch.setattr(demo_models, "demo_adapter_path", lambda: Path("/nonexistent"))
    marks = demo_pair_skips()
    assert [m.kwargs["reason"] for m in marks if m.args[0]] == []  # the package is installed
