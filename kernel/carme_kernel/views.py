"""Static views of the cluster for ``%carme``: readable HTML tables, plain text in a terminal.

Each function takes what carme's public and state APIs return (lists of dicts)
and returns a :class:`View`, an object IPython displays as HTML in a notebook
and as aligned text elsewhere. Nothing here talks to the cluster.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "View",
    "actors_view",
    "gpus_view",
    "nodes_view",
    "objects_view",
    "resources_text",
    "status_view",
    "table",
    "timeline_view",
]

Columns = Sequence[tuple[str, str]]  # (key, title)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_cell(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    return str(value)


class View:
    """A titled table: ``_repr_html_`` for notebooks, ``__repr__`` for terminals."""

    def __init__(
        self,
        title: str,
        columns: Columns,
        rows: Iterable[Mapping[str, Any]],
        note: str = "",
        hover: Mapping[str, str] | None = None,
    ) -> None:
        self.title = title
        self.columns = list(columns)
        self.rows = [dict(r) for r in rows]
        self.note = note
        self.hover = dict(hover or {})  # column key -> key of the row's value shown on hover

    def text_rows(self) -> list[list[str]]:
        return [[_cell(row.get(key)) for key, _ in self.columns] for row in self.rows]

    def _repr_html_(self) -> str:
        head = "".join(
            f"<th style='text-align:left'>{html.escape(t)}</th>" for _, t in self.columns
        )
        body = "".join(
            "<tr>"
            + "".join(
                f"<td style='text-align:left'{self._title(row, key)}>{html.escape(c)}</td>"
                for c, (key, _) in zip(cells, self.columns, strict=True)
            )
            + "</tr>"
            for row, cells in zip(self.rows, self.text_rows(), strict=True)
        )
        if not self.rows:
            body = f"<tr><td colspan='{len(self.columns)}'><i>none</i></td></tr>"
        note = f"<div style='opacity:0.7'>{html.escape(self.note)}</div>" if self.note else ""
        return (
            f"<div class='carme-view'><b>{html.escape(self.title)}</b>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}</div>"
        )

    def _title(self, row: Mapping[str, Any], key: str) -> str:
        source = self.hover.get(key)
        value = row.get(source) if source else None
        return f" title='{html.escape(_cell(value))}'" if value else ""

    def __repr__(self) -> str:
        rows = self.text_rows()
        titles = [t for _, t in self.columns]
        widths = [max([len(t)] + [len(r[i]) for r in rows]) for i, t in enumerate(titles)]
        lines = [self.title, "  ".join(t.ljust(w) for t, w in zip(titles, widths, strict=True))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows] or [
            "(none)"
        ]
        if self.note:
            lines.append(self.note)
        return "\n".join(line.rstrip() for line in lines)


def table(title: str, columns: Columns, rows: Iterable[Mapping[str, Any]], note: str = "") -> View:
    return View(title, columns, rows, note)


def _resources(node: Mapping[str, Any]) -> dict[str, Any]:
    res = node.get("Resources") or node.get("resources_total") or {}
    return {k: v for k, v in res.items() if not k.startswith("node:")}


def resources_text(resources: Mapping[str, Any]) -> str:
    """``{"CPU": 2.0, "memory": 2**31, "node:…": 1}`` → ``"CPU 2, memory 2.0 GiB"``."""
    parts = []
    for key, value in sorted(resources.items()):
        if key.startswith("node:"):
            continue
        if key in ("memory", "object_store_memory"):
            parts.append(f"{key} {_gib(value)}")
        else:
            parts.append(f"{key} {_cell(value)}")
    return ", ".join(parts)


def status_view(info: Mapping[str, Any]) -> View:
    """``info``: key → value lines (connected to, nodes, resources...)."""
    return View(
        "carme", [("key", ""), ("value", "")], [{"key": k, "value": v} for k, v in info.items()]
    )


def nodes_view(nodes: Iterable[Mapping[str, Any]]) -> View:
    rows = []
    for n in nodes:
        res = _resources(n)
        rows.append(
            {
                "id": n.get("NodeID", n.get("node_id")),
                "address": n.get("NodeManagerAddress", n.get("address")),
                "alive": "yes" if n.get("Alive", n.get("alive", True)) else "no",
                "cpus": res.get("CPU"),
                "gpus": res.get("GPU"),
                "memory": _gib(res.get("memory")),
                "other": {
                    k: v
                    for k, v in res.items()
                    if k not in ("CPU", "GPU", "memory", "object_store_memory")
                },
            }
        )
    cols = [
        ("id", "node id"),
        ("address", "address"),
        ("alive", "alive"),
        ("cpus", "CPUs"),
        ("gpus", "GPUs"),
        ("memory", "memory"),
        ("other", "other resources"),
    ]
    return View("Nodes", cols, rows)


def _gib(value: Any) -> str | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    return f"{value / (1 << 30):.1f} GiB"


def gpus_view(nodes: Iterable[Mapping[str, Any]]) -> View:
    rows = []
    for n in nodes:
        res = _resources(n)
        gpus = n.get("GPUs") or n.get("gpus")
        if isinstance(gpus, list) and gpus:
            for g in gpus:
                row = {"node": n.get("NodeID", n.get("node_id")), **g}
                row.setdefault("utilization", g.get("utilization_gpu"))
                for key in ("memory_used", "memory_total"):
                    row[key] = _gib(g.get(key)) or g.get(key)
                rows.append(row)
        elif res.get("GPU"):
            rows.append(
                {"node": n.get("NodeID", n.get("node_id")), "name": f"{res['GPU']:g} GPU(s)"}
            )
    cols = [
        ("node", "node"),
        ("index", "GPU"),
        ("name", "name"),
        ("utilization", "utilization %"),
        ("memory_used", "memory used"),
        ("memory_total", "memory total"),
    ]
    return View("GPUs", cols, rows, "" if rows else "no node of this cluster reports a GPU")


def objects_view(objects: Iterable[Mapping[str, Any]]) -> View:
    """Objects with the short form of their ids (``carme.notebook.short_object_id``; the
    full id on hover), carme's row keys or Ray's."""
    from carme.notebook import short_object_id

    cols = [
        ("short_id", "object id"),
        ("object_size", "size (bytes)"),
        ("reference", "reference"),
        ("task_status", "status"),
        ("call_site", "call site"),
        ("node", "node"),
    ]
    rows = [
        {
            **o,
            "short_id": short_object_id(str(o.get("object_id") or "")),
            "reference": o.get("reference_type") or o.get("location"),
            "node": o.get("node_ip_address") or o.get("ip"),
        }
        for o in objects
    ]
    return View("Objects", cols, rows, hover={"short_id": "object_id"})


def actors_view(actors: Iterable[Mapping[str, Any]]) -> View:
    cols = [
        ("actor_id", "actor id"),
        ("class_name", "class"),
        ("name", "name"),
        ("state", "state"),
        ("pid", "pid"),
        ("node_id", "node"),
    ]
    return View("Actors", cols, actors)


def timeline_view(events: Iterable[Mapping[str, Any]], limit: int = 50) -> View:
    """Chrome-trace events (``carme.timeline()``): the latest ``limit`` complete events."""
    spans = [e for e in events if e.get("ph") == "X"]
    spans.sort(key=lambda e: e.get("ts", 0))
    shown = spans[-limit:]
    rows = []
    for e in shown:
        args = e.get("args") or {}
        cell = args.get("cell") if isinstance(args, Mapping) else None
        when = e.get("ts")
        rows.append(
            {
                "name": e.get("name"),
                "cell": (f"[{cell.get('execution_count')}]" if isinstance(cell, Mapping) else cell),
                "start": time.strftime("%H:%M:%S", time.localtime(when / 1e6))
                if isinstance(when, (int, float))
                else None,
                "ms": round(float(e.get("dur", 0)) / 1000, 1),
                "where": f"{e.get('pid', '')}/{e.get('tid', '')}",
            }
        )
    note = f"showing the latest {len(shown)} of {len(spans)} spans; %carme timeline FILE writes Chrome trace JSON for Perfetto"
    return View(
        "Timeline",
        [
            ("name", "task"),
            ("cell", "cell"),
            ("start", "start"),
            ("ms", "ms"),
            ("where", "process/thread"),
        ],
        rows,
        note,
    )
