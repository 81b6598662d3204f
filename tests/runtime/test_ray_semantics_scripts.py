"""Differential tests: whole Ray programs run as scripts (``import <impl> as ray``).

What a user's script does, in a fresh interpreter: remote functions and classes
defined in ``__main__`` and in a helper module next to the script (which the
workers import, as Ray's do, from the driver's working directory), no explicit
``shutdown()``, and the process exiting with the cluster cleaned up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.processes, pytest.mark.ray]

HELPERS = '''
def square(x):
    return x * x


class Accumulator:
    def __init__(self):
        self.total = 0

    def add(self, x):
        self.total += x
        return self.total
'''

MAIN = '''
import sys
import {impl} as ray
from helpers import Accumulator, square

ray.init(num_cpus=2, include_dashboard=False)


@ray.remote
def cube(x):
    return x * x * x


@ray.remote
class Greeter:
    def __init__(self, name):
        self.name = name

    def hello(self):
        return "hello " + self.name


remote_square = ray.remote(square)
acc = ray.remote(Accumulator).remote()
print("cube", ray.get([cube.remote(i) for i in range(4)]))
print("square", ray.get(remote_square.remote(7)))
print("acc", ray.get([acc.add.remote(i) for i in range(4)]))
print("greet", ray.get(Greeter.remote("carme").hello.remote()))
sys.stdout.flush()
'''


MARK_VAR = "SEMANTICS_SCRIPT_MARK"


def _marked(mark: str) -> list[psutil.Process]:
    """Live processes whose environment carries `mark` (the script's descendants,
    including any that were orphaned and are no longer our children)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(MARK_VAR) == mark and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            pass
    return found


KILLED = '''
import os, signal
import {impl} as ray

ray.init(num_cpus=2)


@ray.remote
class Holder:
    def ping(self):
        return "pong"


h = Holder.remote()
ref = ray.put(bytes(2_000_000))  # something in shared memory
assert ray.get(h.ping.remote()) == "pong"
print("running", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
'''


def _run(impl: str, tmp_path: Path, timeout: float = 120, script: str = MAIN) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run the script; return its result and the processes of it that outlive it by 5 s."""
    (tmp_path / "helpers.py").write_text(HELPERS)
    (tmp_path / "main.py").write_text(textwrap.dedent(script.format(impl=impl)))
    mark = uuid.uuid4().hex
    # Output goes to files, not pipes: a leftover process holding a pipe would
    # make run() wait for it instead of letting the check below name it.
    with open(tmp_path / "stdout", "w") as so, open(tmp_path / "stderr", "w") as se:
        proc = subprocess.run(
            [sys.executable, "main.py"],
            cwd=tmp_path,
            env={**os.environ, MARK_VAR: mark},
            stdout=so,
            stderr=se,
            timeout=timeout,
            check=False,
        )
    out = subprocess.CompletedProcess(
        proc.args, proc.returncode, (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    )
    deadline = time.monotonic() + 5
    while (left := _marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [f"pid {p.pid} {' '.join(p.cmdline())[:120]}" for p in left]
    for p in left:
        p.kill()
    return out, survivors


def test_script_with_main_and_helper_module(impl_name, tmp_path):
    out, survivors = _run(impl_name, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert survivors == [], "the script's cluster outlived it"
    lines = [line for line in out.stdout.splitlines() if line.split(" ")[0] in {"cube", "square", "acc", "greet"}]
    assert lines == [
        "cube [0, 1, 8, 27]",
        "square 49",
        "acc [0, 1, 3, 6]",
        "greet hello carme",
    ]


def test_killed_driver_takes_its_cluster_along(impl_name, tmp_path):
    # carme's embedded cluster is tied to its driver, even one killed with SIGKILL
    # (the conftest leak guard checks its shared memory as well). Ray's local
    # cluster is not tied to the driver this way: carme only.
    if impl_name == "ray":
        pytest.skip("Ray's local cluster may outlive a SIGKILLed driver")
    out, survivors = _run(impl_name, tmp_path, script=KILLED)
    assert out.returncode == -9 and "running" in out.stdout, out.stderr[-3000:]
    assert survivors == [], "the killed driver's cluster outlived it"
