"""Integration tests for the embedded demo pair (gemma-3-270m + the shipped LoRA adapter).

The first run converts the GGUF into the cache (about a minute on a small CPU); later runs
take a few seconds. Skipped where the GGUF package is not installed.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from shared_core import demo_models
from shared_core.demo_models import (
    DEMO_END_TOKEN_IDS,
    baco_home,
    demo_adapter_path,
    ensure_demo_base,
)

_gguf_installed = pytest.mark.skipif(
    importlib.util.find_spec(demo_models.GGUF_PACKAGE) is None,
    reason=f"demo base needs `pip install {demo_models.GGUF_PIP_NAME}` "
    "(or `pip install -e '.[demo]'` from the repo root)",
)


def needs_gguf(test: Callable[..., Any]) -> Callable[..., Any]:
    """Tests of the real demo base: skipped without its package, and slow (the first one
    converts the GGUF, about a minute; the others load a 270M model)."""
    return pytest.mark.slow(_gguf_installed(test))


def test_missing_package_raises_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BACO_HOME", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == demo_models.GGUF_PACKAGE else real_find_spec(name, *a),
    )
    with pytest.raises(ImportError, match=f"pip install {demo_models.GGUF_PIP_NAME}"):
        ensure_demo_base()


def test_interrupted_conversion_leaves_no_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BACO_HOME", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())

    def broken_build(out: Path, say: Any) -> None:
        (out / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_models, "_build_into", broken_build)
    with pytest.raises(KeyboardInterrupt):
        ensure_demo_base()
    assert not (tmp_path / demo_models.DEMO_BASE_DIRNAME).exists()
    assert [p.name for p in tmp_path.iterdir()] == [f".{demo_models.DEMO_BASE_DIRNAME}.lock"]


@pytest.fixture(scope="module")
def base_dir() -> Path:
    """The converted demo base folder (built on first use)."""
    return ensure_demo_base()


@pytest.fixture(scope="module")
def tokenizer(base_dir: Path) -> Any:
    """The demo tokenizer, loaded by path."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_dir)


@pytest.fixture(scope="module")
def base_model(base_dir: Path) -> Any:
    """The demo base model, loaded by path."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base_dir).eval()


def test_baco_home_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BACO_HOME", str(tmp_path))
    assert baco_home() == tmp_path
    monkeypatch.delenv("BACO_HOME")
    assert baco_home() == Path.home() / ".cache" / "baco"


@needs_gguf
def test_cache_folder_is_complete_and_fast(base_dir: Path) -> None:
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
        assert (base_dir / name).is_file(), name
    config = json.loads((base_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "gemma3_text"
    gen = json.loads((base_dir / "generation_config.json").read_text())
    assert sorted(gen["eos_token_id"]) == sorted(DEMO_END_TOKEN_IDS)
    assert not list(base_dir.parent.glob(".gemma-3-270m-*"))  # no staging leftovers
    # A second call reuses the cache: nothing is rewritten.
    stamps = {p.name: p.stat().st_mtime_ns for p in base_dir.iterdir()}
    assert ensure_demo_base() == base_dir
    assert {p.name: p.stat().st_mtime_ns for p in base_dir.iterdir()} == stamps


@needs_gguf
def test_model_loads_and_is_sane(base_model: Any, tokenizer: Any) -> None:
    assert base_model.dtype == torch.float32
    assert base_model.config.vocab_size >= len(tokenizer)
    assert base_model.lm_head.weight.data_ptr() == base_model.model.embed_tokens.weight.data_ptr()
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = base_model(input_ids=ids).logits[0, -1]
    assert torch.isfinite(logits).all()
    top = tokenizer.decode(logits.topk(5).indices)
    assert "Paris" in top or "the" in top  # a real model, not random weights


@needs_gguf
def test_saved_model_matches_gguf_reference_logits(
    base_dir: Path, base_model: Any, tokenizer: Any
) -> None:
    """The conversion recorded the GGUF model's logits; the saved folder must reproduce them."""
    ref = json.loads((base_dir / "baco_demo.json").read_text())["reference_logits"]
    ids = tokenizer(ref["text"], return_tensors="pt").input_ids
    assert ids[0].tolist() == ref["input_ids"]
    with torch.no_grad():
        logits = base_model(input_ids=ids).logits[0, -1]
    assert logits.topk(10).indices.tolist()[:3] == ref["top_ids"][:3]
    torch.testing.assert_close(
        logits[ref["top_ids"]], torch.tensor(ref["top_logits"]), atol=1e-3, rtol=1e-4
    )


@needs_gguf
def test_chat_template_renders_gemma_format(tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name a color."},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nName a color.<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    with pytest.raises(Exception, match="alternate"):
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], tokenize=False
        )


@needs_gguf
def test_turn_markers_are_single_special_tokens(tokenizer: Any) -> None:
    for text, expected in (("<start_of_turn>", 105), ("<end_of_turn>", 106), ("<eos>", 1)):
        assert tokenizer.encode(text, add_special_tokens=False) == [expected]
        assert tokenizer.convert_tokens_to_ids(text) == expected
    assert tokenizer.decode([105, 106, 1], skip_special_tokens=True) == ""
    assert tokenizer.bos_token_id == 2 and tokenizer.pad_token_id == 0


@needs_gguf
def test_adapter_loads_and_changes_logits(base_model: Any, tokenizer: Any) -> None:
    peft = pytest.importorskip("peft")
    adapter = demo_adapter_path()
    assert (adapter / "adapter_config.json").is_file()
    weights = adapter / "adapter_model.safetensors"
    assert weights.is_file() and weights.stat().st_size <= 16 * 1024 * 1024
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name a color."}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        before = base_model(**prompt).logits[0, -1]
        model = peft.PeftModel.from_pretrained(base_model, adapter, adapter_name="aligned")
        try:
            model.eval()
            after = model(**prompt).logits[0, -1]
            with model.disable_adapter():
                disabled = model(**prompt).logits[0, -1]
        finally:
            model.unload()  # restore the shared module-scoped base model
    assert not torch.allclose(before, after, atol=1e-3)
    torch.testing.assert_close(disabled, before)
