"""Fixtures for the server-extension tests: a Jupyter server with carme_lab and a fake backend.

pytest-jupyter's fixtures are imported here (not through ``pytest_plugins``, which
only the root conftest may set) so that its autouse fixtures, which point Jupyter's
paths at temporary directories, apply to these tests only.

`FakeBackend` stands in for `carme.cluster` in most tests: it answers at once and
records what it was asked. `test_real_cluster.py` uses the real one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from carme_lab_fakes import SNAPSHOT, FakeBackend  # noqa: E402,F401  (re-exported for fixtures)
from pytest_jupyter.jupyter_server import *  # noqa: F403  (fixtures and hooks)


@pytest.fixture(autouse=True)
def _no_carme_address(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts without CARME_ADDRESS and leaves the environment as it was."""
    before = os.environ.get("CARME_ADDRESS")
    monkeypatch.delenv("CARME_ADDRESS", raising=False)
    yield
    if before is None:
        os.environ.pop("CARME_ADDRESS", None)
    else:
        os.environ["CARME_ADDRESS"] = before


@pytest.fixture  # type: ignore[no-redef]
def jp_server_config() -> dict[str, Any]:
    return {
        "ServerApp": {"jpserver_extensions": {"carme_lab": True}},
        "CarmeLabApp": {"backend_class": FakeBackend, "interval": 0.05, "call_timeout": 5.0},
    }


@pytest.fixture
def service(jp_serverapp: Any) -> Any:
    """The running `LabService` (its `.backend` is a FakeBackend unless configured otherwise)."""
    return jp_serverapp.web_app.settings["carme_lab_service"]
