"""Differential tests: runtime_env (env_vars, working_dir, py_modules).

The cluster of this module is started with a job-level runtime_env (Ray accepts
local directories for working_dir/py_modules only there).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.processes, pytest.mark.ray]


def init_kwargs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("working_dir")
    (work / "semantics_wd_module.py").write_text("VALUE = 'from working_dir'\n")
    (work / "data.txt").write_text("relative file")
    mods = tmp_path_factory.mktemp("py_modules")
    pkg = mods / "semantics_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("VALUE = 'from py_modules'\n")
    return {
        "runtime_env": {
            "working_dir": str(work),
            "py_modules": [str(pkg)],
            "env_vars": {"SEMANTICS_JOB_VAR": "job", "SEMANTICS_SHARED": "job"},
        }
    }


def test_job_env_vars(ray_impl):
    ray = ray_impl

    @ray.remote
    def env():
        return os.environ.get("SEMANTICS_JOB_VAR")

    assert ray.get(env.remote()) == "job"


def test_task_env_vars_merge_with_job_env_vars(ray_impl):
    ray = ray_impl

    @ray.remote
    def env(*names):
        return [os.environ.get(n) for n in names]

    opts = {"runtime_env": {"env_vars": {"SEMANTICS_TASK_VAR": "task", "SEMANTICS_SHARED": "task"}}}
    names = ("SEMANTICS_TASK_VAR", "SEMANTICS_SHARED", "SEMANTICS_JOB_VAR")
    assert ray.get(env.options(**opts).remote(*names)) == ["task", "task", "job"]
    # A task without its own env_vars does not see another task's.
    assert ray.get(env.remote(*names)) == [None, "job", "job"]


def test_actor_env_vars(ray_impl):
    ray = ray_impl

    @ray.remote
    class Env:
        def get(self, name):
            return os.environ.get(name)

    a = Env.options(runtime_env={"env_vars": {"SEMANTICS_ACTOR_VAR": "actor"}}).remote()
    assert ray.get(a.get.remote("SEMANTICS_ACTOR_VAR")) == "actor"
    ray.kill(a)


def test_bad_env_vars_rejected(ray_impl):
    ray = ray_impl

    @ray.remote
    def f():
        return 1

    with pytest.raises((TypeError, ValueError)):
        ray.get(f.options(runtime_env={"env_vars": {"A": 1}}).remote())


def test_working_dir(ray_impl):
    ray = ray_impl

    @ray.remote
    def use_working_dir():
        import semantics_wd_module

        with open("data.txt") as f:
            return semantics_wd_module.VALUE, f.read()

    assert ray.get(use_working_dir.remote()) == ("from working_dir", "relative file")


def test_py_modules(ray_impl):
    ray = ray_impl

    @ray.remote
    def use_module():
        import semantics_pkg

        return semantics_pkg.VALUE

    assert ray.get(use_module.remote()) == "from py_modules"


def test_task_level_working_dir(ray_impl, tmp_path):
    # Ray accepts only remote URIs for a task-level working_dir (local
    # directories only at ray.init); carme also takes a local directory here.
    ray = ray_impl
    if ray.__name__ == "ray":
        pytest.skip("Ray needs a URI for a task-level working_dir")
    (tmp_path / "task_wd_file.txt").write_text("task level")

    @ray.remote
    def read():
        return Path("task_wd_file.txt").read_text()

    assert ray.get(read.options(runtime_env={"working_dir": str(tmp_path)}).remote()) == "task level"
