"""``baco serve`` as a real process: it starts on a free port, serves, and exits 0 on SIGTERM
after letting the in-flight stream finish."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from serve_helpers import TIMEOUT, free_socket

pytestmark = pytest.mark.slow  # starts `baco serve` as a separate process

STARTUP_TIMEOUT = 180.0


def _wait_for_health(url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        assert process.poll() is None, f"baco serve exited early:\n{process.communicate()[1]}"
        assert time.monotonic() < deadline, "baco serve did not come up"
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)


def test_sigterm_finishes_the_in_flight_stream_then_exits_0(
    tiny_pair_paths: tuple[Path, Path],
) -> None:
    base, aligned = tiny_pair_paths
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()  # the server binds it again (SO_REUSEADDR on both sides)
    command = [sys.executable, "-m", "shared_core.cli", "serve", "--base", str(base)]
    command += ["--aligned", str(aligned), "--port", str(port), "--threads", "1"]
    command += ["--served-model-name", "tiny", "--shutdown-timeout", "60"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_health(url, process)
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "Hi"}],
            "n": 16,
            "max_tokens": 300,
            "min_tokens": 300,
            "stream": True,
        }
        with (
            httpx.Client(base_url=url, timeout=TIMEOUT) as http,
            http.stream("POST", "/v1/chat/completions", json=body) as stream,
        ):
            lines = stream.iter_lines()
            assert next(lines).startswith("data: ")
            process.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        chunks = [json.loads(line[len("data: ") :]) for line in rest[:-1]]
        finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
        assert [f for f in finishes if f is not None] == ["length"] * 16
        _, stderr = process.communicate(timeout=TIMEOUT)
        assert process.returncode == 0, stderr
        assert "Shutting down" in stderr
        assert "Waiting for connections to close" in stderr  # the stream was still running
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
