"""The row split of a one-weights pair's joint forward (shared_core/lora_split.py)."""

from __future__ import annotations

import pytest
import torch

from shared_core.forward import NO_ADAPTER
from shared_core.lora_split import RowSplit, row_split_unsupported

pytest.importorskip("peft", reason="one-weights pairs need peft (in the dev extra)")


def _ids(pair, texts: list[str]) -> torch.Tensor:
    rows = [pair.tokenizer(t)["input_ids"][:5] for t in texts]
    return torch.tensor(rows)


@torch.inference_mode()
def test_split_rows_get_the_base_and_the_aligned_view(tiny_one_weights_pair):
    pair = tiny_one_weights_pair
    ids = _ids(pair, ["Tell me a story.", "Name a color here.", "Write a haiku now."])
    base = pair.base(ids).logits
    aligned = pair.aligned(ids).logits
    assert not torch.allclose(base, aligned)  # the adapter really changes the output
    split = RowSplit(pair.aligned)
    with split.active(3):
        both = pair.aligned(torch.cat([ids, ids])).logits
    torch.testing.assert_close(both[:3], base)
    torch.testing.assert_close(both[3:], aligned)
    # peft's own mixed-adapter batch gives the same rows
    names = [NO_ADAPTER] * 3 + [pair.aligned.active_adapter] * 3
    mixed = pair.aligned(torch.cat([ids, ids]), adapter_names=names).logits
    torch.testing.assert_close(both, mixed)


@torch.inference_mode()
def test_outside_the_block_the_model_is_unchanged(tiny_pair_paths, tmp_path):
    from shared_core import ModelPair
    from shared_core.testing import save_tiny_adapter

    base_folder, _ = tiny_pair_paths
    adapter = save_tiny_adapter(base_folder, tmp_path / "adapter", seed=3)
    pair = ModelPair.from_pretrained(base_folder, aligned_adapter=adapter)  # no hooks yet
    ids = _ids(pair, ["Tell me a story."])
    before = pair.base(ids).logits, pair.aligned(ids).logits
    split = RowSplit(pair.aligned)  # installs the hooks
    with split.active(1):
        pass
    after = pair.base(ids).logits, pair.aligned(ids).logits
    assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))
    assert not torch.allclose(*after)


@torch.inference_mode()
def test_split_forward_compiles_without_graph_breaks(tiny_one_weights_pair):
    pair = tiny_one_weights_pair
    ids = _ids(pair, ["Tell me a story.", "Name a color here."])
    model = pair.aligned.get_base_model()
    split = RowSplit(pair.aligned)

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        return model(input_ids=inputs).logits

    compiled = torch.compile(forward, fullgraph=True, dynamic=False, backend="aot_eager")
    doubled = torch.cat([ids, ids])
    with split.active(2):
        expected = forward(doubled)
        torch.testing.assert_close(compiled(doubled), expected)


def test_unsupported_adapters_are_named(tiny_pair, tiny_pair_paths, tmp_path):
    from shared_core import ModelPair
    from shared_core.testing import save_tiny_adapter

    assert "not a peft model" in row_split_unsupported(tiny_pair.aligned)
    base, _ = tiny_pair_paths
    dora = save_tiny_adapter(base, tmp_path / "dora", target_modules=["q_proj"], use_dora=True)
    dora_pair = ModelPair.from_pretrained(base, aligned_adapter=dora)
    assert "variant" in row_split_unsupported(dora_pair.aligned)
    with pytest.raises(ValueError, match="variant"):
        RowSplit(dora_pair.aligned)
    embed = save_tiny_adapter(base, tmp_path / "embed", target_modules=["embed_tokens", "q_proj"])
    embed_pair = ModelPair.from_pretrained(base, aligned_adapter=embed)
    assert "Embedding" in row_split_unsupported(embed_pair.aligned)


def test_a_plain_lora_adapter_is_supported(tiny_one_weights_pair):
    assert row_split_unsupported(tiny_one_weights_pair.aligned) is None
