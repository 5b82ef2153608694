// One open IDE: the socket to the workspace and the slices that hold what
// the page shows: the terminals (terminals.ts), the file tree (tree.ts),
// the open files with their tabs, saves and conflicts (documents.ts) and
// the hot-exit stash (stash.ts). Views read the slices and call their
// methods; every method that changes what is shown calls `changed`, which
// re-renders the views (`onChange`) and keeps the tabs and the stash in
// this browser up to date. The session holds no DOM except through the
// sinks and hooks the views register.
//
// Reconnect (docs/protocol.md §8) is handled here, once: after each welcome
// the session re-subscribes to the change feed, re-lists the tree, re-stats
// the open files and re-attaches the terminals (a snapshot restores each
// screen). Unsaved buffers live in the documents slice, so no reconnect
// loses them.

import { api, ApiError, errorText, type Workspace } from "../api";
import { CoveClient, WorkspaceNotRunning, type ConnState, type ServerEvent } from "../protocol/client";
import type { Status, TerminalInfo } from "../protocol/types";
import { Documents } from "./documents";
import { Stash } from "./stash";
import { Terminals } from "./terminals";
import { Tree } from "./tree";

export type { Conflict, EditorHooks } from "./documents";
export type { TermView } from "./terminals";

export class IdeSession {
  private ws: Workspace | null = null;
  private name = "";
  readonly client: CoveClient;
  private connState: ConnState = "connecting";
  private lastStatus: Status | null = null;
  private openError: string | null = null;

  readonly terminals: Terminals;
  readonly documents: Documents;
  readonly tree: Tree;
  readonly stash: Stash;

  private subscription: number | null = null;
  private listeners = new Set<() => void>();
  /** The workspace was ready once on this page: tabs are restored, and kept from now on. */
  private readyDone = false;

  constructor(readonly id: string) {
    this.client = new CoveClient({ ticket: () => this.ticket() });
    const changed = () => this.changed();
    this.terminals = new Terminals(this.client, changed);
    this.documents = new Documents(id, this.client, changed, () => this.stash.soon());
    this.tree = new Tree(this.client, this.documents, changed);
    this.stash = new Stash(id, this.client, this.documents, changed);
    this.client.onState((s) => {
      this.connState = s;
      this.terminals.connectionChanged(s === "open");
      this.changed();
    });
    this.client.onWelcome(({ welcome, restarted }) => void this.onWelcome(welcome.terminals, restarted, welcome.status));
    this.client.onEvent((ev) => this.onEvent(ev));
    this.client.onFrame((f) => this.terminals.onFrame(f));
  }

  /** The controller's view of the workspace (null until the first start or token). */
  get workspace(): Workspace | null {
    return this.ws;
  }

  get projectName(): string {
    return this.name;
  }

  get conn(): ConnState {
    return this.connState;
  }

  /** The workspace's status (§11): from the welcome, then `status` events. */
  get status(): Status | null {
    return this.lastStatus;
  }

  /** Why the project cannot be opened at all (null: it can). */
  get startError(): string | null {
    return this.openError;
  }

  onChange(f: () => void): () => void {
    this.listeners.add(f);
    return () => void this.listeners.delete(f);
  }

  /** Something shown changed: re-render, and keep the tabs and the stash. */
  private changed(): void {
    if (this.readyDone) {
      this.documents.saveTabs();
      this.stash.soon();
    }
    for (const f of this.listeners) f();
  }

  async open(): Promise<void> {
    try {
      const p = await api.project(this.id);
      this.name = p.name;
      document.title = `${p.name} · Cove`;
    } catch (e) {
      this.openError = e instanceof ApiError && e.code === "not_found" ? "There is no such project." : errorText(e);
      this.changed();
      return;
    }
    this.client.start();
  }

  close(): void {
    this.stash.close();
    this.client.close();
    this.tree.close();
  }

  /** Before each (re)connect: start the workspace if needed and get a fresh token. */
  private async ticket() {
    // The first connect starts the workspace (opening a project starts it);
    // later ones only ask for a token, so a workspace stopped on purpose
    // stays stopped until the person restarts it (§15, 4004).
    let ws: Workspace;
    if (!this.ws) {
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
    this.ws = ws;
    this.changed();
    return { url: ws.urls.ide_socket, token: ws.token ?? "" };
  }

  /** The person asked to start a stopped workspace again. */
  async restart(): Promise<void> {
    const ws = await api.start(this.id);
    this.ws = ws;
    this.client.retryNow();
  }

  async refreshWorkspace(): Promise<void> {
    try {
      const token = this.ws?.token ?? null;
      const ws = await api.workspace(this.id);
      this.ws = { ...ws, token };
      this.changed();
    } catch {
      // the status bar keeps the last known mode
    }
  }

  // ---- welcome, events ------------------------------------------------------

  private async onWelcome(terms: TerminalInfo[], restarted: boolean, status: Status) {
    performance.mark("cove:welcome"); // for the load benchmark (benchmarks.md)
    this.lastStatus = status;
    // Saves answered on an older connection get no fs.durable here (§9.6);
    // a store that has caught up settles them.
    if (status.sync.state === "saved") this.documents.settleAll();
    this.terminals.welcomed(terms, restarted);
    this.changed();
    void this.refreshWorkspace();
    // §8: attach, subscribe, re-list, re-stat.
    this.terminals.reattach();
    try {
      const r = await this.client.request("fs.subscribe", { path: "" });
      this.subscription = r.subscription;
    } catch {
      this.subscription = null;
    }
    if (status.ready) this.afterReady();
    // A restarted workspace has no terminals left: give the person one again.
    if (restarted && terms.length === 0 && status.ready) void this.terminals.create().catch(() => {});
  }

  private afterReady() {
    this.tree.relistShown();
    this.documents.checkAll();
    if (!this.readyDone) {
      this.readyDone = true;
      void this.restore();
      this.terminals.openFirst();
    }
  }

  /** The first time the workspace is ready: the tabs, then the unsaved buffers, of the last page. */
  private async restore() {
    await this.documents.restoreTabs();
    await this.stash.restore();
  }

  private onEvent(ev: ServerEvent) {
    switch (ev.type) {
      case "status": {
        const wasReady = this.lastStatus?.ready ?? false;
        this.lastStatus = ev.status;
        if (!wasReady && this.lastStatus.ready) this.afterReady();
        if (!wasReady) void this.refreshWorkspace();
        // A reconnected page has no fs.durable for its old saves: the store
        // having caught up (saved) settles them (§9.6).
        if (this.lastStatus.sync.state === "saved" && this.documents.pendingCount && this.connState === "open") {
          this.documents.settleAll();
        }
        this.changed();
        break;
      }
      case "fs.durable":
        this.documents.durable(ev.request);
        break;
      case "fs.changes":
        if (ev.subscription === this.subscription) {
          this.tree.onChanges(ev.events);
          this.documents.onChanges(ev.events);
        }
        break;
      case "term.created":
      case "term.resized":
      case "term.responder":
      case "term.exited":
      case "term.closed":
        this.terminals.onEvent(ev);
        break;
    }
  }
}
