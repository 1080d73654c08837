"""Where descriptors go: time periods, shared random values, revision counters, the HSDir ring."""
