"""The Ray head fixture itself: it answers with the token.

That it stops everything it started is checked by the fixture itself at the end of
the session (``RayHead.stop`` raises ``RayHeadError`` naming any survivor).
"""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from ray_support import requires_ray

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
