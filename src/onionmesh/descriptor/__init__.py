"""The v3 onion-service descriptor: building, encrypting, parsing and verifying (pure code)."""
