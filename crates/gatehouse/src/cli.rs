//! Command-line surface (the commands in README.md).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "gatehouse",
    version,
    about = "SSH access gateway: MFA, policy, recording and a verifiable audit trail"
)]
pub struct Cli {
    /// Config file (default: gatehouse.toml, or GATEHOUSE_CONFIG).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Output format for machine-readable output.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
    /// asciicast v2, for `sessions export`.
    Cast,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write a starter config, host key, upstream key and data directory.
    Init(InitArgs),
    /// Run the gateway.
    Serve,
    /// Validate the config and policy; explain every error.
    Check,
    /// Policy tools.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Query and verify the audit trail.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Sessions: list, inspect, replay, export, watch, kill.
    #[command(subcommand)]
    Sessions(SessionsCmd),
    /// Users: list, show, lock, unlock, second factors.
    #[command(subcommand)]
    Users(UsersCmd),
    /// Runbooks: read-only SQL with parameters and actions.
    #[command(subcommand)]
    Runbook(RunbookCmd),
    /// Just-in-time approval requests.
    #[command(subcommand)]
    Approvals(ApprovalsCmd),
    /// Source addresses refused by the gateway: list, block, unblock.
    #[command(subcommand)]
    Sources(SourcesCmd),
    /// Gateway nodes sharing the store: address, version, open sessions,
    /// last heartbeat and state (up, stopped, lost).
    Nodes,
    /// API tokens for the console's /api/v1: create, list, revoke.
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Sinks: what one sends next (--dry-run), or send it now.
    #[command(subcommand)]
    Sinks(SinksCmd),
}

#[derive(Subcommand, Debug)]
pub enum SinksCmd {
    /// Deliver the events after the sink's cursor once and move the
    /// cursor; with --dry-run, print the exact bodies instead (stdout)
    /// and where they would go (stderr), sending nothing.
    Send {
        name: String,
        #[arg(long)]
        dry_run: bool,
        /// At most this many events.
        #[arg(long, default_value_t = 2000)]
        limit: i64,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokensCmd {
    /// Make a token that acts as USER (shown once).
    Create {
        user: String,
        /// What the token is for.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Tokens and their last use.
    List {
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a token by its id.
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum SourcesCmd {
    /// Blocks in force now.
    List,
    /// Refuse connections from an address for a while.
    Block {
        ip: String,
        /// How long, e.g. 15m, 2h.
        #[arg(long = "for", default_value = "15m")]
        duration: String,
        #[arg(long)]
        reason: String,
    },
    /// Lift a block.
    Unblock { ip: String },
}

#[derive(Subcommand, Debug)]
pub enum ApprovalsCmd {
    /// Pending requests.
    List,
    Approve {
        id: String,
    },
    Deny {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum RunbookCmd {
    /// Built-in runbooks and those in [runbooks] dir.
    List,
    /// The runbook's description, parameters, SQL and actions.
    Show { name: String },
    /// Show the rows and the actions it would take; --apply takes them.
    Run {
        name: String,
        /// KEY=VALUE, repeatable.
        #[arg(long = "param")]
        params: Vec<String>,
        #[arg(long)]
        apply: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum UsersCmd {
    /// Users from the config, with their roles, MFA enrolment and locks.
    List,
    Show {
        user: String,
    },
    /// Refuse new sessions and end the user's live ones.
    Lock {
        user: String,
        #[arg(long, default_value = "locked by an administrator")]
        reason: String,
        /// Lift the lock automatically after this long (e.g. 1h).
        #[arg(long)]
        ttl: Option<String>,
    },
    Unlock {
        user: String,
    },
    /// Create a TOTP secret: prints an otpauth:// URI and a QR code.
    TotpEnroll {
        user: String,
    },
    /// Remove the user's TOTP secret (they must enrol again).
    TotpReset {
        user: String,
    },
    /// Read a password on stdin and print its argon2id hash, for a user's
    /// `password_hash` in the config.
    HashPassword,
}

#[derive(Subcommand, Debug)]
pub enum SessionsCmd {
    /// List sessions, newest first.
    List {
        /// Only sessions still running.
        #[arg(long)]
        active: bool,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        target: Option<String>,
        /// Only sessions started within this long, e.g. 1h, 7d.
        #[arg(long)]
        since: Option<String>,
    },
    /// Metadata, commands and transfers of one session.
    Show { id: String },
    /// Replay the terminal recording (space: pause, f: 10 s ahead, b: 10 s back, q: quit).
    Play {
        id: String,
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Cap pauses at this many seconds.
        #[arg(long)]
        idle_limit: Option<f64>,
    },
    /// Write the recording as asciicast (cast) or JSON.
    /// `--format cast` (default) or `--format json`.
    Export {
        id: String,
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
    /// Follow a running session's terminal live.
    Watch { id: String },
    /// End a running session; the user sees the reason.
    Kill {
        id: String,
        #[arg(long, default_value = "ended by an administrator")]
        reason: String,
    },
}

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Directory for gatehouse.toml and data/ (default: current directory).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Name of the first admin user.
    #[arg(long)]
    pub admin_user: Option<String>,
    /// Public key file of the first admin (default: ~/.ssh/id_ed25519.pub if present).
    #[arg(long)]
    pub admin_key: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Show whether USER may reach TARGET, and the rule that decides it.
    Explain {
        user: String,
        target: String,
        #[arg(long)]
        login: Option<String>,
        #[arg(long)]
        command: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Run read-only SQL over the events, sessions and commands views.
    Query { sql: String },
    /// Check the hash chain, the signed checkpoints and the anchor file.
    Verify {
        /// Also check every finished recording against the SHA-256 in its
        /// session.end event.
        #[arg(long)]
        recordings: bool,
        /// Prove the chain reaches the newest checkpoint in FILE: the
        /// anchor file (audit.anchor_file) or a jsonl sink's file.
        #[arg(long, value_name = "FILE")]
        anchor: Option<PathBuf>,
    },
    /// Print the latest events as JSON lines.
    Tail {
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: i64,
        /// Keep printing new events as they are written.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only events matching every FIELD=VALUE (VALUE may end in `*`),
        /// e.g. "type=auth.* user=alice".
        #[arg(long)]
        filter: Option<String>,
    },
}
