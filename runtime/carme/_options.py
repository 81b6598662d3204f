"""Validation and defaults of task, actor and method options (Ray's names and rules).

Each option has one validator ``(value, ctx) -> normalized value`` in a table; the
three ``validate_*`` functions check that every given name is allowed for that kind,
run the validators, then check the few rules that involve two options. They return a
new dict with only the options that were given, so callers can merge decoration-time
and ``.options()``-time dicts with ``{**a, **b}``.

Errors are ``ValueError`` for bad values and unknown names, ``TypeError`` for wrong
types (as Ray), and read::

    Invalid option num_cpus=-1 for @carme.remote function 'f': expected a
    non-negative number. Fix: pass num_cpus=0 or more.
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
import types
from collections.abc import Callable
from typing import Any

__all__ = [
    "ACTOR_DEFAULTS",
    "METHOD_DEFAULTS",
    "actor_scheduling_shape",
    "TASK_DEFAULTS",
    "resource_shape",
    "validate_actor_options",
    "validate_method_options",
    "validate_runtime_env",
    "validate_task_options",
]

# Options shared by tasks and actors, with Ray's defaults.
_COMMON_DEFAULTS: dict[str, Any] = {
    "num_gpus": 0,
    "resources": None,
    "accelerator_type": None,
    "memory": None,
    "object_store_memory": None,
    "runtime_env": None,
    "scheduling_strategy": None,
    "name": None,
    "placement_group": "default",
    "placement_group_bundle_index": -1,
    "placement_group_capture_child_tasks": None,
    "label_selector": None,
    "enable_task_events": True,
    "_metadata": None,
}

TASK_DEFAULTS: dict[str, Any] = {
    **_COMMON_DEFAULTS,
    "num_cpus": 1,
    "num_returns": 1,
    "max_retries": 3,
    "retry_exceptions": False,
    "max_calls": 0,
}

ACTOR_DEFAULTS: dict[str, Any] = {
    **_COMMON_DEFAULTS,
    # None: 1 CPU to schedule the actor, 0 CPU held while it runs (Ray semantics).
    "num_cpus": None,
    "max_restarts": 0,
    "max_task_retries": 0,
    # None: 1 for a sync actor, 1000 for an async one; the caller decides.
    "max_concurrency": None,
    "max_pending_calls": -1,
    "lifetime": None,
    "namespace": None,
    "get_if_exists": False,
    "concurrency_groups": None,
}

METHOD_DEFAULTS: dict[str, Any] = {
    "num_returns": 1,
    "concurrency_group": None,
    "max_task_retries": None,
    "retry_exceptions": None,
    "name": None,
    "enable_task_events": True,
}

_RESERVED_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")
_RESERVED_HINT = {
    "CPU": "num_cpus",
    "GPU": "num_gpus",
    "memory": "memory",
    "object_store_memory": "object_store_memory",
}


class _Ctx:
    __slots__ = ("name", "value", "where")

    def __init__(self, name: str, value: Any, where: str) -> None:
        self.name, self.value, self.where = name, value, where

    def fail(self, expected: str, fix: str, exc: type[Exception] = ValueError) -> Exception:
        return exc(
            f"Invalid option {self.name}={self.value!r} for {self.where}: expected {expected}. "
            f"Fix: {fix}."
        )


def _is_number(v: Any) -> bool:
    # numbers.Real also admits numpy scalars, which users pass around a lot.
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_precision(amount: float, ctx: _Ctx) -> None:
    if abs(amount * 10000 - round(amount * 10000)) > 1e-6:
        raise ctx.fail(
            "a multiple of 0.0001 (resource amounts have a precision of 0.0001)",
            f"round {ctx.name} to 4 decimal places",
        )


def _amount(
    ctx: _Ctx, *, allow_none: bool = True, whole_above_one: bool = False, precise: bool = True
) -> Any:
    v = ctx.value
    if v is None and allow_none:
        return None
    if not _is_number(v):
        raise ctx.fail("a non-negative number", f"pass {ctx.name}=0 or more", TypeError)
    v = int(v) if isinstance(v, numbers.Integral) else float(v)
    if math.isnan(v) or math.isinf(v) or v < 0:
        raise ctx.fail("a non-negative number", f"pass {ctx.name}=0 or more")
    if whole_above_one and v > 1 and v != int(v):
        raise ctx.fail(
            "a number <= 1 or a whole number (a fraction shares one GPU)",
            f"pass {ctx.name}={math.ceil(v)} or a fraction below 1",
        )
    if precise:
        _check_precision(v, ctx)
    return v


def _v_num_cpus(ctx: _Ctx) -> Any:
    return _amount(ctx)


def _v_num_gpus(ctx: _Ctx) -> Any:
    return _amount(ctx, whole_above_one=True)


def _v_bytes(ctx: _Ctx) -> Any:
    v = _amount(ctx, precise=False)
    return v if v is None else int(v)


def _v_resources(ctx: _Ctx) -> Any:
    v = ctx.value
    if v is None:
        return None
    if not isinstance(v, dict):
        raise ctx.fail(
            "a dict of custom resource names to amounts",
            f'pass {ctx.name}={{"my_resource": 1}}',
            TypeError,
        )
    out: dict[str, float] = {}
    for key, amount in v.items():
        if not isinstance(key, str) or not key:
            raise ctx.fail("resource names that are non-empty strings", "use string keys", TypeError)
        if key in _RESERVED_RESOURCES:
            hint = _RESERVED_HINT[key]
            raise ctx.fail(
                f"custom resources only; {key!r} has its own option",
                f"use {hint}=... instead of resources={{{key!r}: ...}}",
            )
        sub = _Ctx(f"resources[{key!r}]", amount, ctx.where)
        out[key] = _amount(sub, allow_none=False)
    return out


def _v_optional_str(ctx: _Ctx) -> Any:
    if ctx.value is not None and not isinstance(ctx.value, str):
        raise ctx.fail("a string or None", f"pass {ctx.name}='...'", TypeError)
    return ctx.value


def _v_name(ctx: _Ctx) -> Any:
    v = _v_optional_str(ctx)
    if v == "":
        raise ctx.fail("a non-empty name or None", f"pass a name or leave {ctx.name} out")
    return v


def _int(ctx: _Ctx, minimum: int, fix: str | None = None, allow_none: bool = False) -> Any:
    v = ctx.value
    if v is None and allow_none:
        return None
    if not isinstance(v, numbers.Integral) or isinstance(v, bool):
        raise ctx.fail(f"an integer >= {minimum}", fix or f"pass {ctx.name}={max(minimum, 0)}", TypeError)
    v = int(v)
    if v < minimum:
        raise ctx.fail(f"an integer >= {minimum}", fix or f"pass {ctx.name}={max(minimum, 0)} or more")
    return v


def _v_num_returns(ctx: _Ctx) -> Any:
    if ctx.value in ("streaming", "dynamic"):
        return ctx.value
    if isinstance(ctx.value, str):
        raise ctx.fail(
            'a non-negative integer, "streaming" or "dynamic"',
            'pass num_returns=1, num_returns=N or num_returns="streaming"',
        )
    return _int(ctx, 0, 'pass num_returns=0 or more, or num_returns="streaming"')


def _v_retries(ctx: _Ctx) -> Any:
    return _int(ctx, -1, f"pass {ctx.name}=-1 (retry forever), 0 (never) or more")


def _v_optional_retries(ctx: _Ctx) -> Any:
    return _int(ctx, -1, f"pass {ctx.name}=-1 (retry forever), 0 (never) or more", True)


def _v_retry_exceptions(ctx: _Ctx) -> Any:
    v = ctx.value
    if isinstance(v, bool) or v is None:
        return v
    fix = f"pass {ctx.name}=True, False, or a list like [ValueError, MyError]"
    if not isinstance(v, (list, tuple)):
        raise ctx.fail("a bool or a list of exception classes", fix, TypeError)
    for item in v:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise ctx.fail("a bool or a list of exception classes", fix, TypeError)
    return list(v)


def _v_max_calls(ctx: _Ctx) -> Any:
    return _int(ctx, 0, "pass max_calls=0 (no limit) or a positive number")


def _v_bool(ctx: _Ctx) -> Any:
    if not isinstance(ctx.value, bool):
        raise ctx.fail("True or False", f"pass {ctx.name}=True or {ctx.name}=False", TypeError)
    return ctx.value


def _v_optional_bool(ctx: _Ctx) -> Any:
    return None if ctx.value is None else _v_bool(ctx)


def _v_scheduling_strategy(ctx: _Ctx) -> Any:
    from carme.util import scheduling_strategies as ss

    v = ctx.value
    if v is None or v in ("DEFAULT", "SPREAD"):
        return v
    if isinstance(
        v,
        (
            ss.PlacementGroupSchedulingStrategy,
            ss.NodeAffinitySchedulingStrategy,
            ss.NodeLabelSchedulingStrategy,
        ),
    ):
        return v
    exc = ValueError if isinstance(v, str) else TypeError
    raise ctx.fail(
        '"DEFAULT", "SPREAD", None, or a strategy object from carme.util.scheduling_strategies',
        "pass scheduling_strategy=\"SPREAD\" or e.g. NodeAffinitySchedulingStrategy(node_id, soft=False)",
        exc,
    )


def _v_placement_group(ctx: _Ctx) -> Any:
    from carme.util.placement_group import PlacementGroup

    v = ctx.value
    if v is None or v == "default" or isinstance(v, PlacementGroup):
        return v
    raise ctx.fail(
        'a PlacementGroup, "default" or None',
        "pass the object returned by carme.util.placement_group(...)",
        TypeError,
    )


def _v_bundle_index(ctx: _Ctx) -> Any:
    return _int(ctx, -1, "pass -1 (any bundle) or a bundle index starting at 0")


def _v_str_dict(ctx: _Ctx) -> Any:
    v = ctx.value
    if v is None:
        return None
    if not isinstance(v, dict) or not all(
        isinstance(k, str) and isinstance(x, str) for k, x in v.items()
    ):
        raise ctx.fail("a dict of strings to strings", f'pass {ctx.name}={{"key": "value"}}', TypeError)
    return dict(v)


def _v_metadata(ctx: _Ctx) -> Any:
    if ctx.value is not None and not isinstance(ctx.value, dict):
        raise ctx.fail("a dict or None", f"pass {ctx.name}={{...}}", TypeError)
    return ctx.value


def _v_runtime_env(ctx: _Ctx) -> Any:
    return validate_runtime_env(ctx.value, where=ctx.where)


def _v_max_concurrency(ctx: _Ctx) -> Any:
    return _int(ctx, 1, "pass max_concurrency=1 or more", allow_none=True)


def _v_max_pending_calls(ctx: _Ctx) -> Any:
    v = _int(ctx, -1, "pass max_pending_calls=-1 (no limit) or a positive number")
    if v == 0:
        raise ctx.fail("-1 (no limit) or a positive number", "pass max_pending_calls=-1 or 1 or more")
    return v


def _v_lifetime(ctx: _Ctx) -> Any:
    if ctx.value in (None, "detached", "non_detached"):
        return ctx.value
    raise ctx.fail(
        'None, "detached" or "non_detached"',
        'pass lifetime="detached" for an actor that outlives its driver',
        ValueError if isinstance(ctx.value, str) else TypeError,
    )


def _v_concurrency_groups(ctx: _Ctx) -> Any:
    v = ctx.value
    if v is None:
        return None
    fix = 'pass concurrency_groups={"io": 2, "compute": 4}'
    if not isinstance(v, dict):
        raise ctx.fail("a dict of group names to max concurrency", fix, TypeError)
    for key, n in v.items():
        if not isinstance(key, str) or not isinstance(n, int) or isinstance(n, bool):
            raise ctx.fail("a dict of group names to max concurrency", fix, TypeError)
        if n < 1:
            raise ctx.fail("a max concurrency of 1 or more for every group", fix)
    return dict(v)


_COMMON: dict[str, Callable[[_Ctx], Any]] = {
    "num_cpus": _v_num_cpus,
    "num_gpus": _v_num_gpus,
    "resources": _v_resources,
    "accelerator_type": _v_optional_str,
    "memory": _v_bytes,
    "object_store_memory": _v_bytes,
    "runtime_env": _v_runtime_env,
    "scheduling_strategy": _v_scheduling_strategy,
    "name": _v_name,
    "placement_group": _v_placement_group,
    "placement_group_bundle_index": _v_bundle_index,
    "placement_group_capture_child_tasks": _v_optional_bool,
    "label_selector": _v_str_dict,
    "enable_task_events": _v_bool,
    "_metadata": _v_metadata,
}

_TASK: dict[str, Callable[[_Ctx], Any]] = {
    **_COMMON,
    "num_returns": _v_num_returns,
    "max_retries": _v_retries,
    "retry_exceptions": _v_retry_exceptions,
    "max_calls": _v_max_calls,
}

_ACTOR: dict[str, Callable[[_Ctx], Any]] = {
    **_COMMON,
    "max_restarts": _v_retries,
    "max_task_retries": _v_retries,
    "max_concurrency": _v_max_concurrency,
    "max_pending_calls": _v_max_pending_calls,
    "lifetime": _v_lifetime,
    "namespace": _v_name,
    "get_if_exists": _v_bool,
    "concurrency_groups": _v_concurrency_groups,
}

_METHOD: dict[str, Callable[[_Ctx], Any]] = {
    "num_returns": _v_num_returns,
    "concurrency_group": _v_name,
    "max_task_retries": _v_optional_retries,
    "retry_exceptions": _v_retry_exceptions,
    "name": _v_name,
    "enable_task_events": _v_bool,
}


def _validate(
    options: dict[str, Any], table: dict[str, Callable[[_Ctx], Any]], where: str, kind: str
) -> dict[str, Any]:
    if not isinstance(options, dict):
        raise TypeError(f"Options for {where} must be a dict of option names to values, not {type(options).__name__}.")
    out: dict[str, Any] = {}
    for name, value in options.items():
        check = table.get(name)
        if check is None:
            close = difflib.get_close_matches(str(name), table, n=1, cutoff=0.6)
            hint = f"Did you mean {close[0]}? " if close else ""
            raise ValueError(
                f"Invalid option {name}={value!r} for {where}: not an option of {kind}. "
                f"{hint}Valid options: {', '.join(sorted(table))}."
            )
        out[name] = check(_Ctx(name, value, where))
    return out


def _check_strategy_vs_pg(out: dict[str, Any], where: str) -> None:
    strategy = out.get("scheduling_strategy")
    pg = out.get("placement_group")
    if strategy not in (None, "DEFAULT") and pg not in (None, "default"):
        raise ValueError(
            f"Invalid options for {where}: placement_group and scheduling_strategy were both "
            "given. Fix: pass only scheduling_strategy=PlacementGroupSchedulingStrategy(pg)."
        )


def validate_task_options(options: dict[str, Any], *, where: str) -> dict[str, Any]:
    """Check the options of a remote function; return a new normalized dict."""
    out = _validate(options, _TASK, where, "remote functions")
    _check_strategy_vs_pg(out, where)
    return out


def validate_actor_options(options: dict[str, Any], *, where: str) -> dict[str, Any]:
    """Check the options of an actor class; return a new normalized dict."""
    out = _validate(options, _ACTOR, where, "actors")
    _check_strategy_vs_pg(out, where)
    if out.get("get_if_exists") and not out.get("name"):
        raise ValueError(
            f"Invalid option get_if_exists=True for {where}: expected a name to look up. "
            "Fix: pass name='...' together with get_if_exists=True."
        )
    return out


def validate_method_options(options: dict[str, Any], *, where: str) -> dict[str, Any]:
    """Check the options of an actor method (``@carme.method`` / ``.options()``)."""
    return _validate(options, _METHOD, where, "actor methods")


_ENV_KEYS = ("env_vars", "working_dir", "py_modules")
_UNSUPPORTED_ENV = ("pip", "conda", "uv", "container", "image_uri", "java_jars", "nsight")


def validate_runtime_env(env: Any, *, where: str) -> dict[str, Any] | None:
    """Check a ``runtime_env`` dict: ``env_vars``, ``working_dir`` and ``py_modules`` only.

    Module objects in ``py_modules`` become their local paths (a package's directory),
    so the result is plain data that pickles.
    """
    if env is None:
        return None

    def fail(expected: str, fix: str, value: Any, key: str, exc: type[Exception] = ValueError) -> Exception:
        return exc(
            f"Invalid option runtime_env[{key!r}]={value!r} for {where}: expected {expected}. "
            f"Fix: {fix}."
        )

    if not isinstance(env, dict):
        raise TypeError(
            f"Invalid option runtime_env={env!r} for {where}: expected a dict. "
            'Fix: pass runtime_env={"env_vars": {...}, "working_dir": "...", "py_modules": [...]}.'
        )
    out: dict[str, Any] = {}
    for key, value in env.items():
        if key in _UNSUPPORTED_ENV:
            raise ValueError(
                f"Invalid option runtime_env[{key!r}] for {where}: {key} is not supported by carme "
                f"yet. Fix: install the packages on every node beforehand; carme supports "
                f"{', '.join(_ENV_KEYS)}."
            )
        if key == "env_vars":
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(x, str) for k, x in value.items()
            ):
                raise fail("a dict of strings to strings", 'pass {"VAR": "value"}; convert numbers with str()', value, key, TypeError)
            out[key] = dict(value)
        elif key == "working_dir":
            if not isinstance(value, (str, os.PathLike)):
                raise fail("a path to a local directory", "pass a directory path string", value, key, TypeError)
            if not os.path.isdir(value):
                raise fail("an existing local directory", "create the directory or fix the path (remote URIs are not supported)", value, key)
            out[key] = os.fspath(value)
        elif key == "py_modules":
            if not isinstance(value, (list, tuple)):
                raise fail("a list of local paths or imported modules", "pass py_modules=[my_module] or ['path/to/pkg']", value, key, TypeError)
            mods: list[Any] = []
            for item in value:
                if isinstance(item, types.ModuleType):
                    mods.append(_module_path(item, fail, key))
                elif isinstance(item, (str, os.PathLike)) and os.path.exists(item):
                    mods.append(os.fspath(item))
                elif isinstance(item, (str, os.PathLike)):
                    raise fail("existing local paths", "fix the path (remote URIs are not supported)", item, key)
                else:
                    raise fail("local paths or imported modules", "pass the module object or its path", item, key, TypeError)
            out[key] = mods
        else:
            close = difflib.get_close_matches(str(key), _ENV_KEYS, n=1)
            hint = f"Did you mean {close[0]}? " if close else ""
            raise ValueError(
                f"Invalid option runtime_env[{key!r}] for {where}: unknown runtime_env field. "
                f"{hint}carme supports {', '.join(_ENV_KEYS)}."
            )
    return out


def _module_path(module: types.ModuleType, fail: Callable[..., Exception], key: str) -> str:
    """A module object as a local path: a package's directory, or a module's file."""
    paths = list(getattr(module, "__path__", None) or [])
    if paths and os.path.isdir(paths[0]):
        return str(paths[0])
    file = getattr(module, "__file__", None)
    if file and os.path.isfile(file):
        return str(file)
    raise fail(
        "modules that live in local files",
        f"{module.__name__} is built in or has no file; pass a path instead",
        module,
        key,
    )


def resource_shape(options: dict[str, Any], *, is_actor: bool) -> dict[str, float]:
    """The resources a task (or a running actor) holds, zeros dropped.

    An actor without ``num_cpus`` holds 0 CPU while it runs (it needs 1 CPU to be
    scheduled; the caller asks for that separately), as in Ray.
    """
    shape: dict[str, float] = {}
    cpus = options.get("num_cpus")
    if cpus is None:
        cpus = 0 if is_actor else 1
    shape["CPU"] = float(cpus)
    shape["GPU"] = float(options.get("num_gpus") or 0)
    shape["memory"] = float(options.get("memory") or 0)
    for key, amount in (options.get("resources") or {}).items():
        shape[key] = float(amount)
    accel = options.get("accelerator_type")
    if accel:
        shape[f"accelerator_type:{accel}"] = 0.001
    return {k: v for k, v in shape.items() if v > 0}


def actor_scheduling_shape(options: dict[str, Any]) -> dict[str, float]:
    """The resources needed to *place* an actor: 1 CPU when ``num_cpus`` was not given.

    Once the actor runs it holds :func:`resource_shape` (``is_actor=True``) instead.
    """
    shape = resource_shape(options, is_actor=True)
    if options.get("num_cpus") is None:
        shape["CPU"] = 1.0
    return shape
