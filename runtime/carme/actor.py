"""Actor helpers with Ray's `ray.actor` names."""

from __future__ import annotations

from typing import NoReturn, TypeVar

from ._remote import ActorClass, ActorClassInheritanceException, ActorHandle, ActorMethod

__all__ = ["ActorClass", "ActorClassInheritanceException", "ActorHandle", "ActorMethod",
           "ActorProxy", "exit_actor"]

T = TypeVar("T")

# what `.remote()` on an actor class gives, for type hints (Ray's ray.actor.ActorProxy)
ActorProxy = ActorHandle | type[T]


def exit_actor() -> NoReturn:
    """End the current actor from inside one of its methods: its __ray_shutdown__ and
    atexit handlers run, it will not be restarted, and later calls fail with
    ActorDiedError (Ray's ray.actor.exit_actor)."""
    from ._context import core
    c = core()
    if c.task_attr("actor_id") is None:
        raise TypeError("exit_actor() called outside of an actor method")
    raise SystemExit(0)  # the worker ends the actor (Executor.terminate)
