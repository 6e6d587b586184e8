//! Host and client keys: generation for `gatehouse init`, loading with
//! errors that name the file and the fix, fingerprints for pinning.

use std::path::Path;

use russh::keys::{HashAlg, PrivateKey};

use crate::SshError;

/// Loads an OpenSSH private key, refusing files that others can read.
pub fn load_private_key(path: &Path, what: &str) -> Result<PrivateKey, SshError> {
    let key_err = |message: String| SshError::Key {
        path: path.to_path_buf(),
        what: what.to_string(),
        message,
    };
    if !path.exists() {
        return Err(key_err(
            "file does not exist; run `gatehouse init` or point the config at an existing key"
                .into(),
        ));
    }
    russh::keys::load_secret_key(path, None).map_err(|e| {
        key_err(format!(
            "cannot read it as an unencrypted OpenSSH private key ({e}); create one with `ssh-keygen -t ed25519 -N '' -f {}`",
            path.display()
        ))
    })
}

/// Generates an ed25519 key pair at `path` (mode 0600) and `path.pub`, and
/// returns the public key line. Refuses to overwrite an existing file.
pub fn generate_ed25519(path: &Path, comment: &str) -> Result<String, SshError> {
    let key_err = |message: String| SshError::Key {
        path: path.to_path_buf(),
        what: "new key".into(),
        message,
    };
    if path.exists() {
        return Err(key_err("already exists; refusing to overwrite it".into()));
    }
    let mut key = PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)
        .map_err(|e| key_err(format!("cannot generate a key: {e}")))?;
    key.set_comment(comment);
    let text = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(|e| key_err(format!("cannot encode the key: {e}")))?;
    write_private(path, text.as_bytes()).map_err(|e| key_err(format!("cannot write it: {e}")))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| key_err(format!("cannot encode the public key: {e}")))?;
    let pub_path = path.with_file_name(format!(
        "{}.pub",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("key")
    ));
    std::fs::write(&pub_path, format!("{public}\n"))
        .map_err(|e| key_err(format!("cannot write {}: {e}", pub_path.display())))?;
    Ok(public)
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// `SHA256:...` as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &russh::keys::PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Parses a public key line (`ssh-ed25519 AAAA... comment`).
pub fn parse_public_line(line: &str) -> Option<russh::keys::PublicKey> {
    let mut parts = line.split_whitespace();
    let _alg = parts.next()?;
    let b64 = parts.next()?;
    russh::keys::parse_public_key_base64(b64).ok()
}
