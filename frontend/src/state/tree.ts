// The file tree's model: directories listed on demand (lazy), kept in step
// with the change feed (docs/protocol.md §10) by re-listing the listed
// directories an event touches. Re-listing one directory is one fs.list,
// cheaper and far simpler than patching entries (an event carries no kind
// or size), and it cannot drift from the workspace.

import type { ChangeEvent, Entry } from "../protocol/types";

export function parentOf(path: string): string {
  const i = path.lastIndexOf("/");
  return i < 0 ? "" : path.slice(0, i);
}

export function baseName(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1);
}

export function joinPath(dir: string, name: string): string {
  return dir ? `${dir}/${name}` : name;
}

/** `path` is `dir` or lies below it ("" contains everything). */
export function isUnder(path: string, dir: string): boolean {
  return dir === "" || path === dir || path.startsWith(`${dir}/`);
}

export interface TreeUpdate {
  /** Listed directories to list again, each once. */
  relist: string[];
  /** Listed directories that are gone (deleted or moved away): forget them. */
  forget: string[];
}

/**
 * Which listed directories a batch of events makes stale. `listed` is the
 * set of directories whose entries are shown (expanded, or the root).
 */
export function treeUpdate(events: ChangeEvent[], listed: Iterable<string>): TreeUpdate {
  const dirs = [...listed];
  const relist = new Set<string>();
  const forget = new Set<string>();
  const touch = (path: string) => {
    const parent = parentOf(path);
    if (dirs.includes(parent)) relist.add(parent);
  };
  const gone = (path: string) => {
    for (const d of dirs) if (d !== "" && isUnder(d, path)) forget.add(d);
  };
  for (const ev of events) {
    switch (ev.kind) {
      case "create":
      case "modify":
        touch(ev.path);
        // A directory replaced by a file (or the reverse) shows as modify.
        if (dirs.includes(ev.path)) relist.add(ev.path);
        break;
      case "delete":
        touch(ev.path);
        gone(ev.path);
        break;
      case "rename":
        touch(ev.path);
        if (ev.from !== undefined) {
          touch(ev.from);
          gone(ev.from);
        }
        break;
      case "overflow":
        // Everything under the path, and its parent (the path itself may be new or gone).
        for (const d of dirs) if (isUnder(d, ev.path) || (ev.path !== "" && d === parentOf(ev.path))) relist.add(d);
        break;
    }
  }
  for (const d of forget) relist.delete(d);
  return { relist: [...relist].sort(), forget: [...forget].sort() };
}

/** Directories first, then names in a natural, case-insensitive order (as editors show them). */
export function sortEntries(entries: Entry[]): Entry[] {
  const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });
  return [...entries].sort((a, b) => {
    const da = a.kind === "dir" ? 0 : 1;
    const db = b.kind === "dir" ? 0 : 1;
    return da - db || collator.compare(a.name, b.name) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
  });
}

/** Where a dragged entry lands: null when the move is a no-op or impossible. */
export function moveTarget(from: string, intoDir: string): string | null {
  const to = joinPath(intoDir, baseName(from));
  if (to === from) return null;
  if (isUnder(intoDir, from)) return null; // into itself or below
  return to;
}

/** A new name for a file or folder, as typed: one path component or a relative path. */
export function validateName(name: string): string | null {
  const n = name.trim();
  if (!n) return "The name must not be empty.";
  if (n.startsWith("/")) return "Use a path relative to the project.";
  for (const part of n.split("/")) {
    if (!part) return "The path has an empty component.";
    if (part === "." || part === "..") return "'.' and '..' are not allowed.";
    if (new TextEncoder().encode(part).byteLength > 255) return "A name is at most 255 bytes.";
  }
  if (n.includes("\0")) return "The name contains a NUL character.";
  return null;
}
