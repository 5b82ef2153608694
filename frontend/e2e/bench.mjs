// Frontend benchmark (docs/benchmarks.md, "Browser IDE"): numbers, not
// assertions. Runs a real Cove and Debian's Chromium like the e2e tests.
//
//   node e2e/bench.mjs [--runs 5]
//
// 1. First load of the IDE page to an interactive editor: a fresh browser
//    context (empty cache) opens /p/<id> of a running workspace; the clock
//    runs from navigation start to Monaco showing index.js with focus
//    (input goes to it). Also with the workspace stopped (includes its start).
// 2. 10,000 lines of terminal output (`seq 1 10000`): time until the last
//    line is on screen, and how long the page's main thread was blocked
//    (longest long task, and the worst lateness of a 16 ms timer).
import { launchBrowser, startCove, terminalText, waitFor } from "./harness.mjs";

const runs = Number(process.argv[process.argv.indexOf("--runs") + 1]) || 5;
const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};
const fmt = (xs) => `p50 ${Math.round(pct(xs, 50))} ms, max ${Math.round(Math.max(...xs))} ms (n=${xs.length})`;

const cove = await startCove();
const browser = await launchBrowser();
try {
  const p = await cove.api("POST", "/api/projects", { name: "bench", template: "node" });
  const id = p.json.id;
  await cove.api("POST", `/api/projects/${id}/workspace/start`);

  async function loadOnce() {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await ctx.newPage();
    // Open tabs are restored from localStorage: seed index.js as the open file.
    await page.addInitScript((id) => localStorage.setItem(`cove.tabs.${id}`, JSON.stringify({ tabs: ["index.js"], active: "index.js" })), id);
    await page.goto(`${cove.base}/p/${id}`);
    await page.waitForFunction(() => {
      const ed = window.__coveEditor;
      return ed && ed.getModel()?.uri.path === "/index.js" && ed.hasTextFocus();
    }, null, { timeout: 60_000, polling: 10 });
    const ms = await page.evaluate(() => performance.now());
    const marks = await page.evaluate(() => Object.fromEntries(performance.getEntriesByType("mark").map((m) => [m.name, m.startTime])));
    parts.push({ welcome: marks["cove:welcome"], monaco: marks["cove:monaco"] });
    await ctx.close();
    return ms;
  }
  const parts = [];

  await loadOnce(); // warm the OS caches and the workspace once
  const running = [];
  for (let i = 0; i < runs; i++) running.push(await loadOnce());
  const stopped = [];
  for (let i = 0; i < Math.min(runs, 3); i++) {
    await cove.api("POST", `/api/projects/${id}/workspace/stop`);
    stopped.push(await loadOnce());
  }
  console.log(`first load to interactive editor, workspace running: ${fmt(running)}`);
  const warm = parts.slice(1, 1 + runs);
  console.log(`  of which: socket welcome at ${fmt(warm.map((p) => p.welcome))}; Monaco loaded at ${fmt(warm.map((p) => p.monaco))}`);
  console.log(`first load to interactive editor, workspace stopped (includes its start): ${fmt(stopped)}`);

  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await ctx.newPage();
  await page.goto(`${cove.base}/p/${id}`);
  await page.locator('[data-testid="terminal"]:visible .xterm').waitFor({ timeout: 60_000 });
  await waitFor(async () => /[$#] $/m.test(await terminalText(page)), "a prompt");
  const floods = [];
  for (let i = 0; i < runs; i++) {
    await page.evaluate(() => {
      window.__lat = 0;
      window.__long = 0;
      let last = performance.now();
      window.__timer = setInterval(() => {
        const now = performance.now();
        window.__lat = Math.max(window.__lat, now - last - 16);
        last = now;
      }, 16);
      window.__obs = new PerformanceObserver((l) => {
        for (const e of l.getEntries()) window.__long = Math.max(window.__long, e.duration);
      });
      window.__obs.observe({ type: "longtask" });
    });
    const marker = `done-${i}-${Date.now()}`;
    const t0 = Date.now();
    await page.locator('[data-testid="terminal"]:visible .xterm').click();
    await page.keyboard.type(`clear; seq 1 10000; echo ${marker.slice(0, 5)}''${marker.slice(5)}\n`);
    await waitFor(async () => (await terminalText(page)).includes(`\n${marker}`), "the flood's end", 120_000);
    const total = Date.now() - t0;
    const r = await page.evaluate(() => {
      clearInterval(window.__timer);
      window.__obs.disconnect();
      return { lat: window.__lat, long: window.__long };
    });
    floods.push({ total, ...r });
  }
  console.log(`10,000 lines of terminal output: until the last line is shown ${fmt(floods.map((f) => f.total))}`);
  console.log(`  main thread: longest long task ${fmt(floods.map((f) => f.long))}; worst 16 ms timer lateness ${fmt(floods.map((f) => f.lat))}`);
  await ctx.close();
} finally {
  await browser.close();
  await cove.stop();
}
