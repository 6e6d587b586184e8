//! The server side: the accept loop with its limits, and the russh
//! `Handler` that authenticates users and authorises their channels.
//!
//! A connection is one *session* in the audit trail: it starts when the
//! gateway has connected to the target (`session.start`) and ends when the
//! user's connection closes (`session.end`), whatever channels ran inside.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use gatehouse_model::{
    event::format_time, Config, ConnectRequest, EventType, NewEvent, OnFailure, Outcome, Severity,
    User,
};
use gatehouse_policy::Decision;
use gatehouse_store::Store;
use russh::keys::PrivateKey;
use russh::server::{self, Auth, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure, Disconnect, MethodKind, MethodSet};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::audit::Audit;
use crate::certs::CertGrant;
use crate::keys::{fingerprint, load_private_key, parse_public_line};
use crate::limits::{Counter, FloodNotices, Killable, Slot};
use crate::upstream::{self, Upstream, UpstreamError};
use crate::SshError;

/// Everything the connections share. Configuration is swapped whole on
/// reload; a connection keeps the snapshot it authenticated with.
pub(crate) struct Shared {
    pub config: RwLock<Arc<Config>>,
    pub audit: Audit,
    pub store: Store,
    pub upstream_key: RwLock<Arc<PrivateKey>>,
    /// The CA that signs per-session certificates towards targets.
    pub upstream_ca: RwLock<Option<Arc<PrivateKey>>>,
    pub server_config: Arc<server::Config>,
    pub startups: Arc<Semaphore>,
    pub live: Mutex<HashMap<u64, LiveConn>>,
    pub next_id: AtomicU64,
    pub shutdown: watch::Sender<Option<String>>,
    /// Recent authentication failures per source address and per user
    /// (brute-force defence).
    pub failures: Mutex<HashMap<String, std::collections::VecDeque<Instant>>>,
    /// Unauthenticated connections per source address
    /// (`server.per_source_max_startups`).
    pub unauth_by_source: Counter,
    /// Authenticated connections per Gatehouse user
    /// (`server.max_connections_per_user`).
    pub conns_by_user: Counter,
    pub flood_notices: FloodNotices,
}

/// The window in which failures count.
const FAILURE_WINDOW: Duration = Duration::from_secs(600);
/// Most addresses and users tracked at once (bounds memory under a flood).
const MAX_TRACKED: usize = 20_000;

/// What the gateway needs to reach a running connection from outside
/// (shutdown message, kill).
pub(crate) struct LiveConn {
    pub handle: server::Handle,
    pub channels: Vec<ChannelId>,
    pub state: Arc<ConnState>,
}

impl Shared {
    /// Counts a failure for `key` (an address or `user:NAME`); returns how
    /// many it has in the window.
    pub fn note_failure(&self, key: &str) -> usize {
        let Ok(mut map) = self.failures.lock() else {
            return 0;
        };
        let now = Instant::now();
        if map.len() >= MAX_TRACKED && !map.contains_key(key) {
            map.retain(|_, q| {
                q.back()
                    .is_some_and(|t| now.duration_since(*t) < FAILURE_WINDOW)
            });
            if map.len() >= MAX_TRACKED {
                return 0;
            }
        }
        let q = map.entry(key.to_string()).or_default();
        q.push_back(now);
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) > FAILURE_WINDOW)
        {
            q.pop_front();
        }
        q.len()
    }

    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
    pub fn node(&self) -> String {
        self.config().server.node.clone()
    }
    pub fn upstream_key(&self) -> Arc<PrivateKey> {
        self.upstream_key
            .read()
            .map(|k| k.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
    /// Checks a TOTP `answer` against the user's sealed secret; a code
    /// counts once (its time step is then used up).
    pub async fn totp_fresh(
        &self,
        config: &Config,
        user: &str,
        sealed: &str,
        answer: &str,
    ) -> Result<bool, String> {
        let secret = gatehouse_auth::SecretBox::load_or_create(&config.auth.secrets_key)
            .and_then(|b| b.open(sealed))
            .map_err(|e| format!("cannot open the TOTP secret: {e}"))?;
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        Ok(match gatehouse_auth::totp::verify(&secret, answer, now) {
            Some(step) => self
                .store
                .use_totp_step(user, step as i64)
                .await
                .unwrap_or(false),
            None => false,
        })
    }

    pub fn upstream_ca(&self) -> Option<Arc<PrivateKey>> {
        self.upstream_ca
            .read()
            .map(|k| k.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
}

/// Boxes a handler body: russh keeps every handler future inside each
/// connection's own state machine, so inline bodies (with their store
/// writes) would make every connection as large as the largest of them.
fn boxed<'a, T>(
    f: impl std::future::Future<Output = Result<T, russh::Error>> + Send + 'a,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, russh::Error>> + Send + 'a>> {
    Box::pin(f)
}

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

    /// Asks the gateway to stop: sessions get `reason`, the accept loop
    /// ends, and [`Gateway::run`] returns once every connection has ended.
    pub fn shutdown(&self, reason: &str) {
        let _ = self.shared.shutdown.send(Some(reason.to_string()));
    }

    pub fn active_connections(&self) -> usize {
        self.shared.live.lock().map(|l| l.len()).unwrap_or(0)
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
            unauth_by_source: Counter::default(),
            conns_by_user: Counter::default(),
            flood_notices: FloodNotices::default(),
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
                    let per_source = shared.config().server.per_source_max_startups;
                    let source = match shared
                        .unauth_by_source
                        .try_take(&peer.ip().to_string(), per_source)
                    {
                        Ok(slot) => slot,
                        Err(held) => {
                            drop(socket);
                            report_flood(&shared, peer, held, per_source);
                            continue;
                        }
                    };
                    let Ok(permit) = shared.startups.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, "too many unauthenticated connections; dropping");
                        drop(socket);
                        continue;
                    };
                    let shared = shared.clone();
                    let done = done_tx.clone();
                    tokio::spawn(async move {
                        let startup = Startup { permit, source };
                        serve_connection(shared, socket, peer, Some(startup), None).await;
                        drop(done);
                    });
                }
                changed = shutdown.changed() => {
                    if changed.is_err() { break "gateway stopped".to_string(); }
                    if let Some(r) = shutdown.borrow().clone() { break r; }
                }
            }
        };
        drop(self.listener);
        drop(done_tx);
        killer.abort();
        let live: Vec<(server::Handle, Vec<ChannelId>)> = shared
            .live
            .lock()
            .map(|l| {
                l.values()
                    .map(|c| (c.handle.clone(), c.channels.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let message = format!("{reason}; your session is ending — reconnect in a moment");
        for (handle, channels) in live {
            end_connection(&handle, &channels, &message).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), done_rx.recv()).await;
        spooler.abort();
        if shared.audit.spooled() > 0 {
            if let Err(e) = shared.audit.flush_spool().await {
                tracing::error!(error = %e.0, lost = shared.audit.spooled(), "stopping with audit events the store did not take");
            }
        }
        Ok(())
    }
}

/// What an unauthenticated connection holds: a place among
/// `server.max_startups` and among its source's
/// `server.per_source_max_startups`. Dropped once it authenticates.
pub(crate) struct Startup {
    #[allow(dead_code)] // held for its Drop
    permit: OwnedSemaphorePermit,
    #[allow(dead_code)] // held for its Drop
    source: Slot,
}

/// A source went over its share of unauthenticated connections: logged
/// always, audited as `source.flood` at most once a minute per address.
fn report_flood(shared: &Arc<Shared>, peer: SocketAddr, held: usize, limit: usize) {
    tracing::warn!(%peer, held, limit, "too many unauthenticated connections from one address; dropping");
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
            "{held} unauthenticated connections from this address (server.per_source_max_startups = {limit}); further connections refused until some finish or time out"
        ))
        .details(serde_json::json!({ "held": held, "limit": limit }));
        let _ = shared.audit.record(ev, config.audit.on_failure).await;
    });
}

/// A connection that arrived inside another one: `ssh -J alice@gw
/// login@web01` opens a `direct-tcpip` channel to `web01`, and the gateway
/// serves the inner SSH connection itself instead of relaying bytes, so
/// that it can still enforce policy and record.
#[derive(Clone, Debug)]
pub(crate) struct Jump {
    /// The Gatehouse user authenticated on the outer connection.
    pub user: String,
    /// The target named in the `direct-tcpip` request.
    pub target: String,
}

/// Tells every session channel of a connection why it ends (one line on
/// stderr), then disconnects it.
pub(crate) async fn end_connection(handle: &server::Handle, channels: &[ChannelId], message: &str) {
    let line = format!("\r\ngatehouse: {message}\r\n");
    for ch in channels {
        let _ = handle
            .extended_data(*ch, 1, line.clone().into_bytes())
            .await;
    }
    let _ = handle
        .disconnect(
            Disconnect::ByApplication,
            format!("gatehouse: {message}"),
            String::new(),
        )
        .await;
}

/// How often the gateway looks for `gatehouse sessions kill` requests.
pub const KILL_POLL: Duration = Duration::from_millis(200);

/// Carries out kill requests for the sessions this node runs.
async fn carry_out_kills(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(KILL_POLL);
    loop {
        tick.tick().await;
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
            if let Some(auth) = state.authed() {
                let ev = state
                    .event(
                        &auth,
                        EventType::SESSION_KILLED,
                        Severity::Warn,
                        Outcome::Success,
                        &shared.node(),
                    )
                    .reason(req.reason.clone())
                    .details(serde_json::json!({ "by": req.requested_by }));
                let _ = shared
                    .audit
                    .record_fact(ev, auth.config.audit.on_failure)
                    .await;
            }
            end_connection(&handle, &channels, &reason).await;
            if let Err(e) = shared.store.kill_done(req.id).await {
                tracing::warn!(error = %e, "cannot mark a kill request done");
            }
        }
    }
}

/// Records an event of something that already happened in this session
/// (a command, a refusal, a transfer). When the store cannot take it the
/// event is spooled, and under `audit.on_failure = "refuse"` the session
/// is stopped: nothing more runs that the trail cannot show. False when
/// the session is being stopped.
pub(crate) async fn record_in_session(
    shared: &Arc<Shared>,
    state: &Arc<ConnState>,
    on_failure: OnFailure,
    ev: NewEvent,
) -> bool {
    match shared.audit.record_fact(ev, on_failure).await {
        Ok(()) => true,
        Err(e) => {
            stop_session(
                shared,
                state,
                format!("the audit trail cannot be written ({})", e.0),
            );
            false
        }
    }
}

/// Stops a session whose record cannot be kept: the user is told why on
/// every channel, the connection is closed, and `session.end` carries the
/// reason. The first reason given wins.
pub(crate) fn stop_session(shared: &Arc<Shared>, state: &Arc<ConnState>, why: String) {
    if let Ok(mut slot) = state.stopped.lock() {
        if slot.is_some() {
            return;
        }
        *slot = Some(why.clone());
    }
    tracing::error!(session = %state.session_id, reason = %why, "session stopped");
    let live = shared.live.lock().ok().and_then(|l| {
        l.get(&state.conn_id)
            .map(|c| (c.handle.clone(), c.channels.clone()))
    });
    if let Some((handle, channels)) = live {
        let message = format!(
            "{why}; this session is stopped so that nothing runs unrecorded; tell your administrator"
        );
        tokio::spawn(async move { end_connection(&handle, &channels, &message).await });
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

/// Ends the connection when the role's `max_session` is reached.
fn enforce_max_session(shared: Arc<Shared>, state: Arc<ConnState>, auth: Authed, max: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(max).await;
        let live = shared.live.lock().ok().and_then(|l| {
            l.get(&state.conn_id)
                .map(|c| (c.handle.clone(), c.channels.clone()))
        });
        let Some((handle, channels)) = live else {
            return;
        };
        let reason = format!(
            "the maximum session length of your role ({}s) was reached",
            max.as_secs()
        );
        let ev = state
            .event(
                &auth,
                EventType::SESSION_KILLED,
                Severity::Info,
                Outcome::Success,
                &shared.node(),
            )
            .reason(reason.clone())
            .details(serde_json::json!({ "by": "max_session" }));
        let _ = shared
            .audit
            .record_fact(ev, auth.config.audit.on_failure)
            .await;
        end_connection(&handle, &channels, &reason).await;
    });
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
    let handler = Conn {
        shared: shared.clone(),
        state: state.clone(),
        conn_id,
        startup,
        user_slot: None,
        jump,
        pending_mfa: None,
        failures: 0,
    };
    // The login deadline closes the socket itself: before key exchange
    // russh has no other way to end a connection (see `limits`).
    let (socket, kill) = Killable::new(socket);
    let grace = shared.config().server.login_grace_time.get();
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
                if state.authed().is_some() {
                    // Authenticated in time: no deadline from here on.
                    timed_out = true;
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

async fn finish_session(shared: &Shared, state: &ConnState) {
    let attempted = state.attempted_user.lock().ok().and_then(|u| u.clone());
    if let (None, Some(raw_user)) = (state.authed(), attempted) {
        if !state.failure_recorded.load(Ordering::Acquire) {
            let config = shared.config();
            let user = ConnectRequest::parse(&raw_user)
                .map(|r| r.user)
                .unwrap_or_else(|_| truncate(&raw_user, 64));
            let ev = NewEvent::new(
                EventType::AUTH_FAILURE,
                Severity::Warn,
                Outcome::Failure,
                &config.server.node,
            )
            .user(user)
            .source_ip(state.peer.ip().to_string())
            .reason(if state.grace_exceeded.load(Ordering::Acquire) {
                "closed by the gateway: not authenticated within server.login_grace_time"
                    .to_string()
            } else {
                match state.offer_refused.lock().ok().and_then(|r| r.clone()) {
                    Some(why) => format!("disconnected without authenticating: {why}"),
                    None => "disconnected without authenticating: no acceptable key was offered"
                        .to_string(),
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
    let Some(auth) = state.authed() else { return };
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
    let recordings = state
        .recordings
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();
    let first = recordings.first();
    let exit = state.exit_status.load(Ordering::Acquire);
    let details = serde_json::json!({
        "duration_ms": state.start.elapsed().as_millis() as u64,
        "bytes_in": state.bytes_in.load(Ordering::Relaxed),
        "bytes_out": state.bytes_out.load(Ordering::Relaxed),
        "exit_status": if exit >= 0 { serde_json::json!(exit) } else { serde_json::Value::Null },
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
    let mut ev = state
        .event(
            &auth,
            EventType::SESSION_END,
            if stopped.is_some() {
                Severity::High
            } else {
                Severity::Info
            },
            if stopped.is_some() {
                Outcome::Error
            } else {
                Outcome::Success
            },
            &shared.node(),
        )
        .details(details);
    if let Some(why) = stopped {
        ev = ev.reason(format!("stopped by the gateway: {why}"));
    } else if lost {
        ev.result = Outcome::Error;
        ev.severity = Severity::Warn;
        ev = ev.reason("the connection to the target was lost");
    }
    // What happened is kept even if the store cannot take it now.
    let _ = shared
        .audit
        .record_fact(ev, auth.config.audit.on_failure)
        .await;
}

/// Who the user is and what they asked for, fixed at authentication.
#[derive(Clone)]
pub(crate) struct Authed {
    pub user: String,
    pub target: Option<String>,
    pub login: Option<String>,
    pub decision: Option<Decision>,
    /// Set when the connection is authenticated but may not proceed; the
    /// text is shown to the user on their first channel.
    pub refusal: Option<String>,
    /// Set while a just-in-time approval is still needed.
    pub approval: Option<gatehouse_policy::ApprovalNeed>,
    pub mfa: bool,
    /// The limits of the certificate the user logged in with, if any.
    pub cert: Option<Arc<CertGrant>>,
    pub config: Arc<Config>,
}

impl Authed {
    pub fn permit_pty(&self) -> bool {
        self.cert.as_ref().is_none_or(|c| c.permit_pty)
    }
    pub fn permit_port_forwarding(&self) -> bool {
        self.cert.as_ref().is_none_or(|c| c.permit_port_forwarding)
    }
    pub fn permit_agent_forwarding(&self) -> bool {
        self.cert.as_ref().is_none_or(|c| c.permit_agent_forwarding)
    }
}

/// How the user proved who they are before any second factor.
#[derive(Clone, Debug)]
pub(crate) enum FirstFactor {
    /// A registered public key (its fingerprint).
    Key(String),
    /// A certificate from a trusted CA (the key's fingerprint).
    Certificate(String, Arc<CertGrant>),
    Password,
}

impl FirstFactor {
    fn method(&self) -> &'static str {
        match self {
            FirstFactor::Key(_) => "publickey",
            FirstFactor::Certificate(..) => "certificate",
            FirstFactor::Password => "password",
        }
    }
}

/// Per-connection state shared between the handler, channel tasks and the
/// task that writes `session.end`.
pub(crate) struct ConnState {
    pub conn_id: u64,
    pub session_id: String,
    pub peer: SocketAddr,
    pub start: Instant,
    pub start_time: String,
    pub auth: Mutex<Option<Authed>>,
    pub upstream: tokio::sync::Mutex<Option<Result<Arc<Upstream>, UpstreamError>>>,
    pub started: AtomicBool,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub exit_status: AtomicI64,
    pub server_handle: Mutex<Option<server::Handle>>,
    /// The username of the first authentication attempt, and whether a
    /// failure was already audited: a client that leaves without offering
    /// an acceptable key still leaves an `auth.failure` behind.
    pub attempted_user: Mutex<Option<String>>,
    pub failure_recorded: AtomicBool,
    /// The login deadline closed this connection before it authenticated.
    pub grace_exceeded: AtomicBool,
    /// Why the gateway stopped this session (its record could not be
    /// written); `session.end` says so.
    pub stopped: Mutex<Option<String>>,
    /// Why the last key offered was not one of the user's: the reason of
    /// the `auth.failure` if the client leaves without a good one.
    pub offer_refused: Mutex<Option<String>>,
    /// The connection to the target died under a channel.
    pub target_lost: AtomicBool,
    /// The user's connection has ended: from here the gateway closes the
    /// target's side itself, which is no loss of the target.
    pub user_gone: AtomicBool,
    /// The approval request of this connection, and whether it was granted.
    pub approval_id: tokio::sync::Mutex<Option<String>>,
    pub approved: AtomicBool,
    /// Recordings of this session, in the order they finished.
    pub recording_seq: AtomicU64,
    pub recordings: Mutex<Vec<crate::recorder::RecordingSummary>>,
    /// Channel tasks still running; `session.end` waits for them so that
    /// their recordings are complete and in the event.
    pub channels_open: std::sync::atomic::AtomicUsize,
    pub channels_done: tokio::sync::Notify,
}

/// Counts a running channel task; dropping it signals the end.
pub(crate) struct ChannelGuard(pub Arc<ConnState>);

impl ChannelGuard {
    pub fn new(state: Arc<ConnState>) -> ChannelGuard {
        state.channels_open.fetch_add(1, Ordering::AcqRel);
        ChannelGuard(state)
    }
}

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        self.0.channels_open.fetch_sub(1, Ordering::AcqRel);
        self.0.channels_done.notify_waiters();
    }
}

impl ConnState {
    fn new(conn_id: u64, peer: SocketAddr) -> ConnState {
        ConnState {
            conn_id,
            session_id: ulid::Ulid::new().to_string(),
            peer,
            start: Instant::now(),
            start_time: format_time(chrono::Utc::now()),
            auth: Mutex::new(None),
            upstream: tokio::sync::Mutex::new(None),
            started: AtomicBool::new(false),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            exit_status: AtomicI64::new(-1),
            server_handle: Mutex::new(None),
            attempted_user: Mutex::new(None),
            failure_recorded: AtomicBool::new(false),
            grace_exceeded: AtomicBool::new(false),
            stopped: Mutex::new(None),
            offer_refused: Mutex::new(None),
            target_lost: AtomicBool::new(false),
            user_gone: AtomicBool::new(false),
            approval_id: tokio::sync::Mutex::new(None),
            approved: AtomicBool::new(false),
            recording_seq: AtomicU64::new(0),
            recordings: Mutex::new(Vec::new()),
            channels_open: std::sync::atomic::AtomicUsize::new(0),
            channels_done: tokio::sync::Notify::new(),
        }
    }

    pub fn authed(&self) -> Option<Authed> {
        self.auth.lock().ok().and_then(|a| a.clone())
    }

    /// An event pre-filled with this connection's who/where.
    pub fn event(
        &self,
        auth: &Authed,
        kind: &str,
        sev: Severity,
        result: Outcome,
        node: &str,
    ) -> NewEvent {
        let mut ev = NewEvent::new(kind, sev, result, node)
            .user(auth.user.clone())
            .source_ip(self.peer.ip().to_string())
            .session(self.session_id.clone())
            .mfa(auth.mfa);
        ev.target = auth.target.clone();
        ev.login = auth.login.clone();
        ev
    }
}

/// The upstream connection of this session, connecting on first use.
/// Writes `session.start` on success and a high-severity event on a host
/// key mismatch.
pub(crate) async fn upstream_for(
    shared: &Arc<Shared>,
    state: &Arc<ConnState>,
    auth: &Authed,
) -> Result<Arc<Upstream>, String> {
    let mut slot = state.upstream.lock().await;
    if let Some(existing) = slot.as_ref() {
        return existing.clone().map_err(|e| e.to_string());
    }
    let (Some(target_name), Some(login), Some(decision)) =
        (&auth.target, &auth.login, &auth.decision)
    else {
        return Err("no target selected".into());
    };
    let Some(target) = auth.config.target(target_name).cloned() else {
        return Err(format!("unknown target {target_name:?}"));
    };
    let timeout = auth.config.upstream.connect_timeout.get();
    let node = shared.node();
    let creds = upstream::Credentials {
        key: shared.upstream_key(),
        ca: shared.upstream_ca(),
        key_id: format!("gatehouse user={} session={}", auth.user, state.session_id),
        validity: auth.config.upstream.cert_validity.get(),
    };
    let result = upstream::connect(
        &target,
        login,
        creds,
        shared.store.clone(),
        timeout,
        decision.agent_forwarding,
    )
    .await
    .map(Arc::new);
    match &result {
        Ok(_) => {
            let ev = state
                .event(
                    auth,
                    EventType::SESSION_START,
                    Severity::Info,
                    Outcome::Success,
                    &node,
                )
                .details(serde_json::json!({
                    "address": target.socket_address(),
                    "rule": decision.rule.as_ref().map(|r| r.to_string()),
                }));
            if let Err(e) = shared.audit.record(ev, auth.config.audit.on_failure).await {
                *slot = Some(Err(UpstreamError::Other(e.to_string())));
                return Err(e.to_string());
            }
            state.started.store(true, Ordering::Release);
            if let Some(max) = decision.max_session {
                enforce_max_session(shared.clone(), state.clone(), auth.clone(), max);
            }
        }
        Err(err) => {
            let (kind, sev) = match err {
                UpstreamError::HostKeyMismatch { .. } => {
                    (EventType::HOST_KEY_MISMATCH, Severity::High)
                }
                _ => (EventType::TARGET_UNREACHABLE, Severity::Warn),
            };
            let ev = state
                .event(auth, kind, sev, Outcome::Error, &node)
                .reason(err.to_string());
            let _ = shared.audit.record(ev, auth.config.audit.on_failure).await;
        }
    }
    *slot = Some(result.clone());
    result.map_err(|e| e.to_string())
}

/// Blocks `ip` once its failures in the window reach
/// `server.max_auth_failures` (with a `source.blocked` event).
async fn block_if_over(shared: &Shared, ip: &str, failures: usize, what: &str) {
    let config = shared.config();
    if (failures as u32) < config.server.max_auth_failures.max(1) {
        return;
    }
    let d = config.server.block_for.get();
    let reason = format!("{failures} {what} in 10 minutes");
    let actor = gatehouse_control::Actor::operator(
        "brute-force defence",
        gatehouse_control::Channel::Gateway,
    );
    let ops = gatehouse_control::Control::with_trail(&shared.store, &shared.audit, &config, actor);
    if let Err(e) = ops.block_source(ip, d, &reason).await {
        tracing::error!(error = %e, source = ip, "cannot block a source");
    }
}

/// A connection from `peer` ran out of login grace time: counted like an
/// authentication failure of its address.
async fn grace_penalty(shared: &Shared, peer: SocketAddr) {
    let ip = peer.ip().to_string();
    let n = shared.note_failure(&ip);
    block_if_over(shared, &ip, n, "authentication failures or login timeouts").await;
}

/// The russh handler of one user connection.
pub(crate) struct Conn {
    shared: Arc<Shared>,
    state: Arc<ConnState>,
    conn_id: u64,
    /// Held until authentication succeeds: bounds unauthenticated
    /// connections (MaxStartups, per source and in all).
    startup: Option<Startup>,
    /// The user's place among `server.max_connections_per_user`, taken
    /// when authentication completes.
    user_slot: Option<Slot>,
    /// Set for a connection served inside a ProxyJump channel.
    jump: Option<Jump>,
    /// The user whose key was accepted, waiting for the second factor.
    pending_mfa: Option<(String, FirstFactor)>,
    /// Authentication failures on this connection.
    failures: u32,
}

impl Conn {
    /// After an authentication failure (a failed proof, a wrong password
    /// or code — not a key merely offered): count it per address and per
    /// connection, wait a little longer each time (up to 4 s), and block
    /// the address once it reaches `server.max_auth_failures`. Not per
    /// user: someone hammering alice's name from one address must not
    /// slow alice's own login from another.
    async fn throttle(&mut self, _raw_user: &str) {
        let ip = self.state.peer.ip().to_string();
        let by_ip = self.shared.note_failure(&ip);
        self.failures += 1;
        let n = by_ip.max(self.failures as usize).min(16) as u32;
        block_if_over(&self.shared, &ip, by_ip, "authentication failures").await;
        if n > 1 {
            let delay = Duration::from_millis(100u64 << (n - 1).min(6)).min(Duration::from_secs(4));
            tokio::time::sleep(delay).await;
        }
    }

    fn note_attempt(&self, raw_user: &str) {
        if let Ok(mut u) = self.state.attempted_user.lock() {
            if u.is_none() {
                *u = Some(truncate(raw_user, 300));
            }
        }
    }

    fn failure_event(&self, raw_user: &str, reason: String) -> NewEvent {
        self.note_attempt(raw_user);
        self.state.failure_recorded.store(true, Ordering::Release);
        let config = self.shared.config();
        let user = self
            .request(raw_user)
            .map(|r| r.user)
            .unwrap_or_else(|_| truncate(raw_user, 64));
        let mut ev = NewEvent::new(
            EventType::AUTH_FAILURE,
            Severity::Warn,
            Outcome::Failure,
            &config.server.node,
        )
        .user(user)
        .source_ip(self.state.peer.ip().to_string())
        .reason(reason);
        if let Ok(r) = self.request(raw_user) {
            ev.target = r.target;
            ev.login = r.login;
        }
        ev
    }

    /// The connection request a username stands for. Inside a ProxyJump
    /// channel the user and target are already known and the username is
    /// the login on the target (or the user's own name for the default
    /// login).
    fn request(&self, raw_user: &str) -> Result<ConnectRequest, gatehouse_model::UsernameError> {
        match &self.jump {
            Some(j) => {
                if !gatehouse_model::username::is_valid_name(raw_user) {
                    return Err(gatehouse_model::UsernameError::BadName {
                        what: "login",
                        value: truncate(raw_user, 64),
                    });
                }
                Ok(ConnectRequest {
                    user: j.user.clone(),
                    target: Some(j.target.clone()),
                    login: (raw_user != j.user).then(|| raw_user.to_string()),
                })
            }
            None => ConnectRequest::parse(raw_user),
        }
    }

    /// The Gatehouse user a username stands for (inside a ProxyJump
    /// channel, the user of the outer connection).
    fn gatehouse_user<'c>(&self, config: &'c Config, raw_user: &str) -> Result<&'c User, String> {
        let user_name = match &self.jump {
            Some(j) => j.user.clone(),
            None => match ConnectRequest::parse(raw_user) {
                Ok(r) => r.user,
                Err(e) => {
                    // A malformed target part still lets a known user in, so
                    // that they can be told what is wrong with the username.
                    let prefix = raw_user.split(':').next().unwrap_or("");
                    if config.user(prefix).is_none() {
                        return Err(e.to_string());
                    }
                    prefix.to_string()
                }
            },
        };
        config
            .user(&user_name)
            .ok_or_else(|| format!("unknown user {:?}", truncate(&user_name, 64)))
    }

    /// Is `key` one of the keys configured for the user named in `raw_user`?
    fn key_matches(
        &self,
        config: &Config,
        raw_user: &str,
        key: &russh::keys::PublicKey,
    ) -> Result<String, String> {
        let user = self.gatehouse_user(config, raw_user)?;
        let ok = user
            .keys
            .iter()
            .filter_map(|line| parse_public_line(line))
            .any(|k| k.key_data() == key.key_data());
        if ok {
            Ok(user.name.clone())
        } else {
            Err(format!(
                "key {} is not registered for user {:?}",
                fingerprint(key),
                user.name
            ))
        }
    }

    /// The methods offered first: publickey, and password when any user
    /// has one — the same for every username, so the answer does not tell
    /// which users exist or have a password (keyboard-interactive only
    /// ever follows a first factor).
    fn first_methods(&self, config: &Config, _raw_user: &str) -> MethodSet {
        let mut m = MethodSet::empty();
        m.push(MethodKind::PublicKey);
        if config.users.iter().any(|u| u.password_hash.is_some()) {
            m.push(MethodKind::Password);
        }
        m
    }

    /// After the first factor: the second when the user's roles require
    /// it, or the session's decision.
    async fn first_factor_done(
        &mut self,
        config: &Config,
        raw_user: &str,
        user: String,
        factor: FirstFactor,
    ) -> Result<Auth, russh::Error> {
        if let Some(refused) = self.locked(config, raw_user, &user).await {
            return Ok(refused);
        }
        if mfa_required(config, &user) {
            // Partial success: the first factor is right, now the second
            // (OpenSSH's AuthenticationMethods publickey,keyboard-interactive).
            self.pending_mfa = Some((user, factor));
            let mut next = MethodSet::empty();
            next.push(MethodKind::KeyboardInteractive);
            return Ok(Auth::Reject {
                proceed_with_methods: Some(next),
                partial_success: true,
            });
        }
        self.complete_auth(raw_user, user, factor, false).await
    }

    /// Refuses an authentication attempt: audited, throttled.
    async fn refuse(&mut self, config: &Config, raw_user: &str, reason: String) -> Auth {
        let ev = self.failure_event(raw_user, reason);
        let _ = self.shared.audit.record(ev, config.audit.on_failure).await;
        self.throttle(raw_user).await;
        Auth::Reject {
            proceed_with_methods: Some(self.first_methods(config, raw_user)),
            partial_success: false,
        }
    }

    fn channel_ctx(&self) -> Option<crate::bridge::ChannelCtx> {
        let auth = self.state.authed()?;
        let handle = self.state.server_handle.lock().ok()?.clone()?;
        Some(crate::bridge::ChannelCtx {
            shared: self.shared.clone(),
            state: self.state.clone(),
            auth,
            handle,
        })
    }

    /// `ssh -J user@gw login@TARGET`: serve the inner connection for a
    /// configured target. Any other host is refused: the gateway is not an
    /// open proxy.
    async fn proxy_jump(
        &mut self,
        ctx: crate::bridge::ChannelCtx,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        reply: server::ChannelOpenHandle,
    ) -> Result<(), russh::Error> {
        if ctx.auth.config.target(host).is_none() {
            let node = self.shared.node();
            let mut auth = ctx.auth.clone();
            auth.target = Some(truncate(host, 64));
            let ev = self
                .state
                .event(
                    &auth,
                    EventType::ACCESS_DENIED,
                    Severity::Warn,
                    Outcome::Denied,
                    &node,
                )
                .reason(format!(
                    "ProxyJump to {host}:{port}, which is not a configured target"
                ))
                .details(serde_json::json!({ "via": "proxyjump", "port": port }));
            let _ = self
                .shared
                .audit
                .record(ev, ctx.auth.config.audit.on_failure)
                .await;
            reply
                .reject(ChannelOpenFailure::Other {
                    code: 1,
                    reason: format!("gatehouse: access denied to {host:?}"),
                })
                .await;
            return Ok(());
        }
        reply.accept().await;
        let jump = Jump {
            user: ctx.auth.user.clone(),
            target: host.to_string(),
        };
        let shared = self.shared.clone();
        let peer = self.state.peer;
        tokio::spawn(async move {
            serve_connection(shared, channel.into_stream(), peer, None, Some(jump)).await;
        });
        Ok(())
    }

    /// Authentication is complete (key, and second factor when required):
    /// decide, audit, and remember who this is.
    async fn complete_auth(
        &mut self,
        raw_user: &str,
        user: String,
        factor: FirstFactor,
        mfa: bool,
    ) -> Result<Auth, russh::Error> {
        let config = self.shared.config();
        let node = config.server.node.clone();
        let (request, mut refusal) = match self.request(raw_user) {
            Ok(r) => (r, None),
            Err(e) => (
                ConnectRequest {
                    user: user.clone(),
                    target: None,
                    login: None,
                },
                Some(e.to_string()),
            ),
        };
        let decision = request
            .target
            .as_ref()
            .map(|t| gatehouse_policy::decide(&config, &user, t, request.login.as_deref()));
        if refusal.is_none() {
            let max = config.server.max_connections_per_user;
            match self.shared.conns_by_user.try_take(&user, max) {
                Ok(slot) => self.user_slot = Some(slot),
                Err(held) => {
                    let why = format!(
                        "{user} already has {held} connections through the gateway (server.max_connections_per_user = {max}); close some and try again"
                    );
                    let mut ev = NewEvent::new(
                        EventType::ACCESS_DENIED,
                        Severity::Warn,
                        Outcome::Denied,
                        &node,
                    )
                    .user(user.clone())
                    .source_ip(self.state.peer.ip().to_string())
                    .reason(why.clone());
                    ev.target = request.target.clone();
                    let _ = self.shared.audit.record(ev, config.audit.on_failure).await;
                    refusal = Some(why);
                }
            }
        }
        let mut auth = Authed {
            user: user.clone(),
            target: request.target.clone(),
            login: decision
                .as_ref()
                .and_then(|d| d.login.clone())
                .or(request.login.clone()),
            decision: decision.clone(),
            refusal: None,
            approval: None,
            mfa,
            cert: match &factor {
                FirstFactor::Certificate(_, grant) => Some(grant.clone()),
                _ => None,
            },
            config: config.clone(),
        };
        let ok = self
            .state
            .event(
                &auth,
                EventType::AUTH_SUCCESS,
                Severity::Info,
                Outcome::Success,
                &node,
            )
            .details({
                let mut d = serde_json::json!({
                    "method": if mfa {
                        format!("{}+totp", factor.method())
                    } else {
                        factor.method().to_string()
                    },
                    "via": if self.jump.is_some() { "proxyjump" } else { "direct" },
                });
                match &factor {
                    FirstFactor::Key(fp) => d["key"] = fp.clone().into(),
                    FirstFactor::Certificate(fp, grant) => {
                        d["key"] = fp.clone().into();
                        d["certificate"] = grant.details();
                    }
                    FirstFactor::Password => {}
                }
                d
            });
        if let Err(e) = self.shared.audit.record(ok, config.audit.on_failure).await {
            refusal = Some(e.to_string());
        }
        if refusal.is_none() {
            if let Some(d) = &decision {
                if !d.allowed {
                    refusal = Some(denial_shown(&config, d));
                    let ev = self
                        .state
                        .event(
                            &auth,
                            EventType::ACCESS_DENIED,
                            Severity::Warn,
                            Outcome::Denied,
                            &node,
                        )
                        .reason(d.reason.clone())
                        .details(serde_json::json!({
                            "rule": d.rule.as_ref().map(|r| r.to_string()),
                        }));
                    if let Err(e) = self.shared.audit.record(ev, config.audit.on_failure).await {
                        refusal = Some(e.to_string());
                    }
                } else if let Some(need) = &d.approval {
                    // A grant in force lets the user straight in; otherwise
                    // the session waits for a decision (bridge).
                    let login = d.login.clone().unwrap_or_default();
                    let target = request.target.clone().unwrap_or_default();
                    let granted = self
                        .shared
                        .store
                        .active_grant(&user, &target, &login)
                        .await
                        .unwrap_or(false);
                    if !granted {
                        auth.approval = Some(need.clone());
                    }
                }
            }
        } else if request.target.is_none() && raw_user.contains(':') {
            let ev = self
                .state
                .event(
                    &auth,
                    EventType::ACCESS_DENIED,
                    Severity::Warn,
                    Outcome::Denied,
                    &node,
                )
                .reason(refusal.clone().unwrap_or_default());
            let _ = self.shared.audit.record(ev, config.audit.on_failure).await;
        }
        auth.refusal = refusal;
        if let Ok(mut slot) = self.state.auth.lock() {
            *slot = Some(auth);
        }
        Ok(Auth::Accept)
    }

    /// Refuses a locked user (with an `auth.failure` naming the lock).
    async fn locked(&self, config: &Config, raw_user: &str, user: &str) -> Option<Auth> {
        let lock = match self.shared.store.user_lock(user).await {
            Ok(l) => l?,
            Err(e) => {
                let ev = self.failure_event(raw_user, format!("cannot check user locks: {e}"));
                let _ = self.shared.audit.record(ev, config.audit.on_failure).await;
                return Some(Auth::reject());
            }
        };
        let ev = self.failure_event(raw_user, format!("user is locked: {}", lock.reason));
        let _ = self.shared.audit.record(ev, config.audit.on_failure).await;
        Some(Auth::reject())
    }

    fn track_channel(&self, id: ChannelId) {
        if let Ok(mut live) = self.shared.live.lock() {
            if let Some(c) = live.get_mut(&self.conn_id) {
                c.channels.push(id);
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

impl server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        self.note_attempt(user);
        let config = self.shared.config();
        Ok(Auth::Reject {
            proceed_with_methods: Some(self.first_methods(&config, user)),
            partial_success: false,
        })
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        boxed(async move {
            let config = self.shared.config();
            match self.key_matches(&config, user, offer.public_key) {
                Ok(_) => Ok(Auth::Accept),
                // The key may be a certificate's (russh offers the key inside
                // it): decide once it is signed, in auth_openssh_certificate.
                Err(_)
                    if !config.auth.trusted_user_ca_keys.is_empty()
                        && self.gatehouse_user(&config, user).is_ok() =>
                {
                    Ok(Auth::Accept)
                }
                // Only a query: OpenSSH's clients offer every key they
                // hold in turn, so an unregistered one is no failure (a
                // client that never offers a good one still leaves an
                // `auth.failure` when it goes).
                Err(reason) => {
                    self.note_attempt(user);
                    if let Ok(mut r) = self.state.offer_refused.lock() {
                        *r = Some(reason);
                    }
                    Ok(Auth::Reject {
                        proceed_with_methods: Some(self.first_methods(&config, user)),
                        partial_success: false,
                    })
                }
            }
        })
        .await
    }

    async fn auth_publickey(
        &mut self,
        raw_user: &str,
        key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        boxed(async move {
            let config = self.shared.config();
            let user = match self.key_matches(&config, raw_user, key.public_key) {
                Ok(u) => u,
                Err(reason) => return Ok(self.refuse(&config, raw_user, reason).await),
            };
            let factor = FirstFactor::Key(fingerprint(key.public_key));
            self.first_factor_done(&config, raw_user, user, factor)
                .await
        })
        .await
    }

    async fn auth_openssh_certificate(
        &mut self,
        raw_user: &str,
        cert: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        boxed(async move {
            let config = self.shared.config();
            let checked = self.gatehouse_user(&config, raw_user).and_then(|user| {
                let cas = crate::certs::trusted_cas(&config)?;
                if cas.is_empty() {
                    return Err(
                        "certificates are not accepted: auth.trusted_user_ca_keys is empty".into(),
                    );
                }
                let now = chrono::Utc::now().timestamp().max(0) as u64;
                crate::certs::check(cert, &cas, user, self.state.peer.ip(), now)
                    .map(|grant| (user.name.clone(), grant))
            });
            let (user, grant) = match checked {
                Ok(ok) => ok,
                Err(reason) => return Ok(self.refuse(&config, raw_user, reason).await),
            };
            let fp = cert
                .public_key()
                .fingerprint(russh::keys::HashAlg::Sha256)
                .to_string();
            let factor = FirstFactor::Certificate(fp, Arc::new(grant));
            self.first_factor_done(&config, raw_user, user, factor)
                .await
        })
        .await
    }

    async fn auth_password(&mut self, raw_user: &str, password: &str) -> Result<Auth, Self::Error> {
        boxed(async move {
            let config = self.shared.config();
            let user = match self.gatehouse_user(&config, raw_user) {
                Ok(u) => u.clone(),
                Err(reason) => {
                    spend_a_password_check(password).await;
                    return Ok(self.refuse(&config, raw_user, reason).await);
                }
            };
            let Some(hash) = user.password_hash.clone() else {
                spend_a_password_check(password).await;
                let reason = format!("user {:?} has no password", user.name);
                return Ok(self.refuse(&config, raw_user, reason).await);
            };
            let password = password.to_string();
            // argon2 is deliberately slow: keep it off the executor.
            let verdict = tokio::task::spawn_blocking(move || {
                gatehouse_auth::password::verify(&hash, &password)
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
            match verdict {
                Ok(true) => {
                    self.first_factor_done(&config, raw_user, user.name, FirstFactor::Password)
                        .await
                }
                Ok(false) => Ok(self
                    .refuse(&config, raw_user, "wrong password".into())
                    .await),
                Err(e) => {
                    let reason = format!(
                        "cannot check the password: users.{}.password_hash: {e}",
                        user.name
                    );
                    Ok(self.refuse(&config, raw_user, reason).await)
                }
            }
        })
        .await
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        raw_user: &str,
        _submethods: &str,
        response: Option<server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        boxed(async move {
        let config = self.shared.config();
        let Some((user, factor)) = self.pending_mfa.clone() else {
            // The second factor never stands alone.
            return Ok(Auth::reject());
        };
        let kbd_only = || {
            let mut m = MethodSet::empty();
            m.push(MethodKind::KeyboardInteractive);
            Some(m)
        };
        let enrolled = match self.shared.store.totp(&user).await {
            Ok(t) => t,
            Err(e) => {
                let ev = self.failure_event(raw_user, format!("cannot read the TOTP secret: {e}"));
                let _ = self.shared.audit.record(ev, config.audit.on_failure).await;
                return Ok(Auth::reject());
            }
        };
        let Some((sealed, _)) = enrolled else {
            if response.is_none() {
                return Ok(Auth::Partial {
                    name: "Gatehouse".into(),
                    instructions: format!(
                        "Your role requires a second factor, but no authenticator is enrolled for {user}. Ask an administrator to run: gatehouse users totp-enroll {user}"
                    )
                    .into(),
                    prompts: Vec::new().into(),
                });
            }
            let ev = self.failure_event(
                raw_user,
                "MFA required but no TOTP authenticator is enrolled".into(),
            );
            let _ = self.shared.audit.record(ev, config.audit.on_failure).await;
            return Ok(Auth::reject());
        };
        let Some(mut response) = response else {
            return Ok(Auth::Partial {
                name: "Gatehouse".into(),
                instructions: "".into(),
                prompts: vec![("Verification code: ".into(), false)].into(),
            });
        };
        let answer = response
            .next()
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .unwrap_or_default();
        let fresh = match self
            .shared
            .totp_fresh(&config, &user, &sealed, &answer)
            .await
        {
            Ok(f) => f,
            Err(e) => {
                let ev = self.failure_event(raw_user, e);
                let _ = self.shared.audit.record(ev, config.audit.on_failure).await;
                return Ok(Auth::reject());
            }
        };
        if !fresh {
            let ev = self.failure_event(raw_user, "wrong or already used verification code".into());
            let _ = self.shared.audit.record(ev, config.audit.on_failure).await;
            self.throttle(raw_user).await;
            return Ok(Auth::Reject {
                proceed_with_methods: kbd_only(),
                partial_success: false,
            });
        }
        self.pending_mfa = None;
        self.complete_auth(raw_user, user, factor, true).await
        })
        .await
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        boxed(async move {
            self.startup = None;
            if let Ok(mut h) = self.state.server_handle.lock() {
                *h = Some(session.handle());
            }
            // Start the upstream handshake now, in parallel with the client
            // opening its channel: set-up time is the slower of the two, not
            // their sum.
            if let Some(auth) = self.state.authed() {
                let allowed = auth.refusal.is_none()
                    && auth.approval.is_none()
                    && auth.decision.as_ref().map(|d| d.allowed).unwrap_or(false);
                if allowed {
                    let shared = self.shared.clone();
                    let state = self.state.clone();
                    tokio::spawn(async move {
                        let _ = upstream_for(&shared, &state, &auth).await;
                    });
                }
            }
            Ok(())
        })
        .await
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        boxed(async move {
            let Some(ctx) = self.channel_ctx() else {
                reply
                    .reject(ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
                return Ok(());
            };
            // OpenSSH's MaxSessions: each session channel costs a task, a
            // recording and up to two terminal screens.
            let max = ctx.auth.config.server.max_sessions;
            if self.state.channels_open.load(Ordering::Acquire) >= max {
                tracing::warn!(session = %self.state.session_id, max, "session channel refused: server.max_sessions reached");
                reply.reject(ChannelOpenFailure::ResourceShortage).await;
                return Ok(());
            }
            let guard = ChannelGuard::new(self.state.clone());
            self.track_channel(channel.id());
            reply.accept().await;
            tokio::spawn(crate::bridge::session_channel(ctx, channel, guard));
            Ok(())
        })
        .await
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        orig_addr: &str,
        orig_port: u32,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        boxed(async move {
            let Some(ctx) = self.channel_ctx() else {
                reply
                    .reject(ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
                return Ok(());
            };
            if ctx.auth.target.is_none() && self.jump.is_none() && ctx.auth.refusal.is_none() {
                return self.proxy_jump(ctx, channel, host, port, reply).await;
            }
            let allowed = forwarding_allowed(&ctx.auth);
            let node = self.shared.node();
            let details = serde_json::json!({
                "host": host, "port": port, "originator": format!("{orig_addr}:{orig_port}"),
            });
            if !allowed {
                let reason = if ctx.auth.target.is_none() {
                    "port forwarding needs a target: connect as USER:TARGET".to_string()
                } else {
                    "port forwarding is not allowed by the user's roles".to_string()
                };
                let ev = self
                    .state
                    .event(
                        &ctx.auth,
                        EventType::PORT_FORWARD_OPEN,
                        Severity::Warn,
                        Outcome::Denied,
                        &node,
                    )
                    .reason(reason)
                    .details(details);
                let _ = self
                    .shared
                    .audit
                    .record(ev, ctx.auth.config.audit.on_failure)
                    .await;
                reply
                    .reject(ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
                return Ok(());
            }
            let ev = self
                .state
                .event(
                    &ctx.auth,
                    EventType::PORT_FORWARD_OPEN,
                    Severity::Info,
                    Outcome::Success,
                    &node,
                )
                .details(details);
            if self
                .shared
                .audit
                .record(ev, ctx.auth.config.audit.on_failure)
                .await
                .is_err()
            {
                reply
                    .reject(ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
                return Ok(());
            }
            reply.accept().await;
            tokio::spawn(crate::bridge::forward_channel(
                ctx,
                channel,
                host.to_string(),
                port,
                orig_addr.to_string(),
                orig_port,
            ));
            Ok(())
        })
        .await
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col: u32,
        _row: u32,
        _pw: u32,
        _ph: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // A certificate without permit-pty gets none (as sshd does).
        if self.state.authed().is_some_and(|a| !a.permit_pty()) {
            return session.channel_failure(channel);
        }
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if env_allowed(&self.shared.config().server.accept_env, name) {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let allowed = self
            .state
            .authed()
            .and_then(|a| a.decision)
            .map(|d| d.allowed && d.agent_forwarding)
            .unwrap_or(false)
            && self
                .state
                .authed()
                .is_some_and(|a| a.permit_agent_forwarding());
        Ok(allowed)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _proto: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    /// `ssh -R`: the target listens on the user's behalf (when their
    /// roles allow port forwarding), audited like `ssh -L`.
    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        boxed(async move {
            let Some(ctx) = self.channel_ctx() else {
                return Ok(false);
            };
            let node = self.shared.node();
            let on_failure = ctx.auth.config.audit.on_failure;
            let mut details = serde_json::json!({
                "direction": "remote", "listen": format!("{address}:{port}"),
            });
            let refused = |reason: String, details: serde_json::Value| {
                self.state
                    .event(
                        &ctx.auth,
                        EventType::PORT_FORWARD_OPEN,
                        Severity::Warn,
                        Outcome::Denied,
                        &node,
                    )
                    .reason(reason)
                    .details(details)
            };
            if !forwarding_allowed(&ctx.auth) {
                let reason = if ctx.auth.target.is_none() {
                    "port forwarding needs a target: connect as USER:TARGET".to_string()
                } else {
                    "port forwarding is not allowed by the user's roles".to_string()
                };
                let _ = self
                    .shared
                    .audit
                    .record(refused(reason, details), on_failure)
                    .await;
                return Ok(false);
            }
            let upstream = match upstream_for(&self.shared, &self.state, &ctx.auth).await {
                Ok(u) => u,
                Err(e) => {
                    let _ = self
                        .shared
                        .audit
                        .record(refused(e, details), on_failure)
                        .await;
                    return Ok(false);
                }
            };
            // Audit first: the target listens only once this is recorded.
            let ev = self
                .state
                .event(
                    &ctx.auth,
                    EventType::PORT_FORWARD_OPEN,
                    Severity::Info,
                    Outcome::Success,
                    &node,
                )
                .details(details.clone());
            if self.shared.audit.record(ev, on_failure).await.is_err() {
                return Ok(false);
            }
            match upstream.handle.tcpip_forward(address, *port).await {
                Ok(bound) => {
                    if *port == 0 {
                        *port = bound;
                    }
                    tokio::spawn(crate::bridge::remote_forwards(ctx, upstream));
                    Ok(true)
                }
                Err(e) => {
                    details["port"] = (*port).into();
                    let ev = self
                        .state
                        .event(
                            &ctx.auth,
                            EventType::PORT_FORWARD_CLOSE,
                            Severity::Info,
                            Outcome::Failure,
                            &node,
                        )
                        .reason(format!(
                            "the target refused to listen on {address}:{port}: {e}"
                        ))
                        .details(details);
                    let _ = self.shared.audit.record_fact(ev, on_failure).await;
                    Ok(false)
                }
            }
        })
        .await
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        boxed(async move {
            let upstream = self.state.upstream.lock().await.clone();
            match upstream {
                Some(Ok(up)) => Ok(up.handle.cancel_tcpip_forward(address, port).await.is_ok()),
                _ => Ok(false),
            }
        })
        .await
    }
}

/// What a refused user is told. A target that does not exist reads like
/// one their roles do not allow, so that trying names does not map the
/// gateway's targets; the event keeps the precise reason.
pub(crate) fn denial_shown(config: &Config, d: &Decision) -> String {
    if config.target(&d.target).is_some() {
        return format!("access denied: {}", d.reason);
    }
    let user = &d.user;
    let target = &d.target;
    match &d.login {
        None => {
            format!("access denied: no role of user {user:?} allows any login on target {target:?}")
        }
        Some(login) => {
            let roles = config
                .user(user)
                .map(|u| u.roles.join(", "))
                .unwrap_or_default();
            let roles = if roles.is_empty() {
                "none".to_string()
            } else {
                roles
            };
            format!(
                "access denied: no role of user {user:?} allows login {login:?} on target {target:?} (roles: {roles})"
            )
        }
    }
}

/// May this connection forward ports (`ssh -L` / `ssh -R`)?
fn forwarding_allowed(auth: &Authed) -> bool {
    auth.refusal.is_none()
        && auth.approval.is_none()
        && auth
            .decision
            .as_ref()
            .is_some_and(|d| d.allowed && d.port_forwarding)
        && auth.permit_port_forwarding()
}

/// Takes as long as checking a real password, so that the time to an
/// answer does not tell which users exist or have a password.
async fn spend_a_password_check(password: &str) {
    static DUMMY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let password = password.to_string();
    let _ = tokio::task::spawn_blocking(move || {
        let dummy = DUMMY.get_or_init(|| gatehouse_auth::password::hash("gatehouse").ok());
        if let Some(h) = dummy {
            let _ = gatehouse_auth::password::verify(h, &password);
        }
    })
    .await;
}

/// Does any of the user's roles demand a second factor?
fn mfa_required(config: &Config, user: &str) -> bool {
    config
        .user(user)
        .map(|u| {
            u.roles
                .iter()
                .filter_map(|r| config.role(r))
                .any(|r| r.require_mfa)
        })
        .unwrap_or(false)
}

/// sshd's `AcceptEnv` matching: exact names, or a prefix ending in `*`.
pub fn env_allowed(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => p == name,
    })
}

#[cfg(test)]
mod tests {
    use super::env_allowed;

    #[test]
    fn accept_env_patterns() {
        let p = vec!["LANG".to_string(), "LC_*".to_string()];
        assert!(env_allowed(&p, "LANG"));
        assert!(env_allowed(&p, "LC_ALL"));
        assert!(!env_allowed(&p, "LD_PRELOAD"));
        assert!(!env_allowed(&p, "LANGUAGE"));
    }
}
