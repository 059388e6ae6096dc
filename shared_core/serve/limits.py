"""Request limits of ``baco serve``, enforced before a body is parsed or tokenised.

A server that reads any body whole and tokenises it before looking at it can be exhausted by
a few large requests. Every limit here is checked as early as it can be: the body size from
``Content-Length`` (and while reading a chunked body) before the rest is read, the JSON
nesting depth by a scan of the raw bytes before ``json.loads`` recurses, and the sizes of
``stop``, ``n``, ``max_tokens`` and the prompt list right after parsing, before any
tokenisation. Each error names the limit and the flag that sets it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

from .openai_schema import APIError, bad_request

#: OpenAI's own rule: at most four stop sequences.
MAX_STOP_SEQUENCES = 4

_JSON_STRUCTURE = re.compile(rb'[\[\]{}"\\]')


@dataclass(frozen=True)
class ServeLimits:
    """Bounds on one request. The defaults suit a single-GPU server; each has a flag."""

    #: Largest request body in bytes (``--max-request-bytes``); larger answers 413.
    max_request_bytes: int = 4 * 1024 * 1024
    #: Deepest nesting of JSON arrays and objects (``--max-json-depth``).
    max_json_depth: int = 64
    #: Longest stop sequence in characters (``--max-stop-chars``).
    max_stop_chars: int = 256
    #: Largest ``n`` (``--max-n``).
    max_n: int = 64
    #: Largest ``max_tokens`` / ``max_completion_tokens`` (``--max-tokens-limit``).
    max_tokens: int = 4096
    #: Most prompts in one ``/v1/completions`` request (``--max-prompts``).
    max_prompts: int = 64

    def __post_init__(self) -> None:
        for name in limit_names():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


def limit_names() -> tuple[str, ...]:
    """The names of :class:`ServeLimits`' fields (each a positive-integer bound)."""
    return tuple(field.name for field in fields(ServeLimits))


def too_large(limit: int) -> APIError:
    """413 in OpenAI's error shape, naming the limit."""
    return APIError(
        413,
        f"the request body is larger than the server's limit of {limit} bytes "
        "(--max-request-bytes)",
        code="request_too_large",
    )


async def read_body(headers: Mapping[str, str], chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The body from ``chunks``, refusing (413) as soon as it would pass ``limit`` bytes.

    A ``Content-Length`` over the limit is refused before anything is read.
    """
    declared = headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError as exc:
            raise bad_request(f"invalid Content-Length header {declared!r}") from exc
        if size > limit:
            raise too_large(limit)
    parts: list[bytes] = []
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


def json_depth(raw: bytes) -> int:
    """Deepest nesting of arrays/objects in ``raw`` JSON, brackets inside strings ignored.

    Only the structural characters are visited (a regex finds them), so a multi-MiB body is
    scanned in milliseconds, without recursion.
    """
    depth = deepest = 0
    in_string = False
    escaped_at = -1  # position of the character a backslash escapes
    for match in _JSON_STRUCTURE.finditer(raw):
        char, at = match.group(), match.start()
        if in_string:
            if at == escaped_at:
                continue
            if char == b"\\":
                escaped_at = at + 1
            elif char == b'"':
                in_string = False
            continue
        if char == b'"':
            in_string = True
        elif char in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif char in (b"]", b"}"):
            depth -= 1
    return deepest


def check_depth(raw: bytes, limit: int) -> None:
    """400 when ``raw`` nests deeper than ``limit``."""
    if json_depth(raw) > limit:
        raise bad_request(
            f"the JSON body nests deeper than the server's limit of {limit} levels "
            "(--max-json-depth)",
            code="json_too_deep",
        )


def check_request(body: Any, limits: ServeLimits) -> None:
    """Refuse a parsed body whose ``stop``, ``n``, ``max_tokens`` or prompt list is too big.

    Runs before the full validation, so a 100,000-entry ``stop`` list is never looked at
    token by token. Wrong types are left to the full validation's messages.
    """
    if not isinstance(body, Mapping):
        return
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop
    if isinstance(stops, list):
        if len(stops) > MAX_STOP_SEQUENCES:
            raise bad_request(
                f"stop: at most {MAX_STOP_SEQUENCES} stop sequences are allowed, got {len(stops)}",
                "stop",
            )
        for entry in stops:
            if isinstance(entry, str) and len(entry) > limits.max_stop_chars:
                raise bad_request(
                    f"stop: a stop sequence is {len(entry)} characters long; the server's "
                    f"limit is {limits.max_stop_chars} (--max-stop-chars)",
                    "stop",
                )
    _bounded(body, "n", limits.max_n, "--max-n")
    for name in ("max_tokens", "max_completion_tokens"):
        _bounded(body, name, limits.max_tokens, "--max-tokens-limit")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) > limits.max_prompts:
        raise bad_request(
            f"prompt: at most {limits.max_prompts} prompts per request are allowed, got "
            f"{len(prompt)} (--max-prompts)",
            "prompt",
        )


def _bounded(body: Mapping[str, Any], name: str, limit: int, flag: str) -> None:
    value = body.get(name)
    if isinstance(value, int) and not isinstance(value, bool) and value > limit:
        raise bad_request(f"{name} must be <= {limit} on this server ({flag}), got {value}", name)
