// Runs a real Cove on loopback (cove-controller with its sidecars and
// cove-pty, a directory store in a temp dir) and Debian's Chromium through
// playwright-core. Used by the end-to-end tests and the frontend benchmark.
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const FRONTEND = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const REPO = resolve(FRONTEND, "..");
const BIN_DIR = process.env.COVE_BIN_DIR ?? join(REPO, "target", "release");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

async function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
    s.on("error", rej);
  });
}

export async function startCove() {
  for (const b of ["cove-controller", "cove-sync", "cove-pty"]) {
    if (!existsSync(join(BIN_DIR, b))) throw new Error(`${join(BIN_DIR, b)} is missing: run cargo build --release first`);
  }
  const uiDir = process.env.COVE_UI_DIR ?? join(FRONTEND, "dist");
  if (!existsSync(join(uiDir, "index.html"))) throw new Error(`${uiDir} is missing: run npm run build first`);
  const dir = mkdtempSync(join(tmpdir(), "cove-e2e-"));
  const port = await freePort();
  const log = join(dir, "controller.log");
  const home = join(dir, "home");
  mkdirSync(home);
  const fd = openSync(log, "w");
  const proc = spawn(
    join(BIN_DIR, "cove-controller"),
    ["--port", String(port), "--data-dir", join(dir, "data"), "--templates", join(REPO, "templates"), "--ui-dir", uiDir, "--bin-dir", BIN_DIR, "--idle-timeout-secs", "0"],
    // A HOME of its own: the terminals' login shells must not run this
    // machine's dotfiles (pyenv's rehash lock, left behind when a shell is
    // killed mid-start, hangs every later `bash -l` for a minute).
    { cwd: dir, stdio: ["ignore", fd, fd], env: { ...process.env, HOME: home, RUST_LOG: process.env.RUST_LOG ?? "cove_controller=info" } },
  );
  const base = `http://localhost:${port}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`cove-controller exited: ${readFileSync(log, "utf8")}`);
    try {
      if ((await fetch(`${base}/healthz`)).ok) break;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`cove-controller did not come up: ${readFileSync(log, "utf8")}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    base,
    port,
    dir,
    log,
    api: async (method, path, body) => {
      const r = await fetch(base + path, { method, headers: body ? { "Content-Type": "application/json" } : {}, body: body ? JSON.stringify(body) : undefined });
      const text = await r.text();
      return { status: r.status, json: text ? JSON.parse(text) : null };
    },
    async stop() {
      proc.kill("SIGTERM");
      await new Promise((r) => (proc.exitCode !== null ? r() : proc.once("exit", r)));
      rmSync(dir, { recursive: true, force: true });
    },
    logText: () => readFileSync(log, "utf8"),
  };
}

/** A screenshot into $COVE_SCREENSHOTS (default target/e2e-screenshots); the README's come from here. */
export async function screenshot(page, name) {
  const dir = process.env.COVE_SCREENSHOTS ?? join(REPO, "target", "e2e-screenshots");
  mkdirSync(dir, { recursive: true });
  await page.screenshot({ path: join(dir, name) });
}

export async function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

/** The text of a terminal's buffer (the xterm.js instance the page exposes for tests). */
export async function terminalText(page, id) {
  return page.evaluate((id) => {
    const terms = window.__coveTerms;
    if (!terms) return "";
    const t = id === undefined ? [...terms.values()].at(-1) : terms.get(id);
    if (!t) return "";
    const b = t.buffer.active;
    const lines = [];
    // Soft-wrapped rows are one line of output.
    for (let i = 0; i < b.length; i++) {
      const line = b.getLine(i);
      const text = line?.translateToString(true) ?? "";
      if (line?.isWrapped && lines.length) lines[lines.length - 1] += text;
      else lines.push(text);
    }
    return lines.join("\n");
  }, id);
}

export async function waitFor(fn, what, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
