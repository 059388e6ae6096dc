"""ChatBaco and Baco over a RemotePair (fields base_url, aligned_url, tokenizer, ...)."""

from __future__ import annotations

import pytest

pytest.importorskip("httpx", reason="RemotePair needs httpx (the remote extra)")

from shared_core.remote import RemotePair


def fields(fake_servers, tiny_pair_paths, **extra):
    return {
        "base_url": fake_servers[0].url,
        "aligned_url": fake_servers[1].url,
        "tokenizer": str(tiny_pair_paths[1]),
        "max_tokens": 8,
        **extra,
    }


def test_chat_baco_over_two_servers(fake_servers, tiny_pair_paths):
    pytest.importorskip("langchain_core", reason="needs the langchain extra")
    from langchain_baco import ChatBaco

    llm = ChatBaco(
        **fields(fake_servers, tiny_pair_paths, remote_mode="token", remote_top_logprobs=8)
    )
    message = llm.invoke("Tell me a story.", seed=3)
    assert message.content and message.response_metadata["model_name"].startswith("baco:http")
    assert isinstance(llm._get_engine().pair, RemotePair)
    assert llm._get_engine().pair.mode == "token"
    streamed = "".join(c.content for c in llm.stream("Tell me a story.", seed=3))
    assert streamed == message.content


def test_llama_index_baco_over_two_servers(fake_servers, tiny_pair_paths):
    pytest.importorskip("llama_index.core", reason="needs the llamaindex extra")
    from llama_index_baco import Baco

    llm = Baco(
        **fields(
            fake_servers, tiny_pair_paths, base_model="tiny-base", aligned_model="tiny-aligned"
        )
    )
    response = llm.complete("Tell me a story.", seed=5)
    assert response.text and llm.metadata.model_name == "baco:tiny-base+tiny-aligned"
    assert llm.metadata.context_window == 512  # what the fake_servers report
    assert "base_share" in response.raw["baco"] and response.raw["usage"]["output_tokens"] > 0


def test_remote_fields_are_checked_at_construction(fake_servers, tiny_pair_paths):
    pytest.importorskip("langchain_core", reason="needs the langchain extra")
    from langchain_baco import ChatBaco

    with pytest.raises(ValueError, match="needs both base_url and aligned_url"):
        ChatBaco(base_url=fake_servers[0].url, tokenizer="x")
    with pytest.raises(ValueError, match="needs tokenizer="):
        ChatBaco(base_url=fake_servers[0].url, aligned_url=fake_servers[1].url)
    with pytest.raises(ValueError, match=r"remote_mode must be one of \('token', 'chunk'\)"):
        ChatBaco(**fields(fake_servers, tiny_pair_paths, remote_mode="fast"))
    with pytest.raises(ValueError, match="tokenizer is for remote pairs"):
        ChatBaco(tokenizer="x")


def test_baco_generate_takes_the_remote_flags(fake_servers, tiny_pair_paths, capsys):
    from shared_core.cli import main

    status = main(
        [
            "generate",
            "Tell me a story.",
            "--base-url",
            fake_servers[0].url,
            "--aligned-url",
            fake_servers[1].url,
            "--tokenizer",
            str(tiny_pair_paths[1]),
            "--max-new-tokens",
            "6",
            "-n",
            "2",
            "--seed",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0 and out.count("--- sample") == 2


def test_no_vocabulary_check_reaches_the_remote_pair(fake_servers, tiny_pair_paths):
    from shared_core.cli import build_parser
    from shared_core.cli_common import load_pair

    urls = ["--base-url", fake_servers[0].url, "--aligned-url", fake_servers[1].url]
    urls += ["--tokenizer", str(tiny_pair_paths[1])]
    for flags, checks in (([], True), (["--no-vocabulary-check"], False)):
        args = build_parser().parse_args(["generate", "Hi", *urls, *flags])
        pair = load_pair(args)
        try:
            assert pair._vocabulary_checked is not checks
        finally:
            pair.close()


def test_the_remote_flags_are_checked(fake_servers, capsys):
    from shared_core.cli import main

    assert main(["generate", "Hi", "--base-url", fake_servers[0].url]) == 2
    assert "missing: --aligned-url, --tokenizer" in capsys.readouterr().err


def test_baco_serve_fronts_two_servers(fake_servers, tiny_pair_paths):
    pytest.importorskip("fastapi", reason="needs the serve extra")
    from fastapi.testclient import TestClient

    from shared_core import BacoEngine
    from shared_core.serve.app import create_app

    pair = RemotePair(
        fake_servers[0].url, fake_servers[1].url, tokenizer=str(tiny_pair_paths[1]), top_logprobs=8
    )
    with TestClient(create_app(BacoEngine(pair))) as client:
        models = client.get("/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["baco:tiny-base+tiny-aligned"]
        body = {
            "messages": [{"role": "user", "content": "Tell me a story."}],
            "max_tokens": 6,
            "n": 2,
            "seed": 4,
            "logprobs": True,
        }
        answer = client.post("/v1/chat/completions", json=body).json()
    assert len(answer["choices"]) == 2
    assert answer["usage"]["completion_tokens"] > 0
    assert answer["choices"][0]["logprobs"]["content"]


def test_target_base_share_sets_gamma_on_a_remote_pair(fake_servers, tiny_pair_paths):
    pytest.importorskip("langchain_core", reason="needs the langchain extra")
    from langchain_baco import ChatBaco
    from shared_core.calibration import gamma_for_base_share

    calibration = {"p-punc": {0.1: 0.1, 0.3: 0.4, 0.6: 0.8}}
    llm = ChatBaco(**fields(fake_servers, tiny_pair_paths, target_base_share=0.3, calibration=None))
    options = llm._engine_options(None, {"calibration": calibration})
    assert options["gamma"] == pytest.approx(gamma_for_base_share("p-punc", 0.3, calibration))
    message = llm.invoke("Hi", seed=2, calibration=calibration)
    assert message.response_metadata["gamma"] == pytest.approx(options["gamma"])
