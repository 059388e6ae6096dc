"""langchain-tests standard integration suite for ChatBaco, run on the tiny random pair."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_baco import ChatBaco

CAPABLE = "needs a capable model; the tiny random pair cannot choose arguments"

#: Bound to structured calls of the tiny random pair: room for a whole object, and strings
#: it can finish (a random model almost never picks a closing quote on its own; the grammar
#: makes every finished object valid).
STRUCTURED = {"max_tokens": 120, "max_string_length": 8}


class TestChatBacoStandardIntegration(ChatModelIntegrationTests):
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

    @property
    def structured_output_kwargs(self) -> dict[str, Any]:
        return dict(STRUCTURED)

    # Items whose assertions need a model that chooses what to write (the tiny random pair
    # writes valid but arbitrary calls and JSON; the grammar only guarantees their shape).

    @pytest.mark.xfail(reason=CAPABLE, strict=False)
    def test_json_mode(self, model: Any) -> None:  # needs the keys setup and punchline
        super().test_json_mode(model)

    @pytest.mark.xfail(reason=CAPABLE, strict=False)
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model: Any) -> None:  # needs a call chosen with tool_choice=auto
        super().test_agent_loop(model)

    @pytest.mark.xfail(reason=CAPABLE, strict=False)
    def test_unicode_tool_call_integration(self, model: Any) -> None:
        super().test_unicode_tool_call_integration(model)

    # The suite asks for magic_function(input=3): a random model writes a valid integer, but
    # which one is chance (it wrote 3 under spaced JSON and 303 under compact JSON, seed 0).
    @pytest.mark.xfail(reason=CAPABLE, strict=False)
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_tool_calling(self, model: Any) -> None:
        super().test_tool_calling(model)

    @pytest.mark.xfail(reason=CAPABLE, strict=False)
    async def test_tool_calling_async(self, model: Any) -> None:
        await super().test_tool_calling_async(model)
