"""carme.exceptions: Ray's names, pickling, and the dual-class task errors."""

from __future__ import annotations

import pickle

import cloudpickle
import pytest

import carme.exceptions as ce
from carme.exceptions import (
    ActorDiedError,
    GetTimeoutError,
    ObjectLostError,
    OwnerDiedError,
    RayActorError,
    RayError,
    RayTaskError,
    TaskCancelledError,
    TaskUnschedulableError,
    UnserializableException,
)

PICKLERS = [pickle, cloudpickle]


class NeedsTwoArgs(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(a, b)
        self.a, self.b = a, b


class Refuses(Exception):
    def __init_subclass__(cls, **kw: object) -> None:
        raise TypeError("no subclasses")


class BadArgs(Exception):
    """Pickles, but cannot be rebuilt: __init__ takes other arguments than ``args``."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}-{b}")


class Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("has a lambda")
        self.fn = lambda: 1

    def __reduce__(self):  # type: ignore[no-untyped-def]
        raise TypeError("cannot pickle")


def failing(exc: BaseException) -> RayTaskError:
    try:
        raise exc
    except BaseException as e:  # noqa: BLE001
        return RayTaskError.from_exception(e, "f", pid=42, ip="10.0.0.1")


def test_all_names_exported_and_sorted() -> None:
    assert ce.__all__ == sorted(ce.__all__)
    for name in ce.__all__:
        assert issubclass(getattr(ce, name), RayError)
    ray_names = {
        "RayError", "RayTaskError", "WorkerCrashedError", "RayActorError", "ActorDiedError",
        "ActorUnavailableError", "ObjectStoreFullError", "ObjectLostError",
        "ObjectFetchTimedOutError", "ReferenceCountingAssertionError",
        "ObjectReconstructionFailedError", "ObjectReconstructionFailedMaxAttemptsExceededError",
        "ObjectReconstructionFailedLineageEvictedError", "OwnerDiedError", "GetTimeoutError",
        "AsyncioActorExit", "PendingCallsLimitExceeded", "TaskUnschedulableError",
        "ActorUnschedulableError", "PlasmaObjectNotAvailable", "RaySystemError",
        "RuntimeEnvSetupError", "TaskCancelledError", "TaskPlacementGroupRemoved",
        "ActorPlacementGroupRemoved", "OutOfDiskError", "OutOfMemoryError", "NodeDiedError",
        "LocalRayletDiedError", "CrossLanguageError", "RayChannelError",
        "RayChannelTimeoutError", "UnserializableException", "ObjectFreedError",
        "RayCgraphCapacityExceeded", "AuthenticationError",
    }
    assert ray_names <= set(ce.__all__)


def test_hierarchy_matches_ray() -> None:
    assert issubclass(GetTimeoutError, TimeoutError)
    assert issubclass(ActorDiedError, RayActorError)
    assert issubclass(ce.ActorUnavailableError, RayActorError)
    assert issubclass(OwnerDiedError, ObjectLostError)
    assert issubclass(ce.ReferenceCountingAssertionError, AssertionError)
    assert issubclass(ce.ObjectReconstructionFailedMaxAttemptsExceededError, ObjectLostError)
    assert issubclass(ce.RayChannelTimeoutError, TimeoutError)
    assert issubclass(RayError, Exception)


def test_dual_class_catches_as_user_exception() -> None:
    err = failing(ValueError("boom")).as_instanceof_cause()
    assert isinstance(err, ValueError) and isinstance(err, RayTaskError)
    assert type(err).__name__ == "RayTaskError(ValueError)"
    with pytest.raises(ValueError):
        raise err
    text = str(err)
    assert text.startswith("carme::f() (pid=42, ip=10.0.0.1)")
    assert "ValueError: boom" in text and "in failing" in text
    assert err.cause.args == ("boom",)
    assert err.function_name == "f" and err.pid == 42 and err.ip == "10.0.0.1"


def test_memory_error_keeps_its_type() -> None:
    """MemoryError has a __new__ of its own that refuses subclasses made the usual way."""
    err = failing(MemoryError("needed 64 GiB")).as_instanceof_cause()
    assert isinstance(err, MemoryError) and isinstance(err, RayTaskError)
    with pytest.raises(MemoryError, match="needed 64 GiB"):
        raise err


def test_dual_class_is_cached_and_exposes_cause_attributes() -> None:
    a = failing(NeedsTwoArgs(1, 2)).as_instanceof_cause()
    b = failing(NeedsTwoArgs(3, 4)).as_instanceof_cause()
    assert type(a) is type(b)
    assert isinstance(a, NeedsTwoArgs) and a.b == 2 and b.a == 3


@pytest.mark.parametrize("mod", PICKLERS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("cause", [ValueError("v"), KeyError("k"), OSError(2, "nope"), NeedsTwoArgs(1, 2),
                                   MemoryError("too big"), RecursionError("deep")])
def test_dual_class_pickles(mod: object, cause: BaseException) -> None:
    err = failing(cause).as_instanceof_cause()
    back = mod.loads(mod.dumps(err))  # type: ignore[attr-defined]
    assert type(back).__name__ == type(err).__name__
    assert isinstance(back, type(cause)) and isinstance(back, RayTaskError)
    assert str(back) == str(err)
    assert back.pid == 42 and back.traceback_str == err.traceback_str


def test_unsubclassable_cause_falls_back_to_plain_task_error() -> None:
    err = failing(Refuses("x"))
    assert err.as_instanceof_cause() is err
    assert "Refuses: x" in str(err)


def test_ray_errors_are_not_wrapped() -> None:
    err = failing(TaskCancelledError("t1"))
    assert err.as_instanceof_cause() is err


def test_unpicklable_cause_is_replaced() -> None:
    err = failing(Unpicklable())
    assert isinstance(err.cause, UnserializableException)
    assert "has a lambda" in str(err.cause)
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, RayTaskError) and "Unpicklable" in back.traceback_str


def test_cause_that_cannot_be_rebuilt_is_replaced() -> None:
    err = failing(BadArgs(1, 2))
    assert isinstance(err.cause, UnserializableException) and "BadArgs: 1-2" in str(err.cause)
    assert pickle.loads(pickle.dumps(err.as_instanceof_cause())).function_name == "f"


def test_internal_frames_are_hidden() -> None:
    tb = (
        "Traceback (most recent call last):\n"
        '  File "/x/carme/_worker.py", line 3, in run\n'
        "    result = fn()\n"
        '  File "user.py", line 1, in f\n'
        "    raise ValueError('u')\n"
        "ValueError: u\n"
    )
    text = str(RayTaskError("f", tb, ValueError("u"), pid=1, ip="h"))
    assert "_worker" not in text and "result = fn()" not in text
    assert 'File "user.py"' in text and text.endswith("ValueError: u")


SAMPLES = [
    TaskCancelledError("abc"),
    TaskCancelledError(),
    ce.WorkerCrashedError(),
    ce.WorkerCrashedError("exit code 9"),
    RayActorError(),
    ActorDiedError("killed by carme.kill()", actor_id="a1", class_name="Counter"),
    ActorDiedError(failing(ValueError("init"))),
    ce.ActorUnavailableError("restarting", actor_id="a1"),
    ce.ActorUnschedulableError("node gone"),
    TaskUnschedulableError("node gone"),
    ObjectLostError("ff00", "owner", "f.py:1"),
    OwnerDiedError("ff00"),
    ce.ObjectFetchTimedOutError("ff00"),
    ce.ObjectReconstructionFailedError("ff00"),
    ce.ObjectReconstructionFailedMaxAttemptsExceededError("ff00"),
    ce.ObjectReconstructionFailedLineageEvictedError("ff00"),
    ce.ReferenceCountingAssertionError("ff00"),
    ce.ObjectFreedError("ff00"),
    GetTimeoutError("Get timed out: some object(s) not ready."),
    ce.ObjectStoreFullError("put of 3 GB failed"),
    ce.OutOfDiskError(),
    ce.OutOfMemoryError("task f used 20 GB"),
    ce.NodeDiedError(),
    ce.RaySystemError("socket closed", "tb"),
    ce.RayChannelError("x"),
    ce.RuntimeEnvSetupError("working_dir missing"),
    ce.PendingCallsLimitExceeded("too many"),
    ce.LocalRayletDiedError(),
    ce.AsyncioActorExit(),
    ce.TaskPlacementGroupRemoved(),
    ce.ActorPlacementGroupRemoved(),
    ce.CrossLanguageError("java"),
    ce.AuthenticationError("bad token"),
    ce.RayCgraphCapacityExceeded("full"),
    UnserializableException("ValueError: x", "TypeError: y"),
    failing(ValueError("plain")),
]


@pytest.mark.parametrize("mod", PICKLERS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("exc", SAMPLES, ids=lambda e: type(e).__name__)
def test_every_exception_pickles_with_message_and_attributes(mod: object, exc: BaseException) -> None:
    back = mod.loads(mod.dumps(exc))  # type: ignore[attr-defined]
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    for key, value in vars(exc).items():
        if isinstance(value, BaseException):
            assert str(getattr(back, key)) == str(value)
        else:
            assert getattr(back, key) == value


def test_messages() -> None:
    assert str(TaskCancelledError("abc")) == "Task: abc was cancelled."
    assert str(TaskUnschedulableError("x")) == "The task is not schedulable: x"
    assert str(ce.ActorUnschedulableError("x")) == "The actor is not schedulable: x"
    assert "All copies of ff00" in str(ObjectLostError("ff00"))
    assert "owner has exited" in str(OwnerDiedError("ff00"))
    died = ActorDiedError(failing(ValueError("init")))
    assert died.actor_init_failed and "creation task" in str(died)
    assert "class_name: Counter" in str(ActorDiedError("gone", class_name="Counter"))
    assert str(ce.RuntimeEnvSetupError("bad")).endswith("bad")
