"""RemotePair: BACO over two completion servers (in-process fakes backed by the tiny pair)."""

from __future__ import annotations

import collections
import threading
import time

import pytest
import torch

pytest.importorskip("httpx", reason="RemotePair needs httpx (the remote extra)")

from shared_core import BacoEngine
from shared_core.remote import RemotePair, RemoteServerError, dense_logits
from shared_core.remote_client import TopLogprobs
from shared_core.testing import chi_square_p

PROMPTS = ["Tell me a story.", [{"role": "user", "content": "Name a colour."}]]


def remote(fake_servers, tiny_pair_paths, **options) -> RemotePair:
    base, aligned = fake_servers
    return RemotePair(base.url, aligned.url, tokenizer=str(tiny_pair_paths[1]), **options)


def test_dense_logits_keep_the_top1_and_its_probability_exact():
    tops = [TopLogprobs((5, 2, 9), (-0.5, -1.5, -3.0)), TopLogprobs((1,), (-2.0,))]
    dense, given = dense_logits(tops, 50)
    probs = torch.softmax(dense, -1)
    assert probs.argmax(-1).tolist() == [5, 1]
    assert probs[0, 5].item() == pytest.approx(torch.tensor(-0.5).exp().item(), rel=1e-5)
    assert probs[1, 1].item() == pytest.approx(torch.tensor(-2.0).exp().item(), rel=1e-5)
    assert sorted(given[0].nonzero().squeeze(-1).tolist()) == [2, 5, 9]
    assert given[1].sum() == 1
    assert bool((dense[0, ~given[0]] <= dense[0, given[0]].min()).all())  # tail never ranks above


def test_ids_beyond_the_tokenizer_are_dropped():
    dense, given = dense_logits([TopLogprobs((60, 3), (-0.1, -3.0))], 50)
    assert dense.shape == (1, 50) and dense[0].argmax().item() == 3 and given.sum() == 1


@pytest.mark.parametrize("router", ["p-punc", "p", "rand", "aligned", "base"])
def test_token_mode_equals_the_local_engine_with_top_k(
    fake_servers, tiny_pair, tiny_pair_paths, router
):
    pair = remote(fake_servers, tiny_pair_paths, mode="token", top_logprobs=12)
    options = {"n": 3, "seed": 5, "max_new_tokens": 10, "router": router, "temperature": 1.2}
    got = BacoEngine(pair).generate(PROMPTS, **options)
    want = BacoEngine(tiny_pair).generate(PROMPTS, top_k=12, **options)
    for mine, theirs in zip(got, want, strict=True):
        assert [g.token_ids for g in mine] == [g.token_ids for g in theirs]
        assert [g.sources for g in mine] == [g.sources for g in theirs]
        assert [g.text for g in mine] == [g.text for g in theirs]


def test_token_mode_sends_one_request_per_model_per_step(fake_servers, tiny_pair_paths):
    pair = remote(fake_servers, tiny_pair_paths, mode="token", top_logprobs=4)
    pair.connect()  # model names and context window: one GET /models each
    for server in fake_servers:
        server.requests.clear()
    out = BacoEngine(pair).generate(PROMPTS, n=2, seed=1, max_new_tokens=6, min_new_tokens=6)
    steps = max(len(g.token_ids) for row in out for g in row)
    assert steps == 6
    # the prompts once, then one request per token but the last; all rows in each
    assert [len(s.requests) for s in fake_servers] == [steps, steps]
    assert all(len(body["prompt"]) == 4 for s in fake_servers for body in s.requests[1:])


def test_chunk_mode_is_seeded_and_needs_fewer_requests_than_steps(fake_servers, tiny_pair_paths):
    pair = remote(fake_servers, tiny_pair_paths, mode="chunk", top_logprobs=8, chunk_tokens=8)
    engine = BacoEngine(pair)
    options = {"seed": 9, "max_new_tokens": 24, "min_new_tokens": 24, "router": "p-punc"}
    first = engine.generate("Tell me a story.", **options)[0][0]
    for server in fake_servers:
        server.requests.clear()
    again = engine.generate("Tell me a story.", **options)[0][0]
    assert again.token_ids == first.token_ids and again.sources == first.sources
    assert len(first.token_ids) == 24
    assert sum(len(s.requests) for s in fake_servers) < 24  # per-token BACO would need 48


def test_chunk_mode_matches_token_mode_in_distribution(fake_servers, tiny_pair_paths):
    """Pearson's chi-square test of homogeneity on each position's token and on the
    sequence of sources, 500 samples per mode: every p-value above 0.001 (a false alarm
    rate of about 0.5% over the six tests when the modes agree)."""
    options = {"n": 500, "max_new_tokens": 4, "router": "rand", "gamma": 0.5, "temperature": 1.3}
    samples = {}
    for mode, seed in (("token", 101), ("chunk", 202)):
        pair = remote(fake_servers, tiny_pair_paths, mode=mode, top_logprobs=8, chunk_tokens=4)
        samples[mode] = BacoEngine(pair).generate("Tell me a story.", seed=seed, **options)[0]
    token, chunk = samples["token"], samples["chunk"]
    for position in range(4):

        def at(rows, position=position):
            return collections.Counter(
                g.token_ids[position] if len(g.token_ids) > position else -1 for g in rows
            )

        assert chi_square_p(at(token), at(chunk)) > 0.001, f"position {position}"
    sources = [collections.Counter(tuple(g.sources) for g in rows) for rows in (token, chunk)]
    assert chi_square_p(*sources) > 0.001
    shares = [sum(s == "base" for g in rows for s in g.sources) for rows in (token, chunk)]
    assert min(shares) > 100  # both models wrote a real part of the text


def test_stream_equals_generate_and_reports_statistics(fake_servers, tiny_pair_paths):
    pair = remote(fake_servers, tiny_pair_paths, mode="chunk", top_logprobs=6, chunk_tokens=3)
    engine = BacoEngine(pair)
    options = {"seed": 4, "max_new_tokens": 12, "router": "rand", "gamma": 0.5, "n": 2}
    generated = engine.generate("Hello there", **options)[0]
    final = [e.generation for e in engine.stream("Hello there", **options) if e.generation]
    final.sort(key=lambda g: g.sample_index)
    assert [g.token_ids for g in final] == [g.token_ids for g in generated]
    for g in generated:
        assert len(g.sources) == len(g.token_ids)
        assert g.base_share == pytest.approx(g.sources.count("base") / max(1, len(g.sources)))
        assert g.usage.completion_tokens >= len(g.token_ids)


@pytest.mark.parametrize("mode", ["token", "chunk"])
def test_stop_strings_and_min_new_tokens(fake_servers, tiny_pair_paths, mode):
    pair = remote(fake_servers, tiny_pair_paths, mode=mode, top_logprobs=6)
    engine = BacoEngine(pair)
    free = engine.generate("Hello", seed=2, max_new_tokens=16, min_new_tokens=16)[0][0]
    assert len(free.token_ids) == 16
    stop = free.text[len(free.text) // 2 :][:2]
    cut = engine.generate("Hello", seed=2, max_new_tokens=16, min_new_tokens=16, stop=[stop])
    assert stop not in cut[0][0].text and free.text.startswith(cut[0][0].text)


def test_a_bad_prompt_is_reported_in_its_place(fake_servers, tiny_pair_paths):
    pair = remote(fake_servers, tiny_pair_paths, mode="chunk")
    out = BacoEngine(pair).generate(
        ["Hi", [{"role": "wizard", "content": "x"}]], return_exceptions=True, max_new_tokens=4
    )
    assert len(out[0]) == 1 and isinstance(out[1], ValueError)


def test_structured_output_needs_token_mode(fake_servers, tiny_pair_paths):
    pytest.importorskip("llguidance", reason="structured output needs the structured extra")
    pair = remote(fake_servers, tiny_pair_paths, mode="chunk")
    with pytest.raises(ValueError, match="need mode='token'"):
        BacoEngine(pair).generate("Hi", json_schema={"type": "object"}, max_new_tokens=4)


def test_a_server_that_fails_is_named(fake_servers, tiny_pair_paths):
    base, _ = fake_servers
    pair = remote(fake_servers, tiny_pair_paths, mode="token", retries=0)
    pair.connect()
    base.fail_status = 500
    try:
        with pytest.raises(RemoteServerError, match=r"base server http://127.0.0.1:\d+/v1: .*500"):
            BacoEngine(pair).generate("Hi", max_new_tokens=4)
    finally:
        base.fail_status = None


@pytest.mark.parametrize("mode", ["token", "chunk"])
def test_cancelling_stops_the_requests(fake_servers, tiny_pair_paths, mode):
    pair = remote(fake_servers, tiny_pair_paths, mode=mode, chunk_tokens=2)
    pair.connect()
    engine = BacoEngine(pair)
    cancel = threading.Event()
    cancel.set()
    for server in fake_servers:
        server.requests.clear()
    out = engine.generate("Hi", max_new_tokens=50, min_new_tokens=50, cancel=cancel)
    assert out == [[]]  # cancelled before any sample finished: no samples (engine docstring)
    assert sum(len(s.requests) for s in fake_servers) <= 2  # at most the first step's


@pytest.mark.parametrize("mode", ["token", "chunk"])
def test_closing_a_stream_stops_the_requests(fake_servers, tiny_pair_paths, mode):
    pair = remote(fake_servers, tiny_pair_paths, mode=mode, chunk_tokens=2)
    pair.connect()
    for server in fake_servers:
        server.requests.clear()
    events = BacoEngine(pair).stream("Hi", max_new_tokens=50, min_new_tokens=50)
    next(events)
    events.close()
    # the scheduler runs ahead of the stream's reader: the step in flight when the stream
    # closed may still send its requests (one per model), then the rows leave the batch
    time.sleep(0.2)
    sent = sum(len(s.requests) for s in fake_servers)
    assert sent < 10  # a 50-token decode sends 50 (chunk: 50) or 100 (token) requests
    time.sleep(0.3)
    assert sum(len(s.requests) for s in fake_servers) == sent


def test_bad_settings_are_refused(fake_servers, tiny_pair_paths):
    with pytest.raises(ValueError, match=r"mode must be one of \('token', 'chunk'\)"):
        remote(fake_servers, tiny_pair_paths, mode="tokens")
    with pytest.raises(ValueError, match="top_logprobs must be in"):
        remote(fake_servers, tiny_pair_paths, top_logprobs=0)
    with pytest.raises(ValueError, match="chunk_tokens must be"):
        remote(fake_servers, tiny_pair_paths, chunk_tokens=0)
    with pytest.raises(TypeError, match="tokenizer must be"):
        RemotePair(fake_servers[0].url, fake_servers[1].url, tokenizer=3)


def test_names_and_context_window_come_from_the_servers(fake_servers, tiny_pair_paths):
    pair = remote(fake_servers, tiny_pair_paths)
    assert pair.short_name == "baco:tiny-base+tiny-aligned"
    assert pair.context_window == 512


def test_a_prompt_a_server_refuses_does_not_lose_the_others(fake_servers, tiny_pair_paths):
    """The fake server answers 400 for prompts longer than its window; with
    ``return_exceptions`` the batch is retried prompt by prompt and only that prompt fails,
    the other gets the samples it would have drawn in the batch."""
    pair = remote(fake_servers, tiny_pair_paths, mode="token", context_window=4096)
    engine = BacoEngine(pair)
    long_prompt = "word " * 600
    options = {"seed": 3, "max_new_tokens": 4, "n": 2}
    out = engine.generate(["Hi", long_prompt], return_exceptions=True, **options)
    assert isinstance(out[1], RemoteServerError) and "400" in str(out[1])
    assert [g.token_ids for g in out[0]] == [
        g.token_ids for g in engine.generate("Hi", **options)[0]
    ]
    with pytest.raises(RemoteServerError, match="400"):
        engine.generate(["Hi", long_prompt], **options)


def test_logprobs_beyond_the_servers_top_k_are_refused(fake_servers, tiny_pair_paths):
    pair = remote(fake_servers, tiny_pair_paths, mode="token", top_logprobs=4)
    with pytest.raises(ValueError, match="logprobs=5 exceeds the remote pair's top_logprobs=4"):
        BacoEngine(pair).generate("Hi", logprobs=5, max_new_tokens=2)
    out = BacoEngine(pair).generate("Hi", logprobs=4, max_new_tokens=3)[0][0]
    assert out.logprobs and all(len(entry.top_logprobs) == 4 for entry in out.logprobs)


def test_a_pair_closes_its_connections(fake_servers, tiny_pair_paths):
    with remote(fake_servers, tiny_pair_paths, mode="token") as pair:
        BacoEngine(pair).generate("Hi", max_new_tokens=2)
    assert not pair._loop.loop.is_running()
    assert all(s._client.is_closed for s in pair.servers.values())


# ---------------------------------------------------------------- the servers' vocabulary


class _Swapped:
    """A tokenizer that gives ids ``a`` and ``b`` each other's strings (a server that serves
    another vocabulary); ``shout`` also upper-cases what it decodes."""

    def __init__(self, tokenizer, a: int, b: int, *, shout: bool = False) -> None:
        self.tokenizer, self.swap, self.shout = tokenizer, {a: b, b: a}, shout

    def encode(self, text, add_special_tokens=True):
        ids = self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        return [self.swap.get(i, i) for i in ids]

    def decode(self, ids):
        text = self.tokenizer.decode([self.swap.get(i, i) for i in ids])
        return text.upper() if self.shout else text


def _servers(tiny_pair, base_tokenizer, aligned_tokenizer):
    from contextlib import ExitStack

    from shared_core.testing_server import FakeCompletionServer

    stack = ExitStack()
    servers = [
        stack.enter_context(
            FakeCompletionServer(model, name=name, end_ids=tiny_pair.end_ids, tokenizer=tok)
        )
        for model, name, tok in (
            (tiny_pair.base, "tiny-base", base_tokenizer),
            (tiny_pair.aligned, "tiny-aligned", aligned_tokenizer),
        )
    ]
    return stack, servers


def _probe_ids(tokenizer) -> list[int]:
    from shared_core.remote import VOCABULARY_PROBE

    return tokenizer.encode(VOCABULARY_PROBE, add_special_tokens=False)


def test_first_use_checks_both_servers_vocabulary_once(fake_servers, tiny_pair_paths):
    from shared_core.remote import VOCABULARY_PROBE

    for server in fake_servers:
        server.tokenize_requests.clear()
    pair = remote(fake_servers, tiny_pair_paths, mode="token")
    engine = BacoEngine(pair)
    engine.generate("Hi", max_new_tokens=2, seed=0)
    engine.generate("Hi", max_new_tokens=2, seed=1)
    for server in fake_servers:
        tokenize, detokenize = server.tokenize_requests  # once per server, not per decode
        assert tokenize["prompt"] == VOCABULARY_PROBE and not tokenize["add_special_tokens"]
        assert detokenize["tokens"] == _probe_ids(pair.tokenizer)
        assert tokenize["model"] == detokenize["model"] == server.name


def test_a_server_with_another_vocabulary_is_named_with_the_first_differing_token(
    tiny_pair, tiny_pair_paths
):
    tok = tiny_pair.tokenizer
    ids = _probe_ids(tok)
    other = next(i for i in range(len(tok)) if i not in ids)
    stack, servers = _servers(tiny_pair, tok, _Swapped(tok, ids[3], other))
    with stack:
        pair = remote(servers, tiny_pair_paths, mode="token")
        with pytest.raises(ValueError) as info:
            BacoEngine(pair).generate("Hi", max_new_tokens=2)
        message = str(info.value)
        assert message.startswith(f"aligned server {servers[1].url} (tiny-aligned)")
        shown = f"token 3 is id {other} ({tok.decode([other])!r}) on the server and id {ids[3]}"
        assert shown in message and "Both servers" not in message
        assert servers[0].requests == servers[1].requests == []  # nothing decoded


def test_servers_that_agree_with_each_other_but_not_locally(tiny_pair, tiny_pair_paths):
    tok = tiny_pair.tokenizer
    ids = _probe_ids(tok)
    swapped = _Swapped(tok, ids[0], ids[1]) if ids[0] != ids[1] else _Swapped(tok, ids[0], 5)
    stack, servers = _servers(tiny_pair, swapped, swapped)
    with stack, pytest.raises(ValueError, match=r"^base server .* token 0 is .*Both servers"):
        remote(servers, tiny_pair_paths, mode="chunk").connect()


def test_a_server_that_decodes_differently_is_named(tiny_pair, tiny_pair_paths):
    tok = tiny_pair.tokenizer
    stack, servers = _servers(tiny_pair, _Swapped(tok, 0, 0, shout=True), tok)
    with stack, pytest.raises(ValueError, match=r"^base server .* turns the probe's token ids"):
        remote(servers, tiny_pair_paths).connect()


def test_a_server_without_tokenize_fails_unless_the_check_is_off(tiny_pair, tiny_pair_paths):
    stack, servers = _servers(tiny_pair, None, tiny_pair.tokenizer)
    with stack:
        with pytest.raises(RemoteServerError, match=r"base server .*/tokenize answered 404"):
            remote(servers, tiny_pair_paths).connect()
        pair = remote(servers, tiny_pair_paths, mode="token", check_vocabulary=False)
        assert len(BacoEngine(pair).generate("Hi", max_new_tokens=3, seed=0)[0]) == 1


@pytest.mark.parametrize("router", ["p-punc", "rand", "nudging", "aligned"])
def test_chunk_mode_gives_token_mode_s_tokens_exactly_when_greedy(
    fake_servers, tiny_pair_paths, router
):
    """Both modes choose with the same step function (``decode_step``; chunk mode gives it
    the server's proposal as the owner's candidate): with greedy draws the proposal is the
    draw token mode makes, so the tokens, owners and texts are equal, for every router
    (``rand`` routes by the rows' seeded streams in both)."""
    options = {
        "n": 2,
        "seed": 11,
        "max_new_tokens": 16,
        "router": router,
        "gamma": 0.5,
        "temperature": 0,
    }
    results = {}
    for mode in ("token", "chunk"):
        pair = remote(fake_servers, tiny_pair_paths, mode=mode, top_logprobs=8, chunk_tokens=4)
        results[mode] = BacoEngine(pair).generate(PROMPTS, **options)
    for token_row, chunk_row in zip(results["token"], results["chunk"], strict=True):
        assert [g.token_ids for g in chunk_row] == [g.token_ids for g in token_row]
        assert [g.sources for g in chunk_row] == [g.sources for g in token_row]
    if router != "aligned":
        sources = {s for row in results["chunk"] for g in row for s in g.sources}
        assert sources == {"base", "aligned"}  # both models wrote: the handover was exercised


def test_concurrent_chunk_mode_requests_share_their_scoring_requests(fake_servers, tiny_pair_paths):
    """Rows of concurrent calls are one batch: each round scores all their proposals in one
    request per server, so four concurrent calls send fewer requests than four alone."""
    pair = remote(fake_servers, tiny_pair_paths, mode="chunk", top_logprobs=8, chunk_tokens=3)
    engine = BacoEngine(pair)
    pair.connect()
    options = {"max_new_tokens": 12, "min_new_tokens": 12, "router": "rand", "gamma": 0.5}
    for server in fake_servers:
        server.requests.clear()
    for seed in range(4):
        engine.generate("Tell me a story.", seed=seed, **options)
    alone = sum(len(s.requests) for s in fake_servers)
    for server in fake_servers:
        server.requests.clear()
    threads = [
        threading.Thread(
            target=engine.generate, args=("Tell me a story.",), kwargs={"seed": s, **options}
        )
        for s in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(len(s.requests) for s in fake_servers) < alone
