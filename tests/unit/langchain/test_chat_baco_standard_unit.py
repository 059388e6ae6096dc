"""langchain-tests standard unit suite for ChatBaco (tiny pair; no weights are loaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_baco import ChatBaco


class TestChatBacoStandardUnit(ChatModelUnitTests):
    @pytest.fixture(autouse=True)
    def _tiny(self, tiny_pair_paths: tuple[Path, Path]) -> None:
        self._pair = tuple(map(str, tiny_pair_paths))

    @property
    def chat_model_class(self) -> type[ChatBaco]:
        return ChatBaco

    @property
    def chat_model_params(self) -> dict[str, Any]:
        base, aligned = self._pair
        return {"base_model": base, "aligned_model": aligned, "min_tokens": 1, "seed": 0}

    @property
    def supports_model_override(self) -> bool:
        # The model pair is fixed per instance (one engine); `model=` only renames traces.
        return False

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True
