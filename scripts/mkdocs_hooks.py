"""MkDocs hooks (mkdocs.yml, ``hooks:``): the built site names public paths only.

mkdocstrings and mkdocs-autorefs put an object's canonical path in the
hover title of each cross-reference: ``djobs._errors.JobError`` for what a
reader imports as ``djobs.JobError``, ``djobs.kinds._task.S`` for a type
variable. This hook rewrites such a title to the public path the name is
exported under (``__all__`` of ``djobs``, ``djobs.storage``,
``djobs.tracking``, ``djobs.testing``, ``djobs.cli``), or drops the title
when there is none. A private module path left anywhere else in a page (a
heading, a link, the text) is a mistake in the docs (a ``:::`` entry naming
a private module, a class not exported): the hook warns, which fails
``mkdocs build --strict``. The maintainers' design notes, which are about
the private modules, are exempt from that check.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from mkdocs.plugins import get_plugin_logger

log = get_plugin_logger(__name__)

#: A dotted path under djobs with a private (underscored) part: ``djobs.kinds._job.JobClient.later``.
PRIVATE = re.compile(r"\bdjobs(?:\.\w+)*?\._\w+(?:\.\w+)*")
_TITLE = re.compile(r' title="([^"]*)"')
#: A title's "(canonical path)" suffix, as autorefs writes it after the public one.
_CANONICAL_SUFFIX = re.compile(r"\s*\(\s*" + PRIVATE.pattern + r"\s*\)")
#: Pages that may name private modules in their text.
ABOUT_INTERNALS = {"design.md"}


@cache
def public_paths() -> dict[str, str]:
    """Canonical path of each exported object -> the public path it is documented under."""
    import djobs
    import djobs.cli
    import djobs.storage
    import djobs.testing
    import djobs.tracking

    paths: dict[str, str] = {}
    # djobs last: a name exported from djobs and a subpackage is documented as djobs.<name>.
    for module in (djobs.cli, djobs.tracking, djobs.storage, djobs.testing, djobs):
        for name in module.__all__:
            obj = getattr(module, name)
            home, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
            if isinstance(home, str) and isinstance(qualname, str):
                paths[f"{home}.{qualname}"] = f"{module.__name__}.{name}"
    return paths


def publish(path: str) -> str | None:
    """The public spelling of `path` (an object or one of its members), if it has one."""
    parts = path.split(".")
    for end in range(len(parts), 1, -1):
        public = public_paths().get(".".join(parts[:end]))
        if public is not None:
            return ".".join([public, *parts[end:]])
    return None


def clean_title(match: re.Match[str]) -> str:
    title = _CANONICAL_SUFFIX.sub("", match[1])
    unpublished = False

    def replace(private: re.Match[str]) -> str:
        nonlocal unpublished
        public = publish(private[0])
        unpublished = unpublished or public is None
        return public or private[0]

    title = PRIVATE.sub(replace, title)
    return "" if unpublished or not title.strip() else f' title="{title}"'


def on_post_page(output: str, /, *, page: Any, config: Any) -> str:
    output = _TITLE.sub(lambda m: clean_title(m) if PRIVATE.search(m[1]) else m[0], output)
    left = sorted(set(PRIVATE.findall(output)))
    if left and page.file.src_uri not in ABOUT_INTERNALS:
        log.warning(
            "%s shows private module paths %s: document the public name (djobs.<Name>) and export it in __all__",
            page.file.src_uri,
            left,
        )
    return output
