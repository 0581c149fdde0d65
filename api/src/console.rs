//! The COT web console: static HTML, CSS and JavaScript modules of our own (in
//! `api/console/`), compiled into the binary so that `sentinella run` serves it with no
//! separate front-end build and no network at run time.
//!
//! - `GET /` and `GET /console` redirect to `/console/`.
//! - `GET /console/` is the single page (`index.html`); the page routes with the URL
//!   fragment (`#/inbox`, `#/patients/3`, `#/devices/bp-1`), so the server only ever serves
//!   the files below.
//! - `GET /console/{file}` serves one of [`FILES`] with its content type; anything else is 404.
//!
//! The routes are public in the access policy (`http::policy::ROUTES`): static files, no
//! patient data. Every response of [`crate::http::app`] carries a strict
//! `Content-Security-Policy` (no inline script or style, no other origin), so the files never
//! use inline handlers or `style` attributes. The page talks to the API under `/api/v1` with
//! the bearer token it got at login.

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::http::AppState;

const JS: &str = "text/javascript; charset=utf-8";

/// The console's files: name under `/console/`, content type, content.
pub const FILES: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../console/index.html"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../console/style.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../console/favicon.svg"),
    ),
    ("app.js", JS, include_bytes!("../console/app.js")),
    ("api.js", JS, include_bytes!("../console/api.js")),
    ("dom.js", JS, include_bytes!("../console/dom.js")),
    ("i18n.js", JS, include_bytes!("../console/i18n.js")),
    ("i18n-it.js", JS, include_bytes!("../console/i18n-it.js")),
    ("i18n-en.js", JS, include_bytes!("../console/i18n-en.js")),
    ("sse.js", JS, include_bytes!("../console/sse.js")),
    ("ui.js", JS, include_bytes!("../console/ui.js")),
    ("alerts.js", JS, include_bytes!("../console/alerts.js")),
    ("inbox.js", JS, include_bytes!("../console/inbox.js")),
    ("patients.js", JS, include_bytes!("../console/patients.js")),
    ("patient.js", JS, include_bytes!("../console/patient.js")),
    ("chart.js", JS, include_bytes!("../console/chart.js")),
    ("careplan.js", JS, include_bytes!("../console/careplan.js")),
    ("flags.js", JS, include_bytes!("../console/flags.js")),
    ("device.js", JS, include_bytes!("../console/device.js")),
    ("contacts.js", JS, include_bytes!("../console/contacts.js")),
    ("worklist.js", JS, include_bytes!("../console/worklist.js")),
];

/// The console's routes, merged into [`crate::http::app`].
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(|| async { file("index.html") }))
        .route(
            "/console/{file}",
            get(|Path(name): Path<String>| async move { file(&name) }),
        )
}

/// The file `name` with its content type, or 404.
fn file(name: &str) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => {
            ([(header::CONTENT_TYPE, *content_type)], *body).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "not found",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The console must run under its CSP: no inline script, handler or style in the HTML,
    /// and every module it imports must be served.
    #[test]
    fn files_fit_the_policy() {
        let html = std::str::from_utf8(FILES[0].2).expect("utf-8");
        assert!(!html.contains("style="), "no style attributes");
        assert!(!has_inline_handler(html), "no inline event handlers");
        for script in html.split("<script").skip(1) {
            assert!(script.contains("src="), "no inline script");
        }
        for (name, _, body) in FILES {
            let text = std::str::from_utf8(body).expect("utf-8");
            if name.ends_with(".js") {
                for line in text.lines().filter(|l| l.starts_with("import ")) {
                    let Some(from) = line.split(" from ").nth(1) else {
                        continue;
                    };
                    let target = from.trim_matches(|c| c == '\'' || c == '"' || c == ';');
                    let target = target.trim_start_matches("./");
                    assert!(
                        FILES.iter().any(|(n, _, _)| *n == target),
                        "{name} imports {target}, which is not served"
                    );
                }
                assert!(
                    !text.contains("innerHTML"),
                    "{name}: build DOM nodes, not HTML"
                );
            }
        }
    }

    /// Whether the HTML has an attribute like ` onclick=`.
    fn has_inline_handler(html: &str) -> bool {
        html.match_indices(" on").any(|(at, _)| {
            let rest = &html[at + 3..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        })
    }

    #[test]
    fn unknown_files_are_not_found() {
        assert_eq!(file("../Cargo.toml").status(), StatusCode::NOT_FOUND);
        assert_eq!(file("app.js").status(), StatusCode::OK);
    }
}
