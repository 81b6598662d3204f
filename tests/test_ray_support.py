"""The Ray head fixture itself: it answers with the token, and stops what it started."""

from __future__ import annotations

import urllib.error
import urllib.request

import psutil
import pytest

from ray_support import requires_ray, start_ray_head

pytestmark = [requires_ray, pytest.mark.timeout(300)]


def test_head_answers_with_token_and_stops_everything(ray_cluster):
    body = ray_cluster.get_json("/api/v0/nodes")
    nodes = body["data"]["result"]["result"]
    assert [n["state"] for n in nodes] == ["ALIVE"]
    assert nodes[0]["node_ip"] == "127.0.0.1"
    req = urllib.request.Request(ray_cluster.dashboard_url + "/api/v0/nodes")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 401
    assert ray_cluster.token_path.stat().st_mode & 0o077 == 0
    procs = ray_cluster.processes()
    names = " ".join(" ".join(p.cmdline()) for p in procs)
    assert "gcs_server" in names and "raylet" in names


def test_stop_leaves_no_process(ray_cluster):
    # A second head beside the session's: its own ports, stopped by PID.
    head = start_ray_head(num_cpus=1)
    pids = [p.pid for p in head.processes()]
    assert head.gcs_address != ray_cluster.gcs_address
    head.stop()
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not head.temp_dir.exists()
    # the session's head is untouched
    assert ray_cluster.get_json("/api/v0/nodes")["data"]["result"]["result"]
