"""Align the demo pair's "aligned" model: LoRA SFT on Alpaca, then DPO on self-play pairs.

This is the recipe of the shipped demo adapter (``shared_core/assets/demo_adapter``). Real
instruct models are supervised fine-tuned and then preference-optimised; the preference
stage is what concentrates them on a few template answers (mode collapse), which is what
BACO exists to undo. One command runs every stage on a CPU::

    python scripts/train_demo_dpo.py --data alpaca_5000.json

``--data``: your copy of Stanford Alpaca (CC BY-NC 4.0; github.com/tatsu-lab/stanford_alpaca),
e.g. a 5000-row subset as ``scripts/train_demo_adapter.py`` describes.

Stages (each is skipped when its output already exists in ``--work-dir``, so a cut-off run
resumes):

1. **sft**: ``scripts/train_demo_adapter.py`` (LoRA r=16 on every projection, Alpaca in
   Gemma's chat format). Skipped when ``--sft-adapter`` names an existing SFT adapter.
2. **pairs**: for ``--pairs`` Alpaca instructions (drawn with ``--seed``, disjoint from
   nothing: the SFT stage saw them too, as in SPIN-style self-play), ``--samples`` responses
   of the SFT model at temperature 1 with no truncation (``top_p=1``), up to
   ``--sample-tokens`` tokens. Each sample's mean token log-probability under the SFT model
   that drew it is recorded. One preference pair per instruction: **chosen** = the Alpaca
   reference response, **rejected** = the SFT sample with the *lowest* mean log-probability
   (the least confident draw, i.e. the sampling tail that makes a weak aligned model sloppy).
   Only the Alpaca data, the base model and the SFT adapter are used: no judge, no embedding
   model, no evaluation prompts.
3. **dpo**: TRL's ``DPOTrainer`` (sigmoid loss, ``--beta``) on those pairs. The policy is the
   SFT adapter itself, trained further; the reference is the SFT model (the base with the SFT
   adapter merged in), whose log-probabilities are computed once before training
   (``precompute_ref_log_probs``). The result is again one LoRA r=16 adapter on the base, so
   the demo pair stays one set of weights.
4. **export**: the adapter, ``training_summary.json``, ``dpo_curve.csv`` (loss, reward margin,
   reward accuracy per logged step) and ``dpo_curves.png`` are written to ``--output``.

Data licence: Stanford Alpaca is CC BY-NC 4.0, so the adapter is for research use only.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
for entry in (REPO_ROOT, REPO_ROOT / "scripts"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

import train_demo_adapter as sft  # noqa: E402

from shared_core.demo_models import (  # noqa: E402
    DEMO_END_TOKENS,
    demo_adapter_path,
    ensure_demo_base,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="Alpaca JSON list or JSON lines")
    p.add_argument("--work-dir", type=Path, default=Path("runs/demo_dpo"), help="stage outputs")
    p.add_argument("--output", type=Path, default=demo_adapter_path(), help="adapter folder")
    p.add_argument(
        "--sft-adapter",
        type=Path,
        default=None,
        help="an existing SFT adapter (default: train one into WORK_DIR/sft with "
        "train_demo_adapter.py, --sft-steps steps)",
    )
    p.add_argument("--sft-steps", type=int, default=300, help="SFT steps when training one")
    p.add_argument("--pairs", type=int, default=128, help="preference pairs (instructions)")
    p.add_argument("--samples", type=int, default=2, help="SFT samples per instruction")
    p.add_argument("--sample-tokens", type=int, default=64, help="max tokens per SFT sample")
    p.add_argument("--sample-batch", type=int, default=32, help="rows per generate call")
    p.add_argument(
        "--task-pairs",
        type=Path,
        default=None,
        help="task-format pairs (JSON lines {kind, prompt, chosen, rejected} from "
        "scripts/build_demo_task_data.py: chosen = the task answer, rejected = an echo of the "
        "prompt or an empty-argument call) added to the self-play pairs",
    )
    p.add_argument(
        "--task-pair-counts",
        default="rewrite=24,list=12,tool=12",
        help="how many task pairs of each kind to draw (with --seed)",
    )
    p.add_argument("--beta", type=float, default=0.1, help="DPO beta")
    p.add_argument(
        "--sft-weight",
        type=float,
        default=0.0,
        help="weight of an NLL term on the chosen answers added to the DPO loss (RPO; TRL "
        "loss_type ['sigmoid', 'sft']); it keeps the policy near the chosen answers' language "
        "when more epochs would drift (0: plain DPO, the shipped recipe)",
    )
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (LoRA)")
    p.add_argument("--epochs", type=float, default=2.0, help="passes over the pairs")
    p.add_argument("--batch-size", type=int, default=4, help="pairs per optimizer step")
    p.add_argument("--max-length", type=int, default=160, help="prompt + response tokens")
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p.parse_args(argv)


def _user_turn(record: dict[str, str]) -> str:
    """The user message of an Alpaca record (instruction plus its optional input)."""
    instruction = record["instruction"].strip()
    extra = (record.get("input") or "").strip()
    return f"{instruction}\n\n{extra}" if extra else instruction


def _load_sft_model(base: Path, adapter: Path, *, merged: bool) -> Any:
    """The base with the SFT adapter: merged into plain weights, or as a trainable adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter, is_trainable=not merged)
    return model.merge_and_unload() if merged else model


class SampledLogprobs:
    """A logits processor that records the log-probability of every sampled token.

    ``generate`` calls it once per step with the ids so far; the last id is the token sampled
    from the distribution seen at the previous call, so that distribution is kept one step
    and read then (no second forward pass over the samples, no stored score tensors).
    """

    def __init__(self) -> None:
        self.previous: torch.Tensor | None = None
        self.picked: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        self._take(input_ids[:, -1])
        self.previous = scores.float().log_softmax(-1)
        return scores

    def _take(self, tokens: torch.Tensor) -> None:
        if self.previous is not None:
            self.picked.append(self.previous.gather(-1, tokens[:, None]).squeeze(-1))

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        """Per-step log-probabilities ``[rows, steps]`` once generation has ended."""
        self._take(last_tokens)
        self.previous = None
        return torch.stack(self.picked, dim=1)


def end_position(row: list[int], end_ids: list[int]) -> int | None:
    """Index of the first end token of a sampled row; None when the sample never ended."""
    return next((pos for pos, tok in enumerate(row) if tok in end_ids), None)


def pick_rejected(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The rejected response of a pair: the least confident non-empty sample (lowest mean
    token log-probability under the model that drew it)."""
    usable = [s for s in samples if s["text"]] or samples
    return min(usable, key=lambda s: s["mean_logprob"])


@torch.no_grad()
def draw_pairs(
    records: list[dict[str, str]], tokenizer: Any, model: Any, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Sample the SFT model ``args.samples`` times per instruction and build the pairs."""
    end_ids = [tokenizer.convert_tokens_to_ids(t) for t in DEMO_END_TOKENS]
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": _user_turn(r)}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for r in records
    ]
    rows = [(i, j) for i in range(len(records)) for j in range(args.samples)]
    samples: list[list[dict[str, Any]]] = [[] for _ in records]
    tokenizer.padding_side = "left"
    t0 = time.perf_counter()
    for start in range(0, len(rows), args.sample_batch):
        chunk = rows[start : start + args.sample_batch]
        enc = tokenizer(
            [prompts[i] for i, _ in chunk],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        torch.manual_seed(args.seed + start)
        recorder = SampledLogprobs()
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=args.sample_tokens,
            eos_token_id=end_ids,
            pad_token_id=tokenizer.pad_token_id,
            logits_processor=[recorder],
        )
        new = out[:, enc["input_ids"].shape[1] :]
        step_logprobs = recorder.finish(out[:, -1])
        lengths = []
        for row in new.tolist():
            end = end_position(row, end_ids)
            lengths.append(len(row) if end is None else end)
        logprobs = [
            step_logprobs[row, : min(n + 1, new.shape[1])].mean().item()
            for row, n in enumerate(lengths)
        ]
        for row, (i, _) in enumerate(chunk):
            text = tokenizer.decode(new[row, : lengths[row]], skip_special_tokens=True).strip()
            samples[i].append({"text": text, "mean_logprob": logprobs[row], "tokens": lengths[row]})
        done = start + len(chunk)
        rate = done / (time.perf_counter() - t0)
        print(f"pairs: {done}/{len(rows)} samples ({rate:.1f}/s)", flush=True)
    pairs = []
    for record, drawn in zip(records, samples, strict=True):
        rejected = pick_rejected(drawn)
        pairs.append(
            {
                "prompt": [{"role": "user", "content": _user_turn(record)}],
                "chosen": [{"role": "assistant", "content": record["output"].strip()}],
                "rejected": [{"role": "assistant", "content": rejected["text"]}],
                "rejected_mean_logprob": rejected["mean_logprob"],
                "samples": drawn,
            }
        )
    return pairs


def load_task_pairs(
    path: Path, counts: str, tokenizer: Any, max_length: int, seed: int
) -> list[dict[str, Any]]:
    """Draw task pairs per kind; keep only those whose prompt and longer answer fit
    ``max_length`` tokens (so truncation never removes the answers being compared)."""
    want = {k: int(n) for k, n in (part.split("=") for part in counts.split(",") if part)}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rng = random.Random(seed)
    rng.shuffle(rows)
    taken: dict[str, int] = {}
    pairs = []
    for row in rows:
        kind = row["kind"]
        if taken.get(kind, 0) >= want.get(kind, 0):
            continue
        prompt_len = len(
            tokenizer.apply_chat_template(
                row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )
        answer_len = max(
            len(tokenizer(row[k], add_special_tokens=False)["input_ids"])
            for k in ("chosen", "rejected")
        )
        if prompt_len + answer_len + 2 > max_length:
            continue
        taken[kind] = taken.get(kind, 0) + 1
        pairs.append(
            {
                "prompt": row["prompt"],
                "chosen": [{"role": "assistant", "content": row["chosen"]}],
                "rejected": [{"role": "assistant", "content": row["rejected"]}],
                "kind": kind,
            }
        )
    return pairs


def loss_settings(sft_weight: float) -> dict[str, Any]:
    """TRL ``DPOConfig`` loss fields: plain sigmoid DPO, or DPO plus a weighted NLL term on
    the chosen answers (RPO) when ``sft_weight > 0``."""
    if sft_weight < 0:
        raise ValueError(f"--sft-weight must be >= 0, got {sft_weight}")
    if sft_weight == 0:
        return {"loss_type": ["sigmoid"]}
    return {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, sft_weight]}


def run_dpo(
    pairs: list[dict[str, Any]], tokenizer: Any, base: Path, adapter: Path, args: argparse.Namespace
) -> tuple[Any, list[dict[str, float]], float]:
    """Train the SFT adapter further with TRL's DPO; return the model, log and wall time."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    policy = _load_sft_model(base, adapter, merged=False)
    reference = _load_sft_model(base, adapter, merged=True)
    reference.eval()
    dataset = Dataset.from_list(
        [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs]
    )
    config = DPOConfig(
        output_dir=str(args.work_dir / "trainer"),
        beta=args.beta,
        **loss_settings(args.sft_weight),
        learning_rate=args.lr,
        lr_scheduler_type="linear",
        warmup_steps=args.warmup_steps,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        max_length=args.max_length,
        truncation_mode="keep_start",
        precompute_ref_log_probs=True,
        precompute_ref_batch_size=8,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        max_grad_norm=1.0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = DPOTrainer(
        model=policy,
        ref_model=reference,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    log = [entry for entry in trainer.state.log_history if "loss" in entry]
    return trainer.model, log, wall


def write_curves(log: list[dict[str, float]], output: Path) -> None:
    """Write the per-step DPO log as CSV and plot loss and reward margin."""
    keys = ["step", "loss", "rewards/margins", "rewards/accuracies", "rewards/chosen"]
    keys += ["rewards/rejected", "learning_rate"]
    rows = [{k: entry.get(k) for k in keys} for entry in log]
    with (output / "dpo_curve.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    steps = [r["step"] for r in rows]
    for ax, key in zip(axes, ["loss", "rewards/margins", "rewards/accuracies"], strict=True):
        ax.plot(steps, [r[key] for r in rows], lw=0.8)
        ax.set_title(f"DPO {key}")
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(output / "dpo_curves.png", dpi=110)


def main(argv: list[str] | None = None) -> None:
    """Run the stages that have not run yet and export the adapter."""
    args = parse_args(argv)
    from transformers import AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    work = sft._resolve(args.work_dir)
    args.work_dir = work
    work.mkdir(parents=True, exist_ok=True)
    base = ensure_demo_base(progress=print)
    tokenizer = AutoTokenizer.from_pretrained(base)
    timings: dict[str, float] = {}

    adapter = sft._resolve(args.sft_adapter) if args.sft_adapter else work / "sft"
    if not (adapter / "adapter_model.safetensors").is_file():
        t0 = time.perf_counter()
        sft.main(
            [
                *("--data", str(sft._resolve(args.data)), "--steps", str(args.sft_steps)),
                *("--output", str(adapter), "--seed", str(args.seed)),
            ]
        )
        timings["sft_s"] = round(time.perf_counter() - t0, 1)

    pairs_path = work / "pairs.jsonl"
    if not pairs_path.is_file():
        records = sft.load_records(sft._resolve(args.data))
        records = random.Random(args.seed).sample(records, args.pairs)
        t0 = time.perf_counter()
        pairs = draw_pairs(records, tokenizer, _load_sft_model(base, adapter, merged=True), args)
        timings["pairs_s"] = round(time.perf_counter() - t0, 1)
        tmp = pairs_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(p) + "\n" for p in pairs))
        tmp.replace(pairs_path)
    pairs = [json.loads(line) for line in pairs_path.read_text().splitlines()]
    print(f"{len(pairs)} preference pairs in {pairs_path}", flush=True)
    self_play = list(pairs)
    task_pairs: list[dict[str, Any]] = []
    if args.task_pairs:
        task_pairs = load_task_pairs(
            sft._resolve(args.task_pairs),
            args.task_pair_counts,
            tokenizer,
            args.max_length,
            args.seed,
        )
        print(f"{len(task_pairs)} task pairs from {args.task_pairs}", flush=True)
        pairs = self_play + task_pairs

    model, log, wall = run_dpo(pairs, tokenizer, base, adapter, args)
    timings["dpo_s"] = round(wall, 1)
    output = sft._resolve(args.output)
    sft.save_adapter(model, output)
    write_curves(log, output)
    rejected_lp = [p["rejected_mean_logprob"] for p in self_play]
    all_lp = [s["mean_logprob"] for p in self_play for s in p["samples"]]
    last = log[-10:]
    summary = {
        "command": sft.public_command("train_demo_dpo.py", sys.argv[1:]),
        "stages": {
            "sft": "train_demo_adapter.py, LoRA r=16 alpha 32 on q/k/v/o/gate/up/down",
            "pairs": "chosen = Alpaca reference; rejected = least confident of the SFT samples",
            "dpo": "TRL DPOTrainer, sigmoid loss"
            + (f" + {args.sft_weight} x NLL on chosen (RPO)" if args.sft_weight else "")
            + ", policy = SFT adapter, ref = merged SFT",
        },
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "trl_version": __import__("trl").__version__,
        "torch_threads": torch.get_num_threads(),
        "pairs": len(pairs),
        "self_play_pairs": len(self_play),
        "task_pairs": {
            kind: sum(1 for p in task_pairs if p["kind"] == kind)
            for kind in sorted({p["kind"] for p in task_pairs})
        },
        "samples_per_instruction": args.samples,
        "mean_logprob_all_samples": round(sum(all_lp) / len(all_lp), 4),
        "mean_logprob_rejected": round(sum(rejected_lp) / len(rejected_lp), 4),
        "dpo_steps": int(log[-1]["step"]) if log else 0,
        "final_loss_last_10": round(sum(e["loss"] for e in last) / max(1, len(last)), 4),
        "final_margin_last_10": round(
            sum(e.get("rewards/margins", 0.0) for e in last) / max(1, len(last)), 4
        ),
        "wall_time_s": timings,
    }
    for key in ("data", "work_dir", "output", "sft_adapter", "task_pairs"):
        value = getattr(args, key)
        if value is not None:
            resolved = sft._resolve(Path(value))
            if resolved.is_relative_to(REPO_ROOT):
                summary["args"][key] = str(resolved.relative_to(REPO_ROOT))
            elif key == "data":
                summary["args"][key] = "alpaca_5000.json (Alpaca subset, see the adapter card)"
    (output / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    shutil.copyfile(pairs_path, work / "pairs.used.jsonl")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
