// The IDE page: starting view with real hydration progress, then the file
// tree, editor, terminals, preview and status bar around one IdeSession.
import { useEffect, useMemo, useReducer, useState } from "preact/hooks";
import { navigate, setLeaveGuard } from "../main";
import { IdeSession } from "../ide/session";
import { hydrationText } from "../state/sync";
import { EditorPane, loadMonaco } from "./EditorPane";
import { FileTree } from "./FileTree";
import { TerminalPanel } from "./TerminalPanel";
import { PreviewPane } from "./PreviewPane";
import { StatusBar } from "./StatusBar";
import { HistoryDialog } from "./HistoryDialog";
import { QuickOpen } from "./QuickOpen";
import { errorText, toast } from "./common";

export function useSession(s: IdeSession): number {
  const [v, bump] = useReducer((x: number, _: void) => x + 1, 0);
  useEffect(() => s.onChange(() => bump()), [s]);
  return v;
}

export function IdePage({ id }: { id: string }) {
  const session = useMemo(() => new IdeSession(id), [id]);
  useSession(session);
  const [history, setHistory] = useState<null | { path: string | null }>(null);
  const [quickOpen, setQuickOpen] = useState(false);

  useEffect(() => {
    // Monaco (3 MB) loads and compiles while the workspace starts and the
    // socket says hello, not after: the editor is the page's longest pole.
    void loadMonaco().catch(() => {});
    void session.open();
    // Never lose an unsaved buffer to a closed tab either.
    const beforeUnload = (e: BeforeUnloadEvent) => {
      session.stash.flush();
      if (session.documents.unsavedCount() > 0) e.preventDefault();
    };
    addEventListener("beforeunload", beforeUnload);
    setLeaveGuard(() => {
      const n = session.documents.unsavedCount();
      return n
        ? `${n} file${n === 1 ? " has" : "s have"} unsaved changes. Leave anyway? They stay in this browser and come back, unsaved, when you open the project again.`
        : null;
    });
    return () => {
      setLeaveGuard(null);
      removeEventListener("beforeunload", beforeUnload);
      session.close();
    };
  }, [session]);

  useEffect(() => {
    const key = (e: KeyboardEvent) => {
      const mod = e.ctrlKey || e.metaKey;
      if (mod && !e.shiftKey && e.key.toLowerCase() === "p") {
        e.preventDefault();
        setQuickOpen(true);
      } else if (mod && !e.shiftKey && e.key.toLowerCase() === "s") {
        // Monaco has its own binding; this covers focus outside the editor.
        e.preventDefault();
        if (session.documents.active) session.documents.save(session.documents.active).catch((x) => toast(errorText(x), "error"));
      } else if (mod && e.shiftKey && e.code === "Backquote") {
        e.preventDefault();
        session.terminals.create(true).catch((x) => toast(errorText(x), "error"));
      }
    };
    addEventListener("keydown", key);
    return () => removeEventListener("keydown", key);
  }, [session]);

  if (session.startError) {
    return (
      <div class="center-page" data-testid="ide-error">
        <h1>Cannot open this project</h1>
        <p>{session.startError}</p>
        <a href="/" onClick={(e) => { e.preventDefault(); navigate("/"); }}>Back to projects</a>
      </div>
    );
  }

  const ready = session.status?.ready ?? false;
  if (!ready) return <StartingView session={session} />;

  return (
    <div class="ide" data-testid="ide">
      <header class="topbar">
        <a class="logo" href="/" onClick={(e) => { e.preventDefault(); navigate("/"); }} title="All projects">Cove</a>
        <span class="project-name" data-testid="project-title">{session.projectName}</span>
        <span class="spacer" />
        <button onClick={() => setQuickOpen(true)} title="Quick open (Ctrl+P)">Go to file <kbd>Ctrl+P</kbd></button>
        <button data-testid="history-project" onClick={() => setHistory({ path: null })}>Project history</button>
      </header>
      <ConnectionBanner session={session} />
      <div class="workbench">
        <aside class="sidebar">
          <FileTree session={session} onHistory={(path) => setHistory({ path })} />
        </aside>
        <section class="center">
          <EditorPane session={session} onHistory={(path) => setHistory({ path })} />
          <TerminalPanel session={session} />
        </section>
        <section class="right">
          <PreviewPane session={session} />
        </section>
      </div>
      <StatusBar session={session} />
      {history && <HistoryDialog session={session} path={history.path} onClose={() => setHistory(null)} />}
      {quickOpen && <QuickOpen session={session} onClose={() => setQuickOpen(false)} />}
    </div>
  );
}

function StartingView({ session }: { session: IdeSession }) {
  const ws = session.workspace;
  const h = session.status?.hydration ?? ws?.hydration ?? null;
  let text: string;
  if (ws?.state === "failed") text = `The workspace failed: ${ws.reason ?? "unknown reason"}`;
  else if (session.conn === "stopped") text = "The workspace is stopped.";
  else if (!ws) text = "Starting the workspace…";
  else if (session.conn !== "open") text = ws.state === "ready" ? "Connecting to the workspace…" : "Starting the workspace…";
  else text = hydrationText(h);
  const pct = h && h.total > 0 ? Math.min(100, Math.round((100 * h.done) / h.total)) : null;
  return (
    <div class="center-page starting" data-testid="starting">
      <h1>{session.projectName || session.id}</h1>
      <p data-testid="starting-text">{text}</p>
      <div class="progress" aria-hidden={pct === null}>
        <div class={`bar${pct === null ? " indeterminate" : ""}`} style={pct === null ? {} : { width: `${pct}%` }} />
      </div>
      {session.conn === "reconnecting" && session.client.lastError && <p class="muted small">Last attempt: {session.client.lastError}</p>}
      {(session.conn === "stopped" || ws?.state === "failed") && (
        <button class="primary" onClick={() => session.restart().catch((e) => toast(errorText(e), "error"))}>Start it again</button>
      )}
      <p>
        <a href="/" onClick={(e) => { e.preventDefault(); navigate("/"); }}>Back to projects</a>
      </p>
    </div>
  );
}

function ConnectionBanner({ session }: { session: IdeSession }) {
  const [, tick] = useReducer((x: number, _: void) => x + 1, 0);
  useEffect(() => {
    const t = setInterval(() => tick(), 1000);
    return () => clearInterval(t);
  }, []);
  const c = session.conn;
  if (c === "open" || c === "connecting" || c === "closed") return null;
  const unsaved = session.documents.unsavedCount();
  const keep = unsaved ? ` Your ${unsaved} unsaved file${unsaved > 1 ? "s stay" : " stays"} here.` : "";
  let msg: string;
  let action: preact.JSX.Element | null = null;
  if (c === "reconnecting") {
    const s = Math.max(0, Math.ceil((session.client.retryAt - Date.now()) / 1000));
    msg = `Connection lost. Reconnecting${s > 0 ? ` in ${s} s` : "…"}${keep}`;
    action = <button onClick={() => session.client.retryNow()}>Retry now</button>;
  } else if (c === "stopped") {
    msg = `The workspace stopped.${keep}`;
    action = <button class="primary" onClick={() => session.restart().catch((e) => toast(errorText(e), "error"))}>Start again</button>;
  } else if (c === "superseded") {
    msg = `This project now runs in a newer workspace; this one can no longer save.${keep}`;
    action = <button class="primary" onClick={() => session.client.retryNow()}>Connect to the current workspace</button>;
  } else {
    msg = "Cove was updated. Reload the page to continue.";
    action = <button onClick={() => location.reload()}>Reload</button>;
  }
  return (
    <div class={`banner ${c}`} role="alert" data-testid="reconnect-banner">
      <span>{msg}</span>
      {action}
    </div>
  );
}
