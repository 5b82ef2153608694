// The IDE's one WebSocket to a workspace's cove-pty (docs/protocol.md):
// hello/welcome, requests with ids, events, binary frames, heartbeat
// watchdog, and reconnection with backoff and a fresh token (§8).
//
// Connections are disposable; the client is not. Requests made while the
// socket is down wait for the next welcome. Requests that were in flight
// when it dropped are sent again if they are safe to repeat (reads, and
// fs.write, which is idempotent by §9.4), and fail with `disconnected`
// otherwise, so the caller can check with fs.stat.

import { Backoff } from "./backoff";
import { decodeFrame, type Frame } from "./frames";
import { ProtocolError, type EventType, type RequestFields, type RequestResult, type RequestType, type ServerEvent, type Status, type Welcome } from "./types";

export type { ServerEvent } from "./types";

export const CLIENT_NAME = "cove-web/0.1.0";

/** Where to connect, fetched before every attempt (tokens live 5 minutes). */
export interface Ticket {
  url: string;
  token: string;
}

/** Thrown by a ticket source when the workspace is not running (api.md 409). */
export class WorkspaceNotRunning extends Error {
  constructor(readonly state: string) {
    super(`the workspace is ${state}`);
  }
}

export type ConnState =
  | "connecting" // first attempt
  | "open" // welcome received
  | "reconnecting" // lost; retrying with backoff
  | "stopped" // the workspace stopped (4004, or the controller says so): a person decides
  | "superseded" // 4005: a newer workspace owns the project
  | "outdated" // 4003: this page speaks an old protocol; reload
  | "closed"; // close() was called

const SAFE_TO_REPEAT = new Set(["term.list", "fs.stat", "fs.list", "fs.read", "fs.write"]);

interface Pending {
  id: number;
  onSent?: (id: number) => void;
  msg: Record<string, unknown>;
  resolve: (v: any) => void;
  reject: (e: Error) => void;
}

export interface ClientOptions {
  ticket: () => Promise<Ticket>;
  WebSocketImpl?: typeof WebSocket;
  random?: () => number;
  now?: () => number;
}

type Listener<T> = (v: T) => void;

/** The events listeners get (§4.3); others, from a newer server, are ignored. */
const EVENT_TYPES: Record<EventType, true> = {
  heartbeat: true,
  status: true,
  "term.created": true,
  "term.resized": true,
  "term.responder": true,
  "term.exited": true,
  "term.closed": true,
  "fs.changes": true,
  "fs.durable": true,
  error: true,
};

export class CoveClient {
  state: ConnState = "connecting";
  welcome: Welcome | null = null;
  status: Status | null = null;
  /** The welcome's `instance` of the previous connection (§8 step 2). */
  private lastInstance: string | null = null;
  private ws: WebSocket | null = null;
  private nextId = 1;
  private inFlight = new Map<number, Pending>();
  private waiting: Pending[] = [];
  private helloId = -1;
  private openedAt = 0;
  private lastRx = 0;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private attempt = 0;
  /** Requests beyond max_in_flight wait here, in order (§13). */
  private overflow: Pending[] = [];
  private watchdog: ReturnType<typeof setInterval> | null = null;
  private readonly backoff: Backoff;
  private readonly now: () => number;
  private readonly WS: typeof WebSocket;
  /** Time of the next attempt while reconnecting (for the banner). */
  retryAt = 0;
  lastError = "";

  private stateListeners = new Set<Listener<ConnState>>();
  private welcomeListeners = new Set<Listener<{ welcome: Welcome; restarted: boolean }>>();
  private eventListeners = new Set<Listener<ServerEvent>>();
  private frameListeners = new Set<Listener<Frame>>();

  constructor(private readonly opts: ClientOptions) {
    this.backoff = new Backoff(opts.random);
    this.now = opts.now ?? Date.now;
    this.WS = opts.WebSocketImpl ?? WebSocket;
  }

  onState(f: Listener<ConnState>) {
    this.stateListeners.add(f);
    return () => this.stateListeners.delete(f);
  }
  /** Each welcome; `restarted` when the server instance changed (terminal ids are void). */
  onWelcome(f: Listener<{ welcome: Welcome; restarted: boolean }>) {
    this.welcomeListeners.add(f);
    return () => this.welcomeListeners.delete(f);
  }
  onEvent(f: Listener<ServerEvent>) {
    this.eventListeners.add(f);
    return () => this.eventListeners.delete(f);
  }
  onFrame(f: Listener<Frame>) {
    this.frameListeners.add(f);
    return () => this.frameListeners.delete(f);
  }

  start(): void {
    if (this.ws || this.retryTimer) return;
    void this.connect();
  }

  /** Try now (the banner's "Retry now", or after the person restarted the workspace). */
  retryNow(): void {
    if (this.state === "open" || this.state === "closed") return;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.backoff.reset();
    void this.connect();
  }

  close(): void {
    this.setState("closed");
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.stopWatchdog();
    const ws = this.ws;
    this.ws = null;
    ws?.close(1000, "closed by the page");
    this.failAll("closed", "the connection was closed");
  }

  /**
   * Sends a request; resolves with its `result`, rejects with a ProtocolError.
   * Fields and result are those of `Requests` (types.ts). `onSent` sees the
   * request's id each time it goes out (a resend gets a new id).
   */
  request<K extends Exclude<RequestType, "hello">>(type: K, fields: RequestFields<K>, onSent?: (id: number) => void): Promise<RequestResult<K>> {
    if (this.state === "closed") return Promise.reject(new ProtocolError("closed", "the connection was closed"));
    return new Promise<RequestResult<K>>((resolve, reject) => {
      const p: Pending = { id: 0, msg: { type, ...fields }, resolve, reject, onSent };
      if (this.state === "open" && this.ws) this.send(p);
      else this.waiting.push(p);
    });
  }

  /** Sends a binary frame if the socket is open; frames are never queued (they are stream-relative). */
  sendFrame(frame: Uint8Array): boolean {
    if (this.state !== "open" || !this.ws) return false;
    this.ws.send(frame);
    return true;
  }

  private send(p: Pending) {
    const limit = this.welcome?.limits.max_in_flight ?? 64;
    if (this.inFlight.size >= limit) {
      this.overflow.push(p);
      return;
    }
    p.id = this.nextId++;
    this.inFlight.set(p.id, p);
    this.ws!.send(JSON.stringify({ ...p.msg, id: p.id }));
    p.onSent?.(p.id);
  }

  private setState(s: ConnState) {
    if (this.state === s) return;
    this.state = s;
    for (const f of this.stateListeners) f(s);
  }

  private async connect() {
    this.retryTimer = null;
    if (this.state === "closed") return;
    if (this.state !== "connecting") this.setState("reconnecting");
    // One attempt at a time: a newer attempt ("Retry now") voids this one,
    // and a socket still handshaking from an older one is closed.
    const attempt = ++this.attempt;
    const old = this.ws;
    this.ws = null;
    old?.close(1000, "superseded by a new attempt");
    let ticket: Ticket;
    try {
      ticket = await this.opts.ticket();
      if (attempt !== this.attempt) return;
    } catch (e) {
      if (attempt !== this.attempt) return;
      if (e instanceof WorkspaceNotRunning) {
        this.lastError = e.message;
        this.setState("stopped");
        this.failAll("disconnected", e.message);
        return;
      }
      this.lastError = e instanceof Error ? e.message : String(e);
      this.scheduleRetry();
      return;
    }
    if ((this.state as ConnState) === "closed") return;
    let ws: WebSocket;
    try {
      ws = new this.WS(ticket.url, ["cove.v1", `cove.token.${ticket.token}`]);
    } catch (e) {
      this.lastError = e instanceof Error ? e.message : String(e);
      this.scheduleRetry();
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.openedAt = this.lastRx = this.now();
      this.helloId = this.nextId++;
      const hello: RequestFields<"hello"> = { protocol: 1, client: CLIENT_NAME, features: [] };
      ws.send(JSON.stringify({ type: "hello", id: this.helloId, ...hello }));
    };
    ws.onmessage = (ev: MessageEvent) => {
      if (this.ws !== ws) return;
      this.lastRx = this.now();
      if (typeof ev.data === "string") this.onText(ev.data);
      else if (ev.data instanceof ArrayBuffer) {
        let frame: Frame;
        try {
          frame = decodeFrame(ev.data);
        } catch {
          return;
        }
        for (const f of this.frameListeners) f(frame);
      }
    };
    ws.onclose = (ev: CloseEvent) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.onClosed(ev.code, ev.reason);
    };
  }

  private onText(text: string) {
    let msg: any;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    if (!msg || typeof msg.type !== "string") return;
    if (msg.type === "result" || (msg.type === "error" && typeof msg.id === "number")) {
      if (msg.id === this.helloId) {
        this.onHello(msg);
        return;
      }
      const p = this.inFlight.get(msg.id);
      if (!p) return;
      this.inFlight.delete(msg.id);
      const next = this.overflow.shift();
      if (next) this.send(next);
      if (msg.type === "result") p.resolve(msg.result ?? {});
      else p.reject(new ProtocolError(msg.error?.code ?? "internal", msg.error?.message ?? "error", msg.error?.details ?? {}));
      return;
    }
    if (msg.type === "status" && msg.status) this.status = msg.status;
    if (!Object.hasOwn(EVENT_TYPES, msg.type)) return;
    const event: ServerEvent = msg;
    for (const f of this.eventListeners) f(event);
  }

  private onHello(msg: any) {
    if (msg.type !== "result") {
      this.lastError = msg.error?.message ?? "hello refused";
      this.ws?.close(1000);
      return;
    }
    const welcome = msg.result as Welcome;
    const restarted = this.lastInstance !== null && this.lastInstance !== welcome.instance;
    this.lastInstance = welcome.instance;
    this.welcome = welcome;
    this.status = welcome.status;
    this.lastError = "";
    this.setState("open");
    this.startWatchdog(welcome.limits.dead_after_ms);
    for (const f of this.welcomeListeners) f({ welcome, restarted });
    // Requests made while the socket was down go out after the listeners
    // have re-attached terminals and re-subscribed.
    const queued = this.waiting;
    this.waiting = [];
    for (const p of queued) this.send(p);
  }

  private onClosed(code: number, reason: string) {
    this.stopWatchdog();
    const lasted = this.openedAt ? this.now() - this.openedAt : 0;
    this.openedAt = 0;
    this.backoff.connectionEnded(lasted);
    // In-flight requests: repeat the safe ones on the next connection, except
    // after 1009, when one of them was too big: resending it would only
    // close the next connection too (§15).
    const unsent = this.overflow;
    this.overflow = [];
    const waiting: Pending[] = [];
    for (const p of this.inFlight.values()) {
      if (code !== 1009 && SAFE_TO_REPEAT.has(p.msg.type as string)) waiting.push(p);
      else p.reject(new ProtocolError("disconnected", code === 1009 ? `the server refused a message as too big (${p.msg.type})` : `the connection dropped before ${p.msg.type} was answered`));
    }
    this.waiting = [...waiting, ...unsent, ...this.waiting];
    this.inFlight.clear();
    this.lastError = reason || `connection closed (${code})`;
    if (this.state === "closed") return;
    switch (code) {
      case 4003:
        this.setState("outdated");
        this.failAll("disconnected", "this page is out of date; reload it");
        return;
      case 4004:
        this.setState("stopped");
        this.failAll("disconnected", "the workspace stopped");
        return;
      case 4005:
        this.setState("superseded");
        this.failAll("disconnected", "a newer workspace owns this project");
        return;
      case 4001: // heartbeat timeout: reconnect at once (§15)
        this.setState("reconnecting");
        this.backoff.reset();
        void this.connect();
        return;
    }
    this.scheduleRetry();
  }

  private scheduleRetry() {
    if (this.state === "closed") return;
    this.setState("reconnecting");
    const delay = this.backoff.next();
    this.retryAt = this.now() + delay;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => void this.connect(), delay);
    // Listeners show the countdown; tell them the time changed.
    for (const f of this.stateListeners) f(this.state);
  }

  private failAll(code: string, message: string) {
    for (const p of [...this.inFlight.values(), ...this.overflow, ...this.waiting]) p.reject(new ProtocolError(code, message));
    this.inFlight.clear();
    this.overflow = [];
    this.waiting = [];
  }

  // §12: no message of any kind for dead_after_ms means the connection is dead.
  private startWatchdog(deadAfterMs: number) {
    this.stopWatchdog();
    this.watchdog = setInterval(() => {
      if (this.state === "open" && this.now() - this.lastRx > deadAfterMs) {
        const ws = this.ws;
        this.ws = null;
        ws?.close(1000, "heartbeat timeout");
        this.onClosed(4001, "no message from the server");
      }
    }, Math.min(5000, deadAfterMs / 3));
  }

  private stopWatchdog() {
    if (this.watchdog) clearInterval(this.watchdog);
    this.watchdog = null;
  }
}
