// End to end: a real Cove on loopback, driven through Debian's Chromium.
// One project from the node template goes through the whole path:
// create, open index.js, edit and save (durable across a workspace
// restart), run the app and see it in the preview, a file made in the
// terminal appears in the tree, a reload keeps the terminal's screen, and
// a save over a change made underneath is a conflict, not an overwrite.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { launchBrowser, screenshot, startCove, terminalText, waitFor } from "./harness.mjs";

let cove, browser, page;
let projectId;
const consoleErrors = [];

before(async () => {
  cove = await startCove();
  browser = await launchBrowser();
  page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  page.setDefaultTimeout(30_000);
});

after(async () => {
  await browser?.close();
  if (cove) {
    if (process.exitCode) console.error(`--- controller log ---\n${cove.logText()}`);
    await cove.stop();
  }
});

const ide = () => `${cove.base}/p/${projectId}`;
const syncText = () => page.getByTestId("sync-status").textContent();

async function typeInTerminal(text) {
  await page.locator('[data-testid="terminal"]:visible .xterm').click();
  await page.keyboard.type(text);
}

async function openFile(path) {
  await page.locator(`[data-testid="tree-item"][data-path="${path}"]`).click();
  await page.locator(`[data-testid="tab"][data-path="${path}"]`).waitFor();
  await waitFor(() => page.evaluate((p) => window.__coveEditor?.getModel()?.uri.path === `/${p}`, path), `${path} in the editor`);
}

test("projects page: create a project from the node template", async () => {
  const other = await cove.api("POST", "/api/projects", { name: "Python scratch", template: "python" });
  assert.equal(other.status, 201);
  await page.goto(cove.base);
  await page.getByTestId("project-row").first().waitFor();
  await page.getByTestId("new-project").click();
  await page.getByTestId("project-name").fill("Hello Node");
  await page.getByTestId("template-node").click();
  await screenshot(page, "new-project.png");
  await page.getByTestId("create-project").click();
  await page.waitForURL(/\/p\/hello-node-[a-z0-9]{6}$/);
  projectId = new URL(page.url()).pathname.split("/")[2];
  await page.getByTestId("ide").waitFor({ timeout: 60_000 });
});

test("bad input on the projects page gets a clear message", async () => {
  const p = await browser.newPage();
  await p.goto(cove.base);
  await p.getByTestId("new-project").click();
  await p.getByTestId("project-name").fill("   ");
  await p.getByTestId("create-project").click();
  assert.match(await p.getByTestId("create-error").textContent(), /name/i);
  // A name only the server refuses (a bidirectional control): its message is shown.
  await p.getByTestId("project-name").fill("evil\u202Ename");
  await p.getByTestId("create-project").click();
  await waitFor(async () => /^Name: /.test(await p.getByTestId("create-error").textContent()), "the API's invalid_name message");
  await p.goto(`${cove.base}/p/no-such-project`);
  assert.match(await p.getByTestId("ide-error").textContent(), /no such project/i);
  await p.close();
});

test("open index.js, edit, save: saved to cloud, and still there after a workspace restart", async () => {
  await openFile("index.js");
  await page.locator(".monaco-editor .view-lines").click();
  await page.keyboard.press("Control+End");
  await page.keyboard.type("\n// edited in the browser\n");
  await waitFor(async () => (await page.locator('[data-testid="tab"][data-path="index.js"]').getAttribute("data-dirty")) === "true", "dirty marker");
  await page.keyboard.press("Control+S");
  await waitFor(async () => (await page.locator('[data-testid="tab"][data-path="index.js"]').getAttribute("data-dirty")) === "false", "clean after save");
  await waitFor(async () => (await syncText()) === "Saved to cloud", '"Saved to cloud"');

  // The store has it: stop the workspace (final flush), read the file from history.
  const stop = await cove.api("POST", `/api/projects/${projectId}/workspace/stop`);
  assert.equal(stop.json.state, "stopped");
  const hist = await cove.api("GET", `/api/projects/${projectId}/history?path=index.js&limit=1`);
  const head = hist.json.commits[0];
  const file = await cove.api("GET", `/api/projects/${projectId}/history/${head.epoch}.${head.seq}/file?path=index.js`);
  assert.match(file.json.content, /edited in the browser/);

  // The page noticed (4004) and offers to start again.
  await page.getByTestId("reconnect-banner").waitFor();
  await page.goto(ide());
  await page.getByTestId("ide").waitFor({ timeout: 60_000 });
  await openFile("index.js");
  assert.match(await page.evaluate(() => window.__coveEditor.getModel().getValue()), /edited in the browser/);
});

test("run the app in the terminal and see it in the preview", async () => {
  await page.locator('[data-testid="terminal"]:visible .xterm').waitFor();
  await typeInTerminal("node index.js\n");
  await waitFor(async () => (await terminalText(page)).includes("listening on"), "the app's output in the terminal");
  const frame = page.frameLocator('[data-testid="preview-frame"]');
  await waitFor(async () => ((await frame.locator("body").textContent({ timeout: 2000 })) ?? "").includes("Hello from Node.js"), "the app in the preview", 30_000);
  await screenshot(page, "ide.png");
});

test("a file made in the terminal appears in the tree", async () => {
  await page.getByTestId("new-terminal").click();
  await waitFor(async () => (await page.locator('[data-testid="term-tab"]').count()) === 2, "a second terminal");
  await waitFor(async () => (await terminalText(page)).includes("$") || (await terminalText(page)).includes("#"), "a prompt");
  await typeInTerminal("echo made > made-in-terminal.txt\n");
  await page.locator('[data-testid="tree-item"][data-path="made-in-terminal.txt"]').waitFor({ timeout: 15_000 });
});

test("a page reload brings the terminals back with their screens", async () => {
  const before = await page.evaluate(() => [...window.__coveTerms.keys()]);
  await page.reload();
  await page.getByTestId("ide").waitFor({ timeout: 60_000 });
  await waitFor(async () => (await page.locator('[data-testid="term-tab"]').count()) === before.length, "both terminals listed");
  // The first terminal still shows the app's output (restored by the snapshot).
  await waitFor(async () => (await terminalText(page, before[0])).includes("listening on"), "the first terminal's screen after reload");
  await waitFor(async () => (await terminalText(page, before[1])).includes("echo made"), "the second terminal's screen after reload").catch(async (e) => {
    throw new Error(`${e.message}\n--- terminal ${before[1]} ---\n${await terminalText(page, before[1])}\n--- terminal ${before[0]} ---\n${await terminalText(page, before[0])}`);
  });
});

test("a network drop: the page reconnects and the terminals come back with their screens", async () => {
  await page.locator('[data-testid="term-tab"]').nth(1).click();
  await typeInTerminal("echo before-''drop\n");
  await waitFor(async () => (await terminalText(page)).includes("\nbefore-drop"), "output before the drop");
  // Cut every TCP connection from the browser to the controller (the IDE socket included).
  execFileSync("ss", ["-K", `dport = :${cove.port}`]);
  await page.getByTestId("reconnect-banner").waitFor({ timeout: 10_000 });
  await waitFor(async () => (await page.getByTestId("conn-status").textContent()) === "Connected", "the reconnect");
  assert.equal(await page.getByTestId("reconnect-banner").count(), 0);
  assert.match(await terminalText(page), /\nbefore-drop/);
  await typeInTerminal("echo after-''drop\n");
  await waitFor(async () => (await terminalText(page)).includes("\nafter-drop"), "input and output after the reconnect");
});

test("a save over a change made underneath is a conflict, and overwrite resolves it", async () => {
  await openFile("index.js");
  await page.locator(".monaco-editor .view-lines").click();
  await page.keyboard.press("Control+End");
  await page.keyboard.type("// mine\n");
  // Change the file from the terminal while the buffer is dirty.
  await page.locator('[data-testid="term-tab"]').nth(1).click();
  await typeInTerminal("echo '// theirs' >> index.js\n");
  await page.getByTestId("changed-on-disk").waitFor({ timeout: 15_000 });
  await page.evaluate(() => window.__coveEditor.focus());
  await page.keyboard.press("Control+S");
  await page.getByTestId("conflict").waitFor();
  await page.getByTestId("conflict-compare").click();
  await page.getByTestId("conflict-diff").waitFor();
  await page.waitForTimeout(300); // the diff editor lays out
  await screenshot(page, "conflict.png");
  await page.getByTestId("conflict-overwrite").click();
  await waitFor(async () => (await page.getByTestId("conflict").count()) === 0, "the conflict dialog to close");
  await waitFor(async () => (await syncText()) === "Saved to cloud", '"Saved to cloud" after overwrite');
  const r = await cove.api("GET", `/api/projects/${projectId}/history?path=index.js&limit=1`);
  const head = r.json.commits[0];
  const file = await cove.api("GET", `/api/projects/${projectId}/history/${head.epoch}.${head.seq}/file?path=index.js`);
  assert.match(file.json.content, /\/\/ mine/);
  assert.doesNotMatch(file.json.content, /theirs/);
});

test("the projects page shows the project running, opened just now", async () => {
  await page.goto(cove.base);
  const row = page.locator(`[data-testid="project-row"][data-project-id="${projectId}"]`);
  await row.waitFor();
  assert.equal(await row.getByTestId("project-state").textContent(), "Running");
  assert.match(await row.textContent(), /node.*just now/);
  await screenshot(page, "projects.png");
});

test("no uncaught errors in the page", () => {
  assert.deepEqual(consoleErrors, []);
});
