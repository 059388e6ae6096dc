"""Stop strings across token boundaries (shared_core/stopping.py)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from shared_core.stopping import StopMatcher


def run(pieces, stops):
    matcher = StopMatcher(stops)
    out = "".join(matcher.feed(p) for p in pieces)
    return out + matcher.flush(), matcher.stopped


def test_stop_spanning_pieces_is_removed():
    assert run(["Hello wo", "rld! E", "ND here"], ["END"]) == ("Hello world! ", True)
    assert run(["a", "b", "c", "d"], ["bc"]) == ("a", True)


def test_partial_stop_is_held_back_then_released():
    matcher = StopMatcher(["\nUser:"])
    assert matcher.feed("Hi\nUs") == "Hi"
    assert matcher.feed("eful") == "\nUseful"
    assert not matcher.stopped


def test_earliest_stop_wins_and_nothing_after_stop():
    matcher = StopMatcher(["xyz", "b"])
    assert matcher.feed("aaxyzb") == "aa"
    assert matcher.feed("more") == ""
    assert matcher.flush() == ""


def test_no_stops_passes_through():
    assert run(["a", "b"], []) == ("ab", False)


@given(
    text=st.text(alphabet="abc\n:XY", max_size=40),
    stop=st.text(alphabet="abc\n:XY", min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=8),
)
def test_matches_reference_on_random_splits(text, stop, cuts):
    bounds = sorted({0, len(text), *[c for c in cuts if c <= len(text)]})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    expected = text[: text.find(stop)] if stop in text else text
    assert run(pieces, [stop]) == (expected, stop in text)
