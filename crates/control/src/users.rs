//! Locks and second factors of a user.

use std::time::Duration;

use gatehouse_model::{ConsolePermission, EventType, Outcome, Severity};

use crate::{from_now, Control, ControlError, Result};

/// A lock that was put in place.
#[derive(Debug, Clone)]
pub struct Locked {
    /// RFC 3339 end of the lock; None = until unlocked.
    pub until: Option<String>,
    /// Live sessions (on any node) asked to end.
    pub ending: Vec<String>,
}

/// A new authenticator secret, to show once to the user.
#[derive(Debug, Clone)]
pub struct Enrolment {
    pub uri: String,
    pub secret_base32: String,
}

impl Control<'_> {
    /// Refuses `user` new sessions (for `ttl`, or until unlocked) and asks
    /// every node to end their live ones.
    pub async fn lock_user(
        &self,
        user: &str,
        reason: &str,
        ttl: Option<Duration>,
    ) -> Result<Locked> {
        self.permit(
            ConsolePermission::Users,
            "lock users or reset authenticators",
        )?;
        self.lockable_user(user)?;
        let until = ttl.map(from_now);
        let ending = self.store.live_sessions_of(user).await?;
        let ev = self
            .event(
                EventType::USER_LOCKED,
                Severity::Warn,
                Outcome::Success,
                serde_json::json!({"until": until, "ending_sessions": ending}),
            )
            .user(user)
            .reason(reason);
        self.audit(ev).await?;
        self.store
            .lock_user(user, reason, until.as_deref(), &self.actor.name)
            .await?;
        let why = format!("user locked: {reason}");
        for sid in &ending {
            self.store.request_kill(sid, &why, &self.actor.name).await?;
        }
        Ok(Locked { until, ending })
    }

    /// Lifts `user`'s lock; false when there was none.
    pub async fn unlock_user(&self, user: &str) -> Result<bool> {
        self.permit(
            ConsolePermission::Users,
            "lock users or reset authenticators",
        )?;
        self.lockable_user(user)?;
        let ev = self
            .event(
                EventType::USER_UNLOCKED,
                Severity::Warn,
                Outcome::Success,
                serde_json::json!({}),
            )
            .user(user);
        self.audit(ev).await?;
        Ok(self.store.unlock_user(user).await?)
    }

    /// Creates `user`'s TOTP secret (sealed with `auth.secrets_key`).
    pub async fn enroll_totp(&self, user: &str) -> Result<Enrolment> {
        self.permit(
            ConsolePermission::Users,
            "lock users or reset authenticators",
        )?;
        self.known_user(user)?;
        if self.store.totp(user).await?.is_some() {
            return Err(ControlError::Refused(format!(
                "{user} already has an authenticator; run `gatehouse users totp-reset {user}` first"
            )));
        }
        let sbox = gatehouse_auth::SecretBox::load_or_create(&self.config.auth.secrets_key)
            .map_err(|e| ControlError::Invalid(e.to_string()))?;
        let secret =
            gatehouse_auth::random_bytes(20).map_err(|e| ControlError::Invalid(e.to_string()))?;
        let sealed = sbox
            .seal(&secret)
            .map_err(|e| ControlError::Invalid(e.to_string()))?;
        let ev = self
            .event(
                EventType::MFA_ENROLLED,
                Severity::Warn,
                Outcome::Success,
                serde_json::json!({"method": "totp"}),
            )
            .user(user);
        self.audit(ev).await?;
        if !self.store.enroll_totp(user, &sealed).await? {
            return Err(ControlError::Refused(format!(
                "{user} was given an authenticator by someone else meanwhile"
            )));
        }
        Ok(Enrolment {
            uri: gatehouse_auth::totp::uri(user, &secret),
            secret_base32: gatehouse_auth::totp::base32(&secret),
        })
    }

    /// Removes `user`'s TOTP secret; false when there was none.
    pub async fn reset_totp(&self, user: &str) -> Result<bool> {
        self.permit(
            ConsolePermission::Users,
            "lock users or reset authenticators",
        )?;
        self.known_user(user)?;
        let ev = self
            .event(
                EventType::MFA_RESET,
                Severity::Warn,
                Outcome::Success,
                serde_json::json!({}),
            )
            .user(user);
        self.audit(ev).await?;
        Ok(self.store.reset_totp(user).await?)
    }
}
