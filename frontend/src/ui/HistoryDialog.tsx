// History of a file or of the whole project (api.md §5.5): commits newest
// first, a past version of a file, and restore (a new commit; history is
// append-only, so a restore can itself be undone).
import { useEffect, useState } from "preact/hooks";
import { api, type Commit, type FileVersion } from "../api";
import type { IdeSession } from "../ide/session";
import { ConfirmDialog, Modal, errorText, timeAgo, toast } from "./common";

// cove-pty saves through `.<name>.cove-tmp-<16 hex>` renamed over the file
// (protocol.md §9.4); a commit that holds both ends lists the temp name too.
// It is an implementation detail, hidden as the change feed hides it.
const OWN_TEMP = /(^|\/)\.[^/]*\.cove-tmp-[0-9a-f]{16}$/;
export function visiblePaths(c: Commit): { paths: string[]; count: number } {
  const paths = c.paths.filter((p) => !OWN_TEMP.test(p));
  return { paths, count: c.paths_truncated ? c.files_changed : paths.length };
}

export function HistoryDialog({ session, path, onClose }: { session: IdeSession; path: string | null; onClose: () => void }) {
  const [commits, setCommits] = useState<Commit[]>([]);
  const [next, setNext] = useState<number | null | undefined>(undefined);
  const [error, setError] = useState<string | null>(null);
  const [sel, setSel] = useState<Commit | null>(null);
  const [version, setVersion] = useState<FileVersion | null>(null);
  const [versionError, setVersionError] = useState<string | null>(null);
  const [confirm, setConfirm] = useState(false);

  const load = async (before?: number) => {
    try {
      const r = await api.history(session.id, { path: path ?? undefined, before, limit: 50 });
      setCommits((c) => (before === undefined ? r.commits : [...c, ...r.commits]));
      setNext(r.next_before);
      setError(null);
    } catch (e) {
      setError(errorText(e));
    }
  };
  useEffect(() => void load(), []);

  useEffect(() => {
    setVersion(null);
    setVersionError(null);
    if (!sel || !path) return;
    api.fileAt(session.id, sel, path).then(setVersion, (e) => setVersionError(errorText(e)));
  }, [sel]);

  const restore = async () => {
    if (!sel) return;
    const r = await api.restore(session.id, sel, path ?? undefined);
    toast(
      r.files_changed === 0
        ? "Nothing to restore: it already matches."
        : `Restored ${r.files_changed} path${r.files_changed === 1 ? "" : "s"}${r.durable ? "; saved to cloud." : "; it will be saved when the store returns."}`,
    );
    onClose();
  };

  return (
    <Modal title={path ? `History of ${path}` : "Project history"} onClose={onClose} testid="history" wide>
      <div class="history">
        <ul class="commits" data-testid="history-commits">
          {commits.map((c) => {
            const v = visiblePaths(c);
            return (
              <li key={`${c.epoch}.${c.seq}`} class={sel === c ? "selected" : ""} data-testid="history-commit" onClick={() => setSel(c)}>
                <span class="when" title={new Date(c.time_ms).toLocaleString()}>{timeAgo(c.time_ms)}</span>
                <span class="muted small">
                  {c.initial ? "created" : `${v.count} change${v.count === 1 ? "" : "s"}`} · {c.epoch}.{c.seq}
                </span>
                {!c.initial && <span class="paths small">{v.paths.slice(0, 3).join(", ")}{v.paths.length > 3 || c.paths_truncated ? ", …" : ""}</span>}
              </li>
            );
          })}
          {next === undefined && !error && <li class="muted">Loading…</li>}
          {next !== undefined && next !== null && (
            <li>
              <button onClick={() => void load(next)}>Older commits</button>
            </li>
          )}
          {next === null && commits.length === 0 && <li class="muted">No commits.</li>}
        </ul>
        <div class="history-detail">
          {error && <p class="form-error">{error}</p>}
          {!sel && <p class="muted">Pick a commit to see {path ? "the file as it was" : "what it changed"}.</p>}
          {sel && path && (
            <>
              {versionError && <p class="form-error">{versionError}</p>}
              {version && version.kind === "symlink" && <p>A symbolic link to <code>{version.target}</code>.</p>}
              {version && version.kind === "file" && version.encoding === "utf8" && <pre class="version" data-testid="history-version">{version.content}</pre>}
              {version && version.kind === "file" && version.encoding === "base64" && <p class="muted">Binary content, {version.size.toLocaleString("en-US")} bytes.</p>}
            </>
          )}
          {sel && !path && (
            <ul class="paths-list">
              {sel.initial ? <li class="muted">The project as it was created.</li> : visiblePaths(sel).paths.map((p) => <li key={p}>{p}</li>)}
              {sel.paths_truncated && <li class="muted">… and {sel.files_changed - sel.paths.length} more</li>}
            </ul>
          )}
          {sel && (
            <div class="buttons">
              <button class="primary" data-testid="history-restore" onClick={() => setConfirm(true)}>
                {path ? "Restore this version" : "Restore the project to this commit"}
              </button>
            </div>
          )}
        </div>
      </div>
      {confirm && sel && (
        <ConfirmDialog
          title="Restore"
          action="Restore"
          message={
            <p>
              {path ? <>Make <b>{path}</b> what it was</> : <>Make the whole project what it was</>} at {new Date(sel.time_ms).toLocaleString()}?
              {!path && " Files created since then are deleted."} This is a new commit: you can restore the current state again from the history.
              {session.documents.unsavedCount() > 0 && " Unsaved edits in open files are kept in their tabs."}
            </p>
          }
          onConfirm={restore}
          onClose={() => setConfirm(false)}
        />
      )}
    </Modal>
  );
}
