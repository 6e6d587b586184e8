//! The control layer: every operation a person or an automatic rule
//! performs on the gateway, one function each. The CLI, the gateway's own
//! commands over SSH and alert actions all call these; none of them writes
//! these events or this SQL itself.
//!
//! **One order for every operation:** check what can be checked (the
//! subject exists, the actor may do it, the state allows it), then write
//! the audit event, then act. If the event cannot be written, nothing is
//! done and the caller gets [`ControlError::Audit`]. A refusal of a
//! permission check is itself audited where it concerns reading
//! recordings (`recording.access` with result `denied`).
//!
//! Every event carries, in `details`, `by` (the actor's name) and
//! `channel` (`cli`, `ssh`, `web`, `alert`, `runbook`, `gateway`), plus
//! `by_session` / `by_source_ip` when the actor acted from an SSH session.

mod approvals;
mod permits;
mod runbooks;
mod sessions;
mod sources;
mod tokens;
mod users;

use std::future::Future;
use std::pin::Pin;

use gatehouse_model::{Config, NewEvent, Outcome, Severity};
use gatehouse_store::{Store, StoreError};
use serde_json::{Map, Value};

pub use approvals::Decided;
pub use runbooks::{ActionOutcome, RunbookPlan};
pub use tokens::CreatedToken;
pub use users::{Enrolment, Locked};

/// Through which surface an operation was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// `gatehouse …` on the gateway host.
    Cli,
    /// A gateway command over SSH (`ssh gw approve ID`).
    Ssh,
    /// The web console or its API.
    Web,
    /// An alert rule's automatic action.
    Alert,
    /// A runbook applied by someone.
    Runbook,
    /// The gateway's own defences (e.g. blocking a brute-forcing source).
    Gateway,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Cli => "cli",
            Channel::Ssh => "ssh",
            Channel::Web => "web",
            Channel::Alert => "alert",
            Channel::Runbook => "runbook",
            Channel::Gateway => "gateway",
        }
    }
}

/// What the actor is trusted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority {
    /// The gateway host's administrator (an OS account that can read the
    /// store) or a rule the administrator configured: every operation.
    Operator,
    /// A Gatehouse user: policy decides each operation (deny by default).
    User,
}

/// Who performs an operation.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub channel: Channel,
    pub authority: Authority,
    /// The actor's own SSH session, when they acted from one.
    pub session_id: Option<String>,
    pub source_ip: Option<String>,
    /// Extra facts about the actor added to every event's details (e.g.
    /// the `$USER` an OS account claimed).
    pub extra: Map<String, Value>,
}

impl Actor {
    /// The administrator or an automatic rule.
    pub fn operator(name: impl Into<String>, channel: Channel) -> Actor {
        Actor {
            name: name.into(),
            channel,
            authority: Authority::Operator,
            session_id: None,
            source_ip: None,
            extra: Map::new(),
        }
    }

    /// A Gatehouse user acting from an SSH session.
    pub fn user_in_session(name: &str, session_id: &str, source_ip: Option<&str>) -> Actor {
        Actor {
            name: name.to_string(),
            channel: Channel::Ssh,
            authority: Authority::User,
            session_id: Some(session_id.to_string()),
            source_ip: source_ip.map(str::to_string),
            extra: Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Actor {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    /// `by`, `channel` and the actor's context, merged into `details`.
    fn annotate(&self, details: Value) -> Value {
        let mut map = match details {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        map.insert("by".into(), Value::String(self.name.clone()));
        map.insert(
            "channel".into(),
            Value::String(self.channel.as_str().into()),
        );
        if let Some(s) = &self.session_id {
            map.insert("by_session".into(), Value::String(s.clone()));
        }
        if let Some(ip) = &self.source_ip {
            map.insert("by_source_ip".into(), Value::String(ip.clone()));
        }
        for (k, v) in &self.extra {
            map.insert(k.clone(), v.clone());
        }
        Value::Object(map)
    }
}

/// Why an operation was not performed. The text is one line for the
/// person who asked.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot write the audit event, so nothing was done: {0}")]
    Audit(String),
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
}

pub type Result<T> = std::result::Result<T, ControlError>;

/// Where operation events are written. The store itself writes them as
/// they are; the gateway passes its audit trail, which also runs alert
/// rules over them.
pub trait Trail: Send + Sync {
    fn write<'a>(
        &'a self,
        event: NewEvent,
    ) -> Pin<Box<dyn Future<Output = std::result::Result<(), String>> + Send + 'a>>;
}

impl Trail for Store {
    fn write<'a>(
        &'a self,
        event: NewEvent,
    ) -> Pin<Box<dyn Future<Output = std::result::Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            self.append(&event)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

/// The operations, bound to a store, the config in force and an actor.
pub struct Control<'a> {
    pub store: &'a Store,
    pub trail: &'a dyn Trail,
    pub config: &'a Config,
    pub actor: Actor,
}

impl<'a> Control<'a> {
    /// Operations whose events go straight to the store.
    pub fn new(store: &'a Store, config: &'a Config, actor: Actor) -> Control<'a> {
        Control {
            store,
            trail: store,
            config,
            actor,
        }
    }

    /// Operations whose events go through `trail` (the gateway's audit).
    pub fn with_trail(
        store: &'a Store,
        trail: &'a dyn Trail,
        config: &'a Config,
        actor: Actor,
    ) -> Control<'a> {
        Control {
            store,
            trail,
            config,
            actor,
        }
    }

    /// An event of this actor's, on this node.
    fn event(&self, kind: &str, severity: Severity, result: Outcome, details: Value) -> NewEvent {
        NewEvent::new(kind, severity, result, &self.config.server.node)
            .details(self.actor.annotate(details))
    }

    /// Writes `event` before the action it describes.
    async fn audit(&self, event: NewEvent) -> Result<()> {
        self.trail.write(event).await.map_err(ControlError::Audit)
    }

    /// A user that can be locked: a `[[users]]` entry, or, with identity
    /// providers configured, any valid name (an identity a provider may
    /// vouch for, whether or not it has logged in yet).
    fn lockable_user(&self, user: &str) -> Result<()> {
        if !self.config.identity_providers.is_empty()
            && gatehouse_model::username::is_valid_name(user)
        {
            return Ok(());
        }
        self.known_user(user)
    }

    fn known_user(&self, user: &str) -> Result<()> {
        if self.config.user(user).is_none() {
            return Err(ControlError::NotFound(format!(
                "unknown user {user:?}; users are declared in the config with [[users]]"
            )));
        }
        Ok(())
    }

    /// Where the actor can list what they may act on.
    fn hint(&self, cli: &str, ssh: &str) -> String {
        match self.actor.channel {
            Channel::Ssh => format!("see `{ssh}`"),
            _ => format!("see `gatehouse {cli}`"),
        }
    }
}

/// RFC 3339 time `d` from now; a duration past what the clock can
/// represent reads as the far future rather than failing.
fn from_now(d: std::time::Duration) -> String {
    let now = chrono::Utc::now();
    let end = chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
    gatehouse_model::event::format_time(end)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod token_tests;
