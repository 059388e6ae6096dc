"""The side-by-side demo job (shared_core/demo.py), on the tiny pair."""

from __future__ import annotations

import io

from shared_core.demo import Sample, _marked, _wrap, run_demo, side_by_side


def test_run_demo_prints_both_methods_and_diversity(tiny_engine):
    out = io.StringIO()
    runs = run_demo(
        tiny_engine,
        ["Name a color.", "Write a haiku."],
        k=3,
        max_new_tokens=8,
        gamma=1.01,
        color=False,
        embed=None,
        out=out,
    )
    text = out.getvalue()
    assert set(runs) == {"aligned", "baco"}
    assert text.count("=== ") == 2
    assert "aligned model alone" in text and "BACO p-punc" in text
    assert "distinct-1" in text and "base share" in text
    assert runs["aligned"].diversity["base share"] == 0.0
    assert runs["baco"].diversity["base share"] > 0.0  # gamma > 1: base wherever not punctuation
    assert "«" in text  # base spans are marked without colour
    for run in runs.values():
        assert [len(row) for row in run.samples] == [3, 3]
        assert run.tokens > 0


def test_wrap_keeps_text_and_sources():
    sample = Sample(segments=[("Hello ", "aligned"), ("wonderful world", "base"), ("!", "aligned")])
    lines = _wrap(sample.segments, 10)
    assert all(sum(len(t) for t, _ in line) <= 11 for line in lines)
    joined = " ".join("".join(t for t, _ in line) for line in lines)
    assert joined.replace("  ", " ") == "Hello wonderful world!"
    assert any(is_base for line in lines for _, is_base in line)


def test_marked_and_side_by_side_without_colour():
    a = Sample(segments=[("Blue", "aligned")], base_share=0.0)
    b = Sample(segments=[("Deep", "aligned"), (" teal", "base")], base_share=0.5)
    assert "".join(t for t, _ in _marked(b, color=False)) == "Deep« teal»"
    view = side_by_side([a], [b], ("left", "right"), width=60, color=False)
    assert "#1 base share 0.00" in view and "#1 base share 0.50" in view
    assert "\033[" not in view
    coloured = side_by_side([a], [b], ("left", "right"), width=60, color=True)
    assert "\033[36;1m teal\033[0m" in coloured


def test_progress_ends_exactly_at_the_token_budget(tiny_engine) -> None:
    from shared_core.demo import collect

    class Counter:
        n = 0

        def update(self, k: int) -> None:
            self.n += k

    counter = Counter()
    _samples, tokens = collect(
        tiny_engine,
        ["Name a color.", "Hi"],
        counter,
        n=3,
        max_new_tokens=12,
        router="aligned",
        seed=1,
        stop=["e"],  # most samples end early on the stop string
    )
    assert tokens < 2 * 3 * 12  # rows finished before their budget
    assert counter.n == 2 * 3 * 12  # the bar still ends at its total
