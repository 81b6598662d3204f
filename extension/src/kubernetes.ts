/**
 * The side panel's "Kubernetes (KubeRay)" section: the RayClusters of the
 * server's namespace, and the actions on them.
 *
 * Theory of operation: `KubeRayModel` asks `GET /carme/api/kubernetes/rayclusters`
 * every few seconds while the section is shown (the operator changes states and
 * replica counts on its own, so a poll is the simple, honest way to follow it)
 * and after every action. Actions are REST calls: create one from the shipped
 * template (workers, CPUs, GPUs per worker), scale a worker group, delete one the
 * panel created, and select one so kernels started afterwards join it
 * (`CARME_ADDRESS=ray:<name>-head-svc.<ns>.svc:6379`). `KubeRaySection` draws
 * the model; its inputs are built once so typing survives redraws. When the
 * server has no Kubernetes credentials the section says so in one line.
 *
 * The interfaces mirror `carme_lab/_raycluster.py` (`cluster_row`) and
 * `carme_lab/_kubernetes.py` (`KubeRayService.listing`).
 */
import { ISignal, Signal } from '@lumino/signaling';

import { h } from './dom';
import { RequestError, requestAPI } from './request';

export interface IWorkerGroup {
  name: string | null;
  replicas: number | null;
  min_replicas: number | null;
  max_replicas: number | null;
  cpus: string | null;
  gpus: string | null;
  memory: string | null;
}

export interface IRayClusterRow {
  name: string;
  namespace: string;
  state: string;
  reason: string | null;
  created: string | null;
  created_by_carme: boolean;
  ray_version: string | null;
  autoscaling: boolean;
  head_service: string;
  address: string;
  worker_groups: IWorkerGroup[];
  desired_workers: number | null;
  available_workers: number | null;
  selected: boolean;
}

export interface IRayClusterListing {
  available: boolean;
  namespace: string | null;
  source: string | null;
  reason: string | null;
  clusters: IRayClusterRow[];
  selected: string | null;
}

export interface ICreateRayCluster {
  name?: string;
  workers: number;
  cpus: number;
  gpus?: number;
  select?: boolean;
}

const API = 'kubernetes';
export const POLL_MS = 5000;

export class KubeRayModel {
  /** `onSelected` runs after the selection changed (the main list refreshes). */
  constructor(private readonly _onSelected: () => void = () => undefined) {}

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get listing(): IRayClusterListing | null {
    return this._listing;
  }

  get error(): string | null {
    return this._error;
  }

  get busy(): string | null {
    return this._busy;
  }

  /** Poll while the section is shown (idempotent). */
  start(): void {
    if (this._timer === null && !this._disposed) {
      void this.refresh();
      this._timer = setInterval(() => void this.refresh(), POLL_MS);
    }
  }

  stop(): void {
    if (this._timer !== null) {
      clearInterval(this._timer);
      this._timer = null;
    }
  }

  async refresh(): Promise<void> {
    try {
      this._listing = await requestAPI<IRayClusterListing>(`${API}/rayclusters`);
    } catch (error) {
      this._listing = null;
      this._error = message(error);
    }
    this._emit();
  }

  create(options: ICreateRayCluster): Promise<boolean> {
    return this._action(`Creating a RayCluster${options.name ? ` ${options.name}` : ''}…`, async () => {
      await requestAPI(`${API}/rayclusters`, { method: 'POST', body: JSON.stringify(options) });
      if (options.select) {
        this._onSelected();
      }
    });
  }

  scale(name: string, group: string, replicas: number): Promise<boolean> {
    return this._action(`Scaling ${name}/${group} to ${replicas}…`, () =>
      requestAPI(`${API}/rayclusters/${encodeURIComponent(name)}`, {
        method: 'PATCH',
        body: JSON.stringify({ group, replicas })
      })
    );
  }

  remove(name: string): Promise<boolean> {
    return this._action(`Deleting ${name}…`, async () => {
      await requestAPI(`${API}/rayclusters/${encodeURIComponent(name)}`, { method: 'DELETE' });
      this._onSelected();
    });
  }

  select(name: string): Promise<boolean> {
    return this._action(`Selecting ${name}…`, async () => {
      await requestAPI(`${API}/select`, { method: 'POST', body: JSON.stringify({ name }) });
      this._onSelected();
    });
  }

  dispose(): void {
    this._disposed = true;
    this.stop();
    Signal.clearData(this);
  }

  private async _action(what: string, fn: () => Promise<unknown>): Promise<boolean> {
    this._busy = what;
    this._error = null;
    this._emit();
    let ok = true;
    try {
      await fn();
    } catch (error) {
      this._error = message(error);
      ok = false;
    }
    this._busy = null;
    await this.refresh();
    if (!ok) {
      this._emit();
    }
    return ok;
  }

  private _emit(): void {
    if (!this._disposed) {
      this._changed.emit(undefined);
    }
  }

  private _changed = new Signal<this, void>(this);
  private _listing: IRayClusterListing | null = null;
  private _error: string | null = null;
  private _busy: string | null = null;
  private _timer: ReturnType<typeof setInterval> | null = null;
  private _disposed = false;
}

function message(error: unknown): string {
  return error instanceof RequestError ? error.message : String(error);
}

/** The section's DOM; `node` goes into the side panel. */
export class KubeRaySection {
  readonly node: HTMLElement;

  constructor(readonly model: KubeRayModel) {
    this._createBtn.addEventListener('click', () => void this._create());
    this.node = h(
      'details',
      { class: 'clab-section clab-kuberay', 'data-testid': 'carme-kuberay' },
      h('summary', {}, h('h3', {}, 'Kubernetes (KubeRay)')),
      this._where,
      this._list,
      h(
        'div',
        { class: 'clab-kuberay-create' },
        h('label', {}, 'Name ', this._name),
        h('label', {}, 'Workers ', this._workers),
        h('label', {}, 'CPUs/worker ', this._cpus),
        h('label', {}, 'GPUs/worker ', this._gpus),
        h('label', {}, this._selectNew, ' use for new kernels'),
        this._createBtn
      ),
      this._message
    );
    // poll only while the section is open; it opens itself once when Kubernetes is there
    this.node.addEventListener('toggle', () => {
      if ((this.node as HTMLDetailsElement).open) {
        this.model.start();
      } else {
        this.model.stop();
      }
    });
    model.changed.connect(this._render, this);
    this._render();
    void model.refresh();
  }

  dispose(): void {
    this.model.changed.disconnect(this._render, this);
    this.model.dispose();
  }

  private async _create(): Promise<void> {
    const options: ICreateRayCluster = {
      workers: Number(this._workers.value),
      cpus: Number(this._cpus.value),
      gpus: Number(this._gpus.value || '0'),
      select: this._selectNew.checked
    };
    const name = this._name.value.trim();
    if (name !== '') {
      options.name = name;
    }
    if (await this.model.create(options)) {
      this._name.value = '';
    }
  }

  private _render(): void {
    const m = this.model;
    const listing = m.listing;
    this._message.textContent = m.busy ?? m.error ?? '';
    this._message.classList.toggle('clab-busy', m.busy !== null);
    this._createBtn.disabled = m.busy !== null || listing === null || !listing.available;
    if (listing === null) {
      this._where.textContent = 'Asking the server about Kubernetes…';
      this._list.replaceChildren();
      return;
    }
    if (!listing.available) {
      this._where.textContent = `Not available: ${listing.reason ?? 'no Kubernetes credentials'}`;
      this._list.replaceChildren();
      return;
    }
    if (!this._opened) {
      this._opened = true;
      (this.node as HTMLDetailsElement).open = true;
    }
    this._where.textContent = `Namespace ${listing.namespace} · ${listing.source}`;
    const active = document.activeElement;
    if (active instanceof HTMLInputElement && this._list.contains(active)) {
      return; // do not redraw under a replica count being typed
    }
    this._list.replaceChildren(
      ...(listing.clusters.length
        ? listing.clusters.map(c => this._row(c))
        : [h('p', { class: 'clab-dim' }, 'No RayClusters in this namespace.')])
    );
  }

  private _row(c: IRayClusterRow): HTMLElement {
    const busy = this.model.busy !== null;
    const use = h('button', { class: 'jp-mod-styled', 'data-testid': `carme-kuberay-select-${c.name}` },
      c.selected ? 'Selected' : 'Use for new kernels');
    use.disabled = busy || c.selected;
    use.addEventListener('click', () => void this.model.select(c.name));
    const del = h('button', { class: 'jp-mod-styled jp-mod-warn', 'data-testid': `carme-kuberay-delete-${c.name}` },
      'Delete');
    del.disabled = busy || !c.created_by_carme;
    del.title = c.created_by_carme ? `Delete the RayCluster ${c.name}` :
      'Not created from this panel: delete it where it was made (kubectl)';
    del.addEventListener('click', () => void this.model.remove(c.name));
    const groups = c.worker_groups.map(g => {
      const input = h('input', { type: 'number', min: '0', step: '1', class: 'clab-num',
        value: String(g.replicas ?? 0), 'aria-label': `replicas of ${g.name ?? ''}` });
      const apply = h('button', { class: 'jp-mod-styled' }, 'Scale');
      apply.disabled = busy;
      apply.addEventListener('click', () => void this.model.scale(c.name, g.name ?? '', Number(input.value)));
      const size = [g.cpus && `${g.cpus} CPU`, g.gpus && `${g.gpus} GPU`, g.memory].filter(Boolean).join(' · ');
      return h('div', { class: 'clab-row clab-kuberay-group' },
        h('span', {}, `${g.name}: `), input, apply,
        h('span', { class: 'clab-dim clab-small' }, ` ${g.min_replicas ?? '?'}–${g.max_replicas ?? '?'}${size ? ` · ${size}` : ''}`));
    });
    const workers = c.available_workers === null ? '' : ` · ${c.available_workers}/${c.desired_workers ?? '?'} workers up`;
    return h(
      'div',
      { class: 'clab-kuberay-cluster', 'data-name': c.name },
      h('div', { class: 'clab-node-title' }, `${c.selected ? '● ' : ''}${c.name}`,
        h('span', { class: `clab-dim clab-state-${c.state}` }, ` ${c.state}${workers}${c.autoscaling ? ' · autoscaling' : ''}`)),
      h('div', { class: 'clab-dim clab-small', title: 'the address kernels join while it is selected' }, c.address),
      c.reason ? h('div', { class: 'clab-action-error' }, c.reason) : null,
      ...groups,
      h('div', { class: 'clab-row' }, use, del)
    );
  }

  private _where = h('div', { class: 'clab-dim clab-small' });
  private _list = h('div', { class: 'clab-kuberay-list' });
  private _name = h('input', { type: 'text', placeholder: 'auto', class: 'clab-res' });
  private _workers = h('input', { type: 'number', min: '0', step: '1', value: '1', class: 'clab-num' });
  private _cpus = h('input', { type: 'number', min: '0.1', step: '0.5', value: '2', class: 'clab-num' });
  private _gpus = h('input', { type: 'number', min: '0', step: '1', value: '0', class: 'clab-num' });
  private _selectNew = h('input', { type: 'checkbox' });
  private _createBtn = h('button', { class: 'jp-mod-styled jp-mod-accept', 'data-testid': 'carme-kuberay-create' },
    'Create RayCluster');
  private _message = h('div', { class: 'clab-action-error', 'data-testid': 'carme-kuberay-message' });
  private _opened = false;
}
