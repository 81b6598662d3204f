"""Routing of remote output lines to the cell that launched the work."""

from __future__ import annotations

import threading

from carme_kernel._output import OutputRouter


def make() -> tuple[OutputRouter, list[tuple[object, str, str]], list[tuple[str, str]]]:
    sent: list[tuple[object, str, str]] = []
    fell: list[tuple[str, str]] = []
    router = OutputRouter(
        lambda p, s, t: sent.append((p["msg_id"], s, t)),
        lambda s, t: fell.append((s, t)),
        max_cells=2,
    )
    return router, sent, fell


def test_routes_by_run_to_parent() -> None:
    router, sent, fell = make()
    router.register("r1", {"msg_id": "m1"})
    router.register("r2", {"msg_id": "m2"})
    router.handle({"run": "r1"}, "stdout", "a\n")
    router.handle({"run": "r2"}, "stderr", "b\n")
    assert sent == [("m1", "stdout", "a\n"), ("m2", "stderr", "b\n")]
    assert fell == []


def test_unknown_or_missing_tag_never_goes_to_a_cell() -> None:
    router, sent, fell = make()
    router.register("r1", {"msg_id": "m1"})
    router.handle(None, "stdout", "x\n")
    router.handle({"run": "other"}, "stdout", "y\n")
    assert sent == []
    assert fell == [("stdout", "x\n"), ("stdout", "y\n")]


def test_bounded_memory_of_cells() -> None:
    router, sent, fell = make()
    for i in range(3):
        router.register(f"r{i}", {"msg_id": f"m{i}"})
    router.handle({"run": "r0"}, "stdout", "old\n")
    assert fell == [("stdout", "old\n")]


def test_wait_for_newlines() -> None:
    router, _, _ = make()
    router.register("r", {"msg_id": "m"})
    assert not router.wait_for("r", 1, 0.01)
    t = threading.Timer(0.05, router.handle, args=({"run": "r"}, "stdout", "1\n2\n"))
    t.start()
    assert router.wait_for("r", 2, 5)
    t.join()
    assert router.newlines("r") == 2
