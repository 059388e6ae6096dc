"""Rehearsal data of the task-format stage: looping answers are dropped."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def rehearsal(import_script):
    return import_script("build_demo_rehearsal")


def test_loops_flags_repeated_phrases_and_keeps_plain_answers(rehearsal):
    assert rehearsal.loops("the cat sat on the mat " * 6)
    assert not rehearsal.loops("Paris is the capital of France and its largest city.")
    assert not rehearsal.loops("Yes.")  # too short to have 4-grams
