"""Synchronous tests of the driver's ownership and reference counts (no processes)."""

from __future__ import annotations

from carme import _messages as M
from carme._ownership import Ownership

A, B, C = b"a" * 16, b"b" * 16, b"c" * 16
INLINE = (M.INLINE, b"x", [], False)


def lost(oid: bytes) -> tuple:
    return (M.INLINE, b"lost:" + oid, [], True)


def test_counts_say_when_the_last_reference_goes() -> None:
    own = Ownership("n1")
    own.add(A)
    own.add(A)
    assert own.count(A) == 2
    assert own.remove(A) is False
    assert own.remove(A) is True
    assert own.count(A) == 0 and A not in own.counts


def test_a_local_object_is_dropped_without_messages() -> None:
    own = Ownership("n1")
    own.new_owned(A, "f")
    own.set_payload(A, INLINE, daemon_lost=False)
    own.add(A)
    assert own.remove(A)
    own.ref_zero(A)
    assert A not in own.objects
    assert own.take_releases() == ([], [], {}, {})


def test_ref_zero_with_a_new_reference_keeps_the_entry() -> None:
    own = Ownership("n1")
    own.new_owned(A)
    own.add(A)
    own.ref_zero(A)  # a late zero for a reference that came back
    assert A in own.objects


def test_an_exported_object_releases_its_hold_at_its_home() -> None:
    own = Ownership("n1")
    e = own.new_owned(A)
    own.set_payload(A, INLINE, daemon_lost=False)
    plan = own.begin_export(A)
    assert plan is not None and plan.payload == INLINE
    assert e.exported and e.held
    assert own.begin_export(A) is None  # once
    own.ref_zero(A)
    assert own.take_daemon_releases() == ([A], None)
    # an inline return made on n2 (home: where its worker ran) is exported to our own
    # daemon: our hold, and its release, are there (n2 never had it)
    e2 = own.new_owned(B)
    e2.home = "n2"
    e2.payload = INLINE
    own.begin_export(B)
    own.ref_zero(B)
    assert own.take_releases() == ([B], [], {}, {})
    # one held at n2 already (a shared return written there) is released there
    e3 = own.new_owned(C)
    e3.home, e3.held, e3.exported = "n2", True, True
    e3.payload = INLINE
    own.ref_zero(C)
    assert own.take_releases() == ([], [], {"n2": [C]}, {})


def test_export_hands_over_blob_holds_and_kept_refs() -> None:
    own = Ownership("n1")
    e = own.new_owned(A)
    e.contained_ids = [B]
    e.keep = ["ref-c"]
    e.home = "n2"
    e.type_name = "list"
    plan = own.begin_export(A)
    assert plan is not None
    assert plan.blob_holds == [B] and plan.keep == ["ref-c"]
    assert plan.home == "n2" and plan.type_name == "list" and plan.payload is None
    assert not e.contained_ids  # the daemon's copy holds them from now on


def test_exported_pending_object_is_an_orphan_until_sealed() -> None:
    """A reference left while the value is still coming: the daemon learns the value
    only from us, so the entry stays until it is sealed there."""
    own = Ownership("n1")
    own.new_owned(A)
    own.begin_export(A)
    assert own.export_sent(A) is None  # (the EXPORT reached the daemon; no value yet)
    own.ref_zero(A)
    assert A in own.objects and own.objects[A].orphan
    assert own.take_releases() == ([], [], {}, {})
    done = own.set_payload(A, INLINE, daemon_lost=False)
    assert done is not None and done.seal
    entry = own.objects[A]
    assert entry.sealing
    own.ref_zero(A)  # a zero while sealing still keeps it
    assert A in own.objects
    assert own.sealed(A, entry) is True
    own.ref_zero(A)
    assert A not in own.objects
    assert own.take_releases().local == [A]


def test_a_value_arriving_while_its_export_is_sent_is_sealed_after_the_export() -> None:
    """The race behind a get that hung: the I/O thread got a task's value between the
    main thread's decision to export the pending object and its EXPORT reaching the
    daemon. Sealed at once, the value overtook the EXPORT: the daemon freed a sealed
    object nobody held, and the EXPORT that followed made a new entry that never got a
    value. The seal now waits for the EXPORT and is sent by the exporter."""
    own = Ownership("n1")
    own.new_owned(A)
    plan = own.begin_export(A)
    assert plan is not None and plan.payload is None  # the EXPORT says "pending"
    done = own.set_payload(A, INLINE, daemon_lost=False)  # (I/O thread, meanwhile)
    assert done is not None and not done.seal
    own.ref_zero(A)  # the last local reference goes before the seal: kept until sealed
    assert A in own.objects and own.objects[A].orphan
    entry = own.export_sent(A)  # the exporter, once its EXPORT is at the daemon
    assert entry is own.objects[A] and entry.sealing
    assert own.export_sent(A) is None  # (once)
    assert own.sealed(A, entry) is True  # then the orphan goes
    own.ref_zero(A)
    assert A not in own.objects
    # an object whose value came before its export is sent with it: nothing to seal after
    own.new_owned(B)
    own.set_payload(B, INLINE, daemon_lost=False)
    plan = own.begin_export(B)
    assert plan is not None and plan.payload == INLINE
    assert own.export_sent(B) is None


def test_no_seal_when_the_daemon_is_gone_or_not_owned() -> None:
    own = Ownership("n1")
    own.new_owned(A)
    own.begin_export(A)
    done = own.set_payload(A, INLINE, daemon_lost=True)
    assert done is not None and not done.seal
    own.borrow([B])
    done = own.set_payload(B, INLINE, daemon_lost=False)
    assert done is not None and not done.seal


def test_set_payload_once_runs_waiters_and_sizes() -> None:
    own = Ownership("n1")
    own.new_owned(A)
    calls: list[int] = []
    assert own.when_ready(A, lambda: calls.append(1)) == "wait"
    done = own.set_payload(A, (M.INLINE, b"abc", [b"de"], False), daemon_lost=False)
    assert done is not None and len(done.waiters) == 1
    assert own.objects[A].size == 5
    assert own.set_payload(A, INLINE, daemon_lost=False) is None
    assert own.set_payload(C, INLINE, daemon_lost=False) is None  # unknown
    own.new_owned(B)
    own.set_payload(B, (M.SHARED, 64, 1000, False, "n1"), daemon_lost=False)
    assert own.objects[B].size == 1000


def test_when_ready_fetches_a_borrowed_object_once() -> None:
    own = Ownership("n1")
    assert own.when_ready(A, lambda: None) == "now"  # unknown: the caller reads it as lost
    assert own.borrow([A, A]) == [A]
    assert own.borrow([A]) == []
    assert own.when_ready(A, lambda: None) == "fetch"
    assert own.when_ready(A, lambda: None) == "wait"
    own.set_payload(A, INLINE, daemon_lost=False)
    assert own.when_ready(A, lambda: None) == "now"


def test_borrowed_objects_the_daemon_does_not_know_are_lost_and_unheld() -> None:
    own = Ownership("n1")
    own.borrow([A, B])
    own.missing([A], lost)
    assert own.objects[A].payload == lost(A) and not own.objects[A].held
    assert own.objects[B].held and own.objects[B].payload is None
    own.ref_zero(A)
    own.ref_zero(B)
    assert own.take_daemon_releases() == ([B], None)


def test_blob_holds_group_by_node() -> None:
    own = Ownership("n1")
    own.release_blob_holds([A], None)
    own.release_blob_holds([B], "n1")
    own.release_blob_holds([C], "n2")
    own.release_holds([C], "n3")
    assert own.take_daemon_releases() == ([], [A, B])
    assert own.take_releases() == ([], [], {"n3": [C]}, {"n2": [C]})
    assert own.take_releases() == ([], [], {}, {})


def test_a_dropped_entry_releases_its_blob_holds_and_copy() -> None:
    own = Ownership("n1")
    e = own.new_owned(A)
    e.payload = INLINE
    e.contained_ids = [B]
    e.keep = ["ref"]
    own.ref_zero(A)
    assert own.take_daemon_releases() == ([], [B])
    assert not e.keep
    own.add_copy(C, (M.SHARED, 0, 10, False, "n2"))
    own.add_copy(C, (M.SHARED, 0, 10, False, "n2"))
    assert own.objects[C].copy and not own.objects[C].held
    own.ref_zero(C)
    assert own.take_daemon_releases() == ([C], None)


def test_pending_lists_objects_without_a_value() -> None:
    own = Ownership("n1")
    own.new_owned(A)
    own.new_owned(B)
    own.set_payload(B, INLINE, daemon_lost=False)
    assert own.pending() == [A]
