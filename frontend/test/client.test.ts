import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { CoveClient, WorkspaceNotRunning, type Ticket } from "../src/protocol/client";
import { ProtocolError, type ReadResult, type ServerEvent } from "../src/protocol/types";
import { FakeSocket } from "./fakeSocket";

const flush = () => new Promise((r) => setTimeout(r, 0));

describe("CoveClient (protocol.md §3, §4, §8, §15)", () => {
  let tickets: number;
  let ticket: () => Promise<Ticket>;
  beforeEach(() => {
    FakeSocket.reset();
    tickets = 0;
    ticket = async () => {
      tickets++;
      return { url: "ws://demo.ide.localhost:7070/ws", token: `t${tickets}` };
    };
  });
  afterEach(() => vi.useRealTimers());

  const client = (t = ticket) => new CoveClient({ ticket: t, WebSocketImpl: FakeSocket as unknown as typeof WebSocket, random: () => 0.5 });

  it("offers cove.v1 and the token as subprotocols, then says hello", async () => {
    const c = client();
    c.start();
    await flush();
    const ws = FakeSocket.all[0];
    expect(ws.protocols).toEqual(["cove.v1", "cove.token.t1"]);
    expect(ws.binaryType).toBe("arraybuffer");
    ws.open();
    expect(ws.sent[0]).toMatchObject({ type: "hello", protocol: 1, features: [] });
    ws.welcome();
    expect(c.state).toBe("open");
  });

  it("queues requests until the welcome, and matches results by id", async () => {
    const c = client();
    c.start();
    const p = c.request("fs.stat", { path: "a" });
    await flush();
    const ws = FakeSocket.all[0];
    ws.open();
    expect(ws.sent.length).toBe(1); // only hello before the welcome
    ws.welcome();
    const req = ws.sent[1];
    expect(req).toMatchObject({ type: "fs.stat", path: "a" });
    ws.reply({ type: "result", id: req.id, result: { entry: { name: "a" } } });
    await expect(p).resolves.toEqual({ entry: { name: "a" } });
  });

  it("passes the events of §4.3 to listeners, and not others", async () => {
    const c = client();
    const seen: ServerEvent[] = [];
    c.onEvent((e) => seen.push(e));
    c.start();
    await flush();
    const ws = FakeSocket.all[0];
    ws.open();
    ws.welcome();
    ws.reply({ type: "fs.durable", request: 7, commit: null });
    ws.reply({ type: "from.the.future", x: 1 });
    ws.reply({ type: "error", id: null, error: { code: "input_dropped", message: "full", details: { terminal: 1, bytes: 3 } } });
    expect(seen.map((e) => e.type)).toEqual(["fs.durable", "error"]);
  });

  it("types a request's fields and result by its name (checked by tsc)", async () => {
    const c = client();
    const read: Promise<ReadResult> = c.request("fs.read", { path: "a" });
    // @ts-expect-error: fs.read needs a path
    const noPath = c.request("fs.read", {});
    // @ts-expect-error: fs.list answers entries, not content
    const wrong: Promise<{ content: string }> = c.request("fs.list", { path: "" });
    // @ts-expect-error: there is no such request
    const unknown = c.request("fs.chmod", { path: "a" });
    // @ts-expect-error: hello is the client's own
    const hello = c.request("hello", { protocol: 1, client: "x", features: [] });
    c.close();
    for (const p of [read, noPath, wrong, unknown, hello]) await expect(p).rejects.toMatchObject({ code: "closed" });
  });

  it("rejects with the server's error code", async () => {
    const c = client();
    c.start();
    await flush();
    const ws = FakeSocket.all[0];
    ws.open();
    ws.welcome();
    const p = c.request("fs.read", { path: "../x" });
    const req = ws.sent[1];
    ws.reply({ type: "error", id: req.id, error: { code: "bad_path", message: "invalid path", details: { path: "../x" } } });
    const e = await p.catch((x) => x);
    expect(e).toBeInstanceOf(ProtocolError);
    expect(e.code).toBe("bad_path");
    expect(e.details.path).toBe("../x");
  });

  it("reconnects with a fresh token and resends safe requests, not unsafe ones", async () => {
    vi.useFakeTimers();
    const c = client();
    c.start();
    await vi.advanceTimersByTimeAsync(0);
    const ws1 = FakeSocket.all[0];
    ws1.open();
    ws1.welcome();
    const write = c.request("fs.write", { path: "a", content: "x", encoding: "utf8", base_version: null });
    const del = c.request("fs.delete", { path: "b" });
    ws1.drop(1006);
    expect(c.state).toBe("reconnecting");
    await expect(del).rejects.toMatchObject({ code: "disconnected" });
    await vi.advanceTimersByTimeAsync(499);
    expect(FakeSocket.all.length).toBe(1);
    await vi.advanceTimersByTimeAsync(1);
    const ws2 = FakeSocket.all[1];
    expect(ws2.protocols[1]).toBe("cove.token.t2");
    ws2.open();
    ws2.welcome();
    const resent = ws2.sent.find((m) => m.type === "fs.write");
    expect(resent).toMatchObject({ path: "a", content: "x" });
    ws2.reply({ type: "result", id: resent.id, result: { version: "sha256:1", durable: true } });
    await expect(write).resolves.toMatchObject({ durable: true });
  });

  it("after 1009 (message too big) it does not send the same request again", async () => {
    vi.useFakeTimers();
    const c = client();
    c.start();
    await vi.advanceTimersByTimeAsync(0);
    FakeSocket.all[0].open();
    FakeSocket.all[0].welcome();
    const write = c.request("fs.write", { path: "big", content: "x", encoding: "utf8", base_version: null });
    FakeSocket.all[0].drop(1009);
    await expect(write).rejects.toMatchObject({ code: "disconnected" });
    await vi.advanceTimersByTimeAsync(600);
    FakeSocket.all[1].open();
    FakeSocket.all[1].welcome();
    expect(FakeSocket.all[1].sent.filter((m) => m.type === "fs.write")).toEqual([]);
  });

  it("Retry now during an attempt leaves one socket, not two", async () => {
    let release: (t: Ticket) => void = () => {};
    let calls = 0;
    const c = client(() => {
      calls++;
      return calls === 1 ? new Promise<Ticket>((r) => (release = r)) : Promise.resolve({ url: "ws://x/ws", token: "t2" });
    });
    c.start();
    await flush();
    c.state = "reconnecting"; // as if the first attempt were a reconnect
    c.retryNow();
    await flush();
    release({ url: "ws://x/ws", token: "t1" }); // the voided attempt's ticket arrives late
    await flush();
    expect(FakeSocket.all.map((w) => w.protocols[1])).toEqual(["cove.token.t2"]);
  });

  it("keeps at most max_in_flight requests on the wire (§13)", async () => {
    const c = client();
    c.start();
    await flush();
    const ws = FakeSocket.all[0];
    ws.open();
    ws.welcome("i", { max_in_flight: 2 });
    const ps = [1, 2, 3, 4].map((n) => c.request("fs.stat", { path: `f${n}` }));
    expect(ws.sent.length - 1).toBe(2);
    ws.reply({ type: "result", id: ws.sent[1].id, result: {} });
    expect(ws.sent.length - 1).toBe(3);
    for (const m of ws.sent.slice(2)) ws.reply({ type: "result", id: m.id, result: {} });
    expect(ws.sent.length - 1).toBe(4);
    ws.reply({ type: "result", id: ws.sent[4].id, result: {} });
    await Promise.all(ps);
  });

  it("tells a restarted server (new instance) from a reconnect to the same one", async () => {
    vi.useFakeTimers();
    const c = client();
    const seen: boolean[] = [];
    c.onWelcome(({ restarted }) => seen.push(restarted));
    c.start();
    await vi.advanceTimersByTimeAsync(0);
    FakeSocket.all[0].open();
    FakeSocket.all[0].welcome("i1");
    FakeSocket.all[0].drop();
    await vi.advanceTimersByTimeAsync(600);
    FakeSocket.all[1].open();
    FakeSocket.all[1].welcome("i1");
    FakeSocket.all[1].drop();
    await vi.advanceTimersByTimeAsync(1200);
    FakeSocket.all[2].open();
    FakeSocket.all[2].welcome("i2");
    expect(seen).toEqual([false, false, true]);
  });

  it("does not reconnect after 4004 (stopped), 4005 (superseded) or 4003 (outdated)", async () => {
    vi.useFakeTimers();
    for (const [code, state] of [
      [4004, "stopped"],
      [4005, "superseded"],
      [4003, "outdated"],
    ] as const) {
      FakeSocket.reset();
      const c = client();
      c.start();
      await vi.advanceTimersByTimeAsync(0);
      FakeSocket.all[0].open();
      FakeSocket.all[0].welcome();
      FakeSocket.all[0].drop(code);
      expect(c.state).toBe(state);
      await vi.advanceTimersByTimeAsync(120_000);
      expect(FakeSocket.all.length).toBe(1);
    }
  });

  it("stops when the controller says the workspace is not running", async () => {
    const c = client(async () => {
      throw new WorkspaceNotRunning("stopped");
    });
    c.start();
    await flush();
    expect(c.state).toBe("stopped");
    expect(FakeSocket.all.length).toBe(0);
  });

  it("declares a silent connection dead after dead_after_ms and reconnects at once", async () => {
    vi.useFakeTimers();
    const c = client();
    c.start();
    await vi.advanceTimersByTimeAsync(0);
    FakeSocket.all[0].open();
    FakeSocket.all[0].welcome();
    await vi.advanceTimersByTimeAsync(44_000);
    expect(FakeSocket.all.length).toBe(1);
    await vi.advanceTimersByTimeAsync(6_000);
    expect(FakeSocket.all[0].closedWith).not.toBeNull();
    expect(FakeSocket.all.length).toBe(2);
  });

  it("retries a ticket failure (controller down) with backoff", async () => {
    vi.useFakeTimers();
    let n = 0;
    const c = client(async () => {
      if (n++ < 2) throw new Error("Cove's server is not reachable");
      return { url: "ws://x/ws", token: "t" };
    });
    c.start();
    await vi.advanceTimersByTimeAsync(0);
    expect(c.state).toBe("reconnecting");
    await vi.advanceTimersByTimeAsync(500 + 1000);
    expect(FakeSocket.all.length).toBe(1);
  });
});
