"""The node's half of cluster-wide reference counts: proxies of other nodes' objects. Pure.

Theory of operation. An object's entry (payload, holds) lives on one node's daemon, its
*home*: where its owner exported it, or where a task wrote it. A reference nested in a
value can reach a process on another node; that process names the ref's home when it
takes its hold (`Incref.homes`). This node then keeps a proxy entry (`ObjectTable.proxy`)
that local holders count on as on any entry, and holds the object at its home once,
under its own name ("node:<this node>"): a `PeerRequest` of `INCREF` whose reply is
awaited before the local holder is answered, so the hold at the home is in place before
the reference's previous holders can let go. When the proxy's last local hold goes, this
node's hold at the home is released (`remote_releases`, drained after every message).
A `GET_OBJECT` of a proxy asks the home for the payload once; a payload in another
node's store is then pulled into the proxy's entry (`GET_REMOTE`), and that copy lives
as long as the proxy. When this node's connection to a home drops, or a node dies, the
home releases that node's holds itself (its `ClientGone`), so nothing leaks there.
"""

from __future__ import annotations

from typing import Any

from . import _messages as M
from . import exceptions as exc
from ._node_effects import Client, PeerFailed, PeerRequest, ToPeer
from ._node_objects import Answer, ObjectTable


class RefCore:
    table: ObjectTable
    node_id: str
    peers: dict[str, dict[str, Any]]
    linked: bool
    _peer_req_ids: Any

    def _init_refs(self) -> None:
        # peer request id -> ("incref", [oids asked], node, tries) | ("get", oid, node, tries)
        self.ref_reqs: dict[int, tuple[str, Any, str, int]] = {}
        # a proxy whose hold at its home is not confirmed yet -> the increfs waiting for it
        # (each wait: [client conn, client req, missing ids, proxies still unconfirmed])
        self.confirming: dict[bytes, list[list[Any]]] = {}
        self.pull_sources: dict[bytes, str] = {}  # object being pulled -> the node it comes from

    def holds_outlive(self, holder: str) -> bool:
        """A connection of `holder` closed: are its holds kept? A node's are while the
        view says it is alive: its proxies still count on them (it reconnects for its
        next message), and they go when the view says it died (`node_holds_gone`)."""
        return holder.startswith("node:") and self._home_alive(holder[5:])

    def _home_alive(self, home: str) -> bool:
        peer = self.peers.get(home)
        return self.linked and peer is not None and peer["state"] == "ALIVE"

    def needs_confirming(self, oids: list[bytes]) -> bool:
        return bool(self.confirming) and any(oid in self.confirming for oid in oids)

    def incref_homes(self, client: Client, msg: M.Incref) -> list[Any]:
        """Holds on objects some of which may live on other nodes (`msg.homes`). The
        answer waits until every proxy involved holds its object at its home."""
        table, holder = self.table, msg.holder or client.holder
        homes = msg.homes or {}
        wait: list[Any] = [client.conn, msg.req, [], 0]
        remote: dict[str, list[bytes]] = {}
        for oid in msg.oids:
            if not table.hold(oid, holder):
                home = homes.get(oid)
                if home is None or home == self.node_id or not self._home_alive(home):
                    wait[2].append(oid)
                    continue
                table.proxy(oid, home)
                table.hold(oid, holder)
                self.confirming[oid] = []
                remote.setdefault(home, []).append(oid)
            if oid in self.confirming and msg.req is not None:
                self.confirming[oid].append(wait)
                wait[3] += 1
        out: list[Any] = []
        for home, oids in remote.items():
            out.append(self._ask_home("incref", oids, home))
        if msg.req is not None and wait[3] == 0:
            out.append(Answer(client.conn, msg.req, True, wait[2]))
        return out

    def fetch_proxies(self) -> list[Any]:
        """Proxies a `GET_OBJECT` found without a payload ask their home for it (once)."""
        out: list[Any] = []
        oids, self.table.proxy_fetches = self.table.proxy_fetches, []
        for oid in oids:
            e = self.table.get_entry(oid)
            if e is not None and e.home is not None:
                out.append(self._ask_home("get", oid, e.home))
        return out

    def _ask_home(self, kind: str, arg: Any, home: str, tries: int = 0) -> PeerRequest:
        req = next(self._peer_req_ids)
        self.ref_reqs[req] = (kind, arg, home, tries)
        msg = (M.INCREF, req, arg) if kind == "incref" else (M.GET_OBJECT, req, arg)
        return PeerRequest(home, req, msg)

    def ref_reply(self, client: Client, msg: M.Reply | PeerFailed) -> list[Any] | None:
        """The answer to one of our requests to a home (None: not ours)."""
        wait = self.ref_reqs.pop(msg.req, None)
        if wait is None:
            return None
        ok, value = (False, msg.error) if isinstance(msg, PeerFailed) else (msg.ok, msg.value)
        table = self.table
        kind, arg, home, tries = wait
        if isinstance(msg, PeerFailed) and tries == 0 and self._home_alive(home):
            # the connection failed under the request (it may not have arrived): once more,
            # on a new connection (a second hold of this node there is no hold more)
            return [self._ask_home(kind, arg, home, 1)]
        if kind == "get":
            e = table.get_entry(arg)
            if e is None or e.payload is not None:
                return []
            e.fetching = False
            waiters, e.waiters = e.waiters, []
            if not ok:
                err: Any = value if isinstance(value, BaseException) else exc.ObjectLostError(
                    arg.hex(), detail=f"its home node answered: {value}")
                return [Answer(c, r, False, err) for c, r in waiters]
            e.payload = value  # type: ignore[assignment]
            e.log.append("payload from its home")
            return [Answer(c, r, True, value) for c, r in waiters]
        out: list[Any] = []
        # unknown at its home, or no hold could be taken there (its node is gone, or
        # unreachable twice): the holders hear it is lost, the proxy goes (nothing to
        # release there); a proxy that its home does not hold would be an early free
        unknown = (set(value) if isinstance(value, list) else set()) if ok else set(arg)
        for oid in arg:
            lost = oid in unknown
            e = table.get_entry(oid)
            if lost:
                if e is not None:
                    e.log.append("unknown at its home" if ok else f"not held at its home: {value}")
                    e.home = None
                    out += table.free(oid)
            elif e is not None:
                e.log.append("held at its home")
            for w in self.confirming.pop(oid, []):
                if lost:
                    w[2].append(oid)
                w[3] -= 1
                if w[3] == 0:
                    out.append(Answer(w[0], w[1], True, w[2]))
        return out

    def refs_peer_gone(self, node_id: str) -> list[Any]:
        """Our connection to a node closed, or it died: what we asked of it is answered
        as failed (increfs: the holders are answered; gets: the readers hear why)."""
        out: list[Any] = []
        for req in [r for r, w in self.ref_reqs.items() if w[2] == node_id]:
            out += self.ref_reply(Client(None, ""), PeerFailed(req, exc.NodeDiedError(
                f"node {node_id[:8]} went away"))) or []
        return out

    def remote_releases(self) -> list[Any]:
        """Our holds at other nodes to take and to let go (proxies freed), as messages."""
        take, release = self.table.take_remote_releases()
        return [*(ToPeer(home, (M.INCREF, None, oids)) for home, oids in take.items()
                  if self._home_alive(home)),
                *(ToPeer(home, (M.DECREF, oids)) for home, oids in release.items()
                  if self._home_alive(home))]

    def freed_notices(self) -> list[Any]:
        """Nodes that copied objects freed here are told (they drop their copies)."""
        return [ToPeer(node, (M.FREED, oids)) for node, oids in self.table.take_freed_notices().items()
                if self._home_alive(node)]

    def copied_from(self, oid: bytes) -> list[Any]:
        """A pull ended: a cached copy asks its source to say when the object goes there."""
        source = self.pull_sources.pop(oid, None)
        e = self.table.get_entry(oid)
        if source is None or e is None or e.home is not None or "cache" not in e.holders:
            return []
        return [ToPeer(source, (M.WATCH, [oid]))] if self._home_alive(source) else []

    def watch_copies(self, client: Client, msg: M.Watch) -> list[Any]:
        if not client.holder.startswith("node:"):
            return []  # (only a node keeps copies)
        self.table.watch(msg.oids, client.holder[5:])
        return []

    def copies_freed(self, client: Client, msg: M.Freed) -> list[Any]:
        if not client.holder.startswith("node:"):
            return []
        return list(self.table.drop_copies(msg.oids))

    def node_holds_gone(self, node_id: str) -> list[Any]:
        """A node died: the holds it had here go."""
        return list(self.table.release_holder("node:" + node_id))
