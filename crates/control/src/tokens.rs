//! API tokens for `/api/v1`: each acts as its user, with exactly that
//! user's console permissions. Only a SHA-256 of a token is stored; the
//! token itself is shown once, at creation.

use gatehouse_model::{EventType, Outcome, Severity};
use gatehouse_store::ApiToken;

use crate::{Authority, Control, ControlError, Result};

/// A token just made: `token` is shown to its owner once.
#[derive(Debug, Clone)]
pub struct CreatedToken {
    pub id: String,
    pub token: String,
}

impl Control<'_> {
    /// A Gatehouse user manages only their own tokens; the operator any.
    fn own_tokens(&self, user: &str) -> Result<()> {
        if self.actor.authority == Authority::User && user != self.actor.name {
            return Err(ControlError::Refused(format!(
                "{} may manage only their own API tokens",
                self.actor.name
            )));
        }
        Ok(())
    }

    /// Makes a token for `user` named `name`.
    pub async fn create_token(&self, user: &str, name: &str) -> Result<CreatedToken> {
        self.known_user(user)?;
        self.own_tokens(user)?;
        if name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(ControlError::Invalid(
                "a token name is at most 100 characters, without control characters".into(),
            ));
        }
        let bytes =
            gatehouse_auth::random_bytes(32).map_err(|e| ControlError::Invalid(e.to_string()))?;
        let token = format!("ghp_{}", gatehouse_model::hex(&bytes));
        let hash = gatehouse_store::token_hash(&token);
        // The id is fixed by the store; the event names the hash's prefix
        // so that it can be matched to the row before the row exists.
        let ev = self
            .event(
                EventType::TOKEN_CREATED,
                Severity::Warn,
                Outcome::Success,
                serde_json::json!({"name": name, "token_hash_prefix": &hash[..12]}),
            )
            .user(user);
        self.audit(ev).await?;
        let t = self
            .store
            .create_api_token(user, name, &hash, &self.actor.name)
            .await?;
        Ok(CreatedToken { id: t.id, token })
    }

    /// Revokes token `id`; false when it was revoked already.
    pub async fn revoke_token(&self, id: &str) -> Result<bool> {
        let t = self.store.api_token(id).await?.ok_or_else(|| {
            ControlError::NotFound(format!(
                "no API token {id}; {}",
                self.hint("tokens list", "tokens")
            ))
        })?;
        self.own_tokens(&t.user)?;
        let ev = self
            .event(
                EventType::TOKEN_REVOKED,
                Severity::Warn,
                Outcome::Success,
                serde_json::json!({"token_id": id, "name": t.name}),
            )
            .user(t.user.clone());
        self.audit(ev).await?;
        Ok(self.store.revoke_api_token(id).await?)
    }

    /// Tokens (of `user`, or all for the operator; a user sees their own).
    pub async fn tokens(&self, user: Option<&str>) -> Result<Vec<ApiToken>> {
        let user = match self.actor.authority {
            Authority::User => Some(self.actor.name.as_str()),
            Authority::Operator => user,
        };
        Ok(self.store.api_tokens(user).await?)
    }
}
