"""A BACO pair whose models live behind two OpenAI-compatible completion servers (vLLM).

:class:`RemotePair` is a pair backend (:mod:`shared_core.backends`) of
:class:`~shared_core.engine.BacoEngine`, like a local :class:`~shared_core.pair.ModelPair`:
it says what it can do and opens the rows' states. The tokenizer is loaded locally, so chat
templates, vocabulary tables, word boundaries, stop strings and detokenisation are the engine's own;
only next-token distributions come from the servers, as top-k log-probabilities.

Two modes (``mode=``):

``"token"``
    At every step one request per model for all live rows (``max_tokens=1``, top-k
    logprobs). Routing and sampling run locally on those distributions, so a seeded request
    reproduces and equals the local engine with ``top_k=k`` on the same weights. Each
    distribution is completed for the router by spreading the mass outside the top-k evenly
    over the other tokens: P (top-1 probability) and the PUNC/FC rules (top-1 token) read
    exactly what a local model gives; H reads the entropy of that completion, an upper
    bound of the true entropy (the true tail is less even).
``"chunk"`` (default)
    The model that owns the text proposes up to ``chunk_tokens`` tokens (sampled by its
    server, seeded, with the same temperature/top-k/top-p/min-p); the other model scores them
    in one request (``prompt_logprobs``); the router runs position by position on both
    distributions and, at the first position where it hands over, the token is drawn locally
    from the other model's top-k and the rest of the proposal is dropped. Samples have the
    distribution of token mode (docs/design.md, "BACO over two servers") in about
    ``2 / accepted tokens`` requests per token instead of 2.

The engine's HTTP work runs on one event-loop thread per pair (``httpx``, pooled
connections); the scheduler's thread waits on it.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Coroutine, Sequence
from concurrent.futures import Future
from typing import Any, Literal, TypeVar

import torch

from .prompts import PlainTemplate
from .remote_client import CompletionServer, RemoteServerError, TopLogprobs
from .vocab import VocabTables, end_token_ids, vocab_tables_for

__all__ = ["RemotePair", "RemoteServerError", "dense_logits"]

T = TypeVar("T")
#: Text that both servers must tokenize as the local tokenizer does (RemotePair's first use):
#: words with and without a leading space, digits, punctuation, whitespace runs, a newline
#: and non-ASCII letters, symbols and an emoji.
VOCABULARY_PROBE = (
    "Hello, world! The year 2025: naïve café, Straße, 東京, Привет 🙂\n"
    "  indented\ttab; (a+b)*3 = 42 -- 'quotes' \"too\"."
)
Mode = Literal["token", "chunk"]
MODES = ("token", "chunk")


class _LoopThread:
    """An asyncio event loop on a daemon thread; coroutines are submitted from any thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="baco-http")
        self._thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.submit(coroutine).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


async def _close_all(servers: list[CompletionServer]) -> None:
    await asyncio.gather(*(s.aclose() for s in servers))


def dense_logits(tops: Sequence[TopLogprobs], vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``([rows, vocab_size]`` log-probabilities, ``[rows, vocab_size]`` given-token mask``)``:
    each row's top-k where the server gave them and the rest of the mass spread evenly over
    the other tokens, so the top-1 token and its probability are exact for the router; the
    mask says which tokens a candidate may be drawn from (only given ones). Ids outside the
    tokenizer's vocabulary (a padded output layer) are dropped."""
    rows = len(tops)
    dense = torch.empty((rows, vocab_size), dtype=torch.float32)
    given = torch.zeros((rows, vocab_size), dtype=torch.bool)
    for row, top in enumerate(tops):
        kept = [(i, lp) for i, lp in zip(top.ids, top.logprobs, strict=True) if 0 <= i < vocab_size]
        seen = sum(math.exp(lp) for _, lp in kept)
        others = max(vocab_size - len(kept), 1)
        tail = math.log(max(1.0 - seen, 1e-12) / others)
        dense[row].fill_(tail)
        if kept:
            ids = torch.tensor([i for i, _ in kept])
            values = torch.tensor([lp for _, lp in kept], dtype=torch.float32)
            dense[row, ids] = values.clamp(min=tail)
            given[row, ids] = True
    return dense, given


class RemotePair:
    """A base and an aligned model served by OpenAI-compatible completion servers.

    ``base_url`` / ``aligned_url``: the servers' ``/v1`` URLs (one server may serve both,
    e.g. vLLM with the aligned model as a LoRA module: name them with ``base_model`` /
    ``aligned_model``; otherwise each server's only model is used). ``tokenizer``: a hub id,
    a folder or a loaded tokenizer, the models' own (its chat template renders the aligned
    prompts). ``top_logprobs``: the k of every distribution read from the servers (vLLM:
    start them with ``--max-logprobs`` ≥ k). ``mode`` and ``chunk_tokens``: see the module
    docstring. ``timeout`` (seconds per request) and ``retries`` (for connection errors and
    429/502/503/504, with backoff): every request is idempotent. ``context_window``: the
    models' context length when the servers do not report ``max_model_len``.
    ``check_vocabulary``: on first use, check that both servers tokenize a probe text as
    ``tokenizer`` does (their ``/tokenize`` and ``/detokenize``; :meth:`check_vocabulary`).
    """

    remote = True
    shares_weights = False

    def __init__(
        self,
        base_url: str,
        aligned_url: str,
        *,
        tokenizer: Any,
        base_model: str | None = None,
        aligned_model: str | None = None,
        api_key: str | None = None,
        top_logprobs: int = 20,
        mode: Mode = "chunk",
        chunk_tokens: int = 8,
        timeout: float = 60.0,
        retries: int = 2,
        context_window: int | None = None,
        base_template: PlainTemplate | None = None,
        end_ids: Sequence[int] = (),
        check_vocabulary: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int):
            raise TypeError(f"top_logprobs must be an int, got {type(top_logprobs).__name__}")
        if not 1 <= top_logprobs <= 1000:
            raise ValueError(f"top_logprobs must be in [1, 1000], got {top_logprobs}")
        if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be an int ≥ 1, got {chunk_tokens!r}")
        if not (isinstance(timeout, int | float) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.mode: Mode = mode
        self.top_logprobs = top_logprobs
        self.chunk_tokens = chunk_tokens
        self.tokenizer = _load_tokenizer(tokenizer)
        self.base_tokenizer = self.tokenizer
        self.base_template = base_template or PlainTemplate()
        self.vocab_size = len(self.tokenizer)
        self.end_ids = end_token_ids(self.tokenizer, list(end_ids))
        self.vocab: VocabTables = vocab_tables_for(self.tokenizer, self.end_ids)
        self._loop = _LoopThread()
        common = {"api_key": api_key, "timeout": timeout, "retries": retries}
        self.servers = {
            "base": CompletionServer(base_url, role="base", model=base_model, **common),
            "aligned": CompletionServer(aligned_url, role="aligned", model=aligned_model, **common),
        }
        self.base_url = self.servers["base"].base_url
        self.aligned_url = self.servers["aligned"].base_url
        self._context_window = context_window
        self._names: dict[str, str] = {}
        self._vocabulary_checked = not check_vocabulary

    # ------------------------------------------------------------------ backend protocol

    @property
    def capabilities(self) -> Any:
        """What a remote pair can do: grammars in token mode only, log-probabilities and
        sampling within the servers' top-k, no compiled graphs; chunk mode runs on the chunk
        executor (:class:`~shared_core.backends.Capabilities`)."""
        from .backends import Capabilities

        return Capabilities(
            grammars=self.mode == "token",
            logprobs_limit=self.top_logprobs,
            top_k_limit=self.top_logprobs,
            graphs=False,
            joins=True,
            executor="chunk" if self.mode == "chunk" else "eager",
        )

    def open_rows(
        self,
        prompts: list[Any],
        repeats: list[int],
        uses_base: list[bool],
        uses_aligned: list[bool],
        pad_id: int,
        options: Any,
    ) -> Any:
        """Ask both servers for the prompts' next-token distributions (token mode); returns
        the rows' :class:`~shared_core.remote_rows.RemoteRows`."""
        from .backends import OpenRows
        from .remote_rows import RemoteRows

        return RemoteRows(self, OpenRows(prompts, repeats, uses_base, uses_aligned))

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def _name(self, role: str) -> str:
        if role not in self._names:
            server = self.servers[role]
            self._names[role] = server.model or server.base_url
        return self._names[role]

    @property
    def base_name(self) -> str:
        return self._name("base")

    @property
    def aligned_name(self) -> str:
        return self._name("aligned")

    @property
    def name(self) -> str:
        return f"{self.base_name}+{self.aligned_name}"

    @property
    def short_name(self) -> str:
        """``baco:<base>+<aligned>`` by the served model names (what ``baco serve`` lists)."""
        self.connect()
        return f"baco:{self.base_name}+{self.aligned_name}"

    @property
    def context_window(self) -> int:
        if self._context_window is None or not self._vocabulary_checked:
            self.connect()  # every decode reads this first: the servers are checked once
        return self._context_window or 4096

    def connect(self) -> None:
        """Ask each server for its model name and context window, and check that it
        tokenizes as the local tokenizer does (:meth:`check_vocabulary`); once."""
        named = len(self._names) == 2 and all(s.model for s in self.servers.values())
        if named and self._context_window is not None:
            self.check_vocabulary()
            return

        async def ask() -> list[tuple[str, int | None]]:
            async def one(server: CompletionServer) -> tuple[str, int | None]:
                return await server.model_name(), await server.max_model_len()

            return await asyncio.gather(*(one(s) for s in self.servers.values()))

        (base, base_len), (aligned, aligned_len) = self._loop.run(ask())
        self._names = {"base": base, "aligned": aligned}
        if self._context_window is None:
            known = [n for n in (base_len, aligned_len) if n]
            self._context_window = min(known) if known else 4096
        self.check_vocabulary()

    def check_vocabulary(self) -> None:
        """Check (once) that both servers tokenize :data:`VOCABULARY_PROBE` into the ids the
        local tokenizer gives it and turn those ids back into the same text: the engine
        tokenizes prompts and reads the servers' token ids with the local tokenizer, so a
        server with another vocabulary would give silently wrong text. Raises ``ValueError``
        naming the server and the first differing token (``check_vocabulary=False`` at
        construction skips this, e.g. for a server without ``/tokenize``)."""
        if self._vocabulary_checked:
            return
        tokenizer = self.tokenizer
        local = list(tokenizer.encode(VOCABULARY_PROBE, add_special_tokens=False))
        local_text = tokenizer.decode(local)

        async def ask() -> list[tuple[list[int], str]]:
            async def one(server: CompletionServer) -> tuple[list[int], str]:
                return await server.tokenize(VOCABULARY_PROBE), await server.detokenize(local)

            return await asyncio.gather(*(one(s) for s in self.servers.values()))

        answers = dict(zip(self.servers, self._loop.run(ask()), strict=True))
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        ids = {role: got for role, (got, _) in answers.items()}
        wrong = [role for role in ids if ids[role] != local]
        if wrong:
            role = wrong[0]
            server = self.servers[role]
            at = next(
                (i for i, (a, b) in enumerate(zip(ids[role], local, strict=False)) if a != b),
                min(len(ids[role]), len(local)),
            )

            def show(seq: list[int]) -> str:
                if at >= len(seq):
                    return "nothing (the ids end there)"
                return f"id {seq[at]} ({tokenizer.decode([seq[at]])!r})"

            agree = (
                " Both servers tokenize it alike: the local tokenizer is not theirs."
                if len(wrong) == 2 and ids["base"] == ids["aligned"]
                else " The two servers also disagree with each other."
                if len(wrong) == 2
                else ""
            )
            raise ValueError(
                f"{server.label} ({server.model}) does not tokenize like the local tokenizer "
                f"{name!r}: in the probe text {VOCABULARY_PROBE!r}, token {at} is "
                f"{show(ids[role])} on the server and {show(local)} locally.{agree} Serve "
                "both models with the tokenizer passed as tokenizer=, or pass theirs."
            )
        for role, (_, text) in answers.items():
            if text != local_text:
                server = self.servers[role]
                at = next(
                    (i for i, (a, b) in enumerate(zip(text, local_text, strict=False)) if a != b),
                    min(len(text), len(local_text)),
                )
                raise ValueError(
                    f"{server.label} ({server.model}) turns the probe's token ids into "
                    f"{text[at : at + 20]!r} at character {at} where the local tokenizer "
                    f"{name!r} gives {local_text[at : at + 20]!r}: the vocabularies differ."
                )
        self._vocabulary_checked = True

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the pair's HTTP loop and wait for it (from any thread)."""
        return self._loop.run(coroutine)

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        return self._loop.submit(coroutine)

    @property
    def requests(self) -> int:
        """HTTP requests sent so far (retries included), both servers."""
        return sum(s.requests for s in self.servers.values())

    def close(self) -> None:
        """Close the HTTP connections and stop the pair's event-loop thread."""
        if self._loop.loop.is_running():
            self._loop.run(_close_all(list(self.servers.values())))
            self._loop.stop()

    def __enter__(self) -> RemotePair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"RemotePair(base_url={self.base_url!r}, aligned_url={self.aligned_url!r}, "
            f"mode={self.mode!r}, top_logprobs={self.top_logprobs})"
        )


def _load_tokenizer(tokenizer: Any) -> Any:
    if not isinstance(tokenizer, str | bytes) and not hasattr(tokenizer, "__fspath__"):
        if not hasattr(tokenizer, "apply_chat_template"):
            raise TypeError(
                "tokenizer must be a hub id, a folder or a transformers tokenizer, got "
                f"{type(tokenizer).__name__}"
            )
        return tokenizer
    import os

    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.fspath(tokenizer))
