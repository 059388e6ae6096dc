"""Property tests: router name parsing (against the names docs/design.md documents) and
message normalisation (hypothesis)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared_core.prompts import ROLE_ALIASES, normalise_messages
from shared_core.routers import ROUTER_NAMES, canonical_router_name

ROOT = Path(__file__).resolve().parents[2]


def documented_router_names() -> set[str]:
    """The router names of the table in docs/design.md, section 2 (the specification)."""
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    section = text[text.index("## 2. Routers") : text.index("\n## 3.")]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([a-z-]+)`", row.split("|")[1])}


def test_the_registry_serves_the_documented_routers():
    assert set(ROUTER_NAMES) == documented_router_names()


@given(
    name=st.sampled_from(sorted(documented_router_names())),
    upper=st.lists(st.booleans(), min_size=8, max_size=8),
    underscore=st.booleans(),
    pad=st.sampled_from(["", " ", "  "]),
)
def test_any_spelling_of_a_router_name_parses(name, upper, underscore, pad):
    flags = upper + [False] * 8
    spelled = "".join(c.upper() if u else c for c, u in zip(name, flags, strict=False))
    if underscore:
        spelled = spelled.replace("-", "_")
    assert canonical_router_name(pad + spelled + pad) == name


def _rejected(text: str) -> None:
    with pytest.raises(ValueError, match="valid routers") as info:
        canonical_router_name(text)
    assert all(name in str(info.value) for name in documented_router_names())


@given(
    name=st.sampled_from(sorted(documented_router_names())),
    at=st.integers(min_value=0, max_value=8),
    extra=st.sampled_from([*"0123456789!?.:/", "pp", "-", "x"]),
)
def test_a_name_with_something_added_is_rejected_with_the_list(name, at, extra):
    # No documented name has a digit, a symbol, a doubled letter, a doubled or trailing
    # separator, or an "x", so each of these edits gives an unknown name.
    at = min(at, len(name))
    _rejected(name[:at] + extra + name[at:])


@given(st.text(min_size=1, max_size=12))
def test_any_text_is_a_router_or_rejected_with_the_list(text):
    try:
        name = canonical_router_name(text)
    except ValueError:
        _rejected(text)
    else:  # accepted: it names a documented router, and spells it letter for letter
        assert name in documented_router_names()
        assert len(text.strip()) == len(name)
        assert canonical_router_name(name) == name


messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(sorted(ROLE_ALIASES)), "content": st.text(max_size=20)}
    ),
    min_size=1,
    max_size=8,
)


@given(messages)
def test_normalisation_never_drops_content_and_never_repeats_a_role(msgs):
    if not any(m["content"].strip() for m in msgs):
        with pytest.raises(ValueError):
            normalise_messages(msgs)
        return
    out = normalise_messages(msgs)
    assert all(a["role"] != b["role"] for a, b in itertools.pairwise(out))
    joined = "\n\n".join(m["content"] for m in out)
    position = 0
    for m in msgs:  # every original content appears, in order
        found = joined.find(m["content"], position)
        assert found >= 0
        position = found + len(m["content"])
    assert [m["role"] for m in out] == [
        role
        for i, role in enumerate(ROLE_ALIASES[m["role"]] for m in msgs)
        if i == 0 or role != ROLE_ALIASES[msgs[i - 1]["role"]]
    ]
