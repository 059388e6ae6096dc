"""BACO on the real embedded pair (gemma-3-270m + the shipped LoRA SFT adapter), offline.

Skipped only where the demo extra is not installed (CI installs it).
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from shared_core import BacoEngine, ModelPair
from shared_core.demo_models import GGUF_PACKAGE, GGUF_PIP_NAME, demo_adapter_path

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec(GGUF_PACKAGE) is None,
        reason=f"the demo pair needs `pip install {GGUF_PIP_NAME}` "
        "(or `pip install -e '.[demo]'` from the repo root)",
    ),
    pytest.mark.skipif(
        not (demo_adapter_path() / "adapter_model.safetensors").is_file(),
        reason="the demo adapter has not been trained (scripts/train_demo_adapter.py)",
    ),
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


def test_aligned_model_follows_an_instruction(demo_engine):
    out = demo_engine.generate(
        "What is the capital of France? Answer in one word.",
        router="aligned",
        temperature=0,
        max_new_tokens=12,
    )[0][0]
    assert "paris" in out.text.lower()
    assert set(out.sources) == {"aligned"}


def test_base_model_alone_does_not_answer_like_the_aligned_model(demo_engine):
    prompt = "What is the capital of France? Answer in one word."
    aligned = demo_engine.generate(prompt, router="aligned", temperature=0, max_new_tokens=12)
    base = demo_engine.generate(prompt, router="base", temperature=0, max_new_tokens=12)
    assert base[0][0].token_ids != aligned[0][0].token_ids


def test_baco_mixes_tokens_from_both_models(demo_engine):
    result = demo_engine.generate(
        "Suggest an unusual hobby to try this weekend.",
        n=4,
        router="p-punc",
        gamma=0.3,
        max_new_tokens=24,
        top_p=0.95,
        seed=0,
    )[0]
    sources = [s for g in result for s in g.sources]
    assert "base" in sources and "aligned" in sources
    assert all(g.sources[0] == "aligned" for g in result)  # the aligned model starts
    assert all(0.0 <= g.base_share <= 1.0 for g in result)


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
