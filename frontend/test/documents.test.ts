// The session's documents slice against a scripted cove-pty: tabs and their
// memory, what a read can answer, saves and their durability, the conflict
// choice. (Buffers against the disk across reconnects: session.test.ts.)
import { describe, expect, it } from "vitest";
import { Documents } from "../src/ide/documents";
import { welcome } from "./fakeSocket";
import { counter, files, handlers, scriptedIde, sock, until } from "./ide";

const { connected } = scriptedIde();

async function slice() {
  const client = await connected();
  const changes = counter();
  const edits = counter();
  const documents = new Documents("p", client, changes.bump, edits.bump);
  return { documents, changes, edits };
}

describe("Documents", () => {
  it("closing the active tab shows its right neighbour, or the left one at the end", async () => {
    files["b.txt"] = { content: "b", version: "vb" };
    files["c.txt"] = { content: "c", version: "vc" };
    const { documents } = await slice();
    for (const p of ["a.txt", "b.txt", "c.txt"]) await documents.openFile(p);
    documents.activate("b.txt");
    documents.closeTab("b.txt");
    expect(documents.tabs).toEqual(["a.txt", "c.txt"]);
    expect(documents.active).toBe("c.txt");
    documents.closeTab("c.txt");
    expect(documents.active).toBe("a.txt");
    documents.closeTab("a.txt");
    expect(documents.active).toBeNull();
    expect(documents.docs.size).toBe(0);
  });

  it("tabs come back in the next page, without files deleted since; the active one too", async () => {
    files["b.txt"] = { content: "b", version: "vb" };
    const first = (await slice()).documents;
    await first.openFile("a.txt");
    await first.openFile("d/x.txt");
    await first.openFile("b.txt");
    first.activate("a.txt");
    first.saveTabs();
    delete files["d/x.txt"];
    const { documents } = await slice();
    await documents.restoreTabs();
    expect(documents.tabs).toEqual(["a.txt", "b.txt"]);
    expect(documents.active).toBe("a.txt");
  });

  it("a tab the person opens while tabs are restored keeps the focus", async () => {
    const first = (await slice()).documents;
    await first.openFile("a.txt");
    first.saveTabs();
    const { documents } = await slice();
    await documents.openFile("d/x.txt");
    await documents.restoreTabs();
    expect(documents.tabs).toEqual(["d/x.txt", "a.txt"]);
    expect(documents.active).toBe("d/x.txt");
  });

  it("a project opened for the first time shows its README", async () => {
    files["README.md"] = { content: "# hi", version: "vr" };
    const { documents } = await slice();
    await documents.restoreTabs();
    expect(documents.tabs).toEqual(["README.md"]);
    expect(documents.active).toBe("README.md");
  });

  it("a file too large or not a file opens as a message, not a buffer", async () => {
    handlers["fs.read"] = (m) => {
      if (m.path === "big.bin") throw { code: "too_large", message: "too large", details: { size: 20_000_000, limit: 10_485_760 } };
      throw { code: "not_a_file", message: "not a file", details: {} };
    };
    const { documents } = await slice();
    await documents.openFile("big.bin");
    await documents.openFile("fifo");
    expect(documents.docs.get("big.bin")).toMatchObject({ kind: "too_large", loaded: false });
    expect(documents.docs.get("big.bin")!.message).toMatch(/20,000,000 bytes.*10,485,760 bytes/);
    expect(documents.docs.get("fifo")).toMatchObject({ kind: "binary", message: "This is not a regular file." });
    await documents.save("big.bin");
    expect(sock().requests("fs.write")).toEqual([]);
  });

  it("re-renders when a buffer's dirty mark flips, and otherwise only tells the stash", async () => {
    const { documents, changes, edits } = await slice();
    await documents.openFile("a.txt");
    const [c, e] = [changes.n, edits.n];
    documents.setText("a.txt", "o");
    documents.setText("a.txt", "on");
    documents.setText("a.txt", "one");
    expect([changes.n - c, edits.n - e]).toEqual([2, 1]);
    expect(documents.unsavedCount()).toBe(0);
  });

  it("text whose JSON would not fit one message is saved as base64", async () => {
    const client = await connected();
    // A server with a small message limit.
    handlers.hello = () => welcome("i1", [], { max_message_bytes: 4096 });
    sock().drop(4001);
    await until(() => client.state === "open" && client.welcome?.limits.max_message_bytes === 4096);
    const documents = new Documents("p", client, () => {}, () => {});
    await documents.openFile("a.txt");
    const text = '"\\'.repeat(1000); // 2000 characters, 4000 once escaped
    documents.setText("a.txt", text);
    await documents.save("a.txt");
    const [write] = sock().requests("fs.write");
    expect(write.encoding).toBe("base64");
    expect(atob(write.content)).toBe(text);
    expect(documents.docs.get("a.txt")).toMatchObject({ saved: text, base: "v9" });
  });

  it("a change that is not yet durable counts as saving until its fs.durable, or until the store has caught up", async () => {
    handlers["fs.write"] = () => ({ version: "v9", size: 1, mtime_ms: 0, durable: false, commit: null, pending_reason: "timeout" });
    const { documents } = await slice();
    await documents.openFile("a.txt");
    documents.setText("a.txt", "two");
    await documents.save("a.txt");
    documents.setText("a.txt", "three");
    await documents.save("a.txt");
    expect(documents.savingCount()).toBe(2);
    const [first] = sock().requests("fs.write");
    documents.durable(first.id);
    expect(documents.savingCount()).toBe(1);
    documents.settleAll();
    expect(documents.savingCount()).toBe(0);
  });

  it("taking the disk's version in a conflict reloads the buffer; dismissing keeps it", async () => {
    const { documents } = await slice();
    await documents.openFile("a.txt");
    files["a.txt"] = { content: "theirs", version: "v2" };
    handlers["fs.write"] = () => {
      throw { code: "conflict", message: "changed", details: { current_version: "v2" } };
    };
    documents.setText("a.txt", "mine");
    await documents.save("a.txt");
    expect(documents.conflict).toMatchObject({ path: "a.txt", theirs: "theirs" });
    documents.dismissConflict();
    expect(documents.conflict).toBeNull();
    expect(documents.docs.get("a.txt")!.text).toBe("mine");
    await documents.save("a.txt");
    documents.takeTheirs();
    expect(documents.conflict).toBeNull();
    await until(() => documents.docs.get("a.txt")!.text === "theirs");
    expect(documents.docs.get("a.txt")).toMatchObject({ base: "v2", saved: "theirs" });
  });

  it("a save that fails otherwise says so and keeps the buffer", async () => {
    handlers["fs.write"] = () => {
      throw { code: "no_space", message: "no space left", details: {} };
    };
    const { documents } = await slice();
    await documents.openFile("a.txt");
    documents.setText("a.txt", "mine");
    await expect(documents.save("a.txt")).rejects.toThrow(/Could not save a.txt: .*no space/);
    expect(documents.docs.get("a.txt")).toMatchObject({ text: "mine", saving: false });
  });

  it("open files follow a renamed directory, and the editor is told", async () => {
    const { documents } = await slice();
    const renamed: [string, string][] = [];
    const detach = documents.attachEditor({ setText: () => {}, renamed: (from, to) => renamed.push([from, to]) });
    await documents.openFile("d/x.txt");
    await documents.openFile("a.txt");
    documents.moved("d", "e");
    expect(documents.tabs).toEqual(["e/x.txt", "a.txt"]);
    expect(renamed).toEqual([["d/x.txt", "e/x.txt"]]);
    detach();
    documents.moved("e", "f");
    expect(renamed.length).toBe(1);
  });

  it("the editor is told when a clean buffer follows the disk", async () => {
    const { documents } = await slice();
    const set: [string, string][] = [];
    documents.attachEditor({ setText: (p, t) => set.push([p, t]), renamed: () => {} });
    await documents.openFile("a.txt");
    files["a.txt"] = { content: "two", version: "v2" };
    documents.onChanges([{ kind: "modify", path: "a.txt" }]);
    await until(() => set.length === 2);
    expect(set).toEqual([
      ["a.txt", "one"],
      ["a.txt", "two"],
    ]);
  });
});
