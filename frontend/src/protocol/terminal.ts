// One terminal's output stream on the client (docs/protocol.md §5–§7):
// writes OUTPUT and SNAPSHOT payloads to a sink (xterm.js) in order, and
// acknowledges output once the sink has *processed* it, so a slow page
// pauses the program instead of buffering without bound.

import { Kind, SNAPSHOT_END, SNAPSHOT_START, type Frame } from "./frames";

/**
 * What the stream writes to: xterm.js's Terminal fits. `reset` must take
 * effect in order with the writes before it (xterm.js: write "\x1bc", not
 * `reset()`, which acts at once while older writes are still queued).
 */
export interface TermSink {
  reset(): void;
  write(data: Uint8Array, done: () => void): void;
}

export class TerminalStream {
  /** Offset after the last byte handed to the sink. */
  private received = 0;
  /** Offset after the last byte the sink has processed. */
  private processed = 0;
  private lastAck = 0;
  /** Bumped by each snapshot: write callbacks from before it must not ack. */
  private generation = 0;
  private inSnapshot = false;

  constructor(
    readonly id: number,
    private readonly sink: TermSink,
    private readonly sendAck: (offset: number) => void,
    private readonly ackBytes: number,
  ) {}

  /** An attach or create result: the stream continues from `offset`. */
  attached(offset: number): void {
    this.generation++;
    this.received = this.processed = this.lastAck = offset;
  }

  /**
   * The attachment ended (socket closed, stream replaced): writes still
   * queued in the sink must not ack on a later attachment, where their
   * offsets may lie beyond what was sent (§7 F2 closes with 4000).
   */
  dispose(): void {
    this.generation++;
    this.disposed = true;
  }
  private disposed = false;

  get offset(): number {
    return this.received;
  }

  onFrame(f: Frame): void {
    if (f.kind === Kind.SNAPSHOT) {
      if (f.flags & SNAPSHOT_START) {
        this.generation++;
        this.inSnapshot = true;
        this.sink.reset();
      }
      // Snapshot bytes are outside the window (§6.5): written, never acked.
      if (f.payload.byteLength) this.sink.write(f.payload, () => {});
      if (f.flags & SNAPSHOT_END) {
        this.inSnapshot = false;
        this.received = this.processed = this.lastAck = f.offset;
      }
      return;
    }
    if (f.kind !== Kind.OUTPUT || this.inSnapshot) return;
    const end = f.offset + f.payload.byteLength;
    this.received = Math.max(this.received, end);
    const gen = this.generation;
    this.sink.write(f.payload, () => {
      if (gen !== this.generation) return;
      this.processed = Math.max(this.processed, end);
      this.maybeAck();
    });
  }

  // §7 F2: ack every ack_bytes processed, and whenever everything received is processed.
  private maybeAck(): void {
    if (this.disposed || this.processed <= this.lastAck) return;
    if (this.processed - this.lastAck >= this.ackBytes || this.processed === this.received) {
      this.lastAck = this.processed;
      this.sendAck(this.processed);
    }
  }
}
