// One open IDE: the socket to the workspace, the file tree, the open
// files, the terminals. UI components read it and re-render on `changed`;
// it holds no DOM except through the sinks and hooks the views register.
//
// Reconnect (docs/protocol.md §8) is handled here, once: after each welcome
// the session re-subscribes to the change feed, re-lists the tree, re-stats
// the open files and re-attaches the terminals (a snapshot restores each
// screen). Unsaved buffers live in this object, so no reconnect loses them.

import { api, ApiError, errorText, type Workspace } from "../api";
import { CoveClient, WorkspaceNotRunning, type ConnState } from "../protocol/client";
import { ackFrame, inputFrame, type Frame } from "../protocol/frames";
import { TerminalStream, type TermSink } from "../protocol/terminal";
import { ProtocolError, type ChangeEvent, type Durability, type Entry, type Mutation, type RequestFields, type RequestResult, type Status, type TerminalInfo, type WriteResult } from "../protocol/types";
import { decodeRead, isDirty, newDoc, onDiskVersion, type Doc } from "../state/docs";
import { isUnder, joinPath, parentOf, sortEntries, treeUpdate } from "../state/tree";

export interface TermView {
  sink: TermSink;
  resize(cols: number, rows: number): void;
  /** Ask for the pane's size again (after an attach applied the server's). */
  refit?(): void;
}

export interface Conflict {
  path: string;
  theirs: string | null; // null: deleted on disk
  theirsVersion: string | null;
}

const ORPHAN_FRAME_LIMIT = 256;

export class IdeSession {
  workspace: Workspace | null = null;
  projectName = "";
  client: CoveClient;
  conn: ConnState = "connecting";
  status: Status | null = null;
  startError: string | null = null;

  tree = new Map<string, Entry[]>();
  expanded = new Set<string>([""]);
  treeError: string | null = null;

  docs = new Map<string, Doc>();
  tabs: string[] = [];
  active: string | null = null;
  conflict: Conflict | null = null;

  terminals: TerminalInfo[] = [];
  activeTerminal: number | null = null;
  private streams = new Map<number, TerminalStream>();
  private views = new Map<number, TermView>();
  responder = new Map<number, boolean>();
  private orphanFrames = new Map<number, Frame[]>();
  private autoTerminal = false;

  /** Saves answered but not yet durable (§9.6): request id → path. Saves in flight are `doc.saving`. */
  pendingSaves = new Map<number, string>();
  private subscription: number | null = null;
  private listeners = new Set<() => void>();
  /** The editor sets this to replace a model's text (a reload from disk). */
  editorSetText: (path: string, text: string) => void = () => {};
  private relistTimer: ReturnType<typeof setTimeout> | null = null;
  private relistQueue = new Set<string>();

  constructor(readonly id: string) {
    this.client = new CoveClient({ ticket: () => this.ticket() });
    this.client.onState((s) => {
      this.conn = s;
      // Attachments end with the socket; their pending acks must not leak into the next one.
      if (s !== "open") for (const st of this.streams.values()) st.dispose();
      this.emit();
    });
    this.client.onWelcome(({ welcome, restarted }) => void this.onWelcome(welcome.terminals, restarted, welcome.status));
    this.client.onEvent((ev) => this.onEvent(ev));
    this.client.onFrame((f) => this.onFrame(f));
  }

  onChange(f: () => void): () => void {
    this.listeners.add(f);
    return () => void this.listeners.delete(f);
  }

  emit(): void {
    if (this.readyDone) {
      this.saveTabs();
      this.stashSoon();
    }
    for (const f of this.listeners) f();
  }

  async open(): Promise<void> {
    try {
      const p = await api.project(this.id);
      this.projectName = p.name;
      document.title = `${p.name} · Cove`;
    } catch (e) {
      this.startError = e instanceof ApiError && e.code === "not_found" ? "There is no such project." : errorText(e);
      this.emit();
      return;
    }
    this.client.start();
  }

  close(): void {
    // The latest buffers go to the stash now; no timer of this page may
    // write after the next page of the project has read it.
    if (this.stashTimer) clearTimeout(this.stashTimer);
    this.stashTimer = null;
    this.flushStash();
    this.stashRestored = false;
    this.client.close();
    if (this.relistTimer) clearTimeout(this.relistTimer);
  }

  /** Before each (re)connect: start the workspace if needed and get a fresh token. */
  private async ticket() {
    // The first connect starts the workspace (opening a project starts it);
    // later ones only ask for a token, so a workspace stopped on purpose
    // stays stopped until the person restarts it (§15, 4004).
    let ws: Workspace;
    if (!this.workspace) {
      ws = await api.start(this.id);
    } else {
      try {
        ws = await api.token(this.id);
      } catch (e) {
        if (e instanceof ApiError && e.code === "workspace_not_running") {
          void this.refreshWorkspace(); // its state and reason, for the page
          throw new WorkspaceNotRunning(String(e.details.state ?? "stopped"));
        }
        throw e;
      }
    }
    this.workspace = ws;
    this.emit();
    return { url: ws.urls.ide_socket, token: ws.token ?? "" };
  }

  /** The person asked to start a stopped workspace again. */
  async restart(): Promise<void> {
    const ws = await api.start(this.id);
    this.workspace = ws;
    this.client.retryNow();
  }

  async refreshWorkspace(): Promise<void> {
    try {
      const token = this.workspace?.token ?? null;
      const ws = await api.workspace(this.id);
      this.workspace = { ...ws, token };
      this.emit();
    } catch {
      // the status bar keeps the last known mode
    }
  }

  // ---- welcome, events, frames ------------------------------------------

  private async onWelcome(terms: TerminalInfo[], restarted: boolean, status: Status) {
    performance.mark("cove:welcome"); // for the load benchmark (benchmarks.md)
    this.status = status;
    // Saves answered on an older connection get no fs.durable here (§9.6);
    // a store that has caught up settles them.
    if (status.sync.state === "saved") this.pendingSaves.clear();
    if (restarted) {
      for (const id of [...this.streams.keys()]) this.streams.delete(id);
      this.terminals = [];
      this.activeTerminal = null;
    }
    this.terminals = terms;
    if (this.activeTerminal === null || !terms.some((t) => t.id === this.activeTerminal)) this.activeTerminal = terms[0]?.id ?? null;
    this.emit();
    void this.refreshWorkspace();
    // §8: attach, subscribe, re-list, re-stat.
    for (const t of terms) if (this.views.has(t.id)) void this.attach(t.id);
    try {
      const r = await this.client.request("fs.subscribe", { path: "" });
      this.subscription = r.subscription;
    } catch {
      this.subscription = null;
    }
    if (status.ready) void this.afterReady();
    // A restarted workspace has no terminals left: give the person one again.
    if (restarted && terms.length === 0 && status.ready) void this.newTerminal().catch(() => {});
  }

  private readyDone = false;
  private async afterReady() {
    // Re-list what is shown; collapsed directories are listed again when opened.
    for (const d of [...this.tree.keys()]) if (d !== "" && !this.expanded.has(d)) this.tree.delete(d);
    for (const dir of this.tree.size ? this.listedDirs() : [""]) this.queueRelist(dir);
    for (const d of this.docs.values()) void this.checkDisk(d.path);
    if (!this.readyDone) {
      this.readyDone = true;
      void this.restoreTabs();
      if (this.terminals.length === 0 && !this.autoTerminal) {
        this.autoTerminal = true;
        void this.newTerminal();
      }
    }
  }

  private onEvent(ev: { type: string; [k: string]: any }) {
    switch (ev.type) {
      case "status": {
        const wasReady = this.status?.ready ?? false;
        this.status = ev.status as Status;
        if (!wasReady && this.status.ready) void this.afterReady();
        if (!wasReady) void this.refreshWorkspace();
        // A reconnected page has no fs.durable for its old saves: the store
        // having caught up (saved) settles them (§9.6).
        if (this.status.sync.state === "saved" && this.pendingSaves.size && this.conn === "open") {
          this.pendingSaves.clear();
        }
        this.emit();
        break;
      }
      case "fs.durable":
        this.pendingSaves.delete(ev.request as number);
        this.emit();
        break;
      case "fs.changes":
        if (ev.subscription === this.subscription) this.onChanges(ev.events as ChangeEvent[]);
        break;
      case "term.created":
        if (!this.terminals.some((t) => t.id === ev.terminal.id)) {
          this.terminals = [...this.terminals, ev.terminal as TerminalInfo];
          this.emit();
        }
        break;
      case "term.resized":
        this.updateTerminal(ev.terminal, { cols: ev.cols, rows: ev.rows });
        this.views.get(ev.terminal)?.resize(ev.cols, ev.rows);
        break;
      case "term.responder":
        this.responder.set(ev.terminal, ev.responder);
        break;
      case "term.exited":
        this.updateTerminal(ev.terminal, { state: "exited", exit: ev.exit });
        break;
      case "term.closed":
        this.terminals = this.terminals.filter((t) => t.id !== ev.terminal);
        this.streams.delete(ev.terminal);
        if (this.activeTerminal === ev.terminal) this.activeTerminal = this.terminals[0]?.id ?? null;
        this.emit();
        break;
    }
  }

  private updateTerminal(id: number, patch: Partial<TerminalInfo>) {
    this.terminals = this.terminals.map((t) => (t.id === id ? { ...t, ...patch } : t));
    this.emit();
  }

  private onFrame(f: Frame) {
    const s = this.streams.get(f.terminal);
    if (s) return s.onFrame(f);
    // Output of a terminal whose create/attach result has not been handled yet.
    const q = this.orphanFrames.get(f.terminal) ?? [];
    if (q.length < ORPHAN_FRAME_LIMIT) q.push({ ...f, payload: f.payload.slice() });
    this.orphanFrames.set(f.terminal, q);
  }

  // ---- terminals ----------------------------------------------------------

  /** A terminal view mounted: attach it (a snapshot restores its screen). */
  registerView(id: number, view: TermView): () => void {
    this.views.set(id, view);
    if (this.conn === "open") void this.attach(id);
    return () => {
      this.views.delete(id);
      this.streams.delete(id);
      if (this.conn === "open" && this.terminals.some((t) => t.id === id)) {
        this.client.request("term.detach", { terminal: id }).catch(() => {});
      }
    };
  }

  private stream(id: number): TerminalStream | null {
    const view = this.views.get(id);
    if (!view) return null;
    const ackBytes = this.client.welcome?.limits.ack_bytes ?? 65536;
    this.streams.get(id)?.dispose();
    const s = new TerminalStream(id, view.sink, (off) => this.client.sendFrame(ackFrame(id, off)), ackBytes);
    this.streams.set(id, s);
    return s;
  }

  private async attach(id: number) {
    const s = this.stream(id);
    if (!s) return;
    try {
      const r = await this.client.request("term.attach", { terminal: id });
      s.attached(r.offset);
      this.responder.set(id, r.responder);
      this.updateTerminal(id, r.terminal);
      this.views.get(id)?.resize(r.terminal.cols, r.terminal.rows);
      this.flushOrphans(id);
      this.views.get(id)?.refit?.();
    } catch (e) {
      if (e instanceof ProtocolError && e.code === "not_found") {
        this.terminals = this.terminals.filter((t) => t.id !== id);
        this.emit();
      }
    }
  }

  private flushOrphans(id: number) {
    const q = this.orphanFrames.get(id);
    this.orphanFrames.delete(id);
    const s = this.streams.get(id);
    if (q && s) for (const f of q) s.onFrame(f);
  }

  /** The terminal the person just asked for: its view takes the keyboard once. */
  focusTerminal: number | null = null;

  /** `focus`: the person asked for it (button, shortcut); one the page opens by itself does not take the keyboard. */
  async newTerminal(focus = false): Promise<void> {
    const n = this.terminals.length + 1;
    try {
      const r = await this.client.request("term.create", {
        cols: 100,
        rows: 24,
        name: `Terminal ${n}`,
      });
      // The view mounts after this render; until then its output waits as orphans.
      this.terminals = [...this.terminals.filter((t) => t.id !== r.terminal.id), r.terminal];
      this.responder.set(r.terminal.id, r.responder ?? true);
      this.activeTerminal = r.terminal.id;
      if (focus) this.focusTerminal = r.terminal.id;
      this.createdHere.add(r.terminal.id);
      this.emit();
    } catch (e) {
      throw new Error(`Could not open a terminal: ${errorText(e)}`);
    }
  }
  /** Terminals created by this page: already attached at offset 0, no snapshot comes. */
  private createdHere = new Set<number>();

  /** Called by a view for a terminal it did not attach itself (one this page created). */
  adoptView(id: number, view: TermView): () => void {
    if (!this.createdHere.has(id)) return this.registerView(id, view);
    this.createdHere.delete(id);
    this.views.set(id, view);
    const s = this.stream(id);
    s?.attached(0);
    this.flushOrphans(id);
    return () => {
      this.views.delete(id);
      this.streams.delete(id);
    };
  }

  async closeTerminal(id: number): Promise<void> {
    await this.client.request("term.close", { terminal: id });
  }

  input(id: number, data: Uint8Array): void {
    if (data.byteLength) this.client.sendFrame(inputFrame(id, data));
  }

  resizeTerminal(id: number, cols: number, rows: number): void {
    const t = this.terminals.find((x) => x.id === id);
    if (!t || (t.cols === cols && t.rows === rows) || this.conn !== "open") return;
    this.updateTerminal(id, { cols, rows });
    this.client.request("term.resize", { terminal: id, cols, rows }).catch(() => {});
  }

  isResponder(id: number): boolean {
    return this.responder.get(id) ?? true;
  }

  // ---- file tree -----------------------------------------------------------

  async listDir(dir: string): Promise<void> {
    try {
      const r = await this.client.request("fs.list", { path: dir });
      this.tree.set(dir, sortEntries(r.entries));
      this.treeError = null;
    } catch (e) {
      if (e instanceof ProtocolError && (e.code === "not_found" || e.code === "not_a_directory")) {
        this.forgetDir(dir);
      } else if (dir === "") {
        this.treeError = errorText(e);
      }
    }
    this.emit();
  }

  private forgetDir(dir: string) {
    for (const d of [...this.tree.keys()]) if (d !== "" && isUnder(d, dir)) this.tree.delete(d);
    for (const d of [...this.expanded]) if (d !== "" && isUnder(d, dir)) this.expanded.delete(d);
  }

  async toggleDir(dir: string): Promise<void> {
    if (this.expanded.has(dir)) {
      this.expanded.delete(dir);
      this.emit();
      return;
    }
    this.expanded.add(dir);
    this.emit();
    await this.listDir(dir); // always fresh: a collapsed directory gets no change events
  }

  /** Expanded and listed: the directories whose entries are on screen. */
  private listedDirs(): string[] {
    return [...this.tree.keys()].filter((d) => d === "" || this.expanded.has(d));
  }

  private onChanges(events: ChangeEvent[]) {
    const { relist, forget } = treeUpdate(events, this.listedDirs());
    for (const d of forget) this.forgetDir(d);
    for (const d of relist) this.queueRelist(d);
    // Open files: compare versions with the disk.
    for (const ev of events) {
      for (const doc of this.docs.values()) {
        const hit =
          ev.kind === "overflow"
            ? isUnder(doc.path, ev.path)
            : doc.path === ev.path || (ev.from !== undefined && isUnder(doc.path, ev.from)) || (ev.kind === "delete" && isUnder(doc.path, ev.path));
        if (hit) void this.checkDisk(doc.path);
      }
    }
    if (forget.length) this.emit();
  }

  private queueRelist(dir: string) {
    this.relistQueue.add(dir);
    if (this.relistTimer) return;
    this.relistTimer = setTimeout(() => {
      this.relistTimer = null;
      const dirs = [...this.relistQueue];
      this.relistQueue.clear();
      for (const d of dirs) void this.listDir(d);
    }, 30);
  }

  /**
   * A mutating request (§9.6): its change counts as "Saving…" until it is
   * durable, like a save's.
   */
  private async mutate<K extends Mutation>(type: K, fields: RequestFields<K>, path: string): Promise<RequestResult<K>> {
    let requestId = 0;
    const r = await this.client.request(type, fields, (id) => (requestId = id));
    const durability: Durability = r;
    if (!durability.durable) {
      this.pendingSaves.set(requestId, path);
      this.emit();
    }
    return r;
  }

  async createFile(path: string): Promise<void> {
    await this.mutate("fs.write", { path, content: "", encoding: "utf8", base_version: null, parents: true }, path);
    await this.revealParents(path);
    await this.openFile(path);
  }

  async createDir(path: string): Promise<void> {
    await this.mutate("fs.mkdir", { path, parents: true }, path);
    await this.revealParents(`${path}/x`);
  }

  private async revealParents(path: string) {
    let d = parentOf(path);
    const chain: string[] = [];
    while (d) {
      chain.unshift(d);
      d = parentOf(d);
    }
    for (const c of chain) {
      this.expanded.add(c);
      await this.listDir(c);
    }
    await this.listDir("");
  }

  async rename(from: string, to: string): Promise<void> {
    await this.mutate("fs.rename", { from, to }, to);
    // Open documents follow their file (or the directory it is in).
    const map = (p: string) => (isUnder(p, from) ? to + p.slice(from.length) : p);
    for (const d of [...this.docs.values()]) {
      if (!isUnder(d.path, from)) continue;
      const old = d.path;
      this.docs.delete(old);
      d.path = map(old);
      this.docs.set(d.path, d);
      this.renamedHook(old, d.path);
    }
    this.tabs = this.tabs.map(map);
    if (this.active) this.active = map(this.active);
    this.emit();
    // A change event for the old path may have arrived first and marked it deleted.
    for (const d of this.docs.values()) if (isUnder(d.path, to)) void this.checkDisk(d.path);
  }
  renamedHook: (from: string, to: string) => void = () => {};

  async remove(path: string): Promise<void> {
    await this.mutate("fs.delete", { path, recursive: true }, path);
  }

  /** Every file path, for quick open: a walk of fs.list, skipping heavy directories. */
  async allFiles(limit = 5000): Promise<string[]> {
    const out: string[] = [];
    const queue = [""];
    while (queue.length && out.length < limit) {
      const dir = queue.shift()!;
      let entries: Entry[];
      try {
        entries = (await this.client.request("fs.list", { path: dir })).entries;
      } catch {
        continue;
      }
      for (const e of entries) {
        const p = joinPath(dir, e.name);
        if (e.kind === "dir") {
          if (!["node_modules", ".git", "target", "__pycache__", ".venv", "dist"].includes(e.name)) queue.push(p);
        } else out.push(p);
      }
    }
    return out.sort();
  }

  // ---- documents -------------------------------------------------------------

  /** Opens a tab. `background`: restored tabs never take the focus from one the person opened. */
  async openFile(path: string, background = false): Promise<void> {
    if (!background) this.personOpened = true;
    if (!this.docs.has(path)) {
      const doc = newDoc(path);
      this.docs.set(path, doc);
      this.tabs = [...this.tabs, path];
      if (!background || !this.personOpened) this.active = path;
      this.emit();
      await this.load(doc);
    }
    if (!background) this.active = path;
    this.emit();
  }
  private personOpened = false;

  private async load(doc: Doc) {
    // A reload must not eat keys typed while the read was on its way.
    const before = doc.text;
    const first = !doc.loaded;
    try {
      const r = await this.client.request("fs.read", { path: doc.path });
      const d = decodeRead(r);
      if (!first && (doc.text !== before || doc.saving)) {
        doc.changedOnDisk = true;
        this.emit();
        return;
      }
      Object.assign(doc, { kind: d.kind, message: d.message, base: r.version, saved: d.text, text: d.text, changedOnDisk: false, deletedOnDisk: false, loaded: true });
      this.editorSetText(doc.path, d.text);
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
    this.emit();
  }

  // Open tabs survive a reload (per project, in this browser). A project
  // opened for the first time shows its README, so the editor is never empty.
  private tabsKey() {
    return `cove.tabs.${this.id}`;
  }

  saveTabs(): void {
    try {
      localStorage.setItem(this.tabsKey(), JSON.stringify({ tabs: this.tabs, active: this.active }));
    } catch {
      // storage full or disabled: tabs are a convenience
    }
  }

  private async restoreTabs() {
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
    for (const t of saved.tabs.slice(0, 20)) {
      if (typeof t !== "string" || this.docs.has(t)) continue;
      try {
        await this.client.request("fs.stat", { path: t }); // skip files deleted since
      } catch {
        continue;
      }
      await this.openFile(t, true);
    }
    if (!this.personOpened && saved.active && this.docs.has(saved.active)) this.active = saved.active;
    await this.restoreStash();
    this.emit();
  }

  closeTab(path: string): void {
    this.docs.delete(path);
    const i = this.tabs.indexOf(path);
    this.tabs = this.tabs.filter((t) => t !== path);
    if (this.active === path) this.active = this.tabs[Math.min(i, this.tabs.length - 1)] ?? null;
    this.emit();
  }

  /** The editor's buffer changed. Re-renders only when the dirty mark flips. */
  setText(path: string, text: string): void {
    const d = this.docs.get(path);
    if (!d) return;
    const was = isDirty(d);
    d.text = text;
    if (was !== isDirty(d)) this.emit();
    else this.stashSoon();
  }

  // Hot exit: unsaved buffers are also kept in this browser's localStorage
  // (debounced, up to 4 M characters), so a reload, a crashed tab or a
  // closed window gets them back as unsaved tabs. Saved or closed buffers
  // leave the stash.
  private stashKey() {
    return `cove.unsaved.${this.id}`;
  }
  private stashTimer: ReturnType<typeof setTimeout> | null = null;
  private stashRestored = false;
  private stashSoon() {
    if (this.stashTimer) return;
    this.stashTimer = setTimeout(() => {
      this.stashTimer = null;
      this.flushStash();
    }, 300);
  }

  flushStash(): void {
    // Before this page has taken the old stash back, keep its entries: they
    // are buffers of an earlier page that nobody has seen yet.
    let out: Record<string, { text: string; base: string | null }> = {};
    if (!this.stashRestored) {
      try {
        out = JSON.parse(localStorage.getItem(this.stashKey()) ?? "{}") ?? {};
      } catch {
        out = {};
      }
    }
    let chars = 0;
    for (const d of this.docs.values()) {
      if (!d.loaded || !isDirty(d)) continue;
      chars += d.text.length;
      if (chars > 4_000_000) break;
      out[d.path] = { text: d.text, base: d.base };
    }
    try {
      if (Object.keys(out).length) localStorage.setItem(this.stashKey(), JSON.stringify(out));
      else localStorage.removeItem(this.stashKey());
    } catch {
      // storage full or disabled: the buffers are still in this page
    }
  }

  /** Buffers left unsaved by an earlier page of this project, back as unsaved tabs. */
  private async restoreStash() {
    let stash: Record<string, { text: string; base: string | null }> = {};
    try {
      stash = JSON.parse(localStorage.getItem(this.stashKey()) ?? "{}") ?? {};
    } catch {
      stash = {};
    }
    this.stashRestored = true;
    for (const [path, { text, base }] of Object.entries(stash)) {
      if (typeof text !== "string") continue;
      if (!this.docs.has(path)) {
        try {
          await this.client.request("fs.stat", { path });
          await this.openFile(path, true);
        } catch {
          // Gone from the disk: keep the text; saving creates the file again.
          this.docs.set(path, newDoc(path, { loaded: true, text, deletedOnDisk: base !== null }));
          this.tabs = [...this.tabs, path];
        }
      }
      const d = this.docs.get(path);
      if (!d || d.kind !== "text" || !d.loaded || d.text !== d.saved) continue;
      d.text = text;
      if (base !== d.base && d.base !== null) d.changedOnDisk = true; // the next save asks
      this.editorSetText(path, text);
    }
    this.emit();
  }

  savingCount(): number {
    let n = this.pendingSaves.size;
    for (const d of this.docs.values()) if (d.saving) n++;
    return n;
  }

  unsavedCount(): number {
    let n = 0;
    for (const d of this.docs.values()) if (isDirty(d)) n++;
    return n;
  }

  /** Ctrl+S. A version mismatch opens the conflict choice instead of overwriting. */
  async save(path: string, force: { base: string | null } | null = null): Promise<void> {
    const d = this.docs.get(path);
    if (!d || d.kind !== "text" || d.saving || !d.loaded) return;
    if (!isDirty(d) && !force && !d.deletedOnDisk) return;
    const content = d.text;
    d.saving = true;
    this.emit();
    try {
      const base = force ? force.base : d.base;
      const r = await this.writeTracked(path, content, base);
      d.base = r.version;
      d.saved = content;
      d.changedOnDisk = false;
      d.deletedOnDisk = false;
      this.conflict = null;
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
        this.conflict = { path, theirs, theirsVersion: cur };
      } else {
        throw new Error(`Could not save ${path}: ${errorText(e)}`);
      }
    } finally {
      d.saving = false;
      this.emit();
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

  /** Conflict choices. */
  async overwrite(): Promise<void> {
    const c = this.conflict;
    if (!c) return;
    await this.save(c.path, { base: c.theirsVersion });
  }

  takeTheirs(): void {
    const c = this.conflict;
    if (!c) return;
    const d = this.docs.get(c.path);
    this.conflict = null;
    if (d) void this.load(d);
    this.emit();
  }

  dismissConflict(): void {
    this.conflict = null;
    this.emit();
  }

  /** Compares an open file with the disk (after a change event or reconnect). */
  async checkDisk(path: string): Promise<void> {
    const d = this.docs.get(path);
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
        this.emit();
        break;
      case "mark-deleted":
        d.deletedOnDisk = true;
        this.emit();
        break;
      case "clear-marks":
        d.changedOnDisk = d.deletedOnDisk = false;
        this.emit();
        break;
    }
  }
}

function toBase64(bytes: Uint8Array): string {
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(bin);
}


