// The IDE session against a scripted cove-pty (a fake WebSocket) and a
// scripted controller (a fake fetch): the rules that keep buffers safe.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { IdeSession } from "../src/ide/session";

type Handler = (msg: any, sock: Sock) => unknown | Promise<unknown>;

class Sock {
  static last: Sock | null = null;
  static handlers: Record<string, Handler> = {};
  binaryType = "blob";
  onopen: (() => void) | null = null;
  onmessage: ((e: { data: unknown }) => void) | null = null;
  onclose: ((e: { code: number; reason: string }) => void) | null = null;
  sent: any[] = [];
  constructor() {
    Sock.last = this;
    setTimeout(() => this.onopen?.(), 0);
  }
  send(data: string | Uint8Array) {
    if (typeof data !== "string") return;
    const msg = JSON.parse(data);
    this.sent.push(msg);
    const h = Sock.handlers[msg.type];
    Promise.resolve()
      .then(() => (h ? h(msg, this) : {}))
      .then(
      (result) => this.push({ type: "result", id: msg.id, result }),
      (error) => this.push({ type: "error", id: msg.id, error }),
    );
  }
  close() {}
  push(msg: unknown) {
    this.onmessage?.({ data: JSON.stringify(msg) });
  }
  drop(code = 1006) {
    this.onclose?.({ code, reason: "" });
  }
}

const status = (state = "saved") => ({ ready: true, hydration: null, sync: { state, dirty: 0, store_healthy: true, fenced: false, last_commit: null, commit_lag_ms: 0 } });
const welcome = (instance = "i1") => ({
  protocol: 1,
  instance,
  terminals: [{ id: 1, name: "", command: ["bash"], cwd: "", cols: 80, rows: 24, title: "", state: "running", exit: null, pid: 1, created_ms: 0, end_offset: 0, attached: 0 }],
  status: status(),
  limits: { dead_after_ms: 45000, ack_bytes: 65536, max_in_flight: 64, max_message_bytes: 16 << 20 },
  preview: { default_port: 3000, url: null, port_url: null },
});
const workspace = { project: "p", state: "ready", reason: null, mode: "fuse", hydration: null, app_port: 3000, urls: { ide_socket: "ws://p.ide.localhost/ws", preview: "", preview_port: "" }, token: "t", token_expires_ms: 0 };

function deferred<T>() {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}
const tick = () => new Promise((r) => setTimeout(r, 5));
async function until(f: () => boolean) {
  for (let i = 0; i < 200 && !f(); i++) await tick();
  expect(f()).toBe(true);
}

let files: Record<string, { content: string; version: string }>;

beforeEach(() => {
  files = { "a.txt": { content: "one", version: "v1" }, "d/x.txt": { content: "x", version: "vx" } };
  Sock.handlers = {
    hello: () => welcome(),
    "fs.subscribe": () => ({ subscription: 1 }),
    "fs.list": () => ({ entries: [], truncated: false, skipped: 0 }),
    "term.attach": () => ({ terminal: welcome().terminals[0], offset: 0, responder: true }),
    "fs.stat": (m) => {
      const f = files[m.path];
      if (!f) throw { code: "not_found", message: "no such file", details: { path: m.path } };
      return { entry: { name: m.path, kind: "file", size: f.content.length, mtime_ms: 0, mode: 420, version: f.version } };
    },
    "fs.read": (m) => ({ content: files[m.path].content, encoding: "utf8", version: files[m.path].version, size: 3, mtime_ms: 0 }),
    "fs.write": () => ({ version: "v9", size: 1, mtime_ms: 0, durable: true, commit: { epoch: 1, seq: 2 } }),
    "fs.rename": () => ({ durable: true, commit: { epoch: 1, seq: 3 } }),
  };
  const store = new Map<string, string>();
  vi.stubGlobal("WebSocket", Sock);
  vi.stubGlobal("document", { title: "" });
  vi.stubGlobal("localStorage", {
    getItem: (k: string) => store.get(k) ?? null,
    setItem: (k: string, v: string) => store.set(k, v),
    removeItem: (k: string) => store.delete(k),
  });
  vi.stubGlobal("fetch", async (url: string) => {
    const body = url.endsWith("/workspace/start") || url.endsWith("/workspace/token") || url.endsWith("/workspace") ? workspace : { id: "p", name: "P" };
    return { ok: true, status: 200, json: async () => body };
  });
});
// Every session a test opens is closed after it: a live one's stash timer
// would write into the next test's localStorage.
const sessions: IdeSession[] = [];
afterEach(() => {
  for (const s of sessions.splice(0)) s.close();
  vi.unstubAllGlobals();
});

async function opened() {
  const s = new IdeSession("p");
  sessions.push(s);
  await s.open();
  await until(() => s.conn === "open");
  await until(() => s.tree.has(""));
  return s;
}

describe("IdeSession", () => {
  it("keeps keys typed while a reload from disk was on its way, and marks the file", async () => {
    const s = await opened();
    await s.openFile("a.txt");
    expect(s.docs.get("a.txt")!.text).toBe("one");
    // The disk changes; the reload's read is held until the person has typed.
    files["a.txt"] = { content: "two", version: "v2" };
    const read = deferred<void>();
    const original = Sock.handlers["fs.read"];
    Sock.handlers["fs.read"] = async (m, sock) => {
      await read.promise;
      return original(m, sock);
    };
    Sock.last!.push({ type: "fs.changes", subscription: 1, events: [{ kind: "modify", path: "a.txt" }] });
    await until(() => Sock.last!.sent.filter((m) => m.type === "fs.read").length === 2);
    s.setText("a.txt", "one, and typed");
    read.resolve();
    await until(() => s.docs.get("a.txt")!.changedOnDisk);
    expect(s.docs.get("a.txt")!.text).toBe("one, and typed");
  });

  it("a clean buffer follows the disk", async () => {
    const s = await opened();
    await s.openFile("a.txt");
    files["a.txt"] = { content: "two", version: "v2" };
    Sock.last!.push({ type: "fs.changes", subscription: 1, events: [{ kind: "modify", path: "a.txt" }] });
    await until(() => s.docs.get("a.txt")!.text === "two");
    expect(s.docs.get("a.txt")!.base).toBe("v2");
  });

  it("a save that is not yet durable is pending until its fs.durable", async () => {
    const s = await opened();
    await s.openFile("a.txt");
    Sock.handlers["fs.write"] = () => ({ version: "v9", size: 1, mtime_ms: 0, durable: false, commit: null, pending_reason: "timeout" });
    s.setText("a.txt", "changed");
    await s.save("a.txt");
    expect(s.savingCount()).toBe(1);
    const write = Sock.last!.sent.find((m) => m.type === "fs.write");
    Sock.last!.push({ type: "fs.durable", request: write.id, commit: { epoch: 1, seq: 5 } });
    expect(s.savingCount()).toBe(0);
  });

  it("a conflict on save keeps the buffer and offers the disk's version", async () => {
    const s = await opened();
    await s.openFile("a.txt");
    files["a.txt"] = { content: "theirs", version: "v2" };
    Sock.handlers["fs.write"] = (m) => {
      if (m.base_version !== "v2") throw { code: "conflict", message: "changed", details: { current_version: "v2" } };
      return { version: "v3", size: 1, mtime_ms: 0, durable: true, commit: null };
    };
    s.setText("a.txt", "mine");
    await s.save("a.txt");
    expect(s.conflict).toMatchObject({ path: "a.txt", theirs: "theirs", theirsVersion: "v2" });
    expect(s.docs.get("a.txt")!.text).toBe("mine");
    await s.overwrite();
    expect(s.conflict).toBeNull();
    expect(s.docs.get("a.txt")).toMatchObject({ base: "v3", saved: "mine" });
  });

  it("renaming a directory moves its open files, tabs and the active one", async () => {
    const s = await opened();
    await s.openFile("d/x.txt");
    files["e/x.txt"] = files["d/x.txt"];
    await s.rename("d", "e");
    expect([...s.docs.keys()]).toEqual(["e/x.txt"]);
    expect(s.tabs).toEqual(["e/x.txt"]);
    expect(s.active).toBe("e/x.txt");
  });

  it("an unsaved buffer is stashed in the browser and comes back in the next page", async () => {
    const s1 = await opened();
    await s1.openFile("a.txt");
    await until(() => s1.docs.get("a.txt")!.loaded);
    s1.setText("a.txt", "one, unsaved");
    s1.flushStash();
    s1.close();
    const s2 = await opened();
    await until(() => s2.docs.get("a.txt")?.text === "one, unsaved");
    expect(s2.docs.get("a.txt")!.changedOnDisk).toBe(false);
    expect(s2.unsavedCount()).toBe(1);
    // Saved: it leaves the stash.
    await s2.save("a.txt");
    s2.flushStash();
    expect(localStorage.getItem("cove.unsaved.p")).toBeNull();
  });

  it("a stashed buffer whose file changed since is marked, so the save asks", async () => {
    const s1 = await opened();
    await s1.openFile("a.txt");
    await until(() => s1.docs.get("a.txt")!.loaded);
    s1.setText("a.txt", "mine");
    s1.flushStash();
    s1.close();
    files["a.txt"] = { content: "theirs", version: "v2" };
    const s2 = await opened();
    await until(() => s2.docs.get("a.txt")?.text === "mine");
    expect(s2.docs.get("a.txt")!.changedOnDisk).toBe(true);
  });

  it("a dropped connection keeps unsaved buffers and re-subscribes after the welcome", async () => {
    vi.useFakeTimers({ shouldAdvanceTime: true });
    try {
      const s = await opened();
      await s.openFile("a.txt");
      s.setText("a.txt", "unsaved");
      const first = Sock.last!;
      first.drop();
      expect(s.conn).toBe("reconnecting");
      await vi.advanceTimersByTimeAsync(700);
      await until(() => s.conn === "open" && Sock.last !== first);
      await until(() => Sock.last!.sent.some((m) => m.type === "fs.subscribe"));
      expect(s.docs.get("a.txt")!.text).toBe("unsaved");
      await until(() => Sock.last!.sent.some((m) => m.type === "fs.stat" && m.path === "a.txt"));
    } finally {
      vi.useRealTimers();
    }
  });
});
