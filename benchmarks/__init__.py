"""``make bench``: pitchey-cache against the raw driver, measured in one run.

Run with ``python -m benchmarks`` from the repository root. One
``redis-server`` is started on a free loopback port; valkey-glide's
``GlideClient`` and :class:`pitchey_cache.Cache` take turns against it, so
machine noise falls on both sides alike. The in-memory tier is measured
through ``Cache`` as well. Results are printed and written to
``artifacts/bench.json``.
"""
