"""Untrusted text made safe for a terminal or a log: control characters and the invisible
characters that reorder text (bidirectional overrides, isolates and marks) are taken out.

Box controls file names, statuses and failure texts; printed as they are, an escape sequence
rewrites a terminal, a newline forges a log line, and a right-to-left override (U+202E) shows
`exe.pdf` for `fdp.exe`. Only a text meant to span lines (a traceback) keeps its newlines."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_REMOVED = [
    *range(0x00, 0x20),  # C0 controls (ESC, BEL, CR, ...); tab and newline are handled below
    0x7F,  # DEL
    *range(0x80, 0xA0),  # C1 controls (CSI, OSC, ...)
    0x061C,  # ARABIC LETTER MARK
    0x200E,  # LEFT-TO-RIGHT MARK
    0x200F,  # RIGHT-TO-LEFT MARK
    *range(0x202A, 0x202F),  # LRE, RLE, PDF, LRO, RLO
    *range(0x2066, 0x206A),  # LRI, RLI, FSI, PDI
]
_ONE_LINE = {c: None for c in _REMOVED} | {ord("\t"): " ", ord("\n"): " "}
_MULTI_LINE = {**_ONE_LINE, ord("\n"): "\n"}


def clean(text: str, *, multiline: bool = False) -> str:
    """`text` without control and bidirectional-formatting characters; a tab (and, unless
    `multiline`, a newline) becomes a space."""
    return text.translate(_MULTI_LINE if multiline else _ONE_LINE)


def clean_data(value: Any, *, multiline: bool = False) -> Any:
    """Every string in a JSON-like value cleaned (mapping keys too); other values unchanged."""
    if isinstance(value, str):
        return clean(value, multiline=multiline)
    if isinstance(value, Mapping):
        return {
            clean_data(k, multiline=False): clean_data(v, multiline=multiline)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [clean_data(v, multiline=multiline) for v in value]
    return value
