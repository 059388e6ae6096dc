"""Two Ray Serve replicas of ``baco serve`` on the tiny pair, on CPU, on this machine only."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from serve_helpers import TIMEOUT, free_socket, wait_until

pytestmark = pytest.mark.slow  # starts a Ray cluster and two replicas

STARTUP_TIMEOUT = 240.0
REPLICAS = 2


@pytest.fixture(scope="module")
def ray_server(tiny_pair_paths: tuple[Path, Path]) -> Iterator[str]:
    """Ray (2 CPUs, no dashboard) with two replicas behind Serve's proxy on 127.0.0.1."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from shared_core.serve.ray_app import deployment, start

    base, aligned = tiny_pair_paths
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        app = deployment(
            {"base_model": str(base), "aligned_model": str(aligned)},
            {"model_name": "tiny-ray"},
            replicas=REPLICAS,
            cpus_per_replica=1,
            threads=1,
        )
        start(app, "127.0.0.1", port)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _healthy(url), "the replicas to serve", STARTUP_TIMEOUT)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=5.0).status_code == 200
    except httpx.TransportError:
        return False


def test_two_replicas_serve_the_openai_api(ray_server: str, tiny_engine: Any) -> None:
    from ray import serve

    status = serve.status().applications["baco"].deployments["baco"]
    assert status.replica_states.get("RUNNING") == REPLICAS
    client = openai.AsyncOpenAI(
        base_url=f"{ray_server}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0
    )
    messages = [{"role": "user", "content": "Name a color."}]

    async def ask(seed: int) -> str:
        reply = await client.chat.completions.create(
            model="tiny-ray", messages=messages, max_tokens=12, seed=seed
        )
        return reply.choices[0].message.content

    async def run() -> list[str]:
        answers = await asyncio.gather(*(ask(seed) for seed in range(8)))
        await client.close()
        return list(answers)

    answers = asyncio.run(asyncio.wait_for(run(), TIMEOUT))
    expected = [
        tiny_engine.generate(messages, max_new_tokens=12, seed=seed)[0][0].text for seed in range(8)
    ]
    assert answers == expected  # every replica loaded the same pair
    sync = openai.OpenAI(base_url=f"{ray_server}/v1", api_key="unused", timeout=TIMEOUT)
    stream = sync.chat.completions.create(
        model="tiny-ray", messages=messages, max_tokens=12, seed=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected[0]
    with pytest.raises(openai.BadRequestError) as info:
        sync.chat.completions.create(model="tiny-ray", messages=messages, n=0)
    assert info.value.body["param"] == "n"
