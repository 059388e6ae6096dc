"""Option merging, usage and statistics shared by both adapters (adapter_support.py)."""

from __future__ import annotations

import pytest

from shared_core.adapter_support import (
    DEMO_MODEL_NAME,
    combine_stop,
    field_options,
    merge_options,
    statistics_dict,
    tool_result_message,
    usage_dict,
)
from shared_core.types import Generation, Usage


def test_merge_options_maps_names_and_overrides():
    fields = {"router": "p", "gamma": 0.2, "max_tokens": 32, "temperature": None, "timeout": 5}
    assert merge_options(fields, {"temperature": 0.7}) == {
        "router": "p",
        "gamma": 0.2,
        "max_new_tokens": 32,
        "temperature": 0.7,
    }
    assert merge_options(fields, {"gamma": 0.5})["gamma"] == 0.5


def test_new_router_per_call_gets_its_own_default_gamma():
    options = merge_options({"router": "h", "gamma": 2.0}, {"router": "rand"})
    assert options == {"router": "rand"}
    assert merge_options({"router": "h", "gamma": 2.0}, {"router": "p", "gamma": 0.1}) == {
        "router": "p",
        "gamma": 0.1,
    }


def test_merge_options_validates():
    with pytest.raises(ValueError, match="valid routers"):
        merge_options({"router": "nope"})
    with pytest.raises(ValueError, match="gamma"):
        merge_options({"router": "p"}, {"gamma": -1})


def test_combine_stop():
    assert combine_stop(None, None) is None
    assert combine_stop("a", ["b", "a"]) == ["a", "b"]


def make(sources, completion):
    return Generation(
        text="x",
        token_ids=[1] * len(sources),
        sources=sources,
        finish_reason="length",
        usage=Usage(10, completion),
        router="p",
        gamma=0.3,
    )


def test_usage_counts_prompt_once_and_statistics():
    gens = [make(["aligned", "base", "base"], 3), make(["aligned"], 2)]
    assert usage_dict(gens) == {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
    stats = statistics_dict(gens[0], with_sources=True)
    assert stats["base_share"] == pytest.approx(2 / 3)
    assert stats["switches"] == 1 and stats["sources"] == ["aligned", "base", "base"]
    assert usage_dict([]) == {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}


def test_target_base_share_resolves_gamma_from_a_calibration(tmp_path):
    from shared_core.calibration import Calibration, save_calibration

    calibration = tmp_path / "calibration.json"
    save_calibration(Calibration({"p-punc": [(0.1, 0.1), (0.5, 0.5)]}, {}), calibration)
    options = merge_options(
        {"router": "p-punc", "target_base_share": 0.3, "calibration": str(calibration)}
    )
    assert options["gamma"] == pytest.approx(0.3)
    explicit = merge_options(
        {"router": "p-punc", "target_base_share": 0.3, "calibration": str(calibration)},
        {"gamma": 0.2},
    )
    assert explicit["gamma"] == 0.2
    with pytest.raises(ValueError, match="outside the calibrated range"):
        merge_options(
            {"router": "p-punc", "target_base_share": 0.9, "calibration": str(calibration)}
        )


# ---------------------------------------------------------------- both adapters, one field set


def _adapters() -> list[type]:
    langchain = pytest.importorskip("langchain_baco")
    llama_index = pytest.importorskip("llama_index_baco")
    return [langchain.ChatBaco, llama_index.Baco]


def test_both_adapters_expose_the_shared_fields_unchanged():
    from shared_core.adapter_support import ADAPTER_OPTION_FIELDS, BacoFields

    shared = BacoFields.model_fields
    assert set(ADAPTER_OPTION_FIELDS) <= set(shared)
    assert {"aligned_starts", "aligned_can_stop", "stop", "dtype"} <= set(shared)
    for adapter in _adapters():
        fields = adapter.model_fields
        for name, info in shared.items():
            assert fields[name].annotation == info.annotation, (adapter, name)
            assert fields[name].get_default(call_default_factory=True) == info.get_default(
                call_default_factory=True
            ), (adapter, name)
            assert fields[name].description == info.description, (adapter, name)


def test_both_adapters_have_the_same_defaults_and_validation():
    chat, llm = (adapter() for adapter in _adapters())
    assert field_options(chat) == field_options(llm)
    assert field_options(llm)["aligned_starts"] is True
    # The embedded pair samples with its measured filters; other pairs with top_p 0.95.
    assert (field_options(llm)["top_p"], field_options(llm)["min_p"]) == (1.0, 0.05)
    assert chat.model_name == llm.model_name == DEMO_MODEL_NAME
    pair = {"base_model": "org/b", "aligned_model": "org/a"}
    assert (
        _adapters()[0](**pair).model_name == _adapters()[1](**pair).model_name == "baco:org/b+org/a"
    )
    for adapter in _adapters():
        user = field_options(adapter(**pair))
        assert (user["top_p"], user["min_p"]) == (0.95, 0.0)
        mine = field_options(adapter(top_p=0.9, min_p=0.1, **pair))
        assert (mine["top_p"], mine["min_p"]) == (0.9, 0.1)
        assert field_options(adapter(top_p=0.8))["min_p"] == 0.05  # unset one keeps its default
    for adapter in _adapters():
        with pytest.raises(ValueError, match="top_p"):
            adapter(top_p=2.0)
        with pytest.raises(ValueError, match="base_model is required"):
            adapter(aligned_adapter="x")


def test_tool_results_map_the_same_in_both_adapters():
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from langchain_core.messages import ToolMessage
    from llama_index.core.base.llms.types import ChatMessage, MessageRole

    from langchain_baco import convert_messages
    from llama_index_baco.base import to_engine_messages

    expected = tool_result_message("42", name="multiply", call_id="call-1")
    assert expected == {
        "role": "user",
        "content": '<tool_response>\n{"name": "multiply", "id": "call-1"}\n42\n</tool_response>',
    }
    assert convert_messages([ToolMessage("42", name="multiply", tool_call_id="call-1")]) == [
        expected
    ]
    tool = ChatMessage(
        role=MessageRole.TOOL,
        content="42",
        additional_kwargs={"name": "multiply", "tool_call_id": "call-1"},
    )
    assert to_engine_messages([tool]) == [expected]
    assert tool_result_message("ok") == {
        "role": "user",
        "content": "<tool_response>\nok\n</tool_response>",
    }
