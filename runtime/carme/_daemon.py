"""The node daemon's process: `python -m carme._daemon`, its configuration on stdin.

It forks the zygote (`_zygote.py`) before it imports the daemon itself
(`_node_daemon.py`): every worker is a fork of the zygote and starts with the zygote's
memory, so the zygote holds what a worker needs (`import carme`, then `_worker`, which it
imports itself) and none of the node's own modules, and it is forked while this process
has no threads.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys

GC_THRESHOLDS = (20_000, 20, 20)  # CPython's defaults: (700, 10, 10)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver's Ctrl-C is not ours
    # A process group of our own: Jupyter restarts a kernel by killing the kernel's whole
    # process group, and the embedded daemon must outlive that kill to notice its driver
    # is gone and clean up. Not a session of our own: the kernel's CPU scheduler groups
    # processes by session (autogroup), and a driver and its workers in different groups
    # answer each other markedly slower. In a background group, writing to a terminal
    # with `tostop` set would stop us: SIGTTOU is ignored (our children inherit that).
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    if os.getpgid(0) != os.getpid():
        os.setpgid(0, 0)
    line = sys.stdin.readline()
    if not line:  # the driver went away (or refused its own arguments) before configuring us
        return
    config = json.loads(line)

    from ._store import spill_directory, store_path
    from ._zygote import Zygote

    spill_dir = spill_directory(config["session_dir"], config["session"],
                                config.get("object_spilling_directory"))
    zygote = Zygote(cleanup=(store_path(config["session"]), config["session_dir"], spill_dir))

    from ._node_daemon import NodeDaemon

    # No parent-death signal for the embedded daemon: the kernel sends it when the
    # *thread* that started us ends (carme.init() from a thread that then returns), not
    # the driver. The end of stdin and a change of parent tell us the driver is gone.
    try:
        daemon = NodeDaemon(config, zygote)
    except BaseException:
        zygote.close()
        raise
    signal.signal(signal.SIGTERM, lambda *_: setattr(daemon, "running", False))
    # The daemon holds many small long-lived containers (up to 100,000 task event
    # records, the object and worker tables) and makes few cycles: with CPython's default
    # thresholds its collections cost about a third of recording a task's event. (After
    # the zygote is made: workers run user code and keep the defaults.)
    gc.set_threshold(GC_THRESHOLDS[0], GC_THRESHOLDS[1], GC_THRESHOLDS[2])
    try:
        daemon.serve()
    finally:
        if daemon.running:
            daemon.shutdown()


if __name__ == "__main__":
    main()
