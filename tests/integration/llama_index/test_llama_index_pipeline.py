"""``Baco`` inside real LlamaIndex components: query rewriting and a query engine."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from llama_index.core import Document, PromptTemplate, Settings, VectorStoreIndex
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.bridge.pydantic import Field
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent, LLMCompletionEndEvent
from llama_index.core.retrievers import QueryFusionRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle

from llama_index_baco import Baco
from llama_index_baco.embeddings import HashingEmbedding

CORPUS = [
    "The sea is calm at dawn and the fishing boats leave the harbour.",
    "A girl named Mia found a small dog in the rain and took it home.",
    "The old pine trees on the hill bend in the autumn wind.",
    "Blue is the color of the sky at noon and of the deep sea.",
    "The moon rises over the lake and the owls begin to call.",
]
QUESTION = "Tell me about the sea"


class SpyRetriever(BaseRetriever):
    """Delegates to another retriever and records every query string it receives."""

    def __init__(self, inner: BaseRetriever) -> None:
        super().__init__()
        self.inner = inner
        self.queries: list[str] = []

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        self.queries.append(query_bundle.query_str)
        return self.inner.retrieve(query_bundle)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        self.queries.append(query_bundle.query_str)
        return await self.inner.aretrieve(query_bundle)


class LLMEvents(BaseEventHandler):
    """Collects the responses of LLM end events (completion and chat)."""

    responses: list = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "LLMEvents"

    def handle(self, event: BaseEvent, **kwargs: object) -> None:
        if isinstance(event, (LLMCompletionEndEvent, LLMChatEndEvent)):
            self.responses.append(event.response)


@pytest.fixture
def llm_events() -> Iterator[LLMEvents]:
    handler = LLMEvents()
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(handler)
    yield handler
    dispatcher.event_handlers.remove(handler)


@pytest.fixture(scope="module")
def index() -> VectorStoreIndex:
    return VectorStoreIndex.from_documents(
        [Document(text=t) for t in CORPUS], embed_model=HashingEmbedding(dim=128)
    )


def _parsed_queries(text: str, num_queries: int) -> list[str]:
    """The rewritten queries as QueryFusionRetriever parses them from the LLM's text."""
    lines = [line.strip() for line in text.strip("`").split("\n")]
    return [line for line in lines if line][: num_queries - 1]


@pytest.fixture
def rewriter(llm: Baco) -> Baco:
    return llm.model_copy(update={"max_tokens": 24, "min_tokens": 16, "seed": 3})


@pytest.mark.parametrize(
    ("use_async", "entry"),
    [(False, "retrieve"), (True, "retrieve"), (True, "aretrieve")],
    ids=["sync", "sync-nested-async", "async"],
)
def test_fusion_retriever_queries_come_from_baco(
    index: VectorStoreIndex, rewriter: Baco, llm_events: LLMEvents, use_async: bool, entry: str
) -> None:
    spy = SpyRetriever(index.as_retriever(similarity_top_k=2))
    fusion = QueryFusionRetriever(
        [spy], llm=rewriter, num_queries=4, similarity_top_k=3, use_async=use_async
    )
    if entry == "aretrieve":
        nodes = asyncio.run(fusion.aretrieve(QUESTION))
    else:
        nodes = fusion.retrieve(QUESTION)

    (response,) = llm_events.responses
    assert response.raw["baco"]["router"] == "p-punc"
    generated = _parsed_queries(response.text, fusion.num_queries)
    assert generated, f"Baco produced no query line: {response.text!r}"
    assert sorted(spy.queries) == sorted([QUESTION, *generated])
    assert spy.queries[0] == QUESTION
    assert nodes and all(n.node.get_content() in CORPUS for n in nodes)


@pytest.mark.parametrize("how", ["model_copy", "Settings.llm"])
def test_query_engine_uses_a_configured_copy(
    index: VectorStoreIndex, llm: Baco, llm_events: LLMEvents, how: str
) -> None:
    """Query engines call ``llm.chat(messages)`` without kwargs: configure a copy instead."""
    configured = llm.model_copy(update={"router": "base", "max_tokens": 6})
    # A short prompt that fits the tiny model's 512-token window.
    short = {
        "response_mode": "simple_summarize",
        "text_qa_template": PromptTemplate("{context_str}\nQ: {query_str}\nA:"),
    }
    if how == "model_copy":
        engine = index.as_query_engine(llm=configured, **short)
        response = engine.query(QUESTION)
    else:
        previous = Settings._llm
        Settings.llm = configured
        try:
            engine = index.as_query_engine(**short)
            response = engine.query(QUESTION)
        finally:
            Settings._llm = previous
    raw = llm_events.responses[-1].raw
    assert raw["baco"]["router"] == "base" and raw["baco"]["base_share"] == 1.0
    assert raw["usage"]["output_tokens"] <= 6
    assert str(response) == llm_events.responses[-1].message.content
    assert llm.router == "p-punc"
