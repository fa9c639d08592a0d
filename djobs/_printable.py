"""Showing text that came from outside (ids, keys, tenant ids, reasons, error messages) to a person.

One function, `printable`, used wherever such text meets a reader: every log
line djobs writes (the ``[job=... instance=...]`` prefix of a run's lines and
the engine's own messages), the command line and the dashboard. An id is any
text without NUL, ``\\x1f`` or a lone surrogate (the verbs check that), so it
may hold a newline, which in a log line would start a forged line of its own
(CWE-117), or a right-to-left override, which would show the rest of a line
reversed. `printable` replaces each such character with a visible stand-in:

- C0 controls and DEL: their symbol in Unicode's Control Pictures block
  (U+2400 + code, U+2421 for DEL), so ``acme\\x1fuser-1`` shows as
  ``acme␟user-1`` and a newline as ``␊``;
- C1 controls (U+0080-U+009F, NEL among them), the line and paragraph
  separators (U+2028, U+2029) and the bidirectional formatting characters
  (U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069): ``<U+202E>``.

With ``keep_lines=True`` newlines, carriage returns and tabs stay as they are,
for text shown as lines on purpose (pretty-printed JSON, a dashboard's
``<pre>``). `from_printable` reads the stand-ins back, for a key a person
copied from what was shown.
"""

from __future__ import annotations

import re

_PICTURES = {code: chr(0x2400 + code) for code in range(0x20)} | {0x7F: "\u2421"}
_NAMED = [*range(0x80, 0xA0), 0x2028, 0x2029, 0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_STAND_INS = _PICTURES | {code: f"<U+{code:04X}>" for code in _NAMED}
_IN_LINES = {code: stand_in for code, stand_in in _STAND_INS.items() if chr(code) not in "\n\r\t"}
_CONTROLS = {ord(picture): chr(code) for code, picture in _PICTURES.items()}
_NAMED_FORM = re.compile("|".join(re.escape(f"<U+{code:04X}>") for code in _NAMED))


def printable(text: str, *, keep_lines: bool = False) -> str:
    """`text` with every control, line-separating and bidirectional formatting character shown as a
    visible stand-in (see the module's docstring), but for ``\\n``, ``\\r`` and ``\\t`` with
    `keep_lines`; any other text is returned as it is.

    Examples:
        >>> printable("continuous:refresher:acme\\x1fuser-1")
        'continuous:refresher:acme␟user-1'
        >>> printable("u1\\n[job=payments] refund sent"), printable("invoice-\\u202egpj.exe")
        ('u1␊[job=payments] refund sent', 'invoice-<U+202E>gpj.exe')
        >>> printable('{\\n  "to": "\\u202eAda"\\n}', keep_lines=True)
        '{\\n  "to": "<U+202E>Ada"\\n}'
    """
    if text.isprintable():  # every character replaced is one str.isprintable refuses: most text, no copy
        return text
    return text.translate(_IN_LINES if keep_lines else _STAND_INS)


def from_printable(text: str) -> str:
    """`text` with the stand-ins `printable` writes read back as the characters they stand for.

    Examples:
        >>> from_printable("acme␟user-1<U+202E>") == "acme\\x1fuser-1\\u202e"
        True
    """
    return _NAMED_FORM.sub(lambda m: chr(int(m[0][3:-1], 16)), text.translate(_CONTROLS))
