"""A tool-using agent on BACO whose tool calls always parse (a plain LangChain tool loop).

The agent plans a weekend trip budget with three tools. ``ChatBaco.bind_tools`` decodes
every call under a grammar built from the tools' argument schemas, so each ``tool_calls``
entry is valid JSON with the right argument types: the loop never has to retry or repair a
call. The first step is forced to call a tool (``tool_choice="any"``); later steps let the
model choose between another call and its answer (``"auto"``). Several agents with other
seeds run with BACO and with the aligned model alone; the script checks each call's
arguments against the request and the tool results (two nights, a known city, adding the
prices it looked up) and ends with a comparison computed from what it printed.

    pip install -e ".[langchain,demo,structured]"
    python examples/agent_pipeline.py            # the demo pair
    python examples/agent_pipeline.py --tiny     # offline smoke run on a tiny random pair
"""

from __future__ import annotations

import argparse

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

from langchain_baco import ChatBaco

PRICES = {"paris": 120, "rome": 95, "lisbon": 80, "berlin": 90}


@tool
def flight_price(city: str) -> int:
    """Return-flight price in euros to a city (paris, rome, lisbon or berlin)."""
    return PRICES.get(city.strip().lower(), 150)


@tool
def hotel_price(city: str, nights: int) -> int:
    """Hotel cost in euros for some nights in a city."""
    return (PRICES.get(city.strip().lower(), 100) - 10) * max(nights, 0)


@tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


TOOLS = {t.name: t for t in (flight_price, hotel_price, add)}
SYSTEM = (
    "You plan weekend trips. Use the tools to look up prices and add them up, then answer "
    "with the city and the total cost."
)


def run_agent(llm: ChatBaco, goal: str, steps: int, seed: int) -> dict:
    """Tool loop: call tools until the model answers (or ``steps`` run out)."""
    messages: list[BaseMessage] = [SystemMessage(SYSTEM), HumanMessage(goal)]
    calls = invalid = 0
    for step in range(steps):
        choice = "any" if step == 0 else "auto"
        reply = llm.bind_tools(list(TOOLS.values()), tool_choice=choice).invoke(
            messages, seed=seed + step
        )
        messages.append(reply)
        invalid += len(reply.invalid_tool_calls)  # only a call cut by max_tokens lands here
        if not reply.tool_calls:
            return {"answer": reply.content, "calls": calls, "invalid": invalid, "log": messages}
        for call in reply.tool_calls:
            calls += 1
            result = TOOLS[call["name"]].invoke(call)  # args always match the schema
            messages.append(result)
    return {
        "answer": "(no answer within the step limit)",
        "calls": calls,
        "invalid": invalid,
        "log": messages,
    }


def grounded(name: str, args: dict, results: list[int], nights: int) -> bool:
    """Whether a call's arguments come from the request or the earlier tool results."""
    if name in ("flight_price", "hotel_price"):
        city = str(args.get("city", "")).strip().lower()
        if city not in PRICES:
            return False
        return name == "flight_price" or args.get("nights") == nights
    if name == "add":
        return args.get("a") in results and args.get("b") in results
    return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--goal", default="Plan a two-night weekend in a European city.")
    parser.add_argument("--nights", type=int, default=2, help="the nights the goal asks for")
    parser.add_argument("--agents", type=int, default=3, help="agents (seeds) per method")
    parser.add_argument("--steps", type=int, default=4, help="model turns per agent")
    parser.add_argument("--gamma", type=float, default=0.3)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--tiny", action="store_true", help="tiny random pair (offline smoke)")
    args = parser.parse_args(argv)
    options = {"router": "p-punc", "gamma": args.gamma, "max_tokens": args.max_tokens}
    if args.tiny:
        from shared_core.testing import tiny_pair_folders

        base, aligned = tiny_pair_folders(context_window=2048)  # room for the tool block
        # A random model rarely closes a string: bound them so calls finish.
        llm = ChatBaco(
            base_model=str(base), aligned_model=str(aligned), max_string_length=8, **options
        )
    else:
        llm = ChatBaco(max_string_length=40, **options)  # the demo pair's sampling defaults

    print(f"task: {args.goal} ({args.agents} agents per method, at most {args.steps} turns)")
    tally = {}
    for label, router in ((f"BACO p-punc γ={args.gamma}", "p-punc"), ("aligned alone", "aligned")):
        method = llm.model_copy(update={"router": router, "gamma": args.gamma})
        counts = {"calls": 0, "grounded": 0, "cities": set(), "answered": 0}
        for agent in range(args.agents):
            outcome = run_agent(method, args.goal, args.steps, seed=100 * agent)
            print(
                f"\n== {label}, agent {agent}: {outcome['calls']} tool calls, all parsed "
                f"({outcome['invalid']} cut by max_tokens)"
            )
            results: list[int] = []
            for message in outcome["log"][2:]:
                if isinstance(message, ToolMessage):
                    print(f"   -> {message.name}: {message.content}")
                    if str(message.content).lstrip("-").isdigit():
                        results.append(int(message.content))
                    continue
                for call in message.tool_calls:
                    ok = grounded(call["name"], call["args"], results, args.nights)
                    counts["calls"] += 1
                    counts["grounded"] += ok
                    if call["args"].get("city"):
                        counts["cities"].add(str(call["args"]["city"]).strip().lower())
                    print(f"   {call['name']}({call['args']}){'' if ok else '   <- not grounded'}")
            answer = str(outcome["answer"])
            counts["answered"] += bool(answer.strip()) and not answer.startswith("(no answer")
            print(f"answer: {answer[:300]!r}")
        tally[label] = counts
    b, a = tally.values()
    print(
        f"\ncomparison (BACO vs aligned alone): {b['grounded']}/{b['calls']} vs "
        f"{a['grounded']}/{a['calls']} calls with arguments from the request or the tool "
        f"results, {len(b['cities'])} vs {len(a['cities'])} distinct cities, "
        f"{b['answered']} vs {a['answered']} of {args.agents} agents answered"
    )


if __name__ == "__main__":
    main()
