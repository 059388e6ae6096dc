"""Grammar-constrained decoding: JSON-schema output and tool calls, with llguidance.

A :class:`Constraint` is a compiled grammar plus a canonical key (two requests with the same
schema compare equal). During a decode every constrained
row owns an ``llguidance.LLMatcher``; :class:`RowMatchers` fills one packed bitmask of allowed
tokens for all rows on the host each step (the fill releases the GIL), unpacks it into one
boolean tensor on the model's device, and advances each row's matcher with its chosen token.
The engine applies that mask to both models' logits before the router, the candidates and
the guards, and ends a row as soon as its grammar is complete.

llguidance is an optional dependency (``pip install -e ".[structured]"``); importing this
module does not need it, asking for a constraint does.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch

#: How to install the optional grammar engine from a clone of this repository.
INSTALL_HINT = 'pip install -e ".[structured]" (or: bash scripts/install.sh structured)'

#: JSON whitespace of the flexible layout (a schema with ``"x-guidance":
#: {"whitespace_flexible": true}``): one space, or a newline and some indentation, bounded
#: so that a model cannot loop on whitespace forever.
WHITESPACE_PATTERN = r"(?: ?|\n[ \t]{0,16})"

#: The schema used for ``json_schema=True``: any JSON object.
ANY_OBJECT: dict[str, Any] = {"type": "object"}


class ConstraintError(ValueError):
    """A constrained sample could not continue (its grammar allowed no token, or failed)."""


def require_llguidance() -> Any:
    """The ``llguidance`` module, or an ``ImportError`` saying how to install it."""
    try:
        import llguidance
        import llguidance.hf
    except ImportError as exc:
        raise ImportError(
            "structured output and tool calling need the grammar engine llguidance; "
            f"install it with: {INSTALL_HINT}"
        ) from exc
    return llguidance


@dataclass(frozen=True, eq=False)
class Constraint:
    """A validated llguidance grammar for (part of) a response.

    ``key`` is canonical (equal schemas give equal keys) and is what equality and hashing use.
    ``protected`` is ``None`` when the whole response is constrained; for a grammar that only
    constrains segments (tool calls inside free text) it is the ``(begin, end)`` markers of
    such a segment, inside which stop strings are not matched.
    """

    key: str
    grammar: str = field(repr=False)
    label: str = "JSON schema"
    protected: tuple[str, str] | None = None
    schema: Any = field(default=None, repr=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Constraint) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    @property
    def whole_response(self) -> bool:
        """True when every token of the response is constrained."""
        return self.protected is None


def canonical_json(value: Any) -> str:
    """``value`` as canonical JSON text (sorted keys); ``TypeError`` if it is not JSON."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"json_schema must be JSON-serialisable: {exc}") from exc


def with_whitespace_limit(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` with llguidance's ``x-guidance`` whitespace options.

    Compact JSON by default (no whitespace between tokens, ``","`` and ``":"`` separators):
    every token a weak model spends on layout is a token not spent on the answer, and
    whitespace runs were seen to fill ``max_tokens``. A schema whose top level says
    ``"x-guidance": {"whitespace_flexible": true}`` gets a bounded flexible layout
    (:data:`WHITESPACE_PATTERN`); any other ``x-guidance`` keys it sets are kept.
    """
    out = dict(schema)
    options = dict(out.get("x-guidance") or {})
    if options.get("whitespace_flexible") is True:
        options.pop("whitespace_flexible")
        options.setdefault("whitespace_pattern", WHITESPACE_PATTERN)
    elif "whitespace_pattern" not in options:
        options["whitespace_flexible"] = False
        options.setdefault("item_separator", ",")
        options.setdefault("key_separator", ":")
    out["x-guidance"] = options
    return out


#: JSON-schema keywords whose value is a map of names to schemas, a list of schemas, a schema.
_SCHEMA_MAPS = frozenset({"properties", "$defs", "definitions", "patternProperties"})
_SCHEMA_LISTS = frozenset({"anyOf", "oneOf", "allOf", "prefixItems", "items"})
_SCHEMA_VALUES = frozenset(
    {"items", "additionalProperties", "not", "if", "then", "else", "contains"}
)


#: Largest integer JSON represents exactly (2**53 - 1); unbounded integers get this range.
MAX_SAFE_INTEGER = 2**53 - 1
_BOUNDED_NUMBER = frozenset(
    {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum", "const"}
)


def check_max_string_length(value: Any) -> None:
    """``max_string_length`` is ``None`` or a non-negative integer (``TypeError`` /
    ``ValueError`` naming it otherwise)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_string_length must be an integer or None, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"max_string_length must be >= 0, got {value}")


def limit_schema(
    schema: Mapping[str, Any] | bool,
    *,
    max_string_length: int | None = None,
    close_objects: bool = False,
) -> dict[str, Any]:
    """A copy of ``schema`` with bounds a sampler can always reach the end of.

    A grammar guarantees that every finished sample is valid, but a string with no
    ``maxLength`` can run until ``max_new_tokens`` cuts it (a weak or very random model
    rarely picks the closing quote). ``max_string_length`` gives every string schema without
    a ``maxLength`` (and no ``enum``/``const``/``format``) that bound; ``close_objects``
    sets ``additionalProperties: false`` on every object schema that does not say otherwise,
    so no undeclared keys (with unbounded values) are generated. Integers without bounds get
    JSON's safe range (±(2**53 − 1), at most 16 digits), so a digit run always ends.
    ``True`` is any object.
    """
    if schema is True:
        schema = ANY_OBJECT
    check_max_string_length(max_string_length)

    def visit(node: Any) -> Any:
        if not isinstance(node, Mapping):
            return node
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _SCHEMA_MAPS and isinstance(value, Mapping):
                out[key] = {name: visit(sub) for name, sub in value.items()}
            elif key in _SCHEMA_LISTS and isinstance(value, list):
                out[key] = [visit(sub) for sub in value]
            elif key in _SCHEMA_VALUES:
                out[key] = visit(value)
            else:
                out[key] = value
        types = out.get("type")
        types = types if isinstance(types, list) else [types]
        if (
            max_string_length is not None
            and "string" in types
            and not {"maxLength", "enum", "const", "format"} & set(out)
        ):
            out["maxLength"] = max_string_length
        if "integer" in types and not _BOUNDED_NUMBER & set(out):
            out["minimum"], out["maximum"] = -MAX_SAFE_INTEGER, MAX_SAFE_INTEGER
        is_object = "object" in types or "properties" in out
        if (
            close_objects
            and is_object
            and not {"additionalProperties", "patternProperties"} & set(out)
        ):
            out["additionalProperties"] = False
        return out

    return visit(dict(schema))


def _check_grammar(grammar: str, what: str) -> None:
    """Compile ``grammar`` without a tokenizer; ``ValueError`` naming the unsupported feature."""
    llguidance = require_llguidance()
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise ValueError(f"{what} cannot be used for constrained decoding: {messages[0]}")


@lru_cache(maxsize=256)
def _json_constraint(key: str) -> Constraint:
    llguidance = require_llguidance()
    schema = json.loads(key)
    grammar = llguidance.LLMatcher.grammar_from_json_schema(with_whitespace_limit(schema))
    _check_grammar(grammar, "the JSON schema")
    return Constraint(key=f"json:{key}", grammar=grammar, label="JSON schema", schema=schema)


def json_schema_constraint(schema: Mapping[str, Any] | bool | str) -> Constraint:
    """A whole-response constraint from a JSON schema (``True``: any JSON object).

    ``schema`` may also be the schema's JSON text. Raises ``ValueError`` naming the schema
    feature llguidance does not support (e.g. ``not``, look-around in ``pattern``), or
    ``ImportError`` when llguidance is missing, before any model work.
    """
    if schema is True:
        schema = ANY_OBJECT
    elif isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise ValueError(f"json_schema is not valid JSON text: {exc}") from exc
    if not isinstance(schema, Mapping):
        raise TypeError(
            "json_schema must be a JSON-schema dict, its JSON text or True (any JSON object), "
            f"got {type(schema).__name__}"
        )
    return _json_constraint(canonical_json(dict(schema)))


@lru_cache(maxsize=256)
def lark_constraint(
    lark: str, *, label: str, protected: tuple[str, str] | None = None
) -> Constraint:
    """A constraint from a Lark grammar in llguidance's dialect (validated, cached)."""
    llguidance = require_llguidance()
    grammar = llguidance.LLMatcher.grammar_from_lark(lark)
    _check_grammar(grammar, f"the {label} grammar")
    return Constraint(key=f"lark:{lark}", grammar=grammar, label=label, protected=protected)


def as_constraint(value: Any) -> Constraint | None:
    """Normalise the engine's ``json_schema`` option: ``None``/``False`` mean unconstrained."""
    if value is None or value is False:
        return None
    if isinstance(value, Constraint):
        return value
    return json_schema_constraint(value)


# ---------------------------------------------------------------------- tokenizer bridge

_TOKENIZERS: dict[tuple[int, int, tuple[int, ...]], Any] = {}
_TOKENIZERS_LOCK = threading.Lock()


def llg_tokenizer(tokenizer: Any, end_ids: Sequence[int], size: int) -> Any:
    """The llguidance tokenizer of a Hugging Face fast tokenizer, built once (about 1 s per
    100k tokens) per tokenizer. ``size`` is the engine's vocabulary width (``len(tokenizer)``)
    and every id in ``end_ids`` counts as end of sequence."""
    llguidance = require_llguidance()
    key = (id(tokenizer), size, tuple(end_ids))
    with _TOKENIZERS_LOCK:
        if key not in _TOKENIZERS:
            _TOKENIZERS[key] = (
                tokenizer,  # kept alive so its id is never reused for another tokenizer
                llguidance.hf.from_tokenizer(
                    tokenizer, n_vocab=size, eos_token=list(end_ids) or None
                ),
            )
        return _TOKENIZERS[key][1]


#: Characters that only close JSON (a string, an array, an object) or separate its items.
CLOSING_CHARS = frozenset('"]},')
_CLOSERS: dict[tuple[int, int], tuple[Any, torch.Tensor]] = {}


def closing_tokens(tokenizer: Any, size: int) -> torch.Tensor:
    """``[3, size]`` bool, the tiers of tokens that move JSON towards its end, made only of
    :data:`CLOSING_CHARS`: those starting with ``"`` (inside a string they end it; elsewhere
    the grammar allows them only to start a required key), those with a ``]`` or ``}``, and
    the rest (``,``). Computed once per tokenizer."""
    key = (id(tokenizer), size)
    with _TOKENIZERS_LOCK:
        if key not in _CLOSERS:
            texts = tokenizer.batch_decode([[i] for i in range(size)])
            tiers = torch.zeros((3, size), dtype=torch.bool)
            for i, text in enumerate(texts):
                if text and set(text) <= CLOSING_CHARS:
                    tier = 0 if text[0] == '"' else 1 if set(text) & set("]}") else 2
                    tiers[tier, i] = True
            _CLOSERS[key] = (tokenizer, tiers)
        return _CLOSERS[key][1]


def closing_window(budget: int) -> int:
    """The last tokens of a ``budget`` in which a JSON answer is steered to close: a quarter
    of it, between 4 and 32 tokens."""
    return max(4, min(32, budget // 4))


def pack_bits(flags: torch.Tensor) -> np.ndarray:
    """A boolean vector as llguidance's bitmask layout (int32 words, bit ``i % 32`` of word
    ``i // 32`` is token ``i``)."""
    size = flags.shape[-1]
    padded = np.zeros(-(-size // 32) * 32, dtype=np.uint8)
    padded[:size] = flags.detach().cpu().numpy().astype(np.uint8)
    return np.packbits(padded, bitorder="little").view(np.int32)


def unpack_bitmask(words: np.ndarray, size: int, device: torch.device | str) -> torch.Tensor:
    """Packed int32 bitmasks ``[rows, words]`` as a boolean tensor ``[rows, size]`` on ``device``.

    On a CPU the bits are unpacked with numpy; on an accelerator the packed words (32x
    smaller) are copied over and unpacked there.
    """
    device = torch.device(device)
    if device.type == "cpu":
        bits = np.unpackbits(words.view(np.uint8), axis=-1, bitorder="little")[:, :size]
        return torch.from_numpy(np.ascontiguousarray(bits)).view(torch.bool)  # 0/1: no copy
    packed = torch.from_numpy(words).to(device, non_blocking=False)
    shifts = torch.arange(32, device=device, dtype=torch.int32)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.view(packed.shape[0], -1)[:, :size].to(torch.bool)


class RowMatchers:
    """One llguidance matcher per row of a decode, and the per-step allowed-token masks.

    ``never`` marks tokens that must never be generated (special, reserved and turn-start
    tokens) and ``ends`` the end ids; both are removed from every mask, the end ids only while
    ``ban_ends`` (``min_new_tokens``). A row whose mask is then empty, or whose matcher fails,
    gets an error (:meth:`error`) and an all-allowed mask, so the batch keeps finite logits
    while the engine ends that row.
    """

    def __init__(
        self,
        constraint: Constraint,
        tokenizer: Any,
        end_ids: Sequence[int],
        rows: int,
        never: torch.Tensor,
        ends: torch.Tensor,
    ) -> None:
        llguidance = require_llguidance()
        self.constraint = constraint
        self.size = int(never.shape[-1])
        lltok = llg_tokenizer(tokenizer, end_ids, self.size)
        self.matchers = [
            llguidance.LLMatcher(lltok, constraint.grammar, log_level=0) for _ in range(rows)
        ]
        self.words = -(-self.size // 32)
        self._never = ~pack_bits(never)
        self._ends = ~pack_bits(ends)
        self._end_flags = ends.cpu()
        self._closers: np.ndarray | None = None
        self._tokenizer = tokenizer
        self._executor = _executor()
        self.errors: dict[int, str] = {}
        self.done: set[int] = set()
        for row, matcher in enumerate(self.matchers):
            if matcher.is_error():
                self.errors[row] = matcher.get_error()

    def allowed(
        self,
        row_ids: Sequence[int],
        device: torch.device | str,
        *,
        ban_ends: bool = False,
        closing: Collection[int] = (),
    ) -> torch.Tensor:
        """Allowed tokens ``[len(row_ids), size]`` (bool, on ``device``) for these rows.

        Rows in ``closing`` (near the end of their token budget) are steered to finish: an
        end token or the first tier of :func:`closing_tokens` the grammar allows (a quote,
        then a bracket, then a comma) is all that is allowed; where it allows none (a
        required key, a number's digits), the grammar's own choice stands. A schema that
        needs more tokens than are left can still be cut (``finish_reason="length"``)."""
        import llguidance.numpy as llnp

        words = np.full((len(row_ids), self.words), -1, dtype=np.int32)
        live = [
            (self.matchers[row], position)
            for position, row in enumerate(row_ids)
            if row not in self.errors and row not in self.done
        ]
        if live:
            llnp.fill_next_token_bitmask_par(self._executor, live, words)
            positions = [p for _, p in live]
            words[positions] &= self._never
            if ban_ends:
                words[positions] &= self._ends
            if closing:
                self._steer(words, [(row_ids[p], p) for p in positions], closing)
            empty = ~words[positions].any(axis=1)
            for (matcher, position), is_empty in zip(live, empty, strict=True):
                row = row_ids[position]
                if matcher.is_error():
                    self.errors[row] = f"the grammar engine failed: {matcher.get_error()}"
                elif is_empty:
                    self.errors[row] = (
                        "the grammar allows no token here (it needs a special token that is "
                        "never generated, or min_new_tokens forbids ending a complete value)"
                    )
                else:
                    continue
                words[position] = -1
        return unpack_bitmask(words, self.size, device)

    def _steer(
        self, words: np.ndarray, rows: Sequence[tuple[int, int]], closing: Collection[int]
    ) -> None:
        if self._closers is None:
            tiers = closing_tokens(self._tokenizer, self.size) | self._end_flags
            self._closers = np.stack([pack_bits(tier) for tier in tiers])
        for row, position in rows:
            if row in closing:
                for tier in self._closers:
                    steered = words[position] & tier
                    if steered.any():
                        words[position] = steered
                        break

    def advance(self, row: int, token_id: int) -> bool:
        """Feed a row's chosen token; True when its grammar is complete (only an end allowed).

        A rejected token records an error for the row (see :meth:`error`).
        """
        matcher = self.matchers[row]
        if not matcher.consume_token(int(token_id)):
            self.errors[row] = f"the grammar rejected token {token_id}: {matcher.get_error()}"
            return False
        if matcher.is_stopped():
            self.done.add(row)
            return True
        return False

    def error(self, row: int) -> str | None:
        """Why a row cannot continue, or ``None``."""
        return self.errors.get(row)

    def is_accepting(self, row: int) -> bool:
        """True when the row's text so far is a complete match (it may end here)."""
        return self.matchers[row].is_accepting()


_EXECUTOR: list[Any] = []


def _executor() -> Any:
    """One llguidance thread pool per process (mask fills of many rows run in parallel)."""
    with _TOKENIZERS_LOCK:
        if not _EXECUTOR:
            _EXECUTOR.append(require_llguidance().LLExecutor())
        return _EXECUTOR[0]
