"""Talking to tor: the control-port client, torrc generation and process supervision."""
