"""carme-only: a wrong cluster token is refused with an error that says so.

Real processes on 127.0.0.1: a head started by `cluster.start_head`; a driver
(`carme.init(address=...)`) and a joining node (`carme start --address`, the CLI) that
present a token of another cluster. The node refuses the token before reading anything
else and tells the peer so (one raw frame, `_protocol.REFUSED`); the peer raises a
ConnectionError naming the node, where its token came from and how to fix it, instead
of "connection reset by peer".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.processes

WRONG = "ab" * 32


@pytest.fixture
def head(state_dir: Path) -> Iterator[dict[str, Any]]:
    import carme
    from carme import cluster
    info = cluster.start_head(num_cpus=1, port=0)
    try:
        yield info
    finally:
        if carme.is_initialized():
            carme.shutdown()
        cluster.stop(info["address"])


def test_a_driver_with_a_wrong_token_is_told_so(head, monkeypatch: pytest.MonkeyPatch) -> None:
    import carme
    monkeypatch.setenv("CARME_CLUSTER_TOKEN", WRONG)
    with pytest.raises(ConnectionError) as err:
        carme.init(address=head["address"])
    text = str(err.value)
    assert f"the carme node at {head['address']} refused the cluster token" in text
    assert "came from the CARME_CLUSTER_TOKEN environment variable" in text
    assert "Fix: set CARME_CLUSTER_TOKEN" in text
    assert not carme.is_initialized()
    # the right token (from this machine's cluster file) still joins the same head
    monkeypatch.delenv("CARME_CLUSTER_TOKEN")
    carme.init(address=head["address"])
    assert [n["Alive"] for n in carme.nodes()] == [True]


def test_a_wrong_token_from_the_cluster_file_names_the_file(head) -> None:
    import carme
    path = Path(head["token_file"])
    saved = path.read_text()
    path.write_text(json.dumps({**json.loads(saved), "token": WRONG}))  # a stale file of another cluster
    try:
        with pytest.raises(ConnectionError, match="refused the cluster token") as err:
            carme.init(address=head["address"])
    finally:
        path.write_text(saved)
    assert f"this machine's cluster file {path}" in str(err.value)


def test_a_node_joining_with_a_wrong_token_is_told_so(head) -> None:
    from carme import cluster
    out = subprocess.run([sys.executable, "-m", "carme", "start", "--address", head["address"],
                          "--num-cpus", "1"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CARME_CLUSTER_TOKEN": WRONG})
    assert out.returncode == 1, out.stdout
    assert "Traceback" not in out.stderr
    assert f"the carme node at {head['address']} refused the cluster token" in out.stderr
    assert "CARME_CLUSTER_TOKEN environment variable" in out.stderr
    # no node joined and none was left running
    with cluster.connect(head["address"]) as client:
        assert len(client.rows("nodes")) == 1
