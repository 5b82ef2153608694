// The projects page: list (template, last opened, running state), create
// from a template, fork, rename, delete with confirmation.
import { useEffect, useState } from "preact/hooks";
import { api, ApiError, type Project, type Template } from "../api";
import { navigate } from "../main";
import { ConfirmDialog, Modal, PromptDialog, errorText, timeAgo, toast } from "./common";

const STATE_LABEL: Record<string, string> = {
  stopped: "Stopped",
  starting: "Starting",
  ready: "Running",
  stopping: "Stopping",
  failed: "Failed",
};

export function ProjectsPage() {
  const [projects, setProjects] = useState<Project[] | null>(null);
  const [templates, setTemplates] = useState<Template[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [dialog, setDialog] = useState<null | { kind: "create" } | { kind: "rename" | "delete" | "fork"; p: Project }>(null);

  const load = async () => {
    try {
      setProjects(await api.projects());
      setError(null);
    } catch (e) {
      setError(errorText(e));
    }
  };
  useEffect(() => {
    document.title = "Projects · Cove";
    void load();
    api.templates().then(setTemplates, (e) => setError(errorText(e)));
    // Running states change behind the page (idle stops); a slow poll keeps them honest.
    const t = setInterval(load, 5000);
    return () => clearInterval(t);
  }, []);

  return (
    <div class="projects-page" data-testid="projects-page">
      <header class="topbar">
        <span class="logo">Cove</span>
        <span class="spacer" />
        <button class="primary" data-testid="new-project" onClick={() => setDialog({ kind: "create" })}>
          New project
        </button>
      </header>
      <main class="projects-main">
        <h1>Projects</h1>
        {error && (
          <p class="form-error" data-testid="projects-error">
            {error} <button onClick={load}>Retry</button>
          </p>
        )}
        {projects === null && !error && <p class="muted">Loading projects…</p>}
        {projects?.length === 0 && (
          <div class="empty">
            <p>No projects yet.</p>
            <button class="primary" onClick={() => setDialog({ kind: "create" })}>Create your first project</button>
          </div>
        )}
        {projects && projects.length > 0 && (
          <table class="projects" data-testid="projects">
            <thead>
              <tr>
                <th>Name</th>
                <th>Template</th>
                <th>Last opened</th>
                <th>State</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {projects.map((p) => (
                <tr key={p.id} data-testid="project-row" data-project-id={p.id}>
                  <td>
                    <a href={`/p/${p.id}`} data-testid="project-open" onClick={(e) => { e.preventDefault(); navigate(`/p/${p.id}`); }}>
                      {p.name}
                    </a>
                    {p.forked_from && <span class="muted small"> · fork of {p.forked_from}</span>}
                  </td>
                  <td>{p.template ?? "—"}</td>
                  <td title={p.last_opened_ms ? new Date(p.last_opened_ms).toLocaleString() : ""}>{timeAgo(p.last_opened_ms)}</td>
                  <td>
                    <span class={`state state-${p.workspace_state}`} data-testid="project-state">{STATE_LABEL[p.workspace_state] ?? p.workspace_state}</span>
                  </td>
                  <td class="row-actions">
                    <button data-testid="project-fork" onClick={() => setDialog({ kind: "fork", p })}>Fork</button>
                    <button data-testid="project-rename" onClick={() => setDialog({ kind: "rename", p })}>Rename</button>
                    <button class="danger" data-testid="project-delete" onClick={() => setDialog({ kind: "delete", p })}>Delete</button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </main>
      {dialog?.kind === "create" && (
        <CreateDialog templates={templates} onClose={() => setDialog(null)} onCreated={(p) => navigate(`/p/${p.id}`)} />
      )}
      {dialog?.kind === "rename" && (
        <PromptDialog
          title={`Rename ${dialog.p.name}`}
          label="Name"
          initial={dialog.p.name}
          action="Rename"
          validate={(v) => (v.trim() ? null : "The name must not be empty.")}
          onSubmit={async (v) => {
            await api.rename(dialog.p.id, v);
            await load();
          }}
          onClose={() => setDialog(null)}
        />
      )}
      {dialog?.kind === "fork" && (
        <PromptDialog
          title={`Fork ${dialog.p.name}`}
          label="Name of the copy"
          initial={`${dialog.p.name} (fork)`.slice(0, 100)}
          action="Fork"
          validate={(v) => (v.trim() ? null : "The name must not be empty.")}
          onSubmit={async (v) => {
            const f = await api.fork(dialog.p.id, v);
            toast(`Forked into ${f.name}.`);
            await load();
          }}
          onClose={() => setDialog(null)}
        />
      )}
      {dialog?.kind === "delete" && (
        <ConfirmDialog
          title="Delete project"
          danger
          action="Delete forever"
          message={
            <p>
              Delete <b>{dialog.p.name}</b> and its whole history? A running workspace is stopped first. This cannot be undone.
            </p>
          }
          onConfirm={async () => {
            await api.remove(dialog.p.id);
            toast(`Deleted ${dialog.p.name}.`);
            await load();
          }}
          onClose={() => setDialog(null)}
        />
      )}
    </div>
  );
}

function CreateDialog(props: { templates: Template[]; onClose: () => void; onCreated: (p: Project) => void }) {
  const [name, setName] = useState("");
  const [template, setTemplate] = useState(props.templates.find((t) => t.name === "node")?.name ?? props.templates[0]?.name ?? "");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    if (!name.trim()) return setError("Give the project a name.");
    if (!template) return setError("Pick a template.");
    setBusy(true);
    try {
      props.onCreated(await api.create(name, template));
    } catch (x) {
      setError(x instanceof ApiError && x.code === "invalid_name" ? `Name: ${x.message}` : errorText(x));
      setBusy(false);
    }
  };
  return (
    <Modal title="New project" onClose={props.onClose} testid="create-dialog" wide>
      <form onSubmit={submit}>
        <label>
          Name
          <input data-testid="project-name" value={name} autofocus maxLength={100} placeholder="My app" onInput={(e) => { setName((e.target as HTMLInputElement).value); setError(null); }} />
        </label>
        <fieldset class="templates" role="radiogroup" aria-label="Template">
          {props.templates.map((t) => (
            <button
              type="button"
              key={t.name}
              role="radio"
              aria-checked={template === t.name}
              class={`template${template === t.name ? " selected" : ""}`}
              data-testid={`template-${t.name}`}
              onClick={() => setTemplate(t.name)}
            >
              <b>{t.name}</b>
              <span class="muted small">{t.language}</span>
              <span class="small">{t.description}</span>
            </button>
          ))}
        </fieldset>
        {error && <p class="form-error" data-testid="create-error">{error}</p>}
        <div class="buttons">
          <button type="button" onClick={props.onClose}>Cancel</button>
          <button type="submit" class="primary" disabled={busy} data-testid="create-project">
            {busy ? "Creating…" : "Create"}
          </button>
        </div>
      </form>
    </Modal>
  );
}
