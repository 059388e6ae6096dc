"""Router names, gamma validation, signals and guards (shared_core/routers.py)."""

from __future__ import annotations

import math

import pytest
import torch

from shared_core.routers import (
    ROUTER_NAMES,
    apply_guards,
    canonical_router_name,
    compute_signals,
    resolve_router,
)
from shared_core.vocab import VocabTables

# A 6-token toy vocabulary: 0 "Ġcat" (word start), 1 "s" (continuation), 2 "," (punct),
# 3 "Ġthe" (function word), 4 "<eos>" (end), 5 "\n" (newline, ends with space).
VOCAB = VocabTables(
    size=6,
    is_word_start=torch.tensor([True, False, True, True, True, True]),
    ends_with_space=torch.tensor([False, False, False, False, False, True]),
    is_punct=torch.tensor([False, False, True, False, False, True]),
    is_function_word=torch.tensor([False, False, False, True, False, False]),
    is_special=torch.tensor([False, False, False, False, True, False]),
    is_end=torch.tensor([False, False, False, False, True, False]),
    never_generate=torch.zeros(6, dtype=torch.bool),
    spaced=torch.arange(6),
    needs_space=torch.zeros(6, dtype=torch.bool),
    end_ids=(4,),
)


def signals_for(base_probs, aligned_probs=None, *, content_source="base", uniform=None):
    base = torch.tensor(base_probs, dtype=torch.float32)
    aligned = torch.tensor(aligned_probs, dtype=torch.float32) if aligned_probs else base
    if uniform is None:
        uniform = torch.full((base.shape[0],), 0.5)
    return compute_signals(
        base,
        aligned,
        base.log(),
        aligned.log(),
        VOCAB,
        content_source=content_source,
        uniform=uniform,
        step=1,
    )


@pytest.mark.parametrize(
    ("given", "expected"),
    [("P-PUNC", "p-punc"), ("p_punc", "p-punc"), (" H_Punc ", "h-punc"), ("RAND", "rand")],
)
def test_router_names_are_case_and_separator_insensitive(given, expected):
    assert canonical_router_name(given) == expected


def test_unknown_router_lists_valid_names():
    with pytest.raises(ValueError) as info:
        resolve_router("judge")
    for name in ROUTER_NAMES:
        assert name in str(info.value)


# The registry against the names docs/design.md documents: test_properties.py.


@pytest.mark.parametrize(
    ("router", "gamma"),
    [
        ("p", -0.1),
        ("rand", 1.5),
        ("nudging", 2.0),
        ("h", -1.0),
        ("p", math.nan),
        ("h", math.inf),
        ("p-punc", -0.01),
    ],
)
def test_gamma_out_of_range(router, gamma):
    with pytest.raises(ValueError, match="gamma"):
        resolve_router(router, gamma)


def test_gamma_type_and_knobless_routers():
    with pytest.raises(TypeError):
        resolve_router("p", "0.3")
    assert resolve_router("punc", 0.5).gamma is None  # no knob: gamma is ignored
    assert resolve_router("punc").gamma is None
    assert resolve_router("p").gamma == pytest.approx(0.3)
    assert resolve_router("p", 1.5).gamma == 1.5  # above 1 is allowed: always base


def test_content_source_validated():
    with pytest.raises(ValueError, match="content_source"):
        resolve_router("punc", content_source="judge")


def test_signals_match_hand_computation():
    probs = [[0.5, 0.25, 0.25, 0.0, 0.0, 0.0], [0.1, 0.1, 0.7, 0.1, 0.0, 0.0]]
    s = signals_for(probs)
    assert s.p_base.tolist() == pytest.approx([0.5, 0.7])
    h0 = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    h1 = -(3 * 0.1 * math.log(0.1) + 0.7 * math.log(0.7))
    assert s.h_base.tolist() == pytest.approx([h0, h1], rel=1e-5)
    assert s.top1.tolist() == [0, 2]
    assert s.top1_is_punct.tolist() == [False, True]


def test_content_source_aligned_uses_aligned_top1():
    base = [[0.9, 0.1, 0, 0, 0, 0]]
    aligned = [[0.1, 0.0, 0.0, 0.9, 0, 0]]
    s = signals_for(base, aligned, content_source="aligned")
    assert s.top1.tolist() == [3]
    assert s.top1_is_function_word.tolist() == [True]
    assert s.p_aligned.tolist() == pytest.approx([0.9])


def test_builtin_decisions():
    # row 0: confident content word; row 1: uncertain content word;
    # row 2: uncertain, top-1 punctuation; row 3: uncertain, top-1 function word.
    probs = [
        [0.9, 0.1, 0, 0, 0, 0],
        [0.4, 0.3, 0.1, 0.2, 0, 0],
        [0.2, 0.2, 0.4, 0.2, 0, 0],
        [0.2, 0.2, 0.2, 0.4, 0, 0],
    ]
    s = signals_for(probs, uniform=torch.tensor([0.1, 0.9, 0.1, 0.9]))
    decide = {
        name: resolve_router(name, g)(s).tolist()
        for name, g in [
            ("aligned", None),
            ("base", None),
            ("p", 0.5),
            ("punc", None),
            ("fc", None),
            ("p-punc", 0.5),
            ("p-fc", 0.5),
            ("rand", 0.5),
            ("nudging", 0.5),
            ("h", 1.0),
            ("h-punc", 1.0),
        ]
    }
    assert decide["aligned"] == [False] * 4
    assert decide["base"] == [True] * 4
    assert decide["p"] == [False, True, True, True]
    assert decide["punc"] == [True, True, False, True]
    assert decide["fc"] == [True, True, True, False]
    assert decide["p-punc"] == [False, True, False, True]
    assert decide["p-fc"] == [False, True, True, False]
    assert decide["rand"] == [True, False, True, False]
    assert decide["nudging"] == [True, False, False, False]
    # Entropies worked out by hand (nats), e.g. row 0: -(0.9 ln 0.9 + 0.1 ln 0.1) = 0.3251;
    # row 1: 1.2799; rows 2 and 3: -(3 x 0.2 ln 0.2 + 0.4 ln 0.4) = 1.3322.
    assert s.h_base.tolist() == pytest.approx([0.3251, 1.2799, 1.3322, 1.3322], abs=1e-4)
    assert decide["h"] == [False, True, True, True]
    assert decide["h-punc"] == [False, True, False, True]  # row 2's top-1 is punctuation
    assert resolve_router("h", 1.3)(s).tolist() == [False, False, True, True]
    assert resolve_router("h-punc", 1.3)(s).tolist() == [False, False, False, True]


def test_custom_callable_router():
    def first_half(signals):
        return torch.arange(signals.p_base.shape[0]) < 2

    spec = resolve_router(first_half)
    assert spec.name == "first_half"
    assert spec(signals_for([[1, 0, 0, 0, 0, 0]] * 4)).tolist() == [True, True, False, False]


def guards(route, prev_owner, base_tok, aligned_tok, prev_tok, **kw):
    as_bool = lambda v: torch.tensor(v, dtype=torch.bool)  # noqa: E731
    as_long = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    options = {"first_step": False, "aligned_starts": True, "aligned_can_stop": True} | kw
    owner, token = apply_guards(
        as_bool(route),
        as_bool(prev_owner),
        as_long(base_tok),
        as_long(aligned_tok),
        as_long(prev_tok),
        VOCAB,
        **options,
    )
    return owner.tolist(), token.tolist()


def test_switch_only_at_word_boundaries():
    # Both candidates word starts -> switch happens; a continuation -> owner keeps the turn.
    owner, token = guards(
        route=[True, True, False, False],
        prev_owner=[False, False, True, True],
        base_tok=[0, 1, 3, 0],
        aligned_tok=[3, 0, 2, 1],
        prev_tok=[0, 0, 0, 0],
    )
    assert owner == [True, False, False, True]
    assert token == [0, 0, 2, 0]


def test_position_after_newline_is_a_boundary():
    owner, token = guards(
        route=[True], prev_owner=[False], base_tok=[1], aligned_tok=[1], prev_tok=[5]
    )
    assert owner == [True] and token == [1]


def test_aligned_starts_and_ablation():
    owner, _ = guards(
        route=[True],
        prev_owner=[False],
        base_tok=[0],
        aligned_tok=[3],
        prev_tok=[0],
        first_step=True,
    )
    assert owner == [False]
    owner, token = guards(
        route=[True],
        prev_owner=[False],
        base_tok=[0],
        aligned_tok=[3],
        prev_tok=[0],
        first_step=True,
        aligned_starts=False,
    )
    assert owner == [True] and token == [0]


def test_aligned_can_stop():
    owner, token = guards(
        route=[True], prev_owner=[True], base_tok=[0], aligned_tok=[4], prev_tok=[0]
    )
    assert owner == [False] and token == [4]
    owner, token = guards(
        route=[True],
        prev_owner=[True],
        base_tok=[0],
        aligned_tok=[4],
        prev_tok=[0],
        aligned_can_stop=False,
    )
    assert owner == [True] and token == [0]


@pytest.mark.parametrize("router", ["p", "p-punc", "p-fc"])
def test_p_family_at_gamma_one_routes_even_a_certain_base_to_the_base(router):
    certain = signals_for([[1.0, 0, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0, 0]])
    assert certain.p_base.tolist() == [1.0, 0.5]
    assert resolve_router(router, 1.0)(certain).tolist() == [True, True]
    assert resolve_router(router, 0.999)(certain).tolist() == [False, True]


# ------------------------------------------- which distribution the engine's routers read
# docs/design.md §2: the signals come from the constrained distribution, the one the token is
# drawn from (never-generated tokens, end tokens before min_new_tokens and a grammar's mask
# removed), before temperature and truncation. Checked through the public engine with a
# callable router that records what it is shown.


def _recording_router(decide):
    seen: list[dict] = []

    def recording(signals):
        decision = decide(signals)
        seen.append(
            {
                "p": signals.p_base.clone(),
                "h": signals.h_base.clone(),
                "logits": signals.base_logits.clone(),
                "decision": decision.clone(),
            }
        )
        return decision

    return recording, seen


def _engine(pair):
    from shared_core import BacoEngine
    from shared_core.engine import DecodeOptions

    return BacoEngine(pair, options=DecodeOptions(batch_requests=False, graph=False))


@pytest.fixture(scope="module")
def keen_to_end_pair(tiny_pair_paths):
    """The tiny pair with its end tokens' logits raised 10 above the best other token's: its
    raw distributions put nearly all their mass on ending, so raw and constrained signals
    differ by a lot."""
    from shared_core import ModelPair

    pair = ModelPair.from_pretrained(*(str(p) for p in tiny_pair_paths))
    ends = list(pair.end_ids)

    def boost(module, inputs, output):
        output = output.clone()
        output[..., ends] = output.max(-1, keepdim=True).values + 10.0
        return output

    for model in (pair.base, pair.aligned):
        model.get_output_embeddings().register_forward_hook(boost)
    return pair


def test_p_and_h_read_the_distribution_without_end_tokens_during_min_new_tokens(
    keen_to_end_pair,
):
    pair = keen_to_end_pair
    options = {"max_new_tokens": 4, "seed": 3, "temperature": 1.0}
    free, free_seen = _recording_router(resolve_router("p", 0.5))
    held, held_seen = _recording_router(resolve_router("p", 0.5))
    _engine(pair).generate("Name a color.", router=free, **options)
    _engine(pair).generate("Name a color.", router=held, min_new_tokens=4, **options)
    ends = list(pair.end_ids)
    # The first step sees the same prompt in both decodes: the same model distribution.
    raw, shown = free_seen[0]["logits"][0], held_seen[0]["logits"][0]
    assert torch.isfinite(raw[ends]).all() and torch.isinf(shown[ends]).all()
    assert torch.equal(torch.isinf(raw), torch.isinf(shown) & ~_ends_mask(raw, ends))
    raw_p = torch.softmax(raw, -1)
    assert raw_p[ends].sum() > 0.9  # raw, the model all but ends here
    assert free_seen[0]["p"].item() == pytest.approx(raw_p.max().item(), rel=1e-5)
    # During min_new_tokens, P and H are those of the distribution without the end tokens
    # (renormalised), far from the raw one's.
    constrained = torch.softmax(raw.masked_fill(_ends_mask(raw, ends), float("-inf")), -1)
    kept = constrained[constrained > 0]
    assert held_seen[0]["p"].item() == pytest.approx(constrained.max().item(), rel=1e-5)
    assert held_seen[0]["h"].item() == pytest.approx(-(kept * kept.log()).sum().item(), rel=1e-4)
    assert abs(held_seen[0]["p"].item() - raw_p.max().item()) > 0.05
    assert held_seen[0]["decision"].item() == (constrained.max().item() < 0.5)
    # Every step before min_new_tokens hides the end tokens from the router.
    assert len(held_seen) == 4
    for record in held_seen:
        assert torch.isinf(record["logits"][:, ends]).all()


def _ends_mask(logits: torch.Tensor, ends: list[int]) -> torch.Tensor:
    mask = torch.zeros_like(logits, dtype=torch.bool)
    mask[ends] = True
    return mask


def test_p_and_h_decisions_under_a_grammar_follow_the_constrained_distribution(tiny_pair):
    pytest.importorskip("llguidance", reason="grammars need the structured extra")
    # A schema that leaves no choice at most steps: where one token is allowed, the
    # constrained distribution is certain (p = 1, h = 0), so P (γ 0.5) and H (γ 0.1) keep the
    # aligned model, whatever the random model's raw distribution (spread thin) would say.
    schema = {"type": "string", "enum": ["alphabet soup"]}
    for name, gamma in (("p", 0.5), ("h", 0.1)):
        router, seen = _recording_router(resolve_router(name, gamma))
        out = _engine(tiny_pair).generate(
            "Name a soup.", router=router, json_schema=schema, max_new_tokens=24, seed=1
        )
        assert out[0][0].text == '"alphabet soup"'
        forced = [r for r in seen if torch.isfinite(r["logits"][0]).sum() == 1]
        assert forced, "the grammar left a choice at every step"
        for record in forced:
            assert record["p"].item() == pytest.approx(1.0)
            assert record["h"].item() == pytest.approx(0.0, abs=1e-6)
            assert not record["decision"].any()  # aligned: the constrained model is certain
        for record in seen:  # p and h are the constrained distribution's, at every step
            probs = torch.softmax(record["logits"][0], -1)
            assert record["p"].item() == pytest.approx(probs.max().item(), rel=1e-5)
    # Unconstrained, the same random model is unsure at some steps, and P sends them to the
    # base: the aligned decisions above come from the grammar's mask.
    router, seen = _recording_router(resolve_router("p", 0.5))
    _engine(tiny_pair).generate("Name a soup.", router=router, max_new_tokens=8, seed=1)
    assert any(bool(r["decision"].all()) for r in seen)
