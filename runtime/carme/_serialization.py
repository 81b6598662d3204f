"""Serialization of values for tasks, results and the object store.

Values are pickled with protocol 5. Large contiguous buffers (numpy arrays, Arrow
buffers, bytes-likes) go out-of-band: inline payloads carry them as separate byte
strings; shared-memory payloads lay them out after the pickle stream, 64-byte aligned,
and reading hands `pickle.loads` read-only memoryviews into the mapped store, so a numpy
array comes back zero-copy and read-only.

The fast path is the C pickler; anything it cannot pickle by reference (lambdas, classes
and functions defined in `__main__` or a notebook) is pickled by value with cloudpickle.
ObjectRefs met while pickling are collected (`contained`) so the caller can keep them
alive for as long as the serialized value lives.
"""

from __future__ import annotations

import os
import pickle
import struct
import threading
from typing import Any

import cloudpickle

from . import _messages as M

INLINE_LIMIT = 100 * 1024  # like Ray's max_direct_call_object_size
# every buffer goes out of band, however small: read back, it is immutable (bytes or the
# read-only store), so a numpy array from get() is read-only whatever its size, as in Ray
_OOB_MIN = 0
_HDR = struct.Struct("<QQ")
_ENT = struct.Struct("<QQ")
_ALIGN = 64


class _Ctx(threading.local):
    def __init__(self) -> None:
        self.contained: list | None = None
        self.loaded: list | None = None


CTX = _Ctx()


class _NeedsCloudpickle(Exception):
    pass


# values of these types hold no ObjectRef, no buffer and nothing by reference: the plain
# C pickler alone (a no-op task's None result, a call's small scalar arguments)
ATOMS = frozenset({type(None), bool, int, float, str, bytes})
# the arguments of a call without any, pickled once: a submitter sends these bytes, and a
# worker that gets them skips the unpickling
NO_ARGS_DATA = pickle.dumps(((), {}), 5)


def dumps(value: Any) -> tuple[bytes, list[pickle.PickleBuffer], list]:
    """Pickle `value`; return (stream, out-of-band buffers, contained ObjectRefs)."""
    if type(value) in ATOMS:
        return pickle.dumps(value, 5), [], []
    prev = CTX.contained
    contained: list = []
    CTX.contained = contained
    buffers: list[pickle.PickleBuffer] = []

    def keep(buf: pickle.PickleBuffer) -> bool | None:
        if buf.raw().nbytes < _OOB_MIN:
            return True  # in-band
        buffers.append(buf)
        return None

    try:
        try:
            data = pickle.dumps(value, 5, buffer_callback=keep)
            if b"__main__" in data or b"<lambda>" in data:
                raise _NeedsCloudpickle
        except (pickle.PicklingError, AttributeError, TypeError, _NeedsCloudpickle):
            buffers.clear()
            del contained[:]
            data = cloudpickle.dumps(value, 5, buffer_callback=keep)
    finally:
        CTX.contained = prev
    return data, buffers, contained


def dumps_function(fn: Any) -> tuple[bytes, list]:
    """Pickle a remote function or actor class by value; return (blob, the ObjectRefs it
    captures in its closure or globals), so the caller can keep those objects alive."""
    prev = CTX.contained
    contained: list = []
    CTX.contained = contained
    try:
        return cloudpickle.dumps(fn, 5), contained
    finally:
        CTX.contained = prev


def loads(data: Any, buffers: list | None = None) -> tuple[Any, list]:
    """Unpickle; return (value, ObjectRefs materialized while loading)."""
    prev = CTX.loaded
    loaded: list = []
    CTX.loaded = loaded
    try:
        value = pickle.loads(data, buffers=buffers or ())
    finally:
        CTX.loaded = prev
    return value, loaded


def total_size(data: bytes, buffers: list) -> int:
    return len(data) + sum(b.raw().nbytes for b in buffers) if buffers else len(data)


def inline_payload(data: bytes, buffers: list | tuple, is_error: bool = False) -> tuple:
    # without buffers: an empty tuple, not a list, so the payload holds only atomic values
    # and the cyclic collector stops tracking it (a queued task's arguments, a result)
    return (M.INLINE, data, [bytes(b.raw()) for b in buffers] if buffers else (), is_error)


def layout_size(data: bytes, buffers: list) -> int:
    size = _HDR.size + _ENT.size * len(buffers) + len(data)
    for b in buffers:
        size = (size + _ALIGN - 1) & ~(_ALIGN - 1)
        size += b.raw().nbytes
    return size


# A buffer this large is copied into the store by several threads at once, each taking
# a slice (numpy's copy lets go of the GIL). One thread's memcpy is bounded by how many
# cache lines one core keeps in flight, not by the memory bus: on the 2-core VM two
# threads copy 100 MB in about half the time. Ray's put does the same (6 threads).
PARALLEL_COPY_MIN = 8 * 1024 * 1024
COPY_THREADS = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                          else (os.cpu_count() or 1)))
_copy_pool: Any = None
_copy_pool_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """A child forked while another thread made the pool: a lock of its own (that one
    stays held in the child forever), and threads of its own on first use."""
    global _copy_pool, _copy_pool_lock
    _copy_pool, _copy_pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _copier() -> Any:
    """The process's copy threads (made on first use; a forked child makes its own:
    `_after_fork_in_child`)."""
    global _copy_pool
    with _copy_pool_lock:
        if _copy_pool is None:
            from concurrent.futures import ThreadPoolExecutor
            _copy_pool = ThreadPoolExecutor(COPY_THREADS - 1, "carme-copy")
        return _copy_pool


def copy_into(dest: memoryview, src: memoryview) -> None:
    """dest[:] = src (both C-contiguous bytes of one length), by several threads when
    large (`PARALLEL_COPY_MIN`) and numpy is there to copy without the GIL."""
    n = src.nbytes
    if n < PARALLEL_COPY_MIN or COPY_THREADS < 2:
        dest[:] = src
        return
    try:
        import numpy as np
    except ImportError:
        dest[:] = src
        return
    d = np.frombuffer(dest, dtype=np.uint8)
    s = np.frombuffer(src, dtype=np.uint8)
    step = -(-n // COPY_THREADS)
    step = (step + 4095) & ~4095  # whole pages to each thread
    parts = [(i, min(i + step, n)) for i in range(0, n, step)]
    futures = []
    try:
        pool = _copier()
        for a, b in parts[1:]:
            futures.append(pool.submit(np.copyto, d[a:b], s[a:b]))
    except RuntimeError:  # no thread to be had (an address-space limit): copy the rest here
        pass
    for a, b in [parts[0], *parts[1 + len(futures):]]:  # this thread's slice, and any no thread took
        np.copyto(d[a:b], s[a:b])
    for f in futures:
        f.result()


def write_layout(dest: memoryview, data: bytes, buffers: list) -> None:
    n = len(buffers)
    pos = _HDR.size + _ENT.size * n
    _HDR.pack_into(dest, 0, len(data), n)
    dest[pos:pos + len(data)] = data
    pos += len(data)
    for i, b in enumerate(buffers):
        raw = b.raw()
        pos = (pos + _ALIGN - 1) & ~(_ALIGN - 1)
        _ENT.pack_into(dest, _HDR.size + _ENT.size * i, pos, raw.nbytes)
        copy_into(dest[pos:pos + raw.nbytes], raw.cast("B") if raw.format != "B" else raw)
        pos += raw.nbytes


def read_layout(src: memoryview) -> tuple[memoryview, list[memoryview]]:
    dlen, n = _HDR.unpack_from(src, 0)
    pos = _HDR.size + _ENT.size * n
    data = src[pos:pos + dlen]
    bufs = []
    for i in range(n):
        off, ln = _ENT.unpack_from(src, _HDR.size + _ENT.size * i)
        bufs.append(src[off:off + ln])
    return data, bufs
