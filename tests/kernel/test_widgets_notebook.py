"""notebooks/widgets.ipynb run by nbclient on the carme kernel; assertions on the saved widget state.

nbclient keeps the state of every widget it saw in the notebook's metadata
(``application/vnd.jupyter.widget-state+json``), as a frontend would have it:
that is what the widgets showed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.processes, pytest.mark.timeout(300)]

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "widgets.ipynb"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def execute(path: Path, workdir: Path) -> Any:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name=nb.metadata["kernelspec"]["name"],
        timeout=180,
        resources={"metadata": {"path": str(workdir)}},
    )
    try:
        client.execute()
    finally:
        nbformat.write(nb, workdir / path.name)
    return nb


def models(nb: Any) -> dict[str, list[dict[str, Any]]]:
    """The ``model`` trait of each carme widget in the saved state, by kind."""
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    out: dict[str, list[dict[str, Any]]] = {}
    for entry in state.values():
        m = entry.get("state", {}).get("model")
        if entry.get("model_module") == "anywidget" and isinstance(m, dict) and "kind" in m:
            out.setdefault(m["kind"], []).append(dict(m, _status=entry["state"].get("status")))
    return out


def test_widgets_notebook_shows_the_cluster(jupyter_dirs: Path, tmp_path: Path) -> None:
    pytest.importorskip("anywidget", reason="the widgets need anywidget (the test/lab extras)")
    nb = execute(NOTEBOOK, tmp_path)
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors, f"{errors[0]['ename']}: {errors[0]['evalue']}"
    found = models(nb)
    assert sorted(found) == ["cluster", "gpus", "objects", "progress", "timeline"], sorted(found)

    cluster = found["cluster"][0]
    assert cluster["totals"]["nodes"] == 1 and cluster["totals"]["alive"] == 1
    cpu = next(r for r in cluster["nodes"][0]["resources"] if r["name"] == "CPU")
    assert cpu["total"] == 2.0

    gpus = found["gpus"][0]
    assert gpus["gpu_count"] == sum(len(n["gpus"]) for n in gpus["nodes"])

    objects = found["objects"][0]
    sizes = [o["size"] for o in objects["objects"] if o["type"] == "ndarray"][:2]
    assert len(sizes) == 2, objects["objects"]
    for got, want in zip(sizes, (4 << 20, 1 << 20), strict=True):
        assert want <= got < want + 4096, (sizes, "expected the 4 MiB and 1 MiB arrays just put")
    assert objects["total_size"] >= 5 << 20

    timeline = found["timeline"][0]
    names = [s["name"] for s in timeline["spans"]]
    assert names.count("work") == 8, names
    assert sum(1 for s in timeline["spans"] if s["actor"]) >= 5
    assert all(s["cell"].startswith("In [") for s in timeline["spans"] if s["name"] == "work")

    bar = found["progress"][0]
    assert bar["total"] == 8 and bar["label"] == "squares"

    html = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if "text/html" in o.get("data", {})
    ]
    assert len(html) >= 5, "every widget also carries a static HTML snapshot"
    # the Chrome trace goes to a temporary directory of the notebook's, not next to it
    wrote = [line for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
             for line in o.get("text", "").splitlines() if line.startswith("wrote ")]
    assert len(wrote) == 1, wrote
    path = Path(wrote[0][len("wrote "):].rsplit(": ", 1)[0])
    assert path.name == "carme-timeline.json" and path.exists() and path.parent != tmp_path
    assert not (tmp_path / "carme-timeline.json").exists()
