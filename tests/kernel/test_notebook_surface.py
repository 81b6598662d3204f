"""carme.notebook: the one surface of carme's runtime the notebook layer uses."""

from __future__ import annotations

import re
import time
from pathlib import Path
from types import ModuleType

import pytest

EXPORTED = [
    "GetHook",
    "LogHandler",
    "TagProvider",
    "cancel_tagged",
    "get_hook",
    "invalidate_exports",
    "is_remote_object",
    "ref_states",
    "set_get_hook",
    "set_log_handler",
    "set_task_tag_provider",
    "state_rows",
    "timeline_events",
]

KERNEL = Path(__file__).resolve().parents[2] / "kernel" / "carme_kernel"


def test_exported_names() -> None:
    from carme import notebook

    assert notebook.__all__ == EXPORTED == sorted(EXPORTED)
    for name in EXPORTED:
        assert getattr(notebook, name) is not None, name
    assert notebook.__doc__ and "set_task_tag_provider" in notebook.__doc__


def test_kernel_uses_no_private_carme_module() -> None:
    """Only comments and docstrings of carme_kernel may name carme's private modules."""
    offenders = []
    for path in KERNEL.rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"\bcarme\._|from carme\._|from carme import _", code) and "``" not in code:
                offenders.append(f"{path.name}:{n}: {line.strip()}")
            if re.search(r"sys\.modules\b.*carme", code):
                offenders.append(f"{path.name}:{n}: {line.strip()}")
    assert offenders == []


def test_unknown_state_kind_is_named() -> None:
    from carme import notebook

    with pytest.raises(ValueError, match="unknown state kind 'gpus'.*nodes, workers, tasks"):
        notebook.state_rows("gpus")


@pytest.mark.processes
def test_tags_states_cancel_and_exports(carme: ModuleType) -> None:
    from carme import notebook

    tag = {"run": "r1", "execution_count": 7}
    notebook.set_task_tag_provider(lambda: tag)
    try:

        @carme.remote
        def one() -> int:
            return 1

        @carme.remote
        def nap() -> None:
            time.sleep(60)

        ref = one.remote()
        assert carme.get(ref) == 1
        assert notebook.ref_states([ref]) == ["finished"]
        assert notebook.is_remote_object(ref) and not notebook.is_remote_object(1)
        rows = notebook.state_rows("tasks")
        assert any(r.get("cell") == tag and r["name"] == "one" for r in rows)
        spans = [e for e in notebook.timeline_events() if e.get("ph") == "X"]
        assert any(e["args"]["cell"] == tag for e in spans)
        sleeper = nap.remote()
        assert notebook.ref_states([sleeper]) == ["pending"]
        assert notebook.cancel_tagged(lambda t: t == tag) == 1
        with pytest.raises(carme.exceptions.TaskCancelledError):
            carme.get(sleeper, timeout=30)
        assert notebook.invalidate_exports([one, nap, 5, "x"]) == 2
        assert carme.get(one.remote()) == 1  # ships again after the reset
    finally:
        notebook.set_task_tag_provider(None)
