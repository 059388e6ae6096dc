"""``Baco``: BACO decoding of a base + aligned model pair as a LlamaIndex LLM."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from types import SimpleNamespace
from typing import Any, TypeVar

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    LogProb,
    MessageRole,
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import BaseModel, Field
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.llms.utils import parse_partial_json

from shared_core.adapter_support import (
    BacoFields,
    check_call_options,
    combine_stop,
    field_options,
    logprobs_content,
    merge_options,
    pop_structure,
    statistics_dict,
    usable_samples,
    usage_dict,
)
from shared_core.aio import iterate_in_thread, run_in_thread
from shared_core.engine import BacoEngine
from shared_core.loading import split_model_ref
from shared_core.registry import engine_key, get_engine
from shared_core.structured import ConstraintError, limit_schema
from shared_core.tools import (
    ToolCall,
    ToolCallStream,
    ToolRequest,
    render_tool_messages,
    tool_message,
)
from shared_core.types import Generation, StreamEvent

logger = logging.getLogger(__name__)


#: Context window of the demo pair's gemma-3-270m, used before its folder has been built.
DEMO_CONTEXT_WINDOW = 32768

#: LlamaIndex roles that the engine's prompt builder does not know, mapped to ones it does.
_ROLE_MAP = {MessageRole.CHATBOT.value: "assistant"}
#: Roles whose messages are tool results (``tool`` messages, see ``render_tool_messages``).
_TOOL_ROLES = frozenset({MessageRole.TOOL.value, MessageRole.FUNCTION.value})

#: Hugging Face loading options that also apply to reading a config.
_CONFIG_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "trust_remote_code")

#: Context windows by engine key, shared by copies (read from configs, or from a loaded pair).
_CONTEXT_WINDOWS: dict[str, int] = {}

Prompt = str | list[dict[str, str]]
Model = TypeVar("Model", bound=BaseModel)


class Baco(FunctionCallingLLM, CustomLLM, BacoFields):
    """BACO decoding (arXiv 2511.05650): a base and an aligned model pick each token together.

    A per-token router chooses which model's distribution to sample, giving outputs that are
    more diverse than the aligned model's while keeping its quality. With both models omitted
    the embedded demo pair is used. Constructing loads nothing: the pair loads on first use
    and is shared (process-wide) by every ``Baco`` with the same models and load options,
    including ``model_copy(update=...)`` variants.

    Every decoding field can be overridden per call: ``llm.complete(p, router="p-fc",
    gamma=0.2)``. Unknown kwargs (e.g. LlamaIndex's ``formatted``) are ignored. A response
    holds one text: with ``n > 1`` it is the first sample's and every sample is in
    ``raw["samples"]`` (streaming needs ``n=1``).

    ``Baco`` is a ``FunctionCallingLLM``: ``chat_with_tools`` (and ``FunctionAgent``) get
    grammar-constrained tool calls as ``ToolCallBlock`` s, which always parse; and
    ``structured_predict`` / ``astructured_predict`` / ``stream_structured_predict`` /
    ``as_structured_llm`` decode under the output class's JSON schema, so the object always
    validates (unless ``max_tokens`` cuts it; ``max_string_length`` bounds strings).

    Examples:
        ```python
        from llama_index_baco import Baco

        llm = Baco(router="p-punc", gamma=0.3, max_tokens=128)
        print(llm.complete("Write a haiku about the sea."))
        aligned_only = llm.model_copy(update={"router": "aligned"})  # same loaded weights
        ```
    """

    context_window: int | None = Field(
        default=None,
        gt=0,
        description="Context window reported in metadata; None reads it from the models' "
        "configs without loading weights.",
    )

    @classmethod
    def class_name(cls) -> str:
        return "Baco_llm"

    @property
    def metadata(self) -> LLMMetadata:
        """LLM metadata; the context window comes from the configs, never from loading weights."""
        return LLMMetadata(
            context_window=self.context_window or self._config_context_window(),
            num_output=self.max_tokens,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=self.model_name,
        )

    @property
    def engine(self) -> BacoEngine:
        """The shared engine of this pair (loads the models on first access)."""
        options = self.load_options
        engine = get_engine(**options)
        _CONTEXT_WINDOWS[engine_key(**options)] = engine.pair.context_window
        return engine

    # ------------------------------------------------------------------ public API

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Complete ``prompt``, sent as one user message (aligned: chat template)."""
        text, raw = self._generate(prompt, self._prepare(kwargs, tools=False)[1])
        return CompletionResponse(text=text, raw=raw, logprobs=_logprobs(raw))

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        """Stream the completion of ``prompt``: cumulative ``text`` and new ``delta``."""
        events = self._events(prompt, self._prepare(kwargs, stream=True, tools=False)[1])

        def gen() -> CompletionResponseGen:
            for text, delta, raw, _ in _chunks(events):
                yield CompletionResponse(text=text, delta=delta, raw=raw)

        return gen()

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Answer a conversation (aligned: chat template; base: plain ``User:`` transcript).

        ``tools`` (OpenAI-style dicts) with ``tool_choice``, or ``json_schema``, constrain
        the answer (see :meth:`chat_with_tools`, :meth:`structured_predict`)."""
        request, options = self._prepare(kwargs)
        prompt = request.messages(to_engine_messages(messages))
        text, raw = self._generate(prompt, options)
        return ChatResponse(message=_assistant(text, request), raw=raw, logprobs=_logprobs(raw))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Stream the answer to a conversation (tool calls arrive as complete blocks)."""
        request, options = self._prepare(kwargs, stream=True)
        events = self._events(request.messages(to_engine_messages(messages)), options)

        def gen() -> ChatResponseGen:
            for text, delta, raw, calls in _chunks(events, request):
                message = _assistant(text, request, calls)
                yield ChatResponse(message=message, delta=delta, raw=raw)

        return gen()

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        """Async :meth:`complete`; decoding runs in a worker thread."""
        options = self._prepare(kwargs, tools=False)[1]
        text, raw = await run_in_thread(self._generate, prompt, options)
        return CompletionResponse(text=text, raw=raw, logprobs=_logprobs(raw))

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        """Async :meth:`stream_complete`; decoding runs in a worker thread."""
        options = self._prepare(kwargs, stream=True, tools=False)[1]
        events = await run_in_thread(self._events, prompt, options)

        async def gen() -> CompletionResponseAsyncGen:
            async for text, delta, raw, _ in _achunks(events):
                yield CompletionResponse(text=text, delta=delta, raw=raw)

        return gen()

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Async :meth:`chat`; decoding runs in a worker thread."""
        request, options = self._prepare(kwargs)
        prompt = request.messages(to_engine_messages(messages))
        text, raw = await run_in_thread(self._generate, prompt, options)
        return ChatResponse(message=_assistant(text, request), raw=raw, logprobs=_logprobs(raw))

    @llm_chat_callback()
    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        """Async :meth:`stream_chat`; decoding runs in a worker thread."""
        request, options = self._prepare(kwargs, stream=True)
        prompt = request.messages(to_engine_messages(messages))
        events = await run_in_thread(self._events, prompt, options)

        async def gen() -> ChatResponseAsyncGen:
            async for text, delta, raw, calls in _achunks(events, request):
                message = _assistant(text, request, calls)
                yield ChatResponse(message=message, delta=delta, raw=raw)

        return gen()

    # ------------------------------------------------------------------ tools

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[Any],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: Any = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """``chat`` arguments for a call with ``tools``: their OpenAI-style descriptions and
        the tool choice (``tool_required`` means one call must be made; a tool name forces
        that tool). A required choice makes the response exactly one call; without
        ``allow_parallel_tool_calls`` the grammar allows at most one call."""
        messages = list(chat_history or [])
        if isinstance(user_msg, str):
            user_msg = ChatMessage(role=MessageRole.USER, content=user_msg)
        if user_msg is not None:
            messages.append(user_msg)
        if tool_choice is None:
            tool_choice = "required" if tool_required else "auto"
        specs = [tool.metadata.to_openai_tool() for tool in tools]
        return {
            "messages": messages,
            "tools": specs,
            "tool_choice": tool_choice,
            "parallel_tool_calls": allow_parallel_tool_calls,
            **kwargs,
        }

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The tool calls of a response (its ``ToolCallBlock`` s, which always parse)."""
        calls = [
            ToolSelection(
                tool_id=block.tool_call_id or "",
                tool_name=block.tool_name,
                tool_kwargs=block.tool_kwargs
                if isinstance(block.tool_kwargs, dict)
                else parse_partial_json(block.tool_kwargs),
            )
            for block in response.message.blocks
            if isinstance(block, ToolCallBlock)
        ]
        if not calls and error_on_no_tool_call:
            invalid = response.message.additional_kwargs.get("invalid_tool_calls") or []
            detail = f" ({invalid[0]['error']})" if invalid else ""
            raise ValueError(f"expected at least one tool call, got none{detail}")
        return calls

    # ------------------------------------------------------------------ structured output

    def _structured_request(
        self,
        output_cls: type[Model],
        prompt: Any,
        llm_kwargs: dict[str, Any] | None,
        prompt_args: dict[str, Any],
    ) -> tuple[Any, dict[str, Any]]:
        """The chat messages of ``prompt`` and call kwargs constrained to ``output_cls``."""
        messages = self._get_messages(prompt, **prompt_args)
        return messages, {**(llm_kwargs or {}), "json_schema": _output_schema(output_cls)}

    def structured_predict(
        self,
        output_cls: type[Model],
        prompt: Any,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Model:
        """An ``output_cls`` instance decoded under its JSON schema (always valid JSON of
        that shape; a response cut by ``max_tokens`` raises ``ValueError``)."""
        messages, kwargs = self._structured_request(output_cls, prompt, llm_kwargs, prompt_args)
        response = self.chat(messages, **kwargs)
        return _validate(output_cls, response.message.content or "")

    async def astructured_predict(
        self,
        output_cls: type[Model],
        prompt: Any,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Model:
        """Async :meth:`structured_predict`."""
        messages, kwargs = self._structured_request(output_cls, prompt, llm_kwargs, prompt_args)
        response = await self.achat(messages, **kwargs)
        return _validate(output_cls, response.message.content or "")

    def stream_structured_predict(
        self,
        output_cls: type[Model],
        prompt: Any,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Generator[Model, None, None]:
        """Stream :meth:`structured_predict`: each partial object that already validates
        (e.g. once its required fields are complete), then the final object."""
        messages, kwargs = self._structured_request(output_cls, prompt, llm_kwargs, prompt_args)
        text, last = "", None
        for response in self.stream_chat(messages, **kwargs):
            text = response.message.content or ""
            partial = _partial(output_cls, text)
            if partial is not None and partial != last:
                last = partial
                yield partial
        final = _validate(output_cls, text)
        if final != last:
            yield final

    async def astream_structured_predict(
        self,
        output_cls: type[Model],
        prompt: Any,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Any:
        """Async :meth:`stream_structured_predict`."""
        messages, kwargs = self._structured_request(output_cls, prompt, llm_kwargs, prompt_args)
        responses = await self.astream_chat(messages, **kwargs)

        async def gen() -> AsyncIterator[Model]:
            text, last = "", None
            async for response in responses:
                text = response.message.content or ""
                partial = _partial(output_cls, text)
                if partial is not None and partial != last:
                    last = partial
                    yield partial
            final = _validate(output_cls, text)
            if final != last:
                yield final

        return gen()

    # ------------------------------------------------------------------ internals

    def _prepare(
        self, kwargs: dict[str, Any], *, stream: bool = False, tools: bool = True
    ) -> tuple[ToolRequest, dict[str, Any]]:
        """Tools/structure of a call and its engine options (all validated). Completions
        (``tools=False``) take ``json_schema`` but no tools."""
        kwargs = dict(kwargs)
        check_call_options(kwargs, owner="Baco")
        if kwargs.pop("allow_parallel_tool_calls", True) is False:
            kwargs["parallel_tool_calls"] = False
        if not tools and kwargs.get("tools"):
            raise ValueError("tools need chat (chat_with_tools), not complete")
        request, constraint = pop_structure(kwargs, max_string_length=self.max_string_length)
        options = self._stream_options(kwargs) if stream else self._options(kwargs)
        if constraint is not None:
            options["json_schema"] = constraint
        return request, options

    def _options(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Validated engine options: the fields with per-call ``overrides`` on top."""
        stop = combine_stop(self.stop, overrides.get("stop"))
        fields = field_options(self)
        return merge_options(fields, {**overrides, "stop": stop})

    def _stream_options(self, overrides: dict[str, Any]) -> dict[str, Any]:
        options = self._options(overrides)
        if options.get("n", 1) != 1:
            raise ValueError(f"streaming returns one sample; got n={options['n']} (use n=1)")
        return options

    def _generate(self, prompt: Prompt, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Blocking decode of all samples; returns the first sample's text and ``raw``."""
        result = self.engine.generate(prompt, return_exceptions=True, **options)[0]
        samples = usable_samples(result)  # raises only when every sample failed
        first = samples[0]  # a good one: failed samples come last
        raw = _raw(first, samples)
        if len(samples) > 1:
            raw["samples"] = [{"text": g.text, **statistics_dict(g)} for g in samples]
        return first.text, raw

    def _events(self, prompt: Prompt, options: dict[str, Any]) -> Iterator[StreamEvent]:
        """The engine's event stream (prompt validated now, decoding starts on iteration)."""
        return self.engine.stream(prompt, **options)

    def _config_context_window(self) -> int:
        key = engine_key(**self.load_options)
        if key not in _CONTEXT_WINDOWS:
            _CONTEXT_WINDOWS[key] = self._read_context_window()
        return _CONTEXT_WINDOWS[key]

    def _read_context_window(self) -> int:
        """min(base, aligned) maximum length from the configs (as the engine computes it)."""
        if self.is_remote:  # what the servers report
            return self.engine.pair.context_window
        if self.base_model is None:  # the embedded demo pair
            from shared_core.demo_models import DEMO_BASE_DIRNAME, baco_home

            folder = baco_home() / DEMO_BASE_DIRNAME
            if not (folder / "config.json").is_file():
                return DEMO_CONTEXT_WINDOW
            refs = [str(folder)]
        else:
            refs = [r for r in (self.base_model, self.aligned_model) if r is not None]
        try:
            return min(_config_max_length(ref, self.model_kwargs) for ref in refs)
        except Exception as exc:  # unreachable hub, exotic config: stay usable
            logger.warning(
                "baco: could not read the context window of %s (%s); reporting %d. Pass "
                "context_window=... to set it.",
                refs,
                exc,
                DEFAULT_CONTEXT_WINDOW,
            )
            return DEFAULT_CONTEXT_WINDOW


def _config_max_length(ref: str, model_kwargs: dict[str, Any]) -> int:
    from transformers import AutoConfig

    from shared_core.pair import context_window

    location, extra = split_model_ref(ref)
    kwargs = {k: v for k, v in model_kwargs.items() if k in _CONFIG_KWARGS}
    config = AutoConfig.from_pretrained(location, **kwargs, **extra)
    return context_window(SimpleNamespace(config=config))


def to_engine_messages(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """LlamaIndex messages as the engine's ``[{"role", "content"}]`` list (text and tool
    calls only).

    ``chatbot`` -> ``assistant``; an assistant's ``ToolCallBlock`` s are written after its
    text as ``<tool_call>`` blocks; a ``tool``/``function`` message becomes a user turn with a
    ``<tool_response>`` block (name and ``tool_call_id`` from ``additional_kwargs``). Such a
    history comes back as a ``ToolPrompt`` that also keeps the structured form, which the
    engine sends through the aligned model's chat template when it supports tools
    (:func:`shared_core.tools.render_tool_messages`).
    """
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if any(not isinstance(block, TextBlock | ToolCallBlock) for block in message.blocks):
            kinds = sorted({type(b).__name__ for b in message.blocks})
            raise ValueError(f"message {i}: Baco takes text only, got blocks {kinds}")
        role = message.role.value
        text = "\n".join(b.text for b in message.blocks if isinstance(b, TextBlock))
        if role in _TOOL_ROLES:
            extra = message.additional_kwargs
            out.append(
                tool_message(text, name=extra.get("name"), call_id=extra.get("tool_call_id"))
            )
            continue
        calls = [
            {"name": b.tool_name, "arguments": b.tool_kwargs, "id": b.tool_call_id}
            for b in message.blocks
            if isinstance(b, ToolCallBlock)
        ]
        item: dict[str, Any] = {"role": _ROLE_MAP.get(role, role), "content": text}
        if calls:
            item["tool_calls"] = calls
        out.append(item)
    return render_tool_messages(out)


def _assistant(
    text: str, request: ToolRequest | None = None, calls: Sequence[ToolCall] | None = None
) -> ChatMessage:
    """The assistant message of a response; with tools, its calls become ``ToolCallBlock`` s
    (``calls`` given: the text is already free of them, as when streaming)."""
    if request is None or not request.active:
        return ChatMessage(role=MessageRole.ASSISTANT, content=text)
    invalid: list[dict[str, Any]] = []
    if calls is None:
        reply = request.parse(text)
        text, calls = reply.content, reply.tool_calls
        invalid = [
            {"name": c.name, "arguments": c.arguments, "id": c.id, "error": c.error}
            for c in reply.invalid_tool_calls
        ]
    blocks: list[Any] = [TextBlock(text=text)] if text else []
    blocks += [
        ToolCallBlock(tool_call_id=c.id, tool_name=c.name, tool_kwargs=c.arguments) for c in calls
    ]
    extra = {"invalid_tool_calls": invalid} if invalid else {}
    return ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks, additional_kwargs=extra)


def _output_schema(output_cls: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema a structured prediction is decoded under (objects closed)."""
    return limit_schema(output_cls.model_json_schema(), close_objects=True)


def _validate(output_cls: type[Model], text: str) -> Model:
    try:
        return output_cls.model_validate_json(text)
    except ValueError as exc:
        raise ValueError(
            f"the response is not a complete {output_cls.__name__} ({exc}); it was probably "
            "cut by max_tokens: raise it, or bound strings with max_string_length"
        ) from exc


def _partial(output_cls: type[Model], text: str) -> Model | None:
    """The object of a partial JSON text, when it already validates."""
    try:
        return output_cls.model_validate(parse_partial_json(text))
    except (ValueError, TypeError, json.JSONDecodeError):
        return None


def _raw(generation: Generation, samples: Sequence[Generation]) -> dict[str, Any]:
    """``raw`` of a finished response: token usage and BACO statistics (with sources)."""
    raw = {
        "usage": usage_dict(samples),
        "baco": statistics_dict(generation, with_sources=True),
    }
    content = logprobs_content(generation)
    if content is not None:
        raw["logprobs"] = content
    return raw


def _logprobs(raw: dict[str, Any]) -> list[list[LogProb]] | None:
    """``CompletionResponse.logprobs`` from ``raw``: per token, its top alternatives (the
    token itself when none were asked for), as llama-index-llms-openai fills it."""
    content = raw.get("logprobs")
    if content is None:
        return None
    return [
        [
            LogProb(token=t["token"], logprob=t["logprob"], bytes=t["bytes"])
            for t in (entry["top_logprobs"] or [entry])
        ]
        for entry in content
    ]


Chunk = tuple[str, str, dict[str, Any], list[ToolCall]]


class _Accumulator:
    """Turns engine events into ``(cumulative text, delta, raw, tool calls)`` chunks.

    With tools, text inside ``<tool_call>`` blocks is not part of the text: each call is
    added to the chunk's calls once it is complete.
    """

    def __init__(self, request: ToolRequest | None = None) -> None:
        self.text = ""
        self.calls: list[ToolCall] = []
        self.stream = ToolCallStream() if request is not None and request.active else None

    def _take(self, delta: str, final: bool) -> str:
        if self.stream is None:
            return delta
        items = self.stream.feed(delta) + (self.stream.finish() if final else [])
        self.calls += [item for kind, item in items if kind == "call"]
        return "".join(item for kind, item in items if kind == "text")

    def push(self, event: StreamEvent) -> Chunk | None:
        final = event.generation is not None
        if final and event.generation.finish_reason == "error":
            raise ConstraintError(f"constrained decoding failed: {event.generation.error}")
        before = len(self.calls)
        delta = self._take(event.text_delta, final)
        self.text += delta
        if final:
            raw = _raw(event.generation, [event.generation])
            return self.text, delta, raw, list(self.calls)
        if not delta and len(self.calls) == before:
            return None  # text still pending (UTF-8, a possible stop string or a tool call)
        raw = {"token_id": event.token_id, "source": event.source}
        return self.text, delta, raw, list(self.calls)


def _chunks(events: Iterator[StreamEvent], request: ToolRequest | None = None) -> Iterator[Chunk]:
    accumulator = _Accumulator(request)
    try:
        for event in events:
            chunk = accumulator.push(event)
            if chunk is not None:
                yield chunk
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()  # releases the engine when the consumer stops early


async def _achunks(
    events: Iterator[StreamEvent], request: ToolRequest | None = None
) -> AsyncIterator[Chunk]:
    accumulator = _Accumulator(request)
    async for event in iterate_in_thread(lambda: events):
        chunk = accumulator.push(event)
        if chunk is not None:
            yield chunk
