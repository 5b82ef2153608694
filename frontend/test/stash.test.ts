// The hot-exit stash on its own: what it keeps in localStorage, and how
// stashed buffers come back in the next page.
import { describe, expect, it, vi } from "vitest";
import { Documents } from "../src/ide/documents";
import { Stash, STASH_MAX_CHARS } from "../src/ide/stash";
import { counter, files, scriptedIde, sock } from "./ide";

const { connected } = scriptedIde();
const KEY = "cove.unsaved.p";

async function slice() {
  const client = await connected();
  const changes = counter();
  const documents = new Documents("p", client, changes.bump, () => {});
  const stash = new Stash("p", client, documents, changes.bump);
  return { documents, stash, changes };
}

const stored = () => JSON.parse(localStorage.getItem(KEY) ?? "null");

describe("Stash", () => {
  it("keeps an earlier page's buffers until this page has taken them back", async () => {
    localStorage.setItem(KEY, JSON.stringify({ "old.txt": { text: "earlier", base: "v0" } }));
    const { documents, stash } = await slice();
    await documents.openFile("a.txt");
    documents.setText("a.txt", "mine");
    stash.flush();
    expect(stored()).toEqual({ "old.txt": { text: "earlier", base: "v0" }, "a.txt": { text: "mine", base: "v1" } });
    await stash.restore();
    stash.flush();
    expect(Object.keys(stored()).sort()).toEqual(["a.txt", "old.txt"]);
    // old.txt is back as a tab; saved, it leaves the stash.
    expect(documents.docs.get("old.txt")).toMatchObject({ text: "earlier", deletedOnDisk: true });
    await documents.save("old.txt");
    stash.flush();
    expect(Object.keys(stored())).toEqual(["a.txt"]);
  });

  it("nothing unsaved: the key goes", async () => {
    localStorage.setItem(KEY, JSON.stringify({}));
    const { documents, stash } = await slice();
    await stash.restore();
    await documents.openFile("a.txt");
    stash.flush();
    expect(localStorage.getItem(KEY)).toBeNull();
  });

  it("a stashed buffer comes back over the file's text; one whose file changed since is marked", async () => {
    files["b.txt"] = { content: "b", version: "vb2" };
    localStorage.setItem(
      KEY,
      JSON.stringify({
        "a.txt": { text: "one, unsaved", base: "v1" },
        "b.txt": { text: "b, unsaved", base: "vb1" },
      }),
    );
    const { documents, stash } = await slice();
    const set: string[] = [];
    documents.attachEditor({ setText: (p) => set.push(p), renamed: () => {} });
    await stash.restore();
    expect(documents.tabs).toEqual(["a.txt", "b.txt"]);
    expect(documents.docs.get("a.txt")).toMatchObject({ text: "one, unsaved", saved: "one", changedOnDisk: false });
    expect(documents.docs.get("b.txt")).toMatchObject({ text: "b, unsaved", changedOnDisk: true });
    expect(set.filter((p) => p === "a.txt").length).toBe(2); // the read, then the stashed text
    expect(documents.unsavedCount()).toBe(2);
  });

  it("a buffer of a file that was never on disk comes back unmarked; saving creates the file", async () => {
    localStorage.setItem(KEY, JSON.stringify({ "new.txt": { text: "draft", base: null } }));
    const { documents, stash } = await slice();
    await stash.restore();
    expect(documents.docs.get("new.txt")).toMatchObject({ text: "draft", loaded: true, deletedOnDisk: false });
    await documents.save("new.txt");
    expect(sock().requests("fs.write")).toMatchObject([{ path: "new.txt", content: "draft", base_version: null }]);
  });

  it("stashes up to 4 M characters", async () => {
    files["b.txt"] = { content: "b", version: "vb" };
    const { documents, stash } = await slice();
    await stash.restore();
    await documents.openFile("a.txt");
    await documents.openFile("b.txt");
    documents.setText("a.txt", "x".repeat(STASH_MAX_CHARS - 10));
    documents.setText("b.txt", "y".repeat(20));
    stash.flush();
    expect(Object.keys(stored())).toEqual(["a.txt"]);
  });

  it("writes 300 ms after the last change, and at once when the page goes", async () => {
    vi.useFakeTimers({ shouldAdvanceTime: true });
    try {
      const { documents, stash } = await slice();
      await stash.restore();
      await documents.openFile("a.txt");
      documents.setText("a.txt", "mine");
      stash.soon();
      await vi.advanceTimersByTimeAsync(299);
      expect(stored()).toBeNull();
      await vi.advanceTimersByTimeAsync(1);
      expect(stored()).toEqual({ "a.txt": { text: "mine", base: "v1" } });
      documents.setText("a.txt", "mine, later");
      stash.soon();
      stash.close();
      expect(stored()["a.txt"].text).toBe("mine, later");
      // No timer is left to write after the next page has read the stash.
      localStorage.removeItem(KEY);
      await vi.advanceTimersByTimeAsync(1000);
      expect(stored()).toBeNull();
    } finally {
      vi.useRealTimers();
    }
  });
});
