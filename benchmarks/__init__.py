"""``make bench``: pitchey-cache against the raw driver, measured in one run.

Run with ``python -m benchmarks`` from the repository root (``--help`` for
durations, rounds and ``--only``). Its sections each run against their own
servers on free loopback ports:

- ``single``: one ``redis-server``; ``Cache`` GET/SET beside valkey-glide's
  ``GlideClient`` (one client, and five taken in turn);
- ``cluster``: a local Redis Cluster (3 masters, 3 replicas); ``Cache`` GET
  and ``get_many`` of 100 keys beside ``GlideClusterClient`` and redis-py's
  asyncio ``RedisCluster``;
- ``memory``: the in-memory tier through ``Cache``;
- ``faults``: ``kill -9`` and SIGSTOP of a redis-server and of a cluster master
  under 16 tasks, and an idle ``pitchey-cache serve``, on the guide's default
  settings: the slowest call, detection and failback times, stale reads
  (``--only faults`` runs it alone);
- ``coalescing``: one redis-server, then a local cluster; ``Cache.get`` at 64
  tasks over 10,000 keys (half missing) with CACHE_COALESCE on and off, beside
  raw glide and redis-py, and a lone caller's rate and p50/p99 latency; and
  CACHE_NEAR_CACHE: 64 tasks reading a hot set of 1,000 keys, and the
  invalidation lag after another client's SET;
- ``shards``: a cluster master frozen, killed or restarted, and a replica
  killed, under three client processes, with cluster-require-full-coverage
  no and yes: the share of healthy shards' calls served by another tier,
  the slowest calls, the time until every slot is served again.

Within a section the clients take turns round by round, so machine noise
falls on every side alike. Results are printed, with the ratios against
the issues' targets, and written to ``artifacts/bench.json``.
"""
