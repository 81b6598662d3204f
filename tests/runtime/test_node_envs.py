"""Runtime envs on a node: one key per distinct env, its files copied once. Plain calls
over a temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from carme._node_envs import RuntimeEnvs


def test_an_env_is_copied_once_and_later_edits_of_the_original_do_not_leak_in(tmp_path: Path):
    src = tmp_path / "project"
    src.mkdir()
    (src / "a.py").write_text("X = 1\n")
    mod = tmp_path / "helper.py"
    mod.write_text("Y = 2\n")
    envs = RuntimeEnvs(str(tmp_path / "session"))
    assert envs.key(None) == "" and envs.key({}) == "" and envs.get("") is None
    env = {"working_dir": str(src), "py_modules": [str(mod)], "env_vars": {"K": "v"}}
    key = envs.key(env)
    assert envs.key(dict(reversed(list(env.items())))) == key  # the same env, the same key
    prepared = envs.get(key)
    assert prepared is not None and prepared["env_vars"] == {"K": "v"}
    assert Path(prepared["cwd"], "a.py").read_text() == "X = 1\n"
    assert Path(prepared["sys_path"][1], "helper.py").read_text() == "Y = 2\n"
    (src / "a.py").write_text("X = 99\n")
    envs.key(env)
    assert Path(prepared["cwd"], "a.py").read_text() == "X = 1\n"


def test_an_env_whose_files_are_missing_raises_and_is_not_remembered(tmp_path: Path):
    envs = RuntimeEnvs(str(tmp_path / "session"))
    env = {"working_dir": str(tmp_path / "nowhere")}
    with pytest.raises(OSError):
        envs.key(env)
    assert envs.prepared == {}
    (tmp_path / "nowhere").mkdir()
    assert envs.key(env) in envs.prepared
