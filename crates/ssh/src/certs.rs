//! OpenSSH user certificates presented to the gateway: the CA must be one
//! of `[auth] trusted_user_ca_keys`, the certificate a user certificate in
//! its validity window, one of its principals the Gatehouse user (or one of
//! the user's `principals`), and every critical option one the gateway
//! enforces (`force-command`, `source-address`); the `permit-*` extensions
//! limit what the session may do.

use std::net::IpAddr;
use std::path::Path;

use gatehouse_model::config::{Config, User};
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::{Fingerprint, HashAlg};
use russh::keys::{Certificate, PublicKey};

use crate::keys::parse_public_line;

/// What an accepted certificate grants and what the audit trail shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertGrant {
    pub key_id: String,
    pub serial: u64,
    /// `SHA256:` fingerprint of the signing CA.
    pub ca: String,
    pub principals: Vec<String>,
    /// Runs instead of whatever the client asked for.
    pub force_command: Option<String>,
    pub permit_pty: bool,
    pub permit_port_forwarding: bool,
    pub permit_agent_forwarding: bool,
}

impl CertGrant {
    pub fn details(&self) -> serde_json::Value {
        serde_json::json!({
            "key_id": self.key_id,
            "serial": self.serial,
            "ca": self.ca,
            "principals": self.principals,
            "force_command": self.force_command,
        })
    }
}

/// The CA keys in `auth.trusted_user_ca_keys`, each a key line or a file
/// of key lines. Errors name the entry and what to do.
pub fn trusted_cas(config: &Config) -> Result<Vec<PublicKey>, String> {
    let mut out = Vec::new();
    for (i, entry) in config.auth.trusted_user_ca_keys.iter().enumerate() {
        let what = format!("auth.trusted_user_ca_keys[{i}]");
        if entry.contains(' ') {
            let key = parse_public_line(entry).ok_or_else(|| {
                format!("{what}: not an OpenSSH public key line; paste the CA's .pub line or give the path of the .pub file")
            })?;
            out.push(key);
            continue;
        }
        let text = std::fs::read_to_string(Path::new(entry))
            .map_err(|e| format!("{what}: cannot read {entry}: {e}; fix the path"))?;
        let before = out.len();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            out.push(parse_public_line(line).ok_or_else(|| {
                format!("{what}: {entry} holds a line that is not an OpenSSH public key")
            })?);
        }
        if out.len() == before {
            return Err(format!("{what}: {entry} holds no public key"));
        }
    }
    Ok(out)
}

/// Checks `cert` for `user`, connecting from `peer`, at `now` (Unix
/// seconds). The error is the reason recorded in `auth.failure`.
pub fn check(
    cert: &Certificate,
    trusted: &[PublicKey],
    user: &User,
    peer: IpAddr,
    now: u64,
) -> Result<CertGrant, String> {
    if cert.cert_type() != CertType::User {
        return Err("a host certificate cannot log in".into());
    }
    let ca = cert.signature_key().fingerprint(HashAlg::Sha256);
    let fps: Vec<Fingerprint> = trusted
        .iter()
        .map(|k| k.fingerprint(HashAlg::Sha256))
        .collect();
    if !fps.contains(&ca) {
        return Err(format!(
            "certificate {:?} is signed by {ca}, which is not in auth.trusted_user_ca_keys",
            cert.key_id()
        ));
    }
    // Signature, CA and validity window together.
    if cert.validate_at(now, &fps).is_err() {
        return Err(format!(
            "certificate {:?} is not valid now (valid from {} to {}) or its signature is wrong",
            cert.key_id(),
            cert.valid_after(),
            cert.valid_before()
        ));
    }
    let principals = cert.valid_principals().to_vec();
    if principals.is_empty() {
        return Err(format!(
            "certificate {:?} names no principals; sign it with -n {}",
            cert.key_id(),
            user.name
        ));
    }
    let mine = principals
        .iter()
        .any(|p| *p == user.name || user.principals.contains(p));
    if !mine {
        return Err(format!(
            "certificate {:?} is for {principals:?}, not for user {:?}",
            cert.key_id(),
            user.name
        ));
    }
    let mut force_command = None;
    for (name, value) in cert.critical_options().iter() {
        match name.as_str() {
            "force-command" => force_command = Some(value.clone()),
            "source-address" => {
                if !source_allowed(value, peer)? {
                    return Err(format!(
                        "certificate {:?} may only be used from {value}, not from {peer}",
                        cert.key_id()
                    ));
                }
            }
            other => {
                return Err(format!(
                    "certificate {:?} has the critical option {other:?}, which the gateway does not enforce",
                    cert.key_id()
                ))
            }
        }
    }
    let ext = cert.extensions();
    Ok(CertGrant {
        key_id: cert.key_id().to_string(),
        serial: cert.serial(),
        ca: ca.to_string(),
        principals,
        force_command,
        permit_pty: ext.contains_key("permit-pty"),
        permit_port_forwarding: ext.contains_key("permit-port-forwarding"),
        permit_agent_forwarding: ext.contains_key("permit-agent-forwarding"),
    })
}

/// `source-address`: comma-separated addresses and CIDR blocks.
fn source_allowed(list: &str, peer: IpAddr) -> Result<bool, String> {
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let net = gatehouse_model::IpNet::parse(item).map_err(|_| {
            format!("certificate source-address {item:?} is not an address or CIDR block")
        })?;
        if net.contains(peer) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::source_allowed;

    #[test]
    fn source_address_lists() {
        let ip = |s: &str| s.parse().unwrap();
        assert_eq!(source_allowed("127.0.0.1", ip("127.0.0.1")), Ok(true));
        assert_eq!(
            source_allowed("10.0.0.0/8,127.0.0.0/8", ip("127.1.2.3")),
            Ok(true)
        );
        assert_eq!(source_allowed("10.0.0.0/8", ip("127.0.0.1")), Ok(false));
        assert_eq!(source_allowed("0.0.0.0/0", ip("8.8.8.8")), Ok(true));
        assert_eq!(source_allowed("::1/128", ip("::1")), Ok(true));
        assert_eq!(
            source_allowed("127.0.0.1/32", ip("::ffff:127.0.0.1")),
            Ok(true)
        );
        assert!(source_allowed("10.0.0.0/33", ip("10.0.0.1")).is_err());
        assert!(source_allowed("nonsense", ip("10.0.0.1")).is_err());
    }
}
