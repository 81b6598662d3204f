"""Validate ``%%remote`` options into a :class:`RemoteSpec` (pure, no cluster needed).

Theory of operation
-------------------
``magics`` parses the option line with IPython's ``magic_arguments`` into an
``argparse.Namespace``; :func:`build_spec` checks each value and the
combinations, and turns them into the keyword arguments of carme's
``.options()``. :func:`check_fits` compares the requested resources with the
nodes ``carme.nodes()`` reports, and :func:`resolve_node` turns a (prefix of a)
node id into the node's id. Every misuse raises ``UsageError`` saying what was
expected, what came, and how to fix it.
"""

from __future__ import annotations

import argparse
import json
import keyword
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from IPython.core.error import UsageError

__all__ = ["RemoteSpec", "build_spec", "check_fits", "parse_bytes", "parse_names", "resolve_node"]

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(text: str) -> int:
    """``"1500000"``, ``"512M"``, ``"2GiB"``, ``"1.5g"`` → bytes (argparse ``type=``)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(
            f"expected a number of bytes such as 2000000000 or 2G, not {text!r}"
        )
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_names(text: str) -> tuple[str, ...]:
    """``"a,b, c"`` → ``("a", "b", "c")``; each must be a Python identifier."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        if not name.isidentifier() or keyword.iskeyword(name):
            raise argparse.ArgumentTypeError(
                f"expected comma-separated variable names such as a,b; {name!r} is not a name"
            )
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated variable names such as a,b")
    return names


@dataclass(frozen=True)
class RemoteSpec:
    """What a ``%%remote`` cell asks for, validated."""

    num_cpus: float | None = None
    num_gpus: float | None = None
    memory: int | None = None
    resources: dict[str, float] = field(default_factory=dict)
    node: str | None = None
    retries: int | None = None
    timeout: float | None = None
    name: str | None = None
    push: tuple[str, ...] = ()
    pull: tuple[str, ...] = ()
    is_async: bool = False
    out: str = "_remote"
    actor: str | None = None
    all_nodes: bool = False

    def resource_options(self) -> dict[str, Any]:
        """The resource keyword arguments of ``.options()`` (for a task or an actor)."""
        opts: dict[str, Any] = {}
        if self.num_cpus is not None:
            opts["num_cpus"] = self.num_cpus
        if self.num_gpus is not None:
            opts["num_gpus"] = self.num_gpus
        if self.memory is not None:
            opts["memory"] = self.memory
        if self.resources:
            opts["resources"] = dict(self.resources)
        return opts

    def task_options(self) -> dict[str, Any]:
        """Keyword arguments of a task's ``.options()`` (without the node strategy)."""
        opts = self.resource_options()
        if self.retries is not None:
            opts["max_retries"] = self.retries
        if self.name is not None:
            opts["name"] = self.name
        return opts

    def demand(self) -> dict[str, float]:
        """Resources one node must have for the cell, in ``carme.nodes()`` units."""
        need: dict[str, float] = {"CPU": 1.0 if self.num_cpus is None else self.num_cpus}
        if self.num_gpus:
            need["GPU"] = self.num_gpus
        if self.memory:
            need["memory"] = float(self.memory)
        need.update(self.resources)
        return {k: v for k, v in need.items() if v > 0}


def _number(value: float | int | None, option: str, *, integer: bool = False) -> None:
    if value is None:
        return
    if (isinstance(value, float) and not math.isfinite(value)) or value < 0:
        raise UsageError(f"{option} expects a number >= 0, not {value!r}")
    if integer and int(value) != value:
        raise UsageError(f"{option} expects a whole number, not {value!r}")


def _resources(text: str | None) -> dict[str, float]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"--resources expects a JSON object such as '{{\"accel\": 1}}', not {text!r} "
            f"({exc.msg} at column {exc.colno}); quote it with single quotes in the magic line"
        ) from None
    if not isinstance(value, dict):
        raise UsageError(
            f"--resources expects a JSON object mapping resource names to amounts, "
            f"such as '{{\"accel\": 1}}', not {type(value).__name__} {text!r}"
        )
    out: dict[str, float] = {}
    for key, amount in value.items():
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
            raise UsageError(
                f"--resources: the amount of {key!r} must be a number >= 0, not {amount!r}"
            )
        if key in ("CPU", "GPU", "memory"):
            flag = {"CPU": "--cpus", "GPU": "--gpus", "memory": "--memory"}[key]
            raise UsageError(f"--resources: ask for {key} with {flag}, not in --resources")
        out[str(key)] = float(amount)
    return out


def build_spec(args: argparse.Namespace) -> RemoteSpec:
    """Check parsed ``%%remote`` options and their combinations."""
    _number(args.cpus, "--cpus")
    _number(args.gpus, "--gpus")
    _number(args.retries, "--retries", integer=True)
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"--timeout expects a number of seconds > 0, not {args.timeout!r}")
    out = args.out
    if not out.isidentifier() or keyword.iskeyword(out):
        raise UsageError(f"-o expects a variable name for the ObjectRef, not {out!r}")
    push = tuple(args.push or ())
    pull = tuple(args.pull or ())
    if args.all_nodes:
        for flag, bad in (("--node", args.node), ("--actor", args.actor), ("--pull", pull)):
            if bad:
                raise UsageError(
                    f"--all-nodes runs the cell once per node and cannot be combined with {flag}; "
                    "drop one of them"
                )
    if args.async_ and pull:
        raise UsageError(
            "--pull needs the cell to finish, --async returns at once; drop --async, or return "
            f"the values from the cell and read them with carme.get({out})"
        )
    if args.actor is not None:
        if not args.actor.strip() or "/" in args.actor:
            raise UsageError(
                f"--actor expects a namespace name such as 'model', not {args.actor!r}"
            )
        if args.retries is not None:
            raise UsageError(
                "--retries re-runs a task whose worker died; an --actor namespace would lose its "
                "variables on a restart, so it takes no --retries"
            )
    if args.name is not None and not args.name.strip():
        raise UsageError("--name expects a non-empty label for the timeline")
    return RemoteSpec(
        num_cpus=args.cpus,
        num_gpus=args.gpus,
        memory=args.memory,
        resources=_resources(args.resources),
        node=args.node,
        retries=args.retries,
        timeout=args.timeout,
        name=args.name,
        push=push,
        pull=pull,
        is_async=bool(args.async_),
        out=out,
        actor=args.actor,
        all_nodes=bool(args.all_nodes),
    )


def _node_id(node: Mapping[str, Any]) -> str:
    return str(node.get("NodeID") or node.get("node_id") or "")


def _alive(nodes: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [n for n in nodes if n.get("Alive", n.get("alive", True))]


def resolve_node(node: str, nodes: Iterable[Mapping[str, Any]]) -> str:
    """Return the id of the live node whose id is ``node`` or starts with it."""
    alive = _alive(nodes)
    ids = [_node_id(n) for n in alive]
    if node in ids:
        return node
    matches = [i for i in ids if i.startswith(node)]
    if len(matches) == 1:
        return matches[0]
    listing = ", ".join(ids) or "none"
    if not matches:
        raise UsageError(
            f"--node {node}: no live node has this id; live nodes: {listing} (see %carme nodes)"
        )
    raise UsageError(
        f"--node {node}: the prefix matches several nodes ({', '.join(matches)}); give more of the id"
    )


def _amount(key: str, value: float) -> str:
    if key == "memory":
        return f"memory={value / (1 << 30):.2f}GiB"
    return f"{key}={value:g}"


def check_fits(
    spec: RemoteSpec, nodes: Iterable[Mapping[str, Any]], node: str | None = None
) -> None:
    """Raise UsageError if no live node (or not ``node``) has the resources the cell asks for."""
    alive = _alive(nodes)
    if node is not None:
        alive = [n for n in alive if _node_id(n) == node]
    need = spec.demand()

    def fits(n: Mapping[str, Any]) -> bool:
        have = n.get("Resources") or n.get("resources_total") or {}
        return all(float(have.get(k, 0)) >= v for k, v in need.items())

    if any(fits(n) for n in alive):
        return
    wanted = ", ".join(_amount(k, v) for k, v in sorted(need.items()))
    have = "; ".join(
        f"{_node_id(n)[:12]}: "
        + ", ".join(
            _amount(k, float(v))
            for k, v in sorted((n.get("Resources") or n.get("resources_total") or {}).items())
            if not k.startswith("node:") and k != "object_store_memory"
        )
        for n in alive
    )
    where = f"node {node} does not have" if node else "no node has"
    raise UsageError(
        f"{where} the resources this cell asks for ({wanted}); the cluster has {have or 'no live nodes'}. "
        "Ask for less (--cpus/--gpus/--memory/--resources), pick another --node, or add a node "
        "that has them"
    )
