//! The one HTTP client of the HTTP sinks (webhook, Elasticsearch, Splunk
//! HEC, CloudTrail Lake): reqwest over rustls with the ring provider.
//!
//! Each sink builds one [`Client`] when it starts and keeps it, so
//! batches reuse a kept-alive connection. The client trusts the public
//! web roots plus the sink's `ca_file`, takes an HTTP(S) proxy from the
//! environment (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`),
//! gives up on a connect after [`CONNECT_TIMEOUT`] and on a whole
//! exchange after [`REQUEST_TIMEOUT`], and follows no redirect: a 3xx is
//! a failed delivery that names where the receiver points, because an
//! audit trail should reach the address the operator configured and no
//! other.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::SinkError;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A sink's HTTP client and the URL it posts to.
pub struct Client {
    inner: reqwest::Client,
    pub url: reqwest::Url,
}

/// A 2xx answer: status and body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Client {
    /// Checks `url` (`http://` or `https://`, a host, IPv6 literals in
    /// brackets) and builds the client; `ca_file` only with `https://`.
    pub fn new(url: &str, ca_file: Option<&Path>) -> Result<Client, String> {
        let url = parse_url(url)?;
        if url.scheme() == "http" && ca_file.is_some() {
            return Err("ca_file applies to https:// urls only".into());
        }
        let inner = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(ca_file)?)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(50))
            .user_agent(concat!("gatehouse/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {}", chain(&e)))?;
        Ok(Client { inner, url })
    }

    /// POSTs `body` to `url` (the sink's own, or one built from it) with
    /// `headers`; anything but a 2xx is an error that says what came back.
    pub async fn post(
        &self,
        url: &reqwest::Url,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Answer, SinkError> {
        let mut req = self.inner.post(url.clone()).body(body);
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let resp = req.send().await.map_err(|e| delivery(url, e))?;
        let status = resp.status();
        if status.is_redirection() {
            let to = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("nowhere");
            return Err(SinkError::Delivery(format!(
                "{} answered HTTP {} redirecting to {to}; sinks follow no redirects: set the sink's url to the address that answers",
                origin(url),
                status.as_u16()
            )));
        }
        let body = resp.bytes().await.map_err(|e| delivery(url, e))?.to_vec();
        if !status.is_success() {
            return Err(SinkError::Delivery(format!(
                "{} answered HTTP {}: {}",
                origin(url),
                status.as_u16(),
                excerpt(&body)
            )));
        }
        Ok(Answer {
            status: status.as_u16(),
            body,
        })
    }
}

/// `http://` or `https://` with a host.
fn parse_url(url: &str) -> Result<reqwest::Url, String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err("the url must start with http:// or https://".into());
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("bad url {url:?}: {e}"))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("the url has no host".into());
    }
    Ok(parsed)
}

/// Trusts the public web roots and the certificates in `ca_file`.
fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("ca_file {} is not PEM certificates: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("ca_file {} holds no certificate", path.display()));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS set-up failed: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// `scheme://host:port` of a URL, for messages (never its path or query,
/// which may hold a token).
pub fn origin(url: &reqwest::Url) -> String {
    url.origin().ascii_serialization()
}

fn delivery(url: &reqwest::Url, e: reqwest::Error) -> SinkError {
    let what = if e.is_timeout() {
        format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())
    } else {
        chain(&e.without_url())
    };
    SinkError::Delivery(format!("{}: {what}", origin(url)))
}

/// reqwest's message and every cause under it ("error sending request:
/// client error (Connect): invalid peer certificate: UnknownIssuer").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let m = s.to_string();
        if !text.contains(&m) {
            text.push_str(": ");
            text.push_str(&m);
        }
        source = s.source();
    }
    text
}

/// The first 300 characters of a response body, for a message.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}
