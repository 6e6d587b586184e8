//! The admin HTTP listener (`server.admin_listen`, loopback only, plain
//! HTTP): `GET /healthz` for load balancers and `GET /metrics` for
//! Prometheus. The web console will be served here too.

use std::sync::Arc;

use anyhow::{anyhow, Result};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use gatehouse_ssh::GatewayHandle;
use gatehouse_store::Store;
use tokio::net::TcpListener;

/// What the handlers read from.
struct Admin {
    gateway: GatewayHandle,
    store: Store,
    /// The configured sinks' names (their lag is read at scrape time).
    sinks: Vec<String>,
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
    addr: Option<&str>,
    gateway: &GatewayHandle,
    store: &Store,
    sinks: Vec<String>,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let listener = bind(addr).await?;
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| addr.to_string());
    eprintln!("gatehouse: admin (/healthz, /metrics) on http://{local}");
    tracing::info!(addr = %local, "admin listening");
    Ok(Some(tokio::spawn(serve(
        listener,
        gateway.clone(),
        store.clone(),
        sinks,
    ))))
}

/// Serves the admin endpoints on `listener` until the task is aborted.
pub async fn serve(
    listener: TcpListener,
    gateway: GatewayHandle,
    store: Store,
    sinks: Vec<String>,
) {
    let state = Arc::new(Admin {
        gateway,
        store,
        sinks,
    });
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the admin listener stopped");
    }
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
