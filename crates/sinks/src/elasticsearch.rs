//! Elasticsearch `_bulk`: NDJSON with the event id as `_id` (re-delivery
//! overwrites the same document), and the per-item results of the answer.
//!
//! A bulk request succeeds or fails per document. Items answered 429 or
//! 5xx are retried (and only they); any other failure (a 400 mapping
//! conflict, say) will fail the same way every time, so that document
//! goes to the dead-letter file instead of stalling the sink.

/// What the cluster did with one document.
#[derive(Debug, PartialEq)]
pub enum Item {
    Stored,
    /// 429 or 5xx: try again later.
    Retry(u16),
    /// Rejected for good: the status and the cluster's reason.
    Rejected(u16, String),
}

/// The `_bulk` body for `docs` (event id, document JSON).
pub fn body(docs: &[(&str, String)]) -> Vec<u8> {
    let mut body = String::new();
    for (id, doc) in docs {
        body.push_str(&serde_json::json!({ "index": { "_id": id } }).to_string());
        body.push('\n');
        body.push_str(doc);
        body.push('\n');
    }
    body.into_bytes()
}

/// The result of each document, in request order, from a 2xx bulk
/// answer. An answer that does not account for every document is an
/// error (the whole batch is retried).
pub fn items(answer: &[u8], ids: &[&str]) -> Result<Vec<Item>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(answer).map_err(|e| format!("the bulk answer is not JSON: {e}"))?;
    if v.get("errors").and_then(|e| e.as_bool()) == Some(false) {
        return Ok(ids.iter().map(|_| Item::Stored).collect());
    }
    let items = v
        .get("items")
        .and_then(|i| i.as_array())
        .ok_or("the bulk answer reports errors but has no items")?;
    if items.len() != ids.len() {
        return Err(format!(
            "the bulk answer has {} items for {} documents",
            items.len(),
            ids.len()
        ));
    }
    items
        .iter()
        .zip(ids)
        .map(|(item, id)| {
            // {"index": {"_id": ..., "status": 400, "error": {...}}}
            let r = item
                .as_object()
                .and_then(|o| o.values().next())
                .ok_or("a bulk item is not an object")?;
            if let Some(got) = r.get("_id").and_then(|i| i.as_str()) {
                if got != *id {
                    return Err(format!("bulk item for {got} where {id} was expected"));
                }
            }
            let status = r
                .get("status")
                .and_then(|s| s.as_u64())
                .and_then(|s| u16::try_from(s).ok())
                .ok_or("a bulk item has no status")?;
            Ok(match status {
                200..=299 => Item::Stored,
                429 | 500..=599 => Item::Retry(status),
                _ => Item::Rejected(status, reason(r.get("error"))),
            })
        })
        .collect()
}

/// `type: reason` of an item's error object (or the error as text).
fn reason(error: Option<&serde_json::Value>) -> String {
    let Some(e) = error else {
        return "no reason given".into();
    };
    match (
        e.get("type").and_then(|t| t.as_str()),
        e.get("reason").and_then(|r| r.as_str()),
    ) {
        (Some(t), Some(r)) => format!("{t}: {r}"),
        (Some(t), None) => t.to_string(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_bulk_answers_sort_documents_into_stored_retry_and_rejected() {
        let answer = br#"{"took":3,"errors":true,"items":[
            {"index":{"_id":"a","status":201}},
            {"index":{"_id":"b","status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [details.bytes]"}}},
            {"index":{"_id":"c","status":429,"error":{"type":"es_rejected_execution_exception"}}},
            {"index":{"_id":"d","status":503}}]}"#;
        assert_eq!(
            items(answer, &["a", "b", "c", "d"]).unwrap(),
            vec![
                Item::Stored,
                Item::Rejected(
                    400,
                    "mapper_parsing_exception: failed to parse field [details.bytes]".into()
                ),
                Item::Retry(429),
                Item::Retry(503),
            ]
        );
        assert_eq!(
            items(br#"{"errors":false,"items":[]}"#, &["a"]).unwrap(),
            vec![Item::Stored]
        );
        assert!(items(br#"{"errors":true,"items":[]}"#, &["a"]).is_err());
        assert!(items(b"<html>", &["a"]).is_err());
        let swapped = br#"{"errors":true,"items":[{"index":{"_id":"b","status":201}}]}"#;
        assert!(items(swapped, &["a"]).is_err());
    }

    #[test]
    fn bulk_bodies_name_each_document_by_its_event_id() {
        let b = body(&[("01A", "{\"x\":1}".into())]);
        assert_eq!(
            String::from_utf8(b).unwrap(),
            "{\"index\":{\"_id\":\"01A\"}}\n{\"x\":1}\n"
        );
    }
}
