"""The committed gRPC code is what scripts/gen-protos makes, and the head refuses calls
that do not carry the cluster token."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "runtime" / "carme" / "protos"


def test_generated_code_is_current(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    subprocess.run(["bash", str(ROOT / "scripts" / "gen-protos"), str(tmp_path)], check=True,
                   env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}, cwd=ROOT)
    for name in ("carme_pb2.py", "carme_pb2_grpc.py"):
        assert (tmp_path / name).read_text() == (PROTOS / name).read_text(), (
            f"{name} is stale: run scripts/gen-protos and commit the result")


@pytest.mark.processes
def test_head_refuses_calls_without_the_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import grpc

    from carme import cluster
    from carme.protos import carme_pb2 as pb
    from carme.protos import carme_pb2_grpc as pbg
    monkeypatch.setenv("CARME_STATE_DIR", str(tmp_path / "state"))
    info = cluster.start_head(num_cpus=1)
    try:
        stub = pbg.HeadStub(grpc.insecure_channel(info["grpc_address"]))
        for md in ([], [("carme-token", "00" * 32)]):
            with pytest.raises(grpc.RpcError) as e:
                stub.GetClusterView(pb.Empty(), metadata=md, timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # registering a node without the token does not reach the registry either
            with pytest.raises(grpc.RpcError):
                stub.RegisterNode(pb.NodeInfo(node_id="intruder"), metadata=md, timeout=10)
        _, token = cluster.resolve(info["address"])
        view = stub.GetClusterView(pb.Empty(), metadata=[("carme-token", token.hex())], timeout=10)
        assert [n.info.node_id for n in view.nodes] == [info["node_id"]]
    finally:
        cluster.stop(info["address"])
