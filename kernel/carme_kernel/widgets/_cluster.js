// ClusterView: one card per node. Helpers (h, meter, mount, ...) come from _common.js.
/** @typedef {import("./_messages").ClusterModel} ClusterModel */
/** @typedef {import("./_messages").NodeCard} NodeCard */

/** @param {ClusterModel} m @param {HTMLElement} body */
function drawCluster(m, body) {
  const t = m.totals;
  const res = t.resources.map((r) => `${r.name} ${fmtResource(r)}`).join(" · ");
  const summary = h("div", { class: "carme-summary" },
    `${t.alive} of ${t.nodes} nodes alive · ${t.workers} workers · tasks: ${fmtCounts(t.tasks)} · ${res}`);
  const cards = h("div", { class: "carme-cards" });
  for (const n of m.nodes) cards.append(nodeCard(n));
  body.replaceChildren(summary, cards);
}

/** @param {string} k @param {Node | string} v */
function kv(k, v) {
  return h("div", { class: "carme-row" }, h("span", { class: "carme-k" }, k), v);
}

/** Memory-like resources are bytes. @param {import("./_messages").ResourceUse} r */
function fmtResource(r) {
  const f = r.name.includes("memory") ? fmtBytes : fmtNum;
  return `${f(r.used)} / ${f(r.total)}`;
}

/** @param {NodeCard} n */
function nodeCard(n) {
  const card = h("div", { class: "carme-card", "data-node-id": n.node_id },
    h("div", {}, h("b", {}, n.name + (n.is_head ? " ★" : "")), " ", h("span", { class: "carme-muted" }, `${n.ip} ${n.state}`)));
  card.append(kv("CPU", meter(n.cpu_percent, 100, `${fmtNum(n.cpu_percent)}% of ${n.num_cpus ?? "?"} cores`)));
  card.append(kv("memory", meter(n.memory_used, n.memory_total, `${fmtBytes(n.memory_used)} / ${fmtBytes(n.memory_total)}`)));
  card.append(kv("store", meter(n.store_used, n.store_capacity, `${fmtBytes(n.store_used)} / ${fmtBytes(n.store_capacity)}`, "#9b59b6")));
  for (const g of n.gpus) {
    card.append(kv(`GPU ${g.index}`, meter(g.utilization, 100, `${fmtNum(g.utilization)}% · ${fmtBytes(g.memory_used)} / ${fmtBytes(g.memory_total)}`, "#76b900")));
  }
  if (n.resources.length) card.append(h("div", { class: "carme-muted" }, "resources used / total"));
  for (const r of n.resources) {
    card.append(kv(r.name.replace("object_store_memory", "store mem"), meter(r.used, r.total, fmtResource(r), "#f0ad4e")));
  }
  card.append(kv("workers", fmtCounts(n.workers)));
  card.append(kv("tasks", fmtCounts(n.tasks)));
  return card;
}

export default {
  /** @param {{model: import("./_messages").AnyModel<ClusterModel>, el: HTMLElement}} ctx */
  render({ model, el }) {
    return mount(model, el, "carme cluster", drawCluster);
  },
};
