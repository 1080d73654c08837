"""Where descriptors go: time periods, shared random values, revision counters, the HSDir ring.

Modules: ``consensus`` (microdesc consensus and md/all parsing),
``timeperiod`` (time periods, SRVs, the first/second descriptor),
``hashring`` (hsdir_index, hs_index, responsible HSDirs) and ``revision``
(tor's order-preserving revision counter). Errors live in ``errors``.
"""
