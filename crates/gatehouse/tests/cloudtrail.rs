//! The CloudTrail shape of a real gateway's trail: sessions and refusals
//! through the gateway, then `gatehouse audit query` over the `cloudtrail`
//! view and the two CloudTrail runbooks, as an operator would run them.

mod common;

use common::{stdout, Env, T};
use gatehouse_testkit as kit;

#[test]
fn a_gateways_trail_reads_as_cloudtrail_records() {
    let env = Env::start_server("service_name = \"ssh-proxy.example.test\"", "");
    // A session without a second factor, and refusals: alice to a target
    // her role does not reach, bob (no roles) to any.
    let out = env.ssh("alice:web01@127.0.0.1", &["echo", "via-cloudtrail"]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stderr, env.gateway_log());
    assert_ne!(env.ssh("alice:prod01@127.0.0.1", &["true"]).code, Some(0));
    let bob = kit::run(
        env.client(&env.bob)
            .ssh(env.port, "bob:web01@127.0.0.1", &["true"]),
        T,
    )
    .expect("run ssh");
    assert_ne!(bob.code, Some(0));

    // `audit query` with a config of its own (no service_name) reads the
    // name the gateway recorded, and does not change it.
    let rows = env.wait_rows(
        "SELECT eventSource, eventType, userIdentity->>'userName' AS user_name, \
         requestParameters->>'target' AS target, errorCode \
         FROM cloudtrail WHERE eventName = 'AuthorizeSession' ORDER BY eventTime, user_name",
    );
    assert_eq!(rows.len(), 2, "{rows:?}");
    for r in &rows {
        assert_eq!(r["eventsource"], "ssh-proxy.example.test", "{r}");
        assert_eq!(r["eventtype"], "AwsApiCall", "{r}");
        assert_eq!(r["errorcode"], "AccessDenied", "{r}");
    }
    let mut who: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["user_name"].as_str().unwrap_or("").to_string(),
                r["target"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    who.sort();
    assert_eq!(
        who,
        [
            ("alice".to_string(), "prod01".to_string()),
            ("bob".to_string(), "web01".to_string())
        ]
    );
    let started = env.wait_rows(
        "SELECT eventSource, additionalEventData->>'MFAAuthenticated' AS mfa FROM cloudtrail \
         WHERE eventName = 'StartSession'",
    );
    assert_eq!(started[0]["eventsource"], "ssh-proxy.example.test");
    assert_eq!(started[0]["mfa"], "False");
    env.wait_rows(
        "SELECT eventID FROM cloudtrail WHERE eventName = 'RunCommand' \
         AND requestParameters->>'command' = 'echo via-cloudtrail'",
    );

    // The runbooks, through the gateway's own config.
    let run = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["--format", "json", "runbook", "run"];
        all.extend_from_slice(args);
        let out = env.gatehouse(&all);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        serde_json::from_str(&stdout(&out)).expect("runbook json")
    };
    let r = run(&["cloudtrail-sessions-without-mfa"]);
    let rows = r["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{r}");
    assert_eq!(rows[0]["user_name"], "alice");
    assert_eq!(rows[0]["target"], "web01");
    let r = run(&["cloudtrail-denied-surge", "--param", "min=2"]);
    assert_eq!(r["rows"][0]["sourceipaddress"], "127.0.0.1", "{r}");
    assert_eq!(r["rows"][0]["attempts"], 2, "{r}");
    assert_eq!(
        r["planned"],
        serde_json::json!([{"kind": "BlockSource", "subject": "127.0.0.1"}])
    );
    // Without --apply nothing is blocked.
    assert_eq!(
        stdout(&env.ssh("alice:web01@127.0.0.1", &["echo", "open"])),
        "open\n"
    );
}
