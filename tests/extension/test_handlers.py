"""The REST and WebSocket API under /carme/api/, against a fake cluster backend."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from lab_client import call, kernel_choice, kernels_join


async def test_empty_listing_says_nothing_is_selected(jp_fetch: Any) -> None:
    code, data = await call(jp_fetch, "clusters")
    assert code == 200
    assert data == {"clusters": [], "selected": None, "showing": None}


async def test_start_selects_and_exports_the_address(jp_fetch: Any, service: Any) -> None:
    code, data = await call(jp_fetch, "clusters", method="POST",
                            body={"num_cpus": 2, "num_gpus": 0, "resources": {"disk": 1}})
    assert code == 201
    assert data["origin"] == "started" and data["selected"] and data["local"]
    assert service.backend.calls[0] == ("start", (2, 0, {"disk": 1}))
    assert kernels_join() == data["address"]
    code, listing = await call(jp_fetch, "clusters")
    assert listing["selected"] == data["address"]
    assert [c["id"] for c in listing["clusters"]] == [data["address"]]
    assert listing["clusters"][0]["alive"] is True


async def test_start_rejects_bad_numbers(jp_fetch: Any, service: Any) -> None:
    code, data = await call(jp_fetch, "clusters", method="POST", body={"num_cpus": "many"})
    assert code == 400
    assert "num_cpus" in data["message"] and "'many'" in data["message"]
    code, data = await call(jp_fetch, "clusters", method="POST", body={"resources": [1]})
    assert code == 400 and "resources" in data["message"]
    code, data = await call(jp_fetch, "clusters", method="POST", body=[1, 2])
    assert code == 400 and "JSON object" in data["message"]
    assert service.backend.calls == []


@pytest.mark.parametrize(("raw", "field"), [
    ('{"num_cpu": 1}', "'num_cpu'"),
    ('{"resources": []}', "'resources'"),
    ('{"num_cpus": 1e400}', "num_cpus"),
    ('{"num_gpus": NaN}', "num_gpus"),
    ('{"resources": {"disk": Infinity}}', "resources.disk"),
    ('{"resources": {"GPU": 1}}', "num_gpus"),
    ('{"select": 1}', "select"),
    ('{"engine": "ray", "port": 1e400}', "port"),
    ('{"engine": "ray", "num_cpus": 2, "dashboard_port": -1}', "dashboard_port"),
    ('{"engine": "ray", "ports": 1}', "'ports'"),
    ('{"engine": "dask"}', "engine"),
])
async def test_start_refuses_bad_bodies_and_starts_nothing(
    jp_fetch: Any, service: Any, raw: str, field: str
) -> None:
    code, data = await call(jp_fetch, "clusters", method="POST", raw=raw)
    assert code == 400, data
    assert field in data["message"]
    assert service.backend.calls == []
    _, listing = await call(jp_fetch, "clusters")
    assert listing["clusters"] == []


async def test_start_a_ray_head_through_the_same_route(jp_fetch: Any, service: Any) -> None:
    code, data = await call(jp_fetch, "clusters", method="POST",
                            body={"engine": "ray", "num_cpus": 1, "port": 0})
    assert code == 201, data
    assert data["engine"] == "ray" and data["id"].startswith("ray:") and data["stoppable"]
    assert kernels_join() == data["id"]  # kernels join it through CARME_ADDRESS


async def test_view_shows_a_cluster_without_changing_what_kernels_join(
    jp_fetch: Any, service: Any
) -> None:
    service.backend.local.append({"address": "embedded:77", "pid": 77, "started": 9.0})
    service.backend.local.append({"address": "127.0.0.1:6380", "pid": 99, "started": 5.0})
    _, listing = await call(jp_fetch, "clusters")
    assert listing["showing"] == "embedded:77" and listing["selected"] is None
    code, data = await call(jp_fetch, "connect", method="POST", body={"address": "embedded:77"})
    assert code == 400 and "cannot join" in data["message"]
    await call(jp_fetch, "connect", method="POST", body={"address": "127.0.0.1:6380"})
    code, data = await call(jp_fetch, "view", method="POST", body={"cluster": "embedded:77"})
    assert code == 200 and data == {"showing": "embedded:77", "selected": "127.0.0.1:6380"}
    assert kernels_join() == "127.0.0.1:6380"
    code, data = await call(jp_fetch, "view", method="POST", body={"cluster": None})
    assert data["showing"] == "127.0.0.1:6380"
    for body, status in (({"cluster": "embedded:78"}, 404), ({"cluster": "nonsense"}, 400),
                         ({}, 400), ({"cluster": None, "x": 1}, 400)):
        code, data = await call(jp_fetch, "view", method="POST", body=body)
        assert code == status, (body, data)
    code, data = await call(jp_fetch, "clusters", "embedded:77", method="DELETE")
    assert code == 409 and "ends with that kernel" in data["message"]


async def test_stop_a_started_cluster_clears_the_selection(jp_fetch: Any) -> None:
    _, started = await call(jp_fetch, "clusters", method="POST", body={})
    code, data = await call(jp_fetch, "clusters", started["id"], method="DELETE")
    assert code == 200
    assert data == {"id": started["id"], "stopped": True, "selected": None}
    assert kernels_join() is None
    _, listing = await call(jp_fetch, "clusters")
    assert listing == {"clusters": [], "selected": None, "showing": None}


async def test_stop_unknown_and_remote_clusters_is_refused(jp_fetch: Any) -> None:
    code, data = await call(jp_fetch, "clusters", "127.0.0.1:9", method="DELETE")
    assert code == 404 and "GET /carme/api/clusters" in data["message"]
    await call(jp_fetch, "connect", method="POST", body={"address": "10.0.0.7:6380"})
    code, data = await call(jp_fetch, "clusters", "10.0.0.7:6380", method="DELETE")
    assert code == 409 and "not started on this machine" in data["message"]
    code, data = await call(jp_fetch, "clusters", "nonsense", method="DELETE")
    assert code == 400 and "HOST:PORT" in data["message"]


async def test_local_clusters_are_listed_and_can_be_stopped(jp_fetch: Any, service: Any) -> None:
    service.backend.local.append({"address": "127.0.0.1:6380", "pid": 99, "started": 5.0})
    _, listing = await call(jp_fetch, "clusters")
    [entry] = listing["clusters"]
    assert entry["origin"] == "local" and entry["local"] and not entry["selected"]
    code, _ = await call(jp_fetch, "clusters", "127.0.0.1:6380", method="DELETE")
    assert code == 200 and service.backend.local == []


async def test_connect_remembers_selects_and_deselects(jp_fetch: Any) -> None:
    code, data = await call(jp_fetch, "connect", method="POST", body={"address": " 10.0.0.7:6380 "})
    assert code == 200 and data == {"selected": "10.0.0.7:6380", "address": "10.0.0.7:6380"}
    assert kernels_join() == "10.0.0.7:6380"
    _, listing = await call(jp_fetch, "clusters")
    assert listing["clusters"][0]["origin"] == "connected"
    assert listing["clusters"][0]["alive"] is None
    code, data = await call(jp_fetch, "connect", method="POST", body={"address": None})
    assert code == 200 and data == {"selected": None, "address": None}
    assert kernels_join() is None
    _, listing = await call(jp_fetch, "clusters")
    assert [c["address"] for c in listing["clusters"]] == ["10.0.0.7:6380"]


@pytest.mark.parametrize("body", [{}, {"address": "localhost"}, {"address": 6380},
                                  {"address": "h:0"}, {"address": "a b:1"}])
async def test_connect_rejects_bad_addresses(jp_fetch: Any, body: dict[str, Any]) -> None:
    code, data = await call(jp_fetch, "connect", method="POST", body=body)
    assert code == 400
    assert "HOST:PORT" in data["message"] or "host" in data["message"]


async def test_snapshot_of_the_selected_cluster(jp_fetch: Any) -> None:
    code, data = await call(jp_fetch, "snapshot")
    assert code == 404 and "no cluster is selected" in data["message"]
    _, started = await call(jp_fetch, "clusters", method="POST", body={})
    for params in (None, {"cluster": started["id"]}):
        code, snap = await call(jp_fetch, "snapshot", params=params)
        assert code == 200
        assert snap["address"] == started["address"]
        assert snap["tasks"] == {"pending": 2, "running": 1, "finished": 3, "failed": 1}
        [node] = snap["nodes"]
        assert node["cpu_percent"] == 50.0 and node["gpus"][0]["utilization"] == 7.0
        assert snap["actors"][0]["class_name"] == "Counter"
        assert snap["objects"]["largest"][0]["size"] == 100.0
        assert snap["events"][0]["bucket"] == "finished"


async def test_snapshot_of_an_unreachable_cluster_says_so(jp_fetch: Any) -> None:
    await call(jp_fetch, "connect", method="POST", body={"address": "127.0.0.1:1"})
    code, data = await call(jp_fetch, "snapshot")
    assert code == 503
    assert "127.0.0.1:1 did not answer" in data["message"] and "carme status" in data["message"]


async def test_timeline_is_chrome_trace_json(jp_fetch: Any) -> None:
    _, started = await call(jp_fetch, "clusters", method="POST", body={})
    code, events = await call(jp_fetch, "timeline", params={"cluster": started["id"]})
    assert code == 200
    assert isinstance(events, list) and events[0]["ph"] == "X"


async def test_stream_pushes_ticks(jp_ws_fetch: Any, jp_fetch: Any) -> None:
    ws = await jp_ws_fetch("carme", "api", "stream")
    try:
        first = json.loads(await ws.read_message())
        assert first["type"] == "tick" and first["snapshot"] is None
        assert "No cluster is running" in first["error"]
        _, started = await call(jp_fetch, "clusters", method="POST", body={})
        for _ in range(50):
            msg = json.loads(await ws.read_message())
            if msg["snapshot"] is not None:
                break
        assert msg["snapshot"]["address"] == started["address"]
        assert msg["clusters"]["selected"] == started["address"]
        assert msg["error"] is None
    finally:
        ws.close()


async def test_server_started_with_carme_address(
    jp_configurable_serverapp: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CARME_ADDRESS", "10.1.1.1:6380")
    app = jp_configurable_serverapp()
    service = app.web_app.settings["carme_lab_service"]
    listing = await service.listing()
    assert listing["selected"] == "10.1.1.1:6380"
    assert listing["clusters"][0]["origin"] == "env"
    # kernels get it through the selection file, not a CARME_ADDRESS frozen at their start
    assert "CARME_ADDRESS" not in os.environ and kernels_join() == "10.1.1.1:6380"
    await service.connect({"address": None})
    assert kernels_join() is None


async def test_selection_survives_a_server_restart(tmp_path: Any) -> None:
    from carme_lab_fakes import FakeBackend

    from carme_lab._service import LabService

    state = str(tmp_path / "carme_lab.json")
    backend = FakeBackend()
    first = LabService(backend, state_file=state)
    started = await first.start({})
    await first.close()
    assert "CARME_SELECTION_FILE" not in os.environ  # put back as it was
    assert not os.path.exists(first.selection_file)
    second = LabService(backend, state_file=state)  # the cluster outlived the server
    try:
        assert second.book.selected == started["address"]
        assert kernels_join() == started["address"]
    finally:
        await second.close()


async def test_close_stops_started_clusters_only_when_asked(tmp_path: Any) -> None:
    from carme_lab_fakes import FakeBackend

    from carme_lab._service import LabService

    for stop_started, left in ((False, 2), (True, 1)):
        backend = FakeBackend()
        backend.local.append({"address": "127.0.0.1:6380", "pid": 1})  # not ours: never stopped
        service = LabService(backend, state_file=None)
        info = await service.start({"select": False})
        assert info["selected"] is False and service.book.selected is None
        await service.close(stop_started=stop_started)
        assert len(backend.local) == left
        assert ("stop", info["address"]) in backend.calls or not stop_started


async def test_kernels_joining_a_ray_cluster_get_ray_token_auth(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from carme_lab_fakes import FakeBackend

    from carme_lab._service import LabService

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "f" * 64)
    service = LabService(FakeBackend(), state_file=None)
    try:
        await service.connect({"address": "127.0.0.1:6380"})
        assert kernel_choice().env == {}
        await service.connect({"address": "ray:127.0.0.1:6379"})
        assert kernels_join() == "ray:127.0.0.1:6379"
        assert kernel_choice().env == {"RAY_AUTH_MODE": "token"}  # in the file, not frozen
        assert "RAY_AUTH_MODE" not in os.environ
        await service.connect({"address": None})
        assert kernel_choice().env == {}
        await service.connect({"address": "ray:127.0.0.1:6379"})
    finally:
        await service.close()
    assert "RAY_AUTH_MODE" not in os.environ and kernels_join() is None
    # a mode the user set is theirs: left alone
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    service = LabService(FakeBackend(), state_file=None)
    try:
        await service.connect({"address": "ray:127.0.0.1:6379"})
        assert os.environ["RAY_AUTH_MODE"] == "disabled"
    finally:
        await service.close()


async def test_listing_and_stream_answer_while_a_start_is_under_way() -> None:
    import asyncio
    import threading

    from carme_lab_fakes import FakeBackend

    from carme_lab._service import LabService

    release = threading.Event()

    class SlowStart(FakeBackend):
        def start(self, spec: Any) -> dict[str, Any]:
            release.wait(60)  # a Ray head starting on a small machine
            return super().start(spec)

    backend = SlowStart()
    backend.local.append({"address": "127.0.0.1:6380", "pid": 99, "started": 5.0})
    service = LabService(backend, state_file=None, call_timeout=5.0)
    try:
        starting = asyncio.ensure_future(service.start({"engine": "ray"}))
        await asyncio.sleep(0)
        listing = await service.listing()  # would time out (504) behind the start
        assert [c["id"] for c in listing["clusters"]] == ["127.0.0.1:6380"]
        assert not starting.done()
        release.set()
        info = await starting
        assert info["engine"] == "ray" and service.book.selected == info["id"]
    finally:
        release.set()
        await service.close()
