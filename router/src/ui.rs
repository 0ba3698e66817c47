//! The live page: this node's view of the mesh, drawn in the browser from the report
//! ([`crate::report`]) the driver builds at most once a second while the page asks for it. Read-only, served on the metrics
//! listener (docs/report.md): `/` the page, `/ui/app.js` and `/ui/style.css` its assets,
//! `/report.json` the document it polls.
//!
//! The assets are compiled into the binary (`router/src/ui/`), and every answer carries a
//! Content-Security-Policy that lets the page load only those, from this origin: no CDN, no
//! inline script, no request leaving the page. The JavaScript draws with `textContent` and
//! SVG attributes only (names are chosen by other nodes: never markup).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");

/// The policy every answer carries: this origin's scripts, styles and fetches only; no
/// frames, forms, plugins or base changes.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// When the page is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UiMode {
    /// When the metrics listener is on a loopback address (the default, 127.0.0.1:6787).
    #[default]
    Auto,
    /// Whatever the metrics address: an opt-in, since the page shows every member's key,
    /// endpoints and blocks to whoever reaches it.
    On,
    /// Never.
    Off,
}

impl UiMode {
    /// Whether the page is served beside metrics listening on `metrics`.
    pub fn serves_on(self, metrics: std::net::SocketAddr) -> bool {
        match self {
            UiMode::Auto => metrics.ip().is_loopback(),
            UiMode::On => true,
            UiMode::Off => false,
        }
    }
}

impl std::fmt::Display for UiMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UiMode::Auto => "auto",
            UiMode::On => "on",
            UiMode::Off => "off",
        })
    }
}

impl std::str::FromStr for UiMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(UiMode::Auto),
            "on" => Ok(UiMode::On),
            "off" => Ok(UiMode::Off),
            _ => Err(format!("{s:?}: expected auto, on or off")),
        }
    }
}

/// The report for the page, as JSON, shared between the driver and the HTTP task. The
/// driver builds it only while someone asks ([`Published::wanted`]): at 500 members the links
/// alone are 125,000 entries, not worth building every second for nobody.
#[derive(Debug, Clone)]
pub struct Published {
    report: Arc<tokio::sync::watch::Sender<Option<Arc<str>>>>,
    asked: Arc<AtomicBool>,
}

impl Default for Published {
    fn default() -> Self {
        Published {
            report: Arc::new(tokio::sync::watch::Sender::new(None)),
            asked: Arc::default(),
        }
    }
}

/// How long a request for the report waits for the driver's next one (it builds at most
/// once a second).
const FRESH_WAIT: Duration = Duration::from_secs(2);

impl Published {
    /// Whether the page asked for a report since the last [`Published::update`].
    pub fn wanted(&self) -> bool {
        self.asked.load(Ordering::Relaxed)
    }

    /// Replaces the report.
    pub fn update(&self, report: &crate::report::MeshReport) {
        let json: Arc<str> = serde_json::to_string(report)
            .expect("reports serialize")
            .into();
        self.asked.store(false, Ordering::Relaxed);
        self.report.send_replace(Some(json));
    }

    /// A report built after this call, or the last one if none comes within [`FRESH_WAIT`].
    async fn fresh(&self) -> Option<Arc<str>> {
        let mut next = self.report.subscribe();
        next.mark_unchanged();
        self.asked.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(FRESH_WAIT, next.changed()).await;
        next.borrow().clone()
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The page's routes, to merge into the metrics router.
pub fn routes<S: Clone + Send + Sync + 'static>(published: Published) -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route(
            "/report.json",
            get(|State(p): State<Published>| async move {
                match p.fresh().await {
                    Some(json) => (
                        [
                            (header::CONTENT_TYPE, "application/json"),
                            (header::CACHE_CONTROL, "no-store"),
                        ],
                        json.to_string(),
                    )
                        .into_response(),
                    None => (StatusCode::SERVICE_UNAVAILABLE, "no report yet\n").into_response(),
                }
            }),
        )
        .with_state(published)
        .layer(axum::middleware::map_response(secure_headers))
}

/// Headers on every answer of the page: the policy, no MIME sniffing, no referrer.
async fn secure_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page loads nothing from elsewhere: no absolute URL in any asset, and no inline
    /// script or style the policy would refuse.
    #[test]
    fn assets_name_nothing_outside_this_origin() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("app.js", APP_JS),
            ("style.css", STYLE_CSS),
        ] {
            for needle in ["http://", "https://", "//cdn", "innerHTML", "eval("] {
                // The SVG namespace is an identifier, not a request.
                let hits = text
                    .match_indices(needle)
                    .filter(|(i, _)| !text[*i..].starts_with("http://www.w3.org/2000/svg"))
                    .count();
                assert_eq!(hits, 0, "{name} contains {needle}");
            }
        }
        assert!(!INDEX_HTML.contains("<script>"), "inline script");
        assert!(!INDEX_HTML.contains("style="), "inline style");
        assert!(INDEX_HTML.contains(r#"<script src="/ui/app.js""#));
    }

    /// The driver builds a report only after the page asked, and the page gets that one,
    /// not the stale one before it.
    #[tokio::test]
    async fn a_request_waits_for_the_report_built_after_it() {
        use crate::report::*;
        let report = |name: &str| MeshReport {
            schema: SCHEMA_VERSION,
            node: ReportingNode {
                id: "A".into(),
                name: name.into(),
                version: "test".into(),
                listen: "198.18.0.1:6786".parse().unwrap(),
                pod_mtu: 1375,
            },
            members: vec![],
            links: vec![],
            tunnels: vec![],
            drops: Default::default(),
        };
        let p = Published::default();
        p.update(&report("stale"));
        assert!(!p.wanted(), "nobody asked yet");
        let driver = p.clone();
        let built = tokio::spawn(async move {
            while !driver.wanted() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            driver.update(&report("fresh"));
        });
        let json = p.fresh().await.expect("a report");
        assert!(json.contains("\"name\":\"fresh\""), "{json}");
        built.await.unwrap();
        assert!(!p.wanted(), "answered");
    }

    #[test]
    fn the_page_is_served_on_loopback_unless_opted_in() {
        let lo: std::net::SocketAddr = "127.0.0.1:6787".parse().unwrap();
        let any: std::net::SocketAddr = "0.0.0.0:6787".parse().unwrap();
        assert!(UiMode::Auto.serves_on(lo) && !UiMode::Auto.serves_on(any));
        assert!(UiMode::On.serves_on(any) && !UiMode::Off.serves_on(lo));
        assert_eq!("on".parse::<UiMode>(), Ok(UiMode::On));
        assert!("yes".parse::<UiMode>().is_err());
    }
}
