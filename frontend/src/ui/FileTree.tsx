// The file tree: lazy (a directory is listed when opened), live (the
// session re-lists on change events), with new file/folder, rename,
// delete, drag to move and a context menu.
import { useEffect, useState } from "preact/hooks";
import type { IdeSession } from "../ide/session";
import type { Entry } from "../protocol/types";
import { baseName, joinPath, moveTarget, parentOf, validateName } from "../state/tree";
import { ConfirmDialog, ContextMenu, PromptDialog, errorText, toast, type MenuItem } from "./common";

type Dialog =
  | { kind: "new-file" | "new-folder"; dir: string }
  | { kind: "rename"; path: string }
  | { kind: "delete"; path: string; isDir: boolean };

export function FileTree({ session, onHistory }: { session: IdeSession; onHistory: (path: string) => void }) {
  const [menu, setMenu] = useState<null | { x: number; y: number; items: MenuItem[] }>(null);
  const [dialog, setDialog] = useState<Dialog | null>(null);
  const [dropDir, setDropDir] = useState<string | null>(null);

  useEffect(() => {
    if (!session.tree.entries.has("")) void session.tree.list("");
  }, [session]);

  const dirMenu = (dir: string): MenuItem[] => [
    { label: "New file", action: () => setDialog({ kind: "new-file", dir }) },
    { label: "New folder", action: () => setDialog({ kind: "new-folder", dir }) },
  ];
  const entryMenu = (path: string, e: Entry): MenuItem[] => [
    ...(e.kind === "dir" ? dirMenu(path) : [{ label: "Open", action: () => void session.documents.openFile(path) }]),
    { label: "Rename", action: () => setDialog({ kind: "rename", path }), shortcut: "F2" },
    ...(e.kind !== "dir" ? [{ label: "History", action: () => onHistory(path) }] : []),
    { label: "Copy path", action: () => void navigator.clipboard?.writeText(path) },
    { label: "Delete", action: () => setDialog({ kind: "delete", path, isDir: e.kind === "dir" }), danger: true, shortcut: "Del" },
  ];

  const move = async (from: string, dir: string) => {
    const to = moveTarget(from, dir);
    if (!to) return;
    try {
      await session.tree.rename(from, to);
    } catch (e) {
      toast(`Could not move ${from}: ${errorText(e)}`, "error");
    }
  };

  const renderDir = (dir: string, depth: number): preact.JSX.Element[] => {
    const entries = session.tree.entries.get(dir);
    if (!entries) return [<li class="tree-loading" style={{ paddingLeft: `${depth * 12 + 20}px` }}>Loading…</li>];
    if (entries.length === 0 && dir !== "") return [<li class="muted small" style={{ paddingLeft: `${depth * 12 + 20}px` }}>empty</li>];
    const out: preact.JSX.Element[] = [];
    for (const e of entries) {
      const path = joinPath(dir, e.name);
      const open = e.kind === "dir" && session.tree.expanded.has(path);
      out.push(
        <li
          key={path}
          class={`tree-item ${e.kind}${session.documents.active === path ? " active" : ""}${dropDir === path ? " drop" : ""}`}
          style={{ paddingLeft: `${depth * 12 + 6}px` }}
          data-testid="tree-item"
          data-path={path}
          data-kind={e.kind}
          role="treeitem"
          aria-expanded={e.kind === "dir" ? open : undefined}
          aria-selected={session.documents.active === path}
          tabIndex={0}
          draggable
          title={e.kind === "symlink" ? `${path} → ${e.target}` : path}
          onClick={() => (e.kind === "dir" ? void session.tree.toggle(path) : void session.documents.openFile(path))}
          onKeyDown={(ev) => {
            if (ev.key === "Enter") e.kind === "dir" ? void session.tree.toggle(path) : void session.documents.openFile(path);
            else if (ev.key === "F2") setDialog({ kind: "rename", path });
            else if (ev.key === "Delete") setDialog({ kind: "delete", path, isDir: e.kind === "dir" });
          }}
          onContextMenu={(ev) => {
            ev.preventDefault();
            ev.stopPropagation();
            setMenu({ x: ev.clientX, y: ev.clientY, items: entryMenu(path, e) });
          }}
          onDragStart={(ev) => {
            ev.dataTransfer?.setData("application/x-cove-path", path);
            ev.dataTransfer && (ev.dataTransfer.effectAllowed = "move");
          }}
          onDragOver={(ev) => {
            if (!ev.dataTransfer?.types.includes("application/x-cove-path")) return;
            ev.preventDefault();
            ev.stopPropagation();
            setDropDir(e.kind === "dir" ? path : parentOf(path));
          }}
          onDragLeave={() => setDropDir(null)}
          onDrop={(ev) => {
            ev.preventDefault();
            ev.stopPropagation();
            setDropDir(null);
            const from = ev.dataTransfer?.getData("application/x-cove-path");
            if (from) void move(from, e.kind === "dir" ? path : parentOf(path));
          }}
        >
          <span class="twisty">{e.kind === "dir" ? (open ? "▾" : "▸") : ""}</span>
          <span class="name">{e.name}</span>
          {e.kind === "symlink" && <span class="muted small"> → {e.target}</span>}
        </li>,
      );
      if (open) out.push(...renderDir(path, depth + 1));
    }
    return out;
  };

  return (
    <div
      class={`file-tree${dropDir === "" ? " drop" : ""}`}
      data-testid="file-tree"
      onContextMenu={(ev) => {
        ev.preventDefault();
        setMenu({ x: ev.clientX, y: ev.clientY, items: dirMenu("") });
      }}
      onDragOver={(ev) => {
        if (!ev.dataTransfer?.types.includes("application/x-cove-path")) return;
        ev.preventDefault();
        setDropDir("");
      }}
      onDrop={(ev) => {
        ev.preventDefault();
        setDropDir(null);
        const from = ev.dataTransfer?.getData("application/x-cove-path");
        if (from) void move(from, "");
      }}
    >
      <div class="pane-title">
        <span>Files</span>
        <span class="spacer" />
        <button class="icon" title="New file" data-testid="new-file" onClick={() => setDialog({ kind: "new-file", dir: "" })}>+</button>
        <button class="icon" title="New folder" data-testid="new-folder" onClick={() => setDialog({ kind: "new-folder", dir: "" })}>⊞</button>
        <button class="icon" title="Refresh" onClick={() => void session.tree.list("")}>⟳</button>
      </div>
      {session.tree.error && <p class="form-error small">{session.tree.error}</p>}
      <ul class="tree" role="tree">{renderDir("", 0)}</ul>
      {menu && <ContextMenu {...menu} onClose={() => setMenu(null)} />}
      {dialog && (dialog.kind === "new-file" || dialog.kind === "new-folder") && (
        <PromptDialog
          title={dialog.kind === "new-file" ? "New file" : "New folder"}
          label={dialog.dir ? `Name (in ${dialog.dir}/)` : "Name"}
          action="Create"
          validate={validateName}
          onSubmit={(v) => (dialog.kind === "new-file" ? session.tree.createFile(joinPath(dialog.dir, v)) : session.tree.createDir(joinPath(dialog.dir, v)))}
          onClose={() => setDialog(null)}
        />
      )}
      {dialog?.kind === "rename" && (
        <PromptDialog
          title={`Rename ${baseName(dialog.path)}`}
          label="New path"
          initial={dialog.path}
          action="Rename"
          validate={(v) => validateName(v) ?? (v.trim() === dialog.path ? "That is the current name." : null)}
          onSubmit={(v) => session.tree.rename(dialog.path, v)}
          onClose={() => setDialog(null)}
        />
      )}
      {dialog?.kind === "delete" && (
        <ConfirmDialog
          title={`Delete ${baseName(dialog.path)}`}
          danger
          action="Delete"
          message={<p>Delete <b>{dialog.path}</b>{dialog.isDir ? " and everything in it" : ""}? Its past versions stay in the project history.</p>}
          onConfirm={() => session.tree.remove(dialog.path)}
          onClose={() => setDialog(null)}
        />
      )}
    </div>
  );
}
