"""Pre-flight memory estimate (shared_core/memory.py)."""

from __future__ import annotations

import pytest
import torch

from shared_core.memory import (
    available_bytes,
    check_fits,
    estimate_decode_bytes,
    kv_bytes_per_token,
)
from shared_core.testing import build_tiny_model


def test_kv_bytes_per_token_matches_config():
    model = build_tiny_model(100, seed=0)  # 2 layers, 2 KV heads, head_dim 64/4 = 16, fp32
    assert kv_bytes_per_token(model) == 2 * 2 * 2 * 16 * 4


def test_estimate_and_refusal():
    model = build_tiny_model(100, seed=0)
    need = estimate_decode_bytes([model, model], rows=10, tokens_per_row=50, vocab_size=100)
    assert need == 2 * 512 * 10 * 50 + 8 * 10 * 100 * 4
    assert available_bytes(torch.device("cpu")) > 0
    check_fits([model], 1, 10, 100, torch.device("cpu"))
    with pytest.raises(ValueError, match="GiB"):
        check_fits([model], 10**6, 10**6, 100, torch.device("cpu"))
