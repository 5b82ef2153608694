import { describe, expect, it } from "vitest";
import { treeUpdate, moveTarget, validateName, sortEntries, parentOf } from "../src/state/tree";
import { newDoc, onDiskVersion, isDirty, decodeRead, languageOf, tabMarker } from "../src/state/docs";
import { syncLabel, hydrationText, formatBytes } from "../src/state/sync";
import { fuzzyRank } from "../src/state/fuzzy";
import type { Status } from "../src/protocol/types";

describe("file tree follows the change feed", () => {
  const listed = ["", "src", "src/lib"];
  it("re-lists the parent of a created, modified or deleted path", () => {
    expect(treeUpdate([{ kind: "create", path: "src/a.js" }], listed)).toEqual({ relist: ["src"], forget: [] });
    expect(treeUpdate([{ kind: "modify", path: "b.txt" }], listed)).toEqual({ relist: [""], forget: [] });
  });
  it("ignores changes in directories that are not shown", () => {
    expect(treeUpdate([{ kind: "create", path: "node_modules/x/y.js" }], listed).relist).toEqual([]);
  });
  it("forgets a deleted directory and everything listed below it", () => {
    expect(treeUpdate([{ kind: "delete", path: "src" }], listed)).toEqual({ relist: [""], forget: ["src", "src/lib"] });
  });
  it("a rename touches both parents and forgets the old directory", () => {
    expect(treeUpdate([{ kind: "rename", path: "lib2", from: "src/lib" }], listed)).toEqual({ relist: ["", "src"], forget: ["src/lib"] });
  });
  it("overflow re-lists every shown directory under its path", () => {
    expect(treeUpdate([{ kind: "overflow", path: "" }], listed).relist).toEqual(["", "src", "src/lib"]);
    expect(treeUpdate([{ kind: "overflow", path: "src/lib" }], listed).relist).toEqual(["src", "src/lib"]);
  });
  it("moves: never into itself, never a no-op", () => {
    expect(moveTarget("a/b.js", "c")).toBe("c/b.js");
    expect(moveTarget("a/b.js", "a")).toBeNull();
    expect(moveTarget("a", "a/x")).toBeNull();
    expect(moveTarget("a/b", "")).toBe("b");
  });
  it("validates typed names before they reach the server", () => {
    expect(validateName("ok.js")).toBeNull();
    expect(validateName("dir/new.js")).toBeNull();
    expect(validateName("")).not.toBeNull();
    expect(validateName("/etc/passwd")).not.toBeNull();
    expect(validateName("a/../b")).not.toBeNull();
    expect(validateName("a//b")).not.toBeNull();
    expect(validateName("x".repeat(256))).not.toBeNull();
  });
  it("sorts directories first, then names naturally", () => {
    const e = (name: string, kind: "file" | "dir") => ({ name, kind, size: 0, mtime_ms: 0, mode: 0 });
    expect(sortEntries([e("b10", "file"), e("z", "dir"), e("b2", "file"), e("A", "file")]).map((x) => x.name)).toEqual(["z", "A", "b2", "b10"]);
    expect(parentOf("a/b/c")).toBe("a/b");
  });
});

describe("open files and the disk", () => {
  it("a clean buffer reloads; a dirty one is marked, never overwritten", () => {
    const clean = newDoc("a", { base: "v1", saved: "x", text: "x" });
    expect(onDiskVersion(clean, "v2")).toBe("reload");
    const dirty = newDoc("a", { base: "v1", saved: "x", text: "y" });
    expect(isDirty(dirty)).toBe(true);
    expect(onDiskVersion(dirty, "v2")).toBe("mark-changed");
    expect(onDiskVersion(dirty, "v1")).toBe("none");
    expect(onDiskVersion(dirty, null)).toBe("mark-deleted");
    expect(tabMarker(dirty)).toBe("●");
  });
  it("a version back at the buffer's base clears the marks (a rename seen as delete first)", () => {
    const d = newDoc("a", { base: "v1", saved: "x", text: "x", deletedOnDisk: true });
    expect(onDiskVersion(d, "v1")).toBe("clear-marks");
  });
  it("a save in flight decides for itself", () => {
    expect(onDiskVersion(newDoc("a", { base: "v1", saving: true }), "v2")).toBe("none");
  });
  it("binary content is not editable, with a reason", () => {
    const d = decodeRead({ content: "AAE=", encoding: "base64", size: 2 });
    expect(d.kind).toBe("binary");
    expect(d.message).toMatch(/binary/);
  });
  it("knows languages by extension", () => {
    expect(languageOf("index.js")).toBe("javascript");
    expect(languageOf("src/main.rs")).toBe("rust");
    expect(languageOf("Dockerfile")).toBe("dockerfile");
    expect(languageOf("notes")).toBe("plaintext");
  });
});

describe("status bar follows the durability contract", () => {
  const status = (state: Status["sync"]["state"], extra: Partial<Status["sync"]> = {}): Status => ({
    ready: true,
    hydration: null,
    sync: { state, dirty: 0, store_healthy: true, fenced: false, last_commit: { epoch: 2, seq: 5 }, commit_lag_ms: 0, ...extra },
  });
  it("says saved only when the store has everything", () => {
    expect(syncLabel({ conn: "open", status: status("saved"), pendingSaves: 0, unsavedBuffers: 0 }).text).toBe("Saved to cloud");
    expect(syncLabel({ conn: "open", status: status("saved"), pendingSaves: 1, unsavedBuffers: 0 }).text).toBe("Saving…");
    expect(syncLabel({ conn: "open", status: status("pending", { dirty: 2 }), pendingSaves: 0, unsavedBuffers: 0 }).text).toBe("Saving…");
  });
  it("offline when the store is down or the socket is", () => {
    expect(syncLabel({ conn: "open", status: status("offline", { store_healthy: false, dirty: 3 }), pendingSaves: 0, unsavedBuffers: 0 }).text).toBe("Offline: changes kept locally");
    const l = syncLabel({ conn: "reconnecting", status: status("saved"), pendingSaves: 0, unsavedBuffers: 2 });
    expect(l.text).toBe("Offline: changes kept locally");
    expect(l.detail).toMatch(/2 unsaved files/);
  });
  it("fenced is an error, never saved", () => {
    expect(syncLabel({ conn: "open", status: status("fenced", { fenced: true }), pendingSaves: 0, unsavedBuffers: 0 }).tone).toBe("error");
    expect(syncLabel({ conn: "superseded", status: null, pendingSaves: 0, unsavedBuffers: 0 }).tone).toBe("error");
  });
  it("shows hydration progress with counts and bytes", () => {
    expect(hydrationText({ done: 1200, total: 3004, bytes: 1048576 })).toBe("Loading files: 1,200 of 3,004 (1.0 MiB)");
    expect(formatBytes(512)).toBe("512 B");
  });
});

describe("quick open", () => {
  it("ranks file-name matches over directory matches", () => {
    expect(fuzzyRank("idx", ["src/index/a.js", "index.js", "lib/x.js"])[0]).toBe("index.js");
    expect(fuzzyRank("zzz", ["index.js"])).toEqual([]);
  });
});

describe("history", () => {
  it("hides cove-pty's own temp files in a commit's paths", async () => {
    const { visiblePaths } = await import("../src/ui/HistoryDialog");
    const c = { epoch: 2, seq: 11, time_ms: 0, files_changed: 2, paths: [".index.js.cove-tmp-259fc921b38a6061", "index.js"], paths_truncated: false, initial: false };
    expect(visiblePaths(c)).toEqual({ paths: ["index.js"], count: 1 });
    expect(visiblePaths({ ...c, paths: ["src/.a.cove-tmp-0123456789abcdef", "src/a"] }).paths).toEqual(["src/a"]);
    expect(visiblePaths({ ...c, paths: ["notes.cove-tmp-x"] }).paths).toEqual(["notes.cove-tmp-x"]);
  });
});
