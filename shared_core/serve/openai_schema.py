"""OpenAI request parsing, validation and response bodies for ``baco serve``.

Framework-free (plain dicts in, plain dicts out) so that it is unit-tested without a server.
Every error is an :class:`APIError` carrying OpenAI's error body ``{"error": {"message",
"type", "param", "code"}}`` with ``param`` naming the request field to change. Options are
validated by the engine's own :class:`~shared_core.params.GenerationParams`, with the
engine's option names translated back to the request's field names.
"""

from __future__ import annotations

import importlib.util
import json
import math
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..params import GenerationParams
from ..prompts import ROLE_ALIASES, normalise_messages
from ..types import Generation

Kind = Literal["chat", "completion"]


class APIError(Exception):
    """An error answered with OpenAI's error body and an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """OpenAI's error body."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 ``invalid_request_error``."""
    return APIError(400, message, param=param, code=code)


def unsupported(param: str, what: str) -> APIError:
    """A 400 for a field that would change the result but is not supported."""
    return bad_request(
        f"{param}: {what} is not supported by this BACO server; remove it",
        param,
        code="unsupported_parameter",
    )


# ----------------------------------------------------------------------------- field tables

#: Request field -> engine option (the BACO extras and the OpenAI sampling fields).
OPTION_FIELDS: dict[str, str] = {
    "router": "router",
    "gamma": "gamma",
    "content_source": "content_source",
    "aligned_starts": "aligned_starts",
    "aligned_can_stop": "aligned_can_stop",
    "n": "n",
    "max_tokens": "max_new_tokens",
    "max_completion_tokens": "max_new_tokens",
    "min_tokens": "min_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "stop": "stop",
    "seed": "seed",
}

#: Fields accepted and ignored: they do not change what is generated.
IGNORED_FIELDS = frozenset(
    {
        "user",
        "store",
        "metadata",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
    }
)

#: Fields accepted only at a neutral value (field -> is the value neutral?).
NEUTRAL_FIELDS: dict[str, Any] = {
    "logit_bias": lambda v: v is None or v == {},
    "presence_penalty": lambda v: v is None or v == 0,
    "frequency_penalty": lambda v: v is None or v == 0,
    "repetition_penalty": lambda v: v is None or v == 1,
    "echo": lambda v: v is None or v is False,
    "suffix": lambda v: v is None or v == "",
    "modalities": lambda v: v is None or list(v) == ["text"],
    "audio": lambda v: v is None,
    "prediction": lambda v: v is None,
    "reasoning_effort": lambda v: v is None,
    "verbosity": lambda v: v is None,
    "web_search_options": lambda v: v is None,
    "functions": lambda v: v is None or v == [],
    "function_call": lambda v: v is None or v == "none",
}

#: Why a non-neutral value of a :data:`NEUTRAL_FIELDS` entry is refused.
_NEUTRAL_REASONS = {
    "logit_bias": "a non-empty logit_bias",
    "presence_penalty": "a non-zero presence_penalty",
    "frequency_penalty": "a non-zero frequency_penalty",
    "repetition_penalty": "a repetition_penalty other than 1",
    "echo": "echo",
    "suffix": "a suffix (insertion)",
    "modalities": "output modalities other than text",
    "audio": "audio output",
    "prediction": "predicted outputs",
    "reasoning_effort": "reasoning_effort",
    "verbosity": "verbosity",
    "web_search_options": "web search",
    "functions": "legacy function calling",
    "function_call": "legacy function calling",
}

COMMON_FIELDS = frozenset(
    {"model", "stream", "stream_options", "return_sources", "target_base_share"}
    | set(OPTION_FIELDS)
    | IGNORED_FIELDS
)
CHAT_FIELDS = COMMON_FIELDS | {
    "messages",
    "parallel_tool_calls",
    "max_string_length",
    "response_format",
    "tools",
    "tool_choice",
    "logprobs",
    "top_logprobs",
    "modalities",
    "audio",
    "prediction",
    "reasoning_effort",
    "verbosity",
    "web_search_options",
    "functions",
    "function_call",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
}
COMPLETION_FIELDS = COMMON_FIELDS | {
    "prompt",
    "best_of",
    "echo",
    "suffix",
    "logprobs",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
}

#: Engine options in validation order (the first failing one names the field).
_VALIDATION_ORDER = (
    "router",
    "gamma",
    "content_source",
    "aligned_starts",
    "aligned_can_stop",
    "n",
    "max_new_tokens",
    "min_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "stop",
    "seed",
)


def supports_json_schema() -> bool:
    """Whether structured output is available: the grammar engine of the ``structured`` extra
    (llguidance) is installed. Without it, ``response_format`` and tool calls answer 400 "not
    supported"."""
    return importlib.util.find_spec("llguidance") is not None


# ----------------------------------------------------------------------------- requests


@dataclass
class ParsedRequest:
    """A validated request: engine prompts and options plus how to answer."""

    kind: Kind
    model: str | None
    prompts: list[Any]
    options: dict[str, Any]
    stream: bool = False
    include_usage: bool = False
    return_sources: bool = False
    field_names: dict[str, str] = field(default_factory=dict)
    #: The request's tools (a :class:`shared_core.tools.ToolRequest`) when calls may be made.
    tools: Any = None

    @property
    def n(self) -> int:
        return int(self.options.get("n", 1))

    @property
    def prompt_param(self) -> str:
        """The request field holding the prompt(s)."""
        return "messages" if self.kind == "chat" else "prompt"


def _check_fields(body: Mapping[str, Any], allowed: frozenset[str]) -> None:
    """Refuse unknown fields (as OpenAI does) and result-changing unsupported values."""
    for name in body:
        if name not in allowed:
            raise bad_request(
                f"Unrecognized request argument supplied: {name}", name, "unknown_parameter"
            )
    for name, neutral in NEUTRAL_FIELDS.items():
        if name in body and name in allowed:
            try:
                ok = neutral(body[name])
            except TypeError:
                ok = False
            if not ok:
                raise unsupported(name, _NEUTRAL_REASONS[name])


def _engine_options(
    body: Mapping[str, Any], calibration: str | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """Engine options from the request, validated; and engine option -> request field."""
    options: dict[str, Any] = {}
    names: dict[str, str] = {}
    for request_name, engine_name in OPTION_FIELDS.items():
        value = body.get(request_name)
        if value is None:
            continue
        if request_name == "max_tokens" and body.get("max_completion_tokens") is not None:
            continue  # max_completion_tokens (the newer name) wins
        options[engine_name] = value
        names[engine_name] = request_name
    target = body.get("target_base_share")
    if target is not None and "gamma" not in options:
        options["gamma"] = _gamma_for_target(options.get("router", "p-punc"), target, calibration)
        names["gamma"] = "target_base_share"
    _validate(options, names)
    return options, names


def _gamma_for_target(router: Any, target: Any, calibration: str | None) -> float:
    from ..calibration import gamma_for_base_share

    if isinstance(target, bool) or not isinstance(target, (int, float)):
        raise bad_request(
            f"target_base_share must be a number, got {type(target).__name__}",
            "target_base_share",
        )
    if not isinstance(router, str):
        raise bad_request("router must be a string", "router")
    try:
        return gamma_for_base_share(router, float(target), calibration)
    except (ValueError, TypeError, OSError) as exc:
        raise bad_request(f"target_base_share: {exc}", "target_base_share") from exc


def _validate(options: dict[str, Any], names: Mapping[str, str]) -> None:
    """Validate ``options`` one field at a time so the error names the first bad field."""
    checked: dict[str, Any] = {}
    for name in _VALIDATION_ORDER:
        if name not in options:
            continue
        checked[name] = options[name]
        try:
            GenerationParams().with_overrides(**checked)
        except (TypeError, ValueError) as exc:
            field_name = names.get(name, name)
            message = str(exc)
            if message.startswith(name):
                message = field_name + message[len(name) :]
            if field_name not in message:
                message = f"{field_name}: {message}"
            raise bad_request(message, field_name) from exc
    extra = {k: v for k, v in options.items() if k not in checked}
    if extra:  # options outside the ordered list (e.g. structured output)
        try:
            GenerationParams().with_overrides(**options)
        except (TypeError, ValueError) as exc:
            raise bad_request(str(exc), names.get(next(iter(extra)))) from exc


def _stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad_request("stream must be a boolean", "stream")
    stream_options = body.get("stream_options")
    include_usage = False
    if stream_options is not None:
        if not stream:
            raise bad_request(
                "stream_options is only allowed when stream is true", "stream_options"
            )
        if not isinstance(stream_options, Mapping):
            raise bad_request("stream_options must be an object", "stream_options")
        include_usage = stream_options.get("include_usage", False)
        if include_usage is None:
            include_usage = False
        if not isinstance(include_usage, bool):
            raise bad_request(
                "stream_options.include_usage must be a boolean, got "
                f"{type(include_usage).__name__}",
                "stream_options.include_usage",
            )
    return stream, include_usage


def _common(
    body: Any, allowed: frozenset[str], calibration: str | None
) -> tuple[dict[str, Any], dict[str, str], bool, bool, bool, str | None]:
    if not isinstance(body, Mapping):
        raise bad_request("the request body must be a JSON object")
    _check_fields(body, allowed)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("model must be a string", "model")
    return_sources = body.get("return_sources", False)
    if not isinstance(return_sources, bool):
        raise bad_request("return_sources must be a boolean", "return_sources")
    stream, include_usage = _stream_flags(body)
    _check_max_string_length(body.get("max_string_length"))
    options, names = _engine_options(body, calibration)
    return options, names, stream, include_usage, return_sources, model


def _logprobs_option(body: Mapping[str, Any], kind: Kind) -> int | None:
    """The engine's ``logprobs`` (top alternatives, ``None``: off) from the request: chat's
    ``logprobs`` (bool) + ``top_logprobs``, or the completions API's ``logprobs`` (int)."""

    def top(value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 20:
            raise bad_request(f"{name} must be an integer in [0, 20], got {value!r}", name)
        return value

    if kind == "completion":
        value = body.get("logprobs")
        return None if value is None else top(value, "logprobs")
    wanted = body.get("logprobs")
    if wanted is None:
        wanted = False
    if not isinstance(wanted, bool):
        raise bad_request(f"logprobs must be a boolean, got {wanted!r}", "logprobs")
    count = body.get("top_logprobs")
    if count is not None and not wanted:
        raise bad_request("top_logprobs requires logprobs to be true", "top_logprobs")
    return (0 if count is None else top(count, "top_logprobs")) if wanted else None


def _logprob(value: float) -> float:
    """A log-probability JSON can carry (OpenAI's floor for impossible tokens)."""
    return max(value, -9999.0)


def chat_logprobs_body(entries: Sequence[Any]) -> dict[str, Any]:
    """``choices[].logprobs`` of a chat completion; ``source`` (a BACO extension) names the
    model that produced each token."""
    return {"content": [e.openai() for e in entries], "refusal": None}


def completion_logprobs_body(entries: Sequence[Any], offset: int, top: bool) -> dict[str, Any]:
    """``choices[].logprobs`` of a (legacy) completion, text offsets from ``offset``; plus
    ``sources`` (a BACO extension)."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [_logprob(e.logprob) for e in entries],
        "top_logprobs": [{t.token: _logprob(t.logprob) for t in e.top_logprobs} for e in entries]
        if top
        else None,
        "text_offset": offsets,
        "sources": [e.source for e in entries],
    }


def logprobs_body(request: ParsedRequest, entries: Sequence[Any] | None, offset: int = 0) -> Any:
    """The logprobs of a choice (or of a streamed chunk), ``None`` when not asked for."""
    if entries is None or request.options.get("logprobs") is None:
        return None
    if request.kind == "chat":
        return chat_logprobs_body(entries)
    return completion_logprobs_body(entries, offset, request.options["logprobs"] > 0)


def _check_max_string_length(value: Any) -> None:
    """``max_string_length`` is checked whether or not tools are given (400 naming it)."""
    from ..structured import check_max_string_length

    try:
        check_max_string_length(value)
    except (TypeError, ValueError) as exc:
        raise bad_request(str(exc), "max_string_length") from exc


def _message_content(message: Mapping[str, Any], index: int) -> str:
    """A message's text: a string, or the text parts of a content-part list."""
    content = message.get("content")
    where = f"messages[{index}].content"
    if isinstance(content, str):
        return content
    if content is None:
        if message.get("tool_calls"):
            raise unsupported(f"messages[{index}].tool_calls", "tool calling")
        raise bad_request(f"{where} is missing", where)
    if isinstance(content, Sequence):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise unsupported(f"{where}[{j}]", f"a content part of type {kind!r}")
            text = part.get("text")
            if not isinstance(text, str):
                raise bad_request(f"{where}[{j}].text must be a string", f"{where}[{j}].text")
            texts.append(text)
        return "\n".join(texts)
    raise bad_request(
        f"{where} must be a string or a list of text parts, got {type(content).__name__}", where
    )


def parse_messages(messages: Any, *, allow_tools: bool = False) -> list[dict[str, Any]]:
    """Validate an OpenAI ``messages`` list into ``{"role", "content"}`` dicts.

    With ``allow_tools``, ``tool`` messages and assistant ``tool_calls`` are kept (for
    :func:`shared_core.tools.render_tool_messages`); otherwise they answer 400.
    """
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise bad_request("messages must be a list of messages", "messages")
    if not messages:
        raise bad_request("messages must not be empty", "messages")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise bad_request(f"messages[{i}] must be an object", f"messages[{i}]")
        role = message.get("role")
        calls = message.get("tool_calls")
        if role in ("tool", "function") and not (allow_tools and role == "tool"):
            raise unsupported(f"messages[{i}].role", f"a {role!r} message (tool calling)")
        if role != "tool" and (not isinstance(role, str) or role.lower() not in ROLE_ALIASES):
            raise bad_request(
                f"messages[{i}].role {role!r} is not one of "
                f"{', '.join(sorted([*ROLE_ALIASES, 'tool'] if allow_tools else ROLE_ALIASES))}",
                f"messages[{i}].role",
            )
        if calls and not allow_tools:
            raise unsupported(f"messages[{i}].tool_calls", "tool calling")
        entry: dict[str, Any] = {"role": role}
        if calls:
            if not isinstance(calls, Sequence) or not all(isinstance(c, Mapping) for c in calls):
                raise bad_request(
                    f"messages[{i}].tool_calls must be a list of objects",
                    f"messages[{i}].tool_calls",
                )
            for j, call in enumerate(calls):
                function = call.get("function", call)
                if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
                    where = f"messages[{i}].tool_calls[{j}]"
                    raise bad_request(f"{where} needs a function name", where)
            entry["tool_calls"] = [dict(c) for c in calls]
            content = message.get("content")
            entry["content"] = "" if content is None else _message_content(message, i)
        else:
            entry["content"] = _message_content(message, i)
        if role == "tool":
            for key in ("tool_call_id", "name"):
                if isinstance(message.get(key), str):
                    entry[key] = message[key]
        out.append(entry)
    if not allow_tools:
        _check_messages(out)
    return out


def _check_messages(messages: list[dict[str, Any]]) -> None:
    try:
        normalise_messages(messages)
    except (TypeError, ValueError) as exc:
        raise bad_request(f"messages: {exc}", "messages") from exc


def _check_structured(body: Mapping[str, Any]) -> None:
    """Refuse response formats and tools the engine cannot honour."""
    response_format = body.get("response_format")
    if response_format is not None:
        if not isinstance(response_format, Mapping) or "type" not in response_format:
            raise bad_request("response_format must be an object with a type", "response_format")
        kind = response_format["type"]
        if kind != "text":
            if kind not in ("json_object", "json_schema"):
                raise bad_request(
                    f"response_format.type {kind!r} is not one of text, json_object, json_schema",
                    "response_format",
                )
            raise unsupported("response_format", f"response_format {kind!r} (structured output)")
    tools = body.get("tools")
    tool_choice = body.get("tool_choice")
    if tools and tool_choice != "none":
        raise unsupported("tools", "tool calling")
    if tool_choice not in (None, "none", "auto") or (tool_choice == "auto" and tools):
        raise unsupported("tool_choice", "tool calling")


def _response_format_schema(response_format: Any) -> tuple[Any, bool]:
    """``(schema, strict)`` of a ``response_format``: ``None`` (free text), ``True`` (any JSON
    object) or a JSON-schema dict."""
    if response_format is None:
        return None, False
    if not isinstance(response_format, Mapping) or "type" not in response_format:
        raise bad_request("response_format must be an object with a type", "response_format")
    kind = response_format["type"]
    if kind == "text":
        return None, False
    if kind == "json_object":
        return True, False
    if kind != "json_schema":
        raise bad_request(
            f"response_format.type {kind!r} is not one of text, json_object, json_schema",
            "response_format",
        )
    spec = response_format.get("json_schema")
    if not isinstance(spec, Mapping):
        raise bad_request(
            "response_format.json_schema must be an object with a schema",
            "response_format.json_schema",
        )
    schema = spec.get("schema", True)
    if schema is not True and not isinstance(schema, Mapping):
        raise bad_request(
            "response_format.json_schema.schema must be a JSON schema object",
            "response_format.json_schema.schema",
        )
    return schema, spec.get("strict") is True


def _structure(body: Mapping[str, Any], options: dict[str, Any]) -> Any:
    """Map ``response_format`` / ``tools`` / ``tool_choice`` onto the engine's grammar option
    (``options["json_schema"]``); returns the request's :class:`~shared_core.tools.ToolRequest`.
    """
    from ..structured import INSTALL_HINT, json_schema_constraint, limit_schema
    from ..tools import tool_request

    schema, strict = _response_format_schema(body.get("response_format"))
    tools, tool_choice = body.get("tools"), body.get("tool_choice")
    max_length = body.get("max_string_length")
    if tool_choice not in (None, "none", "auto") and not tools:
        raise bad_request("tool_choice needs a non-empty tools list", "tool_choice")
    if tools is not None and not isinstance(tools, list):
        raise bad_request("tools must be a list of tools", "tools")
    try:
        parallel = body.get("parallel_tool_calls")
        if parallel is not None and not isinstance(parallel, bool):
            raise bad_request("parallel_tool_calls must be a boolean", "parallel_tool_calls")
        request = tool_request(
            tools, tool_choice, max_string_length=max_length, parallel_tool_calls=parallel
        )
        if request.constraint is not None and schema is not None:
            raise bad_request(
                "pass either tools (with a tool_choice other than none) or a JSON "
                "response_format, not both",
                "response_format",
            )
        if request.constraint is not None:
            options["json_schema"] = request.constraint
        elif schema is not None:
            if max_length is not None or strict:
                schema = limit_schema(schema, max_string_length=max_length, close_objects=strict)
            options["json_schema"] = json_schema_constraint(schema)
    except ImportError as exc:
        param = "response_format" if schema is not None else "tools"
        raise bad_request(
            f"{param}: structured output is not installed on this server ({INSTALL_HINT})",
            param,
            "unsupported_parameter",
        ) from exc
    except (TypeError, ValueError) as exc:
        if isinstance(exc, APIError):
            raise
        message = str(exc)
        if "max_string_length" in message:
            param = "max_string_length"
        elif schema is not None and not tools:
            param = "response_format"
        else:
            param = "tool_choice" if "tool_choice" in message else "tools"
        raise bad_request(f"{param}: {message}", param) from exc
    return request


def parse_chat_request(body: Any, *, calibration: str | None = None) -> ParsedRequest:
    """Validate a ``POST /v1/chat/completions`` body."""
    options, names, stream, include_usage, return_sources, model = _common(
        body, CHAT_FIELDS, calibration
    )
    if "messages" not in body:
        raise bad_request("messages is required", "messages")
    logprobs = _logprobs_option(body, "chat")
    if logprobs is not None:
        options["logprobs"] = logprobs
    structured = supports_json_schema()
    messages = parse_messages(body["messages"], allow_tools=structured)
    tools = None
    if structured:
        request = _structure(body, options)
        messages = request.messages(messages)
        _check_messages(messages)
        tools = request if request.active else None
    else:
        _check_structured(body)
    return ParsedRequest(
        kind="chat",
        model=model,
        prompts=[messages],
        options=options,
        stream=stream,
        include_usage=include_usage,
        return_sources=return_sources,
        field_names=names,
        tools=tools,
    )


def parse_completion_request(body: Any, *, calibration: str | None = None) -> ParsedRequest:
    """Validate a ``POST /v1/completions`` body (each prompt is one user turn)."""
    options, names, stream, include_usage, return_sources, model = _common(
        body, COMPLETION_FIELDS, calibration
    )
    logprobs = _logprobs_option(body, "completion")
    if logprobs is not None:
        options["logprobs"] = logprobs
    best_of = body.get("best_of")
    if best_of is not None and best_of != options.get("n", 1):
        raise unsupported("best_of", "best_of different from n (ranking samples)")
    prompt = body.get("prompt")
    if prompt is None:
        raise bad_request("prompt is required", "prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts:
        raise bad_request("prompt must be a string or a non-empty list of strings", "prompt")
    for i, p in enumerate(prompts):
        if isinstance(p, int) or (isinstance(p, list) and all(isinstance(t, int) for t in p)):
            raise unsupported("prompt", "a prompt of token ids")
        if not isinstance(p, str):
            raise bad_request(f"prompt[{i}] must be a string", "prompt")
        if not p.strip():
            raise bad_request(f"prompt[{i}] is empty", "prompt")
    return ParsedRequest(
        kind="completion",
        model=model,
        prompts=list(prompts),
        options=options,
        stream=stream,
        include_usage=include_usage,
        return_sources=return_sources,
        field_names=names,
    )


# ----------------------------------------------------------------------------- responses


def new_id(kind: Kind) -> str:
    """A fresh response id (``chatcmpl-…`` / ``cmpl-…``)."""
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


def choice_statistics(generation: Generation, return_sources: bool) -> dict[str, Any]:
    """BACO statistics added to each choice: base share, switches[, per-token sources]."""
    stats: dict[str, Any] = {
        "base_share": generation.base_share,
        "switches": generation.switches,
    }
    if return_sources:
        stats["sources"] = list(generation.sources)
    return stats


def tool_call_body(call: Any, index: int | None = None) -> dict[str, Any]:
    """A call in OpenAI's ``tool_calls`` form. A parsed :class:`~shared_core.tools.ToolCall`
    has its arguments as JSON; a call cut off by ``max_tokens`` (an
    :class:`~shared_core.tools.InvalidToolCall`) carries the partial arguments as written, as
    OpenAI returns them with ``finish_reason: "length"``."""
    body: dict[str, Any] = {} if index is None else {"index": index}
    if isinstance(call.arguments, str):
        arguments = _partial_arguments(call.arguments)
    else:
        arguments = json.dumps(call.arguments, ensure_ascii=False)
    body.update(
        {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name or "", "arguments": arguments},
        }
    )
    return body


def _partial_arguments(raw: str) -> str:
    """The ``arguments`` text of a cut-off call ``{"name": ..., "arguments": <partial>``."""
    marker = '"arguments"'
    at = raw.find(marker)
    if at < 0:
        return ""
    return raw[at + len(marker) :].lstrip().removeprefix(":").lstrip()


def sample_error_body(generation: Generation) -> dict[str, Any]:
    """The error object of a choice whose sample failed (``finish_reason: "error"``): its
    grammar could not continue. The request still answers 200 with the other choices."""
    return {
        "message": f"constrained decoding failed: {generation.error}",
        "type": "server_error",
        "param": None,
        "code": "constraint",
    }


def usage_body(results: Sequence[Sequence[Generation]]) -> dict[str, int]:
    """Token usage of a request: each prompt counted once, every sample's completion."""
    prompt = sum(row[0].usage.prompt_tokens for row in results if row)
    completion = sum(g.usage.completion_tokens for row in results for g in row)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def response_body(
    request: ParsedRequest,
    results: Sequence[Sequence[Generation]],
    *,
    model: str,
    response_id: str | None = None,
) -> dict[str, Any]:
    """The non-streamed ``chat.completion`` / ``text_completion`` body."""
    choices = []
    for row in results:
        for generation in row:
            index = generation.prompt_index * request.n + generation.sample_index
            choice: dict[str, Any] = {"index": index}
            finish_reason: str = generation.finish_reason
            extra: dict[str, Any] = {}
            if request.kind == "chat":
                message: dict[str, Any] = {"role": "assistant", "content": generation.text}
                if request.tools is not None:
                    reply = request.tools.parse(generation.text)
                    message["content"] = reply.content or None
                    calls = [tool_call_body(c) for c in reply.tool_calls]
                    calls += [tool_call_body(c) for c in reply.invalid_tool_calls]
                    if calls:
                        message["tool_calls"] = calls
                    if reply.tool_calls and generation.finish_reason == "stop":
                        finish_reason = "tool_calls"
                choice["message"] = message
            else:
                choice["text"] = generation.text
            choice["logprobs"] = logprobs_body(request, generation.logprobs)
            choice["finish_reason"] = finish_reason
            choice.update(choice_statistics(generation, request.return_sources))
            choice.update(extra)
            if generation.finish_reason == "error":
                choice["error"] = sample_error_body(generation)
            choices.append(choice)
    choices.sort(key=lambda c: c["index"])
    first = next((g for row in results for g in row), None)
    return {
        "id": response_id or new_id(request.kind),
        "object": "chat.completion" if request.kind == "chat" else "text_completion",
        "created": now(),
        "model": model,
        "choices": choices,
        "usage": usage_body(results),
        "baco": {
            "router": first.router if first else None,
            "gamma": first.gamma if first is not None and _finite(first.gamma) else None,
        },
    }


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def chunk_body(
    request: ParsedRequest,
    *,
    response_id: str,
    created: int,
    model: str,
    index: int | None = None,
    text: str | None = None,
    role: bool = False,
    tool_calls: list[dict[str, Any]] | None = None,
    finish_reason: str | None = None,
    statistics: Mapping[str, Any] | None = None,
    usage: Mapping[str, int] | None = None,
    logprobs: Any = None,
) -> dict[str, Any]:
    """One streamed chunk: a delta of choice ``index``, its finish, or (``index=None``) usage."""
    chunk: dict[str, Any] = {
        "id": response_id,
        "object": "chat.completion.chunk" if request.kind == "chat" else "text_completion",
        "created": created,
        "model": model,
        "choices": [],
    }
    if index is not None:
        choice: dict[str, Any] = {"index": index}
        if request.kind == "chat":
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            if tool_calls:
                delta["tool_calls"] = tool_calls
            choice["delta"] = delta
        else:
            choice["text"] = text or ""
        choice["logprobs"] = logprobs
        choice["finish_reason"] = finish_reason
        if statistics:
            choice.update(statistics)
        chunk["choices"].append(choice)
    if request.include_usage:
        chunk["usage"] = dict(usage) if usage is not None else None
    return chunk
