//! The bottom of the connection stages: the per-connection types every
//! stage shares, and the one event emitter of a session. It imports no
//! stage module; every stage imports it.
//!
//! - [`Shared`]: what all connections share (config, store, audit, keys,
//!   limits, the live connections).
//! - [`ConnState`]: one connection, shared by its handler, its channel
//!   tasks and the task that writes `session.end`.
//! - [`Identity`] (who the user is) and [`Destination`] (where they are
//!   going), fixed at authentication; the menu may choose a destination
//!   later.
//! - [`Events`]: builds this session's events and writes them, either as
//!   a gate ([`Events::gate`]) or as a fact ([`Events::fact`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use gatehouse_model::{event::format_time, Config, NewEvent, OnFailure, Outcome, Severity};
use gatehouse_policy::{ApprovalNeed, Decision};
use gatehouse_store::Store;
use russh::keys::PrivateKey;
use russh::server::{self, Msg};
use russh::{Channel, ChannelId, ChannelStream, Disconnect};
use tokio::sync::{watch, Semaphore};

use crate::audit::{Audit, AuditUnavailable};
use crate::certs::CertGrant;
use crate::limits::{Counter, FloodNotices, SourceGate};
use crate::upstream::{Upstream, UpstreamError};

/// Serves a connection that arrived inside a ProxyJump channel. A
/// connection can contain connections, so the accept stage hands this
/// down through [`Shared`] rather than the handler importing it back.
pub(crate) type ServeInner = fn(
    Arc<Shared>,
    ChannelStream<Msg>,
    SocketAddr,
    Jump,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

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
    /// (`server.per_source_max_startups`, `server.per_source_queue`).
    pub unauth_by_source: SourceGate,
    /// Authenticated connections per Gatehouse user
    /// (`server.max_connections_per_user`).
    pub conns_by_user: Counter,
    pub flood_notices: FloodNotices,
    /// How a ProxyJump channel's inner connection is served.
    pub serve_inner: ServeInner,
    /// Single sign-on: identity provider clients and per-key locks.
    pub sso: SsoState,
    /// Sessions someone follows live (`watch:` wake-ups), with when that
    /// ends unless renewed: their recordings are published at every flush.
    pub watched: Mutex<HashMap<String, Instant>>,
}

impl Shared {
    /// Notes a `watch:SESSION` wake-up (see `gatehouse_store::wake`).
    pub fn watch_renewed(&self, session: &str) {
        if let Ok(mut w) = self.watched.lock() {
            let now = Instant::now();
            w.retain(|_, until| *until > now);
            w.insert(
                session.to_string(),
                now + gatehouse_store::wake::WATCH_LEASE,
            );
        }
    }

    /// Whether someone follows session `id` live.
    pub fn is_watched(&self, id: &str) -> bool {
        self.watched
            .lock()
            .ok()
            .and_then(|w| w.get(id).copied())
            .is_some_and(|until| until > Instant::now())
    }
}

/// What single sign-on keeps across connections: one client per
/// identity provider (its discovery document and keys are cached there),
/// and one lock per bound key, so that a key's refresh token is used by
/// one login at a time (Ansible's parallel connections would otherwise
/// present a rotated token twice, which a provider treats as theft).
#[derive(Default)]
pub(crate) struct SsoState {
    providers: Mutex<Vec<Arc<gatehouse_oidc::Provider>>>,
    key_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl SsoState {
    /// The client of provider `config` (made anew when the config changed).
    pub fn provider(
        &self,
        config: &gatehouse_model::IdentityProvider,
    ) -> Result<Arc<gatehouse_oidc::Provider>, gatehouse_oidc::OidcError> {
        let mut list = self.providers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = list.iter().find(|p| p.config() == config) {
            return Ok(p.clone());
        }
        let p = Arc::new(gatehouse_oidc::Provider::new(config)?);
        list.retain(|q| q.config().name != config.name);
        list.push(p.clone());
        Ok(p)
    }

    /// The lock of the binding of key `fingerprint`.
    pub fn key_lock(&self, fingerprint: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.key_locks.lock().unwrap_or_else(|p| p.into_inner());
        if locks.len() > 10_000 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(fingerprint.to_string()).or_default().clone()
    }
}

/// A login through an identity provider: who it says the person is,
/// and the roles their groups gave.
#[derive(Debug, Clone)]
pub(crate) struct SsoLogin {
    pub identity: gatehouse_oidc::Identity,
    /// The claim whose values were mapped (`groups_claim`).
    pub claim: String,
    pub grants: Vec<gatehouse_model::RoleGrant>,
    /// `device` (signed in just now) or `bound_key` (a key bound earlier,
    /// confirmed with the provider).
    pub via: &'static str,
    /// Until when the key stays bound, when one is.
    pub bound_until: Option<String>,
}

impl SsoLogin {
    /// `auth.success`'s `sso`: the provider, how, and which claim values
    /// gave which roles.
    pub fn details(&self) -> serde_json::Value {
        serde_json::json!({
            "provider": self.identity.provider,
            "via": self.via,
            "key_bound_until": self.bound_until,
            "roles": self.grants.iter().map(|g| serde_json::json!({
                "claim": self.claim, "value": g.claim, "role": g.role,
            })).collect::<Vec<_>>(),
        })
    }
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

    /// The handle and session channels of a live connection.
    pub fn live_conn(&self, conn_id: u64) -> Option<(server::Handle, Vec<ChannelId>)> {
        self.live.lock().ok().and_then(|l| {
            l.get(&conn_id)
                .map(|c| (c.handle.clone(), c.channels.clone()))
        })
    }

    /// Remembers a session channel of a live connection (to tell it why
    /// the connection ends).
    pub fn track_channel(&self, conn_id: u64, id: ChannelId) {
        if let Ok(mut live) = self.live.lock() {
            if let Some(c) = live.get_mut(&conn_id) {
                c.channels.push(id);
            }
        }
    }
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

/// Stops a session whose record cannot be kept: the user is told why on
/// every channel, the connection is closed, and `session.end` carries the
/// reason. The first reason given wins.
pub(crate) fn stop_session(shared: &Shared, state: &ConnState, why: String) {
    if let Ok(mut slot) = state.stopped.lock() {
        if slot.is_some() {
            return;
        }
        *slot = Some(why.clone());
    }
    tracing::error!(session = %state.session_id, reason = %why, "session stopped");
    if let Some((handle, channels)) = shared.live_conn(state.conn_id) {
        let message = format!(
            "{why}; this session is stopped so that nothing runs unrecorded; tell your administrator"
        );
        tokio::spawn(async move { end_connection(&handle, &channels, &message).await });
    }
}

/// Writes one line on the user's stderr, ends the channel with `code`.
pub(crate) async fn fail(channel: &Channel<Msg>, pty: bool, message: &str, code: u32) {
    let eol = if pty { "\r\n" } else { "\n" };
    let _ = channel
        .extended_data_bytes(1, format!("gatehouse: {message}{eol}").into_bytes())
        .await;
    let _ = channel.exit_status(code).await;
    let _ = channel.eof().await;
    let _ = channel.close().await;
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
    pub fn method(&self) -> &'static str {
        match self {
            FirstFactor::Key(_) => "publickey",
            FirstFactor::Certificate(..) => "certificate",
            FirstFactor::Password => "password",
        }
    }
}

/// Who the user is, fixed at authentication.
#[derive(Clone)]
pub(crate) struct Identity {
    pub user: String,
    /// A second factor was given.
    pub mfa: bool,
    pub factor: FirstFactor,
    /// The configuration the user was admitted under (for a user from an
    /// identity provider, with them among its users).
    pub config: Arc<Config>,
    /// Set when an identity provider vouched for the user.
    pub sso: Option<Arc<SsoLogin>>,
}

impl Identity {
    /// The limits of the certificate the user logged in with, if any.
    pub fn cert(&self) -> Option<&CertGrant> {
        match &self.factor {
            FirstFactor::Certificate(_, grant) => Some(grant),
            _ => None,
        }
    }
    pub fn permit_pty(&self) -> bool {
        self.cert().is_none_or(|c| c.permit_pty)
    }
    pub fn permit_port_forwarding(&self) -> bool {
        self.cert().is_none_or(|c| c.permit_port_forwarding)
    }
    pub fn permit_agent_forwarding(&self) -> bool {
        self.cert().is_none_or(|c| c.permit_agent_forwarding)
    }
    pub fn on_failure(&self) -> OnFailure {
        self.config.audit.on_failure
    }
}

/// Where the user is going: fixed at authentication for `USER:TARGET`,
/// chosen in the menu otherwise.
#[derive(Clone, Default)]
pub(crate) struct Destination {
    pub target: Option<String>,
    pub login: Option<String>,
    pub decision: Option<Decision>,
    /// Set when the connection is authenticated but may not proceed; the
    /// text is shown to the user on their first channel.
    pub refusal: Option<String>,
    /// Set while a just-in-time approval is still needed.
    pub approval: Option<ApprovalNeed>,
}

impl Destination {
    /// Policy allows it, nothing refused it and no approval is pending.
    pub fn open(&self) -> bool {
        self.refusal.is_none()
            && self.approval.is_none()
            && self.decision.as_ref().is_some_and(|d| d.allowed)
    }
    /// The decision allows agent forwarding.
    pub fn agent_forwarding(&self) -> bool {
        self.decision
            .as_ref()
            .is_some_and(|d| d.allowed && d.agent_forwarding)
    }
}

/// An authenticated connection: who, and where to.
#[derive(Clone)]
pub(crate) struct Admitted {
    pub who: Identity,
    pub dest: Destination,
}

/// The just-in-time approval of a connection: one request per
/// connection, granted once for all its channels.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) enum Approval {
    #[default]
    NotRequested,
    Requested(String),
    Granted,
}

/// Per-connection state shared between the handler, channel tasks and the
/// task that writes `session.end`.
pub(crate) struct ConnState {
    pub conn_id: u64,
    pub session_id: String,
    pub peer: SocketAddr,
    pub start: Instant,
    pub start_time: String,
    pub admitted: Mutex<Option<Admitted>>,
    pub upstream: tokio::sync::Mutex<Option<Result<Arc<Upstream>, UpstreamError>>>,
    pub started: AtomicBool,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// The exit status of the last session channel that reported one.
    pub exit_status: Mutex<Option<u32>>,
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
    /// The approval request of this connection and its state.
    pub approval: tokio::sync::Mutex<Approval>,
    /// Recordings of this session, in the order they finished.
    pub recording_seq: AtomicU64,
    pub recordings: Mutex<Vec<RecordingSummary>>,
    /// Channel tasks still running; `session.end` waits for them so that
    /// their recordings are complete and in the event.
    pub channels_open: AtomicUsize,
    pub channels_done: tokio::sync::Notify,
    /// While a person signs in at an identity provider: the login
    /// deadline waits until then (the device code's expiry).
    pub sign_in_until: Mutex<Option<Instant>>,
}

/// What a finished recording is: its id, and the size and SHA-256 of
/// the bytes that reached the file (not of what was meant to).
#[derive(Debug, Clone)]
pub struct RecordingSummary {
    pub id: String,
    pub sha256: String,
    pub bytes: u64,
    /// Why writing stopped before the end, if it did.
    pub error: Option<String>,
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
    pub fn new(conn_id: u64, peer: SocketAddr) -> ConnState {
        ConnState {
            conn_id,
            session_id: ulid::Ulid::new().to_string(),
            peer,
            start: Instant::now(),
            start_time: format_time(chrono::Utc::now()),
            admitted: Mutex::new(None),
            upstream: tokio::sync::Mutex::new(None),
            started: AtomicBool::new(false),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            exit_status: Mutex::new(None),
            server_handle: Mutex::new(None),
            attempted_user: Mutex::new(None),
            failure_recorded: AtomicBool::new(false),
            grace_exceeded: AtomicBool::new(false),
            stopped: Mutex::new(None),
            offer_refused: Mutex::new(None),
            target_lost: AtomicBool::new(false),
            user_gone: AtomicBool::new(false),
            approval: tokio::sync::Mutex::new(Approval::NotRequested),
            recording_seq: AtomicU64::new(0),
            recordings: Mutex::new(Vec::new()),
            channels_open: AtomicUsize::new(0),
            channels_done: tokio::sync::Notify::new(),
            sign_in_until: Mutex::new(None),
        }
    }

    pub fn admitted(&self) -> Option<Admitted> {
        self.admitted.lock().ok().and_then(|a| a.clone())
    }

    pub fn is_admitted(&self) -> bool {
        self.admitted.lock().map(|a| a.is_some()).unwrap_or(false)
    }

    /// Remembers who this is and where they go.
    pub fn admit(&self, admitted: Admitted) {
        if let Ok(mut slot) = self.admitted.lock() {
            *slot = Some(admitted);
        }
    }
}

/// The event emitter of one session: built once it is known who the user
/// is and where they go, it fills user, session id, source address, MFA,
/// target, login and node, so that a call site says only what happened.
/// Cloning it is one reference count (taps and tasks hold clones).
#[derive(Clone)]
pub(crate) struct Events(Arc<Emitter>);

struct Emitter {
    shared: Arc<Shared>,
    state: Arc<ConnState>,
    user: String,
    mfa: bool,
    target: Option<String>,
    login: Option<String>,
    node: String,
    on_failure: OnFailure,
    /// `details.identity` of every event, for a user from an identity
    /// provider.
    identity: Option<serde_json::Value>,
}

impl Events {
    pub fn new(
        shared: &Arc<Shared>,
        state: &Arc<ConnState>,
        who: &Identity,
        dest: &Destination,
    ) -> Events {
        Events(Arc::new(Emitter {
            shared: shared.clone(),
            state: state.clone(),
            user: who.user.clone(),
            mfa: who.mfa,
            target: dest.target.clone(),
            login: dest.login.clone(),
            node: shared.node(),
            on_failure: who.on_failure(),
            identity: who.sso.as_ref().map(|s| s.identity.details()),
        }))
    }

    /// Adds `details.identity` to an event of a user from an identity
    /// provider.
    fn with_identity(&self, mut ev: NewEvent) -> NewEvent {
        if let Some(identity) = &self.0.identity {
            if let Some(d) = ev.details.as_object_mut() {
                d.insert("identity".into(), identity.clone());
            }
        }
        ev
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.0.shared
    }
    pub fn state(&self) -> &Arc<ConnState> {
        &self.0.state
    }

    /// Whether someone follows this session live (its recording is then
    /// published at every flush).
    pub fn is_watched(&self) -> bool {
        self.0.shared.is_watched(&self.0.state.session_id)
    }

    /// An event of this session.
    pub fn event(&self, kind: &str, sev: Severity, result: Outcome) -> NewEvent {
        let e = &self.0;
        let mut ev = NewEvent::new(kind, sev, result, &e.node)
            .user(e.user.clone())
            .source_ip(e.state.peer.ip().to_string())
            .session(e.state.session_id.clone())
            .mfa(e.mfa);
        ev.target = e.target.clone();
        ev.login = e.login.clone();
        ev
    }

    /// Writes an event that gates what follows: awaited, and under
    /// `audit.on_failure = "refuse"` an error when the store cannot take
    /// it (the caller then refuses).
    pub async fn gate(&self, ev: NewEvent) -> Result<(), AuditUnavailable> {
        let ev = self.with_identity(ev);
        self.0.shared.audit.record(ev, self.0.on_failure).await
    }

    /// Records an event of something that already happened in this session
    /// (a command, a refusal, a transfer). When the store cannot take it the
    /// event is spooled, and under `audit.on_failure = "refuse"` the session
    /// is stopped: nothing more runs that the trail cannot show. False when
    /// the session is being stopped.
    pub async fn fact(&self, ev: NewEvent) -> bool {
        let ev = self.with_identity(ev);
        match self.0.shared.audit.record_fact(ev, self.0.on_failure).await {
            Ok(()) => true,
            Err(e) => {
                self.stop(format!("the audit trail cannot be written ({})", e.0));
                false
            }
        }
    }

    /// Records a fact whose loss does not stop the session (it is ending
    /// anyway, or nothing ran): spooled when the store cannot take it.
    pub async fn fact_unstopped(&self, ev: NewEvent) {
        let ev = self.with_identity(ev);
        let _ = self.0.shared.audit.record_fact(ev, self.0.on_failure).await;
    }

    /// Stops this session (see [`stop_session`]).
    pub fn stop(&self, why: String) {
        stop_session(&self.0.shared, &self.0.state, why)
    }
}

/// What a channel task needs from its connection.
#[derive(Clone)]
pub(crate) struct ChannelCtx {
    pub shared: Arc<Shared>,
    pub state: Arc<ConnState>,
    pub who: Identity,
    pub dest: Destination,
    pub events: Events,
    pub handle: server::Handle,
}

impl ChannelCtx {
    /// The context of an authenticated connection's channels.
    pub fn of(shared: &Arc<Shared>, state: &Arc<ConnState>) -> Option<ChannelCtx> {
        let Admitted { who, dest } = state.admitted()?;
        let handle = state.server_handle.lock().ok()?.clone()?;
        Some(ChannelCtx {
            events: Events::new(shared, state, &who, &dest),
            shared: shared.clone(),
            state: state.clone(),
            who,
            dest,
            handle,
        })
    }

    /// Goes to another destination (chosen in the menu): this connection's
    /// state and events follow.
    pub fn go_to(&mut self, dest: Destination) {
        self.dest = dest;
        self.events = Events::new(&self.shared, &self.state, &self.who, &self.dest);
        self.state.admit(Admitted {
            who: self.who.clone(),
            dest: self.dest.clone(),
        });
    }
}

/// At most `max` characters of `s` (with an ellipsis when cut).
pub(crate) fn truncate(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}
