// Monaco, loaded on demand: the IDE page paints (tree, terminals, status)
// while this chunk and its workers load. Only the editor worker and the
// language services people use most (TypeScript/JavaScript, JSON, CSS,
// HTML) get workers; every other language is Monaco's tokenizer alone.
import * as monaco from "monaco-editor";
import EditorWorker from "monaco-editor/esm/vs/editor/editor.worker?worker";
import TsWorker from "monaco-editor/esm/vs/language/typescript/ts.worker?worker";
import JsonWorker from "monaco-editor/esm/vs/language/json/json.worker?worker";
import CssWorker from "monaco-editor/esm/vs/language/css/css.worker?worker";
import HtmlWorker from "monaco-editor/esm/vs/language/html/html.worker?worker";

(self as unknown as { MonacoEnvironment: monaco.Environment }).MonacoEnvironment = {
  getWorker(_id: string, label: string) {
    switch (label) {
      case "typescript":
      case "javascript":
        return new TsWorker();
      case "json":
        return new JsonWorker();
      case "css":
      case "scss":
      case "less":
        return new CssWorker();
      case "html":
      case "handlebars":
      case "razor":
        return new HtmlWorker();
      default:
        return new EditorWorker();
    }
  },
};

// A project's files are not a TS project Monaco knows: keep it from
// flagging every `require` and missing import as an error.
monaco.languages.typescript.javascriptDefaults.setDiagnosticsOptions({ noSemanticValidation: true });
monaco.languages.typescript.typescriptDefaults.setDiagnosticsOptions({ noSemanticValidation: true });

// Monaco cancels a worker request when its model or diff editor goes away
// and leaves the rejection unhandled ("Canceled"); that is not an error.
addEventListener("unhandledrejection", (e) => {
  const r = e.reason as { name?: string; message?: string } | null;
  if (r && (r.name === "Canceled" || r.message === "Canceled")) e.preventDefault();
});

export { monaco };
