"""Structured output on the real demo pair: BACO's constrained samples are valid and varied."""

from __future__ import annotations

import json
import os
import re

import jsonschema
import pytest
import torch

from shared_core import BacoEngine, ModelPair
from shared_core.testing import demo_pair_skips

pytestmark = [
    pytest.mark.slow,  # a 270M model, 2 x 8 samples
    *demo_pair_skips(),
]

SLOGAN = {
    "type": "object",
    "properties": {"slogan": {"type": "string", "maxLength": 80}},
    "required": ["slogan"],
    "additionalProperties": False,
}
PROMPT = "Write a slogan for a new coffee shop. Reply with JSON with the key slogan."


@pytest.fixture(scope="module")
def demo_engine() -> BacoEngine:
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield BacoEngine(ModelPair.demo())
    torch.set_num_threads(threads)


def test_baco_structured_samples_are_valid_and_more_varied_than_aligned(demo_engine) -> None:
    """n=8 under the same schema and sampling settings: every sample validates, and BACO's
    slogans use more distinct words than the aligned model's. The DPO-aligned demo model
    repeats one template at temperature 1 (docs/results.md, "Collapse"); P-PUNC at γ=0.2
    (measured: 27 distinct words vs the aligned model's 20 at this seed)."""
    common = {
        "json_schema": SLOGAN,
        "n": 8,
        "max_new_tokens": 64,
        "top_p": 0.95,
        "temperature": 1.0,
        "seed": 0,
    }
    words = {}
    for router, gamma in (("aligned", None), ("p-punc", 0.2)):
        samples = demo_engine.generate(PROMPT, router=router, gamma=gamma, **common)[0]
        slogans = []
        for sample in samples:
            assert sample.finish_reason == "stop", sample.text
            value = json.loads(sample.text)
            jsonschema.validate(value, SLOGAN)
            slogans.append(value["slogan"])
        words[router] = len({w for s in slogans for w in re.findall(r"\w+", s.lower())})
        print(router, words[router], slogans)
        if router == "p-punc":
            assert any(s.base_share > 0 for s in samples)  # the base model really wrote
    assert words["p-punc"] > words["aligned"], words
