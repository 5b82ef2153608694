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

export function navigate(path: string): void {
  history.pushState(null, "", path);
  dispatchEvent(new PopStateEvent("popstate"));
}

function App() {
  const [path, setPath] = useState(location.pathname);
  useEffect(() => {
    const on = () => setPath(location.pathname);
    addEventListener("popstate", on);
    return () => removeEventListener("popstate", on);
  }, []);
  const m = /^\/p\/([a-z0-9-]{1,63})\/?$/.exec(path);
  return (
    <>
      {m ? <IdePage key={m[1]} id={m[1]} /> : <ProjectsPage />}
      <Toasts />
    </>
  );
}

render(<App />, document.getElementById("app")!);
