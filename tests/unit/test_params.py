"""Validation of decoding options (shared_core/params.py)."""

from __future__ import annotations

import math

import pytest

from shared_core.params import GenerationParams, normalise_stop


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"n": 0}, ValueError, "n must be between 1"),
        ({"n": 1.5}, TypeError, "n must be an int"),
        ({"n": 10**9}, ValueError, "n must be between"),
        ({"max_new_tokens": 0}, ValueError, "max_new_tokens"),
        ({"max_new_tokens": "12"}, TypeError, "max_new_tokens"),
        ({"temperature": -1}, ValueError, "temperature"),
        ({"temperature": math.nan}, ValueError, "temperature"),
        ({"temperature": math.inf}, ValueError, "temperature"),
        ({"top_p": 1.5}, ValueError, "top_p"),
        ({"top_p": 0.0}, ValueError, "top_p"),
        ({"top_k": -1}, ValueError, "top_k"),
        ({"min_p": 2}, ValueError, "min_p"),
        ({"stop": 5}, TypeError, "stop must be a string or a list"),
        ({"stop": ["ok", 3]}, TypeError, r"stop\[1\]"),
        ({"stop": ["ok", ""]}, ValueError, "empty string"),
        ({"seed": -1}, ValueError, "seed"),
        ({"router": "nope"}, ValueError, "valid routers"),
        ({"router": "p", "gamma": -0.5}, ValueError, "gamma"),
        ({"router": "rand", "gamma": math.nan}, ValueError, "gamma"),
        ({"min_new_tokens": 10, "max_new_tokens": 5}, ValueError, "min_new_tokens"),
        ({"aligned_starts": "yes"}, TypeError, "aligned_starts"),
    ],
)
def test_bad_options(options, error, match):
    with pytest.raises(error, match=match):
        GenerationParams(**options)


def test_defaults_and_router_resolution():
    params = GenerationParams()
    assert params.spec.name == "p-punc"
    assert params.gamma == pytest.approx(0.3)
    assert GenerationParams(router="P_FC", gamma=0.1).spec.name == "p-fc"


def test_with_overrides_revalidates_and_rejects_unknown():
    params = GenerationParams(router="p", gamma=0.2)
    assert params.with_overrides(gamma=0.5).gamma == 0.5
    assert params.with_overrides(gamma=0.5).spec.name == "p"
    assert params.with_overrides(router="h-punc", gamma=1.5).spec.name == "h-punc"
    assert params.with_overrides(temperature=None).temperature == 1.0
    with pytest.raises(TypeError, match="unknown generation option"):
        params.with_overrides(temprature=0.5)
    with pytest.raises(ValueError):
        params.with_overrides(gamma=-1)


def test_normalise_stop():
    assert normalise_stop(None) == ()
    assert normalise_stop("END") == ("END",)
    assert normalise_stop(["a", "b", "a"]) == ("a", "b")


def test_naming_the_configured_router_again_keeps_its_gamma():
    configured = GenerationParams(router="p", gamma=0.7)
    assert configured.with_overrides(router="p").gamma == 0.7
    assert configured.with_overrides(router="P").gamma == 0.7  # same router, other spelling
    assert configured.with_overrides(router="p-punc").gamma == 0.3  # another router: its default
    assert configured.with_overrides(router="p", gamma=0.2).gamma == 0.2
    punc = GenerationParams(router="p_punc", gamma=0.05)
    assert punc.with_overrides(router="P-PUNC").gamma == 0.05

    def mine(signals):
        return signals.p_base < 0.5

    custom = GenerationParams(router=mine, gamma=0.9)
    assert custom.with_overrides(router=mine).gamma == 0.9
