// The status bar: sync state by the durability contract, connection, mode.
import type { IdeSession } from "../ide/session";
import { syncLabel } from "../state/sync";

const CONN_TEXT: Record<string, string> = {
  connecting: "Connecting",
  open: "Connected",
  reconnecting: "Reconnecting",
  stopped: "Workspace stopped",
  superseded: "Superseded",
  outdated: "Reload needed",
  closed: "Closed",
};

export function StatusBar({ session }: { session: IdeSession }) {
  const label = syncLabel({
    conn: session.conn,
    status: session.status,
    pendingSaves: session.documents.savingCount(),
    unsavedBuffers: session.documents.unsavedCount(),
  });
  const mode = session.workspace?.mode;
  return (
    <footer class="statusbar">
      <span class={`sync ${label.tone}`} title={label.detail} data-testid="sync-status" data-tone={label.tone}>
        {label.text}
      </span>
      <span class={`conn ${session.conn}`} data-testid="conn-status">{CONN_TEXT[session.conn] ?? session.conn}</span>
      <span class="spacer" />
      {session.documents.active && <span class="muted">{session.documents.active}</span>}
      <span data-testid="mode" title={mode === "fuse" ? "Files are a FUSE mount: every write is seen as it happens" : mode === "watch" ? "Files are watched with inotify (no FUSE here)" : ""}>
        {mode === "fuse" ? "FUSE" : mode === "watch" ? "Watch" : "—"}
      </span>
    </footer>
  );
}
