import { describe, expect, it } from "vitest";
import { decodeFrame, Kind, serverFrame, SNAPSHOT_END, SNAPSHOT_START } from "../src/protocol/frames";
import { TerminalStream, type TermSink } from "../src/protocol/terminal";

/** A sink that processes writes when told to, as xterm.js does asynchronously. */
class FakeSink implements TermSink {
  text = "";
  resets = 0;
  queue: (() => void)[] = [];
  // In order with the writes, as the page's RIS through xterm's write queue.
  reset() {
    this.queue.push(() => {
      this.resets++;
      this.text = "";
    });
  }
  write(data: Uint8Array, done: () => void) {
    this.queue.push(() => {
      this.text += new TextDecoder().decode(data);
      done();
    });
  }
  drain(n = Infinity) {
    while (n-- > 0 && this.queue.length) this.queue.shift()!();
  }
}

const out = (offset: number, s: string) => decodeFrame(serverFrame(Kind.OUTPUT, 0, 1, offset, new TextEncoder().encode(s)));
const snap = (offset: number, s: string, flags: number) => decodeFrame(serverFrame(Kind.SNAPSHOT, flags, 1, offset, new TextEncoder().encode(s)));

describe("terminal stream flow control (protocol.md §7)", () => {
  it("acks only what the sink has processed, once everything received is processed", () => {
    const sink = new FakeSink();
    const acks: number[] = [];
    const s = new TerminalStream(1, sink, (o) => acks.push(o), 65536);
    s.attached(100);
    s.onFrame(out(100, "hello "));
    s.onFrame(out(106, "world"));
    expect(acks).toEqual([]); // received, not processed
    sink.drain(1);
    expect(acks).toEqual([]); // 106 processed but 111 received: under ack_bytes, not caught up
    sink.drain();
    expect(acks).toEqual([111]);
    expect(sink.text).toBe("hello world");
  });

  it("acks every ack_bytes while output keeps coming", () => {
    const sink = new FakeSink();
    const acks: number[] = [];
    const s = new TerminalStream(1, sink, (o) => acks.push(o), 10);
    s.attached(0);
    for (let i = 0; i < 5; i++) s.onFrame(out(i * 4, "abcd"));
    sink.drain(3); // 12 processed of 20 received
    expect(acks).toEqual([12]);
    sink.drain();
    expect(acks).toEqual([12, 20]);
  });

  it("a snapshot resets the screen, is never acked, and output continues from its offset", () => {
    const sink = new FakeSink();
    const acks: number[] = [];
    const s = new TerminalStream(1, sink, (o) => acks.push(o), 65536);
    s.attached(0);
    s.onFrame(out(0, "old"));
    // A resync arrives before the old output was processed (§7 F5).
    s.onFrame(snap(5000, "scr", SNAPSHOT_START));
    s.onFrame(snap(5000, "een", SNAPSHOT_END));
    s.onFrame(out(5000, "$ "));
    sink.drain();
    expect(sink.resets).toBe(1);
    // The old write's callback (offset 3) must not ack: it predates the snapshot.
    expect(acks).toEqual([5002]);
    expect(s.offset).toBe(5002);
    // The old output queued before the snapshot is not drawn over it.
    expect(sink.text).toBe("screen$ ");
  });

  it("a disposed stream (socket gone, stream replaced) never acks again", () => {
    const sink = new FakeSink();
    const acks: number[] = [];
    const s = new TerminalStream(1, sink, (o) => acks.push(o), 65536);
    s.attached(0);
    s.onFrame(out(0, "abc"));
    s.dispose();
    sink.drain();
    expect(acks).toEqual([]);
  });

  it("ignores OUTPUT between a snapshot's START and END", () => {
    const sink = new FakeSink();
    const s = new TerminalStream(1, sink, () => {}, 65536);
    s.onFrame(snap(10, "a", SNAPSHOT_START));
    s.onFrame(out(10, "x"));
    s.onFrame(snap(10, "b", SNAPSHOT_END));
    sink.drain();
    expect(sink.text).toBe("ab");
  });
});
