//! API tokens through the control layer, on SQLite and PostgreSQL
//! (127.0.0.1:5432, user postgres): shown once and stored as a hash,
//! audited before they exist or stop working, and a Gatehouse user
//! manages only their own.

use std::future::Future;
use std::pin::Pin;

use gatehouse_model::{Config, EventType, NewEvent};
use gatehouse_store::{token_hash, Store};

use crate::{Actor, Channel, Control, ControlError, Trail};

const CONFIG: &str = r#"
[server]
node = "n1"

[[users]]
name = "bob"
keys = ["ssh-ed25519 AAAA bob"]

[[users]]
name = "carol"
keys = ["ssh-ed25519 AAAA carol"]
"#;

struct Fixture {
    store: Store,
    config: Config,
    _dir: tempfile::TempDir,
}

async fn fixture(postgres: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(CONFIG, &dir.path().join("gatehouse.toml")).expect("config");
    let url = if postgres {
        let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
            .await
            .unwrap_or_else(|e| {
                panic!("PostgreSQL must run on 127.0.0.1:5432 (user postgres, trust auth): {e}")
            });
        let name = format!("gh_tok_{}", ulid::Ulid::new().to_string().to_lowercase());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        format!("postgres://postgres@127.0.0.1:5432/{name}")
    } else {
        format!("sqlite://{}/audit.db", dir.path().display())
    };
    Fixture {
        store: Store::open(&url).await.unwrap(),
        config,
        _dir: dir,
    }
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

#[tokio::test]
async fn a_token_is_shown_once_stored_as_its_hash_and_revoked() {
    for pg in [false, true] {
        let f = fixture(pg).await;
        let root = Control::new(&f.store, &f.config, Actor::operator("root", Channel::Cli));
        let made = root.create_token("bob", "ci").await.unwrap();
        let hex = made.token.strip_prefix("ghp_").expect("ghp_ prefix");
        assert_eq!(hex.len(), 64);
        assert!(hex
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        let stored = f
            .store
            .api_token_by_hash(&token_hash(&made.token))
            .await
            .unwrap()
            .expect("found by its hash");
        assert_eq!(
            (
                stored.id.as_str(),
                stored.user.as_str(),
                stored.name.as_str()
            ),
            (made.id.as_str(), "bob", "ci")
        );
        assert_eq!(stored.created_by, "root");
        assert_ne!(stored.token_hash, made.token);
        let other = root.create_token("bob", "ci").await.unwrap();
        assert_ne!(other.token, made.token);

        let created = events(&f.store, EventType::TOKEN_CREATED).await;
        assert_eq!(created.len(), 2);
        assert_eq!(created[0].user.as_deref(), Some("bob"));
        assert_eq!(created[0].details["name"], "ci");
        assert_eq!(created[0].details["by"], "root");
        assert_eq!(created[0].details["channel"], "cli");
        let text = serde_json::to_string(&created).unwrap();
        assert!(!text.contains(hex), "the token is not in the trail");

        assert_eq!(root.tokens(Some("bob")).await.unwrap().len(), 2);
        assert!(root.tokens(Some("carol")).await.unwrap().is_empty());
        assert!(root.revoke_token(&made.id).await.unwrap());
        assert!(!root.revoke_token(&made.id).await.unwrap());
        assert!(f
            .store
            .api_token_by_hash(&token_hash(&made.token))
            .await
            .unwrap()
            .is_none());
        let revoked = events(&f.store, EventType::TOKEN_REVOKED).await;
        assert_eq!(revoked.len(), 2);
        assert_eq!(revoked[0].details["token_id"], made.id.as_str());
        assert!(matches!(
            root.revoke_token("01NOSUCHTOKEN").await,
            Err(ControlError::NotFound(_))
        ));
        let e = root.create_token("mallory", "x").await.unwrap_err();
        assert!(matches!(e, ControlError::NotFound(_)), "{e}");
        assert_eq!(events(&f.store, EventType::TOKEN_CREATED).await.len(), 2);
    }
}

#[tokio::test]
async fn a_user_manages_only_their_own_tokens() {
    let f = fixture(false).await;
    let root = Control::new(&f.store, &f.config, Actor::operator("root", Channel::Cli));
    let carols = root.create_token("carol", "laptop").await.unwrap();
    let bob = Control::new(
        &f.store,
        &f.config,
        Actor::user_in_session("bob", "S-bob", Some("10.0.0.2")),
    );
    let own = bob.create_token("bob", "script").await.unwrap();
    let e = bob.create_token("carol", "sneaky").await.unwrap_err();
    assert!(matches!(e, ControlError::Refused(_)), "{e}");
    let listed = bob.tokens(Some("carol")).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, own.id);
    let e = bob.revoke_token(&carols.id).await.unwrap_err();
    assert!(matches!(e, ControlError::Refused(_)), "{e}");
    assert!(f
        .store
        .api_token_by_hash(&token_hash(&carols.token))
        .await
        .unwrap()
        .is_some());
    assert!(bob.revoke_token(&own.id).await.unwrap());
    let revoked = events(&f.store, EventType::TOKEN_REVOKED).await;
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].details["by"], "bob");
    assert_eq!(revoked[0].details["by_session"], "S-bob");
    assert_eq!(events(&f.store, EventType::TOKEN_CREATED).await.len(), 2);
}

/// A trail that refuses every write.
struct Broken;

impl Trail for Broken {
    fn write<'a>(
        &'a self,
        _event: NewEvent,
    ) -> Pin<Box<dyn Future<Output = std::result::Result<(), String>> + Send + 'a>> {
        Box::pin(async { Err("disk full".to_string()) })
    }
}

#[tokio::test]
async fn no_token_is_made_or_revoked_unaudited() {
    let f = fixture(false).await;
    let root = Control::new(&f.store, &f.config, Actor::operator("root", Channel::Cli));
    let kept = root.create_token("bob", "ci").await.unwrap();
    let broken = Control::with_trail(
        &f.store,
        &Broken,
        &f.config,
        Actor::operator("root", Channel::Cli),
    );
    let e = broken.create_token("bob", "more").await.unwrap_err();
    assert!(matches!(e, ControlError::Audit(_)), "{e}");
    let e = broken.revoke_token(&kept.id).await.unwrap_err();
    assert!(matches!(e, ControlError::Audit(_)), "{e}");
    let left = f.store.api_tokens(None).await.unwrap();
    assert_eq!(left.len(), 1);
    assert!(left[0].revoked_at.is_none());
}
