"""`write_private`: a small file written whole and atomically, readable by this user only.

Readers see the old file or the new one, never a part: the text goes to a temporary file
(mode 0600) in the same directory, which is then renamed over `path`. The state files of
a head, the panel's selection file and the embedded clusters' discovery notes use it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile


def write_private(path: str, text: str, *, durable: bool = False) -> None:
    """Write `text` to `path` atomically, mode 0600; with `durable`, on disk before the
    rename (fsync: for state that must survive a crash of the machine)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
