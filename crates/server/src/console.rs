//! The web console: static files (`crates/server/console/`) embedded in the binary at build
//! time and served at `/console/` without a token. The console is a client of the API like any
//! other: its own calls carry the signed-in principal's token, and every decision is the API's.
//!
//! Every answer carries a strict Content Security Policy ([`CSP`]): scripts only from the
//! console's own files (no inline script, no `eval`), connections only to this origin, no
//! framing, no forms, no `<base>`. Styles allow `'unsafe-inline'` because xterm.js's renderer
//! writes the terminal's theme and cell sizes into `<style>` elements it creates; a style
//! cannot run code.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;

/// The console's Content Security Policy.
pub const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data:; \
                       style-src 'self' 'unsafe-inline'; font-src 'self'; frame-ancestors 'none'; \
                       base-uri 'none'; form-action 'none'";

/// One embedded file: its path under `/console/`, its content type and its bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $type:expr) => {
        Asset { path: $path, content_type: $type, bytes: include_bytes!(concat!("../console/", $path)) }
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file of the console (a unit test checks that the directory holds no other).
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.css", CSS),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("views.js", JS),
    asset!("terminal.js", JS),
    asset!("vendor/xterm/xterm.mjs", JS),
    asset!("vendor/xterm/xterm.css", CSS),
    asset!("vendor/xterm/LICENSE", "text/plain; charset=utf-8"),
    asset!("vendor/xterm/VERSION", "text/plain; charset=utf-8"),
];

/// The console's routes: `/console` redirects to `/console/`, which is `index.html`;
/// `/console/<path>` is the file, or the usual `404 not_found`. Every answer under them, a
/// `405` for another method and a `400` for a path that is not UTF-8 included, carries the
/// console's headers ([`headers`], a layer of the whole application, outside its fallbacks).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/console", get(|| async { redirect() }))
        .route("/console/", get(|| async { file("index.html") }))
        .route("/console/{*path}", get(|Path(path): Path<String>| async move { file(&path) }))
        .merge(crate::console_oidc::routes())
}

/// Middleware: the console's headers ([`secure`]) on every answer to a request for `/console`
/// or below it, whichever handler or fallback made the answer.
pub async fn headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let path = req.uri().path();
    let console = path == "/console" || path.starts_with("/console/");
    let r = next.run(req).await;
    if console {
        secure(r)
    } else {
        r
    }
}

fn redirect() -> Response {
    let mut r = StatusCode::PERMANENT_REDIRECT.into_response();
    r.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/console/"));
    secure(r)
}

fn file(path: &str) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.path == path) else {
        return secure(ApiError::NotFound("not found".into()).into_response());
    };
    let mut r = asset.bytes.into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    // The files change with the binary; a browser asks again rather than keep an old console.
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secure(r)
}

/// The headers of every console answer: the CSP, no sniffing, no referrer, no framing.
pub(crate) fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_the_console_directory_is_served_and_typed() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
        let mut found = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("console dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    found.push(path.strip_prefix(&root).expect("under root").to_string_lossy().into_owned());
                }
            }
        }
        found.sort();
        let mut served: Vec<String> = ASSETS.iter().map(|a| a.path.to_owned()).collect();
        served.sort();
        assert_eq!(found, served, "crates/server/console and the ASSETS table differ");
        for a in ASSETS {
            let want = match a.path.rsplit('.').next() {
                Some("js" | "mjs") => JS,
                Some("css") => CSS,
                Some("html") => "text/html; charset=utf-8",
                _ => "text/plain; charset=utf-8",
            };
            assert_eq!(a.content_type, want, "{}", a.path);
        }
    }

    #[test]
    fn no_page_of_the_console_has_inline_script_or_style_attributes() {
        for a in ASSETS.iter().filter(|a| a.path.ends_with(".html")) {
            let text = std::str::from_utf8(a.bytes).expect("utf-8");
            for (i, _) in text.match_indices("<script") {
                let tag = &text[i..i + text[i..].find('>').expect("tag ends")];
                assert!(tag.contains(" src="), "{}: an inline script: {tag}", a.path);
            }
            // An event handler attribute: ` on<letters>=`.
            for (i, _) in text.match_indices(" on") {
                let name: String = text[i + 3..].chars().take_while(char::is_ascii_alphabetic).collect();
                let after = text[i + 3 + name.len()..].trim_start();
                assert!(name.is_empty() || !after.starts_with('='), "{}: an event handler attribute on{name}", a.path);
            }
            assert!(!text.contains("style=\""), "{}: an inline style attribute", a.path);
        }
    }
}
