"""Actor helpers with Ray's `ray.actor` names."""

from __future__ import annotations

from typing import NoReturn

from ._remote import ActorClass, ActorHandle, ActorMethod

__all__ = ["ActorClass", "ActorHandle", "ActorMethod", "exit_actor"]


def exit_actor() -> NoReturn:
    """End the current actor from inside one of its methods: it will not be restarted,
    and later calls fail with ActorDiedError (Ray's ray.actor.exit_actor)."""
    from . import _messages as M
    from ._context import core
    c = core()
    actor_id = c.task_attr("actor_id")
    if actor_id is None:
        raise TypeError("exit_actor() called outside of an actor method")
    conn = c.control()
    msg = (M.KILL_ACTOR, actor_id, True)
    if conn is c.daemon:
        c.daemon_send(msg)
    else:
        conn.send(msg)
    c.flush()
    raise SystemExit(0)
