"""An agent-style plan → critique → choose pipeline where varied proposals matter.

Best-of-k selection only helps when the k proposals differ. The proposer here is BACO
(varied plans); the critic is the same pair with ``router="aligned"`` and greedy decoding (a
steady judge); the chooser keeps the best-rated plan. The pipeline is plain LCEL runnables,
run once with an aligned-only proposer and once with BACO.

    python examples/agent_pipeline.py            # the demo pair (pip install -e ".[demo]")
    python examples/agent_pipeline.py --tiny     # offline smoke run on a tiny random pair
"""

from __future__ import annotations

import argparse
import re

from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda

from langchain_baco import ChatBaco

PLAN = ChatPromptTemplate.from_messages(
    [("human", "Goal: {goal}\nPropose a short plan (at most three steps) to reach the goal.")]
)
CRITIQUE = ChatPromptTemplate.from_messages(
    [
        (
            "human",
            "Goal: {goal}\nPlan: {plan}\nRate how good this plan is from 1 to 10. "
            "Reply with the number only.",
        )
    ]
)


def build_pipeline(llm: ChatBaco, k: int, proposer_options: dict):
    """goal -> k proposals -> a score for each -> the best one."""
    critic = llm.bind(router="aligned", temperature=0.0, max_tokens=4)

    def propose(goal: str) -> dict:
        result = llm.generate([PLAN.format_messages(goal=goal)], n=k, **proposer_options)
        return {"goal": goal, "plans": [g.text.strip() for g in result.generations[0]]}

    def critique(state: dict) -> dict:
        prompts = [{"goal": state["goal"], "plan": plan} for plan in state["plans"]]
        replies = (CRITIQUE | critic).batch(prompts)
        state["scores"] = [_score(r.content) for r in replies]
        return state

    def choose(state: dict) -> dict:
        best = max(range(len(state["plans"])), key=lambda i: state["scores"][i])
        state["best"] = state["plans"][best]
        return state

    return RunnableLambda(propose) | RunnableLambda(critique) | RunnableLambda(choose)


def _score(text: str) -> int:
    match = re.search(r"\d+", text)
    return min(int(match.group()), 10) if match else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--goal", default="get a small team to write better documentation")
    parser.add_argument("-k", type=int, default=4, help="proposals per run")
    parser.add_argument("--gamma", type=float, default=0.3)
    parser.add_argument("--max-tokens", type=int, default=60)
    parser.add_argument("--tiny", action="store_true", help="tiny random pair (offline smoke)")
    args = parser.parse_args(argv)
    if args.tiny:
        from shared_core.testing import tiny_pair_folders

        base, aligned = tiny_pair_folders()
        llm = ChatBaco(
            base_model=str(base),
            aligned_model=str(aligned),
            min_tokens=2,
            max_tokens=args.max_tokens,
            seed=0,
        )
    else:
        llm = ChatBaco(max_tokens=args.max_tokens, top_p=0.95, seed=0)

    for label, options in (
        ("aligned proposer", {"router": "aligned"}),
        (f"BACO proposer (p-punc γ={args.gamma})", {"router": "p-punc", "gamma": args.gamma}),
    ):
        state = build_pipeline(llm, args.k, options).invoke(args.goal)
        distinct = len({p.lower() for p in state["plans"]})
        print(f"\n== {label}: {distinct} distinct proposals of {args.k}")
        for plan, score in zip(state["plans"], state["scores"], strict=True):
            print(f"[{score:>2}] {plan[:200]!r}")
        print(f"chosen: {state['best'][:300]!r}")
    print("\nWith more distinct proposals the critic has real alternatives to choose from.")


if __name__ == "__main__":
    main()
