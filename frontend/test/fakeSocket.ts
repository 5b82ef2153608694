// The one WebSocket stand-in of the tests: cove-pty's side of the socket.
//
// By hand (client tests): the test opens it, answers each message with
// `reply`, drops it with a close code. Scripted (session tests): with
// `FakeSocket.script` set, a new socket opens by itself and answers every
// request with its type's handler (`{}` when there is none); a handler's
// throw becomes an `error` message. Either way `sent` records what the
// client sent (text parsed, binary frames as bytes).

export type Handler = (msg: any, sock: FakeSocket) => unknown | Promise<unknown>;

export class FakeSocket {
  static all: FakeSocket[] = [];
  static script: Record<string, Handler> | null = null;
  /** The newest socket. */
  static get last(): FakeSocket | undefined {
    return FakeSocket.all[FakeSocket.all.length - 1];
  }
  /** Forget earlier sockets; `script` makes new ones answer by themselves. */
  static reset(script: Record<string, Handler> | null = null): void {
    FakeSocket.all = [];
    FakeSocket.script = script;
  }

  sent: any[] = [];
  binaryType = "blob";
  onopen: (() => void) | null = null;
  onmessage: ((e: { data: unknown }) => void) | null = null;
  onclose: ((e: { code: number; reason: string }) => void) | null = null;
  closedWith: number | null = null;

  constructor(
    readonly url: string,
    readonly protocols: string[],
  ) {
    FakeSocket.all.push(this);
    if (FakeSocket.script) setTimeout(() => this.open(), 0);
  }

  send(data: string | Uint8Array) {
    if (typeof data !== "string") {
      this.sent.push(data);
      return;
    }
    const msg = JSON.parse(data);
    this.sent.push(msg);
    const script = FakeSocket.script;
    if (!script) return;
    const h = script[msg.type];
    Promise.resolve()
      .then(() => (h ? h(msg, this) : {}))
      .then(
        (result) => this.reply({ type: "result", id: msg.id, result }),
        (error) => this.reply({ type: "error", id: msg.id, error }),
      );
  }

  close(code = 1000) {
    this.closedWith = code;
  }

  // ---- the server's side ----

  open() {
    this.onopen?.();
  }
  /** A message from the server: a result, an error or an event. */
  reply(msg: unknown) {
    this.onmessage?.({ data: JSON.stringify(msg) });
  }
  /** A binary frame from the server. */
  frame(buf: ArrayBuffer) {
    this.onmessage?.({ data: buf });
  }
  drop(code = 1006, reason = "") {
    this.onclose?.({ code, reason });
  }
  /** Answers the hello by hand. */
  welcome(instance = "i1", limits: Partial<Record<string, number>> = {}) {
    const hello = this.sent.find((m) => m.type === "hello");
    this.reply({ type: "result", id: hello.id, result: welcome(instance, [], limits) });
  }
  /** The requests of one type sent so far. */
  requests(type: string): any[] {
    return this.sent.filter((m) => m && m.type === type);
  }
}

export const status = (state = "saved", ready = true) => ({
  ready,
  hydration: null,
  sync: { state, dirty: 0, store_healthy: true, fenced: false, last_commit: null, commit_lag_ms: 0 },
});

export const terminalInfo = (id: number, more: Record<string, unknown> = {}) => ({
  id,
  name: "",
  command: ["bash"],
  cwd: "",
  cols: 80,
  rows: 24,
  title: "",
  state: "running",
  exit: null,
  pid: id,
  created_ms: 0,
  end_offset: 0,
  attached: 0,
  ...more,
});

export const welcome = (instance = "i1", terminals: unknown[] = [terminalInfo(1)], limits: Partial<Record<string, number>> = {}) => ({
  protocol: 1,
  instance,
  terminals,
  status: status(),
  limits: { dead_after_ms: 45000, ack_bytes: 65536, max_in_flight: 64, max_message_bytes: 16 << 20, ...limits },
  preview: { default_port: 3000, url: null, port_url: null },
});
