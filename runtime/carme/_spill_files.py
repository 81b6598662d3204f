"""Spill files: objects copied between the node's store file and a directory on disk.

Theory of operation. The daemon never maps the store; it copies a block of the store
file (/dev/shm) to `<directory>/<object id>` and back with `os.copy_file_range` (in the
kernel, no copy through Python), falling back to `pread`/`pwrite` in 8 MiB steps where
the kernel refuses a copy between these two file systems. Which objects go and when is
decided elsewhere (`_node_spill.py`, `_node_objects.py`); this module only moves bytes.

The directory is the session directory's `spill/` by default, so every cleanup of the
session (shutdown, the zygote's cleanup after a SIGKILL of the daemon, `carme stop`)
takes the spill files with it. A directory the user names gets a subdirectory of its
own per session, `carme-spill-<session>`, that the same cleanups remove.
"""

from __future__ import annotations

import os
import shutil

STEP = 8 << 20


def spill_directory(session_dir: str, session: str, configured: str | None) -> str:
    if not configured:
        return os.path.join(session_dir, "spill")
    return os.path.join(os.path.abspath(os.path.expanduser(configured)), f"carme-spill-{session}")


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

    def _store(self) -> int:
        if self._store_fd is None:
            self._store_fd = os.open(self.store_file, os.O_RDWR)
        return self._store_fd

    def path(self, oid: bytes) -> str:
        return os.path.join(self.directory, oid.hex())

    def write(self, oid: bytes, offset: int, size: int) -> None:
        """Copy the store's bytes [offset, offset+size) into the object's spill file."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
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
