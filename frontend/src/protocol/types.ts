// Message shapes of docs/protocol.md (cove.v1). Receivers ignore unknown
// fields, so these list only what the IDE reads.

export interface CommitId {
  epoch: number;
  seq: number;
}

export interface Hydration {
  done: number;
  total: number;
  bytes: number;
  finished: boolean;
}

export type SyncState = "saved" | "pending" | "offline" | "fenced";

export interface Status {
  ready: boolean;
  hydration: Hydration | null;
  sync: {
    state: SyncState;
    dirty: number;
    store_healthy: boolean;
    fenced: boolean;
    last_commit: CommitId | null;
    commit_lag_ms: number;
  };
}

export interface Exit {
  code: number | null;
  signal: string | null;
}

export interface TerminalInfo {
  id: number;
  name: string;
  command: string[];
  cwd: string;
  cols: number;
  rows: number;
  title: string;
  state: "running" | "exited";
  exit: Exit | null;
  pid: number;
  created_ms: number;
  end_offset: number;
  attached: number;
}

export interface Limits {
  max_message_bytes: number;
  max_file_bytes: number;
  max_list_entries: number;
  max_in_flight: number;
  max_terminals: number;
  window_bytes: number;
  ack_bytes: number;
  scrollback_lines: number;
  ping_interval_ms: number;
  dead_after_ms: number;
  flush_timeout_ms: number;
}

export interface Welcome {
  protocol: number;
  server: string;
  project: string;
  instance: string;
  connection: string;
  features: string[];
  limits: Limits;
  preview: { default_port: number; url: string | null; port_url: string | null };
  status: Status;
  terminals: TerminalInfo[];
}

export type EntryKind = "file" | "dir" | "symlink" | "other";

export interface Entry {
  name: string;
  kind: EntryKind;
  size: number;
  mtime_ms: number;
  mode: number;
  target?: string;
  version?: string;
}

export interface Durability {
  durable: boolean;
  commit: CommitId | null;
  pending_reason?: "timeout" | "unavailable" | "fenced";
}

export interface ReadResult {
  content: string;
  encoding: "utf8" | "base64";
  version: string;
  size: number;
  mtime_ms: number;
}

export interface WriteResult extends Durability {
  version: string;
  size: number;
  mtime_ms: number;
}

export type ChangeKind = "create" | "modify" | "delete" | "rename" | "overflow";

export interface ChangeEvent {
  kind: ChangeKind;
  path: string;
  from?: string;
}

export interface Subscription {
  subscription: number;
}

/** What `term.create` and `term.attach` answer (§6.2). */
export interface Attachment {
  terminal: TerminalInfo;
  offset: number;
  responder: boolean;
}

/**
 * Every request of §3, §6.2, §9.4 and §10: its fields and its `result`.
 * `CoveClient.request` is typed by this map, so a request's fields and the
 * shape of its answer are checked where it is made. Mutations (§9.6) answer
 * with Durability on top of their own fields.
 */
export interface Requests {
  hello: { fields: { protocol: number; client: string; features: string[] }; result: Welcome };
  "term.list": { fields: Record<string, never>; result: { terminals: TerminalInfo[] } };
  "term.create": {
    fields: { command?: string[]; cwd?: string; env?: Record<string, string>; cols: number; rows: number; name?: string; attach?: boolean };
    // `offset` and `responder` only when attached (the default).
    result: { terminal: TerminalInfo } & Partial<Omit<Attachment, "terminal">>;
  };
  "term.attach": { fields: { terminal: number }; result: Attachment };
  "term.detach": { fields: { terminal: number }; result: Record<string, never> };
  "term.resize": { fields: { terminal: number; cols: number; rows: number }; result: Record<string, never> };
  "term.close": { fields: { terminal: number }; result: { exit: Exit } };
  "fs.stat": { fields: { path: string; follow?: boolean; version?: boolean }; result: { entry: Entry } };
  "fs.list": { fields: { path: string }; result: { entries: Entry[]; truncated: boolean; skipped: number } };
  "fs.read": { fields: { path: string; encoding?: "auto" | "base64" }; result: ReadResult };
  "fs.write": {
    fields: { path: string; content: string; encoding: "utf8" | "base64"; base_version: string | null; parents?: boolean };
    result: WriteResult;
  };
  "fs.create": { fields: { path: string; mode?: number }; result: { entry: Entry } & Durability };
  "fs.mkdir": { fields: { path: string; parents?: boolean }; result: { entry: Entry } & Durability };
  "fs.rename": { fields: { from: string; to: string; overwrite?: boolean }; result: Durability };
  "fs.delete": { fields: { path: string; recursive?: boolean }; result: Durability };
  "fs.subscribe": { fields: { path: string }; result: Subscription };
  "fs.unsubscribe": { fields: { subscription: number }; result: Record<string, never> };
}

export type RequestType = keyof Requests;
export type RequestFields<K extends RequestType> = Requests[K]["fields"];
export type RequestResult<K extends RequestType> = Requests[K]["result"];
/** The requests that change files: answered with Durability (§9.6). */
export type Mutation = { [K in RequestType]: RequestResult<K> extends Durability ? K : never }[RequestType];

/** Every event of §4.3, by type: the fields the IDE reads. */
export interface Events {
  heartbeat: { time_ms: number };
  status: { status: Status };
  "term.created": { terminal: TerminalInfo };
  "term.resized": { terminal: number; cols: number; rows: number };
  "term.responder": { terminal: number; responder: boolean };
  "term.exited": { terminal: number; exit: Exit; end_offset: number };
  "term.closed": { terminal: number };
  "fs.changes": { subscription: number; events: ChangeEvent[] };
  "fs.durable": { request: number; commit: CommitId | null };
  /** Unsolicited (§4.1): a problem with no request to answer, such as `input_dropped`. */
  error: { id: null; error: { code: string; message: string; details?: Record<string, unknown> } };
}

export type EventType = keyof Events;
/** A server event; `type` tells which (a `switch` on it narrows the fields). */
export type ServerEvent = { [K in EventType]: { type: K } & Events[K] }[EventType];
export type TermEvent = Extract<ServerEvent, { type: `term.${string}` }>;

/** An `error` result (§14). `code` is what clients branch on. */
export class ProtocolError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
    this.name = "ProtocolError";
  }
}
