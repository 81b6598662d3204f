// GPUView: per node and GPU, meters and a short history. Helpers come from _common.js.
/** @typedef {import("./_messages").GpuModel} GpuModel */
/** @typedef {import("./_messages").GpuCard} GpuCard */

/** @param {GpuModel} m @param {HTMLElement} body */
function drawGpus(m, body) {
  if (!m.gpu_count) {
    const names = m.nodes.map((n) => n.name).join(", ") || "no nodes";
    body.replaceChildren(h("div", { class: "carme-nogpu" }, `No GPUs in this cluster (${names}).`));
    return;
  }
  const cards = h("div", { class: "carme-cards" });
  for (const n of m.nodes) {
    for (const g of n.gpus) cards.append(gpuCard(n.name, g, m.history_s));
  }
  body.replaceChildren(cards);
}

/** @param {string} node @param {GpuCard} g @param {number} historyS */
function gpuCard(node, g, historyS) {
  const card = h("div", { class: "carme-card carme-gpu" },
    h("div", {}, h("b", {}, `${node} · GPU ${g.index}`), " ", h("span", { class: "carme-muted" }, g.name)));
  card.append(h("div", {}, meter(g.utilization, 100, `utilization ${fmtNum(g.utilization)}%`, "#76b900")));
  card.append(h("div", {}, meter(g.memory_used, g.memory_total, `memory ${fmtBytes(g.memory_used)} / ${fmtBytes(g.memory_total)}`, "#4c8bf5")));
  card.append(h("div", { class: "carme-muted" }, `temperature ${fmtNum(g.temperature, " °C")} · power ${fmtNum(g.power_watts, " W")}`));
  card.append(history(g, historyS));
  return card;
}

/** A canvas with utilization (green) and memory (blue) over the last historyS seconds.
 * @param {GpuCard} g @param {number} historyS */
function history(g, historyS) {
  const w = 280, hgt = 50;
  const c = /** @type {HTMLCanvasElement} */ (h("canvas", { width: String(w), height: String(hgt) }));
  const ctx = c.getContext("2d");
  if (!ctx || !g.history.length) return c;
  const tEnd = g.history[g.history.length - 1][0];
  const x = (/** @type {number} */ t) => w - ((tEnd - t) / (historyS * 1000)) * w;
  ctx.strokeStyle = "#ddd";
  ctx.strokeRect(0.5, 0.5, w - 1, hgt - 1);
  for (const [col, color] of /** @type {[1 | 2, string][]} */ ([[1, "#76b900"], [2, "#4c8bf5"]])) {
    ctx.beginPath();
    ctx.strokeStyle = color;
    let first = true;
    for (const s of g.history) {
      const v = s[col];
      if (v === null) continue;
      const y = hgt - 1 - (v / 100) * (hgt - 2);
      if (first) ctx.moveTo(x(s[0]), y); else ctx.lineTo(x(s[0]), y);
      first = false;
    }
    ctx.stroke();
  }
  return c;
}

export default {
  /** @param {{model: import("./_messages").AnyModel<GpuModel>, el: HTMLElement}} ctx */
  render({ model, el }) {
    return mount(model, el, "carme GPUs", drawGpus);
  },
};
