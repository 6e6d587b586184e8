//! The `gatehouse` binary: parses the command line, loads the config and
//! wires the libraries together. The only crate that uses `anyhow`.

mod admin;
mod approvals;
mod cli;
mod init;
mod logging;
mod nodes;
mod operator;
mod runbooks;
mod sessions;
mod sinks;
mod sources;
mod sso;
mod tokens;
mod users;
mod verify;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use gatehouse_model::{Config, EventType, NewEvent, Outcome, Severity};
use gatehouse_store::Store;

use cli::{AuditCmd, Cli, Command, Format, PolicyCmd};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gatehouse: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // One line: what happened and, through the context, what to do.
            // Errors can quote stored or user-sent text: escaped.
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!(
                "gatehouse: {}",
                gatehouse_model::escape_control(&chain.join(": "))
            );
            ExitCode::from(1)
        }
    }
}

/// The config file: `--config`, else `GATEHOUSE_CONFIG`, else `gatehouse.toml`.
fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .or_else(|| std::env::var_os("GATEHOUSE_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("gatehouse.toml"))
}

/// Loads and validates the config, resolving relative paths against the
/// config file's directory. Prints every problem found.
fn load_config(path: &Path) -> Result<Config> {
    match Config::load(path).and_then(|c| with_secrets(c, path)) {
        Ok(mut c) => {
            let base = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            c.resolve_paths(base);
            Ok(c)
        }
        Err(errors) => {
            for e in &errors[1..] {
                eprintln!("gatehouse: {e}");
            }
            bail!("{}", errors[0]);
        }
    }
}

/// Fills `client_secret` from the variables `client_secret_env` names:
/// the binary is the one crate that reads the environment.
fn with_secrets(
    mut config: Config,
    path: &Path,
) -> std::result::Result<Config, Vec<gatehouse_model::ConfigError>> {
    let errors = config.resolve_secrets(path, |var| std::env::var(var).ok());
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors)
    }
}

async fn open_store(config: &Config) -> Result<Store> {
    let store = Store::open(&config.store.url).await.with_context(|| {
        "the store is unavailable; check store.url and that the database is reachable".to_string()
    })?;
    store.set_query_timeout(config.audit.query_timeout.get());
    Ok(store)
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let path = config_path(&cli);
    match &cli.command {
        Command::Init(args) => init::run(args),
        Command::Serve => serve(&path).await,
        Command::Check => check(&path, cli.format),
        Command::Policy(PolicyCmd::Explain {
            user,
            target,
            login,
            command,
        }) => {
            let config = load_config(&path)?;
            let sso = sso::explain_view(&config, user).await?;
            if let (Some(v), false) = (&sso, cli.format == Format::Json) {
                print!("{}", v.text);
            }
            explain(
                sso.as_ref().map_or(&config, |v| &v.config),
                user,
                target,
                login.as_deref(),
                command.as_deref(),
                cli.format,
                sso.as_ref().map(|v| v.details.clone()),
            )
        }
        Command::Audit(AuditCmd::Query { sql }) => {
            let config = load_config(&path)?;
            audit_query(&open_store(&config).await?, sql, cli.format).await
        }
        Command::Audit(AuditCmd::Verify { recordings, anchor }) => {
            let config = load_config(&path)?;
            let store = open_store(&config).await?;
            verify::run(&config, &store, cli.format, *recordings, anchor.as_deref()).await
        }
        Command::Approvals(cmd) => {
            let config = load_config(&path)?;
            let store = open_store(&config).await?;
            approvals::run(cmd, &config, &store, cli.format).await
        }
        Command::Runbook(cmd) => {
            let config = load_config(&path)?;
            runbooks::run(cmd, &config, cli.format, || open_store(&config)).await
        }
        Command::Sources(cmd) => {
            let config = load_config(&path)?;
            let store = open_store(&config).await?;
            sources::run(cmd, &config, &store, cli.format).await
        }
        Command::Tokens(cmd) => {
            let config = load_config(&path)?;
            let store = open_store(&config).await?;
            tokens::run(cmd, &config, &store, cli.format).await
        }
        Command::Sinks(cmd) => {
            let config = load_config(&path)?;
            let store = open_store(&config).await?;
            sinks::run(cmd, &config, &store).await
        }
        Command::Nodes => {
            let config = load_config(&path)?;
            nodes::run(&config, &open_store(&config).await?, cli.format).await
        }
        Command::Users(users::UsersCmd::HashPassword) => users::hash_password(cli.format),
        Command::Users(cmd) => {
            let config = load_config(&path)?;
            let store = open_store(&config).await?;
            users::run(cmd, &config, &store, cli.format).await
        }
        Command::Sessions(cmd) => {
            let config = load_config(&path)?;
            let store = open_store(&config).await?;
            sessions::run(cmd, &config, &store, cli.format).await
        }
        Command::Audit(AuditCmd::Tail {
            lines,
            follow,
            filter,
        }) => {
            let config = load_config(&path)?;
            let store = open_store(&config).await?;
            audit_tail(&store, *lines, *follow, filter.as_deref()).await
        }
    }
}

/// `audit query`: read-only SQL, capped and time-limited.
async fn audit_query(store: &Store, sql: &str, format: Format) -> Result<ExitCode> {
    let (result, truncated) = store.query_readonly_capped(sql).await?;
    if let Some(rows) = truncated {
        eprintln!(
            "gatehouse: the result was truncated at {rows} rows; add a WHERE or LIMIT to see the rest"
        );
    }
    let out = match format {
        Format::Table | Format::Cast => result.to_table(),
        Format::Json => result.to_json(),
        Format::Csv => result.to_csv(),
    };
    print!("{out}");
    if !out.ends_with('\n') {
        println!();
    }
    Ok(ExitCode::SUCCESS)
}

/// `audit tail`: the last `lines` matching events, then (with `follow`)
/// new ones as they are written.
async fn audit_tail(
    store: &Store,
    lines: i64,
    follow: bool,
    filter: Option<&str>,
) -> Result<ExitCode> {
    let filter = tail_filter(filter)?;
    let head = store.head_seq().await?;
    // Find where the last `lines` matching events start.
    let mut from = 0;
    let mut shown = Vec::new();
    loop {
        let batch = store.events_after(from, 10_000).await?;
        let Some((last, _)) = batch.last() else { break };
        from = *last;
        for (seq, ev) in batch {
            if matches_filter(&ev, &filter) {
                shown.push((seq, ev));
                if shown.len() as i64 > lines {
                    shown.remove(0);
                }
            }
        }
        if from >= head {
            break;
        }
    }
    for (_, ev) in &shown {
        println!("{}", serde_json::to_string(ev)?);
    }
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    let mut seq = from.max(head);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        for (s, ev) in store.events_after(seq, 1000).await? {
            seq = s;
            if matches_filter(&ev, &filter) {
                println!("{}", serde_json::to_string(&ev)?);
            }
        }
    }
}

/// `FIELD=VALUE` pairs for `audit tail --filter`.
fn tail_filter(expr: Option<&str>) -> Result<Vec<(String, String)>> {
    let Some(expr) = expr else {
        return Ok(Vec::new());
    };
    expr.split_whitespace()
        .map(|part| {
            let (k, v) = part.split_once('=').with_context(|| {
                format!("bad filter {part:?}: write FIELD=VALUE, e.g. type=auth.failure")
            })?;
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

fn matches_filter(ev: &gatehouse_model::event::Event, filter: &[(String, String)]) -> bool {
    let v = serde_json::to_value(ev).unwrap_or_default();
    filter.iter().all(|(k, want)| {
        let have = match v.get(k) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        match want.strip_suffix('*') {
            Some(prefix) => have.starts_with(prefix),
            None => &have == want,
        }
    })
}

fn check(path: &Path, format: Format) -> Result<ExitCode> {
    let config = match Config::load(path).and_then(|c| with_secrets(c, path)) {
        Ok(mut c) => {
            let base = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            c.resolve_paths(base);
            c
        }
        Err(errors) => {
            if format == Format::Json {
                let list: Vec<_> = errors
                    .iter()
                    .map(
                        |e| serde_json::json!({"file": e.file, "key": e.key, "message": e.message}),
                    )
                    .collect();
                println!("{}", serde_json::json!({"ok": false, "errors": list}));
            } else {
                for e in &errors {
                    eprintln!("{e}");
                }
            }
            return Ok(ExitCode::from(2));
        }
    };
    let problems = config_problems(&config, path);
    let warnings: Vec<String> = Vec::new();
    if format == Format::Json {
        println!(
            "{}",
            serde_json::json!({"ok": problems.is_empty(), "errors": problems, "warnings": warnings,
                "users": config.users.len(), "roles": config.roles.len(), "targets": config.targets.len()})
        );
    } else {
        for w in &warnings {
            eprintln!("warning: {w}");
        }
        for p in &problems {
            eprintln!("{p}");
        }
        if problems.is_empty() {
            println!(
                "OK: {} ({} users, {} roles, {} targets)",
                path.display(),
                config.users.len(),
                config.roles.len(),
                config.targets.len()
            );
        }
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// What `gatehouse check` finds wrong with a config that parsed: keys,
/// CAs, password hashes, known_hosts files, alert rules, runbooks, sinks.
/// A reload refuses a config with any of these.
fn config_problems(config: &Config, path: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) =
        gatehouse_ssh::keys::load_private_key(&config.server.host_key, "server.host_key")
    {
        problems.push(format!("{}: server.host_key: {e}", path.display()));
    }
    if let Err(e) = gatehouse_ssh::keys::load_private_key(&config.upstream.key, "upstream.key") {
        problems.push(format!("{}: upstream.key: {e}", path.display()));
    }
    if let Some(ca) = &config.upstream.ca_key {
        if let Err(e) = gatehouse_ssh::keys::load_private_key(ca, "upstream.ca_key") {
            problems.push(format!("{}: upstream.ca_key: {e}", path.display()));
        }
    }
    if let Err(e) = gatehouse_ssh::certs::trusted_cas(config) {
        problems.push(format!("{}: {e}", path.display()));
    }
    for (i, u) in config.users.iter().enumerate() {
        if let Some(h) = &u.password_hash {
            if let Err(e) = gatehouse_auth::password::check_hash(h) {
                problems.push(format!("{}: users[{i}].password_hash: {e}", path.display()));
            }
        }
    }
    for (i, t) in config.targets.iter().enumerate() {
        if let Some(kh) = &t.known_hosts {
            if std::fs::metadata(kh).is_err() {
                problems.push(format!(
                    "{}: targets[{i}].known_hosts: cannot read {}; fix the path or use host_key/tofu",
                    path.display(),
                    kh.display()
                ));
            }
        }
    }
    for (i, rule) in config.alerts.iter().enumerate() {
        if let Err(e) = gatehouse_audit::alert::Compiled::new(rule) {
            problems.push(format!("{}: alerts[{i}].when: {e}", path.display()));
        }
    }
    if let Err(errors) = gatehouse_audit::runbook::load_all(Some(&config.runbooks.dir)) {
        for e in errors {
            problems.push(format!("runbook {e}"));
        }
    }
    for e in gatehouse_sinks::check(&config.sinks) {
        problems.push(format!("{}: sinks: {e}", path.display()));
    }
    problems
}

/// The config a SIGHUP would switch to, or why it is refused: everything
/// `gatehouse check` refuses, a file with nothing but blanks and comments
/// (a truncated write, the wrong file), and a config without any users or
/// targets while the running one has them (`running`: its user and target
/// counts). Such a change needs a restart.
fn reload_candidate(path: &Path, running: (usize, usize)) -> Result<Config, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let blank = text
        .lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#'));
    if blank {
        return Err(format!(
            "{} is empty; a reload needs a complete config (see `gatehouse check`)",
            path.display()
        ));
    }
    let config = match Config::load(path).and_then(|c| with_secrets(c, path)) {
        Ok(mut c) => {
            let base = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            c.resolve_paths(base);
            c
        }
        Err(errors) => {
            let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            return Err(list.join("; "));
        }
    };
    let problems = config_problems(&config, path);
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    let (users, targets) = running;
    for (what, had, has) in [
        ("users", users, config.users.len()),
        ("targets", targets, config.targets.len()),
    ] {
        if had > 0 && has == 0 {
            return Err(format!(
                "{} declares no {what} (the running config has {had}); restart the gateway to apply a config without {what}",
                path.display()
            ));
        }
    }
    Ok(config)
}

fn explain(
    config: &Config,
    user: &str,
    target: &str,
    login: Option<&str>,
    command: Option<&str>,
    format: Format,
    identity: Option<serde_json::Value>,
) -> Result<ExitCode> {
    let d = gatehouse_policy::decide(config, user, target, login);
    let denial = match (command, d.allowed, d.login.as_deref()) {
        (Some(cmd), true, Some(l)) => {
            gatehouse_policy::command_denied(config, user, target, l, cmd)
        }
        _ => None,
    };
    let step_up = match (command, &denial) {
        (Some(cmd), None) if d.allowed => gatehouse_policy::reauth_required(config, user, cmd),
        _ => None,
    };
    let allowed = d.allowed && denial.is_none();
    let console = gatehouse_policy::console::console_access(config, user);
    if format == Format::Json {
        println!(
            "{}",
            serde_json::json!({
                "allowed": allowed, "user": d.user, "target": d.target, "login": d.login,
                "reason": d.reason, "rule": d.rule.as_ref().map(|r| r.to_string()),
                "require_mfa": d.require_mfa, "max_session_secs": d.max_session.map(|m| m.as_secs()),
                "port_forwarding": d.port_forwarding, "agent_forwarding": d.agent_forwarding,
                "command_denied_by": denial.as_ref().map(|c| c.rule.to_string()),
                "command_step_up_by": step_up.as_ref().map(|c| c.rule.to_string()),
                "console": {
                    "permissions": console.granted.iter().map(|(p, roles)| (p.as_str(), roles)).collect::<std::collections::BTreeMap<_, _>>(),
                    "view_targets": console.target_names(),
                    "mfa_required": console.any() && console.mfa_required(),
                },
                "identity": identity,
            })
        );
    } else {
        print!("{d}");
        if let Some(cmd) = command {
            match &denial {
                Some(c) => println!("  command {cmd:?}: DENY by {}", c.rule),
                None if step_up.is_some() => println!(
                    "  command {cmd:?}: allowed after a fresh TOTP code (step-up by {})",
                    step_up
                        .as_ref()
                        .map(|c| c.rule.to_string())
                        .unwrap_or_default()
                ),
                None if d.allowed => {
                    println!("  command {cmd:?}: allowed (no command rule matches)")
                }
                None => {}
            }
        }
        print!("{console}");
    }
    Ok(if allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn serve(path: &Path) -> Result<ExitCode> {
    init_logging();
    // Before anything listens: a SIGHUP that arrives early must reload,
    // not kill the process (the default action).
    let signal_streams = Signals::install()?;
    let config = load_config(path)?;
    std::fs::create_dir_all(&config.recording.dir).with_context(|| {
        format!(
            "cannot create recording.dir {}",
            config.recording.dir.display()
        )
    })?;
    let store = open_store(&config).await?;
    // The `cloudtrail` view's eventSource is the service the gateway
    // says it is (a command with another config does not change it).
    store
        .set_service_name(&config.server.service_name)
        .await
        .context("cannot record server.service_name in the store")?;
    let node = config.server.node.clone();
    let recordings: std::sync::Arc<dyn gatehouse_store::recordings::RecordingStorage> =
        gatehouse_store::recordings::from_config(&config.recording)
            .map(std::sync::Arc::from)
            .map_err(|e| anyhow::anyhow!("cannot use the recording storage: {e}"))?;
    let on_failure = config.audit.on_failure;
    let signing_key = config.audit.signing_key.clone();
    let anchor_file = config.audit.anchor_path();
    let sink_configs = config.sinks.clone();
    let service_name = config.server.service_name.clone();
    let checkpoint_every = config
        .audit
        .checkpoint_interval
        .get()
        .max(std::time::Duration::from_secs(1));
    let policy_size = (config.users.len(), config.targets.len());
    let gateway = gatehouse_ssh::Gateway::bind(config, store.clone()).await?;
    let addr = gateway.local_addr()?;
    let handle = gateway.handle();
    let sink_names = sink_configs.iter().map(|s| s.name.clone()).collect();
    let admin = admin::start(&handle.config(), &handle, &store, sink_names).await?;
    let start = NewEvent::new(
        EventType::GATEWAY_START,
        Severity::Info,
        Outcome::Success,
        &node,
    )
    .details(serde_json::json!({"listen": addr.to_string(), "config": path.display().to_string()}));
    if let Err(e) = store.append(&start).await {
        if on_failure == gatehouse_model::OnFailure::Refuse {
            bail!("cannot write the audit trail ({e}); fix the store or set audit.on_failure = \"continue\"");
        }
    }
    // Before accepting connections: close what a crash of this node left
    // open (see docs/security-model.md, "After a crash").
    recover_crash(&store, &node, recordings, on_failure).await?;
    eprintln!("gatehouse: listening on {addr} (config {})", path.display());
    tracing::info!(%addr, "listening");

    let signals = tokio::spawn(handle_signals(
        signal_streams,
        handle.clone(),
        path.to_path_buf(),
        store.clone(),
        node.clone(),
        policy_size,
    ));
    let signer = std::sync::Arc::new(
        gatehouse_store::Signer::load_or_create(&signing_key)
            .context("cannot load the audit signing key")?,
    );
    let sink_tasks = spawn_sinks(&sink_configs, &node, &service_name, &store)?;
    // Checkpoints are anchored outside the database: in the anchor file
    // and, as audit.checkpoint events, in every sink.
    let checkpoints = {
        let (store, signer) = (store.clone(), signer.clone());
        let (anchor, node) = (anchor_file.clone(), node.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(checkpoint_every);
            loop {
                tick.tick().await;
                if let Err(e) = store.checkpoint_anchored(&signer, &anchor, &node).await {
                    tracing::warn!(error = %e, "cannot write an audit checkpoint");
                }
            }
        })
    };
    gateway.run().await?;
    signals.abort();
    checkpoints.abort();
    if let Some(admin) = admin {
        admin.abort();
    }
    let stop = NewEvent::new(
        EventType::GATEWAY_STOP,
        Severity::Info,
        Outcome::Success,
        &node,
    );
    let _ = store.append(&stop).await;
    // The final checkpoint goes out with the last events.
    if let Err(e) = store
        .checkpoint_anchored(&signer, &anchor_file, &node)
        .await
    {
        tracing::warn!(error = %e, "cannot write the final audit checkpoint");
    }
    // Let the sinks catch up with the last events (bounded), then stop.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    for t in sink_tasks {
        t.abort();
    }
    store.close().await;
    eprintln!("gatehouse: stopped");
    Ok(ExitCode::SUCCESS)
}

/// Closes what a crash of this node left open; under `refuse`, a store
/// that cannot take it stops the start.
async fn recover_crash(
    store: &Store,
    node: &str,
    recordings: std::sync::Arc<dyn gatehouse_store::recordings::RecordingStorage>,
    on_failure: gatehouse_model::OnFailure,
) -> Result<()> {
    match gatehouse_store::recover_crashed_sessions(store, node, recordings).await {
        Ok(r) if !r.is_empty() => {
            tracing::warn!(
                sessions = r.sessions.len(),
                transfers = r.transfers,
                port_forwards = r.port_forwards,
                kill_requests = r.kill_requests,
                "closed what a crash of this node left open"
            )
        }
        Ok(_) => {}
        Err(e) if on_failure == gatehouse_model::OnFailure::Refuse => {
            bail!("cannot close the sessions a crash left open ({e}); fix the store or set audit.on_failure = \"continue\"")
        }
        Err(e) => tracing::error!(error = %e, "cannot close the sessions a crash left open"),
    }
    Ok(())
}

/// One task per configured sink.
fn spawn_sinks(
    configs: &[gatehouse_model::config::SinkConfig],
    node: &str,
    service_name: &str,
    store: &Store,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    for cfg in configs {
        let sink = gatehouse_sinks::Sink::new(cfg)?
            .node(node)
            .service_name(service_name);
        tasks.push(tokio::spawn(sink.run(store.clone())));
    }
    Ok(tasks)
}

#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            hup: signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
        })
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> Result<Signals> {
        Ok(Signals)
    }
}

#[cfg(unix)]
async fn handle_signals(
    signals: Signals,
    handle: gatehouse_ssh::GatewayHandle,
    path: PathBuf,
    store: Store,
    node: String,
    mut policy_size: (usize, usize),
) {
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = signals;
    loop {
        tokio::select! {
            _ = term.recv() => { handle.shutdown("the gateway is shutting down"); return; }
            _ = int.recv() => { handle.shutdown("the gateway is shutting down"); return; }
            _ = hup.recv() => {
                let (result, reason) = match reload_candidate(&path, policy_size) {
                    Ok(cfg) => {
                        let size = (cfg.users.len(), cfg.targets.len());
                        match handle.reload(cfg) {
                            Ok(()) => {
                                policy_size = size;
                                (Outcome::Success, None)
                            }
                            Err(e) => (Outcome::Error, Some(e.to_string())),
                        }
                    }
                    Err(e) => (Outcome::Error, Some(e)),
                };
                match &reason {
                    None => tracing::info!(config = %path.display(), "configuration reloaded"),
                    Some(r) => tracing::error!(config = %path.display(), reason = %r, "configuration reload refused; the running configuration stays"),
                }
                let sev = if reason.is_some() { Severity::Warn } else { Severity::Info };
                let mut ev = NewEvent::new(EventType::CONFIG_RELOAD, sev, result, &node)
                    .details(serde_json::json!({"config": path.display().to_string(), "refused": reason.is_some()}));
                ev.reason = reason;
                let _ = store.append(&ev).await;
            }
        }
    }
}

#[cfg(not(unix))]
async fn handle_signals(
    _signals: Signals,
    handle: gatehouse_ssh::GatewayHandle,
    _path: PathBuf,
    _store: Store,
    _node: String,
    _policy_size: (usize, usize),
) {
    let _ = tokio::signal::ctrl_c().await;
    handle.shutdown("the gateway is shutting down");
}

fn init_logging() {
    logging::init();
}
