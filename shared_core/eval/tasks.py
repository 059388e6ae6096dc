"""Judge-free task evaluation: tool calls, query rewriting for retrieval, brainstorm lists.

``baco eval --tasks tools,rewrite,lists`` runs it (or :func:`run_tasks` from Python). The
prompts, the tool schemas and a labelled passage corpus ship in ``shared_core/assets/tasks``
(written for this evaluation and used by no training script). Each task is scored by rules,
no judge model:

* **tools** (``tools.json``): three tools are bound (calculator, web_search, get_weather)
  with ``tool_choice="required"``; the prompt is what the adapters send
  (:func:`shared_core.tools.tool_request`) and the call is decoded under its grammar (when
  llguidance is installed, as in the adapters). A sample scores ``parsed`` (one call that
  decodes), ``right_tool`` and ``right_args``: the calculator's expression evaluates to the
  expected value; the search query shares a content word with the question, has no more
  words than the question plus 4 and is not an echo of the tool instructions; the weather
  call names the city asked about.
* **rewrite** (``rewrite.json``): each question goes into LlamaIndex's query-generation
  prompt asking for 4 queries. The answer's lines are the rewrites; a rewrite is *valid*
  when it is a query (2-20 words, no words of the instruction's boilerplate, shares a
  content word with the question, not the question itself). Each valid rewrite retrieves
  the top ``k`` passages of a 10-topic × 8-passage corpus with BM25 (a rewrite without a
  shared word also counts when its best passage is on the question's topic); scored per answer: the
  share of valid lines, distinct valid rewrites, the distinct passages of the question's
  topic reached by all rewrites (``relevant``) and their recall (of 8).
* **lists** (``lists.json``): "list 5 ...". Per answer: items (numbered or bulleted lines,
  or comma-separated items), whether it is a list (≥ 3 items); per prompt: distinct items
  across its samples after embedding deduplication (MiniLM cosine ≥ 0.8 when the eval extra
  is installed, else content-word overlap).

Generations go to ``<out>/tasks/<task>.jsonl`` (one record per setting and prompt, resumable)
and the summary to ``<out>/tasks/summary.json`` / ``summary.md``.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "TASK_NAMES",
    "Bm25",
    "format_task_table",
    "load_task",
    "parse_list_items",
    "run_tasks",
    "safe_arithmetic",
    "score_list_prompt",
    "score_rewrite",
    "score_tool_call",
    "split_queries",
    "summarise_tasks",
    "task_prompts",
]

TASK_NAMES = ("tools", "rewrite", "lists")
#: Tokens per sample of each task (a call, four queries, a five-item list).
MAX_NEW_TOKENS = {"tools": 48, "rewrite": 72, "lists": 96}
#: Passages each rewrite retrieves.
RETRIEVE_K = 3


def tasks_dir() -> Path:
    """Folder of the task files shipped with baco."""
    return Path(__file__).resolve().parents[1] / "assets" / "tasks"


def load_task(name: str) -> dict[str, Any]:
    """The prompts (and tools / corpus) of one task."""
    if name not in TASK_NAMES:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASK_NAMES)}")
    return json.loads((tasks_dir() / f"{name}.json").read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------- text rules

_WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
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
        "much",
        "many",
        "long",
        "need",
        "know",
        "tell",
        "find",
        "look",
        "up",
        "search",
        "please",
        "some",
        "any",
        "will",
        "today",
        "now",
        "right",
    ]
)


def content_words(text: str) -> set[str]:
    """Lower-case content words (stop words dropped, a plural ``s`` stripped)."""
    return {
        w[:-1] if len(w) > 3 and w.endswith("s") else w for w in _WORD.findall(text.lower())
    } - STOPWORDS


_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}


def safe_arithmetic(expression: str) -> float | None:
    """The value of an arithmetic expression (+ - * / // %, parentheses, numbers), or
    ``None`` when it is anything else or does not evaluate. ``x``/``×``/``÷`` are read as
    ``*``/``/``; thousands separators are not accepted."""
    text = expression.replace("×", "*").replace("÷", "/").replace("x", "*").strip()
    if not text or len(text) > 200:
        return None
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return None

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            inner = value(node.operand)
            return -inner if isinstance(node.op, ast.USub) else inner
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](value(node.left), value(node.right))
        raise ValueError("not arithmetic")

    try:
        result = value(tree.body)
    except (ValueError, ZeroDivisionError, OverflowError, TypeError):
        return None
    return float(result) if math.isfinite(result) else None


#: Words of the tool instructions and of the rewrite prompt's boilerplate: a "query" made
#: of them is an echo of the prompt, not a rewrite.
ECHO_MARKERS = (
    "search queries",
    "search query",
    "input query",
    "queries",
    "helpful assistant",
    "language model",
    "generate",
    "one on each line",
    "tool_call",
    "<tool",
    "arguments",
    "you must call",
)


def is_echo(text: str) -> bool:
    """Whether ``text`` repeats the instructions (see :data:`ECHO_MARKERS`)."""
    low = text.lower()
    return any(marker in low for marker in ECHO_MARKERS)


# ------------------------------------------------------------------------------------ tools


def score_tool_call(text: str, item: Mapping[str, Any]) -> dict[str, Any]:
    """Score one tool-call response: ``parsed``, ``right_tool``, ``right_args`` (0/1 each)."""
    from ..tools import parse_tool_calls

    reply = parse_tool_calls(text)
    out: dict[str, Any] = {"parsed": 0, "right_tool": 0, "right_args": 0, "call": None}
    if len(reply.tool_calls) < 1 or reply.invalid_tool_calls:
        return out
    call = reply.tool_calls[0]
    out["parsed"] = 1
    out["call"] = {"name": call.name, "arguments": call.arguments}
    if call.name != item["tool"]:
        return out
    out["right_tool"] = 1
    args = call.arguments
    if item["tool"] == "calculator":
        got = safe_arithmetic(str(args.get("expression", "")))
        ok = got is not None and abs(got - float(item["expect"]["value"])) < 1e-6
    elif item["tool"] == "web_search":
        query = str(args.get("query", ""))
        ok = (
            bool(content_words(query) & content_words(item["question"]))
            and len(query.split()) <= len(item["question"].split()) + 4
            and not is_echo(query)
        )
    elif item["tool"] == "get_weather":
        ok = str(args.get("city", "")).strip().lower() == item["expect"]["city"].lower()
    else:
        ok = args == item.get("expect", {}).get("arguments")
    out["right_args"] = int(bool(ok))
    return out


# ---------------------------------------------------------------------------------- rewrite

_LIST_PREFIX = re.compile(r"^\s*(?:[-*•]|\d{1,2}[.)]|query\s*\d*\s*:)\s*", re.IGNORECASE)


def split_queries(text: str) -> list[str]:
    """The lines of a rewrite answer, without list markers and quotes (empty lines dropped)."""
    out = []
    for line in text.splitlines():
        line = _LIST_PREFIX.sub("", line.strip()).strip().strip('"').strip()
        if line:
            out.append(line)
    return out


def valid_rewrite(query: str, question: str, on_topic: bool = False) -> bool:
    """A rewrite that is a query: 2-20 words, no instruction echo, not the question itself,
    and about the question: it shares a content word with it, or (``on_topic``) its best
    passage is of the question's topic (a synonym rewrite)."""
    words = query.split()
    if not 2 <= len(words) <= 20 or is_echo(query):
        return False
    if query.lower().strip(" ?.") == question.lower().strip(" ?."):
        return False
    return on_topic or bool(content_words(query) & content_words(question))


class Bm25:
    """BM25 (k1 1.5, b 0.75) over a small passage list; ``search`` returns passage indices."""

    def __init__(self, passages: Sequence[str], k1: float = 1.5, b: float = 0.75) -> None:
        self.docs = [sorted_terms(p) for p in passages]
        self.k1, self.b = k1, b
        self.avg = sum(len(d) for d in self.docs) / max(1, len(self.docs))
        df: dict[str, int] = {}
        for d in self.docs:
            for term in set(d):
                df[term] = df.get(term, 0) + 1
        n = len(self.docs)
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}

    def scores(self, query: str) -> list[float]:
        terms = sorted_terms(query)
        out = []
        for d in self.docs:
            s = 0.0
            for term in terms:
                tf = d.count(term)
                if tf:
                    norm = tf + self.k1 * (1 - self.b + self.b * len(d) / self.avg)
                    s += self.idf[term] * tf * (self.k1 + 1) / norm
            out.append(s)
        return out

    def search(self, query: str, k: int) -> list[int]:
        """Indices of the top ``k`` passages with a positive score (ties: corpus order)."""
        scored = [(s, -i) for i, s in enumerate(self.scores(query)) if s > 0]
        return [-i for _, i in sorted(scored, reverse=True)[:k]]


def sorted_terms(text: str) -> list[str]:
    """Content-word tokens of ``text`` in order (BM25's terms)."""
    return [
        w[:-1] if len(w) > 3 and w.endswith("s") else w
        for w in _WORD.findall(text.lower())
        if w not in STOPWORDS
    ]


def corpus_index(data: Mapping[str, Any]) -> tuple[list[str], list[str], Bm25]:
    """``(passages, topic of each passage, BM25 index)`` of the rewrite corpus."""
    passages, topics = [], []
    for topic, rows in data["corpus"].items():
        passages += rows
        topics += [topic] * len(rows)
    return passages, topics, Bm25(passages)


def score_rewrite(
    text: str,
    item: Mapping[str, Any],
    topics: Sequence[str],
    index: Bm25,
    k: int = RETRIEVE_K,
) -> dict[str, Any]:
    """Score one rewrite answer (see the module docstring): ``lines``, ``valid`` (rewrites
    that are queries), ``distinct_queries``, ``relevant`` (passage indices of the question's
    topic reached by the valid rewrites' top ``k``) and ``recall`` (of the topic's passages)."""
    lines = split_queries(text)
    top = {q: index.search(q, 1) for q in lines}
    valid = [
        q
        for q in lines
        if valid_rewrite(q, item["question"], bool(top[q]) and topics[top[q][0]] == item["topic"])
    ]
    distinct = list(dict.fromkeys(q.lower() for q in valid))
    reached: set[int] = set()
    for query in distinct:
        reached.update(index.search(query, k))
    relevant = sorted(i for i in reached if topics[i] == item["topic"])
    topic_size = sum(1 for t in topics if t == item["topic"])
    return {
        "lines": len(lines),
        "valid": len(valid),
        "valid_share": len(valid) / len(lines) if lines else 0.0,
        "any_valid": int(bool(valid)),
        "distinct_queries": len(distinct),
        "passages": sorted(reached),
        "relevant": relevant,
        "recall": len(relevant) / topic_size,
    }


# ------------------------------------------------------------------------------------ lists

_ITEM = re.compile(r"^\s*(?:[-*•]|\d{1,2}[.)])\s+(.*\S)")


def parse_list_items(text: str) -> list[str]:
    """Items of a list answer: its numbered or bulleted lines; failing that, several short
    plain lines; failing that, comma/semicolon-separated phrases of a single line."""
    items = [m.group(1).strip() for m in map(_ITEM.match, text.splitlines()) if m]
    if items:
        return [i for i in items if i]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) >= 3 and all(len(line.split()) <= 15 for line in lines):
        return lines
    if len(lines) == 1 and re.search(r"[,;]", lines[0]):
        parts = [p.strip(" .") for p in re.split(r"[,;]|\band\b", lines[0])]
        return [p for p in parts if p]
    return []


def _clean_item(item: str) -> str:
    return re.sub(r"\*\*|__", "", item).strip(" .:-").lower()


def dedup_count(items: Sequence[str], embed: Any = None, threshold: float = 0.8) -> int:
    """Distinct items: greedy classes by MiniLM cosine ≥ ``threshold`` with ``embed``; without
    it, two items are the same when their content words are equal or one contains the other."""
    items = [i for i in (_clean_item(x) for x in items) if i]
    if not items:
        return 0
    if embed is not None:
        from .semantic import distinct_classes

        return distinct_classes(items, embed, threshold)
    reps: list[set[str]] = []
    for item in items:
        words = content_words(item) or {item}
        if not any(words <= r or r <= words for r in reps):
            reps.append(words)
    return len(reps)


def score_list_prompt(
    samples: Sequence[str], item: Mapping[str, Any], embed: Any = None
) -> dict[str, Any]:
    """Score one list prompt's samples: mean items per answer, list share, distinct items."""
    parsed = [parse_list_items(s) for s in samples]
    kept = [[i for i in items if not is_echo(i) and len(i.split()) <= 25] for items in parsed]
    pooled = [i for items in kept for i in items]
    return {
        "items_per_answer": sum(len(k) for k in kept) / max(1, len(samples)),
        "list_share": sum(1 for k in kept if len(k) >= 3) / max(1, len(samples)),
        "distinct_items": dedup_count(pooled, embed),
        "n_items": [len(k) for k in kept],
    }


# ---------------------------------------------------------------------------------- prompts


def task_prompts(name: str, data: Mapping[str, Any]) -> list[tuple[dict[str, Any], Any, Any]]:
    """``(item, prompt, json_schema)`` per prompt of a task, as the engine takes them."""
    out: list[tuple[dict[str, Any], Any, Any]] = []
    if name == "tools":
        from ..tools import tool_request

        request = tool_request(data["tools"], data.get("tool_choice", "required"))
        constraint = request.constraint if _grammar_available() else None
        for item in data["prompts"]:
            messages = request.messages([{"role": "user", "content": item["question"]}])
            out.append((item, messages, constraint))
    elif name == "rewrite":
        for item in data["prompts"]:
            text = data["instruction"].format(n=data["n_queries"], question=item["question"])
            out.append((item, [{"role": "user", "content": text}], None))
    else:
        for item in data["prompts"]:
            out.append((item, [{"role": "user", "content": item["prompt"]}], None))
    return out


def _grammar_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llguidance") is not None


# -------------------------------------------------------------------------------------- run


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash: generated again
    return rows


def run_tasks(
    engine: Any,
    settings: Sequence[Any],
    out: str | Path,
    *,
    tasks: Sequence[str] = TASK_NAMES,
    k: Mapping[str, int] | None = None,
    top_p: float = 1.0,
    min_p: float = 0.05,
    seed: int = 0,
    batch_prompts: int = 10,
    limit: int | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Generate what is missing for every (task, setting, prompt) into ``out/tasks`` and
    return that folder. ``engine`` is a BacoEngine or a zero-argument callable making one
    (called only when something is missing). ``k``: samples per prompt and task (default
    tools 1, rewrite 2, lists 2). Every setting uses the same seed, top_p and min_p."""
    folder = Path(out) / "tasks"
    folder.mkdir(parents=True, exist_ok=True)
    k = {"tools": 1, "rewrite": 2, "lists": 2, **(k or {})}
    loaded = {name: task_prompts(name, load_task(name))[:limit] for name in tasks}
    done = {
        name: {(r["setting"], r["prompt_id"]) for r in _read(folder / f"{name}.jsonl")}
        for name in tasks
    }
    # Setting by setting (every task of a setting before the next one), so a run cut short
    # has whole settings.
    for setting in settings:
        for name in tasks:
            path = folder / f"{name}.jsonl"
            todo = [x for x in loaded[name] if (setting.key, x[0]["id"]) not in done[name]]
            for start in range(0, len(todo), batch_prompts):
                chunk = todo[start : start + batch_prompts]
                if callable(engine) and not hasattr(engine, "generate"):
                    engine = engine()
                t0 = time.perf_counter()
                options = dict(
                    n=k[name],
                    max_new_tokens=MAX_NEW_TOKENS[name],
                    top_p=top_p,
                    min_p=min_p,
                    seed=seed,
                    **setting.options(),
                )
                schema = chunk[0][2]
                if schema is not None:
                    options["json_schema"] = schema
                results = engine.generate([p for _, p, _ in chunk], **options)
                seconds = time.perf_counter() - t0
                with path.open("a", encoding="utf-8") as handle:
                    for (item, _, _), gens in zip(chunk, results, strict=True):
                        record = {
                            "task": name,
                            "setting": setting.key,
                            "method": setting.method,
                            "gamma": setting.gamma,
                            "temperature": setting.temperature,
                            "prompt_id": item["id"],
                            "samples": [g.text for g in gens],
                            "base_shares": [g.base_share for g in gens],
                            "k": k[name],
                            "top_p": top_p,
                            "min_p": min_p,
                            "seed": seed,
                            "grammar": schema is not None,
                            "seconds": seconds / len(chunk),
                        }
                        handle.write(json.dumps(record) + "\n")
                log(f"{name} {setting.key}: {start + len(chunk)}/{len(todo)} ({seconds:.1f} s)")
    return folder


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def summarise_tasks(folder: str | Path, embed: Any = None) -> dict[str, dict[str, dict]]:
    """Score every record under ``folder`` and return ``{task: {setting: metrics}}``."""
    folder = Path(folder)
    summary: dict[str, dict[str, dict]] = {}
    for name in TASK_NAMES:
        rows = _read(folder / f"{name}.jsonl")
        if not rows:
            continue
        data = load_task(name)
        items = {item["id"]: item for item in data["prompts"]}
        per: dict[str, list[dict[str, Any]]] = {}
        if name == "rewrite":
            _, topics, index = corpus_index(data)
        for row in rows:
            item = items.get(row["prompt_id"])
            if item is None:
                continue
            if name == "tools":
                scored = [score_tool_call(s, item) for s in row["samples"]]
                metric = {
                    key: _mean(s[key] for s in scored)
                    for key in ("parsed", "right_tool", "right_args")
                }
            elif name == "rewrite":
                scored = [score_rewrite(s, item, topics, index) for s in row["samples"]]
                union_rel = {i for s in scored for i in s["relevant"]}
                union_q = {q for s in row["samples"] for q in split_queries(s)}
                metric = {
                    "valid_share": _mean(s["valid_share"] for s in scored),
                    "any_valid": _mean(s["any_valid"] for s in scored),
                    "distinct_queries": _mean(s["distinct_queries"] for s in scored),
                    "relevant": _mean(len(s["relevant"]) for s in scored),
                    "recall": _mean(s["recall"] for s in scored),
                    "relevant_all_samples": len(union_rel),
                    "lines_all_samples": len(union_q),
                }
            else:
                metric = score_list_prompt(row["samples"], item, embed)
                metric.pop("n_items")
            metric["base_share"] = _mean(x for x in row["base_shares"] if x is not None)
            per.setdefault(row["setting"], []).append(metric)
        summary[name] = {
            setting: {
                "n_prompts": len(metrics),
                **{key: _mean(m[key] for m in metrics) for key in metrics[0]},
            }
            for setting, metrics in per.items()
        }
    return summary


_COLUMNS = {
    "tools": [("parsed", "parsed"), ("right_tool", "right tool"), ("right_args", "right args")],
    "rewrite": [
        ("valid_share", "valid rewrites"),
        ("distinct_queries", "distinct queries"),
        ("relevant", "relevant passages"),
        ("recall", "recall@3"),
        ("relevant_all_samples", "relevant, all samples"),
    ],
    "lists": [
        ("list_share", "is a list"),
        ("items_per_answer", "items/answer"),
        ("distinct_items", "distinct items"),
    ],
}


def _setting_order(key: str) -> tuple[int, str]:
    order = ["aligned", "base", "p-punc", "p", "nudging"]
    method = key.split("|")[0]
    return (order.index(method) if method in order else len(order), key)


def format_task_table(summary: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """One markdown table per task: a row per setting, the task's metrics as columns."""
    parts = []
    for name, settings in summary.items():
        cols = _COLUMNS[name]
        head = "| setting | prompts | " + " | ".join(c for _, c in cols) + " | base share |"
        lines = [f"**{name}**", "", head, "|---" + "|---:" * (len(cols) + 2) + "|"]
        for key in sorted(settings, key=_setting_order):
            m = settings[key]
            cells = [f"{m[c]:.2f}" for c, _ in cols]
            share = m.get("base_share")
            share_text = "–" if share is None or math.isnan(share) else f"{share:.2f}"
            label = key.replace("|gamma=", " γ=").replace("|", " ")  # no table separators
            lines.append(
                f"| {label} | {m['n_prompts']} | " + " | ".join(cells) + f" | {share_text} |"
            )
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def write_task_summary(folder: str | Path, embed: Any = None) -> dict[str, Any]:
    """Score, then write ``summary.json`` and ``summary.md`` into ``folder``."""
    folder = Path(folder)
    summary = summarise_tasks(folder, embed)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    (folder / "summary.md").write_text(format_task_table(summary))
    return summary


#: γ grid of each router in the task evaluation (``--grid`` overrides).
TASK_GRID = (0.1, 0.3, 0.5)
#: Methods of the task evaluation when ``--methods`` is not given.
TASK_METHODS = ("aligned", "base", "p-punc", "p", "nudging")


def _task_k(text: str | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in (text or "").split(","):
        if part.strip():
            name, _, value = part.partition("=")
            if name.strip() not in TASK_NAMES or not value.strip().isdigit():
                raise ValueError(f"--task-k expects TASK=N,... with TASK in {TASK_NAMES}")
            out[name.strip()] = int(value)
    return out


def run_task_command(args: Any) -> int:
    """``baco eval --tasks ...``: generate what is missing, score, write the summary."""
    import sys

    from ..cli_common import set_torch_threads
    from .runner import build_settings

    tasks = list(TASK_NAMES) if args.tasks == "all" else [t.strip() for t in args.tasks.split(",")]
    for name in tasks:
        if name not in TASK_NAMES:
            raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASK_NAMES)} or all")
    set_torch_threads(args.threads)
    methods = (
        [m.strip() for item in args.methods for m in item.split(",") if m.strip()]
        if args.methods
        else list(TASK_METHODS)
    )
    grids = {m: TASK_GRID for m in ("p", "p-punc", "nudging", "p-fc")} | dict(args.grid or [])
    temps = args.aligned_temperatures or (0.7, 1.0, 1.3)
    settings = build_settings(methods, grids=grids, aligned_temperatures=temps)
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731

    def make_engine() -> Any:
        from ..cli_common import load_pair
        from ..engine import BacoEngine

        return BacoEngine(load_pair(args))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if "generate" in args.stages:
        run_tasks(
            make_engine,
            settings,
            out,
            tasks=tasks,
            k=_task_k(args.task_k),
            top_p=args.top_p,
            min_p=args.min_p,
            seed=args.seed,
            batch_prompts=args.batch_prompts,
            limit=args.limit,
            log=say,
        )
    embed = None
    if not args.no_semantic:
        try:
            from .semantic import load_minilm_embedder

            embed = load_minilm_embedder()
        except ImportError as exc:
            say(f"lists: content-word deduplication ({exc})")
    summary = write_task_summary(out / "tasks", embed)
    print(format_task_table(summary))
    return 0
