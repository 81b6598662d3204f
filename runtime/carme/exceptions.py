"""carme's exceptions: Ray's names, Ray's semantics.

Every exception here can cross a process boundary: it pickles (with pickle and
cloudpickle) to the same class with the same attributes and message. The
convention that makes this work is simple: each ``__init__`` passes its own
constructor arguments to ``Exception.__init__`` so ``self.args`` rebuilds the
object, and ``__str__`` computes the message from the attributes.

A failed task is reported as :class:`RayTaskError`; ``get()`` raises
``err.as_instanceof_cause()``, an instance of a class derived from *both*
``RayTaskError`` and the user's exception class, so ``except ValueError`` works
and ``str()`` shows the remote traceback.

Hierarchy::

    Exception
    └── RayError
        ├── RayTaskError ─────────── (+ dynamic ``RayTaskError(Cause)`` classes)
        ├── TaskCancelledError
        ├── WorkerCrashedError
        ├── LocalRayletDiedError
        ├── RayActorError
        │   ├── ActorDiedError
        │   └── ActorUnavailableError
        ├── ActorUnschedulableError
        ├── TaskUnschedulableError
        ├── ObjectLostError
        │   ├── OwnerDiedError
        │   ├── ObjectFetchTimedOutError
        │   ├── ObjectFreedError
        │   ├── ReferenceCountingAssertionError   (also AssertionError)
        │   └── ObjectReconstructionFailedError
        │       ├── ObjectReconstructionFailedMaxAttemptsExceededError
        │       └── ObjectReconstructionFailedLineageEvictedError
        ├── GetTimeoutError                       (also TimeoutError)
        ├── PlasmaObjectNotAvailable
        ├── ObjectStoreFullError
        ├── OutOfDiskError
        ├── OutOfMemoryError
        ├── NodeDiedError
        ├── RaySystemError
        │   ├── RayCgraphCapacityExceeded
        │   └── RayChannelError
        │       └── RayChannelTimeoutError        (also TimeoutError)
        ├── RuntimeEnvSetupError
        ├── PendingCallsLimitExceeded
        ├── AsyncioActorExit
        ├── TaskPlacementGroupRemoved
        ├── ActorPlacementGroupRemoved
        ├── CrossLanguageError
        ├── AuthenticationError
        └── UnserializableException
"""

from __future__ import annotations

import os
import traceback
from typing import Any, cast

__all__ = [
    "ActorAlreadyExistsError",
    "ActorDiedError",
    "ActorPlacementGroupRemoved",
    "ActorUnavailableError",
    "ActorUnschedulableError",
    "AsyncioActorExit",
    "AuthenticationError",
    "CrossLanguageError",
    "GetTimeoutError",
    "LocalRayletDiedError",
    "NodeDiedError",
    "ObjectFetchTimedOutError",
    "ObjectFreedError",
    "ObjectLostError",
    "ObjectReconstructionFailedError",
    "ObjectReconstructionFailedLineageEvictedError",
    "ObjectReconstructionFailedMaxAttemptsExceededError",
    "ObjectStoreFullError",
    "OutOfDiskError",
    "OutOfMemoryError",
    "OwnerDiedError",
    "PendingCallsLimitExceeded",
    "PlasmaObjectNotAvailable",
    "RayActorError",
    "RayCgraphCapacityExceeded",
    "RayChannelError",
    "RayChannelTimeoutError",
    "RayError",
    "RaySystemError",
    "RayTaskError",
    "ReferenceCountingAssertionError",
    "RuntimeEnvSetupError",
    "TaskCancelledError",
    "TaskPlacementGroupRemoved",
    "TaskUnschedulableError",
    "UnserializableException",
    "WorkerCrashedError",
]


class RayError(Exception):
    """Base class of every carme exception (named as Ray's, for ``import carme as ray``)."""


class CrossLanguageError(RayError):
    """Raised from another language (kept for API parity; carme is Python only)."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)

    def __str__(self) -> str:
        return f"An exception raised from another language:\n{self.args[0]}"


class TaskCancelledError(RayError):
    """The task, or one it depends on, was cancelled with ``cancel()``."""

    def __init__(self, task_id: Any = None, error_message: str | None = None) -> None:
        super().__init__(task_id, error_message)
        self.task_id = task_id
        self.error_message = error_message

    def __str__(self) -> str:
        if self.error_message:
            return self.error_message
        if self.task_id is None:
            return "This task or its dependency was cancelled by carme.cancel()."
        return f"Task: {_hex(self.task_id)} was cancelled."


# Frames of carme's own machinery are hidden in remote tracebacks.
_INTERNAL_FRAME_MARKERS = ("/carme/_worker", "/carme/_executor", "/carme/_serialization")


class RayTaskError(RayError):
    """A task raised an exception while it ran.

    Attributes: ``function_name``, ``traceback_str`` (the remote traceback),
    ``cause`` (the user's exception), ``proctitle``, ``pid``, ``ip``, ``actor_repr``.
    """

    def __init__(
        self,
        function_name: str,
        traceback_str: str,
        cause: BaseException | None,
        proctitle: str | None = None,
        pid: int | None = None,
        ip: str | None = None,
        actor_repr: str | None = None,
    ) -> None:
        super().__init__(function_name, traceback_str, cause, proctitle, pid, ip, actor_repr)
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.proctitle = proctitle or f"carme::{function_name}()"
        self.pid = pid if pid is not None else os.getpid()
        self.ip = ip or "127.0.0.1"
        self.actor_repr = actor_repr

    @classmethod
    def from_exception(
        cls,
        exc: BaseException,
        function_name: str,
        pid: int | None = None,
        ip: str | None = None,
        actor_repr: str | None = None,
        proctitle: str | None = None,
    ) -> RayTaskError:
        """Wrap ``exc`` (being handled now, or just caught) with its formatted traceback.

        A cause that cannot be pickled is replaced by :class:`UnserializableException`
        (its text is kept) so the error can always travel back to the caller.
        """
        tb_str = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        cause: BaseException = exc
        try:
            import cloudpickle

            cloudpickle.loads(cloudpickle.dumps(exc))
        except Exception as pickle_error:
            cause = UnserializableException(
                f"{type(exc).__name__}: {exc}", f"{type(pickle_error).__name__}: {pickle_error}"
            )
        return cls(function_name, tb_str, cause, proctitle, pid, ip, actor_repr)

    def as_instanceof_cause(self) -> RayTaskError:
        """Return an exception that is an instance of both RayTaskError and the cause's class.

        Falls back to ``self`` when the cause is a carme error, is missing, or its class
        cannot be combined with RayTaskError (layout conflicts, final classes, ...).
        """
        cause_cls = type(self.cause)
        if self.cause is None or issubclass(RayTaskError, cause_cls):
            return self
        if issubclass(cause_cls, RayError):
            return self
        dual = _dual_class(cause_cls)
        if dual is None:
            return self
        try:
            inst = _new_dual(dual)
            _init_dual(inst, self)
        except Exception:
            return self
        return inst

    def __str__(self) -> str:
        head = f"{self.proctitle} (pid={self.pid}, ip={self.ip}"
        head += f", actor={self.actor_repr})" if self.actor_repr else ")"
        out: list[str] = []
        skip_code = False
        for line in self.traceback_str.rstrip().split("\n"):
            if line.startswith("Traceback "):
                out.append(head)
                skip_code = False
            elif line.startswith("  File ") and any(m in line for m in _INTERNAL_FRAME_MARKERS):
                skip_code = True
            elif skip_code and line.startswith("    "):
                skip_code = False
            else:
                skip_code = False
                out.append(line)
        if not out or out[0] != head:
            out.insert(0, head)
        return "\n".join(out)


_DUAL_CACHE: dict[type, type | None] = {}


def _dual_class(cause_cls: type) -> type | None:
    """The ``RayTaskError(Cause)`` class for ``cause_cls``; None if it cannot exist."""
    if cause_cls in _DUAL_CACHE:
        return _DUAL_CACHE[cause_cls]
    name = f"RayTaskError({cause_cls.__name__})"
    try:
        dual: type | None = type(
            name,
            (_DualBase, cause_cls),
            {"__module__": __name__, "__qualname__": name},
        )
    except Exception:  # layout conflict, final class, __init_subclass__ refusing, ...
        dual = None
    _DUAL_CACHE[cause_cls] = dual
    return dual


def _new_dual(dual: type) -> Any:
    """An empty instance of a dual class. A builtin cause with a `__new__` of its own
    (MemoryError) refuses to make an instance of a class whose first base is not its
    own; `BaseException.__new__` makes one with the same layout then."""
    try:
        return cast(Any, dual).__new__(dual)
    except TypeError:
        return BaseException.__new__(cast(Any, dual))


def _init_dual(inst: Any, err: RayTaskError) -> None:
    # Do not call the cause class's __init__: it may take other arguments or raise.
    BaseException.__init__(inst, err.cause)
    inst.__dict__.update(err.__dict__)
    inst._error_msg = str(err)


def _rebuild_dual(err: RayTaskError) -> RayTaskError:
    return err.as_instanceof_cause()


class _DualBase(RayTaskError):
    """Base of the dynamic ``RayTaskError(Cause)`` classes (see as_instanceof_cause)."""

    _error_msg: str

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found normally: look them up on the cause.
        if name.startswith("__") or name in ("cause", "_error_msg"):
            raise AttributeError(name)
        return getattr(self.__dict__.get("cause"), name)

    def __str__(self) -> str:
        return self._error_msg

    def __reduce__(self) -> Any:
        plain = RayTaskError(
            self.function_name,
            self.traceback_str,
            self.cause,
            self.proctitle,
            self.pid,
            self.ip,
            self.actor_repr,
        )
        return (_rebuild_dual, (plain,))


class LocalRayletDiedError(RayError):
    """The node daemon of the task's node died."""

    def __str__(self) -> str:
        return "The task's local node daemon died. Check the node's logs for more information."


class WorkerCrashedError(RayError):
    """The worker process died unexpectedly while running the task."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(*(() if message is None else (message,)))

    def __str__(self) -> str:
        base = (
            "The worker died unexpectedly while executing this task. "
            "Check the worker's output in the driver log for more information."
        )
        return f"{base}\n{self.args[0]}" if self.args else base


class RayActorError(RayError):
    """The actor died, or is dead, before finishing the task.

    ``cause`` is a :class:`RayTaskError` when the actor's ``__init__`` raised,
    a message string for a system failure, or None when unknown.
    """

    def __init__(
        self,
        cause: RayTaskError | str | None = None,
        actor_id: str | None = None,
        class_name: str | None = None,
    ) -> None:
        super().__init__(cause, actor_id, class_name)
        self.cause = cause
        self.actor_id = actor_id
        self.class_name = class_name
        self.base_error_msg = "The actor died unexpectedly before finishing this task."

    @property
    def actor_init_failed(self) -> bool:
        return isinstance(self.cause, RayTaskError)

    @property
    def error_msg(self) -> str:
        if isinstance(self.cause, RayTaskError):
            return f"The actor died because of an error raised in its creation task, {self.cause}"
        lines = [self.base_error_msg]
        if self.class_name:
            lines.append(f"\tclass_name: {self.class_name}")
        if self.actor_id:
            lines.append(f"\tactor_id: {_hex(self.actor_id)}")
        if self.cause:
            lines.append(str(self.cause))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.error_msg

    @staticmethod
    def from_task_error(task_error: RayTaskError) -> RayActorError:
        return ActorDiedError(task_error)


class ActorAlreadyExistsError(ValueError, RayError):
    """A named actor was created with a name (and namespace) that a live actor has."""


class ActorDiedError(RayActorError):
    """The actor is dead (its process exited, it was killed, or its __init__ raised)."""


class ActorUnavailableError(RayActorError):
    """The actor is temporarily unreachable (for example restarting); it may come back."""

    def __init__(
        self,
        error_message: str = "",
        actor_id: str | None = None,
        class_name: str | None = None,
    ) -> None:
        super().__init__(error_message, actor_id, class_name)

    @property
    def error_msg(self) -> str:
        who = f"The actor {_hex(self.actor_id)}" if self.actor_id else "The actor"
        return f"{who} is unavailable: {self.cause}. The task may or may not have run."


class RaySystemError(RayError):
    """carme hit an internal error (for example a node daemon was killed)."""

    def __init__(self, client_exc: Any, traceback_str: str | None = None) -> None:
        super().__init__(client_exc, traceback_str)
        self.client_exc = client_exc
        self.traceback_str = traceback_str

    def __str__(self) -> str:
        msg = f"System error: {self.client_exc}"
        if self.traceback_str:
            msg += f"\ntraceback: {self.traceback_str}"
        return msg


class RayChannelError(RaySystemError):
    """A channel (used by compiled graphs in Ray) failed; kept for API parity."""


class RayChannelTimeoutError(RayChannelError, TimeoutError):
    """A channel read or write timed out; kept for API parity."""


class RayCgraphCapacityExceeded(RaySystemError):
    """A compiled-graph channel buffer is full; kept for API parity."""


class AuthenticationError(RayError):
    """A peer did not present the cluster's token (or presented a wrong one)."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        base = self.message or "Authentication with the carme cluster failed."
        return (
            f"{base} Fix: connect with the token written by `carme start --head` "
            "(its file must be readable by you)."
        )


class _MessageError(RayError):
    """An error whose message is an optional string with a fixed suffix or default."""

    default = ""

    def __init__(self, message: str = "") -> None:
        super().__init__(*((message,) if message else ()))

    def __str__(self) -> str:
        msg = self.args[0] if self.args else ""
        if self.default and msg:
            return f"{msg}\n{self.default}"
        return msg or self.default


class ObjectStoreFullError(_MessageError):
    """The object store is full of objects still in use, even after spilling."""

    default = (
        "The local object store is full of objects that are still in scope and cannot "
        "be evicted. Tip: use carme.util.state.list_objects() to see what holds memory, "
        "and drop references you no longer need."
    )


class OutOfDiskError(_MessageError):
    """The node ran out of disk while spilling or storing objects."""

    default = "The local disk is full: objects cannot be spilled. Free disk space on the node."


class OutOfMemoryError(_MessageError):
    """The task's worker was killed because the node ran out of memory."""

    default = (
        "The worker was killed because the node ran low on memory. "
        "Reduce the task's memory use or set memory=... so fewer tasks run at once."
    )


class NodeDiedError(_MessageError):
    """The node running the task died."""

    default = "The node running this task died."


class GetTimeoutError(RayError, TimeoutError):
    """``get()`` or ``wait()`` ran past its timeout."""


class PlasmaObjectNotAvailable(RayError):
    """An object was not available within the given timeout."""


class AsyncioActorExit(RayError):
    """An asyncio actor exits on purpose (``exit_actor()``)."""


class PendingCallsLimitExceeded(RayError):
    """An actor handle has more pending calls than its ``max_pending_calls``."""


class ObjectLostError(RayError):
    """An object is gone from the cluster (node failure or system error).

    Attributes: ``object_ref_hex``, ``owner_address``, ``call_site``, and ``detail``:
    what the node knows about how the object went (empty: the class's generic text).
    """

    def __init__(self, object_ref_hex: str, owner_address: str = "", call_site: str = "",
                 detail: str = "") -> None:
        super().__init__(object_ref_hex, owner_address, call_site, detail)
        self.object_ref_hex = object_ref_hex
        self.owner_address = owner_address
        self.call_site = call_site
        self.detail = detail

    def _base_str(self) -> str:
        msg = f"Failed to retrieve object {self.object_ref_hex}. "
        if self.call_site:
            msg += f"The ObjectRef was created at: {self.call_site}"
        return msg

    _detail = (
        "All copies of {ref} have been lost due to node failure. Check the cluster's "
        "node logs for more information about the failure."
    )

    def __str__(self) -> str:
        detail = self.detail or self._detail.format(ref=self.object_ref_hex)
        return self._base_str().rstrip() + "\n\n" + detail


class ObjectFetchTimedOutError(ObjectLostError):
    _detail = (
        "Fetch for object {ref} timed out because no locations were found for the object."
    )


class ObjectFreedError(ObjectLostError):
    _detail = "The object was freed manually with carme.internal.free() and cannot be fetched."


class ReferenceCountingAssertionError(ObjectLostError, AssertionError):
    _detail = (
        "The object has already been deleted by the reference counting protocol. "
        "This should not happen."
    )


class OwnerDiedError(ObjectLostError):
    _detail = (
        "The object's owner has exited. This is the Python worker that first created the "
        "ObjectRef via `.remote()` or `put()`. Check the owner's logs for more information."
    )


class ObjectReconstructionFailedError(ObjectLostError):
    _detail = (
        "The object cannot be reconstructed because it was created by an actor, a put() "
        "call, or its ObjectRef was created by a different worker."
    )


class ObjectReconstructionFailedMaxAttemptsExceededError(ObjectReconstructionFailedError):
    _detail = (
        "The object cannot be reconstructed because the maximum number of task retries "
        "has been exceeded. To prevent this error, set "
        "`@carme.remote(max_retries=<num retries>)` (default 3)."
    )


class ObjectReconstructionFailedLineageEvictedError(ObjectReconstructionFailedError):
    _detail = (
        "The object cannot be reconstructed because its lineage has been evicted to "
        "reduce memory pressure."
    )


class RuntimeEnvSetupError(RayError):
    """The task's or actor's runtime_env could not be set up."""

    def __init__(self, error_message: str | None = None) -> None:
        super().__init__(error_message)
        self.error_message = error_message

    def __str__(self) -> str:
        msgs = ["Failed to set up runtime environment."]
        if self.error_message:
            msgs.append(self.error_message)
        return "\n".join(msgs)


class TaskPlacementGroupRemoved(RayError):
    def __str__(self) -> str:
        return "The placement group corresponding to this task has been removed."


class ActorPlacementGroupRemoved(RayError):
    def __str__(self) -> str:
        return "The placement group corresponding to this Actor has been removed."


class _UnschedulableError(RayError):
    kind = "task"

    def __init__(self, error_message: str) -> None:
        super().__init__(error_message)
        self.error_message = error_message

    def __str__(self) -> str:
        return f"The {self.kind} is not schedulable: {self.error_message}"


class TaskUnschedulableError(_UnschedulableError):
    """The task can never be scheduled (e.g. its hard node affinity names a dead node)."""


class ActorUnschedulableError(_UnschedulableError):
    """The actor can never be scheduled (e.g. its hard node affinity names a dead node)."""

    kind = "actor"


class UnserializableException(RayError):
    """Stands in for a task's exception that could not be pickled."""

    def __init__(self, original_stack_trace: str, pickle_error: str = "") -> None:
        super().__init__(original_stack_trace, pickle_error)
        self.original_stack_trace = original_stack_trace
        self.pickle_error = pickle_error

    def __str__(self) -> str:
        return (
            "Failed to deserialize exception. Refer to the original exception text "
            f"below.\nOriginal exception:\n{self.original_stack_trace}"
            + (f"\n(pickling failed with {self.pickle_error})" if self.pickle_error else "")
        )


def _hex(value: Any) -> str:
    hexer = getattr(value, "hex", None)
    if callable(hexer) and not isinstance(value, (str, bytes)):
        return str(hexer())
    return value.hex() if isinstance(value, bytes) else str(value)

