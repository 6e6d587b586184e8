//! The `cloudtrail_lake` sink: events into an AWS CloudTrail Lake channel
//! with the CloudTrail Data service's `PutAuditEvents`, signed with SigV4
//! (the `aws-sigv4` crate, service `cloudtrail-data`).
//!
//! A call carries at most [`MAX_EVENTS`] events and about 1 MB, so a
//! batch goes out in several calls. Each audit event's `eventData` is the
//! CloudTrail record of the Gatehouse event ([`gatehouse_model::cloudtrail`])
//! in the shape Lake takes from outside AWS ([`event_data`]), with its
//! `eventDataChecksum`. The answer lists each event as `successful` or
//! `failed`; failed ones are sent again (alone), and one that fails
//! [`MAX_ATTEMPTS`] times goes to the dead-letter file so the sink moves on.
//!
//! Credentials come from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
//! `AWS_SESSION_TOKEN`, read at each call; without them a call fails and
//! is retried like any other.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use base64::Engine;
use gatehouse_model::event::Event;
use serde_json::{json, Map, Value};
use sha2::Digest;

use crate::{http, SinkError};

/// Events per `PutAuditEvents` call (the API's limit).
pub const MAX_EVENTS: usize = 100;
/// Body bytes per call, under the API's 1 MB.
const MAX_BODY: usize = 1_000_000;
/// Answers of `failed` for one event before it goes to the dead-letter
/// file.
pub const MAX_ATTEMPTS: u32 = 3;
const SERVICE: &str = "cloudtrail-data";

/// A channel and how to reach it.
pub struct Channel {
    pub client: http::Client,
    /// `.../PutAuditEvents?channelArn=...[&externalId=...]`.
    pub url: reqwest::Url,
    pub region: String,
    /// The account of the channel: `recipientAccountId`.
    pub account: String,
    /// Failed answers so far, by event id.
    pub attempts: HashMap<String, u32>,
}

/// The parts of `arn:PARTITION:cloudtrail:REGION:ACCOUNT:channel/ID`.
fn parse_arn(arn: &str) -> Result<(&str, &str), String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", _, "cloudtrail", region, account, resource]
            if !region.is_empty()
                && account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
                && resource.strip_prefix("channel/").is_some_and(|id| !id.is_empty()) =>
        {
            Ok((region, account))
        }
        _ => Err(format!(
            "channel_arn {arn:?} is not a channel ARN (arn:aws:cloudtrail:REGION:ACCOUNT:channel/ID)"
        )),
    }
}

/// Percent-encodes all but RFC 3986's unreserved characters, as SigV4's
/// canonical query string does, so the URL sent is already canonical.
fn encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Channel {
    pub fn new(
        channel_arn: &str,
        region: Option<&str>,
        endpoint_url: Option<&str>,
        external_id: Option<&str>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Channel, String> {
        let (arn_region, account) = parse_arn(channel_arn)?;
        let region = region.unwrap_or(arn_region).to_string();
        let endpoint = match endpoint_url {
            Some(e) => e.trim_end_matches('/').to_string(),
            None => format!("https://{SERVICE}.{region}.amazonaws.com"),
        };
        let client = http::Client::new(&endpoint, ca_file)?;
        let mut query = format!("channelArn={}", encode(channel_arn));
        if let Some(x) = external_id {
            query.push_str(&format!("&externalId={}", encode(x)));
        }
        let url = reqwest::Url::parse(&format!("{endpoint}/PutAuditEvents?{query}"))
            .map_err(|e| format!("bad endpoint_url {endpoint:?}: {e}"))?;
        Ok(Channel {
            client,
            url,
            region,
            account: account.to_string(),
            attempts: HashMap::new(),
        })
    }

    /// The `PutAuditEvents` bodies for `events`, in order: at most
    /// [`MAX_EVENTS`] events and about 1 MB each.
    pub fn bodies(&self, service_name: &str, events: &[&Event]) -> Vec<(Vec<String>, String)> {
        let mut calls = Vec::new();
        let mut ids = Vec::new();
        let mut entries: Vec<Value> = Vec::new();
        let mut size = 0;
        for e in events {
            let record = gatehouse_model::cloudtrail::record(e, service_name);
            let data = event_data(&record, &self.account).to_string();
            let checksum =
                base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&data));
            let entry =
                json!({ "id": e.event.id, "eventData": data, "eventDataChecksum": checksum });
            let len = entry.to_string().len() + 1;
            if !entries.is_empty() && (entries.len() == MAX_EVENTS || size + len > MAX_BODY) {
                calls.push((std::mem::take(&mut ids), body(std::mem::take(&mut entries))));
                size = 0;
            }
            size += len;
            ids.push(e.event.id.clone());
            entries.push(entry);
        }
        if !entries.is_empty() {
            calls.push((ids, body(entries)));
        }
        calls
    }

    /// One signed call; the ids the channel took and the failures
    /// (id, `errorCode: errorMessage`). Ids it names in neither list
    /// count as failed.
    pub async fn put(
        &self,
        ids: &[String],
        body: String,
    ) -> Result<(HashSet<String>, Vec<(String, String)>), SinkError> {
        let mut headers = vec![("content-type", "application/json".to_string())];
        headers.extend(sign(&self.url, &self.region, &headers, body.as_bytes())?);
        let answer = self
            .client
            .post(&self.url, &headers, body.into_bytes())
            .await?;
        let v: Value = serde_json::from_slice(&answer.body).map_err(|e| {
            SinkError::Delivery(format!(
                "{}: the PutAuditEvents answer is not JSON: {e}",
                http::origin(&self.url)
            ))
        })?;
        let list = |k: &str| {
            v.get(k)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        let sent: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let ok: HashSet<String> = list("successful")
            .iter()
            .filter_map(|s| s.get("id").and_then(Value::as_str))
            .filter(|id| sent.contains(id))
            .map(str::to_string)
            .collect();
        let mut failed: Vec<(String, String)> = list("failed")
            .iter()
            .filter_map(|f| {
                let id = f.get("id").and_then(Value::as_str)?;
                let code = f.get("errorCode").and_then(Value::as_str).unwrap_or("");
                let msg = f.get("errorMessage").and_then(Value::as_str).unwrap_or("");
                Some((id.to_string(), format!("{code}: {msg}")))
            })
            .filter(|(id, _)| sent.contains(id.as_str()) && !ok.contains(id))
            .collect();
        for id in ids {
            if !ok.contains(id) && !failed.iter().any(|(f, _)| f == id) {
                failed.push((id.clone(), "not in the answer".into()));
            }
        }
        Ok((ok, failed))
    }
}

fn body(entries: Vec<Value>) -> String {
    json!({ "auditEvents": entries }).to_string()
}

/// The SigV4 headers (`authorization`, `x-amz-date`, and
/// `x-amz-security-token` with a session token) for a POST of `body`.
fn sign(
    url: &reqwest::Url,
    region: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<Vec<(&'static str, String)>, SinkError> {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let need = |k: &str| {
        env(k).ok_or_else(|| {
            SinkError::Delivery(format!(
                "{k} is not set: the cloudtrail_lake sink signs with the AWS credentials in the gateway's environment"
            ))
        })
    };
    let identity = aws_credential_types::Credentials::new(
        need("AWS_ACCESS_KEY_ID")?,
        need("AWS_SECRET_ACCESS_KEY")?,
        env("AWS_SESSION_TOKEN"),
        None,
        "environment",
    )
    .into();
    let failed = |e: &dyn std::fmt::Display| SinkError::Delivery(format!("cannot sign: {e}"));
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| failed(&e))?
        .into();
    let request = SignableRequest::new(
        "POST",
        url.as_str(),
        headers.iter().map(|(k, v)| (*k, v.as_str())),
        SignableBody::Bytes(body),
    )
    .map_err(|e| failed(&e))?;
    let (instructions, _) = sign(request, &params).map_err(|e| failed(&e))?.into_parts();
    let (signed, _) = instructions.into_parts();
    Ok(signed
        .into_iter()
        .map(|h| (h.name(), h.value().to_string()))
        .collect())
}

/// A CloudTrail record in the shape CloudTrail Lake ingests from outside
/// AWS: `version`, `userIdentity` (`type`, `principalId`, the rest under
/// `details`), `eventSource`, `eventName`, `eventTime`, `UID` (the event
/// id), `requestParameters`, `errorCode`, `errorMessage`,
/// `sourceIPAddress`, `recipientAccountId` and `additionalEventData`
/// (with the record's `eventType`). Lake sets `eventVersion`, `eventID`
/// and the rest itself.
pub fn event_data(record: &Value, account: &str) -> Value {
    let get = |k: &str| record.get(k).cloned();
    let mut identity = record
        .get("userIdentity")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let kind = identity.remove("type").unwrap_or(json!("Unknown"));
    let principal = identity
        .remove("principalId")
        .or_else(|| identity.get("userName").cloned())
        .unwrap_or(json!("anonymous"));
    let mut additional = record
        .get("additionalEventData")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(t) = get("eventType") {
        additional.insert("eventType".into(), t);
    }
    let mut out = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v.filter(|v| !v.is_null()) {
            out.insert(k.to_string(), v);
        }
    };
    put("version", get("eventVersion"));
    put(
        "userIdentity",
        Some(json!({ "type": kind, "principalId": principal, "details": identity })),
    );
    put(
        "userAgent",
        Some(json!(concat!("gatehouse/", env!("CARGO_PKG_VERSION")))),
    );
    put("eventSource", get("eventSource"));
    put("eventName", get("eventName"));
    put("eventTime", get("eventTime"));
    put("UID", get("eventID"));
    put("requestParameters", get("requestParameters"));
    put("errorCode", get("errorCode"));
    put("errorMessage", get("errorMessage"));
    put("sourceIPAddress", get("sourceIPAddress"));
    put("recipientAccountId", Some(json!(account)));
    put("additionalEventData", Some(Value::Object(additional)));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_model::{NewEvent, Outcome, Severity};

    const ARN: &str = "arn:aws:cloudtrail:eu-west-1:123456789012:channel/3f1c6b2a";

    fn event(n: usize) -> Event {
        Event {
            event: NewEvent::new("command", Severity::Info, Outcome::Success, "gw1")
                .user("alice")
                .details(json!({ "command": "x".repeat(n) })),
            prev_hash: "0".repeat(64),
            hash: "1".repeat(64),
        }
    }

    #[test]
    fn channel_arns_give_the_region_account_and_canonical_url() {
        let c = Channel::new(ARN, None, None, Some("ext id"), None).unwrap();
        assert_eq!(c.region, "eu-west-1");
        assert_eq!(c.account, "123456789012");
        assert_eq!(
            c.url.as_str(),
            "https://cloudtrail-data.eu-west-1.amazonaws.com/PutAuditEvents?channelArn=arn%3Aaws%3Acloudtrail%3Aeu-west-1%3A123456789012%3Achannel%2F3f1c6b2a&externalId=ext%20id"
        );
        let c = Channel::new(
            ARN,
            Some("us-east-2"),
            Some("http://[::1]:4566/"),
            None,
            None,
        )
        .unwrap();
        assert_eq!(c.region, "us-east-2");
        assert!(c
            .url
            .as_str()
            .starts_with("http://[::1]:4566/PutAuditEvents?channelArn="));
        for bad in [
            "3f1c6b2a",
            "arn:aws:s3:eu-west-1:123456789012:channel/x",
            "arn:aws:cloudtrail:eu-west-1:1234:channel/x",
        ] {
            assert!(Channel::new(bad, None, None, None, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn calls_hold_at_most_100_events_and_about_a_megabyte() {
        let c = Channel::new(ARN, None, None, None, None).unwrap();
        let small: Vec<Event> = (0..250).map(|_| event(10)).collect();
        let refs: Vec<&Event> = small.iter().collect();
        let calls = c.bodies("gatehouse", &refs);
        let sizes: Vec<usize> = calls.iter().map(|(ids, _)| ids.len()).collect();
        assert_eq!(sizes, vec![100, 100, 50]);
        let big: Vec<Event> = (0..30).map(|_| event(100_000)).collect();
        let refs: Vec<&Event> = big.iter().collect();
        for (ids, body) in c.bodies("gatehouse", &refs) {
            assert!(
                body.len() <= MAX_BODY,
                "{} events, {} bytes",
                ids.len(),
                body.len()
            );
        }
    }

    #[test]
    fn event_data_is_the_lake_schema_with_a_checksum() {
        let c = Channel::new(ARN, None, None, None, None).unwrap();
        let e = event(3);
        let (ids, body) = c.bodies("ssh.example.com", &[&e]).remove(0);
        assert_eq!(ids, vec![e.event.id.clone()]);
        let v: Value = serde_json::from_str(&body).unwrap();
        let entry = &v["auditEvents"][0];
        assert_eq!(entry["id"], e.event.id.as_str());
        let data = entry["eventData"].as_str().unwrap();
        let sum = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(data));
        assert_eq!(entry["eventDataChecksum"], sum.as_str());
        let d: Value = serde_json::from_str(data).unwrap();
        assert_eq!(d["version"], "1.09");
        assert_eq!(d["UID"], e.event.id.as_str());
        assert_eq!(d["eventSource"], "ssh.example.com");
        assert_eq!(d["eventName"], "RunCommand");
        assert_eq!(d["recipientAccountId"], "123456789012");
        assert_eq!(d["userIdentity"]["principalId"], "alice");
        assert!(d["userIdentity"]["type"].is_string());
        assert!(d.get("eventID").is_none() && d.get("eventVersion").is_none());
    }
}
