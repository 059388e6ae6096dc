"""Brainstorming with LangChain: many *distinct* ideas from one prompt.

An aligned model asked the same question k times keeps giving the same few answers. This
chain asks for k ideas in one batched decode (``n=k``) twice — with the aligned model alone
and with BACO — and counts how many of the ideas are actually different.

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

PROMPT = ChatPromptTemplate.from_messages(
    [("human", "Suggest one idea for {topic}. Answer with the idea only, in one sentence.")]
)


def ideas(llm: ChatBaco, messages: list[BaseMessage], k: int, **options) -> list[str]:
    """k samples of one prompt from a single batched decode."""
    result = llm.generate([messages], n=k, **options)
    return [g.text.strip() for g in result.generations[0]]


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
    parser.add_argument("-k", type=int, default=8, help="ideas per method")
    parser.add_argument("--gamma", type=float, default=0.3, help="P-PUNC threshold")
    parser.add_argument("--max-tokens", type=int, default=40)
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
        llm = ChatBaco(max_tokens=args.max_tokens, top_p=0.95, seed=0)
    messages = PROMPT.format_messages(topic=args.topic)
    print(f"task: {messages[-1].content!r} ({args.k} samples per setting)")

    runs = {
        "aligned model alone": ideas(llm, messages, args.k, router="aligned"),
        f"BACO p-punc γ={args.gamma}": ideas(
            llm, messages, args.k, router="p-punc", gamma=args.gamma
        ),
    }
    for label, texts in runs.items():
        print(f"\n== {label}")
        for i, text in enumerate(texts, 1):
            print(f"{i:>2}. {text}")
    print("\nDistinct ideas (out of", args.k, "):")
    for label, texts in runs.items():
        semantic = semantic_classes(texts)
        extra = f", {semantic} by meaning (MiniLM)" if semantic is not None else ""
        print(f"  {label:<28} {distinct_count(texts)} by wording{extra}")
    print(
        "\nBACO lets the base model choose content words while the aligned model keeps the "
        "answer on task, so more of the k samples are genuinely different ideas."
    )


if __name__ == "__main__":
    main()
