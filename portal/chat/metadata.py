"""Conversation metadata documents: their stored form and how deep they may nest."""

from __future__ import annotations

import json
from typing import Any

# How deep a metadata document may nest ({} is one level): far below what the JSON encoder
# can handle (about 900 levels), so no stored document can make a read fail.
MAX_NESTING = 64


def nests_deeper(value: Any, levels: int) -> bool:
    """Tell whether objects and arrays nest more than ``levels`` deep (without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        if depth > levels:
            return True
        stack.extend((child, depth + 1) for child in item)
    return False


def encode_metadata(metadata: dict[str, Any]) -> bytes:
    """The stored form of a metadata document: compact UTF-8 JSON."""
    return json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode()


def decode_metadata(data: bytes) -> dict[str, Any] | None:
    """Read a stored metadata document; None if it nests deeper than MAX_NESTING."""
    try:
        value = json.loads(data)
    except RecursionError:
        return None
    return None if nests_deeper(value, MAX_NESTING) else value
