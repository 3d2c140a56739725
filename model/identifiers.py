"""Entity identifiers: one rule that training and the service both apply.

Training reads identifiers from a dataset and writes them into the checkpoint's tab-separated
``entities.tsv``; the service reads them back. Checking both sides with the same function means
that whatever training accepts, the service can load.
"""

from __future__ import annotations

BOM = "\ufeff"
MAX_IDENTIFIER_LENGTH = 4096
_FORBIDDEN = {"\t": "a tab", "\r": "a carriage return", "\n": "a line feed", "\x00": "a NUL"}


def identifier_problem(identifier: str) -> str | None:
    """Why ``identifier`` cannot name an entity (``None`` when it can).

    Tabs and line breaks would split a tab-separated row; NUL bytes break C-level consumers
    (FAISS metadata, Redis keys in some clients, terminals).
    """
    if not identifier:
        return "the identifier is empty"
    if len(identifier) > MAX_IDENTIFIER_LENGTH:
        return f"the identifier is longer than {MAX_IDENTIFIER_LENGTH} characters"
    for char, name in _FORBIDDEN.items():
        if char in identifier:
            return f"the identifier {identifier[:80]!r} contains {name}"
    return None


def strip_bom(text: str) -> str:
    """``text`` without a leading UTF-8 byte order mark (editors on Windows write one)."""
    return text[1:] if text.startswith(BOM) else text
