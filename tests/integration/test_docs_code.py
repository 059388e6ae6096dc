"""Every Python code block of the README and the docs runs as written.

A file's blocks run in order in one namespace, as a reader would paste them (top-level
``await`` included). The fast run swaps the models for the tiny random pair: the embedded
demo pair (no models given), the hub ids and the placeholder paths the docs use all load the
tiny pair, and the ``baco serve`` address points at a live server over it; the slow run keeps
the real demo pair and swaps only what cannot exist offline (hub ids, placeholder paths,
the server address).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llguidance", reason="the docs' structured-output blocks need it")
pytest.importorskip("langchain_openai", reason="the README's client block needs the client extra")

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "docs/langchain.md", "docs/llama_index.md"]
SERVER_URL = "http://127.0.0.1:8000/v1"
#: Models the docs name that this machine cannot load, and the tiny folders that stand in.
STAND_INS = {
    "meta-llama/Meta-Llama-3-8B": "base",
    "meta-llama/Meta-Llama-3-8B-Instruct": "aligned",
    "path/to/base": "base",
    "path/to/instruct": "aligned",
    "path/to/lora": "adapter",
    "meta-llama/Llama-3.1-70B-Instruct": "aligned",
}
#: The completion servers the docs' remote-pair blocks name, answered by in-process fakes.
REMOTE_URLS = ("http://gpu-a:8001/v1", "http://gpu-b:8002/v1")

sys.path.insert(0, str(Path(__file__).parent / "serve"))


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """``(line, source)`` of every fenced ``python`` block of a Markdown file."""
    blocks, lines = [], path.read_text(encoding="utf-8").splitlines()
    start = None
    for number, line in enumerate(lines, 1):
        if start is None and line.strip() == "```python":
            start = number
        elif start is not None and line.strip() == "```":
            blocks.append((start, textwrap.dedent("\n".join(lines[start : number - 1]))))
            start = None
    return blocks


def run_blocks(path: Path, replace: dict[str, str]) -> dict[str, Any]:
    """Run ``path``'s blocks in order in one namespace (returned); an error names the
    block's line."""
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    for line, source in python_blocks(path):
        for old, new in replace.items():
            source = source.replace(old, new)
        code = compile(source, f"{path.name}:{line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        try:
            result = eval(code, namespace)
            if inspect.iscoroutine(result):
                asyncio.run(result)
        except Exception as error:
            raise AssertionError(f"{path.name}, block at line {line}: {error!r}") from error
    return namespace


def test_every_doc_has_its_blocks_found() -> None:
    counts = {doc: len(python_blocks(ROOT / doc)) for doc in DOCS}
    assert all(count >= 5 for count in counts.values()), counts


@pytest.fixture
def stand_ins(
    tiny_tool_pair_paths: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """Hub ids and placeholder paths load tiny folders; a fresh engine cache and settings."""
    from llama_index.core import Settings

    from shared_core import registry
    from shared_core.pair import ModelPair
    from shared_core.testing import save_tiny_adapter

    base, aligned = map(str, tiny_tool_pair_paths)
    folders = {"base": base, "aligned": aligned}
    folders["adapter"] = str(save_tiny_adapter(base, tmp_path / "adapter"))
    load = ModelPair.from_pretrained.__func__

    def from_pretrained(cls: type, base_ref: Any, aligned_ref: Any = None, **kwargs: Any) -> Any:
        base_ref = folders.get(STAND_INS.get(str(base_ref), ""), base_ref)
        if aligned_ref is not None:
            aligned_ref = folders.get(STAND_INS.get(str(aligned_ref), ""), aligned_ref)
        adapter = kwargs.get("aligned_adapter")
        if adapter is not None:
            kwargs["aligned_adapter"] = folders.get(STAND_INS.get(str(adapter), ""), adapter)
        kwargs.pop("device_map", None)  # "auto" on a CPU machine: the default placement
        return load(cls, base_ref, aligned_ref, **kwargs)

    monkeypatch.setattr(ModelPair, "from_pretrained", classmethod(from_pretrained))
    from shared_core import remote

    load_tokenizer = remote._load_tokenizer
    monkeypatch.setattr(
        remote,
        "_load_tokenizer",
        lambda ref: load_tokenizer(folders.get(STAND_INS.get(str(ref), ""), ref)),
    )
    monkeypatch.setattr(registry, "_ENGINES", {})
    monkeypatch.setattr(Settings, "_llm", None)
    return folders


@pytest.fixture
def demo_server(stand_ins: dict[str, str]) -> Iterator[str]:
    """``baco serve`` over whatever the demo pair loads as, answering to ``baco:demo``."""
    from serve_helpers import run_server

    from shared_core.registry import get_engine

    with run_server(get_engine(), model_name="baco:demo") as live:
        yield live.base_url


@pytest.fixture
def remote_servers(stand_ins: dict[str, str]) -> Iterator[dict[str, str]]:
    """Fake completion servers for the remote-pair blocks: doc URL -> live URL."""
    from shared_core.pair import ModelPair
    from shared_core.testing_server import FakeCompletionServer

    pair = ModelPair.from_pretrained(stand_ins["base"], stand_ins["aligned"])
    common = {"end_ids": pair.end_ids, "max_model_len": 2048, "tokenizer": pair.tokenizer}
    with (
        FakeCompletionServer(pair.base, name="base", **common) as base,
        FakeCompletionServer(pair.aligned, name="aligned", **common) as al,
    ):
        yield dict(zip(REMOTE_URLS, (base.url, al.url), strict=True))


def _live_urls(doc: str, request: Any) -> dict[str, str]:
    """Doc URLs that must point at live servers, and where they point."""
    text = (ROOT / doc).read_text()
    replace = {}
    if SERVER_URL in text:
        replace[SERVER_URL] = request.getfixturevalue("demo_server")
    if any(url in text for url in REMOTE_URLS):
        replace.update(request.getfixturevalue("remote_servers"))
    return replace


@pytest.mark.parametrize("doc", DOCS)
def test_doc_blocks_run_on_the_tiny_pair(
    doc: str, stand_ins: dict[str, str], monkeypatch: pytest.MonkeyPatch, request: Any
) -> None:
    from shared_core.pair import ModelPair

    base, aligned = stand_ins["base"], stand_ins["aligned"]
    monkeypatch.setattr(
        ModelPair, "demo", classmethod(lambda cls, **_: ModelPair.from_pretrained(base, aligned))
    )
    run_blocks(ROOT / doc, _live_urls(doc, request))


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS)
def test_doc_blocks_run_on_the_demo_pair(doc: str, stand_ins: dict[str, str], request: Any) -> None:
    namespace = run_blocks(ROOT / doc, _live_urls(doc, request))
    if doc == "README.md":  # the structured-output pattern keeps its promise on this pair
        ideas, idea_class = namespace["ideas"], namespace["Idea"]
        assert len(ideas) == 8 and all(isinstance(idea, idea_class) for idea in ideas)
