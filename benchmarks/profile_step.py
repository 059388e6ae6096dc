"""Per-step host work of a BACO decode: eager loop vs graph path, counted with torch.profiler.

For each path, one decode of ``--n`` samples × 2 prompts × ``--max-new-tokens`` tokens is run
once to warm up (compile, capture) and once under ``torch.profiler``; the table gives, per
decode step, the ATen operators dispatched from Python, the host synchronisations (a
``.item()``/``.tolist()`` read: ``aten::_local_scalar_dense``; on CUDA also stream/event/device
synchronisations), the same per graph chunk (``graph_sync_every`` steps) split into blocking
stream/device syncs (the graph path should have none) and event waits (one per chunk read is
the design) and, on CUDA, kernel and graph launches and the summed kernel time, beside
the wall time of an unprofiled run of the same decode. The counts do not depend on what else
the machine is doing; the times do. Writes JSON.

    python benchmarks/profile_step.py --arch mini --n 32 --max-new-tokens 32
    python benchmarks/profile_step.py --arch mini --n 32 --one-weights   # base + LoRA pair
    python benchmarks/profile_step.py --arch llama-1b --n 32      # on a GPU
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_decode import PROMPTS, eager_and_graph_engines, fixed_length_request, random_pair

SYNC_EVENTS = ("aten::_local_scalar_dense",)
CUDA_SYNC_EVENTS = ("cudaStreamSynchronize", "cudaEventSynchronize", "cudaDeviceSynchronize")
EVENT_WAITS = ("cudaEventSynchronize",)
LAUNCH_EVENTS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch")


def profile(engine, options: dict, steps: int) -> dict[str, float]:
    import time

    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    list(engine.stream(PROMPTS, **options))  # warm-up: compile, capture, caches
    cuda = torch.cuda.is_available()
    start = time.perf_counter()
    list(engine.stream(PROMPTS, **options))  # timed without the profiler's overhead
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    activities = [ProfilerActivity.CPU]
    if cuda:
        activities.append(ProfilerActivity.CUDA)
    with torch_profile(activities=activities) as prof:
        list(engine.stream(PROMPTS, **options))
    events = prof.events()
    counts = {"aten_ops": 0, "host_syncs": 0, "event_waits": 0, "launches": 0, "kernel_ms": 0.0}
    for event in events:
        if event.name in EVENT_WAITS:
            counts["event_waits"] += 1
        name = event.name
        if name.startswith("aten::") and event.cpu_parent is None:
            counts["aten_ops"] += 1
        if name in SYNC_EVENTS or name in CUDA_SYNC_EVENTS:
            counts["host_syncs"] += 1
        if name in LAUNCH_EVENTS:
            counts["launches"] += 1
        if getattr(event, "device_type", None) == DeviceType.CUDA:
            counts["kernel_ms"] += (getattr(event, "device_time", 0.0) or 0.0) / 1000
    per_step = {key: value / steps for key, value in counts.items()}
    per_step["wall_ms"] = 1000 * wall / steps
    chunks = -(-(steps - 1) // engine.options.graph_sync_every)  # step 0 is eager
    per_step["blocking_syncs_per_chunk"] = (counts["host_syncs"] - counts["event_waits"]) / chunks
    per_step["event_waits_per_chunk"] = counts["event_waits"] / chunks
    return per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="mini")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--graph-backend", default="inductor")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--one-weights",
        action="store_true",
        help="a base + LoRA pair (eager: peft mixed batches; graph: the row split)",
    )
    parser.add_argument("--out", default="benchmarks/out/profile_step.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pair = random_pair(args.arch, one_weights=args.one_weights)
    options = fixed_length_request(args.n, args.max_new_tokens)
    with torch.inference_mode():
        rows = {
            name: profile(engine, options, args.max_new_tokens)
            for name, engine in eager_and_graph_engines(pair, args.graph_backend).items()
        }
    print(
        f"{'per decode step':<16}{'ATen ops':>10}{'host syncs':>12}{'launches':>10}"
        f"{'kernel ms':>11}{'wall ms':>9}{'blocking/chunk':>16}{'event waits/chunk':>19}"
    )
    for name, row in rows.items():
        print(
            f"{name:<16}{row['aten_ops']:>10.1f}{row['host_syncs']:>12.2f}{row['launches']:>10.1f}"
            f"{row['kernel_ms']:>11.2f}{row['wall_ms']:>9.2f}"
            f"{row['blocking_syncs_per_chunk']:>16.2f}{row['event_waits_per_chunk']:>19.2f}"
        )
    meta = {
        "arch": args.arch,
        "one_weights": args.one_weights,
        "rows": args.n * len(PROMPTS),
        "steps": args.max_new_tokens,
        "graph_backend": args.graph_backend,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "per_step": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
