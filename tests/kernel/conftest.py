"""Fixtures for end-to-end tests through the real carme kernel (jupyter_client).

``jupyter_dirs`` (tests/conftest.py) installs the kernelspec into a temporary
prefix and points Jupyter and IPython at a temporary directory: nothing touches
the user's home. `kernel` starts one carme kernel per test and shuts it down (the leak guard of
tests/conftest.py then checks that its processes and shared memory are gone).
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

KERNEL_START_TIMEOUT = 60


@dataclass
class CellRun:
    msg_id: str
    reply: dict[str, Any]
    messages: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return str(self.reply["content"]["status"])

    def streams(self, name: str | None = None) -> list[tuple[float, str]]:
        return [
            (t, m["content"]["text"])
            for t, m in self.messages
            if m["msg_type"] == "stream" and (name is None or m["content"]["name"] == name)
        ]

    def text(self, name: str | None = None) -> str:
        return "".join(t for _, t in self.streams(name))

    def result(self) -> dict[str, Any] | None:
        for _, m in self.messages:
            if m["msg_type"] == "execute_result":
                return dict(m["content"]["data"])
        return None

    def error(self) -> dict[str, Any] | None:
        """ename/evalue/traceback of the cell's error (UsageErrors only appear in the reply)."""
        for _, m in self.messages:
            if m["msg_type"] == "error":
                return dict(m["content"])
        if self.status == "error":
            return dict(self.reply["content"])
        return None


class KernelHarness:
    """A running carme kernel; keeps every iopub message with its arrival time."""

    def __init__(self, km: Any, kc: Any) -> None:
        self.km = km
        self.kc = kc
        self.iopub: list[tuple[float, dict[str, Any]]] = []

    def _drain(self, until: float, stop: Any = None) -> None:
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return
            try:
                msg = self.kc.get_iopub_msg(timeout=min(left, 0.1))
            except queue.Empty:
                continue
            self.iopub.append((time.time(), msg))
            if stop is not None and stop(msg):
                return

    def collect(self, seconds: float) -> None:
        """Keep receiving iopub messages for ``seconds``."""
        self._drain(time.monotonic() + seconds)

    def submit(self, code: str) -> str:
        return str(self.kc.execute(code))

    def wait(self, msg_id: str, timeout: float = 60) -> CellRun:
        deadline = time.monotonic() + timeout

        def idle(m: dict[str, Any]) -> bool:
            return (
                m["msg_type"] == "status"
                and m["parent_header"].get("msg_id") == msg_id
                and m["content"]["execution_state"] == "idle"
            )

        if not any(idle(m) for _, m in self.iopub):
            self._drain(deadline, idle)
        reply = None
        while reply is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no execute_reply for {msg_id} within {timeout} s")
            msg = self.kc.get_shell_msg(timeout=left)
            if msg["parent_header"].get("msg_id") == msg_id:
                reply = msg
        return CellRun(msg_id, reply, self.of(msg_id))

    def of(self, msg_id: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, m) for t, m in self.iopub if m["parent_header"].get("msg_id") == msg_id]

    def run(self, code: str, timeout: float = 60) -> CellRun:
        return self.wait(self.submit(code), timeout)

    def ok(self, code: str, timeout: float = 60) -> CellRun:
        run = self.run(code, timeout)
        assert run.status == "ok", run.error() or run.reply["content"]
        return run

    def value(self, code: str, timeout: float = 60) -> str:
        """text/plain of the cell's result."""
        res = self.ok(code, timeout).result()
        assert res is not None, f"cell gave no result: {code!r}"
        return str(res["text/plain"])


@contextlib.contextmanager
def running_kernel(name: str, cwd: Path) -> Iterator[KernelHarness]:
    """Start kernelspec ``name``; shut it down (politely) at the end."""
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name=name)
    km.start_kernel(cwd=str(cwd))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=KERNEL_START_TIMEOUT)
        yield KernelHarness(km, kc)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)


@pytest.fixture
def kernel(jupyter_dirs: Path) -> Iterator[KernelHarness]:
    """A carme kernel."""
    with running_kernel("carme", jupyter_dirs) as k:
        yield k


@pytest.fixture
def python3_kernel(jupyter_dirs: Path) -> Iterator[KernelHarness]:
    """A plain IPython kernel (``%load_ext carme_kernel`` adds the magics)."""
    with running_kernel("python3", jupyter_dirs) as k:
        yield k


@pytest.fixture(scope="module")
def ray_kernel(jupyter_dirs: Path, ray_cluster: Any) -> Iterator[KernelHarness]:
    """A carme kernel whose engine is the test Ray cluster (``CARME_ADDRESS=ray:HOST:PORT``).

    One per test module (a Ray driver takes seconds to connect); tests share it.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CARME_ADDRESS", f"ray:{ray_cluster.gcs_address}")
        with running_kernel("carme", jupyter_dirs) as k:
            yield k
