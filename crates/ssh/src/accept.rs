//! Accepting connections: the gateway's listener with its startup
//! limits and flood reports, the tasks that carry out kill requests and
//! flush the audit spool, and one task per connection that runs it to its
//! end and writes `session.end`. The connection's own work is the
//! handler's ([`crate::handler`]).
//!
//! A connection is one *session* in the audit trail: it starts when the
//! gateway has connected to the target (`session.start`) and ends when the
//! user's connection closes (`session.end`), whatever channels ran inside.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use gatehouse_model::{Config, ConnectRequest, EventType, NewEvent, Outcome, Severity};
use gatehouse_store::Store;
use russh::keys::PrivateKey;
use russh::server::{self, Msg};
use russh::{ChannelId, ChannelStream, Disconnect, MethodKind, MethodSet};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::audit::Audit;
use crate::auth::{block_if_over, grace_penalty, Authenticator};
use crate::handler::Conn;
use crate::keys::load_private_key;
use crate::limits::{Counter, FloodNotices, Killable, NoPlace, Queue, SourceGate, Startup};
use crate::proxy::{Header, ProxyError};
use crate::session::{end_connection, truncate, ConnState, Events, Jump, LiveConn, Shared};
use crate::SshError;

/// Loads `upstream.ca_key` when configured.
fn load_upstream_ca(config: &Config) -> Result<Option<Arc<PrivateKey>>, SshError> {
    match &config.upstream.ca_key {
        Some(path) => Ok(Some(Arc::new(load_private_key(path, "upstream.ca_key")?))),
        None => Ok(None),
    }
}

/// The gateway, bound to its port and ready to [`Gateway::run`].
pub struct Gateway {
    shared: Arc<Shared>,
    listener: TcpListener,
}

/// Controls a running gateway: reload its configuration, shut it down.
#[derive(Clone)]
pub struct GatewayHandle {
    shared: Arc<Shared>,
}

impl GatewayHandle {
    /// Swaps in a new configuration. Running sessions keep the policy they
    /// were authorised with; new connections use the new one.
    pub fn reload(&self, config: Config) -> Result<(), SshError> {
        let key = Arc::new(load_private_key(&config.upstream.key, "upstream.key")?);
        let ca = load_upstream_ca(&config)?;
        let alerts =
            gatehouse_audit::alert::Alerts::new(&config.alerts).map_err(SshError::Config)?;
        if let Ok(mut k) = self.shared.upstream_key.write() {
            *k = key;
        }
        if let Ok(mut c) = self.shared.upstream_ca.write() {
            *c = ca;
        }
        let config = Arc::new(config);
        self.shared.audit.reload(alerts, config.clone());
        if let Ok(mut c) = self.shared.config.write() {
            *c = config;
        }
        Ok(())
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.shared.config()
    }

    /// The audit trail (which also runs the alert rules), for operations
    /// other surfaces perform.
    pub fn trail(&self) -> &dyn gatehouse_control::Trail {
        &self.shared.audit
    }

    /// Asks the gateway to stop: sessions get `reason`, the accept loop
    /// ends, and [`Gateway::run`] returns once every connection has ended.
    pub fn shutdown(&self, reason: &str) {
        let _ = self.shared.shutdown.send(Some(reason.to_string()));
    }

    pub fn active_connections(&self) -> usize {
        self.shared.live.lock().map(|l| l.len()).unwrap_or(0)
    }

    /// Live connections whose session reached its target
    /// (`session.start` written, the connection not yet gone).
    pub fn active_sessions(&self) -> usize {
        self.shared
            .live
            .lock()
            .map(|l| {
                l.values()
                    .filter(|c| c.state.started.load(Ordering::Acquire))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Whether shutdown began: the gateway accepts no more connections.
    pub fn draining(&self) -> bool {
        self.shared.shutdown.borrow().is_some()
    }

    /// The gateway's metrics, with the gauges (`sessions_active`,
    /// `audit_spooled`, `startups`) brought up to date.
    pub fn metrics(&self) -> Arc<gatehouse_metrics::Metrics> {
        let metrics = self.shared.audit.metrics.clone();
        metrics.set_sessions_active(self.active_sessions() as u64);
        metrics.set_audit_spooled(self.shared.audit.spooled() as u64);
        let (holding, waiting) = self.shared.unauth_by_source.totals();
        metrics.set_startups(holding as u64, waiting as u64);
        metrics
    }
}

impl Gateway {
    /// Loads the host and upstream keys and binds `server.listen`.
    pub async fn bind(config: Config, store: Store) -> Result<Gateway, SshError> {
        let host_key = load_private_key(&config.server.host_key, "server.host_key")?;
        let upstream_key = load_private_key(&config.upstream.key, "upstream.key")?;
        let upstream_ca = load_upstream_ca(&config)?;
        let mut methods = MethodSet::empty();
        methods.push(MethodKind::PublicKey);
        methods.push(MethodKind::KeyboardInteractive);
        let server_config = server::Config {
            server_id: russh::SshId::Standard("SSH-2.0-Gatehouse".into()),
            methods,
            auth_rejection_time: Duration::from_millis(200),
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: vec![host_key],
            window_size: crate::CHANNEL_WINDOW,
            maximum_packet_size: 32768,
            channel_buffer_size: 64,
            max_auth_attempts: 6,
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_max: 4,
            nodelay: true,
            ..Default::default()
        };
        let listener = TcpListener::bind(&config.server.listen)
            .await
            .map_err(|source| SshError::Bind {
                addr: config.server.listen.clone(),
                source,
            })?;
        let (shutdown, _) = watch::channel(None);
        let alerts =
            gatehouse_audit::alert::Alerts::new(&config.alerts).map_err(SshError::Config)?;
        let config = Arc::new(config);
        let shared = Arc::new(Shared {
            startups: Arc::new(Semaphore::new(config.server.max_startups)),
            config: RwLock::new(config.clone()),
            audit: Audit::new(store.clone(), alerts, config),
            store,
            upstream_key: RwLock::new(Arc::new(upstream_key)),
            upstream_ca: RwLock::new(upstream_ca),
            server_config: Arc::new(server_config),
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            shutdown,
            failures: Mutex::new(HashMap::new()),
            unauth_by_source: SourceGate::default(),
            conns_by_user: Counter::default(),
            flood_notices: FloodNotices::default(),
            serve_inner: serve_jump,
            sso: Default::default(),
            watched: Mutex::new(HashMap::new()),
        });
        Ok(Gateway { shared, listener })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn handle(&self) -> GatewayHandle {
        GatewayHandle {
            shared: self.shared.clone(),
        }
    }

    /// Accepts connections until shutdown, then tells every session why it
    /// ends and waits (bounded) for their `session.end` events.
    pub async fn run(self) -> Result<(), SshError> {
        let shared = self.shared;
        let mut shutdown = shared.shutdown.subscribe();
        // Each connection task holds a clone; when all are gone, `recv`
        // returns None (the mini-redis shutdown pattern).
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        let killer = tokio::spawn(carry_out_kills(shared.clone()));
        let spooler = tokio::spawn(flush_spool_forever(shared.clone()));
        let _heartbeat = crate::nodes::start(&shared.store, &shared.config());
        let reason = loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (socket, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let balancer = shared
                        .config()
                        .server
                        .proxy_protocol
                        .iter()
                        .any(|n| n.contains(peer.ip()));
                    if balancer {
                        // The header is read off the accept loop: a slow
                        // balancer must not hold up other connections.
                        let (shared, done) = (shared.clone(), done_tx.clone());
                        tokio::spawn(async move {
                            if let Some((socket, client)) = proxied(&shared, socket, peer).await {
                                admit(&shared, socket, client, done);
                            }
                        });
                    } else {
                        admit(&shared, socket, peer, done_tx.clone());
                    }
                }
                changed = shutdown.changed() => {
                    if changed.is_err() { break "gateway stopped".to_string(); }
                    if let Some(r) = shutdown.borrow().clone() { break r; }
                }
            }
        };
        drop(self.listener);
        drop(done_tx);
        let drain = shared.config().server.drain_timeout.get();
        let drained =
            !drain.is_zero() && drain_sessions(&shared, &reason, drain, &mut done_rx).await;
        killer.abort();
        if !drained {
            let message = format!("{reason}; your session is ending — reconnect in a moment");
            for (handle, channels) in live_connections(&shared) {
                end_connection(&handle, &channels, &message).await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), done_rx.recv()).await;
        }
        spooler.abort();
        if shared.audit.spooled() > 0 {
            if let Err(e) = shared.audit.flush_spool().await {
                tracing::error!(error = %e.0, lost = shared.audit.spooled(), "stopping with audit events the store did not take");
            }
        }
        Ok(())
    }
}

/// Every live connection's handle and open channels.
fn live_connections(shared: &Shared) -> Vec<(server::Handle, Vec<ChannelId>)> {
    shared
        .live
        .lock()
        .map(|l| {
            l.values()
                .map(|c| (c.handle.clone(), c.channels.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// `server.drain_timeout`: the listener is closed already; sessions are
/// told and may finish on their own for up to `drain`. True when every
/// connection ended in that time.
async fn drain_sessions(
    shared: &Shared,
    reason: &str,
    drain: Duration,
    done: &mut mpsc::Receiver<()>,
) -> bool {
    let live = live_connections(shared);
    tracing::info!(sessions = live.len(), seconds = drain.as_secs(), "draining");
    let line = format!(
        "\r\ngatehouse: {reason}; this session may run {}s more — new connections go to another node\r\n",
        drain.as_secs()
    );
    for (handle, channels) in &live {
        for ch in channels {
            let _ = handle
                .extended_data(*ch, 1, line.clone().into_bytes())
                .await;
        }
    }
    tokio::time::timeout(drain, done.recv()).await.is_ok()
}

/// Starts serving a connection from `peer` (the user's address, after a
/// PROXY header) once its source and the gateway have startup room: a
/// connection over its source's share waits, unread, in the source's
/// queue until a place frees or its login deadline comes.
fn admit(shared: &Arc<Shared>, socket: TcpStream, peer: SocketAddr, done: mpsc::Sender<()>) {
    let shared = shared.clone();
    tokio::spawn(async move {
        let config = shared.config();
        let server = &config.server;
        let deadline = tokio::time::Instant::now() + server.login_grace_time.get();
        let per_source = server.per_source_max_startups;
        let queue = Queue {
            per_source: server.per_source_queue,
            total: server.max_startups,
        };
        let mut stop = shared.shutdown.subscribe();
        let places = async {
            let source = shared
                .unauth_by_source
                .take(&peer.ip().to_string(), per_source, queue, deadline)
                .await;
            let source = match source {
                Ok(slot) => slot,
                Err(why) => {
                    report_flood(&shared, peer, why, per_source, queue.per_source);
                    return None;
                }
            };
            let Ok(permit) = shared.startups.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "too many unauthenticated connections; dropping");
                return None;
            };
            Some(Startup {
                permit,
                source,
                deadline,
            })
        };
        // A place is looked for first; a client that gives up while its
        // connection waits in the queue leaves the queue at once.
        let startup = tokio::select! {
            biased;
            s = places => s,
            _ = stop.changed() => None,
            () = peer_gone(&socket) => {
                tracing::debug!(%peer, "client closed its connection while it waited for a place");
                None
            }
        };
        let Some(startup) = startup else {
            drop(socket);
            return;
        };
        serve_connection(shared, socket, peer, Some(startup), None).await;
        drop(done);
    });
}

/// Resolves once the client has closed its side of `socket` (the
/// reactor saw its FIN), without reading: what it sent stays for the SSH
/// handshake. Readiness is only looked at, never cleared, so while bytes
/// wait unread it is looked at again every 200 ms.
async fn peer_gone(socket: &TcpStream) {
    loop {
        match socket.ready(tokio::io::Interest::READABLE).await {
            Ok(ready) if !ready.is_read_closed() => {}
            _ => return,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads the PROXY header a trusted balancer (`server.proxy_protocol`)
/// puts before the SSH stream; the user's address, or None when the
/// connection must be dropped (no valid header within the login grace
/// time: a `proxy.invalid` event; a bare TCP health check: nothing).
async fn proxied(
    shared: &Arc<Shared>,
    mut socket: TcpStream,
    balancer: SocketAddr,
) -> Option<(TcpStream, SocketAddr)> {
    let config = shared.config();
    let grace = config.server.login_grace_time.get();
    let why = match tokio::time::timeout(grace, crate::proxy::read_header(&mut socket)).await {
        Ok(Ok(Header::Proxied(client))) => return Some((socket, client)),
        Ok(Ok(Header::Local)) => return Some((socket, balancer)),
        Ok(Err(ProxyError::Empty)) => return None,
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no PROXY header within server.login_grace_time".to_string(),
    };
    tracing::warn!(%balancer, %why, "connection from a load balancer dropped");
    let ev = NewEvent::new(
        EventType::PROXY_INVALID,
        Severity::Warn,
        Outcome::Failure,
        &config.server.node,
    )
    .source_ip(balancer.ip().to_string())
    .reason(format!(
        "{why}; the balancer at {balancer} is listed in server.proxy_protocol, so it must send a PROXY header (HAProxy: send-proxy or send-proxy-v2)"
    ));
    let _ = shared.audit.record(ev, config.audit.on_failure).await;
    None
}

/// A source went over its share of unauthenticated connections and its
/// queue: logged always, audited as `source.flood` at most once a minute
/// per address.
fn report_flood(shared: &Arc<Shared>, peer: SocketAddr, why: NoPlace, limit: usize, queue: usize) {
    let (held, waiting, what) = match why {
        NoPlace::QueueFull { held, waiting } => (
            held,
            waiting,
            "further connections refused until some finish or time out",
        ),
        NoPlace::TimedOut { held, waiting } => (
            held,
            waiting,
            "a connection that waited server.login_grace_time for a place was closed",
        ),
    };
    tracing::warn!(%peer, held, waiting, limit, queue, "too many unauthenticated connections from one address; dropping");
    if !shared.flood_notices.should_report(peer.ip()) {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let config = shared.config();
        let ev = NewEvent::new(
            EventType::SOURCE_FLOOD,
            Severity::High,
            Outcome::Denied,
            &config.server.node,
        )
        .source_ip(peer.ip().to_string())
        .reason(format!(
            "{held} unauthenticated connections from this address and {waiting} waiting (server.per_source_max_startups = {limit}, server.per_source_queue = {queue}); {what}"
        ))
        .details(serde_json::json!({ "held": held, "waiting": waiting, "limit": limit, "queue": queue }));
        let _ = shared.audit.record(ev, config.audit.on_failure).await;
    });
}

/// How often, at most, the gateway looks for kill requests without being
/// woken (on PostgreSQL a request wakes it at once through
/// LISTEN/NOTIFY, and this is only the safety net; see `store::wake`).
pub const KILL_POLL: Duration = Duration::from_millis(200);

/// Carries out kill requests for the sessions this node runs, when a
/// wake-up says one was written (or the fallback interval passed).
async fn carry_out_kills(shared: Arc<Shared>) {
    let mut wake = shared.store.wake_ups();
    let fallback = gatehouse_store::wake::fallback_interval(shared.store.backend()).max(KILL_POLL);
    loop {
        tokio::select! {
            w = wake.recv() => {
                match w {
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    // Not a kill: a live viewer's renewal.
                    Ok(p) if p.starts_with(gatehouse_store::wake::WATCH_PREFIX) => {
                        shared.watch_renewed(&p[gatehouse_store::wake::WATCH_PREFIX.len()..]);
                        continue;
                    }
                    _ => {}
                }
            }
            _ = tokio::time::sleep(fallback) => {}
        }
        let pending = match shared.store.pending_kills().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read kill requests");
                continue;
            }
        };
        for req in pending {
            let live = shared.live.lock().ok().and_then(|l| {
                l.values()
                    .find(|c| c.state.session_id == req.session_id)
                    .map(|c| (c.handle.clone(), c.channels.clone(), c.state.clone()))
            });
            let Some((handle, channels, state)) = live else {
                continue;
            };
            let reason = format!("session killed by {}: {}", req.requested_by, req.reason);
            if let Some(a) = state.admitted() {
                let events = Events::new(&shared, &state, &a.who, &a.dest);
                let ev = events
                    .event(EventType::SESSION_KILLED, Severity::Warn, Outcome::Success)
                    .reason(req.reason.clone())
                    .details(serde_json::json!({ "by": req.requested_by }));
                events.fact_unstopped(ev).await;
            }
            end_connection(&handle, &channels, &reason).await;
            if let Err(e) = shared.store.kill_done(req.id).await {
                tracing::warn!(error = %e, "cannot mark a kill request done");
            }
        }
    }
}

/// How often spooled events are offered to the store again.
const SPOOL_RETRY: Duration = Duration::from_secs(1);

/// Writes spooled events once the store takes writes again.
async fn flush_spool_forever(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(SPOOL_RETRY);
    loop {
        tick.tick().await;
        if shared.audit.spooled() > 0 {
            if let Err(e) = shared.audit.flush_spool().await {
                tracing::warn!(error = %e.0, spooled = shared.audit.spooled(), "audit store still refuses writes");
            }
        }
    }
}

/// Runs one user connection to its end, then writes `session.end`.
pub(crate) async fn serve_connection<S>(
    shared: Arc<Shared>,
    socket: S,
    peer: SocketAddr,
    startup: Option<Startup>,
    jump: Option<Jump>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if jump.is_none() {
        match shared.store.source_blocked(&peer.ip().to_string()).await {
            Ok(Some(reason)) => {
                tracing::info!(%peer, %reason, "connection from a blocked source dropped");
                return;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot check source blocks"),
        }
    }
    let conn_id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let state = Arc::new(ConnState::new(conn_id, peer));
    let inner = jump.is_some();
    let startup_deadline = startup.as_ref().map(|s| s.deadline);
    let handler = Conn::new(Authenticator::new(
        shared.clone(),
        state.clone(),
        startup,
        jump,
    ));
    // The login deadline closes the socket itself: before key exchange
    // russh has no other way to end a connection (see `limits`).
    let (socket, kill) = Killable::new(socket);
    // From the accept, time spent waiting for a place included.
    let grace = match &startup_deadline {
        Some(d) => d.saturating_duration_since(tokio::time::Instant::now()),
        None => shared.config().server.login_grace_time.get(),
    };
    let running = match tokio::time::timeout(
        grace,
        server::run_stream(shared.server_config.clone(), socket, handler),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "connection ended during the handshake");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no SSH identification within the grace time");
            return;
        }
    };
    let handle = running.handle();
    if let Ok(mut live) = shared.live.lock() {
        live.insert(
            conn_id,
            LiveConn {
                handle,
                channels: Vec::new(),
                state: state.clone(),
            },
        );
    }
    tokio::pin!(running);
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    let mut timed_out = false;
    let ended = loop {
        tokio::select! {
            r = &mut running => break r,
            _ = &mut deadline, if !timed_out => {
                if state.is_admitted() {
                    // Authenticated in time: no deadline from here on.
                    timed_out = true;
                    continue;
                }
                // A person signing in at an identity provider has until
                // the device code expires.
                let sign_in = state.sign_in_until.lock().ok().and_then(|u| *u);
                if let Some(until) = sign_in.filter(|u| *u > std::time::Instant::now()) {
                    deadline.as_mut().reset(until.into());
                    continue;
                }
                timed_out = true;
                tracing::info!(%peer, "login grace time exceeded; closing the connection");
                state.grace_exceeded.store(true, Ordering::Release);
                kill.kill();
            }
        }
    };
    state.user_gone.store(true, Ordering::Release);
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
    if state.grace_exceeded.load(Ordering::Acquire) && !inner {
        // OpenSSH's PerSourcePenalties: a source that lets connections
        // time out unauthenticated moves towards a block like one that
        // fails to authenticate.
        grace_penalty(&shared, peer).await;
    }
    if let Ok(mut live) = shared.live.lock() {
        live.remove(&conn_id);
    }
    finish_session(&shared, &state).await;
}

/// The end of a connection: an `auth.failure` for one that never
/// authenticated, the target's side closed, and `session.end` for one
/// that reached its target.
async fn finish_session(shared: &Arc<Shared>, state: &Arc<ConnState>) {
    if !state.is_admitted() && !state.failure_recorded.load(Ordering::Acquire) {
        let attempted = state.attempted_user.lock().ok().and_then(|u| u.clone());
        if let Some(raw_user) = attempted {
            left_unauthenticated(shared, state, &raw_user).await;
        }
    }
    if let Some(Ok(up)) = state.upstream.lock().await.take() {
        let _ = up
            .handle
            .disconnect(Disconnect::ByApplication, "session ended", "")
            .await;
    }
    if !state.started.load(Ordering::Acquire) {
        return;
    }
    let Some(admitted) = state.admitted() else {
        return;
    };
    // Let channel tasks finish their recordings (bounded).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let notified = state.channels_done.notified();
        if state.channels_open.load(Ordering::Acquire) == 0 {
            break;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            tracing::warn!(session = %state.session_id, "channels still open at session end");
            break;
        }
    }
    let events = Events::new(shared, state, &admitted.who, &admitted.dest);
    // What happened is kept even if the store cannot take it now.
    events.fact_unstopped(session_end(&events, state)).await;
}

/// A client that left (or was closed at the login deadline) without
/// authenticating leaves an `auth.failure`.
async fn left_unauthenticated(shared: &Shared, state: &ConnState, raw_user: &str) {
    let config = shared.config();
    let user = ConnectRequest::parse(raw_user)
        .map(|r| r.user)
        .unwrap_or_else(|_| truncate(raw_user, 64));
    let ev = NewEvent::new(
        EventType::AUTH_FAILURE,
        Severity::Warn,
        Outcome::Failure,
        &config.server.node,
    )
    .user(user)
    .source_ip(state.peer.ip().to_string())
    .reason(if state.grace_exceeded.load(Ordering::Acquire) {
        "closed by the gateway: not authenticated within server.login_grace_time".to_string()
    } else {
        match state.offer_refused.lock().ok().and_then(|r| r.clone()) {
            Some(why) => format!("disconnected without authenticating: {why}"),
            None => {
                "disconnected without authenticating: no acceptable key was offered".to_string()
            }
        }
    });
    let _ = shared.audit.record(ev, config.audit.on_failure).await;
    // One failure for the address per connection that offered
    // only keys it does not hold (OpenSSH's "authfail" penalty).
    if !state.grace_exceeded.load(Ordering::Acquire) {
        let ip = state.peer.ip().to_string();
        let n = shared.note_failure(&ip);
        block_if_over(shared, &ip, n, "authentication failures").await;
    }
}

/// The `session.end` event: duration, bytes, exit status, recordings,
/// and why the gateway stopped it or lost the target, if it did.
fn session_end(events: &Events, state: &ConnState) -> NewEvent {
    let recordings = state
        .recordings
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();
    let first = recordings.first();
    let exit = state.exit_status.lock().ok().and_then(|e| *e);
    let details = serde_json::json!({
        "duration_ms": state.start.elapsed().as_millis() as u64,
        "bytes_in": state.bytes_in.load(Ordering::Relaxed),
        "bytes_out": state.bytes_out.load(Ordering::Relaxed),
        "exit_status": exit,
        "start_time": state.start_time,
        "recording_id": first.map(|r| r.id.clone()),
        "recording_sha256": first.map(|r| r.sha256.clone()),
        "recordings": recordings
            .iter()
            .map(|r| serde_json::json!({"id": r.id, "sha256": r.sha256, "bytes": r.bytes, "error": r.error}))
            .collect::<Vec<_>>(),
    });
    let stopped = state.stopped.lock().ok().and_then(|s| s.clone());
    let lost = state.target_lost.load(Ordering::Acquire);
    let ev = events.event(EventType::SESSION_END, Severity::Info, Outcome::Success);
    let ev = ev.details(details);
    if let Some(why) = stopped {
        let mut ev = ev.reason(format!("stopped by the gateway: {why}"));
        ev.severity = Severity::High;
        ev.result = Outcome::Error;
        ev
    } else if lost {
        let mut ev = ev.reason("the connection to the target was lost");
        ev.result = Outcome::Error;
        ev.severity = Severity::Warn;
        ev
    } else {
        ev
    }
}

/// Serves the inner connection of a ProxyJump channel (see
/// [`crate::session::ServeInner`]).
fn serve_jump(
    shared: Arc<Shared>,
    stream: ChannelStream<Msg>,
    peer: SocketAddr,
    jump: Jump,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(serve_connection(shared, stream, peer, None, Some(jump)))
}
