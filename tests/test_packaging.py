"""The package a reader installs is this one: the distribution name, its install lines and its license.

The name ``djobs`` on the Python package index belongs to an unrelated project,
so this project is published as ``djobs-trio`` (imported as ``djobs``). Every
install line of the README and the docs must name that distribution, or be an
install from a checkout (``pip install -e .``).
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").rglob("*.md")])
#: The package's sources: its error messages and docstrings name extras too.
SOURCES = sorted([*(ROOT / "djobs").rglob("*.py"), *(ROOT / "examples").rglob("*.py")])
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
DISTRIBUTION = "djobs-trio"

#: An install command on one line, up to its end, an inline-code backtick or a shell comment.
_INSTALL = re.compile(r"\b(?:uv[ \t]+)?pip[ \t]+install\b[^`\n#]*|\b(?:uv|poetry|pdm)[ \t]+add\b[^`\n#]*")
#: A requirement naming the package by its import name, `djobs` or `djobs[extra]` (not `djobs-trio`).
_BARE = re.compile(r"^djobs(?:\[[\w,\s-]*\])?$")


def install_lines(text: str) -> list[str]:
    """Every install command written in `text` (fenced, inline or in prose) that names what it installs.

    A command alone (prose naming `pip install` itself) installs nothing and is left out.
    """
    commands = [match.group(0).strip() for match in _INSTALL.finditer(text)]
    return [c for c in commands if _packages(c)]


def _packages(command: str) -> list[str]:
    """The arguments of an install command that are not options, unquoted."""
    try:
        words = shlex.split(command)
    except ValueError:  # an unbalanced quote: keep the words, the check below reports them
        words = command.split()
    arguments = words[3:] if words[:2] == ["uv", "pip"] else words[2:]
    return [a for a in arguments if not a.startswith("-")]


def problems_of(command: str) -> list[str]:
    """What is wrong with one install command; empty when it installs this project."""
    packages = _packages(command)
    problems = [f"{command!r} installs {p!r}, another project's name" for p in packages if _BARE.match(p)]
    from_checkout = any(p == "." or p.startswith((".[", "./")) for p in packages)
    names_us = any(re.match(rf"^{re.escape(DISTRIBUTION)}(\[[\w,\s-]*\])?([<>=!~].*)?$", p) for p in packages)
    if not (names_us or from_checkout):
        problems.append(f"{command!r} names neither {DISTRIBUTION!r} nor a checkout ('.')")
    return problems


def test_the_distribution_name_is_the_one_the_docs_install() -> None:
    assert PYPROJECT["project"]["name"] == DISTRIBUTION
    # The import name stays `djobs`: the package found is the `djobs` directory.
    assert PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"] == ["djobs*"]
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    for page in PAGES:
        for extra in re.findall(rf"{re.escape(DISTRIBUTION)}\[([\w-]+)\]", page.read_text(encoding="utf-8")):
            assert extra in extras, f"{page.relative_to(ROOT)} installs the extra {extra!r}, which pyproject lacks"


def test_every_install_line_names_the_distribution() -> None:
    found: dict[str, list[str]] = {}
    problems: list[str] = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        where = str(page.relative_to(ROOT))
        for command in install_lines(text):
            found.setdefault(where, []).append(command)
            problems += [f"{where}: {p}" for p in problems_of(command)]
        # A requirement written without the pip command, such as "install `djobs[postgres]`".
        problems += [f"{where}: {m!r} names another project" for m in re.findall(r"(?<![\w-])djobs\[[\w,-]+\]", text)]
    for source in SOURCES:
        text = source.read_text(encoding="utf-8")
        where = str(source.relative_to(ROOT))
        problems += [f"{where}: {m!r} names another project" for m in re.findall(r"(?<![\w-])djobs\[[\w,-]+\]", text)]
        for extra in re.findall(rf"{re.escape(DISTRIBUTION)}\[([\w-]+)\]", text):
            if extra not in PYPROJECT["project"]["optional-dependencies"]:
                problems.append(f"{where} installs the extra {extra!r}, which pyproject lacks")
    assert not problems, problems
    # The pages a newcomer installs from say how.
    for page in ("README.md", "docs/quickstart.md", "docs/guides/cli.md", "docs/guides/scaling-out.md"):
        assert any(DISTRIBUTION in c for c in found.get(page, [])), f"{page} has no install line for {DISTRIBUTION}"
    checkout = re.compile(r"""-e\s+["']?\.(?:\[[\w,-]+\])?["']?(?:\s|$)""")  # -e . or -e ".[dev]"
    assert any(checkout.search(c) for c in found["docs/quickstart.md"]), "the quick start installs a checkout"


@pytest.mark.parametrize(
    ("command", "ok"),
    [
        ("pip install djobs-trio", True),
        ('pip install "djobs-trio[postgres]"', True),
        ("pip install 'djobs-trio[http,otel]>=0.1'", True),
        ("pip install -e .", True),
        ('pip install -e ".[dev]"', True),
        ("uv add djobs-trio", True),
        ("pip install djobs", False),
        ('pip install "djobs[postgres]"', False),
        ("pip install --upgrade djobs", False),
        ("uv pip install djobs", False),
        ("pip install httpx", False),
    ],
)
def test_the_install_line_check_can_fail(command: str, ok: bool) -> None:
    assert install_lines(f"run `{command}` first") == [command]
    assert (problems_of(command) == []) is ok


def test_the_license_file_matches_pyproject() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "MIT"  # an SPDX expression, not the deprecated table
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License") and "the djobs authors" in text


def test_the_changelog_has_an_unreleased_section_and_this_version() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## \[([^\]]+)\]", text, re.MULTILINE)
    assert headings[0] == "Unreleased"
    assert PYPROJECT["project"]["version"] in headings
