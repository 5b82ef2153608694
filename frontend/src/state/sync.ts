// The status bar's sync state, from the durability contract
// (ARCHITECTURE.md, docs/protocol.md §9.6 and §11): "Saved to cloud" only
// when the store has everything this page saved.

import type { ConnState } from "../protocol/client";
import type { Status } from "../protocol/types";

export type SyncTone = "ok" | "busy" | "warn" | "error";

export interface SyncLabel {
  text: string;
  tone: SyncTone;
  detail: string;
}

export interface SyncInputs {
  conn: ConnState;
  status: Status | null;
  /** Saves of this page not yet acknowledged as durable. */
  pendingSaves: number;
  /** Open buffers with edits not yet sent. */
  unsavedBuffers: number;
}

export function syncLabel({ conn, status, pendingSaves, unsavedBuffers }: SyncInputs): SyncLabel {
  const unsaved = unsavedBuffers
    ? ` ${unsavedBuffers} unsaved file${unsavedBuffers === 1 ? "" : "s"} kept in this tab.`
    : "";
  if (conn === "superseded" || status?.sync.fenced || status?.sync.state === "fenced") {
    return { text: "Not saving: another session owns this project", tone: "error", detail: `This workspace was replaced by a newer one; nothing more from it reaches the store.${unsaved}` };
  }
  if (conn !== "open" || !status) {
    return {
      text: "Offline: changes kept locally",
      tone: "warn",
      detail: `Not connected to the workspace. Files saved before are safe in the store.${unsaved}`,
    };
  }
  if (status.sync.state === "offline") {
    return { text: "Offline: changes kept locally", tone: "warn", detail: `The store is not reachable; ${status.sync.dirty} change(s) wait in the workspace and will be uploaded when it returns.` };
  }
  if (pendingSaves > 0 || status.sync.state === "pending") {
    return { text: "Saving…", tone: "busy", detail: `${status.sync.dirty} change(s) being written to the store.` };
  }
  const c = status.sync.last_commit;
  return { text: "Saved to cloud", tone: "ok", detail: c ? `Everything is in the store (commit ${c.epoch}.${c.seq}).` : "Everything is in the store." };
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = -1;
  do {
    v /= 1024;
    u++;
  } while (v >= 1024 && u < units.length - 1);
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[u]}`;
}

export function hydrationText(h: { done: number; total: number; bytes: number } | null): string {
  if (!h) return "Starting the workspace…";
  if (h.total === 0) return "Loading files…";
  return `Loading files: ${h.done.toLocaleString("en-US")} of ${h.total.toLocaleString("en-US")} (${formatBytes(h.bytes)})`;
}
