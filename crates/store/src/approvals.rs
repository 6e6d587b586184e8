//! Just-in-time approval requests and the grants they produce.

use crate::bind::sql;
use crate::{Pool, Store, StoreError};

/// Where a request stands. Only a pending request can be decided or
/// expire; the other states are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalState {
    Pending,
    Granted,
    Denied,
    Expired,
}

impl ApprovalState {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Granted => "granted",
            ApprovalState::Denied => "denied",
            ApprovalState::Expired => "expired",
        }
    }

    /// The column's text; anything unknown reads as expired (final, and
    /// grants nothing).
    fn parse(s: &str) -> ApprovalState {
        match s {
            "pending" => ApprovalState::Pending,
            "granted" => ApprovalState::Granted,
            "denied" => ApprovalState::Denied,
            _ => ApprovalState::Expired,
        }
    }
}

impl std::fmt::Display for ApprovalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub id: String,
    pub user: String,
    pub target: String,
    pub login: String,
    /// Roles whose members may decide, comma-separated.
    pub approvers: String,
    pub status: ApprovalState,
    pub requested_at: String,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    pub grant_until: Option<String>,
}

type Row = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn from_row(r: Row) -> Approval {
    Approval {
        id: r.0,
        user: r.1,
        target: r.2,
        login: r.3,
        approvers: r.4,
        status: ApprovalState::parse(&r.5),
        requested_at: r.6,
        decided_by: r.7,
        reason: r.8,
        grant_until: r.9,
    }
}

const COLUMNS: &str = "id, user_name, target, login, approvers, status, requested_at, decided_by, reason, grant_until";

fn now() -> String {
    gatehouse_model::event::format_time(chrono::Utc::now())
}

impl Store {
    async fn approvals_where(
        &self,
        clause: &str,
        binds: &[&str],
    ) -> Result<Vec<Approval>, StoreError> {
        let q = sql(
            self.backend(),
            &format!("SELECT {COLUMNS} FROM approvals WHERE {clause} ORDER BY requested_at"),
        );
        let rows: Vec<Row> = match &self.inner.pool {
            Pool::Sqlite { rw, .. } => {
                let mut query = sqlx::query_as(sqlx::AssertSqlSafe(q));
                for b in binds {
                    query = query.bind(*b);
                }
                query.fetch_all(rw).await?
            }
            Pool::Postgres(pg) => {
                let mut query = sqlx::query_as(sqlx::AssertSqlSafe(q));
                for b in binds {
                    query = query.bind(*b);
                }
                query.fetch_all(pg).await?
            }
        };
        Ok(rows.into_iter().map(from_row).collect())
    }

    async fn approvals_exec(&self, text: &str, binds: &[Option<&str>]) -> Result<u64, StoreError> {
        let q = sql(self.backend(), text);
        Ok(match &self.inner.pool {
            Pool::Sqlite { rw, .. } => {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(q));
                for b in binds {
                    query = query.bind(*b);
                }
                query.execute(rw).await?.rows_affected()
            }
            Pool::Postgres(pg) => {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(q));
                for b in binds {
                    query = query.bind(*b);
                }
                query.execute(pg).await?.rows_affected()
            }
        })
    }

    /// A new pending request; returns its short id.
    pub async fn request_approval(
        &self,
        user: &str,
        target: &str,
        login: &str,
        approvers: &str,
    ) -> Result<String, StoreError> {
        let ulid = ulid::Ulid::new().to_string();
        let id = ulid[ulid.len() - 8..].to_string();
        self.approvals_exec(
            "INSERT INTO approvals (id, user_name, target, login, approvers, status, requested_at) VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6)",
            &[Some(&id), Some(user), Some(target), Some(login), Some(approvers), Some(&now())],
        )
        .await?;
        Ok(id)
    }

    pub async fn approval(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        Ok(self.approvals_where("id = ?1", &[id]).await?.pop())
    }

    pub async fn pending_approvals(&self) -> Result<Vec<Approval>, StoreError> {
        self.approvals_where("status = 'pending'", &[]).await
    }

    /// Decides a pending request; false when it was no longer pending.
    pub async fn decide_approval(
        &self,
        id: &str,
        granted: bool,
        by: &str,
        reason: Option<&str>,
        grant_until: Option<&str>,
    ) -> Result<bool, StoreError> {
        let status = if granted { "granted" } else { "denied" };
        let n = self
            .approvals_exec(
                "UPDATE approvals SET status = ?1, decided_by = ?2, reason = ?3, grant_until = ?4 WHERE id = ?5 AND status = 'pending'",
                &[Some(status), Some(by), reason, grant_until, Some(id)],
            )
            .await?;
        if n == 1 {
            self.wake(&crate::wake::approval_wake(id)).await?;
        }
        Ok(n == 1)
    }

    pub async fn expire_approval(&self, id: &str) -> Result<bool, StoreError> {
        let n = self
            .approvals_exec(
                "UPDATE approvals SET status = 'expired' WHERE id = ?1 AND status = 'pending'",
                &[Some(id)],
            )
            .await?;
        Ok(n == 1)
    }

    /// Is there a grant in force for this user, target and login?
    pub async fn active_grant(
        &self,
        user: &str,
        target: &str,
        login: &str,
    ) -> Result<bool, StoreError> {
        let n = now();
        let rows = self
            .approvals_where(
                "user_name = ?1 AND target = ?2 AND login = ?3 AND status = 'granted' AND grant_until > ?4",
                &[user, target, login, &n],
            )
            .await?;
        Ok(!rows.is_empty())
    }
}
