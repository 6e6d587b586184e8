//! Second factors and secrets at rest.
//!
//! - [`totp`]: RFC 6238 time-based one-time passwords (SHA-1, 6 digits,
//!   30 s), with single use enforced by the caller through the step number.
//! - [`SecretBox`]: AES-256-GCM sealing of secrets (TOTP seeds) with a key
//!   file in the data directory, so a copy of the database alone does not
//!   reveal them.
//!
//! Pure apart from reading/creating the key file in [`SecretBox::load_or_create`].

pub mod password;
pub mod totp;

use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("secrets key {path}: {message}")]
    Key { path: String, message: String },
    #[error("a sealed secret is corrupt or was sealed with another key")]
    Unseal,
    #[error("the system random number generator failed")]
    Random,
}

/// Seals and opens small secrets with AES-256-GCM.
pub struct SecretBox {
    key: LessSafeKey,
}

pub fn random_bytes(n: usize) -> Result<Vec<u8>, AuthError> {
    let mut v = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut v)
        .map_err(|_| AuthError::Random)?;
    Ok(v)
}

impl SecretBox {
    /// Reads the 32-byte key at `path`, creating it (mode 0600) when missing.
    pub fn load_or_create(path: &Path) -> Result<SecretBox, AuthError> {
        let key_err = |message: String| AuthError::Key {
            path: path.display().to_string(),
            message,
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let b = random_bytes(32)?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| key_err(e.to_string()))?;
                }
                write_private(path, &b).map_err(|e| key_err(format!("cannot create it: {e}")))?;
                b
            }
            Err(e) => return Err(key_err(format!("cannot read it: {e}"))),
        };
        SecretBox::from_key(&bytes).map_err(|_| key_err("must be exactly 32 bytes".into()))
    }

    pub fn from_key(bytes: &[u8]) -> Result<SecretBox, AuthError> {
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| AuthError::Unseal)?;
        Ok(SecretBox {
            key: LessSafeKey::new(key),
        })
    }

    /// Hex of nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, plain: &[u8]) -> Result<String, AuthError> {
        let nonce_bytes = random_bytes(NONCE_LEN)?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&nonce_bytes);
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
            .map_err(|_| AuthError::Unseal)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(hex(&out))
    }

    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, AuthError> {
        let bytes = unhex(sealed).ok_or(AuthError::Unseal)?;
        if bytes.len() < NONCE_LEN + 16 {
            return Err(AuthError::Unseal);
        }
        let (n, ct) = bytes.split_at(NONCE_LEN);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(n);
        let mut buf = ct.to_vec();
        let plain = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
            .map_err(|_| AuthError::Unseal)?;
        Ok(plain.to_vec())
    }
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_key() {
        let a = SecretBox::from_key(&[7u8; 32]).unwrap();
        let b = SecretBox::from_key(&[8u8; 32]).unwrap();
        let sealed = a.seal(b"seed").unwrap();
        assert_ne!(a.seal(b"seed").unwrap(), sealed, "nonces differ");
        assert_eq!(a.open(&sealed).unwrap(), b"seed");
        assert!(b.open(&sealed).is_err());
        assert!(a.open("zz").is_err());
        let mut tampered = sealed.clone();
        tampered.replace_range(30..32, if &sealed[30..32] == "00" { "01" } else { "00" });
        assert!(a.open(&tampered).is_err());
    }

    #[test]
    fn the_key_file_is_created_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("gh-auth-{}", std::process::id()));
        let path = dir.join("secrets.key");
        let _ = std::fs::remove_file(&path);
        let a = SecretBox::load_or_create(&path).unwrap();
        let sealed = a.seal(b"x").unwrap();
        let b = SecretBox::load_or_create(&path).unwrap();
        assert_eq!(b.open(&sealed).unwrap(), b"x");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
