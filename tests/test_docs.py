"""Every ```python block of the docs and the README runs here, so the docs cannot drift from the code.

The convention (for maintainers: docs/design.md, "Docs are tested"):

- A page's python blocks run in order, in one module namespace per page, in a
  fresh temporary working directory (the quick start writes ``jobs.db``).
- A hidden setup may come first: an HTML comment ``<!-- setup ... -->`` whose
  body is python (fakes such as ``ping`` or ``FakeTokenApi``). The rendered
  page does not show it. Setups run where they stand in the page.
- A block that calls ``trio.run(...)`` at its top level runs as written, on
  the real clock: that is the quick start, which a reader copies into a file
  and runs, so it must end within seconds.
- Otherwise, every ``async def main()`` and ``async def test_*()`` (or plain
  ``def test_*()``) a block defines is then run by this harness with
  ``trio.run`` under ``trio.testing.MockClock(autojump_threshold=0)``: a
  virtual day costs nothing. Parameters are filled by name: ``autojump_clock``
  (that clock), ``djobs_test_engine`` (`open_test_engine`) and ``tmp_path``.
  ``if __name__ == "__main__": trio.run(main)`` does not run (the page's
  module is not ``__main__``), so such a ``main`` is run by the harness too.
- A ``main`` still running after 10 virtual minutes gets Ctrl-C (SIGINT),
  as a person would press it: a ``main`` that serves until stopped must
  handle it and return. A ``test_*`` gets Ctrl-C after 400 virtual days.
  Either must then return normally; a KeyboardInterrupt is a failure.
- The same module is type-checked (`test_the_examples_type_check`): mypy
  --strict, but functions need no annotations (their bodies are checked).
- A block opts out only with a visible reason, its title:
  ```` ```python title="Not tested: needs a real telemetry collector" ````.
  At most `MAX_OPT_OUTS` blocks in the whole site may do so.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import inspect
import logging
import os
import pkgutil
import re
import signal
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import djobs
from djobs.testing import open_test_engine

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])

#: Opt-outs are for the few examples that need the outside world; keep them rare.
MAX_OPT_OUTS = 3
OPT_OUT = "Not tested:"

#: Virtual seconds before the harness presses Ctrl-C, and how long it then waits.
MAIN_BUDGET = 10 * 60
TEST_BUDGET = 400 * 24 * 3600
AFTER_CTRL_C = 10 * 60

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_SETUP = re.compile(r"^\s*<!--\s*setup\s*$")
_TITLE = re.compile(r'title="(?P<title>[^"]*)"')


@dataclass(frozen=True)
class Block:
    """One runnable piece of a page: a fenced python block or a hidden setup."""

    page: Path
    line: int  # the line of the block's first line of code, 1-based
    source: str
    kind: str  # "python" or "setup"
    title: str | None = None

    @property
    def opted_out(self) -> bool:
        return self.title is not None and self.title.startswith(OPT_OUT)

    @property
    def where(self) -> str:
        return f"{_shown(self.page)}:{self.line}"


def _shown(page: Path) -> str:
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else str(page)


def parse(page: Path) -> list[Block]:
    """The python blocks and setup comments of `page`, in order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if _SETUP.match(lines[i]):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "-->"), None)
            assert end is not None, f"{_shown(page)}:{i + 1}: a setup comment needs a closing '-->' line"
            blocks.append(Block(page, i + 2, "\n".join(lines[i + 1 : end]), "setup"))
            i = end + 1
            continue
        fence = _FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        indent, marker, info = fence["indent"], fence["fence"], fence["info"].strip()
        end = i + 1
        while end < len(lines) and not (lines[end].startswith(indent) and lines[end][len(indent) :].rstrip() == marker):
            end += 1
        language = info.split(maxsplit=1)[0] if info else ""
        if language == "python":
            title = _TITLE.search(info)
            body = [line[len(indent) :] if line.startswith(indent) else line.lstrip() for line in lines[i + 1 : end]]
            blocks.append(Block(page, i + 2, "\n".join(body), "python", title["title"] if title else None))
        i = end + 1
    return blocks


def _runs_itself(tree: ast.Module) -> bool:
    """Whether the block calls ``trio.run`` at its top level (outside defs and a ``__main__`` guard)."""
    for stmt in tree.body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        if isinstance(stmt, ast.If) and "__name__" in ast.unparse(stmt.test):
            continue
        for node in ast.walk(stmt):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "trio.run":
                return True
    return False


def _entry_points(namespace: dict[str, Any]) -> dict[str, Callable[..., Any]]:
    return {
        name: value
        for name, value in namespace.items()
        if (name == "main" or name.startswith("test_")) and inspect.isfunction(value)
    }


def _run_entry(block: Block, name: str, fn: Callable[..., Any], tmp_path: Path) -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)
    fixtures: dict[str, Any] = {"autojump_clock": clock, "djobs_test_engine": open_test_engine, "tmp_path": tmp_path}
    params = inspect.signature(fn).parameters
    unknown = [p for p, spec in params.items() if p not in fixtures and spec.default is inspect.Parameter.empty]
    assert not unknown, f"{block.where}: {name}() asks for {unknown}; the docs harness offers {sorted(fixtures)}"
    kwargs = {p: fixtures[p] for p in params if p in fixtures}
    if not inspect.iscoroutinefunction(fn):
        fn(**kwargs)
        return
    budget = MAIN_BUDGET if name == "main" else TEST_BUDGET

    async def press_ctrl_c_later() -> None:
        await trio.sleep(budget)
        signal.raise_signal(signal.SIGINT)
        await trio.sleep(AFTER_CTRL_C)
        raise AssertionError(f"{block.where}: {name}() was still running {AFTER_CTRL_C} virtual seconds after Ctrl-C")

    async def runner() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(press_ctrl_c_later)
            await fn(**kwargs)
            nursery.cancel_scope.cancel()

    try:
        trio.run(runner, clock=clock)
    except BaseExceptionGroup as group:
        if group.subgroup(KeyboardInterrupt) is not None:
            pytest.fail(
                f"{block.where}: {name}() did not return within {budget} virtual seconds and did not handle Ctrl-C"
            )
        only = _only_exception(group)
        if only is None:
            raise
        raise only from None  # the example's own error, not the harness's nursery around it


def _only_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    if len(group.exceptions) != 1:
        return None
    inner = group.exceptions[0]
    return _only_exception(inner) if isinstance(inner, BaseExceptionGroup) else inner


def _run_block(block: Block, module: types.ModuleType, tmp_path: Path) -> None:
    try:
        # Padded, so a traceback points at the line of the page.
        code = compile("\n" * (block.line - 1) + block.source, str(block.page), "exec")
    except SyntaxError as exc:
        pytest.fail(f"{block.where}: not valid python (top-level await belongs in an async def): {exc}")
    tree = ast.parse(block.source)
    before = _entry_points(module.__dict__)
    exec(code, module.__dict__)
    if block.kind == "setup" or _runs_itself(tree):
        return
    for name, fn in _entry_points(module.__dict__).items():
        if before.get(name) is not fn:
            _run_entry(block, name, fn, tmp_path)


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary working directory; the environment and the root logger are put back afterwards."""
    monkeypatch.chdir(tmp_path)
    environ = dict(os.environ)
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        yield tmp_path
    finally:
        os.environ.clear()
        os.environ.update(environ)
        root.setLevel(level)
        root.handlers[:] = handlers


def _pages_with_python() -> list[Path]:
    return [page for page in PAGES if parse(page)]


@pytest.mark.parametrize("page", _pages_with_python(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_examples_of_a_page_run(page: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "docs_" + re.sub(r"\W", "_", str(page.relative_to(ROOT)))
    module = types.ModuleType(name)
    module.__file__ = str(page)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses and msgspec look types up by module
    for block in parse(page):
        if not block.opted_out:
            _run_block(block, module, isolated)


#: mypy's options for the examples: the project's ``--strict`` (pyproject.toml), except that a
#: function need not be annotated (examples stay short) while its body is still checked, and a
#: page may define ``main`` twice (each block a program of its own).
EXAMPLE_MYPY_FLAGS = [
    "--allow-untyped-defs",
    "--allow-incomplete-defs",
    "--allow-untyped-calls",
    "--check-untyped-defs",
    "--no-warn-return-any",
    "--disable-error-code=no-redef",
    "--follow-imports=silent",
]


def test_the_examples_type_check(tmp_path: Path) -> None:
    """A page's blocks, as they run (one module, in order), pass mypy --strict: a reader's
    checked code must not fail on ``letter.error.message`` where ``error`` may be ``None``.
    Each block sits at its line of the page, so an error names the page's own line."""
    from mypy import api

    files: dict[str, Path] = {}
    for page in _pages_with_python():
        lines: list[str] = []
        for block in parse(page):
            if block.opted_out:
                continue
            lines += [""] * (block.line - 1 - len(lines))
            lines += block.source.splitlines()
        module = tmp_path / (re.sub(r"\W", "_", str(page.relative_to(ROOT))) + ".py")
        module.write_text("\n".join(lines) + "\n")
        files[module.name] = page.relative_to(ROOT)
    # No cache, read or written: another mypy run (tests/test_typing.py's, a developer's `mypy djobs`)
    # may be using the working directory's at this moment, with other options.
    out, err, status = api.run(
        ["--no-incremental", "--cache-dir", os.devnull, *EXAMPLE_MYPY_FLAGS, *map(str, sorted(tmp_path.glob("*.py")))]
    )
    for name, page in files.items():
        out = out.replace(str(tmp_path / name), str(page))
    assert status == 0, out + err


def test_opt_outs_are_rare_and_say_why() -> None:
    opted_out = [block for page in PAGES for block in parse(page) if block.opted_out]
    for block in opted_out:
        reason = block.title[len(OPT_OUT) :].strip() if block.title else ""
        assert len(reason) >= 10, f"{block.where}: an opted-out block needs a reason a reader understands"
    assert len(opted_out) <= MAX_OPT_OUTS, [block.where for block in opted_out]


def test_the_harness_finds_blocks_setups_and_opt_outs(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n"
        "<!-- setup\n"
        "fake = 1\n"
        "-->\n"
        "```python\n"
        "x = fake + 1\n"
        "```\n"
        "```bash\n"
        "make test\n"
        "```\n"
        "!!! note\n"
        "    ```python\n"
        "    y = x\n"
        "    ```\n"
        '```python title="Not tested: needs a real collector"\n'
        "z = y\n"
        "```\n",
        encoding="utf-8",
    )
    blocks = parse(page)
    assert [(b.kind, b.line, b.source, b.opted_out) for b in blocks] == [
        ("setup", 3, "fake = 1", False),
        ("python", 6, "x = fake + 1", False),
        ("python", 13, "y = x", False),
        ("python", 16, "z = y", True),
    ]
    assert _runs_itself(ast.parse("async def main():\n    pass\ntrio.run(main)\n"))
    assert not _runs_itself(ast.parse("if __name__ == '__main__':\n    trio.run(main)\n"))


def _modules_with_doctests() -> list[str]:
    # A __main__ module runs its program when imported.
    return [m.name for m in pkgutil.walk_packages(djobs.__path__, "djobs.") if not m.name.endswith(".__main__")]


@pytest.mark.parametrize("name", _modules_with_doctests())
def test_docstring_examples_run(name: str, isolated: Path) -> None:
    """The ``>>>`` examples in docstrings (rendered in the API reference) are true."""
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed; see the output above"


def test_the_api_reference_names_every_public_name() -> None:
    """Each name of ``__all__`` in djobs, djobs.testing, djobs.storage and djobs.tracking has a ``:::`` entry."""
    import djobs.storage
    import djobs.testing
    import djobs.tracking

    reference = "".join(page.read_text(encoding="utf-8") for page in sorted((ROOT / "docs" / "reference").glob("*.md")))
    documented = set(re.findall(r"^::: ([\w.]+)", reference, re.MULTILINE))
    missing = []
    for module in (djobs, djobs.testing, djobs.storage, djobs.tracking):
        for name in module.__all__:
            # A name re-exported from djobs may be documented once, as djobs.<name>.
            same = hasattr(djobs, name) and getattr(djobs, name) is getattr(module, name)
            if f"{module.__name__}.{name}" not in documented and not (same and f"djobs.{name}" in documented):
                missing.append(f"{module.__name__}.{name}")
    assert not missing, f"add these to a page of docs/reference/: {missing}"


def test_an_option_table_of_a_make_lists_every_option_it_takes() -> None:
    # continuous.md's table, presented as what Continuous.make takes, left out timeout, blocking
    # and on_exhausted: the two options that guard against a hung body among them.
    guides = Path(__file__).resolve().parent.parent / "docs" / "guides"
    tables = 0
    for page in sorted(guides.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for match in re.finditer(r"`(\w+)\.make` takes:\n\n((?:\|.*\n)+)", text):
            kind = getattr(djobs, match.group(1))
            listed = set(re.findall(r"^\| `(\w+)` \|", match.group(2), re.M))
            taken = set(inspect.signature(kind.make).parameters)
            assert taken - listed == set(), (page.name, match.group(1))
            tables += 1
    assert tables >= 1  # the check found the table it guards
