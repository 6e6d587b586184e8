//! Single sign-on state: SSH keys bound to the identity that signed in
//! with them at an identity provider, until the binding expires
//! (`sso_session`). The caller seals the refresh token before it gets
//! here, as it does TOTP secrets.

use crate::{Store, StoreError};

/// A key bound to an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsoKey {
    /// `SHA256:…` of the SSH key.
    pub key_fingerprint: String,
    /// The Gatehouse user name the identity has.
    pub user: String,
    /// The provider's `name` in the config.
    pub provider: String,
    /// The provider's `sub`.
    pub subject: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    /// The provider reported more than one factor.
    pub mfa: bool,
    /// The refresh token, sealed; None when the provider gave none.
    pub refresh_sealed: Option<String>,
    /// RFC 3339 times.
    pub bound_at: String,
    pub expires_at: String,
    /// When the provider last confirmed the identity.
    pub checked_at: String,
}

type Row = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    String,
    String,
);

const COLUMNS: &str = "key_fingerprint, user_name, provider, subject, identity, refresh_sealed, bound_at, expires_at, checked_at";

fn now() -> String {
    gatehouse_model::event::format_time(chrono::Utc::now())
}

fn identity_json(k: &SsoKey) -> String {
    serde_json::json!({"email": k.email, "groups": k.groups, "mfa": k.mfa}).to_string()
}

fn from_row(r: Row) -> SsoKey {
    let identity: serde_json::Value = serde_json::from_str(&r.4).unwrap_or_default();
    SsoKey {
        key_fingerprint: r.0,
        user: r.1,
        provider: r.2,
        subject: r.3,
        email: identity["email"].as_str().map(String::from),
        groups: identity["groups"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|g| g.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
        mfa: identity["mfa"].as_bool().unwrap_or(false),
        refresh_sealed: r.5,
        bound_at: r.6,
        expires_at: r.7,
        checked_at: r.8,
    }
}

impl Store {
    /// Binds a key (replacing what it was bound to).
    pub async fn bind_sso_key(&self, k: &SsoKey) -> Result<(), StoreError> {
        exec!(
            self,
            "INSERT INTO sso_keys (key_fingerprint, user_name, provider, subject, identity, refresh_sealed, bound_at, expires_at, checked_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (key_fingerprint) DO UPDATE SET user_name = excluded.user_name, provider = excluded.provider,
             subject = excluded.subject, identity = excluded.identity, refresh_sealed = excluded.refresh_sealed,
             bound_at = excluded.bound_at, expires_at = excluded.expires_at, checked_at = excluded.checked_at",
            k.key_fingerprint.clone(),
            k.user.clone(),
            k.provider.clone(),
            k.subject.clone(),
            identity_json(k),
            k.refresh_sealed.clone(),
            k.bound_at.clone(),
            k.expires_at.clone(),
            k.checked_at.clone()
        );
        Ok(())
    }

    /// The binding of a key, if it has not expired.
    pub async fn sso_key(&self, fingerprint: &str) -> Result<Option<SsoKey>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM sso_keys WHERE key_fingerprint = ?1 AND expires_at > ?2"
        );
        let row = fetch_opt!(self, Row, &sql, fingerprint, now());
        Ok(row.map(from_row))
    }

    /// Records that the provider confirmed a binding again: the identity
    /// as it now is, and the refresh token it now goes by.
    pub async fn sso_key_checked(&self, k: &SsoKey) -> Result<bool, StoreError> {
        let n = exec!(
            self,
            "UPDATE sso_keys SET identity = ?1, refresh_sealed = ?2, checked_at = ?3 WHERE key_fingerprint = ?4 AND user_name = ?5",
            identity_json(k),
            k.refresh_sealed.clone(),
            k.checked_at.clone(),
            k.key_fingerprint.clone(),
            k.user.clone()
        );
        Ok(n == 1)
    }

    /// Ends a key's binding; false when it had none.
    pub async fn unbind_sso_key(&self, fingerprint: &str) -> Result<bool, StoreError> {
        let n = exec!(
            self,
            "DELETE FROM sso_keys WHERE key_fingerprint = ?1",
            fingerprint
        );
        Ok(n == 1)
    }

    /// The most recently confirmed unexpired binding of `user`: who the
    /// provider last said they are (for `policy explain` and the control
    /// layer, which know no other record of such a user).
    pub async fn sso_identity(&self, user: &str) -> Result<Option<SsoKey>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM sso_keys WHERE user_name = ?1 AND expires_at > ?2 ORDER BY checked_at DESC LIMIT 1"
        );
        let row = fetch_opt!(self, Row, &sql, user, now());
        Ok(row.map(from_row))
    }

    /// Ends every binding of `user`; how many there were.
    pub async fn unbind_sso_user(&self, user: &str) -> Result<u64, StoreError> {
        Ok(exec!(
            self,
            "DELETE FROM sso_keys WHERE user_name = ?1",
            user
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::{AssertSqlSafe, PgPool};

    fn key(fp: &str, user: &str, expires_at: &str, checked_at: &str) -> SsoKey {
        SsoKey {
            key_fingerprint: fp.into(),
            user: user.into(),
            provider: "corp".into(),
            subject: format!("sub-{user}"),
            email: Some(format!("{user}@example.com")),
            groups: vec!["ops".into(), "dev".into()],
            mfa: true,
            refresh_sealed: Some("sealed-1".into()),
            bound_at: "2020-01-01T00:00:00.000Z".into(),
            expires_at: expires_at.into(),
            checked_at: checked_at.into(),
        }
    }

    async fn bindings_live_until_they_expire(store: Store) {
        let later = "2999-01-01T00:00:00.000Z";
        let a = key("SHA256:a", "alice", later, "2020-01-01T00:00:01.000Z");
        store.bind_sso_key(&a).await.unwrap();
        assert_eq!(store.sso_key("SHA256:a").await.unwrap(), Some(a.clone()));
        assert_eq!(store.sso_key("SHA256:b").await.unwrap(), None);
        // Confirmed again: new groups and refresh token.
        let mut b = a.clone();
        b.groups = vec!["ops".into()];
        b.email = None;
        b.mfa = false;
        b.refresh_sealed = Some("sealed-2".into());
        b.checked_at = "2020-01-01T00:00:02.000Z".into();
        assert!(store.sso_key_checked(&b).await.unwrap());
        assert_eq!(store.sso_key("SHA256:a").await.unwrap(), Some(b.clone()));
        // A second key of alice, confirmed later, is who she is now.
        let mut c = key("SHA256:c", "alice", later, "2020-01-01T00:00:03.000Z");
        c.groups = vec!["admins".into()];
        store.bind_sso_key(&c).await.unwrap();
        assert_eq!(store.sso_identity("alice").await.unwrap(), Some(c.clone()));
        assert_eq!(store.sso_identity("bob").await.unwrap(), None);
        // Rebinding a key to another identity replaces it.
        let d = key("SHA256:a", "bob", later, "2020-01-01T00:00:04.000Z");
        store.bind_sso_key(&d).await.unwrap();
        assert_eq!(
            store.sso_key("SHA256:a").await.unwrap().unwrap().user,
            "bob"
        );
        // An update for the wrong user changes nothing.
        assert!(!store.sso_key_checked(&b).await.unwrap());
        // Expired: gone for every lookup.
        let e = key(
            "SHA256:e",
            "carol",
            "2000-01-01T00:00:00.000Z",
            "1999-01-01T00:00:00.000Z",
        );
        store.bind_sso_key(&e).await.unwrap();
        assert_eq!(store.sso_key("SHA256:e").await.unwrap(), None);
        assert_eq!(store.sso_identity("carol").await.unwrap(), None);
        assert!(store.unbind_sso_key("SHA256:a").await.unwrap());
        assert!(!store.unbind_sso_key("SHA256:a").await.unwrap());
        assert_eq!(store.unbind_sso_user("alice").await.unwrap(), 1);
        assert_eq!(store.sso_identity("alice").await.unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/audit.db", dir.path().display());
        bindings_live_until_they_expire(Store::open(&url).await.unwrap()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let admin = PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 (user postgres, trust)");
        let name = format!("gh_sso_{}", ulid::Ulid::new().to_string().to_lowercase());
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .unwrap();
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        let store = Store::open(&url).await.unwrap();
        bindings_live_until_they_expire(store.clone()).await;
        store.close().await;
        let _ = sqlx::query(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&admin)
        .await;
    }
}
