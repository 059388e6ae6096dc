"""Per-token boolean tables over a vocabulary, built once per tokenizer.

The routers and guards look tokens up in these tables with tensor indexing, so routing a
whole batch is a handful of gathers on the device instead of Python work per token.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

import torch

from .lexicon import SPACE_MARKERS, is_function_word_text, is_punctuation_text

#: Strings that end an assistant turn in common chat formats.
END_OF_TURN_STRINGS = (
    "<end_of_turn>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<|endoftext|>",
    "<|end_of_text|>",
)
#: Strings that open a new chat turn; never generated.
TURN_START_STRINGS = ("<start_of_turn>", "<|im_start|>", "<|start_header_id|>", "<|begin_of_text|>")
#: Added tokens for reserved slots and other modalities (Gemma's ``<unused12>``,
#: ``<start_of_image>``, ``[multimodal]``...): never part of a text answer.
_RESERVED = re.compile(
    r"^[<\[]\|?\w*(unused|reserved|extra_id|image|audio|video|multimodal|soft_token)\w*\|?[>\]]$"
)


@dataclass(frozen=True)
class VocabTables:
    """Boolean tensors of length ``size`` describing each token id."""

    size: int
    is_word_start: torch.Tensor
    ends_with_space: torch.Tensor
    is_punct: torch.Tensor
    is_function_word: torch.Tensor
    is_special: torch.Tensor
    is_end: torch.Tensor
    never_generate: torch.Tensor
    end_ids: tuple[int, ...]

    def to(self, device: torch.device | str) -> VocabTables:
        """A copy with every table on ``device``."""
        moved = {
            name: getattr(self, name).to(device)
            for name in (
                "is_word_start",
                "ends_with_space",
                "is_punct",
                "is_function_word",
                "is_special",
                "is_end",
                "never_generate",
            )
        }
        return VocabTables(size=self.size, end_ids=self.end_ids, **moved)


def end_token_ids(tokenizer, extra_ids: list[int] | tuple[int, ...] = ()) -> tuple[int, ...]:
    """EOS and end-of-turn ids of a tokenizer, plus ``extra_ids`` (e.g. a generation config's)."""
    ids: set[int] = {int(i) for i in extra_ids if i is not None}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for text in END_OF_TURN_STRINGS:
        if text in vocab:
            ids.add(int(vocab[text]))
    bos = tokenizer.bos_token_id
    if bos is not None and bos != tokenizer.eos_token_id:
        ids.discard(int(bos))  # e.g. "<|endoftext|>" used as BOS starts text, never ends it
    return tuple(sorted(i for i in ids if 0 <= i < len(tokenizer)))


def build_vocab_tables(tokenizer, end_ids: tuple[int, ...]) -> VocabTables:
    """Classify every token of ``tokenizer`` (definitions in docs/design.md, section 4)."""
    size = len(tokenizer)
    ids = list(range(size))
    raw = tokenizer.convert_ids_to_tokens(ids)
    decoded = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False)
    special_ids = set(tokenizer.all_special_ids)
    added = {int(i): tok for i, tok in tokenizer.added_tokens_decoder.items()}
    special_ids.update(i for i, tok in added.items() if getattr(tok, "special", False))
    vocab = tokenizer.get_vocab()
    turn_start = {vocab[t] for t in TURN_START_STRINGS if t in vocab}

    word_start = [False] * size
    ends_space = [False] * size
    punct = [False] * size
    function = [False] * size
    special = [False] * size
    never = [False] * size
    for i in ids:
        raw_text = raw[i] or ""
        text = decoded[i]
        is_special = i in special_ids or i in turn_start
        if is_special:
            special[i] = True
            never[i] = i not in end_ids
        elif i in added and _RESERVED.match(raw_text):
            never[i] = True
        is_p = not is_special and is_punctuation_text(text)
        punct[i] = is_p
        function[i] = not is_special and is_function_word_text(text)
        word_start[i] = (
            is_special
            or is_p
            or raw_text.startswith(SPACE_MARKERS)
            or text[:1].isspace()
            or "\n" in text
            or raw_text in ("Ċ", "<0x0A>")
        )
        ends_space[i] = text[-1:].isspace() or raw_text.endswith(("Ċ", "<0x0A>"))

    def table(values: list[bool]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.bool)

    is_end = torch.zeros(size, dtype=torch.bool)
    is_end[list(end_ids)] = True
    return VocabTables(
        size=size,
        is_word_start=table(word_start),
        ends_with_space=table(ends_space),
        is_punct=table(punct),
        is_function_word=table(function),
        is_special=table(special),
        is_end=is_end,
        never_generate=table(never),
        end_ids=end_ids,
    )


_CACHE: dict[tuple[str, int, tuple[int, ...]], VocabTables] = {}
_CACHE_LOCK = threading.Lock()


def vocab_tables_for(tokenizer, end_ids: tuple[int, ...]) -> VocabTables:
    """Cached :func:`build_vocab_tables`: built once per tokenizer (by name, size and ends)."""
    key = (str(getattr(tokenizer, "name_or_path", id(tokenizer))), len(tokenizer), end_ids)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = build_vocab_tables(tokenizer, end_ids)
        return _CACHE[key]
