"""Tool calling, framework-free: tool schemas, prompt rendering, grammars and parsing.

Both adapters convert their tool objects to OpenAI-style dicts and use this module for the
rest, so the format is defined once:

* tools are described in a Hermes-style system block (:func:`tools_system_block`);
* a call is written as ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``;
* earlier calls and tool results in the history are rendered as text in the same format
  (:func:`render_tool_messages`), so any chat template (and the base model's plain
  transcript) can carry them; the result also keeps the structured conversation
  (:class:`~shared_core.prompts.ToolPrompt`), which the engine renders through the aligned
  model's chat template instead when that template supports tools (it lists the tools; the
  system message still states the call format, :func:`tools_format_block`);
* :func:`tool_constraint` turns a tool choice into a grammar: ``"auto"`` leaves the text free
  but constrains every call once ``<tool_call>`` is written, ``"required"`` (or one named
  tool) makes the whole response exactly one call; either way the calls always parse;
* :func:`parse_tool_calls` splits a response into its text and its calls.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .structured import (
    Constraint,
    lark_constraint,
    limit_schema,
    with_whitespace_limit,
)

TOOL_CALL_BEGIN = "<tool_call>"
TOOL_CALL_END = "</tool_call>"
#: What a constrained call starts and ends with (the JSON sits on its own line).
CALL_OPEN = TOOL_CALL_BEGIN + "\n"
CALL_CLOSE = "\n" + TOOL_CALL_END


@dataclass(frozen=True)
class ToolSpec:
    """A callable tool: its name, description and JSON schema of its arguments."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object"})

    def openai(self) -> dict[str, Any]:
        """The tool as an OpenAI-style function description."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": dict(self.parameters),
            },
        }


@dataclass(frozen=True)
class ToolCall:
    """A parsed call: ``arguments`` is the decoded JSON object."""

    name: str
    arguments: dict[str, Any]
    id: str


@dataclass(frozen=True)
class InvalidToolCall:
    """A call that did not parse (only possible without a grammar, or when cut by length)."""

    name: str | None
    arguments: str
    id: str
    error: str


@dataclass(frozen=True)
class ParsedReply:
    """A response split into its visible text and its tool calls."""

    content: str
    tool_calls: list[ToolCall]
    invalid_tool_calls: list[InvalidToolCall]


def new_call_id() -> str:
    """A fresh tool-call id (``call_`` and 24 hex digits)."""
    return f"call_{uuid.uuid4().hex[:24]}"


def normalise_tools(tools: Sequence[Mapping[str, Any] | ToolSpec]) -> list[ToolSpec]:
    """Tools as :class:`ToolSpec` s, from OpenAI-style dicts (``{"type": "function",
    "function": {...}}`` or the inner ``{"name", "description", "parameters"}``)."""
    specs: list[ToolSpec] = []
    for i, tool in enumerate(tools):
        if isinstance(tool, ToolSpec):
            specs.append(tool)
            continue
        if not isinstance(tool, Mapping):
            raise TypeError(f"tool {i} must be a dict, got {type(tool).__name__}")
        spec = tool.get("function", tool)
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"tool {i} has no name")
        parameters = spec.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(parameters, Mapping):
            raise TypeError(f"tool {name!r}: parameters must be a JSON-schema dict")
        specs.append(ToolSpec(name, str(spec.get("description") or ""), dict(parameters)))
    return specs


def resolve_tool_choice(tools: Sequence[ToolSpec], choice: Any) -> tuple[str, list[ToolSpec]]:
    """``(mode, tools)`` for a tool choice: mode ``"auto"``, ``"none"`` or ``"required"``.

    ``None``/``"auto"``: the model may call any tool or answer; ``"none"``: no call;
    ``"any"``/``"required"``/``True``: exactly one call to one of the tools; a tool name, or
    ``{"type": "function", "function": {"name": ...}}`` / ``{"name": ...}``: that tool.
    """
    if choice is None or choice == "auto":
        return "auto", list(tools)
    if choice is False or choice == "none":
        return "none", []
    if choice is True or choice in ("any", "required"):
        if not tools:
            raise ValueError(f"tool_choice={choice!r} needs at least one tool")
        return "required", list(tools)
    if isinstance(choice, Mapping):
        choice = (choice.get("function") or choice).get("name")
    if isinstance(choice, str):
        for tool in tools:
            if tool.name == choice:
                return "required", [tool]
        raise ValueError(
            f"tool_choice {choice!r} is not one of the bound tools {[t.name for t in tools]}"
        )
    raise TypeError(
        "tool_choice must be None, 'auto', 'none', 'any', 'required', True, a tool name or "
        f"{{'type': 'function', 'function': {{'name': ...}}}}, got {choice!r}"
    )


def call_schema(
    tools: Sequence[ToolSpec], *, max_string_length: int | None = None
) -> dict[str, Any]:
    """JSON schema of one call ``{"name": ..., "arguments": {...}}`` to any of ``tools``.

    Argument objects that do not say otherwise get ``additionalProperties: false`` (a call
    carries only the declared arguments); ``max_string_length`` bounds unbounded strings
    (see :func:`~shared_core.structured.limit_schema`).
    """
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t.name},
                "arguments": limit_schema(
                    t.parameters, max_string_length=max_string_length, close_objects=True
                ),
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    return with_whitespace_limit(schema)


def tool_constraint(
    tools: Sequence[ToolSpec],
    mode: str,
    *,
    max_string_length: int | None = None,
    parallel: bool = True,
) -> Constraint | None:
    """The grammar of a tool choice (``mode`` from :func:`resolve_tool_choice`).

    ``"required"``: the whole response is one ``<tool_call>`` block. ``"auto"``: free text in
    which every ``<tool_call>`` block must be a valid call (a lazy grammar: it only takes
    effect once the model writes the opening tag). ``"none"``: ``None``.
    """
    if mode == "none" or not tools:
        return None
    schema = call_schema(tools, max_string_length=max_string_length)
    # Not key-sorted: llguidance writes properties in schema order, and "name" must come first
    # (the arguments depend on it; the prompt's examples show it first).
    body = f"%json {json.dumps(schema, ensure_ascii=False, separators=(',', ':'))}"
    if mode == "required":
        lark = f"start: {json.dumps(CALL_OPEN)} {body} {json.dumps(CALL_CLOSE)}\n"
        return lark_constraint(lark, label="tool call")
    if mode != "auto":
        raise ValueError(f"unknown tool mode {mode!r}")
    # Without parallel calls, at most one call, and the text after it never opens another.
    calls, tail = ("call*", "TEXT") if parallel else ("call?", "TAIL")
    lark = (
        "%llguidance {}\n"
        f"start: {calls} text\n"
        f"text: {tail}\n"
        "TEXT: /(.|\\n)*/\n"
        f"TAIL: /(.|\\n)*/ & ~/(.|\\n)*{TOOL_CALL_BEGIN}(.|\\n)*/\n"
        f"call_open[lazy]: TEXT {json.dumps(TOOL_CALL_BEGIN)}\n"
        f'call: call_open "\\n" {body} {json.dumps(CALL_CLOSE)}\n'
    )
    return lark_constraint(lark, label="tool call", protected=(TOOL_CALL_BEGIN, TOOL_CALL_END))


def tools_format_block(mode: str = "auto") -> str:
    """The system text that states the call format (the grammar's ``<tool_call>`` format).

    Sent to the aligned model in both renderings: after the tool list of
    :func:`tools_system_block`, and on its own when the chat template lists the tools."""
    rule = "You must call one tool." if mode == "required" else "Call a tool only if it helps."
    return (
        f"{rule} To call one, write\n"
        f'{CALL_OPEN}{{"name": <tool name>, "arguments": <arguments object>}}{CALL_CLOSE}\n'
        "Results come back in <tool_response></tool_response>."
    )


def tools_system_block(tools: Sequence[ToolSpec], mode: str = "auto") -> str:
    """The Hermes-style system text that describes ``tools`` and the call format."""
    listing = "\n".join(
        json.dumps(
            {"name": t.name, "description": t.description, "parameters": t.parameters},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        for t in tools
    )
    return f"Tools (JSON schemas):\n<tools>\n{listing}\n</tools>\n{tools_format_block(mode)}"


def format_call(name: str, arguments: Any) -> str:
    """One call in the response format: compact JSON, ``name`` first, as the grammar writes it."""
    payload = json.dumps(
        {"name": name, "arguments": arguments}, ensure_ascii=False, separators=(",", ":")
    )
    return f"{CALL_OPEN}{payload}{CALL_CLOSE}"


def tool_response_message(
    content: str, *, name: str | None = None, call_id: str | None = None
) -> dict[str, str]:
    """A tool's result as an engine message: a user turn with a ``<tool_response>`` block
    (Hermes style; neither model of a pair needs a tool role in its template). The block's
    first line names the tool and the call id when they are known."""
    head = {key: value for key, value in (("name", name), ("id", call_id)) if value}
    first = f"{json.dumps(head, ensure_ascii=False)}\n" if head else ""
    return {"role": "user", "content": f"<tool_response>\n{first}{content}\n</tool_response>"}


def tool_message(
    content: str, *, name: str | None = None, call_id: str | None = None
) -> dict[str, str]:
    """A tool's result as a structured ``tool`` message (what the adapters send to
    :func:`render_tool_messages`, which renders it for each model)."""
    message = {"role": "tool", "content": content}
    if name:
        message["name"] = name
    if call_id:
        message["tool_call_id"] = call_id
    return message


def _call_parts(call: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """``(name, arguments, id)`` of a call given as ``{"name", "arguments"|"args", "id"}`` or
    OpenAI's ``{"id", "function": {"name", "arguments"}}``; JSON-string arguments decoded."""
    spec = call.get("function", call)
    arguments = spec.get("arguments", spec.get("args", {}))
    if isinstance(arguments, str):
        with contextlib.suppress(json.JSONDecodeError):
            arguments = json.loads(arguments)
    return spec.get("name"), arguments, call.get("id") or spec.get("id")


def _with_system(messages: list[dict[str, Any]], block: str) -> None:
    """Append ``block`` to the leading system message (or insert one), in place."""
    if messages and messages[0]["role"] in ("system", "developer"):
        first = messages[0]
        messages[0] = {**first, "content": f"{first.get('content') or ''}\n\n{block}"}
    else:
        messages.insert(0, {"role": "system", "content": block})


def _native_messages(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[ToolSpec], mode: str
) -> list[dict[str, Any]]:
    """The conversation in the transformers chat-template format: assistant ``tool_calls``
    as ``{"id", "type": "function", "function": {"name", "arguments": dict}}``, results as
    ``{"role": "tool", "content", "name", "tool_call_id"}``; with active tools, the system
    message states the call format (:func:`tools_format_block`; the template lists them)."""
    from .prompts import ROLE_ALIASES

    out: list[dict[str, Any]] = []
    for message in messages:
        role = str(message.get("role", ""))
        role = "tool" if role in ("tool", "function") else ROLE_ALIASES.get(role.lower(), role)
        content = message.get("content") or ""
        if not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False)
        item: dict[str, Any] = {"role": role, "content": content}
        if role == "tool":
            for key in ("name", "tool_call_id"):
                if message.get(key):
                    item[key] = message[key]
        calls = message.get("tool_calls") or []
        if calls:
            item["tool_calls"] = []
            for call in calls:
                name, arguments, call_id = _call_parts(call)
                native = {"type": "function", "function": {"name": name, "arguments": arguments}}
                item["tool_calls"].append({"id": call_id, **native} if call_id else native)
        plain = role != "tool" and not calls
        if plain and out and out[-1]["role"] == role and "tool_calls" not in out[-1]:
            out[-1]["content"] = f"{out[-1]['content']}\n\n{content}"  # as the engine merges
        else:
            out.append(item)
    if tools and mode != "none":
        _with_system(out, tools_format_block(mode))
    return out


def render_tool_messages(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[ToolSpec] = (),
    mode: str = "auto",
) -> list[dict[str, str]]:
    """Messages with tool calls and tool results rendered as text, ready for the engine.

    An assistant message's ``tool_calls`` (``[{"name", "arguments"}]``, or OpenAI's
    ``{"function": {"name", "arguments"}}``) are appended to its content as ``<tool_call>``
    blocks; a ``tool`` message becomes a user turn holding a ``<tool_response>`` block. When
    ``tools`` are given (and ``mode`` is not ``"none"``), their description is added to the
    system message.

    When the conversation has tool calls, tool results or active tools, the result is a
    :class:`~shared_core.prompts.ToolPrompt`: the same text messages, plus the structured
    conversation, which the engine renders through the aligned model's chat template when
    that template supports tools (the base model always reads the text). A ``ToolPrompt``
    passed in again is re-rendered from its structured source (so tools can be added).
    """
    from .prompts import ToolPrompt

    if isinstance(messages, ToolPrompt):
        messages = messages.source
    out: list[dict[str, str]] = []
    structured = False
    for message in messages:
        role = str(message.get("role", ""))
        content = message.get("content") or ""
        if not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False)
        if role == "tool":
            structured = True
            out.append(
                tool_response_message(
                    content, name=message.get("name"), call_id=message.get("tool_call_id")
                )
            )
            continue
        calls = message.get("tool_calls") or []
        if calls:
            structured = True
            blocks = [format_call(*_call_parts(call)[:2]) for call in calls]
            content = "\n".join([content, *blocks]) if content else "\n".join(blocks)
        out.append({"role": role, "content": content})
    active = bool(tools) and mode != "none"
    if active:
        _with_system(out, tools_system_block(tools, mode))
    if not (structured or active):
        return out
    return ToolPrompt(
        out,
        source=messages,
        native=_native_messages(messages, tools, mode),
        tools=[t.openai() for t in tools] if active else None,
    )


def parse_tool_calls(text: str, *, ids: Sequence[str] | None = None) -> ParsedReply:
    """Split a response into its text and its ``<tool_call>`` blocks.

    The same splitter as streaming (:class:`ToolCallStream`), fed the whole text at once, so
    a streamed response and a non-streamed one give identical text and calls. A block whose
    JSON does not decode to ``{"name": str, "arguments": object}`` (possible only without a
    grammar, or when ``max_new_tokens`` cut the call) becomes an :class:`InvalidToolCall`,
    as does an opening tag that is never closed. ``ids`` (optional) are used for the calls
    (valid and invalid, in order); fresh ids otherwise.
    """
    splitter = ToolCallStream(ids=ids)
    items = splitter.feed(text) + splitter.finish()
    content = "".join(item for kind, item in items if kind == "text")
    calls = [item for kind, item in items if kind == "call"]
    invalid = [item for kind, item in items if kind == "invalid"]
    return ParsedReply(content, calls, invalid)


def _parse_block(body: str, call_id: str, *, closed: bool) -> ToolCall | InvalidToolCall:
    """One call from the text between its tags (``closed=False``: the closing tag never came)."""
    parsed = _parse_call(body, call_id) if closed else None
    if isinstance(parsed, ToolCall):
        return parsed
    error = parsed if isinstance(parsed, str) else "the call was cut off (no closing tag)"
    return InvalidToolCall(_guess_name(body), body, call_id, error)


def _call_end(text: str) -> int:
    """Index of the ``</tool_call>`` that closes a call body ``text``, or -1 if not there yet.

    The tag only counts outside JSON strings: an argument may itself contain ``</tool_call>``.
    """
    in_string = escaped = False
    for index, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "<" and text.startswith(TOOL_CALL_END, index):
            return index
    return -1


def _parse_call(body: str, call_id: str) -> ToolCall | str:
    try:
        payload = json.loads(body)
    except json.JSONDecodeError as exc:
        return f"invalid JSON: {exc}"
    if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
        return 'expected {"name": <string>, "arguments": <object>}'
    arguments = payload.get("arguments", payload.get("parameters", {}))
    if not isinstance(arguments, dict):
        return "arguments must be a JSON object"
    return ToolCall(payload["name"], arguments, call_id)


def _guess_name(body: str) -> str | None:
    """The ``name`` of a broken call, when it can be read."""
    marker = '"name"'
    at = body.find(marker)
    if at < 0:
        return None
    rest = body[at + len(marker) :].lstrip(" :\n\t")
    if not rest.startswith('"'):
        return None
    close = rest.find('"', 1)
    return rest[1:close] if close > 0 else None


@dataclass(frozen=True)
class ToolRequest:
    """Bound tools and a tool choice, resolved once per call (shared by both adapters).

    :meth:`messages` adds the tools to the prompt and renders tool calls/results in the
    history, :attr:`constraint` is the grammar to pass as the engine's ``json_schema``, and
    :meth:`parse` splits a response into text and calls.
    """

    tools: tuple[ToolSpec, ...]
    mode: str
    constraint: Constraint | None

    @property
    def active(self) -> bool:
        """True when calls may be generated (some tools and a mode other than ``"none"``)."""
        return bool(self.tools) and self.mode != "none"

    def messages(self, messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
        """The conversation for the engine (see :func:`render_tool_messages`)."""
        return render_tool_messages(messages, self.tools, self.mode)

    def parse(self, text: str) -> ParsedReply:
        """The response's text and calls (no parsing when calls are off)."""
        if not self.active:
            return ParsedReply(text, [], [])
        return parse_tool_calls(text)


def tool_request(
    tools: Sequence[Mapping[str, Any] | ToolSpec] | None,
    tool_choice: Any = None,
    *,
    max_string_length: int | None = None,
    parallel_tool_calls: bool | None = None,
) -> ToolRequest:
    """Validate ``tools`` and ``tool_choice`` and build their grammar (no model work).

    ``parallel_tool_calls=False`` allows at most one call per response (OpenAI's field;
    ``None`` or ``True``: any number).
    """
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise TypeError(
            f"parallel_tool_calls must be a boolean, got {type(parallel_tool_calls).__name__}"
        )
    specs = normalise_tools(tools or [])
    mode, chosen = resolve_tool_choice(specs, tool_choice)
    if not specs:
        mode = "none"
    constraint = (
        tool_constraint(
            chosen,
            mode,
            max_string_length=max_string_length,
            parallel=parallel_tool_calls is not False,
        )
        if chosen
        else None
    )
    return ToolRequest(tuple(specs), mode, constraint)


class ToolCallStream:
    """Splits (streamed) text into plain text and tool calls, as they arrive.

    :meth:`feed` returns ``("text", str)``, ``("call", ToolCall)`` and ``("invalid",
    InvalidToolCall)`` items; :meth:`finish` releases the rest. The result is the same however
    the text is cut into deltas:

    - text that may be the start of ``<tool_call>`` is held back until it is known not to
      be; at the end of the response such a partial tag is dropped (markup never reaches the
      text);
    - a call ends at the first ``</tool_call>`` outside its JSON strings; one never closed is
      an invalid call carrying the partial arguments;
    - the text is stripped as a whole: whitespace before the first text and after the last is
      dropped (trailing whitespace is held until more text follows).
    """

    def __init__(self, *, ids: Sequence[str] | None = None) -> None:
        self._buffer = ""
        self._inside = False
        self._started = False
        self._pending = ""
        self._ids = iter(ids or ())

    def _next_id(self) -> str:
        return next(self._ids, None) or new_call_id()

    def _text(self, text: str, items: list[tuple[str, Any]]) -> None:
        if not self._started:
            text = text.lstrip()
            if not text:
                return
            self._started = True
        text = self._pending + text
        body = text.rstrip()
        self._pending = text[len(body) :]
        if body:
            items.append(("text", body))

    def feed(self, delta: str) -> list[tuple[str, Any]]:
        self._buffer += delta
        items: list[tuple[str, Any]] = []
        while True:
            if self._inside:
                body = self._buffer[len(TOOL_CALL_BEGIN) :]
                end = _call_end(body)
                if end < 0:
                    return items
                self._buffer = body[end + len(TOOL_CALL_END) :]
                self._inside = False
                call = _parse_block(body[:end].strip(), self._next_id(), closed=True)
                items.append(("call" if isinstance(call, ToolCall) else "invalid", call))
                continue
            start = self._buffer.find(TOOL_CALL_BEGIN)
            if start >= 0:
                self._text(self._buffer[:start], items)
                self._buffer = self._buffer[start:]
                self._inside = True
                continue
            keep = _partial_suffix(self._buffer, TOOL_CALL_BEGIN)
            self._text(self._buffer[: len(self._buffer) - keep], items)
            self._buffer = self._buffer[len(self._buffer) - keep :]
            return items

    def finish(self) -> list[tuple[str, Any]]:
        rest, self._buffer = self._buffer, ""
        items: list[tuple[str, Any]] = []
        if self._inside:
            self._inside = False
            body = rest[len(TOOL_CALL_BEGIN) :].strip()
            items.append(("invalid", _parse_block(body, self._next_id(), closed=False)))
        else:
            self._text(rest[: len(rest) - _partial_suffix(rest, TOOL_CALL_BEGIN)], items)
        self._pending = ""
        return items


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0
