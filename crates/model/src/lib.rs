//! Gatehouse's shared vocabulary: the configuration file, the way a user
//! names a target in an SSH username, durations, and the audit event schema.
//!
//! This crate is pure: apart from [`Config::load`] reading the one file it is
//! given, it does no I/O. Every other crate depends on it; it depends on none
//! of them. It is an API boundary: the names here are the names in the
//! config file (`docs/configuration.md`) and the audit trail.

pub mod cloudtrail;
pub mod config;
pub mod duration;
pub mod event;
pub mod net;
pub mod text;
pub mod username;

pub use config::{
    AlertAction, AlertRule, AlertThreshold, AllowRule, ApprovalRule, AuditConfig, AuthConfig,
    Config, ConfigError, ConsoleConfig, ConsolePermission, DenyRule, IdentityProvider,
    IdentityProviderKind, LabelSelector, OnFailure, RecordingConfig, Role, RoleGrant, ServerConfig,
    SinkConfig, SinkKind, StoreConfig, Target, UpstreamConfig, User,
};
pub use duration::{parse_duration, Dur, DurationError};
pub use event::{EventType, NewEvent, Outcome, Severity};
pub use net::{IpNet, IpNetError};
pub use text::{escape_control, hex};
pub use username::{ConnectRequest, UsernameError};
