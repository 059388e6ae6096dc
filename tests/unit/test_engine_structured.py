"""Grammar-constrained decoding through the engine on the tiny pair (json_schema=...)."""

from __future__ import annotations

import json
import threading

import jsonschema
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared_core import BacoEngine, ModelPair
from shared_core.engine import DecodeOptions
from shared_core.structured import ConstraintError, lark_constraint
from shared_core.testing import (
    build_tiny_model,
    build_tiny_tokenizer,
    inject_constraint_failure,
)
from shared_core.tools import normalise_tools, parse_tool_calls, tool_constraint

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "size": {"type": "integer", "minimum": 0, "maximum": 99},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
    },
    "required": ["name", "size"],
    "additionalProperties": False,
}
PROMPT = "Describe a pet as JSON."


def _valid(text: str, schema: dict) -> dict:
    value = json.loads(text)
    jsonschema.validate(value, schema)
    return value


@pytest.mark.parametrize("router", ["p-punc", "rand", "base", "aligned"])
def test_constrained_samples_parse_and_validate(tiny_engine, router) -> None:
    out = tiny_engine.generate(
        PROMPT, json_schema=SCHEMA, n=4, max_new_tokens=120, seed=1, router=router
    )
    for sample in out[0]:
        assert sample.finish_reason == "stop", sample.text
        _valid(sample.text, SCHEMA)


def test_json_schema_true_is_any_object(tiny_engine) -> None:
    out = tiny_engine.generate(PROMPT, json_schema=True, n=3, max_new_tokens=60, seed=0)
    assert all(isinstance(json.loads(g.text), dict) for g in out[0])


def test_mask_reaches_both_models_before_the_router(tiny_engine, monkeypatch) -> None:
    from shared_core import step as step_module

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = step_module.route_rows

    def spy(rules, rows, base_logits, aligned_logits, *args, **kwargs):
        seen.append((base_logits.isfinite(), aligned_logits.isfinite()))
        return original(rules, rows, base_logits, aligned_logits, *args, **kwargs)

    monkeypatch.setattr(step_module, "route_rows", spy)
    out = tiny_engine.generate(
        PROMPT, json_schema=SCHEMA, n=2, max_new_tokens=80, seed=3, router="rand"
    )
    assert seen
    for base_ok, aligned_ok in seen:
        assert torch.equal(base_ok, aligned_ok)  # the same allowed set for both models
    first_base, _ = seen[0]
    opening = {tiny_engine.tokenizer.decode([i]) for i in first_base[0].nonzero().flatten()}
    assert all(text.startswith("{") for text in opening)
    assert any("base" in g.sources and "aligned" in g.sources for g in out[0])


def test_stop_strings_are_suspended_while_constrained(tiny_engine) -> None:
    out = tiny_engine.generate(
        PROMPT, json_schema=SCHEMA, n=2, max_new_tokens=120, seed=2, stop=['"', ":"]
    )
    for sample in out[0]:
        _valid(sample.text, SCHEMA)


def test_unsupported_schema_fails_before_model_work(tiny_engine, monkeypatch) -> None:
    def no_decode(*args, **kwargs):
        raise AssertionError("the decode must not start")

    monkeypatch.setattr(tiny_engine.scheduler, "submit", no_decode)
    with pytest.raises(ValueError, match="not"):
        tiny_engine.generate(PROMPT, json_schema={"not": {"type": "string"}})
    with pytest.raises(ValueError, match="look-around"):
        tiny_engine.stream(PROMPT, json_schema={"type": "string", "pattern": "(?!x)"})


def test_grammar_rows_of_different_schemas_share_a_batch_with_free_rows(tiny_engine) -> None:
    """Concurrent requests with two schemas and none decode in one batch (each row follows its
    own grammar or none), and a seeded request gets the samples it gets alone."""
    other = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,  # else extra keys with unbounded strings may follow
    }
    engine = BacoEngine(tiny_engine.pair)
    results: dict[int, list] = {}

    def call(i: int, schema: dict | None) -> None:
        results[i] = engine.generate(PROMPT, json_schema=schema, n=2, max_new_tokens=80, seed=i)[0]

    threads = [
        threading.Thread(target=call, args=(i, schema))
        for i, schema in enumerate([SCHEMA, other, SCHEMA, None, other])
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, schema in enumerate([SCHEMA, other, SCHEMA, None, other]):
        for sample in results[i]:
            if schema is not None:
                _valid(sample.text, schema)
    assert engine.scheduler.peak_rows > 2  # requests shared steps
    # the same schema and seed alone gives the same samples as inside a merged batch
    alone = engine.generate(PROMPT, json_schema=SCHEMA, n=2, max_new_tokens=80, seed=2)
    assert [g.token_ids for g in alone[0]] == [g.token_ids for g in results[2]]


def test_padded_vocabulary_mask_has_the_tokenizer_width() -> None:
    tokenizer = build_tiny_tokenizer()
    size = len(tokenizer)
    base, aligned = build_tiny_model(size + 37, 1), build_tiny_model(size + 37, 2)
    with torch.no_grad():  # the padded rows would win every draw if the mask missed them
        for model in (base, aligned):
            model.lm_head.weight[size:] = model.lm_head.weight.abs().max() * 100
    engine = BacoEngine(ModelPair(base, aligned, tokenizer))
    out = engine.generate(PROMPT, json_schema=SCHEMA, n=2, max_new_tokens=120, seed=0)
    for sample in out[0]:
        assert all(t < size for t in sample.token_ids)
        _valid(sample.text, SCHEMA)


def test_lazy_aligned_and_speed_options_stay_valid(tiny_pair) -> None:
    lazy = BacoEngine(tiny_pair, options=DecodeOptions(lazy_aligned=True))
    one = lazy.generate(PROMPT, json_schema=SCHEMA, max_new_tokens=120, seed=4, router="p")
    _valid(one[0][0].text, SCHEMA)
    eager = BacoEngine(
        tiny_pair, options=DecodeOptions(share_prefill=False, compact_finished=False)
    )
    out = eager.generate([PROMPT, "Another pet."], json_schema=SCHEMA, n=3, max_new_tokens=120)
    for row in out:
        for sample in row:
            _valid(sample.text, SCHEMA)


def test_stream_deltas_add_up_to_valid_json(tiny_engine) -> None:
    texts: dict[int, str] = {}
    finals = {}
    for event in tiny_engine.stream(PROMPT, json_schema=SCHEMA, n=2, max_new_tokens=120, seed=5):
        texts[event.row] = texts.get(event.row, "") + event.text_delta
        if event.generation is not None:
            finals[event.row] = event.generation
    assert set(finals) == {0, 1}
    for row, generation in finals.items():
        assert texts[row] == generation.text
        _valid(generation.text, SCHEMA)


def test_a_failing_row_is_reported_and_the_others_finish(tiny_engine, monkeypatch) -> None:
    inject_constraint_failure(monkeypatch, row=0)  # prompt 0, sample 0
    prompts = [PROMPT, "Another pet."]
    out = tiny_engine.generate(
        prompts, json_schema=SCHEMA, n=2, max_new_tokens=120, seed=6, return_exceptions=True
    )
    assert isinstance(out[0], ConstraintError)
    assert "prompt 0, sample 0" in str(out[0]) and "injected failure" in str(out[0])
    good = out[0].generations[1]  # the failing prompt's other sample still finished
    _valid(good.text, SCHEMA)
    for sample in out[1]:
        _valid(sample.text, SCHEMA)
    with pytest.raises(ConstraintError, match="injected failure"):
        tiny_engine.generate(prompts, json_schema=SCHEMA, max_new_tokens=120, seed=6)
    finals = [
        e.generation
        for e in tiny_engine.stream(prompts, json_schema=SCHEMA, max_new_tokens=120, seed=6)
        if e.generation is not None
    ]
    reasons = sorted((g.prompt_index, g.finish_reason) for g in finals)
    assert reasons == [(0, "error"), (1, "stop")]


def test_a_grammar_that_allows_nothing_is_a_constraint_error(tiny_engine) -> None:
    needs_special = lark_constraint('start: <|im_start|> "x"', label="test")
    with pytest.raises(ConstraintError, match="allows no token"):
        tiny_engine.generate(PROMPT, json_schema=needs_special, max_new_tokens=8)


def test_required_tool_call_always_parses(tiny_engine) -> None:
    tools = normalise_tools(
        [
            {
                "name": "pick",
                "parameters": {
                    "type": "object",
                    "properties": {"k": {"type": "integer", "minimum": 0, "maximum": 9}},
                    "required": ["k"],
                    "additionalProperties": False,
                },
            },
            {"name": "now", "parameters": {"type": "object", "additionalProperties": False}},
        ]
    )
    out = tiny_engine.generate(
        PROMPT, json_schema=tool_constraint(tools, "required"), n=4, max_new_tokens=80, seed=0
    )
    for sample in out[0]:
        reply = parse_tool_calls(sample.text)
        assert len(reply.tool_calls) == 1 and not reply.invalid_tool_calls, sample.text
        assert reply.tool_calls[0].name in ("pick", "now")


# ---------------------------------------------------------------------- property test


def _leaf() -> st.SearchStrategy[dict]:
    return st.one_of(
        st.just({"type": "boolean"}),
        st.integers(-50, 50).map(lambda lo: {"type": "integer", "minimum": lo, "maximum": lo + 9}),
        st.integers(0, 5).map(lambda n: {"type": "string", "maxLength": n}),
        st.lists(st.text("abc", min_size=1, max_size=3), min_size=1, max_size=3, unique=True).map(
            lambda values: {"enum": values}
        ),
        st.just({"type": "null"}),
    )


def _objects(children: st.SearchStrategy[dict]) -> st.SearchStrategy[dict]:
    def build(props: dict[str, dict], data: st.DataObject) -> dict:
        flags = data.draw(st.lists(st.booleans(), min_size=len(props), max_size=len(props)))
        required = [key for key, flag in zip(sorted(props), flags, strict=True) if flag]
        return {
            "type": "object",
            "properties": props,
            "required": required,
            "additionalProperties": False,
        }

    return st.builds(
        build,
        st.dictionaries(st.sampled_from(["a", "b", "cd", "key"]), children, max_size=3),
        st.data(),
    )


SCHEMAS = st.recursive(
    _leaf(),
    lambda children: st.one_of(
        _objects(children),
        children.map(lambda item: {"type": "array", "items": item, "maxItems": 2}),
    ),
    max_leaves=4,
)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(schema=SCHEMAS, seed=st.integers(0, 2**16), router=st.sampled_from(["p-punc", "rand"]))
def test_property_every_constrained_sample_validates(tiny_engine, schema, seed, router) -> None:
    out = tiny_engine.generate(
        PROMPT, json_schema=schema, n=2, max_new_tokens=200, seed=seed, router=router
    )
    for sample in out[0]:
        assert sample.finish_reason == "stop", (schema, sample.text)
        _valid(sample.text, schema)


def test_strings_never_hold_raw_control_characters(tiny_engine) -> None:
    schema = {
        "type": "object",
        "properties": {"s": {"type": "string", "maxLength": 12}},
        "required": ["s"],
        "additionalProperties": False,
    }
    out = tiny_engine.generate(PROMPT, json_schema=schema, n=16, max_new_tokens=80, seed=11)
    for sample in out[0]:
        raw = sample.text.split('"s"', 1)[1]
        assert not any(ord(c) < 0x20 and c not in "\n\t\r " for c in raw), sample.text
        json.loads(sample.text, strict=True)  # escapes, if any, are valid JSON escapes


def test_params_normalise_the_schema() -> None:
    from shared_core.params import GenerationParams

    assert GenerationParams(json_schema=False).constraint is None
    params = GenerationParams(json_schema=SCHEMA)
    assert params.constraint is not None and params.constraint.schema == SCHEMA
    assert params.with_overrides(n=2).constraint == params.constraint


def test_joint_forward_of_a_one_weights_pair_stays_valid(tiny_pair_paths, tmp_path, monkeypatch):
    pytest.importorskip("peft", reason="peft is in the dev extra")
    from shared_core import model_state as engine_module
    from shared_core.testing import save_tiny_adapter

    base_path, _ = tiny_pair_paths
    adapter = save_tiny_adapter(
        base_path, tmp_path / "adapter", target_modules=["q_proj", "v_proj"]
    )
    pair = ModelPair.from_pretrained(base_path, aligned_adapter=adapter)
    joints = []
    original = engine_module.ModelRows.prefill.__func__

    def spy(cls, *args, **kwargs):
        if kwargs.get("adapters") is not None:  # both views in one mixed-adapter state
            joints.append(kwargs["adapters"])
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(engine_module.ModelRows, "prefill", classmethod(spy))
    out = BacoEngine(pair).generate(
        PROMPT, json_schema=SCHEMA, n=3, max_new_tokens=120, seed=0, router="rand"
    )
    assert joints  # both views ran as one forward per step
    for sample in out[0]:
        _valid(sample.text, SCHEMA)
