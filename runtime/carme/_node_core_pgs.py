"""Bundles of groups this node does not know: asked of the head, sent to the bundle. Pure.

Theory of operation. Placement groups live at the head (its daemon places them); a node
holding one of a group's bundles keeps a mirror of them (`ClusterScheduler.mirror_bundles`).
Any other node has no record of the group: a lease or an actor creation there for one of
its bundles (a driver on a node of its own, e.g. `--num-cpus 0`) is not decided by that
node's scheduler. The node asks the head once per group (`PgInfo` as a `PeerRequest`),
keeps the answer, and sends the request on to a node holding a bundle it may use (a
`Spill` for a lease, so the requester asks there; a forwarded creation for an actor); that
node leases from its mirror. Only the head's answer fails a request (`bundle_target`): a
group it does not know or removed, a bundle index out of range, a request bigger than the
bundles. A group not placed yet is asked about again at each cluster view, as is a group
the head says has a bundle here while this node has no mirror of it yet (the reservation
is on its way; requests go to the local scheduler as soon as it comes).

The answers kept are forgotten when the group changes at the head (the head tells the
nodes that asked, `PgReserve` with no bundles for them) and when a node they name dies.
Nothing waits on the head forever: a lookup unanswered after `LOOKUP_VIEWS` cluster views
(0.5 s apart), a head that is not alive, or a lost connection to it fails the waiting
requests with an error that says so.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from . import _messages as M
from . import exceptions as exc
from ._node_effects import Client, LeaseRequested, PeerFailed, PeerRequest, ToPeer
from ._node_leases import LeaseTable, Refuse, Spill
from ._scheduler import BundleStrategy, LeaseRequest, bundle_target

LOOKUP_VIEWS = 20  # cluster views (HEARTBEAT apart) a lookup at the head may take

# a request waiting here: ("lease", client, LeaseRequested) | ("actor", None, ActorRec)
Item = tuple[str, Any, Any]


class PgRouting:
    """Mixed into `NodeCore` (which provides the tables, `poll` and the actor half)."""

    leases: LeaseTable | None
    node_id: str
    peers: dict[str, dict[str, Any]]
    heads_away: set[str]
    _peer_req_ids: Any
    # NodeCore's and ActorCore's (PgRouting comes after them in NodeCore's bases)
    poll: Callable[[], list[Any]]
    schedule_actor: Callable[[Any], list[Any]]
    actor_dead: Callable[[Any, BaseException], list[Any]]
    _place_remote: Callable[[Any, str], list[Any]]

    def _init_pgs(self) -> None:
        self.pg_answers: dict[str, dict] = {}  # group -> the head's answer (placed groups)
        self.pg_waiting: dict[str, list[Item]] = {}  # group -> requests waiting for the head
        self.pg_lookups: dict[int, tuple[str, str, int]] = {}  # req -> (group, head, views)
        self.pg_askers: dict[str, set[str]] = {}  # (at the head) group -> nodes that asked
        self._pg_turns = itertools.count()

    # ------------------------------------------------------------------ routing
    def route_bundle(self, item: Item) -> list[Any] | None:
        """Effects for a request for a bundle of a group this node does not know, or None
        when this node's scheduler decides it (it knows the group, or it is the head)."""
        strategy = self._request_of(item).strategy
        if not isinstance(strategy, BundleStrategy):
            return None
        assert self.leases is not None
        if self.leases.scheduler.knows_placement_group(strategy.pg_id):
            return None
        head = self._head()
        if head is None:
            return None  # the head itself (or no cluster): its scheduler's word is final
        info = self.pg_answers.get(strategy.pg_id)
        if info is not None and self._fresh(strategy.pg_id, info):
            return self._resolve(item, info)
        self.pg_waiting.setdefault(strategy.pg_id, []).append(item)
        if any(pg == strategy.pg_id for pg, _h, _v in self.pg_lookups.values()):
            return []
        return self._ask(strategy.pg_id, head)

    def _head(self) -> str | None:
        for nid, row in self.peers.items():
            if row.get("is_head"):
                return nid
        return None

    def _fresh(self, pg_id: str, info: dict) -> bool:
        """Whether every node an answer names is alive; if not, it is forgotten (a dead
        node's bundles are being placed again)."""
        for nid in dict(info.get("bundles_to_node_id") or {}).values():
            if nid != self.node_id and self.peers.get(nid, {}).get("state") != "ALIVE":
                del self.pg_answers[pg_id]
                return False
        return True

    def _ask(self, pg_id: str, head: str) -> list[Any]:
        row = self.peers.get(head, {})
        if row.get("state") != "ALIVE" or head in self.heads_away:
            return self._fail_waiting(pg_id, f"placement group {pg_id} lives at the head (node "
                                      f"{head[:8]}), which is not reachable now. Fix: start the head "
                                      "again (`carme start --head` on its machine) and retry.")
        req = next(self._peer_req_ids)
        self.pg_lookups[req] = (pg_id, head, 0)
        return [PeerRequest(head, req, (M.PG_INFO, req, pg_id, None))]

    def _request_of(self, item: Item) -> LeaseRequest:
        kind, _client, what = item
        if kind == "lease":
            return what.request  # type: ignore[no-any-return]
        s = what.spec
        return LeaseRequest(f"actor-{what.actor_id.hex()}", s["placement_shape"], s["strategy"],
                            self.node_id, f"actor {s['class_name']}")

    def _resolve(self, item: Item, info: dict | None) -> list[Any]:
        kind, client, what = item
        if kind == "actor" and what.state == "DEAD":
            return []
        target = bundle_target(info, self._request_of(item), next(self._pg_turns))
        if isinstance(target, str):
            return self._fail(item, target)
        pg_id = self._request_of(item).strategy.pg_id  # type: ignore[union-attr]
        if target is None or target[0] == self.node_id:
            # not placed yet, or its bundle here is not mirrored yet: asked again at the next view
            self.pg_waiting.setdefault(pg_id, []).append(item)
            return []
        if kind == "lease":
            return [Spill(client.conn, what.req, target[0])]
        return self._place_remote(what, target[0])

    def _fail(self, item: Item, message: str) -> list[Any]:
        kind, client, what = item
        if kind == "lease":
            return [Refuse(client.conn, what.req, exc.TaskUnschedulableError(message))]
        return self.actor_dead(what, exc.ActorUnschedulableError(message))

    def _fail_waiting(self, pg_id: str, why: str) -> list[Any]:
        out: list[Any] = []
        for item in self.pg_waiting.pop(pg_id, []):
            what = self._request_of(item)
            out += self._fail(item, f"{(what.description or what.request_id).strip()}: {why}")
        return out

    def _retry(self, pg_id: str) -> list[Any]:
        """Requests waiting for a group go through `route_bundle` again."""
        out: list[Any] = []
        for kind, client, what in self.pg_waiting.pop(pg_id, []):
            if kind == "actor":
                out += [] if what.state == "DEAD" else self.schedule_actor(what)
            else:
                out += self.lease_requested(client, what)
        return out

    def lease_requested(self, client: Client, ev: LeaseRequested) -> list[Any]:
        routed = self.route_bundle(("lease", client, ev))
        if routed is not None:
            return routed
        assert self.leases is not None
        self.leases.request(ev.request.request_id, client.conn, ev.req, ev.env_key, ev.request)
        return self.poll()

    # ------------------------------------------------------------------ the head's answers
    def pg_reply(self, client: Client, msg: M.Reply | PeerFailed) -> list[Any] | None:
        """The head's answer to a lookup (None: not one of ours)."""
        lookup = self.pg_lookups.get(msg.req)
        if lookup is None:
            return None
        pg_id, head = lookup[0], lookup[1]
        if isinstance(msg, PeerFailed):
            del self.pg_lookups[msg.req]
            return self._fail_waiting(pg_id, f"could not ask the head (node {head[:8]}) about "
                                      f"placement group {pg_id}: {msg.error}")
        if client.peer != head:
            return []  # only the head answers for its groups
        del self.pg_lookups[msg.req]
        info = msg.value if msg.ok and isinstance(msg.value, dict) else None
        if info is not None and info.get("state") == "CREATED":
            self.pg_answers[pg_id] = info
        out: list[Any] = []
        for item in self.pg_waiting.pop(pg_id, []):
            out += self._resolve(item, info)
        return out

    def pg_views(self) -> list[Any]:
        """At each cluster view: answers naming dead nodes are forgotten, lookups past
        their time fail, groups with waiting requests are looked at again."""
        for pg_id, info in list(self.pg_answers.items()):
            self._fresh(pg_id, info)
        out: list[Any] = []
        for req, (pg_id, head, views) in list(self.pg_lookups.items()):
            if views + 1 < LOOKUP_VIEWS:
                self.pg_lookups[req] = (pg_id, head, views + 1)
                continue
            del self.pg_lookups[req]
            out += self._fail_waiting(pg_id, f"the head (node {head[:8]}) did not answer where "
                                      f"placement group {pg_id} is within {LOOKUP_VIEWS} cluster "
                                      "views. Fix: check the head's log and retry.")
        asking = {pg for pg, _h, _v in self.pg_lookups.values()}
        for pg_id in [pg for pg in self.pg_waiting if pg not in asking]:
            out += self._retry(pg_id)
        return out

    def pg_forget(self, pg_id: str) -> list[Any]:
        """The group changed at the head (or its bundles here did): its answer goes, and
        requests waiting for its mirror here are looked at again."""
        self.pg_answers.pop(pg_id, None)
        if any(pg == pg_id for pg, _h, _v in self.pg_lookups.values()):
            return []
        return self._retry(pg_id)

    # ------------------------------------------------------------------ at the head
    def asked_by(self, client: Client, pg_id: str | None) -> None:
        """A node asked about a group: it is told when the group changes."""
        if pg_id is not None and client.holder.startswith("node:"):
            self.pg_askers.setdefault(pg_id, set()).add(client.holder[5:])

    def tell_askers(self, pg_id: str, told: set[str]) -> list[Any]:
        """The group changed: nodes that asked about it (and hold none of it) forget it."""
        return [ToPeer(nid, (M.PG_RESERVE, pg_id, {})) for nid in self.pg_askers.pop(pg_id, set()) - told
                if self.peers.get(nid, {}).get("state") == "ALIVE"]

    def pg_peer_gone(self, node_id: str) -> list[Any]:
        """Our connection to the head closed: lookups sent on it fail."""
        out: list[Any] = []
        for req, (_pg, head, _views) in list(self.pg_lookups.items()):
            if head == node_id:
                gone = PeerFailed(req, exc.NodeDiedError(f"node {node_id[:8]} closed the connection"))
                out += self.pg_reply(Client(None, ""), gone) or []
        return out
