"""End to end through the carme kernel: output, interrupts, restarts, leaks, %%remote options."""

from __future__ import annotations

import os
import re
import time

import psutil
import pytest

pytestmark = [pytest.mark.processes, pytest.mark.timeout(180)]


def _kernel_pid(kernel) -> int:
    return int(kernel.km.provisioner.process.pid)


def _shm() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("carme")}


def test_restart_leaves_nothing_behind(kernel) -> None:
    shm_before = _shm()
    kernel.ok("%%remote\n1")
    kernel.ok("import carme\nref = carme.put(bytes(5_000_000))")
    old = psutil.Process(_kernel_pid(kernel))
    children = old.children(recursive=True)
    assert children, "the embedded cluster should run under the kernel"
    kernel.km.restart_kernel(now=False)
    gone, alive = psutil.wait_procs([old, *children], timeout=5)
    assert not [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], alive
    deadline = time.monotonic() + 5
    while _shm() - shm_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not (_shm() - shm_before)
    kernel.kc.wait_for_ready(timeout=60)
    assert kernel.value("%%remote\n6 * 7") == "42"


def test_rerunning_cells_does_not_grow_the_store(kernel) -> None:
    kernel.ok("import carme\nfrom carme.util.state import list_objects")
    for _ in range(12):
        kernel.ok("carme.put(bytes(2_000_000))")
        kernel.ok("[carme.put(bytes(1_000_000)) for _ in range(2)]")
    count = int(kernel.value("len(list_objects())"))
    assert count <= 9, count  # _, __, ___ may hold the last three results


def test_redefinition_takes_effect(kernel) -> None:
    kernel.ok("def helper():\n    return 1")
    assert kernel.value("%%remote\nhelper()") == "1"
    kernel.ok("def helper():\n    return 2")
    assert kernel.value("%%remote\nhelper()") == "2"
    kernel.ok("import carme\n@carme.remote\ndef f():\n    return helper()")
    assert kernel.value("carme.get(f.remote())") == "2"
    kernel.ok("def helper():\n    return 3")  # f itself is not redefined
    assert kernel.value("carme.get(f.remote())") == "3"
    kernel.ok("@carme.remote\ndef f():\n    return helper() * 10")
    assert kernel.value("carme.get(f.remote())") == "30"
    kernel.ok(
        "class K:\n    v = 1\n@carme.remote\nclass Box:\n    def get(self):\n        return K.v"
    )
    assert kernel.value("carme.get(Box.remote().get.remote())") == "1"
    kernel.ok("class K:\n    v = 2")
    assert kernel.value("carme.get(Box.remote().get.remote())") == "2"


def test_remote_options(kernel) -> None:
    # --cpus --memory, and the value displayed
    assert kernel.value("%%remote --cpus 1 --memory 100M\n2 + 2") == "4"
    # resources no node has
    err = kernel.run("%%remote --resources '{\"no_such_thing\": 1}'\n1").error()
    assert err and err["ename"] == "UsageError" and "no node has" in err["evalue"]
    # --node by id and by prefix; bad node
    node = kernel.value("import carme\ncarme.nodes()[0]['NodeID']").strip("'")
    assert kernel.value(
        f"%%remote --node {node}\nimport carme\ncarme.get_runtime_context().get_node_id()"
    ) == repr(node)
    assert kernel.value(f"%%remote --node {node[:8]}\n3") == "3"
    err = kernel.run("%%remote --node zzzz\n1").error()
    assert err and "no live node has this id" in err["evalue"]
    # --retries, --name
    assert kernel.value("%%remote --retries 0 --name opt_named\n5") == "5"
    # --timeout
    t0 = time.monotonic()
    err = kernel.run("%%remote --timeout 1\nimport time\ntime.sleep(30)").error()
    assert err and err["ename"] == "RemoteTimeoutError" and time.monotonic() - t0 < 10
    # --push ships names the analysis cannot see; --pull brings names back
    kernel.ok("hidden_value = 21")
    assert kernel.value("%%remote --push hidden_value\nglobals()['hidden_value'] * 2") == "42"
    kernel.ok("%%remote --pull y,z\ny = 'why'\nz = [1, 2]\nunpulled = 1")
    assert kernel.value("y, z, 'unpulled' in globals()") == "('why', [1, 2], False)"
    # --async with -o
    kernel.ok("%%remote --async -o r\nsum(range(10))")
    assert kernel.value("carme.get(r)") == "45"
    # --actor: a namespace that lives across cells, ended by %carme drop
    kernel.ok("%%remote --actor ns\nw = 41")
    assert kernel.value("%%remote --actor ns\nw + 1") == "42"
    assert kernel.value("%%remote --actor ns --pull w\nw") == "41"
    assert "carme_kernel.namespace:ns" in str(kernel.ok("%carme actors").result())
    kernel.ok("%carme drop ns")
    assert kernel.value("%%remote --actor ns\n'w' in globals()") == "False"
    # --all-nodes
    nodes = kernel.value("%%remote --all-nodes\nimport os\nos.getpid() > 0")
    assert nodes.startswith("{") and nodes.count("True") == int(kernel.value("len(carme.nodes())"))


def test_remote_errors_show_cell_lines(kernel) -> None:
    run = kernel.run("%%remote\nx = 1\n\nraise ValueError('bad value')")
    err = run.error()
    assert err is not None and err["ename"] == "RemoteCellError"
    tb = "\n".join(err["traceback"])
    assert re.search(r"<remote cell In\[\d+\]>\", line 4", tb), tb
    assert "raise ValueError('bad value')" in tb and "ValueError: bad value" in tb


def test_views(kernel) -> None:
    for sub in ("status", "nodes", "gpus", "objects", "actors", "timeline"):
        res = kernel.ok(f"%carme {sub}").result()
        assert res is not None and "text/html" in res, sub
    assert "embedded" in kernel.ok("%carme status").result()["text/plain"]
    err = kernel.run("%carme connect 127.0.0.1:1").error()
    assert err is not None and err["ename"] == "UsageError" and "could not join" in err["evalue"]
    assert kernel.value("%%remote\n7") == "7"  # a failed connect leaves no half-set address
    kernel.ok("%carme disconnect")
    assert "not yet" in kernel.ok("%carme status").result()["text/plain"]


def test_remote_gpus(kernel) -> None:
    gpus = float(
        kernel.value("import carme\n%carme nodes\ncarme.cluster_resources().get('GPU', 0)")
    )
    if not gpus:
        err = kernel.run("%%remote --gpus 1\n1").error()
        assert err is not None and err["ename"] == "UsageError" and "GPU=1" in err["evalue"]
        return
    visible = kernel.value("%%remote --gpus 1\nimport os\nos.environ.get('CUDA_VISIBLE_DEVICES')")
    assert visible.strip("'") not in ("", "None")
    assert (
        kernel.value("%%remote --gpus 1 --actor gpu_ns\nimport carme\nlen(carme.get_gpu_ids())")
        == "1"
    )
