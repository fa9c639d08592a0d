"""What the command line prints: aligned tables, times, one JSON document, a progress bar.

Tables and messages for people go to stdout (results) and stderr (notes);
``--json`` replaces the table with exactly one JSON document on stdout, so a
script can pipe it to ``jq`` without filtering anything out.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import msgspec

from .._printable import printable

_json = msgspec.json.Encoder()


def print_json(value: Any) -> None:
    """Write `value` as one indented JSON document (structs, datetimes and bytes as msgspec encodes them)."""
    sys.stdout.write(msgspec.json.format(_json.encode(value), indent=2).decode() + "\n")


def note(message: str) -> None:
    """A line for the person at the terminal, on stderr (never mixed into stdout's results)."""
    print(message, file=sys.stderr)


def next_page_hint(limit: int, after: str) -> str:
    """The note under a full page of `limit` rows: the option that shows the next page, with
    `after` (the last row's key, id or cursor) as one word to paste into a POSIX shell:
    `printable` (controls as visible stand-ins, which ``--after`` reads back), then quoted by
    ``shlex.quote``, after ``=`` so a value starting with ``-`` is never read as an option.
    (Python's repr doubles a backslash, which a shell's quotes keep: the next page started
    before the row it meant.)

    Examples:
        >>> print(next_page_hint(2, "workflow:flow:acme\\x1fC:\\\\it's"))
        showing the first 2; see more with --after='workflow:flow:acme␟C:\\it'"'"'s'
    """
    return f"showing the first {limit}; see more with --after={shlex.quote(printable(after))}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, right: Sequence[int] = ()) -> str:
    """Rows under headers in aligned columns; the columns numbered in `right` align right (numbers).

    Examples:
        >>> print(table(["NAME", "N"], [["a", 1], ["long", 22]], right=[1]))
        NAME   N
        a      1
        long  22
    """
    # Every cell through `printable`: an id or a message holding a newline or U+202E would break
    # its row or show the rest of the line reversed.
    cells = [[str(h) for h in headers], *[["-" if c is None else printable(str(c)) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def fields(pairs: Sequence[tuple[str, object]]) -> str:
    """``label  value`` lines with the values aligned, for ``show`` commands; ``None`` shows as ``-``.

    Examples:
        >>> print(fields([("id", "j1"), ("status", None)]))
        id      j1
        status  -
    """
    width = max(len(label) for label, _ in pairs)
    shown = ("-" if value is None else printable(str(value)) for _, value in pairs)  # as `table`'s cells
    return "\n".join(f"{label.ljust(width)}  {value}".rstrip() for (label, _), value in zip(pairs, shown, strict=True))


#: Times are whole milliseconds added to this, exactly (``fromtimestamp(ms / 1000)`` goes through a
#: float, off by microseconds far from now, which can show the second before).
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def when(ms: int | None) -> str | None:
    """An epoch-ms time as ``2026-01-01 00:30:00Z`` (UTC, to the second), or ``None``.

    Examples:
        >>> when(1_767_227_400_000)
        '2026-01-01 00:30:00Z'
    """
    if ms is None:
        return None
    try:
        return (_EPOCH + timedelta(milliseconds=ms)).strftime("%Y-%m-%d %H:%M:%SZ")
    except (ValueError, OverflowError, OSError):
        return _out_of_range(ms)


def iso(ms: int | None) -> str | None:
    """An epoch-ms time as an RFC 3339 string for JSON output (milliseconds kept), or ``None``.

    Examples:
        >>> iso(1_767_227_400_250)
        '2026-01-01T00:30:00.250Z'
    """
    if ms is None:
        return None
    try:
        return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (ValueError, OverflowError, OSError):
        return _out_of_range(ms)


def _out_of_range(ms: int) -> str:
    """A stored time no `datetime` holds (past the year 9999; djobs no longer stores one), shown as its number.

    Examples:
        >>> when(300_000_000_000_000)
        'epoch ms 300000000000000 (out of range)'
    """
    return f"epoch ms {ms} (out of range)"


def span(ms: int) -> str:
    """A duration for people, to its two largest units.

    Examples:
        >>> span(45_000), span(200_000), span(7_500_000), span(360_000_000), span(0)
        ('45s', '3m 20s', '2h 5m', '4d 4h', '0s')
    """
    seconds = max(ms, 0) // 1000
    units = (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1))
    parts: list[str] = []
    for name, size in units:
        if seconds >= size or (name == "s" and not parts):
            parts.append(f"{seconds // size}{name}")
            seconds %= size
        if len(parts) == 2:
            break
    return " ".join(p for p in parts if not p.startswith("0") or len(parts) == 1)


def relative(ms: int, now: int) -> str:
    """`ms` relative to `now`: ``in 5m`` or ``5m ago`` (``now`` within a second).

    Examples:
        >>> relative(1_000_000, 1_000_000), relative(1_300_000, 1_000_000), relative(700_000, 1_000_000)
        ('now', 'in 5m', '5m ago')
    """
    if abs(ms - now) < 1000:
        return "now"
    return f"in {span(ms - now)}" if ms > now else f"{span(now - ms)} ago"


def when_relative(ms: int | None, now: int) -> str | None:
    """`when` followed by `relative` in parentheses, or ``None``."""
    return None if ms is None else f"{when(ms)} ({relative(ms, now)})"


class ProgressBar:
    """A plain-text progress bar on a stream, redrawn in place with ``\\r``.

    On a terminal (`live`) every change redraws the line; elsewhere (a log
    file, a pipe) only the final line is written, so logs do not fill with
    carriage returns.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> bar = ProgressBar("batch", 4, out, live=True, width=8)
        >>> bar.update(1, 0)
        >>> bar.finish(4, 1)
        >>> out.getvalue().split("\\r")[-1]
        'batch [########] 4/4 100% (1 failed)\\n'
    """

    def __init__(self, label: str, total: int, stream: TextIO, *, live: bool, width: int = 30) -> None:
        self._label = label
        self._total = total
        self._stream = stream
        self._live = live
        self._width = width
        self._last: str | None = None

    def _line(self, done: int, failed: int) -> str:
        fraction = done / self._total if self._total else 1.0
        filled = round(fraction * self._width)
        bar = "#" * filled + "." * (self._width - filled)
        tail = f" ({failed} failed)" if failed else ""
        return f"{self._label} [{bar}] {done}/{self._total} {round(fraction * 100)}%{tail}"

    def update(self, done: int, failed: int) -> None:
        """Redraw with `done` of the total finished, `failed` of them not completed (live only)."""
        line = self._line(done, failed)
        if self._live and line != self._last:
            # Pad over a longer previous line; \r returns to the line's start.
            pad = " " * max(0, len(self._last or "") - len(line))
            self._stream.write("\r" + line + pad)
            self._stream.flush()
            self._last = line

    def finish(self, done: int, failed: int) -> None:
        """Draw the final state and end the line."""
        line = self._line(done, failed)
        pad = " " * max(0, len(self._last or "") - len(line))
        self._stream.write(("\r" if self._last is not None else "") + line + pad + "\n")
        self._stream.flush()
