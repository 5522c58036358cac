"""Placeholder: replaced by the provider fixture."""
