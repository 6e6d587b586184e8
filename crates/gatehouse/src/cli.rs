//! Command-line surface (PRODUCT.md section 3).

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
    /// Check the hash chain.
    Verify,
    /// Print the latest events as JSON lines.
    Tail {
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: i64,
    },
}
