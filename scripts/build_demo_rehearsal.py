"""Rehearsal data for the task-format stage: the shipped aligned model's own plain answers.

A task-format SFT on task examples alone moves the whole model: the earlier candidate learnt
the formats but lost most of the collapse and broke plain answers (docs/results.md, "Task
formats on the demo pair"). Mixing in the current aligned model's *own* answers to ordinary
instructions (self-distillation, a standard guard against forgetting) keeps what it already
does: its answers are drawn at a low temperature, so the rehearsed distribution is the
collapsed one the preference stage made, not the diverse Alpaca references that would undo it.

For ``--n`` Alpaca instructions (drawn with ``--seed``; only the instructions are used, never
the references) the adapter answers at ``--temperature`` with ``min_p`` 0.05; an answer is
kept when it ended (end-of-turn within ``--max-new-tokens``), is non-empty and does not loop
(at least half of its word 4-grams distinct). Output: JSON lines
``{"kind": "rehearsal", "messages", "response"}`` for ``train_demo_adapter.py --task-data``.

    python scripts/build_demo_rehearsal.py --data alpaca_5000.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
for entry in (REPO_ROOT, REPO_ROOT / "scripts"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

import train_demo_adapter as sft  # noqa: E402
from train_demo_dpo import _load_sft_model, _user_turn, end_position  # noqa: E402

from shared_core.demo_models import (  # noqa: E402
    DEMO_END_TOKENS,
    demo_adapter_path,
    ensure_demo_base,
)


def loops(text: str) -> bool:
    """True when fewer than half of the answer's word 4-grams are distinct."""
    words = text.split()
    grams = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
    return bool(grams) and len(set(grams)) < 0.5 * len(grams)


@torch.no_grad()
def main(argv: list[str] | None = None) -> None:
    """Draw the answers and write the kept ones."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="Alpaca JSON list or JSON lines")
    p.add_argument("--adapter", type=Path, default=demo_adapter_path(), help="aligned adapter")
    p.add_argument("--out", type=Path, default=Path("runs/task_demo/data/rehearsal.jsonl"))
    p.add_argument("--n", type=int, default=256, help="instructions to answer")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=4321)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    from transformers import AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    base = ensure_demo_base(progress=print)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.padding_side = "left"
    model = _load_sft_model(base, sft._resolve(args.adapter), merged=True).eval()
    end_ids = [tokenizer.convert_tokens_to_ids(t) for t in DEMO_END_TOKENS]
    records = random.Random(args.seed).sample(sft.load_records(sft._resolve(args.data)), args.n)
    kept: list[dict] = []
    for start in range(0, len(records), args.batch):
        chunk = records[start : start + args.batch]
        messages = [[{"role": "user", "content": _user_turn(r)}] for r in chunk]
        prompts = [
            tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False)
            for m in messages
        ]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(args.seed + start)
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=args.temperature,
            top_p=1.0,
            top_k=0,
            min_p=0.05,
            max_new_tokens=args.max_new_tokens,
            eos_token_id=end_ids,
            pad_token_id=tokenizer.pad_token_id,
        )
        for row, convo in zip(out[:, enc["input_ids"].shape[1] :].tolist(), messages, strict=True):
            end = end_position(row, end_ids)
            if end is None:
                continue
            text = tokenizer.decode(row[:end], skip_special_tokens=True).strip()
            if text and not loops(text):
                kept.append({"kind": "rehearsal", "messages": convo, "response": text})
        print(f"rehearsal: {start + len(chunk)}/{len(records)} drawn, {len(kept)} kept", flush=True)
    out_path = sft._resolve(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    wall = round(time.perf_counter() - t0, 1)
    print(json.dumps({"drawn": len(records), "kept": len(kept), "wall_time_s": wall}))


if __name__ == "__main__":
    main()
