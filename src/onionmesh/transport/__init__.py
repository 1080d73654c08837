"""Shells that carry mesh datagrams: UDP over WireGuard tunnel addresses, tor as fallback."""
