"""Onion-service cryptography: addresses, keys, blinding and certificates (pure code)."""
