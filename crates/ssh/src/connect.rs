//! Connecting the session's target: once per connection, on first use
//! (or as soon as authentication allows it). The connection that succeeds
//! writes `session.start`; a changed host key writes a high-severity
//! event. The role's `max_session` starts counting here.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_model::{EventType, Outcome, Severity};

use crate::session::{end_connection, Destination, Events, Identity};
use crate::upstream::{self, Upstream, UpstreamError};

/// The upstream connection of this session, connecting on first use.
/// Writes `session.start` on success and a high-severity event on a host
/// key mismatch.
pub(crate) async fn upstream_for(
    events: &Events,
    who: &Identity,
    dest: &Destination,
) -> Result<Arc<Upstream>, String> {
    let (shared, state) = (events.shared(), events.state());
    let mut slot = state.upstream.lock().await;
    if let Some(existing) = slot.as_ref() {
        return existing.clone().map_err(|e| e.to_string());
    }
    let (Some(target_name), Some(login), Some(decision)) =
        (&dest.target, &dest.login, &dest.decision)
    else {
        return Err("no target selected".into());
    };
    let Some(target) = who.config.target(target_name).cloned() else {
        return Err(format!("unknown target {target_name:?}"));
    };
    let timeout = who.config.upstream.connect_timeout.get();
    let creds = upstream::Credentials {
        key: shared.upstream_key(),
        ca: shared.upstream_ca(),
        key_id: format!("gatehouse user={} session={}", who.user, state.session_id),
        validity: who.config.upstream.cert_validity.get(),
    };
    let result = upstream::connect(
        &target,
        login,
        creds,
        shared.store.clone(),
        timeout,
        decision.agent_forwarding,
    )
    .await
    .map(Arc::new);
    match &result {
        Ok(_) => {
            let ev = events
                .event(EventType::SESSION_START, Severity::Info, Outcome::Success)
                .details(serde_json::json!({
                    "address": target.socket_address(),
                    "rule": decision.rule.as_ref().map(|r| r.to_string()),
                }));
            if let Err(e) = events.gate(ev).await {
                *slot = Some(Err(UpstreamError::Other(e.to_string())));
                return Err(e.to_string());
            }
            state.started.store(true, Ordering::Release);
            if let Some(max) = decision.max_session {
                enforce_max_session(events.clone(), max);
            }
        }
        Err(err) => {
            let (kind, sev) = match err {
                UpstreamError::HostKeyMismatch { .. } => {
                    (EventType::HOST_KEY_MISMATCH, Severity::High)
                }
                _ => (EventType::TARGET_UNREACHABLE, Severity::Warn),
            };
            let ev = events
                .event(kind, sev, Outcome::Error)
                .reason(err.to_string());
            let _ = events.gate(ev).await;
        }
    }
    *slot = Some(result.clone());
    result.map_err(|e| e.to_string())
}

/// Ends the connection when the role's `max_session` is reached.
fn enforce_max_session(events: Events, max: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(max).await;
        let Some((handle, channels)) = events.shared().live_conn(events.state().conn_id) else {
            return;
        };
        let reason = format!(
            "the maximum session length of your role ({}s) was reached",
            max.as_secs()
        );
        let ev = events
            .event(EventType::SESSION_KILLED, Severity::Info, Outcome::Success)
            .reason(reason.clone())
            .details(serde_json::json!({ "by": "max_session" }));
        events.fact_unstopped(ev).await;
        end_connection(&handle, &channels, &reason).await;
    });
}
