//! The configuration file (`docs/configuration.md`). Policy is code: users,
//! roles and targets are declared here and validated before anything runs.
//!
//! Parsing rejects unknown keys (a typo must never silently widen or narrow
//! access) and malformed values: durations ([`Dur`]), severities, sink
//! kinds. [`Config::validate`] then checks what serde cannot: references
//! between sections, regexes, limits and names. Every error names the
//! file, the key and what to do.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::duration::Dur;
use crate::event::Severity;
use crate::username::is_valid_name;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub recording: RecordingConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub targets: Vec<Target>,
    #[serde(default)]
    pub roles: Vec<Role>,
    #[serde(default)]
    pub users: Vec<User>,
    /// Forwarding, alert rules and runbooks (`docs/configuration.md`).
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
    #[serde(default)]
    pub alerts: Vec<AlertRule>,
    #[serde(default)]
    pub runbooks: RunbooksConfig,
    /// The web console served on `server.admin_listen`.
    #[serde(default)]
    pub console: ConsoleConfig,
    /// Single sign-on: OpenID Connect providers whose people may log in
    /// without a `[[users]]` entry (`docs/configuration.md`).
    #[serde(default)]
    pub identity_providers: Vec<IdentityProvider>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The admin listener: the web console, `/api/v1`, `/healthz` and
    /// `/metrics`, e.g. "0.0.0.0:8022". HTTPS with `console.tls_cert` and
    /// `console.tls_key`; plain HTTP only on a loopback address. Unset:
    /// none.
    #[serde(default)]
    pub admin_listen: Option<String>,
    #[serde(default = "default_host_key")]
    pub host_key: PathBuf,
    /// The name of this gateway instance in every event (`node`).
    #[serde(default = "default_node")]
    pub node: String,
    /// The gateway as a service: `eventSource` of its CloudTrail records
    /// (the `cloudtrail` view, `format = "cloudtrail"`), e.g.
    /// "ssh-proxy.example.com". The same on every node.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Environment variables a client may pass to the target (`SendEnv`),
    /// like sshd's `AcceptEnv`; `*` at the end is a prefix wildcard.
    #[serde(default = "default_accept_env")]
    pub accept_env: Vec<String>,
    /// Connections that have not finished authenticating, at most
    /// (OpenSSH's MaxStartups).
    #[serde(default = "default_max_startups")]
    pub max_startups: usize,
    /// Time allowed to authenticate (OpenSSH's LoginGraceTime).
    #[serde(default = "default_login_grace")]
    pub login_grace_time: Dur,
    /// How long a session waits for a just-in-time approval.
    #[serde(default = "default_approval_wait")]
    pub approval_wait: Dur,
    /// Authentication failures from one address within 10 minutes before
    /// it is blocked (each failure also delays the next answer more).
    #[serde(default = "default_max_auth_failures")]
    pub max_auth_failures: u32,
    /// How long such an address stays blocked.
    #[serde(default = "default_block_for")]
    pub block_for: Dur,
    /// Unauthenticated connections from one address, at most (OpenSSH's
    /// PerSourceMaxStartups): one source cannot take every startup slot.
    /// Raise it for a control host that opens more connections at once
    /// (Ansible with many forks); further ones are refused, not queued.
    #[serde(default = "default_per_source_max_startups")]
    pub per_source_max_startups: usize,
    /// Connections from one source over `per_source_max_startups` that
    /// wait (unread) for a place instead of being refused.
    #[serde(default = "default_per_source_queue")]
    pub per_source_queue: usize,
    /// On SIGTERM, how long running sessions may go on after the gateway
    /// stops accepting (they are told at once); "0s" ends them at once.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: Dur,
    /// Load balancers (addresses or CIDR blocks) whose connections begin
    /// with a PROXY protocol header (v1 or v2) naming the user's address.
    /// Empty: no header is accepted from anyone.
    #[serde(default)]
    pub proxy_protocol: Vec<crate::net::IpNet>,
    /// Session channels per connection, at most (OpenSSH's MaxSessions).
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Authenticated connections of one Gatehouse user at once, at most.
    #[serde(default = "default_max_connections_per_user")]
    pub max_connections_per_user: usize,
    /// Largest terminal a session may ask for; larger requests are cut to
    /// this size (each terminal screen the gateway keeps costs memory in
    /// proportion to its cells).
    #[serde(default = "default_max_pty_cols")]
    pub max_pty_cols: u32,
    #[serde(default = "default_max_pty_rows")]
    pub max_pty_rows: u32,
    /// How often this node writes its heartbeat to the store.
    #[serde(default = "default_heartbeat_interval")]
    pub heartbeat_interval: Dur,
    /// A node whose heartbeat is older than this is lost: a live node
    /// closes its open sessions in the trail. Longer than
    /// `heartbeat_interval`.
    #[serde(default = "default_node_lost_after")]
    pub node_lost_after: Dur,
}

fn default_heartbeat_interval() -> Dur {
    Dur::seconds(5)
}
fn default_node_lost_after() -> Dur {
    Dur::seconds(30)
}

fn default_drain_timeout() -> Dur {
    Dur::seconds(0)
}

fn default_per_source_max_startups() -> usize {
    20
}
fn default_per_source_queue() -> usize {
    64
}
fn default_max_sessions() -> usize {
    10
}
fn default_max_connections_per_user() -> usize {
    100
}
fn default_max_pty_cols() -> u32 {
    400
}
fn default_max_pty_rows() -> u32 {
    150
}

fn default_max_auth_failures() -> u32 {
    20
}
fn default_block_for() -> Dur {
    Dur::minutes(15)
}

fn default_approval_wait() -> Dur {
    Dur::minutes(10)
}

fn default_listen() -> String {
    "0.0.0.0:2222".into()
}
fn default_host_key() -> PathBuf {
    "data/host_ed25519".into()
}
fn default_node() -> String {
    "gatehouse-1".into()
}
fn default_service_name() -> String {
    crate::cloudtrail::DEFAULT_SERVICE_NAME.into()
}
fn default_accept_env() -> Vec<String> {
    vec!["LANG".into(), "LC_*".into()]
}
fn default_max_startups() -> usize {
    64
}
fn default_login_grace() -> Dur {
    Dur::seconds(60)
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            admin_listen: None,
            listen: default_listen(),
            host_key: default_host_key(),
            node: default_node(),
            service_name: default_service_name(),
            accept_env: default_accept_env(),
            max_startups: default_max_startups(),
            login_grace_time: default_login_grace(),
            approval_wait: default_approval_wait(),
            max_auth_failures: default_max_auth_failures(),
            block_for: default_block_for(),
            per_source_max_startups: default_per_source_max_startups(),
            per_source_queue: default_per_source_queue(),
            proxy_protocol: Vec::new(),
            drain_timeout: default_drain_timeout(),
            max_sessions: default_max_sessions(),
            max_connections_per_user: default_max_connections_per_user(),
            max_pty_cols: default_max_pty_cols(),
            max_pty_rows: default_max_pty_rows(),
            heartbeat_interval: default_heartbeat_interval(),
            node_lost_after: default_node_lost_after(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The gateway's private key towards targets (OpenSSH format).
    #[serde(default = "default_upstream_key")]
    pub key: PathBuf,
    /// Optional CA key to sign a short-lived user certificate per session.
    #[serde(default)]
    pub ca_key: Option<PathBuf>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Validity of the per-session certificate signed with `ca_key`.
    #[serde(default = "default_cert_validity")]
    pub cert_validity: Dur,
}

fn default_upstream_key() -> PathBuf {
    "data/client_ed25519".into()
}
fn default_connect_timeout() -> Dur {
    Dur::seconds(10)
}
fn default_cert_validity() -> Dur {
    Dur::minutes(5)
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            key: default_upstream_key(),
            ca_key: None,
            connect_timeout: default_connect_timeout(),
            cert_validity: default_cert_validity(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default = "default_store_url")]
    pub url: String,
}

fn default_store_url() -> String {
    "sqlite://data/gatehouse.db".into()
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: default_store_url(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingConfig {
    /// Record terminal and exec sessions at all. Exec commands, transfers
    /// and session metadata are audited either way; interactive command
    /// lines come from the recorder's terminal emulator and need it.
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_recording_dir")]
    pub dir: PathBuf,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default = "default_true")]
    pub input: bool,
    #[serde(default = "default_true")]
    pub exec_output: bool,
    /// A session whose recording cannot be written is stopped (and one
    /// whose recording cannot be created is refused), like a session whose
    /// events cannot be written under `audit.on_failure = "refuse"`.
    #[serde(default = "default_true")]
    pub required: bool,
}

fn default_recording_dir() -> PathBuf {
    "data/recordings".into()
}
fn default_true() -> bool {
    true
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            enabled: true,
            dir: default_recording_dir(),
            url: None,
            input: true,
            exec_output: true,
            required: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    #[default]
    Refuse,
    Continue,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    #[serde(default)]
    pub on_failure: OnFailure,
    /// ed25519 key that signs checkpoints of the hash chain (created when
    /// missing). Keep it out of the database's reach.
    #[serde(default = "default_signing_key")]
    pub signing_key: PathBuf,
    /// How often the chain's head is signed.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: Dur,
    /// Append-only file that every signed checkpoint is also written to,
    /// outside the database (default: `audit_anchor.jsonl` next to
    /// `signing_key`). `gatehouse audit verify --anchor FILE` proves the
    /// chain still reaches the newest checkpoint in it.
    #[serde(default)]
    pub anchor_file: Option<PathBuf>,
    /// Longest a read-only query (`audit query`, runbooks, the CLI's
    /// views) may run before the database stops it.
    #[serde(default = "default_query_timeout")]
    pub query_timeout: Dur,
}

impl AuditConfig {
    /// Where checkpoints are anchored: `anchor_file`, or
    /// `audit_anchor.jsonl` next to the signing key.
    pub fn anchor_path(&self) -> PathBuf {
        self.anchor_file
            .clone()
            .unwrap_or_else(|| self.signing_key.with_file_name("audit_anchor.jsonl"))
    }
}

fn default_signing_key() -> PathBuf {
    "data/audit_signing.key".into()
}
fn default_checkpoint_interval() -> Dur {
    Dur::seconds(60)
}
fn default_query_timeout() -> Dur {
    Dur::seconds(30)
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            on_failure: OnFailure::default(),
            signing_key: default_signing_key(),
            checkpoint_interval: default_checkpoint_interval(),
            anchor_file: None,
            query_timeout: default_query_timeout(),
        }
    }
}

/// `[[sinks]]`: where the audit trail is forwarded. `name` and
/// `only_alerts` are common to every kind; `kind` selects [`SinkKind`],
/// which holds the keys of that kind. A key the kind does not take is an
/// error, like any unknown key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SinkConfig {
    pub name: String,
    /// Forward only `alert` events routed to this sink.
    pub only_alerts: bool,
    #[serde(flatten)]
    pub kind: SinkKind,
}

/// A sink's kind and its keys (`kind = "jsonl"`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkKind {
    /// A JSON-lines file.
    Jsonl {
        path: PathBuf,
        /// Rotate the file beyond this size.
        #[serde(default = "default_max_bytes")]
        max_bytes: u64,
        #[serde(default, skip_serializing_if = "SinkFormat::is_default")]
        format: SinkFormat,
    },
    /// RFC 5424 syslog: `udp://HOST:PORT` or `tcp://HOST:PORT`.
    Syslog {
        url: String,
        #[serde(default, skip_serializing_if = "SinkFormat::is_default")]
        format: SinkFormat,
    },
    /// JSON over HTTP(S) with a Slack-compatible `text`.
    Webhook {
        url: String,
        /// Sent as `Authorization: Bearer TOKEN`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// PEM file of CA certificates to trust for an `https://` url,
        /// besides the public web roots.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_file: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "SinkFormat::is_default")]
        format: SinkFormat,
    },
    /// Elasticsearch `_bulk` NDJSON.
    Elasticsearch {
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_file: Option<PathBuf>,
        /// NDJSON file for documents the cluster rejects for good
        /// (default [`default_dead_letter_file`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dead_letter_file: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "SinkFormat::is_default")]
        format: SinkFormat,
    },
    /// Splunk HTTP Event Collector.
    SplunkHec {
        url: String,
        /// Sent as `Authorization: Splunk TOKEN`.
        token: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_file: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "SinkFormat::is_default")]
        format: SinkFormat,
    },
    /// A `gatehouse_events` table in a PostgreSQL database.
    Postgres { url: String },
    /// An AWS CloudTrail Lake channel (`PutAuditEvents`, SigV4).
    CloudtrailLake {
        /// `arn:aws:cloudtrail:REGION:ACCOUNT:channel/ID`.
        channel_arn: String,
        /// The signing region (default: the channel's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
        /// Default `https://cloudtrail-data.REGION.amazonaws.com`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint_url: Option<String>,
        /// For a channel whose resource policy requires one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        external_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_file: Option<PathBuf>,
        /// NDJSON file for events the channel keeps refusing (default
        /// [`default_dead_letter_file`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dead_letter_file: Option<PathBuf>,
    },
}

impl SinkKind {
    /// The `kind` as written in the config.
    pub fn as_str(&self) -> &'static str {
        match self {
            SinkKind::Jsonl { .. } => "jsonl",
            SinkKind::Syslog { .. } => "syslog",
            SinkKind::Webhook { .. } => "webhook",
            SinkKind::Elasticsearch { .. } => "elasticsearch",
            SinkKind::SplunkHec { .. } => "splunk_hec",
            SinkKind::Postgres { .. } => "postgres",
            SinkKind::CloudtrailLake { .. } => "cloudtrail_lake",
        }
    }
}

/// What a sink sends for each event (`format = "..."`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkFormat {
    /// The event as Gatehouse stores it (docs/events.md).
    #[default]
    Gatehouse,
    /// The event as a CloudTrail record ([`crate::cloudtrail::record`]).
    Cloudtrail,
}

impl SinkFormat {
    fn is_default(&self) -> bool {
        *self == SinkFormat::Gatehouse
    }
}

fn default_max_bytes() -> u64 {
    100 * 1024 * 1024
}

/// `data/SINK.dead-letter.ndjson` (relative to the config file's
/// directory), the sink name with anything but letters, digits, `.`, `-`
/// and `_` replaced by `_`.
pub fn default_dead_letter_file(sink: &str) -> PathBuf {
    let safe: String = sink
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    PathBuf::from("data").join(format!("{safe}.dead-letter.ndjson"))
}

/// serde's `flatten` cannot be combined with `deny_unknown_fields`, so
/// the common keys are taken out by hand and the rest must be exactly the
/// keys of the kind.
impl<'de> Deserialize<'de> for SinkConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SinkConfig, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SinkConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a [[sinks]] table")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<SinkConfig, A::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Common {
                    name: String,
                    #[serde(default)]
                    only_alerts: bool,
                }
                let mut common = toml::Table::new();
                let mut rest = toml::Table::new();
                while let Some((key, value)) = map.next_entry::<String, toml::Value>()? {
                    match key.as_str() {
                        "name" | "only_alerts" => common.insert(key, value),
                        _ => rest.insert(key, value),
                    };
                }
                let fail = |e: toml::de::Error| serde::de::Error::custom(e.message());
                let common = Common::deserialize(toml::Value::Table(common)).map_err(fail)?;
                let kind = SinkKind::deserialize(toml::Value::Table(rest)).map_err(fail)?;
                Ok(SinkConfig {
                    name: common.name,
                    only_alerts: common.only_alerts,
                    kind,
                })
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// `[[alerts]]`: a pattern rule (`when`) or a threshold rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    pub name: String,
    /// e.g. `type = 'command' and command ~ '^(sudo|su)\b'`.
    #[serde(default)]
    pub when: Option<String>,
    #[serde(default)]
    pub threshold: Option<AlertThreshold>,
    /// The severity of the `alert` event.
    #[serde(default = "default_alert_severity")]
    pub severity: Severity,
    #[serde(default)]
    pub sinks: Vec<String>,
    #[serde(default)]
    pub action: Option<AlertAction>,
}

fn default_alert_severity() -> Severity {
    Severity::High
}

/// `count` events of `type` with the same `by` field within `within`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertThreshold {
    pub count: u32,
    #[serde(rename = "type")]
    pub kind: String,
    pub by: String,
    pub within: Dur,
}

/// What an alert does besides being recorded.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertAction {
    #[serde(default)]
    pub lock_user: bool,
    #[serde(default)]
    pub kill_session: bool,
    /// Block the event's source address for this long, e.g. "15m".
    #[serde(default)]
    pub block_source: Option<Dur>,
}

/// `[runbooks] dir`: a directory of runbook files, added to the built-ins.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunbooksConfig {
    #[serde(default = "default_runbooks_dir")]
    pub dir: PathBuf,
}

fn default_runbooks_dir() -> PathBuf {
    "runbooks".into()
}

impl Default for RunbooksConfig {
    fn default() -> Self {
        RunbooksConfig {
            dir: default_runbooks_dir(),
        }
    }
}

/// Authentication settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Key that seals TOTP secrets in the store (created when missing).
    #[serde(default = "default_secrets_key")]
    pub secrets_key: PathBuf,
    /// CAs whose OpenSSH user certificates are accepted: public key lines
    /// (`ssh-ed25519 AAAA... ca`) or paths to `.pub` files.
    #[serde(default)]
    pub trusted_user_ca_keys: Vec<String>,
}

fn default_secrets_key() -> PathBuf {
    "data/secrets.key".into()
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            secrets_key: default_secrets_key(),
            trusted_user_ca_keys: Vec::new(),
        }
    }
}

/// `[[identity_providers]]`: an OpenID Connect provider. People it signs
/// in log in as the identity its ID token names (`user_claim`), with the
/// roles `role_map` gives the values of `groups_claim`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityProvider {
    /// Names the provider in events and in the store.
    pub name: String,
    pub kind: IdentityProviderKind,
    /// The issuer URL; `ISSUER/.well-known/openid-configuration` is its
    /// discovery document. `https://`, or `http://` on a loopback address.
    pub issuer: String,
    /// The client (application) registered at the provider for Gatehouse.
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// The environment variable that holds the client secret instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_env: Option<String>,
    #[serde(default = "default_sso_scopes")]
    pub scopes: Vec<String>,
    /// The claim whose value is the Gatehouse user name.
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// The claim whose values (a string or a list) `role_map` maps.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// A value of `groups_claim` → the roles it gives.
    #[serde(default)]
    pub role_map: BTreeMap<String, Vec<String>>,
    /// When not empty, the `email` claim must be verified and end in one
    /// of these domains.
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    /// How long a key stays bound to the identity that signed in with it
    /// (checked with the provider at every login).
    #[serde(default = "default_sso_session")]
    pub sso_session: Dur,
    /// PEM certificates to trust for the provider's HTTPS besides the
    /// public web roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// The protocol an identity provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityProviderKind {
    Oidc,
}

fn default_sso_scopes() -> Vec<String> {
    ["openid", "profile", "email", "groups", "offline_access"]
        .map(String::from)
        .to_vec()
}
fn default_user_claim() -> String {
    "preferred_username".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_sso_session() -> Dur {
    Dur::hours(12)
}

/// One role an identity holds, and the claim value that gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleGrant {
    /// `groups_claim`'s value, as the provider sent it.
    pub claim: String,
    pub role: String,
}

impl IdentityProvider {
    /// The roles `values` of `groups_claim` give, in `role_map` order,
    /// each role once (from the first value that gives it).
    pub fn roles_for(&self, values: &[String]) -> Vec<RoleGrant> {
        let mut out: Vec<RoleGrant> = Vec::new();
        for (claim, roles) in &self.role_map {
            if !values.contains(claim) {
                continue;
            }
            for role in roles {
                if !out.iter().any(|g| &g.role == role) {
                    out.push(RoleGrant {
                        claim: claim.clone(),
                        role: role.clone(),
                    });
                }
            }
        }
        out
    }

    /// Is `email` in one of `allowed_domains` (any address when the list
    /// is empty)? Compared without regard to case.
    pub fn domain_allowed(&self, email: Option<&str>) -> bool {
        if self.allowed_domains.is_empty() {
            return true;
        }
        let Some(domain) = email.and_then(|e| e.rsplit_once('@')).map(|(_, d)| d) else {
            return false;
        };
        self.allowed_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub name: String,
    /// `host:port` (port 22 when omitted).
    pub address: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Pinned host key fingerprint, `SHA256:...` as `ssh-keygen -l` prints it.
    #[serde(default)]
    pub host_key: Option<String>,
    /// A known_hosts file to verify the target's host key against.
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
    /// Trust on first use, remembered in the store.
    #[serde(default)]
    pub tofu: bool,
    #[serde(default)]
    pub default_login: Option<String>,
}

impl Target {
    /// `address` with `:22` added when it names no port.
    pub fn socket_address(&self) -> String {
        let a = self.address.trim();
        if a.starts_with('[') {
            if a.contains("]:") {
                return a.to_string();
            }
            return format!("{a}:22");
        }
        if a.matches(':').count() == 1 {
            a.to_string()
        } else if a.contains(':') {
            format!("[{a}]:22")
        } else {
            format!("{a}:22")
        }
    }
}

/// Label selector: every listed label must match. A value is one string or
/// a list of alternatives; `"*"` matches any value of a label that is
/// present. The pseudo-label `name` matches the target's name.
pub type LabelSelector = BTreeMap<String, OneOrMany>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn values(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(v) => vec![v.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    /// Which targets; an empty selector matches every target.
    #[serde(default)]
    pub targets: LabelSelector,
    /// Logins allowed on those targets; `"*"` allows any.
    #[serde(default)]
    pub logins: Vec<String>,
    #[serde(default)]
    pub require_approval: Option<ApprovalRule>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRule {
    #[serde(default)]
    pub logins: Vec<String>,
    #[serde(default)]
    pub approvers: Vec<String>,
    #[serde(default)]
    pub ttl: Option<Dur>,
}

/// A deny rule. With only `commands`, it denies matching commands on any
/// target the role reaches. With `targets` and/or `logins` and no
/// `commands`, it denies access itself. Deny always beats allow.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyRule {
    #[serde(default)]
    pub targets: Option<LabelSelector>,
    #[serde(default)]
    pub logins: Option<Vec<String>>,
    #[serde(default)]
    pub commands: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    pub name: String,
    #[serde(default)]
    pub allow: Vec<AllowRule>,
    #[serde(default)]
    pub deny: Vec<DenyRule>,
    #[serde(default)]
    pub require_mfa: bool,
    #[serde(default)]
    pub max_session: Option<Dur>,
    #[serde(default)]
    pub port_forwarding: bool,
    #[serde(default)]
    pub agent_forwarding: bool,
    #[serde(default)]
    pub reauth_commands: Vec<String>,
    /// What members may see and do in the web console and its API (deny
    /// by default).
    #[serde(default)]
    pub console: Vec<ConsolePermission>,
    /// Sessions on targets matching this selector are visible in the
    /// console to members (besides their own).
    #[serde(default)]
    pub console_targets: Option<LabelSelector>,
    /// Members log in through an identity provider (single sign-on),
    /// even with a registered key or password.
    #[serde(default)]
    pub require_sso: bool,
}

/// One thing a role lets its members do in the web console and the API.
/// Watching and killing apply to the sessions the member may view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsolePermission {
    /// Sign in and view one's own sessions and recordings.
    OwnSessions,
    /// View every session and recording.
    AllSessions,
    /// Follow a running session live.
    Watch,
    /// End a running session.
    Kill,
    /// Read the audit log, run read-only SQL, export rows.
    Audit,
    /// Run runbooks (see their rows and planned actions).
    Runbooks,
    /// Apply runbooks (take their actions).
    ApplyRunbooks,
    /// Decide approval requests (where the member is an approver).
    Approvals,
    /// Lock and unlock users, reset their authenticators.
    Users,
}

impl ConsolePermission {
    pub const ALL: [ConsolePermission; 9] = [
        ConsolePermission::OwnSessions,
        ConsolePermission::AllSessions,
        ConsolePermission::Watch,
        ConsolePermission::Kill,
        ConsolePermission::Audit,
        ConsolePermission::Runbooks,
        ConsolePermission::ApplyRunbooks,
        ConsolePermission::Approvals,
        ConsolePermission::Users,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConsolePermission::OwnSessions => "own_sessions",
            ConsolePermission::AllSessions => "all_sessions",
            ConsolePermission::Watch => "watch",
            ConsolePermission::Kill => "kill",
            ConsolePermission::Audit => "audit",
            ConsolePermission::Runbooks => "runbooks",
            ConsolePermission::ApplyRunbooks => "apply_runbooks",
            ConsolePermission::Approvals => "approvals",
            ConsolePermission::Users => "users",
        }
    }
}

/// `[console]`: the web console on `server.admin_listen`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// PEM certificate chain for HTTPS (`gatehouse init` writes a
    /// self-signed one).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// A signed-in console session ends after this long without a request.
    #[serde(default = "default_console_idle")]
    pub idle_timeout: Dur,
    /// … and this long after sign-in in any case.
    #[serde(default = "default_console_max_age")]
    pub max_age: Dur,
}

impl ConsoleConfig {
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }
}

fn default_console_idle() -> Dur {
    Dur::minutes(30)
}
fn default_console_max_age() -> Dur {
    Dur::hours(12)
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            tls_cert: None,
            tls_key: None,
            idle_timeout: default_console_idle(),
            max_age: default_console_max_age(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// argon2id PHC string (`gatehouse users hash-password`).
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Certificate principals that stand for this user besides its name.
    #[serde(default)]
    pub principals: Vec<String>,
}

/// One problem in a config file, with where it is and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted path of the key, e.g. `roles[1].deny[0].commands[2]`, or
    /// `line L, column C` for a parse error whose key cannot be told.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
        }
    }
}

impl Config {
    /// Reads and parses `path`, then validates it. All problems found by
    /// validation are returned, not only the first.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![ConfigError {
                file: path.to_path_buf(),
                key: String::new(),
                message: format!(
                    "cannot read the config file ({e}); create one with `gatehouse init` or pass --config FILE"
                ),
            }]
        })?;
        let config = Config::parse(&text, path).map_err(|e| vec![e])?;
        let errors = config.validate(path);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors)
        }
    }

    /// Parses TOML text; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let message = e.message().trim().to_string();
            // The key when it can be found (`roles[1].max_session`), with
            // the position in the message; else the position as the key.
            let (key, position) = match e.span() {
                Some(span) => {
                    let (line, col) = line_col(text, span.start);
                    match key_at(text, span.start) {
                        Some(key) => (key, format!(" (line {line}, column {col})")),
                        None => (format!("line {line}, column {col}"), String::new()),
                    }
                }
                None => (String::new(), String::new()),
            };
            ConfigError {
                file: path.to_path_buf(),
                key,
                message: format!("{message}{position}; see docs/configuration.md"),
            }
        })
    }

    /// Checks what serde cannot: cross-references, names, regexes and
    /// limits, one section after another.
    pub fn validate(&self, path: &Path) -> Vec<ConfigError> {
        let mut errors = Errors {
            file: path,
            list: Vec::new(),
        };
        self.validate_server(&mut errors);
        self.validate_audit(&mut errors);
        self.validate_store(&mut errors);
        self.validate_targets(&mut errors);
        self.validate_roles(&mut errors);
        self.validate_sinks(&mut errors);
        self.validate_alerts(&mut errors);
        self.validate_users(&mut errors);
        self.validate_identity_providers(&mut errors);
        errors.list
    }

    /// `[server]`: limits that must be at least 1, the terminal size, the
    /// heartbeat.
    fn validate_server(&self, errors: &mut Errors) {
        if let Some(addr) = &self.server.admin_listen {
            match addr.parse::<std::net::SocketAddr>() {
                Err(_) => errors.push(
                    "server.admin_listen",
                    format!("{addr:?} is not an address and port; write e.g. \"127.0.0.1:8022\""),
                ),
                Ok(a) if !a.ip().is_loopback() && !self.console.tls() => errors.push(
                    "server.admin_listen",
                    format!("{addr:?} is not a loopback address, so the console must use HTTPS: set console.tls_cert and console.tls_key (`gatehouse init` makes a self-signed pair)"),
                ),
                Ok(_) => {}
            }
        }
        if self.console.tls_cert.is_some() != self.console.tls_key.is_some() {
            errors.push(
                "console.tls_cert",
                "console.tls_cert and console.tls_key go together: set both or neither",
            );
        }
        if self.console.idle_timeout.get().is_zero() || self.console.max_age.get().is_zero() {
            errors.push(
                "console.idle_timeout",
                "console.idle_timeout and console.max_age must be longer than 0; write e.g. \"30m\"",
            );
        }
        if let Err(message) = check_service_name(&self.server.service_name) {
            errors.push("server.service_name", message);
        }
        if self.server.max_startups == 0 {
            errors.push("server.max_startups", "must be at least 1");
        }
        for (key, value) in [
            (
                "server.per_source_max_startups",
                self.server.per_source_max_startups,
            ),
            ("server.max_sessions", self.server.max_sessions),
            (
                "server.max_connections_per_user",
                self.server.max_connections_per_user,
            ),
        ] {
            if value == 0 {
                errors.push(key, "must be at least 1");
            }
        }
        if self.server.max_pty_cols < 20 || self.server.max_pty_rows < 5 {
            errors.push(
                "server.max_pty_cols",
                "the largest terminal must be at least 20 columns by 5 rows (max_pty_cols, max_pty_rows)",
            );
        }
        let (interval, lost) = (
            &self.server.heartbeat_interval,
            &self.server.node_lost_after,
        );
        if interval.get().is_zero() {
            errors.push(
                "server.heartbeat_interval",
                "must be longer than 0; write e.g. \"5s\"",
            );
        }
        if lost.get() <= interval.get() {
            errors.push(
                "server.node_lost_after",
                format!(
                    "must be longer than server.heartbeat_interval ({interval}), or a live node is declared lost between two heartbeats; write e.g. \"30s\""
                ),
            );
        }
    }

    /// `[audit]`: a query timeout above 0, an anchor file of its own.
    fn validate_audit(&self, errors: &mut Errors) {
        if self.audit.query_timeout.get().is_zero() {
            errors.push(
                "audit.query_timeout",
                "must be longer than 0; write e.g. \"30s\"",
            );
        }
        if let Some(anchor) = &self.audit.anchor_file {
            if anchor.as_os_str().is_empty() || anchor.to_string_lossy().ends_with('/') {
                errors.push(
                    "audit.anchor_file",
                    "must name a file; leave it out for audit_anchor.jsonl next to audit.signing_key",
                );
            } else if *anchor == self.audit.signing_key {
                errors.push(
                    "audit.anchor_file",
                    "must not be the signing key; name a file of its own",
                );
            }
        }
    }

    /// `[store]`: a backend this build has.
    fn validate_store(&self, errors: &mut Errors) {
        if !(self.store.url.starts_with("sqlite:")
            || self.store.url.starts_with("postgres://")
            || self.store.url.starts_with("postgresql://"))
        {
            errors.push(
                "store.url",
                format!(
                    "unsupported store URL {:?}; use sqlite://PATH or postgres://...; see docs/configuration.md",
                    self.store.url
                ),
            );
        }
    }

    /// `[[targets]]`: unique valid names, an address, host key verification.
    fn validate_targets(&self, errors: &mut Errors) {
        let mut seen = HashSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            let key = format!("targets[{i}]");
            if !is_valid_name(&t.name) {
                errors.push(
                    format!("{key}.name"),
                    format!(
                        "invalid target name {:?}; use 1-64 letters, digits, '.', '_' or '-'",
                        t.name
                    ),
                );
            }
            if !seen.insert(t.name.as_str()) {
                errors.push(
                    format!("{key}.name"),
                    format!(
                        "duplicate target {:?}; each target name must be unique",
                        t.name
                    ),
                );
            }
            if t.address.trim().is_empty() {
                errors.push(format!("{key}.address"), "empty address; write host:port");
            }
            let pins = [t.host_key.is_some(), t.known_hosts.is_some(), t.tofu]
                .iter()
                .filter(|b| **b)
                .count();
            if pins == 0 {
                errors.push(
                    key.clone(),
                    format!("target {:?} has no host key verification; set host_key = \"SHA256:...\", known_hosts = \"FILE\" or tofu = true (see docs/configuration.md)", t.name),
                );
            }
            if let Some(fp) = &t.host_key {
                if !fp.starts_with("SHA256:") || fp.len() < 20 {
                    errors.push(format!("{key}.host_key"), format!("{fp:?} is not a SHA256 fingerprint; copy it from `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the target"));
                }
            }
            if let Some(l) = &t.default_login {
                if !is_valid_name(l) {
                    errors.push(
                        format!("{key}.default_login"),
                        format!("invalid login {l:?}"),
                    );
                }
            }
        }
    }

    /// `[[roles]]`: unique valid names, then each role's rules.
    fn validate_roles(&self, errors: &mut Errors) {
        let mut role_names = HashSet::new();
        for (i, r) in self.roles.iter().enumerate() {
            let key = format!("roles[{i}]");
            if !is_valid_name(&r.name) {
                errors.push(
                    format!("{key}.name"),
                    format!("invalid role name {:?}", r.name),
                );
            }
            if !role_names.insert(r.name.as_str()) {
                errors.push(
                    format!("{key}.name"),
                    format!("duplicate role {:?}", r.name),
                );
            }
            validate_role_rules(r, &key, errors);
        }
    }

    /// `[[sinks]]`: unique names (each kind's keys are checked by serde).
    fn validate_sinks(&self, errors: &mut Errors) {
        let mut sink_names = HashSet::new();
        for (i, s) in self.sinks.iter().enumerate() {
            if !sink_names.insert(s.name.as_str()) {
                errors.push(
                    format!("sinks[{i}].name"),
                    format!("duplicate sink {:?}", s.name),
                );
            }
        }
    }

    /// `[[alerts]]`: sinks that exist, unique names, one of `when` or
    /// `threshold`, a threshold count of at least 1.
    fn validate_alerts(&self, errors: &mut Errors) {
        for (i, a) in self.alerts.iter().enumerate() {
            for s in &a.sinks {
                if !self.sinks.iter().any(|k| &k.name == s) {
                    errors.push(
                        format!("alerts[{i}].sinks"),
                        format!("unknown sink {s:?}; define it with [[sinks]] name = {s:?}"),
                    );
                }
            }
        }
        let mut alert_names = HashSet::new();
        for (i, a) in self.alerts.iter().enumerate() {
            let key = format!("alerts[{i}]");
            if !alert_names.insert(a.name.as_str()) {
                errors.push(
                    format!("{key}.name"),
                    format!("duplicate alert {:?}", a.name),
                );
            }
            if a.when.is_some() == a.threshold.is_some() {
                errors.push(
                    key.clone(),
                    "give exactly one of `when` (a pattern) or `threshold`; see docs/configuration.md",
                );
            }
            if let Some(t) = &a.threshold {
                if t.count == 0 {
                    errors.push(format!("{key}.threshold.count"), "must be at least 1");
                }
            }
        }
    }

    /// `[[users]]`: unique valid names, roles that exist, key lines.
    fn validate_users(&self, errors: &mut Errors) {
        let mut user_names = HashSet::new();
        for (i, u) in self.users.iter().enumerate() {
            let key = format!("users[{i}]");
            if !is_valid_name(&u.name) {
                errors.push(
                    format!("{key}.name"),
                    format!(
                        "invalid user name {:?}; use 1-64 letters, digits, '.', '_' or '-'",
                        u.name
                    ),
                );
            }
            if !user_names.insert(u.name.as_str()) {
                errors.push(
                    format!("{key}.name"),
                    format!("duplicate user {:?}", u.name),
                );
            }
            for (j, role) in u.roles.iter().enumerate() {
                if !self.roles.iter().any(|r| &r.name == role) {
                    errors.push(format!("{key}.roles[{j}]"), format!("unknown role {role:?}; define it with [[roles]] name = {role:?} or remove it"));
                }
            }
            for (j, k) in u.keys.iter().enumerate() {
                let mut parts = k.split_whitespace();
                let ok = matches!((parts.next(), parts.next()), (Some(alg), Some(_)) if alg.starts_with("ssh-") || alg.starts_with("ecdsa-") || alg.starts_with("sk-"));
                if !ok {
                    errors.push(format!("{key}.keys[{j}]"), "not an OpenSSH public key line; paste the contents of ~/.ssh/id_ed25519.pub");
                }
            }
        }
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    pub fn identity_provider(&self, name: &str) -> Option<&IdentityProvider> {
        self.identity_providers.iter().find(|p| p.name == name)
    }

    /// Does any role of `user` (a `[[users]]` entry) set `require_sso`?
    pub fn sso_required(&self, user: &str) -> bool {
        self.user(user).is_some_and(|u| {
            u.roles
                .iter()
                .filter_map(|r| self.role(r))
                .any(|r| r.require_sso)
        })
    }

    /// This config with `user` among `[[users]]` (replacing one of the
    /// same name): how an identity from a provider is judged by the same
    /// policy as a configured user.
    /// The config `user` is judged by when an identity provider granted
    /// them `roles`: their `[[users]]` entry (or a new one with no key,
    /// for someone who exists only at the provider) with those roles
    /// added.
    pub fn with_granted_roles(&self, user: &str, roles: &[String]) -> Config {
        let mut entry = self.user(user).cloned().unwrap_or_else(|| User {
            name: user.to_string(),
            keys: Vec::new(),
            roles: Vec::new(),
            password_hash: None,
            principals: Vec::new(),
        });
        for role in roles {
            if !entry.roles.contains(role) {
                entry.roles.push(role.clone());
            }
        }
        self.with_user(entry)
    }

    pub fn with_user(&self, user: User) -> Config {
        let mut c = self.clone();
        c.users.retain(|u| u.name != user.name);
        c.users.push(user);
        c
    }

    /// Fills each provider's `client_secret` from the environment variable
    /// its `client_secret_env` names, read through `env` (the binary's
    /// job: this crate reads no environment). The errors name the key.
    pub fn resolve_secrets(
        &mut self,
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Vec<ConfigError> {
        let mut errors = Errors {
            file: path,
            list: Vec::new(),
        };
        for (i, p) in self.identity_providers.iter_mut().enumerate() {
            let Some(var) = &p.client_secret_env else {
                continue;
            };
            match env(var).filter(|v| !v.is_empty()) {
                Some(secret) => p.client_secret = Some(secret),
                None => errors.push(
                    format!("identity_providers[{i}].client_secret_env"),
                    format!("the environment variable {var} is not set or empty; set it to the client secret, or use client_secret"),
                ),
            }
        }
        errors.list
    }

    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name)
    }

    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.iter().find(|r| r.name == name)
    }

    /// Resolves relative paths in the config against `base` (the directory
    /// of the config file), so that a gateway started from anywhere finds
    /// its keys and data.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.server.host_key);
        fix(&mut self.upstream.key);
        if let Some(ca) = self.upstream.ca_key.as_mut() {
            fix(ca);
        }
        fix(&mut self.recording.dir);
        fix(&mut self.auth.secrets_key);
        for ca in &mut self.auth.trusted_user_ca_keys {
            // An entry is a key line or a path to a .pub file.
            if !ca.contains(' ') && Path::new(ca.as_str()).is_relative() {
                *ca = base.join(&*ca).to_string_lossy().into_owned();
            }
        }
        fix(&mut self.audit.signing_key);
        if let Some(anchor) = self.audit.anchor_file.as_mut() {
            fix(anchor);
        }
        fix(&mut self.runbooks.dir);
        for s in &mut self.sinks {
            match &mut s.kind {
                SinkKind::Jsonl { path, .. } => fix(path),
                SinkKind::Elasticsearch {
                    ca_file,
                    dead_letter_file,
                    ..
                }
                | SinkKind::CloudtrailLake {
                    ca_file,
                    dead_letter_file,
                    ..
                } => {
                    if let Some(p) = ca_file.as_mut() {
                        fix(p);
                    }
                    let p =
                        dead_letter_file.get_or_insert_with(|| default_dead_letter_file(&s.name));
                    fix(p);
                }
                SinkKind::Webhook { ca_file, .. } | SinkKind::SplunkHec { ca_file, .. } => {
                    if let Some(p) = ca_file.as_mut() {
                        fix(p);
                    }
                }
                SinkKind::Syslog { .. } | SinkKind::Postgres { .. } => {}
            }
        }
        for t in &mut self.targets {
            if let Some(k) = t.known_hosts.as_mut() {
                fix(k);
            }
        }
        for p in &mut self.identity_providers {
            if let Some(ca) = p.ca_file.as_mut() {
                fix(ca);
            }
        }
        if let Some(rest) = self.store.url.strip_prefix("sqlite://") {
            let p = Path::new(rest.split('?').next().unwrap_or(rest));
            if p.is_relative() && !rest.starts_with(':') {
                let query = rest
                    .split_once('?')
                    .map(|(_, q)| format!("?{q}"))
                    .unwrap_or_default();
                self.store.url = format!("sqlite://{}{}", base.join(p).display(), query);
            }
        }
    }
}

impl Config {
    /// `[[identity_providers]]`: unique valid names, an issuer URL the
    /// gateway may use, one way to give the secret, the `openid` scope,
    /// roles that exist, plain domains, a session longer than 0.
    fn validate_identity_providers(&self, errors: &mut Errors) {
        if self.identity_providers.is_empty() {
            for (i, r) in self.roles.iter().enumerate() {
                if r.require_sso {
                    errors.push(
                        format!("roles[{i}].require_sso"),
                        "no identity provider is configured; add [[identity_providers]] or remove require_sso",
                    );
                }
            }
        }
        let mut names = HashSet::new();
        for (i, p) in self.identity_providers.iter().enumerate() {
            let key = format!("identity_providers[{i}]");
            if !is_valid_name(&p.name) {
                errors.push(
                    format!("{key}.name"),
                    format!(
                        "invalid identity provider name {:?}; use 1-64 letters, digits, '.', '_' or '-'",
                        p.name
                    ),
                );
            }
            if !names.insert(p.name.as_str()) {
                errors.push(
                    format!("{key}.name"),
                    format!("duplicate identity provider {:?}", p.name),
                );
            }
            if let Err(why) = issuer_ok(&p.issuer) {
                errors.push(format!("{key}.issuer"), why);
            }
            if p.client_id.trim().is_empty() {
                errors.push(
                    format!("{key}.client_id"),
                    "empty; copy the client id of the application registered for Gatehouse at the provider",
                );
            }
            if p.client_secret.is_some() && p.client_secret_env.is_some() {
                errors.push(
                    format!("{key}.client_secret"),
                    "give client_secret or client_secret_env, not both",
                );
            }
            if !p.scopes.iter().any(|s| s == "openid") {
                errors.push(
                    format!("{key}.scopes"),
                    "must include \"openid\" (without it the provider issues no ID token)",
                );
            }
            for (k, v) in [
                ("user_claim", &p.user_claim),
                ("groups_claim", &p.groups_claim),
            ] {
                if v.trim().is_empty() {
                    errors.push(format!("{key}.{k}"), "empty; name a claim of the ID token");
                }
            }
            for (claim, roles) in &p.role_map {
                for role in roles {
                    if self.role(role).is_none() {
                        errors.push(
                            format!("{key}.role_map.{claim}"),
                            format!("unknown role {role:?}; define it with [[roles]] name = {role:?} or remove it"),
                        );
                    }
                }
            }
            for (j, d) in p.allowed_domains.iter().enumerate() {
                let plain = !d.is_empty()
                    && !d.contains('@')
                    && !d.starts_with('.')
                    && d.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
                if !plain {
                    errors.push(
                        format!("{key}.allowed_domains[{j}]"),
                        format!("{d:?} is not a domain; write e.g. \"example.com\""),
                    );
                }
            }
            if p.sso_session.get().is_zero() {
                errors.push(
                    format!("{key}.sso_session"),
                    "must be longer than 0; write e.g. \"12h\"",
                );
            }
        }
    }
}

/// An issuer URL the gateway may fetch: `https://HOST...`, or `http://`
/// to a loopback address (tokens must not cross a network in clear).
fn issuer_ok(issuer: &str) -> Result<(), String> {
    let rest = if let Some(r) = issuer.strip_prefix("https://") {
        r
    } else if let Some(r) = issuer.strip_prefix("http://") {
        let host = r.split(['/', '?', '#']).next().unwrap_or("");
        let host = match host.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => host,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(format!(
                "{issuer:?}: plain http:// is accepted only on a loopback address; use the provider's https:// issuer URL"
            ));
        }
        r
    } else {
        return Err(format!(
            "{issuer:?} is not an https:// URL; copy the provider's issuer URL (its discovery document is ISSUER/.well-known/openid-configuration)"
        ));
    };
    if rest.is_empty() || rest.starts_with('/') || issuer.contains(['?', '#']) {
        return Err(format!(
            "{issuer:?} names no host, or has a query or fragment; copy the provider's issuer URL"
        ));
    }
    Ok(())
}

/// The problems [`Config::validate`] collects, all labelled with one file.
/// `server.service_name`: a DNS name (labels of letters, digits and
/// hyphens, joined by dots), as CloudTrail's `eventSource` values are.
fn check_service_name(name: &str) -> Result<(), String> {
    let fix = "write a DNS name such as \"ssh-proxy.example.com\"";
    if name.is_empty() || name.len() > 253 {
        return Err(format!("must be 1 to 253 characters; {fix}"));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{name:?} is not a DNS name: each dot-separated label is 1 to 63 letters, digits or hyphens, not starting or ending with a hyphen; {fix}"
            ));
        }
    }
    Ok(())
}

struct Errors<'a> {
    file: &'a Path,
    list: Vec<ConfigError>,
}

impl Errors<'_> {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.list.push(ConfigError {
            file: self.file.to_path_buf(),
            key: key.into(),
            message: message.into(),
        });
    }
}

/// A role's allow, deny and reauth rules; `key` is `roles[i]`.
fn validate_role_rules(r: &Role, key: &str, errors: &mut Errors) {
    for (j, a) in r.allow.iter().enumerate() {
        if a.logins.is_empty() {
            errors.push(
                format!("{key}.allow[{j}].logins"),
                "no logins listed; name the logins this rule allows, e.g. logins = [\"deploy\"]",
            );
        }
        if let Some(ap) = &a.require_approval {
            if ap.approvers.is_empty() {
                errors.push(
                    format!("{key}.allow[{j}].require_approval.approvers"),
                    "no approvers; name the roles whose members may approve",
                );
            }
        }
    }
    for (j, d) in r.deny.iter().enumerate() {
        for (k, c) in d.commands.iter().enumerate() {
            if let Err(e) = regex::Regex::new(c) {
                errors.push(
                    format!("{key}.deny[{j}].commands[{k}]"),
                    format!("bad regex {c:?}: {}", first_line(&e.to_string())),
                );
            }
        }
        if d.commands.is_empty() && d.targets.is_none() && d.logins.is_none() {
            errors.push(
                format!("{key}.deny[{j}]"),
                "empty deny rule; give targets, logins or commands (see docs/configuration.md)",
            );
        }
    }
    for (k, c) in r.reauth_commands.iter().enumerate() {
        if let Err(e) = regex::Regex::new(c) {
            errors.push(
                format!("{key}.reauth_commands[{k}]"),
                format!("bad regex {c:?}: {}", first_line(&e.to_string())),
            );
        }
    }
}

/// The dotted path (`roles[1].allow[0].ttl`) of the key or value that
/// byte `offset` of `text` falls in, when `text` is TOML.
fn key_at(text: &str, offset: usize) -> Option<String> {
    use toml::de::{DeTable, DeValue};
    use toml::Spanned;

    fn find(value: &Spanned<DeValue>, offset: usize, path: &mut Vec<String>) -> bool {
        match value.get_ref() {
            DeValue::Table(table) => {
                for (k, v) in table.iter() {
                    path.push(k.get_ref().to_string());
                    if k.span().contains(&offset) || find(v, offset, path) {
                        return true;
                    }
                    path.pop();
                }
            }
            DeValue::Array(array) => {
                let name = path.pop().unwrap_or_default();
                for (i, v) in array.iter().enumerate() {
                    path.push(format!("{name}[{i}]"));
                    if find(v, offset, path) {
                        return true;
                    }
                    path.pop();
                }
                path.push(name);
            }
            _ => {}
        }
        value.span().contains(&offset)
    }

    let root = DeTable::parse(text).ok()?;
    let span = root.span();
    let root = Spanned::new(span, DeValue::Table(root.into_inner()));
    let mut path = Vec::new();
    (find(&root, offset, &mut path) && !path.is_empty()).then(|| path.join("."))
}

fn first_line(s: &str) -> String {
    s.lines().last().unwrap_or(s).trim().to_string()
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map(|i| offset - i).unwrap_or(offset + 1);
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:2222"

[[targets]]
name = "web01"
address = "10.0.0.5:22"
labels = { env = "prod", team = "web" }
host_key = "SHA256:abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
default_login = "deploy"

[[roles]]
name = "web-dev"
allow = [{ targets = { env = "staging" }, logins = ["deploy"] }]
deny  = [{ commands = ["^rm -rf /", "^shutdown"] }]
require_mfa = true
max_session = "8h"

[[users]]
name = "alice"
keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE alice@laptop"]
roles = ["web-dev"]
"#;

    fn p() -> &'static Path {
        Path::new("gatehouse.toml")
    }

    #[test]
    fn a_product_style_config_is_valid() {
        let c = Config::parse(GOOD, p()).unwrap();
        assert_eq!(c.validate(p()), vec![]);
        assert_eq!(c.targets[0].labels["env"], "prod");
        assert_eq!(c.store.url, "sqlite://data/gatehouse.db");
    }

    #[test]
    fn audit_query_timeout_and_anchor_file_are_checked() {
        let c = Config::parse(GOOD, p()).unwrap();
        assert_eq!(c.audit.query_timeout.to_string(), "30s");
        assert_eq!(c.audit.query_timeout.get(), Duration::from_secs(30));
        assert_eq!(
            c.audit.anchor_path(),
            c.audit.signing_key.with_file_name("audit_anchor.jsonl")
        );
        let text = format!(
            "{GOOD}\n[audit]\nquery_timeout = \"0s\"\nanchor_file = \"data/audit_signing.key\"\n"
        );
        let c = Config::parse(&text, p()).unwrap();
        let errors: Vec<String> = c.validate(p()).iter().map(|e| e.to_string()).collect();
        assert!(
            errors.iter().any(|e| e.contains("audit.query_timeout")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.contains("audit.anchor_file")),
            "{errors:?}"
        );
        let text = format!("{GOOD}\n[audit]\nquery_timeout = \"soon\"\n");
        let e = Config::parse(&text, p()).unwrap_err();
        assert_eq!(e.key, "audit.query_timeout");
        assert!(e.message.contains("invalid duration \"soon\""), "{e}");
    }

    /// `Config::load` on `text` written to a file: the errors as text.
    fn load_errors(text: &str) -> Vec<String> {
        let dir = std::env::temp_dir().join(format!("gatehouse-model-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("gatehouse.toml");
        std::fs::write(&file, text).unwrap();
        let result = Config::load(&file);
        std::fs::remove_dir_all(&dir).unwrap();
        match result {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn an_invalid_duration_is_a_load_error_naming_the_key() {
        let errors = load_errors("[server]\nlogin_grace_time = \"soon\"\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert!(
            e.contains("gatehouse.toml: server.login_grace_time: "),
            "{e}"
        );
        assert!(e.contains("invalid duration \"soon\""), "{e}");
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("docs/configuration.md"), "{e}");
        // A bare number is rejected as before, and keys in arrays of
        // tables and inline tables are named with their index.
        let text = GOOD.replace("max_session = \"8h\"", "max_session = \"8\"");
        let e = Config::parse(&text, p()).unwrap_err();
        assert_eq!(e.key, "roles[0].max_session", "{e}");
        let text = GOOD.replace(
            "logins = [\"deploy\"] }]",
            "logins = [\"deploy\"], require_approval = { approvers = [\"web-dev\"], ttl = \"1x\" } }]",
        );
        let e = Config::parse(&text, p()).unwrap_err();
        assert_eq!(e.key, "roles[0].allow[0].require_approval.ttl", "{e}");
        let e = Config::parse("[upstream]\nconnect_timeout = 10\n", p()).unwrap_err();
        assert_eq!(e.key, "upstream.connect_timeout", "{e}");
        assert!(e.message.contains("expected a duration"), "{e}");
    }

    #[test]
    fn the_service_name_defaults_to_gatehouse_and_must_be_a_dns_name() {
        let c = Config::parse("", p()).unwrap();
        assert_eq!(c.server.service_name, "gatehouse");
        assert!(load_errors("[server]\nservice_name = \"ssh-proxy.example.com\"\n").is_empty());
        for bad in [
            "",
            "ssh proxy",
            "-gw.example.com",
            "gw..example.com",
            "gw'; drop",
        ] {
            let errors = load_errors(&format!("[server]\nservice_name = {bad:?}\n"));
            assert_eq!(errors.len(), 1, "{bad:?}: {errors:?}");
            assert!(errors[0].contains("server.service_name:"), "{errors:?}");
            assert!(errors[0].contains("ssh-proxy.example.com"), "{errors:?}");
        }
    }

    #[test]
    fn a_node_is_lost_only_after_more_than_one_heartbeat_interval() {
        let c = Config::parse("", p()).unwrap();
        assert_eq!(c.server.heartbeat_interval.get(), Duration::from_secs(5));
        assert_eq!(c.server.node_lost_after.get(), Duration::from_secs(30));
        assert!(
            load_errors("[server]\nheartbeat_interval = \"1s\"\nnode_lost_after = \"4s\"\n")
                .is_empty()
        );
        let errors =
            load_errors("[server]\nheartbeat_interval = \"10s\"\nnode_lost_after = \"10s\"\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains(
                "server.node_lost_after: must be longer than server.heartbeat_interval (10s)"
            ),
            "{errors:?}"
        );
        let errors = load_errors("[server]\nheartbeat_interval = \"0s\"\n");
        assert!(
            errors
                .iter()
                .any(|e| e.contains("server.heartbeat_interval: must be longer than 0")),
            "{errors:?}"
        );
    }

    #[test]
    fn durations_are_parsed_once_and_keep_their_text() {
        let text = format!(
            "{GOOD}\n[[alerts]]\nname = \"burst\"\nthreshold = {{ count = 3, type = \"auth.failure\", by = \"source_ip\", within = \"1h30m\" }}\naction = {{ block_source = \"2d\" }}\n"
        );
        let c = Config::parse(&text, p()).unwrap();
        let t = c.alerts[0].threshold.as_ref().unwrap();
        assert_eq!(t.within.get(), Duration::from_secs(5400));
        let block = c.alerts[0].action.as_ref().unwrap().block_source.as_ref();
        assert_eq!(block.map(Dur::get), Some(Duration::from_secs(172800)));
        assert_eq!(
            c.roles[0].max_session.as_ref().map(Dur::get),
            Some(Duration::from_secs(8 * 3600))
        );
        assert_eq!(c.server.login_grace_time.get(), Duration::from_secs(60));
        // Serialised back, every duration is its text.
        let again = toml::to_string(&c).unwrap();
        assert!(again.contains("within = \"1h30m\""), "{again}");
        assert!(again.contains("max_session = \"8h\""), "{again}");
        assert!(again.contains("login_grace_time = \"60s\""), "{again}");
        let back = Config::parse(&again, p()).unwrap();
        assert_eq!(toml::to_string(&back).unwrap(), again);
    }

    #[test]
    fn severities_are_parsed_at_load() {
        let rule = "[[alerts]]\nname = \"a\"\nwhen = \"type = 'command'\"\n";
        let c = Config::parse(rule, p()).unwrap();
        assert_eq!(c.alerts[0].severity, Severity::High);
        for (name, want) in [
            ("info", Severity::Info),
            ("warn", Severity::Warn),
            ("high", Severity::High),
            ("critical", Severity::Critical),
        ] {
            let c = Config::parse(&format!("{rule}severity = \"{name}\"\n"), p()).unwrap();
            assert_eq!(c.alerts[0].severity, want);
        }
        let errors = load_errors(&format!("{rule}severity = \"urgent\"\n"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("alerts[0].severity"), "{errors:?}");
        assert!(errors[0].contains("urgent"), "{errors:?}");
        assert!(errors[0].contains("critical"), "{errors:?}");
    }

    #[test]
    fn sinks_are_typed_by_kind() {
        let c = Config::parse(
            "[[sinks]]\nname = \"file\"\nkind = \"jsonl\"\npath = \"events.jsonl\"\n\n[[sinks]]\nname = \"hec\"\nkind = \"splunk_hec\"\nurl = \"https://h/c\"\ntoken = \"t\"\nca_file = \"ca.pem\"\nonly_alerts = true\n",
            p(),
        )
        .unwrap();
        assert_eq!(c.sinks[0].name, "file");
        assert!(!c.sinks[0].only_alerts);
        assert_eq!(
            c.sinks[0].kind,
            SinkKind::Jsonl {
                path: "events.jsonl".into(),
                max_bytes: 100 * 1024 * 1024,
                format: SinkFormat::Gatehouse,
            }
        );
        assert!(c.sinks[1].only_alerts);
        assert_eq!(
            c.sinks[1].kind,
            SinkKind::SplunkHec {
                url: "https://h/c".into(),
                token: "t".into(),
                ca_file: Some("ca.pem".into()),
                format: SinkFormat::Gatehouse,
            }
        );
        // The same keys come back out.
        let again = toml::to_string(&c).unwrap();
        let back = Config::parse(&again, p()).unwrap();
        assert_eq!(back.sinks, c.sinks);
        let mut resolved = c;
        resolved.resolve_paths(Path::new("/etc/gh"));
        assert!(
            matches!(&resolved.sinks[0].kind, SinkKind::Jsonl { path, .. } if path == Path::new("/etc/gh/events.jsonl"))
        );
        assert!(
            matches!(&resolved.sinks[1].kind, SinkKind::SplunkHec { ca_file: Some(f), .. } if f == Path::new("/etc/gh/ca.pem"))
        );
    }

    #[test]
    fn dead_letter_files_default_to_the_data_dir_beside_the_config() {
        let mut c = Config::parse(
            "[[sinks]]\nname = \"es/prod 1\"\nkind = \"elasticsearch\"\nurl = \"http://h/_bulk\"\n\n[[sinks]]\nname = \"lake\"\nkind = \"cloudtrail_lake\"\nchannel_arn = \"arn:aws:cloudtrail:eu-west-1:123456789012:channel/x\"\ndead_letter_file = \"/var/spool/lake.ndjson\"\n",
            p(),
        )
        .unwrap();
        c.resolve_paths(Path::new("/etc/gh"));
        assert!(matches!(
            &c.sinks[0].kind,
            SinkKind::Elasticsearch { dead_letter_file: Some(f), .. }
                if f == Path::new("/etc/gh/data/es_prod_1.dead-letter.ndjson")
        ));
        assert!(matches!(
            &c.sinks[1].kind,
            SinkKind::CloudtrailLake { dead_letter_file: Some(f), .. }
                if f == Path::new("/var/spool/lake.ndjson")
        ));
    }

    #[test]
    fn sinks_that_send_events_take_a_format() {
        let c = Config::parse(
            "[[sinks]]\nname = \"es\"\nkind = \"elasticsearch\"\nurl = \"http://h/_bulk\"\nformat = \"cloudtrail\"\n",
            p(),
        )
        .unwrap();
        assert!(matches!(
            c.sinks[0].kind,
            SinkKind::Elasticsearch {
                format: SinkFormat::Cloudtrail,
                ..
            }
        ));
        let e = Config::parse(
            "[[sinks]]\nname = \"s\"\nkind = \"syslog\"\nurl = \"udp://h:514\"\nformat = \"cef\"\n",
            p(),
        )
        .unwrap_err();
        assert!(e.message.contains("unknown variant `cef`"), "{e}");
        let e = Config::parse(
            "[[sinks]]\nname = \"pg\"\nkind = \"postgres\"\nurl = \"postgres://h/db\"\nformat = \"cloudtrail\"\n",
            p(),
        )
        .unwrap_err();
        assert!(e.message.contains("unknown field `format`"), "{e}");
    }

    #[test]
    fn an_unknown_sink_kind_is_an_error() {
        let e = Config::parse(
            "[[sinks]]\nname = \"a\"\nkind = \"syslog\"\nurl = \"udp://h:514\"\n\n[[sinks]]\nname = \"k\"\nkind = \"kafka\"\nurl = \"x\"\n",
            p(),
        )
        .unwrap_err();
        assert_eq!(e.key, "sinks[1]", "{e}");
        assert!(e.message.contains("unknown variant `kafka`"), "{e}");
        assert!(e.message.contains("splunk_hec"), "{e}");
        assert!(e.message.contains("line 6"), "{e}");
        let e = Config::parse("[[sinks]]\nname = \"k\"\npath = \"x\"\n", p()).unwrap_err();
        assert!(e.message.contains("missing field `kind`"), "{e}");
    }

    #[test]
    fn an_unknown_key_inside_a_sink_is_an_error() {
        for (text, field) in [
            // Not a key of any kind.
            ("kind = \"jsonl\"\npath = \"x\"\npth = \"y\"", "pth"),
            // A key of another kind.
            ("kind = \"jsonl\"\npath = \"x\"\nurl = \"y\"", "url"),
            (
                "kind = \"syslog\"\nurl = \"udp://h:514\"\ntoken = \"t\"",
                "token",
            ),
            (
                "kind = \"postgres\"\nurl = \"postgres://h/d\"\nca_file = \"c\"",
                "ca_file",
            ),
        ] {
            let text = format!("[[sinks]]\nname = \"s\"\n{text}\n");
            let e = Config::parse(&text, p()).unwrap_err();
            assert_eq!(e.key, "sinks[0]", "{e}");
            assert!(
                e.message.contains(&format!("unknown field `{field}`")),
                "{text}: {e}"
            );
        }
        // A key a kind needs is required.
        let e = Config::parse(
            "[[sinks]]\nname = \"s\"\nkind = \"splunk_hec\"\nurl = \"http://h/c\"\n",
            p(),
        )
        .unwrap_err();
        assert!(e.message.contains("missing field `token`"), "{e}");
        let e = Config::parse("[[sinks]]\nkind = \"jsonl\"\npath = \"x\"\n", p()).unwrap_err();
        assert!(e.message.contains("missing field `name`"), "{e}");
    }

    #[test]
    fn admin_listen_needs_tls_unless_loopback() {
        let c = Config::parse("[server]\nadmin_listen = \"127.0.0.1:9000\"\n", p()).unwrap();
        assert_eq!(c.server.admin_listen.as_deref(), Some("127.0.0.1:9000"));
        assert!(c.validate(p()).is_empty());
        let c = Config::parse("[server]\nadmin_listen = \"[::1]:9000\"\n", p()).unwrap();
        assert!(c.validate(p()).is_empty());
        for bad in ["0.0.0.0:9090", "10.0.0.1:9090"] {
            let text = format!("[server]\nadmin_listen = \"{bad}\"\n");
            let errors = Config::parse(&text, p()).unwrap().validate(p());
            assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
            assert_eq!(errors[0].key, "server.admin_listen");
            assert!(errors[0].message.contains("loopback"), "{}", errors[0]);
            assert!(
                errors[0].message.contains("console.tls_cert"),
                "{}",
                errors[0]
            );
            // With a certificate, any address will do.
            let text = format!("{text}[console]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n");
            assert!(Config::parse(&text, p()).unwrap().validate(p()).is_empty());
        }
        for bad in ["localhost:9090", "9090"] {
            let text = format!("[server]\nadmin_listen = \"{bad}\"\n");
            let errors = Config::parse(&text, p()).unwrap().validate(p());
            assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
            assert!(
                errors[0].message.contains("not an address"),
                "{}",
                errors[0]
            );
        }
        let half = "[console]\ntls_cert = \"c.pem\"\n";
        let errors = Config::parse(half, p()).unwrap().validate(p());
        assert_eq!(errors[0].key, "console.tls_cert");
    }

    #[test]
    fn unknown_keys_are_errors_with_position() {
        let e = Config::parse("[server]\nlisten = \"x\"\nlistne = 1\n", p()).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("gatehouse.toml"), "{s}");
        assert!(s.contains("listne"), "{s}");
        assert!(s.contains("line 3"), "{s}");
        assert!(s.contains("docs/configuration.md"), "{s}");
    }

    #[test]
    fn cross_reference_errors_name_the_key_and_the_fix() {
        let text = GOOD
            .replace("roles = [\"web-dev\"]", "roles = [\"web-dve\"]")
            .replace("\"^shutdown\"", "\"^(shutdown\"");
        let mut text = text;
        text.push_str("\n[[targets]]\nname = \"web01\"\naddress = \"10.0.0.6\"\ntofu = true\n");
        let c = Config::parse(&text, p()).unwrap();
        let errors: Vec<String> = c.validate(p()).iter().map(|e| e.to_string()).collect();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("users[0].roles[0]") && e.contains("unknown role \"web-dve\"")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("roles[0].deny[0].commands[1]") && e.contains("bad regex")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("targets[1].name") && e.contains("duplicate target")),
            "{errors:?}"
        );
    }

    #[test]
    fn a_target_without_host_key_verification_is_an_error() {
        let c = Config::parse("[[targets]]\nname = \"a\"\naddress = \"h:22\"\n", p()).unwrap();
        let errors = c.validate(p());
        assert!(errors[0].message.contains("tofu = true"), "{errors:?}");
    }

    #[test]
    fn socket_address_adds_the_default_port() {
        let t = |a: &str| Target {
            name: "t".into(),
            address: a.into(),
            labels: Default::default(),
            host_key: None,
            known_hosts: None,
            tofu: true,
            default_login: None,
        };
        assert_eq!(t("10.0.0.5").socket_address(), "10.0.0.5:22");
        assert_eq!(t("10.0.0.5:2200").socket_address(), "10.0.0.5:2200");
        assert_eq!(t("::1").socket_address(), "[::1]:22");
        assert_eq!(t("[::1]:2200").socket_address(), "[::1]:2200");
    }

    const SSO: &str = r#"
[[identity_providers]]
name = "corp"
kind = "oidc"
issuer = "https://login.example.com/realms/corp"
client_id = "gatehouse"
client_secret_env = "GH_OIDC_SECRET"
groups_claim = "groups"
role_map = { "ops" = ["web-dev"], "admins" = ["web-dev", "admin"] }
allowed_domains = ["example.com"]
ca_file = "corp-ca.pem"

[[roles]]
name = "admin"
require_sso = true
"#;

    #[test]
    fn an_identity_provider_has_defaults_and_maps_claims_to_roles() {
        let c = Config::parse(&format!("{GOOD}{SSO}"), p()).unwrap();
        assert_eq!(c.validate(p()), vec![]);
        let idp = &c.identity_providers[0];
        assert_eq!(idp.kind, IdentityProviderKind::Oidc);
        assert_eq!(idp.user_claim, "preferred_username");
        assert_eq!(idp.sso_session.get(), Duration::from_secs(12 * 3600));
        assert!(idp.scopes.iter().any(|s| s == "openid"));
        assert!(c.role("admin").unwrap().require_sso);
        assert!(!c.role("web-dev").unwrap().require_sso);
        // Each role once, with the claim value that gave it first.
        let grants = idp.roles_for(&["admins".into(), "ops".into(), "other".into()]);
        let pairs: Vec<(&str, &str)> = grants
            .iter()
            .map(|g| (g.claim.as_str(), g.role.as_str()))
            .collect();
        assert_eq!(pairs, [("admins", "web-dev"), ("admins", "admin")]);
        assert!(idp.roles_for(&["nobody".into()]).is_empty());
        assert!(idp.domain_allowed(Some("Alice@EXAMPLE.com")));
        assert!(!idp.domain_allowed(Some("alice@example.com.evil.org")));
        assert!(!idp.domain_allowed(None));
        // The secret comes from the environment, through the caller.
        let mut c2 = c.clone();
        let errors = c2.resolve_secrets(p(), |_| None);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "identity_providers[0].client_secret_env");
        assert!(
            errors[0].message.contains("GH_OIDC_SECRET"),
            "{}",
            errors[0]
        );
        assert!(c2
            .resolve_secrets(p(), |v| (v == "GH_OIDC_SECRET").then(|| "s3cret".into()))
            .is_empty());
        assert_eq!(
            c2.identity_providers[0].client_secret.as_deref(),
            Some("s3cret")
        );
        c2.resolve_paths(Path::new("/etc/gh"));
        assert_eq!(
            c2.identity_providers[0].ca_file.as_deref(),
            Some(Path::new("/etc/gh/corp-ca.pem"))
        );
        // An identity is judged as a user of the config.
        let with = c.with_user(User {
            name: "bob".into(),
            keys: vec![],
            roles: vec!["admin".into()],
            password_hash: None,
            principals: vec![],
        });
        assert!(with.sso_required("bob"));
        assert!(!c.sso_required("bob"));
    }

    #[test]
    fn identity_provider_mistakes_are_named() {
        let bad = SSO
            .replace(
                "https://login.example.com/realms/corp",
                "http://login.example.com",
            )
            .replace(
                "client_secret_env = \"GH_OIDC_SECRET\"",
                "client_secret_env = \"X\"\nclient_secret = \"y\"\nscopes = [\"email\"]",
            )
            .replace(
                "\"admins\" = [\"web-dev\", \"admin\"]",
                "\"admins\" = [\"root\"]",
            )
            .replace("[\"example.com\"]", "[\"@example.com\"]");
        let text = format!("{GOOD}{bad}");
        let errors: Vec<String> = Config::parse(&text, p())
            .unwrap()
            .validate(p())
            .iter()
            .map(|e| e.to_string())
            .collect();
        for want in [
            "identity_providers[0].issuer: \"http://login.example.com\": plain http:// is accepted only on a loopback address",
            "identity_providers[0].client_secret: give client_secret or client_secret_env, not both",
            "identity_providers[0].scopes: must include \"openid\"",
            "identity_providers[0].role_map.admins: unknown role \"root\"",
            "identity_providers[0].allowed_domains[0]: \"@example.com\" is not a domain",
        ] {
            assert!(errors.iter().any(|e| e.contains(want)), "{want}\n{errors:?}");
        }
        assert_eq!(errors.len(), 5, "{errors:?}");
        // Plain HTTP on loopback is fine (a provider on the same host).
        for ok in [
            "http://127.0.0.1:9000",
            "http://[::1]:9000/x",
            "http://localhost/realms/a",
        ] {
            let text = format!(
                "{GOOD}{}",
                SSO.replace("https://login.example.com/realms/corp", ok)
            );
            assert!(
                Config::parse(&text, p()).unwrap().validate(p()).is_empty(),
                "{ok}"
            );
        }
        for bad in ["login.example.com", "https://", "https://h/x?y=1"] {
            let text = format!(
                "{GOOD}{}",
                SSO.replace("https://login.example.com/realms/corp", bad)
            );
            let errors = Config::parse(&text, p()).unwrap().validate(p());
            assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
            assert_eq!(errors[0].key, "identity_providers[0].issuer");
        }
        // An unknown kind or key is a parse error naming it.
        let e = Config::parse(&SSO.replace("\"oidc\"", "\"saml\""), p()).unwrap_err();
        assert!(e.message.contains("unknown variant `saml`"), "{e}");
        let e = Config::parse(&SSO.replace("groups_claim", "group_claim"), p()).unwrap_err();
        assert!(e.message.contains("unknown field `group_claim`"), "{e}");
        // require_sso without a provider.
        let text = "[[roles]]\nname = \"r\"\nrequire_sso = true\n";
        let errors = Config::parse(text, p()).unwrap().validate(p());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "roles[0].require_sso");
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let mut c = Config::default();
        c.resolve_paths(Path::new("/etc/gh"));
        assert_eq!(c.server.host_key, Path::new("/etc/gh/data/host_ed25519"));
        assert_eq!(c.store.url, "sqlite:///etc/gh/data/gatehouse.db");
    }
}
