"""An in-process completion server that speaks the fields :class:`~shared_core.remote.
RemotePair` uses, backed by a local transformers model: for tests and benchmarks without
vLLM (the real-server tests are in ``tests/integration/remote``).

It answers ``GET /v1/models`` and ``POST /v1/completions`` with prompts as token-id lists,
``max_tokens``, ``logprobs`` (raw top-k per generated token, keys ``"token_id:N"``),
``prompt_logprobs`` (vLLM's per-position ``{"N": {"logprob", "rank"}}`` form), ``seed``,
``temperature``, ``top_k``, ``top_p``, ``min_p`` and ``min_tokens``, sampling in vLLM's
order (temperature, min-p, top-k, top-p). ``fail_status``, ``delay`` and ``logprob_cap``
simulate a failing, slow or stingy server. Given a ``tokenizer``, it also answers vLLM's
``POST /tokenize`` and ``/detokenize`` at its root (recorded in ``tokenize_requests``).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

__all__ = ["FakeCompletionServer"]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and left: nothing to report


class FakeCompletionServer:
    """Serve ``model`` as ``name`` on ``127.0.0.1`` (a free port); ``url`` ends with ``/v1``."""

    def __init__(
        self,
        model: Any,
        *,
        name: str = "model",
        end_ids: tuple[int, ...] = (),
        max_model_len: int = 512,
        max_logprobs: int = 50,
        tokenizer: Any = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.end_ids = tuple(end_ids)
        self.max_model_len = max_model_len
        self.max_logprobs = max_logprobs
        self.fail_status: int | None = None
        self.fail_times = 0  # with fail_status: fail this many requests, then answer (0: all)
        self.fail_message = "injected"
        self.delay = 0.0
        self.logprob_cap: int | None = None
        self.requests: list[dict[str, Any]] = []
        self.tokenize_requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> FakeCompletionServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ model work

    def _logprobs(self, ids: list[int]) -> torch.Tensor:
        """Raw log-probabilities ``[len(ids), vocab]`` after every prefix of ``ids``."""
        with self._lock, torch.inference_mode():
            logits = self.model(torch.tensor([ids])).logits[0].float()
        return torch.log_softmax(logits, -1)

    def _top(self, row: torch.Tensor, k: int, extra: int | None) -> dict[int, float]:
        k = min(k, self.logprob_cap if self.logprob_cap is not None else k)
        values, ids = row.topk(k)
        out = {int(i): float(v) for i, v in zip(ids, values, strict=True)}
        if extra is not None:
            out[extra] = float(row[extra])
        return out

    @staticmethod
    def _sample(row: torch.Tensor, body: dict[str, Any], generator: torch.Generator) -> int:
        temperature = float(body.get("temperature", 1.0))
        if temperature == 0.0:
            return int(row.argmax())
        logits = row / temperature
        probs = torch.softmax(logits, -1)
        min_p = float(body.get("min_p", 0.0) or 0.0)
        if min_p > 0:
            logits = logits.masked_fill(probs < probs.max() * min_p, float("-inf"))
        top_k = int(body.get("top_k", 0) or 0)
        if 0 < top_k < logits.shape[-1]:
            kth = logits.topk(top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        top_p = float(body.get("top_p", 1.0))
        probs = torch.softmax(logits, -1)
        if top_p < 1.0:
            ranked, order = probs.sort(descending=True)
            drop = (ranked.cumsum(-1) - ranked) >= top_p
            probs = probs.clone()
            probs[order[drop]] = 0.0
        return int(torch.multinomial(probs, 1, generator=generator))

    def _choice(self, index: int, prompt: list[int], body: dict[str, Any]) -> dict[str, Any]:
        top = int(body.get("logprobs") or 0)
        generator = torch.Generator().manual_seed(int(body.get("seed") or 0) + index)
        ids = list(prompt)
        tokens, token_logprobs, tops = [], [], []
        finish = "length"
        min_tokens = int(body.get("min_tokens", 0) or 0)
        for position in range(int(body.get("max_tokens", 16))):
            row = self._logprobs(ids)[-1]
            if position < min_tokens and self.end_ids:
                row = row.clone()
                row[list(self.end_ids)] = float("-inf")
            token = self._sample(row, body, generator)
            tokens.append(f"token_id:{token}")
            token_logprobs.append(float(row[token]))
            tops.append({f"token_id:{i}": lp for i, lp in self._top(row, top, token).items()})
            ids.append(token)
            if token in self.end_ids:
                finish = "stop"
                break
        choice: dict[str, Any] = {
            "index": index,
            "text": "",
            "finish_reason": finish,
            "logprobs": {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops},
        }
        want = body.get("prompt_logprobs")
        if want:
            rows = self._logprobs(prompt)
            entries: list[Any] = [None]
            for position in range(1, len(prompt)):
                best = self._top(rows[position - 1], int(want), prompt[position])
                entries.append({str(i): {"logprob": lp, "rank": 0} for i, lp in best.items()})
            choice["prompt_logprobs"] = entries
        return choice

    def complete(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The answer to one ``/v1/completions`` body: ``(status, json)``."""
        if body.get("model") != self.name:
            return 404, {"error": {"message": f"model {body.get('model')!r} not found"}}
        for field in ("logprobs", "prompt_logprobs"):
            if int(body.get(field) or 0) > self.max_logprobs:
                return 400, {"error": {"message": f"{field} > max_logprobs {self.max_logprobs}"}}
        if int(body.get("min_tokens") or 0) > int(body.get("max_tokens", 16)):
            return 400, {"error": {"message": "min_tokens must be <= max_tokens"}}
        prompts = body.get("prompt")
        if prompts and isinstance(prompts[0], int):
            prompts = [prompts]
        for prompt in prompts:
            if len(prompt) + int(body.get("max_tokens", 16)) > self.max_model_len:
                message = f"{len(prompt)} prompt tokens exceed max_model_len {self.max_model_len}"
                return 400, {"error": {"message": message}}
        choices = [self._choice(i, list(p), body) for i, p in enumerate(prompts)]
        return 200, {"object": "text_completion", "model": self.name, "choices": choices}

    def tokenize(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The answer to vLLM's ``POST /tokenize`` or ``/detokenize`` (at the server root)."""
        if self.tokenizer is None:
            return 404, {"error": {"message": "not found"}}
        if body.get("model") not in (None, self.name):
            return 404, {"error": {"message": f"model {body.get('model')!r} not found"}}
        if path == "/detokenize":
            return 200, {"prompt": self.tokenizer.decode(list(body["tokens"]))}
        special = bool(body.get("add_special_tokens", True))
        ids = list(self.tokenizer.encode(body["prompt"], add_special_tokens=special))
        return 200, {"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/") != "/v1/models":
                    self._send(404, {"error": {"message": "not found"}})
                    return
                entry = {"id": server.name, "max_model_len": server.max_model_len}
                self._send(200, {"object": "list", "data": [entry]})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.rstrip("/") in ("/tokenize", "/detokenize"):
                    server.tokenize_requests.append(body)  # not in requests, never failed
                    self._send(*server.tokenize(self.path.rstrip("/"), body))
                    return
                server.requests.append(body)
                if server.delay:
                    time.sleep(server.delay)
                failing = server.fail_status is not None and (
                    server.fail_times == 0 or len(server.requests) <= server.fail_times
                )
                if failing:
                    self._send(server.fail_status, {"error": {"message": server.fail_message}})
                    return
                if self.path.rstrip("/") != "/v1/completions":
                    self._send(404, {"error": {"message": "not found"}})
                    return
                self._send(*server.complete(body))

        return Handler
