"""The pytest plugin (entry point ``pytest11``): fixtures over :mod:`pitchey_cache.testing`.

Each fixture is opt-in by name and starts its backend only for the test that asks
for it; loading the plugin imports nothing but pytest.

- ``pitchey_redis``: a :class:`~pitchey_cache.testing.LocalRedis`.
- ``pitchey_cluster``: a :class:`~pitchey_cache.testing.LocalRedisCluster` (3 masters,
  1 replica each; a few seconds to start).
- ``pitchey_upstash``: a :class:`~pitchey_cache.testing.LocalUpstash`, in front of a
  redis-server of its own (``pitchey_upstash.redis``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pitchey_cache.testing import LocalRedis, LocalRedisCluster, LocalUpstash


@pytest.fixture
def pitchey_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    """A redis-server on a free loopback port, stopped after the test."""
    from pitchey_cache.testing import local_redis  # noqa: PLC0415

    with local_redis(workdir=tmp_path / "pitchey-redis") as redis:
        yield redis


@pytest.fixture
def pitchey_cluster(tmp_path: Path) -> Iterator[LocalRedisCluster]:
    """A Redis Cluster on free loopback ports, stopped after the test."""
    from pitchey_cache.testing import local_cluster  # noqa: PLC0415

    with local_cluster(workdir=tmp_path / "pitchey-cluster") as cluster:
        yield cluster


@pytest.fixture
def pitchey_upstash(tmp_path: Path) -> Iterator[LocalUpstash]:
    """Upstash's REST API in front of a redis-server, stopped after the test."""
    from pitchey_cache.testing import local_upstash  # noqa: PLC0415

    with local_upstash(workdir=tmp_path / "pitchey-upstash") as gateway:
        yield gateway
