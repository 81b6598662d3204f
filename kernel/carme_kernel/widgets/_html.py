"""Static HTML of each widget model: what nbconvert and notebook viewers show.

Pure functions of the models in ``_messages.py``; inline styles only (no
scripts), so the output survives sanitizers. The live views draw the same
information in JavaScript.
"""

from __future__ import annotations

import html
from collections.abc import Iterable

from ._data import color_for
from ._messages import (
    ClusterModel,
    GpuModel,
    ObjectsModel,
    ProgressModel,
    ResourceUse,
    TimelineModel,
)

_BOX = "font-family:var(--jp-ui-font-family,sans-serif);font-size:12px;line-height:1.4;margin:4px 0"
_TABLE = "border-collapse:collapse;margin:4px 0"
_TD = "padding:2px 8px;text-align:left;border-bottom:1px solid #ddd"


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value))


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def fmt_num(x: float | None, unit: str = "") -> str:
    if x is None:
        return "–"
    return f"{x:g}{unit}" if float(x).is_integer() else f"{x:.1f}{unit}"


def fmt_dur_us(us: float) -> str:
    if us >= 1e6:
        return f"{us / 1e6:.2f} s"
    if us >= 1e3:
        return f"{us / 1e3:.1f} ms"
    return f"{us:.0f} µs"


def bar(used: float | None, total: float | None, text: str = "", color: str = "#4c8bf5") -> str:
    """A small horizontal meter (inline-block divs)."""
    frac = 0.0
    if used is not None and total:
        frac = max(0.0, min(1.0, used / total))
    return (
        "<span style='display:inline-block;width:120px;height:10px;background:#e6e6e6;"
        f"border-radius:2px;vertical-align:middle'><span style='display:block;height:10px;"
        f"width:{frac * 100:.1f}%;background:{color};border-radius:2px'></span></span>"
        f" <span>{esc(text)}</span>"
    )


def table(head: Iterable[str], rows: Iterable[Iterable[str]], raw: bool = False) -> str:
    """Cells are escaped unless ``raw`` (then the caller escaped them)."""
    th = "".join(f"<th style='{_TD};font-weight:600'>{esc(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td style='{_TD}'>{c if raw else esc(c)}</td>" for c in r) + "</tr>"
        for r in rows
    )
    return f"<table style='{_TABLE}'><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def box(title: str, status: str, inner: str) -> str:
    badge = f" <span style='color:#888'>({esc(status)})</span>" if status else ""
    return f"<div class='carme-static' style='{_BOX}'><b>{esc(title)}</b>{badge}{inner}</div>"


def notes_html(notes: list[str]) -> str:
    """The engine and its degradations, under a widget (nothing for a full engine)."""
    if not notes:
        return ""
    return f"<p class='carme-notes' style='color:#888'>{esc(' · '.join(notes))}</p>"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k.lower()} {v}" for k, v in counts.items()) or "–"


def fmt_resource(r: ResourceUse) -> str:
    """``used/total``; memory-like resources in bytes."""
    f = fmt_bytes if "memory" in r["name"] else fmt_num
    return f"{f(r['used'])}/{f(r['total'])}"


def _resources(res: list[ResourceUse]) -> str:
    return ", ".join(f"{r['name']} {fmt_resource(r)}" for r in res)


def cluster_html(m: ClusterModel, status: str = "") -> str:
    if not m:
        return box("carme cluster", status or "not connected", "<p>no data yet</p>")
    t = m["totals"]
    head = [
        "node",
        "CPU",
        "memory",
        "object store",
        "GPUs",
        "resources used/total",
        "workers",
        "tasks",
    ]
    rows = []
    for n in m["nodes"]:
        cpu = bar(
            n["cpu_percent"], 100.0, f"{fmt_num(n['cpu_percent'])}% of {n['num_cpus'] or '?'}"
        )
        mem = bar(
            n["memory_used"],
            n["memory_total"],
            f"{fmt_bytes(n['memory_used'])} / {fmt_bytes(n['memory_total'])}",
        )
        store = bar(
            n["store_used"],
            n["store_capacity"],
            f"{fmt_bytes(n['store_used'])} / {fmt_bytes(n['store_capacity'])}",
        )
        gpus = (
            "<br>".join(
                bar(
                    g["utilization"],
                    100.0,
                    f"{g['index']}: {fmt_num(g['utilization'])}%",
                    "#76b900",
                )
                for g in n["gpus"]
            )
            or "none"
        )
        head_mark = " ★" if n["is_head"] else ""
        rows.append(
            [
                esc(n["name"] + head_mark)
                + f"<br><span style='color:#888'>{esc(n['state'])}</span>",
                cpu,
                mem,
                store,
                gpus,
                esc(_resources(n["resources"])),
                esc(_counts(n["workers"])),
                esc(_counts(n["tasks"])),
            ]
        )
    summary = (
        f"<p>{t['alive']} of {t['nodes']} nodes alive · {t['workers']} workers · "
        f"tasks: {esc(_counts(t['tasks']))} · {esc(_resources(t['resources']))}</p>"
    )
    return box("carme cluster", status, summary + table(head, rows, raw=True))


def gpu_html(m: GpuModel, status: str = "") -> str:
    if not m:
        return box("carme GPUs", status or "not connected", "<p>no data yet</p>")
    if not m["gpu_count"]:
        names = ", ".join(n["name"] for n in m["nodes"]) or "no nodes"
        return box("carme GPUs", status, f"<p>No GPUs in this cluster ({esc(names)}).</p>")
    head = [
        "node",
        "GPU",
        "utilization",
        "memory",
        "temperature",
        "power",
        f"last {m['history_s']:.0f} s",
    ]
    rows = []
    for n in m["nodes"]:
        for g in n["gpus"]:
            spark = _sparkline([u for _, u, _ in g["history"]])
            rows.append(
                [
                    esc(n["name"]),
                    esc(f"{g['index']}: {g['name']}"),
                    bar(g["utilization"], 100.0, f"{fmt_num(g['utilization'])}%", "#76b900"),
                    bar(
                        g["memory_used"],
                        g["memory_total"],
                        f"{fmt_bytes(g['memory_used'])} / {fmt_bytes(g['memory_total'])}",
                    ),
                    esc(fmt_num(g["temperature"], " °C")),
                    esc(fmt_num(g["power_watts"], " W")),
                    spark,
                ]
            )
    return box("carme GPUs", status, table(head, rows, raw=True))


def _sparkline(values: list[float | None], w: int = 120, h: int = 20) -> str:
    pts = [v for v in values if v is not None]
    if len(pts) < 2:
        return ""
    step = w / (len(pts) - 1)
    path = " ".join(f"{i * step:.1f},{h - (v / 100.0) * h:.1f}" for i, v in enumerate(pts))
    return (
        f"<svg width='{w}' height='{h}'><polyline fill='none' stroke='#76b900' "
        f"stroke-width='1.5' points='{path}'/></svg>"
    )


def objects_html(m: ObjectsModel, status: str = "") -> str:
    if not m:
        return box("carme object store", status or "not connected", "<p>no data yet</p>")
    stores = table(
        ["node", "store used / capacity", "spilled to disk", "objects"],
        [
            [
                esc(s["name"]),
                bar(
                    s["used"], s["capacity"], f"{fmt_bytes(s['used'])} / {fmt_bytes(s['capacity'])}"
                ),
                esc(fmt_bytes(s.get("spilled", 0))),
                esc(s["objects"]),
            ]
            for s in m["stores"]
        ],
        raw=True,
    )
    shown = m["objects"]
    rows = [
        [
            f"<span title='{esc(o['object_id'])}'>{esc(o['short_id'])}</span>",
            *(
                esc(c)
                for c in (
                    fmt_bytes(o["size"]),
                    o["type"],
                    o["owner"],
                    o["node_id"][:8],
                    fmt_num(o["references"]),
                    o["holders"],
                    "yes" if o["spilled"] else "no",
                    o["status"],
                )
            ),
        ]
        for o in shown
    ]
    more = m["total_objects"] - len(shown)
    note = f"<p style='color:#888'>{more} more not shown</p>" if more > 0 else ""
    summary = (
        f"<p>{m['total_objects']} objects · {fmt_bytes(m['total_size'])} in all · "
        f"{m['spilled_objects']} spilled · sorted by {esc(m['sort_by'])}</p>"
    )
    objs = table(
        ["object", "size", "type", "owner", "node", "refs", "held by", "spilled", "status"],
        rows,
        raw=True,
    )
    return box("carme object store", status, summary + stores + objs + note)


def timeline_html(m: TimelineModel, status: str = "", width: int = 800) -> str:
    if not m:
        return box("carme timeline", status or "not connected", "<p>no data yet</p>")
    if not m["spans"]:
        return box("carme timeline", status, "<p>No tasks have run yet.</p>")
    lane_h, label_w = 18, 220
    span = max(m["t1_us"] - m["t0_us"], 1.0)
    scale = (width - label_w) / span
    parts = []
    for ln in m["lanes"]:
        y = ln["index"] * lane_h
        parts.append(f"<text x='2' y='{y + 13}' font-size='11'>{esc(ln['label'][:34])}</text>")
    for s in m["spans"]:
        x = label_w + (s["start_us"] - m["t0_us"]) * scale
        w = max(s["dur_us"] * scale, 1.0)
        y = s["lane"] * lane_h + 2
        color = m["colors"].get(s["name"]) or color_for(s["name"])
        stroke = " stroke='#d00' stroke-width='1.5'" if s["state"] == "FAILED" else ""
        tip = f"{s['name']} · {fmt_dur_us(s['dur_us'])} · {s['state']}" + (
            f" · {s['cell']}" if s["cell"] else ""
        )
        parts.append(
            f"<rect x='{x:.1f}' y='{y}' width='{w:.1f}' height='{lane_h - 4}' "
            f"fill='{color}'{stroke}><title>{esc(tip)}</title></rect>"
        )
    height = len(m["lanes"]) * lane_h + 4
    legend = " ".join(
        f"<span style='display:inline-block;width:10px;height:10px;background:{c}'></span> {esc(n)}"
        for n, c in list(m["colors"].items())[:20]
    )
    svg = f"<svg width='{width}' height='{height}' style='display:block'>{''.join(parts)}</svg>"
    info = (
        f"<p>{len(m['spans'])} spans on {len(m['lanes'])} workers over "
        f"{fmt_dur_us(span)}"
        + (f" ({m['dropped']} older not shown)" if m["dropped"] else "")
        + "</p>"
    )
    return box("carme timeline", status, info + svg + f"<p>{legend}</p>")


def progress_html(m: ProgressModel, status: str = "") -> str:
    if not m:
        return box("carme progress", status, "")
    text = (
        f"{m['done']}/{m['total']} done"
        + (f", {m['failed']} failed" if m["failed"] else "")
        + f" · {m['rate']:.1f}/s · {m['elapsed_s']:.1f} s"
    )
    color = "#d9534f" if m["failed"] else "#5cb85c"
    label = f"{esc(m['label'])} " if m["label"] else ""
    return f"<div class='carme-static' style='{_BOX}'>{label}{bar(m['done'], m['total'] or 1, text, color)}</div>"
