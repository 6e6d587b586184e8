//! The operations against a real store: SQLite in a temp dir and the
//! PostgreSQL server on this machine (127.0.0.1:5432, user postgres).

use std::sync::atomic::{AtomicBool, Ordering};

use gatehouse_model::{Config, EventType, NewEvent, Outcome, Severity};
use gatehouse_store::{ApprovalState, Store};
use serde_json::Value;

use super::*;

const CONFIG: &str = r#"
[server]
node = "n1"

[auth]
secrets_key = "secrets.key"

[[targets]]
name = "web01"
address = "127.0.0.1"
tofu = true
default_login = "deploy"

[[roles]]
name = "dev"
allow = [{ targets = { name = "web01" }, logins = ["deploy"],
           require_approval = { logins = ["deploy"], approvers = ["leads"], ttl = "2h" } }]

[[roles]]
name = "leads"
console = ["approvals"]

[[roles]]
name = "web-watch"
console = ["watch", "kill"]
console_targets = { name = "web01" }

[[users]]
name = "alice"
keys = ["ssh-ed25519 AAAA alice"]
roles = ["leads"]

[[users]]
name = "bob"
keys = ["ssh-ed25519 AAAA bob"]
roles = ["dev"]

[[users]]
name = "carol"
keys = ["ssh-ed25519 AAAA carol"]
roles = ["dev"]

[[users]]
name = "wendy"
roles = ["web-watch"]
"#;

struct Fixture {
    store: Store,
    config: Config,
    _dir: tempfile::TempDir,
}

async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    let config = Config::parse(CONFIG, &path).expect("config");
    let url = format!("sqlite://{}/audit.db", dir.path().display());
    Fixture {
        store: Store::open(&url).await.unwrap(),
        config,
        _dir: dir,
    }
}

async fn postgres() -> Fixture {
    let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL must run on 127.0.0.1:5432 (user postgres, trust auth): {e}")
        });
    let name = format!("gh_ctl_{}", ulid::Ulid::new().to_string().to_lowercase());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let mut f = sqlite().await;
    f.store = Store::open(&format!("postgres://postgres@127.0.0.1:5432/{name}"))
        .await
        .unwrap();
    f
}

async fn both() -> Vec<Fixture> {
    vec![sqlite().await, postgres().await]
}

async fn events(store: &Store, kind: &str) -> Vec<NewEvent> {
    store
        .recent_events(1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .filter(|e| e.kind == kind)
        .collect()
}

async fn start_session(store: &Store, user: &str, id: &str) {
    let ev = NewEvent::new(
        EventType::SESSION_START,
        Severity::Info,
        Outcome::Success,
        "n1",
    )
    .user(user)
    .session(id)
    .target("web01")
    .login("deploy");
    store.append(&ev).await.unwrap();
}

/// A trail that refuses every write, as a full disk or a lost database would.
struct Broken(AtomicBool);

impl Trail for Broken {
    fn write<'a>(
        &'a self,
        _event: NewEvent,
    ) -> Pin<Box<dyn Future<Output = std::result::Result<(), String>> + Send + 'a>> {
        self.0.store(true, Ordering::SeqCst);
        Box::pin(async { Err("disk full".to_string()) })
    }
}

fn strip_actor(mut details: Value) -> Value {
    if let Value::Object(m) = &mut details {
        for k in [
            "by",
            "channel",
            "by_session",
            "by_source_ip",
            "request",
            "grant_until",
        ] {
            m.remove(k);
        }
    }
    details
}

#[tokio::test]
async fn an_approval_decided_over_ssh_and_from_the_cli_writes_the_same_event() {
    for f in both().await {
        let r1 = f
            .store
            .request_approval("bob", "web01", "deploy", "leads")
            .await
            .unwrap();
        let r2 = f
            .store
            .request_approval("bob", "web01", "deploy", "leads")
            .await
            .unwrap();
        let ssh = Control::new(
            &f.store,
            &f.config,
            Actor::user_in_session("alice", "S-alice", Some("10.0.0.9")),
        );
        let cli = Control::new(&f.store, &f.config, Actor::operator("root", Channel::Cli));
        let a = ssh
            .decide_approval(&r1, true, Some("deploy fix".into()))
            .await
            .unwrap();
        let b = cli
            .decide_approval(&r2, true, Some("deploy fix".into()))
            .await
            .unwrap();
        assert!(a.granted && b.granted);
        let evs = events(&f.store, EventType::APPROVAL_GRANTED).await;
        assert_eq!(evs.len(), 2);
        let (x, y) = (&evs[0], &evs[1]);
        assert_eq!(x.severity, y.severity);
        assert_eq!(x.result, y.result);
        assert_eq!(
            (&x.target, &x.login, &x.reason),
            (&y.target, &y.login, &y.reason)
        );
        assert_eq!(
            strip_actor(x.details.clone()),
            strip_actor(y.details.clone())
        );
        let channels: Vec<&str> = evs
            .iter()
            .map(|e| e.details["channel"].as_str().unwrap())
            .collect();
        assert!(
            channels.contains(&"ssh") && channels.contains(&"cli"),
            "{channels:?}"
        );
        for e in &evs {
            assert_eq!(e.details["requester"], "bob");
            assert!(e.details["grant_until"].is_string());
        }
        assert!(f
            .store
            .active_grant("bob", "web01", "deploy")
            .await
            .unwrap());
        let again = cli.decide_approval(&r1, false, None).await.unwrap_err();
        assert!(again.to_string().contains("already granted"), "{again}");
    }
}

#[tokio::test]
async fn nobody_decides_their_own_request_and_only_approvers_decide() {
    let f = sqlite().await;
    let id = f
        .store
        .request_approval("bob", "web01", "deploy", "leads")
        .await
        .unwrap();
    let own = Control::new(
        &f.store,
        &f.config,
        Actor::user_in_session("bob", "S1", None),
    );
    let e = own.decide_approval(&id, true, None).await.unwrap_err();
    assert!(
        e.to_string().contains("nobody approves their own request"),
        "{e}"
    );
    let peer = Control::new(
        &f.store,
        &f.config,
        Actor::user_in_session("carol", "S2", None),
    );
    let e = peer.decide_approval(&id, true, None).await.unwrap_err();
    assert!(e.to_string().contains("needs a member of leads"), "{e}");
    assert!(peer.decidable_requests().await.unwrap().is_empty());
    let a = f.store.approval(&id).await.unwrap().unwrap();
    assert_eq!(a.status, ApprovalState::Pending);
    assert!(events(&f.store, EventType::APPROVAL_GRANTED)
        .await
        .is_empty());
}

#[tokio::test]
async fn when_the_event_cannot_be_written_nothing_is_done() {
    let f = sqlite().await;
    start_session(&f.store, "bob", "S-bob").await;
    let id = f
        .store
        .request_approval("bob", "web01", "deploy", "leads")
        .await
        .unwrap();
    let broken = Broken(AtomicBool::new(false));
    let ops = Control::with_trail(
        &f.store,
        &broken,
        &f.config,
        Actor::operator("root", Channel::Cli),
    );
    let e = ops.decide_approval(&id, true, None).await.unwrap_err();
    assert!(matches!(e, ControlError::Audit(_)), "{e}");
    assert_eq!(
        f.store.approval(&id).await.unwrap().unwrap().status,
        ApprovalState::Pending
    );
    assert!(ops.lock_user("bob", "gone", None).await.is_err());
    assert!(f.store.user_lock("bob").await.unwrap().is_none());
    assert!(f.store.pending_kills().await.unwrap().is_empty());
    assert!(ops.kill_session("S-bob", "x").await.is_err());
    assert!(f.store.pending_kills().await.unwrap().is_empty());
    assert!(ops
        .block_source("10.1.2.3", std::time::Duration::from_secs(60), "x")
        .await
        .is_err());
    assert!(f.store.source_blocked("10.1.2.3").await.unwrap().is_none());
    assert!(ops.reset_totp("bob").await.is_err());
    assert!(ops.open_recording("S-bob", "play").await.is_err());
    assert!(broken.0.load(Ordering::SeqCst));
}

#[tokio::test]
async fn a_lock_ends_the_users_live_sessions_and_unlock_lifts_it() {
    for f in both().await {
        start_session(&f.store, "bob", "S-b1").await;
        start_session(&f.store, "bob", "S-b2").await;
        start_session(&f.store, "carol", "S-c1").await;
        let ops = Control::new(&f.store, &f.config, Actor::operator("root", Channel::Cli));
        let locked = ops
            .lock_user("bob", "left", Some(std::time::Duration::from_secs(600)))
            .await
            .unwrap();
        assert_eq!(locked.ending, vec!["S-b1".to_string(), "S-b2".to_string()]);
        assert!(locked.until.is_some());
        let kills: Vec<String> = f
            .store
            .pending_kills()
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.session_id)
            .collect();
        assert_eq!(kills, vec!["S-b1".to_string(), "S-b2".to_string()]);
        let lock = f.store.user_lock("bob").await.unwrap().unwrap();
        assert_eq!((lock.reason.as_str(), lock.by.as_str()), ("left", "root"));
        let ev = &events(&f.store, EventType::USER_LOCKED).await[0];
        assert_eq!(ev.user.as_deref(), Some("bob"));
        assert_eq!(ev.details["channel"], "cli");
        assert!(ops.unlock_user("bob").await.unwrap());
        assert!(!ops.unlock_user("bob").await.unwrap());
        assert!(f.store.user_lock("bob").await.unwrap().is_none());
        let e = ops
            .lock_user("nobody'; DROP TABLE user_locks; --", "x", None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("unknown user"), "{e}");
    }
}

#[tokio::test]
async fn a_user_reads_only_their_own_recordings_and_every_read_is_audited() {
    let f = sqlite().await;
    start_session(&f.store, "bob", "S-bob").await;
    let bob = Control::new(
        &f.store,
        &f.config,
        Actor::user_in_session("bob", "S-x", None),
    );
    assert_eq!(bob.open_recording("S-bob", "play").await.unwrap(), "S-bob");
    let carol = Control::new(
        &f.store,
        &f.config,
        Actor::user_in_session("carol", "S-y", None),
    );
    let e = carol.open_recording("S-bob", "play").await.unwrap_err();
    assert!(matches!(e, ControlError::Refused(_)), "{e}");
    let root = Control::new(&f.store, &f.config, Actor::operator("root", Channel::Cli));
    assert_eq!(
        root.open_recording("S-bob", "export").await.unwrap(),
        "S-bob"
    );
    assert!(matches!(
        root.open_recording("S-none", "play").await,
        Err(ControlError::NotFound(_))
    ));
    let evs = events(&f.store, EventType::RECORDING_ACCESS).await;
    let results: Vec<&str> = evs.iter().map(|e| e.result.as_str()).collect();
    assert_eq!(results, vec!["success", "denied", "success"]);
}

#[tokio::test]
async fn sources_are_blocked_and_unblocked_and_kills_need_a_running_session() {
    for f in both().await {
        let ops = Control::new(
            &f.store,
            &f.config,
            Actor::operator("alert", Channel::Alert),
        );
        ops.block_source("10.9.9.9", std::time::Duration::from_secs(600), "surge")
            .await
            .unwrap();
        assert!(f.store.source_blocked("10.9.9.9").await.unwrap().is_some());
        assert!(ops.unblock_source("10.9.9.9").await.unwrap());
        assert!(f.store.source_blocked("10.9.9.9").await.unwrap().is_none());
        assert!(ops
            .block_source("not-an-ip", std::time::Duration::from_secs(1), "x")
            .await
            .is_err());
        assert_eq!(events(&f.store, EventType::SOURCE_UNBLOCKED).await.len(), 1);
        assert!(matches!(
            ops.kill_session("S-none", "x").await,
            Err(ControlError::NotFound(_))
        ));
        start_session(&f.store, "bob", "S-live").await;
        ops.kill_session("S-live", "alert x").await.unwrap();
        assert_eq!(
            f.store.pending_kills().await.unwrap()[0].requested_by,
            "alert"
        );
    }
}

#[tokio::test]
async fn totp_enrolment_is_refused_twice_and_reset_removes_it() {
    let f = sqlite().await;
    let mut config = f.config.clone();
    config.auth.secrets_key = f._dir.path().join("secrets.key");
    let ops = Control::new(&f.store, &config, Actor::operator("root", Channel::Cli));
    let e = ops.enroll_totp("bob").await.unwrap();
    assert!(e.uri.starts_with("otpauth://totp/"), "{}", e.uri);
    assert!(ops
        .enroll_totp("bob")
        .await
        .unwrap_err()
        .to_string()
        .contains("already has"));
    assert!(ops.reset_totp("bob").await.unwrap());
    assert!(!ops.reset_totp("bob").await.unwrap());
    assert_eq!(events(&f.store, EventType::MFA_ENROLLED).await.len(), 1);
}

#[tokio::test]
async fn a_runbook_plans_then_applies_each_action_as_its_own_operation() {
    let f = sqlite().await;
    start_session(&f.store, "bob", "S-rb").await;
    let book = gatehouse_audit::Runbook::parse(
        r#"
name = "end-bob"
description = "end bob's sessions"
query = "SELECT session_id FROM sessions WHERE \"user\" = 'bob' AND end_time IS NULL"
actions = [{ kind = "kill_session", column = "session_id" }]
"#,
        "t.toml",
    )
    .unwrap();
    let ops = Control::new(&f.store, &f.config, Actor::operator("root", Channel::Cli));
    let plan = ops.plan_runbook(book, Default::default()).await.unwrap();
    assert_eq!(plan.actions.len(), 1);
    assert!(ops.run_runbook(&plan, false).await.unwrap().is_empty());
    assert!(f.store.pending_kills().await.unwrap().is_empty());
    let out = ops.run_runbook(&plan, true).await.unwrap();
    assert!(out[0].error.is_none(), "{out:?}");
    let kills = f.store.pending_kills().await.unwrap();
    assert_eq!(kills[0].requested_by, "runbook:end-bob");
    let req = &events(&f.store, EventType::SESSION_KILL_REQUESTED).await[0];
    assert_eq!(req.details["run_by"], "root");
    assert_eq!(events(&f.store, EventType::RUNBOOK_RUN).await.len(), 2);
}

fn web(name: &str) -> Actor {
    Actor {
        channel: Channel::Web,
        session_id: None,
        ..Actor::user_in_session(name, "-", Some("192.0.2.7"))
    }
}

#[tokio::test]
async fn web_users_act_only_within_their_console_permissions() {
    let f = sqlite().await;
    start_session(&f.store, "bob", "S-bob").await;
    let carol = Control::new(&f.store, &f.config, web("carol"));
    // Another user's session is invisible, so it cannot be killed either.
    let e = carol.kill_session("S-bob", "x").await.unwrap_err();
    assert!(matches!(e, ControlError::NotFound(_)), "{e}");
    let e = carol.lock_user("bob", "x", None).await.unwrap_err();
    assert!(e.to_string().contains("\"users\""), "{e}");
    assert!(f.store.user_lock("bob").await.unwrap().is_none());
    // Bob sees his own session but holds no kill permission.
    let bob = Control::new(&f.store, &f.config, web("bob"));
    let e = bob.kill_session("S-bob", "x").await.unwrap_err();
    assert!(e.to_string().contains("\"kill\""), "{e}");
    // Wendy's role shows sessions on web01 and lets her watch and kill.
    let wendy = Control::new(&f.store, &f.config, web("wendy"));
    assert_eq!(
        wendy.open_recording("S-bob", "watch").await.unwrap(),
        "S-bob"
    );
    wendy.kill_session("S-bob", "seen enough").await.unwrap();
    let ev = &events(&f.store, EventType::SESSION_KILL_REQUESTED).await[0];
    assert_eq!(ev.details["channel"], "web");
    assert_eq!(ev.details["by"], "wendy");
    // Bob may replay but not watch live without the permission.
    let e = bob.open_recording("S-bob", "watch").await.unwrap_err();
    assert!(matches!(e, ControlError::Refused(_)), "{e}");
}
