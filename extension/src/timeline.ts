/**
 * The full timeline in the main area: the selected cluster's Chrome trace
 * (`GET /carme/api/timeline`) drawn as one lane per worker, with a download of
 * the JSON for Perfetto. It redraws on "Refresh", not live.
 */
import { Widget } from '@lumino/widgets';

import { h, s, seconds } from './dom';
import { RequestError, requestAPI } from './request';

export interface ITraceEvent {
  name: string;
  ph: string;
  pid: number;
  tid?: number;
  ts?: number;
  dur?: number;
  cat?: string;
  args?: Record<string, unknown>;
}

export class TimelineView extends Widget {
  constructor(private readonly _cluster: () => string | null) {
    super();
    this.id = 'carme-timeline';
    this.addClass('clab-timeline-view');
    this.title.label = 'carme timeline';
    this.title.closable = true;
    const refresh = h('button', { class: 'jp-mod-styled' }, 'Refresh');
    refresh.addEventListener('click', () => void this.refresh());
    this.node.append(h('div', { class: 'clab-row' }, refresh, this._download, this._info), this._canvas);
  }

  async refresh(): Promise<void> {
    const cluster = this._cluster();
    if (cluster === null) {
      this._show([], 'No cluster is selected in the carme panel.');
      return;
    }
    this._info.textContent = `Loading the timeline of ${cluster}…`;
    try {
      const events = await requestAPI<ITraceEvent[]>(`timeline?cluster=${encodeURIComponent(cluster)}`);
      this._show(events, null);
    } catch (error) {
      this._show([], error instanceof RequestError ? error.message : String(error));
    }
  }

  private _show(events: ITraceEvent[], error: string | null): void {
    const blob = new Blob([JSON.stringify(events)], { type: 'application/json' });
    if (this._url !== null) {
      URL.revokeObjectURL(this._url);
    }
    this._url = URL.createObjectURL(blob);
    this._download.href = this._url;
    const spans = events.filter(e => e.ph === 'X' && e.ts !== undefined);
    this._info.textContent = error ?? `${spans.length} task runs · open the JSON in ui.perfetto.dev for more`;
    this._canvas.replaceChildren(draw(events));
  }

  dispose(): void {
    if (this._url !== null) {
      URL.revokeObjectURL(this._url);
    }
    super.dispose();
  }

  private _download = h('a', { class: 'jp-mod-styled clab-download', download: 'carme-timeline.json' },
    'Download JSON');
  private _info = h('span', { class: 'clab-dim' });
  private _canvas = h('div', { class: 'clab-timeline-canvas', 'data-testid': 'carme-full-timeline' });
  private _url: string | null = null;
}

/** One SVG: a labelled lane per (pid, tid), a rectangle per complete ("X") event. */
export function draw(events: ITraceEvent[]): SVGElement {
  const names = new Map<string, string>();
  for (const e of events) {
    if (e.ph === 'M' && e.name === 'thread_name') {
      names.set(`${e.pid}/${e.tid}`, String(e.args?.name ?? ''));
    }
  }
  const spans = events.filter(e => e.ph === 'X' && e.ts !== undefined);
  const laneOf = new Map<string, number>();
  for (const e of spans) {
    const key = `${e.pid}/${e.tid}`;
    if (!laneOf.has(key)) {
      laneOf.set(key, laneOf.size);
    }
  }
  const t0 = Math.min(...spans.map(e => e.ts ?? 0));
  const t1 = Math.max(...spans.map(e => (e.ts ?? 0) + (e.dur ?? 0)));
  const span = Math.max(1, t1 - t0);
  const left = 120;
  const width = 1000;
  const laneH = 18;
  const children: SVGElement[] = [];
  for (const [key, lane] of laneOf) {
    children.push(s('text', { x: 4, y: lane * laneH + 13, class: 'clab-lane-label' }, names.get(key) || key));
  }
  for (const e of spans) {
    const lane = laneOf.get(`${e.pid}/${e.tid}`) ?? 0;
    const x = left + (((e.ts ?? 0) - t0) / span) * (width - left);
    const w = Math.max(1, ((e.dur ?? 0) / span) * (width - left));
    const state = String(e.args?.state ?? '').toLowerCase();
    children.push(
      s('rect', { x: x.toFixed(1), y: lane * laneH + 2, width: w.toFixed(1), height: laneH - 4,
        class: `clab-ev clab-ev-${state === 'failed' ? 'failed' : e.cat === 'actor_task' ? 'actor' : 'finished'}` },
        s('title', {}, `${e.name} · ${seconds((e.dur ?? 0) / 1000)}${state ? ` · ${state}` : ''}`))
    );
    if (w > 8 * e.name.length) {
      children.push(s('text', { x: (x + 3).toFixed(1), y: lane * laneH + 13, class: 'clab-ev-label' }, e.name));
    }
  }
  const height = Math.max(1, laneOf.size) * laneH + 20;
  children.push(s('text', { x: left, y: height - 4, class: 'clab-axis' }, '0'));
  children.push(s('text', { x: width - 4, y: height - 4, class: 'clab-axis', 'text-anchor': 'end' },
    spans.length ? seconds(span / 1000) : 'no task runs yet'));
  return s('svg', { viewBox: `0 0 ${width} ${height}`, width: '100%', 'data-events': spans.length }, ...children);
}
