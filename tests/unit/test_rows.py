"""Row bookkeeping shared by both decode loops (shared_core/rows.py)."""

from __future__ import annotations

import pytest

from shared_core.rows import Row, RowBook
from shared_core.streaming import ResponseText
from shared_core.testing import build_tiny_tokenizer

END = 0


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def _book(tokenizer, budgets, stops=()) -> RowBook:
    rows = [Row(ResponseText(tokenizer, tuple(stops)), budget, 7) for budget in budgets]
    return RowBook(
        rows, n=2, end_ids={END}, router="p-punc", gamma=0.3, model_names=["base", "aligned"]
    )


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_a_row_ends_by_budget_end_token_or_stop_string(tokenizer):
    book = _book(tokenizer, [2, 5, 5], stops=["o"])
    a, b = _ids(tokenizer, "a")[0], _ids(tokenizer, " o")[0]
    assert book.advance(0, a, True).generation is None
    event = book.advance(0, a, False)  # second token of a budget of 2
    assert event.generation.finish_reason == "length"
    assert event.generation.sources == ["base", "aligned"]
    ended = book.advance(1, END, True)
    assert ended.generation.finish_reason == "stop" and ended.generation.token_ids == []
    assert ended.generation.usage.completion_tokens == 1  # the end token counts
    stopped = book.advance(2, b, False)
    assert stopped.generation.finish_reason == "stop" and "o" not in stopped.generation.text
    assert book.live([0, 1, 2]) == []


def test_events_name_their_prompt_and_sample(tokenizer):
    book = _book(tokenizer, [4, 4, 4, 4])
    event = book.advance(3, _ids(tokenizer, "a")[0], True)
    assert (event.prompt_index, event.sample_index, event.source) == (1, 1, "base")
    assert book.live([3, 0, 2]) == [0, 1, 2]


def test_nan_flags_of_finished_or_padding_rows_are_ignored(tokenizer):
    book = _book(tokenizer, [3, 3])
    book.advance(1, END, True)  # row 1 finished
    book.check_finite([[False, True, True], [False, False, True]], active=[0, 1])  # 3rd: pad
    with pytest.raises(FloatingPointError, match=r"model 'aligned'.*rows \[0\]"):
        book.check_finite([[False, False], [True, False]], active=[0, 1])


def test_only_json_is_steered_near_the_end_of_the_budget(tokenizer):
    from shared_core.structured import Constraint

    class Matchers:
        def __init__(self, protected):
            self.constraint = Constraint(key="k", grammar="g", label="l", protected=protected)

    def book(protected, text: str, budget: int = 8) -> RowBook:
        rows = [Row(ResponseText(tokenizer, ()), budget, 3)]
        shelf = RowBook(rows, n=1, end_ids={END}, router="p", gamma=0.1, model_names=["b"])
        shelf.matchers = Matchers(protected)  # type: ignore[assignment]
        for token in _ids(tokenizer, text):
            rows[0].text.push(token)
            rows[0].tokens.append(token)
        return shelf

    assert not book(None, "ab", budget=40).near_budget(0)  # far from the end
    assert book(None, "abcdefg").near_budget(0)  # a JSON answer, 4 tokens left at most
    markers = ("<tool_call>", "</tool_call>")
    assert not book(markers, "plain text").near_budget(0)  # free text stays free
    assert book(markers, 'a <tool_call>{"x').near_budget(0)  # inside a call
    assert not book(markers, "<tool_call>{}</tool_call> b").near_budget(0)
    assert not _book(tokenizer, [2]).near_budget(0)  # no grammar
