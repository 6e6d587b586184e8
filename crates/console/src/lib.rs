//! The web console and its JSON API, served on `server.admin_listen`.
//!
//! Pages are rendered on the server ([`html`]); the only scripts are our
//! own `console.js` and the vendored asciinema-player, both served from
//! `/assets` (the Content-Security-Policy allows no inline script). Who
//! may see and do what is the policy's (`policy::console`); every action
//! is one call into the control layer as the signed-in user
//! (`Channel::Web`, `Authority::User`), so the console holds no
//! authorisation of its own beyond choosing what to show.
//!
//! **Invariants:** every page that shows a recording or audit rows writes
//! its `recording.access` / `audit.read` event first (so does the
//! recording's integrity check, `recording.access` with action `verify`);
//! a recording whose SHA-256 is not the one `session.end` recorded is
//! shown as TAMPERED with both digests (the session page answers with
//! the line "checking" and console.js fills it from
//! `/sessions/ID/integrity`, so the page does not wait for the hash); every
//! state-changing request carries the session's anti-CSRF token and a
//! same-origin `Origin`; an error is a 4xx page (or JSON under
//! `/api/v1`) with one sentence, never internals.

mod actions;
mod api;
mod assets;
mod audit;
mod extract;
mod html;
mod sessions;
mod signin;
mod sso;
mod tls;

use std::sync::{Arc, Mutex};

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use gatehouse_control::{Actor, Channel, ControlError, Trail};
use gatehouse_model::Config;
use gatehouse_store::{Store, StoreError};

pub use signin::Viewer;
pub use tls::{load_tls, TlsError, TlsListener};

/// What the console needs from the process that hosts it: the config in
/// force (it is reloaded on SIGHUP) and the audit trail that also runs
/// the alert rules.
pub trait Host: Send + Sync + 'static {
    fn config(&self) -> Arc<Config>;
    fn trail(&self) -> &dyn Trail;
}

/// The console's shared state.
pub struct Console {
    store: Store,
    host: Arc<dyn Host>,
    /// Serving HTTPS: cookies are `Secure` and `__Host-` prefixed.
    tls: bool,
    /// Sign-in failures per source address (reset on success).
    failures: Mutex<std::collections::HashMap<String, u32>>,
    /// Recordings whose SHA-256 matched `session.end`, with the identity
    /// of the file that was hashed (see `sessions::integrity_json`).
    verified: Mutex<std::collections::HashMap<String, (sessions::FileId, String)>>,
}

impl Console {
    pub fn new(store: Store, host: Arc<dyn Host>, tls: bool) -> Arc<Console> {
        Arc::new(Console {
            store,
            host,
            tls,
            failures: Mutex::new(Default::default()),
            verified: Mutex::new(Default::default()),
        })
    }

    fn config(&self) -> Arc<Config> {
        self.host.config()
    }

    /// The operations as `viewer`, from the web.
    fn actor(&self, viewer: &Viewer) -> Actor {
        let mut actor = Actor::user_in_session(&viewer.user, "-", Some(&viewer.source_ip));
        actor.channel = Channel::Web;
        actor.session_id = None;
        if let Some(token) = &viewer.token_id {
            actor = actor.with("token_id", token.clone());
        }
        actor
    }
}

/// Every route of the console and the API (the host adds `/healthz` and
/// `/metrics`).
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .merge(signin::routes())
        .merge(sessions::routes())
        .merge(audit::routes())
        .merge(actions::routes())
        .nest("/api/v1", api::routes())
        .merge(assets::routes())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(64 * 1024))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(console)
}

/// Serves `app` on `listener` until the task is aborted.
pub async fn serve(listener: TlsListener, app: Router) {
    let service = app.into_make_service_with_connect_info::<tls::Peer>();
    if let Err(e) = axum::serve(listener, service).await {
        tracing::error!(error = %e, "the console listener stopped");
    }
}

async fn not_found() -> Fail {
    Fail::page(StatusCode::NOT_FOUND, "There is no such page.")
}

const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The same headers on every answer: CSP without inline scripts, no
/// framing, no sniffing, a referrer only to the console itself (a
/// `no-referrer` policy would make browsers send `Origin: null` with
/// forms, which the CSRF check refuses), and nothing kept by shared caches
/// (pages and recordings are private; the assets may be cached).
async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-store"),
        );
    }
    res
}

/// A request that cannot be answered: one sentence for the person, as a
/// page or (under `/api/v1`) as `{"error": "..."}`.
#[derive(Debug)]
pub struct Fail {
    status: StatusCode,
    message: String,
    json: bool,
}

impl Fail {
    fn page(status: StatusCode, message: impl Into<String>) -> Fail {
        Fail {
            status,
            message: message.into(),
            json: false,
        }
    }

    fn bad(message: impl Into<String>) -> Fail {
        Fail::page(StatusCode::BAD_REQUEST, message)
    }

    fn forbidden(message: impl Into<String>) -> Fail {
        Fail::page(StatusCode::FORBIDDEN, message)
    }

    fn not_found(message: impl Into<String>) -> Fail {
        Fail::page(StatusCode::NOT_FOUND, message)
    }

    fn json(mut self) -> Fail {
        self.json = true;
        self
    }
}

impl From<ControlError> for Fail {
    fn from(e: ControlError) -> Fail {
        let status = match &e {
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::Refused(_) => StatusCode::FORBIDDEN,
            ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
            ControlError::Audit(_) | ControlError::Store(_) => {
                tracing::error!(error = %e, "console operation failed");
                return Fail::page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The audit store cannot be written or read right now, so nothing was done; try again shortly or tell your administrator.",
                );
            }
        };
        Fail::page(status, e.to_string())
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        Fail::from(ControlError::Store(e))
    }
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        if self.json {
            return (
                self.status,
                axum::Json(serde_json::json!({"error": self.message})),
            )
                .into_response();
        }
        let title = self
            .status
            .canonical_reason()
            .unwrap_or("Error")
            .to_string();
        let body = format!(
            "<section class=\"error\"><h1>{}</h1><p id=\"error\">{}</p><p><a href=\"/\">Back to the console</a></p></section>",
            html::esc(&title),
            html::esc(&self.message)
        );
        (self.status, html::layout(&title, None, &body)).into_response()
    }
}

type Page = Result<Response, Fail>;
