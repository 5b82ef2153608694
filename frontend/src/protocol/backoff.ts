// Reconnect backoff of docs/protocol.md §8: 0.5 s doubling to 30 s, ±20 %
// jitter, reset once a connection has lasted 60 s.

export const BACKOFF_FIRST_MS = 500;
export const BACKOFF_MAX_MS = 30_000;
export const BACKOFF_RESET_AFTER_MS = 60_000;

export class Backoff {
  private attempt = 0;
  constructor(private readonly random: () => number = Math.random) {}

  /** Delay before the next attempt; each call counts one failed attempt. */
  next(): number {
    const base = Math.min(BACKOFF_FIRST_MS * 2 ** this.attempt, BACKOFF_MAX_MS);
    this.attempt = Math.min(this.attempt + 1, 16);
    const jitter = 1 + (this.random() * 2 - 1) * 0.2;
    return Math.round(base * jitter);
  }

  /** A connection closed after `lastedMs`: long-lived ones start over. */
  connectionEnded(lastedMs: number): void {
    if (lastedMs >= BACKOFF_RESET_AFTER_MS) this.attempt = 0;
  }

  reset(): void {
    this.attempt = 0;
  }
}
