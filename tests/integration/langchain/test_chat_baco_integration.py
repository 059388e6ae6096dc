"""ChatBaco on the tiny random pair: overrides, n, stop, metadata, async and concurrency."""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import ConfigurableField

from langchain_baco import ChatBaco


@pytest.fixture
def llm(tiny_pair_paths: tuple[Path, Path]) -> ChatBaco:
    base, aligned = map(str, tiny_pair_paths)
    return ChatBaco(base_model=base, aligned_model=aligned, max_tokens=12, min_tokens=4, seed=0)


def _join(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    return full


# ---------------------------------------------------------------- per-call overrides


def test_single_model_routers(llm: ChatBaco) -> None:
    aligned = llm.invoke("Tell me a story", router="aligned", return_sources=True)
    assert aligned.response_metadata["base_share"] == 0.0
    assert set(aligned.response_metadata["sources"]) == {"aligned"}
    base = llm.bind(router="base", return_sources=True).invoke("Tell me a story")
    assert base.response_metadata["base_share"] == 1.0
    assert set(base.response_metadata["sources"]) == {"base"}
    configurable = llm.configurable_fields(router=ConfigurableField(id="router"))
    result = configurable.with_config(configurable={"router": "base"}).invoke("Tell me a story")
    assert result.response_metadata["base_share"] == 1.0
    assert llm.invoke("Tell me a story").response_metadata["router"] == "p-punc"  # unchanged


def test_mixing_router_uses_both_models(llm: ChatBaco) -> None:
    shares = {
        llm.invoke(
            "Tell me a story", router="rand", gamma=0.5, seed=s, max_tokens=20
        ).response_metadata["base_share"]
        for s in range(4)
    }
    assert any(0.0 < share < 1.0 for share in shares)


def test_router_and_gamma_in_metadata(llm: ChatBaco) -> None:
    meta = llm.invoke("hi", router="h-punc", gamma=1.5, temperature=0.7).response_metadata
    assert (meta["router"], meta["gamma"]) == ("h-punc", 1.5)
    meta = llm.invoke("hi", router="H_PUNC").response_metadata
    assert (meta["router"], meta["gamma"]) == ("h-punc", 2.0)  # h-punc's default γ


def test_seed_reproducible_and_varied(llm: ChatBaco) -> None:
    first = llm.invoke("Name a color", seed=1).content
    assert llm.invoke("Name a color", seed=1).content == first
    others = {llm.invoke("Name a color", seed=s).content for s in range(2, 6)}
    assert len(others | {first}) > 1


def test_greedy_is_deterministic(llm: ChatBaco) -> None:
    greedy = llm.bind(temperature=0, seed=None)
    assert greedy.invoke("hi").content == greedy.invoke("hi").content


def test_stream_matches_invoke(llm: ChatBaco) -> None:
    result = llm.invoke("Write a haiku about the sea", return_sources=True)
    chunks = list(llm.stream("Write a haiku about the sea", return_sources=True))
    full = _join(chunks)
    assert full.content == result.content
    assert full.usage_metadata == result.usage_metadata
    for key in ("finish_reason", "router", "gamma", "base_share", "switches", "sources"):
        assert full.response_metadata[key] == result.response_metadata[key]


# ---------------------------------------------------------------- n


def test_n_samples_from_one_batched_decode(llm: ChatBaco, monkeypatch) -> None:
    engine = llm._get_engine()
    calls = []
    original = engine.generate

    def spy(*args: Any, **kwargs: Any):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "generate", spy)
    result = llm.generate([[HumanMessage("Tell me a story")]], n=4)
    assert len(calls) == 1 and calls[0]["n"] == 4
    generations = result.generations[0]
    assert len(generations) == 4
    assert len({g.text for g in generations}) > 1
    for g in generations:
        assert g.message.usage_metadata["input_tokens"] > 0
        assert g.message.response_metadata["model_provider"] == "baco"
    usage = result.llm_output["token_usage"]
    assert usage["output_tokens"] == sum(
        g.message.usage_metadata["output_tokens"] for g in generations
    )
    assert usage["input_tokens"] == generations[0].message.usage_metadata["input_tokens"]
    # invoke returns the first of the n samples
    assert isinstance(llm.bind(n=3).invoke("Tell me a story"), AIMessage)


# ---------------------------------------------------------------- stop strings


def _stop_in(text: str) -> tuple[str, int]:
    match = re.search(r"[A-Za-z]{2}", text[3:])
    assert match, f"no ASCII word in {text!r}"
    stop = match.group(0)
    return stop, text.index(stop)


def test_stop_strings(llm: ChatBaco) -> None:
    long = llm.bind(max_tokens=30, min_tokens=30, seed=3)
    text = long.invoke("Tell me a story").content
    stop, cut = _stop_in(text)
    result = long.invoke("Tell me a story", stop=[stop])
    assert result.content == text[:cut]
    assert result.response_metadata["finish_reason"] == "stop"
    streamed = _join(list(long.stream("Tell me a story", stop=[stop])))
    assert streamed.content == text[:cut]
    field_stop = llm.model_copy(update={"max_tokens": 30, "min_tokens": 30, "stop": [stop]})
    assert field_stop.invoke("Tell me a story", seed=3).content == text[:cut]


# ---------------------------------------------------------------- metadata


def test_metadata_and_usage(llm: ChatBaco) -> None:
    result = llm.invoke("Tell me a story", max_tokens=10, min_tokens=10, return_sources=True)
    meta = result.response_metadata
    sources = meta["sources"]
    assert meta["finish_reason"] == "length"
    assert meta["model_name"] == llm.model_name and meta["model_provider"] == "baco"
    assert len(sources) == 10 == result.usage_metadata["output_tokens"]
    assert meta["base_share"] == sources.count("base") / len(sources)
    assert meta["switches"] == sum(a != b for a, b in itertools.pairwise(sources))
    usage = result.usage_metadata
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["input_tokens"] == llm.get_num_tokens_from_messages(
        [HumanMessage("Tell me a story")]
    )


def test_stream_metadata_on_last_chunk(llm: ChatBaco) -> None:
    chunks = list(llm.stream("Tell me a story", return_sources=True))
    *head, last = chunks
    assert last.chunk_position == "last"
    for chunk in head:
        assert not chunk.usage_metadata
        assert not {"model_name", "model_provider", "finish_reason", "router"} & set(
            chunk.response_metadata
        )
    assert (
        sum((c.usage_metadata or {}).get("input_tokens", 0) for c in chunks)
        == (llm.invoke("Tell me a story").usage_metadata["input_tokens"])
    )
    full = _join(chunks)
    assert full.response_metadata["model_provider"] == "baco"
    assert isinstance(full.response_metadata["sources"], list)


# ---------------------------------------------------------------- message sequences


@pytest.mark.parametrize(
    "messages",
    [
        [SystemMessage("a"), SystemMessage("b"), HumanMessage("c"), HumanMessage("d")],
        [HumanMessage("hi", name="ann"), AIMessage("hello", name="bot"), HumanMessage("go")],
        [HumanMessage("finish this"), AIMessage("Once upon a")],
        [AIMessage("I start"), HumanMessage("ok")],
        [SystemMessage("only a system message")],
    ],
)
def test_any_message_sequence(llm: ChatBaco, messages) -> None:
    result = llm.invoke(messages)
    assert result.content
    assert result.usage_metadata["input_tokens"] == llm.get_num_tokens_from_messages(messages)


def test_lcel_chain(llm: ChatBaco) -> None:
    prompt = ChatPromptTemplate.from_messages([("system", "Be creative."), ("human", "{topic}")])
    chain = prompt | llm.bind(router="h-punc", gamma=1.0) | StrOutputParser()
    outputs = chain.batch([{"topic": "the sea"}, {"topic": "a dog"}])
    assert all(isinstance(o, str) and o for o in outputs)
    assert "".join(chain.stream({"topic": "the sea"})) == chain.invoke({"topic": "the sea"})


# ---------------------------------------------------------------- async never blocks the loop


PROBE_TOKENS = 24


async def test_ainvoke_does_not_block_the_event_loop(llm: ChatBaco, loop_probe) -> None:
    probe = loop_probe()
    long = llm.bind(max_tokens=PROBE_TOKENS, min_tokens=PROBE_TOKENS, router=probe.router)
    message = await probe.run(long.ainvoke("Tell me a story"))
    assert message.usage_metadata["output_tokens"] == PROBE_TOKENS
    probe.check(steps=PROBE_TOKENS)


async def test_astream_does_not_block_the_event_loop(llm: ChatBaco, loop_probe) -> None:
    probe = loop_probe()
    long = llm.bind(max_tokens=PROBE_TOKENS, min_tokens=PROBE_TOKENS, router=probe.router)

    async def consume() -> list[AIMessageChunk]:
        return [c async for c in long.astream("Tell me a story")]

    chunks = await probe.run(consume())
    assert chunks[-1].chunk_position == "last"
    assert _join(chunks).usage_metadata["output_tokens"] == PROBE_TOKENS
    probe.check(steps=PROBE_TOKENS)


async def test_astream_matches_stream_and_propagates_errors(llm: ChatBaco) -> None:
    chunks = [c async for c in llm.astream("Tell me a story")]
    assert _join(chunks).content == llm.invoke("Tell me a story").content
    with pytest.raises(ValueError, match="valid routers"):
        async for _ in llm.astream("hi", router="nope"):
            pass
    with pytest.raises(ValueError, match="valid routers"):
        await llm.ainvoke("hi", router="nope")


def test_abandoned_stream_releases_the_engine(llm: ChatBaco) -> None:
    stream = llm.stream("Tell me a story", max_tokens=40, min_tokens=40)
    next(stream)
    stream.close()
    worker = threading.Thread(target=llm.invoke, args=("hi",))
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the engine stayed locked after the stream was closed"


async def test_abandoned_astream_releases_the_engine(llm: ChatBaco) -> None:
    async for _ in llm.astream("Tell me a story", max_tokens=40, min_tokens=40):
        break
    result = await asyncio.wait_for(llm.ainvoke("hi"), timeout=60)
    assert result.content


# ---------------------------------------------------------------- concurrency on one engine


SEEDS = [0, 1, 2, 3]


def test_threads_match_serial_calls(llm: ChatBaco) -> None:
    serial = [llm.invoke("Tell me a story", seed=s).content for s in SEEDS]
    streamed = ["".join(c.content for c in llm.stream("Tell me a story", seed=s)) for s in SEEDS]
    assert streamed == serial
    with ThreadPoolExecutor(max_workers=4) as pool:
        invoked = list(pool.map(lambda s: llm.invoke("Tell me a story", seed=s).content, SEEDS))
        streams = list(
            pool.map(
                lambda s: "".join(c.content for c in llm.stream("Tell me a story", seed=s)), SEEDS
            )
        )
    assert invoked == serial
    assert streams == serial


async def test_coroutines_match_serial_calls(llm: ChatBaco) -> None:
    serial = [llm.invoke("Tell me a story", seed=s).content for s in SEEDS]
    invoked = await asyncio.gather(*(llm.ainvoke("Tell me a story", seed=s) for s in SEEDS))
    assert [r.content for r in invoked] == serial

    async def streamed(seed: int) -> str:
        return "".join([c.content async for c in llm.astream("Tell me a story", seed=seed)])

    assert list(await asyncio.gather(*(streamed(s) for s in SEEDS))) == serial
    batched = await llm.abatch(["Tell me a story"] * len(SEEDS), config={"max_concurrency": 4})
    assert [r.content for r in batched] == [serial[0]] * len(SEEDS)  # the field seed is 0


def test_logprobs_in_response_metadata_as_chat_openai_gives_them(llm: ChatBaco) -> None:
    reply = llm.invoke("Name a color.", logprobs=True, top_logprobs=2, seed=3, max_tokens=12)
    content = reply.response_metadata["logprobs"]["content"]
    assert "".join(t["token"] for t in content) == reply.content
    assert all(len(t["top_logprobs"]) == 2 and t["logprob"] <= 0 for t in content)
    assert {t["source"] for t in content} <= {"base", "aligned"}
    plain = llm.invoke("Name a color.", seed=3, max_tokens=12)
    assert "logprobs" not in plain.response_metadata and plain.content == reply.content
    fielded = llm.model_copy(update={"logprobs": True})
    assert fielded.invoke("Name a color.", seed=3, max_tokens=12).response_metadata["logprobs"]
