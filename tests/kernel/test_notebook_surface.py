"""carme.notebook: the one surface of carme's runtime the notebook layer uses."""

from __future__ import annotations

import re
import time
from pathlib import Path
from types import ModuleType

import pytest

EXPORTED = [
    "Choice",
    "GetHook",
    "LogHandler",
    "SELECTION_ENV",
    "TagProvider",
    "cancel_tagged",
    "default_address",
    "get_hook",
    "invalidate_exports",
    "is_remote_object",
    "ref_states",
    "set_get_hook",
    "set_log_handler",
    "set_task_tag_provider",
    "short_object_id",
    "state_rows",
    "timeline_events",
    "write_selection",
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


def test_default_address_prefers_carme_address_then_the_selection_file(tmp_path: Path) -> None:
    import os
    import stat

    from carme.notebook import SELECTION_ENV, default_address, write_selection

    path = str(tmp_path / "selection.json")
    assert default_address({}).address is None
    assert default_address({SELECTION_ENV: path}).address is None  # no file yet: embedded
    write_selection(path, "127.0.0.1:6380", {"RAY_AUTH_MODE": "token"})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    choice = default_address({SELECTION_ENV: path})
    assert choice.address == "127.0.0.1:6380" and choice.from_panel and path in choice.source
    assert choice.env == {"RAY_AUTH_MODE": "token"}
    given = default_address({SELECTION_ENV: path, "CARME_ADDRESS": "10.0.0.1:7000"})
    assert given.address == "10.0.0.1:7000" and given.source == "CARME_ADDRESS"
    write_selection(path, None)
    assert default_address({SELECTION_ENV: path}).address is None
    for junk in ("{", "[1]", '{"address": 5}'):
        with open(path, "w") as f:
            f.write(junk)
        assert default_address({SELECTION_ENV: path}).address is None, junk
    assert os.listdir(tmp_path) == ["selection.json"]  # no temporary file left behind


def test_init_names_where_a_ray_address_came_from(tmp_path: Path) -> None:
    import carme
    from carme.notebook import SELECTION_ENV, write_selection

    path = str(tmp_path / "selection.json")
    write_selection(path, "ray:127.0.0.1:6379")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("CARME_ADDRESS", raising=False)
        mp.setenv(SELECTION_ENV, path)
        with pytest.raises(ValueError, match=r"side panel.*is a Ray cluster.*address=\"local\""):
            carme.init()
    assert not carme.is_initialized()


def test_short_object_id_tells_apart_the_returns_of_one_task_and_of_one_process() -> None:
    from carme.notebook import short_object_id

    prefix = "d8d275c194170a2c"
    ids = [prefix + f"{task:016x}" + f"{index:08x}" for task, index in
           ((4, 1), (4, 2), (4, 3), (5, 1), (6, 0), (0x1234, 0))]
    short = [short_object_id(i) for i in ids]
    assert short == ["d8d275…4#1", "d8d275…4#2", "d8d275…4#3", "d8d275…5#1", "d8d275…6",
                     "d8d275…1234"]
    ray_task = "a1b2c3d4e5f60718" + "f" * 24 + "01000000"
    assert short_object_id(ray_task + "00000001") == "a1b2c3d4e5f6…#1"
    assert short_object_id(ray_task + "00000002") == "a1b2c3d4e5f6…#2"
    assert short_object_id("abc") == "abc"
    assert short_object_id("x" * 30) == "xxxxxxxx…xxxxxxxx"
    assert short_object_id("") == ""


@pytest.mark.processes
def test_short_ids_of_real_objects_differ(carme: ModuleType) -> None:
    from carme.notebook import short_object_id, state_rows

    @carme.remote(num_returns=3)
    def three() -> tuple[int, str, list[int]]:
        return 1, "a" * 20, [1, 2]

    refs = three.remote()
    put = carme.put(5)
    carme.get(refs)
    ids = [r.hex() for r in [*refs, put]]
    assert len({short_object_id(i) for i in ids}) == 4, ids
    rows = {r["object_id"]: r for r in state_rows("objects")}
    assert all(rows[i]["object_size"] for i in ids), [rows[i] for i in ids]  # inline ones too
