"""A tiny random model pair built in-process, for tests, examples and smoke runs.

The tokenizer is a byte-level BPE trained in well under a second on a built-in text, wrapped
in ``PreTrainedTokenizerFast`` with a ChatML chat template; the models are 2-layer random
Llamas. Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_TEXT = """
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a
single step. To be, or not to be: that is the question. All that glitters is not gold.
User: Tell me a story about a girl and her dog.
Assistant: Once upon a time, a girl named Mia found a small dog in the rain.
User: Name a color. Assistant: Blue, like the sea and the sky at noon.
Write a haiku about the sea, the moon, the wind and the old pine trees.
Café, naïve, déjà vu, 東京, 😀 emoji and other multi-byte characters appear here too.
Lists: 1. first; 2. second; 3. third! (yes) [no] {maybe} "quoted" 'single' - dash — em.
"""

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

#: An OpenAI-style tool for tool-calling tests: ``add(a: int, b: int)``.
ADD_TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


def build_tiny_tokenizer(vocab_size: int = 400) -> Any:
    """A byte-level BPE tokenizer with ChatML specials, trained on a built-in text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_TEXT] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(
    vocab_size: int,
    seed: int,
    *,
    hidden: int = 64,
    layers: int = 2,
    context_window: int = 512,
    heads: int = 4,
) -> Any:
    """A random Llama causal LM small enough to run thousands of steps in a test.

    ``context_window`` (``max_position_embeddings``) does not change the weights. The head
    size is ``hidden / heads`` (16 by default; vLLM's CPU attention needs 64: ``hidden=128,
    heads=2``)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=min(2, heads),
        max_position_embeddings=context_window,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)  # sharper distributions than a fresh init
    return model.eval()


def build_tiny_sliding_model(
    vocab_size: int, seed: int, *, sliding_window: int = 96, context_window: int = 512
) -> Any:
    """A random Gemma-3-style causal LM: one sliding-window layer (``sliding_window``
    tokens) and one full-attention layer, final logit soft-capping. For tests of code that
    treats sliding-window models specially."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=context_window,
        sliding_window=sliding_window,
        layer_types=["sliding_attention", "full_attention"],
        final_logit_softcapping=30.0,
    )
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)  # sharper distributions than a fresh init
    return model.eval()


def save_tiny_pair(
    folder: str | Path,
    *,
    padded_vocab: int = 0,
    context_window: int = 512,
    hidden: int = 64,
    heads: int = 4,
) -> tuple[Path, Path]:
    """Build the tiny pair and save it as ``folder/base`` and ``folder/aligned``.

    ``padded_vocab`` adds rows to the output layer beyond the tokenizer (as some checkpoints do).
    ``context_window`` 2048 leaves room for tool descriptions (the tiny tokenizer needs about
    one token per two characters).
    """
    folder = Path(folder)
    tokenizer = build_tiny_tokenizer()
    paths = []
    for name, seed in (("base", 1), ("aligned", 2)):
        model = build_tiny_model(
            len(tokenizer) + padded_vocab,
            seed,
            context_window=context_window,
            hidden=hidden,
            heads=heads,
        )
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        path = folder / name
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(path)
    return paths[0], paths[1]


def save_tiny_adapter(
    base_folder: str | Path,
    folder: str | Path,
    *,
    target_modules: Sequence[str] = ("q_proj", "v_proj", "down_proj"),
    use_dora: bool = False,
    seed: int = 0,
    zero: bool = False,
) -> Path:
    """Save a random (non-zero) LoRA adapter for the tiny model in ``base_folder``; with the
    base it makes a one-weights pair (``ModelPair.from_pretrained(base, aligned_adapter=…)``).
    ``zero``: an adapter that changes nothing (peft's default init, B = 0). Needs peft."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    config = peft.LoraConfig(
        r=4, target_modules=list(target_modules), init_lora_weights=zero, use_dora=use_dora
    )
    torch.manual_seed(seed)
    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(base_folder), config)
    model.save_pretrained(folder)
    return Path(folder)


def demo_pair_skips() -> list[Any]:
    """``pytest.mark.skipif`` marks for tests of the real demo pair: they skip when its
    weights package (the ``demo`` extra, installed separately) is missing. The LoRA adapter
    ships with baco, so a missing adapter is not a reason to skip: those tests then fail.
    Needs pytest."""
    import importlib.util

    import pytest

    from .demo_models import GGUF_PACKAGE, GGUF_PIP_NAME

    return [
        pytest.mark.skipif(
            importlib.util.find_spec(GGUF_PACKAGE) is None,
            reason=f"the demo pair needs `pip install {GGUF_PIP_NAME}` "
            "(or `pip install -e '.[demo]'` from the repo root)",
        ),
    ]


_SAVED: dict[str, tuple[Path, Path]] = {}


def tiny_pair_folders(context_window: int = 512) -> tuple[Path, Path]:
    """``(base, aligned)`` folders of a tiny pair saved once per process to a temp folder."""
    import tempfile

    key = "pair" if context_window == 512 else f"pair-{context_window}"
    if key not in _SAVED:
        folder = tempfile.mkdtemp(prefix="baco-tiny-")
        _SAVED[key] = save_tiny_pair(folder, context_window=context_window)
    return _SAVED[key]


def engine_stream_events(
    generation: Any,
    pieces: Sequence[str],
    *,
    ended_on_end_token: bool | None = None,
    flush: str = "",
    row: int = 0,
) -> Iterator[Any]:
    """The ``StreamEvent``s the engine yields for a finished ``generation``, for fake engines.

    ``pieces`` are the text deltas of the generation's tokens (one per token id, ``""`` while
    text is pending) and ``flush`` is the pending text released when the sample ends. As in
    ``BacoEngine`` (``_advance``): a sample that ends on an end token (the default for
    ``finish_reason="stop"``) gets one event per token and then a final event with
    ``token_id=None`` and ``source=None``; one that ends by length or a stop string gets its
    last token's event as the final one.
    """
    from .types import StreamEvent

    if len(pieces) != len(generation.token_ids):
        raise ValueError(f"{len(pieces)} pieces for {len(generation.token_ids)} tokens")
    if ended_on_end_token is None:
        ended_on_end_token = generation.finish_reason == "stop"
    last = len(pieces) - 1
    tokens = zip(generation.token_ids, generation.sources, pieces, strict=True)
    for i, (token_id, source, piece) in enumerate(tokens):
        final = i == last and not ended_on_end_token
        yield StreamEvent(
            row=row,
            text_delta=piece + flush if final else piece,
            token_id=token_id,
            source=source,
            sample_index=generation.sample_index,
            generation=generation if final else None,
        )
    if ended_on_end_token:
        yield StreamEvent(
            row=row, text_delta=flush, sample_index=generation.sample_index, generation=generation
        )


def record_grammar_keys(monkeypatch: Any, adapter_module: Any) -> list[str]:
    """Record the key of every grammar an adapter module builds with ``pop_structure``
    (pytest ``monkeypatch``); the returned list fills as calls are made."""
    keys: list[str] = []
    build = adapter_module.pop_structure

    def recording(*args: Any, **kwargs: Any) -> Any:
        request, constraint = build(*args, **kwargs)
        keys.append(constraint.key)
        return request, constraint

    monkeypatch.setattr(adapter_module, "pop_structure", recording)
    return keys


def record_grammars(monkeypatch: Any, adapter_module: Any) -> list[Any]:
    """Record every grammar (constraint) an adapter module builds with ``pop_structure``, for
    :func:`grammar_accepts` to test what it allows (pytest ``monkeypatch``)."""
    grammars: list[Any] = []
    build = adapter_module.pop_structure

    def recording(*args: Any, **kwargs: Any) -> Any:
        request, constraint = build(*args, **kwargs)
        grammars.append(constraint)
        return request, constraint

    monkeypatch.setattr(adapter_module, "pop_structure", recording)
    return grammars


def grammar_accepts(constraint: Any, text: str, tokenizer: Any = None) -> bool:
    """Whether a grammar lets a response be exactly ``text`` up to now (each of its tokens is
    allowed in turn; the tiny tokenizer unless one is given). Needs llguidance."""
    from .structured import RowMatchers
    from .vocab import build_vocab_tables, end_token_ids

    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    tables = build_vocab_tables(tokenizer, end_token_ids(tokenizer))
    matchers = RowMatchers(
        constraint, tokenizer, tables.end_ids, 1, tables.never_generate, tables.is_end
    )
    for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
        matchers.advance(0, token)
    return matchers.error(0) is None


def inject_constraint_failure(monkeypatch: Any, row: int) -> None:
    """Make the grammar of decode row ``row`` fail at its first step (pytest ``monkeypatch``).

    Row ``r`` of a decode is prompt ``r // n``, sample ``r % n``. Used to check that one
    failed constrained sample is reported on its own while the others finish.
    """
    from .structured import RowMatchers

    original = RowMatchers.allowed

    def allowed(self: Any, row_ids: Any, device: Any, **options: Any) -> Any:
        if row in row_ids and row not in self.done:
            self.errors[row] = "injected failure"
        return original(self, row_ids, device, **options)

    monkeypatch.setattr(RowMatchers, "allowed", allowed)


def chi_square_p(a: Mapping[Any, int], b: Mapping[Any, int]) -> float:
    """p-value of Pearson's chi-square test that two samples (counts per outcome) come from
    one distribution (homogeneity; degrees of freedom = outcomes − 1)."""
    import torch

    keys = sorted(set(a) | set(b), key=repr)
    x = torch.tensor([a.get(k, 0) for k in keys], dtype=torch.float64)
    y = torch.tensor([b.get(k, 0) for k in keys], dtype=torch.float64)
    total = x + y
    ex, ey = total * x.sum() / total.sum(), total * y.sum() / total.sum()
    stat = ((x - ex) ** 2 / ex + (y - ey) ** 2 / ey).sum()
    df = torch.tensor((len(keys) - 1) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(df, stat / 2))
