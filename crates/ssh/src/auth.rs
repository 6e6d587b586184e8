//! Authentication: publickey (registered keys and certificates),
//! password, single sign-on at an identity provider over
//! keyboard-interactive ([`crate::sso`]) for a key no `[[users]]` entry
//! holds or a role that says `require_sso`, and keyboard-interactive TOTP
//! as a second factor when a role requires one. Failures are throttled per address and connection, and
//! an address over `server.max_auth_failures` is blocked through the
//! control layer. Once the user is known, the destination they named is
//! decided ([`crate::access`]) and the connection is admitted.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_model::{Config, ConnectRequest, EventType, NewEvent, Outcome, Severity, User};
use russh::server::{self, Auth};
use russh::{MethodKind, MethodSet};

use crate::access;
use crate::keys::{fingerprint, parse_public_line};
use crate::limits::{Slot, Startup};
use crate::session::{
    truncate, Admitted, ConnState, Destination, Events, FirstFactor, Identity, Jump, Shared,
    SsoLogin,
};
use crate::sso::{self, Bound};

/// Blocks `ip` once its failures in the window reach
/// `server.max_auth_failures` (with a `source.blocked` event).
pub(crate) async fn block_if_over(shared: &Shared, ip: &str, failures: usize, what: &str) {
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
pub(crate) async fn grace_penalty(shared: &Shared, peer: SocketAddr) {
    let ip = peer.ip().to_string();
    let n = shared.note_failure(&ip);
    block_if_over(shared, &ip, n, "authentication failures or login timeouts").await;
}

/// The authentication state of one user connection.
pub(crate) struct Authenticator {
    pub shared: Arc<Shared>,
    pub state: Arc<ConnState>,
    /// Held until authentication succeeds: bounds unauthenticated
    /// connections (MaxStartups, per source and in all).
    startup: Option<Startup>,
    /// The user's place among `server.max_connections_per_user`, taken
    /// when authentication completes.
    user_slot: Option<Slot>,
    /// Set for a connection served inside a ProxyJump channel.
    pub jump: Option<Jump>,
    /// The user whose key was accepted, waiting for the second factor.
    pending_mfa: Option<(String, FirstFactor)>,
    /// A first factor waiting for the identity provider.
    pending_sso: Option<PendingSso>,
    /// The identity provider vouched for the user (kept until the
    /// connection is admitted).
    sso_login: Option<Arc<SsoLogin>>,
    /// Authentication failures on this connection.
    failures: u32,
    /// The method being tried, for `auth.failure` (`details.method`).
    method: &'static str,
    /// A TOTP code was given.
    totp_given: bool,
    /// A sign-in at the identity provider failed on this connection: no
    /// other starts on it (a client would otherwise retry its key and
    /// start one after another).
    sso_spent: bool,
}

/// A first factor waiting for single sign-on.
struct PendingSso {
    /// The name the SSH username gave.
    user: String,
    factor: FirstFactor,
    /// The device sign-in, once started.
    sign_in: Option<sso::SignIn>,
    /// Why the sign-in failed: shown to the person, then refused.
    failed: Option<String>,
}

/// The key a first factor proved, when it was one (a certificate's
/// key too): what a sign-in binds.
fn proved_key(factor: &FirstFactor) -> Option<&str> {
    match factor {
        FirstFactor::Key(fp) | FirstFactor::Certificate(fp, _) => Some(fp),
        FirstFactor::Password => None,
    }
}

fn keyboard_interactive_next() -> Auth {
    let mut next = MethodSet::empty();
    next.push(MethodKind::KeyboardInteractive);
    Auth::Reject {
        proceed_with_methods: Some(next),
        partial_success: true,
    }
}

impl Authenticator {
    pub fn new(
        shared: Arc<Shared>,
        state: Arc<ConnState>,
        startup: Option<Startup>,
        jump: Option<Jump>,
    ) -> Authenticator {
        Authenticator {
            shared,
            state,
            startup,
            user_slot: None,
            jump,
            pending_mfa: None,
            pending_sso: None,
            sso_login: None,
            failures: 0,
            method: "",
            totp_given: false,
            sso_spent: false,
        }
    }

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
        if !self.method.is_empty() {
            ev = ev.details(serde_json::json!({ "method": self.method }));
        }
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

    /// The name a username gives when it may log in through an identity
    /// provider without a `[[users]]` entry.
    fn sso_name(&self, config: &Config, raw_user: &str) -> Option<String> {
        let name = match &self.jump {
            Some(j) => j.user.clone(),
            None => match ConnectRequest::parse(raw_user) {
                Ok(r) => r.user,
                Err(_) => raw_user.split(':').next().unwrap_or("").to_string(),
            },
        };
        (gatehouse_model::username::is_valid_name(&name) && sso::candidate(config, &name))
            .then_some(name)
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
        if config.sso_required(&user) {
            return self.sso_first(config, raw_user, user, factor).await;
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
        let sso = self.sso_login.take();
        let config = match &sso {
            Some(login) => Arc::new(sso::config_for(&config, &user, login)),
            None => config,
        };
        let who = Identity {
            user,
            mfa,
            factor,
            config,
            sso,
        };
        let mut dest = match &request.target {
            Some(t) => access::decide(&who, t, request.login.as_deref()),
            None => Destination {
                login: request.login.clone(),
                ..Destination::default()
            },
        };
        if refusal.is_none() {
            refusal = self.take_user_slot(&who, &request).await;
        }
        let events = Events::new(&self.shared, &self.state, &who, &dest);
        if let Err(e) = events.gate(self.success_event(&events, &who)).await {
            refusal = Some(e.to_string());
        }
        if refusal.is_none() {
            access::admit(&self.shared, &events, &who, &mut dest).await;
        } else {
            if request.target.is_none() && raw_user.contains(':') {
                let ev = events
                    .event(EventType::ACCESS_DENIED, Severity::Warn, Outcome::Denied)
                    .reason(refusal.clone().unwrap_or_default());
                let _ = events.gate(ev).await;
            }
            dest.refusal = refusal;
        }
        self.state.admit(Admitted { who, dest });
        Ok(Auth::Accept)
    }

    /// The user's place among `server.max_connections_per_user`; the
    /// refusal (with its `access.denied`) when they have no more.
    async fn take_user_slot(&mut self, who: &Identity, request: &ConnectRequest) -> Option<String> {
        let max = who.config.server.max_connections_per_user;
        let held = match self.shared.conns_by_user.try_take(&who.user, max) {
            Ok(slot) => {
                self.user_slot = Some(slot);
                return None;
            }
            Err(held) => held,
        };
        let why = format!(
            "{} already has {held} connections through the gateway (server.max_connections_per_user = {max}); close some and try again",
            who.user
        );
        let mut ev = NewEvent::new(
            EventType::ACCESS_DENIED,
            Severity::Warn,
            Outcome::Denied,
            &who.config.server.node,
        )
        .user(who.user.clone())
        .source_ip(self.state.peer.ip().to_string())
        .reason(why.clone());
        ev.target = request.target.clone();
        let _ = self.shared.audit.record(ev, who.on_failure()).await;
        Some(why)
    }

    /// `auth.success`: how the user proved who they are.
    fn success_event(&self, events: &Events, who: &Identity) -> NewEvent {
        let mut method = who.factor.method().to_string();
        if who.sso.is_some() {
            method.push_str("+sso");
        }
        if who.mfa && self.totp_given {
            method.push_str("+totp");
        }
        let mut d = serde_json::json!({
            "method": method,
            "via": if self.jump.is_some() { "proxyjump" } else { "direct" },
        });
        match &who.factor {
            FirstFactor::Key(fp) => d["key"] = fp.clone().into(),
            FirstFactor::Certificate(fp, grant) => {
                d["key"] = fp.clone().into();
                d["certificate"] = grant.details();
            }
            FirstFactor::Password => {}
        }
        if let Some(login) = &who.sso {
            d["sso"] = login.details();
        }
        events
            .event(EventType::AUTH_SUCCESS, Severity::Info, Outcome::Success)
            .details(d)
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

    /// `none`: tells the client which methods to try.
    pub fn none(&mut self, user: &str) -> Auth {
        self.note_attempt(user);
        let config = self.shared.config();
        Auth::Reject {
            proceed_with_methods: Some(self.first_methods(&config, user)),
            partial_success: false,
        }
    }

    /// A key offered (not yet signed for).
    pub fn key_offered(&mut self, user: &str, key: &russh::keys::PublicKey) -> Auth {
        let config = self.shared.config();
        match self.key_matches(&config, user, key) {
            Ok(_) => Auth::Accept,
            // The key may be a certificate's (russh offers the key inside
            // it): decide once it is signed, in `certificate`.
            Err(_)
                if !config.auth.trusted_user_ca_keys.is_empty()
                    && self.gatehouse_user(&config, user).is_ok() =>
            {
                Auth::Accept
            }
            // A key for single sign-on: proved next, then bound or
            // signed in for (see `publickey`).
            Err(_) if self.sso_name(&config, user).is_some() => Auth::Accept,
            // Only a query: OpenSSH's clients offer every key they
            // hold in turn, so an unregistered one is no failure (a
            // client that never offers a good one still leaves an
            // `auth.failure` when it goes).
            Err(reason) => {
                self.note_attempt(user);
                if let Ok(mut r) = self.state.offer_refused.lock() {
                    *r = Some(reason);
                }
                Auth::Reject {
                    proceed_with_methods: Some(self.first_methods(&config, user)),
                    partial_success: false,
                }
            }
        }
    }

    /// A key the client proved it holds.
    pub async fn publickey(
        &mut self,
        raw_user: &str,
        key: &russh::keys::PublicKey,
    ) -> Result<Auth, russh::Error> {
        self.method = "publickey";
        let config = self.shared.config();
        let user = match self.key_matches(&config, raw_user, key) {
            Ok(u) => u,
            Err(reason) => {
                if let Some(name) = self.sso_name(&config, raw_user) {
                    let factor = FirstFactor::Key(fingerprint(key));
                    return self.sso_first(&config, raw_user, name, factor).await;
                }
                return Ok(self.refuse(&config, raw_user, reason).await);
            }
        };
        let factor = FirstFactor::Key(fingerprint(key));
        self.first_factor_done(&config, raw_user, user, factor)
            .await
    }

    /// A certificate the client proved it holds.
    pub async fn certificate(
        &mut self,
        raw_user: &str,
        cert: &russh::keys::Certificate,
    ) -> Result<Auth, russh::Error> {
        self.method = "certificate";
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
    }

    /// A password.
    pub async fn password(&mut self, raw_user: &str, password: &str) -> Result<Auth, russh::Error> {
        self.method = "password";
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
        let verdict =
            tokio::task::spawn_blocking(move || gatehouse_auth::password::verify(&hash, &password))
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
    }

    /// keyboard-interactive: the TOTP code after a first factor.
    pub async fn keyboard_interactive<'a>(
        &'a mut self,
        raw_user: &str,
        response: Option<server::Response<'a>>,
    ) -> Result<Auth, russh::Error> {
        if self.pending_sso.is_some() {
            return self.sso_interactive(raw_user, response.is_some()).await;
        }
        self.method = "totp";
        let config = self.shared.config();
        let Some((user, factor)) = self.pending_mfa.clone() else {
            // The second factor never stands alone.
            return Ok(Auth::reject());
        };
        let sealed = match self
            .enrolled(&config, raw_user, &user, response.is_none())
            .await
        {
            Ok(sealed) => sealed,
            Err(answer) => return Ok(answer),
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
            let mut kbd_only = MethodSet::empty();
            kbd_only.push(MethodKind::KeyboardInteractive);
            return Ok(Auth::Reject {
                proceed_with_methods: Some(kbd_only),
                partial_success: false,
            });
        }
        self.pending_mfa = None;
        self.totp_given = true;
        self.complete_auth(raw_user, user, factor, true).await
    }

    /// The user's sealed TOTP secret; the answer to give instead when
    /// there is none (`asking`: the client has not answered a prompt yet).
    async fn enrolled(
        &self,
        config: &Config,
        raw_user: &str,
        user: &str,
        asking: bool,
    ) -> Result<String, Auth> {
        let enrolled = match self.shared.store.totp(user).await {
            Ok(t) => t,
            Err(e) => {
                let ev = self.failure_event(raw_user, format!("cannot read the TOTP secret: {e}"));
                let _ = self.shared.audit.record(ev, config.audit.on_failure).await;
                return Err(Auth::reject());
            }
        };
        if let Some((sealed, _)) = enrolled {
            return Ok(sealed);
        }
        if asking {
            return Err(Auth::Partial {
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
        Err(Auth::reject())
    }

    /// Single sign-on after a first factor: a key already bound to the
    /// identity is confirmed with the provider; otherwise the person
    /// signs in over keyboard-interactive (`sso_interactive`).
    async fn sso_first(
        &mut self,
        config: &Config,
        raw_user: &str,
        user: String,
        factor: FirstFactor,
    ) -> Result<Auth, russh::Error> {
        if self.sso_spent {
            // Already refused and audited on this connection.
            return Ok(self.sso_over(config, raw_user));
        }
        if let Some(refused) = self.locked(config, raw_user, &user).await {
            return Ok(refused);
        }
        if let Some(fp) = proved_key(&factor) {
            match sso::check_bound(&self.shared, config, &user, fp).await {
                Bound::Confirmed(login) => {
                    return self.sso_done(config, raw_user, user, factor, login).await
                }
                Bound::Refused(why) => {
                    // The sign-in is over: a new one may follow.
                    self.method = "sso";
                    self.audit_sso_failure(config, raw_user, why, None).await;
                }
                Bound::Unavailable(why) => {
                    self.method = "sso";
                    let reason = format!("cannot confirm the key's sign-in: {why}");
                    return Ok(self.refuse(config, raw_user, reason).await);
                }
                Bound::No => {}
            }
        }
        self.pending_sso = Some(PendingSso {
            user,
            factor,
            sign_in: None,
            failed: None,
        });
        Ok(keyboard_interactive_next())
    }

    /// keyboard-interactive for single sign-on: the first round starts a
    /// device sign-in and shows where (no prompt, so the client answers
    /// at once); the answer is held while the gateway polls the provider.
    /// A failed sign-in is shown in one more round, then refused.
    async fn sso_interactive(
        &mut self,
        raw_user: &str,
        answered: bool,
    ) -> Result<Auth, russh::Error> {
        self.method = "sso";
        let config = self.shared.config();
        let Some(mut pending) = self.pending_sso.take() else {
            return Ok(Auth::reject());
        };
        if pending.failed.is_some() {
            return Ok(self.sso_over(&config, raw_user));
        }
        let sign_in = match pending.sign_in.take() {
            Some(s) if answered => s,
            _ => {
                let shown = match sso::start(&self.shared, &config).await {
                    Ok(s) => {
                        let text = sso::instructions(&s, &pending.user);
                        if let Ok(mut until) = self.state.sign_in_until.lock() {
                            *until = Some(s.start.expires_at);
                        }
                        pending.sign_in = Some(s);
                        text
                    }
                    Err(why) => {
                        self.sso_failed(&config, raw_user, &mut pending, why, None)
                            .await
                    }
                };
                self.pending_sso = Some(pending);
                return Ok(sso_round(shown));
            }
        };
        let key = proved_key(&pending.factor).map(String::from);
        let result = sso::finish(
            &self.shared,
            &config,
            &sign_in,
            &pending.user,
            key.as_deref(),
        )
        .await;
        if let Ok(mut until) = self.state.sign_in_until.lock() {
            *until = None;
        }
        match result {
            Ok(login) => {
                let PendingSso { user, factor, .. } = pending;
                self.sso_done(&config, raw_user, user, factor, login).await
            }
            Err((why, identity)) => {
                let shown = self
                    .sso_failed(&config, raw_user, &mut pending, why, identity.as_ref())
                    .await;
                self.pending_sso = Some(pending);
                Ok(sso_round(shown))
            }
        }
    }

    /// A sign-in failed: audited and throttled like a wrong code; the
    /// text the person is shown.
    /// After a failed sign-in: the client may try its other methods, but
    /// this connection starts no other sign-in.
    fn sso_over(&mut self, config: &Config, raw_user: &str) -> Auth {
        self.sso_spent = true;
        self.pending_sso = None;
        Auth::Reject {
            proceed_with_methods: Some(self.first_methods(config, raw_user)),
            partial_success: false,
        }
    }

    async fn sso_failed(
        &mut self,
        config: &Config,
        raw_user: &str,
        pending: &mut PendingSso,
        why: String,
        identity: Option<&gatehouse_oidc::Identity>,
    ) -> String {
        self.audit_sso_failure(config, raw_user, why.clone(), identity)
            .await;
        self.throttle(raw_user).await;
        pending.failed = Some(why.clone());
        format!("Sign-in refused: {why}")
    }

    async fn audit_sso_failure(
        &self,
        config: &Config,
        raw_user: &str,
        why: String,
        identity: Option<&gatehouse_oidc::Identity>,
    ) {
        let mut ev = self.failure_event(raw_user, why);
        if let (Some(id), Some(d)) = (identity, ev.details.as_object_mut()) {
            d.insert("identity".into(), id.details());
        }
        let _ = self.shared.audit.record(ev, config.audit.on_failure).await;
    }

    /// The provider vouched for `user`: a lock of the identity refuses;
    /// a `[[users]]` entry whose roles require MFA gives its TOTP code
    /// next; an identity only the provider knows needs the provider to
    /// report a second factor for such roles. Then admitted.
    async fn sso_done(
        &mut self,
        config: &Config,
        raw_user: &str,
        user: String,
        factor: FirstFactor,
        login: SsoLogin,
    ) -> Result<Auth, russh::Error> {
        self.method = "sso";
        if let Some(refused) = self.locked(config, raw_user, &user).await {
            return Ok(refused);
        }
        let judged = sso::config_for(config, &user, &login);
        let mfa = login.identity.mfa;
        self.sso_login = Some(Arc::new(login));
        if config.user(&user).is_some() {
            if mfa_required(config, &user) {
                self.pending_mfa = Some((user, factor));
                return Ok(keyboard_interactive_next());
            }
        } else if mfa_required(&judged, &user) && !mfa {
            let reason = format!(
                "a role of {user} requires MFA, and the identity provider reported a single factor (amr)"
            );
            let identity = self.sso_login.take().map(|l| l.identity.clone());
            self.audit_sso_failure(config, raw_user, reason, identity.as_ref())
                .await;
            return Ok(self.sso_over(config, raw_user));
        }
        self.complete_auth(raw_user, user, factor, mfa).await
    }

    /// Authentication succeeded: the startup place is freed, and the
    /// upstream handshake starts now, in parallel with the client opening
    /// its channel: set-up time is the slower of the two, not their sum.
    pub fn succeeded(&mut self, handle: server::Handle) {
        self.startup = None;
        if let Ok(mut h) = self.state.server_handle.lock() {
            *h = Some(handle);
        }
        if let Some(Admitted { who, dest }) = self.state.admitted() {
            if dest.open() {
                let events = Events::new(&self.shared, &self.state, &who, &dest);
                tokio::spawn(async move {
                    let _ = crate::connect::upstream_for(&events, &who, &dest).await;
                });
            }
        }
    }
}

/// A keyboard-interactive round that only tells the person something.
fn sso_round(text: String) -> Auth {
    Auth::Partial {
        name: "Gatehouse single sign-on".into(),
        instructions: text.into(),
        prompts: Vec::new().into(),
    }
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
