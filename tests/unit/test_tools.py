"""Tool schemas, prompt rendering, grammars and parsing (shared_core.tools), no model."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared_core.streaming import ResponseText
from shared_core.testing import ADD_TOOL as ADD
from shared_core.testing import build_tiny_tokenizer, grammar_accepts
from shared_core.tools import (
    TOOL_CALL_BEGIN,
    ToolCallStream,
    ToolSpec,
    call_schema,
    format_call,
    normalise_tools,
    parse_tool_calls,
    render_tool_messages,
    resolve_tool_choice,
    tool_constraint,
    tool_request,
    tools_system_block,
)

NOW = {"name": "now", "description": "The time."}


def test_normalise_tools_accepts_openai_and_flat_dicts() -> None:
    tools = normalise_tools([ADD, NOW])
    assert [t.name for t in tools] == ["add", "now"]
    assert tools[1].parameters == {"type": "object", "properties": {}}
    assert tools[0].openai() == ADD
    with pytest.raises(ValueError, match="no name"):
        normalise_tools([{"description": "x"}])


@pytest.mark.parametrize(
    ("choice", "mode", "names"),
    [
        (None, "auto", ["add", "now"]),
        ("auto", "auto", ["add", "now"]),
        ("none", "none", []),
        ("any", "required", ["add", "now"]),
        ("required", "required", ["add", "now"]),
        (True, "required", ["add", "now"]),
        ("now", "required", ["now"]),
        ({"type": "function", "function": {"name": "add"}}, "required", ["add"]),
        ({"name": "add"}, "required", ["add"]),
    ],
)
def test_resolve_tool_choice(choice, mode, names) -> None:
    got_mode, tools = resolve_tool_choice(normalise_tools([ADD, NOW]), choice)
    assert got_mode == mode and [t.name for t in tools] == names


def test_resolve_tool_choice_errors() -> None:
    tools = normalise_tools([ADD])
    with pytest.raises(ValueError, match="not one of the bound tools"):
        resolve_tool_choice(tools, "missing")
    with pytest.raises(TypeError, match="tool_choice"):
        resolve_tool_choice(tools, 3)
    with pytest.raises(ValueError, match="at least one tool"):
        resolve_tool_choice([], "any")


def test_call_schema_pins_the_name_and_the_arguments() -> None:
    schema = call_schema(normalise_tools([ADD]))
    assert schema["properties"]["name"] == {"const": "add"}
    assert schema["properties"]["arguments"]["required"] == ["a", "b"]
    both = call_schema(normalise_tools([ADD, NOW]))
    assert [o["properties"]["name"]["const"] for o in both["anyOf"]] == ["add", "now"]


def test_parse_round_trips_formatted_calls_and_keeps_text() -> None:
    text = "Let me add.\n" + format_call("add", {"a": 1, "b": 2}) + "\nDone."
    reply = parse_tool_calls(text, ids=["call_1"])
    assert reply.content == "Let me add.\n\nDone."
    assert [(c.name, c.arguments, c.id) for c in reply.tool_calls] == [
        ("add", {"a": 1, "b": 2}, "call_1")
    ]
    assert reply.invalid_tool_calls == []


def test_parse_reports_invalid_and_cut_calls_with_ids() -> None:
    reply = parse_tool_calls(
        '<tool_call>{"name": "add", "arguments": 3}</tool_call><tool_call>{"name": "ad'
    )
    assert reply.tool_calls == []
    first, second = reply.invalid_tool_calls
    assert "object" in first.error and first.name == "add"
    assert "cut off" in second.error and second.name is None
    assert first.id.startswith("call_") and first.id != second.id


def test_render_tool_history_as_text() -> None:
    messages = [
        {"role": "user", "content": "1+2?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1"}],
        },
        {"role": "tool", "content": "3", "name": "add", "tool_call_id": "c1"},
    ]
    out = render_tool_messages(messages, normalise_tools([ADD]))
    assert out[0]["role"] == "system" and "<tools>" in out[0]["content"]
    assert parse_tool_calls(out[2]["content"]).tool_calls[0].arguments == {"a": 1, "b": 2}
    assert out[3] == {
        "role": "user",
        "content": '<tool_response>\n{"name": "add", "id": "c1"}\n3\n</tool_response>',
    }
    # OpenAI-style calls with string arguments, and a system message to extend
    out = render_tool_messages(
        [
            {"role": "system", "content": "Be brief."},
            {
                "role": "assistant",
                "content": "ok",
                "tool_calls": [{"function": {"name": "add", "arguments": '{"a": 1}'}}],
            },
        ],
        normalise_tools([ADD]),
    )
    assert out[0]["content"].startswith("Be brief.\n\n") and len(out) == 2
    assert json.loads(out[1]["content"].split("\n")[2]) == {"name": "add", "arguments": {"a": 1}}


def test_system_block_names_every_tool_and_the_format() -> None:
    block = tools_system_block(normalise_tools([ADD, NOW]), "required")
    assert '"name":"add"' in block and '"name":"now"' in block
    assert "<tool_call>" in block and "must call one tool" in block


def test_tool_constraints() -> None:
    tools = normalise_tools([ADD])
    required = tool_constraint(tools, "required")
    auto = tool_constraint(tools, "auto")
    assert required is not None and required.whole_response
    assert auto is not None and auto.protected == ("<tool_call>", "</tool_call>")
    assert tool_constraint(tools, "none") is None
    assert tool_constraint([ToolSpec("x")], "required") == tool_constraint(
        [ToolSpec("x")], "required"
    )


def test_stop_strings_are_suspended_inside_protected_segments() -> None:
    tokenizer = build_tiny_tokenizer()
    text = 'Hi <tool_call>\n{"q": "User: x"}\n</tool_call> then\nUser: more'
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]

    def run(protect):
        response = ResponseText(tokenizer, ("User:",), protect=protect)
        for i in ids:
            response.push(i)
            if response.stopped:
                break
        response.finish()
        return response.text

    assert run(None) == 'Hi <tool_call>\n{"q": "'
    assert run(("<tool_call>", "</tool_call>")) == (
        'Hi <tool_call>\n{"q": "User: x"}\n</tool_call> then\n'
    )


def test_tool_arguments_are_closed_and_bounded() -> None:
    schema = call_schema(normalise_tools([ADD, NOW]), max_string_length=4)
    add, now = schema["anyOf"]
    assert add["properties"]["arguments"]["additionalProperties"] is False
    assert now["properties"]["arguments"]["additionalProperties"] is False
    text = {"name": "t", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}
    bounded = call_schema(normalise_tools([text]), max_string_length=4)
    assert bounded["properties"]["arguments"]["properties"]["q"]["maxLength"] == 4


def test_tool_request_renders_constrains_and_parses() -> None:
    request = tool_request([ADD], "any")
    assert request.active and request.mode == "required"
    assert request.constraint is not None and request.constraint.whole_response
    rendered = request.messages([{"role": "user", "content": "1+2?"}])
    assert rendered[0]["role"] == "system" and "must call" in rendered[0]["content"]
    reply = request.parse(format_call("add", {"a": 1, "b": 2}))
    assert reply.tool_calls[0].arguments == {"a": 1, "b": 2}
    off = tool_request([ADD], "none")
    assert not off.active and off.constraint is None
    assert off.parse(format_call("add", {})).tool_calls == []
    assert off.messages([{"role": "user", "content": "hi"}]) == [{"role": "user", "content": "hi"}]
    assert not tool_request(None).active
    with pytest.raises(ValueError, match="at least one tool"):
        tool_request([], "any")


def test_tool_call_stream_splits_text_and_calls_across_deltas() -> None:
    text = "Hi <" + "tool" + " there " + format_call("add", {"a": 1, "b": 2}) + " bye"
    stream = ToolCallStream()
    items = []
    for i in range(0, len(text), 3):
        items.extend(stream.feed(text[i : i + 3]))
    items.extend(stream.finish())
    plain = "".join(v for kind, v in items if kind == "text")
    calls = [v for kind, v in items if kind == "call"]
    assert plain == "Hi <tool there  bye"
    assert [(c.name, c.arguments) for c in calls] == [("add", {"a": 1, "b": 2})]
    cut = ToolCallStream()
    assert cut.feed('<tool_call>\n{"name": "add"') == []
    assert [kind for kind, _ in cut.finish()] == ["invalid"]


# ------------------------------------------------- one splitter for streams and whole texts


_PIECES = st.sampled_from(
    [
        "Sure.",
        " ",
        "\n",
        "Let me check ",
        "a < b and <tool",  # text that starts like the tag but is not one
        format_call("add", {"a": 1, "b": 2}),
        format_call("add", {"a": "x</tool_call>y", "b": 2}),  # the end tag inside a string
        '<tool_call>\n{"name": "add", "arguments": {"a": 1',  # cut off mid-arguments
        "<tool_ca",  # cut off mid-tag
    ]
)


def _split(text: str, cuts: list[int]) -> list[tuple[str, str, object]]:
    stream = ToolCallStream(ids=[f"c{i}" for i in range(20)])
    items, last = [], 0
    for cut in [*sorted({min(c, len(text)) for c in cuts}), len(text)]:
        items += stream.feed(text[last:cut])
        last = cut
    items += stream.finish()
    text_out = "".join(i for k, i in items if k == "text")
    calls = [(k, i.name, i.arguments) for k, i in items if k != "text"]
    return [("text", text_out, None), *calls]


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=6), st.lists(st.integers(0, 400), max_size=8))
def test_streamed_and_whole_text_give_identical_text_and_calls(pieces, cuts) -> None:
    text = "".join(pieces)
    whole = parse_tool_calls(text, ids=[f"c{i}" for i in range(20)])
    expected = [("text", whole.content, None)]
    streamed = _split(text, cuts)
    assert streamed[0] == expected[0]
    names = sorted((c.name, json.dumps(c.arguments)) for c in whole.tool_calls)
    got = sorted((n, json.dumps(a)) for k, n, a in streamed[1:] if k == "call")
    assert got == names
    assert TOOL_CALL_BEGIN not in whole.content  # no markup in the text, ever
    if pieces[-1:] == ["<tool_ca"] and pieces.count("<tool_ca") == 1:  # stopped inside a tag
        assert not whole.content.endswith("<tool_ca")


def test_an_end_tag_inside_an_argument_stays_in_the_argument() -> None:
    reply = parse_tool_calls(format_call("add", {"a": "x</tool_call>y", "b": 2}) + " ok")
    assert [c.arguments for c in reply.tool_calls] == [{"a": "x</tool_call>y", "b": 2}]
    assert reply.content == "ok"


def test_a_cut_tag_or_call_never_reaches_the_text() -> None:
    assert parse_tool_calls("Sure <tool_ca").content == "Sure"
    cut = parse_tool_calls('Sure\n<tool_call>\n{"name": "add", "arguments": {"a": 1')
    assert cut.content == "Sure" and not cut.tool_calls
    (partial,) = cut.invalid_tool_calls
    assert partial.name == "add" and partial.arguments.endswith('{"a": 1')


def test_without_parallel_calls_the_grammar_allows_at_most_one() -> None:
    from shared_core.structured import RowMatchers
    from shared_core.vocab import build_vocab_tables, end_token_ids

    tokenizer = build_tiny_tokenizer()
    tables = build_vocab_tables(tokenizer, end_token_ids(tokenizer))
    call = format_call("add", {"a": 1, "b": 2})

    def accepts(request, text: str) -> bool:
        m = RowMatchers(
            request.constraint, tokenizer, tables.end_ids, 1, tables.never_generate, tables.is_end
        )
        for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
            m.advance(0, token)
        return m.error(0) is None

    single = tool_request([ADD], "auto", parallel_tool_calls=False)
    many = tool_request([ADD], "auto")
    assert accepts(single, f"ok {call} done") and accepts(many, f"ok {call} done")
    assert accepts(many, f"{call}\n{call}")
    assert not accepts(single, f"{call}\n{call}")
    with pytest.raises(TypeError, match="parallel_tool_calls"):
        tool_request([ADD], "auto", parallel_tool_calls="no")


def test_adapters_pass_parallel_tool_calls_to_the_grammar() -> None:
    from shared_core.adapter_support import pop_structure

    tools = [ADD]
    _, single = pop_structure({"tools": tools, "tool_choice": "auto", "parallel_tool_calls": False})
    _, many = pop_structure({"tools": tools, "tool_choice": "auto"})
    call = format_call("add", {"a": 1, "b": 2})
    assert grammar_accepts(single, f"ok {call} done") and grammar_accepts(many, f"ok {call}")
    assert grammar_accepts(many, f"{call}\n{call}")
    assert not grammar_accepts(single, f"{call}\n{call}")
