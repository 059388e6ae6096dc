"""Prompt normalisation and rendering for both members of a pair.

The aligned model gets its tokenizer's chat template, tokenized once (never rendered to text
and re-tokenized, which would double the BOS token). The base model gets a plain-text
transcript (``User: ...`` / ``Assistant: ...``) ending with the assistant cue.

Tool conversations (:class:`ToolPrompt`) reach the aligned model through its template's own
``tools``/``tool_calls``/``tool``-role support when it has one (:func:`aligned_prompt_ids`),
and as Hermes-style text (:mod:`shared_core.tools`) otherwise and for the base model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Message = Mapping[str, Any]
Prompt = str | Sequence[Message]

logger = logging.getLogger(__name__)

ROLE_ALIASES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "model": "assistant",
}


def normalise_messages(prompt: Prompt, *, index: int | None = None) -> list[dict[str, str]]:
    """Validate a prompt and return ``[{"role", "content"}]`` with consecutive roles merged.

    A bare string is one user message. Roles accept common aliases (``human``, ``ai``,
    ``developer``...). Raises ``TypeError``/``ValueError`` naming the offending message.
    """
    where = "" if index is None else f"prompt {index}: "
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError(f"{where}prompt is empty")
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, Mapping) or not isinstance(prompt, Sequence):
        raise TypeError(
            f"{where}a prompt must be a string or a list of {{'role', 'content'}} messages, "
            f"got {type(prompt).__name__}"
        )
    if len(prompt) == 0:
        raise ValueError(f"{where}message list is empty")
    merged: list[dict[str, str]] = []
    for i, message in enumerate(prompt):
        if not isinstance(message, Mapping):
            raise TypeError(f"{where}message {i} must be a mapping, got {type(message).__name__}")
        role = message.get("role")
        content = message.get("content")
        if not isinstance(role, str) or role.lower() not in ROLE_ALIASES:
            raise ValueError(
                f"{where}message {i} has unknown role {role!r}; "
                f"allowed roles: {', '.join(sorted(ROLE_ALIASES))}"
            )
        if not isinstance(content, str):
            raise TypeError(
                f"{where}message {i} content must be a string, got {type(content).__name__}"
            )
        role = ROLE_ALIASES[role.lower()]
        if merged and merged[-1]["role"] == role:
            merged[-1]["content"] = f"{merged[-1]['content']}\n\n{content}"
        else:
            merged.append({"role": role, "content": content})
    if not any(m["content"].strip() for m in merged):
        raise ValueError(f"{where}every message is empty")
    return merged


def fold_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Fold system messages into the first user turn (for templates that reject them)."""
    return _merge(_fold_system_messages(messages))


def start_with_user(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Prepend an empty user turn when the conversation (after system) opens with the assistant."""
    out = [dict(m) for m in messages]
    first = next((i for i, m in enumerate(out) if m["role"] != "system"), None)
    if first is not None and out[first]["role"] == "assistant":
        out.insert(first, {"role": "user", "content": ""})
    return out


def _merge(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for m in messages:
        if out and out[-1]["role"] == m["role"]:
            out[-1]["content"] = f"{out[-1]['content']}\n\n{m['content']}"
        else:
            out.append(dict(m))
    return out


def chat_template_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the aligned prompt via the chat template, trying fallbacks in order.

    First the messages as given, then with system messages folded into the first user turn,
    then also with an empty user turn before a leading assistant message.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "the aligned tokenizer has no chat template; set tokenizer.chat_template or pass "
            "chat_template=... to ModelPair.from_pretrained"
        )
    attempts = [messages, fold_system(messages), start_with_user(fold_system(messages))]
    error: Exception | None = None
    for attempt in attempts:
        try:
            ids = tokenizer.apply_chat_template(
                attempt, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        except Exception as exc:  # jinja2 raises TemplateError subclasses via raise_exception
            error = exc
            continue
        if isinstance(ids, Mapping):
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    raise ValueError(f"the chat template rejected the conversation: {error}") from error


@dataclass(frozen=True)
class PlainTemplate:
    """Plain-text transcript for a base model (no chat template).

    Rendered as ``{system}\\n\\nUser: {turn}\\nAssistant: {turn}\\n...User: {last}\\nAssistant:``.
    ``stop_strings`` end the base model's turn when it starts writing the next one.
    """

    user_prefix: str = "User: "
    assistant_prefix: str = "Assistant: "
    separator: str = "\n"
    system_separator: str = "\n\n"

    def render(self, messages: list[dict[str, str]]) -> str:
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        lines = []
        for m in messages:
            if m["role"] == "user":
                lines.append(f"{self.user_prefix}{m['content']}")
            elif m["role"] == "assistant":
                lines.append(f"{self.assistant_prefix}{m['content']}")
        lines.append(self.assistant_prefix.rstrip())
        body = self.separator.join(lines)
        return f"{system}{self.system_separator}{body}" if system else body

    @property
    def cue_space(self) -> bool:
        """True when the rendered cue dropped a trailing space of ``assistant_prefix``.

        The prompt ends ``Assistant:`` (a trailing space would be an unnatural last token),
        so the answer's first token must carry that space when the base model reads it: the
        engine feeds the base ``Assistant: Paris``, not ``Assistant:Paris``.
        """
        return self.assistant_prefix[len(self.assistant_prefix.rstrip()) :] == " "

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (
            self.separator + self.user_prefix.rstrip(),
            self.separator + self.assistant_prefix.rstrip(),
        )


def base_prompt_ids(
    tokenizer, messages: list[dict[str, str]], template: PlainTemplate
) -> list[int]:
    """Token ids of the base prompt (plain template, the tokenizer's usual BOS handling)."""
    return [int(i) for i in tokenizer(template.render(messages))["input_ids"]]


class ToolPrompt(list):
    """A conversation with tool calls/results or bound tools (built by
    :func:`shared_core.tools.render_tool_messages`).

    The list itself holds the Hermes-style text messages, which every model can read: the
    base model's plain transcript and chat templates without tool support use them. It also
    keeps ``source`` (the structured messages it was rendered from), ``native`` (the same
    conversation in the transformers format: assistant ``tool_calls``, ``tool`` role
    messages) and ``tools`` (OpenAI-style function schemas, or ``None``), which
    :func:`aligned_prompt_ids` renders through a chat template that supports tools.
    """

    source: list[dict[str, Any]]
    native: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None

    def __init__(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        source: Sequence[Mapping[str, Any]],
        native: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None,
    ) -> None:
        super().__init__(messages)
        self.source = [dict(m) for m in source]
        self.native = [dict(m) for m in native]
        self.tools = [dict(t) for t in tools] if tools else None


_PROBE_NAME = "baco_probe_tool"
_PROBE_ARGUMENT = "baco_probe_argument"
_PROBE_RESULT = "baco_probe_result"
_TOOL_SUPPORT: dict[str, bool] = {}


def _template_source(tokenizer: Any) -> str:
    """The chat template text ``apply_chat_template(..., tools=...)`` would use."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, Mapping):  # named templates: transformers prefers "tool_use"
        template = template.get("tool_use") or template.get("default")
    return template if isinstance(template, str) else ""


def template_supports_tools(tokenizer: Any) -> bool:
    """True when the tokenizer's chat template renders tools, tool calls and tool results.

    The template must mention ``tools`` and render a probe conversation (a tool list, an
    assistant message with ``tool_calls`` and a ``tool`` message) without error, showing
    the tool's name, the call's argument and the result. Cached per template text.
    """
    source = _template_source(tokenizer)
    if "tools" not in source:
        return False
    if source not in _TOOL_SUPPORT:
        tool = {
            "type": "function",
            "function": {
                "name": _PROBE_NAME,
                "description": "A probe.",
                "parameters": {
                    "type": "object",
                    "properties": {"x": {"type": "string"}},
                    "required": ["x"],
                },
            },
        }
        call = {
            "id": "probe0001",  # 9 alphanumerics: some templates (Mistral) insist
            "type": "function",
            "function": {"name": _PROBE_NAME, "arguments": {"x": _PROBE_ARGUMENT}},
        }
        messages = [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {
                "role": "tool",
                "content": _PROBE_RESULT,
                "name": _PROBE_NAME,
                "tool_call_id": "probe0001",
            },
        ]
        try:
            text = tokenizer.apply_chat_template(
                messages, tools=[tool], add_generation_prompt=True, tokenize=False
            )
        except Exception:  # jinja errors, role-alternation checks, missing filters
            text = ""
        text = text if isinstance(text, str) else ""
        _TOOL_SUPPORT[source] = all(
            s in text for s in (_PROBE_NAME, _PROBE_ARGUMENT, _PROBE_RESULT)
        )
    return _TOOL_SUPPORT[source]


def _fold_system_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages (plain or native, whose content may be missing) with system messages folded
    into the first user turn, without merging turns."""
    system = "\n\n".join(str(m.get("content") or "") for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if system:
        if rest and rest[0]["role"] == "user":
            rest[0]["content"] = f"{system}\n\n{rest[0].get('content') or ''}"
        else:
            rest.insert(0, {"role": "user", "content": system})
    return rest


def native_tool_ids(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> list[int] | None:
    """Token ids of a tool conversation rendered by the chat template itself, or ``None``
    when the template rejects it (as given and with system messages folded)."""
    for attempt in (messages, _fold_system_messages(messages)):
        try:
            ids = tokenizer.apply_chat_template(
                attempt, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        except Exception as exc:
            logger.debug("baco: the chat template rejected the native tool conversation: %s", exc)
            continue
        if isinstance(ids, Mapping):
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    return None


def aligned_prompt_ids(
    tokenizer: Any, prompt: Prompt, messages: list[dict[str, str]] | None = None
) -> list[int]:
    """Token ids of the aligned prompt.

    A :class:`ToolPrompt` goes through the chat template's own ``tools``/``tool_calls``/
    ``tool`` support when :func:`template_supports_tools` says it has one; otherwise (and
    for every other prompt) the Hermes-style text messages go through
    :func:`chat_template_ids`. ``messages``: the prompt already normalised, if at hand.
    """
    if isinstance(prompt, ToolPrompt) and template_supports_tools(tokenizer):
        ids = native_tool_ids(tokenizer, prompt.native, prompt.tools)
        if ids is not None:
            return ids
    return chat_template_ids(
        tokenizer, messages if messages is not None else normalise_messages(prompt)
    )
