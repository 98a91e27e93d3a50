"""Text from files (registry values, task names) made safe to print to a terminal."""

from __future__ import annotations

import unicodedata


def printable(value: object) -> str:
    """`str(value)` with control and format characters shown as escapes.

    A registry is untrusted input: an escape sequence in a task or recipe name must not
    reach the terminal, where it could move the cursor or rewrite earlier lines.
    """
    out = []
    for ch in str(value):
        if unicodedata.category(ch)[0] == "C":  # Cc, Cf (e.g. bidi overrides), Cs, Co, Cn
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)
