"""Placeholder: replaced by the provider's implementation."""

from __future__ import annotations


def start(config):
    """Not implemented yet."""
    return None
