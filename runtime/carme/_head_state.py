"""What a cluster head keeps on disk so that a restarted head picks up where it stopped.

Theory of operation. A head started with `carme start --head` writes one JSON file,
`<state dir>/heads/<port>.json` (state dir: $CARME_STATE_DIR, default /tmp/carme-<uid>;
the directory is 0700, the file 0600): the cluster token, the head's framed and gRPC
ports, its node id and job id, the node registry (each node's static facts), the named
and detached actors with the node each runs on, placement groups and jobs. It is written
atomically (a temporary file in the same directory, fsync, rename), only when what it
says changed; per-heartbeat numbers (available resources, metrics) are never in it.

`carme start --head --port P` finds the file of port P with no live head behind it and
starts the head again with the same token, ports and node id: live nodes' heartbeats
reach it again at the same gRPC address, drivers' connections to the same framed
address, and it answers for the same node id. What the file says is checked field by
field (`decode`); a file that does not parse gets a `HeadStateError` naming the file and
the field, never a crash deep in the head.

The rest is pure: `snapshot` builds the record from the head's tables, `merge_node`
folds a node's registration into the registry entry the head already had, and
`restored_actors` says how each persisted actor comes back (on another node: a record
that redirects there; on the head itself: dead, since its worker died with the head).
`restore_placement_groups` puts the groups back into the head's scheduler (their bundles
placed again). `head_unreachable` is what nodes and drivers say while the head does not answer.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ._files import write_private

FORMAT = 1
# the fields of a node registry entry, with their types (all from the node's registration)
NODE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "host": str, "address": str, "grpc_address": str, "resources": dict, "labels": dict,
    "store_file": str, "object_store_memory": int, "is_head": bool, "start_time": (int, float),
}
ACTOR_FIELDS: dict[str, type | tuple[type, ...]] = {
    "actor_id": str, "name": str, "namespace": str, "node_id": str, "detached": bool,
    "spec": dict,
}
PG_FIELDS: dict[str, type | tuple[type, ...]] = {
    "placement_group_id": str, "state": str, "strategy": str, "bundles": dict, "name": str,
}
# what of an actor's spec a restored record keeps (enough for handles and rows)
ACTOR_SPEC_KEYS = ("class_name", "methods", "is_async", "max_task_retries", "method_options",
                   "max_concurrency", "name", "namespace", "lifetime", "max_restarts")


class HeadStateError(ValueError):
    """A head state file that cannot be used; the message names the file and the field."""


@dataclass
class HeadRecord:
    port: int  # the framed (driver and node) TCP port: the cluster's address
    grpc_port: int
    token: str  # hex
    node_id: str  # the head node's id, kept across restarts
    job_id: str
    host: str = "127.0.0.1"
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)  # node id -> NODE_FIELDS
    actors: list[dict[str, Any]] = field(default_factory=list)  # ACTOR_FIELDS
    placement_groups: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    format: int = FORMAT


# ---------------------------------------------------------------------- encoding
def encode(rec: HeadRecord) -> str:
    return json.dumps(asdict(rec), sort_keys=True, default=str)


def _need(where: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind in (int, (int, float)))
    if not ok:
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ValueError(f"{where} must be {want}, not {type(value).__name__} {str(value)[:60]!r}")
    return value


def _port(where: str, value: Any) -> int:
    _need(where, value, int)
    if not 0 < value < 65536:
        raise ValueError(f"{where} must be a port in 1..65535, not {value}")
    return int(value)


def _hex(where: str, value: Any, min_len: int = 2) -> str:
    _need(where, value, str)
    try:
        bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{where} must be hex digits, not {value[:40]!r}") from None
    if len(value) < min_len:
        raise ValueError(f"{where} is too short ({len(value)} hex digits, at least {min_len})")
    return value


def _resources(where: str, value: Any) -> dict:
    _need(where, value, dict)
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{where}[{k!r}] must be a finite number >= 0, not {v!r}")
    return value


def _check_node(where: str, entry: Any) -> dict:
    _need(where, entry, dict)
    for key, kind in NODE_FIELDS.items():
        if key not in entry:
            raise ValueError(f"{where} has no {key!r}")
        _need(f"{where}.{key}", entry[key], kind)
    _resources(f"{where}.resources", entry["resources"])
    return entry


def _check_rows(where: str, rows: Any, fields: Mapping[str, type | tuple[type, ...]] | None) -> list:
    _need(where, rows, list)
    for i, row in enumerate(rows):
        _need(f"{where}[{i}]", row, dict)
        for key, kind in (fields or {}).items():
            if key not in row:
                raise ValueError(f"{where}[{i}] has no {key!r}")
            _need(f"{where}[{i}].{key}", row[key], kind)
    return rows


def _check_pgs(rows: Any) -> list:
    _check_rows("placement_groups", rows, PG_FIELDS)
    for i, pg in enumerate(rows):
        for k, shape in pg["bundles"].items():
            _need(f"placement_groups[{i}].bundles key", k, str)
            if not k.isdigit():
                raise ValueError(f"placement_groups[{i}].bundles key must be a bundle index, not {k[:20]!r}")
            _resources(f"placement_groups[{i}].bundles[{k}]", shape)
    try:  # what the head's scheduler will be given: its own checks, on a scratch one
        from ._scheduler import ClusterScheduler
        restore_placement_groups(ClusterScheduler(), HeadRecord(1, 1, "", "", "", placement_groups=rows))
    except ValueError as e:
        raise ValueError(f"placement_groups: {e}") from None
    return rows


def decode(text: str | bytes, path: str) -> HeadRecord:
    """A head record from the text of its file; HeadStateError naming `path` and the field
    that is wrong (and how to go on) if anything does not check."""
    try:
        data = json.loads(text)
        _need("the file", data, dict)
        if data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, this carme reads format {FORMAT}")
        for key, entry in _need("nodes", data.get("nodes"), dict).items():
            _hex(f"nodes key {key[:20]!r}", key)
            _check_node(f"nodes[{key[:12]}]", entry)
        _check_rows("actors", data.get("actors"), ACTOR_FIELDS)
        for i, a in enumerate(data["actors"]):
            _hex(f"actors[{i}].actor_id", a["actor_id"])
        return HeadRecord(
            port=_port("port", data.get("port")), grpc_port=_port("grpc_port", data.get("grpc_port")),
            token=_hex("token", data.get("token"), 32), node_id=_hex("node_id", data.get("node_id")),
            job_id=_need("job_id", data.get("job_id"), str), host=_need("host", data.get("host"), str),
            nodes=data["nodes"], actors=data["actors"],
            placement_groups=_check_pgs(data.get("placement_groups")),
            jobs=_check_rows("jobs", data.get("jobs"), None))
    except ValueError as e:  # JSONDecodeError included
        raise HeadStateError(
            f"the head state file {path} cannot be used: {e}. Move it away to start a new "
            f"cluster on that port (its nodes and detached actors are then forgotten).") from None


# ---------------------------------------------------------------------- files
def state_file(state_dir: str, port: int | str) -> str:
    return os.path.join(state_dir, "heads", f"{port}.json")


def save(path: str, rec: HeadRecord) -> None:
    """Write atomically: readers see the old file or the new one, never a part."""
    write_atomic(path, encode(rec))


def write_atomic(path: str, text: str) -> None:
    d = os.path.dirname(path)
    os.makedirs(d, mode=0o700, exist_ok=True)
    os.chmod(d, 0o700)
    write_private(path, text, durable=True)


def load(path: str) -> HeadRecord | None:
    """The record in `path`, None if there is none; HeadStateError if it cannot be used."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise HeadStateError(f"the head state file {path} cannot be read: {e.strerror}") from None
    return decode(text, path)


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------------- pure logic
def head_unreachable(address: str, seconds: float | None = None) -> str:
    """What nodes and drivers say of a head that does not answer (rows, errors)."""
    port = address.rsplit(":", 1)[-1]
    since = "" if seconds is None else f" for {seconds:.0f} s"
    return (f"the cluster head at {address} is unreachable (it has not answered{since}); its nodes "
            f"keep retrying and serving local work. Check that it runs (`carme status --address "
            f"{address}`), or start it again on the same port (`carme start --head --port {port}`): "
            f"nodes and drivers find it again within seconds")


def node_entry(info: Mapping[str, Any]) -> dict[str, Any]:
    """A registry entry from a node's registration (its fields as a mapping)."""
    return {k: info[k] for k in NODE_FIELDS}


def merge_node(known: Mapping[str, Any] | None, reported: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """A node registers (again): its entry, and what happened — "new" (never seen),
    "rejoined" (the same node, same start: it lived through a head restart), or
    "restarted" (same id, started anew: its objects and actors of before are gone).
    What the node reports now wins: it knows its addresses and resources best."""
    entry = node_entry(reported)
    if known is None:
        return entry, "new"
    if known.get("start_time") == entry["start_time"]:
        return entry, "rejoined"
    return entry, "restarted"


def snapshot(base: HeadRecord, nodes: Mapping[str, Mapping[str, Any]],
             actors: Iterable[Mapping[str, Any]], placement_groups: list[dict[str, Any]],
             jobs: list[dict[str, Any]]) -> HeadRecord:
    """The record to write: `base`'s identity (token, ports, ids) with the head's tables now.
    `nodes`: live nodes' entries; `actors`: named or detached live actors, as ACTOR_FIELDS."""
    return HeadRecord(port=base.port, grpc_port=base.grpc_port, token=base.token,
                      node_id=base.node_id, job_id=base.job_id, host=base.host,
                      nodes={nid: dict(e) for nid, e in sorted(nodes.items())},
                      actors=sorted((dict(a) for a in actors), key=lambda a: a["actor_id"]),
                      placement_groups=placement_groups, jobs=jobs)


def actor_entry(actor_id: bytes, spec: Mapping[str, Any], name: str, namespace: str,
                node_id: str) -> dict[str, Any]:
    return {"actor_id": actor_id.hex(), "name": name, "namespace": namespace, "node_id": node_id,
            "detached": spec.get("lifetime") == "detached",
            "spec": {k: spec.get(k) for k in ACTOR_SPEC_KEYS if k in spec}}


@dataclass
class RestoredActor:
    actor_id: bytes
    spec: dict[str, Any]
    remote_node: str | None  # where it runs; None: it ran on the head and is dead
    death: str | None


def restored_actors(rec: HeadRecord) -> list[RestoredActor]:
    """How the persisted actors come back in a restarted head's directory."""
    out = []
    for a in rec.actors:
        spec = {**a["spec"], "name": a["name"] or None, "namespace": a["namespace"]}
        if a["node_id"] == rec.node_id:
            out.append(RestoredActor(bytes.fromhex(a["actor_id"]), spec, None,
                                     "the actor ran on the head node, whose processes ended when "
                                     "the head stopped (it was killed or restarted)"))
        else:
            out.append(RestoredActor(bytes.fromhex(a["actor_id"]), spec, a["node_id"], None))
    return out


def restore_actors(directory: Any, rec: HeadRecord) -> None:
    """Put a restarted head's persisted actors into its (empty) `ActorDirectory`: one on
    another node redirects there (never restarted by this head: the class itself was not
    persisted; its own node still restarts its worker); one that ran on the head is dead,
    with the reason, and its name is free."""
    from .exceptions import ActorDiedError
    for a in restored_actors(rec):
        actor, _ = directory.create(a.actor_id, a.spec, None)
        actor.no_restart = True
        if a.remote_node is not None:
            actor.state = "ALIVE"
            actor.remote_node = a.remote_node
        else:
            directory.dead(actor, ActorDiedError(a.death))


def restore_placement_groups(scheduler: Any, rec: HeadRecord) -> list[str]:
    """Put a restarted head's placement groups back into its `ClusterScheduler`, by id,
    name, strategy and bundles; their bundles are placed again (PENDING until nodes
    that fit are back in the view, perhaps other nodes than before). Removed groups stay
    out. Returns the ids restored."""
    out = []
    for pg in rec.placement_groups:
        if pg["state"] == "REMOVED":
            continue
        bundles = [dict(pg["bundles"][k]) for k in sorted(pg["bundles"], key=int)]
        scheduler.create_placement_group(pg["placement_group_id"], bundles, pg["strategy"], pg["name"])
        out.append(pg["placement_group_id"])
    return out


def persisted_actors(directory: Any, head_node_id: str) -> list[dict[str, Any]]:
    """The live named or detached actors of the head's `ActorDirectory`, as ACTOR_FIELDS."""
    out = []
    for a in directory.actors.values():
        if a.state == "DEAD" or not (a.spec.get("name") or a.spec.get("lifetime") == "detached"):
            continue
        ns, name = directory.name_of(a)
        out.append(actor_entry(a.actor_id, a.spec, name, ns, a.remote_node or head_node_id))
    return out


__all__ = ["HeadRecord", "HeadStateError", "RestoredActor", "actor_entry", "decode", "encode",
           "head_unreachable", "load", "merge_node", "node_entry", "persisted_actors", "remove",
           "restore_actors", "restore_placement_groups", "restored_actors", "save", "snapshot",
           "state_file", "write_atomic"]
