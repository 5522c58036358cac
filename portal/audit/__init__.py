"""The audit trail: append-only, hash-chained key and sign-in events."""
