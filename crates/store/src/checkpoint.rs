//! Signed checkpoints of the hash chain. The chain alone shows that
//! nothing inside it was changed, removed or reordered; it cannot show that
//! its newest events were cut off, since a shorter chain is still a valid
//! chain. So the gateway periodically signs (seq, hash) of the chain's head
//! with an ed25519 key kept in the data directory, outside the database,
//! and `audit verify` checks every checkpoint against the chain with the
//! public key from that file.

use std::path::Path;

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

use gatehouse_model::{hex, EventType, NewEvent, Outcome, Severity};

use crate::{Backend, Pool, Store, StoreError};

/// Signs checkpoints.
pub struct Signer {
    pair: Ed25519KeyPair,
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

/// A signed checkpoint: the chain's event `seq` had hash `hash` at `time`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub seq: i64,
    pub hash: String,
    pub time: String,
    pub signature: String,
}

impl Checkpoint {
    /// The event that carries this checkpoint to the sinks.
    pub fn event(&self, node: &str) -> NewEvent {
        NewEvent::new(
            EventType::AUDIT_CHECKPOINT,
            Severity::Info,
            Outcome::Success,
            node,
        )
        .details(serde_json::json!({
            "seq": self.seq,
            "hash": self.hash,
            "time": self.time,
            "signature": self.signature,
        }))
    }

    /// The line it takes in an anchor file.
    fn anchor_line(&self) -> String {
        serde_json::json!({
            "type": EventType::AUDIT_CHECKPOINT,
            "seq": self.seq,
            "hash": self.hash,
            "time": self.time,
            "signature": self.signature,
        })
        .to_string()
    }

    /// A checkpoint from a line of an anchor file (`{"type":
    /// "audit.checkpoint", "seq": ...}`) or of a jsonl sink (an
    /// `audit.checkpoint` event, the checkpoint in its `details`).
    pub fn from_line(line: &str) -> Option<Checkpoint> {
        let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
        if v.get("type")?.as_str()? != EventType::AUDIT_CHECKPOINT {
            return None;
        }
        let body = match v.get("details") {
            Some(d) if d.is_object() => d,
            _ => &v,
        };
        serde_json::from_value(body.clone()).ok()
    }

    fn signed_by(&self, key: &UnparsedPublicKey<Vec<u8>>) -> bool {
        unhex(&self.signature)
            .map(|s| {
                key.verify(message(self.seq, &self.hash, &self.time).as_bytes(), &s)
                    .is_ok()
            })
            .unwrap_or(false)
    }
}

/// Appends `cp` to the anchor file at `path` (created when missing) and
/// syncs it to disk before returning.
pub fn append_anchor(path: &Path, cp: &Checkpoint) -> Result<(), StoreError> {
    use std::io::Write;
    let err = |e: std::io::Error| {
        StoreError::Query(format!(
            "cannot append to the audit anchor file {}: {e}; check audit.anchor_file and its directory's permissions",
            path.display()
        ))
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(err)?;
    f.write_all(format!("{}\n", cp.anchor_line()).as_bytes())
        .map_err(err)?;
    f.sync_data().map_err(err)
}

/// What `verify_anchor` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorReport {
    /// Checkpoints read from the file.
    pub anchored: u64,
    /// The newest of them (highest seq).
    pub latest: Option<Checkpoint>,
    pub problem: Option<String>,
}

impl Store {
    async fn head_with_type(&self) -> Result<Option<(i64, String, String)>, StoreError> {
        let sql = "SELECT seq, hash, type FROM audit_events ORDER BY seq DESC LIMIT 1";
        Ok(match &self.inner.pool {
            Pool::Sqlite { rw, .. } => sqlx::query_as(sql).fetch_optional(rw).await?,
            Pool::Postgres(pg) => sqlx::query_as(sql).fetch_optional(pg).await?,
        })
    }

    async fn checkpointed(&self, seq: i64) -> Result<bool, StoreError> {
        let sql = match self.backend() {
            Backend::Sqlite => "SELECT seq FROM audit_checkpoints WHERE seq = ?1",
            Backend::Postgres => "SELECT seq FROM audit_checkpoints WHERE seq = $1",
        };
        let found: Option<i64> = match &self.inner.pool {
            Pool::Sqlite { rw, .. } => sqlx::query_scalar(sql).bind(seq).fetch_optional(rw).await?,
            Pool::Postgres(pg) => sqlx::query_scalar(sql).bind(seq).fetch_optional(pg).await?,
        };
        Ok(found.is_some())
    }

    /// Signs the chain's head unless it is already checkpointed, and
    /// anchors the checkpoint outside the database: first in the
    /// append-only file `anchor` (synced), then in the table, then as an
    /// `audit.checkpoint` event that the sinks forward. That event is the
    /// new head; it is signed too (file and table, no further event), so
    /// a cut right after a checkpoint is seen as well. An idle chain gets
    /// no new checkpoints. Returns the checkpoints made.
    pub async fn checkpoint_anchored(
        &self,
        signer: &Signer,
        anchor: &Path,
        node: &str,
    ) -> Result<Vec<Checkpoint>, StoreError> {
        let mut made = Vec::new();
        let Some((seq, hash, kind)) = self.head_with_type().await? else {
            return Ok(made);
        };
        if self.checkpointed(seq).await? {
            return Ok(made);
        }
        if kind != EventType::AUDIT_CHECKPOINT {
            let cp = self.sign_and_store(signer, seq, &hash, anchor).await?;
            self.append(&cp.event(node)).await?;
            made.push(cp);
        }
        if let Some((seq, hash, _)) = self.head_with_type().await? {
            if !self.checkpointed(seq).await? {
                made.push(self.sign_and_store(signer, seq, &hash, anchor).await?);
            }
        }
        Ok(made)
    }

    async fn sign_and_store(
        &self,
        signer: &Signer,
        seq: i64,
        hash: &str,
        anchor: &Path,
    ) -> Result<Checkpoint, StoreError> {
        let time = gatehouse_model::event::format_time(chrono::Utc::now());
        let signature = hex(signer
            .pair
            .sign(message(seq, hash, &time).as_bytes())
            .as_ref());
        let cp = Checkpoint {
            seq,
            hash: hash.to_string(),
            time,
            signature,
        };
        let file = anchor.to_path_buf();
        let line = cp.clone();
        tokio::task::spawn_blocking(move || append_anchor(&file, &line))
            .await
            .map_err(|e| StoreError::Query(format!("anchor write task failed: {e}")))??;
        let sql = match self.backend() {
            Backend::Sqlite => "INSERT INTO audit_checkpoints (seq, hash, time, signature) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (seq) DO NOTHING",
            Backend::Postgres => "INSERT INTO audit_checkpoints (seq, hash, time, signature) VALUES ($1, $2, $3, $4) ON CONFLICT (seq) DO NOTHING",
        };
        match &self.inner.pool {
            Pool::Sqlite { rw, .. } => {
                sqlx::query(sql)
                    .bind(cp.seq)
                    .bind(&cp.hash)
                    .bind(&cp.time)
                    .bind(&cp.signature)
                    .execute(rw)
                    .await?;
            }
            Pool::Postgres(pg) => {
                sqlx::query(sql)
                    .bind(cp.seq)
                    .bind(&cp.hash)
                    .bind(&cp.time)
                    .bind(&cp.signature)
                    .execute(pg)
                    .await?;
            }
        }
        Ok(cp)
    }

    /// Proves the chain still reaches the newest checkpoint in `path` (an
    /// anchor file or a jsonl sink's file): the event at its seq exists
    /// and has the hash it signed. With `public_key_hex`, its signature
    /// is checked too.
    pub async fn verify_anchor(
        &self,
        path: &Path,
        public_key_hex: Option<&str>,
    ) -> Result<AnchorReport, StoreError> {
        let report = |anchored, latest, problem: Option<String>| AnchorReport {
            anchored,
            latest,
            problem,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                return Ok(report(
                    0,
                    None,
                    Some(format!(
                        "cannot read the anchor file {}: {e}; name the audit.anchor_file or a jsonl sink's file",
                        path.display()
                    )),
                ))
            }
        };
        let mut anchored = 0u64;
        let mut latest: Option<Checkpoint> = None;
        for cp in text.lines().filter_map(Checkpoint::from_line) {
            anchored += 1;
            if latest.as_ref().is_none_or(|l| cp.seq > l.seq) {
                latest = Some(cp);
            }
        }
        let Some(cp) = latest else {
            return Ok(report(
                0,
                None,
                Some(format!(
                    "{} holds no audit checkpoint; name the audit.anchor_file or a jsonl sink's file",
                    path.display()
                )),
            ));
        };
        if let Some(key) = public_key_hex {
            let Some(public) = unhex(key) else {
                return Ok(report(
                    anchored,
                    Some(cp),
                    Some("the public key is not hex".into()),
                ));
            };
            if !cp.signed_by(&UnparsedPublicKey::new(&ED25519, public)) {
                let problem = format!(
                    "the newest checkpoint in {} (seq {}) has an invalid signature: it was not made with this gateway's audit.signing_key",
                    path.display(),
                    cp.seq
                );
                return Ok(report(anchored, Some(cp), Some(problem)));
            }
        }
        let sql = match self.backend() {
            Backend::Sqlite => "SELECT hash FROM audit_events WHERE seq = ?1",
            Backend::Postgres => "SELECT hash FROM audit_events WHERE seq = $1",
        };
        let found: Option<String> = match &self.inner.pool {
            Pool::Sqlite { rw, .. } => {
                sqlx::query_scalar(sql)
                    .bind(cp.seq)
                    .fetch_optional(rw)
                    .await?
            }
            Pool::Postgres(pg) => {
                sqlx::query_scalar(sql)
                    .bind(cp.seq)
                    .fetch_optional(pg)
                    .await?
            }
        };
        let head = self.head_seq().await?;
        let problem = match found {
            None if head < cp.seq => Some(format!(
                "the chain ends at seq {head} but the checkpoint of {} anchored in {} covers seq {}: events {}..={} are missing (the tail was cut off); restore them from a backup or a sink",
                cp.time,
                path.display(),
                cp.seq,
                head + 1,
                cp.seq
            )),
            None => Some(format!(
                "the chain no longer holds event seq {} that the checkpoint of {} anchored in {} signed: events were removed; restore them from a backup or a sink",
                cp.seq,
                cp.time,
                path.display()
            )),
            Some(h) if h != cp.hash => Some(format!(
                "event seq {} differs from what the checkpoint of {} anchored in {} signed: the chain was rewritten; restore it from a backup or a sink",
                cp.seq,
                cp.time,
                path.display()
            )),
            Some(_) => None,
        };
        Ok(report(anchored, Some(cp), problem))
    }
}
