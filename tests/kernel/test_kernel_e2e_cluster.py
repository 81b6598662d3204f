"""The carme kernel on a shared (standalone) cluster: connect, and a restart that cleans up."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.processes, pytest.mark.timeout(180)]


@pytest.fixture
def head(
    jupyter_dirs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """A standalone cluster; kernels started after it find its token through CARME_STATE_DIR."""
    import carme.cluster

    monkeypatch.setenv("CARME_STATE_DIR", str(tmp_path / "state"))
    info = carme.cluster.start_head(num_cpus=2)
    try:
        yield info
    finally:
        carme.cluster.stop(info["address"])


def _big_objects(address: str) -> list[Any]:
    import carme.cluster

    with carme.cluster.connect(address) as client:
        return [o for o in client.rows("objects") if (o.get("object_size") or 0) >= 3_000_000]


def _actors(address: str) -> dict[str, str]:
    import carme.cluster

    with carme.cluster.connect(address) as client:
        return {
            str(a.get("name") or a.get("class_name")): str(a.get("state"))
            for a in client.rows("actors")
        }


def test_restart_on_a_shared_cluster_kills_this_kernels_actors(head, kernel) -> None:
    address = head["address"]
    assert address in kernel.ok(f"%carme connect {address}").result()["text/plain"]
    kernel.ok("%%remote --actor ns\nx = 1")
    kernel.ok(
        "import carme\n@carme.remote\nclass Plain:\n    def ping(self):\n        return 1\n"
        "plain = Plain.options(name='plain').remote()\n"
        "keeper = Plain.options(name='keeper', namespace='shared', lifetime='detached').remote()\n"
        "carme.get([plain.ping.remote(), keeper.ping.remote()])\n"
        "big = carme.put(bytes(3_000_000))"
    )
    assert _big_objects(address)
    before = _actors(address)
    assert before["carme_kernel.namespace:ns"] == "ALIVE" and before["plain"] == "ALIVE"
    kernel.km.restart_kernel(now=False)
    kernel.kc.wait_for_ready(timeout=60)
    deadline = time.monotonic() + 5
    while True:
        after = _actors(address)
        if after.get("carme_kernel.namespace:ns") == "DEAD" and after.get("plain") == "DEAD":
            break
        assert time.monotonic() < deadline, after
        time.sleep(0.2)
    assert after["keeper"] == "ALIVE"  # detached actors outlive their driver
    assert not _big_objects(address)  # the old kernel's objects were released
    # the restarted kernel joins the cluster again from CARME_ADDRESS and can end the keeper
    kernel.ok(f"%carme connect {address}")
    kernel.ok("import carme\ncarme.kill(carme.get_actor('keeper', namespace='shared'))")
    assert "ALIVE" not in _actors(address).values()


@pytest.fixture
def selection(head: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A side panel's selection file, selecting nothing yet; kernels get its path only."""
    from carme.notebook import write_selection

    path = tmp_path / "selection.json"
    write_selection(str(path), None)
    monkeypatch.setenv("CARME_SELECTION_FILE", str(path))
    return path


def test_kernel_joins_the_panel_selection_as_it_is_when_it_joins(
    head: dict[str, Any], selection: Path, kernel: Any
) -> None:
    from carme.notebook import write_selection

    address = head["address"]
    write_selection(str(selection), address)  # selected in the panel after the kernel started
    kernel.ok("%%remote\n1")
    assert address in kernel.ok("%carme status").result()["text/plain"]
    kernel.ok("%carme disconnect")
    err = kernel.run("import carme\ncarme.init(num_cpus=2)").error()
    assert err is not None and err["ename"] == "ValueError", err
    assert "side panel" in err["evalue"] and 'address="local"' in err["evalue"], err["evalue"]
    kernel.ok("carme.init(address='local', num_cpus=1)\nassert carme.cluster_resources()['CPU'] == 1")
    kernel.ok("%carme disconnect")
    write_selection(str(selection), None)  # Stop in the panel
    kernel.ok("%%remote\n1")
    assert "embedded local cluster" in kernel.ok("%carme status").result()["text/plain"]
