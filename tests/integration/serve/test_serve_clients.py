"""LangChain ``ChatOpenAI`` and LlamaIndex ``OpenAILike`` against a real ``baco serve``."""

from __future__ import annotations

from typing import Any

from serve_helpers import TIMEOUT, LiveServer

PROMPT = "Suggest a name for {thing}."


def _chat_openai(server: LiveServer, **kwargs: Any) -> Any:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        base_url=server.base_url,
        api_key="unused",
        model="tiny-baco",
        max_tokens=16,
        timeout=TIMEOUT,
        max_retries=0,
        **kwargs,
    )


def _engine_text(engine: Any, content: str, **options: Any) -> str:
    messages = [{"role": "user", "content": content}]
    return engine.generate(messages, max_new_tokens=16, **options)[0][0].text


def test_langchain_chain_invoke_batch_and_stream(server: LiveServer, tiny_engine: Any) -> None:
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate

    llm = _chat_openai(server, seed=9, extra_body={"router": "rand", "gamma": 0.5})
    chain = ChatPromptTemplate.from_template(PROMPT) | llm | StrOutputParser()
    expected = _engine_text(tiny_engine, "Suggest a name for a bakery.", seed=9, router="rand")
    assert chain.invoke({"thing": "a bakery"}) == expected
    things = ["a bakery", "a boat", "a cat"]
    batch = chain.batch([{"thing": t} for t in things])
    assert batch == [
        _engine_text(tiny_engine, f"Suggest a name for {t}.", seed=9, router="rand") for t in things
    ]
    assert "".join(chain.stream({"thing": "a bakery"})) == expected


async def test_langchain_async_and_n(server: LiveServer) -> None:
    from langchain_core.messages import HumanMessage

    llm = _chat_openai(server, n=3, seed=1, extra_body={"router": "rand", "gamma": 0.5})
    result = await llm.agenerate([[HumanMessage("Name a color.")]])
    generations = result.generations[0]
    assert len(generations) == 3
    assert all(isinstance(g.text, str) for g in generations)
    info = generations[0].generation_info or {}
    assert info.get("finish_reason") in ("stop", "length")
    message = await _chat_openai(server, seed=1).ainvoke("Name a color.")
    assert message.usage_metadata["output_tokens"] >= 1


def test_llama_index_openai_like(server: LiveServer, tiny_engine: Any) -> None:
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(
        model="tiny-baco",
        api_base=server.base_url,
        api_key="unused",
        is_chat_model=True,
        context_window=512,
        max_tokens=16,
        temperature=0.7,
        timeout=TIMEOUT,
        max_retries=0,
        additional_kwargs={"seed": 4},
    )
    expected = _engine_text(tiny_engine, "Rewrite: cheap flights", seed=4, temperature=0.7)
    assert llm.complete("Rewrite: cheap flights").text == expected
    assert "".join(r.delta for r in llm.stream_complete("Rewrite: cheap flights")) == expected
    reply = llm.chat([ChatMessage(role="user", content="Rewrite: cheap flights")])
    assert reply.message.content == expected


async def test_llama_index_openai_like_async_completions(
    server: LiveServer, tiny_engine: Any
) -> None:
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(
        model="tiny-baco",
        api_base=server.base_url,
        api_key="unused",
        is_chat_model=False,
        max_tokens=16,
        temperature=0.7,
        timeout=TIMEOUT,
        max_retries=0,
        additional_kwargs={"seed": 6},
    )
    expected = _engine_text(tiny_engine, "Name a color.", seed=6, temperature=0.7)
    assert (await llm.acomplete("Name a color.")).text == expected
