// The session's file tree slice against a scripted cove-pty: lazy listing,
// the change feed's re-lists, and the file operations.
import { describe, expect, it } from "vitest";
import { Documents } from "../src/ide/documents";
import { Tree } from "../src/ide/tree";
import { counter, dirs, files, handlers, scriptedIde, sock, tick, until } from "./ide";

const { connected } = scriptedIde();

async function slice() {
  const client = await connected();
  const changes = counter();
  const documents = new Documents("p", client, changes.bump, () => {});
  const tree = new Tree(client, documents, changes.bump);
  return { tree, documents, changes };
}

const lists = (path: string) => sock().requests("fs.list").filter((m) => m.path === path).length;
const names = (tree: Tree, dir: string) => tree.entries.get(dir)?.map((e) => e.name);

describe("Tree", () => {
  it("lists a directory when it is opened, directories first, and again each time", async () => {
    dirs[""] = [
      { name: "b.txt", kind: "file" },
      { name: "src", kind: "dir" },
    ];
    dirs["src"] = [{ name: "main.rs", kind: "file" }];
    const { tree } = await slice();
    await tree.list("");
    expect(names(tree, "")).toEqual(["src", "b.txt"]);
    await tree.toggle("src");
    expect(tree.expanded.has("src")).toBe(true);
    expect(names(tree, "src")).toEqual(["main.rs"]);
    await tree.toggle("src");
    expect(tree.expanded.has("src")).toBe(false);
    expect(lists("src")).toBe(1);
    await tree.toggle("src");
    expect(lists("src")).toBe(2);
  });

  it("a directory gone from the disk is forgotten with everything listed below it", async () => {
    dirs["a"] = [{ name: "b", kind: "dir" }];
    dirs["a/b"] = [];
    const { tree } = await slice();
    await tree.toggle("a");
    await tree.toggle("a/b");
    handlers["fs.list"] = (m) => {
      throw { code: "not_found", message: "gone", details: { path: m.path } };
    };
    await tree.list("a");
    expect([...tree.entries.keys()]).toEqual([]);
    expect([...tree.expanded]).toEqual([""]);
  });

  it("says why the root cannot be listed, and forgets it once it can", async () => {
    const { tree } = await slice();
    const original = handlers["fs.list"];
    handlers["fs.list"] = () => {
      throw { code: "not_ready", message: "the workspace is not ready", details: {} };
    };
    await tree.list("");
    expect(tree.error).toMatch(/not ready/);
    handlers["fs.list"] = original;
    await tree.list("");
    expect(tree.error).toBeNull();
  });

  it("a burst of changes re-lists each shown directory it touches once", async () => {
    dirs[""] = [{ name: "src", kind: "dir" }];
    const { tree } = await slice();
    await tree.list("");
    await tree.toggle("src");
    await tree.toggle("src"); // collapsed: listed, but not shown
    const before = [lists(""), lists("src")];
    tree.onChanges([
      { kind: "create", path: "a.txt" },
      { kind: "modify", path: "b.txt" },
      { kind: "create", path: "src/x.rs" },
    ]);
    tree.onChanges([{ kind: "delete", path: "c.txt" }]);
    await until(() => lists("") === before[0] + 1);
    await tick();
    expect([lists(""), lists("src")]).toEqual([before[0] + 1, before[1]]);
  });

  it("after a reconnect, re-lists what is shown and drops collapsed directories' listings", async () => {
    dirs[""] = [
      { name: "open", kind: "dir" },
      { name: "shut", kind: "dir" },
    ];
    const { tree } = await slice();
    await tree.list("");
    await tree.toggle("open");
    await tree.toggle("shut");
    await tree.toggle("shut");
    const before = lists("open");
    tree.relistShown();
    expect(tree.entries.has("shut")).toBe(false);
    await until(() => lists("open") === before + 1);
  });

  it("a new file in a new directory: the parents are opened and listed, the file opened", async () => {
    files["x/y/new.txt"] = { content: "", version: "v0" };
    const { tree, documents } = await slice();
    await tree.createFile("x/y/new.txt");
    expect(sock().requests("fs.write")).toMatchObject([{ path: "x/y/new.txt", content: "", base_version: null, parents: true }]);
    expect(tree.expanded.has("x")).toBe(true);
    expect(tree.expanded.has("x/y")).toBe(true);
    expect(lists("x/y")).toBe(1);
    expect(documents.active).toBe("x/y/new.txt");
  });

  it("a rename or delete that is not yet durable counts as saving", async () => {
    handlers["fs.rename"] = () => ({ durable: false, commit: null, pending_reason: "timeout" });
    handlers["fs.delete"] = () => ({ durable: false, commit: null, pending_reason: "timeout" });
    const { tree, documents } = await slice();
    await tree.rename("a.txt", "b.txt");
    await tree.remove("d");
    expect(documents.savingCount()).toBe(2);
    expect(sock().requests("fs.delete")).toMatchObject([{ path: "d", recursive: true }]);
  });

  it("quick open's walk lists every file, skipping heavy directories", async () => {
    dirs[""] = [
      { name: "src", kind: "dir" },
      { name: "node_modules", kind: "dir" },
      { name: ".git", kind: "dir" },
      { name: "z.txt", kind: "file" },
    ];
    dirs["src"] = [
      { name: "lib", kind: "dir" },
      { name: "main.ts", kind: "file" },
    ];
    dirs["src/lib"] = [{ name: "a.ts", kind: "file" }];
    dirs["node_modules"] = [{ name: "x.js", kind: "file" }];
    const { tree } = await slice();
    expect(await tree.allFiles()).toEqual(["src/lib/a.ts", "src/main.ts", "z.txt"]);
    expect(await tree.allFiles(1)).toEqual(["z.txt"]);
  });
});
