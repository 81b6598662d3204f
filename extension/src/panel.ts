/**
 * The left-sidebar view of a `ClusterModel` (widget id `carme-side-panel`).
 *
 * The controls (cluster selector, start, stop, connect) are built once and
 * updated in place, so typing and open menus survive the once-a-second
 * redraws; the live part below them (nodes, tasks, timeline, actors, objects)
 * is rebuilt from the model on every change.
 */
import { Widget } from '@lumino/widgets';

import { bar, bytes, h, s, seconds, shortId, sparkline } from './dom';
import { KubeRayModel, KubeRaySection } from './kubernetes';
import {
  CAPABILITY_LABELS,
  ClusterModel,
  IActorInfo,
  IClusterInfo,
  INodeInfo,
  ISnapshot,
  IStartOptions,
  TASK_BUCKETS,
  percent
} from './model';

export const PANEL_ID = 'carme-side-panel';
const NONE = '';
const TIMELINE_WINDOW_MS = 30000;
const TIMELINE_MIN_WINDOW_MS = 5000;
const TIMELINE_LANES = 8;

export interface IPanelActions {
  insertCode(): void;
  openTimeline(): void;
}

export class CarmePanel extends Widget {
  constructor(
    readonly model: ClusterModel,
    private readonly _actions: IPanelActions
  ) {
    super();
    this.id = PANEL_ID;
    this.addClass('clab-panel');
    this._build();
    model.changed.connect(this._render, this);
    this._render();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.model.changed.disconnect(this._render, this);
    this._kuberay.dispose();
    super.dispose();
  }

  // ---------------------------------------------------------------- controls
  private _build(): void {
    const m = this.model;
    this._select.addEventListener('change', () => {
      const id = this._select.value;
      const c = m.clusters.find(x => x.id === id);
      if (c !== undefined && !c.joinable) {
        void m.view(id); // a kernel's embedded cluster: watch it, kernels are unaffected
      } else {
        void m.connect(id === NONE ? null : id);
      }
    });
    this._engine.addEventListener('change', () => this._renderEngine());
    this._startBtn.addEventListener('click', () => void this._start());
    this._stopBtn.addEventListener('click', () => {
      const c = m.showingCluster;
      if (c !== null && c.stoppable) {
        void m.stopCluster(c.id);
      }
    });
    this._connectBtn.addEventListener('click', () => void this._connect());
    this._address.addEventListener('keydown', (e: KeyboardEvent) => {
      if (e.key === 'Enter') {
        void this._connect();
      }
    });
    const insert = h('button', { class: 'jp-mod-styled carme-insert-code', 'data-testid': 'carme-insert-code' },
      'Insert connection code');
    insert.addEventListener('click', () => this._actions.insertCode());
    const open = h('button', { class: 'jp-mod-styled carme-open-timeline', 'data-testid': 'carme-open-timeline' },
      'Open full timeline');
    open.addEventListener('click', () => this._actions.openTimeline());

    this.node.append(
      h('div', { class: 'clab-header' }, h('h2', {}, 'carme cluster'), this._conn),
      h(
        'div',
        { class: 'clab-controls' },
        h('label', {}, 'Cluster ', this._select),
        h('div', { class: 'clab-row' }, this._startBtn, this._stopBtn),
        h(
          'details',
          { class: 'clab-start-options' },
          h('summary', {}, 'Start options'),
          h('label', {}, 'Engine ', this._engine),
          h('label', {}, 'CPUs ', this._cpus),
          h('label', {}, 'GPUs ', this._gpus),
          h('label', {}, 'Resources ', this._resources),
          this._rayOptions
        ),
        h('div', { class: 'clab-row' }, this._address, this._connectBtn)
      ),
      this._status,
      this._actionError,
      this._body,
      this._kuberay.node,
      h('div', { class: 'clab-row clab-footer' }, insert, open)
    );
  }

  private _renderEngine(): void {
    const ray = this._engine.value === 'ray';
    this._rayOptions.hidden = !ray;
    this._startBtn.textContent = ray ? 'Start Ray head' : 'Start';
  }

  private async _start(): Promise<void> {
    const opts: IStartOptions = {};
    if (this._engine.value === 'ray') {
      opts.engine = 'ray';
      for (const [key, input] of [['port', this._gcsPort], ['dashboard_port', this._dashPort]] as const) {
        if (input.value.trim() !== '') {
          opts[key] = Number(input.value);
        }
      }
    }
    if (this._cpus.value.trim() !== '') {
      opts.num_cpus = Number(this._cpus.value);
    }
    if (this._gpus.value.trim() !== '') {
      opts.num_gpus = Number(this._gpus.value);
    }
    const res = this._resources.value.trim();
    if (res !== '') {
      try {
        opts.resources = JSON.parse(res) as Record<string, number>;
      } catch {
        this._actionError.textContent = `Resources must be JSON like {"disk": 2}, not ${res}`;
        return;
      }
    }
    await this.model.startCluster(opts);
  }

  private async _connect(): Promise<void> {
    const address = this._address.value.trim();
    if (address === '') {
      this._actionError.textContent = 'Type a cluster address HOST:PORT (e.g. 127.0.0.1:6380), then Connect.';
      return;
    }
    if (await this.model.connect(address)) {
      this._address.value = '';
    }
  }

  private _capabilities(snap: ISnapshot): HTMLElement {
    const off = Object.entries(snap.capabilities).filter(([, on]) => !on);
    const engine = snap.engine === 'ray' ? `Ray${snap.version ? ` ${snap.version}` : ''}` : 'carme';
    const dashboard = this.model.showingCluster?.dashboard;
    const items = off.map(([flag]) =>
      h('li', { 'data-flag': flag }, h('b', {}, CAPABILITY_LABELS[flag] ?? flag), ': ', snap.notes[flag] ?? 'not available'));
    return h(
      'section',
      { class: 'clab-section clab-engine', 'data-testid': 'carme-capabilities', 'data-engine': snap.engine,
        'data-off': off.map(([flag]) => flag).join(' ') },
      h('div', { class: 'clab-dim clab-small' }, `Engine: ${engine}`,
        dashboard ? h('span', {}, ' · ', h('a', { href: dashboard, target: '_blank', rel: 'noopener' }, 'Ray dashboard')) : null),
      items.length
        ? h('details', { class: 'clab-caps' }, h('summary', {}, `Not shown on this engine (${items.length})`),
          h('ul', {}, ...items))
        : null
    );
  }

  private _renderControls(): void {
    const m = this.model;
    const sig = JSON.stringify(m.clusters.map(c => [c.id, c.alive, c.origin, c.notebook])) +
      String(m.selected) + String(m.showing);
    if (sig !== this._listingSig && document.activeElement !== this._select) {
      this._listingSig = sig;
      const options = [h('option', { value: NONE }, 'none (kernels embed their own)')];
      for (const c of m.clusters) {
        options.push(h('option', { value: c.id, 'data-engine': c.engine, 'data-kind': c.kind,
          title: c.notebook ?? c.dashboard ?? c.address }, describe(c)));
      }
      this._select.replaceChildren(...options);
      this._select.value = m.showing ?? NONE;
    }
    const shown = m.showingCluster;
    const busy = m.busy !== null;
    this._startBtn.disabled = busy;
    this._connectBtn.disabled = busy;
    this._stopBtn.disabled = busy || shown === null || !shown.stoppable;
    this._stopBtn.title = shown === null ? 'No cluster selected' : shown.stoppable ? `Stop ${shown.address}` :
      shown.kind === 'embedded' ? 'A kernel\'s own cluster: it ends with its kernel' :
      shown.engine === 'ray' ? 'Not started here: stop it where it was started (never `ray stop` from here)' :
      'This cluster does not run on this machine: stop it where it runs';
    this._conn.textContent = { open: '● live', connecting: '○ connecting…', reconnecting: '○ reconnecting…' }[
      m.connection
    ];
    this._conn.className = `clab-conn clab-conn-${m.connection}`;
    this._actionError.textContent = m.busy ?? m.actionError ?? '';
    this._actionError.classList.toggle('clab-busy', m.busy !== null);
  }

  // ---------------------------------------------------------------- live part
  private _render(): void {
    this._renderControls();
    const m = this.model;
    const snap = m.snapshot;
    let status: string;
    if (m.connection !== 'open' && m.ticks === 0) {
      status = 'Connecting to the Jupyter server…';
    } else if (m.connection === 'reconnecting') {
      status = 'Lost the connection to the Jupyter server; reconnecting…';
    } else if (m.showing === null) {
      const running = m.clusters.filter(c => c.alive === true).length;
      status = running === 0
        ? 'No cluster is running here. Start one or connect to one; until then each kernel starts an embedded cluster of its own.'
        : `No cluster is selected (${running} running on this machine: pick one above). Until then each kernel starts an embedded cluster of its own.`;
    } else if (snap === null) {
      status = m.error ?? `Waiting for ${m.showing}…`;
    } else {
      const shown = m.showingCluster;
      const kernels = m.selected === null ? 'kernels started from now on start their own' :
        `kernels started from now on join ${m.selected}`;
      if (shown?.kind === 'embedded') {
        status = `Watching the embedded cluster of ${notebookName(shown) ?? 'a running kernel'} (${snap.address}); ` +
          `it ends with its kernel, and ${kernels}.`;
      } else if (snap.address !== m.selected) {
        status = `Watching ${snap.address}; ${kernels}.`;
      } else {
        const engine = snap.engine === 'ray' ? ` (Ray${snap.version ? ` ${snap.version}` : ''})` : '';
        status = `Connected to ${snap.address}${engine}. Kernels started from now on join it (running kernels keep theirs).`;
      }
    }
    this._status.textContent = status;
    this._status.dataset.state = snap !== null ? 'live' : m.showing === null ? 'none' : 'waiting';
    if (snap === null) {
      this._body.replaceChildren();
      return;
    }
    this._body.replaceChildren(
      this._capabilities(snap),
      this._nodes(snap),
      this._tasks(snap),
      this._timeline(snap),
      this._actors(snap),
      this._objects(snap)
    );
  }

  private _nodes(snap: ISnapshot): HTMLElement {
    const cards = snap.nodes.map(n => this._node(n));
    return section('Nodes', 'clab-nodes', cards.length ? cards : [h('p', {}, 'No nodes.')]);
  }

  private _node(n: INodeInfo): HTMLElement {
    const hist = this.model.history(n.node_id);
    const cpu = n.cpu_percent ?? 0;
    const mem = percent(n.memory_used, n.memory_total);
    const res = Object.entries(n.resources_total)
      .filter(([k]) => k !== 'memory' && k !== 'object_store_memory' && !k.startsWith('node:'))
      .map(([k, v]) => `${k} ${fmt(v - (n.resources_available[k] ?? 0))}/${fmt(v)}`)
      .join(' · ');
    const rows = [
      metric('CPU', bar(cpu, `${cpu.toFixed(0)}%${n.num_cpus ? ` of ${n.num_cpus}` : ''}`, 'cpu'), hist?.cpu),
      metric('Mem', bar(mem, `${bytes(n.memory_used)} / ${bytes(n.memory_total)}`, 'mem'), hist?.memory)
    ];
    n.gpus.forEach((g, i) => {
      const util = g.utilization ?? 0;
      const label = `${util.toFixed(0)}% · ${bytes(g.memory_used)} / ${bytes(g.memory_total)}`;
      rows.push(metric(`GPU${g.index ?? i}`, bar(util, label, 'gpu'), hist?.gpus[i]));
    });
    rows.push(metric('Store', bar(percent(n.object_store.used, n.object_store.capacity),
      `${bytes(n.object_store.used)} / ${bytes(n.object_store.capacity)}`, 'store')));
    return h(
      'div',
      { class: 'clab-node', 'data-node': n.node_id },
      h('div', { class: 'clab-node-title' }, `${n.is_head ? '★ ' : ''}${n.name || shortId(n.node_id)}`,
        h('span', { class: 'clab-dim' }, ` ${n.state} · ${shortId(n.node_id)}`)),
      ...rows,
      res ? h('div', { class: 'clab-dim clab-small' }, `in use: ${res}`) : null
    );
  }

  private _tasks(snap: ISnapshot): HTMLElement {
    const counts = TASK_BUCKETS.map(b =>
      h('div', { class: `clab-count clab-${b}` },
        h('span', { class: 'clab-count-n', 'data-testid': `carme-count-${b}` }, String(snap.tasks[b] ?? 0)),
        h('span', { class: 'clab-count-label' }, b))
    );
    return section('Tasks', 'clab-tasks', [h('div', { class: 'clab-counts' }, ...counts)]);
  }

  private _timeline(snap: ISnapshot): HTMLElement {
    const W = 300;
    const laneH = 10;
    const end = snap.time_ms;
    const windowMs = timelineWindow(snap.events.map(e => e.start_ms), end);
    const start = end - windowMs;
    const lanes = new Map<string, number>();
    const rects: SVGElement[] = [];
    const runs = snap.events
      .filter(e => e.start_ms !== null && (e.end_ms ?? end) >= start)
      .sort((a, b) => (a.start_ms ?? 0) - (b.start_ms ?? 0));
    for (const e of runs) {
      const key = String(e.worker ?? e.node_id ?? '?');
      let lane = lanes.get(key);
      if (lane === undefined) {
        lane = lanes.size % TIMELINE_LANES;
        lanes.set(key, lane);
      }
      const t0 = Math.max(start, e.start_ms ?? start);
      const t1 = Math.min(end, e.end_ms ?? end);
      const x = ((t0 - start) / windowMs) * W;
      const w = Math.max(1.5, ((t1 - t0) / windowMs) * W);
      const dur = (e.end_ms ?? end) - (e.start_ms ?? end);
      rects.push(
        s('rect', { x: x.toFixed(1), y: lane * (laneH + 2), width: w.toFixed(1), height: laneH,
          class: `clab-ev clab-ev-${e.bucket}` },
          s('title', {}, `${e.name} · ${e.state ?? ''} · ${seconds(dur)}`))
      );
    }
    const nLanes = Math.max(1, Math.min(TIMELINE_LANES, lanes.size));
    const height = nLanes * (laneH + 2);
    const svg = s('svg', { class: 'clab-live-timeline', 'data-testid': 'carme-timeline',
      'data-events': rects.length, viewBox: `0 0 ${W} ${height}`, preserveAspectRatio: 'none',
      width: '100%', height }, ...rects);
    // one window, said once in the title and once in the line below: they never disagree
    const last = `the last ${Math.round(windowMs / 1000)} s`;
    return section(`Timeline (${last})`, 'clab-timeline-section', [
      svg,
      h('div', { class: 'clab-dim clab-small', 'data-testid': 'carme-timeline-summary' },
        rects.length ? `${rects.length} task runs on ${lanes.size} workers` : `No task ran in ${last}.`)
    ]);
  }

  private _actors(snap: ISnapshot): HTMLElement {
    if (snap.actors.length === 0) {
      return section('Actors', 'clab-actors', [h('p', { class: 'clab-dim' }, 'No actors.')]);
    }
    // ended actors (killed, dropped, exited) leave the list, folded away below it
    const live = snap.actors.filter(a => a.state !== 'DEAD');
    const ended = snap.actors.filter(a => a.state === 'DEAD');
    return section('Actors', 'clab-actors', [
      live.length ? actorTable(live, 'carme-actors-live') : h('p', { class: 'clab-dim' }, 'No live actors.'),
      ended.length
        ? h('details', { class: 'clab-ended', 'data-testid': 'carme-actors-ended' },
          h('summary', { class: 'clab-dim clab-small' }, `${ended.length} ended`),
          actorTable(ended, 'carme-actors-ended-table'))
        : null
    ]);
  }

  private _objects(snap: ISnapshot): HTMLElement {
    const o = snap.objects;
    const rows = o.largest.map(x =>
      h('tr', {}, h('td', { title: x.object_id, class: 'clab-object-id' }, x.short_id),
        h('td', { title: x.size === null ? '' : `${x.size} bytes` }, bytes(x.size)),
        cell(x.type ?? ''), cell(x.call_site ?? ''))
    );
    return section('Object store', 'clab-objects', [
      bar(percent(o.used, o.capacity), `${bytes(o.used)} / ${bytes(o.capacity)}`, 'store'),
      o.count === null ? null : h('div', { class: 'clab-small', 'data-testid': 'carme-object-count' },
        `${o.count} ${o.count === 1 ? 'object' : 'objects'} ${o.scope}`),
      rows.length
        ? h('table', { class: 'clab-table', 'data-testid': 'carme-objects' },
          h('tr', {}, h('th', {}, 'object'), h('th', {}, 'size'), h('th', {}, 'type'), h('th', {}, 'made by')),
          ...rows)
        : h('p', { class: 'clab-dim' }, 'No objects.'),
      snap.engine === 'carme'
        ? h('div', { class: 'clab-dim clab-small' },
          'Small results stay inline in the driver that owns them; %carme objects in its notebook lists them too.')
        : null
    ]);
  }

  private _select = h('select', { class: 'clab-select', 'data-testid': 'carme-cluster-select' });
  private _startBtn = h('button', { class: 'jp-mod-styled jp-mod-accept', 'data-testid': 'carme-start' }, 'Start');
  private _stopBtn = h('button', { class: 'jp-mod-styled jp-mod-warn', 'data-testid': 'carme-stop' }, 'Stop');
  private _cpus = h('input', { type: 'number', min: '0', step: '1', placeholder: 'all', class: 'clab-num' });
  private _gpus = h('input', { type: 'number', min: '0', step: '1', placeholder: 'auto', class: 'clab-num' });
  private _resources = h('input', { type: 'text', placeholder: '{"disk": 2}', class: 'clab-res' });
  private _engine = h('select', { class: 'clab-engine-select', 'data-testid': 'carme-engine' },
    h('option', { value: 'carme' }, 'carme'), h('option', { value: 'ray' }, 'Ray (ray start --head)'));
  private _gcsPort = h('input', { type: 'number', min: '1', max: '65535', step: '1', placeholder: 'free',
    class: 'clab-num', 'data-testid': 'carme-ray-port' });
  private _dashPort = h('input', { type: 'number', min: '1', max: '65535', step: '1', placeholder: 'free',
    class: 'clab-num', 'data-testid': 'carme-ray-dashboard-port' });
  private _rayOptions = h('div', { class: 'clab-ray-options', hidden: '' },
    h('label', {}, 'GCS port ', this._gcsPort), h('label', {}, 'Dashboard port ', this._dashPort));
  private _address = h('input', { type: 'text', placeholder: 'HOST:PORT or ray:HOST:PORT', class: 'clab-address',
    'data-testid': 'carme-address' });
  private _connectBtn = h('button', { class: 'jp-mod-styled', 'data-testid': 'carme-connect' }, 'Connect');
  private _conn = h('span', { class: 'clab-conn' });
  private _status = h('div', { class: 'clab-status', 'data-testid': 'carme-status' });
  private _actionError = h('div', { class: 'clab-action-error', 'data-testid': 'carme-action-error' });
  private _body = h('div', { class: 'clab-body' });
  private _listingSig = '';
  // RayClusters on Kubernetes (kubernetes.ts); selecting one refreshes the cluster list
  private _kuberay = new KubeRaySection(new KubeRayModel(() => void this.model.refresh()));
}

function describe(c: IClusterInfo): string {
  const state = c.alive === false ? ' (not running)' : '';
  if (c.kind === 'embedded') {
    return `kernel: ${notebookName(c) ?? `pid ${c.pid ?? '?'}`} · embedded carme${state}`;
  }
  return `${c.address} · ${c.engine === 'ray' ? 'Ray' : 'carme'} · ${c.origin}${state}`;
}

/** The file name of the notebook whose kernel runs an embedded cluster, or null. */
function notebookName(c: IClusterInfo): string | null {
  return c.notebook === null ? null : c.notebook.split('/').pop() || c.notebook;
}

/**
 * The live timeline's window in ms: back to the oldest recent run (plus 10%),
 * between 5 s and 30 s.
 */
export function timelineWindow(starts: (number | null)[], end: number): number {
  const oldest = Math.min(end, ...starts.map(t => t ?? end));
  return Math.min(TIMELINE_WINDOW_MS, Math.max(TIMELINE_MIN_WINDOW_MS, (end - oldest) * 1.1));
}

/** A table of actors whose state column is never cut: long names wrap (base.css), the state does not. */
function actorTable(actors: IActorInfo[], testid: string): HTMLElement {
  const rows = actors.map(a =>
    h('tr', { 'data-actor': a.actor_id },
      cell(a.class_name ?? '?'), cell(a.name || shortId(a.actor_id)),
      h('td', { class: `clab-state clab-state-${(a.state ?? '').toLowerCase()}` }, a.state ?? '?'),
      cell(a.pid === null ? '' : String(a.pid)))
  );
  return h('table', { class: 'clab-table', 'data-testid': testid },
    h('tr', {}, h('th', {}, 'class'), h('th', {}, 'name'), h('th', {}, 'state'), h('th', {}, 'pid')),
    ...rows);
}

/** A table cell with its whole text also on hover. */
function cell(text: string): HTMLElement {
  return h('td', { title: text }, text);
}

function section(title: string, cls: string, children: (Node | null)[]): HTMLElement {
  return h('section', { class: `clab-section ${cls}` }, h('h3', {}, title), ...children);
}

function metric(label: string, barEl: HTMLElement, history?: number[]): HTMLElement {
  return h('div', { class: 'clab-metric' }, h('span', { class: 'clab-metric-label' }, label), barEl,
    history && history.length > 1 ? sparkline(history) : h('span', { class: 'clab-spark-empty' }));
}

function fmt(v: number): string {
  return Number.isInteger(v) ? String(v) : v.toFixed(2);
}
