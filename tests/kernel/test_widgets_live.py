"""The widgets against a real embedded cluster (in-process, no kernel)."""

from __future__ import annotations

import threading
import time
from types import ModuleType
from typing import Any

import pytest

pytestmark = [pytest.mark.processes, pytest.mark.timeout(120)]


def _carme_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("carme-") and "View" in t.name]


def test_cluster_objects_and_timeline_show_what_just_ran(carme: ModuleType) -> None:
    import numpy as np

    from carme_kernel.widgets import ClusterView, ObjectStoreView, TimelineView

    @carme.remote
    def square(x: int) -> int:
        return x * x

    @carme.remote
    def fails() -> None:
        raise ValueError("planned")

    big = carme.put(np.zeros(3 << 20, dtype=np.uint8))
    assert carme.get([square.remote(i) for i in range(5)]) == [0, 1, 4, 9, 16]
    with pytest.raises(ValueError):
        carme.get(fails.remote())

    cv = ClusterView()
    node = cv.model["nodes"][0]
    assert cv.model["totals"]["nodes"] == 1 and node["is_head"]
    assert {"name": "CPU", "used": 0.0, "total": 2.0} in node["resources"] or node["resources"][0]["total"] == 2.0
    assert node["tasks"].get("FINISHED", 0) >= 5 and node["tasks"].get("FAILED", 0) >= 1
    assert node["memory_total"] and node["num_cpus"] and node["store_capacity"]

    ov = ObjectStoreView()
    top = ov.model["objects"][0]
    assert top["object_id"] == big.hex() and top["size"] >= 3 << 20 and top["type"] == "ndarray"
    assert ov.model["total_size"] >= 3 << 20 and ov.model["stores"][0]["used"] >= 3 << 20

    tv = TimelineView()
    names = [s["name"] for s in tv.model["spans"]]
    assert names.count("square") == 5 and "fails" in names
    failed = [s for s in tv.model["spans"] if s["name"] == "fails"][-1]
    assert failed["state"] == "FAILED" and "ValueError" in failed["error"]
    for w in (cv, ov, tv):
        w.close()
    del big


def test_objects_of_one_task_are_told_apart_with_their_sizes(carme: ModuleType) -> None:
    """One task's returns and the puts of one process used to show the same 16 characters
    (the process's id prefix) in the object store widget and ``%carme objects``."""
    from carme_kernel import views
    from carme_kernel.widgets import ObjectStoreView, _html

    @carme.remote(num_returns=3)
    def three() -> tuple[int, str, list[int]]:
        return 1, "a" * 20, [1, 2]

    refs = [*three.remote(), carme.put("p" * 30)]
    carme.get(refs)
    ids = [r.hex() for r in refs]
    ov = ObjectStoreView()
    rows = {o["object_id"]: o for o in ov.model["objects"]}
    shown = [rows[i]["short_id"] for i in ids]
    assert len(set(shown)) == 4, shown
    assert all(rows[i]["size"] for i in ids), [rows[i] for i in ids]  # inline results too
    page = _html.objects_html(ov.model)
    assert all(f"title='{i}'>{rows[i]['short_id']}<" in page for i in ids)  # full id on hover
    ov.close()
    view = views.objects_view(carme.notebook.state_rows("objects"))
    page = view._repr_html_()
    assert all(f"title='{i}'>{s}<" in page for i, s in zip(ids, shown, strict=True)), page
    assert all(s in repr(view) for s in shown)
    del refs


def test_polling_refreshes_then_not_connected_after_shutdown(carme: ModuleType) -> None:
    from carme_kernel.widgets import ClusterView

    cv = ClusterView(interval=0.2)
    cv._repr_mimebundle_()
    first = cv.model["updated_ms"]
    deadline = time.monotonic() + 5
    while cv.model["updated_ms"] == first and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cv.model["updated_ms"] > first and cv.status == "live"
    carme.shutdown()
    deadline = time.monotonic() + 5
    while cv.status != "not connected" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cv.status == "not connected" and cv.model["totals"]["nodes"] == 1
    assert cv.polling
    cv.close()
    assert not cv.polling and not _carme_threads()


def test_progress_counts_done_and_failed(carme: ModuleType) -> None:
    from carme_kernel.widgets import progress

    @carme.remote
    def slow(i: int) -> int:
        time.sleep(0.3)
        if i == 2:
            raise RuntimeError("no")
        return i

    refs = [slow.remote(i) for i in range(4)]
    bar = progress(refs)
    assert bar.model["total"] == 4 and bar.model["done"] < 4
    bar.start()
    carme.wait(refs, num_returns=4, timeout=30)
    deadline = time.monotonic() + 5
    while bar.polling and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (bar.model["done"], bar.model["failed"], bar.model["finished"]) == (4, 1, True)
    assert bar.status == "done" and bar.model["rate"] > 0
    bar.close()


def test_get_progress_hook_shows_a_bar_for_a_long_get(carme: ModuleType) -> None:
    from carme_kernel._progress_hook import GetProgress

    @carme.remote
    def nap(i: int) -> int:
        time.sleep(0.6)
        return i

    shown: list[Any] = []
    hook = GetProgress(lambda w, parent: shown.append((w, parent)), delay_s=0.3,
                       parent=lambda: {"msg_id": "m"})
    refs = [nap.remote(i) for i in range(4)]
    with hook(refs):
        assert carme.get(refs) == [0, 1, 2, 3]
    assert len(shown) == 1
    bar, parent = shown[0]
    assert parent == {"msg_id": "m"} and bar.model["finished"] and not bar.polling
    bar.close()


