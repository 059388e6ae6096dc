"""Checks shared by everything that names a model pair: arguments and model locations.

The adapters, the engine registry, ``ModelPair.from_pretrained`` and the command line all take
a base model plus either an aligned model or a PEFT adapter (or nothing, for the embedded demo
pair); they check those arguments and read ``.gguf`` paths through these two functions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["KWARG_NAMES", "check_pair_args", "split_model_ref"]

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
