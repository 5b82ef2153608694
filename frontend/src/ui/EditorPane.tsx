// Tabs and the Monaco editor (loaded lazily: the page is usable while it
// loads). One editor, one model per open file, view state kept per tab.
import { useEffect, useRef, useState } from "preact/hooks";
import type * as Monaco from "monaco-editor";
import type { Conflict, Documents } from "../ide/documents";
import type { IdeSession } from "../ide/session";
import { isDirty, languageOf, tabMarker } from "../state/docs";
import { baseName } from "../state/tree";
import { Modal, errorText, toast } from "./common";

type MonacoNs = typeof Monaco;
let monacoPromise: Promise<MonacoNs> | null = null;
export function loadMonaco(): Promise<MonacoNs> {
  monacoPromise ??= import("../ide/monaco").then((m) => {
    performance.mark("cove:monaco"); // for the load benchmark (benchmarks.md)
    return m.monaco;
  });
  return monacoPromise;
}

export function EditorPane({ session, onHistory }: { session: IdeSession; onHistory: (path: string) => void }) {
  const host = useRef<HTMLDivElement>(null);
  const [monaco, setMonaco] = useState<MonacoNs | null>(null);
  const editor = useRef<Monaco.editor.IStandaloneCodeEditor | null>(null);
  const models = useRef(new Map<string, Monaco.editor.ITextModel>());
  const viewStates = useRef(new Map<string, Monaco.editor.ICodeEditorViewState | null>());
  const shown = useRef<string | null>(null);
  const documents = session.documents;

  useEffect(() => {
    let alive = true;
    loadMonaco().then(
      (m) => alive && setMonaco(m),
      (e) => toast(`The editor failed to load: ${errorText(e)}`, "error"),
    );
    return () => {
      alive = false;
    };
  }, []);

  // Create the editor once Monaco is here.
  useEffect(() => {
    if (!monaco || !host.current) return;
    const ed = monaco.editor.create(host.current, {
      theme: "vs-dark",
      automaticLayout: true,
      fontSize: 13,
      minimap: { enabled: false },
      scrollBeyondLastLine: false,
      model: null,
      tabSize: 2,
      renderWhitespace: "selection",
    });
    editor.current = ed;
    ed.addCommand(monaco.KeyMod.CtrlCmd | monaco.KeyCode.KeyS, () => {
      const p = shown.current;
      if (p) session.documents.save(p).catch((e) => toast(errorText(e), "error"));
    });
    // Ctrl+P belongs to the page's quick open, not Monaco's.
    ed.addCommand(monaco.KeyMod.CtrlCmd | monaco.KeyCode.KeyP, () => dispatchEvent(new KeyboardEvent("keydown", { key: "p", ctrlKey: true })));
    const detach = documents.attachEditor({
      setText: (path, text) => {
        const m = models.current.get(path);
        if (m && m.getValue() !== text) m.pushEditOperations([], [{ range: m.getFullModelRange(), text }], () => null);
      },
      renamed: (from, to) => {
        const m = models.current.get(from);
        if (!m) return;
        models.current.delete(from);
        const nm = monaco.editor.createModel(m.getValue(), languageOf(to), monaco.Uri.file(`/${to}`));
        nm.onDidChangeContent(() => documents.setText(to, nm.getValue()));
        models.current.set(to, nm);
        if (shown.current === from) {
          shown.current = to;
          ed.setModel(nm);
        }
        m.dispose();
      },
    });
    (window as unknown as { __coveEditor: unknown }).__coveEditor = ed;
    return () => {
      detach();
      for (const m of models.current.values()) m.dispose();
      models.current.clear();
      ed.dispose();
    };
  }, [monaco, session]);

  // Keep models in step with the open docs; show the active one.
  const active = documents.active;
  const doc = active ? documents.docs.get(active) : undefined;
  useEffect(() => {
    const ed = editor.current;
    if (!monaco || !ed) return;
    for (const [p, m] of models.current) {
      if (!documents.docs.has(p)) {
        m.dispose();
        models.current.delete(p);
        viewStates.current.delete(p);
      }
    }
    for (const d of documents.docs.values()) {
      if (d.kind !== "text" || models.current.has(d.path)) continue;
      const m = monaco.editor.createModel(d.text, languageOf(d.path), monaco.Uri.file(`/${d.path}`));
      m.onDidChangeContent(() => documents.setText(d.path, m.getValue()));
      models.current.set(d.path, m);
    }
    // Read-only until the first read is in: typing into an empty model would be lost.
    ed.updateOptions({ readOnly: !!doc && !doc.loaded });
    const want = doc && doc.kind === "text" ? doc.path : null;
    if (shown.current !== want) {
      if (shown.current) viewStates.current.set(shown.current, ed.saveViewState());
      shown.current = want;
      ed.setModel(want ? (models.current.get(want) ?? null) : null);
      if (want) {
        const vs = viewStates.current.get(want);
        if (vs) ed.restoreViewState(vs);
        ed.focus();
      }
    }
  });

  const conflict = documents.conflict;
  return (
    <div class="editor-pane">
      <div class="tabs" role="tablist" data-testid="tabs">
        {documents.tabs.map((p) => {
          const d = documents.docs.get(p);
          const marker = d ? tabMarker(d) : "";
          return (
            <div
              key={p}
              role="tab"
              aria-selected={p === active}
              class={`tab${p === active ? " active" : ""}`}
              title={p}
              data-testid="tab"
              data-path={p}
              data-dirty={d && isDirty(d) ? "true" : "false"}
              tabIndex={0}
              onKeyDown={(e) => {
                if (e.key === "Enter" || e.key === " ") {
                  e.preventDefault();
                  documents.activate(p);
                }
              }}
              onMouseDown={(e) => {
                if (e.button === 1) {
                  e.preventDefault();
                  closeTab(documents, p);
                }
              }}
              onClick={() => documents.activate(p)}
            >
              <span>{baseName(p)}</span>
              {marker && <span class="dirty" data-testid="tab-marker">{marker}</span>}
              <button class="icon close" title="Close" onClick={(e) => { e.stopPropagation(); closeTab(documents, p); }}>×</button>
            </div>
          );
        })}
      </div>
      {doc && doc.changedOnDisk && (
        <div class="doc-banner" data-testid="changed-on-disk">
          {doc.path} changed on disk while you were editing it.
          <button onClick={() => documents.takeTheirs()}>Use the disk's version</button>
          <button onClick={() => documents.save(doc.path).catch((e) => toast(errorText(e), "error"))}>Save mine (asks first)</button>
        </div>
      )}
      {doc && doc.deletedOnDisk && <div class="doc-banner">{doc.path} was deleted on disk. Saving creates it again.</div>}
      <div class="editor-host" ref={host} data-testid="editor" style={{ display: doc && doc.kind === "text" ? "block" : "none" }} />
      {doc && doc.kind !== "text" && (
        <div class="editor-message" data-testid="editor-message">
          <p>{doc.message}</p>
          <button onClick={() => onHistory(doc.path)}>History</button>
        </div>
      )}
      {!doc && (
        <div class="editor-message muted" data-testid="editor-empty">
          <p>Open a file from the tree, or press <kbd>Ctrl+P</kbd>.</p>
        </div>
      )}
      {doc && doc.kind === "text" && !monaco && <div class="editor-message muted">Loading the editor…</div>}
      {conflict && monaco && <ConflictDialog documents={documents} conflict={conflict} monaco={monaco} mine={documents.docs.get(conflict.path)?.text ?? ""} />}
    </div>
  );
}

function closeTab(documents: Documents, path: string) {
  const d = documents.docs.get(path);
  if (d && isDirty(d) && !confirm(`${path} has unsaved changes. Close it and lose them?`)) return;
  documents.closeTab(path);
}

function ConflictDialog({ documents, conflict: c, monaco, mine }: { documents: Documents; conflict: Conflict; monaco: MonacoNs; mine: string }) {
  const [compare, setCompare] = useState(false);
  const host = useRef<HTMLDivElement>(null);
  useEffect(() => {
    if (!compare || !host.current) return;
    const lang = languageOf(c.path);
    const original = monaco.editor.createModel(c.theirs ?? "", lang);
    const modified = monaco.editor.createModel(mine, lang);
    const diff = monaco.editor.createDiffEditor(host.current, { theme: "vs-dark", readOnly: true, automaticLayout: true, renderSideBySide: true });
    diff.setModel({ original, modified });
    return () => {
      diff.dispose();
      original.dispose();
      modified.dispose();
    };
  }, [compare]);
  return (
    <Modal title={`${c.path} changed on disk`} onClose={() => documents.dismissConflict()} testid="conflict" wide={compare}>
      <p>
        {c.theirs === null
          ? "The file was deleted since you opened it."
          : "The file was changed by something else (a terminal, another tab) since you opened it. Saving now would overwrite that change."}
      </p>
      {compare && (
        <>
          <p class="muted small">Left: on disk now. Right: yours.</p>
          <div class="diff-host" ref={host} data-testid="conflict-diff" />
        </>
      )}
      <div class="buttons">
        {/* Focus on Cancel: Enter must not overwrite someone's change. */}
        <button autofocus onClick={() => documents.dismissConflict()}>Cancel</button>
        {c.theirs !== null && !compare && <button data-testid="conflict-compare" onClick={() => setCompare(true)}>Compare</button>}
        {c.theirs !== null && <button data-testid="conflict-theirs" onClick={() => documents.takeTheirs()}>Use the disk's version</button>}
        <button class="primary danger" data-testid="conflict-overwrite" onClick={() => documents.overwrite().catch((e) => toast(errorText(e), "error"))}>
          Overwrite with mine
        </button>
      </div>
    </Modal>
  );
}
