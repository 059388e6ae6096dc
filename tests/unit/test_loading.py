"""Pair-argument checks and model locations shared by every loader (shared_core/loading.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared_core import registry
from shared_core.cli_common import PAIR_FLAGS
from shared_core.loading import check_pair_args, split_model_ref


def test_no_models_is_the_demo_pair_and_a_full_pair_is_not():
    assert check_pair_args(None, None, None) is True
    assert check_pair_args("b", "a", None) is False
    assert check_pair_args("b", None, "adapter") is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("b", "a", "x"), "pass exactly one of aligned_model or aligned_adapter, not both"),
        ((None, "a", None), r"base_model is required with an aligned model \('a'\)"),
        ((None, None, "x"), r"base_model is required with an aligned model \('x'\)"),
        (("b", None, None), "got base_model 'b' but no aligned model: pass exactly one of"),
        (("b", None, None), "or omit both to use the embedded demo pair"),
    ],
)
def test_incomplete_pairs_say_what_is_missing(args, message):
    with pytest.raises(ValueError, match=message):
        check_pair_args(*args)


def test_names_follow_the_caller_and_demo_can_be_turned_off():
    with pytest.raises(ValueError, match="--base is required"):
        check_pair_args(None, "a", None, names=PAIR_FLAGS)
    with pytest.raises(ValueError, match="exactly one of --aligned or --aligned-adapter"):
        check_pair_args("b", None, None, names=PAIR_FLAGS)
    with pytest.raises(ValueError, match="base_model is required") as info:
        check_pair_args(None, None, None, demo=False)
    assert "demo" not in str(info.value)


def test_every_entry_point_uses_the_same_check():
    """The registry, ModelPair and the CLI loader refuse an incomplete pair before loading."""
    from argparse import Namespace

    from shared_core.cli_common import load_pair
    from shared_core.pair import ModelPair

    with pytest.raises(ValueError, match="base_model is required with an aligned model"):
        registry.get_engine(None, "some/aligned")
    with pytest.raises(ValueError, match=r"one of aligned=\.\.\. or aligned_adapter=\.\.\."):
        ModelPair.from_pretrained("some/base")
    args = Namespace(base=None, aligned="x", aligned_adapter=None, dtype=None, device_map=None)
    with pytest.raises(ValueError, match="--base is required"):
        load_pair(args)


def test_split_model_ref(tmp_path: Path):
    gguf = tmp_path / "Model.Q4.GGUF"
    gguf.write_bytes(b"GGUF")
    assert split_model_ref(gguf) == (str(tmp_path), {"gguf_file": "Model.Q4.GGUF"})
    assert split_model_ref(str(tmp_path)) == (str(tmp_path), {})
    assert split_model_ref("org/name") == ("org/name", {})
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        split_model_ref(tmp_path / "missing.gguf")
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        split_model_ref(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        split_model_ref("a/b/c")


def test_split_model_ref_expands_the_home_folder(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert split_model_ref("~/m.gguf") == (str(tmp_path), {"gguf_file": "m.gguf"})
