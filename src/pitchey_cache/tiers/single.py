"""The native-redis tier: one Redis server through valkey-glide's GlideClient."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import ClassVar

import glide

from pitchey_cache.clock import Clock
from pitchey_cache.config import NodeAddress, Settings
from pitchey_cache.errors import TierUnavailable
from pitchey_cache.tiers.base import NodeHealth, delete_by_scan
from pitchey_cache.tiers.glide_base import SCAN_BATCH, GlideTier
from pitchey_cache.tiers.link import Credentials


class SingleTier(GlideTier[glide.GlideClient]):
    """A single Redis server (``native-redis``), REDIS_HOST:REDIS_PORT, database REDIS_DB."""

    name: ClassVar[str] = "native-redis"
    distributed: ClassVar[bool] = True

    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        super().__init__(settings, clock=clock)
        self._address = NodeAddress(settings.single_host, settings.redis_port)
        self._node = NodeHealth(address=str(self._address), role="master")

    def describe(self) -> str:
        return f"{self.name} {self._address}/{self._settings.redis_db}"

    @property
    def nodes(self) -> Sequence[NodeHealth]:
        return (self._node,)

    def _credentials(self) -> Credentials:
        s = self._settings
        return Credentials(s.redis_username, s.redis_password, "REDIS_USERNAME", "REDIS_PASSWORD")

    async def _create_client(self) -> glide.GlideClient:
        s = self._settings
        credentials = None
        if s.redis_password is not None:
            credentials = glide.ServerCredentials(
                password=s.redis_password.reveal(), username=s.redis_username
            )
        config = glide.GlideClientConfiguration(
            [glide.NodeAddress(self._address.host, self._address.port)],
            credentials=credentials,
            database_id=s.redis_db,
            request_timeout=s.command_timeout_ms,
            lazy_connect=True,
            use_tls=s.tls_enabled,
            advanced_config=glide.AdvancedGlideClientConfiguration(
                connection_timeout=s.connect_timeout_ms, tls_config=self._tls()
            ),
            reconnect_strategy=self._backoff(),
            client_name="pitchey-cache",
        )
        return await glide.GlideClient.create(config)

    async def ping(self, skip: Collection[str] = frozenset()) -> Mapping[str, str | None]:
        if self._node.address in skip:
            return {}
        try:
            await self._call(self.client.ping())
        except TierUnavailable as error:
            await self._raise_tls_problem(error, (self._address,))
            raise
        return {self._node.address: None}

    async def set_many(self, items: Mapping[str, bytes], ttl: int) -> None:
        """One non-atomic pipeline of SETs."""
        batch = glide.Batch(is_atomic=False)
        expiry = self._expiry(ttl)
        for key, value in items.items():
            batch.set(key, value, expiry=expiry)
        await self._call(self.client.exec(batch, raise_on_error=True))

    async def delete_matching(self, pattern: str) -> int:
        client = self.client

        async def scan(cursor: str) -> tuple[str, list[glide.TEncodable]]:
            reply = await self._call(client.scan(cursor, match=pattern, count=SCAN_BATCH))
            following, keys = reply[0], reply[1]
            if not isinstance(following, bytes) or not isinstance(keys, list):
                raise TierUnavailable(self.name, f"unexpected SCAN reply {reply!r:.80}")
            return following.decode(), list(keys)

        async def unlink(keys: list[glide.TEncodable]) -> int:
            return await self._call(client.unlink(keys))

        return await delete_by_scan(scan, unlink)
