"""``ChatBaco``: BACO decoding of a base + aligned model pair as a LangChain chat model."""

from __future__ import annotations

import json
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import aclosing, closing
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.exceptions import OutputParserException
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
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from pydantic import Field, model_validator

from shared_core import registry
from shared_core.adapter_support import (
    DEMO_ALIGNED_ID,
    DEMO_BASE_ID,
    DEMO_MODEL_NAME,  # noqa: F401  (re-exported: the name reported for the demo pair)
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
from shared_core.prompts import aligned_prompt_ids
from shared_core.routers import RouterSpec
from shared_core.structured import ConstraintError, limit_schema
from shared_core.tools import (
    ToolCallStream,
    ToolRequest,
    render_tool_messages,
    tool_message,
    tool_request,
)
from shared_core.types import Generation

#: Constructor arguments other providers take and that have no meaning here (no warning).
_IGNORED_INIT_ARGS = frozenset(
    {"timeout", "request_timeout", "max_retries", "api_key", "base_url", "client"}
)
#: Content blocks of earlier AI turns that are dropped from the prompt (not sent to the models;
#: tool-use blocks are sent from the message's ``tool_calls``).
_SKIPPED_BLOCKS = frozenset({"reasoning", "thinking", "tool_use", "tool_call", "function_call"})


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
    role (the engine accepts common aliases and rejects others). An AI message's
    ``tool_calls`` are written after its text as ``<tool_call>`` blocks, and a
    ``ToolMessage`` (or ``FunctionMessage``, or a ``ChatMessage`` with role
    ``tool``/``function``) becomes a user turn with a ``<tool_response>`` block
    (:mod:`shared_core.tools`); such a history comes back as a ``ToolPrompt`` that also
    keeps the structured form, which the engine sends through the aligned model's chat
    template when it supports tools. ``name`` is not sent otherwise. The engine merges
    consecutive roles and folds system messages where a template needs it.
    """
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        text = _message_text(message, i)
        if isinstance(message, SystemMessage):
            role = "system"
        elif isinstance(message, HumanMessage):
            role = "user"
        elif isinstance(message, AIMessage):
            calls = [
                {"name": c["name"], "arguments": c["args"], "id": c.get("id")}
                for c in message.tool_calls
            ]
            out.append({"role": "assistant", "content": text, "tool_calls": calls})
            continue
        elif isinstance(message, ToolMessage):
            out.append(tool_message(text, name=message.name, call_id=message.tool_call_id))
            continue
        elif isinstance(message, FunctionMessage) or (
            isinstance(message, ChatMessage) and message.role in ("tool", "function")
        ):
            out.append(tool_message(text, name=message.name))
            continue
        elif isinstance(message, ChatMessage):
            role = message.role
        else:
            raise ValueError(
                f"ChatBaco does not support {type(message).__name__} (message {i}); pass "
                "System, Human, AI, Tool or Chat messages"
            )
        out.append({"role": role, "content": text})
    return render_tool_messages(out)


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
        check_call_options(kwargs, owner="ChatBaco")
        defaults = self._field_options()
        call = {k: v for k, v in kwargs.items() if v is not None}
        call["stop"] = combine_stop(self.stop, stop)
        return merge_options(defaults, call)

    def _structure(self, kwargs: dict[str, Any]) -> tuple[ToolRequest, Any]:
        """Pop the tool and structured-output kwargs of a call: ``(tools, json_schema)``."""
        kwargs.pop("ls_structured_output_format", None)
        return pop_structure(kwargs, max_string_length=self.max_string_length)

    def _message(
        self, sample: Generation, request: ToolRequest, with_sources: bool
    ) -> tuple[AIMessage, dict[str, Any]]:
        """One sample as an ``AIMessage`` (tool calls parsed out) and its metadata."""
        metadata = self._metadata(sample, with_sources)
        reply = request.parse(sample.text)
        message = AIMessage(
            content=reply.content,
            tool_calls=[
                tool_call(name=c.name, args=c.arguments, id=c.id) for c in reply.tool_calls
            ],
            invalid_tool_calls=[
                invalid_tool_call(name=c.name, args=c.arguments, id=c.id, error=c.error)
                for c in reply.invalid_tool_calls
            ],
            usage_metadata=usage_dict([sample]),
            response_metadata=dict(metadata),
        )
        return message, metadata

    def _metadata(self, sample: Generation, with_sources: bool) -> dict[str, Any]:
        metadata = {
            "model_name": self.model_name,
            "model_provider": "baco",
            **statistics_dict(sample, with_sources=with_sources),
        }
        content = logprobs_content(sample)
        if content is not None:  # as ChatOpenAI(logprobs=True) gives them
            metadata["logprobs"] = {"content": content, "refusal": None}
        return metadata

    # ------------------------------------------------------------------ generation

    def invoke(self, input: Any, config: Any = None, *, stop: Any = None, **kwargs: Any) -> Any:
        """One reply; with ``n > 1`` the first sample (see :func:`_warn_first_of_many`)."""
        _warn_first_of_many(kwargs.get("n", self.n))
        return super().invoke(input, config, stop=stop, **kwargs)

    async def ainvoke(
        self, input: Any, config: Any = None, *, stop: Any = None, **kwargs: Any
    ) -> Any:
        """Async :meth:`invoke`."""
        _warn_first_of_many(kwargs.get("n", self.n))
        return await super().ainvoke(input, config, stop=stop, **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        """All ``n`` samples from one batched decode."""
        request, constraint = self._structure(kwargs)
        options = self._engine_options(stop, kwargs)
        if constraint is not None:
            options["json_schema"] = constraint
        with_sources = bool(kwargs.get("return_sources", self.return_sources))
        prompt = request.messages(convert_messages(messages))
        result = self._get_engine().generate(prompt, return_exceptions=True, **options)[0]
        samples = usable_samples(result)  # raises only when every sample failed
        generations = []
        for sample in samples:
            message, metadata = self._message(sample, request, with_sources)
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
        """Text chunks as tokens are decoded; metadata and usage on the last chunk only.

        With tools, text outside calls streams as it comes and each call arrives as one
        ``tool_call_chunk`` once it is complete (it always parses: the grammar sees to it).
        """
        request, constraint = self._structure(kwargs)
        options = self._engine_options(stop, kwargs)
        if constraint is not None:
            options["json_schema"] = constraint
        if options.get("n", 1) > 1:
            raise ValueError(
                f"streaming returns one sample but n={options['n']}; use invoke/generate "
                "without streaming for several samples"
            )
        with_sources = bool(kwargs.get("return_sources", self.return_sources))
        calls = ToolCallStream() if request.active else None
        count = 0

        def chunks(delta: str, final: bool) -> list[AIMessageChunk]:
            nonlocal count
            if calls is None:
                return [AIMessageChunk(content=delta)] if delta else []
            out = []
            for kind, item in calls.feed(delta) + (calls.finish() if final else []):
                if kind == "text":
                    out.append(AIMessageChunk(content=item))
                    continue
                args = item.arguments if kind == "invalid" else json.dumps(item.arguments)
                chunk = tool_call_chunk(name=item.name, args=args, id=item.id, index=count)
                out.append(AIMessageChunk(content="", tool_call_chunks=[chunk]))
                count += 1
            return out

        prompt = request.messages(convert_messages(messages))
        events = self._get_engine().stream(prompt, **options)
        with closing(events):  # an abandoned stream releases the engine
            for event in events:
                sample = event.generation
                if sample is None:
                    for message in chunks(event.text_delta, final=False):
                        yield ChatGenerationChunk(message=message)
                    continue
                if sample.finish_reason == "error":
                    raise ConstraintError(f"constrained decoding failed: {sample.error}")
                last_text = event.text_delta
                if calls is not None:
                    for message in chunks(event.text_delta, final=True):
                        yield ChatGenerationChunk(message=message)
                    last_text = ""
                metadata = self._metadata(sample, with_sources)
                message = AIMessageChunk(
                    content=last_text,
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

    # ------------------------------------------------------------------ tools and structure

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | Any],
        *,
        tool_choice: str | bool | dict[str, Any] | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[Any, AIMessage]:
        """Bind tools: the model may call them (``tool_choice=None``/``"auto"``), must call
        one (``"any"``/``"required"``/``True``), must call a given one (its name, or
        ``{"type": "function", "function": {"name": ...}}``), or must not (``"none"``).

        Calls are written in a grammar-constrained format, so every ``tool_calls`` entry
        parses and matches its tool's argument schema (``invalid_tool_calls`` only holds a
        call cut off by ``max_tokens``). With a required choice the response is exactly one
        call. ``strict`` is accepted for compatibility: arguments always follow the schema.
        """
        formatted = [convert_to_openai_tool(tool) for tool in tools]
        max_length = kwargs.get("max_string_length", self.max_string_length)
        tool_request(formatted, tool_choice, max_string_length=max_length)  # validate now
        return self.bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[Any, Any]:
        """A runnable that returns ``schema`` instances (pydantic) or dicts (TypedDict, JSON
        schema), decoded under a grammar so the output always parses.

        ``method="json_schema"`` (default) constrains the response to the schema (objects
        without ``additionalProperties`` are closed); ``"function_calling"`` makes it one call
        of a tool built from the schema; ``"json_mode"`` only guarantees a JSON object.
        ``include_raw=True`` returns ``{"raw", "parsed", "parsing_error"}``. With ``n > 1``
        (field or keyword) the result is a list of up to ``n`` objects (or ``n`` of those
        dicts), all from one batched decode: a sample that failed or does not parse is left
        out with a warning (an error only when none parses). Other keyword arguments are
        bound to the call (e.g. ``max_tokens``, ``max_string_length``, ``gamma``).
        ``strict`` is accepted for compatibility: the output always follows the schema.
        """
        if method not in ("json_schema", "function_calling", "json_mode"):
            raise ValueError(
                f"method must be 'json_schema', 'function_calling' or 'json_mode', got {method!r}"
            )
        ls_format = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
        if method == "function_calling":
            name = convert_to_openai_tool(schema)["function"]["name"]
            llm = self.bind_tools(
                [schema], tool_choice=name, ls_structured_output_format=ls_format, **kwargs
            )
        else:
            target: Any = True
            if method == "json_schema":
                target = limit_schema(convert_to_json_schema(schema), close_objects=True)
            llm = self.bind(json_schema=target, ls_structured_output_format=ls_format, **kwargs)
        parse = _structured_parser(_validator(schema), method)
        n = kwargs.get("n", self.n)
        if n > 1:
            return _many_structured(self, llm, parse, include_raw)
        if include_raw:
            return llm | RunnableLambda(lambda message: _parse_with_raw(parse, message))
        return llm | RunnableLambda(parse)

    # ------------------------------------------------------------------ token counting

    def get_num_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` in the pair's tokenizer (no special tokens)."""
        return self._get_engine().count_tokens(text)

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Length of the aligned model's prompt (chat template, generation cue included),
        with the description of ``tools`` when given."""
        formatted = [convert_to_openai_tool(tool) for tool in tools or []]
        prompt = tool_request(formatted).messages(convert_messages(messages))
        tokenizer = self._get_engine().tokenizer
        return len(aligned_prompt_ids(tokenizer, prompt))


_WARNED_FIRST_OF_MANY = False


def _warn_first_of_many(n: Any) -> None:
    """Say once per process that ``invoke`` with ``n > 1`` returns only the first sample."""
    global _WARNED_FIRST_OF_MANY
    if _WARNED_FIRST_OF_MANY or not isinstance(n, int) or n <= 1:
        return
    _WARNED_FIRST_OF_MANY = True
    warnings.warn(
        f"ChatBaco.invoke with n={n} decodes {n} samples and returns the first; all of them "
        "are in generate([...]).generations[0] (or use with_structured_output(..., n=...), "
        "which returns a list). This warning is shown once.",
        UserWarning,
        stacklevel=3,
    )


def _validator(schema: Any) -> Callable[[Any], Any] | None:
    """How to build an instance of a pydantic (v2 or v1) class; ``None`` for dict schemas."""
    if isinstance(schema, type):
        for name in ("model_validate", "parse_obj"):
            if hasattr(schema, name):
                return getattr(schema, name)
    return None


def _structured_parser(
    validate: Callable[[Any], Any] | None, method: str
) -> Callable[[AIMessage], Any]:
    """``AIMessage -> object``: the JSON of the response (or of its one tool call), turned
    into a pydantic instance by ``validate`` when given."""

    def parse(message: AIMessage) -> Any:
        if method == "function_calling":
            if not message.tool_calls:
                reason = (
                    message.invalid_tool_calls[0]["error"] if message.invalid_tool_calls else ""
                )
                raise OutputParserException(
                    f"the response has no complete tool call ({reason or 'none written'}); "
                    "raise max_tokens or set max_string_length",
                    llm_output=str(message.content),
                )
            value = message.tool_calls[0]["args"]
        else:
            text = message.content if isinstance(message.content, str) else str(message.content)
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise OutputParserException(
                    f"the response is not complete JSON ({exc}); it was probably cut by "
                    "max_tokens: raise it, or bound strings with max_string_length",
                    llm_output=text,
                ) from exc
        if validate is None:
            return value
        try:
            return validate(value)
        except ValueError as exc:
            raise OutputParserException(str(exc), llm_output=json.dumps(value)) from exc

    return parse


def _parse_with_raw(parse: Callable[[AIMessage], Any], message: AIMessage) -> dict[str, Any]:
    try:
        return {"raw": message, "parsed": parse(message), "parsing_error": None}
    except OutputParserException as exc:
        return {"raw": message, "parsed": None, "parsing_error": exc}


def _many_structured(
    model: ChatBaco, llm: Runnable[Any, Any], parse: Callable[[AIMessage], Any], raw: bool
) -> Runnable[Any, list[Any]]:
    """``n`` structured samples of one input from one batched decode (``generate``)."""
    bound = getattr(llm, "kwargs", {})

    def messages_of(value: Any) -> list[BaseMessage]:
        return model._convert_input(value).to_messages()

    def finish(result: Any) -> list[Any]:
        messages = [g.message for g in result.generations[0]]
        if raw:
            return [_parse_with_raw(parse, m) for m in messages]
        return _parse_the_good_ones(parse, messages)

    def run(value: Any, config: Any = None) -> list[Any]:
        return finish(model.generate([messages_of(value)], callbacks=_callbacks(config), **bound))

    async def arun(value: Any, config: Any = None) -> list[Any]:
        result = await model.agenerate([messages_of(value)], callbacks=_callbacks(config), **bound)
        return finish(result)

    return RunnableLambda(run, afunc=arun, name="ChatBacoStructuredSamples")


def _parse_the_good_ones(parse: Callable[[AIMessage], Any], messages: list[AIMessage]) -> list[Any]:
    """The samples that parse, in order; one warning names the others (failed or cut off).

    A weak model or a tight ``max_tokens`` can spoil one sample of ``n``; the others are
    still the caller's. Raises the first sample's error only when none parses
    (``include_raw=True`` returns every sample with its own error instead).
    """
    parsed, problems = [], []
    for message in messages:
        try:
            parsed.append(parse(message))
        except Exception as error:
            index = message.response_metadata.get("sample_index", len(parsed) + len(problems))
            problems.append((index, error))
    if not parsed and problems:
        raise problems[0][1]
    if problems:
        reasons = "; ".join(f"sample {index}: {error}" for index, error in problems)
        warnings.warn(
            f"with_structured_output: {len(problems)} of {len(messages)} samples left out "
            f"({reasons[:500]}); include_raw=True returns every sample with its error",
            UserWarning,
            stacklevel=2,
        )
    return parsed


def _callbacks(config: Any) -> Any:
    return (config or {}).get("callbacks")
