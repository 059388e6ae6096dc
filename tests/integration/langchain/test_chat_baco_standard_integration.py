"""langchain-tests standard integration suite for ChatBaco, run on the tiny random pair."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_baco import ChatBaco


class TestChatBacoStandardIntegration(ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _tiny(self, tiny_pair_paths: tuple[Path, Path]) -> None:
        self._pair = tuple(map(str, tiny_pair_paths))

    @property
    def chat_model_class(self) -> type[ChatBaco]:
        return ChatBaco

    @property
    def chat_model_params(self) -> dict[str, Any]:
        base, aligned = self._pair
        # Random weights emit junk and may end at once: min_tokens keeps content non-empty,
        # a small max_tokens keeps the suite fast, a seed makes it reproducible.
        return {
            "base_model": base,
            "aligned_model": aligned,
            "max_tokens": 12,
            "min_tokens": 4,
            "seed": 0,
        }

    @property
    def supports_model_override(self) -> bool:
        # The model pair is fixed per instance (one engine); `model=` only renames traces.
        return False
