"""Brainstorming with LangChain: many *distinct* ideas from one prompt.

An aligned model asked the same question k times keeps giving the same few answers. This
chain asks k times for a list of ideas in one batched decode (``n=k``), twice — with the
aligned model alone and with BACO — prints the lists, and counts the items and how many of
them are actually different (pooled over the k lists).

    python examples/brainstorm.py                      # the demo pair (pip install -e ".[demo]")
    python examples/brainstorm.py --topic "a team offsite" -k 12 --gamma 0.2
    python examples/brainstorm.py --tiny               # offline smoke run on a tiny random pair
"""

from __future__ import annotations

import argparse
import re

from langchain_core.messages import BaseMessage
from langchain_core.prompts import ChatPromptTemplate

from langchain_baco import ChatBaco

PROMPT = ChatPromptTemplate.from_messages([("human", "List {n} ideas for {topic}.")])


def ideas(llm: ChatBaco, messages: list[BaseMessage], k: int, **options) -> list[str]:
    """k samples of one prompt from a single batched decode."""
    result = llm.generate([messages], n=k, **options)
    return [g.text.strip() for g in result.generations[0]]


def list_items(text: str) -> list[str]:
    """The items of one answer (numbered or bulleted lines; see shared_core.eval.tasks)."""
    from shared_core.eval.tasks import parse_list_items

    return parse_list_items(text)


def distinct_count(texts: list[str]) -> int:
    """Ideas that differ after normalising case, punctuation and spacing."""
    return len({re.sub(r"\W+", " ", t.lower()).strip() for t in texts if t.strip()})


def semantic_classes(texts: list[str]) -> int | None:
    """Distinct ideas by meaning (MiniLM equivalence classes), when the eval extra is there."""
    try:
        from shared_core.eval.semantic import distinct_classes, load_minilm_embedder
    except ImportError:
        return None
    try:
        return distinct_classes([t or " " for t in texts], load_minilm_embedder())
    except ImportError:
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topic", default="a weekend project on a rainy day")
    parser.add_argument("-k", type=int, default=4, help="lists per method")
    parser.add_argument("--items", type=int, default=5, help="ideas per list")
    parser.add_argument("--gamma", type=float, default=0.3, help="P-PUNC threshold")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--tiny", action="store_true", help="tiny random pair (offline smoke)")
    args = parser.parse_args(argv)

    if args.tiny:
        from shared_core.testing import tiny_pair_folders

        base, aligned = tiny_pair_folders()
        llm = ChatBaco(
            base_model=str(base),
            aligned_model=str(aligned),
            min_tokens=3,
            max_tokens=args.max_tokens,
            seed=0,
        )
    else:
        llm = ChatBaco(max_tokens=args.max_tokens, seed=0)  # the demo pair's sampling defaults
    messages = PROMPT.format_messages(topic=args.topic, n=args.items)
    print(f"task: {messages[-1].content!r} ({args.k} samples per setting)")

    runs = {
        "aligned model alone": ideas(llm, messages, args.k, router="aligned"),
        f"BACO p-punc γ={args.gamma}": ideas(
            llm, messages, args.k, router="p-punc", gamma=args.gamma
        ),
    }
    counts = {}
    for label, texts in runs.items():
        print(f"\n== {label}")
        items = []
        for i, text in enumerate(texts, 1):
            print(f"-- list {i}:\n{text}")
            items += list_items(text)
        semantic = semantic_classes(items) if items else 0
        counts[label] = (len(items), distinct_count(items), semantic)
    print(f"\nItems over {args.k} lists (asked for {args.items} each):")
    for label, (total, wording, semantic) in counts.items():
        extra = f", {semantic} by meaning (MiniLM)" if semantic is not None else ""
        print(f"  {label:<28} {total} items, {wording} distinct by wording{extra}")
    (a_total, a_distinct, a_sem), (b_total, b_distinct, b_sem) = counts.values()
    measure = "by meaning" if a_sem is not None and b_sem is not None else "by wording"
    a_value, b_value = (a_sem, b_sem) if measure == "by meaning" else (a_distinct, b_distinct)
    verdict = "more" if b_value > a_value else "fewer" if b_value < a_value else "as many"
    print(
        f"comparison: BACO gave {b_value} distinct ideas {measure} vs the aligned model's "
        f"{a_value} ({verdict}), from {b_total} vs {a_total} list items"
    )


if __name__ == "__main__":
    main()
