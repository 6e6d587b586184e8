//! Signing in and who is asking.
//!
//! Console users are the Gatehouse users: their `password_hash` and, when
//! their roles require MFA or they may do more than see their own
//! sessions, a TOTP code from the same authenticator as over SSH (each
//! code single-use across SSH and the console). Failures are audited
//! (`auth.failure`, `details.channel = "web"`) and throttled per address
//! like SSH's: a growing delay, then the address is blocked for
//! `server.block_for` after `server.max_auth_failures`.
//!
//! A signed-in browser holds a random token in an `HttpOnly`,
//! `SameSite=Strict` cookie (`Secure` and `__Host-` under HTTPS); the
//! store keeps its SHA-256 with the anti-CSRF token and the idle and
//! absolute expiry, so any node behind a balancer accepts it. Scripts
//! use API tokens (`Authorization: Bearer`), which need no CSRF token.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::extract::{Form, Query};
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use gatehouse_control::{Actor, Channel, Control};
use gatehouse_model::{Config, EventType, NewEvent, Outcome, Severity};
use gatehouse_policy::console::{console_access, ConsoleAccess};
use gatehouse_store::NewConsoleSession;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::tls::Peer;
use crate::{html, Console, Fail, Page};

/// The signed-in person a request comes from.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub user: String,
    pub access: ConsoleAccess,
    /// The config this viewer is judged by: the gateway's, with the roles
    /// an identity provider granted their sign-in added to their own.
    pub config: Arc<Config>,
    /// The anti-CSRF token of this sign-in (empty for API tokens).
    pub csrf: String,
    pub source_ip: String,
    /// The API token the request was made with, if any.
    pub token_id: Option<String>,
    /// SHA-256 of the cookie token, for signing out.
    session_hash: Option<String>,
}

impl Viewer {
    /// Checks a state-changing browser request: the form's anti-CSRF
    /// token and a same-origin `Origin` (or `Referer`). API-token
    /// requests carry no cookie, so they cannot be forged this way.
    pub fn check_post(
        &self,
        console: &Console,
        headers: &HeaderMap,
        csrf: &str,
    ) -> Result<(), Fail> {
        if self.token_id.is_some() {
            return Ok(());
        }
        check_origin(console, headers)?;
        if self.csrf.is_empty() || !constant_eq(self.csrf.as_bytes(), csrf.as_bytes()) {
            return Err(Fail::forbidden(
                "This form is out of date or did not come from this console (anti-CSRF token mismatch); reload the page and try again.",
            ));
        }
        Ok(())
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn sha256_hex(data: &str) -> String {
    gatehouse_model::hex(&Sha256::digest(data.as_bytes()))
}

fn random_token() -> Result<String, Fail> {
    let bytes = gatehouse_auth::random_bytes(32).map_err(|e| {
        tracing::error!(error = %e, "no randomness for a console token");
        Fail::page(
            StatusCode::SERVICE_UNAVAILABLE,
            "The console cannot make a sign-in token right now; try again.",
        )
    })?;
    Ok(gatehouse_model::hex(&bytes))
}

/// The request's `Origin` (else `Referer`) must be this console.
pub(crate) fn check_origin(console: &Console, headers: &HeaderMap) -> Result<(), Fail> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let scheme = if console.tls { "https" } else { "http" };
    let expected = format!("{scheme}://{host}");
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            headers
                .get(header::REFERER)
                .and_then(|h| h.to_str().ok())
                .map(|r| r.splitn(4, '/').take(3).collect::<Vec<_>>().join("/"))
        });
    match origin {
        Some(o) if !host.is_empty() && o == expected => Ok(()),
        _ => Err(Fail::forbidden(
            "This request did not come from a page of this console (its Origin differs), so it was refused.",
        )),
    }
}

fn cookie_name(console: &Console) -> &'static str {
    if console.tls {
        "__Host-gatehouse"
    } else {
        "gatehouse"
    }
}

fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn peer_ip(parts: &Parts) -> String {
    parts
        .extensions
        .get::<ConnectInfo<Peer>>()
        .map(|c| c.0 .0.ip().to_string())
        .unwrap_or_default()
}

impl FromRequestParts<Arc<Console>> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Arc<Console>,
    ) -> Result<Viewer, Response> {
        let api = crate::extract::is_api(&parts.extensions, &parts.uri);
        let source_ip = peer_ip(parts);
        let config = console.config();
        let refuse = |fail: Fail| {
            if api {
                fail.json().into_response()
            } else {
                fail.into_response()
            }
        };
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(|t| t.trim().to_string());
        let (user, csrf, token_id, session_hash, granted) = if let Some(token) = bearer {
            let hash = sha256_hex(&token);
            let Some(t) = console
                .store
                .api_token_by_hash(&hash)
                .await
                .map_err(|e| refuse(e.into()))?
            else {
                return Err(refuse(Fail::page(
                    StatusCode::UNAUTHORIZED,
                    "This API token is unknown or revoked; create one with `gatehouse tokens create USER`.",
                )));
            };
            if console.store.touch_api_token(&t.id).await.unwrap_or(false) {
                let ev = NewEvent::new(
                    EventType::TOKEN_USED,
                    Severity::Info,
                    Outcome::Success,
                    &config.server.node,
                )
                .user(t.user.clone())
                .source_ip(source_ip.clone())
                .details(serde_json::json!({"token_id": t.id, "channel": "api"}));
                if let Err(e) = console.host.trail().write(ev).await {
                    tracing::error!(error = %e, "cannot audit an API token's use");
                    return Err(refuse(Fail::page(StatusCode::SERVICE_UNAVAILABLE, "The audit trail cannot be written, so the API refuses requests; try again shortly.")));
                }
            }
            (t.user, String::new(), Some(t.id), None, Vec::new())
        } else {
            let Some(token) = cookie_value(&parts.headers, cookie_name(console)) else {
                return Err(unauthenticated(api, parts));
            };
            let hash = sha256_hex(token);
            let idle = config.console.idle_timeout.get();
            match console
                .store
                .console_session(&hash, idle)
                .await
                .map_err(|e| refuse(e.into()))?
            {
                Some(s) => {
                    let _ = console.store.touch_console_session(&hash).await;
                    (s.user, s.csrf, None, Some(hash), s.granted_roles)
                }
                None => return Err(unauthenticated(api, parts)),
            }
        };
        let config = if granted.is_empty() {
            config
        } else {
            Arc::new(config.with_granted_roles(&user, &granted))
        };
        if config.user(&user).is_none() {
            return Err(refuse(Fail::forbidden(format!(
                "{user} is no longer a Gatehouse user."
            ))));
        }
        if let Some(lock) = console
            .store
            .user_lock(&user)
            .await
            .map_err(|e| refuse(e.into()))?
        {
            return Err(refuse(Fail::forbidden(format!(
                "{user} is locked: {}",
                lock.reason
            ))));
        }
        let access = console_access(&config, &user);
        if !access.any() {
            return Err(refuse(Fail::forbidden(format!(
                "No role of {user} grants console access; an administrator adds `console = [\"own_sessions\"]` (or more) to one of your roles."
            ))));
        }
        Ok(Viewer {
            user,
            access,
            config,
            csrf,
            source_ip,
            token_id,
            session_hash,
        })
    }
}

fn unauthenticated(api: bool, parts: &Parts) -> Response {
    if api {
        return Fail::page(
            StatusCode::UNAUTHORIZED,
            "Sign in first: send `Authorization: Bearer TOKEN` (create one with `gatehouse tokens create USER`).",
        )
        .json()
        .into_response();
    }
    let original = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map(|o| o.0.clone())
        .unwrap_or_else(|| parts.uri.clone());
    let next = original.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    Redirect::to(&format!("/signin?next={}", html::url(next))).into_response()
}

pub fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/sessions") }))
        .route("/signin", get(form).post(signin))
        .route("/signin/sso", get(crate::sso::start))
        .route("/signin/sso/callback", get(crate::sso::callback))
        .route("/signout", post(signout))
}

#[derive(Deserialize, Default)]
struct Next {
    next: Option<String>,
    error: Option<String>,
}

/// Only a path of this console may follow sign-in.
pub(crate) fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_string(),
        _ => "/sessions".to_string(),
    }
}

pub(crate) fn signin_page(
    console: &Console,
    next: &str,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    signin_page_for(console, next, "", error, status)
}

/// The sign-in form, keeping the user name typed before a failure, and
/// a link per identity provider (single sign-on, `crate::sso`).
fn signin_page_for(
    console: &Console,
    next: &str,
    user: &str,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let error = error
        .map(|e| format!("<p class=\"error\" id=\"error\">{}</p>", html::esc(e)))
        .unwrap_or_default();
    let sso = crate::sso::links(&console.config(), next);
    let body = format!(
        "<section class=\"signin\"><h1>Sign in to Gatehouse</h1>{error}<form method=\"post\" action=\"/signin\"><input type=\"hidden\" name=\"next\" value=\"{}\"><label>User <input name=\"user\" id=\"user\" autocomplete=\"username\" value=\"{}\" required></label><label>Password <input name=\"password\" id=\"password\" type=\"password\" autocomplete=\"current-password\" required></label><label>Verification code <input name=\"code\" id=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" placeholder=\"6 digits, if asked\"></label><button type=\"submit\" id=\"signin\">Sign in</button></form>{sso}</section>",
        html::esc(next),
        html::esc(user)
    );
    (status, html::layout("Sign in", None, &body)).into_response()
}

async fn form(State(console): State<Arc<Console>>, Query(q): Query<Next>) -> Response {
    signin_page(
        &console,
        &safe_next(q.next.as_deref()),
        q.error.as_deref(),
        StatusCode::OK,
    )
}

#[derive(Deserialize)]
struct Credentials {
    user: String,
    password: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    next: Option<String>,
}

/// The most a failing address waits before its answer.
const MAX_DELAY: Duration = Duration::from_secs(4);

async fn signin(
    State(console): State<Arc<Console>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Form(c): Form<Credentials>,
) -> Page {
    check_origin(&console, &headers)?;
    let ip = peer.ip().to_string();
    let next = safe_next(c.next.as_deref());
    if let Some(until) = console.store.source_blocked(&ip).await? {
        return Ok(signin_page(
            &console,
            &next,
            Some(&format!("Your address {ip} is blocked after repeated failures until {until}; ask an administrator to unblock it (`gatehouse sources unblock {ip}`).")),
            StatusCode::FORBIDDEN,
        ));
    }
    match check(&console, &c, &ip).await {
        Ok((mfa, method)) => {
            if let Ok(mut f) = console.failures.lock() {
                f.remove(&ip);
            }
            let details = serde_json::json!({"channel": "web", "method": method});
            open_session(
                &console,
                &ip,
                SignedIn {
                    user: c.user.clone(),
                    mfa,
                    details,
                    granted_roles: Vec::new(),
                },
                &next,
                Vec::new(),
            )
            .await
        }
        Err(Refusal {
            said,
            reason,
            method,
        }) => {
            let config = console.config();
            let ev = NewEvent::new(
                EventType::AUTH_FAILURE,
                Severity::Warn,
                Outcome::Failure,
                &config.server.node,
            )
            .user(c.user.clone())
            .source_ip(ip.clone())
            .reason(reason)
            .details(serde_json::json!({"channel": "web", "method": method}));
            if let Err(e) = console.host.trail().write(ev).await {
                tracing::error!(error = %e, "cannot audit a console sign-in failure");
            }
            throttle(&console, &ip).await;
            Ok(signin_page_for(
                &console,
                &next,
                &c.user,
                Some(&said),
                StatusCode::UNAUTHORIZED,
            ))
        }
    }
}

/// Signs `user` in: `auth.success` (with `details`) written first, then
/// a console session in the store and its cookie (plus `more_cookies`),
/// and on to `next`.
pub(crate) async fn open_session(
    console: &Console,
    ip: &str,
    who: SignedIn,
    next: &str,
    more_cookies: Vec<String>,
) -> Page {
    let SignedIn {
        user,
        mfa,
        details,
        granted_roles,
    } = who;
    let user = user.as_str();
    let config = console.config();
    let token = random_token()?;
    let csrf = random_token()?;
    let ev = NewEvent::new(
        EventType::AUTH_SUCCESS,
        Severity::Info,
        Outcome::Success,
        &config.server.node,
    )
    .user(user)
    .source_ip(ip)
    .mfa(mfa)
    .details(details);
    console.host.trail().write(ev).await.map_err(|e| {
        tracing::error!(error = %e, "cannot audit a console sign-in");
        Fail::page(StatusCode::SERVICE_UNAVAILABLE, "The audit trail cannot be written, so nobody can sign in right now; try again shortly.")
    })?;
    console
        .store
        .create_console_session(&NewConsoleSession {
            id_hash: sha256_hex(&token),
            user: user.to_string(),
            csrf,
            source_ip: Some(ip.to_string()),
            mfa,
            absolute: config.console.max_age.get(),
            granted_roles,
        })
        .await?;
    let secure = if console.tls { "; Secure" } else { "" };
    let cookie = format!(
        "{}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        cookie_name(console),
        config.console.max_age.get().as_secs()
    );
    let mut res = Redirect::to(next).into_response();
    for c in std::iter::once(cookie).chain(more_cookies) {
        if let Ok(v) = header::HeaderValue::from_str(&c) {
            res.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    Ok(res)
}

/// Who signs in: the user, whether they gave a second factor,
/// `auth.success`'s details, and the roles an identity provider granted
/// (none for a password sign-in).
pub(crate) struct SignedIn {
    pub user: String,
    pub mfa: bool,
    pub details: serde_json::Value,
    pub granted_roles: Vec<String>,
}

/// Why a sign-in failed: what the person is told (nothing that tells
/// which users exist) and what the audit trail records.
struct Refusal {
    said: String,
    reason: String,
    method: &'static str,
}

const WRONG: &str = "Wrong user, password or verification code.";

fn refusal(reason: impl Into<String>, method: &'static str) -> Refusal {
    Refusal {
        said: WRONG.into(),
        reason: reason.into(),
        method,
    }
}

/// Checks the credentials; on success, whether a second factor was used
/// and the method name.
async fn check(
    console: &Console,
    c: &Credentials,
    ip: &str,
) -> Result<(bool, &'static str), Refusal> {
    let config = console.config();
    let hash = config.user(&c.user).and_then(|u| u.password_hash.clone());
    let password = c.password.clone();
    let ok = tokio::task::spawn_blocking(move || match hash {
        Some(h) => gatehouse_auth::password::verify(&h, &password).unwrap_or(false),
        None => {
            // As long as a real check, so timing does not tell who exists.
            let dummy = gatehouse_auth::password::hash("gatehouse").unwrap_or_default();
            let _ = gatehouse_auth::password::verify(&dummy, &password);
            false
        }
    })
    .await
    .unwrap_or(false);
    if !ok {
        let why = match config.user(&c.user) {
            None => "unknown user",
            Some(u) if u.password_hash.is_none() => "the user has no password_hash",
            Some(_) => "wrong password",
        };
        return Err(refusal(why, "password"));
    }
    if let Ok(Some(lock)) = console.store.user_lock(&c.user).await {
        return Err(Refusal {
            said: format!("{} is locked: {}", c.user, lock.reason),
            reason: format!("user locked: {}", lock.reason),
            method: "password",
        });
    }
    let access = console_access(&config, &c.user);
    if !access.any() {
        return Err(Refusal {
            said: format!("No role of {} grants console access; ask an administrator to add `console = [\"own_sessions\"]` to one of your roles.", c.user),
            reason: "no console permission".into(),
            method: "password",
        });
    }
    if !access.mfa_required() {
        return Ok((false, "password"));
    }
    let sealed = match console.store.totp(&c.user).await {
        Ok(Some((sealed, _))) => sealed,
        Ok(None) => {
            return Err(Refusal {
                said: format!("Your roles require a verification code, but no authenticator is enrolled for {}; ask an administrator to run `gatehouse users totp-enroll {}`.", c.user, c.user),
                reason: "MFA required but no TOTP authenticator is enrolled".into(),
                method: "password+totp",
            })
        }
        Err(e) => return Err(refusal(format!("cannot read the TOTP secret: {e}"), "password+totp")),
    };
    let secret = gatehouse_auth::SecretBox::load_or_create(&config.auth.secrets_key)
        .and_then(|b| b.open(&sealed))
        .map_err(|e| refusal(format!("cannot open the TOTP secret: {e}"), "password+totp"))?;
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    let fresh = match gatehouse_auth::totp::verify(&secret, c.code.trim(), now) {
        Some(step) => console
            .store
            .use_totp_step(&c.user, step as i64)
            .await
            .unwrap_or(false),
        None => false,
    };
    if !fresh {
        let _ = ip;
        return Err(refusal(
            "wrong or already used verification code",
            "password+totp",
        ));
    }
    Ok((true, "password+totp"))
}

/// One more failure from `ip`: wait a little longer each time, and block
/// the address past `server.max_auth_failures`.
pub(crate) async fn throttle(console: &Console, ip: &str) {
    let n = match console.failures.lock() {
        Ok(mut f) => {
            let n = f.entry(ip.to_string()).or_insert(0);
            *n += 1;
            *n
        }
        Err(_) => return,
    };
    let config = console.config();
    if n >= config.server.max_auth_failures {
        let actor = Actor::operator("gatehouse", Channel::Gateway);
        let ops = Control::with_trail(&console.store, console.host.trail(), &config, actor);
        let reason = format!("{n} console sign-in failures");
        if let Err(e) = ops
            .block_source(ip, config.server.block_for.get(), &reason)
            .await
        {
            tracing::error!(error = %e, source = ip, "cannot block a source");
        }
        if let Ok(mut f) = console.failures.lock() {
            f.remove(ip);
        }
    }
    let delay = Duration::from_millis(250u64.saturating_mul(1 << n.min(5))).min(MAX_DELAY);
    tokio::time::sleep(delay).await;
}

#[derive(Deserialize)]
struct CsrfOnly {
    csrf: String,
}

async fn signout(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(f): Form<CsrfOnly>,
) -> Page {
    viewer.check_post(&console, &headers, &f.csrf)?;
    if let Some(h) = &viewer.session_hash {
        console.store.end_console_session(h).await?;
    }
    let secure = if console.tls { "; Secure" } else { "" };
    let cookie = format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}",
        cookie_name(&console)
    );
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/signin")).into_response())
}

/// Query parameters as a map (for pages whose filters are optional).
pub type Params = BTreeMap<String, String>;
