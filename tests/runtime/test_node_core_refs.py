"""Proxies of other nodes' objects (`_node_core_refs.py`) and the owner's side of homes
(`_ownership.py`): synchronous, no processes."""

from __future__ import annotations

from carme import _messages as M
from carme._node_core import Client, NodeCore, PeerFailed
from carme._node_effects import PeerRequest, ToPeer
from carme._node_objects import Answer, ObjectTable
from carme._ownership import Ownership
from carme._store import Arena

HERE = "h" * 56
HOME = "y" * 56
OTHER = "z" * 56
A = b"a" * 28
B = b"b" * 28
C = b"c" * 28


def _core(peers: dict | None = None) -> NodeCore:
    alive = {"state": "ALIVE", "address": "x", "grpc_address": "g"}
    return NodeCore(ObjectTable(Arena(1 << 20), HERE), node_id=HERE, linked=True,
                    peers=peers if peers is not None else {HOME: dict(alive), OTHER: dict(alive)})


def _handle(core: NodeCore, client: Client, raw: tuple) -> list:
    return core.handle(client, M.decode(raw))


def _reply(core: NodeCore, req: int, value: object, ok: bool = True) -> list:
    return core.handle(Client("peer", "node:" + HOME, peer=HOME), M.Reply(req, ok, value))


def test_a_borrower_is_answered_only_once_the_home_holds_for_this_node() -> None:
    core = _core()
    w = Client("w", "w1", 1)
    out = _handle(core, w, (M.INCREF, 5, [A], None, {A: HOME}))
    (ask,) = out
    assert isinstance(ask, PeerRequest) and ask.node_id == HOME and ask.msg[0] == M.INCREF
    assert ask.msg[2] == [A]
    assert core.table.get_entry(A).holders == {"w1": 1}
    (answer,) = _reply(core, ask.req, [])
    assert answer == Answer("w", 5, True, [])
    # the last local holder goes: this node's hold at the home is released there
    assert _handle(core, w, (M.DECREF, [A])) == [ToPeer(HOME, (M.DECREF, [A]))]
    assert core.table.get_entry(A) is None


def test_unknown_at_its_home_is_missing_and_nothing_is_released_twice() -> None:
    core = _core()
    w = Client("w", "w1", 1)
    (ask,) = _handle(core, w, (M.INCREF, 5, [A, B], None, {A: HOME, B: "dead" * 14}))
    out = _reply(core, ask.req, [A])
    assert out[-1] == Answer("w", 5, True, [B, A])  # B: its home is not a live node
    assert core.table.get_entry(A) is None and not core.table.remote_releases


def test_a_proxy_fetches_its_payload_from_home_once_and_pulls_a_shared_one() -> None:
    core = _core()
    w, v = Client("w", "w1", 1), Client("v", "v1", 2)
    (ask,) = _handle(core, w, (M.INCREF, 5, [A], None, {A: HOME}))
    _reply(core, ask.req, [])
    (get,) = _handle(core, w, (M.GET_OBJECT, 6, A))
    assert isinstance(get, PeerRequest) and get.msg == (M.GET_OBJECT, get.req, A)
    assert _handle(core, v, (M.GET_OBJECT, 7, A)) == []  # asked once
    payload = (M.SHARED, 0, 1000, False, OTHER)
    assert _reply(core, get.req, payload) == [Answer("w", 6, True, payload), Answer("v", 7, True, payload)]
    # a process here reads it: pulled into the proxy's entry, from the node that has it
    pulls = _handle(core, w, (M.GET_REMOTE, 8, A, OTHER))
    assert [type(p).__name__ for p in pulls] == ["StartPull"]
    off = core.table.alloc_secondary(A, 1000)
    answers = core.table.pulled(A, off, 1000, False, None)
    assert answers == [Answer("w", 8, True, (M.SHARED, off, 1000, False, HERE))]
    assert "cache" not in core.table.get_entry(A).holders  # the copy goes with the proxy
    # w held it once (a process holds at most once); its release frees the proxy and
    # its copy, and this node's hold at the home goes
    assert _handle(core, w, (M.DECREF, [A])) == [ToPeer(HOME, (M.DECREF, [A]))]
    assert core.table.get_entry(A) is None
    assert core.table.arena.used_bytes == 0


def test_a_home_that_cannot_be_asked_is_asked_once_more_then_the_object_is_lost() -> None:
    """A request that failed under its connection may not have arrived: it is sent once
    more (a second hold of this node there is no hold more). Failing again, the borrower
    hears the object is lost: a proxy its home does not hold would be freed early."""
    core = _core()
    w = Client("w", "w1", 1)
    (ask,) = _handle(core, w, (M.INCREF, 5, [A], None, {A: HOME}))
    (again,) = core.handle(None, PeerFailed(ask.req, ConnectionError("gone")))
    assert isinstance(again, PeerRequest) and again.node_id == HOME and again.msg == (M.INCREF, again.req, [A])
    out = core.handle(None, PeerFailed(again.req, ConnectionError("gone again")))
    assert out == [Answer("w", 5, True, [A])]  # (A in the missing list: lost)
    assert core.table.get_entry(A) is None and "not held at its home" in "; ".join(core.table.story(A))
    # once more: answered at the first try
    (ask,) = _handle(core, w, (M.INCREF, 6, [A], None, {A: HOME}))
    assert _reply(core, ask.req, []) == [Answer("w", 6, True, [])]
    assert "held at its home" in core.table.story(A)


def test_a_nodes_holds_outlive_its_connection_while_it_is_alive() -> None:
    """A node's connection closing is not its death: its holds here stay (its proxies
    count on them) until the view says it died."""
    from carme._node_effects import ClientGone
    table = ObjectTable(Arena(1 << 20), HERE)
    off = table.alloc(A, 1000, 1, "driver")
    table.export(A, (M.SHARED, off, 1000, False, HERE), [], 0, "bytes", "driver", 1)
    core = NodeCore(table, node_id=HERE, linked=True,
                    peers={HOME: {"state": "ALIVE", "address": "x", "grpc_address": "g"}})
    node = Client("conn1", "node:" + HOME, 1)
    assert _handle(core, node, (M.INCREF, 5, [A])) == [Answer("conn1", 5, True, [])]
    table.unhold(A, "driver")
    core.handle(None, ClientGone(node))
    assert table.get_entry(A) is not None  # kept: the node is alive
    core.peers[HOME]["state"] = "DEAD"
    core.handle(None, ClientGone(Client("conn2", "node:" + HOME, 1)))
    assert table.get_entry(A) is None  # a dead node's connection: its holds go


def test_a_dead_nodes_holds_go() -> None:
    from carme._node_effects import ClusterView
    table = ObjectTable(Arena(1 << 20), HERE)
    off = table.alloc(A, 1000, 1, "driver")
    table.export(A, (M.SHARED, off, 1000, False, HERE), [], 0, "bytes", "driver", 1)
    table.hold(A, "node:" + HOME)
    table.unhold(A, "driver")
    assert table.get_entry(A) is not None
    core = NodeCore(table, node_id=HERE, linked=True)
    core.node_holds_gone(HOME)
    assert table.get_entry(A) is None and table.arena.used_bytes == 0
    assert ClusterView  # (the view's dead rows call node_holds_gone; tested end to end)


def test_a_value_exported_pending_then_written_elsewhere_holds_that_copy() -> None:
    table = ObjectTable(Arena(1 << 20), HERE)
    table.export(A, None, [], 1, "", "driver", 1)
    table.export(A, (M.SHARED, 0, 1000, False, OTHER), [], 0, "bytes", "driver", 1)
    assert table.take_remote_releases() == ({OTHER: [A]}, {})
    table.unhold(A, "driver")
    assert table.take_remote_releases() == ({}, {OTHER: [A]})


def test_owner_names_homes_and_releases_both_holds() -> None:
    own = Ownership(HERE)
    e = own.new_owned(A)
    e.payload = (M.SHARED, 0, 1000, False, OTHER)
    assert own.home_of(A) == HERE  # not exported yet: it will be, to our daemon
    own.begin_export(A)
    e.home = OTHER  # (finish: written on OTHER after the export)
    own.held_here.add(A)
    assert own.home_of(A) == OTHER
    own.add(A)
    assert own.remove(A)
    own.ref_zero(A)
    rel = own.take_releases()
    assert rel.local == [A] and rel.peers == {OTHER: [A]}
    assert own.home_of(B) == HERE


def test_a_second_holder_of_an_unconfirmed_proxy_waits_for_the_home_too() -> None:
    core = _core()
    w, v = Client("w", "w1", 1), Client("v", "v1", 2)
    (ask,) = _handle(core, w, (M.INCREF, 5, [A], None, {A: HOME}))
    assert _handle(core, v, (M.INCREF, 6, [A, B])) == []  # (B: unknown, no home named)
    out = _reply(core, ask.req, [])
    assert out == [Answer("w", 5, True, []), Answer("v", 6, True, [B])]
    assert _handle(core, v, (M.INCREF, 7, [A])) == [Answer("v", 7, True, [])]  # confirmed now


def test_a_ref_pickled_naming_our_daemon_is_exported_there_even_if_written_elsewhere() -> None:
    own = Ownership(HERE)
    e = own.new_owned(A)  # a task return, pending
    assert own.home_of(A) == HERE  # pickled now: the reader will ask our daemon
    e.home = OTHER  # its value arrives, written on OTHER (finish)
    done = own.returned(A, e, (M.SHARED, 0, 1000, False, OTHER), OTHER, False)
    assert done is not None and not done.seal  # (exported with it, below)
    plan = own.begin_export(A)  # so the export that follows the pickling still happens
    assert plan is not None and plan.payload == e.payload
    assert A in own.held_here  # held at OTHER (where written) and at our daemon: both released
    own.add(A)
    assert own.remove(A)
    own.ref_zero(A)
    rel = own.take_releases()
    assert rel.local == [A] and rel.peers == {OTHER: [A]}
    # not pickled before its value came: held where written only, nothing to export
    e2 = own.new_owned(B)
    e2.home = OTHER
    done = own.returned(B, e2, (M.SHARED, 0, 1000, False, OTHER), OTHER, False)
    # our daemon never hears of it (before, a seal made an entry there that was freed at
    # once, releasing the holds on refs inside the value)
    assert done is not None and not done.seal
    assert own.begin_export(B) is None and own.home_of(B) == OTHER
    # written in our own node's store: sealed at our daemon (the worker made its entry)
    e3 = own.new_owned(C)
    e3.home = HERE
    done = own.returned(C, e3, (M.SHARED, 0, 1000, False, HERE), HERE, False)
    assert done is not None and done.seal and e3.held


def test_a_cached_copy_goes_when_its_object_is_freed_at_its_node() -> None:
    # this node pulls OTHER's object for a process here, and asks to hear when it goes
    core = _core()
    w = Client("w", "w1", 1)
    (pull,) = _handle(core, w, (M.GET_REMOTE, 5, A, OTHER))
    off = core.table.alloc_secondary(A, 1000)
    from carme._node_effects import Pulled
    out = core.handle(None, Pulled(A, off, 1000, False, None))
    assert out[-1] == ToPeer(OTHER, (M.WATCH, [A]))
    _handle(core, w, (M.DECREF, [A]))
    assert core.table.get_entry(A) is not None  # (kept in the cache)
    # OTHER says it was freed there: the copy goes (only a node may say so)
    assert _handle(core, w, (M.FREED, [A])) == [] and core.table.get_entry(A) is not None
    core.handle(Client("p", "node:" + OTHER, 3, peer=OTHER), M.decode((M.FREED, [A])))
    assert core.table.get_entry(A) is None and core.table.arena.used_bytes == 0 and not core.table.cached


def test_the_node_that_has_an_object_tells_its_copiers_when_it_goes() -> None:
    core = _core()
    table = core.table
    off = table.alloc(A, 1000, 1, "driver")
    table.export(A, (M.SHARED, off, 1000, False, HERE), [], 0, "bytes", "driver", 1)
    peer = Client("p", "node:" + OTHER, 3, peer=OTHER)
    # B is already gone when asked: said at once
    assert core.handle(peer, M.decode((M.WATCH, [A, B]))) == [ToPeer(OTHER, (M.FREED, [B]))]
    assert core.handle(Client("d", "driver", 1), M.decode((M.DECREF, [A]))) == [
        ToPeer(OTHER, (M.FREED, [A]))]


def test_requests_to_a_home_that_dies_are_answered() -> None:
    core = _core()
    w, v = Client("w", "w1", 1), Client("v", "v1", 2)
    (ask,) = _handle(core, w, (M.INCREF, 5, [A], None, {A: HOME}))
    _reply(core, ask.req, [])
    (get,) = _handle(core, v, (M.GET_OBJECT, 6, A))
    (ask_b,) = _handle(core, w, (M.INCREF, 7, [B], None, {B: HOME}))
    core.peers[HOME]["state"] = "DEAD"  # (the view says so first: nothing is asked again)
    out = core.refs_peer_gone(HOME)
    failed = next(a for a in out if a.client == "v")
    assert not failed.ok and "went away" in str(failed.value)
    assert Answer("w", 7, True, [B]) in out  # B could not be held there: lost
    assert not core.ref_reqs
