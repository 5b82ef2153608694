// Hot exit: unsaved buffers are also kept in this browser's localStorage
// (`cove.unsaved.<project>`, written 300 ms after the last change and when
// the page goes, up to 4 M characters), so a reload, a crashed tab or a
// closed window gets them back as unsaved tabs. Saved or closed buffers
// leave the stash.

import type { CoveClient } from "../protocol/client";
import { isDirty } from "../state/docs";
import type { Documents } from "./documents";

/** One stashed buffer: its text and the version it was read at. */
export interface StashEntry {
  text: string;
  base: string | null;
}

const STASH_DELAY_MS = 300;
/** Characters stashed at most; buffers beyond it stay only in the page. */
export const STASH_MAX_CHARS = 4_000_000;

export class Stash {
  private timer: ReturnType<typeof setTimeout> | null = null;
  /** This page has taken the earlier page's stash back. */
  private restored = false;

  constructor(
    private readonly projectId: string,
    private readonly client: CoveClient,
    private readonly documents: Documents,
    private readonly changed: () => void,
  ) {}

  private key() {
    return `cove.unsaved.${this.projectId}`;
  }

  private read(): Record<string, StashEntry> {
    try {
      return JSON.parse(localStorage.getItem(this.key()) ?? "{}") ?? {};
    } catch {
      return {};
    }
  }

  /** A buffer changed: write the stash once things are quiet. */
  soon(): void {
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.flush();
    }, STASH_DELAY_MS);
  }

  flush(): void {
    // Before this page has taken the old stash back, keep its entries: they
    // are buffers of an earlier page that nobody has seen yet.
    const out: Record<string, StashEntry> = this.restored ? {} : this.read();
    let chars = 0;
    for (const d of this.documents.docs.values()) {
      if (!d.loaded || !isDirty(d)) continue;
      chars += d.text.length;
      if (chars > STASH_MAX_CHARS) break;
      out[d.path] = { text: d.text, base: d.base };
    }
    try {
      if (Object.keys(out).length) localStorage.setItem(this.key(), JSON.stringify(out));
      else localStorage.removeItem(this.key());
    } catch {
      // storage full or disabled: the buffers are still in this page
    }
  }

  /**
   * The page goes: the latest buffers go to the stash now; no timer of
   * this page may write after the next page of the project has read it.
   */
  close(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.flush();
    this.restored = false;
  }

  /** Buffers left unsaved by an earlier page of this project, back as unsaved tabs. */
  async restore(): Promise<void> {
    const stash = this.read();
    this.restored = true;
    for (const [path, { text, base }] of Object.entries(stash)) {
      if (typeof text !== "string") continue;
      if (!this.documents.docs.has(path)) {
        try {
          await this.client.request("fs.stat", { path });
          await this.documents.openFile(path, true);
        } catch {
          // Gone from the disk: keep the text; saving creates the file again.
          this.documents.addMissing(path, text, base);
        }
      }
      this.documents.putBack(path, text, base);
    }
    this.changed();
  }
}
