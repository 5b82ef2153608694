import { defineConfig } from "vitest/config";

// The controller serves dist/ (its --ui-dir) on http://localhost:7070; in
// `npm run dev` Vite proxies the API to a running controller instead.
export default defineConfig({
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  build: {
    target: "es2022",
    // Monaco is one large lazy chunk by nature; the warning says nothing new.
    chunkSizeWarningLimit: 4096,
    reportCompressedSize: false,
  },
  worker: { format: "es" },
  server: {
    proxy: { "/api": process.env.COVE_URL ?? "http://localhost:7070" },
  },
  test: {
    environment: "node",
    include: ["test/**/*.test.ts"],
  },
});
