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
    """Each test starts without CARME_ADDRESS or a selection file (what the server exports
    to kernels) and leaves the environment as it was."""
    names = ("CARME_ADDRESS", "CARME_SELECTION_FILE")
    before = {name: os.environ.get(name) for name in names}
    for name in names:
        monkeypatch.delenv(name, raising=False)
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


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
