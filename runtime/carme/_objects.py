"""ObjectRef and ObjectRefGenerator: handles to values that live in the cluster.

An ObjectRef counts itself in its process's reference table when made and uncounts
itself when collected; when the last one in a process goes, the process lets go of the
object (and the node daemon frees it once no process or stored value holds it).
Pickling an ObjectRef (as a nested argument, inside a put value or a return value) goes
through the process's CoreWorker, which makes sure the object is known to the node so
the receiving process can find it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import types
from typing import Any

from . import _context
from ._serialization import CTX


def _rebuild(oid: bytes, owner: str, home: str = "") -> ObjectRef:
    ref = ObjectRef(oid, owner)
    ref._home = home  # the node whose daemon has its entry (borrow holds it there)
    loaded = CTX.loaded
    if loaded is not None:
        loaded.append(ref)
    return ref


class ObjectRef:
    __slots__ = ("_id", "_owner", "_home", "__weakref__")
    _home: str  # set only on refs read out of a value (`_rebuild`)

    # ObjectRef[int] in type hints, as in Ray
    __class_getitem__: Any = classmethod(types.GenericAlias)

    def __init__(self, oid: bytes, owner: str = "", _count: bool = True) -> None:
        self._id = oid
        self._owner = owner
        if _count:
            core = _context.maybe_core()
            if core is not None:
                core.refs.add(oid)

    def __del__(self) -> None:
        core = _context.maybe_core()
        if core is not None:
            try:
                core.refs.remove(self._id)
            except Exception:
                pass

    def __reduce__(self) -> tuple:
        contained = CTX.contained
        if contained is not None:
            contained.append(self)
        core = _context.maybe_core()
        home = core.home_of(self._id) if core is not None else ""
        return (_rebuild, (self._id, self._owner, home))

    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def task_id(self) -> bytes:
        return self._id[:16]

    def is_nil(self) -> bool:
        return not any(self._id)

    def __hash__(self) -> int:
        return hash(self._id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def future(self) -> concurrent.futures.Future:
        return _context.core().future_for(self)

    def __await__(self) -> Any:
        return asyncio.wrap_future(self.future()).__await__()

    def as_future(self) -> asyncio.Future:
        return asyncio.wrap_future(self.future())


class ObjectRefGenerator:
    """The return of a `num_returns="streaming"` task: yields an ObjectRef per value as
    the remote generator produces it (iterate with `for` or `async for`)."""

    def __init__(self, task_id: bytes, state: Any) -> None:
        self._task_id = task_id
        self._state = state  # a _core.StreamState

    def __iter__(self) -> ObjectRefGenerator:
        return self

    def __next__(self) -> ObjectRef:
        return self._state.next(timeout=None)

    def _next_sync(self, timeout_s: float | None = None) -> ObjectRef:
        return self._state.next(timeout=timeout_s)

    def __aiter__(self) -> ObjectRefGenerator:
        return self

    async def __anext__(self) -> ObjectRef:
        loop = asyncio.get_running_loop()
        # StopIteration cannot cross a Future: the executor hands back None at the end
        ref = await loop.run_in_executor(None, self._next_or_none)
        if ref is None:
            raise StopAsyncIteration
        return ref

    def _next_or_none(self) -> ObjectRef | None:
        try:
            return self._state.next(timeout=None)  # type: ignore[no-any-return]
        except StopIteration:
            return None

    def completed(self) -> ObjectRef:
        return self._state.completed_ref

    def is_finished(self) -> bool:
        return self._state.finished

    def task_id(self) -> bytes:
        return self._task_id

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._task_id.hex()})"

    def __del__(self) -> None:
        pass


class DynamicObjectRefGenerator:
    """The value of a `num_returns="dynamic"` task: the refs of the values its generator
    yielded, in order (iterate it; Ray's DynamicObjectRefGenerator)."""

    def __init__(self, refs: list) -> None:
        self._refs = list(refs)

    def __iter__(self) -> Any:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __repr__(self) -> str:
        return f"DynamicObjectRefGenerator({len(self._refs)} refs)"
