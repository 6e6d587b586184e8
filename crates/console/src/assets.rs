//! The console's static files, built into the binary: our own script and
//! style, and the vendored asciinema-player (Apache-2.0; see
//! `assets/vendor/README.md` and `scripts/vendor-assets.sh`).

use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::Console;

const FILES: &[(&str, &str, &[u8])] = &[
    (
        "/assets/console.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/console.js"),
    ),
    (
        "/assets/console.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/console.css"),
    ),
    (
        "/assets/asciinema-player.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/vendor/asciinema-player/asciinema-player.min.js"),
    ),
    (
        "/assets/asciinema-player.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/vendor/asciinema-player/asciinema-player.css"),
    ),
    (
        "/assets/LICENSE.asciinema-player",
        "text/plain; charset=utf-8",
        include_bytes!("../assets/vendor/asciinema-player/LICENSE"),
    ),
];

pub fn routes() -> Router<Arc<Console>> {
    let mut r = Router::new();
    for (path, mime, body) in FILES {
        r = r.route(
            path,
            get(move || async move {
                (
                    [
                        (header::CONTENT_TYPE, *mime),
                        (header::CACHE_CONTROL, "public, max-age=3600"),
                    ],
                    *body,
                )
                    .into_response()
            }),
        );
    }
    r
}
