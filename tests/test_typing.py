"""The type-level promises, checked by mypy like returns' own type-safety suite.

Every file in ``tests/typing/`` is a program mypy checks with the project's
settings (``--strict`` and the returns plugin): a line ending in
``# E: <code>`` must fail with that error code (``# E: <code> "<text>"``, or
``'<text>'`` for a text holding double quotes: with a message containing the
text), every other line must pass. The cases cover
job bodies, pipelines, results, services (of every kind), storage layers, typed events,
workflows, each client verb's exact error union (``verbs_*.py``) and the guides' typing
claims that no other case holds (``doc_claims.py``).
The python blocks of the pages in `TYPED_PAGES` are checked the same way (no
line may fail), so the "Jobs as pipelines" guide is type-checked as well as run.

One mypy run covers every case (with mypy's cache, a few seconds once warm). Its
cache is its own (``.mypy_cache/typing``, not the one ``mypy djobs`` writes), and a
lock on it makes a second run wait (another xdist worker, another pytest session
in the same tree): mypy's cache is not made for two processes writing it at once.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mypy import api
from test_docs import parse

ROOT = Path(__file__).resolve().parent.parent
CASES = sorted((ROOT / "tests" / "typing").glob("*.py"))
#: Doc pages whose python blocks must type-check, as one module per page.
TYPED_PAGES = [ROOT / "README.md", ROOT / "docs" / "guides" / "pipelines.md"]

_EXPECTED = re.compile(r"""#\s*E:\s*(?P<code>[a-z-]+)(?:\s+(?:"(?P<text>[^"]+)"|'(?P<quoted>[^']+)'))?""")
_REPORTED = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): error: (?P<message>.*)  \[(?P<code>[a-z-]+)\]$")

Errors = dict[tuple[str, int], set[str]]
#: (file, line) -> the messages mypy gave there, per error code.
Messages = dict[tuple[str, int], dict[str, list[str]]]


def _expected(path: Path) -> Errors:
    expected: Errors = defaultdict(set)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        for match in _EXPECTED.finditer(line):
            expected[(str(path), number)].add(match["code"])
    return expected


def _expected_texts(path: Path) -> dict[int, list[tuple[str, str]]]:
    """line -> [(code, a part of the message)] for each ``# E: code "text"``."""
    texts: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        for match in _EXPECTED.finditer(line):
            if text := match["text"] or match["quoted"]:
                texts[number].append((match["code"], text))
    return texts


def _page_module(page: Path, into: Path) -> tuple[Path, list[int]]:
    """The page's setup and python blocks as one module; and each module line's line in the page."""
    lines: list[str] = []
    where: list[int] = []
    for block in parse(page):
        for offset, text in enumerate(block.source.splitlines()):
            lines.append(text)
            where.append(block.line + offset)
        lines.append("")
        where.append(block.line)
    module = into / f"page_{page.stem}.py"
    module.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return module, where


#: The cases' own mypy cache.
CACHE = ROOT / ".mypy_cache" / "typing"


@contextmanager
def _cache_held() -> Iterator[None]:
    """Hold `CACHE` for one mypy run: a run elsewhere waits for this one (POSIX; elsewhere, no lock)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(CACHE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Errors, dict[str, tuple[Path, list[int]]], Messages]:
    pages_dir = tmp_path_factory.mktemp("typed_pages")
    pages = {str(module): (page, where) for page in TYPED_PAGES for module, where in [_page_module(page, pages_dir)]}
    with _cache_held():
        stdout, stderr, _ = api.run(
            [
                "--config-file",
                str(ROOT / "pyproject.toml"),
                "--cache-dir",
                str(CACHE),
                "--no-error-summary",
                "--hide-error-context",
                "--no-pretty",
                *[str(path) for path in CASES],
                *pages,
            ]
        )
    assert not stderr, stderr
    errors: Errors = defaultdict(set)
    messages: Messages = defaultdict(lambda: defaultdict(list))
    for line in stdout.splitlines():
        match = _REPORTED.match(line)
        if match:
            path = Path(match["file"])
            path = path if path.is_absolute() else ROOT / path
            errors[(str(path), int(match["line"]))].add(match["code"])
            messages[(str(path), int(match["line"]))][match["code"]].append(match["message"])
        elif ": error:" in line:
            raise AssertionError(f"unparsed mypy output: {line}")
    return errors, pages, messages


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_typing_case(case: Path, reported: tuple[Errors, dict[str, tuple[Path, list[int]]], Messages]) -> None:
    errors, _, messages = reported
    got = {key: codes for key, codes in errors.items() if key[0] == str(case)}
    want = _expected(case)
    unexpected = {f"line {line}: {sorted(codes - want.get((f, line), set()))}" for (f, line), codes in got.items()}
    unexpected = {u for u in unexpected if not u.endswith("[]")}
    missing = {
        f"line {line}: {sorted(codes - got.get((f, line), set()))}"
        for (f, line), codes in want.items()
        if codes - got.get((f, line), set())
    }
    assert not unexpected, f"{case.name}: mypy reported errors no case expects: {sorted(unexpected)}"
    assert not missing, f"{case.name}: these lines must fail mypy with these codes, but did not: {sorted(missing)}"
    for line, wanted in _expected_texts(case).items():
        for code, text in wanted:
            said = messages.get((str(case), line), {}).get(code, [])
            assert any(text in m for m in said), (
                f"{case.name}:{line} must fail with [{code}] {text!r}; mypy said {said}"
            )


def test_cases_expect_failures_and_passes() -> None:
    """The suite is not vacuous: some cases must fail, and the files hold more than the failing lines."""
    expected = [key for case in CASES for key in _expected(case)]
    assert len(expected) >= 10
    assert sum(len(case.read_text().splitlines()) for case in CASES) > 5 * len(expected)


@pytest.mark.parametrize("page", TYPED_PAGES, ids=[p.stem for p in TYPED_PAGES])
def test_doc_page_type_checks(page: Path, reported: tuple[Errors, dict[str, tuple[Path, list[int]]], Messages]) -> None:
    errors, pages, _ = reported
    [(module, (_, where))] = [(m, v) for m, v in pages.items() if v[0] == page]
    found = [f"{page.name}:{where[line - 1]}: {sorted(codes)}" for (f, line), codes in errors.items() if f == module]
    assert not found, f"mypy --strict finds errors in the page's examples: {found}"
