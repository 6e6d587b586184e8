//! `gatehouse init`: a working starting point on embedded defaults
//! (SQLite store, local recordings) that refuses to overwrite anything.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::cli::InitArgs;

pub fn run(args: &InitArgs) -> Result<ExitCode> {
    let dir = &args.dir;
    let config_path = dir.join("gatehouse.toml");
    let data = dir.join("data");
    for existing in [
        &config_path,
        &data.join("host_ed25519"),
        &data.join("client_ed25519"),
        &data.join("user_ca"),
        &data.join("console.crt"),
        &data.join("console.key"),
    ] {
        if existing.exists() {
            bail!(
                "{} already exists; refusing to overwrite it (use another --dir or remove it first)",
                existing.display()
            );
        }
    }
    std::fs::create_dir_all(data.join("recordings"))
        .with_context(|| format!("cannot create {}", data.display()))?;
    gatehouse_ssh::keys::generate_ed25519(&data.join("host_ed25519"), "gatehouse host key")?;
    let upstream_pub =
        gatehouse_ssh::keys::generate_ed25519(&data.join("client_ed25519"), "gatehouse")?;
    let ca_pub = gatehouse_ssh::keys::generate_ed25519(&data.join("user_ca"), "gatehouse user CA")?;
    let fingerprint = self_signed(&data.join("console.crt"), &data.join("console.key"))?;
    let password = initial_password()?;
    let password_hash = gatehouse_auth::password::hash(&password)
        .map_err(|e| anyhow::anyhow!("cannot hash the first admin's password: {e}"))?;

    let admin_user = args
        .admin_user
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .filter(|u| gatehouse_model::username::is_valid_name(u))
        .unwrap_or_else(|| "admin".to_string());
    let admin_key = admin_key_line(args.admin_key.as_deref())?;
    let keys_line = match &admin_key {
        Some(k) => format!("keys = [{}]", toml_string(k)),
        None => "keys = []  # paste your ~/.ssh/id_ed25519.pub here".to_string(),
    };
    let config = format!(
        r#"# Gatehouse configuration. Validate with `gatehouse check`; reload with SIGHUP.
# Paths are relative to this file.

[server]
listen = "127.0.0.1:2222"
host_key = "data/host_ed25519"
node = "gatehouse-1"
# The web console and its API (HTTPS with the certificate below).
admin_listen = "127.0.0.1:8022"

[console]
# Self-signed by `gatehouse init`; SHA-256 fingerprint:
#   {fingerprint}
tls_cert = "data/console.crt"
tls_key = "data/console.key"

[upstream]
# The gateway's key towards targets. Put data/client_ed25519.pub into the
# authorized_keys of the logins on your targets:
#   {upstream_pub}
key = "data/client_ed25519"
# Better: targets trust the gateway's CA and need no static key. Each session
# gets a certificate (principal = the login, key id = user and session) valid
# for cert_validity. Put this line into a file named by TrustedUserCAKeys in
# the targets' sshd_config:
#   {ca_pub}
ca_key = "data/user_ca"
cert_validity = "5m"

[store]
url = "sqlite://data/gatehouse.db"

[recording]
dir = "data/recordings"

[audit]
on_failure = "refuse"

# A target. Verify its host key with host_key = "SHA256:..." (from
# `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the target),
# known_hosts = "FILE", or tofu = true.
# [[targets]]
# name = "web01"
# address = "10.0.0.5:22"
# labels = {{ env = "prod" }}
# tofu = true
# default_login = "deploy"

[[roles]]
name = "admin"
allow = [{{ targets = {{}}, logins = ["*"] }}]
port_forwarding = true
# Everything in the web console (which then asks for a TOTP code too).
console = ["all_sessions", "watch", "kill", "audit", "runbooks", "apply_runbooks", "approvals", "users"]

[[users]]
name = "{admin_user}"
{keys_line}
roles = ["admin"]
# The console password printed by `gatehouse init`; change it with
# `gatehouse users hash-password`.
password_hash = "{password_hash}"
"#
    );
    std::fs::write(&config_path, config)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    println!("wrote {}", config_path.display());
    next_steps(
        &config_path,
        &data,
        &admin_user,
        admin_key.is_some(),
        &fingerprint,
        &password,
    );
    Ok(ExitCode::SUCCESS)
}

/// What `init` made and what to do next.
fn next_steps(
    config_path: &Path,
    data: &Path,
    admin_user: &str,
    has_key: bool,
    fingerprint: &str,
    password: &str,
) {
    println!(
        "wrote {d}/host_ed25519, {d}/client_ed25519 and {d}/user_ca",
        d = data.display()
    );
    println!(
        "first admin: {admin_user}{}",
        if has_key {
            ""
        } else {
            " (add a key to gatehouse.toml)"
        }
    );
    println!("console: https://127.0.0.1:8022/ (certificate SHA-256 {fingerprint})");
    println!("console password of {admin_user} (shown once): {password}");
    println!(
        "enrol {admin_user}'s authenticator for the console's verification code: gatehouse users totp-enroll {admin_user} --config {}",
        config_path.display()
    );
    println!(
        "next: add a [[targets]] entry, then `gatehouse serve --config {}`",
        config_path.display()
    );
}

/// Writes a self-signed certificate for the console (localhost, the
/// loopback addresses and this host's name) and its key; returns the
/// certificate's SHA-256 fingerprint as browsers show it.
fn self_signed(cert_path: &Path, key_path: &Path) -> Result<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty() && !names.iter().any(|n| n == h) {
            names.push(h.to_string());
        }
    }
    let key = rcgen::KeyPair::generate().context("cannot generate the console's TLS key")?;
    let mut params =
        rcgen::CertificateParams::new(names).context("cannot make the console's certificate")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Gatehouse console");
    let cert = params
        .self_signed(&key)
        .context("cannot sign the console's certificate")?;
    std::fs::write(cert_path, cert.pem())
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    write_private(key_path, &key.serialize_pem())?;
    use sha2::Digest;
    let digest = sha2::Sha256::digest(cert.der());
    Ok(digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A random first password: 16 characters from an unambiguous alphabet.
fn initial_password() -> Result<String> {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzACDEFGHJKLMNPQRSTUVWXYZ23456789";
    let bytes = gatehouse_auth::random_bytes(16)
        .map_err(|e| anyhow::anyhow!("no randomness for a password: {e}"))?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect())
}

fn admin_key_line(path: Option<&Path>) -> Result<Option<String>> {
    let candidate = match path {
        Some(p) => Some(p.to_path_buf()),
        None => std::env::var_os("HOME")
            .map(|h| Path::new(&h).join(".ssh/id_ed25519.pub"))
            .filter(|p| p.exists()),
    };
    let Some(p) = candidate else { return Ok(None) };
    let text = std::fs::read_to_string(&p)
        .with_context(|| format!("cannot read admin key {}", p.display()))?;
    let line = text.lines().next().unwrap_or("").trim().to_string();
    if gatehouse_ssh::keys::parse_public_line(&line).is_none() {
        bail!(
            "{} is not an OpenSSH public key; pass the .pub file",
            p.display()
        );
    }
    Ok(Some(line))
}

fn toml_string(s: &str) -> String {
    let escaped = s.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}
