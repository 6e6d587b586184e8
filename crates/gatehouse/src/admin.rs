//! The admin listener (`server.admin_listen`): the web console and its
//! API (`gatehouse-console`), `GET /healthz` for load balancers and
//! `GET /metrics` for Prometheus. HTTPS with `console.tls_cert` /
//! `console.tls_key`; plain HTTP only on loopback (the config refuses
//! anything else), with a warning.

use std::sync::Arc;

use anyhow::{anyhow, Result};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use gatehouse_console::{Console, Host, TlsListener};
use gatehouse_control::Trail;
use gatehouse_model::Config;
use gatehouse_ssh::GatewayHandle;
use gatehouse_store::Store;
use tokio::net::TcpListener;

/// What the health and metrics handlers read from.
struct Admin {
    gateway: GatewayHandle,
    store: Store,
    /// The configured sinks' names (their lag is read at scrape time).
    sinks: Vec<String>,
}

/// The console's view of the running gateway.
struct GatewayHost(GatewayHandle);

impl Host for GatewayHost {
    fn config(&self) -> Arc<Config> {
        self.0.config()
    }
    fn trail(&self) -> &dyn Trail {
        self.0.trail()
    }
}

/// Binds `addr`; a failure is one line naming the key.
pub async fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        anyhow!("cannot listen on {addr}: {e}; check server.admin_listen and that no other program uses the port")
    })
}

/// Binds `server.admin_listen` when set and serves it in a task (aborted
/// once the gateway has drained).
pub async fn start(
    config: &Config,
    gateway: &GatewayHandle,
    store: &Store,
    sinks: Vec<String>,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = config.server.admin_listen.as_deref() else {
        return Ok(None);
    };
    let tls = match (&config.console.tls_cert, &config.console.tls_key) {
        (Some(cert), Some(key)) => Some(gatehouse_console::load_tls(cert, key)?),
        _ => None,
    };
    let listener = bind(addr).await?;
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| addr.to_string());
    let scheme = if tls.is_some() { "https" } else { "http" };
    if tls.is_none() {
        eprintln!("gatehouse: warning: the console on {local} is plain HTTP (loopback only); set console.tls_cert and console.tls_key for HTTPS");
    }
    eprintln!("gatehouse: console, API, /healthz and /metrics on {scheme}://{local}");
    tracing::info!(addr = %local, scheme, "admin listening");
    let secure = tls.is_some();
    let listener = TlsListener::new(listener, tls)?;
    let console = Console::new(
        store.clone(),
        Arc::new(GatewayHost(gateway.clone())),
        secure,
    );
    let ops = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(Admin {
            gateway: gateway.clone(),
            store: store.clone(),
            sinks,
        }));
    let app = ops.merge(gatehouse_console::router(console));
    Ok(Some(tokio::spawn(gatehouse_console::serve(listener, app))))
}

/// 200 "ok" while the gateway accepts connections, 503 "draining" once
/// shutdown began (so a balancer sends new users elsewhere).
async fn healthz(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    if admin.gateway.draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn metrics(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    let metrics = admin.gateway.metrics();
    metrics.set_recording_upload(
        gatehouse_store::recordings::s3::upload_lag(),
        gatehouse_store::recordings::s3::failed_uploads(),
    );
    if !admin.sinks.is_empty() {
        match admin.store.head_seq().await {
            Ok(head) => {
                for name in &admin.sinks {
                    match admin.store.sink_cursor(name).await {
                        Ok(cursor) => {
                            let lag = u64::try_from(head.saturating_sub(cursor)).unwrap_or(0);
                            metrics.set_sink_lag(name, lag);
                        }
                        Err(e) => {
                            tracing::warn!(sink = %name, error = %e, "cannot read the sink cursor")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the head of the trail"),
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
}
