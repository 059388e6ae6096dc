"""The 8-method matrix of ``Baco`` on the tiny pair, per-call overrides and engine sharing."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler

from llama_index_baco import Baco

PROMPT = "Tell me a story about a girl and her dog."
MESSAGES = [
    ChatMessage(role="system", content="You are a storyteller."),
    ChatMessage(role="user", content="Name a color."),
    ChatMessage(role="assistant", content="Blue."),
    ChatMessage(role="user", content=PROMPT),
]
METHODS = [
    "complete",
    "chat",
    "stream_complete",
    "stream_chat",
    "acomplete",
    "achat",
    "astream_complete",
    "astream_chat",
]


def _text(response: Any) -> str:
    return response.text if hasattr(response, "text") else response.message.content


def call(llm: Baco, method: str, **kwargs: Any) -> tuple[str, list[str] | None, dict]:
    """Run one public method; returns (final text, deltas or None, raw of the last response)."""
    arg = MESSAGES if "chat" in method else PROMPT
    fn = getattr(llm, method)
    if method.startswith("a"):

        async def run() -> list[Any]:
            result = await fn(arg, **kwargs)
            return [c async for c in result] if "stream" in method else [result]

        responses = asyncio.run(run())
    else:
        result = fn(arg, **kwargs)
        responses = list(result) if "stream" in method else [result]
    last = responses[-1]
    deltas = [r.delta for r in responses] if "stream" in method else None
    return _text(last), deltas, last.raw


@pytest.mark.parametrize("method", METHODS)
def test_method_matrix(llm: Baco, method: str) -> None:
    text, deltas, raw = call(llm, method)
    assert text.strip()
    if deltas is not None:
        assert all(isinstance(d, str) for d in deltas)
        assert "".join(deltas) == text
    usage = raw["usage"]
    assert usage["input_tokens"] > 0
    assert llm.min_tokens <= usage["output_tokens"] <= llm.max_tokens
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    stats = raw["baco"]
    assert stats["router"] == "p-punc" and stats["gamma"] == pytest.approx(0.3)
    sources = stats["sources"]
    assert sources and set(sources) <= {"base", "aligned"}
    assert sources[0] == "aligned"  # the aligned model writes the first token
    assert stats["base_share"] == sources.count("base") / len(sources)
    assert stats["switches"] == sum(a != b for a, b in itertools.pairwise(sources))
    assert stats["finish_reason"] in ("stop", "length")
    assert len(sources) <= usage["output_tokens"]


@pytest.mark.parametrize(
    ("method", "router", "share"),
    [
        ("complete", "aligned", 0.0),
        ("complete", "base", 1.0),
        ("stream_chat", "base", 1.0),
        ("achat", "aligned", 0.0),
        ("astream_complete", "base", 1.0),
    ],
)
def test_per_call_router_override(llm: Baco, method: str, router: str, share: float) -> None:
    _, _, raw = call(llm, method, router=router, formatted=True)
    assert raw["baco"]["router"] == router
    assert raw["baco"]["base_share"] == share
    assert llm.router == "p-punc"  # the field is untouched


def test_per_call_gamma_and_sampling_override(llm: Baco) -> None:
    response = llm.complete(PROMPT, router="p-fc", gamma=0.2, max_tokens=5, min_tokens=5)
    assert response.raw["baco"]["router"] == "p-fc"
    assert response.raw["baco"]["gamma"] == pytest.approx(0.2)
    assert response.raw["usage"]["output_tokens"] == 5


def test_seed_reproduces_across_sync_and_async(llm: Baco) -> None:
    first = llm.complete(PROMPT).text
    assert llm.complete(PROMPT).text == first
    assert asyncio.run(llm.acomplete(PROMPT)).text == first
    streamed = "".join(c.delta for c in llm.stream_complete(PROMPT))
    assert streamed == first


def test_model_copy_shares_the_engine(llm: Baco) -> None:
    aligned_only = llm.model_copy(update={"router": "aligned", "gamma": None})
    assert aligned_only.engine is llm.engine
    assert Baco(**llm.model_dump(include={"base_model", "aligned_model"})).engine is llm.engine
    assert aligned_only.complete(PROMPT).raw["baco"]["base_share"] == 0.0
    assert llm.complete(PROMPT).raw["baco"]["router"] == "p-punc"


def test_n_samples_in_one_call(llm: Baco) -> None:
    response = llm.complete(PROMPT, n=3)
    samples = response.raw["samples"]
    assert len(samples) == 3 and samples[0]["text"] == response.text
    assert response.raw["usage"]["output_tokens"] >= 3 * llm.min_tokens


def test_token_counting_handler_reads_usage(llm: Baco) -> None:
    counter = TokenCountingHandler()
    counted = llm.model_copy(update={"callback_manager": CallbackManager([counter])})
    response = counted.chat(MESSAGES)
    assert counter.prompt_llm_token_count == response.raw["usage"]["input_tokens"]
    assert counter.completion_llm_token_count == response.raw["usage"]["output_tokens"]


def test_logprobs_fill_completion_response_logprobs(llm: Baco) -> None:
    response = llm.complete("Name a color.", logprobs=True, top_logprobs=3, seed=2)
    assert response.logprobs is not None and len(response.logprobs) == len(response.raw["logprobs"])
    assert "".join(t["token"] for t in response.raw["logprobs"]) == response.text
    assert all(len(alternatives) == 3 for alternatives in response.logprobs)
    chat = llm.chat([ChatMessage(role="user", content="Name a color.")], logprobs=True, seed=2)
    assert chat.logprobs and all(len(a) == 1 for a in chat.logprobs)  # the token itself
    assert llm.complete("Name a color.", seed=2).logprobs is None
