"""carme-only: what the `carme` command prints (issue 14: what a new user trips over).

The formatting is pure (`status_lines`, `table`, `human_bytes`) and tested as such; one
test runs the real command against a real cluster of this machine: human units in
`carme status`, an aligned `carme list nodes`, a reader that goes away (`| head`), and
`carme status` after `carme stop`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from carme._cli import EXIT_BROKEN_PIPE, human_bytes, status_lines, table


def test_human_bytes() -> None:
    assert human_bytes(0) == "0 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(1.67394e10) == "15.6 GiB"
    assert human_bytes(None) == "?"


def _snapshot(**over: object) -> dict[str, Any]:
    snap: dict[str, Any] = {"address": "127.0.0.1:6380", "nodes": [{}],
            "resources": {"total": {"CPU": 2.0, "memory": 1.67394e10, "node:abc": 1.0},
                          "available": {"CPU": 1.0, "memory": 1.67394e10, "node:abc": 1.0}},
            "objects": {"used": 3_000_000, "capacity": 2 * 1024**3},
            "tasks_by_state": {"FINISHED": 12, "RUNNING": 1}, "actors": [{}]}
    snap.update(over)
    return snap


def test_status_speaks_human_units() -> None:
    lines = status_lines(_snapshot())
    assert lines[0] == "cluster 127.0.0.1:6380: 1 node(s)"
    assert "  CPU: 1/2 used" in lines
    assert "  memory: 0 B/15.6 GiB used" in lines, lines
    assert "  object store: 2.9 MiB/2.0 GiB used" in lines, lines
    assert "  tasks: 12 finished, 1 running" in lines
    assert not any("e+" in line or "node:" in line for line in lines), lines


def test_status_shows_spilled_bytes_when_there_are_some() -> None:
    snap = _snapshot()
    snap["objects"].update(spilled=3 << 30, spilled_objects=12)
    assert "  object store: 2.9 MiB/2.0 GiB used, 3.0 GiB spilled to disk (12 objects)" in status_lines(snap)


def test_status_without_tasks() -> None:
    assert "  tasks: none" in status_lines(_snapshot(tasks_by_state={}))


def test_table_aligns_columns_of_different_widths() -> None:
    rows: list[dict[str, Any]] = [{"node_id": "a" * 40, "state": "ALIVE", "is_head_node": True, "resources": {"CPU": 2}},
            {"node_id": "b", "state": "DEAD", "is_head_node": False, "resources": {}},
            {"node_id": "c" * 7, "state": None, "is_head_node": False, "resources": {}}]
    lines = table(rows).splitlines()
    header = lines[0]
    assert header.split() == ["node_id", "state", "is_head_node"]  # dicts and lists left out
    # every value starts in its header's column
    starts = [header.index(n) for n in ("state", "is_head_node")]
    for line, row in zip(lines[2:], rows, strict=True):
        assert line.startswith(row["node_id"])
        for start, key in zip(starts, ("state", "is_head_node"), strict=True):
            value = "" if row[key] is None else str(row[key])
            assert line[start:start + len(value)] == value, (line, key)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {**os.environ, "CARME_STATE_DIR": str(tmp_path / "state")}
    e.pop("CARME_ADDRESS", None)
    e.pop("CARME_CLUSTER_TOKEN", None)
    return e


def _carme(*args: str, env: dict[str, str], **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "carme", *args], text=True, env=env,
                          timeout=60, **{"capture_output": True, **kw})  # type: ignore[call-overload]


@pytest.mark.processes
def test_cli_on_a_real_cluster(env: dict[str, str]) -> None:
    started = _carme("start", "--head", "--num-cpus", "2", env=env)
    assert started.returncode == 0, started.stderr
    try:
        status = _carme("status", env=env)
        assert status.returncode == 0, status.stderr
        assert "e+" not in status.stdout and "GiB used" in status.stdout, status.stdout
        nodes = _carme("list", "nodes", env=env)
        assert nodes.returncode == 0, nodes.stderr
        assert nodes.stdout.splitlines()[1].startswith("----"), nodes.stdout
        # the reader went away before carme wrote a byte (`carme list nodes | head -0`)
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            gone = subprocess.run([sys.executable, "-m", "carme", "list", "nodes"], stdout=write_end,
                                  stderr=subprocess.PIPE, text=True, env=env, timeout=60)
        finally:
            os.close(write_end)
        assert gone.stderr == "", gone.stderr
        assert gone.returncode == EXIT_BROKEN_PIPE
    finally:
        stopped = _carme("stop", env=env)
    assert "stopped 1 cluster" in stopped.stdout
    after = _carme("status", env=env)
    assert after.returncode == 1
    assert "no carme cluster is running" in after.stderr and "carme start --head" in after.stderr
    assert "carme.init" not in after.stderr, after.stderr
