// Terminals: xterm.js views over the session's terminal streams. Every
// terminal of the workspace gets a view (attached, so its screen stays
// current); only the selected one is visible, and only a visible one
// sends its size, since the pane decides it.
import { useEffect, useRef } from "preact/hooks";
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import { WebLinksAddon } from "@xterm/addon-web-links";
import "@xterm/xterm/css/xterm.css";
import type { IdeSession } from "../ide/session";
import type { TerminalInfo } from "../protocol/types";
import { errorText, toast } from "./common";

export function TerminalPanel({ session }: { session: IdeSession }) {
  const terms = session.terminals.list;
  return (
    <div class="terminal-panel" data-testid="terminals">
      <div class="tabs terminal-tabs">
        {terms.map((t) => (
          <div
            key={t.id}
            class={`tab${t.id === session.terminals.active ? " active" : ""}${t.state === "exited" ? " exited" : ""}`}
            data-testid="term-tab"
            data-terminal-id={t.id}
            role="tab"
            aria-selected={t.id === session.terminals.active}
            tabIndex={0}
            onKeyDown={(e) => {
              if (e.key === "Enter" || e.key === " ") {
                e.preventDefault();
                session.terminals.select(t.id);
              }
            }}
            title={t.title || t.command.join(" ")}
            onClick={() => session.terminals.select(t.id)}
          >
            <span>{t.title || t.name || `Terminal ${t.id}`}</span>
            {t.state === "exited" && <span class="muted small"> (exited{t.exit?.code !== null && t.exit?.code !== undefined ? ` ${t.exit.code}` : t.exit?.signal ? ` ${t.exit.signal}` : ""})</span>}
            <button
              class="icon close"
              title="Close terminal"
              onClick={(e) => {
                e.stopPropagation();
                session.terminals.close(t.id).catch((x) => toast(errorText(x), "error"));
              }}
            >
              ×
            </button>
          </div>
        ))}
        <button class="icon" title="New terminal (Ctrl+Shift+`)" data-testid="new-terminal" onClick={() => session.terminals.create(true).catch((e) => toast(errorText(e), "error"))}>
          +
        </button>
      </div>
      <div class="terminal-views">
        {terms.map((t) => (
          <TerminalView key={t.id} session={session} info={t} visible={t.id === session.terminals.active} />
        ))}
        {terms.length === 0 && <p class="muted pad">No terminal. Press + to open one.</p>}
      </div>
    </div>
  );
}

function TerminalView({ session, info, visible }: { session: IdeSession; info: TerminalInfo; visible: boolean }) {
  const host = useRef<HTMLDivElement>(null);
  const term = useRef<Terminal | null>(null);
  const fit = useRef<FitAddon | null>(null);
  const refitRef = useRef<(() => void) | null>(null);
  const id = info.id;

  useEffect(() => {
    const scrollback = Math.max(1000, session.client.welcome?.limits.scrollback_lines ?? 1000);
    const t = new Terminal({
      cols: info.cols,
      rows: info.rows,
      scrollback,
      fontSize: 13,
      fontFamily: "ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace",
      cursorBlink: true,
      allowProposedApi: true,
      theme: { background: "#11161d", foreground: "#d7dde5", cursor: "#38bdf8", selectionBackground: "#264f78" },
    });
    const f = new FitAddon();
    t.loadAddon(f);
    t.loadAddon(new WebLinksAddon((_e, uri) => window.open(uri, "_blank", "noopener")));
    t.open(host.current!);
    term.current = t;
    fit.current = f;

    // §6.5: a connection that is not the responder must not answer queries.
    const notResponder = () => !session.terminals.isResponder(id);
    const swallow = [
      { final: "c" }, // DA1
      { prefix: ">", final: "c" }, // DA2
      { prefix: "=", final: "c" }, // DA3
      { final: "n" }, // DSR, CPR
      { prefix: "?", final: "n" },
      { intermediates: "$", final: "p" }, // DECRQM
      { prefix: "?", intermediates: "$", final: "p" },
      { prefix: ">", final: "q" }, // XTVERSION
      { final: "t" }, // window reports
    ];
    const disposers = swallow.map((id) => t.parser.registerCsiHandler(id, notResponder));
    for (const osc of [4, 10, 11, 12]) disposers.push(t.parser.registerOscHandler(osc, (data) => notResponder() && data.includes("?")));

    const enc = new TextEncoder();
    t.onData((s) => session.terminals.input(id, enc.encode(s)));
    t.onBinary((s) => session.terminals.input(id, Uint8Array.from(s, (c) => c.charCodeAt(0) & 0xff)));
    // Copy with a selection, paste: Ctrl+Shift+C/V, and Ctrl+C when text is selected.
    t.attachCustomKeyEventHandler((e) => {
      if (e.type !== "keydown") return true;
      const mod = e.ctrlKey || e.metaKey;
      if (mod && (e.key === "c" || e.key === "C") && t.hasSelection()) {
        e.preventDefault();
        void navigator.clipboard?.writeText(t.getSelection());
        t.clearSelection();
        return false;
      }
      if (mod && e.shiftKey && (e.key === "V" || e.key === "v")) {
        // preventDefault: the browser's own paste would insert it a second time.
        e.preventDefault();
        navigator.clipboard?.readText().then((s) => s && t.paste(s), () => {});
        return false;
      }
      // The page's shortcuts (quick open, save) win over the shell's.
      if (mod && !e.shiftKey && (e.key === "p" || e.key === "s")) return false;
      return true;
    });

    const view = {
      sink: {
        // RIS through the write queue: older output still queued must not
        // be drawn over the fresh screen a snapshot expects (§6.5).
        reset: () => t.write("\x1bc"),
        write: (data: Uint8Array, done: () => void) => t.write(data, done),
      },
      resize: (cols: number, rows: number) => {
        if (t.cols !== cols || t.rows !== rows) t.resize(cols, rows);
      },
      // After an attach the server's size wins; the visible view asks for its pane's again (§6.2).
      refit: () => refitRef.current?.(),
    };
    const unregister = session.terminals.adoptView(id, view);
    (window as unknown as { __coveTerms?: Map<number, Terminal> }).__coveTerms ??= new Map();
    (window as unknown as { __coveTerms: Map<number, Terminal> }).__coveTerms.set(id, t);
    return () => {
      unregister();
      disposers.forEach((d) => d.dispose());
      (window as unknown as { __coveTerms: Map<number, Terminal> }).__coveTerms.delete(id);
      t.dispose();
    };
  }, [session, id]);

  // The visible terminal follows its pane's size.
  useEffect(() => {
    if (!visible || !host.current) return;
    const fitNow = () => {
      const f = fit.current;
      const t = term.current;
      if (!f || !t) return;
      const dims = f.proposeDimensions();
      if (!dims || !Number.isFinite(dims.cols) || dims.cols < 2 || dims.rows < 1) return;
      const cols = Math.min(1000, dims.cols);
      const rows = Math.min(500, dims.rows);
      if (t.cols !== cols || t.rows !== rows) t.resize(cols, rows);
      session.terminals.resize(id, cols, rows);
    };
    refitRef.current = fitNow;
    let timer: ReturnType<typeof setTimeout> | null = null;
    const ro = new ResizeObserver(() => {
      if (timer) clearTimeout(timer);
      timer = setTimeout(fitNow, 50);
    });
    ro.observe(host.current);
    fitNow();
    // Focus only when the person asked for this terminal: one created by
    // the page itself (the first, or after a restart) must not take the
    // keyboard from the editor.
    if (session.terminals.takeFocus(id)) term.current?.focus();
    return () => {
      refitRef.current = null;
      ro.disconnect();
      if (timer) clearTimeout(timer);
    };
  }, [visible, session, id]);

  return <div class="terminal-view" ref={host} data-testid="terminal" data-terminal-id={id} style={{ display: visible ? "block" : "none" }} />;
}
