//! `policy explain` for a user only an identity provider knows: they are
//! judged with the roles their groups gave at their last confirmed
//! sign-in (the store's bound keys), the way the gateway judged them.

use anyhow::Result;
use gatehouse_model::{Config, User};

use crate::open_store;

/// The config a user from an identity provider is explained under, and
/// what the provider said of them.
pub struct SsoView {
    pub config: Config,
    /// `identity` in the JSON output.
    pub details: serde_json::Value,
    /// The lines printed before the decision.
    pub text: String,
}

/// None for a `[[users]]` entry, without identity providers, or when the
/// user has no current sign-in.
pub async fn explain_view(config: &Config, user: &str) -> Result<Option<SsoView>> {
    if config.identity_providers.is_empty() || config.user(user).is_some() {
        return Ok(None);
    }
    let store = open_store(config).await?;
    let found = store.sso_identity(user).await;
    store.close().await;
    let Some(k) = found? else {
        return Ok(None);
    };
    let Some(idp) = config.identity_provider(&k.provider) else {
        return Ok(None);
    };
    let grants = idp.roles_for(&k.groups);
    let roles: Vec<String> = grants.iter().map(|g| g.role.clone()).collect();
    // What the provider sent is escaped: it reaches a terminal.
    let esc = |s: &str| gatehouse_model::escape_control(s).into_owned();
    let mut text = format!(
        "identity: {user} from {} (subject {}, {}), groups [{}] as of {}\n",
        idp.name,
        esc(&k.subject),
        esc(k.email.as_deref().unwrap_or("no email")),
        esc(&k.groups.join(", ")),
        k.checked_at
    );
    for g in &grants {
        text.push_str(&format!(
            "  {} {} gives role {}\n",
            idp.groups_claim,
            esc(&g.claim),
            g.role
        ));
    }
    if grants.is_empty() {
        text.push_str("  no group maps to a role (role_map)\n");
    }
    let details = serde_json::json!({
        "provider": idp.name,
        "subject": k.subject,
        "email": k.email,
        "groups": k.groups,
        "checked_at": k.checked_at,
        "roles": grants.iter().map(|g| serde_json::json!({
            "claim": idp.groups_claim, "value": g.claim, "role": g.role,
        })).collect::<Vec<_>>(),
    });
    Ok(Some(SsoView {
        config: config.with_user(User {
            name: user.to_string(),
            keys: Vec::new(),
            roles,
            password_hash: None,
            principals: Vec::new(),
        }),
        details,
        text,
    }))
}
