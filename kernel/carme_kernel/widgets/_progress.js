// progress(refs): one bar. Helpers come from _common.js.
/** @typedef {import("./_messages").ProgressModel} ProgressModel */

/** @param {ProgressModel} m @param {HTMLElement} body */
function drawProgress(m, body) {
  const eta = m.finished ? "" : m.eta_s === null ? " · eta –" : ` · eta ${m.eta_s.toFixed(1)} s`;
  const failed = m.failed ? `, ${m.failed} failed` : "";
  const text = `${m.done}/${m.total} done${failed} · ${m.rate.toFixed(1)}/s · ${m.elapsed_s.toFixed(1)} s${eta}`;
  const bar = meter(m.done, m.total || 1, text, m.failed ? "#d9534f" : "#5cb85c");
  body.replaceChildren(m.label ? h("span", {}, m.label + " ") : "", bar);
}

export default {
  /** @param {{model: import("./_messages").AnyModel<ProgressModel>, el: HTMLElement}} ctx */
  render({ model, el }) {
    return mount(model, el, "carme progress", drawProgress);
  },
};
