"""Every example runs offline on the tiny pair with small settings (smoke tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared_core.testing import demo_pair_skips

pytestmark = pytest.mark.slow  # each example is a fresh Python process (imports dominate)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {
    "brainstorm.py": ["-k", "3", "--max-tokens", "6"],
    "agent_pipeline.py": ["--agents", "1", "--steps", "2", "--max-tokens", "120"],
    "structured_brainstorm.py": ["-k", "2"],
    "langchain_chain.py": ["--samples", "2", "--max-tokens", "6"],
    "rag_query_rewrite.py": ["--rounds", "1", "--max-tokens", "8", "--embed", "hash"],
}
EXPECTED = {  # the four task examples end with a comparison computed from their output
    "brainstorm.py": "\ncomparison: BACO gave ",
    "agent_pipeline.py": "\ncomparison (BACO vs aligned alone): ",
    "structured_brainstorm.py": "\ncomparison (BACO vs aligned alone): distinct names ",
    "langchain_chain.py": "p-punc",
    "rag_query_rewrite.py": "\ncomparison (BACO vs aligned only, 1 rounds): distinct queries ",
}


@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_runs_on_tiny_pair(script):
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), "--tiny", *EXAMPLES[script]],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert EXPECTED[script] in done.stdout
    assert done.stdout.lstrip().split("\n")[0].startswith(("task: ", "LLM: "))  # says its task
    assert "\ntask: " in "\n" + done.stdout


@pytest.mark.parametrize("script", [pytest.param("agent_pipeline.py", marks=demo_pair_skips())])
def test_tool_example_calls_finish_within_its_default_budget_on_the_demo_pair(script):
    """On the pair a new user runs, the example's own ``--max-tokens`` lets its forced first
    call finish (a cut call would leave the agent without an answer)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), "--agents", "1"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(0 cut by max_tokens)" in done.stdout, done.stdout[-2000:]
    answer = done.stdout.split("\nanswer: ", 1)[1].split("\n", 1)[0]
    assert answer.strip("'\" ") != "", done.stdout[-2000:]
