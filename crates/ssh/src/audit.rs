//! Every security-relevant decision becomes exactly one event through
//! [`Audit::record`]. Events that gate access are committed to the store
//! before the caller proceeds; when the store cannot be written and
//! `audit.on_failure = "refuse"`, the caller is told to refuse.

use gatehouse_model::{NewEvent, OnFailure};
use gatehouse_store::Store;

/// Returned when an event could not be stored and policy says to refuse.
#[derive(Debug, Clone)]
pub struct AuditUnavailable(pub String);

impl std::fmt::Display for AuditUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the gateway cannot write its audit trail ({}); new sessions are refused until an administrator fixes the store",
            self.0
        )
    }
}

#[derive(Clone)]
pub struct Audit {
    pub store: Store,
}

impl Audit {
    /// Appends `event`. On failure, logs it and returns `Err` when
    /// `on_failure` is `refuse`.
    pub async fn record(
        &self,
        event: NewEvent,
        on_failure: OnFailure,
    ) -> Result<(), AuditUnavailable> {
        tracing::info!(
            target: "gatehouse::audit",
            kind = %event.kind,
            user = ?event.user,
            target_name = ?event.target,
            result = event.result.as_str(),
            reason = ?event.reason,
            "event"
        );
        match self.store.append(&event).await {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::error!(error = %e, kind = %event.kind, "cannot write audit event");
                match on_failure {
                    OnFailure::Refuse => Err(AuditUnavailable(e.to_string())),
                    OnFailure::Continue => Ok(()),
                }
            }
        }
    }
}
