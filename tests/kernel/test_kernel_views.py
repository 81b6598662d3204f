"""Static HTML/text views of %carme."""

from __future__ import annotations

from carme_kernel import views

NODES = [
    {
        "NodeID": "abc123",
        "Alive": True,
        "NodeManagerAddress": "127.0.0.1",
        "Resources": {"CPU": 2.0, "memory": 2 * 2**30, "node:127.0.0.1": 1.0, "accel": 1.0},
    }
]


def test_nodes_view_html_and_text() -> None:
    v = views.nodes_view(NODES)
    html = v._repr_html_()
    assert "<table>" in html and "abc123" in html and "2.0 GiB" in html and "accel: 1" in html
    assert "node:127" not in html
    text = repr(v)
    assert text.splitlines()[0] == "Nodes" and "abc123" in text


def test_escaping() -> None:
    v = views.table("T", [("a", "A")], [{"a": "<script>"}])
    assert "<script>" not in v._repr_html_() and "&lt;script&gt;" in v._repr_html_()


def test_empty_and_gpus() -> None:
    assert "none" in views.actors_view([])._repr_html_()
    g = views.gpus_view(NODES)
    assert "no node" in g.note
    g2 = views.gpus_view([{"NodeID": "n", "Resources": {"GPU": 2.0}}])
    assert g2.rows and g2.rows[0]["name"] == "2 GPU(s)"


def test_timeline_view() -> None:
    events = [
        {
            "ph": "X",
            "name": "f",
            "ts": 1_000_000,
            "dur": 2500,
            "pid": 1,
            "tid": 2,
            "args": {"cell": {"execution_count": 4}},
        },
        {"ph": "i", "name": "mark", "ts": 3},
    ]
    v = views.timeline_view(events)
    assert v.rows[0]["cell"] == "[4]" and v.rows[0]["ms"] == 2.5
    assert "1 of 1" in v.note


def test_gpu_metrics_rows() -> None:
    node = {
        "NodeID": "n",
        "Resources": {"GPU": 1.0},
        "GPUs": [
            {
                "index": 0,
                "name": "H100",
                "utilization_gpu": 37,
                "memory_used": 2**30,
                "memory_total": 80 * 2**30,
            }
        ],
    }
    row = views.gpus_view([node]).rows[0]
    assert row["utilization"] == 37 and row["memory_total"] == "80.0 GiB"


def test_resources_text() -> None:
    text = views.resources_text({"CPU": 2.0, "memory": 2 * 2**30, "node:1.2.3.4": 1.0, "accel": 1})
    assert text == "CPU 2, accel 1, memory 2.0 GiB"
