"""``ChatBaco``: BACO decoding of a base + aligned model pair as a LangChain chat model."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import aclosing, closing
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field, model_validator

from shared_core import registry
from shared_core.adapter_support import (
    DEMO_ALIGNED_ID,
    DEMO_BASE_ID,
    DEMO_MODEL_NAME,  # noqa: F401  (re-exported: the name reported for the demo pair)
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
from shared_core.prompts import chat_template_ids, normalise_messages
from shared_core.routers import RouterSpec
from shared_core.types import Generation

#: Constructor arguments other providers take and that have no meaning here (no warning).
_IGNORED_INIT_ARGS = frozenset(
    {"timeout", "request_timeout", "max_retries", "api_key", "base_url", "client"}
)
#: Content blocks of earlier AI turns that are dropped from the prompt (not sent to the models).
_SKIPPED_BLOCKS = frozenset({"reasoning", "thinking"})


def _router_id(router: Any) -> str:
    """A readable, stable name for a router (a name or a callable)."""
    if isinstance(router, str):
        return router
    if isinstance(router, RouterSpec):
        return router.name
    module = getattr(router, "__module__", None)
    name = getattr(router, "__qualname__", None) or type(router).__qualname__
    return f"{module}.{name}" if module else name


def _message_text(message: BaseMessage, index: int) -> str:
    """The text of a message; lists of content blocks are joined (text blocks only)."""
    content = message.content
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
            continue
        kind = block.get("type") if isinstance(block, dict) else type(block).__name__
        if kind == "text":
            parts.append(str(block.get("text", "")))
        elif kind not in _SKIPPED_BLOCKS:
            raise ValueError(
                f"ChatBaco accepts text only, but message {index} has a {kind!r} content block"
            )
    return "".join(parts)


def convert_messages(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages -> ``{"role", "content"}`` dicts for the engine.

    System -> ``system``, Human -> ``user``, AI -> ``assistant``; a ``ChatMessage`` keeps its
    role (the engine accepts common aliases and rejects others). A ``ToolMessage`` (or
    ``FunctionMessage``, or a ``ChatMessage`` with role ``tool``/``function``) becomes a user
    turn ``Tool result (name/id): …`` (:func:`~shared_core.adapter_support.tool_result_message`).
    ``name`` is not sent otherwise. The engine merges consecutive roles and folds system
    messages where a template needs it.
    """
    out = []
    for i, message in enumerate(messages):
        text = _message_text(message, i)
        if isinstance(message, SystemMessage):
            role = "system"
        elif isinstance(message, HumanMessage):
            role = "user"
        elif isinstance(message, AIMessage):
            role = "assistant"
        elif isinstance(message, ToolMessage):
            out.append(tool_result_message(text, name=message.name, call_id=message.tool_call_id))
            continue
        elif isinstance(message, FunctionMessage) or (
            isinstance(message, ChatMessage) and message.role in ("tool", "function")
        ):
            out.append(tool_result_message(text, name=message.name))
            continue
        elif isinstance(message, ChatMessage):
            role = message.role
        else:
            raise ValueError(
                f"ChatBaco does not support {type(message).__name__} (message {i}); pass "
                "System, Human, AI, Tool or Chat messages"
            )
        out.append({"role": role, "content": text})
    return out


class ChatBaco(BaseChatModel, BacoFields):
    """BACO: a base and an aligned LM decode in lockstep; a router picks the model per token.

    Outputs are more diverse than the aligned model's alone while keeping its quality
    (arXiv 2511.05650). With no models given, the embedded demo pair is used. Construction
    loads nothing: the pair is loaded on first use and shared by every ``ChatBaco`` (copies,
    ``bind``, ``configurable_fields``) with the same models and load options.

    Setup:
        From the repository root: ``pip install -e ".[langchain]"`` (``".[langchain,demo]"``
        for the demo pair), or ``bash scripts/install.sh langchain,demo``.

    Example:
        ```python
        from langchain_baco import ChatBaco

        llm = ChatBaco(router="p-punc", gamma=0.3, temperature=1.0, top_p=0.95)
        llm.invoke("Write a one-line poem about the sea.")
        llm.invoke("Write a one-line poem about the sea.", router="h-punc", gamma=1.5)
        llm.bind(router="aligned").invoke("Same, aligned model only.")
        ```

    Per-call keyword arguments (``invoke(..., gamma=0.5)``, ``bind(...)``) override the
    fields of the same name for that call. A ``router`` given per call without a ``gamma``
    uses that router's default γ. Response metadata carries ``router``, ``gamma``,
    ``base_share`` (fraction of tokens from the base model), ``switches`` and, with
    ``return_sources=True``, the per-token ``sources``.
    """

    streaming: bool = Field(default=False, description="Stream tokens from invoke().")
    return_sources: bool = Field(
        default=False, description="Add per-token sources ('base'/'aligned') to the metadata."
    )

    @model_validator(mode="before")
    @classmethod
    def _warn_unknown_args(cls, values: Any) -> Any:
        if isinstance(values, dict):
            known = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
            unknown = sorted(set(values) - known - _IGNORED_INIT_ARGS)
            if unknown:
                warnings.warn(
                    f"ChatBaco ignores unknown argument(s) {unknown}", UserWarning, stacklevel=4
                )
        return values

    # ------------------------------------------------------------------ identity

    @property
    def _llm_type(self) -> str:
        return "baco"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "base_model": self.base_model or DEMO_BASE_ID,
            "aligned_model": self.aligned_model
            or (self.aligned_adapter and f"{self.base_model}+{self.aligned_adapter}")
            or DEMO_ALIGNED_ID,
            **field_options(self),
            "router": _router_id(self.router),
            "stop": self.stop,
            "return_sources": self.return_sources,
            "dtype": None if self.dtype is None else str(self.dtype),
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="baco",
            ls_model_name=kwargs.get("model", self.model_name),
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
        if ls_stop := combine_stop(self.stop, stop):
            params["ls_stop"] = ls_stop
        return params

    # ------------------------------------------------------------------ engine and options

    def _get_engine(self) -> BacoEngine:
        """The shared engine for this pair (loaded on first use, once per process)."""
        return registry.get_engine(**self.load_options)

    def _field_options(self) -> dict[str, Any]:
        return field_options(self)

    def _engine_options(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Engine options: fields, then per-call kwargs (unknown keys such as timeout ignored)."""
        defaults = self._field_options()
        call = {k: v for k, v in kwargs.items() if v is not None}
        call["stop"] = combine_stop(self.stop, stop)
        return merge_options(defaults, call)

    def _metadata(self, sample: Generation, with_sources: bool) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_provider": "baco",
            **statistics_dict(sample, with_sources=with_sources),
        }

    # ------------------------------------------------------------------ generation

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        """All ``n`` samples from one batched decode."""
        options = self._engine_options(stop, kwargs)
        with_sources = bool(kwargs.get("return_sources", self.return_sources))
        samples = self._get_engine().generate(convert_messages(messages), **options)[0]
        generations = []
        for sample in samples:
            metadata = self._metadata(sample, with_sources)
            message = AIMessage(
                content=sample.text,
                usage_metadata=usage_dict([sample]),
                response_metadata=dict(metadata),
            )
            generations.append(ChatGeneration(message=message, generation_info=metadata))
        llm_output = {"model_name": self.model_name, "token_usage": usage_dict(samples)}
        return ChatResult(generations=generations, llm_output=llm_output)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """Text chunks as tokens are decoded; metadata and usage on the last chunk only."""
        options = self._engine_options(stop, kwargs)
        if options.get("n", 1) > 1:
            raise ValueError(
                f"streaming returns one sample but n={options['n']}; use invoke/generate "
                "without streaming for several samples"
            )
        with_sources = bool(kwargs.get("return_sources", self.return_sources))
        events = self._get_engine().stream(convert_messages(messages), **options)
        with closing(events):  # an abandoned stream releases the engine
            for event in events:
                sample = event.generation
                if sample is None:
                    if event.text_delta:
                        yield ChatGenerationChunk(message=AIMessageChunk(content=event.text_delta))
                    continue
                metadata = self._metadata(sample, with_sources)
                message = AIMessageChunk(
                    content=event.text_delta,
                    usage_metadata=usage_dict([sample]),
                    response_metadata=dict(metadata),
                    chunk_position="last",
                )
                yield ChatGenerationChunk(message=message, generation_info=metadata)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        """:meth:`_generate` in a worker thread (the event loop keeps running)."""
        return await run_in_thread(self._generate, messages, stop, None, **kwargs)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        """:meth:`_stream` driven by a dedicated worker thread (the loop only awaits a queue)."""
        chunks = iterate_in_thread(lambda: self._stream(messages, stop, None, **kwargs))
        async with aclosing(chunks):
            async for chunk in chunks:
                yield chunk

    def _combine_llm_outputs(self, llm_outputs: list[dict[str, Any] | None]) -> dict[str, Any]:
        """``generate()`` over several inputs: token usage summed."""
        usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
        for output in llm_outputs:
            for key, value in ((output or {}).get("token_usage") or {}).items():
                usage[key] = usage.get(key, 0) + value
        return {"model_name": self.model_name, "token_usage": usage}

    # ------------------------------------------------------------------ token counting

    def get_num_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` in the pair's tokenizer (no special tokens)."""
        return self._get_engine().count_tokens(text)

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Length of the aligned model's prompt (chat template, generation cue included)."""
        if tools:
            warnings.warn("ChatBaco does not use tools; ignoring them", stacklevel=2)
        tokenizer = self._get_engine().tokenizer
        return len(chat_template_ids(tokenizer, normalise_messages(convert_messages(messages))))
