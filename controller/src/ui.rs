//! The browser UI on the controller's host (docs/api.md §6): the files Vite
//! built into `--ui-dir` (default `frontend/dist`), for `GET` and `HEAD`
//! requests that no API route took.
//!
//! - A path that names a file under the directory gets that file, with a
//!   `Content-Type` from its extension and `X-Content-Type-Options: nosniff`.
//!   Files under `/assets/` have hashed names, so they are cached for a year
//!   (`immutable`); everything else, `index.html` first, is `no-cache` and
//!   revalidated with its `ETag`.
//! - Any other path gets `index.html` (the UI routes on the client), except
//!   under `/assets/`, where a missing file is a `404`.
//! - Without `index.html` (the UI is not built), the fallback is a `503`
//!   page that says how to build it.
//! - A request that accepts gzip gets `<file>.gz` when the build left one
//!   next to the file (`Content-Encoding: gzip`); every file answer has
//!   `Vary: Accept-Encoding`.
//! - The path is percent-decoded; `.` and `..` components, NUL and
//!   backslashes are a `404`, and so is any file whose real path (symlinks
//!   resolved) is outside the directory.
//!
//! The directory is resolved at each request, so a rebuild while the
//! controller runs is served at once. Every file-system call goes through
//! `tokio::fs`, off the runtime's threads.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::path::{Path, PathBuf};

/// `Cache-Control` of files under `/assets/`: Vite puts a content hash in
/// their names, so a name never changes content.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` of every other file: the browser revalidates each use.
const REVALIDATE: &str = "no-cache";

/// The built UI's directory.
#[derive(Debug, Clone)]
pub struct Ui {
    dir: PathBuf,
}

/// A file found for a request: its real path, inside the UI directory.
struct Found {
    path: PathBuf,
    meta: std::fs::Metadata,
}

impl Ui {
    /// `dir` as given (relative paths are to the working directory); it may
    /// not exist yet.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Ui { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// At start: one warning when there is nothing to serve yet.
    pub async fn warn_if_missing(&self) {
        let dir = self.dir.display();
        if !tokio::fs::metadata(&self.dir)
            .await
            .is_ok_and(|m| m.is_dir())
        {
            tracing::warn!(
                "the UI directory {dir} does not exist: the UI answers 503 until it is built \
                 (cd frontend && npm ci && npm run build, or scripts/run.sh)"
            );
        } else if !tokio::fs::metadata(self.dir.join("index.html"))
            .await
            .is_ok_and(|m| m.is_file())
        {
            tracing::warn!(
                "{dir} has no index.html: the UI answers 503 until it is built \
                 (cd frontend && npm ci && npm run build, or scripts/run.sh)"
            );
        }
    }

    /// Answers a `GET` or `HEAD` of `uri` (api.md §6).
    pub async fn serve(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Response {
        let Some(parts) = components(uri.path()) else {
            return not_found();
        };
        let is_asset = parts.first().is_some_and(|p| p == "assets");
        // The real root, resolved now: the directory may have been built or
        // rebuilt since the start.
        let Ok(root) = tokio::fs::canonicalize(&self.dir).await else {
            return if is_asset {
                not_found()
            } else {
                self.not_built()
            };
        };
        let found = match resolve(&root, &parts).await {
            Lookup::File(f) => Some((f, parts)),
            Lookup::Escapes => return not_found(),
            _ if is_asset => return not_found(),
            _ => None,
        };
        let (file, rel) = match found {
            Some(f) => f,
            None => {
                let rel = vec!["index.html".to_string()];
                match resolve(&root, &rel).await {
                    Lookup::File(f) => (f, rel),
                    Lookup::Escapes => return not_found(),
                    Lookup::NotAFile => return self.not_built(),
                }
            }
        };
        let name = rel.last().map_or("", String::as_str);
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_type(name)),
        );
        // The precompressed sibling, when the client takes gzip.
        let mut gz = None;
        if accepts_gzip(headers) {
            let mut sibling = rel.clone();
            if let Some(last) = sibling.last_mut() {
                last.push_str(".gz");
            }
            if let Lookup::File(f) = resolve(&root, &sibling).await {
                gz = Some(f);
            }
        }
        let gzipped = gz.is_some();
        let file = gz.unwrap_or(file);
        let etag = etag(&file.meta, gzipped);
        let cache = if is_asset { IMMUTABLE } else { REVALIDATE };
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        if let Ok(v) = HeaderValue::from_str(&etag) {
            h.insert(header::ETAG, v);
        }
        if not_modified(headers, &etag) {
            h.remove(header::CONTENT_TYPE);
            return (StatusCode::NOT_MODIFIED, h).into_response();
        }
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        if gzipped {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        if method == Method::HEAD {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(file.meta.len()));
            return (StatusCode::OK, h).into_response();
        }
        match read(&file.path).await {
            Ok(bytes) => (StatusCode::OK, h, Body::from(bytes)).into_response(),
            Err(e) => {
                tracing::warn!(path = %file.path.display(), error = %e, "reading a UI file");
                not_found()
            }
        }
    }

    /// The `503` page of a UI that is not built.
    fn not_built(&self) -> Response {
        let dir = html_escape(&self.dir.display().to_string());
        let html = format!(
            "<!doctype html><meta charset=\"utf-8\"><title>Cove: the UI is not built</title>\
             <body style=\"font-family:system-ui;margin:3rem;max-width:40rem\">\
             <h1>The UI is not built</h1>\
             <p>The controller serves the browser UI from <code>{dir}</code>, which has no \
             <code>index.html</code>. Build it, then reload this page:</p>\
             <pre>cd frontend &amp;&amp; npm ci &amp;&amp; npm run build</pre>\
             <p>or start Cove with <code>scripts/run.sh</code>, which builds it. The API is \
             at <a href=\"/api/templates\"><code>/api/</code></a> meanwhile.</p></body>\n"
        );
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            html,
        )
            .into_response()
    }
}

/// The decoded components of a request path, or `None` when it is not one
/// the UI serves: not valid UTF-8 once decoded, or with NUL, a backslash,
/// `.` or `..`. Empty components (`//`, a trailing `/`) are dropped.
fn components(path: &str) -> Option<Vec<String>> {
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .ok()?;
    if decoded.contains(['\0', '\\']) {
        return None;
    }
    let mut parts = Vec::new();
    for p in decoded.split('/') {
        match p {
            "" => {}
            "." | ".." => return None,
            p => parts.push(p.to_string()),
        }
    }
    Some(parts)
}

enum Lookup {
    File(Found),
    /// Missing, a directory, or not readable.
    NotAFile,
    /// Its real path is outside the UI directory (a symlink leads out).
    Escapes,
}

/// Finds `root/parts…`, with every symlink resolved, inside `root` (itself
/// canonical).
async fn resolve(root: &Path, parts: &[String]) -> Lookup {
    let mut p = root.to_path_buf();
    p.extend(parts);
    let Ok(real) = tokio::fs::canonicalize(&p).await else {
        return Lookup::NotAFile;
    };
    if !real.starts_with(root) {
        return Lookup::Escapes;
    }
    match tokio::fs::metadata(&real).await {
        Ok(meta) if meta.is_file() => Lookup::File(Found { path: real, meta }),
        _ => Lookup::NotAFile,
    }
}

/// Reads a file found by [`resolve`]; its path is canonical, so a symlink
/// put in its place since is refused rather than followed.
async fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let mut f = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .await?;
    let mut buf = Vec::with_capacity(f.metadata().await?.len() as usize);
    f.read_to_end(&mut buf).await?;
    Ok(buf)
}

/// Whether `Accept-Encoding` takes gzip: `gzip` (or `*` when gzip is not
/// named) with a non-zero `q`.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut star = None;
    for v in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(v) = v.to_str() else { continue };
        for item in v.to_ascii_lowercase().split(',') {
            let mut it = item.split(';').map(str::trim);
            let coding = it.next().unwrap_or("");
            let q = it
                .find_map(|p| p.strip_prefix("q="))
                .map_or(1.0, |q| q.trim().parse::<f32>().unwrap_or(0.0));
            match coding {
                "gzip" | "x-gzip" => gzip = Some(q > 0.0),
                "*" => star = Some(q > 0.0),
                _ => {}
            }
        }
    }
    gzip.or(star).unwrap_or(false)
}

/// A strong validator from the size and modification time of what is sent.
fn etag(meta: &std::fs::Metadata, gzipped: bool) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let gz = if gzipped { "-gz" } else { "" };
    format!("\"{:x}-{mtime:x}{gz}\"", meta.len())
}

/// `If-None-Match` lists `etag` (compared weakly, as RFC 9110 asks) or is `*`.
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/") == etag)
}

/// By extension; anything unknown is `application/octet-stream`.
fn content_type(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "wasm" => "application/wasm",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        "not found\n",
    )
        .into_response()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A built UI in a temporary directory, next to a secret that must
    /// never be served.
    struct Fixture {
        tmp: tempfile::TempDir,
        ui: Ui,
    }

    impl Fixture {
        fn new() -> Fixture {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path().join("dist");
            std::fs::create_dir_all(root.join("assets/fonts")).unwrap();
            let files: &[(&str, &[u8])] = &[
                ("index.html", b"<!doctype html><title>Cove</title>"),
                ("favicon.ico", b"ICO"),
                ("robots.txt", b"User-agent: *"),
                ("assets/index-abc123.js", b"console.log('cove')"),
                ("assets/index-abc123.js.gz", b"GZIPPED-JS"),
                ("assets/index-abc123.css", b"body{}"),
                ("assets/index-abc123.js.map", b"{}"),
                ("assets/logo-abc123.svg", b"<svg/>"),
                ("assets/fonts/codicon-abc123.ttf", b"TTF"),
            ];
            for (p, c) in files {
                std::fs::write(root.join(p), c).unwrap();
            }
            std::fs::write(tmp.path().join("secret.txt"), b"SECRET").unwrap();
            Fixture {
                ui: Ui::new(&root),
                tmp,
            }
        }

        fn root(&self) -> PathBuf {
            self.tmp.path().join("dist")
        }

        async fn get(&self, path: &str) -> (StatusCode, HeaderMap, Vec<u8>) {
            self.request(Method::GET, path, &[]).await
        }

        async fn request(
            &self,
            method: Method,
            path: &str,
            headers: &[(&'static str, &str)],
        ) -> (StatusCode, HeaderMap, Vec<u8>) {
            let uri: Uri = path.parse().unwrap();
            let mut h = HeaderMap::new();
            for (k, v) in headers {
                h.append(*k, HeaderValue::from_str(v).unwrap());
            }
            let r = self.ui.serve(&method, &uri, &h).await;
            let status = r.status();
            let headers = r.headers().clone();
            let body = axum::body::to_bytes(r.into_body(), usize::MAX)
                .await
                .unwrap();
            (status, headers, body.to_vec())
        }
    }

    fn header<'a>(h: &'a HeaderMap, k: &str) -> &'a str {
        h.get(k).map_or("", |v| v.to_str().unwrap())
    }

    #[tokio::test]
    async fn paths_that_are_not_files_get_index_html() {
        let f = Fixture::new();
        for path in [
            "/",
            "/p/my-app-123456",
            "/p/x/files/src/main.rs?line=3",
            "//",
            "/assetsx/y",
        ] {
            let (s, h, body) = f.get(path).await;
            assert_eq!(s, StatusCode::OK, "{path}");
            assert_eq!(body, b"<!doctype html><title>Cove</title>", "{path}");
            assert_eq!(header(&h, "content-type"), "text/html; charset=utf-8");
            assert_eq!(header(&h, "cache-control"), "no-cache", "{path}");
            assert_eq!(header(&h, "x-content-type-options"), "nosniff");
        }
        // A directory is not a file either.
        std::fs::create_dir(f.root().join("docs")).unwrap();
        let (s, _, body) = f.get("/docs").await;
        assert_eq!((s, body.starts_with(b"<!doctype")), (StatusCode::OK, true));
    }

    #[tokio::test]
    async fn files_have_their_type_and_assets_are_immutable() {
        let f = Fixture::new();
        for (path, ctype, cache) in [
            ("/index.html", "text/html; charset=utf-8", "no-cache"),
            ("/favicon.ico", "image/x-icon", "no-cache"),
            ("/robots.txt", "text/plain; charset=utf-8", "no-cache"),
            (
                "/assets/index-abc123.js",
                "text/javascript; charset=utf-8",
                IMMUTABLE,
            ),
            (
                "/assets/index-abc123.css",
                "text/css; charset=utf-8",
                IMMUTABLE,
            ),
            ("/assets/index-abc123.js.map", "application/json", IMMUTABLE),
            ("/assets/logo-abc123.svg", "image/svg+xml", IMMUTABLE),
            ("/assets/fonts/codicon-abc123.ttf", "font/ttf", IMMUTABLE),
            // Percent-encoded names are decoded.
            (
                "/assets/index%2Dabc123.js",
                "text/javascript; charset=utf-8",
                IMMUTABLE,
            ),
        ] {
            let (s, h, body) = f.get(path).await;
            assert_eq!(s, StatusCode::OK, "{path}");
            assert_eq!(header(&h, "content-type"), ctype, "{path}");
            assert_eq!(header(&h, "cache-control"), cache, "{path}");
            assert_eq!(header(&h, "x-content-type-options"), "nosniff", "{path}");
            assert!(header(&h, "content-encoding").is_empty(), "{path}");
            let want = std::fs::read(
                f.root()
                    .join(path.trim_start_matches('/').replace("%2D", "-")),
            )
            .unwrap();
            assert_eq!(body, want, "{path}");
        }
        assert_eq!(IMMUTABLE, "public, max-age=31536000, immutable");
    }

    #[test]
    fn content_types_by_extension() {
        for (name, t) in [
            ("a.html", "text/html; charset=utf-8"),
            ("a.js", "text/javascript; charset=utf-8"),
            ("a.mjs", "text/javascript; charset=utf-8"),
            ("a.css", "text/css; charset=utf-8"),
            ("a.json", "application/json"),
            ("a.js.map", "application/json"),
            ("a.svg", "image/svg+xml"),
            ("a.png", "image/png"),
            ("a.woff", "font/woff"),
            ("a.woff2", "font/woff2"),
            ("a.ttf", "font/ttf"),
            ("a.ico", "image/x-icon"),
            ("a.wasm", "application/wasm"),
            ("a.txt", "text/plain; charset=utf-8"),
            ("A.PNG", "image/png"),
            ("a.unknown", "application/octet-stream"),
            ("Makefile", "application/octet-stream"),
        ] {
            assert_eq!(content_type(name), t, "{name}");
        }
    }

    #[tokio::test]
    async fn missing_assets_are_404_not_index_html() {
        let f = Fixture::new();
        for path in [
            "/assets/index-old999.js",
            "/assets/",
            "/assets",
            "/assets/fonts",
            "/assets/fonts/",
            "/assets/nope/deeper.css",
        ] {
            let (s, h, body) = f.get(path).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(body, b"not found\n", "{path}");
            assert_eq!(header(&h, "cache-control"), "no-store", "{path}");
        }
    }

    #[tokio::test]
    async fn traversal_is_404() {
        let f = Fixture::new();
        for path in [
            "/../secret.txt",
            "/../Cargo.toml",
            "/%2e%2e/secret.txt",
            "/%2E%2E/x",
            "/assets/../../secret.txt",
            "/assets/%2e%2e/%2e%2e/secret.txt",
            "/assets%2f..%2f..%2fsecret.txt",
            "/p/..",
            "/./index.html",
            "/%2e/index.html",
            "/..%5csecret.txt",
            "/assets%5cindex-abc123.js",
            "/index.html%00.js",
            "/%ff%fe",
        ] {
            let (s, _, body) = f.get(path).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
            assert!(!String::from_utf8_lossy(&body).contains("SECRET"), "{path}");
        }
    }

    #[tokio::test]
    async fn symlinks_out_of_the_directory_are_404() {
        let f = Fixture::new();
        let secret = f.tmp.path().join("secret.txt");
        symlink(&secret, f.root().join("leak.txt")).unwrap();
        symlink(&secret, f.root().join("assets/leak-abc123.js")).unwrap();
        symlink("../../secret.txt", f.root().join("assets/rel-abc123.js")).unwrap();
        symlink(f.tmp.path(), f.root().join("up")).unwrap();
        for path in [
            "/leak.txt",
            "/assets/leak-abc123.js",
            "/assets/rel-abc123.js",
            "/up/secret.txt",
        ] {
            let (s, _, body) = f.get(path).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
            assert!(!String::from_utf8_lossy(&body).contains("SECRET"), "{path}");
        }
        // An index.html that leads out is not served either.
        std::fs::remove_file(f.root().join("index.html")).unwrap();
        symlink(&secret, f.root().join("index.html")).unwrap();
        let (s, _, body) = f.get("/").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(!String::from_utf8_lossy(&body).contains("SECRET"));
        // A symlink that stays inside is followed, and so is a UI
        // directory that is itself a symlink.
        let g = Fixture::new();
        symlink("index-abc123.css", g.root().join("assets/alias-abc123.css")).unwrap();
        let (s, _, body) = g.get("/assets/alias-abc123.css").await;
        assert_eq!((s, body), (StatusCode::OK, b"body{}".to_vec()));
        let link = g.tmp.path().join("dist-link");
        symlink(g.root(), &link).unwrap();
        let via = Fixture {
            ui: Ui::new(&link),
            tmp: tempfile::tempdir().unwrap(),
        };
        let (s, _, body) = via.get("/robots.txt").await;
        assert_eq!((s, body), (StatusCode::OK, b"User-agent: *".to_vec()));
    }

    #[tokio::test]
    async fn a_gz_sibling_is_served_to_clients_that_take_gzip() {
        let f = Fixture::new();
        let js = "/assets/index-abc123.js";
        for (accept, gz) in [
            ("gzip", true),
            ("gzip, deflate, br, zstd", true),
            ("br;q=1.0, GZIP;q=0.5", true),
            ("*", true),
            ("gzip;q=0", false),
            ("gzip;q=0, *", false),
            ("*;q=0", false),
            ("br", false),
            ("identity", false),
        ] {
            let (s, h, body) = f
                .request(Method::GET, js, &[("accept-encoding", accept)])
                .await;
            assert_eq!(s, StatusCode::OK, "{accept}");
            assert_eq!(header(&h, "vary"), "accept-encoding", "{accept}");
            assert_eq!(
                header(&h, "content-type"),
                "text/javascript; charset=utf-8",
                "{accept}"
            );
            assert_eq!(header(&h, "cache-control"), IMMUTABLE, "{accept}");
            if gz {
                assert_eq!(header(&h, "content-encoding"), "gzip", "{accept}");
                assert_eq!(body, b"GZIPPED-JS", "{accept}");
            } else {
                assert!(header(&h, "content-encoding").is_empty(), "{accept}");
                assert_eq!(body, b"console.log('cove')", "{accept}");
            }
        }
        // No header: identity; no sibling: identity, still with Vary.
        let (_, h, body) = f.get(js).await;
        assert_eq!(
            (header(&h, "content-encoding"), &body[..]),
            ("", &b"console.log('cove')"[..])
        );
        let (_, h, body) = f
            .request(
                Method::GET,
                "/assets/index-abc123.css",
                &[("accept-encoding", "gzip")],
            )
            .await;
        assert_eq!(
            (header(&h, "content-encoding"), &body[..]),
            ("", &b"body{}"[..])
        );
        assert_eq!(header(&h, "vary"), "accept-encoding");
        // The index fallback has one too.
        std::fs::write(f.root().join("index.html.gz"), b"GZIPPED-HTML").unwrap();
        let (_, h, body) = f
            .request(Method::GET, "/p/abc", &[("accept-encoding", "gzip")])
            .await;
        assert_eq!(header(&h, "content-encoding"), "gzip");
        assert_eq!(header(&h, "content-type"), "text/html; charset=utf-8");
        assert_eq!(body, b"GZIPPED-HTML");
        // The two encodings have different validators.
        let (_, a, _) = f.get(js).await;
        let (_, b, _) = f
            .request(Method::GET, js, &[("accept-encoding", "gzip")])
            .await;
        assert_ne!(header(&a, "etag"), header(&b, "etag"));
    }

    #[tokio::test]
    async fn head_and_revalidation() {
        let f = Fixture::new();
        let (s, h, body) = f
            .request(Method::HEAD, "/assets/index-abc123.js", &[])
            .await;
        assert_eq!(s, StatusCode::OK);
        assert!(body.is_empty());
        assert_eq!(header(&h, "content-length"), "19");
        assert_eq!(header(&h, "content-type"), "text/javascript; charset=utf-8");
        let (s, h, _) = f.get("/").await;
        assert_eq!(s, StatusCode::OK);
        let etag = header(&h, "etag").to_string();
        assert!(etag.starts_with('"'), "{etag}");
        for inm in [
            etag.clone(),
            format!("W/{etag}"),
            format!("\"x\", {etag}"),
            "*".into(),
        ] {
            let (s, h, body) = f
                .request(Method::GET, "/p/x", &[("if-none-match", &inm)])
                .await;
            assert_eq!(s, StatusCode::NOT_MODIFIED, "{inm}");
            assert!(body.is_empty());
            assert_eq!(header(&h, "etag"), etag);
            assert_eq!(header(&h, "cache-control"), "no-cache");
        }
        // A rebuilt index.html is a new version.
        std::fs::write(
            f.root().join("index.html"),
            b"<!doctype html><title>v2</title>",
        )
        .unwrap();
        let (s, _, body) = f
            .request(Method::GET, "/", &[("if-none-match", &etag)])
            .await;
        assert_eq!(
            (s, body),
            (StatusCode::OK, b"<!doctype html><title>v2</title>".to_vec())
        );
    }

    #[tokio::test]
    async fn without_index_html_the_ui_is_503_with_how_to_build_it() {
        let f = Fixture::new();
        std::fs::remove_file(f.root().join("index.html")).unwrap();
        for path in ["/", "/p/abc"] {
            let (s, h, body) = f.get(path).await;
            assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{path}");
            assert_eq!(header(&h, "content-type"), "text/html; charset=utf-8");
            assert_eq!(header(&h, "cache-control"), "no-store");
            let body = String::from_utf8(body).unwrap();
            assert!(
                body.contains("cd frontend &amp;&amp; npm ci &amp;&amp; npm run build"),
                "{body}"
            );
            assert!(body.contains("scripts/run.sh"), "{body}");
        }
        // Files that are there are still served, missing assets still 404.
        assert_eq!(f.get("/favicon.ico").await.0, StatusCode::OK);
        assert_eq!(f.get("/assets/nope.js").await.0, StatusCode::NOT_FOUND);
        // No directory at all: the same; built later, served at once.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dist");
        let missing = Fixture {
            ui: Ui::new(&dir),
            tmp,
        };
        missing.ui.warn_if_missing().await;
        assert_eq!(missing.get("/").await.0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(missing.get("/assets/a.js").await.0, StatusCode::NOT_FOUND);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("index.html"), b"built").unwrap();
        let (s, _, body) = missing.get("/p/x").await;
        assert_eq!((s, body), (StatusCode::OK, b"built".to_vec()));
    }
}
