//! Deciding a just-in-time approval request.

use std::time::Duration;

use gatehouse_model::{ConsolePermission, EventType, Outcome, Severity};
use gatehouse_store::{Approval, ApprovalState};

use crate::{from_now, Authority, Channel, Control, ControlError, Result};

/// How long a grant lasts when the rule that asked for it names no ttl.
const DEFAULT_GRANT: Duration = Duration::from_secs(3600);

/// A decision that was made.
#[derive(Debug, Clone)]
pub struct Decided {
    pub request: Approval,
    pub granted: bool,
    /// RFC 3339 end of the grant (granted only).
    pub until: Option<String>,
}

impl Decided {
    /// One line for the person who decided.
    pub fn summary(&self) -> String {
        let a = &self.request;
        match &self.until {
            Some(until) if self.granted => format!(
                "approved {}: {} may use {}@{} until {until}",
                a.id, a.user, a.login, a.target
            ),
            _ => format!("denied {}", a.id),
        }
    }
}

impl Control<'_> {
    /// Grants or denies pending request `id`. Nobody decides their own
    /// request; a Gatehouse user must hold one of the approver roles the
    /// request names. The `approval.granted` / `approval.denied` event is
    /// written before the request changes state.
    pub async fn decide_approval(
        &self,
        id: &str,
        grant: bool,
        reason: Option<String>,
    ) -> Result<Decided> {
        let a = self.store.approval(id).await?.ok_or_else(|| {
            ControlError::NotFound(format!(
                "no request {id}; {}",
                self.hint("approvals list", "requests")
            ))
        })?;
        if a.status != ApprovalState::Pending {
            return Err(ControlError::Refused(format!(
                "request {id} is already {}",
                a.status
            )));
        }
        self.may_decide(&a)?;
        let ttl = gatehouse_policy::decide(self.config, &a.user, &a.target, Some(&a.login))
            .approval
            .and_then(|n| n.ttl)
            .unwrap_or(DEFAULT_GRANT);
        let until = grant.then(|| from_now(ttl));
        let (kind, result) = if grant {
            (EventType::APPROVAL_GRANTED, Outcome::Success)
        } else {
            (EventType::APPROVAL_DENIED, Outcome::Denied)
        };
        let mut ev = self
            .event(
                kind,
                Severity::Warn,
                result,
                serde_json::json!({"request": id, "requester": a.user, "grant_until": until}),
            )
            .user(self.actor.name.clone())
            .target(a.target.clone())
            .login(a.login.clone());
        ev.reason = reason.clone();
        self.audit(ev).await?;
        let decided = self
            .store
            .decide_approval(
                id,
                grant,
                &self.actor.name,
                reason.as_deref(),
                until.as_deref(),
            )
            .await?;
        if !decided {
            return Err(ControlError::Refused(format!(
                "request {id} was decided by someone else meanwhile"
            )));
        }
        Ok(Decided {
            request: a,
            granted: grant,
            until,
        })
    }

    fn may_decide(&self, a: &Approval) -> Result<()> {
        if a.user == self.actor.name {
            return Err(ControlError::Refused(
                "nobody approves their own request; ask another approver".into(),
            ));
        }
        if self.actor.channel == Channel::Web {
            self.permit(ConsolePermission::Approvals, "decide approval requests")?;
        }
        if self.actor.authority == Authority::User {
            let roles: Vec<String> = a.approvers.split(',').map(str::to_string).collect();
            if !gatehouse_policy::can_approve(self.config, &self.actor.name, &roles) {
                return Err(ControlError::Refused(format!(
                    "you may not decide request {}: it needs a member of {}",
                    a.id, a.approvers
                )));
            }
        }
        Ok(())
    }

    /// Pending requests this actor may decide (all of them for an operator).
    pub async fn decidable_requests(&self) -> Result<Vec<Approval>> {
        let pending = self.store.pending_approvals().await?;
        Ok(pending
            .into_iter()
            .filter(|a| self.may_decide(a).is_ok())
            .collect())
    }
}
