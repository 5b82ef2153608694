import { describe, expect, it } from "vitest";
import { ackFrame, decodeFrame, FrameError, inputFrame, Kind, serverFrame, SNAPSHOT_END, SNAPSHOT_START } from "../src/protocol/frames";

describe("binary frames (protocol.md §5)", () => {
  it("encodes INPUT with a big-endian header and offset 0", () => {
    const f = inputFrame(3, new TextEncoder().encode("ls\r"));
    expect([...f.slice(0, 14)]).toEqual([0x03, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0]);
    expect(new TextDecoder().decode(f.slice(14))).toBe("ls\r");
  });

  it("encodes ACK with the offset, as in the example session (§18)", () => {
    expect([...ackFrame(1, 0x1402)]).toEqual([0x04, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x14, 0x02]);
  });

  it("keeps offsets above 2^32 exact", () => {
    const big = 2 ** 40 + 5;
    const f = decodeFrame(serverFrame(Kind.OUTPUT, 0, 7, big, new Uint8Array([1])));
    expect(f.offset).toBe(big);
    expect(f.terminal).toBe(7);
  });

  it("decodes a snapshot's flags and payload", () => {
    const f = decodeFrame(serverFrame(Kind.SNAPSHOT, SNAPSHOT_START | SNAPSHOT_END, 1, 5120, new Uint8Array([65, 66])));
    expect(f.kind).toBe(Kind.SNAPSHOT);
    expect(f.flags).toBe(3);
    expect([...f.payload]).toEqual([65, 66]);
  });

  it("refuses a frame shorter than its header and an empty INPUT", () => {
    expect(() => decodeFrame(new ArrayBuffer(13))).toThrow(FrameError);
    expect(() => inputFrame(1, new Uint8Array())).toThrow(FrameError);
  });
});
