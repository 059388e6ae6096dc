"""langchain-tests standard integration suite for ChatBaco, run on the tiny random pair."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from tiny_standard import TinyPairStandardItems

from langchain_baco import ChatBaco

#: Bound to structured calls of the tiny random pair: room for a whole object, and strings
#: it can finish (a random model almost never picks a closing quote on its own; the grammar
#: makes every finished object valid).
STRUCTURED = {"max_tokens": 120, "max_string_length": 8}


class TestChatBacoStandardIntegration(TinyPairStandardItems, ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _tiny(self, tiny_tool_pair_paths: tuple[Path, Path]) -> None:
        self._pair = tuple(map(str, tiny_tool_pair_paths))

    @property
    def chat_model_class(self) -> type[ChatBaco]:
        return ChatBaco

    @property
    def chat_model_params(self) -> dict[str, Any]:
        base, aligned = self._pair
        # Random weights emit junk and may end at once: min_tokens keeps content non-empty,
        # a seed makes it reproducible. max_tokens leaves room for a whole tool call, and
        # max_string_length bounds the strings of calls and JSON (see STRUCTURED).
        return {
            "base_model": base,
            "aligned_model": aligned,
            "max_tokens": 120,
            "min_tokens": 4,
            "seed": 0,
            "max_string_length": 8,
        }

    @property
    def structured_output_kwargs(self) -> dict[str, Any]:
        return dict(STRUCTURED)
