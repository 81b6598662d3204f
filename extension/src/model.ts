/**
 * The side panel's state, kept apart from its views.
 *
 * Theory of operation: `ClusterModel` holds what the server extension last
 * said (the cluster listing, the selected cluster's snapshot, or why there is
 * none) plus short histories per node for the sparklines. It listens to the
 * `/carme/api/stream` WebSocket; when the socket closes (the server restarted,
 * the network blipped) it reconnects with a growing delay (1 s up to 10 s) and
 * says so in `connection`. Actions (start, stop, connect) are REST calls; their
 * errors land in `actionError`. Every change emits `changed`; views redraw from
 * the model and never keep state of their own.
 *
 * The interfaces mirror `carme_lab/_snapshot.py` and `carme_lab/_clusters.py`.
 */
import { ISignal, Signal } from '@lumino/signaling';

import { RequestError, openStream, requestAPI } from './request';

export type Origin = 'started' | 'local' | 'connected' | 'env';
export type Engine = 'carme' | 'ray';
/** `embedded`: a running kernel's own cluster (watched only, never joined or stopped). */
export type Kind = 'cluster' | 'embedded';

export interface IClusterInfo {
  id: string;
  address: string;
  engine: Engine;
  kind: Kind;
  origin: Origin;
  pid: number | null;
  started: number | null;
  alive: boolean | null;
  local: boolean;
  stoppable: boolean;
  joinable: boolean;
  notebook: string | null;
  dashboard: string | null;
  resources: Record<string, number>;
  selected: boolean;
  showing: boolean;
}

export interface IClusterListing {
  clusters: IClusterInfo[];
  /** What kernels join when they first connect (the server's selection file), or null: embedded. */
  selected: string | null;
  /** What the panel shows: the watched one, else the selected, else a kernel's newest. */
  showing: string | null;
}

export interface IGpuInfo {
  index: number | null;
  name: string | null;
  utilization: number | null;
  memory_used: number | null;
  memory_total: number | null;
  temperature: number | null;
}

export interface INodeInfo {
  node_id: string;
  name: string;
  address: string | null;
  is_head: boolean;
  state: string;
  cpu_percent: number | null;
  num_cpus: number | null;
  memory_used: number | null;
  memory_total: number | null;
  gpus: IGpuInfo[];
  resources_total: Record<string, number>;
  resources_available: Record<string, number>;
  object_store: { used: number | null; capacity: number | null };
}

export type TaskBucket = 'pending' | 'running' | 'finished' | 'failed';
export const TASK_BUCKETS: TaskBucket[] = ['pending', 'running', 'finished', 'failed'];

export interface IActorInfo {
  actor_id: string;
  class_name: string | null;
  name: string;
  state: string | null;
  pid: number | null;
  node_id: string | null;
}

export interface IObjectInfo {
  object_id: string;
  /** The part of the id that tells objects apart (`_snapshot.short_object_id`). */
  short_id: string;
  size: number | null;
  type: string | null;
  call_site: string | null;
  node_id: string | null;
}

export interface ITaskEvent {
  task_id: string;
  name: string;
  state: string | null;
  bucket: TaskBucket;
  node_id: string | null;
  worker: string | number | null;
  created_ms: number | null;
  start_ms: number | null;
  end_ms: number | null;
}

/** Names of the capability flags (`carme_lab/_ray_rest.py` CAPABILITIES). */
export const CAPABILITY_LABELS: Record<string, string> = {
  node_metrics: 'CPU, memory and GPU per node',
  per_node_available: 'resources in use per node',
  live_state: 'live task states',
  object_types: 'object types',
  object_call_sites: 'where objects were made',
  complete_task_list: 'every task in the timeline'
};

export interface ISnapshot {
  address: string;
  engine: Engine;
  version: string | null;
  /** flag -> available; what is false is not shown for this engine. */
  capabilities: Record<string, boolean>;
  /** flag -> why it is off. */
  notes: Record<string, string>;
  time_ms: number;
  nodes: INodeInfo[];
  resources: { total: Record<string, number>; available: Record<string, number> };
  tasks: Record<TaskBucket, number>;
  tasks_by_state: Record<string, number>;
  actors: IActorInfo[];
  objects: {
    used: number | null;
    capacity: number | null;
    count: number | null;
    /** Which objects `count` counts, e.g. "in the object store". */
    scope: string;
    largest: IObjectInfo[];
  };
  events: ITaskEvent[];
}

/** What the stream pushes about once a second. */
export interface ITickMessage {
  type: 'tick';
  clusters: IClusterListing | null;
  snapshot: ISnapshot | null;
  error: string | null;
}

export interface IStartOptions {
  engine?: Engine;
  num_cpus?: number;
  num_gpus?: number;
  resources?: Record<string, number>;
  /** Ray only: the GCS and dashboard ports (left out: free ones). */
  port?: number;
  dashboard_port?: number;
}

/** Per node: the last samples of CPU, memory and each GPU's utilization (0..100). */
export interface INodeHistory {
  cpu: number[];
  memory: number[];
  gpus: number[][];
}

export type Connection = 'connecting' | 'open' | 'reconnecting';

export const HISTORY_LENGTH = 60;
const RECONNECT_MIN_MS = 1000;
const RECONNECT_MAX_MS = 10000;

export class ClusterModel {
  constructor(options: { stream?: () => WebSocket } = {}) {
    this._openStream = options.stream ?? (() => openStream());
  }

  /** Emitted after any change of the state below. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get clusters(): IClusterInfo[] {
    return this._listing?.clusters ?? [];
  }

  /** The selected cluster's address: kernels started from now on join it. */
  get selected(): string | null {
    return this._listing?.selected ?? null;
  }

  get selectedCluster(): IClusterInfo | null {
    return this.clusters.find(c => c.selected) ?? null;
  }

  /** The id of the cluster the panel shows (see `IClusterListing.showing`). */
  get showing(): string | null {
    return this._listing?.showing ?? null;
  }

  get showingCluster(): IClusterInfo | null {
    const id = this.showing;
    return id === null ? null : this.clusters.find(c => c.id === id) ?? null;
  }

  get snapshot(): ISnapshot | null {
    return this._snapshot;
  }

  /** Why there is no snapshot ("no cluster is running", "did not answer"), or null. */
  get error(): string | null {
    return this._error;
  }

  /** The last failed action's message, until the next action. */
  get actionError(): string | null {
    return this._actionError;
  }

  get busy(): string | null {
    return this._busy;
  }

  get connection(): Connection {
    return this._connection;
  }

  /** Number of stream messages received (tests and views use it to see liveness). */
  get ticks(): number {
    return this._ticks;
  }

  history(nodeId: string): INodeHistory | undefined {
    return this._history.get(nodeId);
  }

  /** Totals of tasks per bucket over the last samples, oldest first. */
  get taskHistory(): Record<TaskBucket, number>[] {
    return this._taskHistory;
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  /** Open the stream (idempotent). */
  start(): void {
    if (this._socket === null && !this._disposed) {
      this._connect();
    }
  }

  async refresh(): Promise<void> {
    const listing = await requestAPI<IClusterListing>('clusters');
    this._listing = listing;
    this._emit();
  }

  async startCluster(options: IStartOptions): Promise<IClusterInfo | null> {
    const what = options.engine === 'ray' ? 'Starting a Ray head (this takes a while)…' : 'Starting a cluster…';
    return this._action(what, async () => {
      const info = await requestAPI<IClusterInfo>('clusters', {
        method: 'POST',
        body: JSON.stringify(options)
      });
      await this.refresh();
      return info;
    });
  }

  async stopCluster(id: string): Promise<boolean> {
    const done = await this._action(`Stopping ${id}…`, async () => {
      await requestAPI(`clusters/${encodeURIComponent(id)}`, { method: 'DELETE' });
      this._snapshot = null;
      await this.refresh();
      return true;
    });
    return done === true;
  }

  /** Remember `address` and select it; `null` selects none (kernels embed their own). */
  async connect(address: string | null): Promise<boolean> {
    const what = address ? `Connecting to ${address}…` : 'Selecting no cluster…';
    const done = await this._action(what, async () => {
      await requestAPI('connect', { method: 'POST', body: JSON.stringify({ address }) });
      this._snapshot = null;
      await this.refresh();
      return true;
    });
    return done === true;
  }

  /** Show `id` in the panel without changing what kernels join; `null` follows the selection. */
  async view(id: string | null): Promise<boolean> {
    const done = await this._action(id ? `Showing ${id}…` : 'Showing the selected cluster…', async () => {
      await requestAPI('view', { method: 'POST', body: JSON.stringify({ cluster: id }) });
      this._snapshot = null;
      await this.refresh();
      return true;
    });
    return done === true;
  }

  /** Feed one stream message (the socket calls this; tests may too). */
  receive(msg: ITickMessage): void {
    this._ticks += 1;
    if (msg.clusters !== null) {
      this._listing = msg.clusters;
    }
    this._snapshot = msg.snapshot;
    this._error = msg.error;
    if (msg.snapshot !== null) {
      this._record(msg.snapshot);
    }
    this._emit();
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    if (this._timer !== null) {
      clearTimeout(this._timer);
    }
    const socket = this._socket;
    this._socket = null;
    socket?.close();
    Signal.clearData(this);
  }

  private async _action<T>(what: string, fn: () => Promise<T>): Promise<T | null> {
    this._busy = what;
    this._actionError = null;
    this._emit();
    try {
      return await fn();
    } catch (error) {
      this._actionError = error instanceof RequestError ? error.message : String(error);
      return null;
    } finally {
      this._busy = null;
      this._emit();
    }
  }

  private _connect(): void {
    let socket: WebSocket;
    try {
      socket = this._openStream();
    } catch {
      this._scheduleReconnect();
      return;
    }
    this._socket = socket;
    socket.onopen = () => {
      this._delay = RECONNECT_MIN_MS;
      this._connection = 'open';
      this._emit();
    };
    socket.onmessage = (event: MessageEvent) => {
      try {
        const msg = JSON.parse(String(event.data)) as ITickMessage;
        if (msg.type === 'tick') {
          this.receive(msg);
        }
      } catch (error) {
        console.warn('carme: could not read a stream message', error);
      }
    };
    socket.onclose = () => {
      if (this._socket === socket) {
        this._socket = null;
        this._scheduleReconnect();
      }
    };
  }

  private _scheduleReconnect(): void {
    if (this._disposed) {
      return;
    }
    this._connection = 'reconnecting';
    this._emit();
    this._timer = setTimeout(() => {
      this._timer = null;
      this._connect();
    }, this._delay);
    this._delay = Math.min(this._delay * 2, RECONNECT_MAX_MS);
  }

  private _record(snap: ISnapshot): void {
    const seen = new Set<string>();
    for (const node of snap.nodes) {
      seen.add(node.node_id);
      let h = this._history.get(node.node_id);
      if (h === undefined) {
        h = { cpu: [], memory: [], gpus: [] };
        this._history.set(node.node_id, h);
      }
      push(h.cpu, node.cpu_percent ?? 0);
      push(h.memory, percent(node.memory_used, node.memory_total));
      node.gpus.forEach((gpu, i) => {
        if (h !== undefined) {
          h.gpus[i] = h.gpus[i] ?? [];
          push(h.gpus[i], gpu.utilization ?? 0);
        }
      });
    }
    for (const id of [...this._history.keys()]) {
      if (!seen.has(id)) {
        this._history.delete(id);
      }
    }
    push(this._taskHistory, { ...snap.tasks });
  }

  private _emit(): void {
    if (!this._disposed) {
      this._changed.emit(undefined);
    }
  }

  private _changed = new Signal<this, void>(this);
  private _listing: IClusterListing | null = null;
  private _snapshot: ISnapshot | null = null;
  private _error: string | null = null;
  private _actionError: string | null = null;
  private _busy: string | null = null;
  private _connection: Connection = 'connecting';
  private _socket: WebSocket | null = null;
  private _timer: ReturnType<typeof setTimeout> | null = null;
  private _delay = RECONNECT_MIN_MS;
  private _ticks = 0;
  private _disposed = false;
  private _history = new Map<string, INodeHistory>();
  private _taskHistory: Record<TaskBucket, number>[] = [];
  private _openStream: () => WebSocket;
}

/** `used / total` in percent, 0 when unknown. */
export function percent(used: number | null, total: number | null): number {
  if (used === null || total === null || total <= 0) {
    return 0;
  }
  return Math.max(0, Math.min(100, (100 * used) / total));
}

function push<T>(list: T[], value: T): void {
  list.push(value);
  if (list.length > HISTORY_LENGTH) {
    list.splice(0, list.length - HISTORY_LENGTH);
  }
}

/** The code "Insert connection code" puts into a notebook. */
export function connectionCode(address: string | null): string {
  if (address === null) {
    return 'import carme\ncarme.init(address="local")  # an embedded cluster of this kernel';
  }
  if (address.startsWith('ray:')) {
    const gcs = address.slice('ray:'.length);
    return `import ray\nray.init(address=${JSON.stringify(gcs)})  # in the carme kernel: %carme connect ${address}`;
  }
  return `import carme\ncarme.init(address=${JSON.stringify(address)})`;
}
