"""Append-only JSON-lines journals that survive SIGKILL of the process writing them.

Each line is written with one ``write(2)`` on an ``O_APPEND`` descriptor: what
``write`` returned is in the kernel's page cache and survives the death of the
process. Acknowledgements are also ``fsync``'d, as the harness's contract asks;
a torn last line (the process died inside ``write``) is ignored on reading.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


class Journal:
    """One process's journal file.

    Args:
        path: The file, created if missing, appended to otherwise.
        sync: ``fsync`` after every line.
    """

    def __init__(self, path: Path, *, sync: bool) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._sync = sync

    def write(self, *, sync: bool | None = None, **record: Any) -> None:
        """Append `record` as one line; `sync` overrides the journal's ``fsync`` setting."""
        os.write(self._fd, _encoder.encode(record) + b"\n")
        if self._sync if sync is None else sync:
            os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def read(path: Path) -> Iterator[dict[str, Any]]:
    """The records of one journal file, in order; a torn last line is skipped."""
    data = path.read_bytes()
    for line in data.split(b"\n"):
        if not line:
            continue
        try:
            record = _decoder.decode(line)
        except msgspec.DecodeError:
            # Only the last line can be torn: the writer died inside write(2).
            if not data.endswith(line):
                raise
            continue
        yield record
