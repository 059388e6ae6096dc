"""Grammar constraints (shared_core.structured) on the tiny tokenizer, without a model."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from shared_core.structured import (
    ConstraintError,
    RowMatchers,
    as_constraint,
    json_schema_constraint,
    lark_constraint,
    limit_schema,
    pack_bits,
    require_llguidance,
    unpack_bitmask,
)
from shared_core.testing import build_tiny_tokenizer
from shared_core.vocab import build_vocab_tables, end_token_ids

SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "string", "maxLength": 3}},
    "required": ["a", "b"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def tables(tokenizer):
    return build_vocab_tables(tokenizer, end_token_ids(tokenizer))


def _matchers(tokenizer, tables, constraint, rows=1):
    return RowMatchers(
        constraint, tokenizer, tables.end_ids, rows, tables.never_generate, tables.is_end
    )


def test_equal_schemas_give_equal_hashable_constraints() -> None:
    a = json_schema_constraint(SCHEMA)
    b = json_schema_constraint(json.loads(json.dumps(SCHEMA, sort_keys=True)))
    assert a == b and hash(a) == hash(b)
    assert a != json_schema_constraint({"type": "object"})
    assert as_constraint(True) == json_schema_constraint({"type": "object"})
    assert as_constraint(None) is None and as_constraint(False) is None
    assert as_constraint(json.dumps(SCHEMA)) == a


@pytest.mark.parametrize(
    ("schema", "feature"),
    [
        ({"not": {"type": "string"}}, "not"),
        ({"type": "string", "pattern": "(?=a)"}, "look-around"),
        ({"$ref": "#/definitions/missing"}, "missing"),
        ({"type": "whatever"}, "whatever"),
    ],
)
def test_unsupported_schema_is_a_value_error_naming_the_feature(schema, feature) -> None:
    with pytest.raises(ValueError, match=feature):
        json_schema_constraint(schema)


def test_bad_schema_types() -> None:
    with pytest.raises(TypeError, match="json_schema"):
        as_constraint(42)
    with pytest.raises(ValueError, match="not valid JSON"):
        as_constraint("{not json")


def test_missing_llguidance_is_an_import_error_with_the_install_command(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "llguidance", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[structured\]"'):
        require_llguidance()


def test_pack_and_unpack_round_trip() -> None:
    flags = torch.rand(1000) < 0.3
    words = pack_bits(flags)
    assert words.shape == (32,)
    back = unpack_bitmask(words[None, :], 1000, "cpu")
    assert back.shape == (1, 1000) and torch.equal(back[0], flags)


def test_mask_has_the_tokenizer_width_and_never_allows_special_tokens(tokenizer, tables) -> None:
    m = _matchers(tokenizer, tables, as_constraint(True), rows=2)
    allowed = m.allowed([0, 1], "cpu")
    assert allowed.shape == (2, len(tokenizer))
    assert not (allowed & tables.never_generate).any()
    # an object must open first: no end token, nothing but "{"-like tokens
    assert not (allowed & tables.is_end).any()
    opening = {tokenizer.decode([i]) for i in allowed[0].nonzero().flatten().tolist()}
    assert opening and all(text.startswith("{") for text in opening)


def test_matcher_completes_and_then_only_allows_ends(tokenizer, tables) -> None:
    m = _matchers(tokenizer, tables, json_schema_constraint(SCHEMA))
    ids = tokenizer('{"a":12,"b":"xy"}', add_special_tokens=False)["input_ids"]
    done = [m.advance(0, i) for i in ids]
    assert done[-1] and not any(done[:-1])
    assert m.error(0) is None


def _accepts(tokenizer, tables, constraint, text: str) -> bool:
    m = _matchers(tokenizer, tables, constraint)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    done = [m.advance(0, i) for i in ids]
    return m.error(0) is None and done[-1]


def test_json_is_compact_unless_the_schema_asks_for_flexible_whitespace(tokenizer, tables):
    compact = json_schema_constraint(SCHEMA)
    flexible = json_schema_constraint({**SCHEMA, "x-guidance": {"whitespace_flexible": True}})
    spaced = '{"a": 12,\n  "b": "xy"}'
    assert _accepts(tokenizer, tables, compact, '{"a":12,"b":"xy"}')
    assert not _accepts(tokenizer, tables, compact, spaced)
    assert _accepts(tokenizer, tables, flexible, spaced)
    assert not _accepts(tokenizer, tables, flexible, '{"a":12,\n' + " " * 40 + '"b":"xy"}')


def test_every_end_id_of_the_pair_is_allowed_when_complete(tokenizer) -> None:
    pad = tokenizer.pad_token_id  # e.g. a second end id from a generation config
    tables = build_vocab_tables(tokenizer, end_token_ids(tokenizer, [pad]))
    assert len(tables.end_ids) == 2
    m = _matchers(tokenizer, tables, json_schema_constraint({"type": "integer"}))
    for i in tokenizer("7", add_special_tokens=False)["input_ids"]:
        m.advance(0, i)
    allowed = m.allowed([0], "cpu")[0]
    assert all(bool(allowed[e]) for e in tables.end_ids)


def test_a_row_with_no_allowed_token_gets_an_error_and_a_full_mask(tokenizer, tables) -> None:
    # The grammar needs a turn-start token, which is never generated.
    needs_special = lark_constraint('start: <|im_start|> "x"', label="test")
    m = _matchers(tokenizer, tables, needs_special, rows=1)
    mask = m.allowed([0], "cpu")
    assert "allows no token" in (m.error(0) or "")
    assert bool(mask[0].all())  # the failing row keeps finite logits


def test_failing_row_leaves_the_others_constrained(tokenizer, tables) -> None:
    m = _matchers(tokenizer, tables, json_schema_constraint(SCHEMA), rows=2)
    m.errors[0] = "failed"
    mask = m.allowed([0, 1], "cpu")
    assert bool(mask[0].all()) and not bool(mask[1].all())


def test_a_rejected_token_records_an_error(tokenizer, tables) -> None:
    m = _matchers(tokenizer, tables, json_schema_constraint(SCHEMA))
    bad = tokenizer("x", add_special_tokens=False)["input_ids"][0]
    assert m.advance(0, bad) is False
    assert "rejected token" in (m.error(0) or "")
    assert issubclass(ConstraintError, ValueError)


def test_limit_schema_bounds_strings_and_closes_objects() -> None:
    schema = {
        "type": "object",
        "properties": {
            "properties": {"type": "string"},  # a property named like the keyword
            "maybe": {"type": ["string", "null"]},
            "fixed": {"type": "string", "enum": ["x"]},
            "list": {"type": "array", "items": {"type": "object", "properties": {}}},
            "open": {"type": "object", "additionalProperties": True},
        },
        "$defs": {"D": {"type": "string", "maxLength": 2}},
    }
    out = limit_schema(schema, max_string_length=5, close_objects=True)
    props = out["properties"]
    assert props["properties"] == {"type": "string", "maxLength": 5}
    assert props["maybe"]["maxLength"] == 5 and "maxLength" not in props["fixed"]
    assert props["list"]["items"]["additionalProperties"] is False
    assert props["open"]["additionalProperties"] is True
    assert out["additionalProperties"] is False and out["$defs"]["D"]["maxLength"] == 2
    assert "additionalProperties" not in schema  # the input is not modified
    assert limit_schema(True, close_objects=True) == {
        "type": "object",
        "additionalProperties": False,
    }
    with pytest.raises(ValueError, match="max_string_length"):
        limit_schema({}, max_string_length=-1)


def test_unbounded_integers_get_the_safe_json_range() -> None:
    limited = limit_schema(
        {
            "type": "object",
            "properties": {
                "free": {"type": "integer"},
                "bounded": {"type": "integer", "minimum": 0},
                "choice": {"type": "integer", "enum": [1, 2]},
            },
        }
    )
    props = limited["properties"]
    assert (props["free"]["minimum"], props["free"]["maximum"]) == (-(2**53 - 1), 2**53 - 1)
    assert props["bounded"] == {"type": "integer", "minimum": 0}
    assert props["choice"] == {"type": "integer", "enum": [1, 2]}


def test_rows_near_their_budget_are_steered_to_close_the_json(tokenizer, tables) -> None:
    from shared_core.structured import closing_tokens

    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    m = _matchers(tokenizer, tables, json_schema_constraint(schema), rows=2)
    for row in (0, 1):
        for token in tokenizer('{"a":"xy', add_special_tokens=False)["input_ids"]:
            assert m.advance(row, token) is False
    free, steered = m.allowed([0, 1], "cpu", closing=[1])
    tiers = closing_tokens(tokenizer, m.size)
    assert free.sum() > 100  # inside a string: nearly anything
    assert steered.any() and not (steered & ~tiers[0]).any()  # only tokens starting with '"'
    quote = tokenizer.convert_tokens_to_ids('"')
    assert m.advance(1, quote) is False
    after = m.allowed([1], "cpu", closing=[1])[0]
    assert after.any() and not (after & ~(tiers[1] | tables.is_end)).any()  # then '}'
