// The session's terminals (docs/protocol.md §6–§7): the workspace's list,
// the selected one, and per terminal the stream that feeds its view. Every
// view is attached, so its screen stays current; output that arrives
// before a view (or the create/attach result) is there waits as orphans.
//
// Views call the methods here; each one that changes what is shown tells
// the session (`changed`), which re-renders.

import { errorText } from "../api";
import type { CoveClient } from "../protocol/client";
import { ackFrame, inputFrame, type Frame } from "../protocol/frames";
import { TerminalStream, type TermSink } from "../protocol/terminal";
import { ProtocolError, type TermEvent, type TerminalInfo } from "../protocol/types";

export interface TermView {
  sink: TermSink;
  resize(cols: number, rows: number): void;
  /** Ask for the pane's size again (after an attach applied the server's). */
  refit?(): void;
}

/** Frames kept per terminal while nothing can show them yet. */
const ORPHAN_FRAME_LIMIT = 256;

export class Terminals {
  private terms: TerminalInfo[] = [];
  private selected: number | null = null;
  private readonly streams = new Map<number, TerminalStream>();
  private readonly views = new Map<number, TermView>();
  private readonly responder = new Map<number, boolean>();
  private readonly orphanFrames = new Map<number, Frame[]>();
  /** The page opened its first terminal by itself already. */
  private autoOpened = false;
  /** Terminals created by this page: already attached at offset 0, no snapshot comes. */
  private readonly createdHere = new Set<number>();
  /** The terminal the person just asked for: its view takes the keyboard once. */
  private focus: number | null = null;

  constructor(
    private readonly client: CoveClient,
    private readonly changed: () => void,
  ) {}

  /** The workspace's terminals, in tab order. */
  get list(): readonly TerminalInfo[] {
    return this.terms;
  }

  /** The terminal shown (null: none). */
  get active(): number | null {
    return this.selected;
  }

  // ---- the connection -------------------------------------------------------

  /** Attachments end with the socket; their pending acks must not leak into the next one. */
  connectionChanged(open: boolean): void {
    if (!open) for (const st of this.streams.values()) st.dispose();
  }

  /**
   * A welcome's terminals. After a server restart (`restarted`) every id
   * known before is void. The session re-renders, then calls `reattach`.
   */
  welcomed(terms: TerminalInfo[], restarted: boolean): void {
    if (restarted) {
      this.streams.clear();
      this.selected = null;
    }
    this.terms = terms;
    if (this.selected === null || !terms.some((t) => t.id === this.selected)) this.selected = terms[0]?.id ?? null;
  }

  /** §8: every terminal that has a view is attached again (a snapshot restores its screen). */
  reattach(): void {
    for (const t of this.terms) if (this.views.has(t.id)) void this.attach(t.id);
  }

  /** The workspace became ready: a page with no terminal opens one, once. */
  openFirst(): void {
    if (this.terms.length === 0 && !this.autoOpened) {
      this.autoOpened = true;
      void this.create();
    }
  }

  onEvent(ev: TermEvent): void {
    switch (ev.type) {
      case "term.created":
        if (!this.terms.some((t) => t.id === ev.terminal.id)) {
          this.terms = [...this.terms, ev.terminal];
          this.changed();
        }
        break;
      case "term.resized":
        this.update(ev.terminal, { cols: ev.cols, rows: ev.rows });
        this.views.get(ev.terminal)?.resize(ev.cols, ev.rows);
        break;
      case "term.responder":
        this.responder.set(ev.terminal, ev.responder);
        break;
      case "term.exited":
        this.update(ev.terminal, { state: "exited", exit: ev.exit });
        break;
      case "term.closed":
        this.terms = this.terms.filter((t) => t.id !== ev.terminal);
        this.streams.delete(ev.terminal);
        if (this.selected === ev.terminal) this.selected = this.terms[0]?.id ?? null;
        this.changed();
        break;
    }
  }

  onFrame(f: Frame): void {
    const s = this.streams.get(f.terminal);
    if (s) return s.onFrame(f);
    // Output of a terminal whose create/attach result has not been handled yet.
    const q = this.orphanFrames.get(f.terminal) ?? [];
    if (q.length < ORPHAN_FRAME_LIMIT) q.push({ ...f, payload: f.payload.slice() });
    this.orphanFrames.set(f.terminal, q);
  }

  private update(id: number, patch: Partial<TerminalInfo>) {
    this.terms = this.terms.map((t) => (t.id === id ? { ...t, ...patch } : t));
    this.changed();
  }

  // ---- views ----------------------------------------------------------------

  /** A terminal view mounted: attach it (a snapshot restores its screen). */
  registerView(id: number, view: TermView): () => void {
    this.views.set(id, view);
    if (this.client.state === "open") void this.attach(id);
    return () => {
      this.views.delete(id);
      this.streams.delete(id);
      if (this.client.state === "open" && this.terms.some((t) => t.id === id)) {
        this.client.request("term.detach", { terminal: id }).catch(() => {});
      }
    };
  }

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
      this.update(id, r.terminal);
      this.views.get(id)?.resize(r.terminal.cols, r.terminal.rows);
      this.flushOrphans(id);
      this.views.get(id)?.refit?.();
    } catch (e) {
      if (e instanceof ProtocolError && e.code === "not_found") {
        this.terms = this.terms.filter((t) => t.id !== id);
        this.changed();
      }
    }
  }

  private flushOrphans(id: number) {
    const q = this.orphanFrames.get(id);
    this.orphanFrames.delete(id);
    const s = this.streams.get(id);
    if (q && s) for (const f of q) s.onFrame(f);
  }

  // ---- what the person does ---------------------------------------------------

  /** `focus`: the person asked for it (button, shortcut); one the page opens by itself does not take the keyboard. */
  async create(focus = false): Promise<void> {
    const n = this.terms.length + 1;
    try {
      const r = await this.client.request("term.create", { cols: 100, rows: 24, name: `Terminal ${n}` });
      // The view mounts after this render; until then its output waits as orphans.
      this.terms = [...this.terms.filter((t) => t.id !== r.terminal.id), r.terminal];
      this.responder.set(r.terminal.id, r.responder ?? true);
      this.selected = r.terminal.id;
      if (focus) this.focus = r.terminal.id;
      this.createdHere.add(r.terminal.id);
      this.changed();
    } catch (e) {
      throw new Error(`Could not open a terminal: ${errorText(e)}`);
    }
  }

  /** The person picked a terminal's tab: it is shown and takes the keyboard. */
  select(id: number): void {
    this.selected = id;
    this.focus = id;
    this.changed();
  }

  /** True once for the terminal the person asked for: its view focuses itself. */
  takeFocus(id: number): boolean {
    if (this.focus !== id) return false;
    this.focus = null;
    return true;
  }

  async close(id: number): Promise<void> {
    await this.client.request("term.close", { terminal: id });
  }

  input(id: number, data: Uint8Array): void {
    if (data.byteLength) this.client.sendFrame(inputFrame(id, data));
  }

  /** The visible view's pane has this size (§6.2: the last resize wins). */
  resize(id: number, cols: number, rows: number): void {
    const t = this.terms.find((x) => x.id === id);
    if (!t || (t.cols === cols && t.rows === rows) || this.client.state !== "open") return;
    this.update(id, { cols, rows });
    this.client.request("term.resize", { terminal: id, cols, rows }).catch(() => {});
  }

  /** §6.5: only the responder answers terminal queries. */
  isResponder(id: number): boolean {
    return this.responder.get(id) ?? true;
  }
}
