"""Type-level promises of typed events, checked by running mypy over the snippets in ``cases/``.

Each snippet is checked with the project's mypy settings (strict, the
returns plugin). A line that ends in ``# expect: <code>`` (optionally
followed by ``"<part of the message>"``) must get such an error, and every
other line must get none: a ``*_pass.py`` file has
no such lines, so it must type-check cleanly. mypy runs once for all the
snippets, through its API, with the project's cache (warm after
``make typecheck``).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest
from mypy import api

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CASES = sorted((HERE / "cases").glob("*.py"))
EXPECT = re.compile(r'#\s*expect:\s*(?P<code>[a-z-]+)(?:\s+"(?P<text>[^"]+)")?\s*$')
ERROR = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: (?P<message>.*?)(?:  \[(?P<code>[a-z-]+)\])?$")


@cache
def mypy_errors() -> dict[tuple[str, int], list[tuple[str, str]]]:
    """(file name, line) -> [(code, message)] for every error mypy reports over the cases."""
    args = [
        "--config-file",
        str(ROOT / "pyproject.toml"),
        "--cache-dir",
        str(ROOT / ".mypy_cache"),
        "--show-error-codes",
        "--no-pretty",
        "--no-error-summary",
        "--hide-error-context",
        *map(str, CASES),
    ]
    stdout, stderr, status = api.run(args)
    assert status in (0, 1), f"mypy could not run: {stderr or stdout}"
    errors: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for line in stdout.splitlines():
        found = ERROR.match(line)
        if found:
            key = (Path(found["path"]).name, int(found["line"]))
            errors.setdefault(key, []).append((found["code"] or "", found["message"]))
    return errors


def expected(case: Path) -> dict[int, tuple[str, str]]:
    """line -> (error code, a part of the message, or "") for each ``# expect: code ["text"]``."""
    return {
        number: (found["code"], found["text"] or "")
        for number, text in enumerate(case.read_text().splitlines(), start=1)
        if (found := EXPECT.search(text))
    }


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_snippet_type_checks_as_marked(case: Path) -> None:
    errors = {line: found for (name, line), found in mypy_errors().items() if name == case.name}
    wanted = expected(case)
    if case.name.endswith("_pass.py"):
        assert not wanted, "a *_pass.py snippet expects no errors"
    unexpected = {line: found for line, found in errors.items() if line not in wanted}
    assert not unexpected, f"mypy errors on lines that must type-check: {unexpected}"
    for line, (code, text) in wanted.items():
        matching = [m for c, m in errors.get(line, []) if c == code and text in m]
        assert matching, f"line {line} must fail with [{code}] {text!r}, mypy said {errors.get(line)}"


def test_every_failing_snippet_line_is_distinct() -> None:
    # One expectation per line, so one wrong call cannot hide another.
    fail_cases = [c for c in CASES if c.name.endswith("_fail.py")]
    assert fail_cases and all(expected(c) for c in fail_cases)
