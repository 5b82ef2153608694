// The session's file tree: listed lazily (a directory when it is opened),
// kept live by the change feed (a batch re-lists the shown directories it
// touches, debounced 30 ms), and the file operations the tree offers
// (new file or folder, rename or move, delete), which open files follow.
//
// The decisions are pure functions in state/tree.ts; this holds the state
// and the requests.

import { errorText } from "../api";
import type { CoveClient } from "../protocol/client";
import { ProtocolError, type ChangeEvent, type Entry } from "../protocol/types";
import { isUnder, joinPath, parentOf, sortEntries, treeUpdate } from "../state/tree";
import type { Documents } from "./documents";

/** Directories quick open does not walk into: big, and never what a person looks for. */
const HEAVY_DIRS = ["node_modules", ".git", "target", "__pycache__", ".venv", "dist"];

/** A change batch's re-lists wait this long for the rest of the burst. */
const RELIST_DEBOUNCE_MS = 30;

export class Tree {
  private readonly listed = new Map<string, Entry[]>();
  private readonly opened = new Set<string>([""]);
  private listError: string | null = null;
  private relistTimer: ReturnType<typeof setTimeout> | null = null;
  private readonly relistQueue = new Set<string>();

  constructor(
    private readonly client: CoveClient,
    private readonly documents: Documents,
    private readonly changed: () => void,
  ) {}

  /** Listed directories ("" is the root) and their sorted entries. */
  get entries(): ReadonlyMap<string, readonly Entry[]> {
    return this.listed;
  }

  /** Directories shown open. */
  get expanded(): ReadonlySet<string> {
    return this.opened;
  }

  /** Why the root could not be listed (null: it could). */
  get error(): string | null {
    return this.listError;
  }

  close(): void {
    if (this.relistTimer) clearTimeout(this.relistTimer);
  }

  async list(dir: string): Promise<void> {
    try {
      const r = await this.client.request("fs.list", { path: dir });
      this.listed.set(dir, sortEntries(r.entries));
      this.listError = null;
    } catch (e) {
      if (e instanceof ProtocolError && (e.code === "not_found" || e.code === "not_a_directory")) {
        this.forget(dir);
      } else if (dir === "") {
        this.listError = errorText(e);
      }
    }
    this.changed();
  }

  private forget(dir: string) {
    for (const d of [...this.listed.keys()]) if (d !== "" && isUnder(d, dir)) this.listed.delete(d);
    for (const d of [...this.opened]) if (d !== "" && isUnder(d, dir)) this.opened.delete(d);
  }

  async toggle(dir: string): Promise<void> {
    if (this.opened.has(dir)) {
      this.opened.delete(dir);
      this.changed();
      return;
    }
    this.opened.add(dir);
    this.changed();
    await this.list(dir); // always fresh: a collapsed directory gets no change events
  }

  /** Expanded and listed: the directories whose entries are on screen. */
  private shownDirs(): string[] {
    return [...this.listed.keys()].filter((d) => d === "" || this.opened.has(d));
  }

  /**
   * After the workspace is ready (again): re-list what is shown; collapsed
   * directories are listed again when opened.
   */
  relistShown(): void {
    for (const d of [...this.listed.keys()]) if (d !== "" && !this.opened.has(d)) this.listed.delete(d);
    for (const dir of this.listed.size ? this.shownDirs() : [""]) this.queueRelist(dir);
  }

  /** A batch of the change feed (§10). */
  onChanges(events: ChangeEvent[]): void {
    const { relist, forget } = treeUpdate(events, this.shownDirs());
    for (const d of forget) this.forget(d);
    for (const d of relist) this.queueRelist(d);
    if (forget.length) this.changed();
  }

  private queueRelist(dir: string) {
    this.relistQueue.add(dir);
    if (this.relistTimer) return;
    this.relistTimer = setTimeout(() => {
      this.relistTimer = null;
      const dirs = [...this.relistQueue];
      this.relistQueue.clear();
      for (const d of dirs) void this.list(d);
    }, RELIST_DEBOUNCE_MS);
  }

  // ---- file operations ---------------------------------------------------------

  async createFile(path: string): Promise<void> {
    await this.documents.mutate("fs.write", { path, content: "", encoding: "utf8", base_version: null, parents: true }, path);
    await this.revealParents(path);
    await this.documents.openFile(path);
  }

  async createDir(path: string): Promise<void> {
    await this.documents.mutate("fs.mkdir", { path, parents: true }, path);
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
      this.opened.add(c);
      await this.list(c);
    }
    await this.list("");
  }

  /** Renames or moves a file or directory; open documents follow it. */
  async rename(from: string, to: string): Promise<void> {
    await this.documents.mutate("fs.rename", { from, to }, to);
    this.documents.moved(from, to);
  }

  async remove(path: string): Promise<void> {
    await this.documents.mutate("fs.delete", { path, recursive: true }, path);
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
          if (!HEAVY_DIRS.includes(e.name)) queue.push(p);
        } else out.push(p);
      }
    }
    return out.sort();
  }
}
