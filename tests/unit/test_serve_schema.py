"""Request validation and response bodies of ``baco serve`` (no server, no model)."""

from __future__ import annotations

import sys

import pytest

from shared_core.calibration import gamma_for_base_share
from shared_core.serve import missing_modules, require_serve
from shared_core.serve.openai_schema import (
    APIError,
    chunk_body,
    parse_chat_request,
    parse_completion_request,
    response_body,
    supports_json_schema,
    usage_body,
)
from shared_core.testing import grammar_accepts
from shared_core.tools import format_call
from shared_core.types import Generation, Usage

USER = [{"role": "user", "content": "Hi"}]
PART_TEXT = "messages[0].content[0].text"
TOOL_CALLS = "messages[0].tool_calls"


def _generation(prompt_index: int, sample_index: int, sources: list[str]) -> Generation:
    return Generation(
        text=f"p{prompt_index}s{sample_index}",
        token_ids=list(range(len(sources))),
        sources=sources,  # type: ignore[arg-type]
        finish_reason="length",
        usage=Usage(prompt_tokens=5 + prompt_index, completion_tokens=len(sources)),
        router="p-punc",
        gamma=0.3,
        prompt_index=prompt_index,
        sample_index=sample_index,
    )


def test_chat_request_maps_openai_and_baco_fields_to_engine_options() -> None:
    parsed = parse_chat_request(
        {
            "model": "m",
            "messages": USER,
            "n": 2,
            "max_tokens": 9,
            "temperature": 0.5,
            "top_p": 0.9,
            "stop": "x",
            "seed": 3,
            "router": "p",
            "gamma": 0.4,
            "min_tokens": 2,
            "top_k": 5,
            "min_p": 0.1,
            "user": "ignored",
        }
    )
    assert parsed.kind == "chat"
    assert parsed.prompts == [[{"role": "user", "content": "Hi"}]]
    assert parsed.options == {
        "n": 2,
        "max_new_tokens": 9,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": "x",
        "seed": 3,
        "router": "p",
        "gamma": 0.4,
        "min_new_tokens": 2,
        "top_k": 5,
        "min_p": 0.1,
    }
    assert not parsed.stream


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    parsed = parse_chat_request({"messages": USER, "max_tokens": 5, "max_completion_tokens": 7})
    assert parsed.options["max_new_tokens"] == 7
    with pytest.raises(APIError) as info:
        parse_chat_request({"messages": USER, "max_tokens": 5, "max_completion_tokens": 0})
    assert info.value.param == "max_completion_tokens"
    assert info.value.message.startswith("max_completion_tokens must be")


def test_target_base_share_resolves_gamma_from_the_calibration() -> None:
    parsed = parse_chat_request({"messages": USER, "target_base_share": 0.3})
    assert parsed.options["gamma"] == pytest.approx(gamma_for_base_share("p-punc", 0.3))
    explicit = parse_chat_request({"messages": USER, "target_base_share": 0.3, "gamma": 0.1})
    assert explicit.options["gamma"] == 0.1
    with pytest.raises(APIError) as info:
        parse_chat_request({"messages": USER, "target_base_share": "high"})
    assert info.value.param == "target_base_share"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": USER, "n": 0}, "n"),
        ({"messages": USER, "n": True}, "n"),
        ({"messages": USER, "router": "p", "gamma": float("nan")}, "gamma"),
        ({"messages": USER, "min_tokens": 10, "max_tokens": 3}, "min_tokens"),
        ({"messages": USER, "stop": ["a", ""]}, "stop"),
        ({"messages": USER, "stop": 5}, "stop"),
        ({"messages": USER, "return_sources": "yes"}, "return_sources"),
        ({"messages": USER, "model": 3}, "model"),
        ({"messages": "Hi"}, "messages"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, PART_TEXT),
        ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{}]}]}, TOOL_CALLS),
        ({"messages": USER, "logit_bias": {"1": 1}}, "logit_bias"),
        ({"messages": USER, "modalities": ["text", "audio"]}, "modalities"),
        ({"messages": USER, "response_format": "json"}, "response_format"),
        ({"messages": USER, "response_format": {"type": "yaml"}}, "response_format"),
        ({"messages": USER, "best_of": 2}, "best_of"),  # a completions-only field
    ],
)
def test_chat_errors_name_the_field(body: dict, param: str) -> None:
    with pytest.raises(APIError) as info:
        parse_chat_request(body)
    assert info.value.status == 400
    # A call without a name: "not supported" without tools, its own error with them.
    assert info.value.param in (param, f"{TOOL_CALLS}[0]" if param == TOOL_CALLS else param)
    assert info.value.body()["error"]["type"] == "invalid_request_error"


def test_without_the_structured_extra_response_format_and_tools_answer_400(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shared_core.serve import openai_schema

    monkeypatch.setattr(openai_schema, "supports_json_schema", lambda: False)  # no llguidance
    body = {"messages": USER, "response_format": {"type": "json_object"}}
    with pytest.raises(APIError) as info:
        parse_chat_request(body)
    assert info.value.code == "unsupported_parameter"
    assert "not supported" in info.value.message
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert parse_chat_request({"messages": USER, "tools": tools, "tool_choice": "none"})
    with pytest.raises(APIError):
        parse_chat_request({"messages": USER, "tools": tools})


def test_completion_request_accepts_a_prompt_list_and_best_of_equal_to_n() -> None:
    parsed = parse_completion_request({"prompt": ["a", "b"], "n": 2, "best_of": 2, "echo": False})
    assert parsed.prompts == ["a", "b"]
    assert parsed.prompt_param == "prompt"
    for prompt in ([[1, 2]], 7, [], ["ok", 3]):
        with pytest.raises(APIError) as info:
            parse_completion_request({"prompt": prompt})
        assert info.value.param == "prompt"


def test_stream_options_need_stream() -> None:
    parsed = parse_chat_request(
        {"messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert parsed.stream and parsed.include_usage
    with pytest.raises(APIError) as info:
        parse_chat_request({"messages": USER, "stream_options": {"include_usage": True}})
    assert info.value.param == "stream_options"


def test_response_body_orders_choices_and_sums_usage() -> None:
    parsed = parse_completion_request({"prompt": ["a", "b"], "n": 2, "return_sources": True})
    results = [
        [_generation(0, 0, ["aligned"]), _generation(0, 1, ["base", "aligned"])],
        [_generation(1, 0, ["base"]), _generation(1, 1, ["aligned", "base", "base"])],
    ]
    body = response_body(parsed, results, model="m", response_id="cmpl-1")
    assert body["object"] == "text_completion"
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert [c["text"] for c in body["choices"]] == ["p0s0", "p0s1", "p1s0", "p1s1"]
    assert body["choices"][3]["sources"] == ["aligned", "base", "base"]
    assert body["choices"][3]["base_share"] == pytest.approx(2 / 3)
    assert body["choices"][3]["switches"] == 1
    assert (
        body["usage"]
        == usage_body(results)
        == {
            "prompt_tokens": 5 + 6,
            "completion_tokens": 1 + 2 + 1 + 3,
            "total_tokens": 18,
        }
    )
    assert body["baco"] == {"router": "p-punc", "gamma": 0.3}


def test_chunks_carry_deltas_finish_and_usage() -> None:
    parsed = parse_chat_request(
        {"messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    )
    common = {"response_id": "c", "created": 1, "model": "m"}
    role = chunk_body(parsed, **common, index=0, role=True, text="")
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert role["usage"] is None
    finish = chunk_body(parsed, **common, index=1, finish_reason="stop", statistics={"switches": 2})
    assert finish["choices"][0]["delta"] == {}
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert finish["choices"][0]["switches"] == 2
    usage = chunk_body(parsed, **common, usage={"prompt_tokens": 1})
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 1}
    text = parse_completion_request({"prompt": "a", "stream": True})
    chunk = chunk_body(text, **common, index=0, text="hi")
    assert chunk["object"] == "text_completion"
    assert chunk["choices"][0]["text"] == "hi"
    assert "usage" not in chunk


def test_missing_serve_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)
    assert missing_modules(("fastapi", "json")) == ["fastapi"]
    with pytest.raises(ImportError, match=r'pip install -e "\.\[serve\]"'):
        require_serve()


def test_baco_serve_without_the_extra_exits_2_with_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from shared_core.cli import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert main(["serve", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("baco: error: baco serve needs uvicorn")
    assert "bash scripts/install.sh serve" in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-queue", "0"], "--max-queue"),
        (["--port", "70000"], "--port"),
        (["--replicas", "0"], "--replicas"),
        (["--aligned", "x"], "--base is required"),
        (["--base", "x"], "exactly one of --aligned"),
    ],
)
def test_bad_serve_flags_fail_before_loading(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from shared_core.cli import main

    assert main(["serve", *flags]) == 2
    assert message in capsys.readouterr().err


TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


def test_structured_output_is_supported_exactly_when_llguidance_is_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    installed = find_spec("llguidance") is not None
    assert supports_json_schema() is installed
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llguidance" else find_spec(name, *a),
    )
    assert supports_json_schema() is False


def test_structured_fields_map_onto_the_engine_grammar_option() -> None:
    if not supports_json_schema():
        pytest.skip("the engine has no structured output")
    pytest.importorskip("llguidance")
    from shared_core.structured import Constraint

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    parsed = parse_chat_request(
        {
            "messages": USER,
            "response_format": {"type": "json_schema", "json_schema": {"schema": schema}},
        }
    )
    assert isinstance(parsed.options["json_schema"], Constraint)
    assert parsed.tools is None
    any_object = parse_chat_request({"messages": USER, "response_format": {"type": "json_object"}})
    assert isinstance(any_object.options["json_schema"], Constraint)
    with_tools = parse_chat_request({"messages": USER, "tools": TOOLS, "tool_choice": "required"})
    assert with_tools.tools is not None and with_tools.tools.mode == "required"
    assert isinstance(with_tools.options["json_schema"], Constraint)
    system = with_tools.prompts[0][0]
    assert system["role"] == "system" and "<tools>" in system["content"]
    off = parse_chat_request({"messages": USER, "tools": TOOLS, "tool_choice": "none"})
    assert off.tools is None and "json_schema" not in off.options


def test_tool_history_is_rendered_for_the_engine() -> None:
    if not supports_json_schema():
        pytest.skip("the engine has no structured output")
    pytest.importorskip("llguidance")
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    parsed = parse_chat_request(
        {
            "messages": [
                *USER,
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ],
            "tools": TOOLS,
        }
    )
    messages = parsed.prompts[0]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert "<tool_call>" in messages[2]["content"] and '"x":1' in messages[2]["content"]
    assert messages[3]["content"].startswith("<tool_response>")
    assert "42" in messages[3]["content"]


@pytest.mark.parametrize("parallel", [False, True])
def test_parallel_tool_calls_false_allows_one_call_in_the_grammar(parallel: bool):
    if not supports_json_schema():
        pytest.skip("the engine has no structured output (llguidance missing)")
    tool = {
        "type": "function",
        "function": {"name": "add", "parameters": {"type": "object", "properties": {}}},
    }
    parsed = parse_chat_request(
        {"messages": USER, "tools": [tool], "tool_choice": "auto", "parallel_tool_calls": parallel}
    )
    grammar = parsed.options["json_schema"]
    call = format_call("add", {})
    assert grammar_accepts(grammar, f"ok {call} done")
    assert grammar_accepts(grammar, f"{call}\n{call}") is parallel
