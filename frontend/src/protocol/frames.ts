// Binary frames of the cove-pty protocol (docs/protocol.md §5): a 14-byte
// big-endian header (kind, flags, terminal u32, offset u64), then the payload.

export const HEADER_BYTES = 14;

export const Kind = {
  OUTPUT: 0x01,
  SNAPSHOT: 0x02,
  INPUT: 0x03,
  ACK: 0x04,
} as const;

export const SNAPSHOT_START = 0x01;
export const SNAPSHOT_END = 0x02;

export interface Frame {
  kind: number;
  flags: number;
  terminal: number;
  /** Stream offset. A JS number: the protocol keeps every integer below 2^53. */
  offset: number;
  payload: Uint8Array;
}

export class FrameError extends Error {}

export function decodeFrame(buf: ArrayBuffer): Frame {
  if (buf.byteLength < HEADER_BYTES) {
    throw new FrameError(`binary frame of ${buf.byteLength} bytes is shorter than its header`);
  }
  const view = new DataView(buf);
  return {
    kind: view.getUint8(0),
    flags: view.getUint8(1),
    terminal: view.getUint32(2),
    offset: Number(view.getBigUint64(6)),
    payload: new Uint8Array(buf, HEADER_BYTES),
  };
}

function header(kind: number, terminal: number, offset: number, payloadBytes: number): Uint8Array {
  const out = new Uint8Array(HEADER_BYTES + payloadBytes);
  const view = new DataView(out.buffer);
  view.setUint8(0, kind);
  view.setUint8(1, 0);
  view.setUint32(2, terminal);
  view.setBigUint64(6, BigInt(offset));
  return out;
}

/** An INPUT frame: raw bytes for the terminal (keys, paste, query replies). */
export function inputFrame(terminal: number, data: Uint8Array): Uint8Array {
  if (data.byteLength === 0) throw new FrameError("INPUT must not be empty");
  const out = header(Kind.INPUT, terminal, 0, data.byteLength);
  out.set(data, HEADER_BYTES);
  return out;
}

/** An ACK frame: output up to `offset` has been processed (§7 F2). */
export function ackFrame(terminal: number, offset: number): Uint8Array {
  return header(Kind.ACK, terminal, offset, 0);
}

/** Test helper and documentation of the server side: an OUTPUT or SNAPSHOT frame. */
export function serverFrame(kind: number, flags: number, terminal: number, offset: number, payload: Uint8Array): ArrayBuffer {
  const out = header(kind, terminal, offset, payload.byteLength);
  out[1] = flags;
  out.set(payload, HEADER_BYTES);
  return out.buffer as ArrayBuffer;
}
