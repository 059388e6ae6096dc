"""The lockstep decoding loop on the tiny pair (shared_core/engine.py)."""

from __future__ import annotations

import pytest
import torch

from shared_core import BacoEngine, ModelPair
from shared_core.prompts import base_prompt_ids, chat_template_ids, normalise_messages
from shared_core.testing import build_tiny_model, build_tiny_tokenizer

PROMPTS = ["Tell me a story about a girl and her dog.", "Name a color.", "Write a haiku."]


def hf_greedy(pair: ModelPair, model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """The model's own greedy ``generate`` with the engine's end tokens and banned tokens."""
    banned = pair.vocab.never_generate.nonzero().flatten().tolist()
    out = model.generate(
        torch.tensor([prompt_ids]),
        attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=list(pair.end_ids),
        pad_token_id=pair.end_ids[0],
        suppress_tokens=banned,
    )[0, len(prompt_ids) :].tolist()
    ends = [i for i, t in enumerate(out) if t in pair.end_ids]
    return out[: ends[0]] if ends else out


@pytest.mark.parametrize("prompt", PROMPTS)
def test_aligned_router_greedy_equals_aligned_generate(tiny_engine, prompt):
    pair = tiny_engine.pair
    ids = chat_template_ids(pair.tokenizer, normalise_messages(prompt))
    expected = hf_greedy(pair, pair.aligned, ids, 24)
    got = tiny_engine.generate(prompt, router="aligned", temperature=0, max_new_tokens=24)[0][0]
    assert got.token_ids == expected
    assert set(got.sources) <= {"aligned"}


@pytest.mark.parametrize("prompt", PROMPTS)
def test_base_router_greedy_equals_base_generate(tiny_engine, prompt):
    pair = tiny_engine.pair
    ids = base_prompt_ids(pair.base_tokenizer, normalise_messages(prompt), pair.base_template)
    expected = hf_greedy(pair, pair.base, ids, 24)
    got = tiny_engine.generate(prompt, router="base", temperature=0, max_new_tokens=24)[0][0]
    # The base router also stops at the plain template's turn markers; compare up to there,
    # and where it stopped early the text it went on to write begins the marker.
    assert got.token_ids == expected[: len(got.token_ids)]
    assert got.finish_reason in ("length", "stop")
    if got.finish_reason == "length":
        assert got.token_ids == expected
    else:
        rest = pair.tokenizer.decode(expected[len(got.token_ids) :])
        markers = pair.base_template.stop_strings
        assert any((got.text + rest).startswith(got.text + m.strip()) or m in rest for m in markers)
    assert set(got.sources) <= {"base"}


def test_first_token_frequencies_follow_the_aligned_softmax(tiny_engine):
    pair = tiny_engine.pair
    prompt = "Name a color."
    ids = chat_template_ids(pair.tokenizer, normalise_messages(prompt))
    with torch.no_grad():
        logits = pair.aligned(torch.tensor([ids])).logits[0, -1, : pair.vocab_size]
    expected = torch.softmax(logits.masked_fill(pair.vocab.never_generate, -torch.inf), -1)
    samples = 4000
    result = tiny_engine.generate(prompt, router="aligned", n=samples, max_new_tokens=1, seed=11)
    firsts = [g.token_ids[0] if g.token_ids else pair.end_ids[0] for g in result[0]]
    # End tokens are not kept in token_ids; count every end id as the first end id.
    merged = expected.clone()
    for end in pair.end_ids[1:]:
        merged[pair.end_ids[0]] += merged[end]
        merged[end] = 0
    empirical = torch.bincount(torch.tensor(firsts), minlength=pair.vocab_size).float() / samples
    tv = 0.5 * (empirical - merged).abs().sum().item()
    assert tv < 0.06
    # The test has power: the base model's distribution is far from the samples.
    with torch.no_grad():
        base_ids = base_prompt_ids(
            pair.base_tokenizer, normalise_messages(prompt), pair.base_template
        )
        base_logits = pair.base(torch.tensor([base_ids])).logits[0, -1, : pair.vocab_size]
    wrong = torch.softmax(base_logits.masked_fill(pair.vocab.never_generate, -torch.inf), -1)
    assert 0.5 * (empirical - wrong).abs().sum().item() > 0.3


def test_p_gamma_extremes(tiny_engine):
    zero = tiny_engine.generate(PROMPTS, router="p", gamma=0.0, n=4, max_new_tokens=16, seed=1)
    assert all(set(g.sources) <= {"aligned"} for row in zero for g in row)
    high = tiny_engine.generate(PROMPTS, router="p", gamma=1.01, n=4, max_new_tokens=16, seed=1)
    for row in high:
        for g in row:
            # Aligned owns the first word, then control passes to the base for good.
            first_base = g.sources.index("base") if "base" in g.sources else len(g.sources)
            assert all(s == "aligned" for s in g.sources[:first_base])
            assert all(s == "base" for s in g.sources[first_base:])
    assert sum(g.base_share for row in high for g in row) / 12 > 0.6


def test_h_gamma_extremes(tiny_engine):
    low = tiny_engine.generate(PROMPTS, router="h", gamma=0.0, n=4, max_new_tokens=16, seed=2)
    assert sum(g.base_share for row in low for g in row) / 12 > 0.6
    high = tiny_engine.generate(PROMPTS, router="h", gamma=1e6, n=4, max_new_tokens=16, seed=2)
    assert all(set(g.sources) <= {"aligned"} for row in high for g in row)


def test_switches_land_on_word_starts(tiny_engine):
    vocab = tiny_engine.pair.vocab
    switches = 0
    for router, gamma in (("rand", 0.5), ("p", 0.9), ("p-punc", 0.95), ("h-punc", 0.1)):
        for seed in range(6):
            result = tiny_engine.generate(
                PROMPTS, router=router, gamma=gamma, n=4, max_new_tokens=24, seed=seed
            )
            for g in (g for row in result for g in row):
                for i in range(1, len(g.sources)):
                    if g.sources[i] != g.sources[i - 1]:
                        switches += 1
                        token, previous = g.token_ids[i], g.token_ids[i - 1]
                        assert vocab.is_word_start[token] or vocab.ends_with_space[previous]
    assert switches > 50  # the routers did try to switch often


def test_batched_prompts_equal_one_by_one(tiny_engine):
    batched = tiny_engine.generate(PROMPTS, n=3, temperature=0, max_new_tokens=20, gamma=0.9)
    for prompt, row in zip(PROMPTS, batched, strict=True):
        alone = tiny_engine.generate(prompt, n=1, temperature=0, max_new_tokens=20, gamma=0.9)
        assert len(row) == 3
        for g in row:
            assert g.token_ids == alone[0][0].token_ids
            assert g.sources == alone[0][0].sources


def test_seeded_samples_do_not_depend_on_the_batch(tiny_engine):
    options = {"n": 4, "max_new_tokens": 16, "seed": 123, "gamma": 0.8}
    alone = tiny_engine.generate(PROMPTS[1], **options)[0]
    batched = tiny_engine.generate([PROMPTS[0], PROMPTS[1]], **options)[1]
    assert [g.token_ids for g in alone] == [g.token_ids for g in batched]
    assert len({tuple(g.token_ids) for g in alone}) > 1  # samples differ from each other
    fresh = tiny_engine.generate(PROMPTS[1], n=4, max_new_tokens=16, gamma=0.8)[0]
    assert [g.token_ids for g in fresh] != [g.token_ids for g in alone]


@pytest.mark.parametrize("seed", [None, 7])
def test_identical_prompts_in_one_call_give_different_samples(tiny_engine, seed):
    result = tiny_engine.generate(
        ["Name a color."] * 3, router="rand", gamma=0.5, max_new_tokens=12, seed=seed
    )
    samples = [tuple(row[0].token_ids) for row in result]
    assert len(set(samples)) == 3
    sources = [tuple(row[0].sources) for row in result]
    assert len(set(sources)) > 1  # the router's coin flips differ too


def test_a_prompts_samples_do_not_depend_on_the_other_prompts_of_its_call(tiny_engine):
    options = {"router": "rand", "gamma": 0.5, "n": 2, "max_new_tokens": 12, "seed": 31}
    alone = tiny_engine.generate(PROMPTS[2], **options)[0]
    first = tiny_engine.generate([PROMPTS[2], PROMPTS[0]], **options)[0]
    last = tiny_engine.generate([PROMPTS[1], PROMPTS[0], PROMPTS[2]], **options)[2]
    expected = [(g.token_ids, g.sources) for g in alone]
    assert [(g.token_ids, g.sources) for g in first] == expected
    assert [(g.token_ids, g.sources) for g in last] == expected
    # The second copy of a repeated prompt differs from the first, which equals the prompt alone.
    twice = tiny_engine.generate([PROMPTS[2], PROMPTS[2]], **options)
    assert [(g.token_ids, g.sources) for g in twice[0]] == expected
    assert [g.token_ids for g in twice[1]] != [g.token_ids for g in twice[0]]


def test_seeded_calls_are_reproducible_and_seeds_matter(tiny_engine):
    options = {"router": "p-punc", "gamma": 0.8, "n": 3, "max_new_tokens": 12}
    one = tiny_engine.generate(PROMPTS, seed=5, **options)
    again = tiny_engine.generate(PROMPTS, seed=5, **options)
    other = tiny_engine.generate(PROMPTS, seed=6, **options)

    def ids(result):
        return [[g.token_ids for g in row] for row in result]

    assert ids(one) == ids(again)
    assert ids(one) != ids(other)


def test_stop_string_spanning_tokens(tiny_engine):
    options = {"router": "aligned", "temperature": 0, "max_new_tokens": 30}
    full = tiny_engine.generate(PROMPTS[0], **options)[0][0]
    tokenizer = tiny_engine.tokenizer
    # Pick a stop string made of the text of tokens 3..5 (spans three tokens).
    start = len(tokenizer.decode(full.token_ids[:3]).lstrip())
    stop = full.text[start : start + 6]
    assert len(stop) >= 3
    stopped = tiny_engine.generate(PROMPTS[0], stop=[stop], **options)[0][0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[: full.text.find(stop)]
    assert stop not in stopped.text


def test_finish_reasons_and_usage(tiny_engine):
    result = tiny_engine.generate(PROMPTS, n=2, max_new_tokens=5, seed=3, min_new_tokens=5)
    for row in result:
        for g in row:
            assert g.finish_reason == "length"
            assert len(g.token_ids) == 5 == g.usage.completion_tokens
            assert g.usage.total_tokens == g.usage.prompt_tokens + 5
            assert len(g.sources) == len(g.token_ids)
    prompt_ids = chat_template_ids(tiny_engine.tokenizer, normalise_messages(PROMPTS[0]))
    assert result[0][0].usage.prompt_tokens == len(prompt_ids)


def test_end_token_finishes_with_stop(tiny_engine):
    pair = tiny_engine.pair
    end = pair.end_ids[0]
    # A custom aligned-only decode where the aligned model is forced to end: bias its lm_head.
    aligned = build_tiny_model(pair.vocab_size, seed=2)
    with torch.no_grad():
        aligned.lm_head.weight[end] = aligned.lm_head.weight.abs().max() * 50
    forced = BacoEngine(ModelPair(pair.base, aligned, pair.tokenizer))
    g = forced.generate("hi", router="p", gamma=1.01, max_new_tokens=8, seed=0)[0][0]
    assert g.finish_reason == "stop" and g.token_ids == [] and g.usage.completion_tokens == 1
    g = forced.generate("hi", router="p", gamma=1.01, max_new_tokens=8, seed=0, min_new_tokens=3)
    assert len(g[0][0].token_ids) >= 3


def test_stream_deltas_add_up_to_generated_text(tiny_engine):
    seen_length = 0
    for seed in range(5):
        options = {"n": 3, "max_new_tokens": 24, "seed": seed, "stop": ["e t"]}
        generated = tiny_engine.generate(PROMPTS[0], **options)[0]
        texts = [""] * 3
        finals = {}
        for event in tiny_engine.stream(PROMPTS[0], **options):
            texts[event.sample_index] += event.text_delta
            if event.generation is not None:
                finals[event.sample_index] = event.generation
        assert texts == [g.text for g in generated]
        assert [finals[i].token_ids for i in range(3)] == [g.token_ids for g in generated]
        lengths = [g for g in generated if g.finish_reason == "length"]
        for g in lengths:
            assert g.text == tiny_engine.tokenizer.decode(g.token_ids).lstrip()
        seen_length += len(lengths)
    assert seen_length > 0  # the check above ran


def test_custom_router_callable(tiny_engine):
    def always_base(signals):
        return torch.ones_like(signals.p_base, dtype=torch.bool)

    g = tiny_engine.generate(PROMPTS[0], router=always_base, max_new_tokens=12, seed=0)[0][0]
    assert g.router == "always_base"
    assert g.sources[0] == "aligned" and "base" in g.sources
    assert all(s == "base" for s in g.sources[g.sources.index("base") :])

    def broken(signals):
        return [True]

    with pytest.raises(TypeError, match="bool tensor"):
        tiny_engine.generate(PROMPTS[0], router=broken, max_new_tokens=4)


def test_message_list_and_many_prompts_shapes(tiny_engine):
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Name a color."},
    ]
    single = tiny_engine.generate(conversation, n=2, max_new_tokens=4, seed=0)
    assert len(single) == 1 and len(single[0]) == 2
    many = tiny_engine.generate([conversation, "Hi"], max_new_tokens=4, seed=0)
    assert [len(row) for row in many] == [1, 1]
    assert many[0][0].token_ids == single[0][0].token_ids


def test_padded_output_layer_never_emits_out_of_vocab_tokens():
    tokenizer = build_tiny_tokenizer()
    size = len(tokenizer)
    base, aligned = build_tiny_model(size + 64, 1), build_tiny_model(size + 64, 2)
    with torch.no_grad():
        for model in (base, aligned):
            model.lm_head.weight[size:] = model.lm_head.weight.abs().max() * 100
    engine = BacoEngine(ModelPair(base, aligned, tokenizer))
    result = engine.generate(PROMPTS, n=2, max_new_tokens=8, seed=0, router="rand")
    assert all(t < size for row in result for g in row for t in g.token_ids)
    assert any(g.token_ids for row in result for g in row)


def test_nan_logits_name_the_model():
    tokenizer = build_tiny_tokenizer()
    base, aligned = build_tiny_model(len(tokenizer), 1), build_tiny_model(len(tokenizer), 2)
    with torch.no_grad():
        base.lm_head.weight.fill_(float("nan"))
    engine = BacoEngine(ModelPair(base, aligned, tokenizer, base_name="broken-base"))
    with pytest.raises(FloatingPointError, match="broken-base"):
        engine.generate("hi", max_new_tokens=4)
    assert engine.generate("hi", router="aligned", max_new_tokens=2)[0][0].finish_reason


def test_speed_options_do_not_change_outputs(tiny_engine):
    from shared_core.engine import DecodeOptions

    pair = tiny_engine.pair
    aligned = build_tiny_model(pair.vocab_size, seed=2)
    with torch.no_grad():  # make the aligned model end now and then, so rows finish early
        aligned.lm_head.weight[pair.end_ids[0]] *= 6
    biased = ModelPair(pair.base, aligned, pair.tokenizer)
    options = {"n": 4, "max_new_tokens": 24, "seed": 9, "router": "p", "gamma": 0.9}
    results = []
    for share, compact in ((True, True), (False, False), (True, False), (False, True)):
        engine = BacoEngine(biased, options=DecodeOptions(share, compact))
        out = engine.generate(PROMPTS, **options)
        results.append(
            [[(g.token_ids, g.sources, g.text, g.finish_reason) for g in row] for row in out]
        )
    lengths = {len(t[0]) for row in results[0] for t in row}
    assert len(lengths) > 2  # rows finished at different steps: compaction was exercised
    assert all(r == results[0] for r in results[1:])


def _lazy_states(monkeypatch) -> list:
    from shared_core import model_state

    created = []
    original = model_state.LazyState.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        created.append(self)

    monkeypatch.setattr(model_state.LazyState, "__init__", spy)
    return created


@pytest.mark.parametrize(("router", "gamma"), [("p-punc", 0.9), ("p", 0.5), ("rand", 0.5)])
def test_lazy_aligned_matches_eager_without_the_stop_guard(tiny_pair, monkeypatch, router, gamma):
    from shared_core.engine import DecodeOptions

    created = _lazy_states(monkeypatch)
    lazy_engine = BacoEngine(tiny_pair, options=DecodeOptions(lazy_aligned=True))
    saved = steps = 0
    for seed in range(5):
        options = {"router": router, "gamma": gamma, "seed": seed, "max_new_tokens": 40}
        options["aligned_can_stop"] = False  # the one guard the lazy mode skips in base spans
        eager = BacoEngine(tiny_pair).generate(PROMPTS[0], **options)[0][0]
        created.clear()
        lazy = lazy_engine.generate(PROMPTS[0], **options)[0][0]
        assert (lazy.token_ids, lazy.sources) == (eager.token_ids, eager.sources)
        assert len(created) == 1
        saved += len(lazy.token_ids) - created[0].forwards
        steps += len(lazy.token_ids)
    assert saved > steps // 20  # base spans really skipped aligned forwards (seeded, fixed)


def test_lazy_aligned_applies_only_at_batch_one_with_base_signal_routers(tiny_pair, monkeypatch):
    from shared_core.engine import DecodeOptions

    created = _lazy_states(monkeypatch)
    engine = BacoEngine(tiny_pair, options=DecodeOptions(lazy_aligned=True))
    engine.generate(PROMPTS[0], n=2, max_new_tokens=4, seed=0)  # two rows
    engine.generate(PROMPTS[:2], max_new_tokens=4, seed=0)  # two prompts
    engine.generate(PROMPTS[0], content_source="aligned", max_new_tokens=4, seed=0)
    engine.generate(PROMPTS[0], router=lambda s: s.p_aligned < 0.5, max_new_tokens=4, seed=0)
    engine.generate(PROMPTS[0], router="aligned", max_new_tokens=4, seed=0)
    assert created == []
    out = engine.generate(PROMPTS[0], max_new_tokens=12, seed=0)[0][0]  # default stop guard on
    assert len(created) == 1 and 0 < len(out.token_ids) <= 12


def _forced_pair(pair: ModelPair, token_id: int) -> ModelPair:
    """The tiny pair with an aligned model that always prefers ``token_id``."""
    import copy

    aligned = copy.deepcopy(pair.aligned)
    head = aligned.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        biased.bias[token_id] = 1e4
    aligned.lm_head = biased
    return ModelPair(pair.base, aligned, pair.tokenizer)


def _base_contexts(monkeypatch, pair: ModelPair) -> list[list[int]]:
    """Record, per base-model row, every token the base model attends to (mask = 1)."""
    import shared_core.model_state as engine_module

    calls = []
    original = engine_module.forward_last_logits

    def spy(model, input_ids, attention_mask, position_ids, cache, **kwargs):
        if model is pair.base:
            calls.append((input_ids.clone(), attention_mask[:, -input_ids.shape[1] :].clone()))
        return original(model, input_ids, attention_mask, position_ids, cache, **kwargs)

    monkeypatch.setattr(engine_module, "forward_last_logits", spy)
    contexts: list[list[int]] = []

    def build() -> list[list[int]]:
        contexts.clear()
        rows = calls[0][0].shape[0]
        for row in range(rows):
            ids: list[int] = []
            for input_ids, mask in calls:
                if input_ids.shape[0] == rows:
                    ids += [int(t) for t, m in zip(input_ids[row], mask[row], strict=True) if m]
            contexts.append(ids)
        return contexts

    return build


@pytest.mark.parametrize("word", ["T", "1"])  # "ĠT" is one token; " 1" is "Ġ" + "1"
def test_base_model_reads_a_space_after_its_assistant_cue(tiny_pair, monkeypatch, word):
    tokenizer = tiny_pair.tokenizer
    token_id = tokenizer.convert_tokens_to_ids(word)
    pair = _forced_pair(tiny_pair, token_id)
    contexts = _base_contexts(monkeypatch, pair)
    out = BacoEngine(pair).generate(PROMPTS[1], router="p", gamma=1.01, max_new_tokens=3, seed=0)
    g = out[0][0]
    assert g.token_ids[0] == token_id and g.sources[0] == "aligned"
    assert g.text.startswith(word)  # the returned text is unchanged: no added space
    assert g.text == tokenizer.decode(g.token_ids)
    base_text = tokenizer.decode(contexts()[0])
    assert base_text.endswith(f"Assistant: {word}" + tokenizer.decode(g.token_ids[1:-1]))
    assert f"Assistant:{word}" not in base_text


def test_space_slot_rows_match_a_plain_forward_of_the_spaced_text(tiny_pair):
    """Rows with and without a space slot in one batch each equal an unbatched forward."""
    from shared_core.model_state import ModelRows

    tokenizer = tiny_pair.tokenizer
    space_id = tiny_pair.vocab.space_id
    prompts = [tokenizer("User: hi\nAssistant:")["input_ids"], tokenizer("Assistant:")["input_ids"]]
    first = torch.tensor(
        [tokenizer.convert_tokens_to_ids("1"), tokenizer.convert_tokens_to_ids("ĠT")]
    )
    with torch.inference_mode():
        state = ModelRows.prefill(tiny_pair.base, prompts, [1, 1], 0)
        state.feed(first, (space_id, torch.tensor([True, False])))
        state.feed(first)
        expected_rows = [
            prompts[0] + [space_id, int(first[0]), int(first[0])],
            prompts[1] + [int(first[1]), int(first[1])],
        ]
        for row, ids in enumerate(expected_rows):
            expected = tiny_pair.base(torch.tensor([ids])).logits[0, -1, : tiny_pair.vocab_size]
            torch.testing.assert_close(
                state.logits[row, : tiny_pair.vocab_size], expected, rtol=1e-4, atol=1e-4
            )


@pytest.mark.parametrize(
    ("router", "extra"),
    [("p-punc", {}), ("aligned", {"temperature": 0.7}), ("rand", {"stop": ["e"]})],
)
def test_logprobs_spell_the_text_and_name_their_model(tiny_pair, router, extra):
    engine = BacoEngine(tiny_pair)
    options = {"router": router, "n": 3, "max_new_tokens": 24, "seed": 4, "logprobs": 3, **extra}
    for generation in engine.generate(PROMPTS[0], **options)[0]:
        entries = generation.logprobs
        assert "".join(e.token for e in entries) == generation.text
        assert len(entries) <= len(generation.token_ids)
        assert [e.token_id for e in entries] == generation.token_ids[: len(entries)]
        assert [e.source for e in entries] == generation.sources[: len(entries)]
        for entry in entries:
            assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
            best = [t.logprob for t in entry.top_logprobs]
            assert best == sorted(best, reverse=True) and entry.logprob <= best[0] + 1e-6
    streamed: dict[int, list] = {}
    finals = 0
    for event in engine.stream(PROMPTS[0], **options):
        streamed.setdefault(event.row, []).extend(event.logprobs or [])
        if event.generation is not None:
            assert streamed[event.row] == event.generation.logprobs
            finals += 1
    assert finals == options["n"]  # every sample's entries were compared


def test_a_logprob_is_the_producing_models_tempered_log_softmax(tiny_pair):
    """Aligned-only sampling at temperature 0.8: each entry equals a plain forward of the
    aligned model over prompt + prefix, divided by the temperature (never-generated tokens
    masked out, as for the draw)."""
    from shared_core.prompts import aligned_prompt_ids

    engine = BacoEngine(tiny_pair)
    generation = engine.generate(
        PROMPTS[1], router="aligned", temperature=0.8, max_new_tokens=8, seed=1, logprobs=2
    )[0][0]
    prompt = aligned_prompt_ids(
        tiny_pair.tokenizer, PROMPTS[1], [{"role": "user", "content": PROMPTS[1]}]
    )
    ids = list(prompt)
    with torch.inference_mode():
        for entry in generation.logprobs:
            logits = tiny_pair.aligned(torch.tensor([ids])).logits[0, -1, : tiny_pair.vocab_size]
            logits = logits.float().masked_fill(tiny_pair.vocab.never_generate, float("-inf"))
            expected = torch.log_softmax(logits / 0.8, -1)[entry.token_id]
            assert entry.logprob == pytest.approx(float(expected), abs=1e-4)
            ids.append(entry.token_id)


def test_logprobs_are_checked(tiny_pair):
    engine = BacoEngine(tiny_pair)
    with pytest.raises(ValueError, match="logprobs"):
        engine.generate(PROMPTS[0], logprobs=21)
    assert engine.generate(PROMPTS[0], max_new_tokens=4, seed=0)[0][0].logprobs is None


@pytest.mark.parametrize("batch_requests", [True, False])
def test_a_cancelled_generate_stops_at_the_next_step(tiny_pair, batch_requests):
    import threading

    from shared_core.engine import DecodeOptions

    def cancel_at_step_3(signals):
        steps.append(1)
        if len(steps) == 3:
            cancel.set()
        return signals.uniform < 0.5

    steps: list[int] = []
    cancel = threading.Event()
    engine = BacoEngine(tiny_pair, options=DecodeOptions(batch_requests=batch_requests))
    out = engine.generate(
        PROMPTS[:2],
        router=cancel_at_step_3,
        n=2,
        max_new_tokens=50,
        min_new_tokens=50,
        cancel=cancel,
    )
    assert len(steps) == 3  # no step after the one that saw the cancellation
    assert out == [[], []]  # nobody waits for these rows: no samples are made up
