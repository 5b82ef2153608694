//! The preview proxy (docs/protocol.md §16): `<id>.<domain>` and
//! `<port>--<id>.<domain>` are forwarded to the app on 127.0.0.1 (or ::1),
//! WebSocket upgrades included. Whatever cannot be forwarded gets a small
//! status page with an `X-Cove-Preview` header the IDE's preview pane reads.
//! The forwarding itself is [`crate::proxy`]'s; this module decides where a
//! host goes and renders the pages.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Response, StatusCode};
use axum::Router;
use tracing::debug;

use crate::activity::Activity;
use crate::metrics::Metrics;
use crate::proxy::{raw_host, Proxy, ProxyError, UPSTREAM_TIMEOUT};

pub struct PreviewConfig {
    /// This workspace's project id, e.g. "demo".
    pub project: String,
    /// The preview domain, e.g. "app.localhost" or "app.example.com".
    pub domain: String,
    /// `$PORT` of the workspace, e.g. 3000.
    pub default_port: u16,
    /// Cove's own ports, never proxied (403).
    pub reserved_ports: Vec<u16>,
    /// "http" or "https", for X-Forwarded-Proto when the request has none.
    pub forwarded_proto: String,
}

const X_COVE_PREVIEW: HeaderName = HeaderName::from_static("x-cove-preview");

struct Shared {
    cfg: Arc<PreviewConfig>,
    activity: Arc<Activity>,
    metrics: Arc<Metrics>,
    /// Lowercased once: `.<domain>` and the project id.
    suffix: String,
    project: String,
    proxy: Proxy,
}

/// The preview listener's whole app: every path, every method.
pub fn router(cfg: Arc<PreviewConfig>, activity: Arc<Activity>, metrics: Arc<Metrics>) -> Router {
    router_with_timeout(cfg, activity, metrics, UPSTREAM_TIMEOUT)
}

/// `router` with a shorter timeout, so tests need not wait 30 s.
fn router_with_timeout(
    cfg: Arc<PreviewConfig>,
    activity: Arc<Activity>,
    metrics: Arc<Metrics>,
    timeout: Duration,
) -> Router {
    let shared = Arc::new(Shared {
        suffix: format!(".{}", cfg.domain.trim_matches('.').to_ascii_lowercase()),
        project: cfg.project.to_ascii_lowercase(),
        proxy: Proxy::new(&cfg.forwarded_proto)
            .with_timeout(timeout)
            .with_activity(activity.clone()),
        cfg,
        activity,
        metrics,
    });
    Router::new().fallback(handle).with_state(shared)
}

/// Why a request was not forwarded; each is one status page.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reject {
    BadHost,
    /// The port as written in the host, which may not fit in a u16.
    BadPort(String),
    UnknownWorkspace,
    ReservedPort(u16),
    NotListening(u16),
    NoResponse(u16),
    UpstreamError(u16),
}

impl From<ProxyError> for Reject {
    fn from(e: ProxyError) -> Self {
        match e {
            ProxyError::NotListening(p) => Reject::NotListening(p),
            ProxyError::NoResponse(p) => Reject::NoResponse(p),
            ProxyError::Upstream(p) => Reject::UpstreamError(p),
        }
    }
}

impl Reject {
    /// The `X-Cove-Preview` value, also the metrics label.
    fn kind(&self) -> &'static str {
        match self {
            Reject::BadHost => "bad-host",
            Reject::BadPort(_) => "bad-port",
            Reject::UnknownWorkspace => "unknown-workspace",
            Reject::ReservedPort(_) => "reserved-port",
            Reject::NotListening(_) => "not-listening",
            Reject::NoResponse(_) => "no-response",
            Reject::UpstreamError(_) => "upstream-error",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Reject::BadHost | Reject::BadPort(_) => StatusCode::BAD_REQUEST,
            Reject::UnknownWorkspace => StatusCode::NOT_FOUND,
            Reject::ReservedPort(_) => StatusCode::FORBIDDEN,
            Reject::NotListening(_) | Reject::UpstreamError(_) => StatusCode::BAD_GATEWAY,
            Reject::NoResponse(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn headline(&self) -> String {
        match self {
            Reject::BadHost => "This is not a Cove preview address.".to_string(),
            Reject::BadPort(p) => format!("Port {p} is not a valid port."),
            Reject::UnknownWorkspace => "No such workspace here.".to_string(),
            Reject::ReservedPort(p) => {
                format!("Port {p} is used by Cove and cannot be previewed.")
            }
            Reject::NotListening(p) => format!("Nothing is listening on port {p} yet."),
            Reject::NoResponse(p) => format!("The app on port {p} is not responding."),
            Reject::UpstreamError(p) => format!("The app on port {p} closed the connection."),
        }
    }

    /// What to do about it, for the not-listening page. `$PORT` is only
    /// mentioned when it is the port asked for, or it would mislead.
    fn hint(&self, default_port: u16) -> Option<String> {
        match self {
            Reject::NotListening(p) => {
                let env = if *p == default_port { " ($PORT)" } else { "" };
                Some(format!(
                    "Start your app so that it listens on port {p}{env}."
                ))
            }
            _ => None,
        }
    }

    fn into_response(self, html: bool, default_port: u16) -> Response<Body> {
        let headline = self.headline();
        let hint = self.hint(default_port);
        let retry = matches!(self, Reject::NotListening(_));
        let (content_type, body) = if html {
            let refresh = if retry {
                "<meta http-equiv=\"refresh\" content=\"2\">\n"
            } else {
                ""
            };
            let detail = match &hint {
                Some(h) => format!(
                    "<p>{}</p>\n<p>This page reloads by itself.</p>\n",
                    escape_html(h).replace("$PORT", "<code>$PORT</code>")
                ),
                None => String::new(),
            };
            let h = escape_html(&headline);
            (
                "text/html; charset=utf-8",
                format!(
                    "<!doctype html>\n<html><head>\n<meta charset=\"utf-8\">\n{refresh}\
                     <meta name=\"viewport\" content=\"width=device-width\">\n\
                     <title>{h}</title>\n\
                     <style>body{{font-family:system-ui,sans-serif;max-width:40em;\
                     margin:4em auto;padding:0 1em;color:#333}}</style>\n\
                     </head><body>\n<h1>{h}</h1>\n{detail}</body></html>\n"
                ),
            )
        } else {
            let line = match &hint {
                Some(h) => format!("{headline} {h}\n"),
                None => format!("{headline}\n"),
            };
            ("text/plain; charset=utf-8", line)
        };
        let mut resp = Response::new(Body::from(body));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(X_COVE_PREVIEW, HeaderValue::from_static(self.kind()));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if retry {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        }
        resp
    }
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

async fn handle(State(sh): State<Arc<Shared>>, req: Request) -> Response<Body> {
    sh.activity.touch_preview();
    let html = accepts_html(req.headers());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let raw_host = raw_host(&req);
    let outcome = match raw_host.as_deref() {
        None => Err(Reject::BadHost),
        Some(raw) => match target(&sh, &host_name(raw)) {
            Ok(port) => sh.proxy.forward(req, port, raw).await.map_err(Reject::from),
            Err(rej) => Err(rej),
        },
    };
    let (result, resp) = match outcome {
        Ok(resp) => ("forwarded", resp),
        Err(rej) => (rej.kind(), rej.into_response(html, sh.cfg.default_port)),
    };
    sh.metrics.preview_request(result);
    debug!(
        %method,
        host = raw_host.as_deref().unwrap_or(""),
        path,
        result,
        status = resp.status().as_u16(),
        "preview request"
    );
    resp
}

/// The status page for a request the proxy could not forward to `port`,
/// as the preview renders it; the controller's gateway answers the same.
/// `html` is whether the client accepts it ([`accepts_html`]).
pub fn failure_page(e: ProxyError, html: bool, port: u16) -> Response<Body> {
    Reject::from(e).into_response(html, port)
}

/// Whether the client takes `text/html` (a browser tab), or gets plain text.
pub fn accepts_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/html"))
}

/// Lowercased, without `:port`, and without the trailing dot of a fully
/// qualified name (browsers send it as typed).
fn host_name(raw: &str) -> String {
    let name = raw.trim();
    let name = name.split_once(':').map_or(name, |(n, _)| n);
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// The port a host name is previewed on, or why it is not.
fn target(sh: &Shared, host: &str) -> Result<u16, Reject> {
    let label = host.strip_suffix(&sh.suffix).ok_or(Reject::BadHost)?;
    if label.is_empty() || label.contains('.') {
        return Err(Reject::BadHost);
    }
    let (port, id) = match split_port_form(label) {
        Some((digits, id)) => (Some(digits), id),
        None => (None, label),
    };
    if id.is_empty() {
        return Err(Reject::BadHost);
    }
    let port = match port {
        Some(digits) => parse_port(digits).ok_or_else(|| Reject::BadPort(digits.to_string()))?,
        None => sh.cfg.default_port,
    };
    if id != sh.project {
        return Err(Reject::UnknownWorkspace);
    }
    if sh.cfg.reserved_ports.contains(&port) {
        return Err(Reject::ReservedPort(port));
    }
    Ok(port)
}

/// `^[0-9]+--` means the port form, always: `(digits, rest after "--")`.
fn split_port_form(label: &str) -> Option<(&str, &str)> {
    let n = label.bytes().take_while(u8::is_ascii_digit).count();
    if n == 0 {
        return None;
    }
    let rest = label[n..].strip_prefix("--")?;
    Some((&label[..n], rest))
}

/// 1–65535, decimal, no leading zero.
fn parse_port(digits: &str) -> Option<u16> {
    if digits.starts_with('0') || digits.len() > 5 {
        return None;
    }
    digits.parse::<u16>().ok().filter(|p| *p != 0)
}

#[cfg(test)]
mod tests;
