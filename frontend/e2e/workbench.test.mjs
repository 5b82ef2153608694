// End to end, the rest of the workbench: tree operations (new file and
// folder, rename, drag to move, delete), files changing on disk, binary and
// too-large files, quick open, history with restore, and a dropped
// connection that comes back without losing an unsaved buffer.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { launchBrowser, screenshot, startCove, terminalText, waitFor } from "./harness.mjs";


let cove, browser, page, id;
const pageErrors = [];

before(async () => {
  cove = await startCove();
  browser = await launchBrowser();
  page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  page.setDefaultTimeout(30_000);
  const p = await cove.api("POST", "/api/projects", { name: "Workbench", template: "node" });
  id = p.json.id;
  await page.goto(`${cove.base}/p/${id}`);
  await page.getByTestId("ide").waitFor({ timeout: 60_000 });
  await page.locator('[data-testid="terminal"]:visible .xterm').waitFor();
  await waitFor(async () => /[$#] $/m.test(await terminalText(page)), "a shell prompt");
});

after(async () => {
  await browser?.close();
  if (cove) {
    if (process.exitCode) console.error(`--- controller log ---\n${cove.logText()}`);
    await cove.stop();
  }
});

const item = (path) => page.locator(`[data-testid="tree-item"][data-path="${path}"]`);
const model = () => page.evaluate(() => ({ path: window.__coveEditor?.getModel()?.uri.path, text: window.__coveEditor?.getModel()?.getValue() }));

async function shell(cmd) {
  await page.locator('[data-testid="terminal"]:visible .xterm').click();
  const marker = `ok-${Math.random().toString(36).slice(2, 8)}`;
  // The marker is printed split, so the echoed command line never matches it.
  await page.keyboard.type(`${cmd}; echo ${marker.slice(0, 3)}''${marker.slice(3)}\n`);
  await waitFor(async () => (await terminalText(page)).includes(`\n${marker}`), `"${cmd}" to finish`);
}

async function prompt(value) {
  await page.getByTestId("prompt-input").fill(value);
  await page.getByTestId("prompt-submit").click();
  await waitFor(async () => (await page.getByTestId("prompt").count()) === 0, "the dialog to close");
}

test("tree: new folder and file, rename, drag to move, delete with confirmation", async () => {
  await page.getByTestId("new-folder").click();
  await prompt("src");
  await item("src").waitFor();
  await item("src").click({ button: "right" });
  await page.getByTestId("menu-new-file").click();
  await prompt("util.js");
  await item("src/util.js").waitFor();
  await page.locator('[data-testid="tab"][data-path="src/util.js"]').waitFor();

  // Renaming an open file: its tab follows, and it is not taken for deleted.
  await item("src/util.js").click({ button: "right" });
  await page.getByTestId("menu-rename").click();
  await prompt("src/helpers.js");
  await page.locator('[data-testid="tab"][data-path="src/helpers.js"]').waitFor();
  await item("src/helpers.js").waitFor();
  await new Promise((r) => setTimeout(r, 500)); // let any change event for the old path land
  assert.equal(await page.locator('[data-testid="tab"][data-path="src/helpers.js"] [data-testid="tab-marker"]').count(), 0);

  await item("README.md").click({ button: "right" });
  await page.getByTestId("menu-rename").click();
  await prompt("NOTES.md");
  await item("NOTES.md").waitFor();
  await waitFor(async () => (await item("README.md").count()) === 0, "README.md gone from the tree");

  await item("NOTES.md").dragTo(item("src"));
  await item("src/NOTES.md").waitFor();
  await waitFor(async () => (await item("NOTES.md").count()) === 0, "NOTES.md moved");

  await item("src/NOTES.md").click({ button: "right" });
  await page.getByTestId("menu-delete").click();
  await page.getByTestId("confirm-ok").click();
  await waitFor(async () => (await item("src/NOTES.md").count()) === 0, "the deleted file gone from the tree");
  // Bad names get a message, not a request.
  await page.getByTestId("new-file").click();
  await page.getByTestId("prompt-input").fill("../escape.js");
  await page.getByTestId("prompt-submit").click();
  assert.match(await page.getByTestId("prompt-error").textContent(), /not allowed/);
  await page.keyboard.press("Escape");
});

test("a clean open file follows the disk; binary and too-large files get a message", async () => {
  await item("package.json").click();
  await waitFor(async () => (await model()).path === "/package.json", "package.json in the editor");
  await shell(`printf '{"changed": true}\\n' > package.json`);
  await waitFor(async () => (await model()).text.includes('"changed"'), "the editor to reload package.json");
  assert.equal(await page.locator('[data-testid="tab"][data-path="package.json"]').getAttribute("data-dirty"), "false");

  await shell("head -c 3000 /dev/urandom > blob.bin && head -c 11000000 /dev/zero | tr '\\\\0' a > big.txt");
  await item("blob.bin").click();
  assert.match(await page.getByTestId("editor-message").textContent(), /binary/);
  await item("big.txt").click();
  await waitFor(async () => /up to [\d,]+ bytes/.test(await page.getByTestId("editor-message").textContent()), "the too-large message");
});

test("quick open finds a file with Ctrl+P", async () => {
  await page.keyboard.press("Control+P");
  await page.getByTestId("quick-open-input").fill("helpjs");
  await page.getByTestId("quick-open-item").first().waitFor();
  await page.keyboard.press("Enter");
  await waitFor(async () => (await model()).path === "/src/helpers.js", "src/helpers.js opened");
});

test("history: a past version of a file, restored into the open editor", async () => {
  await item("index.js").click();
  await waitFor(async () => (await model()).path === "/index.js", "index.js in the editor");
  await page.evaluate(() => window.__coveEditor.focus());
  await page.keyboard.press("Control+End");
  await page.keyboard.type("// second version\n");
  await page.keyboard.press("Control+S");
  await waitFor(async () => (await page.getByTestId("sync-status").textContent()) === "Saved to cloud", "saved");
  await item("index.js").click({ button: "right" });
  await page.getByTestId("menu-history").click();
  await waitFor(async () => (await page.getByTestId("history-commit").count()) >= 2, "two commits of index.js");
  await page.getByTestId("history-commit").last().click(); // the project as created
  await waitFor(async () => (await page.getByTestId("history-version").textContent()).includes("createServer"), "the old version");
  assert.doesNotMatch(await page.getByTestId("history-version").textContent(), /second version/);
  await screenshot(page, "history.png");
  await page.getByTestId("history-restore").click();
  await page.getByTestId("confirm-ok").click();
  await waitFor(async () => !(await model()).text.includes("second version"), "the editor to show the restored file");
  await waitFor(async () => (await page.getByTestId("history").count()) === 0, "the history dialog to close");
});

test("a dropped connection comes back, with a banner, and keeps the unsaved buffer", async () => {
  await page.evaluate(() => window.__coveEditor.focus());
  await page.keyboard.press("Control+End");
  await page.keyboard.type("// not saved yet\n");
  // Kill the workspace's cove-pty: the supervisor restarts it (a new instance).
  execFileSync("pkill", ["-KILL", "-f", `cove-pty .*--project ${id}`]);
  await page.getByTestId("reconnect-banner").waitFor({ timeout: 15_000 });
  await waitFor(async () => (await page.getByTestId("reconnect-banner").count()) === 0, "the reconnect", 60_000);
  assert.match((await model()).text, /not saved yet/);
  assert.equal(await page.locator('[data-testid="tab"][data-path="index.js"]').getAttribute("data-dirty"), "true");
  await page.evaluate(() => window.__coveEditor.focus());
  await page.keyboard.press("Control+S");
  await waitFor(async () => (await page.getByTestId("sync-status").textContent()) === "Saved to cloud", "saved after the reconnect");
  // The new instance's terminals: the old ones died with it, the page shows what exists now.
  const r = await cove.api("GET", `/api/projects/${id}/history?path=index.js&limit=1`);
  const c = r.json.commits[0];
  const f = await cove.api("GET", `/api/projects/${id}/history/${c.epoch}.${c.seq}/file?path=index.js`);
  assert.match(f.json.content, /not saved yet/);
});

test("an unsaved buffer survives a page reload (kept in this browser)", async () => {
  await item("index.js").click();
  await waitFor(async () => (await model()).path === "/index.js", "index.js in the editor");
  await page.evaluate(() => window.__coveEditor.focus());
  await page.keyboard.press("Control+End");
  await page.keyboard.type("// survives a reload\n");
  await page.waitForTimeout(500); // the stash is written 300 ms after the last change
  page.once("dialog", (d) => d.accept()); // "leave the page?": yes
  await page.reload();
  await page.getByTestId("ide").waitFor({ timeout: 60_000 });
  const tab = page.locator('[data-testid="tab"][data-path="index.js"]');
  await waitFor(async () => (await tab.getAttribute("data-dirty")) === "true", "index.js back as unsaved");
  await tab.click();
  await waitFor(async () => (await model()).text?.includes("survives a reload"), "the unsaved text in the editor");
  await page.evaluate(() => window.__coveEditor.focus());
  await page.keyboard.press("Control+S");
  await waitFor(async () => (await tab.getAttribute("data-dirty")) === "false", "saved");
  await waitFor(async () => (await page.evaluate((id) => localStorage.getItem(`cove.unsaved.${id}`), id)) === null, "the stash emptied after the save");
});

test("no uncaught errors in the page", () => {
  assert.deepEqual(pageErrors, []);
});
