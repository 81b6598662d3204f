"""Identifiers for jobs, tasks, objects, actors, workers and nodes.

Ids are bytes: an 8-byte random prefix per process plus a counter, so making one costs a
few hundred nanoseconds and two processes never collide. An object returned by a task is
the task id plus the return index, like Ray's, so the submitter can name every return
before the task runs.
"""

from __future__ import annotations

import itertools
import os
import struct

_PACK_Q = struct.Struct(">Q").pack


class IdSource:
    """Makes unique ids for one process."""

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        """Called after fork so parent and child never hand out the same ids."""
        self._prefix = os.urandom(8)
        self._counter = itertools.count(1)

    def next(self) -> bytes:
        return self._prefix + _PACK_Q(next(self._counter))


IDS = IdSource()
os.register_at_fork(after_in_child=IDS.reseed)


def task_id() -> bytes:
    return IDS.next()


def return_id(task: bytes, index: int) -> bytes:
    return task + index.to_bytes(4, "big")


def put_id() -> bytes:
    # Puts are objects of a pseudo task: index 0 marks them apart from returns (>= 1).
    return IDS.next() + b"\x00\x00\x00\x00"


def random_hex(nbytes: int = 14) -> str:
    return os.urandom(nbytes).hex()
