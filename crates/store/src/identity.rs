//! Identity state kept in the store: TOTP secrets (sealed by the caller)
//! with the last accepted time step, and user locks.

use crate::{Store, StoreError};

/// An active lock on a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserLock {
    pub reason: String,
    /// RFC 3339; None = until unlocked.
    pub until: Option<String>,
    pub by: String,
}

fn now() -> String {
    gatehouse_model::event::format_time(chrono::Utc::now())
}

impl Store {
    /// Stores a new sealed TOTP secret; false when the user already has one.
    pub async fn enroll_totp(&self, user: &str, sealed: &str) -> Result<bool, StoreError> {
        let n = exec!(
            self,
            "INSERT INTO totp_secrets (user_name, sealed, last_step, enrolled_at) VALUES (?1, ?2, 0, ?3) ON CONFLICT (user_name) DO NOTHING",
            user,
            sealed,
            now()
        );
        Ok(n == 1)
    }

    /// The sealed secret and the last accepted step.
    pub async fn totp(&self, user: &str) -> Result<Option<(String, i64)>, StoreError> {
        Ok(fetch_opt!(
            self,
            (String, i64),
            "SELECT sealed, last_step FROM totp_secrets WHERE user_name = ?1",
            user
        ))
    }

    /// Marks `step` used; false when it (or a later one) was used already,
    /// which makes every code single-use even across gateway nodes.
    pub async fn use_totp_step(&self, user: &str, step: i64) -> Result<bool, StoreError> {
        let n = exec!(
            self,
            "UPDATE totp_secrets SET last_step = ?1 WHERE user_name = ?2 AND last_step < ?1",
            step,
            user
        );
        Ok(n == 1)
    }

    pub async fn reset_totp(&self, user: &str) -> Result<bool, StoreError> {
        let n = exec!(self, "DELETE FROM totp_secrets WHERE user_name = ?1", user);
        Ok(n == 1)
    }

    pub async fn lock_user(
        &self,
        user: &str,
        reason: &str,
        until: Option<&str>,
        by: &str,
    ) -> Result<(), StoreError> {
        exec!(
            self,
            "INSERT INTO user_locks (user_name, reason, locked_until, locked_by, locked_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (user_name) DO UPDATE SET reason = excluded.reason, locked_until = excluded.locked_until,
             locked_by = excluded.locked_by, locked_at = excluded.locked_at",
            user,
            reason,
            until,
            by,
            now()
        );
        Ok(())
    }

    /// Where sink `name` has delivered up to (event seq; 0 = nothing).
    pub async fn sink_cursor(&self, name: &str) -> Result<i64, StoreError> {
        Ok(fetch_opt!(
            self,
            (i64,),
            "SELECT seq FROM sink_cursors WHERE name = ?1",
            name
        )
        .map(|r| r.0)
        .unwrap_or(0))
    }

    pub async fn set_sink_cursor(&self, name: &str, seq: i64) -> Result<(), StoreError> {
        exec!(
            self,
            "INSERT INTO sink_cursors (name, seq) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET seq = excluded.seq",
            name,
            seq
        );
        Ok(())
    }

    /// Refuses connections from `ip` until `until` (RFC 3339).
    pub async fn block_source(
        &self,
        ip: &str,
        until: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        exec!(
            self,
            "INSERT INTO source_blocks (source_ip, blocked_until, reason) VALUES (?1, ?2, ?3)
             ON CONFLICT (source_ip) DO UPDATE SET blocked_until = excluded.blocked_until, reason = excluded.reason",
            ip,
            until,
            reason
        );
        Ok(())
    }

    /// The reason `ip` is blocked now, if it is.
    pub async fn source_blocked(&self, ip: &str) -> Result<Option<String>, StoreError> {
        let row = fetch_opt!(
            self,
            (String, String),
            "SELECT blocked_until, reason FROM source_blocks WHERE source_ip = ?1",
            ip
        );
        Ok(row.and_then(|(until, reason)| (until.as_str() > now().as_str()).then_some(reason)))
    }

    pub async fn unlock_user(&self, user: &str) -> Result<bool, StoreError> {
        let n = exec!(self, "DELETE FROM user_locks WHERE user_name = ?1", user);
        Ok(n == 1)
    }

    /// The user's lock, if one is in force now.
    pub async fn user_lock(&self, user: &str) -> Result<Option<UserLock>, StoreError> {
        let row = fetch_opt!(
            self,
            (String, Option<String>, String),
            "SELECT reason, locked_until, locked_by FROM user_locks WHERE user_name = ?1",
            user
        );
        Ok(row.and_then(|(reason, until, by)| {
            let expired = until
                .as_deref()
                .map(|u| u <= now().as_str())
                .unwrap_or(false);
            (!expired).then_some(UserLock { reason, until, by })
        }))
    }

    /// Blocks in force now: (address, until, reason), soonest end first.
    pub async fn blocked_sources(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows = fetch_all!(
            self,
            (String, String, String),
            "SELECT source_ip, blocked_until, reason FROM source_blocks WHERE blocked_until > ?1 ORDER BY blocked_until",
            now()
        );
        Ok(rows)
    }

    /// Lifts a block on `ip`; false when it was not blocked.
    pub async fn unblock_source(&self, ip: &str) -> Result<bool, StoreError> {
        let n = exec!(self, "DELETE FROM source_blocks WHERE source_ip = ?1", ip);
        Ok(n == 1)
    }

    /// Sessions of `user` that have not ended (on any node).
    pub async fn live_sessions_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let rows = fetch_all!(
            self,
            (String,),
            "SELECT session_id FROM sessions WHERE \"user\" = ?1 AND end_time IS NULL ORDER BY start_time",
            user
        );
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// The newest `limit` sessions of `user` on any node: (session id,
    /// target, login, start time, end time when ended).
    pub async fn sessions_of(
        &self,
        user: &str,
        limit: i64,
    ) -> Result<Vec<SessionLine>, StoreError> {
        let rows = fetch_all!(
            self,
            (String, Option<String>, Option<String>, String, Option<String>),
            "SELECT session_id, target, login, start_time, end_time FROM sessions WHERE \"user\" = ?1 ORDER BY start_time DESC LIMIT ?2",
            user,
            limit
        );
        Ok(rows
            .into_iter()
            .map(|(id, target, login, start, end)| SessionLine {
                id,
                target: target.unwrap_or_default(),
                login: login.unwrap_or_default(),
                start,
                end,
            })
            .collect())
    }

    /// Is session `id` known and still running?
    pub async fn session_running(&self, id: &str) -> Result<bool, StoreError> {
        let row = fetch_opt!(
            self,
            (String,),
            "SELECT session_id FROM sessions WHERE session_id = ?1 AND end_time IS NULL",
            id
        );
        Ok(row.is_some())
    }

    /// Who ran session `id`, its recording (None while it runs or when it
    /// recorded nothing) and whether it has ended; None for an unknown id.
    pub async fn session_owner(&self, id: &str) -> Result<Option<SessionRef>, StoreError> {
        let row =
            fetch_opt!(
            self,
            (Option<String>, Option<String>, Option<String>, Option<String>),
            "SELECT \"user\", target, recording_id, end_time FROM sessions WHERE session_id = ?1",
            id
        );
        Ok(row.map(|(user, target, recording_id, end)| SessionRef {
            user: user.unwrap_or_default(),
            target,
            recording_id,
            ended: end.is_some(),
        }))
    }
}

/// One line of a user's session list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLine {
    pub id: String,
    pub target: String,
    pub login: String,
    pub start: String,
    pub end: Option<String>,
}

/// What the control layer needs to know of a session to let someone read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRef {
    pub user: String,
    pub target: Option<String>,
    pub recording_id: Option<String>,
    pub ended: bool,
}
