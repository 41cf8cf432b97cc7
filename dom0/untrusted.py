"""Text from the carrier VM is hostile: make it safe to show, and bound it.

The carrier is networked and less trusted than dom0 (QUBES-INTERFACES.md
section 6). Anything it sends may be huge, invalid UTF-8, or full of escape
sequences meant to rewrite a terminal or forge journal lines.
"""

from __future__ import annotations

import unicodedata

# Unicode categories never shown: controls (ESC, CR, NUL...), format characters
# (bidi overrides that reorder what a reader sees), surrogates, private use,
# unassigned.
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})
DEFAULT_LIMIT = 300


def clean_text(data: bytes | str, limit: int = DEFAULT_LIMIT) -> str:
    """Given untrusted bytes or text, return at most LIMIT printable characters:
    invalid UTF-8 and every control/format character become '?', and a cut is
    marked with '...'."""
    if isinstance(data, bytes):
        # Decode only what can be shown: never feed megabytes to the decoder.
        text = data[: limit * 4].decode("utf-8", "replace")
    else:
        text = data[: limit * 4]
    cleaned = "".join(
        "?" if char == "\ufffd" or unicodedata.category(char) in HIDDEN_CATEGORIES else char
        for char in text
    )
    if len(cleaned) > limit:
        return cleaned[:limit] + "..."
    return cleaned


def last_line(data: bytes, limit: int = DEFAULT_LIMIT) -> str:
    """Given untrusted stderr, return its last non-empty line, cleaned."""
    for line in reversed(data[-64 * 1024 :].splitlines()):
        if line.strip():
            return clean_text(line.strip(), limit)
    return ""
