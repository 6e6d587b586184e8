//! Signing in to the console at an identity provider: the authorization
//! code flow with PKCE (RFC 7636) and a nonce.
//!
//! `GET /signin/sso?provider=NAME` sends the browser to the provider with
//! a fresh `state`, `nonce` and PKCE challenge; what is needed to finish
//! (the provider, state, nonce, verifier and where to go next) waits in
//! a short-lived `HttpOnly` cookie (`SameSite=Lax`, so that it comes back
//! with the provider's redirect). `GET /signin/sso/callback` checks the
//! state against it, exchanges the code with the verifier, and verifies
//! the ID token (signature, issuer, audience, expiry, nonce) in
//! `gatehouse_oidc`. The identity is judged with the roles its groups map
//! to (`role_map`) added to its `[[users]]` entry's, or with those alone
//! when it exists only at the provider; they must grant console access,
//! and when they require MFA the provider must report more than one
//! factor (`amr`). Then the same console session as a password sign-in,
//! with the granted roles kept beside it, and an `auth.success` with
//! `details.method = "sso"`, `details.sso.roles` and `details.identity`.
//!
//! The redirect URI is this console's own `/signin/sso/callback` (scheme
//! and `Host` of the request); register it at the provider.

use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use gatehouse_model::{Config, EventType, NewEvent, Outcome, Severity};
use gatehouse_oidc::{BrowserSignIn, Provider};
use gatehouse_policy::console::console_access;
use serde::Deserialize;

use crate::extract::Query;
use crate::html;
use crate::signin::{open_session, safe_next, signin_page, throttle, SignedIn};
use crate::tls::Peer;
use crate::{Console, Fail, Page};

/// How long a browser may take at the provider.
const PENDING_SECS: u64 = 600;

/// The sign-in page's links, one per identity provider.
pub(crate) fn links(config: &Config, next: &str) -> String {
    let mut out = String::new();
    for p in &config.identity_providers {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("provider", &p.name)
            .append_pair("next", next)
            .finish();
        out.push_str(&format!(
            "<p class=\"sso\"><a href=\"/signin/sso?{}\" id=\"sso-{}\">Sign in with {}</a></p>",
            html::esc(&query),
            html::esc(&p.name),
            html::esc(&p.name)
        ));
    }
    out
}

fn cookie_name(console: &Console) -> &'static str {
    if console.tls {
        "__Host-gatehouse-sso"
    } else {
        "gatehouse-sso"
    }
}

fn cookie(console: &Console, value: &str, max_age: u64) -> String {
    let secure = if console.tls { "; Secure" } else { "" };
    format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}",
        cookie_name(console)
    )
}

/// This console's callback URL, from the request's scheme and `Host`.
fn redirect_uri(console: &Console, headers: &HeaderMap) -> Result<String, Fail> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && !h.contains(['/', ' ', '"']))
        .ok_or_else(|| Fail::bad("The request names no Host; open the console by its address."))?;
    let scheme = if console.tls { "https" } else { "http" };
    Ok(format!("{scheme}://{host}/signin/sso/callback"))
}

/// What waits in the cookie while the browser is at the provider.
struct Pending {
    provider: String,
    next: String,
    sign_in: BrowserSignIn,
}

impl Pending {
    fn encode(&self) -> String {
        let s = &self.sign_in;
        format!(
            "{}~{}~{}~{}~{}",
            self.provider,
            s.state,
            s.nonce,
            s.verifier,
            URL_SAFE_NO_PAD.encode(self.next.as_bytes())
        )
    }

    fn decode(value: &str) -> Option<Pending> {
        let parts: Vec<&str> = value.split('~').collect();
        let [provider, state, nonce, verifier, next] = parts[..] else {
            return None;
        };
        let next = String::from_utf8(URL_SAFE_NO_PAD.decode(next).ok()?).ok()?;
        Some(Pending {
            provider: provider.to_string(),
            next: safe_next(Some(&next)),
            sign_in: BrowserSignIn {
                state: state.to_string(),
                nonce: nonce.to_string(),
                verifier: verifier.to_string(),
            },
        })
    }
}

fn provider(config: &Config, name: &str) -> Result<Provider, Fail> {
    let p = config
        .identity_provider(name)
        .ok_or_else(|| Fail::not_found(format!("There is no identity provider {name:?}.")))?;
    Provider::new(p).map_err(|e| {
        tracing::error!(error = %e, provider = name, "identity provider set-up");
        Fail::page(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "The identity provider {name} cannot be used right now; tell your administrator."
            ),
        )
    })
}

#[derive(Deserialize)]
pub(crate) struct Start {
    provider: String,
    #[serde(default)]
    next: Option<String>,
}

/// `GET /signin/sso`: off to the provider.
pub(crate) async fn start(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<Start>,
) -> Page {
    let config = console.config();
    let provider = provider(&config, &q.provider)?;
    let pending = Pending {
        provider: q.provider.clone(),
        next: safe_next(q.next.as_deref()),
        sign_in: BrowserSignIn::new().map_err(|_| {
            Fail::page(
                StatusCode::SERVICE_UNAVAILABLE,
                "The console cannot make a sign-in token right now; try again.",
            )
        })?,
    };
    let url = provider
        .authorization_url(&redirect_uri(&console, &headers)?, &pending.sign_in)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, provider = %q.provider, "cannot start a console sign-in");
            Fail::page(
                StatusCode::BAD_GATEWAY,
                format!(
                    "The identity provider {} cannot be reached: {e}",
                    q.provider
                ),
            )
        })?;
    Ok((
        [(
            header::SET_COOKIE,
            cookie(&console, &pending.encode(), PENDING_SECS),
        )],
        Redirect::to(&url),
    )
        .into_response())
}

#[derive(Deserialize)]
pub(crate) struct Callback {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

fn pending_of(console: &Console, headers: &HeaderMap) -> Option<Pending> {
    let name = cookie_name(console);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| Pending::decode(v))
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A refused sign-in: what the person is told and what the trail says.
struct Refused {
    said: String,
    reason: String,
    user: Option<String>,
    identity: Option<serde_json::Value>,
}

fn refused(said: impl Into<String>, reason: impl Into<String>) -> Refused {
    Refused {
        said: said.into(),
        reason: reason.into(),
        user: None,
        identity: None,
    }
}

/// `GET /signin/sso/callback`: back from the provider.
pub(crate) async fn callback(
    State(console): State<Arc<Console>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Query(q): Query<Callback>,
) -> Page {
    let ip = peer.ip().to_string();
    let pending = pending_of(&console, &headers);
    let next = pending
        .as_ref()
        .map(|p| p.next.clone())
        .unwrap_or_else(|| safe_next(None));
    let clear = cookie(&console, "", 0);
    if let Some(until) = console.store.source_blocked(&ip).await? {
        let said = format!("Your address {ip} is blocked after repeated failures until {until}; ask an administrator to unblock it (`gatehouse sources unblock {ip}`).");
        return Ok(signin_page(
            &console,
            &next,
            Some(&said),
            StatusCode::FORBIDDEN,
        ));
    }
    match finish(&console, &headers, pending, &q).await {
        Ok(who) => open_session(&console, &ip, who, &next, vec![clear]).await,
        Err(r) => {
            let config = console.config();
            let mut details = serde_json::json!({"channel": "web", "method": "sso"});
            if let Some(id) = r.identity {
                details["identity"] = id;
            }
            let mut ev = NewEvent::new(
                EventType::AUTH_FAILURE,
                Severity::Warn,
                Outcome::Failure,
                &config.server.node,
            )
            .source_ip(ip.clone())
            .reason(r.reason)
            .details(details);
            if let Some(u) = r.user {
                ev = ev.user(u);
            }
            if let Err(e) = console.host.trail().write(ev).await {
                tracing::error!(error = %e, "cannot audit a console sign-in failure");
            }
            throttle(&console, &ip).await;
            let mut res = signin_page(&console, &next, Some(&r.said), StatusCode::UNAUTHORIZED);
            if let Ok(v) = header::HeaderValue::from_str(&clear) {
                res.headers_mut().append(header::SET_COOKIE, v);
            }
            Ok(res)
        }
    }
}

/// Checks what the browser brought back; the user, whether more than
/// one factor was used, and `auth.success`'s details.
async fn finish(
    console: &Console,
    headers: &HeaderMap,
    pending: Option<Pending>,
    q: &Callback,
) -> Result<SignedIn, Refused> {
    let Some(pending) = pending else {
        return Err(refused(
            "This sign-in was not started here or took too long; start it again.",
            "single sign-on callback without a sign-in started in this browser",
        ));
    };
    if !q
        .state
        .as_deref()
        .is_some_and(|s| same(s, &pending.sign_in.state))
    {
        return Err(refused(
            "This sign-in was not started here; start it again.",
            "single sign-on callback with a state that is not this browser's",
        ));
    }
    if let Some(e) = &q.error {
        let d = q.error_description.clone().unwrap_or_default();
        return Err(refused(
            format!("{} did not sign you in ({e}).", pending.provider),
            format!("{} answered {e}: {d}", pending.provider),
        ));
    }
    let code = q.code.as_deref().unwrap_or("");
    let config = console.config();
    let unavailable = |e: String| {
        refused(
            format!(
                "The sign-in at {} could not be completed; try again.",
                pending.provider
            ),
            e,
        )
    };
    let provider = provider(&config, &pending.provider).map_err(|_| {
        unavailable(format!(
            "identity provider {:?} is not configured",
            pending.provider
        ))
    })?;
    let redirect = redirect_uri(console, headers).map_err(|_| unavailable("no Host".into()))?;
    let tokens = provider
        .exchange_code(code, &pending.sign_in, &redirect)
        .await
        .map_err(|e| unavailable(format!("{}: {e}", pending.provider)))?;
    let identity = provider
        .identity(&tokens, Some(&pending.sign_in.nonce), None)
        .await
        .map_err(|e| {
            unavailable(format!(
                "the sign-in at {} was refused: {e}",
                pending.provider
            ))
        })?;
    admit(console, &config, &pending.provider, identity).await
}

/// Whether the identity may use the console: a Gatehouse user or someone
/// whose groups at the provider map to roles (`role_map`), not locked,
/// with console access from those roles, and MFA as they require.
async fn admit(
    console: &Console,
    config: &Config,
    provider: &str,
    identity: gatehouse_oidc::Identity,
) -> Result<SignedIn, Refused> {
    let user = identity.user.clone();
    let refuse = |said: String, reason: String| Refused {
        said,
        reason,
        user: Some(user.clone()),
        identity: Some(identity.details()),
    };
    let idp = config.identity_provider(provider);
    let grants = idp
        .map(|p| p.roles_for(&identity.groups))
        .unwrap_or_default();
    let roles: Vec<String> = grants.iter().map(|g| g.role.clone()).collect();
    if config.user(&user).is_none() && roles.is_empty() {
        return Err(refuse(
            format!("You signed in at {provider} as {user}, who is not a Gatehouse user of the console and whose groups there give no role; ask an administrator."),
            format!("{user} signed in at {provider} but has no [[users]] entry and no role from role_map"),
        ));
    }
    if let Ok(Some(lock)) = console.store.user_lock(&user).await {
        return Err(refuse(
            format!("{user} is locked: {}", lock.reason),
            format!("user locked: {}", lock.reason),
        ));
    }
    let access = console_access(&config.with_granted_roles(&user, &roles), &user);
    if !access.any() {
        return Err(refuse(
            format!("No role of {user} grants console access; ask an administrator to add `console = [\"own_sessions\"]` to one of your roles."),
            "no console permission".into(),
        ));
    }
    if access.mfa_required() && !identity.mfa {
        return Err(refuse(
            format!("Your roles require a second factor, and {provider} did not report one; sign in there with it, or here with your password and code."),
            format!("MFA required and {provider} reported a single factor (amr)"),
        ));
    }
    let claim = idp.map(|p| p.groups_claim.clone()).unwrap_or_default();
    let details = serde_json::json!({
        "channel": "web",
        "method": "sso",
        "sso": {
            "provider": provider,
            "via": "browser",
            "roles": grants.iter().map(|g| serde_json::json!({
                "claim": claim, "value": g.claim, "role": g.role,
            })).collect::<Vec<_>>(),
        },
        "identity": identity.details(),
    });
    Ok(SignedIn {
        user,
        mfa: identity.mfa,
        details,
        granted_roles: roles,
    })
}
