"""Structured brainstorming: n varied objects that always validate (with_structured_output).

Diverse free text is easy to get from BACO; an application usually needs the ideas as data.
``with_structured_output(Idea, n=k)`` decodes k samples in one batch under the grammar of the
``Idea`` schema, so every sample is a valid ``Idea``. The script runs it with the aligned
model alone and with BACO and counts the distinct names, taglines and categories. The default
router is ``rand`` (γ=0.5): inside JSON, one-word values follow a quote and are no word
starts, so PUNC routers (``p-punc``) hand only words inside longer strings to the base model.

    pip install -e ".[langchain,demo,structured]"
    python examples/structured_brainstorm.py                 # the demo pair
    python examples/structured_brainstorm.py --topic "a bakery" -k 8 --router p-punc --gamma 0.3
    python examples/structured_brainstorm.py --tiny          # offline smoke run
"""

from __future__ import annotations

import argparse
from typing import Literal

from pydantic import BaseModel, Field

from langchain_baco import ChatBaco


class Idea(BaseModel):
    """One product idea."""

    name: str = Field(description="a short, catchy name", max_length=40)
    tagline: str = Field(description="one sentence that sells it", max_length=100)
    category: Literal["food", "service", "app", "event", "product"]


def brainstorm(llm: ChatBaco, topic: str, k: int, **options) -> list[Idea]:
    """k ideas from one batched, grammar-constrained decode (every one validates)."""
    structured = llm.with_structured_output(Idea, n=k, **options)
    return structured.invoke(f"Invent a new business idea for {topic}. Reply as JSON.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topic", default="a small seaside town")
    parser.add_argument("-k", type=int, default=8, help="ideas per run")
    parser.add_argument("--router", default="rand")
    parser.add_argument("--gamma", type=float, default=0.5)
    parser.add_argument("--max-tokens", type=int, default=120)
    parser.add_argument("--tiny", action="store_true", help="tiny random pair (offline smoke)")
    args = parser.parse_args(argv)
    if args.tiny:
        from shared_core.testing import tiny_pair_folders

        base, aligned = tiny_pair_folders()
        # A random model fills every string to its maxLength: leave room for that.
        llm = ChatBaco(
            base_model=str(base),
            aligned_model=str(aligned),
            max_tokens=max(args.max_tokens, 400),
            seed=0,
        )
    else:
        llm = ChatBaco(max_tokens=args.max_tokens, seed=0)  # the demo pair's sampling defaults

    print(f"task: {args.k} business ideas (name, tagline, category) for {args.topic}")
    distinct = {}
    for label, options in (
        ("aligned alone", {"router": "aligned"}),
        (f"BACO ({args.router} γ={args.gamma})", {"router": args.router, "gamma": args.gamma}),
    ):
        ideas = brainstorm(llm, args.topic, args.k, **options)
        names = {i.name.strip().lower() for i in ideas}
        taglines = {i.tagline.strip().lower() for i in ideas}
        categories = {i.category for i in ideas}
        print(
            f"\n== {label}: {len(ideas)} valid ideas, {len(names)} distinct names, "
            f"{len(taglines)} distinct taglines, {len(categories)} categories"
        )
        for idea in ideas:
            print(f"  [{idea.category}] {idea.name!r}: {idea.tagline!r}")
        distinct[label] = (len(ideas), len(names), len(taglines), len(categories))
    a, b = distinct.values()
    print(
        f"\ncomparison (BACO vs aligned alone): distinct names {b[1]} vs {a[1]}, taglines "
        f"{b[2]} vs {a[2]}, categories {b[3]} vs {a[3]}, valid ideas {b[0]} vs {a[0]}"
    )


if __name__ == "__main__":
    main()
