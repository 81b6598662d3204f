// The shapes of kernel/carme_kernel/widgets/_messages.py, for the widgets' JavaScript.
// Keep in step with the Python TypedDicts.

export type Status = "live" | "paused" | "not connected" | "closed" | "done";

export interface GpuSample {
  index: number;
  name: string;
  uuid: string;
  utilization: number | null;
  memory_used: number | null;
  memory_total: number | null;
  temperature: number | null;
  power_watts: number | null;
}

export interface GpuCard extends GpuSample {
  /** [t_ms, utilization %, memory used %] */
  history: [number, number | null, number | null][];
}

export interface ResourceUse {
  name: string;
  used: number;
  total: number;
}

export interface NodeCard {
  node_id: string;
  name: string;
  ip: string;
  is_head: boolean;
  state: string;
  cpu_percent: number | null;
  num_cpus: number | null;
  memory_used: number | null;
  memory_total: number | null;
  workers_rss: number | null;
  store_used: number | null;
  store_capacity: number | null;
  resources: ResourceUse[];
  workers: Record<string, number>;
  tasks: Record<string, number>;
  gpus: GpuSample[];
}

export interface ClusterTotals {
  nodes: number;
  alive: number;
  workers: number;
  tasks: Record<string, number>;
  resources: ResourceUse[];
}

export interface ClusterModel {
  kind: "cluster";
  nodes: NodeCard[];
  totals: ClusterTotals;
  updated_ms: number;
}

export interface GpuNode {
  node_id: string;
  name: string;
  gpus: GpuCard[];
}

export interface GpuModel {
  kind: "gpus";
  nodes: GpuNode[];
  gpu_count: number;
  history_s: number;
  updated_ms: number;
}

export interface StoreUse {
  node_id: string;
  name: string;
  used: number;
  capacity: number;
  spilled: number; // bytes of this node's objects spilled to disk
  objects: number;
}

export type SortKey = "size" | "created" | "type" | "owner" | "node" | "references";

export interface ObjectRow {
  object_id: string;
  /** carme.notebook.short_object_id(object_id): what a table cell shows */
  short_id: string;
  size: number | null;
  type: string;
  owner: string;
  node_id: string;
  references: number | null;
  holders: string;
  location: string;
  spilled: boolean;
  status: string;
  call_site: string;
  created_ms: number | null;
}

export interface ObjectsModel {
  kind: "objects";
  stores: StoreUse[];
  objects: ObjectRow[];
  sort_by: SortKey;
  descending: boolean;
  total_objects: number;
  total_size: number;
  spilled_objects: number;
  limit: number;
  updated_ms: number;
}

export interface Lane {
  index: number;
  node: string;
  worker: string;
  label: string;
}

export interface Span {
  lane: number;
  name: string;
  task_id: string;
  start_us: number;
  dur_us: number;
  state: string;
  cell: string;
  actor: boolean;
  error: string;
}

export interface TimelineModel {
  kind: "timeline";
  lanes: Lane[];
  spans: Span[];
  colors: Record<string, string>;
  t0_us: number;
  t1_us: number;
  dropped: number;
  limit: number;
  updated_ms: number;
}

export interface ProgressModel {
  kind: "progress";
  label: string;
  total: number;
  done: number;
  failed: number;
  rate: number;
  elapsed_s: number;
  eta_s: number | null;
  finished: boolean;
}

// -- JavaScript -> Python (model.send) ----------------------------------------------

export interface ViewsMessage { type: "views"; delta: number }
export interface RefreshMessage { type: "refresh" }
export interface SortMessage { type: "sort"; sort_by: SortKey; descending: boolean }
export interface LiveMessage { type: "live"; live: boolean }
export type FromJs = ViewsMessage | RefreshMessage | SortMessage | LiveMessage;

/** The synced traits every carme widget has (anywidget's model.get / model.on). */
export interface Traits<M> {
  model: M | Record<string, never>;
  status: Status;
  error: string;
  interval: number;
  /** the engine and its degradations (capability flags); empty on carme's runtime */
  notes: string[];
  live?: boolean;
}

/** The part of anywidget's AnyModel the widgets use. */
export interface AnyModel<M> {
  get<K extends keyof Traits<M>>(key: K): Traits<M>[K];
  set<K extends keyof Traits<M>>(key: K, value: Traits<M>[K]): void;
  save_changes(): void;
  send(msg: FromJs): void;
  on(event: string, cb: () => void): void;
  off(event: string, cb: () => void): void;
}
