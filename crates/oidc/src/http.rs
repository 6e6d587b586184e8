//! The provider's HTTP endpoints: one client per provider (keep-alive,
//! rustls with the ring provider, the public web roots plus `ca_file`,
//! proxies from the environment, redirects refused, bounded time and
//! size), JSON in, JSON or a form out.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use rustls::pki_types::{pem::PemObject, CertificateDer};
use serde_json::{Map, Value};

use crate::OidcError;

/// The largest response read from a provider.
const MAX_BODY: usize = 1024 * 1024;

/// A client for one provider.
pub(crate) fn client(ca_file: Option<&Path>) -> Result<reqwest::Client, OidcError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| OidcError::Setup(format!("cannot read ca_file {}: {e}", path.display())))?
            .collect::<Result<_, _>>()
            .map_err(|e| {
                OidcError::Setup(format!(
                    "ca_file {} is not PEM certificates: {e}",
                    path.display()
                ))
            })?;
        if certs.is_empty() {
            return Err(OidcError::Setup(format!(
                "ca_file {} holds no certificate",
                path.display()
            )));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| OidcError::Setup(format!("ca_file {}: {e}", path.display())))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| OidcError::Setup(format!("TLS set-up failed: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(20))
        .user_agent(concat!("gatehouse/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| OidcError::Setup(format!("cannot build the HTTP client: {e}")))
}

/// A response: its status and its body parsed as a JSON object (an empty
/// object when the body is not one).
pub(crate) struct Reply {
    pub status: u16,
    pub body: Map<String, Value>,
    /// The body as text when it was not a JSON object (for errors).
    pub text: String,
}

async fn reply(url: &str, resp: reqwest::Response) -> Result<Reply, OidcError> {
    let status = resp.status().as_u16();
    let mut resp = resp;
    let mut bytes = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| OidcError::Http {
        url: url.to_string(),
        message: e.to_string(),
    })? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MAX_BODY {
            return Err(OidcError::Protocol(format!(
                "{url} answered more than {MAX_BODY} bytes"
            )));
        }
    }
    let (body, text) = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => (m, String::new()),
        _ => (
            Map::new(),
            String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned(),
        ),
    };
    Ok(Reply { status, body, text })
}

fn transport(url: &str, e: reqwest::Error) -> OidcError {
    // reqwest's Display leaves out the cause (connection refused, ...).
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    OidcError::Http {
        url: url.to_string(),
        message,
    }
}

/// GET `url` (JSON), with `bearer` as the access token when given.
pub(crate) async fn get(
    http: &reqwest::Client,
    url: &str,
    bearer: Option<&str>,
) -> Result<Reply, OidcError> {
    let mut req = http
        .get(url)
        .header(ACCEPT, HeaderValue::from_static("application/json"));
    if let Some(token) = bearer {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.map_err(|e| transport(url, e))?;
    reply(url, resp).await
}

/// POST `form` to `url`, authenticated as the client: HTTP Basic with the
/// secret (RFC 6749 2.3.1: both parts form-encoded first), or
/// `client_id` in the form for a public client.
pub(crate) async fn post_form(
    http: &reqwest::Client,
    url: &str,
    client_id: &str,
    client_secret: Option<&str>,
    form: &[(&str, &str)],
) -> Result<Reply, OidcError> {
    // The body is finished before anything is awaited (the serializer
    // is not Send).
    let body = {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in form {
            ser.append_pair(k, v);
        }
        if client_secret.is_none() {
            ser.append_pair("client_id", client_id);
        }
        ser.finish()
    };
    let mut req = http
        .post(url)
        .header(ACCEPT, HeaderValue::from_static("application/json"))
        .header(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
    if let Some(secret) = client_secret {
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        use base64::Engine;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            enc(client_id),
            enc(secret)
        ));
        let value = HeaderValue::from_str(&format!("Basic {basic}"))
            .map_err(|e| OidcError::Setup(format!("client credentials: {e}")))?;
        req = req.header(AUTHORIZATION, value);
    }
    let resp = req.body(body).send().await.map_err(|e| transport(url, e))?;
    reply(url, resp).await
}
