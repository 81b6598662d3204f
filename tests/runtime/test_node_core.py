"""The node core's entry point for object messages: wire tuples in, effects out, no I/O."""

from __future__ import annotations

from carme import _messages as M
from carme import exceptions as exc
from carme._node_core import Client, NodeCore, Note
from carme._node_objects import Answer, ObjectTable
from carme._store import Arena

NODE = "n" * 56
A = b"a" * 28


def _core(capacity: int = 1 << 20) -> NodeCore:
    return NodeCore(ObjectTable(Arena(capacity), NODE))


def _handle(core: NodeCore, client: Client, raw: tuple) -> list:
    return core.handle(client, M.decode(raw))


def test_put_get_and_release_through_messages():
    core = _core()
    driver, reader = Client("driver", "d1", 10), Client("reader", "r1", 11)
    (alloc,) = _handle(core, driver, (M.ALLOC, 1, A, 1000, 10))
    assert isinstance(alloc, Answer) and alloc.ok
    off = alloc.value
    assert _handle(core, reader, (M.GET_OBJECT, 5, A)) == []  # pending: the reader waits
    payload = (M.SHARED, off, 1000, False, NODE)
    effects = _handle(core, driver, (M.EXPORT, 2, A, payload, [], 0, "bytes"))
    assert [(e.client, e.req, e.ok) for e in effects] == [("driver", 2, True), ("reader", 5, True)]
    (missing,) = _handle(core, reader, (M.INCREF, 6, [A, b"z" * 28]))
    assert missing.value == [b"z" * 28]
    _handle(core, driver, (M.DECREF, [A]))
    _handle(core, reader, (M.DECREF, [A]))
    (stats,) = _handle(core, driver, (M.STORE_STATS, 7))
    assert stats.value["objects"] == 0 and stats.value["used"] == 0


def test_a_full_store_is_an_error_answer_naming_the_fix():
    core = _core(capacity=4096)
    (answer,) = _handle(core, Client("c", "h"), (M.ALLOC, 1, A, 10_000, 1))
    assert not answer.ok and isinstance(answer.value, exc.ObjectStoreFullError)
    assert "object_store_memory" in str(answer.value)


def test_an_export_of_a_foreign_block_is_refused_and_logged():
    core = _core()
    effects = _handle(core, Client("c", "h", 9), (M.EXPORT, 3, A, (M.SHARED, 0, 64, False, NODE), [], 1, ""))
    assert isinstance(effects[0], Note) and "pid 9" in effects[0].text
    assert not effects[1].ok and isinstance(effects[1].value, M.BadMessage)
    assert len(core.table) == 0
