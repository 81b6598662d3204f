"""Spilling with real processes: a store filled twice over reads back right; the figures
show in the state API, the object store widget, `carme status` and the node rows; spill
files go when objects are freed, at shutdown, and after a SIGKILL of the daemon.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

STORE = 32 << 20
ITEM = 4 << 20  # 16 items: twice the store


def _wait(pred, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _stats() -> dict:
    from carme import _context
    from carme import _messages as M
    return _context.core().request(M.STORE_STATS)  # type: ignore[no-any-return]


def _files(d: Path) -> list[str]:
    return sorted(os.listdir(d)) if d.is_dir() else []


@pytest.mark.processes
def test_twice_the_store_reads_back_and_spilled_figures_show_everywhere(tmp_path: Path) -> None:
    from tests.runtime.test_metrics_http import _free_port, _scrape

    import carme
    from carme._cli import status_lines
    from carme.cluster import Client
    from carme.util import state
    from carme_kernel.widgets import _data
    from carme_kernel.widgets._html import objects_html
    spill = tmp_path / "spill"
    port = _free_port()
    carme.init(num_cpus=1, object_store_memory=STORE, _metrics_export_port=port,
               _system_config={"object_spilling_directory": str(spill)})
    try:
        refs = [carme.put(np.full(ITEM, i, dtype=np.uint8)) for i in range(16)]
        stats = _stats()
        d = Path(stats["spill_directory"])
        assert d.parent == spill and d.name.startswith("carme-spill-")
        assert stats["spilled_bytes"] >= STORE // 2 and stats["spilled_objects"] >= 8
        assert len(_files(d)) == stats["spilled_objects"]
        # every value reads back right, in the driver and as a task's argument
        for i, r in enumerate(refs):
            a = carme.get(r)
            assert a.shape == (ITEM,) and a[0] == i and a[-1] == i and int(a.sum()) == i * ITEM
            del a

        @carme.remote
        def check(x: np.ndarray, i: int) -> bool:
            return bool((x == i).all())
        assert carme.get([check.remote(r, i) for i, r in enumerate(refs)]) == [True] * 16
        stats = _stats()
        assert stats["restored_total"] > 0 and stats["spilled_bytes"] > 0

        # the state API: object rows and the node's store
        rows = state.list_objects(limit=100, detail=True)
        spilled_rows = [o for o in rows if o["spilled"]]
        assert spilled_rows and all(o["location"] == "spilled" for o in spilled_rows)
        node = state.list_nodes(detail=True)[0]
        assert node["object_store"]["spilled"] == stats["spilled_bytes"] > 0
        assert node["object_store"]["spilled_objects"] == stats["spilled_objects"]
        # the widget's model and its static HTML (the spilled column, the store's spilled bytes)
        model = _data.objects_model(rows, [node], "size", True, 100)
        assert model["spilled_objects"] == len(spilled_rows) > 0
        assert model["stores"][0]["spilled"] == stats["spilled_bytes"]
        html = objects_html(model)
        assert "spilled to disk" in html and f"{len(spilled_rows)} spilled" in html
        # `carme status`'s lines from the same snapshot the CLI reads
        from carme import _context
        lines = status_lines(Client(_context.core(), "embedded").snapshot())
        store_line = next(ln for ln in lines if "object store" in ln)
        assert "spilled to disk" in store_line and f"({stats['spilled_objects']} objects)" in store_line

        # a worker's own get of a spilled object (a ref nested in an argument)
        @carme.remote
        def first_byte(box: list) -> int:
            return int(carme.get(box[0])[0])
        on_disk = next(i for i, r in enumerate(refs) if r.hex() in {o["object_id"] for o in spilled_rows})
        assert carme.get(first_byte.remote([refs[on_disk]])) == on_disk

        # the Prometheus gauge
        gauge = _scrape(port)["carme_object_store_spilled_bytes"]
        assert list(gauge.values()) == [_stats()["spilled_bytes"]] and _stats()["spilled_bytes"] > 0

        # freeing removes the files: those left name objects still held (an idle worker
        # may hold its last task's argument for a while)
        del refs, rows, spilled_rows

        def only_live_files() -> bool:
            live = {r["object_id"] for r in state.list_objects(limit=1000, detail=True)}
            return len(_files(d)) < 16 and set(_files(d)) <= live
        _wait(only_live_files, "spill files of freed objects to go")
    finally:
        carme.shutdown()
    assert not d.exists()  # and the session's spill directory goes at shutdown


@pytest.mark.processes
def test_store_full_only_when_spill_space_is_full_and_the_error_says_so() -> None:
    import carme
    from carme import exceptions as exc
    carme.init(num_cpus=1, object_store_memory=STORE,
               _system_config={"object_spilling_max_bytes": 3 * (ITEM + 4096)})
    try:
        # 7 items fit in memory (each has a small header), 3 more on disk
        refs = [carme.put(np.full(ITEM, i, dtype=np.uint8)) for i in range(10)]
        with pytest.raises(exc.ObjectStoreFullError) as info:
            refs.append(carme.put(np.full(ITEM, 10, dtype=np.uint8)))
        text = str(info.value)
        assert "spilled to disk" in text and "the spill space is full" in text
        assert "drop ObjectRefs" in text and "object_store_memory=" in text
        # nothing already stored was lost
        for i, r in enumerate(refs):
            assert carme.get(r)[0] == i
        d = Path(_stats()["spill_directory"])
        assert _files(d)
        del refs
        _wait(lambda: _stats()["spilled_objects"] == 0 and not _files(d), "spill files of freed objects")
    finally:
        carme.shutdown()


@pytest.mark.processes
def test_an_argument_the_driver_maps_is_read_without_a_map_and_a_view_kept_is_never_spilled(
        tmp_path: Path) -> None:
    """A task's argument that its submitter maps (here: the driver put it and holds a view)
    is read where the submitter says, under the submitter's map, without the worker
    asking the daemon; a view of it that outlives its task gets a map of the worker's
    own before the result goes back, so filling the store twice over after the driver
    let go spills it from under nobody."""
    import carme
    carme.init(num_cpus=1, object_store_memory=STORE,
               _system_config={"object_spilling_directory": str(tmp_path / "spill")})

    def maps() -> tuple[list[bytes], list[bytes]]:
        from carme import _context
        core = _context.core()
        return list(core.rpc.maps.entries), sorted(core._late_maps)

    @carme.remote
    def first(a):
        return int(a[0]), maps()

    @carme.remote
    class Keeper:
        def keep(self, a) -> int:
            self.a = a
            return int(a[-1])

        def mean(self) -> float:
            return float(self.a.mean())

        def drop(self) -> tuple:
            del self.a
            return maps()

        def maps(self) -> tuple:
            return maps()

    try:
        ref = carme.put(np.full(ITEM, 7, dtype=np.uint8))
        view = carme.get(ref)  # the driver maps it while this view lives
        value, (mapped, late) = carme.get(first.remote(ref))
        assert value == 7 and ref._id not in mapped and late == []

        keeper = Keeper.remote()
        assert carme.get(keeper.keep.remote(ref)) == 7
        mapped, late = carme.get(keeper.maps.remote())
        assert ref._id in mapped and late == [ref._id]

        del view, ref  # only the actor's view keeps it now: in its place, under its map
        others = [carme.put(np.full(ITEM, 100 + i, dtype=np.uint8)) for i in range(16)]
        assert _stats()["spilled_objects"] >= 8
        assert carme.get(keeper.mean.remote()) == 7.0
        assert [int(carme.get(r)[0]) for r in others] == [100 + i for i in range(16)]
        _, late = carme.get(keeper.drop.remote())
        assert late == []  # the map went with the last view
    finally:
        carme.shutdown()


@pytest.mark.processes
def test_spill_files_go_after_a_sigkill_of_the_daemon(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    script = f"""
import json, os, sys, numpy as np, carme
from carme import _context, _messages as M
# Ray's shape of the setting
cfg = json.dumps({{"type": "filesystem", "params": {{"directory_path": {str(spill)!r}}}}})
carme.init(num_cpus=1, object_store_memory={STORE}, _system_config={{"object_spilling_config": cfg}})
refs = [carme.put(np.full({ITEM}, i, dtype=np.uint8)) for i in range(12)]
stats = _context.core().request(M.STORE_STATS)
print(json.dumps({{"dir": stats["spill_directory"], "n": stats["spilled_objects"],
                  "daemon": _context.core().info.get("daemon_pid") or 0}}), flush=True)
sys.stdin.readline()
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        info = json.loads(proc.stdout.readline())
        d = Path(info["dir"])
        assert d.parent == spill
        assert info["n"] > 0 and len(_files(d)) == info["n"]
        import psutil
        daemons = [c for c in psutil.Process(proc.pid).children() if "carme._daemon" in " ".join(c.cmdline())]
        assert len(daemons) == 1
        daemons[0].send_signal(signal.SIGKILL)
        _wait(lambda: not d.exists(), "the spill directory to go after the daemon's SIGKILL")
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=60)


@pytest.mark.processes
def test_another_node_pulls_objects_spilled_on_their_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARME_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("CARME_ADDRESS", raising=False)
    from carme.testing import Cluster
    c = Cluster(head_node_args={"num_cpus": 1, "resources": {"head": 1}})
    try:
        c.add_node(num_cpus=1, resources={"a": 1}, object_store_memory=STORE)
        c.connect()
        import carme
        from carme.util import state

        @carme.remote(resources={"a": 1})
        def make(i: int) -> np.ndarray:
            return np.full(ITEM, i, dtype=np.uint8)

        refs = [make.remote(i) for i in range(12)]  # made and stored on node a: 1.5 stores
        carme.wait(refs, num_returns=len(refs), timeout=120)

        def a_spilled() -> int:  # node a's row, as the head's view has it (heartbeats)
            return next(n["object_store"].get("spilled", 0) for n in state.list_nodes(detail=True)
                        if n["object_store"]["capacity"] == STORE)
        _wait(lambda: a_spilled() > 0, "node a's row to show spilled bytes")
        # the driver, on the head node, pulls each one; those spilled on a come back first
        for i, r in enumerate(refs):
            v = carme.get(r, timeout=120)
            assert v[0] == i and v[-1] == i and int(v.sum()) == i * ITEM
            del v
    finally:
        c.shutdown()


def test_the_leak_guard_reports_and_removes_a_spill_directory_left_behind(tmp_path: Path) -> None:
    from tests.conftest import LeakGuard
    guard = LeakGuard([str(tmp_path)])
    left = tmp_path / "spill" / "carme-spill-abc123"
    left.mkdir(parents=True)
    (left / "00ff").write_bytes(b"x")
    guard.sampler.seen.add("carme-abc123-store")  # as if this test's processes used that store
    msg = guard.check("this test", wait_s=0)
    assert msg is not None and f"spill directory {left}" in msg
    assert not left.exists()


@pytest.mark.processes
def test_carme_start_spills_where_told_and_carme_status_says_how_much(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import carme
    state = tmp_path / "state"
    spill = tmp_path / "spill"
    monkeypatch.setenv("CARME_STATE_DIR", str(state))
    monkeypatch.delenv("CARME_ADDRESS", raising=False)
    env = {**os.environ, "CARME_STATE_DIR": str(state)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "carme", *args], capture_output=True, text=True,
                              env=env, timeout=60)
    out = cli("start", "--head", "--num-cpus", "1", "--object-store-memory", str(STORE),
              "--object-spilling-directory", str(spill))
    assert out.returncode == 0, out.stderr
    try:
        carme.init(address="auto")
        try:
            refs = [carme.put(np.full(ITEM, i, dtype=np.uint8)) for i in range(12)]
            (d,) = spill.iterdir()
            assert d.name.startswith("carme-spill-") and _files(d)
            status = cli("status")
            assert status.returncode == 0, status.stderr
            line = next(ln for ln in status.stdout.splitlines() if "object store" in ln)
            assert "spilled to disk" in line and f"({len(_files(d))} objects)" in line, line
            assert carme.get(refs[0])[0] == 0
        finally:
            carme.shutdown()
    finally:
        stopped = cli("stop")
    assert "stopped 1 cluster" in stopped.stdout
    _wait(lambda: not d.exists(), "the spill directory to go with the cluster")
