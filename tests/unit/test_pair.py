"""Loading pairs and checking their vocabularies (shared_core/pair.py)."""

from __future__ import annotations

import pytest

from shared_core import ModelPair
from shared_core.pair import check_same_vocabulary
from shared_core.testing import build_tiny_model, build_tiny_tokenizer


def test_loads_local_folders(tiny_pair_paths):
    base, aligned = tiny_pair_paths
    pair = ModelPair.from_pretrained(str(base), aligned)  # str and Path both work
    assert pair.vocab_size == len(pair.tokenizer)
    assert pair.base_name == str(base)
    assert pair.vocab.is_word_start.shape == (pair.vocab_size,)
    assert pair.vocab.is_word_start.device == pair.device
    assert pair.context_window == 512


def test_one_weights_adapter_pair(tiny_pair_paths, tmp_path):
    peft = pytest.importorskip("peft", reason="peft is in the dev extra")
    base_path, _ = tiny_pair_paths
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_path)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(tmp_path / "adapter")
    pair = ModelPair.from_pretrained(base_path, aligned_adapter=tmp_path / "adapter")
    assert pair.aligned_name.endswith("adapter")


def test_exactly_one_aligned_source(tiny_pair_paths):
    base, aligned = tiny_pair_paths
    with pytest.raises(ValueError, match="exactly one"):
        ModelPair.from_pretrained(base)
    with pytest.raises(ValueError, match="exactly one"):
        ModelPair.from_pretrained(base, aligned, aligned_adapter=aligned)


def test_missing_local_path_and_gguf_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        ModelPair.from_pretrained("./no/such/model", "./nope")
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        ModelPair.from_pretrained(str(tmp_path / "m.gguf"), str(tmp_path / "m.gguf"))


def test_unreachable_hub_id_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="could not load model 'org/not-a-model'"):
        ModelPair.from_pretrained("org/not-a-model", "org/not-a-model-it")


def test_different_vocabularies_name_both_models_and_first_mismatch():
    tok_a, tok_b = build_tiny_tokenizer(400), build_tiny_tokenizer(380)
    model_a, model_b = build_tiny_model(len(tok_a), 1), build_tiny_model(len(tok_b), 2)
    with pytest.raises(ValueError, match="base model 'A'.*aligned model 'B'"):
        ModelPair(model_a, model_b, tok_b, base_tokenizer=tok_a, base_name="A", aligned_name="B")
    # Same size, different token at one id.
    class Renamed:
        def __init__(self, tokenizer, token_id):
            self.vocab = dict(tokenizer.get_vocab())
            self.vocab = {("zzz" if i == token_id else t): i for t, i in self.vocab.items()}

        def __len__(self):
            return len(self.vocab)

        def get_vocab(self):
            return self.vocab

    with pytest.raises(ValueError, match=r"token id 123 is .* in the base and 'zzz'"):
        check_same_vocabulary(tok_a, Renamed(tok_a, 123), "A", "B")
    check_same_vocabulary(tok_a, build_tiny_tokenizer(400), "A", "B")  # equal: no error


def test_output_layer_smaller_than_tokenizer_is_rejected():
    tokenizer = build_tiny_tokenizer()
    small = build_tiny_model(len(tokenizer) - 10, 1)
    with pytest.raises(ValueError, match="output layer"):
        ModelPair(small, small, tokenizer)
