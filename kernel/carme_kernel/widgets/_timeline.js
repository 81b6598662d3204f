// TimelineView: bars per node and worker on a canvas; wheel zooms, drag pans, hover
// tells name, duration, cell and status; "live" follows new work; "export" downloads
// Chrome trace JSON (open it in https://ui.perfetto.dev). Helpers come from _common.js.
/** @typedef {import("./_messages").TimelineModel} TimelineModel */
/** @typedef {import("./_messages").Span} Span */

const LANE_H = 20, LABEL_W = 200, AXIS_H = 18;

/** @param {TimelineModel} m */
function spanEnd(m, /** @type {Span} */ s) {
  // A span still running reaches to the model's last update.
  const end = s.start_us + s.dur_us;
  return s.state === "RUNNING" ? Math.max(end, m.updated_ms * 1000) : end;
}

/** @param {TimelineModel} m */
function toChromeTrace(m) {
  /** @type {Record<string, number>} */
  const pids = {};
  /** @type {object[]} */
  const out = [];
  for (const ln of m.lanes) {
    if (!(ln.node in pids)) {
      pids[ln.node] = Object.keys(pids).length + 1;
      out.push({ name: "process_name", ph: "M", pid: pids[ln.node], args: { name: ln.node } });
    }
    out.push({ name: "thread_name", ph: "M", pid: pids[ln.node], tid: ln.index + 1, args: { name: ln.worker } });
  }
  for (const s of m.spans) {
    const ln = m.lanes[s.lane];
    out.push({ name: s.name, cat: s.actor ? "actor_task" : "task", ph: "X", pid: pids[ln.node], tid: ln.index + 1,
      ts: s.start_us, dur: spanEnd(m, s) - s.start_us, args: { task_id: s.task_id, state: s.state, cell: s.cell, error: s.error } });
  }
  return out;
}

/** @param {import("./_messages").AnyModel<TimelineModel>} model @param {HTMLElement} el */
function timeline(model, el) {
  const live = /** @type {HTMLInputElement} */ (h("input", { type: "checkbox" }));
  live.checked = model.get("live") !== false;
  const liveBox = h("label", { class: "carme-btn", title: "follow new work" }, live, " live");
  const reset = h("button", { class: "carme-btn", title: "show everything" }, "fit");
  const exportBtn = h("button", { class: "carme-btn", title: "download Chrome trace JSON for Perfetto" }, "export");
  const canvas = /** @type {HTMLCanvasElement} */ (h("canvas", { class: "carme-timeline-canvas" }));
  const info = h("div", { class: "carme-muted" });
  const tip = h("div", { class: "carme-tip" });
  tip.style.display = "none";
  const legend = h("div", { class: "carme-legend" });
  /** @type {TimelineModel | null} */
  let current = null;
  let v0 = 0, v1 = 0; // visible window, µs
  let fitted = false;

  const setLive = (/** @type {boolean} */ on) => {
    live.checked = on;
    send(model, { type: "live", live: on });
  };
  live.addEventListener("change", () => setLive(live.checked));

  const width = () => Math.max(400, (el.clientWidth || 800) - 4);
  const xOf = (/** @type {number} */ t) => LABEL_W + ((t - v0) / Math.max(v1 - v0, 1)) * (width() - LABEL_W);
  const tOf = (/** @type {number} */ x) => v0 + ((x - LABEL_W) / (width() - LABEL_W)) * (v1 - v0);

  const fit = () => {
    if (!current) return;
    const end = Math.max(current.t1_us, ...current.spans.map((s) => spanEnd(/** @type {TimelineModel} */ (current), s)));
    const pad = Math.max((end - current.t0_us) * 0.02, 1000);
    v0 = current.t0_us - pad;
    v1 = end + pad;
  };
  reset.addEventListener("click", () => { fit(); paint(); });
  exportBtn.addEventListener("click", () => {
    if (!current) return;
    const blob = new Blob([JSON.stringify(toChromeTrace(current))], { type: "application/json" });
    const a = /** @type {HTMLAnchorElement} */ (h("a", { download: "carme-timeline.json" }));
    a.href = URL.createObjectURL(blob);
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  });

  function paint() {
    const m = current;
    const ctx = canvas.getContext("2d");
    if (!m || !ctx) return;
    const w = width();
    const hgt = AXIS_H + Math.max(1, m.lanes.length) * LANE_H + 2;
    const dpr = window.devicePixelRatio || 1;
    canvas.width = w * dpr; canvas.height = hgt * dpr;
    canvas.style.width = `${w}px`; canvas.style.height = `${hgt}px`;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, hgt);
    ctx.font = "11px sans-serif";
    ctx.fillStyle = "#666";
    // axis: ticks relative to the first span
    const span = Math.max(v1 - v0, 1);
    const step = Math.pow(10, Math.floor(Math.log10(span / 6)));
    const nice = [1, 2, 5].map((k) => k * step).find((s) => span / s <= 10) || step * 10;
    for (let t = Math.ceil(v0 / nice) * nice; t <= v1; t += nice) {
      const x = xOf(t);
      if (x < LABEL_W) continue;
      ctx.fillRect(x, AXIS_H - 4, 1, 4);
      ctx.fillText(fmtDur(t - m.t0_us), x + 2, AXIS_H - 6);
    }
    for (const ln of m.lanes) {
      const y = AXIS_H + ln.index * LANE_H;
      ctx.fillStyle = ln.index % 2 ? "rgba(0,0,0,0.03)" : "rgba(0,0,0,0)";
      ctx.fillRect(0, y, w, LANE_H);
      ctx.fillStyle = "#333";
      ctx.fillText(ln.label.slice(0, 32), 2, y + 14);
    }
    ctx.save();
    ctx.beginPath(); ctx.rect(LABEL_W, 0, w - LABEL_W, hgt); ctx.clip();
    for (const s of m.spans) {
      const x0 = xOf(s.start_us), x1 = xOf(spanEnd(m, s));
      if (x1 < LABEL_W || x0 > w) continue;
      const y = AXIS_H + s.lane * LANE_H + 3;
      ctx.fillStyle = m.colors[s.name] || "#888";
      ctx.fillRect(x0, y, Math.max(x1 - x0, 1), LANE_H - 6);
      if (s.state === "FAILED") { ctx.strokeStyle = "#d00"; ctx.lineWidth = 1.5; ctx.strokeRect(x0, y, Math.max(x1 - x0, 1), LANE_H - 6); }
    }
    ctx.restore();
    const shown = `${m.spans.length} spans on ${m.lanes.length} workers` + (m.dropped ? ` (${m.dropped} older not sent)` : "");
    info.textContent = `${shown} · window ${fmtDur(v1 - v0)} · wheel: zoom, drag: pan`;
    legend.replaceChildren(...Object.entries(m.colors).slice(0, 24).map(([name, color]) => {
      const sw = h("span", { class: "carme-swatch" });
      sw.style.cssText = `display:inline-block;width:10px;height:10px;margin:0 3px 0 8px;background:${color}`;
      return h("span", {}, sw, name);
    }));
  }

  /** @param {MouseEvent} ev */
  function hit(ev) {
    const m = current;
    if (!m) return null;
    const r = canvas.getBoundingClientRect();
    const x = ev.clientX - r.left, y = ev.clientY - r.top;
    const lane = Math.floor((y - AXIS_H) / LANE_H);
    const t = tOf(x), slop = (3 / (width() - LABEL_W)) * (v1 - v0);
    return m.spans.find((s) => s.lane === lane && s.start_us - slop <= t && t <= spanEnd(m, s) + slop) || null;
  }

  let drag = /** @type {{x: number, v0: number, v1: number} | null} */ (null);
  canvas.addEventListener("mousedown", (ev) => { drag = { x: ev.clientX, v0, v1 }; });
  window.addEventListener("mouseup", () => { drag = null; });
  canvas.addEventListener("mousemove", (ev) => {
    if (drag) {
      const dt = ((ev.clientX - drag.x) / (width() - LABEL_W)) * (drag.v1 - drag.v0);
      v0 = drag.v0 - dt; v1 = drag.v1 - dt;
      if (live.checked && Math.abs(ev.clientX - drag.x) > 2) setLive(false);
      paint();
      return;
    }
    const s = hit(ev);
    if (!s || !current) { tip.style.display = "none"; return; }
    const dur = spanEnd(current, s) - s.start_us;
    tip.textContent = `${s.name}${s.actor ? " (actor call)" : ""}\n${fmtDur(dur)} · ${s.state}` +
      (s.cell ? `\ncell ${s.cell}` : "") + `\n${current.lanes[s.lane].label}` + (s.error ? `\n${s.error}` : "");
    tip.style.display = "block";
    tip.style.left = `${ev.clientX + 12}px`; tip.style.top = `${ev.clientY + 12}px`;
  });
  canvas.addEventListener("mouseleave", () => { tip.style.display = "none"; });
  canvas.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const r = canvas.getBoundingClientRect();
    const t = tOf(ev.clientX - r.left);
    const k = Math.exp(ev.deltaY * 0.002);
    v0 = t - (t - v0) * k; v1 = t + (v1 - t) * k;
    if (live.checked) setLive(false);
    paint();
  }, { passive: false });

  /** @param {TimelineModel} m @param {HTMLElement} body */
  const draw = (m, body) => {
    current = m;
    if (!m.spans.length) {
      body.replaceChildren(h("div", { class: "carme-muted" }, "No tasks have run yet."));
      return;
    }
    if (!fitted || live.checked) {
      if (!fitted || v1 <= v0) { fit(); fitted = true; }
      else {
        // live tail: keep the window's width, slide it to the newest work
        const end = Math.max(...m.spans.map((s) => spanEnd(m, s)));
        const wdt = Math.max(v1 - v0, 1000);
        if (end > v1 || m.t0_us > v0) { v1 = end + wdt * 0.02; v0 = v1 - wdt; }
        if (v0 > m.t0_us && wdt >= end - m.t0_us) fit();
      }
    }
    if (canvas.parentElement !== body) body.replaceChildren(canvas, info, legend);
    paint();
  };
  model.on("change:live", () => { live.checked = model.get("live") !== false; });
  document.body.append(tip);
  const cleanup = mount(model, el, "carme timeline", draw, [liveBox, reset, exportBtn]);
  return () => { cleanup(); tip.remove(); };
}

export default {
  /** @param {{model: import("./_messages").AnyModel<TimelineModel>, el: HTMLElement}} ctx */
  render({ model, el }) {
    return timeline(model, el);
  },
};
