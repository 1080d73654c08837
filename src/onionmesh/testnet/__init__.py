"""A private Tor network on loopback, for tests and the demo."""
