//! The OpenID Connect client against a real provider (oidc-provider, run
//! by `tests/oidc/provider.mjs`): the device authorization grant through
//! the provider's own sign-in pages, RS256 and ES256 ID tokens, refresh,
//! a removed user, and the tokens Gatehouse must refuse.

use std::time::{Duration, Instant};

use gatehouse_model::{Dur, IdentityProvider, IdentityProviderKind};
use gatehouse_oidc::{OidcError, Provider, TokenError};
use gatehouse_testkit::oidc::{Account, OidcClient, OidcOptions, OidcProvider};

fn config(issuer: &str, client: &str, secret: &str) -> IdentityProvider {
    IdentityProvider {
        name: "corp".into(),
        kind: IdentityProviderKind::Oidc,
        issuer: issuer.into(),
        client_id: client.into(),
        client_secret: Some(secret.into()),
        client_secret_env: None,
        scopes: ["openid", "profile", "email", "groups", "offline_access"]
            .map(String::from)
            .to_vec(),
        user_claim: "preferred_username".into(),
        groups_claim: "groups".into(),
        role_map: Default::default(),
        allowed_domains: vec![],
        sso_session: Dur::hours(12),
        ca_file: None,
    }
}

fn alice() -> Account {
    Account {
        password: "correct horse".into(),
        email: "alice@example.com".into(),
        groups: vec!["ops".into(), "dev".into()],
    }
}

/// Starts a device sign-in, has "alice" sign in through the provider's
/// pages on another thread, and returns what the token endpoint gave.
async fn device_sign_in(
    op: &OidcProvider,
    client: &Provider,
) -> Result<gatehouse_oidc::TokenSet, OidcError> {
    let start = client.start_device().await?;
    assert!(
        start
            .verification_uri
            .starts_with(&format!("{}/device", op.issuer)),
        "{start:?}"
    );
    assert!(!start.user_code.is_empty());
    let url = start
        .verification_uri_complete
        .clone()
        .expect("oidc-provider gives verification_uri_complete");
    let signed_in = std::thread::scope(|s| {
        let person = s.spawn(|| op.sign_in(&url, "alice", "correct horse"));
        let tokens = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(client.wait_device(&start, Instant::now() + Duration::from_secs(60)))
        });
        let page = person.join().expect("sign-in thread");
        (tokens, page)
    });
    signed_in.1.expect("alice signs in at the provider");
    signed_in.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_sign_in_names_the_person_and_refresh_follows_the_provider() {
    for alg in ["RS256", "ES256"] {
        let mut client = OidcClient::new("gatehouse", "s3cret");
        client.alg = alg.into();
        let mut op = OidcProvider::start(&OidcOptions {
            clients: vec![client],
            ..Default::default()
        })
        .unwrap();
        op.set_account("alice", alice()).unwrap();
        let provider = Provider::new(&config(&op.issuer, "gatehouse", "s3cret")).unwrap();
        let tokens = device_sign_in(&op, &provider).await.unwrap();
        assert!(
            tokens.refresh_token.is_some(),
            "{alg}: offline_access gives a refresh token"
        );
        let id = provider.identity(&tokens, None, None).await.unwrap();
        assert_eq!(id.user, "alice", "{alg}");
        assert_eq!(id.subject, "alice");
        assert_eq!(id.provider, "corp");
        assert_eq!(id.email.as_deref(), Some("alice@example.com"));
        assert_eq!(id.groups, ["ops", "dev"]);
        assert_eq!(
            id.details(),
            serde_json::json!({"provider": "corp", "subject": "alice", "email": "alice@example.com", "groups": ["ops", "dev"]})
        );

        // Groups change at the provider: a refresh brings them.
        let mut changed = alice();
        changed.groups = vec!["ops".into()];
        op.set_account("alice", changed).unwrap();
        let refresh = tokens.refresh_token.clone().unwrap();
        let again = provider.refresh(&refresh).await.unwrap();
        let id2 = provider
            .identity(&again, None, Some("alice"))
            .await
            .unwrap();
        assert_eq!(id2.groups, ["ops"], "{alg}");
        // The provider rotates refresh tokens: the old one is spent.
        let rotated = again.refresh_token.clone().unwrap();
        assert_ne!(rotated, refresh);

        // Removed at the provider: the refresh is refused, for good.
        op.remove_account("alice").unwrap();
        let e = provider.refresh(&rotated).await.unwrap_err();
        assert!(
            matches!(&e, OidcError::OAuth { error, .. } if error == "invalid_grant"),
            "{alg}: {e}"
        );
        assert!(e.is_refusal());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_client_is_refused() {
    // A provider that serves what "gatehouse" asks as client "other":
    // its genuine, well-signed ID token names the wrong audience.
    let mut op = OidcProvider::start(&OidcOptions {
        clients: vec![
            OidcClient::new("gatehouse", "s3cret"),
            OidcClient::new("other", "0ther"),
        ],
        client_mixup: Some(("gatehouse".into(), "other".into(), "0ther".into())),
        ..Default::default()
    })
    .unwrap();
    op.set_account("alice", alice()).unwrap();
    let provider = Provider::new(&config(&op.issuer, "gatehouse", "s3cret")).unwrap();
    let tokens = device_sign_in(&op, &provider).await.unwrap();
    let e = provider.identity(&tokens, None, None).await.unwrap_err();
    match &e {
        OidcError::Token(TokenError::Audience { got, want }) => {
            assert_eq!(want, "gatehouse");
            assert!(got.contains("other"), "{got}");
        }
        other => panic!("expected a wrong audience, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_id_token_is_refused() {
    // The provider's clock is 15 minutes slow and its ID tokens live 5:
    // what it issues has expired by the time the gateway reads it.
    let mut op = OidcProvider::start(&OidcOptions {
        clients: vec![OidcClient::new("gatehouse", "s3cret")],
        clock_skew_seconds: -900,
        ..Default::default()
    })
    .unwrap();
    op.set_account("alice", alice()).unwrap();
    let provider = Provider::new(&config(&op.issuer, "gatehouse", "s3cret")).unwrap();
    let tokens = device_sign_in(&op, &provider).await.unwrap();
    let e = provider.identity(&tokens, None, None).await.unwrap_err();
    assert!(
        matches!(e, OidcError::Token(TokenError::Expired { .. })),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuer_and_the_email_domain_are_checked() {
    let mut op = OidcProvider::start(&OidcOptions {
        clients: vec![OidcClient::new("gatehouse", "s3cret")],
        ..Default::default()
    })
    .unwrap();
    op.set_account("alice", alice()).unwrap();
    // The discovery document must name the configured issuer exactly.
    let elsewhere = op.issuer.replace("127.0.0.1", "localhost");
    let e = Provider::new(&config(&elsewhere, "gatehouse", "s3cret"))
        .unwrap()
        .start_device()
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("names issuer") && e.to_string().contains(&op.issuer),
        "{e}"
    );
    // A wrong secret: the provider refuses the client.
    let e = Provider::new(&config(&op.issuer, "gatehouse", "wrong"))
        .unwrap()
        .start_device()
        .await
        .unwrap_err();
    assert!(
        matches!(&e, OidcError::OAuth { error, .. } if error == "invalid_client"),
        "{e}"
    );
    // allowed_domains: a verified address elsewhere is refused.
    let mut c = config(&op.issuer, "gatehouse", "s3cret");
    c.allowed_domains = vec!["corp.example".into()];
    let provider = Provider::new(&c).unwrap();
    let tokens = device_sign_in(&op, &provider).await.unwrap();
    let e = provider.identity(&tokens, None, None).await.unwrap_err();
    assert!(
        matches!(&e, OidcError::Identity(m) if m.contains("alice@example.com") && m.contains("corp.example")),
        "{e}"
    );
}
