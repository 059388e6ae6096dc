"""Property tests: router name parsing and message normalisation (hypothesis)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared_core.prompts import ROLE_ALIASES, normalise_messages
from shared_core.routers import ROUTER_NAMES, canonical_router_name


@given(
    name=st.sampled_from(ROUTER_NAMES),
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


@given(st.text(min_size=1, max_size=12))
def test_unknown_names_are_rejected_with_the_list(text):
    key = text.strip().lower().replace("_", "-")
    if key in ROUTER_NAMES:
        assert canonical_router_name(text) == key
    else:
        with pytest.raises(ValueError, match="valid routers"):
            canonical_router_name(text)


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
