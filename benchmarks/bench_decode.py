"""Decode-speed benchmark: BACO vs the aligned model's own ``generate``, in one run.

Every variant runs in its own subprocess (so peak memory is its own) on the same prompts with
the same ``n``, ``max_new_tokens``, dtype and sampling settings (``top_p``, temperature 1).
All variants are forced to generate exactly ``max_new_tokens`` tokens per sample
(``min_new_tokens``), so tokens/s compare like with like. Prints a table and writes JSON.
On a shared machine, ``--rounds 3`` runs the variant list three times in turn and reports
each variant's median round (every round's tokens/s is in the JSON).

    python benchmarks/bench_decode.py                     # demo pair, CPU, n=8, 128 tokens
    python benchmarks/bench_decode.py --tiny --max-new-tokens 32   # quick smoke run
    # GPU: random-weight Llama configs in bf16, n in {1, 8, 32}, with the roofline share
    for n in 1 8 32; do python benchmarks/bench_decode.py --arch llama-1b --n $n --roofline \
        --variants aligned_generate,baco_two_models,baco_one_weights,baco_one_weights_no_joint \
        --out benchmarks/results/bench_decode_gpu_llama1b_n$n.json; done

Variants:
  aligned_generate      aligned model alone, ``generate(num_return_sequences=n)`` (the baseline)
  baco_two_models       BACO, base and aligned as two separate models (adapter merged), the
                        eager engine loop (``DecodeOptions(graph=False)``)
  baco_two_models_graph the graph path (``DecodeOptions(graph=True)``): static KV caches, the
                        step compiled with inductor (and replayed as a CUDA graph on a GPU);
                        ``compile_s`` (the first calls minus the same calls warm: compile +
                        capture) is reported apart; "× eager" compares it with the same
                        pair's eager loop (``baco_two_models`` / ``baco_one_weights``)
  baco_one_weights_graph  the graph path on a one-weights pair: both views in one batch
                        as a fixed row split (adapter delta on the aligned half only,
                        shared_core/lora_split.py); ``path`` in the JSON says which ran
  baco_one_weights      BACO, one set of weights (base + LoRA): both views in one forward per
                        step, the adapter switched per row (peft mixed-adapter batch)
  baco_one_weights_no_joint   the same with two forwards per step (adapter toggled)
  baco_two_models_lazy  BACO two models, aligned model caught up lazily in chunks (batch 1 only:
                        run with --n 1 --prompts 1; opt-in, skips the aligned stop guard in
                        base spans)
  baco_no_prefill_share BACO two models, each sample prefilled separately (optimisation off)
  baco_compact / baco_no_compact   rows end naturally (no min_new_tokens); compaction on/off
  *_bf16                the same under bf16 autocast (changes numerics; opt-in)
  aligned_generate_static_compiled  the baseline with transformers' static KV cache and its
                        decode step compiled (``torch.compile``, mode "default" on CPU; what a
                        static-cache + compiled-step engine could gain on this device)
  reference_loop        one sample at a time, both models, Python routing (what research code
                        usually does), the peer users would otherwise copy

Grammar mask cost (structured output): ``--mask-cost`` measures, at ``--n`` rows (64 by
default there) with the demo pair's 262k vocabulary, the per-step cost of the allowed-token
mask alone (llguidance fill of every row + unpack into one bool tensor + masked_fill of the
logits) in three grammar states, and whole decodes free vs constrained (same steps):

    python benchmarks/bench_decode.py --mask-cost --n 64 --max-new-tokens 12
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

PROMPTS = [
    "Give me a name for a new coffee shop, and say why in one sentence.",
    "Write the opening sentence of a fantasy story.",
]
VARIANTS = [
    "aligned_generate",
    "baco_two_models",
    "baco_two_models_graph",
    "baco_one_weights_graph",
    "baco_one_weights",
    "baco_one_weights_no_joint",
    "baco_two_models_lazy",
    "baco_no_prefill_share",
    "baco_compact",
    "baco_no_compact",
    "aligned_generate_static_compiled",
    "aligned_generate_bf16",
    "baco_two_models_bf16",
    "baco_one_weights_bf16",
    "reference_loop",
]


#: Llama-style configs for the GPU runs (random weights): (hidden, layers, heads, kv heads,
#: MLP width, vocabulary). "mini" is a CPU smoke-test size with the same code path; "mid"
#: (8 layers x 512 hidden) the CPU size of benchmarks/bench_concurrency.py.
ARCHS = {
    "llama-1b": (2048, 16, 32, 8, 8192, 128256),
    "llama-8b": (4096, 32, 32, 8, 14336, 128256),
    "mini": (256, 4, 8, 2, 768, 32000),
    "mid": (512, 8, 8, 2, 1536, 32000),
}


def fixed_length_request(n: int, tokens: int) -> dict[str, Any]:
    """The BACO request the graph-path scripts time: ``n`` samples of exactly ``tokens``
    tokens each, p-punc γ 0.3, top-p 0.95, seed 0."""
    return {
        "n": n,
        "max_new_tokens": tokens,
        "min_new_tokens": tokens,
        "top_p": 0.95,
        "seed": 0,
        "router": "p-punc",
        "gamma": 0.3,
    }


def eager_and_graph_engines(pair: Any, graph_backend: str) -> dict[str, Any]:
    """Two engines on ``pair``: ``"eager loop"`` and ``"graph path"`` (compiled with
    ``graph_backend``), neither batching requests."""
    from shared_core import BacoEngine
    from shared_core.engine import DecodeOptions

    return {
        name: BacoEngine(
            pair,
            # warm-up decodes wait for their compile, so timed ones find it ready
            options=DecodeOptions(
                batch_requests=False, graph=graph, graph_backend=graph_backend, graph_wait=True
            ),
        )
        for name, graph in (("eager loop", False), ("graph path", True))
    }


def random_pair(arch: str, one_weights: bool):
    """A base + aligned pair with random weights and a real architecture's shapes.

    Two models: two random initialisations. One weights: one model plus a random rank-16 LoRA
    on every projection (the aligned view), the base view with the adapter disabled. The
    tokenizer is the tiny test tokenizer; the output layer keeps the full vocabulary, so the
    weights read per step are the real model's.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from shared_core import ModelPair
    from shared_core.pair import AdapterDisabledModel
    from shared_core.testing import build_tiny_tokenizer

    hidden, layers, heads, kv_heads, mlp, vocab = ARCHS[arch]
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=mlp,
        max_position_embeddings=4096,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32

    def build(seed: int):
        torch.manual_seed(seed)
        with torch.device(device):
            return LlamaForCausalLM(config).to(dtype).eval()

    tokenizer = build_tiny_tokenizer()
    base = build(1)
    if not one_weights:
        return ModelPair(base, build(2), tokenizer)
    import peft

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = peft.LoraConfig(r=16, lora_alpha=32, target_modules=targets, init_lora_weights=False)
    aligned = peft.get_peft_model(base, lora).eval()
    return ModelPair(AdapterDisabledModel(aligned), aligned, tokenizer)


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def measured_bandwidth(device: torch.device) -> float:
    """Device memory bandwidth (bytes/s) measured with a 1 GiB copy (read + write)."""
    size = 2**30 if device.type == "cuda" else 2**28
    src = torch.empty(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    _sync(device)
    start = time.perf_counter()
    reps = 10
    for _ in range(reps):
        dst.copy_(src)
    _sync(device)
    return 2 * size * reps / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def load_pair(args: argparse.Namespace, one_weights: bool):
    from shared_core import ModelPair

    if args.arch:
        return random_pair(args.arch, one_weights)
    if args.tiny:
        from shared_core.testing import save_tiny_pair

        folder = Path(args.out).parent / "tiny_pair"
        if not (folder / "base").exists():
            save_tiny_pair(folder)
        return ModelPair.from_pretrained(folder / "base", folder / "aligned")
    return ModelPair.demo(one_weights=one_weights)


def run_variant(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Time one variant in this process; returns its measurements."""
    from shared_core import BacoEngine
    from shared_core.engine import DecodeOptions

    torch.manual_seed(0)
    bf16 = name.endswith("_bf16")
    base_name = name.removesuffix("_bf16")
    pair = load_pair(args, one_weights=not base_name.startswith("baco_two_models"))
    graph = base_name.endswith("_graph")
    autocast = torch.autocast(pair.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    n, new = args.n, args.max_new_tokens
    common = {
        "n": n,
        "max_new_tokens": new,
        "top_p": args.top_p,
        "seed": 0,
        "router": args.router,
        "gamma": args.gamma,
    }
    if base_name != "baco_compact" and base_name != "baco_no_compact":
        common["min_new_tokens"] = new
    result: dict[str, Any] = {"variant": name}

    if base_name == "aligned_generate":
        run = lambda tokens: aligned_generate(pair, n, tokens, args.top_p)  # noqa: E731
    elif base_name == "aligned_generate_static_compiled":
        run = lambda tokens: aligned_generate(pair, n, tokens, args.top_p, compiled=True)  # noqa: E731
    elif base_name == "reference_loop":
        run = lambda tokens: reference_loop(pair, n, tokens, args)  # noqa: E731
    else:
        options = DecodeOptions(
            share_prefill=base_name != "baco_no_prefill_share",
            compact_finished=base_name != "baco_no_compact",
            joint_forward=base_name != "baco_one_weights_no_joint",
            lazy_aligned=base_name == "baco_two_models_lazy",
            graph=graph,
            graph_backend=args.graph_backend,
            graph_wait=True,
        )
        engine = BacoEngine(pair, options=options)

        def run(tokens: int) -> tuple[int, float]:
            start, first, count = time.perf_counter(), None, 0
            for event in engine.stream(
                PROMPTS,
                **{
                    **common,
                    "max_new_tokens": tokens,
                    "min_new_tokens": min(tokens, common.get("min_new_tokens", 0)),
                },
            ):
                if event.token_id is not None:
                    count += 1
                    first = first or time.perf_counter() - start
            return count, first or 0.0

    with torch.inference_mode(), autocast:
        start = time.perf_counter()
        run(2)  # warm-up
        if "compiled" in name or graph:  # compile for both timed shapes before timing
            run(1)
            run(new)
            result["first_calls_s"] = time.perf_counter() - start
            start = time.perf_counter()
            run(2)
            result["warm_calls_s"] = time.perf_counter() - start
        start = time.perf_counter()
        _, ttft = run(1)
        result["prefill_s"] = time.perf_counter() - start
        result["ttft_s"] = ttft
        start = time.perf_counter()
        tokens, _ = run(new)
        seconds = time.perf_counter() - start
    if "first_calls_s" in result:  # the first calls minus the same calls once compiled
        warm = result.pop("warm_calls_s") + result["prefill_s"] + seconds
        result["compile_s"] = max(0.0, result["first_calls_s"] - warm)
    if graph:
        result["path"] = "graph" if engine._graphs._free else "eager (fallback)"
    result.update(
        tokens=tokens,
        seconds=seconds,
        tokens_per_s=tokens / seconds,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    if args.roofline:
        result.update(roofline(pair, base_name, n * len(PROMPTS), new, seconds))
    if torch.cuda.is_available():
        result["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def roofline(pair, variant: str, rows: int, new: int, seconds: float) -> dict[str, float]:
    """Share of the memory-bandwidth roofline: bytes that must be read per decode step
    (the weights of every model the variant runs, once, plus the KV cache of every row at
    the mean context length) over the measured step time, against the measured bandwidth."""
    from shared_core.memory import kv_bytes_per_token
    from shared_core.prompts import chat_template_ids, normalise_messages

    if variant in ("aligned_generate", "aligned_generate_static_compiled"):
        models = [pair.aligned]
    elif pair.shares_weights and variant != "baco_one_weights_no_joint":
        models = [pair.aligned]  # one read of the shared weights (+ LoRA) serves both views
    else:
        models = [pair.base, pair.aligned]
    prompt = max(len(chat_template_ids(pair.tokenizer, normalise_messages(p))) for p in PROMPTS)
    context = prompt + new / 2
    views = 2 if variant.startswith("baco") or variant == "reference_loop" else 1
    kv_rows = rows * views
    per_step = sum(weight_bytes(m) for m in models) + kv_rows * context * (
        kv_bytes_per_token(pair.aligned)
    )
    if variant == "reference_loop":
        per_step *= rows  # every sample is its own batch-1 decode
    step_s = seconds / new
    bandwidth = measured_bandwidth(pair.device)
    return {
        "bytes_per_step": per_step,
        "step_s": step_s,
        "bandwidth_gb_s": bandwidth / 1e9,
        "roofline_pct": 100 * per_step / step_s / bandwidth,
    }


def aligned_generate(
    pair, n: int, new: int, top_p: float, compiled: bool = False
) -> tuple[int, float]:
    """The baseline: transformers ``generate`` on the aligned model alone.

    ``compiled``: static KV cache and a compiled decode step (transformers' own compile path,
    enabled on every device, CUDA graphs only on CUDA).
    """
    extra: dict[str, Any] = {}
    if compiled:
        from transformers import CompileConfig

        config = CompileConfig(mode="reduce-overhead" if pair.device.type == "cuda" else "default")
        config._compile_all_devices = True
        extra = {"cache_implementation": "static", "compile_config": config}
    from shared_core.prompts import chat_template_ids, normalise_messages

    tokenizer = pair.tokenizer
    ids = [chat_template_ids(tokenizer, normalise_messages(p)) for p in PROMPTS]
    width = max(map(len, ids))
    pad = pair.end_ids[0]
    input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids], device=pair.device)
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=pair.device)
    first: list[float] = []
    start = time.perf_counter()

    class FirstToken:
        calls = 0

        def put(self, value):
            FirstToken.calls += 1
            if FirstToken.calls == 2:
                first.append(time.perf_counter() - start)

        def end(self):
            pass

    out = pair.aligned.generate(
        input_ids=input_ids,
        attention_mask=mask,
        do_sample=True,
        top_p=top_p,
        temperature=1.0,
        top_k=0,
        num_return_sequences=n,
        max_new_tokens=new,
        min_new_tokens=new,
        pad_token_id=pad,
        streamer=FirstToken() if len(PROMPTS) == 1 else None,
        **extra,
    )
    return (out.shape[1] - width) * out.shape[0], first[0] if first else 0.0


def reference_loop(pair, n: int, new: int, args) -> tuple[int, float]:
    """One sample at a time, both models stepped with their own caches, routing in Python."""
    from shared_core.forward import run_with_cache
    from shared_core.prompts import base_prompt_ids, chat_template_ids, normalise_messages
    from shared_core.vocab import VocabTables

    vocab: VocabTables = pair.vocab
    device = pair.device
    count, start, first = 0, time.perf_counter(), None
    for prompt in PROMPTS:
        messages = normalise_messages(prompt)
        aligned_ids = chat_template_ids(pair.tokenizer, messages)
        base_ids = base_prompt_ids(pair.base_tokenizer, messages, pair.base_template)
        for _ in range(n):
            out_a, cache_a = run_with_cache(
                pair.aligned,
                None,
                input_ids=torch.tensor([aligned_ids], device=device),
                use_cache=True,
            )
            out_b, cache_b = run_with_cache(
                pair.base, None, input_ids=torch.tensor([base_ids], device=device), use_cache=True
            )
            owner_base = False
            for step in range(new):
                logits_a = out_a.logits[0, -1, : vocab.size].float()
                logits_b = out_b.logits[0, -1, : vocab.size].float()
                probs_a, probs_b = torch.softmax(logits_a, -1), torch.softmax(logits_b, -1)
                p_base = probs_b.max().item()
                top1 = int(probs_b.argmax())
                route = p_base < args.gamma and not bool(vocab.is_punct[top1])
                tok_a = int(torch.multinomial(_top_p(probs_a, args.top_p), 1))
                tok_b = int(torch.multinomial(_top_p(probs_b, args.top_p), 1))
                boundary = bool(vocab.is_word_start[tok_a]) and bool(vocab.is_word_start[tok_b])
                if step > 0 and boundary:
                    owner_base = route
                token = tok_b if owner_base else tok_a
                count += 1
                first = first or time.perf_counter() - start
                nxt = torch.tensor([[token]], device=device)
                out_a, cache_a = run_with_cache(
                    pair.aligned, cache_a, input_ids=nxt, use_cache=True
                )
                out_b, cache_b = run_with_cache(pair.base, cache_b, input_ids=nxt, use_cache=True)
    return count, first or 0.0


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_probs, index = torch.sort(probs, descending=True)
    keep = (sorted_probs.cumsum(-1) - sorted_probs) < top_p
    return torch.zeros_like(probs).scatter(0, index, sorted_probs * keep)


#: Grammars for --mask-cost that cannot finish within the measured steps.
MASK_SCHEMAS = {
    "string": {
        "type": "object",
        "properties": {"text": {"type": "string", "minLength": 4000}},
        "required": ["text"],
    },
    "integers": {"type": "array", "items": {"type": "integer"}, "minItems": 2000},
}


def mask_cost(args: argparse.Namespace) -> dict[str, Any]:
    """Per-step cost of the grammar mask at ``args.n`` rows vs free decoding (see docstring)."""
    from shared_core import BacoEngine
    from shared_core.structured import RowMatchers, json_schema_constraint

    pair = load_pair(args, one_weights=False)
    vocab, tokenizer, rows = pair.vocab, pair.tokenizer, args.n
    out: dict[str, Any] = {"rows": rows, "vocab": vocab.size}
    states = {  # grammar, text already written by every row
        "object key": (MASK_SCHEMAS["string"], '{"'),
        "inside a string": (MASK_SCHEMAS["string"], '{"text": "Once upon a time'),
        "integer list": (MASK_SCHEMAS["integers"], "[12, 7, 3"),
    }
    logits = torch.randn(rows, vocab.size, device=pair.device)
    for label, (schema, prefix) in states.items():
        matchers = RowMatchers(
            json_schema_constraint(schema),
            tokenizer,
            vocab.end_ids,
            rows,
            vocab.never_generate,
            vocab.is_end,
        )
        ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        for row in range(rows):
            for token in ids:
                matchers.advance(row, token)
        active = list(range(rows))
        for _ in range(3):  # warm-up
            matchers.allowed(active, pair.device)
        reps = 20
        _sync(pair.device)
        start = time.perf_counter()
        for _ in range(reps):
            allowed = matchers.allowed(active, pair.device)
        _sync(pair.device)
        fill = (time.perf_counter() - start) / reps
        start = time.perf_counter()
        for _ in range(reps):
            masked = logits.masked_fill(vocab.never_generate | ~allowed, float("-inf"))
        _sync(pair.device)
        apply = (time.perf_counter() - start) / reps
        out[label] = {
            "fill_and_unpack_ms": fill * 1e3,
            "apply_ms": apply * 1e3,
            "allowed_tokens": int(allowed[0].sum()),
        }
        assert masked.shape == logits.shape
        print(f"{label}: fill+unpack {fill * 1e3:.2f} ms, apply {apply * 1e3:.2f} ms", flush=True)
    engine = BacoEngine(pair)
    steps = args.max_new_tokens
    common = {
        "n": rows,
        "max_new_tokens": steps,
        "min_new_tokens": steps,
        "top_p": args.top_p,
        "router": args.router,
        "gamma": args.gamma,
        "seed": 0,
    }
    engine.generate(PROMPTS[0], **{**common, "n": 2, "max_new_tokens": 2, "min_new_tokens": 2})
    for label, schema in (("free", None), *MASK_SCHEMAS.items()):
        _sync(pair.device)
        start = time.perf_counter()
        result = engine.generate(PROMPTS[0], json_schema=schema, **common)[0]
        _sync(pair.device)
        seconds = time.perf_counter() - start
        made = sum(len(g.token_ids) for g in result) / rows
        out[f"decode_{label}"] = {"seconds": seconds, "steps": made, "s_per_step": seconds / made}
        print(f"decode {label}: {seconds / made * 1e3:.0f} ms/step over {made:.0f} steps")
    free = out["decode_free"]["s_per_step"]
    for label in MASK_SCHEMAS:
        extra = out[f"decode_{label}"]["s_per_step"] - free
        out[f"decode_{label}"]["extra_ms_per_step"] = extra * 1e3
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--router", default="p-punc")
    parser.add_argument("--gamma", type=float, default=0.3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--tiny", action="store_true", help="tiny random pair (smoke test)")
    parser.add_argument("--out", default="benchmarks/out/bench_decode.json")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--prompts", type=int, default=2, help="how many built-in prompts")
    parser.add_argument(
        "--arch",
        choices=sorted(ARCHS),
        help="random-weight pair with this Llama config (bf16 on GPU) instead of the demo pair",
    )
    parser.add_argument(
        "--roofline", action="store_true", help="report %% of the memory-bandwidth roofline"
    )
    parser.add_argument(
        "--mask-cost", action="store_true", help="grammar-mask cost per step (structured output)"
    )
    parser.add_argument(
        "--graph-backend",
        default="inductor",
        help="torch.compile backend of the *_graph variants (eager: static caches, no compile)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the variant list this many times in turn and report each variant's median",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    PROMPTS[:] = PROMPTS[: args.prompts]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mask_cost:
        result = mask_cost(args)
        result["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        result["threads"] = torch.get_num_threads()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
        return
    if args.one:
        print(json.dumps(run_variant(args.one, args)))
        return
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    names = args.variants.split(",")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_index in range(args.rounds):  # A B C A B C …: slow drifts hit every variant
        for name in names:
            cmd = [sys.executable, __file__, "--one", name, *sys.argv[1:]]
            done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
            if done.returncode != 0:
                print(f"{name}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            speed = runs[name][-1]["tokens_per_s"]
            print(f"done {name} (round {round_index + 1}): {speed:.1f} tok/s", file=sys.stderr)
    rows = []
    for name in names:  # each variant's median round, with every round's speed
        if runs[name]:
            ordered = sorted(runs[name], key=lambda r: r["tokens_per_s"])
            row = ordered[(len(ordered) - 1) // 2]
            row["tokens_per_s_rounds"] = [r["tokens_per_s"] for r in runs[name]]
            rows.append(row)
    baseline = {r["variant"]: r for r in rows}
    for row in rows:
        ref = baseline.get(
            "aligned_generate_bf16" if row["variant"].endswith("_bf16") else "aligned_generate"
        )
        row["ratio_vs_aligned_generate"] = (
            row["tokens_per_s"] / ref["tokens_per_s"] if ref else None
        )
        # a graph variant against the same pair's eager loop, the others against two models
        eager = row["variant"].removesuffix("_graph")
        eager = eager if eager != row["variant"] and eager in baseline else "baco_two_models"
        for key, other in (
            ("ratio_vs_static_compiled", "aligned_generate_static_compiled"),
            ("ratio_vs_eager_engine", eager),
        ):
            ref = baseline.get(other)
            row[key] = row["tokens_per_s"] / ref["tokens_per_s"] if ref else None
    header = (
        f"{'variant':<34}{'tok/s':>9}{'× aligned':>11}{'× compiled':>12}{'× eager':>9}"
        f"{'compile s':>11}{'TTFT s':>9}{'prefill s':>11}{'peak RSS MB':>13}"
        + (f"{'roofline %':>11}" if args.roofline else "")
    )
    print(header)

    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    for r in rows:
        roof = f"{r['roofline_pct']:>11.1f}" if "roofline_pct" in r else ""
        compile_s = f"{r['compile_s']:.1f}" if "compile_s" in r else "-"
        print(
            f"{r['variant']:<34}{r['tokens_per_s']:>9.1f}"
            f"{ratio(r['ratio_vs_aligned_generate']):>11}{ratio(r['ratio_vs_static_compiled']):>12}"
            f"{ratio(r['ratio_vs_eager_engine']):>9}{compile_s:>11}"
            f"{r['ttft_s']:>9.2f}{r['prefill_s']:>11.2f}{r['peak_rss_mb']:>13.0f}{roof}"
        )
    meta = {
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "top_p": args.top_p,
        "router": args.router,
        "gamma": args.gamma,
        "prompts": PROMPTS,
        "pair": args.arch or ("tiny" if args.tiny else "demo"),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "graph_backend": args.graph_backend,
        "rounds": args.rounds,
    }
    Path(args.out).write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
