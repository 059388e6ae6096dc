"""What the LangChain and LlamaIndex adapters share: fields, option merging, names, messages.

:class:`BacoFields` declares every field both adapters have (the pair to load and the
decoding options) once; ``ChatBaco`` and ``Baco`` inherit it, so option names, types,
defaults, descriptions and validation are the same in every framework. Adapters also use
these functions for the model name, tool results, usage and statistics.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from typing_extensions import Self

from .loading import check_pair_args
from .params import GenerationParams
from .tools import ToolRequest, tool_request, tool_response_message
from .types import Generation

#: Model name of the embedded demo pair (``ModelPair.demo()``), in both adapters.
DEMO_MODEL_NAME = "baco:demo"
#: What the demo pair's two models are, for traces.
DEMO_BASE_ID = "google/gemma-3-270m"
DEMO_ALIGNED_ID = "google/gemma-3-270m+baco-demo-lora"

#: Adapter field name -> engine option name, for every per-call decoding option.
OPTION_FIELDS: dict[str, str] = {
    "router": "router",
    "gamma": "gamma",
    "content_source": "content_source",
    "aligned_starts": "aligned_starts",
    "aligned_can_stop": "aligned_can_stop",
    "temperature": "temperature",
    "max_tokens": "max_new_tokens",
    "max_new_tokens": "max_new_tokens",
    "min_tokens": "min_new_tokens",
    "min_new_tokens": "min_new_tokens",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "n": "n",
    "seed": "seed",
    "stop": "stop",
}


#: Adapter fields that are per-call decoding options (both adapters declare these fields).
ADAPTER_OPTION_FIELDS: tuple[str, ...] = (
    "router",
    "gamma",
    "content_source",
    "aligned_starts",
    "aligned_can_stop",
    "temperature",
    "max_tokens",
    "min_tokens",
    "top_p",
    "top_k",
    "min_p",
    "n",
    "seed",
    "target_base_share",
    "calibration",
    "logprobs",
    "top_logprobs",
)


#: Per-call option names of both adapters besides the decoding options.
STRUCTURE_CALL_ARGS = frozenset(
    {"return_sources", "max_string_length", "tools", "tool_choice", "json_schema"}
)
#: Per-call keyword arguments that frameworks and clients pass with no meaning here.
FRAMEWORK_CALL_ARGS = frozenset(
    {
        "model",
        "timeout",
        "request_timeout",
        "max_retries",
        "api_key",
        "base_url",
        "client",
        "stream",
        "stream_usage",
        "ls_structured_output_format",
        "parallel_tool_calls",
        "allow_parallel_tool_calls",
        "tool_required",
        "verbose",
        "formatted",
    }
)


def check_call_options(kwargs: Mapping[str, Any], *, owner: str) -> None:
    """Refuse per-call keyword arguments that are not options (a typo such as ``gama``).

    A misspelt option would otherwise be ignored and the call decoded with the field value.
    The error names the closest valid option and lists them all. Arguments that frameworks
    pass on their own (:data:`FRAMEWORK_CALL_ARGS`) are accepted.
    """
    valid = set(OPTION_FIELDS) | set(ADAPTER_OPTION_FIELDS) | STRUCTURE_CALL_ARGS
    unknown = sorted(set(kwargs) - valid - FRAMEWORK_CALL_ARGS)
    if not unknown:
        return
    import difflib

    hints = [
        f"{name!r} (did you mean {close[0]!r}?)"
        if (close := difflib.get_close_matches(name, valid, n=1))
        else repr(name)
        for name in unknown
    ]
    raise ValueError(
        f"{owner} got unknown per-call option(s) {', '.join(hints)}; valid options: "
        f"{', '.join(sorted(valid))}"
    )


def usable_samples(result: Any, *, index: int = 0) -> list[Generation]:
    """The samples of one prompt from ``engine.generate(..., return_exceptions=True)``.

    A prompt with some failed constrained samples comes back as a ``ConstraintError`` that
    carries all its samples; the failed ones (``finish_reason == "error"``) are kept so the
    adapters can report them next to the good ones, but after them: a caller that takes the
    first sample (``invoke``) gets a good one. Each sample's ``sample_index`` (in its
    metadata) still says where it was drawn. Raises when every sample failed or the prompt
    failed as a whole.
    """
    samples = getattr(result, "generations", None) if isinstance(result, Exception) else result
    if isinstance(result, Exception) and not samples:
        raise result
    if samples and all(g.finish_reason == "error" for g in samples):
        raise (
            result
            if isinstance(result, Exception)
            else ValueError(f"prompt {index}: every sample failed")
        )
    return sorted(samples, key=lambda g: g.finish_reason == "error")  # stable: good first


class BacoFields(BaseModel):
    """The fields of both adapters: which pair to load and the default decoding options.

    Construction loads nothing; it checks the pair arguments and validates the options with
    the engine's own rules (:func:`merge_options`), so a bad value fails at construction
    with the same message in every adapter. Per-call options are validated the same way
    when a call is made.
    """

    base_model: str | None = Field(
        default=None,
        description="Base model: hub id, local folder or .gguf file. Omit it together with "
        "aligned_model and aligned_adapter to use the embedded demo pair.",
    )
    aligned_model: str | None = Field(
        default=None,
        description="Aligned (instruction-tuned) counterpart of base_model with the same "
        "tokenizer: hub id, local folder or .gguf file.",
    )
    aligned_adapter: str | None = Field(
        default=None,
        description="PEFT adapter that turns base_model into the aligned model (instead of "
        "aligned_model).",
    )
    router: str | Callable[..., Any] = Field(
        default=GenerationParams.router,
        description="Token router: aligned, base, rand, p, h, punc, fc, p-punc, h-punc, p-fc, "
        "nudging (case-insensitive), or a callable (signals) -> bool tensor [batch], "
        "True = base.",
    )
    gamma: float | None = Field(
        default=GenerationParams.gamma,
        description="Router threshold γ (p/p-punc/p-fc: >= 0, above 1 means base everywhere; "
        "rand/nudging: [0, 1]; h/h-punc: nats >= 0). None: the router's default. Ignored by "
        "routers without one.",
    )
    content_source: Literal["base", "aligned"] = Field(
        default="base",
        description="Model whose top-1 token the content rules (punc/fc) inspect.",
    )
    aligned_starts: bool = Field(
        default=GenerationParams.aligned_starts,
        description="The aligned model writes the first word of the response.",
    )
    aligned_can_stop: bool = Field(
        default=GenerationParams.aligned_can_stop,
        description="An end token sampled from the aligned model always ends the response.",
    )
    temperature: float = Field(
        default=GenerationParams.temperature, description="Sampling temperature; 0 is greedy."
    )
    max_tokens: int = Field(
        default=GenerationParams.max_new_tokens,
        description="Maximum number of tokens to generate per response.",
    )
    min_tokens: int = Field(
        default=GenerationParams.min_new_tokens,
        description="End tokens are blocked until this many tokens are generated.",
    )
    top_p: float | None = Field(
        default=None,
        description="Nucleus sampling mass; 1 disables it. None: the pair's default, 1 on the "
        "embedded demo pair (with min_p 0.05, measured in docs/results.md) and 0.95 on other "
        "pairs (cuts the long junk tail of large vocabularies).",
    )
    top_k: int = Field(default=GenerationParams.top_k, description="Top-k filter; 0 disables.")
    min_p: float | None = Field(
        default=None,
        description="Min-p filter; 0 disables it. None: the pair's default, 0.05 on the "
        "embedded demo pair and 0 on other pairs.",
    )
    n: int = Field(
        default=GenerationParams.n, description="Samples per request, from one batched decode."
    )
    seed: int | None = Field(
        default=GenerationParams.seed,
        description="Random seed; a sample then depends only on prompt, options and seed. "
        "None draws fresh randomness.",
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
    logprobs: bool = Field(
        default=False,
        description="Return each token's log-probability under the model that produced it "
        "(its distribution after temperature) with its source model.",
    )
    top_logprobs: int | None = Field(
        default=None,
        ge=0,
        le=20,
        description="With logprobs: how many most likely alternatives to return per token.",
    )
    max_string_length: int | None = Field(
        default=None,
        ge=0,
        description="Structured output and tool calls: bound every JSON string that has no "
        "maxLength to this many characters (a grammar guarantees valid JSON only if the "
        "response ends before max_tokens).",
    )
    stop: list[str] | None = Field(
        default=None,
        description="Stop strings (not included in the output); per-call stops are added to these.",
    )
    dtype: Any = Field(
        default=None,
        description="torch dtype (or its name: bfloat16, float32, auto) to load the weights in.",
    )
    device_map: str | dict[str, Any] | None = Field(
        default=None, description="device_map for from_pretrained (e.g. 'cuda', 'auto')."
    )
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword arguments for from_pretrained."
    )
    base_url: str | None = Field(
        default=None,
        description="Models too big for one machine: the base model's OpenAI-compatible "
        "completion server (e.g. vLLM, http://host:8000/v1); with aligned_url and tokenizer "
        "the pair is a RemotePair, and base_model / aligned_model name the served models.",
    )
    aligned_url: str | None = Field(
        default=None, description="The aligned model's completion server (may equal base_url)."
    )
    tokenizer: str | None = Field(
        default=None,
        description="With base_url: the models' tokenizer (hub id or folder), loaded locally.",
    )
    api_key: str | None = Field(default=None, description="With base_url: the servers' API key.")
    remote_top_logprobs: int = Field(
        default=20,
        description="With base_url: the k of the top-k distributions read from the servers.",
    )
    remote_mode: str = Field(
        default="chunk",
        description="With base_url: 'chunk' (proposals of chunk_tokens tokens, few requests) "
        "or 'token' (two requests per step; equals the local engine with top_k=k).",
    )
    chunk_tokens: int = Field(default=8, description="With base_url: tokens per proposal.")
    request_timeout: float = Field(
        default=60.0, description="With base_url: seconds per request before it fails."
    )

    @field_validator(
        "base_model", "aligned_model", "aligned_adapter", "calibration", "tokenizer", mode="before"
    )
    @classmethod
    def _fspath(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @model_validator(mode="after")
    def _check_pair_and_options(self) -> Self:
        """Fail at construction (without loading anything) on a bad pair or option."""
        if self.is_remote:
            check_remote_args(self.base_url, self.aligned_url, self.tokenizer, self.aligned_adapter)
            remote_options(self)  # validates mode, k, chunk size and timeout
        else:
            if self.tokenizer is not None:
                raise ValueError("tokenizer is for remote pairs: pass base_url and aligned_url")
            check_pair_args(self.base_model, self.aligned_model, self.aligned_adapter)
        merge_options({**field_options(self), "stop": self.stop})
        return self

    @property
    def is_remote(self) -> bool:
        """True when the pair's models live behind completion servers (``base_url``)."""
        return self.base_url is not None or self.aligned_url is not None

    @property
    def model_name(self) -> str:
        """``baco:<base>+<aligned>`` (``baco:demo`` for the embedded pair)."""
        if self.is_remote:
            base = self.base_model or self.base_url
            return f"baco:{base}+{self.aligned_model or self.aligned_url}"
        return pair_model_name(self.base_model, self.aligned_model, self.aligned_adapter)

    @property
    def load_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`shared_core.registry.get_engine` for this pair."""
        if self.is_remote:
            return {"remote": remote_options(self)}
        return {
            "base_model": self.base_model,
            "aligned_model": self.aligned_model,
            "aligned_adapter": self.aligned_adapter,
            "dtype": self.dtype,
            "device_map": self.device_map,
            "model_kwargs": self.model_kwargs or None,
        }


def check_remote_args(
    base_url: str | None, aligned_url: str | None, tokenizer: Any, aligned_adapter: Any
) -> None:
    """A remote pair needs both server URLs and the models' tokenizer, and no adapter."""
    if base_url is None or aligned_url is None:
        raise ValueError("a remote pair needs both base_url and aligned_url (they may be equal)")
    if tokenizer is None:
        raise ValueError(
            "a remote pair needs tokenizer=<hub id or folder> (the served models' tokenizer, "
            "loaded locally for chat templates, stop strings and word boundaries)"
        )
    if aligned_adapter is not None:
        raise ValueError(
            "aligned_adapter is for local pairs; serve the adapter with the base model "
            "(vLLM: --enable-lora --lora-modules aligned=PATH) and pass aligned_model='aligned'"
        )


def remote_options(fields: BacoFields) -> dict[str, Any]:
    """:class:`~shared_core.remote.RemotePair` keyword arguments of adapter fields
    (validated here, so a bad value fails at construction)."""
    from .remote import MODES

    if fields.remote_mode not in MODES:
        raise ValueError(f"remote_mode must be one of {MODES}, got {fields.remote_mode!r}")
    for name in ("remote_top_logprobs", "chunk_tokens"):
        value = getattr(fields, name)
        if value < 1:
            raise ValueError(f"{name} must be ≥ 1, got {value}")
    if fields.request_timeout <= 0:
        raise ValueError(f"request_timeout must be positive, got {fields.request_timeout}")
    return {
        "base_url": fields.base_url,
        "aligned_url": fields.aligned_url,
        "tokenizer": fields.tokenizer,
        "base_model": fields.base_model,
        "aligned_model": fields.aligned_model,
        "api_key": fields.api_key,
        "top_logprobs": fields.remote_top_logprobs,
        "mode": fields.remote_mode,
        "chunk_tokens": fields.chunk_tokens,
        "timeout": fields.request_timeout,
    }


def pair_model_name(base: str | None, aligned: str | None, adapter: str | None = None) -> str:
    """The name both adapters report for a pair: ``baco:<base>+<aligned or adapter>``."""
    if base is None:
        return DEMO_MODEL_NAME
    return f"baco:{base}+{aligned if aligned is not None else adapter}"


def tool_result_message(
    content: str, *, name: str | None = None, call_id: str | None = None
) -> dict[str, str]:
    """A tool's result as an engine message: a user turn with a ``<tool_response>`` block.

    This is how a result reaches the base model (and an aligned template without tool
    support). The adapters send structured ``tool`` messages (``tools.tool_message``),
    which ``tools.render_tool_messages`` renders this way while keeping the structure for
    templates that support tools.
    """
    return tool_response_message(content, name=name, call_id=call_id)


#: Per-call keyword arguments that carry tools or structured output (not engine options).
STRUCTURE_KWARGS = ("tools", "tool_choice", "json_schema", "max_string_length")


def pop_structure(
    kwargs: dict[str, Any], *, max_string_length: int | None = None
) -> tuple[ToolRequest, Any]:
    """Pop a call's tool and structured-output kwargs; return ``(tools, grammar)``.

    ``tools`` (OpenAI-style dicts) with ``tool_choice`` give a :class:`ToolRequest` (prompt
    rendering, grammar, parsing); ``json_schema`` (a JSON-schema dict or ``True``) is the
    other way to constrain a response. ``grammar`` is what to pass as the engine's
    ``json_schema`` (``None``: unconstrained). ``max_string_length`` (per call, else the
    adapter field given here) bounds unbounded strings; ``parallel_tool_calls=False`` allows
    at most one call. Validated before any model work.
    """
    from .structured import json_schema_constraint, limit_schema

    tools = kwargs.pop("tools", None)
    tool_choice = kwargs.pop("tool_choice", None)
    schema = kwargs.pop("json_schema", None)
    per_call = kwargs.pop("max_string_length", None)
    parallel = kwargs.pop("parallel_tool_calls", None)
    max_length = max_string_length if per_call is None else per_call
    request = tool_request(
        tools, tool_choice, max_string_length=max_length, parallel_tool_calls=parallel
    )
    if request.constraint is not None and schema not in (None, False):
        raise ValueError("pass either tools (with a tool_choice) or json_schema, not both")
    if request.constraint is not None:
        return request, request.constraint
    if schema is None or schema is False:
        return request, None
    if max_length is not None:
        schema = limit_schema(schema, max_string_length=max_length)
    return request, json_schema_constraint(schema)


#: Sampling filters of a pair other than the embedded demo pair, when the adapter leaves
#: ``top_p``/``min_p`` unset: top-p 0.95 cuts the junk tail of a large vocabulary.
USER_PAIR_SAMPLING = {"top_p": 0.95, "min_p": 0.0}


def pair_sampling_defaults(adapter: object) -> dict[str, float]:
    """``top_p``/``min_p`` for an adapter that leaves them unset: the demo pair's measured
    filters (``shared_core.demo.DEMO_TOP_P``/``DEMO_MIN_P``) when it runs the embedded pair
    (no model, adapter or server given), :data:`USER_PAIR_SAMPLING` otherwise."""
    local = not (getattr(adapter, "base_url", None) or getattr(adapter, "aligned_url", None))
    named = any(
        getattr(adapter, f, None) for f in ("base_model", "aligned_model", "aligned_adapter")
    )
    if local and not named:
        from .demo import DEMO_MIN_P, DEMO_TOP_P

        return {"top_p": DEMO_TOP_P, "min_p": DEMO_MIN_P}
    return dict(USER_PAIR_SAMPLING)


def field_options(adapter: object) -> dict[str, Any]:
    """The values of an adapter's decoding-option fields (absent fields are skipped);
    unset ``top_p``/``min_p`` get the pair's defaults (:func:`pair_sampling_defaults`)."""
    options = {
        name: getattr(adapter, name) for name in ADAPTER_OPTION_FIELDS if hasattr(adapter, name)
    }
    for name, value in pair_sampling_defaults(adapter).items():
        if name in options and options[name] is None:
            options[name] = value
    return options


def merge_options(
    defaults: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Engine options from adapter field values with per-call ``overrides`` on top.

    ``target_base_share`` (with an optional ``calibration`` file from ``baco eval
    --calibrate``; default: the shipped demo-pair calibration) sets gamma to the value that
    gives that mean base share, unless a per-call gamma is given.
    Keys not in :data:`OPTION_FIELDS` are ignored (frameworks pass extras such as ``timeout``);
    ``None`` means "not set". A per-call ``router`` without a per-call ``gamma`` uses that
    router's default gamma (a field gamma tuned for another router family may not even be in
    range). The result is validated (``ValueError``/``TypeError``).
    """
    options: dict[str, Any] = {}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    for source in (defaults, overrides):
        for key, value in source.items():
            if key in OPTION_FIELDS and value is not None:
                options[OPTION_FIELDS[key]] = value
    if "router" in overrides and "gamma" not in overrides:
        options.pop("gamma", None)
    target = overrides.get("target_base_share", defaults.get("target_base_share"))
    if target is not None and "gamma" not in overrides:
        from .calibration import gamma_for_base_share

        calibration = overrides.get("calibration", defaults.get("calibration"))
        router = options.get("router", "p-punc")
        if not isinstance(router, str):
            raise TypeError("target_base_share needs a named router, not a callable")
        options["gamma"] = gamma_for_base_share(router, target, calibration)
    wanted = overrides.get("logprobs", defaults.get("logprobs"))
    top = overrides.get("top_logprobs", defaults.get("top_logprobs"))
    if not isinstance(wanted, bool | None):
        raise TypeError(f"logprobs must be a bool, got {wanted!r}")
    if wanted:
        options["logprobs"] = 0 if top is None else top
    GenerationParams().with_overrides(**options)
    return options


def logprobs_content(generation: Generation) -> list[dict[str, Any]] | None:
    """A sample's log-probabilities as OpenAI's chat ``logprobs.content`` items (each with
    ``source``), or ``None`` when they were not asked for."""
    if generation.logprobs is None:
        return None
    return [entry.openai() for entry in generation.logprobs]


def combine_stop(*stops: str | Sequence[str] | None) -> list[str] | None:
    """Union of several stop settings (field default and per-call), order kept."""
    out: list[str] = []
    for stop in stops:
        if stop is None:
            continue
        for s in [stop] if isinstance(stop, str) else list(stop):
            if s not in out:
                out.append(s)
    return out or None


def usage_dict(generations: Sequence[Generation]) -> dict[str, int]:
    """Token usage of one request: the prompt counted once, completions summed."""
    if not generations:
        return {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    prompt = generations[0].usage.prompt_tokens
    completion = sum(g.usage.completion_tokens for g in generations)
    return {
        "input_tokens": prompt,
        "output_tokens": completion,
        "total_tokens": prompt + completion,
    }


def statistics_dict(generation: Generation, *, with_sources: bool = False) -> dict[str, Any]:
    """BACO statistics of one sample (router, gamma, base share, switches[, sources])."""
    stats = generation.statistics()
    stats["finish_reason"] = generation.finish_reason
    stats["sample_index"] = generation.sample_index
    if generation.finish_reason == "error":
        stats["error"] = f"constrained decoding failed: {generation.error}"
    if with_sources:
        stats["sources"] = list(generation.sources)
    return stats
