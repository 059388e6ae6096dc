"""Every example runs offline on the tiny pair with small settings (smoke tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each example is a fresh Python process (imports dominate)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {
    "brainstorm.py": ["-k", "3", "--max-tokens", "6"],
    "agent_pipeline.py": ["--agents", "1", "--steps", "2", "--max-tokens", "120"],
    "structured_brainstorm.py": ["-k", "2"],
    "langchain_chain.py": ["--samples", "2", "--max-tokens", "6"],
    "rag_query_rewrite.py": ["--rounds", "1", "--max-tokens", "8", "--embed", "hash"],
}
EXPECTED = {
    "brainstorm.py": "Distinct ideas",
    "agent_pipeline.py": "answer:",
    "structured_brainstorm.py": "valid ideas",
    "langchain_chain.py": "p-punc",
    "rag_query_rewrite.py": "aligned",
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
