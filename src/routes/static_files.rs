//! `GET /static/...`: the stylesheet and images, compiled into the binary.

use poem::http::{header, StatusCode};
use poem::web::Path;
use poem::{handler, Response};

const FILES: &[(&str, &str, &[u8])] = &[
    ("style.css", "text/css; charset=utf-8", include_bytes!("../../static/style.css")),
    ("favicon.svg", "image/svg+xml", include_bytes!("../../static/favicon.svg")),
    // The one script (passkeys), allowed only on pages with a passkey button (PASSKEY_CSP).
    ("passkey.js", "text/javascript; charset=utf-8", include_bytes!("../../static/passkey.js")),
];

#[handler]
pub async fn serve(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, mime, body)) => {
            Response::builder().content_type(*mime).header(header::CACHE_CONTROL, "public, max-age=3600").body(*body)
        }
        None => super::error_page(StatusCode::NOT_FOUND),
    }
}
