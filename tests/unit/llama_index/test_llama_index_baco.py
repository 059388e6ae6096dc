"""Unit tests of ``llama_index_baco.Baco`` that load no model (configs only, or a fake engine)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole, TextBlock
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW
from llama_index.core.llms import CustomLLM

from llama_index_baco import Baco
from llama_index_baco import base as baco_base

ISSUE_FIELDS = [
    "base_model",
    "aligned_model",
    "aligned_adapter",
    "router",
    "gamma",
    "content_source",
    "temperature",
    "max_tokens",
    "min_tokens",
    "top_p",
    "top_k",
    "n",
    "seed",
    "stop",
    "dtype",
    "device_map",
    "model_kwargs",
]


@pytest.fixture(autouse=True)
def _fresh_context_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(baco_base, "_CONTEXT_WINDOWS", {})


def test_is_a_custom_llm_with_described_fields() -> None:
    assert issubclass(Baco, CustomLLM)
    assert Baco.class_name() == "Baco_llm"
    for name in [*ISSUE_FIELDS, "min_p", "aligned_starts", "aligned_can_stop", "context_window"]:
        assert Baco.model_fields[name].description, name


@pytest.mark.usefixtures("no_loading", "empty_baco_home")
def test_construction_copies_and_metadata_load_nothing(tiny_pair_paths: tuple[Path, Path]) -> None:
    demo = Baco()
    meta = demo.metadata
    assert meta.is_chat_model
    assert meta.model_name == "baco:demo"
    assert meta.context_window == baco_base.DEMO_CONTEXT_WINDOW
    assert meta.num_output == demo.max_tokens == 256
    copy = demo.model_copy(update={"gamma": 0.5})
    assert (copy.gamma, demo.gamma) == (0.5, None)
    assert copy.to_payload()["class_name"] == "Baco_llm"

    base, aligned = map(str, tiny_pair_paths)
    llm = Baco(base_model=base, aligned_model=aligned, max_tokens=12)
    meta = llm.metadata
    assert meta.context_window == 512  # the tiny Llama's max_position_embeddings
    assert meta.num_output == 12
    assert meta.model_name == f"baco:{base}+{aligned}"


@pytest.mark.usefixtures("no_loading")
def test_context_window_field_and_unreadable_config(tmp_path: Path) -> None:
    missing = str(tmp_path / "nothing-here")
    llm = Baco(base_model=missing, aligned_model=missing)
    assert llm.metadata.context_window == DEFAULT_CONTEXT_WINDOW
    assert (
        Baco(base_model=missing, aligned_model=missing, context_window=2048).metadata.context_window
        == 2048
    )


@pytest.mark.parametrize(
    "settings",
    [
        {"router": "nope"},
        {"router": "rand", "gamma": 1.5},
        {"router": "h", "gamma": -1.0},
        {"content_source": "neither"},
        {"top_p": 0.0},
        {"temperature": -1.0},
        {"min_tokens": 10, "max_tokens": 5},
        {"stop": [""]},
        {"base_model": "b"},
        {"aligned_model": "a"},
        {"base_model": "b", "aligned_model": "a", "aligned_adapter": "x"},
    ],
)
@pytest.mark.usefixtures("no_loading")
def test_invalid_settings_fail_at_construction(settings: dict) -> None:
    with pytest.raises(ValueError):
        Baco(**settings)


def test_fields_and_per_call_kwargs_reach_the_engine(fake_engine) -> None:
    llm = Baco(router="p-punc", gamma=0.3, max_tokens=9, min_tokens=2, seed=4, stop=["END"])
    response = llm.complete("hi", router="p-fc", gamma=0.2, top_k=5, formatted=True, timeout=3)
    kind, prompt, options = fake_engine.calls[-1]
    assert (kind, prompt) == ("generate", "hi")
    assert options["router"] == "p-fc" and options["gamma"] == 0.2 and options["top_k"] == 5
    assert options["max_new_tokens"] == 9 and options["min_new_tokens"] == 2
    assert options["seed"] == 4 and (options["top_p"], options["min_p"]) == (1.0, 0.05)
    assert options["stop"] == ["END"]
    assert "formatted" not in options and "timeout" not in options
    assert response.text == "Hello world"
    assert response.raw["usage"] == {"input_tokens": 5, "output_tokens": 4, "total_tokens": 9}
    assert response.raw["baco"]["router"] == "p-fc"
    assert response.raw["baco"]["base_share"] == 0.5 and response.raw["baco"]["switches"] == 2

    llm.complete("hi", stop="STOP", max_new_tokens=3)
    options = fake_engine.calls[-1][2]
    assert options["stop"] == ["END", "STOP"] and options["max_new_tokens"] == 3


def test_invalid_per_call_option_raises_before_decoding(fake_engine) -> None:
    llm = Baco(router="rand")
    with pytest.raises(ValueError, match="gamma"):
        llm.complete("hi", gamma=3.0)
    with pytest.raises(ValueError, match="unknown router"):
        llm.chat([ChatMessage(role="user", content="hi")], router="bogus")
    assert fake_engine.calls == []


def test_misspelt_per_call_option_raises_naming_the_valid_ones(fake_engine) -> None:
    llm = Baco()
    with pytest.raises(ValueError, match="did you mean 'gamma'"):
        llm.complete("hi", gama=0.3)
    with pytest.raises(ValueError, match=r"valid options: .*top_p"):
        llm.chat([ChatMessage(role="user", content="hi")], temprature=0.5)
    assert fake_engine.calls == []


def test_a_failed_sample_is_reported_and_the_good_ones_returned(
    fake_engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    from shared_core.structured import ConstraintError

    good = fake_engine.generate

    def generate(prompt, *, return_exceptions=False, **options):
        samples = [
            replace(g, text="", finish_reason="error", error="injected") if i == 0 else g
            for i, g in enumerate(good(prompt, **options)[0])
        ]
        error = ConstraintError("prompt 0, sample 0: constrained decoding failed: injected")
        error.generations = samples
        if not return_exceptions:
            raise error
        return [error]

    monkeypatch.setattr(fake_engine, "generate", generate)
    response = Baco(n=2).complete("hi")
    assert response.text == "Hello world #1"  # the first sample that did not fail
    good_one, failed = response.raw["samples"]  # failed samples come last
    assert failed["finish_reason"] == "error" and "injected" in failed["error"]
    assert (failed["sample_index"], good_one["sample_index"]) == (0, 1)
    assert good_one["text"] == "Hello world #1" and "error" not in good_one
    with pytest.raises(ConstraintError):
        Baco(n=1).complete("hi")


def test_chat_sends_a_message_list(fake_engine) -> None:
    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content="Be brief."),
        ChatMessage(role=MessageRole.USER, content="Hi"),
        ChatMessage(role=MessageRole.CHATBOT, content="Hello!"),
        ChatMessage(role=MessageRole.USER, blocks=[TextBlock(text="a"), TextBlock(text="b")]),
    ]
    response = Baco().chat(messages)
    assert fake_engine.calls[-1][1] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "a\nb"},
    ]
    assert response.message.role == MessageRole.ASSISTANT
    assert response.message.content == "Hello world"


def test_tool_results_are_sent_as_user_turns(fake_engine) -> None:
    tool = ChatMessage(
        role=MessageRole.TOOL,
        content="42",
        additional_kwargs={"tool_call_id": "call-1", "name": "multiply"},
    )
    Baco().chat([ChatMessage(role="user", content="What is 6 x 7?"), tool])
    assert fake_engine.calls[-1][1][1] == {
        "role": "user",
        "content": '<tool_response>\n{"name": "multiply", "id": "call-1"}\n42\n</tool_response>',
    }


def test_stream_that_ends_on_an_end_token(fake_engine) -> None:
    fake_engine.finish_reason = "stop"  # the last event carries no token, as in the engine
    chunks = list(Baco().stream_complete("hi"))
    assert [c.delta for c in chunks] == ["Hel", "lo", " world", ""]
    assert chunks[-2].raw == {"token_id": 4, "source": "aligned"}
    assert chunks[-1].text == "Hello world"
    assert chunks[-1].raw["baco"]["finish_reason"] == "stop"


def test_non_text_content_is_rejected(fake_engine) -> None:
    image = ChatMessage(
        role="user", blocks=[ImageBlock(image=b"\x89PNG", image_mimetype="image/png")]
    )
    with pytest.raises(ValueError, match="text only"):
        Baco().chat([image])


def test_n_samples_come_back_in_raw(fake_engine) -> None:
    response = Baco(n=3).complete("hi")
    assert fake_engine.calls[-1][2]["n"] == 3
    assert response.text == "Hello world"
    assert [s["text"] for s in response.raw["samples"]] == [
        "Hello world",
        "Hello world #1",
        "Hello world #2",
    ]
    assert response.raw["usage"]["output_tokens"] == 12


def test_streaming_needs_one_sample(fake_engine) -> None:
    with pytest.raises(ValueError, match="n=1"):
        Baco(n=2).stream_complete("hi")
    with pytest.raises(ValueError, match="n=1"):
        Baco().stream_chat([ChatMessage(role="user", content="hi")], n=4)


def test_stream_chunks(fake_engine) -> None:
    chunks = list(Baco().stream_complete("hi"))
    assert [c.delta for c in chunks] == ["Hel", "lo", " world"]  # empty pending delta skipped
    assert [c.text for c in chunks] == ["Hel", "Hello", "Hello world"]
    assert chunks[0].raw == {"token_id": 1, "source": "aligned"}
    assert chunks[1].raw == {"token_id": 3, "source": "base"}
    assert chunks[-1].raw["usage"]["total_tokens"] == 9
    assert chunks[-1].raw["baco"]["sources"] == ["aligned", "base", "base", "aligned"]

    chat_chunks = list(Baco().stream_chat([ChatMessage(role="user", content="hi")]))
    assert [c.message.content for c in chat_chunks] == ["Hel", "Hello", "Hello world"]


def test_async_forms_with_fake_engine(fake_engine) -> None:
    llm = Baco()
    messages = [ChatMessage(role="user", content="hi")]

    async def run() -> list[str]:
        out = [
            (await llm.acomplete("hi", gamma=0.1)).text,
            (await llm.achat(messages)).message.content,
        ]
        out.append("".join([c.delta async for c in await llm.astream_complete("hi")]))
        out.append("".join([c.delta async for c in await llm.astream_chat(messages)]))
        return out

    assert asyncio.run(run()) == ["Hello world"] * 4
    assert fake_engine.calls[0][2]["gamma"] == 0.1


def test_metadata_uses_the_loaded_pair_once_there(fake_engine, tmp_path: Path) -> None:
    missing = str(tmp_path / "nothing-here")
    llm = Baco(base_model=missing, aligned_model=missing)
    assert llm.metadata.context_window == DEFAULT_CONTEXT_WINDOW  # config unreadable
    llm.complete("hi")
    assert llm.metadata.context_window == fake_engine.pair.context_window
