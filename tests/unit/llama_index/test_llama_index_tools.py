"""Baco as a FunctionCallingLLM and grammar-backed structured prediction, on the tiny pair."""

from __future__ import annotations

from pathlib import Path

import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from pydantic import BaseModel, Field

from llama_index_baco import Baco
from llama_index_baco.base import to_engine_messages
from shared_core.testing import grammar_accepts, record_grammars
from shared_core.tools import format_call


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def shout(text: str) -> str:
    """Shout a text."""
    return text.upper()


TOOLS = [FunctionTool.from_defaults(fn=multiply), FunctionTool.from_defaults(fn=shout)]


class Pet(BaseModel):
    """A pet."""

    name: str = Field(description="its name")
    legs: int = Field(ge=0, le=8)


PROMPT = PromptTemplate("Describe a pet called {name}.")


@pytest.fixture
def llm(tiny_tool_pair_paths: tuple[Path, Path]) -> Baco:
    base, aligned = map(str, tiny_tool_pair_paths)
    return Baco(base_model=base, aligned_model=aligned, max_tokens=120, seed=0, max_string_length=6)


def test_is_a_function_calling_llm(llm: Baco) -> None:
    assert isinstance(llm, FunctionCallingLLM)
    assert llm.metadata.is_function_calling_model


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [({"tool_required": True}, {"multiply", "shout"}), ({"tool_choice": "shout"}, {"shout"})],
)
def test_chat_with_tools_gives_parsed_calls(llm: Baco, kwargs, names) -> None:
    response = llm.chat_with_tools(TOOLS, user_msg="Go.", **kwargs)
    calls = llm.get_tool_calls_from_response(response)
    assert len(calls) == 1 and calls[0].tool_name in names and calls[0].tool_id
    tool = next(t for t in TOOLS if t.metadata.name == calls[0].tool_name)
    tool.call(**calls[0].tool_kwargs)  # the arguments fit the function's signature


async def test_streamed_tool_call_is_a_block_of_the_last_response(llm: Baco) -> None:
    responses = await llm.astream_chat_with_tools(TOOLS, user_msg="Go.", tool_required=True)
    chunks = [response async for response in responses]
    assert chunks
    last = chunks[-1]
    calls = llm.get_tool_calls_from_response(last)
    assert len(calls) == 1 and "<tool_call>" not in (last.message.content or "")


def test_no_tool_call_is_an_error_only_when_asked(llm: Baco) -> None:
    response = llm.chat([ChatMessage(role="user", content="hi")], max_tokens=4)
    assert llm.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="at least one tool call"):
        llm.get_tool_calls_from_response(response)


def test_tool_history_round_trips_through_the_prompt() -> None:
    call = ChatMessage(
        role=MessageRole.ASSISTANT,
        blocks=[ToolCallBlock(tool_call_id="c1", tool_name="multiply", tool_kwargs={"a": 2})],
    )
    result = ChatMessage(
        role=MessageRole.TOOL,
        content="4",
        additional_kwargs={"tool_call_id": "c1", "name": "multiply"},
    )
    out = to_engine_messages([ChatMessage(role="user", content="2*2?"), call, result])
    assert out[1]["content"].startswith("<tool_call>\n") and '"a":2' in out[1]["content"]
    assert out[2]["content"].startswith("<tool_response>\n")


def test_structured_predict_always_validates(llm: Baco) -> None:
    pet = llm.structured_predict(Pet, PROMPT, name="Rex")
    assert isinstance(pet, Pet)


async def test_astructured_predict_and_stream(llm: Baco) -> None:
    assert isinstance(await llm.astructured_predict(Pet, PROMPT, name="Rex"), Pet)
    parts = list(llm.stream_structured_predict(Pet, PROMPT, name="Rex"))
    assert parts and all(isinstance(p, Pet) for p in parts)
    assert parts[-1] == llm.structured_predict(Pet, PROMPT, name="Rex")  # same seed
    aparts = [p async for p in await llm.astream_structured_predict(Pet, PROMPT, name="Rex")]
    assert aparts[-1] == parts[-1]


def test_as_structured_llm(llm: Baco) -> None:
    structured = llm.as_structured_llm(Pet)
    response = structured.chat([ChatMessage(role="user", content="A pet.")])
    assert isinstance(response.raw, Pet)
    assert Pet.model_validate_json(response.message.content) == response.raw


def test_cut_structured_prediction_raises(llm: Baco) -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        llm.structured_predict(Pet, PROMPT, llm_kwargs={"max_tokens": 3}, name="Rex")


async def test_function_agent_runs_a_tool_and_answers(llm: Baco) -> None:
    from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult

    agent = FunctionAgent(tools=TOOLS, llm=llm, initial_tool_choice="multiply")
    handler = agent.run(user_msg="What is 6 times 7?")
    results = [e async for e in handler.stream_events() if isinstance(e, ToolCallResult)]
    answer = await handler
    assert results and results[0].tool_name == "multiply"
    assert (
        results[0].tool_output.raw_output
        == results[0].tool_kwargs["a"] * (results[0].tool_kwargs["b"])
    )
    assert answer is not None


def test_complete_takes_a_json_schema(llm: Baco) -> None:
    schema = {**Pet.model_json_schema(), "additionalProperties": False}
    response = llm.complete("A pet as JSON.", json_schema=schema)
    assert isinstance(Pet.model_validate_json(response.text), Pet)
    with pytest.raises(ValueError, match="chat_with_tools"):
        llm.complete("hi", tools=[TOOLS[0].metadata.to_openai_tool()])


@pytest.mark.parametrize("allow", [False, True])
def test_allow_parallel_tool_calls_reaches_the_grammar(
    llm: Baco, monkeypatch: pytest.MonkeyPatch, allow: bool
) -> None:
    import llama_index_baco.base as module

    grammars = record_grammars(monkeypatch, module)
    llm.chat_with_tools(TOOLS, user_msg="Go.", allow_parallel_tool_calls=allow, max_tokens=4)
    assert len(grammars) == 1
    call = format_call("shout", {"text": "hi"})
    assert grammar_accepts(grammars[0], call)
    assert grammar_accepts(grammars[0], f"{call}\n{call}") is allow
