//! Blocking and unblocking a source address.

use std::time::Duration;

use gatehouse_model::{EventType, Outcome, Severity};

use crate::{from_now, Control, ControlError, Result};

impl Control<'_> {
    /// Refuses connections from `ip` for `duration`; returns the RFC 3339
    /// end of the block.
    pub async fn block_source(&self, ip: &str, duration: Duration, reason: &str) -> Result<String> {
        if ip.parse::<std::net::IpAddr>().is_err() {
            return Err(ControlError::Invalid(format!(
                "{ip:?} is not an IP address"
            )));
        }
        let until = from_now(duration);
        let ev = self
            .event(
                EventType::SOURCE_BLOCKED,
                Severity::High,
                Outcome::Success,
                serde_json::json!({"until": until}),
            )
            .source_ip(ip)
            .reason(reason);
        self.audit(ev).await?;
        self.store.block_source(ip, &until, reason).await?;
        Ok(until)
    }

    /// Lifts a block on `ip`; false when it was not blocked.
    pub async fn unblock_source(&self, ip: &str) -> Result<bool> {
        let ev = self
            .event(
                EventType::SOURCE_UNBLOCKED,
                Severity::Warn,
                Outcome::Success,
                serde_json::json!({}),
            )
            .source_ip(ip);
        self.audit(ev).await?;
        Ok(self.store.unblock_source(ip).await?)
    }
}
