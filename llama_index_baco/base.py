"""``Baco``: BACO decoding of a base + aligned model pair as a LlamaIndex LLM."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from types import SimpleNamespace
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
)
from llama_index.core.bridge.pydantic import Field
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from shared_core.adapter_support import (
    BacoFields,
    combine_stop,
    field_options,
    merge_options,
    statistics_dict,
    tool_result_message,
    usage_dict,
)
from shared_core.aio import iterate_in_thread, run_in_thread
from shared_core.engine import BacoEngine
from shared_core.loading import split_model_ref
from shared_core.registry import engine_key, get_engine
from shared_core.types import Generation, StreamEvent

logger = logging.getLogger(__name__)


#: Context window of the demo pair's gemma-3-270m, used before its folder has been built.
DEMO_CONTEXT_WINDOW = 32768

#: LlamaIndex roles that the engine's prompt builder does not know, mapped to ones it does.
_ROLE_MAP = {MessageRole.CHATBOT.value: "assistant"}
#: Roles whose messages are tool results (sent as user turns, see ``tool_result_message``).
_TOOL_ROLES = frozenset({MessageRole.TOOL.value, MessageRole.FUNCTION.value})

#: Hugging Face loading options that also apply to reading a config.
_CONFIG_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "trust_remote_code")

#: Context windows by engine key, shared by copies (read from configs, or from a loaded pair).
_CONTEXT_WINDOWS: dict[str, int] = {}

Prompt = str | list[dict[str, str]]


class Baco(CustomLLM, BacoFields):
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
        text, raw = self._generate(prompt, self._options(kwargs))
        return CompletionResponse(text=text, raw=raw)

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        """Stream the completion of ``prompt``: cumulative ``text`` and new ``delta``."""
        events = self._events(prompt, self._stream_options(kwargs))

        def gen() -> CompletionResponseGen:
            for text, delta, raw in _chunks(events):
                yield CompletionResponse(text=text, delta=delta, raw=raw)

        return gen()

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Answer a conversation (aligned: chat template; base: plain ``User:`` transcript)."""
        text, raw = self._generate(to_engine_messages(messages), self._options(kwargs))
        return ChatResponse(message=_assistant(text), raw=raw)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Stream the answer to a conversation."""
        events = self._events(to_engine_messages(messages), self._stream_options(kwargs))

        def gen() -> ChatResponseGen:
            for text, delta, raw in _chunks(events):
                yield ChatResponse(message=_assistant(text), delta=delta, raw=raw)

        return gen()

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        """Async :meth:`complete`; decoding runs in a worker thread."""
        text, raw = await run_in_thread(self._generate, prompt, self._options(kwargs))
        return CompletionResponse(text=text, raw=raw)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        """Async :meth:`stream_complete`; decoding runs in a worker thread."""
        events = await run_in_thread(self._events, prompt, self._stream_options(kwargs))

        async def gen() -> CompletionResponseAsyncGen:
            async for text, delta, raw in _achunks(events):
                yield CompletionResponse(text=text, delta=delta, raw=raw)

        return gen()

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Async :meth:`chat`; decoding runs in a worker thread."""
        prompt = to_engine_messages(messages)
        text, raw = await run_in_thread(self._generate, prompt, self._options(kwargs))
        return ChatResponse(message=_assistant(text), raw=raw)

    @llm_chat_callback()
    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        """Async :meth:`stream_chat`; decoding runs in a worker thread."""
        prompt = to_engine_messages(messages)
        events = await run_in_thread(self._events, prompt, self._stream_options(kwargs))

        async def gen() -> ChatResponseAsyncGen:
            async for text, delta, raw in _achunks(events):
                yield ChatResponse(message=_assistant(text), delta=delta, raw=raw)

        return gen()

    # ------------------------------------------------------------------ internals

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
        samples = self.engine.generate(prompt, **options)[0]
        raw = _raw(samples[0], samples)
        if len(samples) > 1:
            raw["samples"] = [{"text": g.text, **statistics_dict(g)} for g in samples]
        return samples[0].text, raw

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
    """LlamaIndex messages as the engine's ``[{"role", "content"}]`` list (text blocks only).

    ``chatbot`` -> ``assistant``; a ``tool``/``function`` message becomes a user turn
    ``Tool result (name/id): …`` (name and ``tool_call_id`` from ``additional_kwargs``).
    """
    out = []
    for i, message in enumerate(messages):
        if any(not isinstance(block, TextBlock) for block in message.blocks):
            kinds = sorted({type(b).__name__ for b in message.blocks})
            raise ValueError(f"message {i}: Baco takes text only, got blocks {kinds}")
        role, text = message.role.value, message.content or ""
        if role in _TOOL_ROLES:
            extra = message.additional_kwargs
            out.append(
                tool_result_message(text, name=extra.get("name"), call_id=extra.get("tool_call_id"))
            )
        else:
            out.append({"role": _ROLE_MAP.get(role, role), "content": text})
    return out


def _assistant(text: str) -> ChatMessage:
    return ChatMessage(role=MessageRole.ASSISTANT, content=text)


def _raw(generation: Generation, samples: Sequence[Generation]) -> dict[str, Any]:
    """``raw`` of a finished response: token usage and BACO statistics (with sources)."""
    return {
        "usage": usage_dict(samples),
        "baco": statistics_dict(generation, with_sources=True),
    }


class _Accumulator:
    """Turns engine events into ``(cumulative text, delta, raw)`` chunks."""

    def __init__(self) -> None:
        self.text = ""

    def push(self, event: StreamEvent) -> tuple[str, str, dict[str, Any]] | None:
        self.text += event.text_delta
        if event.generation is not None:
            return self.text, event.text_delta, _raw(event.generation, [event.generation])
        if not event.text_delta:
            return None  # a token whose text is still pending (UTF-8 or possible stop string)
        return self.text, event.text_delta, {"token_id": event.token_id, "source": event.source}


def _chunks(events: Iterator[StreamEvent]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    accumulator = _Accumulator()
    try:
        for event in events:
            chunk = accumulator.push(event)
            if chunk is not None:
                yield chunk
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()  # releases the engine when the consumer stops early


async def _achunks(events: Iterator[StreamEvent]) -> AsyncIterator[tuple[str, str, dict[str, Any]]]:
    accumulator = _Accumulator()
    async for event in iterate_in_thread(lambda: events):
        chunk = accumulator.push(event)
        if chunk is not None:
            yield chunk
