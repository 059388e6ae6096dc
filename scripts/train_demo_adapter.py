"""Train the demo LoRA SFT adapter that turns gemma-3-270m into the demo "aligned" model.

Recipe: LoRA r=16 (alpha 32, dropout 0.05) on every projection matrix
(q, k, v, o, gate, up, down) of the demo base from ``shared_core.demo_models``, supervised
fine-tuning on an Alpaca subset in Gemma's chat format (user turn = instruction + optional
input; model turn = output followed by ``<end_of_turn>``), loss on the response tokens only,
bf16 autocast, per-batch padding, AdamW with linear warmup then linear decay, fixed seed.

Data: Stanford Alpaca (52,002 instruction/input/output examples generated with OpenAI's
text-davinci-003; github.com/tatsu-lab/stanford_alpaca, also ``tatsu-lab/alpaca`` on the
Hugging Face Hub), licensed **CC BY-NC 4.0**, so the resulting adapter is for research use only.
baco does not redistribute it: pass your copy with ``--data``, either the repository's
``alpaca_data.json`` (a JSON list) or a JSON-lines export of the Hub dataset, e.g.
``datasets.load_dataset("tatsu-lab/alpaca")["train"].to_json("alpaca.jsonl")``.
The shipped adapter was trained on a 5000-row random subset of ``alpaca_data.json`` (commit
5e69c50; sha256 of that subset file in the adapter card); ``--sample 5000`` draws a comparable
subset from the full set with ``--seed``.

Example (the command that produced the shipped adapter is in its README)::

    python scripts/train_demo_adapter.py --data alpaca_data.json --sample 5000 --steps 300
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from shared_core.demo_models import demo_adapter_path, ensure_demo_base  # noqa: E402

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
END_OF_TURN = "<end_of_turn>"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate")
    p.add_argument("--batch-size", type=int, default=4, help="examples per step")
    p.add_argument("--seed", type=int, default=1234, help="seed for data order, init, dropout")
    p.add_argument("--max-length", type=int, default=256, help="truncate examples to this")
    p.add_argument("--warmup-steps", type=int, default=20, help="linear warmup steps")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument(
        "--no-group-by-length",
        action="store_true",
        help="plain random batches instead of batches of similar length",
    )
    p.add_argument("--log-every", type=int, default=10, help="log the mean loss every N steps")
    p.add_argument("--save-every", type=int, default=50, help="save the adapter every N steps")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="Alpaca data (instruction/input/output records) as a JSON list or JSON lines: "
        "alpaca_data.json from github.com/tatsu-lab/stanford_alpaca or an export of "
        "tatsu-lab/alpaca from the Hugging Face Hub (CC BY-NC 4.0); relative paths are "
        "resolved against the repo root",
    )
    p.add_argument(
        "--sample",
        type=int,
        default=None,
        help="train on N records drawn at random (with --seed) from --data; default: all "
        "(the first SFT used a 5000-record subset); 0: none, only --task-data",
    )
    p.add_argument(
        "--task-data",
        type=Path,
        nargs="*",
        default=[],
        help="task-format examples (JSON lines {messages, response}, from "
        "scripts/build_demo_task_data.py) mixed into the Alpaca data",
    )
    p.add_argument(
        "--task-repeat",
        type=str,
        default="",
        help="comma-separated kind=N: repeat examples of that kind N times (e.g. rewrite=2)",
    )
    p.add_argument(
        "--init-adapter",
        type=Path,
        default=None,
        help="continue training this LoRA adapter instead of a fresh one (e.g. an earlier SFT)",
    )
    p.add_argument("--output", type=Path, default=demo_adapter_path(), help="adapter folder")
    p.add_argument("--base", type=Path, default=None, help="base model folder (default: demo)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p.parse_args(argv)


def _resolve(path: Path) -> Path:
    """Resolve a relative path against the repository root."""
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


def public_name(value: str | Path) -> str:
    """How a record names a path: relative to the repository when inside it, else by its
    folder and file name (``alpaca/alpaca_5000.json``), never a path of this machine."""
    text = str(value)
    if not (text.startswith(("/", "../", "~")) or "/../" in text):
        return text
    resolved = _resolve(Path(text).expanduser())
    if resolved.is_relative_to(REPO_ROOT):
        return str(resolved.relative_to(REPO_ROOT))
    return f"{resolved.parent.name}/{resolved.name}" if resolved.parent.name else resolved.name


def public_command(script: str, argv: list[str]) -> str:
    """The command line as a record shows it: every path argument through ``public_name``."""
    return " ".join(["python", f"scripts/{script}", *(public_name(a) for a in argv)])


def load_records(path: Path, sample: int | None = None, seed: int = 0) -> list[dict[str, str]]:
    """Read Alpaca records from a JSON list or JSON lines; optionally draw ``sample`` of them."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        records = json.loads(text)
    else:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    for number, rec in enumerate(records):
        if not isinstance(rec, dict) or not isinstance(rec.get("instruction"), str):
            raise ValueError(f"{path}: record {number} has no 'instruction' string")
        if not isinstance(rec.get("output"), str):
            raise ValueError(f"{path}: record {number} has no 'output' string")
    if sample == 0:
        return []  # task data only (--task-data)
    if sample is not None:
        if not 1 <= sample <= len(records):
            raise ValueError(f"--sample must be in [1, {len(records)}], got {sample}")
        records = random.Random(seed).sample(records, sample)
    return records


def build_examples(records: list[dict[str, str]], tokenizer: Any, max_length: int) -> list[dict]:
    """Tokenize Alpaca records into ``input_ids``/``labels`` with the prompt masked out."""
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    examples: list[dict] = []
    for rec in records:
        instruction = rec["instruction"].strip()
        extra = (rec.get("input") or "").strip()
        user = f"{instruction}\n\n{extra}" if extra else instruction
        prompt_ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        prompt_ids = list(prompt_ids)
        response_ids = tokenizer(rec["output"].strip(), add_special_tokens=False)["input_ids"]
        response_ids = [*response_ids, eot]
        if len(prompt_ids) + 8 > max_length:
            continue  # prompt leaves no room for a response
        ids = (prompt_ids + response_ids)[:max_length]
        labels = ([-100] * len(prompt_ids) + response_ids)[:max_length]
        examples.append({"input_ids": ids, "labels": labels})
    return examples


def load_task_examples(
    paths: list[Path], tokenizer: Any, max_length: int, repeat: dict[str, int] | None = None
) -> list[dict]:
    """Tokenize task examples ``{messages, response}``: the conversation (system, user, tool
    turns, exactly as the engine renders it) through the chat template with the generation
    prompt, then the response and ``<end_of_turn>``; loss on the response only."""
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    examples: list[dict] = []
    repeat = repeat or {}
    for path in paths:
        for line in _resolve(path).read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            prompt_ids = list(
                tokenizer.apply_chat_template(
                    rec["messages"], add_generation_prompt=True, tokenize=True, return_dict=False
                )
            )
            response_ids = [
                *tokenizer(rec["response"], add_special_tokens=False)["input_ids"],
                eot,
            ]
            if len(prompt_ids) + len(response_ids) > max_length:
                continue  # never cut a task answer
            example = {
                "input_ids": prompt_ids + response_ids,
                "labels": [-100] * len(prompt_ids) + response_ids,
                "kind": rec.get("kind", "task"),
            }
            examples += [example] * repeat.get(example["kind"], 1)
    return examples


def collate(batch: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its own longest example."""
    width = max(len(ex["input_ids"]) for ex in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, ex in enumerate(batch):
        n = len(ex["input_ids"])
        ids[i, :n] = torch.tensor(ex["input_ids"])
        labels[i, :n] = torch.tensor(ex["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def response_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over response tokens.

    The LM head (262k-token vocabulary) is applied only to positions whose next token is
    labelled, which keeps memory and time far below a full ``logits`` tensor.
    """
    causal_lm = model.get_base_model()
    hidden = causal_lm.model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    logits = causal_lm.lm_head(hidden[:, :-1][keep]).float()
    cap = getattr(causal_lm.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits, targets[keep])


def batch_schedule(
    lengths: list[int], batch_size: int, steps: int, seed: int, group: bool = True
) -> list[list[int]]:
    """Return ``steps`` batches of example indices, reshuffling at every epoch.

    With ``group``, each epoch's shuffled order is cut into chunks of 16 batches, each chunk
    is sorted by length and split into batches, and the batches are shuffled again: batches
    then hold examples of similar length, so per-batch padding wastes little compute.
    """
    rng = random.Random(seed)
    batches: list[list[int]] = []
    while len(batches) < steps:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        epoch: list[list[int]] = []
        chunk = batch_size * 16 if group else batch_size
        for start in range(0, len(order) - batch_size + 1, chunk):
            part = order[start : start + chunk]
            if group:
                part.sort(key=lambda i: lengths[i])
            epoch.extend(
                part[i : i + batch_size] for i in range(0, len(part) - batch_size + 1, batch_size)
            )
        rng.shuffle(epoch)
        batches.extend(epoch)
    return batches[:steps]


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup to 1, then linear decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def save_adapter(model: Any, output: Path) -> None:
    """Save only ``adapter_model.safetensors`` and ``adapter_config.json`` into ``output``.

    peft's ``save_pretrained`` also writes or rewrites a README model card; saving to a
    temporary folder first keeps the hand-written card in ``output`` untouched.
    """
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        cfg_path = Path(tmp) / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = "google/gemma-3-270m"  # not the local cache path
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            shutil.copyfile(Path(tmp) / name, output / f".{name}.tmp")
            (output / f".{name}.tmp").replace(output / name)


def main(argv: list[str] | None = None) -> None:
    """Train and save the adapter."""
    args = parse_args(argv)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    base = args.base or ensure_demo_base(progress=print)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(device)
    model.config.use_cache = False
    lora = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=TARGET_MODULES,
        bias="none",
        task_type="CAUSAL_LM",
    )
    if args.init_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, _resolve(args.init_adapter), is_trainable=True)
    else:
        model = get_peft_model(model, lora)
    model.print_trainable_parameters()
    model.train()

    if args.data is None and not args.task_data:
        raise SystemExit("nothing to train on: give --data and/or --task-data")
    data_path = _resolve(args.data) if args.data is not None else None
    records = load_records(data_path, args.sample, args.seed) if data_path else []
    examples = build_examples(records, tokenizer, args.max_length)
    print(f"{len(examples)} Alpaca examples from {data_path} (max_length={args.max_length})")
    repeat = {
        kind: int(n)
        for kind, n in (part.split("=") for part in args.task_repeat.split(",") if part)
    }
    task_examples = load_task_examples(args.task_data, tokenizer, args.max_length, repeat)
    if task_examples:
        kinds: dict[str, int] = {}
        for ex in task_examples:
            kinds[ex["kind"]] = kinds.get(ex["kind"], 0) + 1
        print(f"{len(task_examples)} task examples {kinds}")
        examples = examples + task_examples
    lengths = [len(ex["input_ids"]) for ex in examples]
    schedule = batch_schedule(
        lengths, args.batch_size, args.steps, args.seed, group=not args.no_group_by_length
    )

    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    output = _resolve(args.output)
    output.mkdir(parents=True, exist_ok=True)
    curve_path = output / "loss_curve.csv"
    curve: list[dict[str, float]] = []

    window, t0 = [], time.perf_counter()
    for step in range(args.steps):
        batch_ex = [examples[i] for i in schedule[step]]
        batch = {k: v.to(device) for k, v in collate(batch_ex, tokenizer.pad_token_id).items()}
        for group in optim.param_groups:
            group["lr"] = args.lr * lr_factor(step, args.warmup_steps, args.steps)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            loss = response_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        value = loss.item()
        if not math.isfinite(value):
            raise RuntimeError(f"non-finite loss at step {step + 1}")
        window.append(value)
        elapsed = time.perf_counter() - t0
        curve.append(
            {
                "step": step + 1,
                "loss": round(value, 5),
                "lr": optim.param_groups[0]["lr"],
                "elapsed_s": round(elapsed, 1),
            }
        )
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            mean = sum(window) / len(window)
            print(
                f"step {step + 1:4d}/{args.steps}  loss {mean:.4f}  "
                f"lr {optim.param_groups[0]['lr']:.2e}  {elapsed:7.1f}s",
                flush=True,
            )
            window = []
            with curve_path.open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(curve[0]))
                writer.writeheader()
                writer.writerows(curve)
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            save_adapter(model, output)

    wall = time.perf_counter() - t0
    last = curve[-min(len(curve), args.log_every) :]
    summary = {
        "command": public_command("train_demo_adapter.py", sys.argv[1:]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "examples": len(examples),
        "task_examples": len(task_examples),
        "steps": args.steps,
        "wall_time_s": round(wall, 1),
        "final_loss_last_window": round(sum(r["loss"] for r in last) / len(last), 4),
    }
    summary["args"]["task_data"] = [p.name for p in args.task_data]
    for key in ("output", "data", "base", "init_adapter"):
        value = getattr(args, key)
        if value is not None:
            summary["args"][key] = public_name(value)
    (output / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
