"""Deterministic simulation of many mesh cores over a simulated clock and network."""
