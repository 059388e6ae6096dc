"""γ calibration: monotone interpolation of γ → base share and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import shared_core.calibration as calibration_module
from shared_core.calibration import (
    Calibration,
    CalibrationError,
    base_share_for_gamma,
    calibration_from_table,
    gamma_for_base_share,
    load_calibration,
    save_calibration,
    shipped_calibration,
)

CAL = Calibration(
    {
        "p-punc": [(0.02, 0.05), (0.05, 0.1), (0.1, 0.2), (0.3, 0.4)],
        "h": [(0.5, 0.8), (1.0, 0.5), (2.0, 0.1)],  # base share falls as γ (nats) grows
        "p": [(0.1, 0.1), (0.2, 0.3), (0.3, 0.25), (0.4, 0.5)],  # noisy: not monotone
    },
    {"pair": "test"},
)


def test_interpolates_increasing_router() -> None:
    assert gamma_for_base_share("p-punc", 0.15, CAL) == pytest.approx(0.075)
    assert gamma_for_base_share("P_PUNC", 0.3, CAL) == pytest.approx(0.2)
    assert gamma_for_base_share("p-punc", 0.05, CAL) == pytest.approx(0.02)
    assert gamma_for_base_share("p-punc", 0.4, CAL) == pytest.approx(0.3)


def test_interpolates_decreasing_router() -> None:
    assert gamma_for_base_share("h", 0.3, CAL) == pytest.approx(1.5)
    assert gamma_for_base_share("h", 0.65, CAL) == pytest.approx(0.75)
    assert base_share_for_gamma("h", 1.5, CAL) == pytest.approx(0.3)


def test_noisy_points_are_made_monotone() -> None:
    # pool-adjacent-violators merges 0.3 and 0.25 into 0.275 at γ 0.2 and 0.3
    assert [s for _, s in CAL.monotone_points("p")] == pytest.approx([0.1, 0.275, 0.275, 0.5])
    assert gamma_for_base_share("p", 0.275, CAL) == pytest.approx(0.2)  # smallest γ on a plateau
    assert gamma_for_base_share("p", 0.2, CAL) == pytest.approx(0.1 + 0.1 * 0.1 / 0.175)
    gammas = [gamma_for_base_share("p", t, CAL) for t in (0.1, 0.2, 0.3, 0.4, 0.5)]
    assert gammas == sorted(gammas)


def test_target_outside_range_names_the_range() -> None:
    with pytest.raises(CalibrationError, match=r"outside the calibrated range \[0\.050, 0\.400\]"):
        gamma_for_base_share("p-punc", 0.9, CAL)
    with pytest.raises(
        ValueError, match=r"γ from 0\.02 to 0\.3"
    ):  # CalibrationError is a ValueError
        gamma_for_base_share("p-punc", 0.01, CAL)
    with pytest.raises(CalibrationError, match="outside the calibrated γ range"):
        base_share_for_gamma("p-punc", 0.5, CAL)


def test_bad_requests() -> None:
    with pytest.raises(
        CalibrationError, match=r"not in this calibration.*calibrated: h, p, p-punc"
    ):
        gamma_for_base_share("nudging", 0.3, CAL)
    with pytest.raises(CalibrationError, match="no γ"):
        gamma_for_base_share("punc", 0.3, CAL)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        gamma_for_base_share("p-punc", 1.5, CAL)
    with pytest.raises(TypeError):
        gamma_for_base_share("p-punc", True, CAL)  # type: ignore[arg-type]
    with pytest.raises(CalibrationError, match="'bogus' is not in this calibration"):
        gamma_for_base_share("bogus", 0.3, CAL)  # custom router names are allowed keys
    with pytest.raises(ValueError, match="duplicate"):
        Calibration({"p": [(0.1, 0.2), (0.1, 0.3)]})
    with pytest.raises(ValueError, match="bad calibration point"):
        Calibration({"p": [(0.1, 1.2)]})
    one = Calibration({"p": [(0.3, 0.4)]})
    assert gamma_for_base_share("p", 0.4, one) == 0.3
    with pytest.raises(CalibrationError, match="one point"):
        gamma_for_base_share("p", 0.5, one)


def test_mapping_and_path_inputs(tmp_path: Path) -> None:
    mapping = {"p-punc": {"0.1": 0.2, "0.3": 0.4}}
    assert gamma_for_base_share("p-punc", 0.3, mapping) == pytest.approx(0.2)
    path = save_calibration(CAL, tmp_path / "cal.json")
    assert gamma_for_base_share("p-punc", 0.15, path) == pytest.approx(0.075)
    assert gamma_for_base_share("p-punc", 0.15, str(path)) == pytest.approx(0.075)
    with pytest.raises(TypeError):
        gamma_for_base_share("p-punc", 0.15, 42)  # type: ignore[arg-type]


def test_save_load_round_trip(tmp_path: Path) -> None:
    path = CAL.save(tmp_path / "sub" / "cal.json")
    data = json.loads(path.read_text())
    assert data["format"] == "baco-calibration" and data["version"] == 1
    assert data["routers"]["h"][0] == {"gamma": 0.5, "base_share": 0.8}
    loaded = load_calibration(path)
    assert loaded.routers == CAL.routers and loaded.meta == {"pair": "test"}
    with pytest.raises(CalibrationError, match="does not exist"):
        load_calibration(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CalibrationError, match="not valid JSON"):
        load_calibration(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    with pytest.raises(CalibrationError, match="not a baco calibration"):
        load_calibration(tmp_path / "other.json")


def test_calibration_from_an_aggregated_sweep() -> None:
    table = [
        {"method": "aligned", "router": "aligned", "gamma": None, "temperature": 0.7},
        {"method": "p-punc", "router": "p-punc", "gamma": 0.3, "temperature": 1.0,
         "base_share": 0.4, "n_prompts": 20},
        {"method": "p-punc", "router": "p-punc", "gamma": 0.1, "temperature": 1.0,
         "base_share": 0.2, "n_prompts": 20},
        {"method": "p-punc", "router": "p-punc", "gamma": 0.5, "temperature": 1.3,
         "base_share": 0.9},
        {"method": "h", "router": "h", "gamma": 2.0, "temperature": 1.0, "base_share": None},
        {"method": "rand", "router": "rand", "gamma": 0.5, "temperature": 1.0,
         "base_share": 0.45, "n_prompts": 10},
    ]  # fmt: skip
    cal = calibration_from_table(table, meta={"pair": "x"})
    assert cal.routers == {"p-punc": [(0.1, 0.2), (0.3, 0.4)], "rand": [(0.5, 0.45)]}
    assert cal.meta == {"temperature": 1.0, "pair": "x", "n_prompts": 10}
    with pytest.raises(CalibrationError, match="no router with a γ grid"):
        calibration_from_table(table[:1])


def test_missing_shipped_calibration_is_a_clear_error(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(calibration_module, "DEMO_CALIBRATION_PATH", tmp_path / "none.json")
    with pytest.raises(CalibrationError, match="no shipped γ calibration exists yet"):
        gamma_for_base_share("p-punc", 0.3)
    path = save_calibration(CAL, tmp_path / "demo.json")
    monkeypatch.setattr(calibration_module, "DEMO_CALIBRATION_PATH", path)
    assert gamma_for_base_share("p-punc", 0.15) == pytest.approx(0.075)


def test_shipped_demo_calibration_is_usable() -> None:
    # The calibration ships with the package: a missing file is a failure, not a skip.
    assert calibration_module.DEMO_CALIBRATION_PATH.is_file(), "calibration_demo.json is missing"
    cal = shipped_calibration()
    assert "p-punc" in cal.routers and len(cal.routers["p-punc"]) >= 3
    shares = [s for _, s in cal.monotone_points("p-punc")]
    target = (min(shares) + max(shares)) / 2
    gamma = gamma_for_base_share("p-punc", target)
    assert (
        min(g for g, _ in cal.routers["p-punc"])
        <= gamma
        <= max(g for g, _ in cal.routers["p-punc"])
    )


def test_shipped_calibration_matches_the_shipped_adapter() -> None:
    import hashlib

    from shared_core.demo_models import demo_adapter_path

    weights = demo_adapter_path() / "adapter_model.safetensors"
    expected = shipped_calibration().meta.get("adapter_sha256")
    assert expected, "calibration_demo.json records no adapter_sha256"
    assert weights.is_file(), f"the shipped demo adapter is missing: {weights}"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == expected, (
        "the demo adapter changed since calibration_demo.json was measured: rerun the command "
        "in its meta['command'] and copy calibration.json to shared_core/assets/"
    )
