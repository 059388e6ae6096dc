"""Per-token boolean tables over a vocabulary, built once per tokenizer.

The routers and guards look tokens up in these tables with tensor indexing, so routing a
whole batch is a handful of gathers on the device instead of Python work per token.
"""

from __future__ import annotations

import hashlib
import json
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
    """Tensors of length ``size`` describing each token id.

    ``spaced`` and ``needs_space`` say how to write a token after a leading space (used when
    the base model reads the aligned model's first token right after its ``Assistant:`` cue):
    ``spaced[v]`` is the single token that reads as ``" " + text(v)`` when one exists (else
    ``v``), and ``needs_space[v]`` is true when no such token exists and ``space_id`` (the
    token for a lone space) must come first. Tokens that already start with whitespace, and
    special tokens, map to themselves.
    """

    size: int
    is_word_start: torch.Tensor
    ends_with_space: torch.Tensor
    is_punct: torch.Tensor
    is_function_word: torch.Tensor
    is_special: torch.Tensor
    is_end: torch.Tensor
    never_generate: torch.Tensor
    spaced: torch.Tensor
    needs_space: torch.Tensor
    end_ids: tuple[int, ...]
    space_id: int | None = None

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
                "spaced",
                "needs_space",
            )
        }
        return VocabTables(size=self.size, end_ids=self.end_ids, space_id=self.space_id, **moved)

    def after_space(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, prefixed)``: how to feed ``tokens`` so that each reads after a space.

        ``ids`` is the spaced form of each token; ``prefixed`` marks rows that need
        :attr:`space_id` fed first (no single spaced token exists).
        """
        return self.spaced[tokens], self.needs_space[tokens]


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

    space_id = next(
        (vocab[m] for m in SPACE_MARKERS if m in vocab and decoded[vocab[m]] == " "), None
    )
    spaced = list(ids)
    needs_space = [False] * size
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
        if not is_special and i not in added and text and not text[0].isspace():
            variant = next(
                (
                    vocab[m + raw_text]
                    for m in SPACE_MARKERS
                    if m + raw_text in vocab and decoded[vocab[m + raw_text]] == " " + text
                ),
                None,
            )
            if variant is not None:
                spaced[i] = variant
            else:
                needs_space[i] = space_id is not None

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
        spaced=torch.tensor(spaced, dtype=torch.long),
        needs_space=table(needs_space),
        end_ids=end_ids,
        space_id=space_id,
    )


_CACHE: dict[tuple[str, tuple[int, ...]], VocabTables] = {}
_CACHE_LOCK = threading.Lock()


def tokenizer_fingerprint(tokenizer) -> str:
    """A digest of everything the tables depend on: the tokenizer's full definition (vocab,
    merges, normaliser, decoder) and its added tokens. In-memory tokenizers have no name, and
    two different tokenizers can share one name or size, so the content is the key."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = backend.to_str()
    else:
        definition = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    added = sorted(
        (int(i), str(tok), bool(getattr(tok, "special", False)))
        for i, tok in tokenizer.added_tokens_decoder.items()
    )
    specials = (tokenizer.bos_token_id, tokenizer.eos_token_id, len(tokenizer))
    digest = hashlib.blake2b(definition.encode(), digest_size=16)
    digest.update(repr((added, specials)).encode())
    return digest.hexdigest()


def vocab_tables_for(tokenizer, end_ids: tuple[int, ...]) -> VocabTables:
    """Cached :func:`build_vocab_tables`: built once per tokenizer content and end ids."""
    key = (tokenizer_fingerprint(tokenizer), tuple(end_ids))
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = build_vocab_tables(tokenizer, end_ids)
        return _CACHE[key]
