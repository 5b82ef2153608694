// The app preview: the workspace's app host in a frame, its URL, a port
// choice, reload and open-in-new-tab. When nothing listens yet, cove-pty's
// own page says so in the frame and reloads itself until the app is up
// (protocol.md §16), so the pane needs no polling of its own.
import { useState } from "preact/hooks";
import type { IdeSession } from "../ide/session";

export function previewUrl(portUrl: string | null | undefined, defaultUrl: string | null | undefined, port: number | null, defaultPort: number): string | null {
  if (port === null || port === defaultPort) return defaultUrl ?? null;
  return portUrl ? portUrl.replace("{port}", String(port)) : null;
}

export function PreviewPane({ session }: { session: IdeSession }) {
  const w = session.client.welcome;
  const ws = session.workspace;
  const defaultPort = w?.preview.default_port ?? ws?.app_port ?? 3000;
  const [port, setPort] = useState<number | null>(null);
  const [portText, setPortText] = useState("");
  const [nonce, setNonce] = useState(0);
  const url = previewUrl(w?.preview.port_url ?? ws?.urls.preview_port, w?.preview.url ?? ws?.urls.preview, port, defaultPort);
  return (
    <div class="preview" data-testid="preview">
      <div class="pane-title">
        <span>Preview</span>
        <form
          class="port"
          onSubmit={(e) => {
            e.preventDefault();
            const n = Number(portText);
            setPort(portText === "" ? null : Number.isInteger(n) && n > 0 && n < 65536 ? n : port);
          }}
        >
          <input
            aria-label="Port"
            placeholder={String(defaultPort)}
            value={portText}
            size={6}
            onInput={(e) => setPortText((e.target as HTMLInputElement).value.replace(/[^0-9]/g, ""))}
          />
        </form>
        <span class="spacer" />
        <button class="icon" title="Reload" data-testid="preview-reload" onClick={() => setNonce((n) => n + 1)}>⟳</button>
        {url && (
          <a class="icon" href={url} target="_blank" rel="noopener" title="Open in a new tab" data-testid="preview-open">↗</a>
        )}
      </div>
      <div class="url-bar" data-testid="preview-url" title={url ?? ""}>{url ?? "no preview address"}</div>
      {url ? (
        <iframe key={`${url}#${nonce}`} src={url} data-testid="preview-frame" title="App preview" sandbox="allow-scripts allow-forms allow-same-origin allow-popups allow-modals allow-downloads" />
      ) : (
        <p class="muted pad" data-testid="preview-state">This workspace has no preview address.</p>
      )}
      <p class="muted small pad">Your app listens on <code>$PORT</code> ({defaultPort}); other ports: type one above.</p>
    </div>
  );
}
