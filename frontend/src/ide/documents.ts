// The session's open files: the buffers, the tabs and the active one, saves
// and their durability (§9.6), and the conflict choice a save can open.
// Unsaved buffers live here, not in the socket, so no reconnect loses them.
//
// The rules for one buffer against the disk are pure functions in
// state/docs.ts; this holds the buffers and the requests. The editor
// registers hooks (attachEditor) to be told when a buffer's text is
// replaced from disk or a file was renamed.

import { errorText } from "../api";
import type { CoveClient } from "../protocol/client";
import { ProtocolError, type ChangeEvent, type Durability, type Mutation, type RequestFields, type RequestResult, type WriteResult } from "../protocol/types";
import { decodeRead, isDirty, newDoc, onDiskVersion, type Doc } from "../state/docs";
import { isUnder } from "../state/tree";

export interface Conflict {
  path: string;
  theirs: string | null; // null: deleted on disk
  theirsVersion: string | null;
}

/** What the editor does for the session. */
export interface EditorHooks {
  /** Replace a model's text (a reload from disk). */
  setText(path: string, text: string): void;
  /** An open file was renamed (or its directory was). */
  renamed(from: string, to: string): void;
}

const NO_EDITOR: EditorHooks = { setText: () => {}, renamed: () => {} };

/** Restored tabs at most, in the order they were open. */
const MAX_RESTORED_TABS = 20;

export class Documents {
  private readonly open = new Map<string, Doc>();
  private tabList: string[] = [];
  private activePath: string | null = null;
  private openConflict: Conflict | null = null;
  /** Saves answered but not yet durable (§9.6): request id → path. Saves in flight are `doc.saving`. */
  private readonly pending = new Map<number, string>();
  private editor: EditorHooks = NO_EDITOR;
  /** The person opened a tab: restored ones no longer take the focus. */
  private personOpened = false;

  /**
   * `changed`: what is shown changed (re-render). `edited`: a buffer's
   * text changed without anything else shown changing (the hot-exit stash).
   */
  constructor(
    private readonly projectId: string,
    private readonly client: CoveClient,
    private readonly changed: () => void,
    private readonly edited: () => void,
  ) {}

  /** Open files by path. */
  get docs(): ReadonlyMap<string, Doc> {
    return this.open;
  }

  get tabs(): readonly string[] {
    return this.tabList;
  }

  /** The path of the tab shown (null: none). */
  get active(): string | null {
    return this.activePath;
  }

  /** A save's version mismatch waiting for the person's choice. */
  get conflict(): Conflict | null {
    return this.openConflict;
  }

  /** The editor's hooks, until the returned function is called. */
  attachEditor(hooks: EditorHooks): () => void {
    this.editor = hooks;
    return () => {
      if (this.editor === hooks) this.editor = NO_EDITOR;
    };
  }

  // ---- tabs --------------------------------------------------------------------

  /** Opens a tab. `background`: restored tabs never take the focus from one the person opened. */
  async openFile(path: string, background = false): Promise<void> {
    if (!background) this.personOpened = true;
    if (!this.open.has(path)) {
      const doc = newDoc(path);
      this.open.set(path, doc);
      this.tabList = [...this.tabList, path];
      if (!background || !this.personOpened) this.activePath = path;
      this.changed();
      await this.load(doc);
    }
    if (!background) this.activePath = path;
    this.changed();
  }

  /** The person picked a tab. */
  activate(path: string): void {
    this.activePath = path;
    this.changed();
  }

  closeTab(path: string): void {
    this.open.delete(path);
    const i = this.tabList.indexOf(path);
    this.tabList = this.tabList.filter((t) => t !== path);
    if (this.activePath === path) this.activePath = this.tabList[Math.min(i, this.tabList.length - 1)] ?? null;
    this.changed();
  }

  /**
   * A buffer that comes back from the hot-exit stash although its file is
   * gone: kept (saving creates the file again), marked deleted if it had
   * been on disk. The caller re-renders.
   */
  addMissing(path: string, text: string, base: string | null): void {
    this.open.set(path, newDoc(path, { loaded: true, text, deletedOnDisk: base !== null }));
    this.tabList = [...this.tabList, path];
  }

  /**
   * An unsaved text from an earlier page, put back into a clean, loaded
   * buffer; if the file changed since that page read it, the buffer is
   * marked so the next save asks. The caller re-renders.
   */
  putBack(path: string, text: string, base: string | null): void {
    const d = this.open.get(path);
    if (!d || d.kind !== "text" || !d.loaded || d.text !== d.saved) return;
    d.text = text;
    if (base !== d.base && d.base !== null) d.changedOnDisk = true; // the next save asks
    this.editor.setText(path, text);
  }

  // Open tabs survive a reload (per project, in this browser). A project
  // opened for the first time shows its README, so the editor is never empty.
  private tabsKey() {
    return `cove.tabs.${this.projectId}`;
  }

  saveTabs(): void {
    try {
      localStorage.setItem(this.tabsKey(), JSON.stringify({ tabs: this.tabList, active: this.activePath }));
    } catch {
      // storage full or disabled: tabs are a convenience
    }
  }

  async restoreTabs(): Promise<void> {
    let saved: { tabs: string[]; active: string | null } | null = null;
    try {
      saved = JSON.parse(localStorage.getItem(this.tabsKey()) ?? "null");
    } catch {
      saved = null;
    }
    if (!saved) {
      try {
        await this.client.request("fs.stat", { path: "README.md" });
        saved = { tabs: ["README.md"], active: "README.md" };
      } catch {
        saved = { tabs: [], active: null };
      }
    }
    for (const t of saved.tabs.slice(0, MAX_RESTORED_TABS)) {
      if (typeof t !== "string" || this.open.has(t)) continue;
      try {
        await this.client.request("fs.stat", { path: t }); // skip files deleted since
      } catch {
        continue;
      }
      await this.openFile(t, true);
    }
    if (!this.personOpened && saved.active && this.open.has(saved.active)) this.activePath = saved.active;
    this.changed();
  }

  // ---- buffers and the disk --------------------------------------------------------

  private async load(doc: Doc) {
    // A reload must not eat keys typed while the read was on its way.
    const before = doc.text;
    const first = !doc.loaded;
    try {
      const r = await this.client.request("fs.read", { path: doc.path });
      const d = decodeRead(r);
      if (!first && (doc.text !== before || doc.saving)) {
        doc.changedOnDisk = true;
        this.changed();
        return;
      }
      Object.assign(doc, { kind: d.kind, message: d.message, base: r.version, saved: d.text, text: d.text, changedOnDisk: false, deletedOnDisk: false, loaded: true });
      this.editor.setText(doc.path, d.text);
    } catch (e) {
      if (e instanceof ProtocolError && e.code === "too_large") {
        const size = Number(e.details.size ?? 0);
        const limit = Number(e.details.limit ?? 0);
        Object.assign(doc, { kind: "too_large", message: `This file is ${size.toLocaleString("en-US")} bytes; the editor opens files up to ${limit.toLocaleString("en-US")} bytes. Use the terminal for it.` });
      } else if (e instanceof ProtocolError && e.code === "not_a_file") {
        Object.assign(doc, { kind: "binary", message: "This is not a regular file." });
      } else {
        Object.assign(doc, { kind: "binary", message: `Could not open the file: ${errorText(e)}` });
      }
    }
    this.changed();
  }

  /** The editor's buffer changed. Re-renders only when the dirty mark flips. */
  setText(path: string, text: string): void {
    const d = this.open.get(path);
    if (!d) return;
    const was = isDirty(d);
    d.text = text;
    if (was !== isDirty(d)) this.changed();
    else this.edited();
  }

  /** Compares an open file with the disk (after a change event or reconnect). */
  async checkDisk(path: string): Promise<void> {
    const d = this.open.get(path);
    if (!d) return;
    let version: string | null;
    try {
      const r = await this.client.request("fs.stat", { path, follow: true, version: true });
      version = r.entry.kind === "file" ? (r.entry.version ?? d.base) : null;
    } catch (e) {
      if (e instanceof ProtocolError && e.code === "not_found") version = null;
      else return;
    }
    switch (onDiskVersion(d, version)) {
      case "reload":
        await this.load(d);
        break;
      case "mark-changed":
        d.changedOnDisk = true;
        this.changed();
        break;
      case "mark-deleted":
        d.deletedOnDisk = true;
        this.changed();
        break;
      case "clear-marks":
        d.changedOnDisk = d.deletedOnDisk = false;
        this.changed();
        break;
    }
  }

  /** After a reconnect: every open file against the disk (§8). */
  checkAll(): void {
    for (const d of this.open.values()) void this.checkDisk(d.path);
  }

  /** A batch of the change feed (§10): open files it may touch are compared with the disk. */
  onChanges(events: ChangeEvent[]): void {
    for (const ev of events) {
      for (const doc of this.open.values()) {
        const hit =
          ev.kind === "overflow"
            ? isUnder(doc.path, ev.path)
            : doc.path === ev.path || (ev.from !== undefined && isUnder(doc.path, ev.from)) || (ev.kind === "delete" && isUnder(doc.path, ev.path));
        if (hit) void this.checkDisk(doc.path);
      }
    }
  }

  /** `from` was renamed to `to`: its open documents (or those under it) follow, tabs too. */
  moved(from: string, to: string): void {
    const map = (p: string) => (isUnder(p, from) ? to + p.slice(from.length) : p);
    for (const d of [...this.open.values()]) {
      if (!isUnder(d.path, from)) continue;
      const old = d.path;
      this.open.delete(old);
      d.path = map(old);
      this.open.set(d.path, d);
      this.editor.renamed(old, d.path);
    }
    this.tabList = this.tabList.map(map);
    if (this.activePath) this.activePath = map(this.activePath);
    this.changed();
    // A change event for the old path may have arrived first and marked it deleted.
    for (const d of this.open.values()) if (isUnder(d.path, to)) void this.checkDisk(d.path);
  }

  // ---- saves ---------------------------------------------------------------------

  /**
   * A mutating request (§9.6): its change counts as "Saving…" until it is
   * durable, like a save's. `path` is what it changes, for the record.
   */
  async mutate<K extends Mutation>(type: K, fields: RequestFields<K>, path: string): Promise<RequestResult<K>> {
    let requestId = 0;
    const r = await this.client.request(type, fields, (id) => (requestId = id));
    const durability: Durability = r;
    if (!durability.durable) {
      this.pending.set(requestId, path);
      this.changed();
    }
    return r;
  }

  /** `fs.durable` for request `id`. */
  durable(id: number): void {
    this.pending.delete(id);
    this.changed();
  }

  /**
   * The store has caught up (status `saved`): changes answered on an older
   * connection get no fs.durable on this one, so this settles them. The
   * caller re-renders.
   */
  settleAll(): void {
    this.pending.clear();
  }

  /** Changes answered but not yet durable. */
  get pendingCount(): number {
    return this.pending.size;
  }

  savingCount(): number {
    let n = this.pending.size;
    for (const d of this.open.values()) if (d.saving) n++;
    return n;
  }

  unsavedCount(): number {
    let n = 0;
    for (const d of this.open.values()) if (isDirty(d)) n++;
    return n;
  }

  /** Ctrl+S. A version mismatch opens the conflict choice instead of overwriting. */
  async save(path: string, force: { base: string | null } | null = null): Promise<void> {
    const d = this.open.get(path);
    if (!d || d.kind !== "text" || d.saving || !d.loaded) return;
    if (!isDirty(d) && !force && !d.deletedOnDisk) return;
    const content = d.text;
    d.saving = true;
    this.changed();
    try {
      const base = force ? force.base : d.base;
      const r = await this.writeTracked(path, content, base);
      d.base = r.version;
      d.saved = content;
      d.changedOnDisk = false;
      d.deletedOnDisk = false;
      this.openConflict = null;
    } catch (e) {
      if (e instanceof ProtocolError && e.code === "conflict") {
        const cur = (e.details.current_version as string | null) ?? null;
        let theirs: string | null = null;
        if (cur !== null) {
          try {
            const r = await this.client.request("fs.read", { path });
            theirs = r.encoding === "utf8" ? r.content : "(binary content)";
          } catch {
            theirs = null;
          }
        }
        this.openConflict = { path, theirs, theirsVersion: cur };
      } else {
        throw new Error(`Could not save ${path}: ${errorText(e)}`);
      }
    } finally {
      d.saving = false;
      this.changed();
    }
    void this.checkDisk(path);
  }

  /**
   * fs.write of the buffer. Text whose JSON would not fit in one message
   * (`max_message_bytes`, §4.2: heavy escaping can double it) goes as
   * base64, which always fits a file of `max_file_bytes` (§9.4).
   */
  private writeTracked(path: string, content: string, base: string | null): Promise<WriteResult> {
    const limit = this.client.welcome?.limits.max_message_bytes ?? 16 * 1024 * 1024;
    const json = JSON.stringify(content);
    const fields: RequestFields<"fs.write"> =
      json.length * 3 + 1024 < limit || new TextEncoder().encode(json).byteLength + 1024 < limit
        ? { path, content, encoding: "utf8", base_version: base, parents: true }
        : { path, content: toBase64(new TextEncoder().encode(content)), encoding: "base64", base_version: base, parents: true };
    return this.mutate("fs.write", fields, path);
  }

  // ---- the conflict choice ---------------------------------------------------------

  async overwrite(): Promise<void> {
    const c = this.openConflict;
    if (!c) return;
    await this.save(c.path, { base: c.theirsVersion });
  }

  takeTheirs(): void {
    const c = this.openConflict;
    if (!c) return;
    const d = this.open.get(c.path);
    this.openConflict = null;
    if (d) void this.load(d);
    this.changed();
  }

  dismissConflict(): void {
    this.openConflict = null;
    this.changed();
  }
}

function toBase64(bytes: Uint8Array): string {
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(bin);
}
