"""`@carme.remote`: remote functions, actor classes and actor handles (Ray's API shape)."""

from __future__ import annotations

import hashlib
import inspect
import pickle
import time
import types
import weakref
from typing import Any

from ._context import STATE
from ._ids import return_id, task_id
from ._objects import ObjectRef, ObjectRefGenerator
from ._options import (
    actor_scheduling_shape,
    resource_shape,
    validate_actor_options,
    validate_method_options,
    validate_task_options,
)
from ._serialization import ATOMS, NO_ARGS_DATA, dumps, dumps_function, inline_payload
from ._submit import StreamState, TaskSpec


class ActorClassInheritanceException(TypeError):
    """A class tried to inherit from an actor class (Ray's name for the error)."""


class _ArgCheck:
    """Wrong arguments fail at .remote(), where the mistake is, as in Ray.

    The common call (positional arguments only, within the function's plain positional
    parameters) is accepted by a length check; anything else goes through
    `inspect.Signature.bind`, whose TypeError names the problem."""

    __slots__ = ("sig", "lo", "hi")

    def __init__(self, target: Any) -> None:
        try:
            self.sig: inspect.Signature | None = inspect.signature(target)
        except (TypeError, ValueError):  # builtins and the like: the worker will tell
            self.sig = None
        self.lo, self.hi = 0, -1  # no fast path
        if self.sig is None:
            return
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        params = list(self.sig.parameters.values())
        if all(p.kind in positional for p in params):
            self.lo = sum(1 for p in params if p.default is inspect.Parameter.empty)
            self.hi = len(params)

    def __call__(self, args: tuple, kwargs: dict, what: str) -> None:
        if not kwargs and self.lo <= len(args) <= self.hi:
            return
        if self.sig is None:
            return
        try:
            self.sig.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{what}: {e} (called with {len(args)} positional and "
                            f"{len(kwargs)} keyword arguments; its signature is {self.sig})") from None


def _core() -> Any:
    core = STATE.core
    if core is not None:  # (the per-call path: no import statement here)
        return core
    from ._api import auto_init
    return auto_init()


_NO_ARGS = inline_payload(NO_ARGS_DATA, ())  # (a tuple of immutables: shared by calls)


def serialize_args(core: Any, args: tuple, kwargs: dict, what: str) -> tuple[tuple, Any, Any, Any]:
    """(payload of (args, kwargs) with top-level refs blanked, their positions, the refs, the
    nested refs to keep alive)."""
    if not kwargs:
        if not args:
            return _NO_ARGS, (), (), ()
        if all(type(v) in ATOMS for v in args):  # no refs, nothing out of band
            return inline_payload(pickle.dumps((args, kwargs), 5), ()), (), (), ()
    ref_pos: list | tuple = ()  # empty ones stay shared (many calls may be queued at once)
    arg_refs: list | tuple = ()
    a: tuple | list = args
    kw = kwargs
    if any(isinstance(v, ObjectRef) for v in args) or any(
            isinstance(v, ObjectRef) for v in kwargs.values()):
        ref_pos, arg_refs, a, kw = [], [], list(args), dict(kwargs)
        for i, v in enumerate(a):
            if isinstance(v, ObjectRef):
                ref_pos.append((False, i))
                arg_refs.append(v)
                a[i] = None
        for k, v in kw.items():
            if isinstance(v, ObjectRef):
                ref_pos.append((True, k))
                arg_refs.append(v)
                kw[k] = None
    try:
        data, bufs, contained = dumps((a, kw))
    except Exception as e:  # noqa: BLE001 - reported with the argument that failed
        raise TypeError(_unpicklable(list(a), kw, what, e)) from e
    if not contained:
        return inline_payload(data, bufs), ref_pos, arg_refs, ()
    core.export(contained)
    return inline_payload(data, bufs), ref_pos, arg_refs, contained


def _unpicklable(a: list, kw: dict, what: str, err: Exception) -> str:
    for label, value in [*((f"argument {i}", v) for i, v in enumerate(a)),
                         *((f"keyword argument {k!r}", v) for k, v in kw.items())]:
        try:
            dumps(value)
        except Exception as e:  # noqa: BLE001
            return (f"Could not serialize {label} of {what}: {type(value).__name__} object "
                    f"cannot be pickled ({type(e).__name__}: {e}). Pass something picklable, "
                    f"or create the object inside the task instead.")
    return f"Could not serialize the arguments of {what}: {type(err).__name__}: {err}"


def _strategy(core: Any, opts: dict) -> Any:
    from .util.scheduling_strategies import to_scheduler_strategy
    return to_scheduler_strategy(
        opts.get("scheduling_strategy"),
        placement_group=opts.get("placement_group", "default"),
        placement_group_bundle_index=opts.get("placement_group_bundle_index", -1),
        current_placement_group_id=core.task_attr("pg_id"),
        capture_child_tasks=bool(core.task_attr("pg_capture")),
        label_selector=opts.get("label_selector"),
    )


def _pg_capture(core: Any, opts: dict, strategy: Any) -> bool:
    """Whether the task's own children go into its placement group (Ray's
    placement_group_capture_child_tasks; a captured child captures its children too)."""
    from ._scheduler import BundleStrategy
    from .util.scheduling_strategies import PlacementGroupSchedulingStrategy
    if not isinstance(strategy, BundleStrategy):
        return False
    s = opts.get("scheduling_strategy")
    if isinstance(s, PlacementGroupSchedulingStrategy):
        flag = s.placement_group_capture_child_tasks
    elif opts.get("placement_group") not in (None, "default"):
        flag = opts.get("placement_group_capture_child_tasks")
    else:
        flag = None  # inherited from the caller's group: its capture carries on
    if flag is None:
        return bool(core.task_attr("pg_capture"))
    return bool(flag)


def _merge_env(core: Any, env: dict | None) -> dict | None:
    job_env = getattr(core, "job_runtime_env", None)
    if not job_env:
        return env or None
    if not env:
        return job_env
    merged = {**job_env, **env}
    if job_env.get("env_vars") and env.get("env_vars"):
        merged["env_vars"] = {**job_env["env_vars"], **env["env_vars"]}
    return merged


def _tag(core: Any) -> Any:
    provider = core.tag_provider
    if provider is None:
        return None
    try:
        return provider()
    except Exception:  # noqa: BLE001 - a broken provider must not break submission
        return None


def _parent(core: Any) -> str | None:
    t = core.current_task.task_id
    return t.hex() if t else None


class _Plan:
    """What a task's options make of every call with them, in one calling context."""

    __slots__ = ("context", "num_returns", "retries", "retry_exceptions", "max_calls", "shape",
                 "strategy", "pg_capture", "runtime_env", "queue_key")
    context: tuple
    num_returns: Any
    retries: int
    retry_exceptions: Any
    max_calls: int
    shape: dict
    strategy: Any
    pg_capture: bool
    runtime_env: dict | None
    queue_key: tuple


class _PlanCache:
    """The last plan of one remote function (or one `.options()` of it): the options are
    fixed, so shape, strategy, runtime env and queue key only change with the calling
    context (the cluster connection, the job's runtime env, the caller's placement group).
    """

    __slots__ = ("plan",)

    def __init__(self) -> None:
        self.plan: _Plan | None = None

    def __reduce__(self) -> tuple:
        return (_PlanCache, ())  # a plan belongs to this process's connection: never copied

    def get(self, core: Any, opts: dict, is_generator: bool) -> _Plan:
        context = (core, core.job_runtime_env, core.task_attr("pg_id"), core.task_attr("pg_capture"))
        plan = self.plan
        if plan is not None and plan.context[0] is core and plan.context[1:] == context[1:]:
            return plan
        plan = _Plan()
        plan.context = context
        # a generator function streams its values unless num_returns says otherwise (Ray 2.x)
        plan.num_returns = opts.get("num_returns", "streaming" if is_generator else 1)
        retries = opts.get("max_retries", 3)
        plan.retries = -1 if retries == -1 else retries
        plan.retry_exceptions = opts.get("retry_exceptions", False)
        plan.max_calls = opts.get("max_calls") or 0
        plan.shape = resource_shape(opts, is_actor=False)
        plan.strategy = _strategy(core, opts)
        plan.pg_capture = _pg_capture(core, opts, plan.strategy)
        plan.runtime_env = _merge_env(core, opts.get("runtime_env"))
        # retriable tasks (max_retries != 0) get leases of their own, so the node's memory
        # monitor knows which workers it may kill first (`_node_memory.py`)
        plan.queue_key = (tuple(sorted(plan.shape.items())), repr(plan.strategy),
                          repr(plan.runtime_env) if plan.runtime_env else "", plan.retries != 0)
        self.plan = plan
        return plan


def _submit_with_returns(core: Any, spec: TaskSpec, submit: Any) -> Any:
    """Make the task's return refs (or its ref generator), hand the task over, return them."""
    if spec.streaming:
        spec.return_ids = ()
        spec.stream = StreamState(core, spec.task_id)
        submit(spec)
        return ObjectRefGenerator(spec.task_id, spec.stream)
    # a tuple of bytes: the cyclic collector stops tracking it (many may be queued)
    spec.return_ids = tuple([return_id(spec.task_id, i + 1) for i in range(spec.num_returns)])
    refs = []
    for oid in spec.return_ids:
        core.new_owned(oid, spec.name)
        refs.append(ObjectRef(oid, core.worker_id))
    submit(spec)
    if spec.num_returns == 1:
        return refs[0]
    if spec.num_returns == 0:
        return None
    return refs


def _set_returns(spec: TaskSpec, num_returns: Any) -> None:
    """"streaming": an ObjectRefGenerator; "dynamic": one ref whose value is a
    DynamicObjectRefGenerator of the yielded values' refs; else that many refs."""
    spec.streaming = num_returns == "streaming"
    spec.dynamic = num_returns == "dynamic"
    spec.num_returns = 0 if spec.streaming else 1 if spec.dynamic else num_returns


class RemoteFunction:
    def __init__(self, fn: Any, options: dict) -> None:
        if inspect.isclass(fn):
            raise TypeError("RemoteFunction got a class; use @carme.remote on it for an actor class")
        self._function = fn
        self._name = getattr(fn, "__name__", "function")
        self._where = f"@carme.remote function {self._name!r}"
        self._options = validate_task_options(options, where=self._where)
        self._key: bytes | None = None
        self._blob: bytes | None = None
        self._captured: list = []
        self.__name__ = getattr(fn, "__name__", "function")
        self.__qualname__ = self._name
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self._is_generator = inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)
        self._check_args = _ArgCheck(fn)
        self._plan = _PlanCache()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Remote functions cannot be called directly. Instead of running "
            f"'{self.__name__}()', try '{self.__name__}.remote()'.")

    def options(self, **options: Any) -> _Bound:
        return _Bound(self, {**self._options, **validate_task_options(options, where=self._where)})

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._remote(args, kwargs, self._options, self._plan)

    def _remote(self, args: tuple, kwargs: dict, opts: dict, cache: _PlanCache | None = None) -> Any:
        self._check_args(args, kwargs, f"task {self._name!r}")
        core = _core()
        if self._key is None:
            try:
                blob, captured = dumps_function(self._function)
            except Exception as e:  # noqa: BLE001
                raise TypeError(f"Could not serialize the function {self._name!r}: {type(e).__name__}: {e}. "
                                "Does it capture something unpicklable (a lock, a socket, a client) from "
                                "its enclosing scope? Create that inside the function instead.") from e
            # refs captured in its closure or globals: known to the node, and pinned
            # while this function lives (as in Ray: for the job, in practice)
            _pin_captured(core, captured)
            self._captured = captured
            self._blob = blob
            self._key = hashlib.sha1(blob).digest()
        plan = (cache or _PlanCache()).get(core, opts, self._is_generator)
        spec = TaskSpec()
        spec.task_id = task_id()
        spec.name = opts.get("name") or self._name
        spec.fn_key = self._key
        spec.fn_blob = self._blob
        spec.args, spec.ref_pos, spec.arg_refs, spec.keep = serialize_args(
            core, args, kwargs, f"task {spec.name!r}")
        _set_returns(spec, plan.num_returns)
        spec.retries_left = plan.retries
        spec.retry_exceptions = plan.retry_exceptions
        spec.max_calls = plan.max_calls
        spec.shape = plan.shape
        spec.strategy = plan.strategy
        spec.pg_capture = plan.pg_capture
        spec.runtime_env = plan.runtime_env
        spec.queue_key = plan.queue_key
        spec.tag = _tag(core)
        spec.parent = _parent(core)
        return _submit_with_returns(core, spec, core.submitter.submit)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("carme does not support Ray DAGs (.bind) yet; use .remote()")


class _Bound:
    """A remote function or actor class with options applied by `.options()`."""

    def __init__(self, target: Any, options: dict) -> None:
        self._target = target
        self._opts = options
        self._plan = _PlanCache()

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        if isinstance(self._target, RemoteFunction):
            return self._target._remote(args, kwargs, self._opts, self._plan)
        return self._target._remote(args, kwargs, self._opts)

    def options(self, **options: Any) -> _Bound:
        validate = validate_actor_options if isinstance(self._target, ActorClass) else validate_task_options
        return _Bound(self._target, {**self._opts, **validate(options, where=self._target._where)})


def method(*args: Any, **kwargs: Any) -> Any:
    """`@carme.method(num_returns=2, ...)` on an actor method (Ray's ray.method)."""
    if args and callable(args[0]) and not kwargs:
        return args[0]
    opts = validate_method_options(kwargs, where="@carme.method")

    def deco(fn: Any) -> Any:
        fn.__carme_method_options__ = opts
        return fn
    return deco


class ActorClass:
    # ActorClass[MyActor] in type hints, as in Ray
    __class_getitem__: Any = classmethod(types.GenericAlias)

    def __init__(self, cls: type, options: dict) -> None:
        self._cls = cls
        self._name = cls.__name__
        self._where = f"@carme.remote class {self._name!r}"
        self._options = validate_actor_options(options, where=self._where)
        self._blob: bytes | None = None
        self._captured: list = []
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__doc__ = cls.__doc__
        methods = {}
        is_async = False
        for name, fn in inspect.getmembers(cls, predicate=lambda m: inspect.isfunction(m) or inspect.ismethod(m)):
            if name.startswith("__") and name != "__call__":
                continue
            if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
                is_async = True
            methods[name] = dict(getattr(fn, "__carme_method_options__", {}))
            if (inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)) and "num_returns" not in methods[name]:
                methods[name]["num_returns"] = "streaming"
        self._methods = methods
        self._is_async = is_async
        self._check_args = _ArgCheck(cls)

    def __getattr__(self, name: str) -> Any:
        # class attributes (inherited ones too) through the class name, as in Ray
        cls = self.__dict__.get("_cls")
        if cls is None or name.startswith("_"):
            raise AttributeError(name)
        return getattr(cls, name)

    def __mro_entries__(self, bases: tuple) -> tuple:
        raise ActorClassInheritanceException(
            f"Attempted to define a subclass of actor class '{self._name}'. Inheriting from "
            "actor classes is not currently supported. You can instead inherit from a "
            "non-actor base class and make the derived class an actor class (with "
            "@carme.remote).")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Actors cannot be instantiated directly. Instead of '{self._name}()', use "
            f"'{self._name}.remote()'.")

    def options(self, **options: Any) -> _Bound:
        return _Bound(self, {**self._options, **validate_actor_options(options, where=self._where)})

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        return self._remote(args, kwargs, self._options)

    def _remote(self, args: tuple, kwargs: dict, opts: dict) -> ActorHandle:
        from . import _messages as M
        from ._rpc import error_from_reply
        self._check_args(args, kwargs, f"actor {self._name} constructor")
        core = _core()
        if self._blob is None:
            try:
                blob, captured = dumps_function(self._cls)
            except Exception as e:  # noqa: BLE001
                raise TypeError(f"Could not serialize the actor class {self._name!r}: {type(e).__name__}: {e}") from e
            _pin_captured(core, captured)
            self._captured = captured
            self._blob = blob
        name = opts.get("name")
        namespace = opts.get("namespace") or core.namespace
        if name and opts.get("get_if_exists"):
            existing = _live_named(core, name, namespace)
            if existing is not None:
                return existing
        payload, ref_pos, arg_refs, keep = serialize_args(core, args, kwargs, f"actor {self._name}")
        # the constructor's ObjectRef arguments are resolved here, before creation
        if arg_refs:
            _wait_refs(core, arg_refs)
        resolved = [(r._id, core.payload_of(r._id)) for r in arg_refs]
        running = resource_shape(opts, is_actor=True)
        strategy = _strategy(core, opts)
        conc = opts.get("max_concurrency")
        if conc is None:
            conc = 1000 if self._is_async else 1
        actor_id = task_id()[:16]
        spec = {
            "class_name": self._name, "class_blob": self._blob, "args": payload,
            "ref_pos": ref_pos, "resolved": resolved, "name": name, "namespace": namespace,
            "get_if_exists": opts.get("get_if_exists", False), "lifetime": opts.get("lifetime"),
            "max_restarts": opts.get("max_restarts", 0),
            "max_task_retries": opts.get("max_task_retries", 0),
            "max_concurrency": conc, "is_async": self._is_async, "methods": self._methods,
            "placement_shape": actor_scheduling_shape(opts), "running_shape": running,
            "hold_resources": bool(running), "strategy": strategy,
            "pg_capture": _pg_capture(core, opts, strategy),
            "runtime_env": _merge_env(core, opts.get("runtime_env")), "tag": _tag(core),
        }
        try:
            out = core.request(M.CREATE_ACTOR, actor_id, spec, conn=core.control())
        except ValueError:
            raise
        except Exception as e:
            raise error_from_reply(e) from e
        core.record(actor_id, "SUBMITTED", name=f"{self._name}.__init__", func_name=f"{self._name}.__init__",
                    type="ACTOR_CREATION_TASK", job_id=core.job_id, tag=spec["tag"],
                    actor_id=actor_id.hex())
        if out.get("existing"):
            return _handle_from_spec(out["actor_id"], out["spec"])
        handle = ActorHandle(actor_id, self._name, self._methods, self._is_async,
                             spec["max_task_retries"], self._is_async or conc > 1)
        if not name and opts.get("lifetime") != "detached":
            _collect_with_handle(core, handle)
        return handle

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("carme does not support Ray DAGs (.bind) yet; use .remote()")


def _pin_captured(core: Any, captured: list) -> None:
    """ObjectRefs a function or class captures travel inside its pickled definition:
    export them so the workers that load it can borrow them."""
    if captured:
        core.export(captured)


def _wait_refs(core: Any, refs: list) -> None:
    try:
        core.get(refs, None)
    except Exception:  # noqa: BLE001 - an error value is passed to the constructor's caller later
        pass


class ActorMethod:
    def __init__(self, handle: ActorHandle, name: str, options: dict) -> None:
        self._handle = handle
        self._name = name
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._handle._call(self._name, args, kwargs, self._options)

    def options(self, **options: Any) -> ActorMethod:
        opts = validate_method_options(options, where=f"actor method {self._handle._class_name}.{self._name}")
        return ActorMethod(self._handle, self._name, {**self._options, **opts})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Actor methods cannot be called directly. Instead of running "
            f"'object.{self._name}()', try 'object.{self._name}.remote()'.")

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("carme does not support Ray DAGs (.bind) yet; use .remote()")


class ActorHandle:
    # ActorHandle[MyActor] in type hints, as in Ray
    __class_getitem__: Any = classmethod(types.GenericAlias)

    def __init__(self, actor_id: bytes, class_name: str, methods: dict, is_async: bool,
                 max_task_retries: int = 0, concurrent: bool = False) -> None:
        self._actor_id = actor_id
        self._class_name = class_name
        self._methods = methods
        self._is_async = is_async
        self._max_task_retries = max_task_retries
        self._concurrent = concurrent  # async or threaded: calls need not wait for earlier ones
        self._seq = 0
        self._scope: _HandleScope | None = None

    def __getattr__(self, name: str) -> ActorMethod:
        methods = self.__dict__.get("_methods")
        if methods is None or (name.startswith("__") and name != "__ray_terminate__"):
            raise AttributeError(name)
        if name not in methods and name not in ("__ray_terminate__",):
            raise AttributeError(f"'ActorHandle' object (actor {self._class_name}) has no attribute {name!r}")
        return ActorMethod(self, name, methods.get(name) or {})

    def __repr__(self) -> str:
        return f"Actor({self._class_name}, {self._actor_id.hex()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def __reduce__(self) -> tuple:
        if self._scope is not None:
            self._scope.escaped = True  # a copy lives elsewhere now: the owner keeps the actor
        return (ActorHandle, (self._actor_id, self._class_name, self._methods, self._is_async,
                              self._max_task_retries, self._concurrent))

    @property
    def _ray_actor_id(self) -> Any:
        return _ActorID(self._actor_id)

    def _call(self, method_name: str, args: tuple, kwargs: dict, opts: dict, core: Any = None) -> Any:
        if core is None:
            core = _core()
        spec = TaskSpec()
        tid = task_id()
        spec.task_id = tid
        spec.actor_id = self._actor_id
        spec.method = method_name
        spec.name = opts.get("name") or f"{self._class_name}.{method_name}"
        spec.args, spec.ref_pos, spec.arg_refs, spec.keep = serialize_args(
            core, args, kwargs, f"actor method {spec.name!r}")
        _set_returns(spec, opts.get("num_returns", 1))
        spec.retry_exceptions = opts.get("retry_exceptions", False)
        spec.max_task_retries = opts.get("max_task_retries")
        spec.tag = _tag(core)
        spec.parent = _parent(core)
        self._seq += 1
        spec.seq = self._seq
        return _submit_with_returns(core, spec, lambda s: core.actor_submitter.submit(
            s, self._class_name, self._max_task_retries, ordered=not self._concurrent))


class _ActorID:
    def __init__(self, b: bytes) -> None:
        self._b = b

    def hex(self) -> str:
        return self._b.hex()

    def binary(self) -> bytes:
        return self._b


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    from . import _messages as M
    if not isinstance(name, str) or not name:
        raise ValueError(f"get_actor() needs a non-empty actor name, not {name!r}")
    core = _core()
    info = core.request(M.ACTOR_INFO, None, name, namespace or core.namespace, False,
                        conn=core.control())
    return _handle_from_spec(info["actor_id"], info["spec"])


def _live_named(core: Any, name: str, namespace: str) -> ActorHandle | None:
    """`get_if_exists`: the live actor of that name, or None. When this process saw the
    connection to that actor's worker drop, its node may not have noticed yet and still
    lists it: wait (up to 10 s) until the node frees the name (the actor is dead) or
    lists another worker (it restarted), so the caller does not get a dead actor back."""
    from . import _messages as M
    deadline = time.monotonic() + 10
    while True:
        try:
            info = core.request(M.ACTOR_INFO, None, name, namespace, False, conn=core.control())
        except ValueError:
            return None
        st = core.actor_submitter.actors.get(info["actor_id"])
        lost = getattr(st, "lost_pid", None)
        if lost is None or info.get("pid") != lost or time.monotonic() > deadline:
            return _handle_from_spec(info["actor_id"], info["spec"])
        time.sleep(0.02)


def _handle_from_spec(actor_id: bytes, s: dict) -> ActorHandle:
    return ActorHandle(actor_id, s["class_name"], s["methods"], s["is_async"],
                       s.get("max_task_retries") or 0,
                       bool(s["is_async"]) or (s.get("max_concurrency") or 1) > 1)


class _HandleScope:
    """The creator's handle of an unnamed, non-detached actor: when it is collected and
    no copy of it ever left this process, the actor ends once its pending calls are done
    (Ray's out-of-scope termination; a handle that was passed on keeps it for the owner's
    lifetime)."""

    __slots__ = ("escaped",)

    def __init__(self) -> None:
        self.escaped = False


def _collect_with_handle(core: Any, handle: ActorHandle) -> None:
    scope = handle._scope = _HandleScope()
    ident = (handle._actor_id, handle._class_name, handle._methods, handle._is_async,
             handle._max_task_retries, handle._concurrent)

    def collected() -> None:
        if scope.escaped or not core.running:
            return
        # from the I/O thread, not from inside whatever the collector interrupted; through
        # this handle's own core (never auto_init: a shutdown may have begun meanwhile)
        core.call_later(0, lambda: core.running and ActorHandle(*ident)._call(
            "__ray_terminate__", (), {}, {}, core=core))

    weakref.finalize(handle, collected).atexit = False  # at exit the owner's end does it


def remote(*args: Any, **kwargs: Any) -> Any:
    """`@carme.remote` or `@carme.remote(num_cpus=..., ...)` on a function or a class."""
    def make(target: Any, options: dict) -> Any:
        if inspect.isclass(target):
            return ActorClass(target, options)
        if callable(target):
            return RemoteFunction(target, options)
        raise TypeError(f"@carme.remote expects a function or a class, not {type(target).__name__}")

    if len(args) == 1 and not kwargs and callable(args[0]):
        return make(args[0], {})
    if args or not kwargs:
        raise TypeError(
            "The @carme.remote decorator must be applied either with no arguments and no "
            "parentheses, for example '@carme.remote', or it must be applied using only keyword "
            "arguments and parentheses, for example '@carme.remote(num_returns=2, resources={\"CustomResource\": 1})'.")
    # validate eagerly so a bad option fails at decoration
    return lambda target: make(target, kwargs)

