"""``Baco``: BACO decoding of a base + aligned model pair as a LlamaIndex LLM."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
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
from llama_index.core.bridge.pydantic import Field, model_validator
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from shared_core.adapter_support import (
    combine_stop,
    field_options,
    merge_options,
    statistics_dict,
    usage_dict,
)
from shared_core.aio import iterate_in_thread, run_in_thread
from shared_core.engine import BacoEngine
from shared_core.registry import engine_key, get_engine
from shared_core.types import Generation, StreamEvent

logger = logging.getLogger(__name__)


#: Context window of the demo pair's gemma-3-270m, used before its folder has been built.
DEMO_CONTEXT_WINDOW = 32768

#: LlamaIndex roles that the engine's prompt builder does not know, mapped to ones it does.
_ROLE_MAP = {
    MessageRole.CHATBOT.value: "assistant",
    MessageRole.TOOL.value: "user",
    MessageRole.FUNCTION.value: "user",
}

#: Hugging Face loading options that also apply to reading a config.
_CONFIG_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "trust_remote_code")

#: Context windows by engine key, shared by copies (read from configs, or from a loaded pair).
_CONTEXT_WINDOWS: dict[str, int] = {}

Prompt = str | list[dict[str, str]]


class Baco(CustomLLM):
    """BACO decoding (arXiv 2511.05650): a base and an aligned model pick each token together.

    A per-token router chooses which model's distribution to sample, giving outputs that are
    more diverse than the aligned model's while keeping its quality. With both models omitted
    the embedded demo pair is used. Constructing loads nothing: the pair loads on first use
    and is shared (process-wide) by every ``Baco`` with the same models and load options,
    including ``model_copy(update=...)`` variants.

    Every decoding field can be overridden per call: ``llm.complete(p, router="p-fc",
    gamma=0.2)``. Unknown kwargs (e.g. LlamaIndex's ``formatted``) are ignored.

    Examples:
        ```python
        from llama_index_baco import Baco

        llm = Baco(router="p-punc", gamma=0.3, max_tokens=128)
        print(llm.complete("Write a haiku about the sea."))
        aligned_only = llm.model_copy(update={"router": "aligned"})  # same loaded weights
        ```
    """

    base_model: str | None = Field(
        default=None,
        description=(
            "Base (diverse) model: hub id, local folder or .gguf file. Omit together with "
            "aligned_model and aligned_adapter to use the embedded demo pair."
        ),
    )
    aligned_model: str | None = Field(
        default=None,
        description="Aligned (instruction-tuned) counterpart of the base: hub id, folder or .gguf.",
    )
    aligned_adapter: str | None = Field(
        default=None,
        description="PEFT adapter that turns base_model into the aligned model (instead of a "
        "second model).",
    )
    router: str | Callable[..., Any] = Field(
        default="p-punc",
        description=(
            "Token router: aligned, base, rand, p, h, punc, fc, p-punc, h-punc, p-fc, nudging "
            "(case-insensitive), or a callable (signals) -> bool tensor [batch], True = base."
        ),
    )
    gamma: float | None = Field(
        default=None,
        description="Router threshold γ (p/p-punc/p-fc: >= 0, above 1 means base everywhere; "
        "rand/nudging: [0, 1]; h/h-punc: nats >= 0). None uses the router's default.",
    )
    content_source: str = Field(
        default="base",
        description="Model whose top-1 token the content routers (punc/fc) inspect: base or "
        "aligned.",
    )
    aligned_starts: bool = Field(
        default=True, description="The aligned model writes the first word of the response."
    )
    aligned_can_stop: bool = Field(
        default=True,
        description="An end token sampled from the aligned model always ends the response.",
    )
    temperature: float = Field(
        default=1.0, ge=0.0, description="Sampling temperature (0 = greedy decoding)."
    )
    max_tokens: int = Field(
        default=256, ge=1, description="Maximum number of tokens to generate per response."
    )
    min_tokens: int = Field(
        default=0, ge=0, description="End tokens are masked until this many tokens are generated."
    )
    top_p: float = Field(
        default=0.95, gt=0.0, le=1.0, description="Nucleus sampling mass (1 disables it)."
    )
    top_k: int = Field(default=0, ge=0, description="Top-k sampling (0 disables it).")
    min_p: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Min-p sampling threshold (0 disables it)."
    )
    n: int = Field(
        default=1,
        ge=1,
        description=(
            "Samples per request, decoded in one batch. LlamaIndex responses hold one text: the "
            "first sample is the response and all samples are in raw['samples']. Streaming "
            "needs n=1."
        ),
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        description="Random seed for reproducible samples; None draws fresh randomness.",
    )
    target_base_share: float | None = Field(
        default=None,
        description="Ask for a mean share of base-model tokens instead of a gamma: gamma is "
        "read from `calibration` (default: the shipped demo-pair calibration).",
    )
    calibration: str | None = Field(
        default=None,
        description="γ calibration JSON written by `baco eval --calibrate` for this pair.",
    )
    stop: list[str] | None = Field(
        default=None,
        description="Stop strings (not included in the output); per-call stops are added to these.",
    )
    dtype: str | None = Field(
        default=None,
        description="torch dtype to load the weights in (e.g. bfloat16, float32, auto).",
    )
    device_map: str | dict[str, Any] | None = Field(
        default=None, description='Device placement passed to from_pretrained (e.g. "cuda").'
    )
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword arguments for from_pretrained."
    )
    context_window: int | None = Field(
        default=None,
        gt=0,
        description="Context window reported in metadata; None reads it from the models' "
        "configs without loading weights.",
    )

    @model_validator(mode="after")
    def _check_settings(self) -> Baco:
        """Fail at construction (without loading anything) on an invalid model or option."""
        if self.aligned_model is not None and self.aligned_adapter is not None:
            raise ValueError("pass aligned_model or aligned_adapter, not both")
        has_aligned = self.aligned_model is not None or self.aligned_adapter is not None
        if (self.base_model is None) == has_aligned:
            raise ValueError(
                "pass base_model with aligned_model (or aligned_adapter), or none of them to use "
                "the embedded demo pair"
            )
        self._options({})
        return self

    @classmethod
    def class_name(cls) -> str:
        return "Baco_llm"

    @property
    def _is_demo(self) -> bool:
        models = (self.base_model, self.aligned_model, self.aligned_adapter)
        return all(m is None for m in models)

    @property
    def _load_options(self) -> dict[str, Any]:
        return {
            "base_model": self.base_model,
            "aligned_model": self.aligned_model,
            "aligned_adapter": self.aligned_adapter,
            "dtype": self.dtype,
            "device_map": self.device_map,
            "model_kwargs": self.model_kwargs,
        }

    @property
    def model_name(self) -> str:
        """``baco:<base>+<aligned>`` (``baco:demo`` for the embedded pair)."""
        if self._is_demo:
            return "baco:demo"
        return f"baco:{self.base_model}+{self.aligned_model or self.aligned_adapter}"

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
        options = self._load_options
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
        key = engine_key(**self._load_options)
        if key not in _CONTEXT_WINDOWS:
            _CONTEXT_WINDOWS[key] = self._read_context_window()
        return _CONTEXT_WINDOWS[key]

    def _read_context_window(self) -> int:
        """min(base, aligned) maximum length from the configs (as the engine computes it)."""
        if self._is_demo:
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

    kwargs = {k: v for k, v in model_kwargs.items() if k in _CONFIG_KWARGS}
    if ref.lower().endswith(".gguf"):
        path = Path(ref).expanduser()
        ref, kwargs["gguf_file"] = str(path.parent), path.name
    config = AutoConfig.from_pretrained(os.path.expanduser(ref), **kwargs)
    return context_window(SimpleNamespace(config=config))


def to_engine_messages(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """LlamaIndex messages as the engine's ``[{"role", "content"}]`` list (text blocks only)."""
    out = []
    for i, message in enumerate(messages):
        if any(not isinstance(block, TextBlock) for block in message.blocks):
            kinds = sorted({type(b).__name__ for b in message.blocks})
            raise ValueError(f"message {i}: Baco takes text only, got blocks {kinds}")
        role = message.role.value
        out.append({"role": _ROLE_MAP.get(role, role), "content": message.content or ""})
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
