"""A cluster shard's trouble stays in that shard (issue 14), under three client processes.

Each scenario of ``benchmarks/shards.py`` runs here on a local cluster
(cluster-node-timeout 2000 ms), once with ``cluster-require-full-coverage no`` (what
local-cluster and the compose file ship) and once with ``yes`` (Redis' default). Three
client processes, each a ``Cache`` on the guide's default settings with 8 tasks, write
and read keys of the shard the fault hits and of the two healthy shards. Asserted:

- no exception reached a caller, and no stale read, in any process;
- with coverage ``no``, not one call on a healthy shard's keys was served by another
  tier (each cache's own per-node ``servedElsewhere`` counters), and none was slow;
- with coverage ``yes``, healthy shards' slots were served elsewhere only while the
  cluster itself said ``cluster_state:fail`` (CLUSTERDOWN), plus at most the recovery
  hysteresis (3 heartbeats and a probe);
- the calls on the victim's keys are bounded as on a frozen node.

Figures are printed (``pytest -s``) and appended to ``artifacts/failover-timings.jsonl``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from benchmarks import shards

from pitchey_cache.devtools.local_cluster import LocalCluster
from tests.integration.test_failover import record_timings

pytestmark = pytest.mark.integration

# Loosened for a shared 2-core machine running the cluster and three processes. With
# coverage no, a healthy shard's call still waits when glide holds every request of
# the client: it was seen doing so for 1.1-1.2 s as a deposed master resumed (long
# freeze), in about one run in six.
HEALTHY_SLOWEST_S = {"no": 1.5, "yes": 2.5}
VICTIM_SLOWEST_S = 2.5
# Past the CLUSTERDOWN window: RECOVERY_ANSWERS heartbeats (0.75 s), then a probe through
# glide. Typically 0.5-0.7 s in all; once 2.3 s was seen, a probe waiting on glide's
# connections after the promotion.
RECOVERY_SLACK_S = 3.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = shards.shard_cluster(Path(tmp_path_factory.mktemp("shards")))
    try:
        local.start(timeout=60)
        yield local
    finally:
        local.stop()


@pytest.mark.parametrize("coverage", shards.COVERAGES)
@pytest.mark.parametrize("scenario", shards.SCENARIOS)
def test_a_shard_outage_stays_in_its_shard(
    cluster: LocalCluster, scenario: str, coverage: str
) -> None:
    outcome = shards.run_scenario(cluster, scenario, coverage)
    figures = outcome.as_json()
    record_timings(
        f"shards: {scenario}, full coverage {coverage}",
        {k: v for k, v in figures.items() if isinstance(v, int | float)},
        shards.client_settings(cluster.seeds),
    )
    assert outcome.errors == []
    assert outcome.healthy_calls > 100, "the traffic hardly ran"
    assert outcome.victim_slowest_s <= VICTIM_SLOWEST_S, figures
    assert outcome.healthy_slowest_s <= HEALTHY_SLOWEST_S[coverage], figures
    if coverage == "no" or not outcome.clusterdown:
        assert outcome.healthy_elsewhere == 0, figures
        assert outcome.healthy_unserved_outside_s == 0, figures
    else:
        assert outcome.healthy_unserved_outside_s <= RECOVERY_SLACK_S, figures
    assert outcome.stale == []
