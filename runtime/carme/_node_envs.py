"""Runtime environments on a node: a key per distinct `runtime_env`, its files copied once.

Theory of operation. A lease or actor asks for a `runtime_env` (`env_vars`,
`working_dir`, `py_modules`). `key(env)` names it (its canonical JSON; "" for none); the
first time a key is seen its `working_dir` and `py_modules` are copied into the session
directory, so later edits of the originals do not leak into running work, and the
prepared form (`env_vars`, `sys_path`, `cwd`) is what the zygote hands each worker of
that env. Copying is file I/O: an `OSError` reaches the caller, which refuses the
request with `RuntimeEnvSetupError`, and the key is not remembered.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any


class RuntimeEnvs:
    def __init__(self, session_dir: str) -> None:
        self.session_dir = session_dir
        self.prepared: dict[str, dict] = {}  # key -> prepared form

    def key(self, runtime_env: dict | None) -> str:
        """The env's key, preparing it the first time (may raise OSError)."""
        if not runtime_env:
            return ""
        key = json.dumps(runtime_env, sort_keys=True, default=str)
        if key not in self.prepared:
            self.prepared[key] = self.prepare(runtime_env, len(self.prepared))
        return key

    def get(self, key: str) -> dict | None:
        return self.prepared.get(key)

    def prepare(self, env: dict, index: int) -> dict:
        """Copy working_dir and py_modules into the session so later edits don't leak in."""
        out: dict[str, Any] = {"env_vars": dict(env.get("env_vars") or {}), "sys_path": [], "cwd": None}
        base = os.path.join(self.session_dir, f"env{index}")
        wd = env.get("working_dir")
        if wd:
            dst = os.path.join(base, "working_dir")
            shutil.copytree(wd, dst, dirs_exist_ok=True)
            out["cwd"] = dst
            out["sys_path"].append(dst)
        for i, mod in enumerate(env.get("py_modules") or []):
            path = mod if isinstance(mod, str) else os.path.dirname(mod)
            dst = os.path.join(base, f"py_modules{i}")
            os.makedirs(dst, exist_ok=True)
            if os.path.isdir(path):
                shutil.copytree(path, os.path.join(dst, os.path.basename(path.rstrip("/"))),
                                dirs_exist_ok=True)
            else:
                shutil.copy(path, dst)
            out["sys_path"].append(dst)
        return out


__all__ = ["RuntimeEnvs"]
