"""Vocabulary tables (shared_core/vocab.py)."""

from __future__ import annotations

from shared_core.testing import build_tiny_tokenizer
from shared_core.vocab import build_vocab_tables, end_token_ids

TOKENIZER = build_tiny_tokenizer()
VOCAB = TOKENIZER.get_vocab()


def table_value(tables, name: str, token: str) -> bool:
    return bool(getattr(tables, name)[VOCAB[token]])


def test_tables_classify_tokens():
    ends = end_token_ids(TOKENIZER)
    tables = build_vocab_tables(TOKENIZER, ends)
    assert tables.size == len(TOKENIZER)
    assert table_value(tables, "is_word_start", "Ġthe")
    assert table_value(tables, "is_function_word", "Ġthe")
    assert table_value(tables, "is_punct", ",")
    assert table_value(tables, "is_word_start", ",")
    assert table_value(tables, "is_punct", "Ċ")
    assert table_value(tables, "ends_with_space", "Ċ")
    assert not table_value(tables, "is_word_start", "e")
    assert not table_value(tables, "is_function_word", "Ġsea")
    assert table_value(tables, "is_special", "<|im_start|>")
    assert table_value(tables, "never_generate", "<|im_start|>")
    assert table_value(tables, "never_generate", "<|pad|>")
    assert not table_value(tables, "never_generate", "<|im_end|>")
    assert table_value(tables, "is_end", "<|im_end|>")


def test_end_ids_include_eos_and_end_of_turn():
    ends = end_token_ids(TOKENIZER, [None])
    assert VOCAB["<|im_end|>"] in ends
    assert VOCAB["<|endoftext|>"] not in ends  # it is this tokenizer's BOS


def test_bos_is_never_generated():
    tables = build_vocab_tables(TOKENIZER, end_token_ids(TOKENIZER))
    assert table_value(tables, "never_generate", "<|endoftext|>")


def test_after_space_gives_the_spaced_token_or_a_space_slot():
    import torch

    tables = build_vocab_tables(TOKENIZER, end_token_ids(TOKENIZER))
    assert tables.space_id is not None and TOKENIZER.decode([tables.space_id]) == " "
    kinds = set()
    for tid in range(len(TOKENIZER)):
        spaced, needs = (int(x) for x in tables.after_space(torch.tensor(tid)))
        text = TOKENIZER.decode([tid])
        if text[:1].isspace() or tid in TOKENIZER.all_special_ids:
            assert (spaced, needs) == (tid, 0)  # nothing to add
            kinds.add("as is")
        elif needs:
            assert spaced == tid
            assert TOKENIZER.decode([tables.space_id, tid]) == " " + text
            kinds.add("slot")
        else:
            assert TOKENIZER.decode([spaced]) == " " + text  # one spaced token
            kinds.add("spaced")
    assert kinds == {"as is", "slot", "spaced"}
    assert int(tables.spaced[VOCAB["T"]]) == VOCAB["ĠT"]  # "ĠT" exists: one token
    assert bool(tables.needs_space[VOCAB["1"]])  # " 1" is "Ġ" + "1" in this tokenizer


def test_tables_are_cached_by_tokenizer_content_not_name():
    from shared_core.vocab import tokenizer_fingerprint, vocab_tables_for

    glued, spaced = build_tiny_tokenizer(), build_tiny_tokenizer()
    glued.add_tokens(["zzq"])
    spaced.add_tokens([" zzq"])
    assert len(glued) == len(spaced)  # same size, same (empty) name: only content differs
    assert glued.name_or_path == spaced.name_or_path == ""
    assert tokenizer_fingerprint(glued) != tokenizer_fingerprint(spaced)
    assert tokenizer_fingerprint(build_tiny_tokenizer()) == tokenizer_fingerprint(TOKENIZER)
    a = vocab_tables_for(glued, end_token_ids(glued))
    b = vocab_tables_for(spaced, end_token_ids(spaced))
    new_id = len(glued) - 1
    assert not bool(a.is_word_start[new_id])
    assert bool(b.is_word_start[new_id])
