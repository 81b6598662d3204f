"""Cluster scheduler: leases of resource shapes on nodes and placement-group bundles.

Pure logic, no I/O. The shell feeds it stimuli (``add_node``, ``submit``, ``release``,
``create_placement_group``, ...) and calls :meth:`ClusterScheduler.poll` to collect the
decisions made since the last poll: a :class:`Grant` (node, lease id, GPU ids) or an
:class:`Infeasible` (reported once; the request stays parked and is granted later if
the cluster changes so that it fits).

Queue: pending requests are grouped by *scheduling key* (shape + strategy). Within a
group, requests are identical as far as fitting goes, so when the head of a group does
not fit, nothing behind it does: a poll costs O(groups + grants), not O(requests).
Groups are served in order of their oldest request (FIFO), and a group that does not
fit never blocks another that does.

Placement groups reserve all their bundles atomically (all or none) on nodes, as
:class:`~carme._resources.ResourcePool` s of their own; a request with
:class:`BundleStrategy` draws from those pools. Pending placement groups are retried at
each poll, before task requests, in creation order.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable

from carme._resources import (
    Allocation,
    ResourcePool,
    describe,
    to_fixed_shape,
    to_float_shape,
    validate_bundles,
)

from ._record import field, record

__all__ = [
    "BundleStrategy",
    "ClusterScheduler",
    "DefaultStrategy",
    "Grant",
    "Infeasible",
    "LeaseRequest",
    "NodeAffinity",
    "NodeLabel",
    "SpreadStrategy",
    "Strategy",
]

PG_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
_PG_SCHEDULING_STATE = {"CREATED": "FINISHED", "REMOVED": "REMOVED", "RESCHEDULING": "QUEUED"}


@record(frozen=True)
class DefaultStrategy:
    """Prefer the requester's node when it fits now, else the least loaded node."""


@record(frozen=True)
class SpreadStrategy:
    """Round-robin over the nodes that fit."""


@record(frozen=True)
class NodeAffinity:
    node_id: str
    soft: bool = False
    spill_on_unavailable: bool = False
    fail_on_unavailable: bool = False


@record(frozen=True)
class NodeLabel:
    """Nodes whose labels match every ``hard`` term; prefer those matching ``soft``.

    A term is ``(key, op, values)`` with op in ``in``, ``not_in``, ``exists``,
    ``does_not_exist``.
    """

    hard: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
    soft: tuple[tuple[str, str, tuple[str, ...]], ...] = ()


@record(frozen=True)
class BundleStrategy:
    pg_id: str
    bundle_index: int = -1


Strategy = DefaultStrategy | SpreadStrategy | NodeAffinity | NodeLabel | BundleStrategy


@record(frozen=True)
class LeaseRequest:
    request_id: str
    shape: dict[str, float]
    strategy: Strategy = field(default_factory=DefaultStrategy)
    local_node: str | None = None
    description: str = ""


@record(frozen=True)
class Grant:
    request_id: str
    lease_id: str
    node_id: str
    gpu_ids: tuple[str, ...]
    shape: dict[str, float]


@record(frozen=True)
class Infeasible:
    request_id: str
    message: str


def labels_match(labels: dict[str, str], terms: Iterable[tuple[str, str, tuple[str, ...]]]) -> bool:
    for key, op, values in terms:
        has = key in labels
        if op == "in" and not (has and labels[key] in values):
            return False
        if op == "not_in" and has and labels[key] in values:
            return False
        if op == "exists" and not has:
            return False
        if op == "does_not_exist" and has:
            return False
    return True


class _Node:
    __slots__ = ("labels", "node_id", "pool")

    def __init__(self, node_id: str, pool: ResourcePool, labels: dict[str, str]) -> None:
        self.node_id, self.pool, self.labels = node_id, pool, labels


class _Bundle:
    __slots__ = ("alloc", "node_id", "pool", "shape")

    def __init__(self, shape: dict[str, int]) -> None:
        self.shape = shape
        self.node_id: str | None = None
        self.pool: ResourcePool | None = None
        self.alloc: Allocation | None = None


class _PG:
    def __init__(self, pg_id: str, bundles: list[dict[str, int]], strategy: str, name: str) -> None:
        self.pg_id, self.strategy, self.name = pg_id, strategy, name
        self.bundles = [_Bundle(b) for b in bundles]
        self.state = "PENDING"
        self.message = ""
        self.attempts = 0
        self.tried_at = -1  # scheduler epoch of the last placement attempt
        self.mirror: str | None = None  # another node placed it: the bundles it put on this node


@record
class _Lease:
    request_id: str
    node_id: str
    pool: ResourcePool
    alloc: Allocation
    pg_id: str | None


class _Group:
    __slots__ = ("key", "queue", "reported_upto", "seen_version")

    def __init__(self, key: tuple[object, ...]) -> None:
        self.key = key
        self.queue: deque[tuple[int, LeaseRequest, dict[str, int]]] = deque()
        self.seen_version = -1  # topology version at which the group was found infeasible
        self.reported_upto = -1  # requests with seq <= this were reported infeasible


class _Unavailable(str):
    """A fail-fast refusal that depends on current load, not on the cluster's shape."""


_Decision = tuple[str, ResourcePool] | str | None  # (node, pool) | infeasible msg | wait


class ClusterScheduler:
    def __init__(self) -> None:
        self._nodes: dict[str, _Node] = {}
        self._pgs: dict[str, _PG] = {}
        self._pending_pgs: list[str] = []
        self._groups: dict[tuple[object, ...], _Group] = {}
        self._requests: dict[str, tuple[int, LeaseRequest]] = {}
        self._leases: dict[str, _Lease] = {}
        self._out: list[Grant | Infeasible] = []
        self._seq = itertools.count()
        self._lease_seq = itertools.count(1)
        self._spread_cursor = 0
        self._version = 0  # bumped when nodes or placement groups change
        self._pg_changes: list[str] = []
        self._epoch = 0  # bumped whenever resources may have been freed or nodes changed
        self.stats = {"decisions": 0, "polls": 0}
        self._remote_usage: dict[str, Allocation] = {}
        self._pending_mirrors: list[str] = []

    # -- nodes ---------------------------------------------------------------------
    def add_node(self, node_id: str, total: dict[str, float], labels: dict[str, str] | None = None) -> None:
        if node_id in self._nodes:
            raise ValueError(f"node {node_id!r} is already registered; remove it first")
        self._nodes[node_id] = _Node(node_id, ResourcePool(to_fixed_shape(total)), dict(labels or {}))
        self._bump()

    def remove_node(self, node_id: str) -> list[str]:
        """Forget a dead node; return the lease ids that were on it (they are void)."""
        if self._nodes.pop(node_id, None) is None:
            return []
        self._remote_usage.pop(node_id, None)
        lost = [lid for lid, lease in self._leases.items() if lease.node_id == node_id]
        for lid in lost:
            del self._leases[lid]
        for pg in self._pgs.values():
            hit = [b for b in pg.bundles if b.node_id == node_id]
            if hit and pg.state in ("CREATED", "RESCHEDULING"):
                for b in hit:
                    b.node_id = b.pool = b.alloc = None
                pg.state = "RESCHEDULING"
                if pg.pg_id not in self._pending_pgs:
                    self._pending_pgs.append(pg.pg_id)
                self._pg_changes.append(pg.pg_id)
        self._bump()
        return lost

    def set_remote_usage(self, node_id: str, available: dict[str, float]) -> None:
        """Mirror what another node reports as available (its own leases are not ours to
        see): the difference to its total is held here as one stand-in allocation."""
        node = self._nodes.get(node_id)
        if node is None:
            return
        prev = self._remote_usage.pop(node_id, None)
        if prev is not None:
            node.pool.free(prev)
        avail = to_fixed_shape({k: v for k, v in available.items() if v > 0})
        # bundles placed there from here are already held in our view of that node, and
        # that node reserves them itself (so they are missing from what it reports)
        for pg in self._pgs.values():
            for b in pg.bundles:
                if b.node_id == node_id and b.alloc is not None and pg.mirror is None:
                    for k, units in b.shape.items():
                        avail[k] = avail.get(k, 0) + units
        used = {k: units - avail.get(k, 0) for k, units in node.pool.total.items()}
        used = {k: u for k, u in used.items() if u > 0}
        if used:
            alloc = node.pool.allocate(used)
            if alloc is not None:
                self._remote_usage[node_id] = alloc
        self._epoch += 1

    def _bump(self) -> None:
        self._version += 1
        self._epoch += 1

    def nodes(self) -> list[str]:
        return list(self._nodes)

    def total(self, node_id: str | None = None) -> dict[str, float]:
        return self._sum(node_id, lambda pool: pool.total)

    def available(self, node_id: str | None = None) -> dict[str, float]:
        return self._sum(node_id, lambda pool: pool.avail)

    def _sum(self, node_id: str | None, get: object) -> dict[str, float]:
        assert callable(get)
        if node_id is not None:
            node = self._nodes.get(node_id)
            if node is None:
                raise KeyError(f"unknown node {node_id!r}; known nodes: {sorted(self._nodes)}")
            return to_float_shape(get(node.pool))
        out: dict[str, int] = {}
        for node in self._nodes.values():
            for key, units in get(node.pool).items():
                out[key] = out.get(key, 0) + units
        return to_float_shape(out)

    # -- requests ------------------------------------------------------------------
    def submit(self, req: LeaseRequest) -> None:
        if req.request_id in self._requests:
            raise ValueError(f"request {req.request_id!r} was already submitted")
        fixed = to_fixed_shape(req.shape)
        key = (tuple(sorted(fixed.items())), req.strategy)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(key)
        seq = next(self._seq)
        group.queue.append((seq, req, fixed))
        self._requests[req.request_id] = (seq, req)

    def cancel(self, request_id: str) -> bool:
        """Drop a pending request; False if it is unknown or already granted."""
        return self._requests.pop(request_id, None) is not None

    def pending(self) -> list[LeaseRequest]:
        return [req for _, req in self._requests.values()]

    def request_of(self, lease_id: str) -> str | None:
        """The request a live lease was granted for (None: not a live lease)."""
        lease = self._leases.get(lease_id)
        return lease.request_id if lease is not None else None

    def release(self, lease_id: str) -> None:
        lease = self._leases.pop(lease_id, None)
        if lease is not None:
            lease.pool.free(lease.alloc)
            self._epoch += 1

    def lease_node(self, lease_id: str) -> str | None:
        lease = self._leases.get(lease_id)
        return lease.node_id if lease else None

    # -- the scheduling pass -------------------------------------------------------
    def poll(self) -> list[Grant | Infeasible]:
        self.stats["polls"] += 1
        self._try_pending_pgs()
        self._try_pending_mirrors()
        groups = []
        for key, group in list(self._groups.items()):
            self._drop_dead_heads(group)
            if group.queue:
                groups.append(group)
            else:
                del self._groups[key]
        groups.sort(key=lambda g: g.queue[0][0])
        for group in groups:
            self._serve(group)
        out, self._out = self._out, []
        return out

    def _drop_dead_heads(self, group: _Group) -> None:
        q = group.queue
        while q and self._requests.get(q[0][1].request_id, (None,))[0] != q[0][0]:
            q.popleft()

    def _serve(self, group: _Group) -> None:
        q = group.queue
        if group.seen_version == self._version:
            self._report_infeasible(group)
            return
        while q:
            seq, req, fixed = q[0]
            self.stats["decisions"] += 1
            decision = self._decide(req, fixed)
            if decision is None:
                return
            if isinstance(decision, _Unavailable):
                if seq > group.reported_upto:
                    group.reported_upto = seq
                    self._out.append(Infeasible(req.request_id, str(decision)))
                return
            if isinstance(decision, str):
                group.seen_version = self._version
                self._report_infeasible(group)
                return
            node_id, pool = decision
            alloc = pool.allocate(fixed)
            assert alloc is not None, "decided pool must fit"
            lease_id = f"lease-{next(self._lease_seq)}"
            pg_id = req.strategy.pg_id if isinstance(req.strategy, BundleStrategy) else None
            self._leases[lease_id] = _Lease(req.request_id, node_id, pool, alloc, pg_id)
            q.popleft()
            del self._requests[req.request_id]
            self._out.append(Grant(req.request_id, lease_id, node_id, alloc.gpu_ids(pool), dict(req.shape)))
            self._drop_dead_heads(group)

    def _report_infeasible(self, group: _Group) -> None:
        """Report the group's not-yet-reported live requests (newest first scan: O(new))."""
        fresh = []
        for seq, req, fixed in reversed(group.queue):
            if seq <= group.reported_upto:
                break
            if self._requests.get(req.request_id, (None,))[0] == seq:
                fresh.append((req, fixed))
        if group.queue:
            group.reported_upto = group.queue[-1][0]
        for req, fixed in reversed(fresh):
            msg = self._decide(req, fixed)
            if isinstance(msg, str):
                self._out.append(Infeasible(req.request_id, str(msg)))
            else:  # the group can run after all: serve it at the next poll
                group.seen_version = -1

    def _decide(self, req: LeaseRequest, shape: dict[str, int]) -> _Decision:
        strategy = req.strategy
        if isinstance(strategy, BundleStrategy):
            return self._decide_bundle(req, shape, strategy)
        if isinstance(strategy, NodeAffinity):
            node = self._nodes.get(strategy.node_id)
            if node is not None and node.pool.fits(shape):
                return (node.node_id, node.pool)
            usable = node is not None and node.pool.fits_total(shape)
            if not strategy.soft:
                if node is None:
                    return self._what(req) + (
                        f" requires node {strategy.node_id} (hard NodeAffinitySchedulingStrategy), "
                        "which does not exist or is dead. Fix: pick a node from carme.nodes() "
                        "or pass soft=True."
                    )
                if not usable:
                    return self._infeasible_msg(req, shape, [node])
                if strategy.fail_on_unavailable:
                    return _Unavailable(
                        self._what(req) + f" cannot run now on node {strategy.node_id}: it is "
                        "busy and the strategy says _fail_on_unavailable=True."
                    )
                return None
            if usable and not strategy.spill_on_unavailable:
                return None  # soft: wait for the preferred node while it is alive and could fit
            others = [n for n in self._nodes.values() if n.node_id != strategy.node_id]
            return self._pick_default(req, shape, others)
        if isinstance(strategy, NodeLabel):
            candidates = [n for n in self._nodes.values() if labels_match(n.labels, strategy.hard)]
            if not candidates:
                return self._what(req) + (
                    f" requires node labels {list(strategy.hard)} but no node has them. "
                    "Fix: start a node with those labels or change the label selector."
                )
            preferred = [n for n in candidates if labels_match(n.labels, strategy.soft)]
            if strategy.soft and preferred:
                fit = [n for n in preferred if n.pool.fits(shape)]
                if fit:
                    return self._best(fit, shape, req.local_node)
            return self._pick_default(req, shape, candidates)
        if isinstance(strategy, SpreadStrategy):
            nodes = list(self._nodes.values())
            if not nodes:
                return self._infeasible_msg(req, shape, nodes)
            for step in range(len(nodes)):
                node = nodes[(self._spread_cursor + step) % len(nodes)]
                if node.pool.fits(shape):
                    self._spread_cursor = (self._spread_cursor + step + 1) % len(nodes)
                    return (node.node_id, node.pool)
            if any(n.pool.fits_total(shape) for n in nodes):
                return None
            return self._infeasible_msg(req, shape, nodes)
        return self._pick_default(req, shape, list(self._nodes.values()))

    def _pick_default(self, req: LeaseRequest, shape: dict[str, int], nodes: list[_Node]) -> _Decision:
        local = self._nodes.get(req.local_node) if req.local_node else None
        if local is not None and local in nodes and local.pool.fits(shape):
            return (local.node_id, local.pool)
        fit = [n for n in nodes if n.pool.fits(shape)]
        if fit:
            return self._best(fit, shape, req.local_node)
        if any(n.pool.fits_total(shape) for n in nodes):
            return None
        return self._infeasible_msg(req, shape, nodes)

    @staticmethod
    def _best(fit: list[_Node], shape: dict[str, int], local: str | None) -> tuple[str, ResourcePool]:
        best = min(fit, key=lambda n: (n.pool.utilization_after(shape), n.node_id != local))
        return (best.node_id, best.pool)

    def _decide_bundle(self, req: LeaseRequest, shape: dict[str, int], strategy: BundleStrategy) -> _Decision:
        pg = self._pgs.get(strategy.pg_id)
        if pg is None or pg.state == "REMOVED":
            return self._what(req) + pg_gone(strategy.pg_id)
        checked = check_bundles(self._what(req), req.shape, shape, strategy, [b.shape for b in pg.bundles])
        if isinstance(checked, str):
            return checked
        if pg.state != "CREATED":
            return None
        for i in checked:
            b = pg.bundles[i]
            if b.pool is not None and b.node_id is not None and b.pool.fits(shape):
                return (b.node_id, b.pool)
        return None

    def knows_placement_group(self, pg_id: str) -> bool:
        """Whether this scheduler holds a record of the group (placed here, or a mirror of
        bundles placed on this node); a node that does not asks the head (`bundle_target`)."""
        return pg_id in self._pgs

    def _what(self, req: LeaseRequest) -> str:
        return (req.description or f"request {req.request_id}").strip()

    def _infeasible_msg(self, req: LeaseRequest, shape: dict[str, int], nodes: list[_Node]) -> str:
        what = self._what(req)
        if not nodes:
            return (
                f"{what} requires {describe(req.shape)} but the cluster has no alive nodes"
                " that it may use. Fix: start a node (carme.init() or `carme start`)."
            )
        lacking = sorted(k for k in shape if not any(n.pool.fits_total({k: shape[k]}) for n in nodes))
        if lacking:
            most = {k: max(n.pool.total.get(k, 0) for n in nodes) / 10_000 for k in lacking}
            need = {k: req.shape.get(k, 0.0) for k in lacking}
            return (
                f"{what} requires {describe(req.shape)} but no node can ever provide "
                f"{describe(need)[1:-1]}; the most any node has is {describe(most)}. Fix: lower "
                f"the request or add a node with more {', '.join(lacking)}."
            )
        shown = "; ".join(f"{n.node_id}: {describe(n.pool.total_floats())}" for n in nodes[:5])
        more = f" (and {len(nodes) - 5} more)" if len(nodes) > 5 else ""
        return (
            f"{what} requires {describe(req.shape)} but no single node has all of it "
            f"together; nodes: {shown}{more}. Fix: split the request or add a node that has "
            "all these resources."
        )

    # -- placement groups ----------------------------------------------------------
    def create_placement_group(self, pg_id: str, bundles: list[dict[str, float]], strategy: str, name: str = "") -> None:
        if pg_id in self._pgs:
            raise ValueError(f"placement group {pg_id!r} already exists")
        if strategy not in PG_STRATEGIES:
            raise ValueError(f"Invalid placement group strategy {strategy!r}: expected one of {', '.join(PG_STRATEGIES)}.")
        clean = validate_bundles(bundles)
        self._pgs[pg_id] = _PG(pg_id, [to_fixed_shape(b) for b in clean], strategy, name)
        self._pending_pgs.append(pg_id)
        self._try_pending_pgs()

    def remove_placement_group(self, pg_id: str) -> list[str]:
        """Return the bundles' reservations; the lease ids inside them are now void."""
        pg = self._pgs.get(pg_id)
        if pg is None or pg.state == "REMOVED":
            return []
        void = [lid for lid, lease in self._leases.items() if lease.pg_id == pg_id]
        for lid in void:
            del self._leases[lid]
        for b in pg.bundles:
            self._unreserve(b)
        pg.state = "REMOVED"
        pg.message = ""
        if pg_id in self._pending_pgs:
            self._pending_pgs.remove(pg_id)
        self._pg_changes.append(pg_id)
        self._bump()
        return void

    def placement_group(self, pg_id: str) -> dict[str, object]:
        pg = self._pgs.get(pg_id)
        if pg is None:
            raise KeyError(f"unknown placement group {pg_id!r}")
        return {
            "placement_group_id": pg.pg_id,
            "name": pg.name,
            "state": pg.state,
            "strategy": pg.strategy,
            "bundles": {i: to_float_shape(b.shape) for i, b in enumerate(pg.bundles)},
            "bundles_to_node_id": {i: b.node_id for i, b in enumerate(pg.bundles) if b.node_id},
            "message": pg.message,
            "stats": {
                "scheduling_attempt": pg.attempts,
                "scheduling_state": _PG_SCHEDULING_STATE.get(pg.state, "QUEUED")
                if not pg.message
                else "INFEASIBLE",
            },
        }

    def placement_groups(self) -> list[dict[str, object]]:
        return [self.placement_group(pg_id) for pg_id, pg in self._pgs.items() if pg.mirror is None]

    def bundles_on(self, pg_id: str, local: str) -> dict[str, dict[int, dict[str, float]]]:
        """The bundles of a group placed here that are on other nodes, per node: what
        those nodes must reserve themselves (`mirror_bundles`)."""
        pg = self._pgs.get(pg_id)
        out: dict[str, dict[int, dict[str, float]]] = {}
        if pg is None or pg.mirror is not None or pg.state not in ("CREATED", "RESCHEDULING"):
            return out  # (while rescheduling, the bundles still placed stay reserved)
        for i, b in enumerate(pg.bundles):
            if b.node_id is not None and b.node_id != local:
                out.setdefault(b.node_id, {})[i] = to_float_shape(b.shape)
        return out

    def mirror_bundles(self, pg_id: str, bundles: dict[int, dict[str, float]], local: str) -> list[str]:
        """Another node placed bundles of group `pg_id` on this node (`local`): reserve
        them in this node's pool, so its own leases cannot take them (at once, or as soon
        as they fit: leases for the bundles wait until then). Empty `bundles`: the group
        went; returns the lease ids inside it, now void."""
        old = self._pgs.get(pg_id)
        if old is not None and old.mirror is None:
            return []  # placed here: this node's own record already reserves it
        if old is not None and bundles and {i: b.shape for i, b in enumerate(old.bundles) if b.shape} \
                == {i: to_fixed_shape(b) for i, b in bundles.items()}:
            return []  # told again (the group was rescheduled elsewhere): nothing changes here
        void = self.remove_placement_group(pg_id) if old is not None else []
        if old is not None:
            del self._pgs[pg_id]
            if pg_id in self._pending_mirrors:
                self._pending_mirrors.remove(pg_id)
        if not bundles or local not in self._nodes:
            return void
        size = max(bundles) + 1
        pg = _PG(pg_id, [to_fixed_shape(bundles.get(i, {})) for i in range(size)], "MIRROR", "")
        pg.mirror = local
        self._pgs[pg_id] = pg
        self._pending_mirrors.append(pg_id)
        self._try_pending_mirrors()
        return void

    def has_mirror(self, pg_id: str) -> bool:
        pg = self._pgs.get(pg_id)
        return pg is not None and pg.mirror is not None

    def _try_pending_mirrors(self) -> None:
        for pg_id in list(self._pending_mirrors):
            pg = self._pgs[pg_id]
            node = self._nodes.get(pg.mirror or "")
            if node is None:
                continue
            want = [b for b in pg.bundles if b.shape]
            total: dict[str, int] = {}
            for b in want:
                for k, units in b.shape.items():
                    total[k] = total.get(k, 0) + units
            if not node.pool.fits(total):
                continue  # this node's leases hold it now: reserved once they end
            for b in want:
                alloc = node.pool.allocate(b.shape)
                assert alloc is not None
                gpus = [(node.pool.gpu_ids[j], units) for j, units in alloc.gpu_shares]
                b.node_id, b.alloc, b.pool = node.node_id, alloc, ResourcePool(b.shape, gpus)
            pg.state = "CREATED"
            self._pending_mirrors.remove(pg_id)
            self._bump()

    def placement_group_changes(self) -> list[str]:
        """Ids of placement groups whose state changed since the last call (for the shell)."""
        out, self._pg_changes = self._pg_changes, []
        return out

    def _unreserve(self, b: _Bundle) -> None:
        if b.node_id is not None and b.alloc is not None:
            node = self._nodes.get(b.node_id)
            if node is not None:
                node.pool.free(b.alloc)
        b.node_id = b.pool = b.alloc = None

    def _try_pending_pgs(self) -> None:
        for pg_id in list(self._pending_pgs):
            pg = self._pgs[pg_id]
            if pg.tried_at == self._epoch:
                continue  # nothing was freed since the last attempt
            pg.tried_at = self._epoch
            pg.attempts += 1
            todo = [i for i, b in enumerate(pg.bundles) if b.node_id is None]
            fixed = {i: b.node_id for i, b in enumerate(pg.bundles) if b.node_id is not None}
            live = {nid: n.pool for nid, n in self._nodes.items()}
            plan = _place(pg, todo, fixed, {nid: p.clone() for nid, p in live.items()})
            if plan is None:
                ever = _place(pg, todo, fixed, {nid: p.fresh() for nid, p in live.items()})
                pg.message = "" if ever is not None else _pg_infeasible_msg(pg, self._nodes)
                continue
            for i, nid in plan.items():
                b = pg.bundles[i]
                pool = live[nid]
                alloc = pool.allocate(b.shape)
                assert alloc is not None
                gpus = [(pool.gpu_ids[j], units) for j, units in alloc.gpu_shares]
                b.node_id, b.alloc, b.pool = nid, alloc, ResourcePool(b.shape, gpus)
            pg.state, pg.message = "CREATED", ""
            self._pending_pgs.remove(pg_id)
            self._pg_changes.append(pg_id)
            self._bump()


def pg_gone(pg_id: str) -> str:
    return (f" uses placement group {pg_id}, which was removed or never existed. "
            "Fix: create the placement group again and pass the new one.")


def check_bundles(what: str, want: dict[str, float], shape: dict[str, int], strategy: BundleStrategy,
                  bundles: list[dict[str, int]]) -> list[int] | str:
    """The bundles of a group (fixed-point shapes) a request may use; a message when none
    ever can (index out of range, or the request is bigger than the bundles)."""
    if strategy.bundle_index >= len(bundles):
        return what + (
            f" asks for bundle {strategy.bundle_index} of placement group {strategy.pg_id}, which "
            f"has {len(bundles)} bundles. Fix: pass placement_group_bundle_index in "
            f"0..{len(bundles) - 1} or -1 for any."
        )
    indices = range(len(bundles)) if strategy.bundle_index < 0 else [strategy.bundle_index]
    could = [i for i in indices if ResourcePool(bundles[i]).fits(shape)]
    if not could:
        sizes = ", ".join(describe(to_float_shape(bundles[i])) for i in indices)
        which = "its bundles" if strategy.bundle_index < 0 else f"bundle {strategy.bundle_index}"
        return what + (
            f" requires {describe(want)}, more than {which} of placement group "
            f"{strategy.pg_id} reserve ({sizes}). Fix: lower the request or create the placement "
            "group with bigger bundles."
        )
    return could


def bundle_target(info: dict | None, req: LeaseRequest, turn: int = 0) -> str | list[str] | None:
    """Where a request for a bundle of a group this node does not know goes, from what
    the head said of the group (`PgInfo`'s answer; None: the head does not know it):
    the nodes holding bundles it may use (a list, `turn` picks the first), a message
    when it never can run (group removed or unknown, bad index, too big), or None while
    the group is not placed (ask again later)."""
    strategy = req.strategy
    assert isinstance(strategy, BundleStrategy)
    what = (req.description or f"request {req.request_id}").strip()
    if info is None or info.get("state") == "REMOVED":
        return what + pg_gone(strategy.pg_id)
    shapes = {int(i): to_fixed_shape(b) for i, b in dict(info.get("bundles") or {}).items()}
    bundles = [shapes.get(i, {}) for i in range(max(shapes, default=-1) + 1)]
    checked = check_bundles(what, req.shape, to_fixed_shape(req.shape), strategy, bundles)
    if isinstance(checked, str):
        return checked
    where = {int(i): n for i, n in dict(info.get("bundles_to_node_id") or {}).items()}
    if info.get("state") != "CREATED" or any(i not in where for i in checked):
        return None
    nodes = list(dict.fromkeys(where[i] for i in checked))
    k = turn % len(nodes)
    return nodes[k:] + nodes[:k]


def _place(
    pg: _PG, todo: list[int], fixed: dict[int, str], pools: dict[str, ResourcePool]
) -> dict[int, str] | None:
    """Choose nodes for the bundles in ``todo`` (allocating on ``pools``, scratch copies)."""
    if not todo:
        return {}
    order = sorted(pools, key=lambda nid: pools[nid].utilization_after({}))
    used = set(fixed.values())
    plan: dict[int, str] = {}
    if pg.strategy in ("PACK", "STRICT_PACK"):
        targets = [next(iter(used))] if used and pg.strategy == "STRICT_PACK" else order
        for nid in targets:
            trial = pools[nid].clone()
            if all(trial.allocate(pg.bundles[i].shape) is not None for i in todo):
                return {i: nid for i in todo}
        if pg.strategy == "STRICT_PACK":
            return None
    for i in todo:
        shape = pg.bundles[i].shape
        if pg.strategy == "PACK":
            candidates = [n for n in order if n in used] + [n for n in order if n not in used]
        elif pg.strategy == "SPREAD":
            candidates = [n for n in order if n not in used] + [n for n in order if n in used]
        else:  # STRICT_SPREAD
            candidates = [n for n in order if n not in used]
        for nid in candidates:
            if pools[nid].allocate(shape) is not None:
                plan[i] = nid
                used.add(nid)
                break
        else:
            return None
    return plan


def _pg_infeasible_msg(pg: _PG, nodes: dict[str, _Node]) -> str:
    n = len(pg.bundles)
    if pg.strategy == "STRICT_SPREAD" and len(nodes) < n:
        return (
            f"placement group {pg.pg_id} (STRICT_SPREAD) needs {n} distinct nodes but the "
            f"cluster has {len(nodes)}. It stays PENDING until enough nodes join. Fix: add "
            "nodes or use strategy SPREAD."
        )
    if pg.strategy == "STRICT_PACK":
        total: dict[str, int] = {}
        for b in pg.bundles:
            for k, v in b.shape.items():
                total[k] = total.get(k, 0) + v
        return (
            f"placement group {pg.pg_id} (STRICT_PACK) needs {describe(to_float_shape(total))} "
            "on one node, and no node has that much. It stays PENDING. Fix: use PACK or add a "
            "bigger node."
        )
    for i, b in enumerate(pg.bundles):
        if not any(node.pool.fits_total(b.shape) for node in nodes.values()):
            return (
                f"placement group {pg.pg_id}: bundle {i} {describe(to_float_shape(b.shape))} "
                "fits on no node of the cluster. It stays PENDING. Fix: shrink the bundle or "
                "add a node with those resources."
            )
    return (
        f"placement group {pg.pg_id} ({pg.strategy}) cannot be placed on the cluster's nodes "
        "even when they are idle. It stays PENDING. Fix: add nodes or relax the strategy."
    )
