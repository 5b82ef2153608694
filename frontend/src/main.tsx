// Cove's browser IDE. Two pages, routed on the client (the controller
// serves index.html for every path that is not a file, api.md §6):
//   /          projects
//   /p/<id>    the IDE of one project
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { ProjectsPage } from "./ui/ProjectsPage";
import { IdePage } from "./ui/IdePage";
import { Toasts } from "./ui/common";
import "./styles.css";

// The IDE sets a guard while it holds unsaved buffers: leaving the page
// inside the app (a link, Back) would drop them as surely as closing it.
let leaveGuard: (() => string | null) | null = null;
export function setLeaveGuard(g: (() => string | null) | null): void {
  leaveGuard = g;
}

export function navigate(path: string): void {
  const why = leaveGuard?.();
  if (why && !confirm(why)) return;
  leaveGuard = null;
  history.pushState(null, "", path);
  dispatchEvent(new PopStateEvent("popstate"));
}

function App() {
  const [path, setPath] = useState(location.pathname);
  useEffect(() => {
    const on = () => {
      if (location.pathname !== path) {
        const why = leaveGuard?.();
        if (why && !confirm(why)) {
          history.pushState(null, "", path); // stay: undo the Back
          return;
        }
      }
      setPath(location.pathname);
    };
    addEventListener("popstate", on);
    return () => removeEventListener("popstate", on);
  }, [path]);
  const m = /^\/p\/([a-z0-9-]{1,63})\/?$/.exec(path);
  return (
    <>
      {m ? <IdePage key={m[1]} id={m[1]} /> : <ProjectsPage />}
      <Toasts />
    </>
  );
}

render(<App />, document.getElementById("app")!);
