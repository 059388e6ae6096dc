"""Helpers for the ``baco serve`` tests: real uvicorn servers on free 127.0.0.1 ports.

Each server runs the real app in a uvicorn thread of the test process, on the session's
tiny pair engine, so tests can compare answers with direct engine calls. Traffic goes to the
loopback address only; every request has a timeout.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

#: Seconds any single HTTP call in these tests may take.
TIMEOUT = 60.0


@dataclass
class LiveServer:
    """A running server: its root URL, its OpenAI base URL and the app's state."""

    url: str
    state: Any
    server: Any = None

    @property
    def connections(self) -> int:
        """Open client connections, as uvicorn sees them."""
        return len(self.server.server_state.connections)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def client(self, **headers: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=TIMEOUT, headers=headers)

    def metric(self, name: str) -> float:
        """The value of an unlabelled metric from ``GET /metrics``."""
        text = httpx.get(f"{self.url}/metrics", timeout=TIMEOUT).text
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        assert match is not None, f"metric {name} not exported"
        return float(match.group(1))


def free_socket() -> socket.socket:
    """A TCP socket bound to a free port of 127.0.0.1."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def run_server(
    engine: Any, *, shutdown_timeout: float = 5.0, **app_options: Any
) -> Iterator[LiveServer]:
    """Serve ``create_app(engine, **app_options)`` with uvicorn in a thread until exit.

    The served model id is ``tiny-baco`` (what the tests' requests name) unless
    ``model_name`` is given (``None``: the pair's own short name).
    """
    import uvicorn

    from shared_core.serve.app import create_app

    app_options.setdefault("model_name", "tiny-baco")
    app = create_app(engine, **app_options)
    sock = free_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            timeout_graceful_shutdown=shutdown_timeout,
            lifespan="off",
        )
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="test-uvicorn", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not server.started:
        assert thread.is_alive(), "uvicorn exited during startup"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", app.state.baco, server)
    finally:
        server.should_exit = True
        thread.join(timeout=TIMEOUT)
        sock.close()


def wait_until(condition: Any, what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``condition()`` until it is true; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class GateRouter:
    """A router callable (BACO's ``rand`` rule at γ=0.5) that can hold the decode at a step.

    While closed, every decode step of the engine waits inside the router (holding the
    engine), so a test can keep requests in flight for as long as it needs, then open it.
    """

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()
        self.waiting = threading.Event()
        self.calls = 0

    def close(self) -> None:
        self.waiting.clear()
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    def __call__(self, signals: Any) -> Any:
        self.calls += 1
        if not self._open.is_set():
            self.waiting.set()
        if not self._open.wait(TIMEOUT):
            raise TimeoutError("the test never opened the gate")
        return signals.uniform < 0.5
