"""Loading pairs and checking their vocabularies (shared_core/pair.py)."""

from __future__ import annotations

import pytest
import torch

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


def _save_random_lora(base_path, folder) -> None:
    pytest.importorskip("peft", reason="peft is in the dev extra")
    from shared_core.testing import save_tiny_adapter

    save_tiny_adapter(base_path, folder)


def test_one_weights_adapter_pair_matches_two_models(tiny_pair_paths, tmp_path):
    peft = pytest.importorskip("peft", reason="peft is in the dev extra")
    from transformers import AutoModelForCausalLM

    from shared_core import BacoEngine
    from shared_core.pair import AdapterDisabledModel

    base_path, _ = tiny_pair_paths
    _save_random_lora(base_path, tmp_path / "adapter")

    shared = ModelPair.from_pretrained(base_path, aligned_adapter=tmp_path / "adapter")
    assert shared.shares_weights and isinstance(shared.base, AdapterDisabledModel)
    assert shared.aligned_name.endswith("adapter")
    separate = ModelPair(
        AutoModelForCausalLM.from_pretrained(base_path).eval(),
        peft.PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base_path), tmp_path / "adapter"
        ).eval(),
        shared.tokenizer,
    )
    assert not separate.shares_weights
    options = {"n": 3, "max_new_tokens": 16, "seed": 5, "router": "p", "gamma": 0.9}
    prompts = ["Tell me a story.", "Name a color."]
    one = BacoEngine(shared).generate(prompts, **options)
    two = BacoEngine(separate).generate(prompts, **options)
    assert [[g.token_ids for g in row] for row in one] == [
        [g.token_ids for g in row] for row in two
    ]
    assert [[g.sources for g in row] for row in one] == [[g.sources for g in row] for row in two]
    assert any("base" in g.sources and "aligned" in g.sources for row in one for g in row)
    # The base view really is the base: its logits differ from the adapter-enabled model's.
    ids = shared.tokenizer("Hello there", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert not torch.allclose(shared.base(ids).logits, shared.aligned(ids).logits)
        reference = separate.base(ids).logits
        assert torch.equal(shared.base(ids).logits, reference)


@pytest.mark.parametrize("router", ["p-punc", "rand"])
def test_joint_forward_of_one_weights_pair_changes_no_output(
    tiny_pair_paths, tmp_path, monkeypatch, router
):
    """Both views in one mixed-adapter batch give the same tokens as two forwards per step."""
    from shared_core import BacoEngine, model_state
    from shared_core.engine import DecodeOptions

    base_path, _ = tiny_pair_paths
    _save_random_lora(base_path, tmp_path / "adapter")
    pair = ModelPair.from_pretrained(base_path, aligned_adapter=tmp_path / "adapter")
    states = []
    original = model_state.ModelRows.prefill.__func__

    def counting(cls, *args, **kwargs):
        states.append(kwargs.get("adapters"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(model_state.ModelRows, "prefill", classmethod(counting))
    prompts = ["Tell me a story.", "Name a color.", "x"]
    # a stop string ends rows at different steps, so compaction is exercised too
    options = {"n": 3, "max_new_tokens": 40, "seed": 5, "router": router, "stop": ["e"]}
    results = {}
    for joint in (True, False):
        for share, compact in ((True, True), (False, False)):
            states.clear()
            out = BacoEngine(pair, options=DecodeOptions(share, compact, joint)).generate(
                prompts, **options
            )
            results[joint, share, compact] = [
                [(g.token_ids, g.sources, g.finish_reason) for g in row] for row in out
            ]
            # joint: one state whose rows carry the adapter off/on; otherwise one per model
            assert len(states) == (1 if joint else 2)
            assert (states[0] is not None) == joint
    first = results[True, True, True]
    assert all(r == first for r in results.values())
    assert len({len(t[0]) for row in first for t in row}) > 2


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
    import huggingface_hub.constants

    # huggingface_hub reads HF_HUB_OFFLINE once, at import: set the flag it consults too, so
    # the test never waits for network timeouts.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="could not load model 'org/not-a-model'"):
        ModelPair.from_pretrained("org/not-a-model", "org/not-a-model-it")


@pytest.fixture
def hub_unreachable(monkeypatch):
    """The Hub's endpoint refuses connections (nothing listens on 127.0.0.1:9), and offline
    mode is off: what a machine without network looks like to huggingface_hub."""
    import huggingface_hub.constants

    from shared_core import loading

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(loading, "_hub_probes", {})


def test_a_hub_id_fails_fast_when_the_hub_is_unreachable(hub_unreachable):
    import time

    start = time.monotonic()
    with pytest.raises(OSError) as info:
        ModelPair.from_pretrained("org/not-a-model", "org/not-a-model-it")
    assert time.monotonic() - start < 10  # huggingface_hub's retries alone take ~46 s
    message = str(info.value)
    assert message.startswith("could not load model 'org/not-a-model'")
    assert "Pass a local folder or .gguf file" in message
    assert "http://127.0.0.1:9 is unreachable" in message and "local Hub cache" in message


def test_a_cached_hub_id_still_loads_when_the_hub_is_unreachable(
    hub_unreachable, tiny_pair_paths, tmp_path
):
    import shutil
    import time

    for role, folder in zip(("base", "aligned"), tiny_pair_paths, strict=True):
        repo = tmp_path / f"models--org--tiny-{role}"
        shutil.copytree(folder, repo / "snapshots" / "0123abcd")
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("0123abcd")
    start = time.monotonic()
    pair = ModelPair.from_pretrained("org/tiny-base", "org/tiny-aligned", cache_dir=str(tmp_path))
    assert time.monotonic() - start < 10  # no retries for files the cache does not have
    assert (pair.base_name, pair.aligned_name) == ("org/tiny-base", "org/tiny-aligned")


def test_the_hub_probe_gives_up_after_its_timeout(monkeypatch):
    import socket
    import time

    import huggingface_hub.constants

    from shared_core import loading

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "_hub_probes", {})

    def never_answers(*args, **kwargs):
        time.sleep(5)
        raise OSError("timed out")

    monkeypatch.setattr(socket, "create_connection", never_answers)
    start = time.monotonic()
    reason = loading.hub_unreachable_reason(timeout=0.2)
    assert time.monotonic() - start < 2
    assert reason is not None and "no answer within 0.2 s" in reason
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert loading.hub_unreachable_reason() == "HF_HUB_OFFLINE is set"


def test_different_vocabularies_name_both_models_and_first_mismatch():
    tok_a, tok_b = build_tiny_tokenizer(400), build_tiny_tokenizer(380)
    model_a, model_b = build_tiny_model(len(tok_a), 1), build_tiny_model(len(tok_b), 2)
    with pytest.raises(ValueError, match=r"base model 'A'.*aligned model 'B'"):
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


def test_short_name_has_no_machine_paths(tiny_pair, tiny_pair_paths, monkeypatch) -> None:
    from shared_core import demo_models

    base, aligned = tiny_pair_paths
    assert tiny_pair.short_name == f"baco:{base.name}+{aligned.name}"
    assert str(base.parent) not in tiny_pair.short_name
    hub = ModelPair.__new__(ModelPair)
    hub.base_name, hub.aligned_name = "org/base-7b", "org/base-7b+adapters/none-here"
    assert hub.short_name == "baco:org/base-7b+adapters/none-here"
    demo = ModelPair.__new__(ModelPair)
    monkeypatch.setenv("BACO_HOME", str(base.parent))
    monkeypatch.setattr(demo_models, "DEMO_BASE_DIRNAME", base.name)
    demo.base_name = str(base)
    demo.aligned_name = f"{base}+{demo_models.demo_adapter_path()}"
    assert demo.short_name == "baco:demo"


def test_loading_an_adapter_prints_no_deprecation_between_libraries(tiny_pair_paths, tmp_path):
    """peft trips transformers' ``is_gradient_checkpointing`` FutureWarning on every adapter
    load; a baco user can do nothing about it, so the pair loader hides it (only it)."""
    import warnings

    peft = pytest.importorskip("peft", reason="peft is in the dev extra")
    from transformers import AutoModelForCausalLM

    base_path, _ = tiny_pair_paths
    _save_random_lora(base_path, tmp_path / "adapter")

    def deprecations(load) -> list[str]:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            load()
        return [str(w.message) for w in seen if issubclass(w.category, FutureWarning)]

    raw = deprecations(
        lambda: peft.PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base_path), str(tmp_path / "adapter")
        )
    )
    if not any("is_gradient_checkpointing" in m for m in raw):
        pytest.skip("this peft/transformers pair no longer warns; nothing to hide")
    ours = deprecations(
        lambda: ModelPair.from_pretrained(base_path, aligned_adapter=tmp_path / "adapter")
    )
    assert not any("is_gradient_checkpointing" in m for m in ours), ours
