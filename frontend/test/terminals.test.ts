// The session's terminals slice against a scripted cove-pty: which terminal
// is shown, what reaches a view, and what goes back to the server.
import { describe, expect, it } from "vitest";
import { Terminals, type TermView } from "../src/ide/terminals";
import { decodeFrame, Kind, serverFrame, SNAPSHOT_END, SNAPSHOT_START } from "../src/protocol/frames";
import type { TerminalInfo } from "../src/protocol/types";
import { terminalInfo } from "./fakeSocket";
import { counter, handlers, scriptedIde, sock, tick, until } from "./ide";

const { connected } = scriptedIde();

const info = (id: number, more: Record<string, unknown> = {}) => terminalInfo(id, more) as TerminalInfo;
const bytes = (s: string) => new TextEncoder().encode(s);

/** A view whose sink processes writes when told to, as xterm.js does. */
function fakeView() {
  const v = {
    text: "",
    sizes: [] as [number, number][],
    refits: 0,
    queue: [] as (() => void)[],
    view: null as unknown as TermView,
    drain() {
      while (v.queue.length) v.queue.shift()!();
    },
  };
  v.view = {
    sink: {
      reset: () => v.queue.push(() => (v.text = "")),
      write: (data, done) =>
        v.queue.push(() => {
          v.text += new TextDecoder().decode(data);
          done();
        }),
    },
    resize: (cols, rows) => v.sizes.push([cols, rows]),
    refit: () => v.refits++,
  };
  return v;
}

/** The ACK frames sent for terminal `id`, as offsets. */
const acks = (id: number) =>
  sock()
    .sent.filter((m) => m instanceof Uint8Array)
    .map((b: Uint8Array) => decodeFrame(b.slice().buffer as ArrayBuffer))
    .filter((f) => f.kind === Kind.ACK && f.terminal === id)
    .map((f) => f.offset);

async function slice() {
  const client = await connected();
  const changes = counter();
  const terms = new Terminals(client, changes.bump);
  client.onFrame((f) => terms.onFrame(f)); // as the session wires it
  return { terms, changes };
}

describe("Terminals", () => {
  it("output that arrives before the view of a terminal it created is shown once the view mounts", async () => {
    handlers["term.create"] = (m) => ({ terminal: info(7, { name: m.name }), offset: 0, responder: true });
    const { terms, changes } = await slice();
    await terms.create(true);
    expect(terms.list.map((t) => t.id)).toEqual([7]);
    expect(terms.active).toBe(7);
    expect(changes.n).toBeGreaterThan(0);
    sock().frame(serverFrame(Kind.OUTPUT, 0, 7, 0, bytes("$ ")));
    const v = fakeView();
    terms.adoptView(7, v.view);
    v.drain();
    expect(v.text).toBe("$ ");
    // Created here: already attached at offset 0, so no term.attach goes out.
    expect(sock().requests("term.attach")).toEqual([]);
    await until(() => acks(7).length === 1);
    expect(acks(7)).toEqual([2]);
  });

  it("a view of a terminal it did not create attaches: the server's size and responder role apply", async () => {
    handlers["term.attach"] = (m) => ({ terminal: info(m.terminal, { cols: 120, rows: 30 }), offset: 40, responder: false });
    const { terms } = await slice();
    terms.welcomed([info(3)], false);
    const v = fakeView();
    terms.registerView(3, v.view);
    await until(() => v.refits === 1);
    expect(v.sizes).toEqual([[120, 30]]);
    expect(terms.list[0]).toMatchObject({ cols: 120, rows: 30 });
    expect(terms.isResponder(3)).toBe(false);
    // The attach result's snapshot restores the screen; output continues from its offset.
    sock().frame(serverFrame(Kind.SNAPSHOT, SNAPSHOT_START | SNAPSHOT_END, 3, 40, bytes("screen")));
    sock().frame(serverFrame(Kind.OUTPUT, 0, 3, 40, bytes("!")));
    v.drain();
    expect(v.text).toBe("screen!");
    await until(() => acks(3).length === 1);
    expect(acks(3)).toEqual([41]);
  });

  it("a terminal gone from the server (not_found on attach) leaves the list", async () => {
    handlers["term.attach"] = () => {
      throw { code: "not_found", message: "no such terminal", details: {} };
    };
    const { terms } = await slice();
    terms.welcomed([info(1), info(2)], false);
    terms.registerView(2, fakeView().view);
    await until(() => terms.list.length === 1);
    expect(terms.list[0].id).toBe(1);
  });

  it("a stream ends with its socket: a write finishing after the drop never acks", async () => {
    handlers["term.create"] = () => ({ terminal: info(4), offset: 0, responder: true });
    const { terms } = await slice();
    await terms.create();
    const v = fakeView();
    terms.adoptView(4, v.view);
    sock().frame(serverFrame(Kind.OUTPUT, 0, 4, 0, bytes("abc")));
    terms.connectionChanged(false);
    v.drain();
    await tick();
    expect(acks(4)).toEqual([]);
  });

  it("closing the shown terminal shows the first one left", async () => {
    const { terms } = await slice();
    terms.welcomed([info(1), info(2), info(3)], false);
    terms.select(2);
    terms.onEvent({ type: "term.closed", terminal: 2 });
    expect(terms.list.map((t) => t.id)).toEqual([1, 3]);
    expect(terms.active).toBe(1);
    terms.onEvent({ type: "term.closed", terminal: 3 });
    expect(terms.active).toBe(1);
  });

  it("a welcome keeps the shown terminal if it still exists; a restarted server voids it", async () => {
    const { terms } = await slice();
    terms.welcomed([info(1), info(2)], false);
    terms.select(2);
    terms.welcomed([info(1), info(2)], false);
    expect(terms.active).toBe(2);
    terms.welcomed([info(5)], true);
    expect(terms.active).toBe(5);
    terms.welcomed([], true);
    expect(terms.active).toBeNull();
  });

  it("events from other pages: a created terminal is listed once, an exited one marked, a resize applied to its view", async () => {
    const { terms } = await slice();
    terms.welcomed([info(1)], false);
    const v = fakeView();
    terms.registerView(1, v.view);
    await until(() => v.refits === 1);
    terms.onEvent({ type: "term.created", terminal: info(2) });
    terms.onEvent({ type: "term.created", terminal: info(2) });
    expect(terms.list.map((t) => t.id)).toEqual([1, 2]);
    terms.onEvent({ type: "term.exited", terminal: 2, exit: { code: 0, signal: null }, end_offset: 9 });
    expect(terms.list[1]).toMatchObject({ state: "exited", exit: { code: 0 } });
    terms.onEvent({ type: "term.resized", terminal: 1, cols: 90, rows: 20 });
    expect(v.sizes.at(-1)).toEqual([90, 20]);
    expect(terms.list[0]).toMatchObject({ cols: 90, rows: 20 });
    terms.onEvent({ type: "term.responder", terminal: 1, responder: false });
    expect(terms.isResponder(1)).toBe(false);
  });

  it("sends term.resize only for a size that changed", async () => {
    const { terms } = await slice();
    terms.welcomed([info(1)], false);
    terms.resize(1, 80, 24);
    terms.resize(1, 100, 30);
    terms.resize(1, 100, 30);
    await until(() => sock().requests("term.resize").length === 1);
    await tick();
    expect(sock().requests("term.resize")).toMatchObject([{ terminal: 1, cols: 100, rows: 30 }]);
  });

  it("a picked tab takes the keyboard once; a terminal the page opened by itself never does", async () => {
    handlers["term.create"] = () => ({ terminal: info(9), offset: 0, responder: true });
    const { terms } = await slice();
    terms.welcomed([info(1)], false);
    terms.select(1);
    expect(terms.takeFocus(1)).toBe(true);
    expect(terms.takeFocus(1)).toBe(false);
    await terms.create(false);
    expect(terms.active).toBe(9);
    expect(terms.takeFocus(9)).toBe(false);
  });

  it("opens a first terminal by itself only once", async () => {
    let created = 0;
    handlers["term.create"] = () => ({ terminal: info(10 + created++), offset: 0, responder: true });
    const { terms } = await slice();
    terms.welcomed([], false);
    terms.openFirst();
    await until(() => terms.list.length === 1);
    terms.onEvent({ type: "term.closed", terminal: 10 });
    terms.openFirst();
    await tick();
    expect(created).toBe(1);
  });

  it("typed input goes out as INPUT frames; nothing for empty input", async () => {
    const { terms } = await slice();
    terms.input(1, new Uint8Array());
    terms.input(1, bytes("ls\r"));
    const frames = sock()
      .sent.filter((m) => m instanceof Uint8Array)
      .map((b: Uint8Array) => decodeFrame(b.slice().buffer as ArrayBuffer));
    expect(frames.map((f) => [f.kind, f.terminal, new TextDecoder().decode(f.payload)])).toEqual([[Kind.INPUT, 1, "ls\r"]]);
  });
});
