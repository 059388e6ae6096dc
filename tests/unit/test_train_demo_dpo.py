"""scripts/train_demo_dpo.py: the sampled-token log-probabilities and the pair rule."""

from __future__ import annotations

import pytest
import torch

from shared_core.testing import build_tiny_model, build_tiny_tokenizer


@pytest.fixture(scope="module")
def script(import_script):
    return import_script("train_demo_dpo")


def test_recorded_logprobs_equal_a_forward_pass_over_the_samples(script) -> None:
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(len(tokenizer), seed=3).eval()
    prompt = tokenizer(["A prompt here"] * 3, return_tensors="pt")
    recorder = script.SampledLogprobs()
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(
            **prompt,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=6,
            min_new_tokens=6,
            pad_token_id=tokenizer.pad_token_id,
            logits_processor=[recorder],
        )
        recorded = recorder.finish(out[:, -1])
        logits = model(input_ids=out).logits
    width = prompt["input_ids"].shape[1]
    targets = out[:, width:]
    expected = logits[:, width - 1 : -1].log_softmax(-1).gather(-1, targets[..., None])[..., 0]
    assert recorded.shape == (3, 6)
    assert torch.allclose(recorded, expected, atol=1e-3)  # cached vs full forward: float noise


def test_the_rejected_sample_is_the_least_confident_non_empty_one(script) -> None:
    drawn = [
        {"text": "sure thing", "mean_logprob": -1.0},
        {"text": "uh", "mean_logprob": -3.5},
        {"text": "", "mean_logprob": -9.0},
    ]
    assert script.pick_rejected(drawn)["text"] == "uh"
    assert script.pick_rejected(drawn[2:])["text"] == ""  # all empty: still one
    assert script._user_turn({"instruction": " Do it ", "input": "x"}) == "Do it\n\nx"


def test_sft_weight_adds_an_nll_term_to_the_dpo_loss(script) -> None:
    assert script.loss_settings(0.0) == {"loss_type": ["sigmoid"]}
    rpo = script.loss_settings(0.5)  # TRL's DPOConfig fields: loss types and their weights
    assert rpo == {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]}
    with pytest.raises(ValueError, match="--sft-weight"):
        script.loss_settings(-1.0)
    assert script.parse_args(["--data", "x", "--sft-weight", "1"]).sft_weight == 1.0
    assert script.parse_args(["--data", "x"]).sft_weight == 0.0  # the shipped recipe


def test_end_position_is_the_first_end_token_or_none(script) -> None:
    assert script.end_position([5, 106, 7, 1], [1, 106]) == 1
    assert script.end_position([5, 7, 9], [1, 106]) is None
