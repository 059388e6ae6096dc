"""Every shell command in the README and the docs is valid as written.

The Python blocks run in ``tests/integration/test_docs_code.py``; shell blocks install
packages, download models or start servers, so here each command is checked the way the
tool it calls would check it, without running it: ``baco`` lines parse with baco's own
parser (flags exist, values have the right type), install lines name extras that exist,
example lines name scripts and flags that exist, test lines name test paths and markers
that exist. Commands of other projects (``vllm``) are out of scope and listed as such.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "docs/langchain.md", "docs/llama_index.md"]
SHELL_FENCES = {"```bash", "```sh", "```shell", "```console"}
#: Tools of other projects whose flags baco does not own.
FOREIGN = {"vllm"}


def shell_commands(path: Path) -> list[tuple[int, list[str]]]:
    """``(line, argv)`` of each command of each shell block: continuation lines joined,
    comments dropped, ``a && b`` split, ``[optional]`` brackets opened."""
    commands: list[tuple[int, list[str]]] = []
    in_block, pending, start = False, "", 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if not in_block:
            in_block = stripped in SHELL_FENCES
            continue
        if stripped == "```":
            in_block = False
            continue
        text = line.split(" #", 1)[0].rstrip() if not stripped.startswith("#") else ""
        if not pending:
            start = number
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        full, pending = (pending + text).strip(), ""
        for part in full.split("&&"):
            argv = shlex.split(re.sub(r"(^|\s)\[|\](?=\s|$)", " ", part))
            if argv:
                commands.append((start, argv))
    return commands


def all_commands() -> list[tuple[str, list[str]]]:
    return [(f"{doc}:{line}", argv) for doc in DOCS for line, argv in shell_commands(ROOT / doc)]


def _program(argv: list[str]) -> str:
    return Path(argv[0]).name


PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def check_baco(argv: list[str]) -> None:
    from shared_core.cli import build_parser

    try:
        build_parser().parse_args(argv[1:])
    except SystemExit as exit_:
        raise AssertionError(f"baco refuses {shlex.join(argv)}") from exit_


def check_install(argv: list[str]) -> None:
    if argv[:2] == ["bash", "scripts/install.sh"]:
        wanted = argv[2].split(",")
    else:  # pip install -e ".[a,b]"
        spec = next(arg for arg in argv if arg.startswith(".["))
        wanted = spec[2:-1].split(",")
    missing = set(wanted) - set(PYPROJECT["project"]["optional-dependencies"])
    assert not missing, f"{shlex.join(argv)}: no such extra {sorted(missing)}"


def check_example(argv: list[str]) -> None:
    script = ROOT / argv[1]
    assert script.is_file(), f"{argv[1]} does not exist"
    source = script.read_text()
    for flag in (arg for arg in argv[2:] if arg.startswith("--")):
        assert f'"{flag}"' in source, f"{argv[1]} has no {flag} option"


def check_pytest(argv: list[str]) -> None:
    args = argv[argv.index("pytest") + 1 :]
    markers = PYPROJECT["tool"]["pytest"]["ini_options"]["markers"]
    known = {entry.split(":")[0] for entry in markers}
    for index, arg in enumerate(args):
        if arg == "-m":
            names = set(re.findall(r"[a-z_]+", args[index + 1])) - {"not", "and", "or"}
            assert names <= known, f"unknown marker in {shlex.join(argv)}"
        elif not arg.startswith("-") and args[index - 1] != "-m":
            assert (ROOT / arg).exists(), f"{arg} does not exist"


def check_ray_serve(argv: list[str]) -> None:
    module, _, attribute = argv[2].partition(":")
    path = ROOT / (module.replace(".", "/") + ".py")
    assert path.is_file() and f"def {attribute}(" in path.read_text(), argv[2]
    pytest.importorskip("ray.serve", reason="the ray extra is not installed")
    from shared_core.serve.ray_app import BUILD_ARGS

    names = {arg.split("=", 1)[0] for arg in argv[3:]}
    assert names <= set(BUILD_ARGS), f"unknown build_app arguments {names - set(BUILD_ARGS)}"


def check(argv: list[str]) -> str:
    """Check one command; return the kind it was checked as."""
    program = _program(argv)
    if program == "baco":
        check_baco(argv)
        return "baco"
    if argv[:2] == ["bash", "scripts/install.sh"] or argv[:3] == ["pip", "install", "-e"]:
        check_install(argv)
        return "install"
    if program in ("python", "python3") and argv[1].startswith("examples/"):
        check_example(argv)
        return "example"
    if "pytest" in argv:
        check_pytest(argv)
        return "pytest"
    if argv[:2] == ["serve", "run"]:
        check_ray_serve(argv)
        return "ray"
    if program in FOREIGN:
        return "foreign"
    raise AssertionError(f"no check for {shlex.join(argv)}: add one")


@pytest.mark.parametrize(("where", "argv"), all_commands(), ids=lambda value: str(value)[:60])
def test_doc_command_is_valid_as_written(where: str, argv: list[str]) -> None:
    check(argv)


def test_the_checks_catch_a_wrong_command() -> None:
    assert len(all_commands()) >= 15
    for wrong in (
        ["baco", "generate", "Hi", "--gama", "0.3"],
        ["baco", "demo", "--threads", "one"],
        ["bash", "scripts/install.sh", "demo,evals"],
        ["python", "examples/brainstorm.py", "--no-such-flag"],
        [".venv/bin/python", "-m", "pytest", "tests/unit/nowhere"],
        ["pip", "install", "-e", ".[langchian]"],
    ):
        with pytest.raises(AssertionError):
            check(wrong)


def _requirement_closure(extras: list[str]) -> set[str]:
    """Distributions that ``pip install -e ".[extras]"`` installs: baco's dependencies and the
    extras' (self-references followed), then what those declare, transitively (as far as
    they are installed here to be read)."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = PYPROJECT["project"]
    optional = project["optional-dependencies"]
    todo = list(project["dependencies"]) + [r for extra in extras for r in optional[extra]]
    seen: set[str] = set()
    while todo:
        requirement = Requirement(todo.pop())
        name = canonicalize_name(requirement.name)
        if name == "baco":
            todo += [r for extra in requirement.extras for r in optional[extra]]
            continue
        if name in seen:
            continue
        seen.add(name)
        try:
            declared = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in declared:
            nested = Requirement(line)
            extras_asked = requirement.extras or {""}
            if nested.marker is None or any(
                nested.marker.evaluate({"extra": e}) for e in extras_asked
            ):
                todo.append(line)
    return seen


def test_the_serve_sections_install_line_covers_its_client_snippets() -> None:
    """After the Serving section's install command, the README's client snippets import: each
    module they import comes from a distribution that command installs."""
    from importlib import metadata

    from packaging.utils import canonicalize_name

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Serving") :]
    section = section[: section.index("\n## ", 1)]
    install = next(
        argv for _, argv in shell_commands_of(section) if argv[:2] == ["bash", "scripts/install.sh"]
    )
    closure = _requirement_closure(install[2].split(","))
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    modules = {
        m
        for block in blocks
        if "/v1" in block
        for m in re.findall(r"^(?:from|import) ([\w.]+)", block, re.MULTILINE)
    }
    assert {"langchain_openai", "llama_index.llms.openai_like"} <= modules
    owners = metadata.packages_distributions()
    for module in sorted(modules):
        top = module.split(".")[0]
        if top in {"shared_core", "langchain_baco", "llama_index_baco"}:
            continue
        dists = {canonicalize_name(d) for d in owners.get(top, [])}
        if top == "llama_index":  # a namespace: the distribution named after the module
            dists = {canonicalize_name("llama-index-" + module.split(".", 1)[1].replace(".", "-"))}
        assert dists & closure, (
            f"the README's client snippet imports {module}, which "
            f"`{shlex.join(install)}` does not install"
        )


def shell_commands_of(text: str) -> list[tuple[int, list[str]]]:
    """``shell_commands`` for a piece of Markdown instead of a file."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".md", delete=False) as handle:
        handle.write(text)
    try:
        return shell_commands(Path(handle.name))
    finally:
        Path(handle.name).unlink()
