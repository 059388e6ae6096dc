"""Checks shared by everything that names a model pair: arguments and model locations.

The adapters, the engine registry, ``ModelPair.from_pretrained`` and the command line all take
a base model plus either an aligned model or a PEFT adapter (or nothing, for the embedded demo
pair); they check those arguments and read ``.gguf`` paths through these two functions.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "KWARG_NAMES",
    "check_pair_args",
    "hub_offline",
    "hub_unreachable_reason",
    "split_model_ref",
]

#: How the three pair arguments are called in keyword APIs (adapters, registry).
KWARG_NAMES: tuple[str, str, str] = ("base_model", "aligned_model", "aligned_adapter")


def check_pair_args(
    base: Any,
    aligned: Any,
    aligned_adapter: Any,
    *,
    names: tuple[str, str, str] = KWARG_NAMES,
    demo: bool = True,
) -> bool:
    """Check that a base model comes with exactly one aligned source; True for the demo pair.

    ``names`` are the three arguments as the caller's user spells them (keyword names, or
    flags such as ``("--base", "--aligned", "--aligned-adapter")``). With ``demo`` (the
    default), giving none of the three means the embedded demo pair and returns True;
    otherwise a missing base is an error too. Raises ``ValueError`` naming what is missing.
    """
    base_name, aligned_name, adapter_name = names
    if aligned is not None and aligned_adapter is not None:
        raise ValueError(f"pass exactly one of {aligned_name} or {adapter_name}, not both")
    given = aligned if aligned is not None else aligned_adapter
    or_demo = ", or omit both to use the embedded demo pair" if demo else ""
    if base is None:
        if given is None and demo:
            return True
        shown = "" if given is None else f" with an aligned model ({os.fspath(given)!r})"
        raise ValueError(
            f"{base_name} is required{shown}: pass the base model the aligned model was "
            f"tuned from{or_demo}"
        )
    if given is None:
        raise ValueError(
            f"got {base_name} {os.fspath(base)!r} but no aligned model: pass exactly one of "
            f"{aligned_name} or {adapter_name} (its instruction-tuned counterpart with the "
            f"same tokenizer, or a PEFT adapter on the base){or_demo}"
        )
    return False


def split_model_ref(ref: str | os.PathLike[str]) -> tuple[str, dict[str, str]]:
    """Where ``from_pretrained`` should look for ``ref``, and the extra keywords it needs.

    ``/dir/model.gguf`` -> (``/dir``, ``{"gguf_file": "model.gguf"}``); a local folder or a
    hub id such as ``org/name`` is returned unchanged. Raises ``FileNotFoundError`` for a
    ``.gguf`` file or a folder path (``/…``, ``./…``, ``~/…``, ``a/b/c``) that does not exist.
    """
    text = os.fspath(ref)
    path = Path(text).expanduser()
    if text.lower().endswith(".gguf"):
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {text}")
        return str(path.parent), {"gguf_file": path.name}
    if path.exists():
        return str(path), {}
    if text.startswith(("/", ".", "~")) or text.count("/") > 1:
        raise FileNotFoundError(f"model folder not found: {text}")
    return text, {}  # a hub id such as "org/name"


#: Seconds a connection to the Hugging Face Hub may take before the Hub counts as unreachable.
HUB_PROBE_TIMEOUT = 3.0
_hub_probes: dict[str, tuple[float, str | None]] = {}


def hub_unreachable_reason(timeout: float | None = None) -> str | None:
    """Why the Hugging Face Hub cannot be reached now, or ``None`` when it can.

    ``HF_HUB_OFFLINE`` counts as unreachable; otherwise one TCP connection to the Hub's
    endpoint (``HF_ENDPOINT``) is tried for ``timeout`` seconds (default
    :data:`HUB_PROBE_TIMEOUT`; name resolution included). An answer is remembered for a minute.
    Loading a hub id then searches only the local Hub cache and fails in seconds, instead of
    huggingface_hub retrying every file for most of a minute.
    """
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true"}:
        return "HF_HUB_OFFLINE is set"
    endpoint = constants.ENDPOINT
    known = _hub_probes.get(endpoint)
    if known is not None and time.monotonic() - known[0] < 60:
        return known[1]
    wait = HUB_PROBE_TIMEOUT if timeout is None else timeout
    url = urlsplit(endpoint)
    host, port = url.hostname or "", url.port or (80 if url.scheme == "http" else 443)
    outcome: list[str | None] = []

    def connect() -> None:
        import socket

        try:
            socket.create_connection((host, port), timeout=wait).close()
            outcome.append(None)
        except Exception as exc:  # any failure to connect: unreachable
            outcome.append(f"{type(exc).__name__}: {exc}")

    probe = threading.Thread(target=connect, daemon=True, name="baco-hub-probe")
    probe.start()
    probe.join(wait)
    reason = outcome[0] if outcome else f"no answer within {wait:g} s"
    if reason is not None:
        reason = f"the Hugging Face Hub at {endpoint} is unreachable ({reason})"
    _hub_probes[endpoint] = (time.monotonic(), reason)
    return reason


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """huggingface_hub's offline mode for the duration of a load (the Hub is unreachable
    anyway): transformers also asks the Hub for files it was not told to fetch with
    ``local_files_only`` (e.g. an ``adapter_config.json``), each after five retries."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before
