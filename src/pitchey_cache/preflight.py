"""What ``pitchey-cache check`` finds: every tier of the chain, and every node behind it.

Each Redis node is asked directly, on a connection of its own (the same
:class:`~pitchey_cache.tiers.link.NodeLink` heartbeats use), so the answer is
in plain words: refused, timed out, authentication failed (naming the
variable), TLS, LOADING. For a cluster, every seed is asked, the topology is
read from the first that answers, and every master and replica it lists is
asked too, with its role and slots; a dead seed among good ones is flagged.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import hiredis

from pitchey_cache.clock import SystemClock
from pitchey_cache.config import NodeAddress, Settings
from pitchey_cache.errors import CacheError
from pitchey_cache.redis_text import TopologyNode, parse_cluster_nodes
from pitchey_cache.tiers import ClusterTier, SingleTier, Tier, build_chain
from pitchey_cache.tiers.link import Credentials, LinkError, NodeLink


@dataclass(slots=True)
class NodeReport:
    """One node as ``check`` saw it."""

    address: str
    what: str  # "seed", "master", "replica", "server"
    problem: str | None = None
    detail: str = ""
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        result = "ok" if self.problem is None else f"UNREACHABLE: {self.problem}"
        detail = f" {self.detail}" if self.detail else ""
        return f"{self.what} {self.address}{detail}: {result}"


@dataclass(slots=True)
class TierReport:
    """One tier of the chain: its own result, its nodes, and what deserves a warning."""

    tier: Tier
    problem: str | None = None
    nodes: list[NodeReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.problem is not None or any(n.problem is not None for n in self.nodes)


async def check_chain(settings: Settings) -> list[TierReport]:
    """Probe every tier the settings produce, and every node behind the Redis tiers."""
    reports: list[TierReport] = []
    for tier in build_chain(settings, SystemClock()):
        if isinstance(tier, ClusterTier):
            report = await _check_cluster(tier, settings)
        elif isinstance(tier, SingleTier):
            report = await _check_single(tier, settings)
        else:
            report = await _check_driver(tier, settings)
        reports.append(report)
    return reports


def _within(settings: Settings) -> float:
    return (settings.connect_timeout_ms + settings.command_timeout_ms) / 1000


async def _check_driver(tier: Tier, settings: Settings) -> TierReport:
    """A tier without per-node links (Upstash, in-memory): one PING through its driver."""
    report = TierReport(tier)
    within = _within(settings)
    await tier.start()
    try:
        async with asyncio.timeout(within):
            await tier.ping()
    except TimeoutError:
        report.problem = f"no answer within {within:g}s"
    except CacheError as error:
        report.problem = getattr(error, "reason", str(error))
    finally:
        await tier.close()
    return report


async def _probe(
    address: str, what: str, settings: Settings, credentials: Credentials
) -> tuple[NodeReport, NodeLink | None]:
    node = NodeReport(address, what)
    host, _, port = address.rpartition(":")
    try:
        link = await NodeLink.open(
            NodeAddress(host, int(port)), settings, credentials, within=_within(settings)
        )
    except LinkError as exc:
        node.problem = exc.reason
        return node, None
    if link.unneeded_password:
        node.warnings.append(
            f"{address} requires no password, but {credentials.password_variable} is set "
            "(Redis refuses the AUTH; everything else works): unset it, or set "
            "requirepass on the server"
        )
    return node, link


async def _check_single(tier: SingleTier, settings: Settings) -> TierReport:
    report = TierReport(tier)
    node, link = await _probe(tier.nodes[0].address, "server", settings, _credentials(tier))
    if link is not None:
        await link.aclose()
    report.nodes.append(node)
    report.warnings += node.warnings
    return report


async def _read_topology(node: NodeReport, link: NodeLink) -> list[TopologyNode]:
    """CLUSTER NODES from a seed that answered; [] (and the seed's problem) if it can't."""
    try:
        reply = await link.command("CLUSTER", "NODES")
    except LinkError as exc:
        node.problem = exc.reason
        return []
    finally:
        await link.aclose()
    if isinstance(reply, hiredis.ReplyError):
        node.problem = f"not a cluster node ({str(reply).split(' ', 1)[0]})"
        return []
    return parse_cluster_nodes(reply.decode("utf-8", "replace")) if isinstance(reply, bytes) else []


def _credentials(tier: SingleTier | ClusterTier) -> Credentials:
    return tier._credentials()


async def _check_cluster(tier: ClusterTier, settings: Settings) -> TierReport:
    report = TierReport(tier)
    credentials = _credentials(tier)
    seeds = [str(seed) for seed in settings.cluster_nodes]
    probed = await asyncio.gather(*(_probe(s, "seed", settings, credentials) for s in seeds))
    topology: list[TopologyNode] = []
    for node, link in probed:
        report.nodes.append(node)
        report.warnings += node.warnings
        if link is not None:
            topology = topology or await _read_topology(node, link)
    live = [n for n in report.nodes if n.problem is None]
    if report.nodes and live and len(live) < len(report.nodes):
        report.warnings.append(
            "REDIS_CLUSTER_NODES lists a seed that does not answer: the cluster is found "
            "through the others, but fix or remove it"
        )
    if not topology:
        if live:
            report.problem = "no seed described the cluster (CLUSTER NODES)"
        else:
            report.problem = "no seed answers"
        return report
    masters = {n.node_id: n.address for n in topology if n.role == "master"}
    topology.sort(key=lambda n: (n.role != "master", n.slots[:1], n.address))
    results = await asyncio.gather(
        *(_check_cluster_node(entry, masters, settings, credentials) for entry in topology)
    )
    full_coverage: list[str] = []
    for node, requires_full_coverage in results:
        report.nodes.append(node)
        report.warnings += node.warnings
        if requires_full_coverage:
            full_coverage.append(node.address)
    if full_coverage:
        report.warnings.append(
            f"cluster-require-full-coverage is yes on {', '.join(full_coverage)}: while one "
            "shard has no master, every shard refuses keys (CLUSTERDOWN). For a cache, "
            "`CONFIG SET cluster-require-full-coverage no` (and in redis.conf) keeps the "
            "other shards serving"
        )
    unserved = 16384 - sum(high - low + 1 for n in topology for low, high in n.slots)
    if unserved:
        report.warnings.append(f"{unserved} hash slots have no master: their keys are not served")
    return report


async def _check_cluster_node(
    entry: TopologyNode, masters: dict[str, str], settings: Settings, credentials: Credentials
) -> tuple[NodeReport, bool]:
    """The node's report, and whether it is a master that requires full coverage."""
    if entry.role == "master":
        slots = ",".join(f"{low}-{high}" if high != low else str(low) for low, high in entry.slots)
        what, detail = "master", f"slots {slots}" if slots else "(no slots)"
    else:
        what, detail = "replica", f"of {masters.get(entry.master_id or '', '?')}"
    if entry.flagged_fail:
        what = f"failed {what}"
        detail += " (the cluster marks it failed)"
    node, link = await _probe(entry.address, what, settings, credentials)
    node.detail = detail
    if link is None or not (entry.role == "master" and entry.slots):
        if link is not None:
            await link.aclose()
        return node, False
    try:
        reply = await link.command("CONFIG", "GET", "cluster-require-full-coverage")
    except LinkError as exc:
        node.problem = exc.reason
        return node, False
    finally:
        await link.aclose()
    if isinstance(reply, hiredis.ReplyError):
        node.warnings.append(
            f"{entry.address}: cannot read cluster-require-full-coverage (CONFIG GET is "
            "not allowed for this user); for a cache, set it to no"
        )
        return node, False
    return node, isinstance(reply, list) and reply[-1:] == [b"yes"]


def print_reports(reports: list[TierReport]) -> int:
    """Print what ``check`` found; the number of tiers with an unreachable part."""
    print("tier chain, in order:")
    failed = 0
    for position, report in enumerate(reports, start=1):
        failed += report.failed
        if report.problem is not None:
            result = f"UNREACHABLE: {report.problem}"
        elif report.nodes and all(node.problem is not None for node in report.nodes):
            result = "UNREACHABLE"
        elif report.failed:
            result = "PARTLY UNREACHABLE"
        else:
            result = "ok"
        print(f"  {position}. {report.tier.describe()}: {result}")
        for node in report.nodes:
            print(f"       {node.line()}")
        for warning in dict.fromkeys(report.warnings):
            print(f"     warning: {warning}")
    return failed
