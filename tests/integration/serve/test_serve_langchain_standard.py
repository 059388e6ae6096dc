"""langchain-tests' standard integration suite through ``ChatOpenAI`` against ``baco serve``.

The client is LangChain's own OpenAI model; only the server is ours, so every failure here
would be a protocol difference from OpenAI. The tiny random pair (2048-token window, room for
tool descriptions) serves it; the items whose assertions need a model that chooses what to
write are expected to fail (not protocol: the grammar makes every call and object valid, the
random model picks arbitrary arguments), as in the ChatBaco suite.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from serve_helpers import TIMEOUT, LiveServer, run_server

pytest.importorskip("llguidance", reason="tools and structured output need the structured extra")
langchain_openai = pytest.importorskip("langchain_openai", reason="needs the dev extra")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "langchain"))
from tiny_standard import TinyPairStandardItems  # noqa: E402


@pytest.fixture(scope="module")
def tool_server(tiny_tool_pair_paths: tuple[Path, Path]) -> Iterator[LiveServer]:
    from shared_core import BacoEngine, ModelPair

    base, aligned = map(str, tiny_tool_pair_paths)
    engine = BacoEngine(ModelPair.from_pretrained(base, aligned))
    with run_server(engine, model_name="tiny-baco") as live:
        yield live


class TestChatOpenAIAgainstBacoServe(TinyPairStandardItems, ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _server(self, tool_server: LiveServer) -> None:
        self._base_url = tool_server.base_url

    @property
    def chat_model_class(self) -> type[Any]:
        return langchain_openai.ChatOpenAI

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # As for ChatBaco's suite: min_tokens keeps random content non-empty, a seed makes it
        # reproducible, max_tokens leaves room for a whole call, max_string_length bounds the
        # strings of calls and JSON (BACO fields travel in extra_body).
        return {
            "base_url": self._base_url,
            "api_key": "unused",
            "model": "tiny-baco",
            "max_tokens": 120,
            "seed": 0,
            "timeout": TIMEOUT,
            # the SDK's default: a pooled connection the server closed after its keep-alive
            # (uvicorn's 5 s) is retried on a new one, as with any OpenAI-compatible server
            "max_retries": 2,
            "extra_body": {"min_tokens": 4, "max_string_length": 8},
            # ChatOpenAI asks for stream usage (stream_options.include_usage) by default only
            # from api.openai.com; baco serve supports it
            "stream_usage": True,
        }
