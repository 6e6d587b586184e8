//! OpenID Connect for Gatehouse: what the gateway asks an identity
//! provider, and how it checks the answers.
//!
//! A [`Provider`] is one `[[identity_providers]]` entry with its HTTP
//! client and caches: the discovery document
//! (`ISSUER/.well-known/openid-configuration`, whose `issuer` must be the
//! configured one) and the published keys (`jwks_uri`, fetched again when
//! a token names a key not among them). It runs the OAuth 2.0 Device
//! Authorization Grant (RFC 8628: [`Provider::start_device`], then
//! [`Provider::wait_device`]), the refresh token grant
//! ([`Provider::refresh`]), the authorization code flow with PKCE for
//! the web console ([`Provider::authorization_url`],
//! [`Provider::exchange_code`]), and turns a token response into an
//! [`Identity`] only after the ID token's signature, issuer, audience,
//! expiry and (where the grant has one) nonce are checked
//! ([`Provider::identity`]).
//!
//! This crate knows nothing of SSH or of the store: the gateway decides
//! what an identity may do (roles from [`gatehouse_model::IdentityProvider::roles_for`])
//! and keeps the refresh token.

pub mod jwt;

mod http;

use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_model::IdentityProvider;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::Mutex;

pub use jwt::TokenError;

/// How long the discovery document is kept before it is fetched again.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// The keys are fetched again for an unknown `kid` at most this often.
const JWKS_REFETCH: Duration = Duration::from_secs(10);
/// Groups kept from a claim, at most, and their longest length.
const MAX_GROUPS: usize = 256;
const MAX_GROUP_LEN: usize = 256;

/// What went wrong talking to a provider or checking its answer.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("{0}")]
    Setup(String),
    #[error("cannot reach the identity provider at {url}: {message}")]
    Http { url: String, message: String },
    #[error("the identity provider answered {url} with HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("the identity provider's answer is not usable: {0}")]
    Protocol(String),
    /// An OAuth error response (`invalid_grant`, `access_denied`, ...).
    #[error("the identity provider refused: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    OAuth {
        error: String,
        description: Option<String>,
    },
    #[error("{0}")]
    Token(#[from] TokenError),
    /// The token is genuine but does not name someone who may log in.
    #[error("{0}")]
    Identity(String),
    #[error("the sign-in was not completed in time")]
    TimedOut,
}

impl OidcError {
    /// The provider itself said the grant is no good (a removed user, a
    /// revoked or expired refresh token): not a network problem.
    pub fn is_refusal(&self) -> bool {
        matches!(self, OidcError::OAuth { .. } | OidcError::Identity(_))
            || matches!(self, OidcError::Token(_))
    }
}

/// The parts of the discovery document Gatehouse uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
}

/// A started device sign-in: what the person is shown, and what the
/// gateway polls with.
#[derive(Clone)]
pub struct DeviceStart {
    pub user_code: String,
    pub verification_uri: String,
    /// The URI with the code filled in, when the provider offers one.
    pub verification_uri_complete: Option<String>,
    device_code: String,
    pub interval: Duration,
    /// When the device code expires.
    pub expires_at: Instant,
}

impl std::fmt::Debug for DeviceStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceStart")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .finish_non_exhaustive()
    }
}

/// A token response. Its tokens never appear in `Debug` output.
#[derive(Clone, Default)]
pub struct TokenSet {
    pub access_token: Option<String>,
    pub id_token: Option<String>,
    pub refresh_token: Option<String>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("access_token", &self.access_token.as_ref().map(|_| "…"))
            .field("id_token", &self.id_token.as_ref().map(|_| "…"))
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "…"))
            .finish()
    }
}

/// Who the provider says signed in, after every check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The provider's `name` in the config.
    pub provider: String,
    /// `sub`: the provider's stable id of the person.
    pub subject: String,
    /// The value of `user_claim`: the Gatehouse user name.
    pub user: String,
    pub email: Option<String>,
    /// The values of `groups_claim`.
    pub groups: Vec<String>,
    /// The provider says more than one factor was used (`amr`).
    pub mfa: bool,
}

impl Identity {
    /// `details.identity` of the events of this identity.
    pub fn details(&self) -> Value {
        serde_json::json!({
            "provider": self.provider,
            "subject": self.subject,
            "email": self.email,
            "groups": self.groups,
        })
    }
}

struct Cached<T> {
    at: Instant,
    value: Arc<T>,
}

/// One identity provider: its configuration, HTTP client and caches.
pub struct Provider {
    config: IdentityProvider,
    http: reqwest::Client,
    discovery: Mutex<Option<Cached<Discovery>>>,
    keys: Mutex<Option<Cached<Vec<jwt::Jwk>>>>,
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Provider {
    /// Sets up the client (reads `ca_file`); nothing is fetched yet.
    pub fn new(config: &IdentityProvider) -> Result<Provider, OidcError> {
        Ok(Provider {
            http: http::client(config.ca_file.as_deref())?,
            config: config.clone(),
            discovery: Mutex::new(None),
            keys: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &IdentityProvider {
        &self.config
    }

    fn secret(&self) -> Option<&str> {
        self.config.client_secret.as_deref()
    }

    /// The discovery document, fetched at most once an hour.
    pub async fn discovery(&self) -> Result<Arc<Discovery>, OidcError> {
        let mut cached = self.discovery.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| c.at.elapsed() < DISCOVERY_TTL) {
            return Ok(c.value.clone());
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let reply = http::get(&self.http, &url, None).await?;
        if reply.status != 200 {
            return Err(OidcError::Status {
                url,
                status: reply.status,
                body: reply.text,
            });
        }
        let doc: Discovery = serde_json::from_value(Value::Object(reply.body))
            .map_err(|e| OidcError::Protocol(format!("{url}: {e}")))?;
        if doc.issuer != self.config.issuer {
            return Err(OidcError::Protocol(format!(
                "{url} names issuer {:?}, but the config says {:?}; copy the provider's issuer exactly",
                doc.issuer, self.config.issuer
            )));
        }
        if self.config.issuer.starts_with("https://") {
            let endpoints = [Some(&doc.token_endpoint), Some(&doc.jwks_uri)]
                .into_iter()
                .chain([
                    doc.authorization_endpoint.as_ref(),
                    doc.device_authorization_endpoint.as_ref(),
                    doc.userinfo_endpoint.as_ref(),
                ])
                .flatten();
            for e in endpoints {
                if !e.starts_with("https://") {
                    return Err(OidcError::Protocol(format!(
                        "{url} lists an endpoint that is not https:// ({e})"
                    )));
                }
            }
        }
        let value = Arc::new(doc);
        *cached = Some(Cached {
            at: Instant::now(),
            value: value.clone(),
        });
        Ok(value)
    }

    /// The published keys; fetched again when `refetch` and the last
    /// fetch is older than [`JWKS_REFETCH`].
    async fn keys(&self, refetch: bool) -> Result<Arc<Vec<jwt::Jwk>>, OidcError> {
        let mut cached = self.keys.lock().await;
        if let Some(c) = cached.as_ref() {
            if !refetch || c.at.elapsed() < JWKS_REFETCH {
                return Ok(c.value.clone());
            }
        }
        let url = self.discovery().await?.jwks_uri.clone();
        let reply = http::get(&self.http, &url, None).await?;
        if reply.status != 200 {
            return Err(OidcError::Status {
                url,
                status: reply.status,
                body: reply.text,
            });
        }
        let set: jwt::JwkSet = serde_json::from_value(Value::Object(reply.body))
            .map_err(|e| OidcError::Protocol(format!("{url}: {e}")))?;
        let value = Arc::new(set.keys);
        *cached = Some(Cached {
            at: Instant::now(),
            value: value.clone(),
        });
        Ok(value)
    }

    /// Verifies an ID token: signature with the provider's keys (fetched
    /// again once for a key not among them), then issuer, audience,
    /// expiry and `nonce` when one is expected. Its claims.
    pub async fn verify_id_token(
        &self,
        id_token: &str,
        nonce: Option<&str>,
    ) -> Result<Map<String, Value>, OidcError> {
        let jws = jwt::parse(id_token)?;
        let keys = self.keys(false).await?;
        match jwt::verify_signature(&jws, &keys) {
            Err(TokenError::UnknownKey(_)) => {
                let keys = self.keys(true).await?;
                jwt::verify_signature(&jws, &keys)?;
            }
            other => other?,
        }
        jwt::check_claims(
            &jws.claims,
            &jwt::Expected {
                issuer: &self.config.issuer,
                client_id: &self.config.client_id,
                nonce,
                now: now_secs(),
            },
        )?;
        Ok(jws.claims)
    }

    /// Starts a device sign-in (RFC 8628 3.1).
    pub async fn start_device(&self) -> Result<DeviceStart, OidcError> {
        let d = self.discovery().await?;
        let url = d.device_authorization_endpoint.clone().ok_or_else(|| {
            OidcError::Protocol(format!(
                "{} offers no device_authorization_endpoint; enable the device authorization grant for the client",
                self.config.issuer
            ))
        })?;
        let scope = self.config.scopes.join(" ");
        let reply = http::post_form(
            &self.http,
            &url,
            &self.config.client_id,
            self.secret(),
            &[("scope", &scope)],
        )
        .await?;
        let body = ok_or_oauth(&url, reply)?;
        let text = |k: &str| body.get(k).and_then(Value::as_str).map(String::from);
        let secs = |k: &str, default: u64| body.get(k).and_then(Value::as_u64).unwrap_or(default);
        let missing = |k: &str| OidcError::Protocol(format!("{url}: no {k} in the answer"));
        Ok(DeviceStart {
            device_code: text("device_code").ok_or_else(|| missing("device_code"))?,
            user_code: text("user_code").ok_or_else(|| missing("user_code"))?,
            // Some providers still say verification_url.
            verification_uri: text("verification_uri")
                .or_else(|| text("verification_url"))
                .ok_or_else(|| missing("verification_uri"))?,
            verification_uri_complete: text("verification_uri_complete"),
            interval: Duration::from_secs(secs("interval", 5).clamp(1, 60)),
            expires_at: Instant::now() + Duration::from_secs(secs("expires_in", 600).min(3600)),
        })
    }

    /// Polls the token endpoint until the person has signed in (the
    /// tokens), refused, or the code or `deadline` runs out.
    pub async fn wait_device(
        &self,
        start: &DeviceStart,
        deadline: Instant,
    ) -> Result<TokenSet, OidcError> {
        let url = self.discovery().await?.token_endpoint.clone();
        let deadline = deadline.min(start.expires_at);
        let mut interval = start.interval;
        loop {
            if Instant::now() + interval > deadline {
                return Err(OidcError::TimedOut);
            }
            tokio::time::sleep(interval).await;
            let reply = http::post_form(
                &self.http,
                &url,
                &self.config.client_id,
                self.secret(),
                &[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("device_code", &start.device_code),
                ],
            )
            .await?;
            match ok_or_oauth(&url, reply) {
                Ok(body) => return Ok(token_set(body)),
                Err(OidcError::OAuth { error, .. }) if error == "authorization_pending" => {}
                Err(OidcError::OAuth { error, .. }) if error == "slow_down" => {
                    interval += Duration::from_secs(5);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The refresh token grant: whether the provider still stands behind
    /// the identity, with fresh tokens.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenSet, OidcError> {
        let url = self.discovery().await?.token_endpoint.clone();
        let reply = http::post_form(
            &self.http,
            &url,
            &self.config.client_id,
            self.secret(),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ],
        )
        .await?;
        Ok(token_set(ok_or_oauth(&url, reply)?))
    }

    /// The identity a token response names: the ID token verified (with
    /// `nonce` when the grant had one), claims it lacks read from the
    /// userinfo endpoint (same `sub`), then the user name and the email
    /// domain checked. With `subject`, the identity must be that one (a
    /// refresh keeps the person it was issued for).
    pub async fn identity(
        &self,
        tokens: &TokenSet,
        nonce: Option<&str>,
        subject: Option<&str>,
    ) -> Result<Identity, OidcError> {
        let mut claims = match &tokens.id_token {
            Some(t) => self.verify_id_token(t, nonce).await?,
            None if subject.is_some() => Map::new(),
            None => {
                return Err(OidcError::Protocol(
                    "the token response has no id_token; include the openid scope".into(),
                ))
            }
        };
        let wanted = [
            self.config.user_claim.as_str(),
            self.config.groups_claim.as_str(),
            "email",
        ];
        if wanted.iter().any(|c| !claims.contains_key(*c)) {
            self.fill_from_userinfo(tokens, &mut claims).await?;
        }
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if let Some(want) = subject {
            if sub != want {
                return Err(OidcError::Identity(format!(
                    "the provider now names subject {sub:?}, not {want:?}"
                )));
            }
        }
        self.identity_of(&claims, sub)
    }

    /// Adds the userinfo endpoint's claims that `claims` lacks, when the
    /// provider has one and the tokens include an access token.
    async fn fill_from_userinfo(
        &self,
        tokens: &TokenSet,
        claims: &mut Map<String, Value>,
    ) -> Result<(), OidcError> {
        let d = self.discovery().await?;
        let (Some(url), Some(access)) = (&d.userinfo_endpoint, &tokens.access_token) else {
            return Ok(());
        };
        let reply = http::get(&self.http, url, Some(access)).await?;
        if reply.status != 200 {
            return Err(OidcError::Status {
                url: url.clone(),
                status: reply.status,
                body: reply.text,
            });
        }
        let info_sub = reply.body.get("sub").and_then(Value::as_str);
        match claims.get("sub").and_then(Value::as_str) {
            Some(sub) if Some(sub) != info_sub => {
                return Err(OidcError::Protocol(format!(
                    "{url} names another subject than the ID token"
                )))
            }
            _ => {}
        }
        for (k, v) in reply.body {
            claims.entry(k).or_insert(v);
        }
        Ok(())
    }

    /// The user name, email and groups in `claims`, checked against the
    /// config (a valid user name, an allowed email domain).
    fn identity_of(
        &self,
        claims: &Map<String, Value>,
        subject: String,
    ) -> Result<Identity, OidcError> {
        let c = &self.config;
        if subject.is_empty() {
            return Err(TokenError::MissingClaim("sub").into());
        }
        let user = claims
            .get(&c.user_claim)
            .and_then(Value::as_str)
            .ok_or_else(|| {
                OidcError::Identity(format!(
                    "the provider sent no {:?} claim (user_claim) for subject {subject:?}",
                    c.user_claim
                ))
            })?;
        if !gatehouse_model::username::is_valid_name(user) {
            return Err(OidcError::Identity(format!(
                "the {:?} claim {user:?} is not a valid Gatehouse user name (1-64 of A-Z a-z 0-9 . _ -); set user_claim to a claim that holds one",
                c.user_claim
            )));
        }
        let email = claims
            .get("email")
            .and_then(Value::as_str)
            .map(String::from);
        if !c.allowed_domains.is_empty() {
            let verified = match claims.get("email_verified") {
                Some(Value::Bool(b)) => *b,
                Some(Value::String(s)) => s == "true",
                _ => false,
            };
            if !verified || !c.domain_allowed(email.as_deref()) {
                return Err(OidcError::Identity(format!(
                    "the email {:?} is not a verified address in allowed_domains ({})",
                    email.as_deref().unwrap_or(""),
                    c.allowed_domains.join(", ")
                )));
            }
        }
        let groups = match claims.get(&c.groups_claim) {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .filter(|s| s.len() <= MAX_GROUP_LEN)
                .take(MAX_GROUPS)
                .map(String::from)
                .collect(),
            _ => Vec::new(),
        };
        let amr: Vec<&str> = claims
            .get("amr")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        Ok(Identity {
            provider: c.name.clone(),
            subject,
            user: user.to_string(),
            email,
            groups,
            mfa: amr.contains(&"mfa") || amr.len() >= 2,
        })
    }
}

/// A random value for `state`, `nonce` and PKCE verifiers: 32 bytes,
/// base64url.
pub fn random_value() -> Result<String, OidcError> {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| OidcError::Setup("no randomness available".into()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The PKCE `S256` challenge of `verifier` (RFC 7636).
pub fn pkce_challenge(verifier: &str) -> String {
    use base64::Engine;
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// What a browser sign-in (authorization code flow) is started with;
/// the caller keeps it until the provider sends the browser back.
#[derive(Clone)]
pub struct BrowserSignIn {
    pub state: String,
    pub nonce: String,
    /// The PKCE verifier (secret until the code is exchanged).
    pub verifier: String,
}

impl BrowserSignIn {
    pub fn new() -> Result<BrowserSignIn, OidcError> {
        Ok(BrowserSignIn {
            state: random_value()?,
            nonce: random_value()?,
            verifier: random_value()?,
        })
    }
}

impl std::fmt::Debug for BrowserSignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserSignIn").finish_non_exhaustive()
    }
}

impl Provider {
    /// Where to send the browser: the authorization endpoint with
    /// `response_type=code`, the state, the nonce and the PKCE challenge.
    pub async fn authorization_url(
        &self,
        redirect_uri: &str,
        sign_in: &BrowserSignIn,
    ) -> Result<String, OidcError> {
        let d = self.discovery().await?;
        let endpoint = d.authorization_endpoint.clone().ok_or_else(|| {
            OidcError::Protocol(format!(
                "{} offers no authorization_endpoint",
                self.config.issuer
            ))
        })?;
        let scopes: Vec<&str> = self
            .config
            .scopes
            .iter()
            .map(String::as_str)
            .filter(|s| *s != "offline_access")
            .collect();
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.config.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &scopes.join(" "))
            .append_pair("state", &sign_in.state)
            .append_pair("nonce", &sign_in.nonce)
            .append_pair("code_challenge", &pkce_challenge(&sign_in.verifier))
            .append_pair("code_challenge_method", "S256")
            .finish();
        let sep = if endpoint.contains('?') { '&' } else { '?' };
        Ok(format!("{endpoint}{sep}{query}"))
    }

    /// Exchanges the code the browser brought back (with the PKCE
    /// verifier and the same redirect URI) for tokens.
    pub async fn exchange_code(
        &self,
        code: &str,
        sign_in: &BrowserSignIn,
        redirect_uri: &str,
    ) -> Result<TokenSet, OidcError> {
        let url = self.discovery().await?.token_endpoint.clone();
        let reply = http::post_form(
            &self.http,
            &url,
            &self.config.client_id,
            self.secret(),
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", &sign_in.verifier),
            ],
        )
        .await?;
        Ok(token_set(ok_or_oauth(&url, reply)?))
    }
}

/// The body of a 200 answer; an OAuth error answer as
/// [`OidcError::OAuth`]; anything else as [`OidcError::Status`].
fn ok_or_oauth(url: &str, reply: http::Reply) -> Result<Map<String, Value>, OidcError> {
    if reply.status == 200 {
        return Ok(reply.body);
    }
    if let Some(error) = reply.body.get("error").and_then(Value::as_str) {
        return Err(OidcError::OAuth {
            error: error.to_string(),
            description: reply
                .body
                .get("error_description")
                .and_then(Value::as_str)
                .map(String::from),
        });
    }
    Err(OidcError::Status {
        url: url.to_string(),
        status: reply.status,
        body: reply.text,
    })
}

fn token_set(body: Map<String, Value>) -> TokenSet {
    let text = |k: &str| body.get(k).and_then(Value::as_str).map(String::from);
    TokenSet {
        access_token: text("access_token"),
        id_token: text("id_token"),
        refresh_token: text("refresh_token"),
    }
}
