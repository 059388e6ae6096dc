"""The judge-free task evaluation: task files, scoring rules, the run loop on a tiny pair."""

from __future__ import annotations

import importlib.util
import json

import pytest

from shared_core.eval import tasks as T
from shared_core.tools import format_call


def test_task_files_have_enough_held_out_prompts():
    tools, rewrite, lists = (T.load_task(n) for n in T.TASK_NAMES)
    assert len(tools["prompts"]) >= 40 and len(rewrite["prompts"]) >= 40
    assert len(lists["prompts"]) >= 40
    assert len(rewrite["corpus"]) >= 10
    assert all(len(rows) >= 8 for rows in rewrite["corpus"].values())
    assert {p["topic"] for p in rewrite["prompts"]} == set(rewrite["corpus"])
    for data in (tools, rewrite, lists):
        ids = [p["id"] for p in data["prompts"]]
        assert len(ids) == len(set(ids))
    for item in tools["prompts"]:
        if item["tool"] == "calculator":
            assert isinstance(item["expect"]["value"], int)


def test_training_data_never_contains_an_evaluation_prompt(import_script):
    build = import_script("build_demo_task_data")
    training = [q.lower() for q in build.rewrite_questions()]
    training += [f"{k} for {s}".lower() for k, s in build.LIST_SUBJECTS]
    held = [p["question"].lower() for p in T.load_task("rewrite")["prompts"]]
    held += [p["question"].lower() for p in T.load_task("tools")["prompts"]]
    held += [p["prompt"].lower() for p in T.load_task("lists")["prompts"]]
    for h in held:
        assert not any(h in q or q in h for q in training), h
    build.check_disjoint(training)  # the builder's own guard passes too
    eval_cities = {
        p["expect"]["city"] for p in T.load_task("tools")["prompts"] if "city" in p["expect"]
    }
    assert not eval_cities & set(build.CITIES)


@pytest.mark.parametrize(
    ("expr", "value"),
    [("37 * 91", 3367), ("(15 + 27) * 8", 336), ("6480 / 24", 270), ("-3 + 4", 1), ("7x3", 21)],
)
def test_safe_arithmetic(expr, value):
    assert T.safe_arithmetic(expr) == value


@pytest.mark.parametrize("expr", ["", "__import__('os')", "2 ** 10", "abc", "1/0", "37 91"])
def test_safe_arithmetic_refuses(expr):
    assert T.safe_arithmetic(expr) is None


def _item(task, tool):
    return next(p for p in T.load_task(task)["prompts"] if p["tool"] == tool)


def test_score_tool_call():
    calc = _item("tools", "calculator")  # What is 37 times 91?
    good = T.score_tool_call(format_call("calculator", {"expression": "37*91"}), calc)
    assert (good["parsed"], good["right_tool"], good["right_args"]) == (1, 1, 1)
    empty = T.score_tool_call(format_call("calculator", {"expression": ""}), calc)
    assert (empty["parsed"], empty["right_tool"], empty["right_args"]) == (1, 1, 0)
    wrong = T.score_tool_call(format_call("web_search", {"query": "37 times 91"}), calc)
    assert (wrong["right_tool"], wrong["right_args"]) == (0, 0)
    assert T.score_tool_call("The answer is 3367.", calc)["parsed"] == 0
    assert T.score_tool_call('<tool_call>\n{"name": "calculator", ', calc)["parsed"] == 0
    search = _item("tools", "web_search")  # Sistine Chapel
    ok = T.score_tool_call(format_call("web_search", {"query": "Sistine Chapel ceiling"}), search)
    assert ok["right_args"] == 1
    off = T.score_tool_call(format_call("web_search", {"query": "weather in Rome"}), search)
    assert off["right_args"] == 0
    echo = format_call("web_search", {"query": "You must call one tool: Sistine Chapel arguments"})
    assert T.score_tool_call(echo, search)["right_args"] == 0
    weather = _item("tools", "get_weather")
    city = weather["expect"]["city"]
    assert T.score_tool_call(format_call("get_weather", {"city": city}), weather)["right_args"]
    assert not T.score_tool_call(format_call("get_weather", {"city": "Paris"}), weather)[
        "right_args"
    ]


def test_score_rewrite_counts_queries_and_topic_passages():
    data = T.load_task("rewrite")
    _, topics, index = T.corpus_index(data)
    item = next(p for p in data["prompts"] if p["topic"] == "aquarium")
    text = (
        "1. nitrogen cycle new fish tank\n2. how often partial water change aquarium\n"
        "3. aquarium filter bacteria\n4. aquarium filter bacteria"
    )
    s = T.score_rewrite(text, item, topics, index)
    assert s["lines"] == 4 and s["valid"] == 4 and s["distinct_queries"] == 3
    assert s["relevant"] and all(topics[i] == "aquarium" for i in s["relevant"])
    assert 0 < s["recall"] <= 1
    echo = (
        "query: You are a helpful assistant that generates multiple search queries based on "
        "a single input query. Generate 4 search queries"
    )
    bad = T.score_rewrite(echo, item, topics, index)
    assert bad["valid"] == 0 and bad["relevant"] == [] and bad["recall"] == 0
    assert T.score_rewrite(item["question"], item, topics, index)["valid"] == 0


def test_bm25_finds_the_topic():
    data = T.load_task("rewrite")
    _, topics, index = T.corpus_index(data)
    hits = index.search("sauerkraut salt brine jar", 3)
    assert hits and topics[hits[0]] == "fermentation"
    assert index.search("zzzz qqqq", 3) == []


def test_list_parsing_and_distinct_items():
    assert T.parse_list_items("1. apples\n2. pears\n3) plums") == ["apples", "pears", "plums"]
    assert T.parse_list_items("- a red hat\n* a blue hat") == ["a red hat", "a blue hat"]
    assert T.parse_list_items("apples, pears and plums") == ["apples", "pears", "plums"]
    assert T.parse_list_items("I like to eat fruit when it is ripe.") == []
    item = T.load_task("lists")["prompts"][0]
    samples = ["1. board games\n2. baking cookies\n3. Board games", "1. baking cookies\n2. puzzles"]
    s = T.score_list_prompt(samples, item)
    assert s["items_per_answer"] == 2.5
    assert s["list_share"] == 0.5
    assert s["distinct_items"] == 3  # board games, baking cookies, puzzles


def test_table_and_summary(tmp_path):
    folder = tmp_path / "tasks"
    folder.mkdir()
    calc = _item("tools", "calculator")
    rows = [
        {"setting": "aligned|T=1", "prompt_id": calc["id"], "base_shares": [None],
         "samples": [format_call("calculator", {"expression": "37 * 91"})]},
        {"setting": "base|T=1", "prompt_id": calc["id"], "base_shares": [1.0],
         "samples": ["37 times 91 is a lot"]},
    ]  # fmt: skip
    (folder / "tools.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = T.write_task_summary(folder)
    assert summary["tools"]["aligned|T=1"]["right_args"] == 1.0
    assert summary["tools"]["base|T=1"]["parsed"] == 0.0
    table = (folder / "summary.md").read_text()
    assert table.index("| aligned T=1 |") < table.index("| base T=1 |")


def test_run_tasks_on_the_tiny_pair(tmp_path):
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("needs transformers")
    from shared_core import BacoEngine, ModelPair
    from shared_core.eval.runner import build_settings
    from shared_core.testing import tiny_pair_folders

    base, aligned = tiny_pair_folders(context_window=2048)
    engine = BacoEngine(ModelPair.from_pretrained(base, aligned))
    settings = build_settings(["aligned", "p-punc"], grids={"p-punc": [0.3]},
                              aligned_temperatures=[1.0])  # fmt: skip
    folder = T.run_tasks(engine, settings, tmp_path, k={"lists": 2}, limit=2, log=lambda _: None)
    for name in T.TASK_NAMES:
        rows = [json.loads(x) for x in (folder / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) == 2 * len(settings)
    again = T.run_tasks(None, settings, tmp_path, limit=2, log=lambda _: None)  # all done
    assert again == folder
    summary = T.write_task_summary(folder)
    assert set(summary) == set(T.TASK_NAMES)
    assert summary["tools"]["p-punc|gamma=0.3|T=1"]["n_prompts"] == 2
