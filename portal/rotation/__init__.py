"""Key rotation runs: starting, watching and steering re-encryption."""
