// Small shared pieces: toasts, modal dialogs, context menus.
import type { ComponentChildren } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";

type Toast = { id: number; text: string; tone: "info" | "error" };
let toastId = 0;
const toastListeners = new Set<(t: Toast[]) => void>();
let toasts: Toast[] = [];

export function toast(text: string, tone: "info" | "error" = "info"): void {
  const t = { id: ++toastId, text, tone };
  toasts = [...toasts, t];
  toastListeners.forEach((f) => f(toasts));
  setTimeout(() => {
    toasts = toasts.filter((x) => x.id !== t.id);
    toastListeners.forEach((f) => f(toasts));
  }, tone === "error" ? 8000 : 4000);
}

import { errorText } from "../api";
export { errorText };

export function Toasts() {
  const [list, setList] = useState<Toast[]>(toasts);
  useEffect(() => {
    toastListeners.add(setList);
    return () => void toastListeners.delete(setList);
  }, []);
  return (
    <div class="toasts" role="status" aria-live="polite">
      {list.map((t) => (
        <div key={t.id} class={`toast ${t.tone}`} data-testid="toast">
          {t.text}
        </div>
      ))}
    </div>
  );
}

// Open modals, innermost last: Escape closes only the innermost one.
const modalStack: object[] = [];

export function Modal(props: { title: string; onClose: () => void; children: ComponentChildren; testid?: string; wide?: boolean }) {
  const ref = useRef<HTMLDivElement>(null);
  const onClose = useRef(props.onClose);
  onClose.current = props.onClose;
  useEffect(() => {
    const me = {};
    modalStack.push(me);
    const returnFocus = document.activeElement as HTMLElement | null;
    const key = (e: KeyboardEvent) => {
      if (e.key === "Escape" && modalStack[modalStack.length - 1] === me) {
        e.stopPropagation();
        onClose.current();
      }
    };
    addEventListener("keydown", key, true);
    ref.current?.querySelector<HTMLElement>("[autofocus], input, button.primary")?.focus();
    return () => {
      modalStack.splice(modalStack.indexOf(me), 1);
      removeEventListener("keydown", key, true);
      returnFocus?.focus?.();
    };
  }, []);
  return (
    <div class="modal-back" onMouseDown={(e) => e.target === e.currentTarget && props.onClose()}>
      <div class={`modal${props.wide ? " wide" : ""}`} role="dialog" aria-modal="true" aria-label={props.title} data-testid={props.testid} ref={ref}>
        <h2>{props.title}</h2>
        {props.children}
      </div>
    </div>
  );
}

/** A one-field dialog (new file, rename): validates before it closes. */
export function PromptDialog(props: {
  title: string;
  label: string;
  initial?: string;
  action: string;
  validate?: (v: string) => string | null;
  onSubmit: (v: string) => Promise<void> | void;
  onClose: () => void;
}) {
  const [value, setValue] = useState(props.initial ?? "");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    const err = props.validate?.(value) ?? null;
    if (err) return setError(err);
    setBusy(true);
    try {
      await props.onSubmit(value.trim());
      props.onClose();
    } catch (x) {
      setError(errorText(x));
    } finally {
      setBusy(false);
    }
  };
  return (
    <Modal title={props.title} onClose={props.onClose} testid="prompt">
      <form onSubmit={submit}>
        <label>
          {props.label}
          <input
            data-testid="prompt-input"
            value={value}
            autofocus
            onInput={(e) => {
              setValue((e.target as HTMLInputElement).value);
              setError(null);
            }}
            onFocus={(e) => {
              // Select the name without its extension, as editors do.
              const el = e.target as HTMLInputElement;
              const dot = el.value.lastIndexOf(".");
              const slash = el.value.lastIndexOf("/");
              el.setSelectionRange(slash + 1, dot > slash + 1 ? dot : el.value.length);
            }}
          />
        </label>
        {error && <p class="form-error" data-testid="prompt-error">{error}</p>}
        <div class="buttons">
          <button type="button" onClick={props.onClose}>Cancel</button>
          <button type="submit" class="primary" disabled={busy} data-testid="prompt-submit">{props.action}</button>
        </div>
      </form>
    </Modal>
  );
}

export function ConfirmDialog(props: { title: string; message: ComponentChildren; action: string; danger?: boolean; onConfirm: () => Promise<void> | void; onClose: () => void }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  return (
    <Modal title={props.title} onClose={props.onClose} testid="confirm">
      <div class="confirm-message">{props.message}</div>
      {error && <p class="form-error">{error}</p>}
      <div class="buttons">
        <button type="button" onClick={props.onClose}>Cancel</button>
        <button
          type="button"
          class={props.danger ? "danger primary" : "primary"}
          disabled={busy}
          data-testid="confirm-ok"
          onClick={async () => {
            setBusy(true);
            try {
              await props.onConfirm();
              props.onClose();
            } catch (x) {
              setError(errorText(x));
            } finally {
              setBusy(false);
            }
          }}
        >
          {props.action}
        </button>
      </div>
    </Modal>
  );
}

export interface MenuItem {
  label: string;
  action: () => void;
  danger?: boolean;
  shortcut?: string;
}

export function ContextMenu(props: { x: number; y: number; items: MenuItem[]; onClose: () => void }) {
  useEffect(() => {
    const close = () => props.onClose();
    const key = (e: KeyboardEvent) => e.key === "Escape" && props.onClose();
    setTimeout(() => addEventListener("mousedown", close), 0);
    addEventListener("keydown", key);
    addEventListener("blur", close);
    return () => {
      removeEventListener("mousedown", close);
      removeEventListener("keydown", key);
      removeEventListener("blur", close);
    };
  }, []);
  const x = Math.min(props.x, innerWidth - 200);
  const y = Math.min(props.y, innerHeight - 30 * props.items.length - 10);
  return (
    <ul class="context-menu" style={{ left: `${x}px`, top: `${y}px` }} role="menu" data-testid="context-menu" onMouseDown={(e) => e.stopPropagation()}>
      {props.items.map((it) => (
        <li
          key={it.label}
          role="menuitem"
          class={it.danger ? "danger" : ""}
          data-testid={`menu-${it.label.toLowerCase().replace(/[^a-z]+/g, "-").replace(/-$/, "")}`}
          onClick={() => {
            props.onClose();
            it.action();
          }}
        >
          <span>{it.label}</span>
          {it.shortcut && <kbd>{it.shortcut}</kbd>}
        </li>
      ))}
    </ul>
  );
}

export function timeAgo(ms: number | null, now = Date.now()): string {
  if (ms === null) return "never";
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 45) return "just now";
  const m = Math.round(s / 60);
  if (m < 60) return `${m} min ago`;
  const h = Math.round(m / 60);
  if (h < 24) return `${h} h ago`;
  const d = Math.round(h / 24);
  if (d < 30) return `${d} d ago`;
  return new Date(ms).toLocaleDateString();
}
