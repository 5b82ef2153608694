// The controller's JSON API (docs/api.md), same-origin with the page.

export interface Template {
  name: string;
  description: string;
  language: string;
}

export interface Project {
  id: string;
  name: string;
  template: string | null;
  forked_from: string | null;
  created_ms: number;
  last_opened_ms: number | null;
  workspace_state: WorkspaceState;
}

export type WorkspaceState = "stopped" | "starting" | "ready" | "stopping" | "failed";

export interface Workspace {
  project: string;
  state: WorkspaceState;
  reason: string | null;
  mode: "fuse" | "watch" | null;
  hydration: { done: number; total: number; bytes: number; finished: boolean } | null;
  app_port: number | null;
  urls: { ide_socket: string; preview: string; preview_port: string };
  token: string | null;
  token_expires_ms: number | null;
}

export interface Commit {
  epoch: number;
  seq: number;
  time_ms: number;
  files_changed: number;
  paths: string[];
  paths_truncated: boolean;
  initial: boolean;
}

export interface FileVersion {
  path: string;
  kind: "file" | "symlink";
  size: number;
  encoding: "utf8" | "base64" | null;
  content: string | null;
  version: string | null;
  target: string | null;
}

export interface RestoreResult {
  files_changed: number;
  durable: boolean;
  commit: { epoch: number; seq: number } | null;
}

/** An API error (api.md §2): branch on `code`, show `message`. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
    this.name = "ApiError";
  }
}

/** An error's text for people: the message of an Error, else the value. */
export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  let res: Response;
  try {
    res = await fetch(path, {
      method,
      headers: body === undefined ? {} : { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, "network", "Cove's server is not reachable. Is it running?");
  }
  if (res.status === 204) return undefined as T;
  let json: any = null;
  try {
    json = await res.json();
  } catch {
    // fall through: a non-JSON answer is an error below
  }
  if (!res.ok || json === null) {
    const e = json?.error;
    throw new ApiError(res.status, e?.code ?? "internal", e?.message ?? `${method} ${path}: HTTP ${res.status}`, e?.details ?? {});
  }
  return json as T;
}

const p = (id: string) => `/api/projects/${encodeURIComponent(id)}`;
const commitId = (c: { epoch: number; seq: number }) => `${c.epoch}.${c.seq}`;

export const api = {
  templates: () => call<{ templates: Template[] }>("GET", "/api/templates").then((r) => r.templates),
  projects: () => call<{ projects: Project[] }>("GET", "/api/projects").then((r) => r.projects),
  project: (id: string) => call<Project>("GET", p(id)),
  create: (name: string, template: string) => call<Project>("POST", "/api/projects", { name, template }),
  rename: (id: string, name: string) => call<Project>("PATCH", p(id), { name }),
  remove: (id: string) => call<void>("DELETE", p(id)),
  fork: (id: string, name?: string) => call<Project>("POST", `${p(id)}/fork`, name === undefined ? {} : { name }),
  workspace: (id: string) => call<Workspace>("GET", `${p(id)}/workspace`),
  start: (id: string) => call<Workspace>("POST", `${p(id)}/workspace/start`),
  stop: (id: string) => call<Workspace>("POST", `${p(id)}/workspace/stop`),
  token: (id: string) => call<Workspace>("POST", `${p(id)}/workspace/token`),
  history: (id: string, q: { path?: string; before?: number; limit?: number } = {}) => {
    const qs = new URLSearchParams();
    if (q.limit !== undefined) qs.set("limit", String(q.limit));
    if (q.before !== undefined) qs.set("before", String(q.before));
    if (q.path) qs.set("path", q.path);
    const s = qs.toString();
    return call<{ commits: Commit[]; next_before: number | null }>("GET", `${p(id)}/history${s ? `?${s}` : ""}`);
  },
  fileAt: (id: string, c: { epoch: number; seq: number }, path: string) =>
    call<FileVersion>("GET", `${p(id)}/history/${commitId(c)}/file?path=${encodeURIComponent(path)}`),
  restore: (id: string, c: { epoch: number; seq: number }, path?: string) =>
    call<RestoreResult>("POST", `${p(id)}/history/${commitId(c)}/restore`, path ? { path } : {}),
};
