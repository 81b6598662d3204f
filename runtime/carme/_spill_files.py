"""Spill files: objects copied between the node's store file and a directory on disk.

Theory of operation. The daemon never maps the store; it copies a block of the store
file (/dev/shm) to `<directory>/<object id>` and back with `os.copy_file_range` (in the
kernel, no copy through Python), falling back to `pread`/`pwrite` in 8 MiB steps where
the kernel refuses a copy between these two file systems. Which objects go and when is
decided elsewhere (`_node_spill.py`, `_node_objects.py`); this module only moves bytes.

`Spiller` runs the copies on a thread of its own and feeds their ends back to the
daemon's loop; requests that need room (`ALLOC`) or a spilled object (`MAP_OBJECT`, a
peer's pull) wait meanwhile, while the loop serves everyone else.

The directory is the session directory's `spill/` by default, so every cleanup of the
session (shutdown, the zygote's cleanup after a SIGKILL of the daemon, `carme stop`)
takes the spill files with it. A directory the user names gets a subdirectory of its
own per session, `carme-spill-<session>`, that the same cleanups remove.
"""

from __future__ import annotations

import functools
import os
import queue
import shutil
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from ._maps import LINGER_S
from ._node_spill import spill_victims

STEP = 8 << 20


def check_spill_directory(configured: str) -> None:
    """A directory the user gave: it must exist (or be creatable) and be writable."""
    path = os.path.abspath(os.path.expanduser(configured))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ValueError(f"object spilling directory {configured!r} cannot be created ({e}); "
                         f"name a writable directory, or leave it unset to spill into the "
                         f"session directory") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"object spilling directory {configured!r} is not writable; name a "
                         f"writable directory, or leave it unset to spill into the session directory")


class SpillFiles:
    def __init__(self, directory: str, store_file: str) -> None:
        self.directory = directory
        self.store_file = store_file
        self._store_fd: int | None = None
        self._kernel_copy = hasattr(os, "copy_file_range")
        self._made = False
        self.closed = False

    def _store(self) -> int:
        if self._store_fd is None:
            self._store_fd = os.open(self.store_file, os.O_RDWR)
        return self._store_fd

    def path(self, oid: bytes) -> str:
        return os.path.join(self.directory, oid.hex())

    def write(self, oid: bytes, offset: int, size: int) -> None:
        """Copy the store's bytes [offset, offset+size) into the object's spill file."""
        if self.closed:
            raise OSError(f"spilling to {self.directory} has ended (the node is shutting down)")
        if not self._made:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            self._made = True
        fd = os.open(self.path(oid), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            self._copy(self._store(), offset, fd, 0, size)
        except BaseException:
            os.close(fd)
            self.remove(oid)
            raise
        os.close(fd)

    def read(self, oid: bytes, offset: int, size: int) -> None:
        """Copy the object's spill file into the store at `offset`."""
        fd = os.open(self.path(oid), os.O_RDONLY)
        try:
            self._copy(fd, 0, self._store(), offset, size)
        finally:
            os.close(fd)

    def _copy(self, src: int, src_off: int, dst: int, dst_off: int, size: int) -> None:
        done = 0
        while done < size:
            n = min(STEP, size - done)
            if self._kernel_copy:
                try:
                    got = os.copy_file_range(src, dst, n, src_off + done, dst_off + done)
                except OSError:
                    self._kernel_copy = False  # e.g. EXDEV: copy through here from now on
                    continue
            else:
                data = os.pread(src, n, src_off + done)
                got = os.pwrite(dst, data, dst_off + done) if data else 0
            if got <= 0:
                raise OSError(f"short copy: {done:,} of {size:,} bytes")
            done += got

    def remove(self, oid: bytes) -> None:
        try:
            os.unlink(self.path(oid))
        except FileNotFoundError:
            pass

    def close(self) -> None:
        self.closed = True
        if self._store_fd is not None:
            os.close(self._store_fd)
            self._store_fd = None
        shutil.rmtree(self.directory, ignore_errors=True)


OPTION_NAMES = ("object_spilling_config", "object_spilling_directory", "object_spilling_max_bytes")


def spill_options(given: dict | None) -> dict:
    """The daemon's spilling options from `init(_system_config=...)` or `carme start`:
    Ray's `object_spilling_config` (JSON, or a dict, of type "filesystem" with
    `params.directory_path`), or carme's simpler `object_spilling_directory`, and
    `object_spilling_max_bytes` (the most bytes on disk). Checked here, before a daemon starts."""
    import json
    given = given or {}
    out: dict = {}
    cfg = given.get("object_spilling_config")
    if cfg is not None:
        try:
            spec = json.loads(cfg) if isinstance(cfg, str) else dict(cfg)
            if spec.get("type", "filesystem") != "filesystem":
                raise ValueError(f"type {spec.get('type')!r}")
            path = spec.get("params", {}).get("directory_path")
            if isinstance(path, list):
                path = path[0] if path else None
            if not isinstance(path, str) or not path:
                raise ValueError("no params.directory_path")
        except (ValueError, TypeError, AttributeError) as e:
            raise ValueError(
                f"object_spilling_config must be JSON like '{{\"type\": \"filesystem\", \"params\": "
                f"{{\"directory_path\": \"/path/to/dir\"}}}}' (carme spills to local files only), "
                f"not {cfg!r}: {e}") from None
        out["object_spilling_directory"] = path
    if given.get("object_spilling_directory") is not None:
        path = given["object_spilling_directory"]
        if not isinstance(path, str) or not path:
            raise ValueError(f"object_spilling_directory must be a directory path, not {path!r}")
        out["object_spilling_directory"] = path
    if "object_spilling_directory" in out:
        check_spill_directory(out["object_spilling_directory"])
    limit = given.get("object_spilling_max_bytes")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"object_spilling_max_bytes must be a number of bytes >= 0, not {limit!r}")
        out["object_spilling_max_bytes"] = limit
    return out


class Spiller:
    """The daemon's side of spilling: makes room and restores objects, with the file copies
    on a thread of their own so the daemon's loop keeps serving while they run.

    `when_room(size, then)` and `when_resident(oid, then)` run `then` (on the loop) once
    the store has room for `size` bytes / once `oid` is back in the store, or once that
    cannot be (then `then` answers with the table's error). Waiters for room are served in
    order. A write's or read's end is posted back to the loop (`post`), where the table is
    told (`finish_spill`, `finish_restore`) and waiters are retried.
    """

    def __init__(self, table: Any, files: SpillFiles, post: Callable[[Callable[[], None]], None],
                 carry_out: Callable[[list], None], log: Callable[[str], None]) -> None:
        self.table, self.files, self.post, self.carry_out, self.log = table, files, post, carry_out, log
        # (size, credit, then, whether it already waited for mappings to lapse)
        self.room_waiters: deque[list] = deque()
        self.timer: threading.Timer | None = None
        self.restore_waiters: dict[bytes, list[Callable[[], None]]] = {}
        self.writing: dict[bytes, int] = {}  # object id -> bytes being written
        self.write_failed = False  # since the last write that went through
        self.jobs: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None

    # ------------------------------------------------------------------ on the loop
    def when_room(self, size: int, then: Callable[[], None], credit: int = 0) -> None:
        arena = self.table.arena
        if (arena.fits(size) or size > arena.capacity) and not self.room_waiters:
            then()
            return
        self.room_waiters.append([size, credit, then, False])
        self.pump()

    def when_resident(self, oid: bytes, then: Callable[[], None]) -> None:
        e = self.table.get_entry(oid)
        if e is None or not e.spilled:
            then()
            return
        first = oid not in self.restore_waiters
        self.restore_waiters.setdefault(oid, []).append(then)
        size = self.table.needs_restore(oid)
        if first and size is not None:
            # its own file goes once it is back: room on disk for what makes room for it
            self.when_room(size, lambda: self._read(oid), credit=size)

    def pump(self) -> None:
        """Serve the waiters for room, in order, starting writes where needed."""
        table, arena = self.table, self.table.arena
        while self.room_waiters:
            size, credit, then, waited = self.room_waiters[0]
            if arena.fits(size) or size > arena.capacity:
                self.room_waiters.popleft()
                then()
                continue
            if table.cached:  # copies of other nodes' objects go first
                self.carry_out(table.unhold(table.cached.pop(0), "cache"))
                continue
            coming = sum(self.writing.values())
            need = size - arena.largest_free() - coming
            victims = [] if need <= 0 else spill_victims(table.spill_candidates(), need, table.spill,
                                                           credit - coming)
            if victims:
                wrote = False
                for v in victims:
                    if v.on_disk:  # its file is still there: no write
                        table.mark_spilled(v.oid)
                        continue
                    table.start_spill(v.oid)
                    self.writing[v.oid] = v.size
                    self._submit(("write", v.oid, v.offset, v.size))
                    wrote = True
                if wrote:
                    return
                continue
            if self.writing and not self.write_failed:
                return  # what is being written may make the room
            if not waited and table.mapped_count():
                # objects only mapped may be processes' idle mappings (`_maps.py`), given
                # back within LINGER_S: look again once, a little after that
                self.room_waiters[0][3] = True
                self.timer = threading.Timer(LINGER_S + 0.5, self.post, (self.pump,))
                self.timer.daemon = True
                self.timer.start()
                return
            self.room_waiters.popleft()
            then()  # no room can be made: the caller's answer says why

    def _read(self, oid: bytes) -> None:
        size = self.table.needs_restore(oid)
        if size is None or not self.table.arena.fits(size):
            self._restored(oid)  # gone, or no room: the waiters' answers say so
            return
        offset = self.table.arena.allocate(size)
        self.table.start_restore(oid, offset)
        self._submit(("read", oid, offset, size))

    def _restored(self, oid: bytes) -> None:
        for then in self.restore_waiters.pop(oid, []):
            then()

    def _written(self, oid: bytes, error: OSError | None) -> None:
        self.writing.pop(oid, None)
        if error is not None:
            self.log(f"could not spill object {oid.hex()} to {self.files.directory}: {error}")
        self.write_failed = error is not None
        if not self.table.finish_spill(oid, error is None):
            self.files.remove(oid)
        self.pump()

    def _read_done(self, oid: bytes, offset: int, error: OSError | None) -> None:
        if error is not None:
            self.log(f"could not restore object {oid.hex()} from {self.files.directory}: {error}")
        self.table.finish_restore(oid, offset, error is None)
        self.carry_out([])  # the restored object's file goes
        self._restored(oid)
        self.pump()

    # ------------------------------------------------------------------ the copying thread
    def _submit(self, job: tuple) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="carme-spill", daemon=True)
            self.thread.start()
        self.jobs.put(job)

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            kind, oid, offset, size = job
            error: OSError | None = None
            try:
                (self.files.write if kind == "write" else self.files.read)(oid, offset, size)
            except OSError as e:
                error = e
            if kind == "write":
                self.post(functools.partial(self._written, oid, error))
            else:
                self.post(functools.partial(self._read_done, oid, offset, error))

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.thread is not None:
            self.jobs.put(None)
            self.thread.join(5.0)
        self.files.close()
