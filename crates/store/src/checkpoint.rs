//! Signed checkpoints of the hash chain. The chain alone shows that
//! nothing inside it was changed, removed or reordered; it cannot show that
//! its newest events were cut off, since a shorter chain is still a valid
//! chain. So the gateway periodically signs (seq, hash) of the chain's head
//! with an ed25519 key kept in the data directory, outside the database,
//! and `audit verify` checks every checkpoint against the chain with the
//! public key from that file.

use std::path::Path;

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

use crate::{Backend, Pool, Store, StoreError};

/// Signs checkpoints.
pub struct Signer {
    pair: Ed25519KeyPair,
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

fn message(seq: i64, hash: &str, time: &str) -> String {
    format!("gatehouse-checkpoint\n{seq}\n{hash}\n{time}")
}

impl Signer {
    /// Loads the PKCS#8 key at `path`, creating it (0600) when missing.
    pub fn load_or_create(path: &Path) -> Result<Signer, StoreError> {
        let err =
            |m: String| StoreError::Query(format!("audit signing key {}: {m}", path.display()));
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let rng = ring::rand::SystemRandom::new();
                let doc = Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|_| err("cannot generate".into()))?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
                }
                write_private(path, doc.as_ref())
                    .map_err(|e| err(format!("cannot create it: {e}")))?;
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(err(format!("cannot read it: {e}"))),
        };
        let pair = Ed25519KeyPair::from_pkcs8(&bytes)
            .map_err(|_| err("not an ed25519 PKCS#8 key".into()))?;
        Ok(Signer { pair })
    }

    pub fn public_key_hex(&self) -> String {
        hex(self.pair.public_key().as_ref())
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointReport {
    pub checked: u64,
    pub problem: Option<String>,
}

impl Store {
    /// Signs the chain's head unless it is already checkpointed. Returns
    /// the checkpointed seq.
    pub async fn checkpoint(&self, signer: &Signer) -> Result<Option<i64>, StoreError> {
        let head: Option<(i64, String)> = match &self.inner.pool {
            Pool::Sqlite { rw, .. } => {
                sqlx::query_as("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
                    .fetch_optional(rw)
                    .await?
            }
            Pool::Postgres(pg) => {
                sqlx::query_as("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
                    .fetch_optional(pg)
                    .await?
            }
        };
        let Some((seq, hash)) = head else {
            return Ok(None);
        };
        let time = gatehouse_model::event::format_time(chrono::Utc::now());
        let sig = hex(signer
            .pair
            .sign(message(seq, &hash, &time).as_bytes())
            .as_ref());
        let sql = match self.backend() {
            Backend::Sqlite => "INSERT INTO audit_checkpoints (seq, hash, time, signature) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (seq) DO NOTHING",
            Backend::Postgres => "INSERT INTO audit_checkpoints (seq, hash, time, signature) VALUES ($1, $2, $3, $4) ON CONFLICT (seq) DO NOTHING",
        };
        match &self.inner.pool {
            Pool::Sqlite { rw, .. } => {
                sqlx::query(sql)
                    .bind(seq)
                    .bind(&hash)
                    .bind(&time)
                    .bind(&sig)
                    .execute(rw)
                    .await?;
            }
            Pool::Postgres(pg) => {
                sqlx::query(sql)
                    .bind(seq)
                    .bind(&hash)
                    .bind(&time)
                    .bind(&sig)
                    .execute(pg)
                    .await?;
            }
        }
        Ok(Some(seq))
    }

    /// Checks every checkpoint's signature with `public_key_hex` and that
    /// the chain still holds the event each one signed.
    pub async fn verify_checkpoints(
        &self,
        public_key_hex: &str,
    ) -> Result<CheckpointReport, StoreError> {
        let Some(public) = unhex(public_key_hex) else {
            return Ok(CheckpointReport {
                checked: 0,
                problem: Some("the public key is not hex".into()),
            });
        };
        let key = UnparsedPublicKey::new(&ED25519, public);
        let sql = "SELECT c.seq, c.hash, c.time, c.signature, e.hash FROM audit_checkpoints c LEFT JOIN audit_events e ON e.seq = c.seq ORDER BY c.seq";
        let rows: Vec<(i64, String, String, String, Option<String>)> = match &self.inner.pool {
            Pool::Sqlite { rw, .. } => sqlx::query_as(sql).fetch_all(rw).await?,
            Pool::Postgres(pg) => sqlx::query_as(sql).fetch_all(pg).await?,
        };
        let mut checked = 0;
        for (seq, hash, time, sig, chain_hash) in rows {
            let valid = unhex(&sig)
                .map(|s| {
                    key.verify(message(seq, &hash, &time).as_bytes(), &s)
                        .is_ok()
                })
                .unwrap_or(false);
            let problem = if !valid {
                Some(format!("checkpoint at seq {seq} has an invalid signature"))
            } else {
                match chain_hash {
                    None => Some(format!(
                        "the chain no longer holds event seq {seq} signed by the checkpoint of {time}: events were removed or the tail was truncated"
                    )),
                    Some(h) if h != hash => Some(format!(
                        "event seq {seq} differs from what the checkpoint of {time} signed"
                    )),
                    Some(_) => None,
                }
            };
            if problem.is_some() {
                return Ok(CheckpointReport { checked, problem });
            }
            checked += 1;
        }
        Ok(CheckpointReport {
            checked,
            problem: None,
        })
    }
}
