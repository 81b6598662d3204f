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
        # peer request id -> ("incref", client conn, client req, missing so far, requests left)
        #                  | ("get", oid)
        self.ref_reqs: dict[int, list[Any]] = {}

    def _home_alive(self, home: str) -> bool:
        peer = self.peers.get(home)
        return self.linked and peer is not None and peer["state"] == "ALIVE"

    def incref_homes(self, client: Client, msg: M.Incref) -> list[Any]:
        """Holds on objects some of which may live on other nodes (`msg.homes`)."""
        table, holder = self.table, msg.holder or client.holder
        out: list[Any] = []
        homes = msg.homes or {}
        missing: list[bytes] = []
        remote: dict[str, list[bytes]] = {}
        for oid in msg.oids:
            if table.hold(oid, holder):
                continue
            home = homes.get(oid)
            if home is None or home == self.node_id or not self._home_alive(home):
                missing.append(oid)
                continue
            table.proxy(oid, home)
            table.hold(oid, holder)
            remote.setdefault(home, []).append(oid)
        if not remote:
            return [] if msg.req is None else [Answer(client.conn, msg.req, True, missing)]
        wait = None if msg.req is None else ["incref", client.conn, msg.req, missing, len(remote)]
        for home, oids in remote.items():
            req = next(self._peer_req_ids)
            if wait is not None:
                self.ref_reqs[req] = wait
            out.append(PeerRequest(home, req, (M.INCREF, req, oids)))
        return out

    def get_proxy(self, client: Client, msg: M.GetObject) -> list[Any]:
        """`GET_OBJECT`: a proxy without its payload asks its home (once)."""
        e = self.table.get_entry(msg.oid)
        out: list[Any] = list(self.table.get(client.conn, msg.req, msg.oid))
        if e is not None and e.home is not None and e.payload is None and not e.fetching \
                and e.secondary is None and e.waiters:
            e.fetching = True
            req = next(self._peer_req_ids)
            self.ref_reqs[req] = ["get", msg.oid]
            out.append(PeerRequest(e.home, req, (M.GET_OBJECT, req, msg.oid)))
        return out

    def ref_reply(self, client: Client, msg: M.Reply | PeerFailed) -> list[Any] | None:
        """The answer to one of our requests to a home (None: not ours)."""
        wait = self.ref_reqs.pop(msg.req, None)
        if wait is None:
            return None
        ok, value = (False, msg.error) if isinstance(msg, PeerFailed) else (msg.ok, msg.value)
        table = self.table
        if wait[0] == "get":
            e = table.get_entry(wait[1])
            if e is None or e.payload is not None:
                return []
            e.fetching = False
            waiters, e.waiters = e.waiters, []
            if not ok:
                err: Any = value if isinstance(value, BaseException) else exc.ObjectLostError(
                    wait[1].hex(), detail=f"its home node answered: {value}")
                return [Answer(c, r, False, err) for c, r in waiters]
            e.payload = value  # type: ignore[assignment]
            e.log.append("payload from its home")
            return [Answer(c, r, True, value) for c, r in waiters]
        _, conn, req, missing, left = wait
        out: list[Any] = []
        unknown = value if ok and isinstance(value, list) else []  # (not asked: its node is going)
        for oid in unknown:  # unknown at its home: lost; the proxy goes (nothing to release)
            missing.append(oid)
            e = table.get_entry(oid)
            if e is not None:
                e.home = None
                out += table.free(oid)
        wait[4] = left - 1
        if wait[4] == 0:
            out.append(Answer(conn, req, True, missing))
        return out

    def remote_releases(self) -> list[Any]:
        """Our holds at other nodes to take and to let go (proxies freed), as messages."""
        take, release = self.table.take_remote_releases()
        return [*(ToPeer(home, (M.INCREF, None, oids)) for home, oids in take.items()
                  if self._home_alive(home)),
                *(ToPeer(home, (M.DECREF, oids)) for home, oids in release.items()
                  if self._home_alive(home))]

    def node_holds_gone(self, node_id: str) -> list[Any]:
        """A node died: the holds it had here go."""
        return list(self.table.release_holder("node:" + node_id))
