//! Single sign-on for SSH logins: an identity provider vouches for the
//! person, with unchanged OpenSSH clients.
//!
//! A key no `[[users]]` entry holds (or any first factor of a user whose
//! role says `require_sso`) is followed by a device sign-in (RFC 8628)
//! over keyboard-interactive: the gateway shows the verification URL and
//! code, polls the provider while the person signs in in a browser, and
//! admits the identity the verified ID token names. The key is then bound
//! to that identity in the store for `sso_session`; a later login with it
//! asks the provider first (the refresh token grant), so a person removed
//! there loses access at their next login. The provider's answers are
//! checked in `gatehouse_oidc`; what the identity may do is the policy of
//! the roles `role_map` gives its groups.

use std::sync::Arc;
use std::time::Instant;

use gatehouse_auth::SecretBox;
use gatehouse_model::event::format_time;
use gatehouse_model::{Config, IdentityProvider};
use gatehouse_oidc::{DeviceStart, Identity as OidcIdentity, OidcError, Provider};
use gatehouse_store::SsoKey;

use crate::session::{Shared, SsoLogin};

/// A started device sign-in of one connection.
pub(crate) struct SignIn {
    pub provider: Arc<Provider>,
    pub start: DeviceStart,
}

/// What a key's binding says at a login.
pub(crate) enum Bound {
    /// The key is bound to nobody (or to someone else): sign in.
    No,
    /// The provider confirmed the identity just now.
    Confirmed(SsoLogin),
    /// The provider no longer stands behind it: the binding is gone.
    Refused(String),
    /// The provider or the store cannot be asked now: refuse, keep the
    /// binding.
    Unavailable(String),
}

/// May `name` log in through an identity provider without a `[[users]]`
/// entry?
pub(crate) fn candidate(config: &Config, name: &str) -> bool {
    !config.identity_providers.is_empty() && config.user(name).is_none()
}

fn now() -> String {
    format_time(chrono::Utc::now())
}

fn secrets(config: &Config) -> Result<SecretBox, String> {
    SecretBox::load_or_create(&config.auth.secrets_key)
        .map_err(|e| format!("cannot open auth.secrets_key: {e}"))
}

/// The roles `identity` holds under `provider`, and the login that says so.
fn login(
    provider: &IdentityProvider,
    identity: OidcIdentity,
    via: &'static str,
    bound_until: Option<String>,
) -> SsoLogin {
    SsoLogin {
        grants: provider.roles_for(&identity.groups),
        claim: provider.groups_claim.clone(),
        identity,
        via,
        bound_until,
    }
}

/// The config a user from an identity provider is judged by: theirs
/// among the users, with the roles their groups map to (and, for a
/// `[[users]]` entry of the same name, its own roles too).
pub(crate) fn config_for(config: &Config, user: &str, login: &SsoLogin) -> Config {
    let roles: Vec<String> = login.grants.iter().map(|g| g.role.clone()).collect();
    config.with_granted_roles(user, &roles)
}

/// The identity key `fingerprint` is bound to, confirmed with its
/// provider (the refresh token grant). One check per key at a time.
pub(crate) async fn check_bound(
    shared: &Shared,
    config: &Config,
    user: &str,
    fingerprint: &str,
) -> Bound {
    let lock = shared.sso.key_lock(fingerprint);
    let _one_at_a_time = lock.lock().await;
    let binding = match shared.store.sso_key(fingerprint).await {
        Ok(Some(b)) if b.user == user => b,
        Ok(_) => return Bound::No,
        Err(e) => return Bound::Unavailable(format!("cannot read the key's sign-in: {e}")),
    };
    let unbind = |why: String| async move {
        let _ = shared.store.unbind_sso_key(fingerprint).await;
        Bound::Refused(why)
    };
    let Some(idp) = config.identity_provider(&binding.provider) else {
        return unbind(format!(
            "identity provider {:?} is no longer configured",
            binding.provider
        ))
        .await;
    };
    let Some(sealed) = &binding.refresh_sealed else {
        // Nothing to ask the provider with: sign in again.
        let _ = shared.store.unbind_sso_key(fingerprint).await;
        return Bound::No;
    };
    let refresh = match secrets(config).and_then(|b| {
        b.open(sealed)
            .map_err(|e| format!("cannot open the refresh token: {e}"))
            .and_then(|t| String::from_utf8(t).map_err(|e| e.to_string()))
    }) {
        Ok(t) => t,
        Err(e) => return unbind(e).await,
    };
    let provider = match shared.sso.provider(idp) {
        Ok(p) => p,
        Err(e) => return Bound::Unavailable(e.to_string()),
    };
    let confirmed = match provider.refresh(&refresh).await {
        Ok(tokens) => provider
            .identity(&tokens, None, Some(&binding.subject))
            .await
            .map(|id| (id, tokens.refresh_token)),
        Err(e) => Err(e),
    };
    let (identity, rotated) = match confirmed {
        Ok((id, _)) if id.user != user => {
            return unbind(format!(
                "{} now names subject {:?} {:?}, not {user:?}",
                idp.name, id.subject, id.user
            ))
            .await
        }
        Ok(ok) => ok,
        Err(e) if e.is_refusal() => {
            return unbind(format!("{} refused the key's sign-in: {e}", idp.name)).await
        }
        Err(e) => return Bound::Unavailable(e.to_string()),
    };
    let refresh_sealed = match rotated {
        Some(t) => {
            match secrets(config).and_then(|b| b.seal(t.as_bytes()).map_err(|e| e.to_string())) {
                Ok(s) => Some(s),
                Err(e) => return Bound::Unavailable(e),
            }
        }
        None => binding.refresh_sealed.clone(),
    };
    let checked = SsoKey {
        email: identity.email.clone(),
        groups: identity.groups.clone(),
        mfa: identity.mfa,
        refresh_sealed,
        checked_at: now(),
        ..binding.clone()
    };
    if let Err(e) = shared.store.sso_key_checked(&checked).await {
        return Bound::Unavailable(format!("cannot record the key's sign-in: {e}"));
    }
    Bound::Confirmed(login(idp, identity, "bound_key", Some(binding.expires_at)))
}

/// Starts a device sign-in at the first configured provider.
pub(crate) async fn start(shared: &Shared, config: &Config) -> Result<SignIn, String> {
    let idp = config
        .identity_providers
        .first()
        .ok_or("no identity provider is configured")?;
    let provider = shared.sso.provider(idp).map_err(|e| e.to_string())?;
    let start = provider
        .start_device()
        .await
        .map_err(|e| format!("cannot start a sign-in at {}: {e}", idp.name))?;
    Ok(SignIn { provider, start })
}

/// What the person is shown: where to sign in, and the code.
pub(crate) fn instructions(sign_in: &SignIn, user: &str) -> String {
    let s = &sign_in.start;
    let url = s
        .verification_uri_complete
        .as_deref()
        .unwrap_or(&s.verification_uri);
    let minutes = s
        .expires_at
        .saturating_duration_since(Instant::now())
        .as_secs()
        .div_ceil(60);
    format!(
        "Sign in as {user} at {name}:\n\n    {url}\n\nand check that it shows the code {code}.\nWaiting up to {minutes} minutes for the sign-in...",
        name = sign_in.provider.config().name,
        code = s.user_code,
    )
}

/// Why a device sign-in failed, for the person and the trail.
fn describe(idp: &str, e: &OidcError) -> String {
    match e {
        OidcError::TimedOut => format!("the sign-in at {idp} was not completed in time"),
        OidcError::OAuth { error, .. } if error == "access_denied" => {
            format!("the sign-in at {idp} was refused or cancelled")
        }
        OidcError::OAuth { error, .. } if error == "expired_token" => {
            format!("the sign-in code of {idp} expired")
        }
        other => format!("{idp}: {other}"),
    }
}

/// Waits for the person to sign in, verifies what the provider answers,
/// and binds `key` (the fingerprint of the key the client proved, when
/// it was one) to the identity. The identity must be `user`, the name
/// the SSH username gave.
pub(crate) async fn finish(
    shared: &Shared,
    config: &Config,
    sign_in: &SignIn,
    user: &str,
    key: Option<&str>,
) -> Result<SsoLogin, (String, Option<OidcIdentity>)> {
    let idp = sign_in.provider.config();
    let tokens = sign_in
        .provider
        .wait_device(&sign_in.start, sign_in.start.expires_at)
        .await
        .map_err(|e| (describe(&idp.name, &e), None))?;
    let identity = sign_in
        .provider
        .identity(&tokens, None, None)
        .await
        .map_err(|e| {
            (
                format!("the sign-in at {} was refused: {e}", idp.name),
                None,
            )
        })?;
    if identity.user != user {
        return Err((
            format!(
                "signed in at {} as {:?}, but the SSH username names {user:?}; log in as {:?}",
                idp.name, identity.user, identity.user
            ),
            Some(identity),
        ));
    }
    let bound_until = match (key, &tokens.refresh_token) {
        (Some(fp), Some(refresh)) => {
            match bind(shared, config, idp, &identity, fp, refresh).await {
                Ok(until) => Some(until),
                Err(e) => return Err((e, Some(identity))),
            }
        }
        _ => None,
    };
    Ok(login(idp, identity, "device", bound_until))
}

/// Binds key `fingerprint` to `identity` for `sso_session`; until when.
async fn bind(
    shared: &Shared,
    config: &Config,
    idp: &IdentityProvider,
    identity: &OidcIdentity,
    fingerprint: &str,
    refresh: &str,
) -> Result<String, String> {
    let sealed = secrets(config)?
        .seal(refresh.as_bytes())
        .map_err(|e| format!("cannot seal the refresh token: {e}"))?;
    let now = chrono::Utc::now();
    let until = chrono::Duration::from_std(idp.sso_session.get())
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(now);
    let key = SsoKey {
        key_fingerprint: fingerprint.to_string(),
        user: identity.user.clone(),
        provider: idp.name.clone(),
        subject: identity.subject.clone(),
        email: identity.email.clone(),
        groups: identity.groups.clone(),
        mfa: identity.mfa,
        refresh_sealed: Some(sealed),
        bound_at: format_time(now),
        expires_at: format_time(until),
        checked_at: format_time(now),
    };
    shared
        .store
        .bind_sso_key(&key)
        .await
        .map_err(|e| format!("cannot bind the key to the sign-in: {e}"))?;
    Ok(key.expires_at)
}
