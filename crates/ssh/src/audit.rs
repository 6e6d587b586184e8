//! Every security-relevant decision becomes exactly one event through
//! [`Audit::record`]. Events that gate access are committed to the store
//! before the caller proceeds; when the store cannot be written and
//! `audit.on_failure = "refuse"`, the caller is told to refuse.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use gatehouse_audit::alert::{Alerts, Firing};
use gatehouse_control::{Actor, Channel, Control};
use gatehouse_metrics::Metrics;
use gatehouse_model::config::AlertAction;
use gatehouse_model::{Config, EventType, NewEvent, OnFailure, Outcome};
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
    /// Alert rules, evaluated on every event this gateway writes.
    pub alerts: Arc<Mutex<Alerts>>,
    /// Events of things that already happened (a command the shell ran,
    /// a session that ended) that the store could not take: kept in order
    /// and written when it takes writes again ([`Audit::flush_spool`]).
    pub spool: Arc<Mutex<VecDeque<NewEvent>>>,
    /// The config the alert rules came from (their actions need it).
    config: Arc<Mutex<Arc<Config>>>,
    /// Counts every event written here and times each store append.
    pub metrics: Arc<Metrics>,
}

/// Most events the spool keeps; sessions are stopped at the first event
/// that cannot be written (under `audit.on_failure = "refuse"`), so it
/// holds little more than one `session.end` per session.
const SPOOL_MAX: usize = 100_000;

impl Audit {
    pub fn new(store: Store, alerts: Alerts, config: Arc<Config>) -> Audit {
        let metrics = Arc::new(Metrics::new());
        let commits = metrics.clone();
        store.observe_commits(Box::new(move |took| commits.store_commit(took)));
        Audit {
            store,
            alerts: Arc::new(Mutex::new(alerts)),
            spool: Arc::new(Mutex::new(VecDeque::new())),
            config: Arc::new(Mutex::new(config)),
            metrics,
        }
    }

    /// Swaps in the alert rules of a reloaded config.
    pub fn reload(&self, alerts: Alerts, config: Arc<Config>) {
        if let Ok(mut a) = self.alerts.lock() {
            *a = alerts;
        }
        if let Ok(mut c) = self.config.lock() {
            *c = config;
        }
    }

    fn config(&self) -> Arc<Config> {
        match self.config.lock() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Records an event of something that has already happened. If the
    /// store cannot take it, the event is spooled (so it is not lost while
    /// this process lives) and, under `refuse`, the caller is told so it
    /// can stop the session. Events wait behind spooled ones, keeping
    /// their order.
    pub async fn record_fact(
        &self,
        event: NewEvent,
        on_failure: OnFailure,
    ) -> Result<(), AuditUnavailable> {
        let spooled = self.spool.lock().map(|s| !s.is_empty()).unwrap_or(false);
        if spooled {
            self.push_spool(event);
            return match self.flush_spool().await {
                Ok(()) => Ok(()),
                Err(e) => match on_failure {
                    OnFailure::Refuse => Err(e),
                    OnFailure::Continue => Ok(()),
                },
            };
        }
        match self.record(event.clone(), OnFailure::Refuse).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.push_spool(event);
                match on_failure {
                    OnFailure::Refuse => Err(e),
                    OnFailure::Continue => Ok(()),
                }
            }
        }
    }

    fn push_spool(&self, event: NewEvent) {
        if let Ok(mut spool) = self.spool.lock() {
            if spool.len() >= SPOOL_MAX {
                tracing::error!(kind = %event.kind, "audit spool full; event dropped");
                return;
            }
            spool.push_back(event);
        }
    }

    /// Writes spooled events in order; stops at the first the store
    /// refuses (it stays first in line).
    pub async fn flush_spool(&self) -> Result<(), AuditUnavailable> {
        loop {
            let Some(next) = self.spool.lock().ok().and_then(|s| s.front().cloned()) else {
                return Ok(());
            };
            self.record(next, OnFailure::Refuse).await?;
            if let Ok(mut spool) = self.spool.lock() {
                spool.pop_front();
                if spool.is_empty() {
                    tracing::info!("audit spool written to the store");
                }
            }
        }
    }

    pub fn spooled(&self) -> usize {
        self.spool.lock().map(|s| s.len()).unwrap_or(0)
    }
}

impl Audit {
    /// Appends `event`. On failure, logs it and returns `Err` when
    /// `on_failure` is `refuse`.
    /// Boxed: the store write is a large future, and every session task
    /// that audits would otherwise carry its state for the whole session.
    pub fn record(
        &self,
        event: NewEvent,
        on_failure: OnFailure,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), AuditUnavailable>> + Send + '_>,
    > {
        Box::pin(self.record_now(event, on_failure))
    }

    async fn record_now(
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
        let started = std::time::Instant::now();
        let appended = self.store.append(&event).await;
        self.metrics.store_write(started.elapsed());
        match appended {
            Ok(_) => {
                count_event(&self.metrics, &event);
                let firings = self
                    .alerts
                    .lock()
                    .map(|mut a| a.observe(&event, std::time::Instant::now()))
                    .unwrap_or_default();
                for f in firings {
                    self.fire(&event, f).await;
                }
                Ok(())
            }
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

/// The metrics an event written to the trail moves: its type, an
/// authentication failure's method, a session's bytes.
fn count_event(metrics: &Metrics, event: &NewEvent) {
    let method = event.details.get("method").and_then(|m| m.as_str());
    let bytes = match (
        event.details.get("bytes_in").and_then(|b| b.as_u64()),
        event.details.get("bytes_out").and_then(|b| b.as_u64()),
    ) {
        (Some(i), Some(o)) if event.kind == EventType::SESSION_END => Some((i, o)),
        _ => None,
    };
    metrics.event(&event.kind, method, bytes);
}

/// Operations of the control layer run inside the gateway write their
/// events here, so that alert rules see them too. A write the store
/// refuses is an error whatever `audit.on_failure` says: an operation is
/// not performed unaudited.
impl gatehouse_control::Trail for Audit {
    fn write<'a>(
        &'a self,
        event: NewEvent,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move { self.record(event, OnFailure::Refuse).await.map_err(|e| e.0) })
    }
}

impl Audit {
    /// Records an `alert` and takes the rule's automatic action through
    /// the control layer (each action audited before it happens; its
    /// events go straight to the store, so an action cannot fire alerts).
    async fn fire(&self, cause: &NewEvent, firing: Firing) {
        let rule = &firing.rule;
        let taken = match &rule.action {
            Some(action) => self.take_action(cause, &rule.name, action).await,
            None => Vec::new(),
        };
        let mut ev = NewEvent::new(
            EventType::ALERT,
            rule.severity,
            Outcome::Success,
            &cause.node,
        )
        .reason(format!("alert {}", rule.name))
        .details(serde_json::json!({
            "alert": rule.name,
            "event_id": cause.id,
            "event_type": cause.kind,
            "by": firing.by_value,
            "sinks": rule.sinks,
            "actions": taken,
        }));
        ev.user = cause.user.clone();
        ev.source_ip = cause.source_ip.clone();
        ev.session_id = cause.session_id.clone();
        ev.target = cause.target.clone();
        ev.login = cause.login.clone();
        ev.mfa = cause.mfa;
        tracing::warn!(alert = %rule.name, "alert fired");
        if let Err(e) = self.store.append(&ev).await {
            tracing::error!(error = %e, "cannot write an alert event");
        }
    }

    /// The rule's actions on the event that fired it; what was done.
    async fn take_action(&self, cause: &NewEvent, rule: &str, action: &AlertAction) -> Vec<String> {
        let config = self.config();
        let actor = Actor::operator("alert", Channel::Alert).with("rule", rule);
        let ops = Control::new(&self.store, &config, actor);
        let reason = format!("alert {rule}");
        let mut taken = Vec::new();
        if let (true, Some(sid)) = (action.kill_session, &cause.session_id) {
            match ops.kill_session(sid, &reason).await {
                Ok(()) => taken.push(format!("kill_session {sid}")),
                Err(e) => tracing::warn!(error = %e, "alert action kill_session not taken"),
            }
        }
        if let (true, Some(user)) = (action.lock_user, &cause.user) {
            match ops.lock_user(user, &reason, None).await {
                Ok(_) => taken.push(format!("lock_user {user}")),
                Err(e) => tracing::warn!(error = %e, "alert action lock_user not taken"),
            }
        }
        if let (Some(d), Some(ip)) = (&action.block_source, &cause.source_ip) {
            match ops.block_source(ip, d.get(), &reason).await {
                Ok(until) => taken.push(format!("block_source {ip} until {until}")),
                Err(e) => tracing::warn!(error = %e, "alert action block_source not taken"),
            }
        }
        taken
    }
}
