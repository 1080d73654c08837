"""Publishing master descriptors: per-HSDir upload tracking, the republish policy and the shell.

``uploads`` and ``republish`` are pure (sans-IO: explicit ``now``, injected RNG);
``publisher`` is the asyncio shell that talks to tor.
"""
