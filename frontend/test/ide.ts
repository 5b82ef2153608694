// What the session tests share: a scripted cove-pty (FakeSocket) over a
// little file system, a scripted controller (fetch), the browser's
// document and localStorage, and helpers to wait.
import { afterEach, beforeEach, expect, vi } from "vitest";
import { IdeSession } from "../src/ide/session";
import { CoveClient } from "../src/protocol/client";
import { FakeSocket, terminalInfo, welcome, type Handler } from "./fakeSocket";

export const workspace = {
  project: "p",
  state: "ready",
  reason: null,
  mode: "fuse",
  hydration: null,
  app_port: 3000,
  urls: { ide_socket: "ws://p.ide.localhost/ws", preview: "", preview_port: "" },
  token: "t",
  token_expires_ms: 0,
};

export function deferred<T>() {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

export const tick = () => new Promise((r) => setTimeout(r, 5));

export async function until(f: () => boolean) {
  for (let i = 0; i < 200 && !f(); i++) await tick();
  expect(f()).toBe(true);
}

/** The workspace's files: path → content and version. */
export let files: Record<string, { content: string; version: string }>;
/** Directories `fs.list` answers for (others list empty). */
export let dirs: Record<string, { name: string; kind: "file" | "dir" }[]>;
/** The scripted server's handlers, by request type; a test may replace one. */
export let handlers: Record<string, Handler>;

/** The newest socket the session opened. */
export const sock = () => FakeSocket.last!;

const notFound = (path: string) => ({ code: "not_found", message: "no such file", details: { path } });

/** Installs the fakes around each test of the file that calls it. */
export function scriptedIde() {
  const sessions: IdeSession[] = [];
  const clients: CoveClient[] = [];
  beforeEach(() => {
    files = { "a.txt": { content: "one", version: "v1" }, "d/x.txt": { content: "x", version: "vx" } };
    dirs = {};
    handlers = {
      hello: () => welcome(),
      "fs.subscribe": () => ({ subscription: 1 }),
      "fs.list": (m) => ({ entries: (dirs[m.path] ?? []).map((e) => ({ ...e, size: 0, mtime_ms: 0, mode: 420 })), truncated: false, skipped: 0 }),
      "term.attach": (m) => ({ terminal: terminalInfo(m.terminal), offset: 0, responder: true }),
      "fs.stat": (m) => {
        const f = files[m.path];
        if (!f) throw notFound(m.path);
        return { entry: { name: m.path, kind: "file", size: f.content.length, mtime_ms: 0, mode: 420, version: f.version } };
      },
      "fs.read": (m) => {
        const f = files[m.path];
        if (!f) throw notFound(m.path);
        return { content: f.content, encoding: "utf8", version: f.version, size: f.content.length, mtime_ms: 0 };
      },
      "fs.write": () => ({ version: "v9", size: 1, mtime_ms: 0, durable: true, commit: { epoch: 1, seq: 2 } }),
      "fs.rename": () => ({ durable: true, commit: { epoch: 1, seq: 3 } }),
    };
    FakeSocket.reset(handlers);
    const store = new Map<string, string>();
    vi.stubGlobal("WebSocket", FakeSocket);
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
  afterEach(() => {
    for (const s of sessions.splice(0)) s.close();
    for (const c of clients.splice(0)) c.close();
    FakeSocket.reset();
    vi.unstubAllGlobals();
  });

  /** A session of project "p", connected, its root listed. */
  async function opened(): Promise<IdeSession> {
    const s = new IdeSession("p");
    sessions.push(s);
    await s.open();
    await until(() => s.conn === "open");
    await until(() => s.tree.entries.has(""));
    return s;
  }

  /** A client alone, connected: for one slice of the session at a time. */
  async function connected(): Promise<CoveClient> {
    const c = new CoveClient({ ticket: async () => ({ url: workspace.urls.ide_socket, token: "t" }), WebSocketImpl: FakeSocket as unknown as typeof WebSocket });
    clients.push(c);
    c.start();
    await until(() => c.state === "open");
    return c;
  }

  return { opened, connected };
}

/** Counts a slice's calls of `changed` (re-renders) and of its other callbacks. */
export function counter() {
  const c = { n: 0, bump: () => void c.n++ };
  return c;
}
