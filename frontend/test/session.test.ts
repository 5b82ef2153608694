// The IDE session against a scripted cove-pty (a fake WebSocket) and a
// scripted controller (a fake fetch): the rules that keep buffers safe.
import { describe, expect, it, vi } from "vitest";
import { IdeSession } from "../src/ide/session";
import { status, terminalInfo, welcome } from "./fakeSocket";
import { deferred, files, handlers, scriptedIde, sock, tick, until } from "./ide";

const { opened } = scriptedIde();

describe("IdeSession", () => {
  it("keeps keys typed while a reload from disk was on its way, and marks the file", async () => {
    const s = await opened();
    await s.documents.openFile("a.txt");
    expect(s.documents.docs.get("a.txt")!.text).toBe("one");
    // The disk changes; the reload's read is held until the person has typed.
    files["a.txt"] = { content: "two", version: "v2" };
    const read = deferred<void>();
    const original = handlers["fs.read"];
    handlers["fs.read"] = async (m, ws) => {
      await read.promise;
      return original(m, ws);
    };
    sock().reply({ type: "fs.changes", subscription: 1, events: [{ kind: "modify", path: "a.txt" }] });
    await until(() => sock().sent.filter((m) => m.type === "fs.read").length === 2);
    s.documents.setText("a.txt", "one, and typed");
    read.resolve();
    await until(() => s.documents.docs.get("a.txt")!.changedOnDisk);
    expect(s.documents.docs.get("a.txt")!.text).toBe("one, and typed");
  });

  it("a clean buffer follows the disk", async () => {
    const s = await opened();
    await s.documents.openFile("a.txt");
    files["a.txt"] = { content: "two", version: "v2" };
    sock().reply({ type: "fs.changes", subscription: 1, events: [{ kind: "modify", path: "a.txt" }] });
    await until(() => s.documents.docs.get("a.txt")!.text === "two");
    expect(s.documents.docs.get("a.txt")!.base).toBe("v2");
  });

  it("a save that is not yet durable is pending until its fs.durable", async () => {
    const s = await opened();
    await s.documents.openFile("a.txt");
    handlers["fs.write"] = () => ({ version: "v9", size: 1, mtime_ms: 0, durable: false, commit: null, pending_reason: "timeout" });
    s.documents.setText("a.txt", "changed");
    await s.documents.save("a.txt");
    expect(s.documents.savingCount()).toBe(1);
    const write = sock().sent.find((m) => m.type === "fs.write");
    sock().reply({ type: "fs.durable", request: write.id, commit: { epoch: 1, seq: 5 } });
    expect(s.documents.savingCount()).toBe(0);
  });

  it("a conflict on save keeps the buffer and offers the disk's version", async () => {
    const s = await opened();
    await s.documents.openFile("a.txt");
    files["a.txt"] = { content: "theirs", version: "v2" };
    handlers["fs.write"] = (m) => {
      if (m.base_version !== "v2") throw { code: "conflict", message: "changed", details: { current_version: "v2" } };
      return { version: "v3", size: 1, mtime_ms: 0, durable: true, commit: null };
    };
    s.documents.setText("a.txt", "mine");
    await s.documents.save("a.txt");
    expect(s.documents.conflict).toMatchObject({ path: "a.txt", theirs: "theirs", theirsVersion: "v2" });
    expect(s.documents.docs.get("a.txt")!.text).toBe("mine");
    await s.documents.overwrite();
    expect(s.documents.conflict).toBeNull();
    expect(s.documents.docs.get("a.txt")).toMatchObject({ base: "v3", saved: "mine" });
  });

  it("renaming a directory moves its open files, tabs and the active one", async () => {
    const s = await opened();
    await s.documents.openFile("d/x.txt");
    files["e/x.txt"] = files["d/x.txt"];
    await s.tree.rename("d", "e");
    expect([...s.documents.docs.keys()]).toEqual(["e/x.txt"]);
    expect(s.documents.tabs).toEqual(["e/x.txt"]);
    expect(s.documents.active).toBe("e/x.txt");
  });

  it("an unsaved buffer is stashed in the browser and comes back in the next page", async () => {
    const s1 = await opened();
    await s1.documents.openFile("a.txt");
    await until(() => s1.documents.docs.get("a.txt")!.loaded);
    s1.documents.setText("a.txt", "one, unsaved");
    s1.stash.flush();
    s1.close();
    const s2 = await opened();
    await until(() => s2.documents.docs.get("a.txt")?.text === "one, unsaved");
    expect(s2.documents.docs.get("a.txt")!.changedOnDisk).toBe(false);
    expect(s2.documents.unsavedCount()).toBe(1);
    // Saved: it leaves the stash.
    await s2.documents.save("a.txt");
    s2.stash.flush();
    expect(localStorage.getItem("cove.unsaved.p")).toBeNull();
  });

  it("a stashed buffer whose file changed since is marked, so the save asks", async () => {
    const s1 = await opened();
    await s1.documents.openFile("a.txt");
    await until(() => s1.documents.docs.get("a.txt")!.loaded);
    s1.documents.setText("a.txt", "mine");
    s1.stash.flush();
    s1.close();
    files["a.txt"] = { content: "theirs", version: "v2" };
    const s2 = await opened();
    await until(() => s2.documents.docs.get("a.txt")?.text === "mine");
    expect(s2.documents.docs.get("a.txt")!.changedOnDisk).toBe(true);
  });

  it("a dropped connection keeps unsaved buffers and re-subscribes after the welcome", async () => {
    vi.useFakeTimers({ shouldAdvanceTime: true });
    try {
      const s = await opened();
      await s.documents.openFile("a.txt");
      s.documents.setText("a.txt", "unsaved");
      const first = sock();
      first.drop();
      expect(s.conn).toBe("reconnecting");
      await vi.advanceTimersByTimeAsync(700);
      await until(() => s.conn === "open" && sock() !== first);
      await until(() => sock().sent.some((m) => m.type === "fs.subscribe"));
      expect(s.documents.docs.get("a.txt")!.text).toBe("unsaved");
      await until(() => sock().sent.some((m) => m.type === "fs.stat" && m.path === "a.txt"));
    } finally {
      vi.useRealTimers();
    }
  });

  it("a workspace with no terminal gets one, once; a restarted server's too", async () => {
    let created = 0;
    handlers.hello = () => welcome("i1", []);
    handlers["term.create"] = () => ({ terminal: terminalInfo(20 + created++), offset: 0, responder: true });
    const s = await opened();
    await until(() => s.terminals.list.length === 1);
    // The same server again: its terminal is still there.
    handlers.hello = () => welcome("i1", [terminalInfo(20)]);
    sock().drop(4001);
    await until(() => s.conn === "open" && sock().requests("fs.subscribe").length === 1);
    await tick();
    expect(created).toBe(1);
    // A new server instance: every terminal is gone, so the page opens one again.
    handlers.hello = () => welcome("i2", []);
    sock().drop(4001);
    await until(() => created === 2);
    await until(() => s.terminals.active === 21);
  });

  it("a store that has caught up settles saves answered on an older connection", async () => {
    const s = await opened();
    await s.documents.openFile("a.txt");
    handlers["fs.write"] = () => ({ version: "v9", size: 1, mtime_ms: 0, durable: false, commit: null, pending_reason: "timeout" });
    s.documents.setText("a.txt", "changed");
    await s.documents.save("a.txt");
    expect(s.documents.savingCount()).toBe(1);
    sock().reply({ type: "status", status: status("pending") });
    expect(s.documents.savingCount()).toBe(1);
    sock().reply({ type: "status", status: status("saved") });
    expect(s.documents.savingCount()).toBe(0);
  });

  it("ignores change events of a subscription it does not hold", async () => {
    const s = await opened();
    await s.documents.openFile("a.txt");
    files["a.txt"] = { content: "two", version: "v2" };
    const stats = () => sock().requests("fs.stat").filter((m) => m.path === "a.txt").length;
    const before = stats();
    sock().reply({ type: "fs.changes", subscription: 2, events: [{ kind: "modify", path: "a.txt" }] });
    await tick();
    expect(stats()).toBe(before);
    expect(s.documents.docs.get("a.txt")!.text).toBe("one");
  });

  it("the starting page waits for ready: then it lists, restores tabs and opens a terminal", async () => {
    handlers.hello = () => ({ ...welcome("i1", []), status: status("saved", false) });
    handlers["term.create"] = () => ({ terminal: terminalInfo(3), offset: 0, responder: true });
    files["README.md"] = { content: "# P", version: "vr" };
    const s = new IdeSession("p");
    try {
      await s.open();
      await until(() => s.conn === "open");
      await tick();
      expect(sock().requests("fs.list")).toEqual([]);
      expect(sock().requests("term.create")).toEqual([]);
      sock().reply({ type: "status", status: status("saved", true) });
      await until(() => s.tree.entries.has("") && s.documents.active === "README.md" && s.terminals.active === 3);
    } finally {
      s.close();
    }
  });
});
