//! The web page at `/`: one self-contained HTML file (no build step, no external assets), so
//! it works offline. It drives the A1111 API of the same server.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("index.html");

pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Nothing on the page comes from elsewhere; say so to the browser too.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'",
            ),
        ],
        PAGE,
    )
        .into_response()
}
