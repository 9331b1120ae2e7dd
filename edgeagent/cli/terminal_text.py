"""Text from the network made safe to print on an operator's terminal.

What other devices publish (a heartbeat's `state`, a topic level) reaches a terminal
through the CLI. Printed raw, an escape sequence clears the screen, moves the cursor to
draw a fake row or sets the window title; a bidi override (U+202E) makes `pi-a` read as
another name. `printable` escapes every character that is not plain visible text, so
what is shown is what was sent, never what it would make the terminal do.
"""

from __future__ import annotations

import unicodedata

# C0/DEL/C1 controls (ESC among them), format characters (bidi overrides and isolates,
# zero-width joiners), surrogates, private use, unassigned, line and paragraph separators.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _shown(char: str) -> str:
    if unicodedata.category(char) not in _HIDDEN_CATEGORIES:
        return char
    code = ord(char)
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else f"\\U{code:08x}"
    )


def printable(text: str, limit: int = 64) -> str:
    """`text` with every control, format and invisible character escaped (`\\x1b`,
    `\\u202e`), cut to `limit` characters (an ellipsis marks the cut)."""
    shown = "".join(map(_shown, text[: limit * 2]))  # an escape is longer than its char
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"
