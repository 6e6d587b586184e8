//! A real OpenID provider for single sign-on tests: `oidc-provider`
//! (OpenID Certified, the version pinned in `tests/oidc/package.json`,
//! installed into `target/oidc` by `scripts/deps.sh`) run by
//! `tests/oidc/provider.mjs`, with accounts the test adds and removes,
//! and [`OidcProvider::sign_in`], which goes through its HTML pages the
//! way a person in a browser does (with curl: forms, cookies, redirects).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::{err, spawn, Result};

/// A client registered at the provider.
#[derive(Debug, Clone)]
pub struct OidcClient {
    pub id: String,
    pub secret: String,
    /// The ID token signing algorithm (`RS256`, `ES256`).
    pub alg: String,
    /// Redirect URIs (authorization code flow); empty for device-only.
    pub redirect_uris: Vec<String>,
}

impl OidcClient {
    pub fn new(id: &str, secret: &str) -> OidcClient {
        OidcClient {
            id: id.into(),
            secret: secret.into(),
            alg: "RS256".into(),
            redirect_uris: Vec::new(),
        }
    }
}

/// How the provider behaves.
#[derive(Debug, Clone, Default)]
pub struct OidcOptions {
    pub clients: Vec<OidcClient>,
    /// The provider's clock against the real one, in seconds (negative:
    /// its tokens were issued in the past).
    pub clock_skew_seconds: i64,
    /// A provider that confuses clients: what client `.0` asks is served
    /// as client `.1` (whose secret is `.2`).
    pub client_mixup: Option<(String, String, String)>,
}

/// One account: password, email and groups.
#[derive(Debug, Clone)]
pub struct Account {
    pub password: String,
    pub email: String,
    pub groups: Vec<String>,
}

/// A running provider. Killed on drop.
pub struct OidcProvider {
    child: Child,
    pub issuer: String,
    accounts_file: PathBuf,
    accounts: BTreeMap<String, Account>,
    jar: PathBuf,
    _dir: tempfile::TempDir,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn json(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_list(items: &[String]) -> String {
    let v: Vec<String> = items.iter().map(|s| json(s)).collect();
    format!("[{}]", v.join(","))
}

impl OidcProvider {
    /// Starts the provider on a free loopback port and waits until it
    /// listens.
    pub fn start(options: &OidcOptions) -> Result<OidcProvider> {
        let modules = root().join("target/oidc");
        if !modules.join("node_modules/oidc-provider").is_dir() {
            return Err(err(format!(
                "oidc-provider is not installed in {}: run scripts/deps.sh",
                modules.display()
            )));
        }
        let dir = tempfile::tempdir()?;
        let accounts_file = dir.path().join("accounts.json");
        std::fs::write(&accounts_file, "{}")?;
        let clients: Vec<String> = options
            .clients
            .iter()
            .map(|c| {
                let code = !c.redirect_uris.is_empty();
                format!(
                    "{{\"client_id\":{},\"client_secret\":{},\"grant_types\":[\"urn:ietf:params:oauth:grant-type:device_code\",\"refresh_token\"{}],\"response_types\":[{}],\"redirect_uris\":{},\"token_endpoint_auth_method\":\"client_secret_basic\",\"id_token_signed_response_alg\":{}}}",
                    json(&c.id),
                    json(&c.secret),
                    if code { ",\"authorization_code\"" } else { "" },
                    if code { "\"code\"" } else { "" },
                    json_list(&c.redirect_uris),
                    json(&c.alg),
                )
            })
            .collect();
        let mixup = match &options.client_mixup {
            Some((from, to, secret)) => format!(
                ",\"client_mixup\":{{\"from\":{},\"to\":{},\"secret\":{}}}",
                json(from),
                json(to),
                json(secret)
            ),
            None => String::new(),
        };
        let config = format!(
            "{{\"modules\":{},\"port\":0,\"accounts\":{},\"clients\":[{}],\"clock_skew_seconds\":{}{mixup}}}",
            json(&modules.to_string_lossy()),
            json(&accounts_file.to_string_lossy()),
            clients.join(","),
            options.clock_skew_seconds,
        );
        let config_file = dir.path().join("provider.json");
        std::fs::write(&config_file, config)?;
        let mut child = spawn(
            Command::new("node")
                .arg(root().join("tests/oidc/provider.mjs"))
                .arg(&config_file)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
            "nodejs",
        )?;
        let stdout = child.stdout.take().ok_or_else(|| err("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if let Some(issuer) = line.strip_prefix("listening ") {
                    let _ = tx.send(issuer.to_string());
                }
            }
        });
        // Loading oidc-provider takes seconds on a loaded 2-core machine.
        let issuer = match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(i) => i,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait()?;
                return Err(err(format!(
                    "the OpenID provider exited before listening ({status}); its error is above"
                )));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(err("the OpenID provider did not start within 90 s"));
            }
        };
        Ok(OidcProvider {
            child,
            issuer,
            jar: dir.path().join("cookies"),
            accounts_file,
            accounts: BTreeMap::new(),
            _dir: dir,
        })
    }

    fn write_accounts(&self) -> Result<()> {
        let entries: Vec<String> = self
            .accounts
            .iter()
            .map(|(name, a)| {
                format!(
                    "{}:{{\"password\":{},\"email\":{},\"email_verified\":true,\"groups\":{}}}",
                    json(name),
                    json(&a.password),
                    json(&a.email),
                    json_list(&a.groups)
                )
            })
            .collect();
        let tmp = self.accounts_file.with_extension("tmp");
        std::fs::write(&tmp, format!("{{{}}}", entries.join(",")))?;
        std::fs::rename(&tmp, &self.accounts_file)?;
        Ok(())
    }

    /// Adds (or replaces) an account.
    pub fn set_account(&mut self, name: &str, account: Account) -> Result<()> {
        self.accounts.insert(name.to_string(), account);
        self.write_accounts()
    }

    /// Removes an account: the provider no longer knows the person.
    pub fn remove_account(&mut self, name: &str) -> Result<()> {
        self.accounts.remove(name);
        self.write_accounts()
    }

    /// Signs in at `url` (a verification URI with the code filled in) as
    /// `user` with `password`, giving consent: every page is fetched and
    /// its form submitted, like a browser with a person at it. Ok once
    /// the provider says the sign-in succeeded; the page's text otherwise.
    pub fn sign_in(&self, url: &str, user: &str, password: &str) -> Result<()> {
        self.browse(url, user, password, |_, body| {
            body.contains("Sign-in Success")
        })
        .map(|_| ())
    }

    /// Starts at `url` (an application's sign-in link, which sends the
    /// browser to the provider), signs in as `user` and consents,
    /// following every redirect and form until `done(url, body)`; the
    /// URL of that last page. A page with an error (`id="error"`) ends
    /// it with that page's text.
    pub fn browse(
        &self,
        url: &str,
        user: &str,
        password: &str,
        done: impl Fn(&str, &str) -> bool,
    ) -> Result<String> {
        let _ = std::fs::remove_file(&self.jar);
        let mut page = self.curl(url, None)?;
        for _ in 0..10 {
            if done(&page.url, &page.body) {
                return Ok(page.url);
            }
            if page.body.contains("id=\"error\"") {
                return Err(err(format!("sign-in refused: {}", text_of(&page.body))));
            }
            let Some(form) = Form::first(&page.body) else {
                return Err(err(format!(
                    "sign-in stopped at {} without a form: {}",
                    page.url,
                    text_of(&page.body)
                )));
            };
            let mut fields = form.fields.clone();
            for (k, v) in fields.iter_mut() {
                match k.as_str() {
                    "username" => *v = user.to_string(),
                    "password" => *v = password.to_string(),
                    _ => {}
                }
            }
            let action = absolute(&page.url, &form.action);
            page = self.curl(&action, Some(&fields))?;
        }
        Err(err(format!(
            "sign-in did not finish: {}",
            text_of(&page.body)
        )))
    }

    /// One request through curl with this provider's cookie jar,
    /// following redirects (a POST answered with 303 becomes a GET).
    fn curl(&self, url: &str, form: Option<&[(String, String)]>) -> Result<Page> {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-S", "-L", "--max-time", "20", "-b"])
            .arg(&self.jar)
            .arg("-c")
            .arg(&self.jar)
            .args(["-w", "\n%{url_effective}"]);
        if let Some(fields) = form {
            if fields.is_empty() {
                cmd.args(["--data", ""]);
            }
            for (k, v) in fields {
                cmd.arg("--data-urlencode").arg(format!("{k}={v}"));
            }
        }
        let out = spawn(
            cmd.arg(url)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
            "curl",
        )?
        .wait_with_output()?;
        if !out.status.success() {
            return Err(err(format!(
                "curl {url}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, last) = text.rsplit_once('\n').unwrap_or((&text, url));
        Ok(Page {
            body: body.to_string(),
            url: last.to_string(),
        })
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Page {
    body: String,
    url: String,
}

/// The first form of a page: where it posts, and its named inputs.
#[derive(Debug, Clone)]
struct Form {
    action: String,
    fields: Vec<(String, String)>,
}

/// The value of attribute `name` in a tag's text (`"` quoted).
fn attribute(tag: &str, name: &str) -> Option<String> {
    let mut rest = tag;
    while let Some(i) = rest.find(name) {
        let before = rest[..i].chars().last();
        let after = &rest[i + name.len()..];
        if before.is_some_and(|c| c.is_whitespace()) {
            if let Some(v) = after.strip_prefix("=\"") {
                return v.split('"').next().map(|s| s.replace("&amp;", "&"));
            }
        }
        rest = after;
    }
    None
}

impl Form {
    fn first(html: &str) -> Option<Form> {
        let start = html.find("<form")?;
        let end = html[start..].find("</form>").map(|e| start + e)?;
        let open_end = html[start..].find('>')? + start;
        let action = attribute(&html[start..open_end], "action")?;
        let mut fields = Vec::new();
        let mut rest = &html[open_end..end];
        while let Some(i) = rest.find("<input") {
            let tag_end = rest[i..].find('>').map(|e| i + e).unwrap_or(rest.len());
            let tag = &rest[i..tag_end];
            if let Some(name) = attribute(tag, "name") {
                fields.push((name, attribute(tag, "value").unwrap_or_default()));
            }
            rest = &rest[tag_end..];
        }
        Some(Form { action, fields })
    }
}

fn absolute(base: &str, action: &str) -> String {
    if action.starts_with("http://") || action.starts_with("https://") {
        return action.to_string();
    }
    let origin_end = base
        .find("://")
        .and_then(|i| base[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(base.len());
    format!("{}{action}", &base[..origin_end])
}

/// A page's text without tags or styles, for error messages.
fn text_of(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    let html = match (html.find("<style"), html.find("</style>")) {
        (Some(a), Some(b)) if a < b => format!("{}{}", &html[..a], &html[b + 8..]),
        _ => html.to_string(),
    };
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}
