// ObjectStoreView: store use per node and a sortable table of objects. Helpers: _common.js.
/** @typedef {import("./_messages").ObjectsModel} ObjectsModel */
/** @typedef {import("./_messages").SortKey} SortKey */

/** @type {[string, SortKey | null][]} */
const OBJECT_COLUMNS = [
  ["object", null], ["size", "size"], ["type", "type"], ["owner", "owner"], ["node", "node"],
  ["refs", "references"], ["held by", null], ["spilled", null], ["status", null], ["created", "created"],
];

/** @param {import("./_messages").AnyModel<ObjectsModel>} model */
function objectsDrawer(model) {
  /** @param {ObjectsModel} m @param {HTMLElement} body */
  return (m, body) => {
    const summary = h("div", {}, `${m.total_objects} objects · ${fmtBytes(m.total_size)} in all · ${m.spilled_objects} spilled`);
    const stores = h("div", { class: "carme-cards" });
    for (const s of m.stores) {
      stores.append(h("div", { class: "carme-card" }, h("b", {}, s.name), h("br"),
        meter(s.used, s.capacity, `${fmtBytes(s.used)} / ${fmtBytes(s.capacity)} · ${fmtBytes(s.spilled)} spilled · ${s.objects} objects`, "#9b59b6")));
    }
    const head = h("tr");
    for (const [title, key] of OBJECT_COLUMNS) {
      const arrow = key === m.sort_by ? (m.descending ? " ▼" : " ▲") : "";
      const th = h("th", key ? { class: "sortable", "data-sort": key } : {}, title + arrow);
      if (key) {
        th.addEventListener("click", () => {
          const descending = key === m.sort_by ? !m.descending : true;
          send(model, { type: "sort", sort_by: key, descending });
        });
      }
      head.append(th);
    }
    const rows = h("tbody");
    for (const o of m.objects) {
      const created = o.created_ms ? new Date(o.created_ms).toLocaleTimeString() : "";
      const cells = [o.short_id, fmtBytes(o.size), o.type, o.owner, o.node_id.slice(0, 8),
        fmtNum(o.references), o.holders, o.spilled ? "yes" : "no", o.status, created];
      const tr = h("tr", { title: `${o.object_id}\n${o.location}${o.call_site ? "\n" + o.call_site : ""}` });
      for (const c of cells) tr.append(h("td", {}, c));
      rows.append(tr);
    }
    const more = m.total_objects - m.objects.length;
    const table = h("table", { class: "carme-table carme-objects" }, h("thead", {}, head), rows);
    body.replaceChildren(summary, stores, table, more > 0 ? h("div", { class: "carme-muted" }, `${more} more not shown`) : "");
  };
}

export default {
  /** @param {{model: import("./_messages").AnyModel<ObjectsModel>, el: HTMLElement}} ctx */
  render({ model, el }) {
    return mount(model, el, "carme object store", objectsDrawer(model));
  },
};
