// Open files (editor tabs): what a change on disk or a save result means
// for a buffer. The rules (issue 5, docs/protocol.md §9–§10):
// - a clean buffer follows the disk by itself;
// - a dirty one is never overwritten: the person chooses on the next save
//   (conflict: compare, overwrite, or take the disk's version);
// - an unsaved buffer survives reconnects (it lives in this page, not the socket).

export type DocKind = "text" | "binary" | "too_large";

export interface Doc {
  path: string;
  kind: DocKind;
  /** Why the file cannot be edited (binary, too large). */
  message: string;
  /** Version of the file when last read or written by this page (null: not on disk). */
  base: string | null;
  /** Content at `base`. */
  saved: string;
  /** The buffer as edited. */
  text: string;
  saving: boolean;
  /** The first read has completed (until then the buffer is read-only and cannot be saved). */
  loaded: boolean;
  /** The file changed on disk while the buffer had edits. */
  changedOnDisk: boolean;
  deletedOnDisk: boolean;
}

export function newDoc(path: string, init: Partial<Doc> = {}): Doc {
  return { path, kind: "text", message: "", base: null, saved: "", text: "", saving: false, loaded: false, changedOnDisk: false, deletedOnDisk: false, ...init };
}

export function isDirty(d: Doc): boolean {
  return d.kind === "text" && d.text !== d.saved;
}

export type DiskAction = "none" | "reload" | "mark-changed" | "mark-deleted" | "clear-marks";

/** The file's version on disk is now `version` (null: it is gone). */
export function onDiskVersion(d: Doc, version: string | null): DiskAction {
  if (d.saving) return "none"; // the save's own result decides; checked again after it
  if (version === null) return d.base === null ? "none" : "mark-deleted";
  if (version === d.base) return d.changedOnDisk || d.deletedOnDisk ? "clear-marks" : "none";
  if (d.kind !== "text" || !isDirty(d)) return "reload";
  return "mark-changed";
}

/** What the person sees in the tab title. */
export function tabMarker(d: Doc): string {
  if (d.deletedOnDisk) return "deleted";
  if (isDirty(d)) return "●";
  return "";
}

/** Monaco's language id for a path, by extension or well-known name. */
export function languageOf(path: string): string {
  const name = path.slice(path.lastIndexOf("/") + 1).toLowerCase();
  if (name === "dockerfile") return "dockerfile";
  if (name === "makefile") return "makefile";
  const ext = name.includes(".") ? name.slice(name.lastIndexOf(".") + 1) : "";
  const byExt: Record<string, string> = {
    js: "javascript", mjs: "javascript", cjs: "javascript", jsx: "javascript",
    ts: "typescript", mts: "typescript", cts: "typescript", tsx: "typescript",
    json: "json", md: "markdown", markdown: "markdown", html: "html", htm: "html",
    css: "css", scss: "scss", less: "less", py: "python", rs: "rust", go: "go",
    java: "java", c: "c", h: "c", cc: "cpp", cpp: "cpp", hpp: "cpp", cs: "csharp",
    rb: "ruby", php: "php", sh: "shell", bash: "shell", zsh: "shell", yml: "yaml",
    yaml: "yaml", toml: "ini", ini: "ini", xml: "xml", svg: "xml", sql: "sql",
    kt: "kotlin", swift: "swift", lua: "lua", r: "r", txt: "plaintext",
  };
  return byExt[ext] ?? "plaintext";
}

/** Decodes fs.read's content: text (utf8) or a reason it is not editable. */
export function decodeRead(r: { content: string; encoding: "utf8" | "base64"; size: number }): { kind: DocKind; text: string; message: string } {
  if (r.encoding === "utf8") return { kind: "text", text: r.content, message: "" };
  return { kind: "binary", text: "", message: `This is a binary file (${r.size.toLocaleString("en-US")} bytes); it cannot be edited here.` };
}
