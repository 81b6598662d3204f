"""The widgets' pure parts: state rows to models, static HTML, and the widgets on a fake source."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from carme_kernel.widgets import _data, _html

NODE = {
    "node_id": "n1" * 20, "node_ip": "127.0.0.1", "is_head_node": True, "state": "ALIVE",
    "node_name": "host", "resources_total": {"CPU": 4.0, "GPU": 1.0, "node:127.0.0.1": 1.0},
    "resources_available": {"CPU": 1.0, "GPU": 1.0}, "start_time_ms": 1,
    "object_store": {"capacity": 1000, "used": 250},
    "metrics": {"cpu_percent": 37.5, "num_cpus": 4, "memory_total": 8 << 30, "memory_used": 2 << 30,
                "workers_rss": 1 << 20,
                "gpus": [{"index": 0, "name": "H100", "uuid": "GPU-1", "utilization_gpu": 80,
                          "memory_used": 40, "memory_total": 80, "temperature": 60, "power_watts": 300.5}]},
}
NODE2 = {"node_id": "n2" * 20, "node_name": "other", "state": "DEAD", "resources_total": {"CPU": 2.0},
         "resources_available": {"CPU": 2.0}, "metrics": {"gpus": []}}
WORKERS = [
    {"worker_id": "w1", "is_alive": True, "node_id": NODE["node_id"], "state": "LEASED"},
    {"worker_id": "w2", "is_alive": True, "node_id": NODE["node_id"], "state": "IDLE"},
    {"worker_id": "w3", "is_alive": False, "node_id": NODE["node_id"], "state": "DEAD"},
]
TASKS = [
    {"task_id": "t1", "attempt_number": 0, "state": "FAILED", "node_id": NODE["node_id"]},
    {"task_id": "t1", "attempt_number": 1, "state": "FINISHED", "node_id": NODE["node_id"]},
    {"task_id": "t2", "attempt_number": 0, "state": "RUNNING", "node_id": NODE["node_id"]},
]


def test_cluster_model_counts_latest_attempts_and_resources() -> None:
    m = _data.cluster_model([NODE, NODE2], WORKERS, TASKS, at_ms=5)
    assert m["totals"]["nodes"] == 2 and m["totals"]["alive"] == 1
    assert m["totals"]["workers"] == 2
    assert m["totals"]["tasks"] == {"FINISHED": 1, "RUNNING": 1}
    n = m["nodes"][0]
    assert n["workers"] == {"IDLE": 1, "LEASED": 1}
    assert n["resources"][0] == {"name": "CPU", "used": 3.0, "total": 4.0}
    assert [r["name"] for r in n["resources"]] == ["CPU", "GPU"]  # node: pseudo-resource left out
    assert n["gpus"][0]["utilization"] == 80.0 and n["store_capacity"] == 1000
    assert m["totals"]["resources"][0] == {"name": "CPU", "used": 3.0, "total": 4.0}  # dead node out
    json.dumps(m)


def test_gpu_model_keeps_a_bounded_history() -> None:
    hist = _data.GpuHistory(seconds=2)
    for t in range(5):
        m = _data.gpu_model([NODE], hist, at_ms=t * 1000)
    card = m["nodes"][0]["gpus"][0]
    assert m["gpu_count"] == 1
    assert [s[0] for s in card["history"]] == [2000, 3000, 4000]
    assert card["history"][-1] == (4000, 80.0, 50.0)
    assert card["power_watts"] == 300.5


def test_no_gpus_is_a_message_not_an_error() -> None:
    m = _data.gpu_model([NODE2])
    assert m["gpu_count"] == 0
    assert "No GPUs" in _html.gpu_html(m, "live")


def test_objects_model_sorts_and_totals() -> None:
    objs = [
        {"object_id": "a", "object_size": 10, "type": "int", "pid": 1, "node_id": "n",
         "reference_count": 1, "created_ms": 3},
        {"object_id": "b", "object_size": 3000, "type": "ndarray", "pid": 2, "node_id": "n",
         "reference_count": 2, "holders": ["w" * 40], "spilled": True, "created_ms": 1},
        {"object_id": "a", "object_size": 10, "pid": 1},  # the same object seen twice
    ]
    m = _data.objects_model(objs, [{"node_id": "n", "object_store": {"used": 5, "capacity": 9}}])
    assert [o["object_id"] for o in m["objects"]] == ["b", "a"]
    assert m["total_objects"] == 2 and m["total_size"] == 3010 and m["spilled_objects"] == 1
    assert m["objects"][0]["holders"] == "wwwwwwww" and m["objects"][0]["owner"] == "pid 2"
    assert m["stores"][0]["objects"] == 2
    m2 = _data.objects_model(objs, sort_by="created", descending=False, limit=1)
    assert [o["object_id"] for o in m2["objects"]] == ["b"] and m2["total_objects"] == 2
    with pytest.raises(ValueError, match="sort_by must be one of size"):
        _data.objects_model(objs, sort_by="colour")
    assert "1 more not shown" in _html.objects_html(m2)


TRACE = [
    {"name": "process_name", "ph": "M", "pid": 1, "args": {"name": "Node aaaa"}},
    {"name": "thread_name", "ph": "M", "pid": 1, "tid": 2, "args": {"name": "Worker bbbb"}},
    {"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": "Worker aaaa"}},
    {"name": "f", "ph": "X", "pid": 1, "tid": 2, "ts": 2000.0, "dur": 500.0, "cat": "task",
     "args": {"task_id": "t2", "state": "FAILED", "cell": {"execution_count": 3}, "error": "ValueError: x"}},
    {"name": "g", "ph": "X", "pid": 1, "tid": 1, "ts": 1000.0, "dur": 100.0, "cat": "actor_task",
     "args": {"task_id": "t1", "state": "FINISHED", "cell": None}},
]


def test_timeline_model_lanes_spans_and_colors() -> None:
    m = _data.timeline_model(TRACE)
    assert [ln["worker"] for ln in m["lanes"]] == ["Worker aaaa", "Worker bbbb"]
    assert [(s["name"], s["lane"]) for s in m["spans"]] == [("g", 0), ("f", 1)]
    f = m["spans"][1]
    assert f["cell"] == "In [3]" and f["state"] == "FAILED" and f["error"] == "ValueError: x"
    assert m["spans"][0]["actor"] is True
    assert (m["t0_us"], m["t1_us"]) == (1000.0, 2500.0)
    assert m["colors"]["f"] == _data.color_for("f") and m["colors"]["f"].startswith("#")
    assert _data.timeline_model(TRACE, limit=1)["dropped"] == 1
    html = _html.timeline_html(m)
    assert "<svg" in html and "In [3]" in html


def test_a_run_reported_twice_shows_once() -> None:
    twice = [
        {"name": "f", "ph": "X", "pid": 1, "tid": 1, "ts": 5.0, "dur": 0.0,
         "args": {"task_id": "t", "attempt": 0, "state": "RUNNING"}},
        {"name": "f", "ph": "X", "pid": 1, "tid": 1, "ts": 5.0, "dur": 9.0,
         "args": {"task_id": "t", "attempt": 0, "state": "FINISHED"}},
        {"name": "f", "ph": "X", "pid": 1, "tid": 1, "ts": 20.0, "dur": 1.0,
         "args": {"task_id": "t", "attempt": 1, "state": "FINISHED"}},
    ]
    spans = _data.timeline_model(twice)["spans"]
    assert [(s["start_us"], s["dur_us"], s["state"]) for s in spans] == [(5.0, 9.0, "FINISHED"), (20.0, 1.0, "FINISHED")]


def test_chrome_trace_round_trips_through_the_model() -> None:
    m = _data.timeline_model(TRACE)
    again = _data.timeline_model(_data.chrome_trace(m))
    assert [(s["name"], s["start_us"], s["dur_us"], s["lane"]) for s in again["spans"]] == [
        (s["name"], s["start_us"], s["dur_us"], s["lane"]) for s in m["spans"]
    ]


def test_progress_model_rate_and_eta() -> None:
    m = _data.progress_model(10, 4, 1, 2.0, "x")
    assert (m["rate"], m["eta_s"], m["finished"]) == (2.0, 3.0, False)
    assert _data.progress_model(3, 3, 0, 1.0)["finished"] is True
    assert _data.progress_model(3, 0, 0, 0.0)["eta_s"] is None
    assert "4/10 done, 1 failed" in _html.progress_html(m)


def test_static_html_escapes_and_handles_no_data() -> None:
    bad = dict(NODE, node_name="<script>")
    html = _html.cluster_html(_data.cluster_model([bad]), "live")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "no data yet" in _html.cluster_html({}, "not connected")  # type: ignore[typeddict-item]


# -- the widgets on a fake source (no cluster) --------------------------------------------

class FakeSource:
    def __init__(self) -> None:
        self.connected = True
        self.calls = 0
        self.fail: Exception | None = None

    def _check(self) -> None:
        from carme_kernel.widgets import NotConnected

        self.calls += 1
        if self.fail is not None:
            raise self.fail
        if not self.connected:
            raise NotConnected("gone")

    def nodes(self) -> list[dict[str, Any]]:
        self._check()
        return [NODE]

    def workers(self) -> list[dict[str, Any]]:
        return WORKERS

    def tasks(self) -> list[dict[str, Any]]:
        return TASKS

    def objects(self) -> list[dict[str, Any]]:
        self._check()
        return [{"object_id": "a", "object_size": 5}, {"object_id": "b", "object_size": 7}]

    def timeline(self) -> list[dict[str, Any]]:
        self._check()
        return TRACE


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("carme-")}


def test_widget_polls_while_shown_and_stops_on_close() -> None:
    from carme_kernel.widgets import ClusterView

    src = FakeSource()
    w = ClusterView(source=src, interval=0.05)
    assert w.model["totals"]["nodes"] == 1 and w.status == "paused" and not w.polling
    data, _ = w._repr_mimebundle_()
    assert {"text/html", "text/plain", "application/vnd.jupyter.widget-view+json"} <= set(data)
    assert "carme cluster" in data["text/html"] and w.polling and w.status == "live"
    before = src.calls
    time.sleep(0.4)
    assert src.calls > before + 2
    w.close()
    assert not w.polling and "carme-ClusterView" not in _threads() and w.status == "closed"
    calls = src.calls
    time.sleep(0.2)
    assert src.calls == calls
    with pytest.raises(RuntimeError, match="closed"):
        w.start()


def test_widget_pauses_when_no_view_is_left() -> None:
    from carme_kernel.widgets import GPUView

    src = FakeSource()
    w = GPUView(source=src, interval=0.05)
    w.start()
    w._on_js(w, {"type": "views", "delta": 1}, [])
    w._on_js(w, {"type": "views", "delta": -1}, [])
    time.sleep(0.1)
    calls = src.calls
    time.sleep(0.3)
    assert src.calls == calls  # paused: no view shown
    w._on_js(w, {"type": "views", "delta": 1}, [])
    time.sleep(0.3)
    assert src.calls > calls
    w.close()


def test_not_connected_keeps_the_last_model_and_errors_are_shown() -> None:
    from carme_kernel.widgets import TimelineView

    src = FakeSource()
    w = TimelineView(source=src, interval=0.05)
    assert len(w.model["spans"]) == 2
    src.connected = False
    assert w.refresh() is False
    assert w.status == "not connected" and len(w.model["spans"]) == 2
    src.connected = True
    src.fail = KeyError("boom")
    assert w.refresh() is False and "KeyError" in w.error
    src.fail = None
    assert w.refresh() and w.error == "" and w.status == "paused"
    w.close()


def test_object_view_sorts_from_javascript(tmp_path: Any) -> None:
    from carme_kernel.widgets import ObjectStoreView

    w = ObjectStoreView(source=FakeSource())
    assert [o["object_id"] for o in w.model["objects"]] == ["b", "a"]
    w._on_js(w, {"type": "sort", "sort_by": "size", "descending": False}, [])
    assert [o["object_id"] for o in w.model["objects"]] == ["a", "b"]
    w._on_js(w, {"type": "sort", "sort_by": "bogus", "descending": False}, [])
    assert "sort_by must be one of" in w.error
    w.close()


def test_timeline_export_and_live_toggle(tmp_path: Any) -> None:
    from carme_kernel.widgets import TimelineView

    src = FakeSource()
    w = TimelineView(source=src)
    w._on_js(w, {"type": "live", "live": False}, [])
    assert w.live is False
    out = w.export(tmp_path / "t.json")
    assert json.loads(out.read_text()) == TRACE
    src.connected = False
    events = json.loads(w.export(tmp_path / "u.json").read_text())
    assert sum(1 for e in events if e["ph"] == "X") == 2
    w.close()


def test_progress_view_stops_when_done() -> None:
    from carme_kernel.widgets import ProgressView

    state = {"ready": [True, False, False], "failed": [False, False, False]}
    w = ProgressView([1, 2, 3], probe=lambda refs: (state["ready"], state["failed"]), interval=0.05)
    w.start()
    assert w.model["done"] == 1 and w.polling
    state["ready"] = [True, True, True]
    state["failed"] = [False, True, False]
    deadline = time.monotonic() + 5
    while w.polling and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not w.polling and w.status == "done"
    assert (w.model["done"], w.model["failed"], w.model["finished"]) == (3, 1, True)
    w.close()


def test_view_names_the_magic_kinds_and_exports_are_sorted() -> None:
    import carme_kernel.widgets as widgets

    assert widgets.__all__ == sorted(widgets.__all__)
    assert {k: c.__name__ for k, c in widgets.VIEWS.items()} == {
        "status": "ClusterView", "nodes": "ClusterView", "gpus": "GPUView",
        "objects": "ObjectStoreView", "timeline": "TimelineView",
    }
    with pytest.raises(ValueError, match="expected one of status, nodes"):
        widgets.view("actors")


def test_interval_must_be_positive() -> None:
    from carme_kernel.widgets import ClusterView

    with pytest.raises(ValueError, match="interval must be a positive"):
        ClusterView(source=FakeSource(), interval=0)


def test_get_progress_hook_shows_only_long_gets() -> None:
    from carme_kernel._progress_hook import GetProgress

    shown: list[Any] = []
    hook = GetProgress(lambda w, parent: shown.append((w, parent)), delay_s=0.1,
                       parent=lambda: {"msg_id": "cell"})
    with hook([1]):  # one ref: never
        time.sleep(0.2)
    with hook([1, 2]):  # fast: never
        pass
    time.sleep(0.2)
    assert shown == []


# -- the JavaScript side ---------------------------------------------------------------------

WIDGETS_DIR = Path(__file__).resolve().parents[2] / "kernel" / "carme_kernel" / "widgets"


def test_typescript_declarations_match_the_typed_dicts() -> None:
    """Every TypedDict of _messages.py has an interface of the same name and fields in _messages.d.ts."""
    import typing

    from carme_kernel.widgets import _messages

    dts = re.sub(r"/\*.*?\*/|//[^\n]*", "", (WIDGETS_DIR / "_messages.d.ts").read_text(), flags=re.S)
    interfaces: dict[str, set[str]] = {}
    for m in re.finditer(r"export interface (\w+)(?:<\w+>)?(?: extends (\w+))?\s*\{(.*?)\}", dts, re.S):
        fields = set(re.findall(r"(\w+)\??\s*:", m.group(3)))
        if m.group(2):
            fields |= interfaces.get(m.group(2), set())
        interfaces[m.group(1)] = fields
    checked = 0
    for name, obj in vars(_messages).items():
        if isinstance(obj, type) and typing.is_typeddict(obj):
            assert name in interfaces, f"_messages.d.ts lacks interface {name}"
            assert set(obj.__annotations__) | _inherited(obj) == interfaces[name], name
            checked += 1
    assert checked >= 15


def _inherited(cls: type) -> set[str]:
    out: set[str] = set()
    for base in getattr(cls, "__orig_bases__", ()):
        out |= set(getattr(base, "__annotations__", {}))
    return out


def test_widget_javascript_type_checks() -> None:
    """tsc --checkJs --strict over each widget module (shared helpers + widget), where tsc exists."""
    tsc = shutil.which("tsc") or next(
        (str(p) for p in WIDGETS_DIR.parents[2].glob("extension/node_modules/.bin/tsc")), None)
    if tsc is None:
        pytest.skip("tsc not installed (npm install in extension/ provides it)")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(WIDGETS_DIR / "_messages.d.ts", tmp)
        names = []
        for js in sorted(WIDGETS_DIR.glob("_*.js")):
            if js.name == "_common.js":
                continue
            (Path(tmp) / js.name).write_text((WIDGETS_DIR / "_common.js").read_text() + "\n" + js.read_text())
            names.append(js.name)
        assert len(names) == 5
        res = subprocess.run(
            [tsc, "--allowJs", "--checkJs", "--noEmit", "--strict", "--target", "es2022", "--module",
             "es2022", "--moduleResolution", "bundler", "--lib", "es2022,dom", *names],
            cwd=tmp, capture_output=True, text=True, timeout=120,
        )
        assert res.returncode == 0, res.stdout + res.stderr
