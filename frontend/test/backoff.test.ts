import { describe, expect, it } from "vitest";
import { Backoff } from "../src/protocol/backoff";

describe("reconnect backoff (protocol.md §8)", () => {
  it("starts at 0.5 s and doubles to 30 s", () => {
    const b = new Backoff(() => 0.5); // no jitter
    expect([1, 2, 3, 4, 5, 6, 7, 8, 9].map(() => b.next())).toEqual([500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
  });

  it("jitters by at most 20 %", () => {
    expect(new Backoff(() => 0).next()).toBe(400);
    expect(new Backoff(() => 0.999999).next()).toBe(600);
  });

  it("starts over after a connection that lasted 60 s, not after a short one", () => {
    const b = new Backoff(() => 0.5);
    b.next();
    b.next();
    b.connectionEnded(59_000);
    expect(b.next()).toBe(2000);
    b.connectionEnded(60_000);
    expect(b.next()).toBe(500);
  });
});
