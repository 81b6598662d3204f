/**
 * Small DOM and SVG helpers shared by the views: element builders that only
 * ever set text (never HTML), bars, sparklines and number formats.
 */
type Child = Node | string | null | undefined | false;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    el.setAttribute(k, v);
  }
  append(el, children);
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';

export function s(tag: string, attrs: Record<string, string | number> = {}, ...children: Child[]): SVGElement {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) {
    el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el: Element, children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) {
      continue;
    }
    el.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
  }
}

/** A horizontal bar filled to `pct` percent, with a label on it. */
export function bar(pct: number, label: string, kind = ''): HTMLElement {
  const fill = h('div', { class: `clab-bar-fill ${kind}` });
  fill.style.width = `${Math.max(0, Math.min(100, pct)).toFixed(1)}%`;
  return h('div', { class: 'clab-bar', title: label }, fill, h('span', { class: 'clab-bar-label' }, label));
}

/** A sparkline of values in 0..100 (the newest on the right). */
export function sparkline(values: number[], width = 72, height = 16): SVGElement {
  const n = Math.max(values.length, 2);
  const pts = values
    .map((v, i) => {
      const x = (width * i) / (n - 1);
      const y = height - (height * Math.max(0, Math.min(100, v))) / 100;
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    })
    .join(' ');
  return s(
    'svg',
    { class: 'clab-spark', width, height, viewBox: `0 0 ${width} ${height}` },
    s('polyline', { points: pts, fill: 'none', 'stroke-width': 1.2 })
  );
}

export function bytes(n: number | null): string {
  if (n === null) {
    return '?';
  }
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v < 10 && i > 0 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

export function shortId(id: string | null, n = 8): string {
  return id ? id.slice(0, n) : '?';
}

export function seconds(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}
