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
