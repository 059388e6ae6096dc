"""Helpers shared by the ``baco`` subcommands (``generate``, ``demo``, ``eval``, ``serve``).

Each subcommand module imports these from here, so no subcommand module imports another.
"""

from __future__ import annotations

import argparse
from typing import Any

from .loading import check_pair_args

__all__ = [
    "DTYPES",
    "PAIR_FLAGS",
    "HelpFormatter",
    "add_model_args",
    "check_generation_options",
    "load_pair",
    "remote_pair",
    "set_torch_threads",
]

#: Choices of ``--dtype``.
DTYPES = ("auto", "float32", "bfloat16", "float16")
#: The pair arguments as the command line spells them (for error messages).
PAIR_FLAGS: tuple[str, str, str] = ("--base", "--aligned", "--aligned-adapter")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Plain-text help: descriptions as written, and every option's default shown (unless
    its help already shows it as ``(default: ...)`` or the default is unset)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "(default: " not in text
            and "%(default)" not in text
            and action.default is not None
            and action.default is not False
            and action.default != argparse.SUPPRESS
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Add the flags every subcommand shares: the pair (``--base``, ``--aligned``,
    ``--aligned-adapter``, ``--dtype``, ``--device-map``) and ``--threads``."""
    models = parser.add_argument_group("model pair (default: the embedded demo pair)")
    models.add_argument("--base", help="base model: hub id, folder or .gguf file")
    models.add_argument("--aligned", help="aligned model: hub id, folder or .gguf file")
    models.add_argument("--aligned-adapter", help="PEFT adapter making the base aligned")
    models.add_argument(
        "--dtype", choices=DTYPES, default=None, help="weights dtype (default: the model's)"
    )
    models.add_argument("--device-map", default=None, help='e.g. "cpu", "cuda", "auto"')
    remote = parser.add_argument_group(
        "remote pair (models behind OpenAI-compatible completion servers such as vLLM; "
        "--base / --aligned then name the served models)"
    )
    remote.add_argument("--base-url", help="the base model's server, e.g. http://host:8000/v1")
    remote.add_argument("--aligned-url", help="the aligned model's server (may equal --base-url)")
    remote.add_argument("--tokenizer", help="the served models' tokenizer: hub id or folder")
    remote.add_argument(
        "--remote-mode",
        choices=("chunk", "token"),
        default="chunk",
        help="chunk: proposals checked by the other model (few requests); token: two "
        "requests per step",
    )
    remote.add_argument(
        "--remote-top-logprobs",
        type=int,
        default=20,
        help="k of the top-k distributions read from the servers (vLLM: --max-logprobs ≥ k)",
    )
    remote.add_argument("--chunk-tokens", type=int, default=8, help="tokens per proposal")
    remote.add_argument(
        "--request-timeout", type=float, default=60.0, help="seconds per server request"
    )
    remote.add_argument(
        "--no-vocabulary-check",
        dest="check_vocabulary",
        action="store_false",
        help="skip the first-use check that both servers tokenize like --tokenizer (for "
        "servers without vLLM's /tokenize)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's; 1 is much faster on a CPU shared with other "
        "busy processes)",
    )


def load_pair(args: argparse.Namespace) -> Any:
    """The pair named by ``--base``/``--aligned``/``--aligned-adapter`` (or the demo pair),
    or, with ``--base-url``/``--aligned-url``/``--tokenizer``, a remote pair."""
    from .pair import ModelPair

    if getattr(args, "base_url", None) or getattr(args, "aligned_url", None):
        return remote_pair(args)

    dtype = None if args.dtype in (None, "auto") else args.dtype
    if args.device_map and args.device_map.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device-map {args.device_map}: CUDA is not available here")
    if check_pair_args(args.base, args.aligned, args.aligned_adapter, names=PAIR_FLAGS):
        return ModelPair.demo(dtype=dtype, device_map=args.device_map)
    return ModelPair.from_pretrained(
        args.base,
        args.aligned,
        aligned_adapter=args.aligned_adapter,
        dtype=dtype,
        device_map=args.device_map,
    )


def remote_pair(args: argparse.Namespace) -> Any:
    """The :class:`~shared_core.remote.RemotePair` of the remote flags."""
    from .remote import RemotePair

    flags = ("--base-url", "--aligned-url", "--tokenizer")
    given = (args.base_url, args.aligned_url, args.tokenizer)
    missing = [f for f, v in zip(flags, given, strict=True) if not v]
    if missing:
        raise ValueError(f"a remote pair needs {', '.join(flags)}; missing: {', '.join(missing)}")
    if args.aligned_adapter:
        raise ValueError(
            "--aligned-adapter is for local pairs: serve the adapter with the base model "
            "(vLLM: --enable-lora --lora-modules aligned=PATH) and pass --aligned aligned"
        )
    return RemotePair(
        args.base_url,
        args.aligned_url,
        tokenizer=args.tokenizer,
        base_model=args.base,
        aligned_model=args.aligned,
        mode=args.remote_mode,
        top_logprobs=args.remote_top_logprobs,
        chunk_tokens=args.chunk_tokens,
        timeout=args.request_timeout,
        check_vocabulary=getattr(args, "check_vocabulary", True),
    )


def check_generation_options(options: dict[str, Any], *, n_flag: str = "-n") -> None:
    """Validate ``options`` (``GenerationParams`` fields) before any model work.

    Errors name the command-line flag (``--max-new-tokens``, ``n_flag`` for ``n``).
    """
    from .params import GenerationParams

    try:
        GenerationParams().with_overrides(**options)
    except (TypeError, ValueError) as exc:
        name, sep, rest = str(exc).partition(" ")
        if name not in options:
            raise
        flag = n_flag if name == "n" else "--" + name.replace("_", "-")
        raise type(exc)(f"{flag}{sep}{rest}") from exc


def set_torch_threads(threads: int | None) -> None:
    """Apply ``--threads`` (``None``: torch's default); rejects values below 1."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)
