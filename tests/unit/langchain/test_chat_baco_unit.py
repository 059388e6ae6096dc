"""ChatBaco unit tests: construction, option merging, message conversion, metadata.

Most tests use a recording fake engine (no weights); the few that need a tokenizer or the
engine cache use the tiny pair from disk.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.messages import (
    AIMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.runnables import ConfigurableField

from langchain_baco import ChatBaco, convert_messages
from shared_core import registry
from shared_core.adapter_support import DEMO_MODEL_NAME
from shared_core.pair import ModelPair
from shared_core.params import GenerationParams
from shared_core.structured import ConstraintError
from shared_core.testing import engine_stream_events
from shared_core.types import Generation, StreamEvent, Usage


class FakeEngine:
    """Records the options of each call and returns canned samples (engine semantics).

    Samples end on an end token, so a stream ends with an event that has no token (the
    held-back text " 0" is released there), as ``BacoEngine.stream`` does.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []
        #: Sample indices whose (constrained) decode fails, as the engine reports them.
        self.failing: set[int] = set()

    def _samples(self, options: dict[str, Any]) -> list[Generation]:
        params = GenerationParams().with_overrides(**options)  # options must be valid
        sources = ["aligned", "base", "base", "aligned"]
        return [
            Generation(
                text="" if i in self.failing else f"sample {i}",
                token_ids=[10, 11, 12, 13],
                sources=sources,  # type: ignore[arg-type]
                finish_reason="error" if i in self.failing else "stop",
                usage=Usage(prompt_tokens=7, completion_tokens=5),
                router=params.spec.name,
                gamma=params.gamma,
                sample_index=i,
                error="injected" if i in self.failing else None,
            )
            for i in range(params.n)
        ]

    def generate(
        self, prompt: Any, *, return_exceptions: bool = False, **options: Any
    ) -> list[Any]:
        self.calls.append(("generate", prompt, options))
        samples = self._samples(options)
        if not any(g.finish_reason == "error" for g in samples):
            return [samples]
        error = ConstraintError("prompt 0: constrained decoding failed: injected")
        error.generations = samples  # type: ignore[attr-defined]
        if not return_exceptions:
            raise error
        return [error]

    def stream(self, prompt: Any, **options: Any) -> Iterator[StreamEvent]:
        self.calls.append(("stream", prompt, options))
        sample = self._samples(options)[0]
        yield from engine_stream_events(sample, ["sam", "", "ple", ""], flush=" 0")

    @property
    def options(self) -> dict[str, Any]:
        return self.calls[-1][2]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    engine = FakeEngine()
    monkeypatch.setattr(registry, "get_engine", lambda *a, **k: engine)
    return engine


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the engine must not be loaded here")

    monkeypatch.setattr(registry, "get_engine", fail)


# ---------------------------------------------------------------- construction


def test_construction_bind_and_config_load_nothing(no_loading: None, tiny_pair_paths) -> None:
    base, aligned = map(str, tiny_pair_paths)
    llm = ChatBaco(base_model=base, aligned_model=aligned, router="p", gamma=0.2)
    llm.bind(router="h-punc", gamma=1.5)
    llm.model_copy(update={"gamma": 0.5})
    configurable = llm.configurable_fields(
        router=ConfigurableField(id="router"), gamma=ConfigurableField(id="gamma")
    )
    configurable.with_config(configurable={"router": "aligned"})
    assert llm._identifying_params["router"] == "p"
    assert llm._get_ls_params()["ls_provider"] == "baco"
    ChatBaco()  # the demo pair is not loaded either


def test_demo_pair_when_no_models_given(no_loading: None) -> None:
    llm = ChatBaco()
    assert llm.model_name == DEMO_MODEL_NAME
    params = llm._identifying_params
    assert params["base_model"] and params["aligned_model"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base_model": "b"}, "no aligned model: pass exactly one of aligned_model or"),
        ({"aligned_model": "a"}, "base_model is required with an aligned model"),
        ({"aligned_adapter": "x"}, "base_model is required"),
        ({"base_model": "b", "aligned_model": "a", "aligned_adapter": "x"}, "not both"),
        ({"router": "nope"}, "valid routers"),
        ({"router": "rand", "gamma": 2.0}, "gamma"),
        ({"temperature": -1.0}, "temperature"),
        ({"min_tokens": 20, "max_tokens": 10}, "min_new_tokens"),
    ],
)
def test_invalid_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ChatBaco(**kwargs)


def test_unknown_init_args_warn_but_framework_extras_do_not() -> None:
    with pytest.warns(UserWarning, match="gama"):
        ChatBaco(gama=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ChatBaco(timeout=60, max_retries=2, api_key="x")


def test_paths_accepted(tiny_pair_paths, no_loading: None) -> None:
    base, aligned = tiny_pair_paths
    llm = ChatBaco(base_model=base, aligned_model=aligned)  # pathlib.Path objects
    assert llm.base_model == str(base)
    assert llm.model_name == f"baco:{base}+{aligned}"


def test_identifying_and_ls_params() -> None:
    llm = ChatBaco(
        base_model="org/base",
        aligned_model="org/aligned",
        router="h-punc",
        gamma=1.5,
        temperature=0.7,
        max_tokens=64,
        top_p=0.9,
        stop=["END"],
    )
    params = llm._identifying_params
    assert params["base_model"] == "org/base"
    assert params["aligned_model"] == "org/aligned"
    assert (params["router"], params["gamma"]) == ("h-punc", 1.5)
    assert (params["temperature"], params["max_tokens"], params["top_p"]) == (0.7, 64, 0.9)
    assert llm._llm_type == "baco"
    ls = llm._get_ls_params(stop=["STOP"])
    assert ls["ls_provider"] == "baco"
    assert ls["ls_model_name"] == "baco:org/base+org/aligned"
    assert ls["ls_temperature"] == 0.7 and ls["ls_max_tokens"] == 64
    assert ls["ls_stop"] == ["END", "STOP"]
    assert llm._get_ls_params(model="other")["ls_model_name"] == "other"
    # The LLM cache key changes with router and gamma.
    assert llm._get_llm_string() != llm.model_copy(update={"gamma": 1.0})._get_llm_string()


# ---------------------------------------------------------------- options reach the engine


def test_fields_become_engine_options(fake: FakeEngine) -> None:
    llm = ChatBaco(
        router="p", gamma=0.2, temperature=0.5, max_tokens=9, min_tokens=2, top_k=5, seed=3
    )
    llm.invoke("hi")
    assert fake.options == {
        "router": "p",
        "gamma": 0.2,
        "content_source": "base",
        "aligned_starts": True,
        "aligned_can_stop": True,
        "temperature": 0.5,
        "max_new_tokens": 9,
        "min_new_tokens": 2,
        "top_p": 1.0,  # the embedded pair's measured filters (top_p/min_p left unset)
        "top_k": 5,
        "min_p": 0.05,
        "n": 1,
        "seed": 3,
    }


def test_per_call_overrides_and_bind(fake: FakeEngine) -> None:
    llm = ChatBaco(router="p-punc", gamma=0.1, stop=["END"])
    llm.invoke("hi", router="h-punc", gamma=1.5, temperature=0.7, stop=["\n\n"], timeout=5)
    options = fake.options
    assert (options["router"], options["gamma"], options["temperature"]) == ("h-punc", 1.5, 0.7)
    assert options["stop"] == ["END", "\n\n"]
    assert "timeout" not in options
    llm.invoke("hi")  # the call above changed nothing
    assert (fake.options["router"], fake.options["gamma"]) == ("p-punc", 0.1)
    llm.bind(router="aligned", max_tokens=3).invoke("hi")
    assert fake.options["router"] == "aligned"
    assert "gamma" not in fake.options  # γ belongs to the field router
    assert fake.options["max_new_tokens"] == 3
    llm.bind(gamma=0.4).invoke("hi")
    assert (fake.options["router"], fake.options["gamma"]) == ("p-punc", 0.4)


def test_router_without_gamma_in_call_uses_its_default(fake: FakeEngine) -> None:
    result = ChatBaco(router="p", gamma=0.05).invoke("hi", router="h")
    assert result.response_metadata["gamma"] == 2.0  # h's default, not p's 0.05


def test_field_gamma_ignored_by_routers_without_one(fake: FakeEngine) -> None:
    result = ChatBaco(router="base", gamma=0.3).invoke("hi")
    assert result.response_metadata["router"] == "base"
    assert result.response_metadata["gamma"] is None


def test_invalid_call_options_raise(fake: FakeEngine) -> None:
    with pytest.raises(ValueError, match="valid routers"):
        ChatBaco().invoke("hi", router="nope")
    with pytest.raises(ValueError, match="top_p"):
        ChatBaco().invoke("hi", top_p=2.0)


def test_misspelt_call_options_raise_naming_the_valid_ones(fake: FakeEngine) -> None:
    with pytest.raises(ValueError, match="'gama' \\(did you mean 'gamma'\\?\\)") as info:
        ChatBaco().invoke("hi", gama=0.3)
    assert "top_p" in str(info.value) and not fake.calls
    with pytest.raises(ValueError, match="temprature"):
        ChatBaco().bind(temprature=0.5).invoke("hi")
    ChatBaco().invoke("hi", timeout=3, max_retries=1, model="x")  # framework extras pass
    assert len(fake.calls) == 1


def test_invoke_with_n_says_once_that_it_returns_the_first_sample(
    fake: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import langchain_baco.chat_models as module

    monkeypatch.setattr(module, "_WARNED_FIRST_OF_MANY", False)
    with pytest.warns(UserWarning, match=r"n=3 decodes 3 samples and returns the first"):
        reply = ChatBaco(n=3).invoke("hi")
    assert reply.content == "sample 0"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ChatBaco().invoke("hi", n=2)  # said once per process
        ChatBaco().invoke("hi")


def test_a_failed_sample_is_reported_and_the_others_returned(
    fake: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.failing = {1}
    result = ChatBaco(n=3).generate([[HumanMessage("hi")]])
    generations = result.generations[0]
    assert [g.text for g in generations] == ["sample 0", "sample 2", ""]  # failed ones last
    failed = generations[2].message.response_metadata
    assert failed["finish_reason"] == "error" and "injected" in failed["error"]
    assert [g.message.response_metadata["sample_index"] for g in generations] == [0, 2, 1]
    assert "error" not in generations[0].message.response_metadata
    fake.failing = {0}
    import langchain_baco.chat_models as module

    monkeypatch.setattr(module, "_WARNED_FIRST_OF_MANY", True)  # said already
    first = ChatBaco(n=3).invoke("hi")
    assert first.content == "sample 1" and first.response_metadata["finish_reason"] != "error"
    fake.failing = {0, 1, 2}
    with pytest.raises(ConstraintError, match="injected"):
        ChatBaco(n=3).generate([[HumanMessage("hi")]])


def test_configurable_fields(fake: FakeEngine) -> None:
    llm = ChatBaco(router="p-punc", gamma=0.3).configurable_fields(
        router=ConfigurableField(id="router"), gamma=ConfigurableField(id="gamma")
    )
    llm.with_config(configurable={"router": "h-punc", "gamma": 1.0}).invoke("hi")
    assert (fake.options["router"], fake.options["gamma"]) == ("h-punc", 1.0)
    result = llm.with_config(configurable={"router": "aligned"}).invoke("hi")
    assert result.response_metadata["router"] == "aligned"
    assert result.response_metadata["gamma"] is None  # the field γ is ignored by "aligned"
    llm.invoke("hi")
    assert (fake.options["router"], fake.options["gamma"]) == ("p-punc", 0.3)


def test_n_is_one_batched_call(fake: FakeEngine) -> None:
    result = ChatBaco(n=3).generate([[HumanMessage("hi")]])
    assert len(fake.calls) == 1 and fake.options["n"] == 3
    assert [g.text for g in result.generations[0]] == ["sample 0", "sample 1", "sample 2"]
    assert result.llm_output["token_usage"] == {
        "input_tokens": 7,
        "output_tokens": 15,
        "total_tokens": 22,
    }
    with pytest.raises(ValueError, match="streaming returns one sample"):
        list(ChatBaco(n=2).stream("hi"))


# ---------------------------------------------------------------- metadata


def test_invoke_metadata(fake: FakeEngine) -> None:
    result = ChatBaco(base_model="b", aligned_model="a", router="p", gamma=0.2).invoke("hi")
    assert result.content == "sample 0"
    assert result.usage_metadata == {"input_tokens": 7, "output_tokens": 5, "total_tokens": 12}
    meta = result.response_metadata
    assert meta["model_name"] == "baco:b+a"
    assert meta["model_provider"] == "baco"
    assert meta["finish_reason"] == "stop"
    assert (meta["router"], meta["gamma"], meta["base_share"], meta["switches"]) == (
        "p",
        0.2,
        0.5,
        2,
    )
    assert "sources" not in meta
    sourced = ChatBaco(return_sources=True).invoke("hi")
    assert sourced.response_metadata["sources"] == ["aligned", "base", "base", "aligned"]
    assert ChatBaco().invoke("hi", return_sources=True).response_metadata["sources"]


def test_stream_metadata_on_last_chunk_only(fake: FakeEngine) -> None:
    chunks = list(ChatBaco(return_sources=True).stream("hi"))
    assert [c.content for c in chunks] == ["sam", "ple", " 0"]  # empty deltas skipped
    *head, last = chunks
    for chunk in head:
        assert chunk.usage_metadata is None
        assert "model_name" not in chunk.response_metadata
        assert chunk.chunk_position is None
    assert last.chunk_position == "last"
    assert last.usage_metadata == {"input_tokens": 7, "output_tokens": 5, "total_tokens": 12}
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    assert full.content == "sample 0"
    assert full.response_metadata["model_provider"] == "baco"
    assert full.response_metadata["model_name"] == DEMO_MODEL_NAME
    assert full.response_metadata["sources"] == ["aligned", "base", "base", "aligned"]
    assert full.usage_metadata["input_tokens"] == 7


def test_streaming_field_routes_invoke_through_stream(fake: FakeEngine) -> None:
    result = ChatBaco(streaming=True).invoke("hi")
    assert fake.calls[-1][0] == "stream"
    assert result.content == "sample 0"
    assert result.usage_metadata["total_tokens"] == 12


# ---------------------------------------------------------------- messages


def test_message_conversion() -> None:
    messages = [
        SystemMessage("be brief"),
        SystemMessage([{"type": "text", "text": "and kind"}]),
        HumanMessage("hello", name="ann"),
        HumanMessage(["a ", {"type": "text", "text": "b"}]),
        AIMessage(
            [{"type": "reasoning", "reasoning": "hmm"}, {"type": "text", "text": "hi there"}]
        ),
        ChatMessage(role="developer", content="dev"),
        AIMessage(""),
    ]
    assert convert_messages(messages) == [
        {"role": "system", "content": "be brief"},
        {"role": "system", "content": "and kind"},
        {"role": "user", "content": "hello"},
        {"role": "user", "content": "a b"},
        {"role": "assistant", "content": "hi there"},
        {"role": "developer", "content": "dev"},
        {"role": "assistant", "content": ""},
    ]


def test_messages_reach_the_engine(fake: FakeEngine) -> None:
    ChatBaco().invoke([SystemMessage("s"), HumanMessage("u"), AIMessage("a")])
    assert fake.calls[-1][1] == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
    ]


def test_tool_results_are_sent_as_user_turns(fake: FakeEngine) -> None:
    ChatBaco().invoke(
        [
            HumanMessage("What is 6 x 7?"),
            AIMessage("Let me compute it."),
            ToolMessage("42", tool_call_id="call-1", name="multiply"),
            ChatMessage(role="tool", content="done"),
        ]
    )
    assert fake.calls[-1][1][2:] == [
        {
            "role": "user",
            "content": '<tool_response>\n{"name": "multiply", "id": "call-1"}\n42\n'
            "</tool_response>",
        },
        {"role": "user", "content": "<tool_response>\ndone\n</tool_response>"},
    ]


def test_unsupported_messages_raise_clear_errors(fake: FakeEngine) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(ValueError, match=r"text only.*'image_url'"):
        ChatBaco().invoke([HumanMessage([{"type": "text", "text": "see"}, image])])
    assert not fake.calls


# ---------------------------------------------------------------- the shared engine (tiny pair)


def test_engine_loaded_once_and_shared(monkeypatch: pytest.MonkeyPatch, tiny_pair_paths) -> None:
    base, aligned = map(str, tiny_pair_paths)
    registry.clear_engines()
    loads = []
    original = ModelPair.from_pretrained.__func__

    def counting(cls, *args: Any, **kwargs: Any) -> ModelPair:
        loads.append(args)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(ModelPair, "from_pretrained", classmethod(counting))
    llm = ChatBaco(base_model=base, aligned_model=aligned, max_tokens=2, seed=0)
    assert not loads
    variants = [
        llm,
        llm.bind(router="aligned"),
        llm.model_copy(update={"gamma": 0.9}),
        ChatBaco(base_model=base, aligned_model=aligned, max_tokens=2, router="base"),
        llm.configurable_fields(router=ConfigurableField(id="router")).with_config(
            configurable={"router": "h"}
        ),
    ]
    for variant in variants:
        variant.invoke("hi")
    assert len(loads) == 1
    assert llm._get_engine() is ChatBaco(base_model=base, aligned_model=aligned)._get_engine()
    # Other load options are another engine.
    assert ChatBaco(base_model=base, aligned_model=aligned, dtype="float32")._get_engine() is not (
        llm._get_engine()
    )
    assert len(loads) == 2


def test_token_counting_uses_the_pair_tokenizer(tiny_pair_paths) -> None:
    base, aligned = map(str, tiny_pair_paths)
    llm = ChatBaco(base_model=base, aligned_model=aligned, max_tokens=2, min_tokens=1, seed=0)
    tokenizer = llm._get_engine().tokenizer
    text = "The quick brown fox"
    assert llm.get_num_tokens(text) == len(tokenizer(text, add_special_tokens=False)["input_ids"])
    messages = [SystemMessage("be brief"), HumanMessage("hello")]
    assert (
        llm.get_num_tokens_from_messages(messages)
        == (llm.invoke(messages).usage_metadata["input_tokens"])
    )
