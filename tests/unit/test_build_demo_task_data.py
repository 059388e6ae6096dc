"""The demo adapter's task-format training data: calls grounded in the request, rendered as
the engine renders tool prompts, and rule filters that drop echoes."""

from __future__ import annotations

import json
import random
import re

import pytest

from shared_core.tools import parse_tool_calls, tool_request


@pytest.fixture(scope="module")
def build(import_script):
    return import_script("build_demo_task_data")


def _question(messages):
    return next(m["content"] for m in messages if m["role"] == "user")


def test_tool_calls_take_their_arguments_from_the_request(build):
    rng = random.Random(0)
    examples = [e for _ in range(300) for e in build.tool_episode(rng)]
    calls = [e for e in examples if e["kind"] == "tool"]
    assert len({e["tool"] for e in calls}) >= 12  # many tools
    for example in calls:
        reply = parse_tool_calls(example["response"])
        assert len(reply.tool_calls) == 1 and not reply.invalid_tool_calls
        call = reply.tool_calls[0]
        assert call.name == example["tool"]
        question = example["messages"][-1]["content"].split("\n\n")[-1].lower()
        for value in call.arguments.values():
            if call.name == "calculator":
                numbers = re.findall(r"\d+", value)
                assert numbers and all(n in question for n in numbers), (value, question)
            elif call.name in ("web_search", "search_documents"):
                assert set(value.lower().split()) & set(re.findall(r"[a-z]+", question))
            elif isinstance(value, str) and value not in ("celsius", "fahrenheit"):
                assert value.lower() in question, (value, question)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                assert str(value) in question, (value, question)


def test_tool_prompts_are_what_the_engine_sends(build):
    """A training prompt is exactly ``tool_request(...).messages(...)`` of its conversation:
    the text the adapters hand to the engine for the same tools, choice and question."""
    rng = random.Random(1)
    checked = 0
    for _ in range(60):
        example = build.tool_episode(rng)[0]
        messages = example["messages"]
        text = messages[0]["content"]
        names = re.findall(r'\{"name":"([a-z_]+)","description"', text)
        choice = "required" if "You must call one tool." in text else "auto"
        specs = [build.tool_spec(n) for n in names]
        history = [{"role": "user", "content": _question(messages).split("\n\n")[-1]}]
        if messages[0]["role"] == "system" and not text.startswith("Tools (JSON schemas)"):
            history.insert(0, {"role": "system", "content": text.split("\n\nTools")[0]})
        expected = list(tool_request(specs, choice).messages(history))
        assert messages == expected
        checked += 1
    assert checked == 60


def test_rule_filters_drop_echoes_and_off_topic_lines(build):
    question = "How do I train a puppy?"
    items = build.parse_items(
        " puppy crate training\n- Question: how do I train a puppy\n- house training a puppy"
        "\n- How do I train a puppy?\n- the weather today\n- puppy crate training\n\nQuestion"
    )
    assert build.filter_queries(question, items) == [
        "puppy crate training",
        "house training a puppy",
    ]
    assert build.filter_list_items("ideas for a picnic", ["Topic: a picnic", "kites", "kites"]) == [
        "kites"
    ]


def test_check_disjoint_refuses_an_evaluation_question(build):
    held = json.loads((build.REPO_ROOT / "shared_core/assets/tasks/rewrite.json").read_text())
    with pytest.raises(SystemExit, match="overlaps"):
        build.check_disjoint([held["prompts"][0]["question"]])


def test_wrong_calls_are_parseable_and_all_differ_from_the_right_one(build):
    rng = random.Random(1)
    calls = [e for _ in range(300) for e in build.tool_episode(rng) if e["kind"] == "tool"]
    kinds_seen = set()
    for example in calls[:80]:
        right = parse_tool_calls(example["response"]).tool_calls[0]
        same_tool = [e for e in calls if e["tool"] == example["tool"]]
        for text in build.wrong_calls(example, same_tool, rng):
            wrong = parse_tool_calls(text).tool_calls[0]
            assert (wrong.name, wrong.arguments) != (right.name, right.arguments)
            if wrong.name != right.name:
                kinds_seen.add("web search")
                assert wrong.name == "web_search"
                assert wrong.arguments == {"query": _question(example["messages"])}
            elif all(v == "" for v in wrong.arguments.values()):
                kinds_seen.add("empty")
            elif _question(example["messages"]) in wrong.arguments.values():
                kinds_seen.add("pasted")
            else:
                kinds_seen.add("other request")
    assert kinds_seen == {"web search", "empty", "pasted", "other request"}
