// Ctrl+P: fuzzy file finder over the workspace's files.
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import type { IdeSession } from "../ide/session";
import { fuzzyRank } from "../state/fuzzy";

export function QuickOpen({ session, onClose }: { session: IdeSession; onClose: () => void }) {
  const [files, setFiles] = useState<string[] | null>(null);
  const [q, setQ] = useState("");
  const [sel, setSel] = useState(0);
  const input = useRef<HTMLInputElement>(null);
  useEffect(() => {
    input.current?.focus();
    session.tree.allFiles().then(setFiles, () => setFiles([]));
  }, []);
  const hits = useMemo(() => fuzzyRank(q, files ?? []).slice(0, 50), [q, files]);
  const open = (p: string | undefined) => {
    if (!p) return;
    onClose();
    void session.documents.openFile(p);
  };
  return (
    <div class="modal-back" onMouseDown={(e) => e.target === e.currentTarget && onClose()}>
      <div class="quick-open" role="dialog" aria-label="Go to file" data-testid="quick-open">
        <input
          ref={input}
          value={q}
          placeholder={files === null ? "Listing files…" : "Type a file name"}
          data-testid="quick-open-input"
          onInput={(e) => {
            setQ((e.target as HTMLInputElement).value);
            setSel(0);
          }}
          onKeyDown={(e) => {
            if (e.key === "Escape") onClose();
            else if (e.key === "ArrowDown") {
              e.preventDefault();
              setSel((s) => Math.min(s + 1, hits.length - 1));
            } else if (e.key === "ArrowUp") {
              e.preventDefault();
              setSel((s) => Math.max(s - 1, 0));
            } else if (e.key === "Enter") open(hits[sel]);
          }}
        />
        <ul>
          {hits.map((p, i) => (
            <li key={p} class={i === sel ? "selected" : ""} data-testid="quick-open-item" onMouseDown={() => open(p)}>
              {p}
            </li>
          ))}
          {files !== null && hits.length === 0 && <li class="muted">No matching file</li>}
        </ul>
      </div>
    </div>
  );
}
