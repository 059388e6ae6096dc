"""Build the task-format training data of the demo adapter: tool calls, query rewrites, lists.

Three kinds of supervised examples, written as JSON lines ``{"kind", "messages", "response"}``
(``messages`` is the conversation exactly as the engine sends it to the aligned model: text
messages after :func:`shared_core.tools.render_tool_messages`, system first when there is one;
``response`` is the model turn to learn):

* **tool**: templated tool-use episodes. Each question is written from a template whose
  slots (numbers, cities, topics, words, amounts ...) become the call's arguments, so the
  arguments always come from the request. 16 tools, 1-4 tools bound per episode (the right
  one among distractors), ``auto`` and ``required`` modes (the two system texts the engine
  writes), with and without a system prompt of the caller's, and two-turn episodes (call,
  ``<tool_response>``, then a final answer that uses the result).
* **rewrite**: "write N search queries for this question" in the phrasings the adapters'
  retrievers send (LangChain ``MultiQueryRetriever``, LlamaIndex ``QueryFusionRetriever``)
  and a few more. The queries are sampled from the **base model** with a few-shot prompt and
  kept only when they pass rule filters (no words of the instruction, at least one content
  word of the question, 2-14 words, distinct, not the question itself).
* **list**: "list N ideas/ways/names ..." answered as a numbered list; the items are sampled
  from the base model with a few-shot prompt and filtered the same way.

Nothing here reads the task evaluation's prompts (``shared_core/assets/tasks``), the judge,
the embedding model or NoveltyBench/WildChat: the subjects below are separate word lists,
and :func:`check_disjoint` fails the build if any training question equals or contains an
evaluation question.

It also writes DPO pairs for the task formats (``task_pairs.jsonl``): chosen = the task
answer, rejected = an echo of the prompt (the failure the earlier adapter showed) or, for a
tool call, one of the wrong calls :func:`wrong_calls` writes (empty arguments, the question
pasted into the arguments, another request's values, the wrong tool).

    python scripts/build_demo_task_data.py --out runs/task_demo/data

``--reuse-samples FILE`` reads the base draws from an earlier run's ``base_samples.jsonl``
(same prompts, same seed) instead of sampling again, so the pairs can be rebuilt in seconds.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from shared_core.tools import (  # noqa: E402
    format_call,
    normalise_tools,
    parse_tool_calls,
    render_tool_messages,
)

# --------------------------------------------------------------------------------------------
# tools

TOOLS: dict[str, dict[str, Any]] = {
    "calculator": {
        "description": "Evaluate an arithmetic expression and return the number.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "e.g. 12 * (3 + 4)"}},
            "required": ["expression"],
        },
    },
    "web_search": {
        "description": "Search the web and return the top results.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "search query"}},
            "required": ["query"],
        },
    },
    "search_documents": {
        "description": "Search the document collection for passages about a subject.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    },
    "get_weather": {
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
    "flight_price": {
        "description": "Price in euros of a return flight to a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
    "hotel_price": {
        "description": "Price in euros of a hotel stay in a city for a number of nights.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "nights": {"type": "integer"}},
            "required": ["city", "nights"],
        },
    },
    "add": {
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
    "multiply": {
        "description": "Multiply two numbers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
        },
    },
    "convert_currency": {
        "description": "Convert an amount of money from one currency to another.",
        "parameters": {
            "type": "object",
            "properties": {
                "amount": {"type": "number"},
                "from_currency": {"type": "string", "description": "ISO code, e.g. USD"},
                "to_currency": {"type": "string", "description": "ISO code, e.g. EUR"},
            },
            "required": ["amount", "from_currency", "to_currency"],
        },
    },
    "get_time": {
        "description": "Current local time in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
    "translate": {
        "description": "Translate text into another language.",
        "parameters": {
            "type": "object",
            "properties": {
                "text": {"type": "string"},
                "target_language": {"type": "string"},
            },
            "required": ["text", "target_language"],
        },
    },
    "define_word": {
        "description": "Dictionary definition of an English word.",
        "parameters": {
            "type": "object",
            "properties": {"word": {"type": "string"}},
            "required": ["word"],
        },
    },
    "stock_price": {
        "description": "Latest share price for a stock ticker symbol.",
        "parameters": {
            "type": "object",
            "properties": {"ticker": {"type": "string"}},
            "required": ["ticker"],
        },
    },
    "convert_units": {
        "description": "Convert a value between units of measurement.",
        "parameters": {
            "type": "object",
            "properties": {
                "value": {"type": "number"},
                "from_unit": {"type": "string"},
                "to_unit": {"type": "string"},
            },
            "required": ["value", "from_unit", "to_unit"],
        },
    },
    "set_reminder": {
        "description": "Set a reminder with a message at a time.",
        "parameters": {
            "type": "object",
            "properties": {"message": {"type": "string"}, "time": {"type": "string"}},
            "required": ["message", "time"],
        },
    },
    "find_recipes": {
        "description": "Find recipes that use an ingredient.",
        "parameters": {
            "type": "object",
            "properties": {"ingredient": {"type": "string"}},
            "required": ["ingredient"],
        },
    },
}

CITIES = [
    "Lisbon",
    "Madrid",
    "Vienna",
    "Prague",
    "Oslo",
    "Helsinki",
    "Dublin",
    "Warsaw",
    "Athens",
    "Budapest",
    "Munich",
    "Zurich",
    "Geneva",
    "Milan",
    "Naples",
    "Seville",
    "Porto",
    "Krakow",
    "Bergen",
    "Tallinn",
    "Riga",
    "Vilnius",
    "Edinburgh",
    "Glasgow",
    "Cardiff",
    "Lyon",
    "Marseille",
    "Toulouse",
    "Hamburg",
    "Cologne",
    "Antwerp",
    "Ghent",
    "Bruges",
    "Utrecht",
    "Seattle",
    "Denver",
    "Chicago",
    "Boston",
    "Toronto",
    "Montreal",
    "Vancouver",
    "Lima",
    "Bogota",
    "Santiago",
    "Nairobi",
    "Accra",
    "Cairo",
    "Marrakesh",
    "Istanbul",
    "Dubai",
    "Mumbai",
    "Delhi",
    "Bangkok",
    "Hanoi",
    "Manila",
    "Jakarta",
    "Seoul",
    "Osaka",
    "Kyoto",
    "Sydney",
    "Perth",
    "Auckland",
]

TOPICS = """the history of the printing press|how vaccines train the immune system|the causes of
inflation|the life cycle of a star|how solar panels make electricity|the rules of cricket|the
origins of jazz music|how coral reefs form|the French Revolution|the migration of monarch
butterflies|how a bill becomes law|the chemistry of baking soda|black holes|the invention of
the telephone|the Roman aqueducts|how bees make honey|the water cycle|plate tectonics|the Great
Wall of China|how credit scores work|the discovery of penicillin|the Apollo moon landing|how
tides work|the Silk Road|deep sea creatures|how electric cars charge|the Renaissance
painters|the causes of earthquakes|how the stock market works|ancient Egyptian pyramids|how
noise cancelling headphones work|the Industrial Revolution|photosynthesis in plants|the
Olympic Games history|how glaciers move|the Cold War|wind turbine design|the human heart|how
recycling plastic works|volcanic eruptions|the Byzantine Empire|the immune response to
allergies|how GPS satellites work|the origin of chess|rainforest deforestation|the invention
of paper|the Viking explorers|how batteries store energy|the history of the bicycle|ocean
currents|the Mayan calendar|how airplanes fly|the gold rush|the spread of the plague|how
microwaves heat food|the Hubble telescope|the Ottoman Empire|how vaccines are tested|the
history of tea|desert ecosystems""".replace("\n", " ").split("|")

WORDS = [
    "ephemeral",
    "ubiquitous",
    "serendipity",
    "laconic",
    "quixotic",
    "gregarious",
    "meticulous",
    "pragmatic",
    "resilient",
    "ambiguous",
    "benevolent",
    "candid",
    "diligent",
    "eloquent",
    "frugal",
    "gullible",
    "hackneyed",
    "impetuous",
    "juxtapose",
    "lethargic",
    "mundane",
    "nostalgia",
    "obsolete",
    "pensive",
    "quaint",
    "reticent",
    "sanguine",
    "tenacious",
    "verbose",
    "whimsical",
]

TICKERS = [
    "AAPL",
    "MSFT",
    "GOOG",
    "AMZN",
    "TSLA",
    "NVDA",
    "META",
    "IBM",
    "INTC",
    "ORCL",
    "SAP",
    "ADBE",
    "NFLX",
    "KO",
    "PEP",
]
CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "SEK", "NOK", "INR"]
LANGUAGES = [
    "French",
    "Spanish",
    "German",
    "Italian",
    "Portuguese",
    "Dutch",
    "Swedish",
    "Polish",
    "Japanese",
]
PHRASES = """good morning|where is the train station|thank you very much|how much does this
cost|I would like a coffee|see you tomorrow|the museum opens at nine|happy birthday|I am
lost|the weather is lovely today""".replace("\n", " ").split("|")
INGREDIENTS = [
    "lentils",
    "spinach",
    "chickpeas",
    "salmon",
    "mushrooms",
    "pumpkin",
    "tofu",
    "eggplant",
    "quinoa",
    "zucchini",
    "cauliflower",
    "apples",
]
UNITS = [("kilometers", "miles"), ("miles", "kilometers"), ("pounds", "kilograms"),
         ("kilograms", "pounds"), ("feet", "meters"), ("liters", "gallons"),
         ("celsius", "fahrenheit"), ("inches", "centimeters")]  # fmt: skip
REMINDERS = """call the dentist|buy milk|water the plants|submit the report|pick up the
kids|pay the rent|book the flights|send the invoice""".replace("\n", " ").split("|")
TIMES = ["7:30", "9:00", "noon", "14:15", "18:00", "tomorrow at 8:00", "Friday at 10:00"]

SYSTEMS = [
    "You are a helpful assistant.",
    "You are a helpful assistant with access to tools.",
    "You are an assistant. Use the tools when they help answer the user.",
    "Answer the user's question. Use a tool when you need one.",
    "You plan weekend trips. Use the tools to look up prices.",
    "You are a research assistant that looks things up before answering.",
]


def _num(rng: random.Random) -> int:
    return rng.choice([rng.randint(2, 99), rng.randint(10, 999), rng.randint(100, 9999)])


def _expression(rng: random.Random) -> tuple[str, str, float]:
    """A question phrasing of an arithmetic expression: ``(question text, expression, value)``."""
    a, b = _num(rng), _num(rng)
    kind = rng.choice(["*", "+", "-", "/", "*+", "()"])
    if kind == "*":
        expr, words = f"{a} * {b}", rng.choice([f"{a} times {b}", f"{a} * {b}", f"{a} x {b}"])
    elif kind == "+":
        expr, words = f"{a} + {b}", rng.choice([f"{a} plus {b}", f"{a} + {b}"])
    elif kind == "-":
        expr, words = f"{a} - {b}", rng.choice([f"{a} minus {b}", f"{a} - {b}"])
    elif kind == "/":
        a = b * rng.randint(2, 60)
        expr, words = f"{a} / {b}", rng.choice([f"{a} divided by {b}", f"{a} / {b}"])
    elif kind == "*+":
        c = rng.randint(2, 50)
        expr = f"{a} * {b} + {c}"
        words = rng.choice([f"{a} * {b} + {c}", f"{a} times {b} plus {c}"])
    else:
        c = rng.randint(2, 20)
        expr, words = f"({a} + {b}) * {c}", f"({a} + {b}) * {c}"
    value = eval(expr, {"__builtins__": {}})
    return words, expr, value


def _fmt_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


def tool_case(rng: random.Random, name: str) -> tuple[str, dict[str, Any], str, str]:
    """One request for tool ``name``: ``(question, arguments, tool result, final answer)``."""
    if name == "calculator":
        words, expr, value = _expression(rng)
        q = rng.choice(
            [
                f"What is {words}?",
                f"Calculate {words}.",
                f"How much is {words}?",
                f"Compute {words} for me.",
                f"What do you get for {words}?",
                f"I need the result of {words}.",
            ]
        )
        v = _fmt_number(value)
        return q, {"expression": expr}, v, f"{expr} = {v}."
    if name in ("web_search", "search_documents"):
        topic = rng.choice(TOPICS)
        q = rng.choice(
            [
                f"Search the web for {topic}.",
                f"Find information about {topic}.",
                f"Look up {topic}.",
                f"What can you find about {topic}?",
                f"Tell me about {topic}.",
                f"I want to read about {topic}.",
                f"Can you search for {topic}?",
            ]
        )
        query = topic.removeprefix("the ").removeprefix("how ")
        if rng.random() < 0.5:
            query = topic
        result = f"1. An overview of {topic}. 2. A short article on {topic}."
        return q, {"query": query}, result, f"I found an overview and a short article on {topic}."
    if name == "get_weather":
        city = rng.choice(CITIES)
        args: dict[str, Any] = {"city": city}
        unit = rng.choice([None, "celsius", "fahrenheit"])
        tail = f" in {unit}" if unit else ""
        if unit:
            args["unit"] = unit
        q = rng.choice(
            [
                f"What's the weather like in {city}{tail}?",
                f"How warm is it in {city} right now{tail}?",
                f"Is it raining in {city}?",
                f"Weather in {city}{tail}, please.",
            ]
        )
        if "raining" in q:
            args = {"city": city}
        temp = rng.randint(-5, 35)
        result = json.dumps(
            {"city": city, "temperature": temp, "sky": rng.choice(["sunny", "rain", "cloudy"])}
        )
        return q, args, result, f"In {city} it is {temp} degrees right now."
    if name == "flight_price":
        city = rng.choice(CITIES)
        q = rng.choice(
            [
                f"How much is a flight to {city}?",
                f"What does a return flight to {city} cost?",
                f"Check the flight price to {city}.",
            ]
        )
        price = rng.randint(60, 900)
        return q, {"city": city}, str(price), f"A return flight to {city} costs {price} euros."
    if name == "hotel_price":
        city, nights = rng.choice(CITIES), rng.randint(1, 9)
        q = rng.choice(
            [
                f"How much is a hotel in {city} for {nights} nights?",
                f"Price of {nights} nights in a hotel in {city}?",
                f"I need a hotel in {city} for {nights} nights. What does it cost?",
            ]
        )
        price = nights * rng.randint(50, 240)
        return (q, {"city": city, "nights": nights}, str(price),
                f"{nights} nights in {city} cost {price} euros.")  # fmt: skip
    if name in ("add", "multiply"):
        a, b = rng.randint(2, 999), rng.randint(2, 999)
        if name == "add":
            q = rng.choice([f"Add {a} and {b}.", f"What is {a} plus {b}?", f"Sum of {a} and {b}?"])
            value = a + b
        else:
            q = rng.choice([f"Multiply {a} by {b}.", f"What is {a} times {b}?", f"{a} x {b}?"])
            value = a * b
        return q, {"a": a, "b": b}, str(value), f"The answer is {value}."
    if name == "convert_currency":
        amount = rng.choice([rng.randint(5, 5000), round(rng.uniform(1, 500), 2)])
        src, dst = rng.sample(CURRENCIES, 2)
        q = rng.choice(
            [
                f"Convert {amount} {src} to {dst}.",
                f"How much is {amount} {src} in {dst}?",
                f"What are {amount} {src} worth in {dst}?",
            ]
        )
        out = round(amount * rng.uniform(0.5, 1.5), 2)
        args = {"amount": amount, "from_currency": src, "to_currency": dst}
        return q, args, str(out), f"{amount} {src} is about {out} {dst}."
    if name == "get_time":
        city = rng.choice(CITIES)
        q = rng.choice([f"What time is it in {city}?", f"Current time in {city}?"])
        t = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"
        return q, {"city": city}, t, f"It is {t} in {city}."
    if name == "translate":
        text, lang = rng.choice(PHRASES), rng.choice(LANGUAGES)
        q = rng.choice(
            [
                f'Translate "{text}" into {lang}.',
                f'How do you say "{text}" in {lang}?',
            ]
        )
        return (q, {"text": text, "target_language": lang}, f"[{lang}] {text}",
                f'In {lang}, "{text}" is: [{lang}] {text}.')  # fmt: skip
    if name == "define_word":
        word = rng.choice(WORDS)
        q = rng.choice(
            [f"What does {word} mean?", f"Define the word {word}.", f"Meaning of {word}?"]
        )
        return q, {"word": word}, f"{word}: (definition)", f'"{word}" means: (definition).'
    if name == "stock_price":
        ticker = rng.choice(TICKERS)
        q = rng.choice([f"What is {ticker} trading at?", f"Stock price of {ticker}?",
                        f"Check the share price for {ticker}."])  # fmt: skip
        price = round(rng.uniform(10, 900), 2)
        return q, {"ticker": ticker}, str(price), f"{ticker} trades at {price}."
    if name == "convert_units":
        value = rng.choice([rng.randint(1, 500), round(rng.uniform(0.5, 100), 1)])
        src, dst = rng.choice(UNITS)
        q = rng.choice([f"Convert {value} {src} to {dst}.", f"How many {dst} is {value} {src}?"])
        out = round(value * rng.uniform(0.3, 3), 2)
        args = {"value": value, "from_unit": src, "to_unit": dst}
        return q, args, str(out), f"{value} {src} is {out} {dst}."
    if name == "set_reminder":
        msg, t = rng.choice(REMINDERS), rng.choice(TIMES)
        q = rng.choice([f"Remind me to {msg} at {t}.", f"Set a reminder at {t} to {msg}."])
        return q, {"message": msg, "time": t}, "ok", f"Done: I will remind you to {msg} at {t}."
    if name == "find_recipes":
        ing = rng.choice(INGREDIENTS)
        q = rng.choice([f"Find me recipes with {ing}.", f"What can I cook with {ing}?"])
        return (
            q,
            {"ingredient": ing},
            f"1. {ing} soup 2. roasted {ing}",
            f"Try {ing} soup or roasted {ing}.",
        )
    raise KeyError(name)


def tool_spec(name: str) -> dict[str, Any]:
    """OpenAI-style description of a tool of :data:`TOOLS`."""
    return {"type": "function", "function": {"name": name, **TOOLS[name]}}


def tool_episode(rng: random.Random) -> list[dict[str, Any]]:
    """One templated episode as 1-2 training examples (the call; the final answer)."""
    name = rng.choice(list(TOOLS))
    question, arguments, result, answer = tool_case(rng, name)
    others = [t for t in TOOLS if t != name]
    bound = [name, *rng.sample(others, rng.randint(0, 3))]
    rng.shuffle(bound)
    specs = normalise_tools([tool_spec(t) for t in bound])
    mode = "required" if rng.random() < 0.35 else "auto"
    history: list[dict[str, Any]] = []
    if rng.random() < 0.5:
        history.append({"role": "system", "content": rng.choice(SYSTEMS)})
    history.append({"role": "user", "content": question})
    examples = [
        {
            "kind": "tool",
            "tool": name,
            "messages": list(render_tool_messages(history, specs, mode)),
            "response": format_call(name, arguments),
        }
    ]
    if mode == "auto" and rng.random() < 0.5:
        call_id = f"call_{rng.getrandbits(64):016x}"
        followed = [
            *history,
            {"role": "assistant", "content": "",
             "tool_calls": [{"id": call_id, "name": name, "arguments": arguments}]},
            {"role": "tool", "content": result, "name": name, "tool_call_id": call_id},
        ]  # fmt: skip
        examples.append(
            {
                "kind": "tool_answer",
                "tool": name,
                "messages": list(render_tool_messages(followed, specs, mode)),
                "response": answer,
            }
        )
    return examples


# --------------------------------------------------------------------------------------------
# rewrites and lists: questions and few-shot base sampling

REWRITE_SUBJECTS = """learn to play the guitar|keep houseplants alive|reduce my electricity
bill|train a puppy|start running as a beginner|improve my sleep|write a cover letter|choose a
laptop for programming|clean a cast iron pan|save money on groceries|learn a new language
fast|grow tomatoes on a balcony|prepare for a job interview|fix a leaking tap|make cold brew
coffee|plan a road trip|lower my blood pressure|start a vegetable garden|back up my
photos|negotiate a salary|make my website load faster|get rid of fruit flies|study for a math
exam|choose a good mattress|teach kids to swim|make homemade pasta|reduce stress at work|pick
a hiking backpack|learn to draw portraits|paint a room|insulate an old house|improve my
handwriting|care for a new tattoo|keep a cat entertained|write a short story|make friends in
a new city|stop procrastinating|choose running shoes|brew beer at home|organise a small
kitchen|learn touch typing|take better phone photos|prepare for a marathon|get started with
birdwatching|repair a bicycle puncture|make natural yogurt|reduce food waste|learn to
meditate|build a bookshelf|protect my privacy online""".replace("\n", " ").split("|")

WHY_SUBJECTS = """the sky looks blue|leaves change colour in autumn|bread goes stale|cats
purr|onions make people cry|ice floats on water|the moon has phases|we get hiccups|metal feels
cold|yeast makes dough rise|rainbows form|coffee keeps people awake|birds migrate south|the
ocean is salty|prices rise over time|muscles get sore after exercise|planes leave contrails|we
yawn|stars twinkle|dogs wag their tails""".replace("\n", " ").split("|")

WHAT_SUBJECTS = """the benefits of cycling to work|the difference between a virus and a
bacterium|the main causes of air pollution|the symptoms of dehydration|the history of the
bicycle|the advantages of electric cars|the rules of chess|the health effects of
sugar|the best way to store fresh herbs|the role of bees in farming|the effects of caffeine
on sleep|the difference between weather and climate|the uses of baking soda|the origins of
the internet|the causes of the First World War|the benefits of learning music|the life of
honeybees|the types of renewable energy|the basics of personal budgeting|the impact of social
media on teenagers""".replace("\n", " ").split("|")


def rewrite_questions() -> list[str]:
    """Training questions for query rewriting (none of them about the evaluation's topics)."""
    qs = [f"How do I {s}?" for s in REWRITE_SUBJECTS]
    qs += [f"Explain why {s}." for s in WHY_SUBJECTS]
    qs += [f"Tell me about {s}." for s in WHAT_SUBJECTS]
    return qs


REWRITE_FEWSHOT = [
    ("How can I make my bike ride smoother?",
     ["bike tire pressure for comfort", "bicycle suspension seat post",
      "how to adjust a bike saddle", "wider tires smoother ride"]),
    ("What causes headaches after screen time?",
     ["eye strain headache computer", "blue light and headaches",
      "screen brightness and migraines", "posture neck pain headache"]),
    ("Why is my sourdough starter not rising?",
     ["sourdough starter feeding schedule", "starter temperature too cold",
      "flour type for sourdough starter", "signs of a weak starter"]),
]  # fmt: skip

# The phrasings of the rewrite request the adapters' retrievers send, and a few more.
REWRITE_INSTRUCTIONS = [
    "You are an AI language model assistant. Your task is to generate {n} different versions "
    "of the given user question to retrieve relevant documents from a vector database. By "
    "generating multiple perspectives on the user question, your goal is to help the user "
    "overcome some of the limitations of the distance-based similarity search. Provide these "
    "alternative questions separated by newlines.\nOriginal question: {q}",
    "You are a helpful assistant that generates multiple search queries based on a single "
    "input query. Generate {n} search queries, one on each line, related to the following "
    "input query:\nQuery: {q}\nQueries:\n",
    "Rewrite this question as {n} different search queries, one per line.\n\nQuestion: {q}",
    "Write {n} search engine queries that would find answers to: {q}",
    "Give {n} alternative phrasings of this search, one per line: {q}",
]

LIST_SUBJECTS = [
    ("ideas", "a rainy weekend at home"), ("ideas", "a birthday party for a ten-year-old"),
    ("ideas", "a school science fair project"), ("ideas", "a small garden"),
    ("ideas", "a team-building day"), ("ideas", "a cheap date night"),
    ("ideas", "a podcast about history"), ("ideas", "decorating a tiny apartment"),
    ("ideas", "a short film"), ("ideas", "reusing glass jars"),
    ("ideas", "a healthy breakfast"), ("ideas", "a family camping trip"),
    ("ideas", "a neighbourhood festival"), ("ideas", "a mobile app for students"),
    ("ideas", "a fantasy novel plot"), ("ideas", "a charity fundraiser"),
    ("ways", "save water at home"), ("ways", "stay focused while studying"),
    ("ways", "make a long flight comfortable"), ("ways", "meet new people"),
    ("ways", "use leftover rice"), ("ways", "keep a room cool without air conditioning"),
    ("ways", "exercise without a gym"), ("ways", "learn new words"),
    ("ways", "reduce plastic at the supermarket"), ("ways", "make a presentation memorable"),
    ("ways", "cheer up a friend"), ("ways", "spend less time on the phone"),
    ("names", "a coffee shop"), ("names", "a pet turtle"), ("names", "a bakery"),
    ("names", "a hiking club"), ("names", "a rock band"), ("names", "a sailing boat"),
    ("names", "a board game"), ("names", "a robot"),
    ("tips", "a first job interview"), ("tips", "cooking for a crowd"),
    ("tips", "moving to a new city"), ("tips", "writing a good email"),
    ("tips", "running in hot weather"), ("tips", "taking care of a bonsai"),
    ("questions", "a first meeting with a mentor"), ("questions", "a podcast guest who is a chef"),
    ("questions", "interviewing a scientist"), ("questions", "a book club"),
    ("uses", "a paperclip"), ("uses", "an old t-shirt"), ("uses", "a cardboard box"),
    ("uses", "coffee grounds"), ("uses", "a brick"), ("uses", "lemon peel"),
    ("topics", "a blog about cooking"), ("topics", "a school debate"),
    ("topics", "a history essay"), ("topics", "a YouTube channel about science"),
    ("activities", "a snowy day"), ("activities", "a beach holiday"),
    ("activities", "a visit to a big city"), ("activities", "kids on a long car ride"),
]  # fmt: skip

LIST_TEMPLATES = {
    "ideas": [
        "List {n} ideas for {s}.",
        "Give me {n} ideas for {s}.",
        "Brainstorm {n} ideas for {s}.",
    ],
    "ways": ["List {n} ways to {s}.", "What are {n} ways to {s}?", "Give me {n} ways to {s}."],
    "names": [
        "Suggest {n} names for {s}.",
        "Brainstorm {n} names for {s}.",
        "List {n} names for {s}.",
    ],
    "tips": ["Give {n} tips for {s}.", "List {n} tips for {s}."],
    "questions": ["Write {n} questions for {s}.", "List {n} questions for {s}."],
    "uses": ["List {n} creative uses for {s}.", "Brainstorm {n} uses for {s}."],
    "topics": ["Suggest {n} topics for {s}.", "List {n} topics for {s}."],
    "activities": ["List {n} activities for {s}.", "Suggest {n} activities for {s}."],
}

LIST_FEWSHOT = [
    ("ideas for a picnic", ["fruit skewers and lemonade", "a frisbee game in the park",
                             "a blanket under a big tree", "sandwiches cut into shapes"]),
    ("ways to stay warm in winter", ["wear wool socks", "drink hot tea",
                                      "close the curtains at night", "layer thin clothes"]),
    ("names for a goldfish", ["Bubbles", "Captain Fin", "Goldie", "Nemo Junior"]),
]  # fmt: skip


def rewrite_fewshot_prompt(question: str) -> str:
    """A plain-text few-shot prompt for the base model: question -> search queries."""
    parts = []
    for q, queries in REWRITE_FEWSHOT:
        parts.append(f"Question: {q}\nSearch queries:\n" + "\n".join(f"- {x}" for x in queries))
    parts.append(f"Question: {question}\nSearch queries:\n-")
    return "\n\n".join(parts)


def list_fewshot_prompt(kind: str, subject: str) -> str:
    """A plain-text few-shot prompt for the base model: subject -> list items."""
    parts = []
    for s, items in LIST_FEWSHOT:
        parts.append(f"Topic: {s}\nList:\n" + "\n".join(f"- {x}" for x in items))
    parts.append(f"Topic: {kind} for {subject}\nList:\n-")
    return "\n\n".join(parts)


_WORD = re.compile(r"[a-z0-9']+")
# The training filters keep their own stop words and word rule rather than importing
# shared_core.eval.tasks.content_words: the evaluation's scoring code must not shape what the
# adapter is trained on, and the shipped data were built with exactly these (the shared rule
# would change one of the 217 kept rewrite examples).
STOPWORDS = set(
    [
        "a",
        "an",
        "the",
        "of",
        "for",
        "on",
        "in",
        "to",
        "and",
        "or",
        "is",
        "are",
        "was",
        "were",
        "be",
        "do",
        "does",
        "did",
        "how",
        "what",
        "why",
        "when",
        "where",
        "who",
        "which",
        "can",
        "could",
        "should",
        "would",
        "i",
        "my",
        "me",
        "you",
        "your",
        "it",
        "its",
        "this",
        "that",
        "with",
        "at",
        "by",
        "from",
        "as",
        "into",
        "about",
        "not",
        "no",
        "so",
        "if",
        "than",
        "then",
        "there",
        "their",
        "they",
        "we",
        "our",
        "us",
        "get",
        "make",
    ]
)


def content_words(text: str) -> set[str]:
    """Lower-case words of ``text`` that are not stop words (light plural stripping)."""
    return {w.rstrip("s") if len(w) > 3 else w for w in _WORD.findall(text.lower())} - STOPWORDS


ECHO_MARKERS = ("question", "queries", "query", "language model", "assistant", "version",
                "search engine", "original", "generate", "topic", "list:")  # fmt: skip


def parse_items(text: str) -> list[str]:
    """The ``- item`` lines of a few-shot continuation (it starts after the first ``-``)."""
    block = text.split("\n\n")[0]
    items = []
    for number, line in enumerate(block.split("\n")):
        line = line.strip()
        if number > 0:
            if not line.startswith("-"):
                break
            line = line[1:]
        line = line.strip().strip('"').rstrip(".").strip()
        if line:
            items.append(line)
    return items


def filter_queries(question: str, items: list[str]) -> list[str]:
    """Rewrites that pass the rule filters (see the module docstring), in order, distinct."""
    keep: list[str] = []
    qwords = content_words(question)
    for item in items:
        words = item.split()
        low = item.lower()
        if not 2 <= len(words) <= 14 or any(m in low for m in ECHO_MARKERS):
            continue
        if not content_words(item) & qwords or low.rstrip("?") == question.lower().rstrip("?"):
            continue
        if not re.fullmatch(r"[A-Za-z0-9 ,'?\-&/()]+", item):
            continue
        if low in {k.lower() for k in keep}:
            continue
        keep.append(item)
    return keep


def filter_list_items(prompt: str, items: list[str]) -> list[str]:
    """List items that pass the rule filters: 1-12 words, no prompt echo, plain text, distinct."""
    keep: list[str] = []
    for item in items:
        words = item.split()
        low = item.lower()
        if not 1 <= len(words) <= 12 or any(m in low for m in ECHO_MARKERS):
            continue
        if not re.fullmatch(r"[A-Za-z0-9 ,'!\-&/()]+", item) or low in prompt.lower():
            continue
        if low in {k.lower() for k in keep}:
            continue
        keep.append(item)
    return keep


def sample_base(prompts: list[str], args: argparse.Namespace) -> list[str]:
    """Continuations of plain-text prompts by the demo base model (no chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shared_core.demo_models import ensure_demo_base

    base = ensure_demo_base(progress=print)
    tok = AutoTokenizer.from_pretrained(base)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    out_texts: list[str] = []
    t0 = time.perf_counter()
    for start in range(0, len(prompts), args.batch):
        chunk = prompts[start : start + args.batch]
        enc = tok(chunk, return_tensors="pt", padding=True)
        torch.manual_seed(args.seed + start)
        with torch.no_grad():
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=args.temperature,
                top_p=1.0,
                top_k=0,
                min_p=0.05,
                max_new_tokens=args.max_new_tokens,
                pad_token_id=tok.pad_token_id,
                stop_strings=["\n\n"],
                tokenizer=tok,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        out_texts += tok.batch_decode(new, skip_special_tokens=True)
        print(f"base samples: {len(out_texts)}/{len(prompts)} "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)  # fmt: skip
    return out_texts


def wrong_calls(
    example: dict[str, Any], same_tool: list[dict[str, Any]], rng: random.Random
) -> list[str]:
    """Wrong calls for a right one, the failures a weak tool caller shows: empty arguments,
    the user's question pasted into the string arguments, the values of another request for
    the same tool, and a general web search instead of the bound tool."""
    call = parse_tool_calls(example["response"]).tool_calls[0]
    name, arguments = call.name, call.arguments
    question = example["messages"][-1]["content"]
    wrong = [format_call(name, {k: "" for k in arguments})]
    if any(isinstance(v, str) for v in arguments.values()):
        pasted = {k: question if isinstance(v, str) else v for k, v in arguments.items()}
        wrong.append(format_call(name, pasted))
    others = [
        parse_tool_calls(e["response"]).tool_calls[0].arguments
        for e in same_tool
        if e is not example
    ]
    others = [a for a in others if a != arguments and set(a) == set(arguments)]
    if others:
        wrong.append(format_call(name, rng.choice(others)))
    if name != "web_search":
        wrong.append(format_call("web_search", {"query": question}))
    return wrong


def check_disjoint(questions: list[str]) -> None:
    """Fail when a training question is (or contains) an evaluation prompt."""
    tasks_dir = REPO_ROOT / "shared_core" / "assets" / "tasks"
    held: list[str] = []
    for path in sorted(tasks_dir.glob("*.json")):
        data = json.loads(path.read_text())
        for item in data.get("prompts", []):
            held.append((item.get("question") or item.get("prompt") or "").lower())
    for q in questions:
        low = q.lower()
        for h in held:
            if h and (h in low or low in h):
                raise SystemExit(f"training question overlaps the task evaluation: {q!r}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/task_demo/data"))
    p.add_argument("--tool-episodes", type=int, default=600)
    p.add_argument("--rewrite-draws", type=int, default=3, help="base samples per question")
    p.add_argument("--list-draws", type=int, default=3, help="base samples per list subject")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--max-new-tokens", type=int, default=56)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--tool-pairs", type=int, default=96, help="DPO pairs for tool calls")
    p.add_argument(
        "--reuse-samples",
        type=Path,
        default=None,
        help="base_samples.jsonl of an earlier run with the same prompts (skips sampling)",
    )
    args = p.parse_args(argv)
    out = args.out if args.out.is_absolute() else REPO_ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    t0 = time.perf_counter()

    tool_examples: list[dict[str, Any]] = []
    for _ in range(args.tool_episodes):
        tool_examples += tool_episode(rng)

    questions = rewrite_questions()
    list_prompts = [(k, s) for k, s in LIST_SUBJECTS]
    check_disjoint(questions + [f"{k} for {s}" for k, s in list_prompts])

    fewshot = [rewrite_fewshot_prompt(q) for q in questions for _ in range(args.rewrite_draws)]
    fewshot += [list_fewshot_prompt(k, s) for k, s in list_prompts for _ in range(args.list_draws)]
    if args.reuse_samples:
        saved = [json.loads(line) for line in args.reuse_samples.read_text().splitlines()]
        if [r["prompt"] for r in saved] != fewshot:
            raise SystemExit(f"{args.reuse_samples} was drawn for other prompts; sample again")
        texts = [r["text"] for r in saved]
    else:
        texts = sample_base(fewshot, args)
    raw_path = out / "base_samples.jsonl"
    raw_path.write_text("".join(json.dumps({"prompt": p_, "text": t}) + "\n"
                                for p_, t in zip(fewshot, texts, strict=True)))  # fmt: skip
    n_rw = len(questions) * args.rewrite_draws

    rewrite_examples: list[dict[str, Any]] = []
    drawn = stats_kept = 0
    for i, q in enumerate(questions):
        for d in range(args.rewrite_draws):
            text = texts[i * args.rewrite_draws + d]
            drawn += 1
            queries = filter_queries(q, parse_items(text))
            if len(queries) < 2:
                continue
            stats_kept += 1
            n = min(len(queries), rng.choice([3, 3, 4, 5]))
            template = rng.choice(REWRITE_INSTRUCTIONS)
            user = template.format(n=n, q=q)
            rewrite_examples.append(
                {"kind": "rewrite", "messages": [{"role": "user", "content": user}],
                 "response": "\n".join(queries[:n]), "question": q}
            )  # fmt: skip
    list_examples: list[dict[str, Any]] = []
    list_kept = 0
    for j, (kind, subject) in enumerate(list_prompts):
        for d in range(args.list_draws):
            text = texts[n_rw + j * args.list_draws + d]
            prompt_hint = f"{kind} for {subject}"
            items = filter_list_items(prompt_hint, parse_items(text))
            if len(items) < 3:
                continue
            list_kept += 1
            n = len(items[:7])
            user = rng.choice(LIST_TEMPLATES[kind]).format(n=n, s=subject)
            numbered = rng.random() < 0.7
            body = "\n".join(
                f"{k + 1}. {it}" if numbered else f"- {it}" for k, it in enumerate(items[:n])
            )
            list_examples.append(
                {"kind": "list", "messages": [{"role": "user", "content": user}],
                 "response": body}
            )  # fmt: skip

    pairs: list[dict[str, Any]] = []
    for ex in rng.sample(rewrite_examples, min(48, len(rewrite_examples))):
        user = ex["messages"][-1]["content"]
        echo = user.split("\n")[0] if rng.random() < 0.5 else "query: " + user.replace("\n", " ")
        pairs.append({"kind": "rewrite", "prompt": ex["messages"], "chosen": ex["response"],
                      "rejected": echo[:400]})  # fmt: skip
    for ex in rng.sample(list_examples, min(24, len(list_examples))):
        pairs.append({"kind": "list", "prompt": ex["messages"], "chosen": ex["response"],
                      "rejected": ex["messages"][-1]["content"]})  # fmt: skip
    calls = [e for e in tool_examples if e["kind"] == "tool"]
    for i, ex in enumerate(rng.sample(calls, min(args.tool_pairs, len(calls)))):
        wrong = wrong_calls(ex, [e for e in calls if e["tool"] == ex["tool"]], rng)
        pairs.append({"kind": "tool", "prompt": ex["messages"], "chosen": ex["response"],
                      "rejected": wrong[i % len(wrong)]})  # fmt: skip

    for name, rows in (("tool", tool_examples), ("rewrite", rewrite_examples),
                       ("list", list_examples), ("task_pairs", pairs)):  # fmt: skip
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {
        "tool_examples": len(tool_examples),
        "tool_calls": len(calls),
        "tool_answers": len(tool_examples) - len(calls),
        "rewrite_questions": len(questions),
        "rewrite_base_draws": drawn,
        "rewrite_kept": stats_kept,
        "list_subjects": len(list_prompts),
        "list_base_draws": len(list_prompts) * args.list_draws,
        "list_kept": list_kept,
        "task_pairs": len(pairs),
        "args": {k: str(v) for k, v in vars(args).items()},
        "wall_time_s": round(time.perf_counter() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
