"""An LCEL chain with BACO: ``ChatPromptTemplate | ChatBaco | StrOutputParser``.

The same chain is run with a different router and γ per call (``configurable_fields``), a few
samples per setting, to show how the mix of base and aligned tokens changes the outputs.

    python examples/langchain_chain.py          # the demo pair (pip install -e ".[demo]")
    python examples/langchain_chain.py --tiny   # offline smoke run on a tiny random pair
"""

from __future__ import annotations

import argparse
import tempfile

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import ConfigurableField

from langchain_baco import ChatBaco

#: (router, gamma) per run; None means the router has no γ or uses its default.
SETTINGS = [("aligned", None), ("p-punc", 0.1), ("p-punc", 0.3), ("h-punc", 1.5), ("base", None)]


def build_llm(tiny: bool, max_tokens: int) -> ChatBaco:
    """ChatBaco on the demo pair, or on a tiny random pair saved to a temp folder."""
    sampling = {"temperature": 1.0, "top_p": 0.95, "max_tokens": max_tokens}
    if not tiny:
        return ChatBaco(**sampling)
    from shared_core.testing import save_tiny_pair

    base, aligned = save_tiny_pair(tempfile.mkdtemp(prefix="baco-tiny-"))
    # Random weights may end at once: min_tokens keeps the outputs non-empty.
    return ChatBaco(base_model=str(base), aligned_model=str(aligned), min_tokens=4, **sampling)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="use a tiny random pair (offline)")
    parser.add_argument("--samples", type=int, default=3, help="samples per setting")
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens per sample")
    args = parser.parse_args()
    max_tokens = args.max_tokens or (16 if args.tiny else 60)

    llm = build_llm(args.tiny, max_tokens).configurable_fields(
        router=ConfigurableField(id="router"), gamma=ConfigurableField(id="gamma")
    )
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "You are a creative writer. Answer with one or two sentences."),
            ("human", "{request}"),
        ]
    )
    chain = prompt | llm | StrOutputParser()
    request = {"request": "Write the opening line of a story about a lighthouse keeper."}
    print(f"task: {request['request']!r} ({args.samples} samples per setting)")

    for router, gamma in SETTINGS:
        config = {"configurable": {"router": router, "gamma": gamma}}
        outputs = chain.batch([request] * args.samples, config=config)
        # The same settings through the chain without the parser show BACO's statistics.
        stats = (prompt | llm).invoke(request, config=config).response_metadata
        print(f"\n== router={router} gamma={stats['gamma']} (base share {stats['base_share']:.2f})")
        for text in outputs:
            print("  -", repr(text) if args.tiny else " ".join(text.split()))

    # Per-call overrides also work without configurable fields: bind or invoke kwargs.
    bound = prompt | llm.bind(router="rand", gamma=0.5) | StrOutputParser()
    print("\n== bind(router='rand', gamma=0.5)")
    print("  -", repr(bound.invoke(request)) if args.tiny else bound.invoke(request))


if __name__ == "__main__":
    main()
