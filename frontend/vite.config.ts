import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { defineConfig, type Plugin } from "vitest/config";

// The controller serves dist/ (its --ui-dir) on http://localhost:7070; in
// `npm run dev` Vite proxies the API to a running controller instead.

/**
 * Writes `<file>.gz` beside every large asset. The controller sends it to
 * clients that accept gzip (api.md §6): Monaco's 3.3 MB become about 0.9,
 * which matters as soon as the IDE is not on loopback.
 */
function precompress(): Plugin {
  return {
    name: "cove-precompress",
    apply: "build",
    closeBundle() {
      const dir = join(__dirname, "dist", "assets");
      for (const name of readdirSync(dir)) {
        const file = join(dir, name);
        if (!/\.(js|css|svg|json|ttf)$/.test(name) || statSync(file).size < 10_240) continue;
        writeFileSync(`${file}.gz`, gzipSync(readFileSync(file), { level: 9 }));
      }
    },
  };
}

export default defineConfig({
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  plugins: [precompress()],
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
