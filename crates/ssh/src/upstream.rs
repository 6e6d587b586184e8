//! The gateway's own SSH connection to a target: connect, verify the
//! target's host key (pinned fingerprint, known_hosts file or
//! trust-on-first-use in the store — never ignored), authenticate with the
//! gateway's key or a short-lived certificate it signs per session from
//! its own CA, and accept agent channels the target opens back when the
//! role allows agent forwarding.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse_model::Target;
use gatehouse_store::Store;
use russh::client;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};

use crate::keys::fingerprint;

/// Why a target could not be reached. The text is shown to the user as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamError {
    /// TCP connect failed or timed out.
    Unreachable(String),
    /// The target presented a host key other than the one trusted.
    HostKeyMismatch {
        expected: String,
        got: String,
    },
    /// The target refused the gateway's key for this login.
    AuthRefused(String),
    Other(String),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Unreachable(m) => write!(f, "{m}"),
            UpstreamError::HostKeyMismatch { expected, got } => write!(
                f,
                "the target's host key changed (expected {expected}, got {got}); refusing to connect — ask an administrator to check the target and update its host key"
            ),
            UpstreamError::AuthRefused(m) => write!(f, "{m}"),
            UpstreamError::Other(m) => write!(f, "{m}"),
        }
    }
}

/// What the host key check saw, for the audit trail.
#[derive(Debug, Default)]
struct KeyCheck {
    mismatch: Option<(String, String)>,
    error: Option<String>,
}

/// Channels the target opens towards the gateway (agent forwarding).
pub type AgentChannelTx = tokio::sync::mpsc::Sender<russh::Channel<client::Msg>>;

/// A connection the target accepted on a port the user asked it to
/// listen on (`ssh -R`), to be carried back to the user.
pub struct Forwarded {
    pub channel: russh::Channel<client::Msg>,
    pub connected_address: String,
    pub connected_port: u32,
    pub originator_address: String,
    pub originator_port: u32,
}

pub struct UpstreamClient {
    target: Target,
    store: Store,
    check: Arc<Mutex<KeyCheck>>,
    agent_tx: Option<AgentChannelTx>,
    forwarded_tx: tokio::sync::mpsc::Sender<Forwarded>,
}

impl client::Handler for UpstreamClient {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            PublicKeyOrCertificate::Certificate(c) => c.public_key().clone().into(),
        };
        let got = fingerprint(&key);
        // Boxed: the store lookup would otherwise size every upstream
        // connection's state machine for its whole life.
        let verdict = Box::pin(self.verify(&key, &got)).await;
        let mut check = self.check.lock().unwrap_or_else(|p| p.into_inner());
        match verdict {
            Ok(()) => Ok(true),
            Err(Verify::Mismatch(expected)) => {
                check.mismatch = Some((expected, got));
                Ok(false)
            }
            Err(Verify::Error(e)) => {
                check.error = Some(e);
                Ok(false)
            }
        }
    }

    /// Only ports the gateway asked for on the user's behalf are
    /// forwarded (the target opens these channels for them alone).
    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: russh::Channel<client::Msg>,
        connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let forwarded = Forwarded {
            channel,
            connected_address: connected_address.to_string(),
            connected_port,
            originator_address: originator_address.to_string(),
            originator_port,
        };
        match self.forwarded_tx.try_send(forwarded) {
            Ok(()) => reply.accept().await,
            Err(_) => {
                reply
                    .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                    .await
            }
        }
        Ok(())
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        channel: russh::Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        match &self.agent_tx {
            Some(tx) => {
                reply.accept().await;
                let _ = tx.send(channel).await;
            }
            None => {
                reply
                    .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                    .await
            }
        }
        Ok(())
    }
}

enum Verify {
    Mismatch(String),
    Error(String),
}

impl UpstreamClient {
    async fn verify(&self, key: &russh::keys::PublicKey, got: &str) -> Result<(), Verify> {
        let t = &self.target;
        if let Some(pinned) = &t.host_key {
            return if pinned.trim() == got {
                Ok(())
            } else {
                Err(Verify::Mismatch(pinned.trim().to_string()))
            };
        }
        if let Some(path) = &t.known_hosts {
            let (host, port) = split_host_port(&t.socket_address());
            return match russh::keys::check_known_hosts_path(&host, port, key, path) {
                Ok(true) => Ok(()),
                Ok(false) => Err(Verify::Error(format!(
                    "target {:?}: no entry for {host}:{port} in {}; add the target's host key there",
                    t.name,
                    path.display()
                ))),
                Err(russh::keys::Error::KeyChanged { line }) => Err(Verify::Mismatch(format!(
                    "the key on line {line} of {}",
                    path.display()
                ))),
                Err(e) => Err(Verify::Error(format!(
                    "target {:?}: cannot read known_hosts file {}: {e}",
                    t.name,
                    path.display()
                ))),
            };
        }
        if t.tofu {
            return match self.store.known_host_key(&t.name).await {
                Ok(Some(known)) if known == got => Ok(()),
                Ok(Some(known)) => Err(Verify::Mismatch(known)),
                Ok(None) => self
                    .store
                    .remember_host_key(&t.name, got)
                    .await
                    .map_err(|e| {
                        Verify::Error(format!("cannot remember the target's host key: {e}"))
                    }),
                Err(e) => Err(Verify::Error(format!(
                    "cannot look up the target's host key: {e}"
                ))),
            };
        }
        Err(Verify::Error(format!(
            "target {:?} has no host key verification configured",
            t.name
        )))
    }
}

fn split_host_port(addr: &str) -> (String, u16) {
    if let Some(rest) = addr.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once("]:") {
            return (h.to_string(), p.parse().unwrap_or(22));
        }
    }
    match addr.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap_or(22)),
        None => (addr.to_string(), 22),
    }
}

/// A live, authenticated connection to a target.
pub struct Upstream {
    pub handle: client::Handle<UpstreamClient>,
    pub agent_rx:
        tokio::sync::Mutex<Option<tokio::sync::mpsc::Receiver<russh::Channel<client::Msg>>>>,
    /// Connections to ports forwarded with `ssh -R`; taken by the first
    /// remote forward the user sets up.
    pub forwarded_rx: tokio::sync::Mutex<Option<tokio::sync::mpsc::Receiver<Forwarded>>>,
}

/// The gateway's own leg prefers AES-256-GCM, which runs on the CPU's AES
/// instructions, over ChaCha20-Poly1305: the user's leg already costs
/// whatever cipher their client picked, so this leg should be the cheap one.
const UPSTREAM_CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_128_CTR,
];

pub fn client_config() -> Arc<client::Config> {
    Arc::new(client::Config {
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Borrowed(UPSTREAM_CIPHERS),
            ..Default::default()
        },
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        window_size: crate::CHANNEL_WINDOW,
        maximum_packet_size: 32768,
        channel_buffer_size: 64,
        nodelay: true,
        ..Default::default()
    })
}

/// How the gateway proves itself to a target.
#[derive(Clone)]
pub struct Credentials {
    /// The static key (`upstream.key`).
    pub key: Arc<PrivateKey>,
    /// The CA (`upstream.ca_key`) that signs a per-session certificate.
    pub ca: Option<Arc<PrivateKey>>,
    /// The certificate's key id: who and which session, so the target's
    /// own auth log names them.
    pub key_id: String,
    /// How long the certificate is valid for (it only has to outlive the
    /// handshake; a session outlives its certificate).
    pub validity: Duration,
}

/// Signs a user certificate for `login` over a fresh ed25519 key.
pub fn sign_session_certificate(
    ca: &PrivateKey,
    login: &str,
    key_id: &str,
    validity: Duration,
) -> Result<(Arc<PrivateKey>, russh::keys::Certificate), String> {
    use russh::keys::ssh_key::certificate::{Builder, CertType};
    let key = PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)
        .map_err(|e| format!("cannot generate a session key: {e}"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // A minute of grace for clocks that run behind the gateway's.
    let after = now.saturating_sub(60);
    let before = now + validity.as_secs().max(60);
    let nonce: [u8; 32] = rand::random();
    let cert_err =
        |e: russh::keys::ssh_key::Error| format!("cannot sign the session certificate: {e}");
    let mut b = Builder::new(
        nonce.to_vec(),
        key.public_key().key_data().clone(),
        after,
        before,
    )
    .map_err(cert_err)?;
    b.cert_type(CertType::User).map_err(cert_err)?;
    b.serial(rand::random()).map_err(cert_err)?;
    b.key_id(key_id).map_err(cert_err)?;
    b.valid_principal(login).map_err(cert_err)?;
    for ext in [
        "permit-pty",
        "permit-port-forwarding",
        "permit-agent-forwarding",
        "permit-user-rc",
    ] {
        b.extension(ext, "").map_err(cert_err)?;
    }
    let cert = b.sign(ca).map_err(cert_err)?;
    Ok((Arc::new(key), cert))
}

/// Attempts at the SSH handshake with a target that closes the
/// connection before the key exchange is done (sshd past its
/// MaxStartups drops new connections that way during a burst), and the
/// pauses before the second, third and fourth. Nothing has been
/// authenticated or sent on such a connection, so trying again is safe;
/// a refused TCP connect, a timeout or a host key problem is not retried.
const HANDSHAKE_ATTEMPTS: usize = 4;
const HANDSHAKE_PAUSES: [Duration; HANDSHAKE_ATTEMPTS - 1] = [
    Duration::from_millis(200),
    Duration::from_millis(500),
    Duration::from_millis(1000),
];

/// Why one handshake attempt failed.
enum Attempt {
    Tcp(std::io::Error),
    Ssh(russh::Error),
}

/// True when the target ended the connection before the key exchange
/// finished, the way an overloaded sshd does.
fn closed_before_kex(e: &russh::Error) -> bool {
    use std::io::ErrorKind;
    match e {
        russh::Error::Disconnect => true,
        russh::Error::IO(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionReset
                | ErrorKind::UnexpectedEof
                | ErrorKind::BrokenPipe
                | ErrorKind::ConnectionAborted
        ),
        _ => false,
    }
}

/// TCP connect and the SSH handshake with `target`, up to
/// [`HANDSHAKE_ATTEMPTS`] times when it closes the connection before
/// the key exchange, all within `timeout`.
async fn handshake(
    target: &Target,
    store: &Store,
    agent_tx: &Option<AgentChannelTx>,
    forwarded_tx: &tokio::sync::mpsc::Sender<Forwarded>,
    timeout: Duration,
) -> Result<client::Handle<UpstreamClient>, UpstreamError> {
    let addr = target.socket_address();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut attempt = 0;
    let handle = loop {
        attempt += 1;
        let check = Arc::new(Mutex::new(KeyCheck::default()));
        let handler = UpstreamClient {
            target: target.clone(),
            store: store.clone(),
            check: check.clone(),
            agent_tx: agent_tx.clone(),
            forwarded_tx: forwarded_tx.clone(),
        };
        let connecting = async {
            let tcp = tokio::net::TcpStream::connect(&addr)
                .await
                .map_err(Attempt::Tcp)?;
            let _ = tcp.set_nodelay(true);
            client::connect_stream(client_config(), tcp, handler)
                .await
                .map_err(Attempt::Ssh)
        };
        let e = match tokio::time::timeout_at(deadline, connecting).await {
            Ok(Ok(h)) => break h,
            Err(_) => {
                return Err(UpstreamError::Unreachable(format!(
                    "target {:?} ({addr}) did not answer within {}s; it may be down — try again later or ask an administrator",
                    target.name,
                    timeout.as_secs()
                )))
            }
            Ok(Err(Attempt::Tcp(io))) => {
                return Err(UpstreamError::Unreachable(format!(
                    "cannot connect to target {:?} ({addr}): {io}; it may be down — try again later or ask an administrator",
                    target.name
                )))
            }
            Ok(Err(Attempt::Ssh(e))) => e,
        };
        let (mismatch, refused) = {
            let c = check.lock().unwrap_or_else(|p| p.into_inner());
            (c.mismatch.clone(), c.error.clone())
        };
        if let Some((expected, got)) = mismatch {
            return Err(UpstreamError::HostKeyMismatch { expected, got });
        }
        if let Some(err) = refused {
            return Err(UpstreamError::Other(err));
        }
        let pause = HANDSHAKE_PAUSES.get(attempt - 1).copied();
        if let Some(pause) = pause.filter(|_| closed_before_kex(&e)) {
            if tokio::time::Instant::now() + pause < deadline {
                tracing::info!(target = %target.name, attempt, error = %e, "the target closed the connection before the key exchange; trying again");
                tokio::time::sleep(pause).await;
                continue;
            }
        }
        let tries = if attempt > 1 {
            format!(" (after {attempt} attempts)")
        } else {
            String::new()
        };
        if closed_before_kex(&e) {
            return Err(UpstreamError::Other(format!(
                "target {:?} ({addr}) closed the connection before the SSH key exchange{tries}; it may be overloaded (sshd MaxStartups) — try again in a moment or ask an administrator",
                target.name
            )));
        }
        return Err(match e {
            russh::Error::IO(io) => UpstreamError::Unreachable(format!(
                "cannot connect to target {:?} ({addr}): {io}{tries}; it may be down — try again later or ask an administrator",
                target.name
            )),
            other => UpstreamError::Other(format!(
                "SSH handshake with target {:?} ({addr}) failed: {other}{tries}",
                target.name
            )),
        });
    };
    Ok(handle)
}

/// Connects and authenticates to `target` as `login`.
pub async fn connect(
    target: &Target,
    login: &str,
    creds: Credentials,
    store: Store,
    timeout: Duration,
    agent: bool,
) -> Result<Upstream, UpstreamError> {
    let (agent_tx, agent_rx) = if agent {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let (forwarded_tx, forwarded_rx) = tokio::sync::mpsc::channel(16);
    let mut handle = handshake(target, &store, &agent_tx, &forwarded_tx, timeout).await?;
    // A per-session certificate first (targets then need only
    // TrustedUserCAKeys), the static key as the fallback, as OpenSSH's
    // client tries its identities in turn.
    if let Some(ca) = &creds.ca {
        let (key, cert) = sign_session_certificate(ca, login, &creds.key_id, creds.validity)
            .map_err(UpstreamError::Other)?;
        let auth = handle
            .authenticate_openssh_cert(login, key, cert)
            .await
            .map_err(|e| {
                UpstreamError::Other(format!(
                    "certificate authentication to target {:?} failed: {e}",
                    target.name
                ))
            })?;
        if auth.success() {
            return Ok(Upstream {
                handle,
                agent_rx: tokio::sync::Mutex::new(agent_rx),
                forwarded_rx: tokio::sync::Mutex::new(Some(forwarded_rx)),
            });
        }
    }
    let hash = handle
        .best_supported_rsa_hash()
        .await
        .ok()
        .flatten()
        .flatten();
    let auth = handle
        .authenticate_publickey(login, PrivateKeyWithHashAlg::new(creds.key, hash))
        .await
        .map_err(|e| {
            UpstreamError::Other(format!(
                "authentication to target {:?} failed: {e}",
                target.name
            ))
        })?;
    if !auth.success() {
        let hint = if creds.ca.is_some() {
            format!("trust the gateway's CA (upstream.ca_key .pub) with TrustedUserCAKeys in the target's sshd_config, or add the gateway's public key (upstream.key .pub) to ~{login}/.ssh/authorized_keys on the target")
        } else {
            format!("add the gateway's public key (upstream.key .pub) to ~{login}/.ssh/authorized_keys on the target")
        };
        return Err(UpstreamError::AuthRefused(format!(
            "target {:?} refused the gateway's credentials for login {login:?}; {hint}",
            target.name
        )));
    }
    Ok(Upstream {
        handle,
        agent_rx: tokio::sync::Mutex::new(agent_rx),
        forwarded_rx: tokio::sync::Mutex::new(Some(forwarded_rx)),
    })
}

#[cfg(test)]
mod tests {
    use super::split_host_port;

    #[test]
    fn host_port_split() {
        assert_eq!(
            split_host_port("127.0.0.1:2200"),
            ("127.0.0.1".into(), 2200)
        );
        assert_eq!(split_host_port("[::1]:22"), ("::1".into(), 22));
    }
}
