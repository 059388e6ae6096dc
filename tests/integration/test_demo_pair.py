"""BACO on the real embedded pair (gemma-3-270m + the shipped LoRA SFT adapter), offline.

Skipped only where the demo extra is not installed (CI installs it).
"""

from __future__ import annotations

import os

import pytest
import torch

from shared_core import BacoEngine, ModelPair
from shared_core.demo_models import demo_adapter_path
from shared_core.testing import demo_pair_skips

pytestmark = [
    pytest.mark.slow,  # loads a 270M model; minutes on a 2-core CPU
    *demo_pair_skips(),
]


@pytest.fixture(scope="module", autouse=True)
def all_cores():
    """A 270M model gains from every core (the tiny-model tests use one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo_engine() -> BacoEngine:
    return BacoEngine(ModelPair.demo())


def test_demo_pair_loads_from_the_cache_as_one_set_of_weights(demo_engine):
    pair = demo_engine.pair
    assert pair.shares_weights
    assert pair.vocab_size == len(pair.tokenizer)
    assert {1, 106} <= set(pair.end_ids)  # <eos> and <end_of_turn>


FRANCE = "What is the capital of France? Answer in one word."


def source_changes(sources: list[str]) -> int:
    """How often the producing model changes along ``sources`` (counted by hand)."""
    return sum(1 for i in range(1, len(sources)) if sources[i] != sources[i - 1])


def test_aligned_model_answers_an_easy_question(demo_engine):
    out = demo_engine.generate(FRANCE, router="aligned", temperature=0, max_new_tokens=12)[0][0]
    assert "paris" in out.text.lower()
    assert out.sources == ["aligned"] * len(out.token_ids)
    assert out.base_share == 0.0 and out.switches == 0
    # The DPO-aligned model answers in a full sentence ("The capital of France is Paris. …")
    # and goes on (DPO's length bias), so 12 tokens usually cut it; an end token counts once.
    assert out.finish_reason in ("stop", "length")
    ended = out.finish_reason == "stop"
    assert out.usage.completion_tokens == len(out.token_ids) + ended


def test_base_model_alone_writes_a_transcript_not_a_turn(demo_engine):
    # The plain base model answers and then invents the next turn of the transcript: the
    # "\nUser:" stop string ends it there, and the marker is not part of the text.
    out = demo_engine.generate(FRANCE, router="base", temperature=0, max_new_tokens=32)[0][0]
    assert out.sources == ["base"] * len(out.token_ids)
    assert out.base_share == 1.0 and out.switches == 0
    assert out.finish_reason == "stop" and len(out.token_ids) < 32
    assert "User:" not in out.text and "Assistant:" not in out.text
    aligned = demo_engine.generate(FRANCE, router="aligned", temperature=0, max_new_tokens=32)
    assert out.text.strip() != aligned[0][0].text.strip()


def test_baco_mixes_tokens_from_both_models(demo_engine):
    max_new = 24
    result = demo_engine.generate(
        "Suggest an unusual hobby to try this weekend.",
        n=4,
        router="p-punc",
        gamma=0.3,
        max_new_tokens=max_new,
        top_p=0.95,
        seed=0,
    )[0]
    assert len({g.text for g in result}) == 4  # four samples of one prompt, all different
    assert all(g.sources[0] == "aligned" for g in result)  # the aligned model starts
    assert any(0.0 < g.base_share < 1.0 for g in result)  # both models wrote tokens
    for g in result:
        assert len(g.sources) == len(g.token_ids) > 0
        assert g.base_share == g.sources.count("base") / len(g.sources)
        assert g.switches == source_changes(g.sources)
        assert g.finish_reason in ("stop", "length")
        if g.finish_reason == "length":
            assert len(g.token_ids) == g.usage.completion_tokens == max_new
        else:
            assert len(g.token_ids) < max_new
    again = demo_engine.generate(
        "Suggest an unusual hobby to try this weekend.",
        n=4,
        router="p-punc",
        gamma=0.3,
        max_new_tokens=max_new,
        top_p=0.95,
        seed=0,
    )[0]
    assert [g.token_ids for g in again] == [g.token_ids for g in result]  # seeded: reproducible


def test_one_weights_matches_two_separate_models(demo_engine):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from shared_core.demo_models import ensure_demo_base

    folder = ensure_demo_base()
    two = BacoEngine(
        ModelPair(
            AutoModelForCausalLM.from_pretrained(folder).eval(),
            PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(folder), demo_adapter_path()
            ).eval(),
            demo_engine.pair.tokenizer,
        )
    )
    assert not two.pair.shares_weights
    options = {"n": 3, "router": "p-punc", "gamma": 0.3, "max_new_tokens": 16, "seed": 1}
    prompt = "Name a color and say why you like it."
    one_out = demo_engine.generate(prompt, **options)[0]
    two_out = two.generate(prompt, **options)[0]
    assert [g.token_ids for g in one_out] == [g.token_ids for g in two_out]
    assert [g.sources for g in one_out] == [g.sources for g in two_out]
