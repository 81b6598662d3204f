"""What the panel shows of objects (issue 14): ids that tell objects apart, the count.

The shortening rule is `carme_lab._snapshot.short_object_id` (the panel draws the
``short_id`` the server sends), the same as the kernel's ``carme.notebook.short_object_id``. The count: a driver's `%carme objects`
(`carme.notebook.state_rows("objects")`) lists the objects it owns, inline results
included, plus the object store's; the server, an observer, sees the store only.
The panel says so (``scope``) and its count is the store's, the same objects the
driver's rows place in shared memory; checked against a real cluster, a real driver
and a real Jupyter server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from lab_client import call

# the real backend and a private carme state directory, as for the other real-cluster tests
from test_real_cluster import jp_server_config, state_dir  # noqa: F401

from carme_lab._snapshot import panel_snapshot, short_object_id

PID = "d8d275c194170a2c"  # a carme process's id prefix


def _carme_id(counter: int, index: int) -> str:
    return f"{PID}{counter:016x}{index:08x}"


def test_returns_of_one_task_get_distinct_short_ids() -> None:
    returns = [_carme_id(4, i) for i in (1, 2, 3)]
    assert len({r[:16] for r in returns}) == 1  # what the panel showed before: all alike
    assert [short_object_id(r) for r in returns] == ["d8d275…4#1", "d8d275…4#2", "d8d275…4#3"]


def test_a_put_has_no_return_index() -> None:
    assert short_object_id(_carme_id(0x1234, 0)) == "d8d275…1234"


def test_ray_ids_keep_the_task_and_the_return_index() -> None:
    task = "a1b2c3d4e5f60718" + "f" * 24 + "01000000"
    assert short_object_id(task + "00000002") == "a1b2c3d4e5f6…#2"


def test_other_ids() -> None:
    assert short_object_id("abc") == "abc"
    assert short_object_id("x" * 30) == "xxxxxxxx…xxxxxxxx"
    assert short_object_id("") == ""


def test_snapshot_rows_carry_the_short_id_and_the_count_says_what_it_counts() -> None:
    raw = {"objects": {"count": 1, "largest": [{"object_id": _carme_id(3, 1), "object_size": 300025}]}}
    snap = panel_snapshot(raw, "127.0.0.1:1")
    assert snap["objects"]["largest"][0]["short_id"] == "d8d275…3#1"
    assert snap["objects"]["largest"][0]["size"] == 300025
    assert snap["objects"]["scope"] == "in the object store"
    assert panel_snapshot(raw, "ray:127.0.0.1:1", engine="ray")["objects"]["scope"] == "in the cluster"


# ---------------------------------------------------------------- a real cluster

DRIVER = textwrap.dedent("""
    import json, os, sys, carme
    from carme import notebook
    carme.init(address=os.environ["CARME_ADDRESS"])

    @carme.remote(num_returns=3)
    def three():
        return 1, "x" * 100, bytes(2000)

    @carme.remote
    def big():
        return bytes(300_000)

    small = three.remote()
    stored = [carme.put(bytes(2_000_000)), big.remote()]
    carme.get(small + stored)
    print(json.dumps(notebook.state_rows("objects")), flush=True)
    sys.stdin.readline()
    carme.shutdown()
""")


@pytest.mark.processes
@pytest.mark.timeout(120)
@pytest.mark.usefixtures("state_dir")
async def test_the_panel_counts_the_stores_objects_of_what_the_driver_lists(jp_fetch: Any) -> None:
    code, started = await call(jp_fetch, "clusters", method="POST", body={"num_cpus": 2})
    assert code == 201, started
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "CARME_ADDRESS": started["address"]})
    try:
        assert driver.stdout is not None
        rows = json.loads(driver.stdout.readline())
        code, snap = await call(jp_fetch, "snapshot")
        assert code == 200, snap
    finally:
        assert driver.stdin is not None
        driver.stdin.write("\n")
        driver.stdin.close()
        assert driver.wait(timeout=60) == 0
    # the driver: 3 inline returns, 2 objects in the store
    in_store = {r["object_id"] for r in rows if r.get("location") == "shared_memory"}
    assert len(rows) == 5 and len(in_store) == 2, rows
    objects = snap["objects"]
    assert objects["count"] == len(in_store) and objects["scope"] == "in the object store"
    assert {o["object_id"] for o in objects["largest"]} == in_store
    shown = [o["short_id"] for o in objects["largest"]]
    assert len(set(shown)) == len(shown), shown
    sizes = {r["object_id"]: r["object_size"] for r in rows}
    assert all(o["size"] == sizes[o["object_id"]] for o in objects["largest"]), (objects, sizes)
