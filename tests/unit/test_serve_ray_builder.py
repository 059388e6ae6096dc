"""The Ray Serve application builder of ``baco serve --ray`` (nothing is started)."""

from __future__ import annotations

import pytest

pytest.importorskip("ray.serve")


def test_build_app_turns_serve_run_arguments_into_replica_options() -> None:
    from shared_core.serve.limits import ServeLimits
    from shared_core.serve.ray_app import build_app

    app = build_app(
        {
            "replicas": "3",
            "gpus_per_replica": "0.5",
            "cpus_per_replica": "2",
            "base": "b",
            "aligned": "a",
            "dtype": "auto",
            "threads": "1",
            "max_queue": "7",
            "api_key": "k",
            "max_n": "8",
        }
    )
    deployment = app._bound_deployment
    assert deployment.name == "baco"
    assert deployment.num_replicas == 3
    assert deployment.ray_actor_options == {"num_cpus": 2.0, "num_gpus": 0.5}
    assert deployment.max_ongoing_requests == 7
    model, server, threads = deployment.init_args
    assert model == {
        "base_model": "b",
        "aligned_model": "a",
        "aligned_adapter": None,
        "dtype": None,
        "device_map": None,
    }
    limits = server.pop("limits")
    assert server == {"model_name": None, "max_queue": 7, "api_key": "k", "calibration": None}
    assert limits == ServeLimits(max_n=8)
    assert threads == 1


def test_cpu_only_replicas_ask_for_no_gpu() -> None:
    from shared_core.serve.ray_app import deployment

    app = deployment({}, {}, replicas=2)
    assert app._bound_deployment.ray_actor_options == {"num_cpus": 1.0}


def test_build_app_names_the_valid_arguments_for_a_typo() -> None:
    from shared_core.serve.limits import ServeLimits
    from shared_core.serve.ray_app import BUILD_ARGS, build_app

    assert set(ServeLimits.__dataclass_fields__) <= set(BUILD_ARGS)
    with pytest.raises(ValueError, match=r"unknown argument\(s\) gpu_per_replica; valid: base"):
        build_app({"gpu_per_replica": "1"})
