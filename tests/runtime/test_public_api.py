"""carme's public surface: exported names, Ray's core API names, a side-effect-free import."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap

import pytest

# Ray's core API (DESIGN.md, "Ray compatibility"): `import carme as ray` needs all of it.
RAY_CORE_API = [
    "ObjectRef",
    "ObjectRefGenerator",
    "available_resources",
    "cancel",
    "cluster_resources",
    "exceptions",
    "get",
    "get_actor",
    "get_gpu_ids",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "timeline",
    "wait",
]

UTIL_API = {
    "util.placement_group": [
        "PlacementGroup",
        "get_current_placement_group",
        "get_placement_group",
        "placement_group",
        "placement_group_table",
        "remove_placement_group",
    ],
    "util.scheduling_strategies": [
        "NodeAffinitySchedulingStrategy",
        "PlacementGroupSchedulingStrategy",
    ],
    "util.state": [
        "get_actor",
        "get_node",
        "get_placement_group",
        "get_task",
        "get_worker",
        "list_actors",
        "list_jobs",
        "list_nodes",
        "list_objects",
        "list_placement_groups",
        "list_tasks",
        "list_workers",
        "summarize_actors",
        "summarize_objects",
        "summarize_tasks",
    ],
}

EXCEPTIONS = [
    "ActorDiedError",
    "ActorUnavailableError",
    "GetTimeoutError",
    "ObjectLostError",
    "ObjectStoreFullError",
    "OutOfMemoryError",
    "OwnerDiedError",
    "RayActorError",
    "RayError",
    "RaySystemError",
    "RayTaskError",
    "RuntimeEnvSetupError",
    "TaskCancelledError",
    "WorkerCrashedError",
]


def test_all_is_sorted_and_complete():
    import carme

    exported = list(carme.__all__)
    assert exported == sorted(exported), "carme.__all__ must be sorted"
    assert len(exported) == len(set(exported)), "carme.__all__ has duplicates"
    missing = [n for n in RAY_CORE_API if n not in exported and n != "exceptions"]
    assert not missing, f"carme.__all__ lacks Ray core API names: {missing}"
    undefined = [n for n in exported if not hasattr(carme, n)]
    assert not undefined, f"carme.__all__ names things carme does not define: {undefined}"


@pytest.mark.parametrize("name", RAY_CORE_API)
def test_ray_core_name_exists(name):
    import carme

    assert hasattr(carme, name), f"carme.{name} is missing (Ray core API)"


@pytest.mark.parametrize("module", sorted(UTIL_API))
def test_util_modules(module):
    mod = importlib.import_module(f"carme.{module}")
    missing = [n for n in UTIL_API[module] if not hasattr(mod, n)]
    assert not missing, f"carme.{module} lacks {missing}"


def test_exception_names():
    import carme.exceptions as ex

    missing = [n for n in EXCEPTIONS if not isinstance(getattr(ex, n, None), type)]
    assert not missing, f"carme.exceptions lacks {missing}"
    assert ex.__all__ == sorted(ex.__all__)


def test_exception_names_match_ray():
    """Every public exception class Ray defines has a carme counterpart (Ray only when installed)."""
    ray_ex = pytest.importorskip("ray.exceptions")
    import carme.exceptions as ex

    ray_names = {
        n
        for n, c in vars(ray_ex).items()
        if isinstance(c, type) and issubclass(c, BaseException) and c.__module__ == ray_ex.__name__
    }
    # Ray-internal plumbing that user code never catches.
    ray_names -= {
        "AuthenticationError",
        "ObjectRefStreamEndOfStreamError",
        "OufOfBandObjectRefSerializationException",
        "RayCgraphCapacityExceeded",
        "RayDirectTransportError",
        "RpcError",
        "StreamingGeneratorReplayInconsistentError",
        "UserCodeException",
        "ActorHandleNotFoundError",
    }
    missing = sorted(n for n in ray_names if not hasattr(ex, n))
    assert not missing, f"carme.exceptions lacks Ray's {missing}"


def test_ray_api_list_is_ray_s():
    """The list above is Ray's own (checked only when Ray is installed)."""
    ray = pytest.importorskip("ray")
    assert [n for n in RAY_CORE_API if not hasattr(ray, n)] == []


_IMPORT_PROBE = textwrap.dedent(
    """
    import json, sys, threading
    import psutil
    before_threads = threading.active_count()
    before_children = len(psutil.Process().children(recursive=True))
    import carme, carme.exceptions, carme.util.placement_group
    import carme.util.scheduling_strategies, carme.util.state
    print(json.dumps({
        "threads": threading.active_count() - before_threads,
        "children": len(psutil.Process().children(recursive=True)) - before_children,
        "initialized": carme.is_initialized(),
        "notebook_modules": sorted(
            m for m in sys.modules
            if m.split(".")[0] in ("IPython", "ipykernel", "jupyter_client", "carme_kernel", "carme_lab")
        ),
    }))
    """
)


def test_import_has_no_side_effects():
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["threads"] == 0, "import carme started a thread"
    assert report["children"] == 0, "import carme started a process"
    assert report["initialized"] is False
    assert report["notebook_modules"] == [], "carme must not import notebook packages"
