"""Shared fixtures: leak checks for tests that start processes, and `ray_impl`.

Theory of operation
-------------------
Every test that starts carme processes must leave nothing behind. `LeakGuard`
snapshots the driver's child processes (recursively) and the `/dev/shm` entries
whose name starts with ``carme`` before the work, samples which entries the
test's processes use while it runs, and afterwards waits up to 5 s for every new
process and every used new entry to disappear. Survivors fail the test by name
and are then killed (by PID) or removed so later tests start clean. Network
namespaces of the multi-host tests (`netns_hosts.PREFIX`) that a test leaves
fail it the same way, and are removed with every process still in them.

- Tests marked ``processes`` get a function-scoped guard automatically
  (`_no_leaks`), unless they use `ray_impl`, whose cluster lives for a whole
  module and is guarded at module scope instead, or `fresh_impl` (an
  uninitialized implementation, for tests of init/shutdown), which guards itself.
- `ray_impl` is parametrized over implementations: ``carme`` always, ``ray``
  when Ray is installed (left out otherwise, so CI runs carme only). It
  yields the initialized module; tests are written once against it::

      def test_x(ray_impl):
          ray = ray_impl
          assert ray.get(ray.put(1)) == 1
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import os
import secrets
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import pytest

from netns_hosts import dead_run_entries, leftover_namespaces, remove_namespace, sweep_dead_runs
from ray_support import (
    in_ray_head,
    ray_cluster,  # noqa: F401  (session Ray head for Ray-engine tests)
)

RAY_TOKEN_PREFIX = "carme-tests-ray-"


def _sweep_token_dirs() -> list[str]:
    """The Ray token directories of killed runs (`pytest_unconfigure` never ran there)."""
    removed = dead_run_entries(tempfile.gettempdir(), RAY_TOKEN_PREFIX)
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return [f"directory {path}" for path in removed]


def pytest_configure(config: pytest.Config) -> None:
    """Remove what killed earlier runs left (`netns_hosts.sweep_dead_runs`); give Ray
    (2.59+ turns token auth on by default) a token file of this run.

    Without it a local ``ray.init()`` of the differential suite writes
    ``~/.ray/auth_token`` into the user's home; the Ray head fixture exports its own
    token path while it runs.
    """
    if not hasattr(config, "workerinput"):
        config._carme_swept = sweep_dead_runs() + _sweep_token_dirs()  # type: ignore[attr-defined]
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    tmp = Path(tempfile.mkdtemp(prefix=f"{RAY_TOKEN_PREFIX}{os.getpid()}-"))
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    # Ray reads its auth mode once per process: set it before anything imports Ray, so
    # local clusters of the differential suite and the Ray head fixture agree.
    if "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        config._carme_ray_auth_mode = True  # type: ignore[attr-defined]
    config._carme_ray_token_dir = tmp  # type: ignore[attr-defined]


def pytest_report_header(config: pytest.Config) -> list[str]:
    swept = getattr(config, "_carme_swept", [])
    return [f"carme: removed what a killed test run left: {'; '.join(swept)}"] if swept else []


def pytest_unconfigure(config: pytest.Config) -> None:
    tmp = getattr(config, "_carme_ray_token_dir", None)
    if tmp is not None:
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
        if getattr(config, "_carme_ray_auth_mode", False):
            os.environ.pop("RAY_AUTH_MODE", None)
        shutil.rmtree(tmp, ignore_errors=True)


SHM_DIR = "/dev/shm"
SHM_PREFIX = "carme"
LEAK_WAIT_S = 5.0

# Resources every `ray_impl` cluster declares; tests rely on these numbers.
CLUSTER_CPUS = 2
CLUSTER_GPUS = 2
CLUSTER_CUSTOM = {"custom_a": 2.0}


def _shm_entries() -> set[str]:
    try:
        return {n for n in os.listdir(SHM_DIR) if n.startswith(SHM_PREFIX)}
    except FileNotFoundError:
        return set()


SPILL_PREFIX = "carme-spill-"  # a spill directory the user named gets one of these per session


def _spill_dirs(roots: Iterable[str], sessions: set[str]) -> list[str]:
    """`carme-spill-<session>` directories of `sessions` within two levels under `roots`."""
    found = []
    for root in roots:
        for dirpath, dirnames, _ in os.walk(root):
            for d in dirnames:
                if d.startswith(SPILL_PREFIX) and d[len(SPILL_PREFIX):] in sessions:
                    found.append(os.path.join(dirpath, d))
            if dirpath[len(root):].count(os.sep) >= 2:
                dirnames[:] = []
    return sorted(found)


def _children() -> dict[int, psutil.Process]:
    procs = {}
    for p in psutil.Process().children(recursive=True):
        if not in_ray_head(p.pid):  # the session's Ray head is checked when it stops
            procs[p.pid] = p
    return procs


def _shm_used_by(pids: Iterable[int]) -> set[str]:
    """Names of carme /dev/shm entries that processes `pids` map or hold open."""
    prefix = f"{SHM_DIR}/{SHM_PREFIX}"
    used: set[str] = set()
    for pid in pids:
        paths: list[str] = []
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/maps") as f:
                paths += [line.rsplit(" ", 1)[-1].strip() for line in f if prefix in line]
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    paths.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        used |= {p[len(SHM_DIR) + 1 :] for p in paths if p.startswith(prefix)}
    return used


def _our_pids() -> list[int]:
    return [os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))]


def _in_use_elsewhere(names: set[str]) -> set[str]:
    """The subset of `names` that a process outside this test's tree maps or holds open."""
    if not names:
        return set()
    ours = set(_our_pids())
    return _shm_used_by(pid for pid in psutil.pids() if pid not in ours) & names


class _ShmSampler:
    """Records, every 100 ms, the carme shm entries this process tree uses.

    /dev/shm is shared by everything on the machine (other test runs, other
    clusters), so a segment counts as this test's only if one of its processes
    was seen using it; a new segment nobody here used is reported as a warning,
    never a failure, and never removed.
    """

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leak-guard-shm-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                self.seen |= _shm_used_by(_our_pids())
            if self._stop.wait(0.1):
                return

    def stop(self) -> set[str]:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.seen


def _describe(p: psutil.Process) -> str:
    try:
        cmd = " ".join(p.cmdline())[:160] or p.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        cmd = "?"
    return f"pid {p.pid} ({cmd})"


class LeakGuard:
    """Before/after check that no new child process or carme shm segment survives."""

    def __init__(self, spill_roots: Iterable[str] = ()) -> None:
        self.procs = _children()
        self.shm = _shm_entries()
        self.netns = leftover_namespaces()
        self.sampler = _ShmSampler()
        # where spill directories outside the session directory may be (the default one
        # is inside it): the temp directory and the test's tmp_path
        self.spill_roots = [tempfile.gettempdir(), *spill_roots]

    def survivors(self, wait_s: float = LEAK_WAIT_S) -> tuple[list[psutil.Process], list[str]]:
        """New live child processes, and new shm entries this tree used, still there after `wait_s`."""
        seen = self.sampler.stop()
        deadline = time.monotonic() + wait_s
        while True:
            procs = [
                p
                for pid, p in _children().items()
                if pid not in self.procs and _alive(p)
            ]
            new = _shm_entries() - self.shm
            shm = sorted(new & seen)
            if (not procs and not shm) or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        stray = new - seen - _in_use_elsewhere(new - seen)
        if stray:
            warnings.warn(
                f"new carme shared memory not used by this test, left as is: {sorted(stray)}",
                stacklevel=2,
            )
        return procs, shm

    def check(self, what: str, wait_s: float = LEAK_WAIT_S) -> str | None:
        """Return a failure message naming survivors (after killing them), or None."""
        procs, shm = self.survivors(wait_s)
        netns = sorted(leftover_namespaces() - self.netns)
        sessions = {n[len(SHM_PREFIX) + 1 : -len("-store")] for n in self.sampler.seen if n.endswith("-store")}
        spill = _spill_dirs(self.spill_roots, sessions) if sessions else []
        if not procs and not shm and not netns and not spill:
            return None
        lines = [f"{what} left resources behind after {wait_s:.0f} s:"]
        lines += [f"  process {_describe(p)}" for p in procs]
        lines += [f"  shared memory {SHM_DIR}/{n}" for n in shm]
        lines += [f"  network namespace {n}" for n in netns]
        lines += [f"  spill directory {d}" for d in spill]
        self.clean(procs, shm)
        for n in netns:
            lines += [f"    with process {p}" for p in remove_namespace(n)]
        for d in spill:
            shutil.rmtree(d, ignore_errors=True)
        return "\n".join(lines)

    @staticmethod
    def clean(procs: list[psutil.Process], shm: list[str]) -> None:
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(procs, timeout=3)
        for n in shm:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(SHM_DIR, n))


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture(autouse=True)
def _no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Function-scoped leak check for tests marked ``processes``."""
    if request.node.get_closest_marker("processes") is None or {
        "ray_impl",
        "fresh_impl",
    } & set(request.fixturenames):
        yield
        return
    guard = LeakGuard([str(request.getfixturevalue("tmp_path"))] if "tmp_path" in request.fixturenames else [])
    yield
    msg = guard.check(f"test {request.node.nodeid}")
    if msg:
        pytest.fail(msg, pytrace=False)


@pytest.fixture(scope="session")
def jupyter_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point Jupyter and IPython at a temporary root, with the carme kernelspec installed.

    Nothing touches the user's home; kernels started by tests find ``python3``
    (this environment's ipykernel) and ``carme``.
    """
    root = tmp_path_factory.mktemp("jupyter")
    env = {
        "JUPYTER_PATH": str(root / "share" / "jupyter"),
        "JUPYTER_DATA_DIR": str(root / "data"),
        "JUPYTER_CONFIG_DIR": str(root / "config"),
        "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
        "IPYTHONDIR": str(root / "ipython"),
        "JUPYTER_PLATFORM_DIRS": "1",
        "MPLBACKEND": "Agg",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.delenv("CARME_ADDRESS", raising=False)
        mp.delenv("CARME_SELECTION_FILE", raising=False)  # a JupyterLab terminal's selection
        try:
            from carme_kernel._install import install
        except ImportError:
            pass  # tests that need the carme kernel then fail naming it
        else:
            install(prefix=str(root))
        yield root


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cluster state directory of this test's own (CARME_STATE_DIR), with no address or
    token from the environment leaking in. (Some test modules define their own.)"""
    d = tmp_path / "state"
    monkeypatch.setenv("CARME_STATE_DIR", str(d))
    monkeypatch.delenv("CARME_ADDRESS", raising=False)
    monkeypatch.delenv("CARME_CLUSTER_TOKEN", raising=False)
    return d


@pytest.fixture
def carme() -> Iterator[ModuleType]:
    """carme initialized with a small embedded cluster, shut down afterwards.

    Tests using it should be marked ``processes`` (the leak check then applies).
    """
    import carme as mod

    mod.init(num_cpus=CLUSTER_CPUS, resources=dict(CLUSTER_CUSTOM))
    try:
        yield mod
    finally:
        mod.shutdown()


def _ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


# Ray joins the parametrization only where it is installed (the test extra installs it),
# so a carme-only run reports no skip per test.
IMPLEMENTATIONS = ["carme"] + (["ray"] if _ray_available() else [])


def init_impl(name: str, **kwargs: Any) -> ModuleType:
    """Import and initialize `name` ("carme" or "ray") with the shared test cluster shape."""
    mod = importlib.import_module(name)
    opts: dict[str, Any] = {
        "num_cpus": CLUSTER_CPUS,
        "num_gpus": CLUSTER_GPUS,
        "resources": dict(CLUSTER_CUSTOM),
    }
    if name == "ray":
        opts.update(include_dashboard=False, configure_logging=False)
    opts.update(kwargs)
    mod.init(**opts)
    return mod


def _shutdown(mod: ModuleType) -> None:
    """Shut `mod` down; for Ray, collect cyclic garbage first.

    An ObjectRef that is part of a reference cycle (a test's closure, a generator) is freed
    by whichever thread next runs the cycle collector. If that happens in another thread
    (carme's I/O threads live on in this process) while Ray is shutting down, Ray's
    ObjectRef destructor finds no core worker and Ray ends the whole process (the driver log
    says "The core worker has already been shutdown ... The process will exit"), taking
    pytest with it. So such refs are released here while Ray still runs, and no thread
    starts a collection while it shuts down.
    """
    if mod.__name__ != "ray":
        mod.shutdown()
        return
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        mod.shutdown()
    finally:
        if enabled:
            gc.enable()


def _after_shutdown(name: str, guard: LeakGuard, what: str) -> None:
    """Check carme strictly; Ray's own daemons are not carme's business: clean them quietly."""
    if name == "carme":
        msg = guard.check(what)
        if msg:
            pytest.fail(msg, pytrace=False)
    else:
        procs, shm = guard.survivors(wait_s=10)
        guard.clean(procs, shm)


@pytest.fixture(scope="module", params=IMPLEMENTATIONS)
def ray_impl(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ModuleType]:
    """The module under test (carme, or Ray when installed), initialized for this module.

    A test module may define ``init_kwargs(tmp_path_factory) -> dict`` (extra
    ``init()`` arguments for both implementations, e.g. a job-level
    ``runtime_env``) and ``RAY_INIT_KWARGS`` (extra arguments for Ray only).
    """
    name: str = request.param
    guard = LeakGuard()
    factory = getattr(request.module, "init_kwargs", None)
    extra = dict(factory(tmp_path_factory)) if factory else {}
    if name == "ray":
        extra.update(getattr(request.module, "RAY_INIT_KWARGS", {}))
    mod = init_impl(name, **extra)
    try:
        yield mod
    finally:
        _shutdown(mod)
    _after_shutdown(name, guard, f"carme cluster of {request.module.__name__}")


@pytest.fixture(params=IMPLEMENTATIONS)
def fresh_impl(request: pytest.FixtureRequest) -> Iterator[ModuleType]:
    """The module under test, *not* initialized: for tests of init/shutdown themselves.

    Shut down afterwards whatever the test left running; carme's processes and
    shared memory are leak-checked.
    """
    name: str = request.param
    mod = importlib.import_module(name)
    if mod.is_initialized():
        _shutdown(mod)
    guard = LeakGuard()
    try:
        yield mod
    finally:
        _shutdown(mod)
    _after_shutdown(name, guard, f"test {request.node.nodeid}")


@pytest.fixture(params=IMPLEMENTATIONS)
def impl_name(request: pytest.FixtureRequest) -> str:
    """ "carme" (and "ray" where installed): for tests that run the implementation in a
    subprocess (a script written as Ray users write them: ``import <impl> as ray``)."""
    return str(request.param)


@pytest.fixture
def wait_for() -> Any:
    """`wait_for(pred, timeout=10)`: poll `pred()` until truthy and return its value."""

    def _wait_for(pred: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = pred()
            if value:
                return value
            if time.monotonic() >= deadline:
                pytest.fail(f"condition not met within {timeout} s: {getattr(pred, '__name__', pred)}")
            time.sleep(interval)

    return _wait_for


@pytest.fixture
def submodule() -> Any:
    """`submodule(ray, "util.placement_group")` -> that module, for carme or Ray alike.

    (`ray.util.placement_group` as an attribute is a function in Ray, so go
    through the import system.)
    """

    def _submodule(mod: ModuleType, path: str) -> ModuleType:
        return importlib.import_module(f"{mod.__name__}.{path}")

    return _submodule


def _needs_ray_head(item: pytest.Item) -> bool:
    if "ray_cluster" in getattr(item, "fixturenames", ()):
        return True
    # tests/test_notebooks.py asks for the head at run time for `ray-*` notebooks
    return item.nodeid.startswith("tests/test_notebooks.py") and "[ray-" in item.nodeid


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the modules that use the session's Ray head (`ray_cluster`) last.

    The head starts on first use and lives to the end of the run; the differential
    suite's own local Ray clusters must not see it (two Ray instances on one machine make
    `ray.util.state` refuse to guess, and `address="auto"` find the wrong one). Whole
    modules move, in their order, so module-scoped fixtures are set up once.
    """
    late = {item.module.__name__ for item in items if _needs_ray_head(item)}  # type: ignore[attr-defined]
    if not late:
        return
    first = [i for i in items if i.module.__name__ not in late]  # type: ignore[attr-defined]
    last = [i for i in items if i.module.__name__ in late]  # type: ignore[attr-defined]
    items[:] = first + last
