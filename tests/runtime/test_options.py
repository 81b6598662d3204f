"""Option validation: Ray's names and defaults, and messages that say how to fix."""

from __future__ import annotations

import json
import os
import sys
import types

import pytest

from carme._options import (
    ACTOR_DEFAULTS,
    TASK_DEFAULTS,
    actor_scheduling_shape,
    resource_shape,
    validate_actor_options,
    validate_method_options,
    validate_task_options,
)
from carme.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    NodeLabelSchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

WHERE = "@carme.remote function 'f'"
AWHERE = "actor class 'A'"


def task(**opts: object) -> dict:
    return validate_task_options(opts, where=WHERE)


def actor(**opts: object) -> dict:
    return validate_actor_options(opts, where=AWHERE)


def test_ray_defaults() -> None:
    assert TASK_DEFAULTS["num_cpus"] == 1 and TASK_DEFAULTS["num_gpus"] == 0
    assert TASK_DEFAULTS["max_retries"] == 3 and TASK_DEFAULTS["retry_exceptions"] is False
    assert TASK_DEFAULTS["num_returns"] == 1 and TASK_DEFAULTS["max_calls"] == 0
    assert ACTOR_DEFAULTS["num_cpus"] is None and ACTOR_DEFAULTS["max_restarts"] == 0
    assert ACTOR_DEFAULTS["max_task_retries"] == 0 and ACTOR_DEFAULTS["max_pending_calls"] == -1
    assert ACTOR_DEFAULTS["max_concurrency"] is None and ACTOR_DEFAULTS["get_if_exists"] is False
    assert "num_returns" not in ACTOR_DEFAULTS and "max_restarts" not in TASK_DEFAULTS


def test_returns_new_dict_with_only_given_options() -> None:
    given = {"num_cpus": 2, "max_retries": 0}
    out = task(**given)
    assert out == given and out is not given
    assert task() == {}


def test_exact_message_format() -> None:
    with pytest.raises(ValueError) as info:
        task(num_cpus=-1)
    assert str(info.value) == (
        "Invalid option num_cpus=-1 for @carme.remote function 'f': expected a non-negative "
        "number. Fix: pass num_cpus=0 or more."
    )


def test_unknown_option_suggests_closest() -> None:
    with pytest.raises(ValueError, match=r"num_cpu=1 .* Did you mean num_cpus\?"):
        task(num_cpu=1)
    with pytest.raises(ValueError, match="Did you mean max_restarts"):
        actor(max_restart=1)
    # Actor-only options are not task options, and the reverse.
    with pytest.raises(ValueError, match="not an option of remote functions"):
        task(max_restarts=1)
    with pytest.raises(ValueError, match="not an option of actors"):
        actor(num_returns=2)
    with pytest.raises(ValueError, match="not an option of actors"):
        actor(max_retries=2)


@pytest.mark.parametrize(
    "opts, exc, text",
    [
        ({"num_cpus": "2"}, TypeError, "num_cpus='2'"),
        ({"num_cpus": True}, TypeError, "non-negative number"),
        ({"num_gpus": -0.5}, ValueError, "num_gpus=-0.5"),
        ({"num_gpus": 1.5}, ValueError, "whole number"),
        ({"num_gpus": 0.00001}, ValueError, "0.0001"),
        ({"memory": -1}, ValueError, "memory=-1"),
        ({"object_store_memory": "1GB"}, TypeError, "object_store_memory"),
        ({"resources": {"CPU": 1}}, ValueError, "use num_cpus"),
        ({"resources": {"GPU": 1}}, ValueError, "use num_gpus"),
        ({"resources": {"memory": 1}}, ValueError, "use memory"),
        ({"resources": {"TPU": -1}}, ValueError, "resources['TPU']=-1"),
        ({"resources": ["TPU"]}, TypeError, "dict of custom resource"),
        ({"num_returns": -1}, ValueError, "num_returns=-1"),
        ({"num_returns": "many"}, ValueError, "streaming"),
        ({"num_returns": 1.0}, TypeError, "integer"),
        ({"max_retries": -2}, ValueError, "max_retries=-2"),
        ({"max_calls": -1}, ValueError, "max_calls"),
        ({"retry_exceptions": [ValueError, "KeyError"]}, TypeError, "exception classes"),
        ({"retry_exceptions": "yes"}, TypeError, "retry_exceptions"),
        ({"scheduling_strategy": "FAST"}, ValueError, "SPREAD"),
        ({"scheduling_strategy": 3}, TypeError, "scheduling_strategy"),
        ({"placement_group": "mine"}, TypeError, "PlacementGroup"),
        ({"placement_group_bundle_index": -2}, ValueError, "bundle"),
        ({"name": 3}, TypeError, "name=3"),
        ({"label_selector": {"zone": 1}}, TypeError, "strings"),
        ({"enable_task_events": 1}, TypeError, "True or False"),
        ({"accelerator_type": 100}, TypeError, "accelerator_type"),
        ({"_metadata": [1]}, TypeError, "_metadata"),
    ],
)
def test_task_option_rules(opts: dict, exc: type, text: str) -> None:
    with pytest.raises(exc) as info:
        validate_task_options(opts, where=WHERE)
    msg = str(info.value)
    assert text in msg and WHERE in msg and "Fix:" in msg


@pytest.mark.parametrize(
    "opts, exc, text",
    [
        ({"max_restarts": -2}, ValueError, "max_restarts=-2"),
        ({"max_task_retries": "3"}, TypeError, "max_task_retries"),
        ({"max_concurrency": 0}, ValueError, "max_concurrency=0"),
        ({"max_pending_calls": 0}, ValueError, "max_pending_calls=0"),
        ({"max_pending_calls": -5}, ValueError, "max_pending_calls=-5"),
        ({"lifetime": "forever"}, ValueError, "detached"),
        ({"lifetime": 1}, TypeError, "lifetime"),
        ({"namespace": 1}, TypeError, "namespace"),
        ({"get_if_exists": "yes"}, TypeError, "get_if_exists"),
        ({"get_if_exists": True}, ValueError, "name="),
        ({"concurrency_groups": {"io": 0}}, ValueError, "concurrency_groups"),
        ({"concurrency_groups": ["io"]}, TypeError, "concurrency_groups"),
        ({"num_gpus": 2.5}, ValueError, "whole"),
    ],
)
def test_actor_option_rules(opts: dict, exc: type, text: str) -> None:
    with pytest.raises(exc) as info:
        validate_actor_options(opts, where=AWHERE)
    assert text in str(info.value) and AWHERE in str(info.value)


def test_valid_options_pass_and_normalize() -> None:
    out = task(
        num_cpus=0.5,
        num_gpus=2,
        memory=1.0e9,
        resources={"TPU": 1},
        num_returns="streaming",
        max_retries=-1,
        retry_exceptions=(ValueError,),
        scheduling_strategy="SPREAD",
        placement_group=None,
        label_selector={"zone": "a"},
    )
    assert out["memory"] == 1_000_000_000 and isinstance(out["memory"], int)
    assert out["retry_exceptions"] == [ValueError]
    assert task(num_returns="dynamic")["num_returns"] == "dynamic"
    assert task(scheduling_strategy=NodeAffinitySchedulingStrategy("n1", soft=True))
    assert task(scheduling_strategy=NodeLabelSchedulingStrategy({"zone": "a"}))
    assert task(scheduling_strategy=PlacementGroupSchedulingStrategy(None))
    a = actor(
        name="svc", get_if_exists=True, lifetime="detached", namespace="ns",
        max_concurrency=8, max_pending_calls=10, concurrency_groups={"io": 2}, max_restarts=-1,
    )
    assert a["lifetime"] == "detached" and a["concurrency_groups"] == {"io": 2}
    assert actor(num_cpus=None)["num_cpus"] is None


def test_numpy_scalars_are_numbers() -> None:
    np = pytest.importorskip("numpy")
    out = task(num_cpus=np.int64(2), num_gpus=np.float32(0.5), max_retries=np.int32(1))
    assert out == {"num_cpus": 2, "num_gpus": 0.5, "max_retries": 1}
    assert type(out["num_cpus"]) is int and type(out["max_retries"]) is int
    assert task(memory=1000.123456)["memory"] == 1000  # bytes: no 4-decimal rule


def test_placement_group_and_strategy_together_rejected() -> None:
    from carme.util.placement_group import PlacementGroup, PlacementGroupID

    pg = PlacementGroup(PlacementGroupID("ab"), [{"CPU": 1}])
    assert task(placement_group=pg)["placement_group"] is pg
    with pytest.raises(ValueError, match="both"):
        task(placement_group=pg, scheduling_strategy="SPREAD")


def test_method_options() -> None:
    where = "actor method 'A.f'"
    assert validate_method_options(
        {"num_returns": 2, "concurrency_group": "io", "max_task_retries": 1,
         "retry_exceptions": True, "name": "x"},
        where=where,
    )["num_returns"] == 2
    with pytest.raises(ValueError, match="Did you mean num_returns"):
        validate_method_options({"num_return": 2}, where=where)
    with pytest.raises(ValueError, match="not an option of actor methods"):
        validate_method_options({"num_cpus": 1}, where=where)


def test_runtime_env(tmp_path: object) -> None:
    d = str(tmp_path)
    env = {"env_vars": {"A": "1"}, "working_dir": d, "py_modules": [d, types, json]}
    assert task(runtime_env=env)["runtime_env"] == {
        "env_vars": {"A": "1"},
        "working_dir": d,
        "py_modules": [d, types.__file__, os.path.dirname(json.__file__)],
    }
    with pytest.raises(ValueError, match="built in"):
        task(runtime_env={"py_modules": [sys]})
    assert task(runtime_env=None)["runtime_env"] is None
    with pytest.raises(ValueError, match="pip is not supported by carme yet"):
        task(runtime_env={"pip": ["requests"]})
    with pytest.raises(ValueError, match="conda is not supported"):
        task(runtime_env={"conda": "env"})
    with pytest.raises(ValueError, match=r"runtime_env\['env_var'\].*Did you mean env_vars"):
        task(runtime_env={"env_var": {}})
    with pytest.raises(TypeError, match="strings to strings"):
        task(runtime_env={"env_vars": {"A": 1}})
    with pytest.raises(ValueError, match="existing local directory"):
        task(runtime_env={"working_dir": os.path.join(d, "missing")})
    with pytest.raises(ValueError, match="existing local paths"):
        task(runtime_env={"py_modules": ["s3://bucket/pkg.zip"]})
    with pytest.raises(TypeError, match="dict"):
        task(runtime_env=["env_vars"])


def test_resource_shape() -> None:
    assert resource_shape({}, is_actor=False) == {"CPU": 1.0}
    assert resource_shape({}, is_actor=True) == {}
    assert resource_shape({"num_cpus": 2}, is_actor=True) == {"CPU": 2.0}
    assert resource_shape({"num_cpus": 0, "num_gpus": 0.5}, is_actor=False) == {"GPU": 0.5}
    shape = resource_shape(
        {"memory": 1024, "resources": {"TPU": 2, "zero": 0}, "accelerator_type": "A100"},
        is_actor=False,
    )
    assert shape == {"CPU": 1.0, "memory": 1024.0, "TPU": 2.0, "accelerator_type:A100": 0.001}


def test_actor_scheduling_shape() -> None:
    assert actor_scheduling_shape({}) == {"CPU": 1.0}
    assert actor_scheduling_shape({"num_cpus": 0, "num_gpus": 1}) == {"GPU": 1.0}
    assert actor_scheduling_shape({"num_cpus": 2}) == {"CPU": 2.0}


def test_non_dict_options() -> None:
    with pytest.raises(TypeError, match="must be a dict"):
        validate_task_options([("num_cpus", 1)], where=WHERE)  # type: ignore[arg-type]
