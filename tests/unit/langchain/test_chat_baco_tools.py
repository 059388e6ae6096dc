"""ChatBaco tool calling and structured output on the tiny pair (beyond the standard suites)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypedDict

import pytest
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from langchain_baco import ChatBaco, convert_messages
from shared_core.testing import grammar_accepts, inject_constraint_failure, record_grammars
from shared_core.tools import format_call


@tool
def pick(k: int) -> int:
    """Pick a number."""
    return k


@tool
def lookup(query: str) -> str:
    """Look something up."""
    return query


class Pet(BaseModel):
    """A pet."""

    name: str = Field(description="its name")
    legs: int = Field(ge=0, le=8)


class PetDict(TypedDict):
    name: str
    legs: int


@pytest.fixture
def llm(tiny_tool_pair_paths: tuple[Path, Path]) -> ChatBaco:
    base, aligned = map(str, tiny_tool_pair_paths)
    return ChatBaco(
        base_model=base, aligned_model=aligned, max_tokens=120, seed=0, max_string_length=6
    )


def test_bind_tools_validates_the_choice_at_bind_time(llm: ChatBaco) -> None:
    with pytest.raises(ValueError, match="not one of the bound tools"):
        llm.bind_tools([pick], tool_choice="missing")
    with pytest.raises(TypeError, match="tool_choice"):
        llm.bind_tools([pick], tool_choice=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("choice", ["any", "required", True, "lookup"])
def test_forced_tool_calls_parse_with_ids(llm: ChatBaco, choice) -> None:
    message = llm.bind_tools([pick, lookup], tool_choice=choice).invoke("Go.")
    assert len(message.tool_calls) == 1 and not message.invalid_tool_calls
    call = message.tool_calls[0]
    assert call["id"].startswith("call_") and call["type"] == "tool_call"
    if choice == "lookup":
        assert call["name"] == "lookup" and set(call["args"]) == {"query"}
    assert message.content == ""


def test_tool_choice_none_is_free_text(llm: ChatBaco) -> None:
    message = llm.bind_tools([pick], tool_choice="none").invoke("Go.", max_tokens=8)
    assert message.tool_calls == [] and isinstance(message.content, str)


def test_streamed_tool_call_arrives_as_one_chunk(llm: ChatBaco) -> None:
    chunks = list(llm.bind_tools([pick], tool_choice="any").stream("Go."))
    with_calls = [c for c in chunks if c.tool_call_chunks]
    assert len(with_calls) == 1
    (chunk,) = with_calls[0].tool_call_chunks
    assert chunk["name"] == "pick" and chunk["index"] == 0 and chunk["id"]
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert total.tool_calls[0]["args"] == json.loads(chunk["args"])
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata


def test_tool_history_is_rendered_as_calls_and_responses() -> None:
    messages = convert_messages(
        [
            HumanMessage("pick one"),
            AIMessage("", tool_calls=[{"name": "pick", "args": {"k": 3}, "id": "c1"}]),
            ToolMessage("3", tool_call_id="c1", name="pick"),
        ]
    )
    assert (
        messages[1]["content"] == '<tool_call>\n{"name":"pick","arguments":{"k":3}}\n</tool_call>'
    )
    assert messages[2]["content"].startswith("<tool_response>\n")


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
@pytest.mark.parametrize("schema", [Pet, PetDict, Pet.model_json_schema()])
def test_structured_output_types(llm: ChatBaco, schema, method) -> None:
    result = llm.with_structured_output(schema, method=method).invoke("A pet, please.")
    if schema is Pet:
        assert isinstance(result, Pet)
    else:
        assert set(result) == {"name", "legs"}


def test_n_samples_give_n_valid_objects(llm: ChatBaco) -> None:
    pets = llm.with_structured_output(Pet, n=4).invoke("A pet, please.")
    assert len(pets) == 4 and all(isinstance(p, Pet) for p in pets)
    assert len({p.model_dump_json() for p in pets}) > 1


def test_one_failed_sample_of_n_leaves_the_others(
    llm: ChatBaco, monkeypatch: pytest.MonkeyPatch
) -> None:
    inject_constraint_failure(monkeypatch, row=1)  # sample 1 of the one prompt
    with pytest.warns(UserWarning, match=r"1 of 3 samples left out \(sample 1: "):
        pets = llm.with_structured_output(Pet, n=3).invoke("A pet, please.")
    assert len(pets) == 2 and all(isinstance(p, Pet) for p in pets)
    raw = llm.with_structured_output(Pet, n=3, include_raw=True).invoke("A pet, please.")
    assert [o["parsed"] is None for o in raw] == [False, False, True]  # failed one last
    assert raw[2]["raw"].response_metadata["sample_index"] == 1


def test_when_no_sample_parses_the_first_error_is_raised(llm: ChatBaco) -> None:
    with pytest.raises(OutputParserException, match="max_tokens"):
        llm.with_structured_output(Pet, n=2, max_tokens=3).invoke("A pet.")


async def test_n_samples_async_with_raw(llm: ChatBaco) -> None:
    out = await llm.with_structured_output(Pet, n=2, include_raw=True).ainvoke("A pet.")
    assert [set(o) for o in out] == [{"raw", "parsed", "parsing_error"}] * 2
    assert all(isinstance(o["parsed"], Pet) and o["parsing_error"] is None for o in out)


def test_include_raw_reports_a_cut_response(llm: ChatBaco) -> None:
    cut = llm.with_structured_output(Pet, include_raw=True, max_tokens=3)
    out = cut.invoke("A pet.")
    assert out["parsed"] is None and isinstance(out["parsing_error"], OutputParserException)
    assert out["raw"].response_metadata["finish_reason"] == "length"
    with pytest.raises(OutputParserException, match="max_tokens"):
        llm.with_structured_output(Pet, max_tokens=3).invoke("A pet.")


def test_structured_output_bad_method(llm: ChatBaco) -> None:
    with pytest.raises(ValueError, match="method"):
        llm.with_structured_output(Pet, method="xml")  # type: ignore[arg-type]


@pytest.mark.parametrize("parallel", [False, None])
def test_parallel_tool_calls_false_reaches_the_grammar(
    llm: ChatBaco, monkeypatch: pytest.MonkeyPatch, parallel: bool | None
) -> None:
    import langchain_baco.chat_models as module

    grammars = record_grammars(monkeypatch, module)
    extra = {} if parallel is None else {"parallel_tool_calls": parallel}
    llm.bind_tools([pick, lookup], **extra).invoke("Go.", max_tokens=4)
    assert len(grammars) == 1
    call = format_call("pick", {"k": 3})
    assert grammar_accepts(grammars[0], call)
    assert grammar_accepts(grammars[0], f"{call}\n{call}") is (parallel is None)
