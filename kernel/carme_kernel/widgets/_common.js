// Helpers shared by every carme widget. Python prepends this file to each widget's
// module (see _base.esm), so the widget file below it can use these names.
// Types: _messages.d.ts.

/** @typedef {import("./_messages").FromJs} FromJs */

const CARME_CSS = `
.carme-w { font-family: var(--jp-ui-font-family, sans-serif); font-size: 12px;
  color: var(--jp-ui-font-color1, #222); line-height: 1.4; }
.carme-head { display: flex; gap: 8px; align-items: center; margin-bottom: 4px; }
.carme-title { font-weight: 600; }
.carme-badge { padding: 0 6px; border-radius: 8px; font-size: 11px; background: #e6e6e6; }
.carme-badge.live { background: #d4f3d4; } .carme-badge.not-connected { background: #f8d7da; }
.carme-err { color: #c00; }
.carme-btn { font-size: 11px; cursor: pointer; padding: 0 6px; }
.carme-meter { display: inline-block; width: 140px; height: 10px; background: #e6e6e6;
  border-radius: 2px; vertical-align: middle; margin-right: 6px; overflow: hidden; }
.carme-meter > span { display: block; height: 10px; }
.carme-cards { display: flex; flex-wrap: wrap; gap: 8px; }
.carme-card { border: 1px solid var(--jp-border-color2, #ddd); border-radius: 4px; padding: 6px 8px; min-width: 300px; }
.carme-row { white-space: nowrap; }
.carme-k { display: inline-block; width: 64px; color: #666; }
.carme-table { border-collapse: collapse; }
.carme-table th, .carme-table td { padding: 2px 8px; text-align: left;
  border-bottom: 1px solid var(--jp-border-color2, #ddd); }
.carme-table th.sortable { cursor: pointer; user-select: none; }
.carme-muted { color: #888; }
.carme-tip { position: fixed; pointer-events: none; background: rgba(30,30,30,.92); color: #fff;
  padding: 4px 6px; border-radius: 3px; font-size: 11px; z-index: 1000; white-space: pre; }
`;

/**
 * Make an element: h("div", {class: "x"}, "text", child).
 * @param {string} tag
 * @param {Record<string, string>} [attrs]
 * @param {...(Node | string)} children
 * @returns {HTMLElement}
 */
function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}

/** @param {number | null | undefined} n */
function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  let v = n;
  for (const unit of ["B", "KiB", "MiB", "GiB", "TiB"]) {
    if (Math.abs(v) < 1024 || unit === "TiB") return unit === "B" ? `${v.toFixed(0)} B` : `${v.toFixed(1)} ${unit}`;
    v /= 1024;
  }
  return `${v.toFixed(1)} TiB`;
}

/** @param {number | null | undefined} x @param {string} [unit] */
function fmtNum(x, unit = "") {
  if (x === null || x === undefined) return "–";
  return (Number.isInteger(x) ? String(x) : x.toFixed(1)) + unit;
}

/** @param {number} us */
function fmtDur(us) {
  if (us >= 1e6) return `${(us / 1e6).toFixed(2)} s`;
  if (us >= 1e3) return `${(us / 1e3).toFixed(1)} ms`;
  return `${us.toFixed(0)} µs`;
}

/**
 * A meter with a caption.
 * @param {number | null | undefined} used @param {number | null | undefined} total
 * @param {string} text @param {string} [color]
 */
function meter(used, total, text, color = "#4c8bf5") {
  const frac = used != null && total ? Math.max(0, Math.min(1, used / total)) : 0;
  const fill = h("span");
  fill.style.width = `${(frac * 100).toFixed(1)}%`;
  fill.style.background = color;
  return h("span", { class: "carme-row" }, h("span", { class: "carme-meter" }, fill), text);
}

/** @param {Record<string, number>} counts */
function fmtCounts(counts) {
  const parts = Object.entries(counts).map(([k, v]) => `${k.toLowerCase()} ${v}`);
  return parts.length ? parts.join(", ") : "–";
}

/**
 * Mount a widget: header (title, status, error, refresh), a body redrawn on every
 * model change, and the views bookkeeping Python uses to pause when nothing is shown.
 * @template M
 * @param {import("./_messages").AnyModel<M>} model
 * @param {HTMLElement} el
 * @param {string} title
 * @param {(m: M, body: HTMLElement) => void} draw
 * @param {HTMLElement[]} [tools] extra header controls
 * @returns {() => void} cleanup
 */
function mount(model, el, title, draw, tools = []) {
  const style = h("style");
  style.textContent = CARME_CSS;
  const badge = h("span", { class: "carme-badge" });
  const err = h("span", { class: "carme-err" });
  const refresh = h("button", { class: "carme-btn", title: "refresh now" }, "↻");
  refresh.addEventListener("click", () => send(model, { type: "refresh" }));
  const head = h("div", { class: "carme-head" }, h("span", { class: "carme-title" }, title), badge, ...tools, refresh, err);
  const notes = h("div", { class: "carme-muted carme-notes" });
  const body = h("div", { class: "carme-body" });
  const root = h("div", { class: "carme-w", "data-carme-widget": title }, style, head, notes, body);
  el.append(root);
  const update = () => {
    const status = model.get("status") || "";
    badge.textContent = status;
    badge.className = `carme-badge ${status.replace(" ", "-")}`;
    err.textContent = model.get("error") || "";
    const n = /** @type {string[]} */ (model.get("notes") || []);
    notes.textContent = n.join(" · ");
    const m = model.get("model");
    if (m && Object.keys(m).length) {
      draw(/** @type {M} */ (m), body);
    } else {
      body.replaceChildren(h("span", { class: "carme-muted" }, status === "not connected" ? "not connected" : "no data yet"));
    }
  };
  for (const ev of ["change:model", "change:status", "change:error", "change:notes"]) model.on(ev, update);
  update();
  send(model, { type: "views", delta: 1 });
  return () => {
    for (const ev of ["change:model", "change:status", "change:error", "change:notes"]) model.off(ev, update);
    send(model, { type: "views", delta: -1 });
  };
}

/** @param {{send(m: FromJs): void}} model @param {FromJs} msg */
function send(model, msg) {
  try { model.send(msg); } catch (_e) { /* the kernel is gone */ }
}
