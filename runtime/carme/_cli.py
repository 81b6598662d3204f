"""The `carme` command line: start/stop clusters, look at them, install the kernel.

What it prints is made by small pure functions (`status_lines`, `table`,
`human_bytes`) and written by the `cmd_*` shells. Like other Unix tools it stops
quietly when the reader of its output goes away (`carme list tasks | head`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

# resources counted in bytes: shown in KiB, MiB, GiB
BYTE_RESOURCES = ("memory", "object_store_memory")
# exit status of a tool whose reader went away (128 + SIGPIPE), as the shell reports one
EXIT_BROKEN_PIPE = 141
NO_CLUSTER = ("no carme cluster is running on this machine. Start one with `carme start --head`, "
              "or pass --address HOST:PORT of a running one.")


class NoCluster(ConnectionError):
    """No address given and no cluster of this machine to fall back on."""


def _resources(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise SystemExit(f"--resources must be JSON like '{{\"custom\": 2}}': {e}") from None
    if not isinstance(value, dict):
        raise SystemExit("--resources must be a JSON object of resource name -> amount")
    return value


def cmd_start(args: argparse.Namespace) -> int:
    from . import cluster
    if not args.head:
        if not args.address:
            print("carme start: pass --head to start a cluster, or --address HEAD:PORT to join one",
                  file=sys.stderr)
            return 2
        node = cluster.start_node(args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                                  resources=_resources(args.resources), host=args.host,
                                  object_store_memory=args.object_store_memory,
                                  object_spilling_directory=args.object_spilling_directory)
        print(f"carme node {node['node_id'][:12]} joined the cluster at {args.address} "
              f"(listening on {node['address']}, pid {node['pid']}).")
        return 0
    info = cluster.start_head(num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                              resources=_resources(args.resources), port=args.port,
                              host=args.host or "127.0.0.1", object_store_memory=args.object_store_memory,
                              metrics_port=args.metrics_port,
                              object_spilling_directory=args.object_spilling_directory)
    if info.get("restarted"):
        print(f"carme cluster head restarted at {info['address']} (pid {info['pid']}) from its saved "
              f"state: same token and ports; its nodes rejoin as their heartbeats reach it.")
    else:
        print(f"carme cluster started at {info['address']} (pid {info['pid']}).")
    if info.get("metrics_port") is not None:
        print(f"  Prometheus metrics: http://{args.host or '127.0.0.1'}:{info['metrics_port']}/metrics")
    print(f"  From a driver on this machine:  carme.init(address=\"{info['address']}\")  or  carme.init(address=\"auto\")")
    print(f"  The cluster token is in {info['token_file']} (readable by you only).")
    print(f"  Join another node to it:  carme start --address {info['address']}")
    print("  Stop it with:  carme stop")
    if args.block:
        try:
            while cluster._info_alive(info):
                time.sleep(1)
        except KeyboardInterrupt:
            cluster.stop(info["address"])
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from . import cluster
    if args.address:
        ok = cluster.stop(args.address)
        print(f"stopped {args.address}" if ok else f"no cluster of this machine at {args.address}")
        return 0 if ok else 1
    n = cluster.stop_all()
    print(f"stopped {n} cluster(s)")
    return 0


def _client(address: str | None) -> Any:
    from . import cluster
    if not address and not cluster.list_local():
        raise NoCluster(NO_CLUSTER)
    return cluster.connect(address or "auto")


def human_bytes(n: float | None) -> str:
    """1.67394e+10 -> '15.6 GiB' (binary units, as the panel shows them)."""
    if n is None:
        return "?"
    v, units = float(n), ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    i = 0
    while abs(v) >= 1024 and i < len(units) - 1:
        v /= 1024
        i += 1
    return f"{v:.0f} {units[i]}" if i == 0 else f"{v:.1f} {units[i]}"


def _amount(key: str, value: float) -> str:
    return human_bytes(value) if key in BYTE_RESOURCES else f"{value:g}"


def status_lines(snap: Mapping[str, Any]) -> list[str]:
    """`carme status`'s lines from `Client.snapshot()`."""
    lines = [f"cluster {snap['address']}: {len(snap['nodes'])} node(s)"]
    total, avail = snap["resources"]["total"], snap["resources"]["available"]
    for k in sorted(total):
        if k.startswith("node:"):
            continue
        used = total[k] - avail.get(k, 0)
        lines.append(f"  {k}: {_amount(k, used)}/{_amount(k, total[k])} used")
    objects = snap["objects"]
    line = f"  object store: {human_bytes(objects['used'])}/{human_bytes(objects['capacity'])} used"
    if objects.get("spilled"):
        line += f", {human_bytes(objects['spilled'])} spilled to disk ({objects.get('spilled_objects', 0)} objects)"
    lines.append(line)
    tasks = snap["tasks_by_state"]
    lines.append("  tasks: " + (", ".join(f"{n} {s.lower()}" for s, n in sorted(tasks.items())) or "none"))
    lines.append(f"  actors: {len(snap['actors'])}")
    return lines


def table(rows: Sequence[Mapping[str, Any]], max_columns: int = 7) -> str:
    """Rows of the state API as an aligned text table: the first row's scalar columns."""
    from tabulate import tabulate
    keys = [k for k in rows[0] if not isinstance(rows[0][k], (dict, list))][:max_columns]
    body = [["" if r.get(k) is None else r.get(k) for k in keys] for r in rows]
    return tabulate(body, headers=keys, tablefmt="simple", disable_numparse=True)


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args.address) as c:
        snap = c.snapshot()
    print("\n".join(status_lines(snap)))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    kind = args.kind.replace("-", "_")
    with _client(args.address) as c:
        rows = c.rows(kind)
    if args.format == "json":
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print(f"no {args.kind}")
        return 0
    print(table(rows))
    return 0


def cmd_timeline(args: argparse.Namespace) -> int:
    with _client(args.address) as c:
        events = c.timeline()
    with open(args.output, "w") as f:
        json.dump(events, f)
    print(f"wrote {len(events)} events to {args.output} (open it in Perfetto)")
    return 0


def cmd_kernel(args: argparse.Namespace, rest: list[str]) -> int:
    try:
        from carme_kernel._install import main as install_main
    except ImportError:
        print("the carme kernel is not installed (pip install 'carme[lab]')", file=sys.stderr)
        return 2
    return int(install_main(rest) or 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carme", description="carme: a notebook-native cluster runtime")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="start a cluster on this machine")
    s.add_argument("--head", action="store_true", help="start a head node (a new cluster)")
    s.add_argument("--address", help="HEAD:PORT of the cluster to join")
    s.add_argument("--port", type=int, default=0,
                   help="TCP port (default: a free one). With --head and the saved state of a head "
                        "that ran on this port ($CARME_STATE_DIR/heads/PORT.json), that head restarts")
    s.add_argument("--host", "--node-ip-address", dest="host",
                   help="address this node listens on and others reach it by (default: 127.0.0.1 "
                        "for a head; for a joining node, the address this machine reaches the head from)")
    s.add_argument("--num-cpus", type=float)
    s.add_argument("--num-gpus", type=float)
    s.add_argument("--resources", help="custom resources as JSON, e.g. '{\"custom\": 2}'")
    s.add_argument("--object-store-memory", type=int)
    s.add_argument("--metrics-port", type=int,
                   help="serve Prometheus metrics of the head node on this port (0: a free one), on --host")
    s.add_argument("--object-spilling-directory",
                   help="spill objects that do not fit in the store here (default: the session directory)")
    s.add_argument("--block", action="store_true", help="stay in the foreground until Ctrl-C")
    s.set_defaults(fn=cmd_start)
    s = sub.add_parser("stop", help="stop the clusters this machine's carme started")
    s.add_argument("--address")
    s.set_defaults(fn=cmd_stop)
    s = sub.add_parser("status", help="show the cluster's nodes, resources, tasks")
    s.add_argument("--address")
    s.set_defaults(fn=cmd_status)
    s = sub.add_parser("list", help="list nodes, tasks, actors, objects, workers or placement groups")
    s.add_argument("kind", choices=["nodes", "tasks", "actors", "objects", "workers", "placement-groups", "jobs"])
    s.add_argument("--format", choices=["table", "json"], default="table")
    s.add_argument("--address")
    s.set_defaults(fn=cmd_list)
    s = sub.add_parser("timeline", help="write the task timeline as Chrome trace JSON")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--address")
    s.set_defaults(fn=cmd_timeline)
    sub.add_parser("kernel", help="install the carme Jupyter kernel (carme kernel install --user)",
                   add_help=False)
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "kernel":
        return cmd_kernel(argparse.Namespace(), argv[1:])
    args = ap.parse_args(argv)
    try:
        code = int(args.fn(args))
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _reader_gone()
    except (OSError, ValueError) as e:  # ConnectionError, HeadStateError, a port in use
        print(f"carme {args.cmd}: {e}", file=sys.stderr)
        return 1


def _reader_gone() -> int:
    """The reader of stdout went away (`| head`): stop quietly, as Unix tools do.

    What is still buffered for stdout can never be written; pointing stdout at
    /dev/null keeps Python's final flush from printing an error at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
    return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
