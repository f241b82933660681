//! The OIDC provider client (`portcullis::identity::oidc`) against a real OpenID provider
//! (oidc-provider 9 from npm, `tests/oidc`): discovery, JWKS caching, key rotation, the
//! unknown-`kid` refetch limits, and behaviour while the provider is down.
//!
//! Skipped with a message when Node or `tests/oidc/node_modules` is missing, unless
//! `PORTCULLIS_REQUIRE_PRIVILEGED=1` or `CI` is set (then it fails).

use std::time::{Duration, Instant};

use base64::Engine as _;
use portcullis::identity::jwt::{Algorithm, JwtError, ValidationPolicy};
use portcullis::identity::oidc::{OidcConfig, OidcError, OidcProvider as Client, Readiness};
use portcullis_tests::oidc::{self, ES256_CLIENT, OidcProvider, RESOURCE, RS256_CLIENT};

fn policy(issuer: &str) -> ValidationPolicy {
    let mut p = ValidationPolicy::new(issuer, vec![RESOURCE.to_owned()]);
    p.require_typ = Some("at+jwt".to_owned());
    p
}

async fn loaded_client(provider: &OidcProvider) -> Client {
    let client = Client::new(OidcConfig::new(provider.issuer())).expect("loopback issuer");
    assert_eq!(client.readiness(), Readiness::NotReady);
    client.refresh().await.expect("discovery and JWKS");
    assert_eq!(client.readiness(), Readiness::Ready);
    client
}

/// `token` with its header replaced (payload kept, signature garbage).
fn forge(token: &str, header: &serde_json::Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = token.split('.').nth(1).expect("three segments");
    format!(
        "{}.{payload}.{}",
        b64.encode(header.to_string()),
        b64.encode([7u8; 64])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_and_es256_tokens_validate_with_discovered_keys() {
    if !oidc::available("oidc rs256/es256") {
        return;
    }
    let provider = OidcProvider::start();
    let client = loaded_client(&provider).await;
    assert_eq!(client.keys().len(), 2);
    for (name, alg, roles) in [
        (RS256_CLIENT, Algorithm::RS256, vec!["API.Read"]),
        (
            ES256_CLIENT,
            Algorithm::ES256,
            vec!["API.Read", "API.Write"],
        ),
    ] {
        let token = provider.token(name);
        let claims = client
            .validate(&token, &policy(provider.issuer()))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(claims.header().alg, alg);
        assert_eq!(claims.client_id(), Some(name));
        assert_eq!(claims.audiences(), vec![RESOURCE]);
        let got: Vec<&str> = claims
            .get("roles")
            .and_then(|r| r.as_array())
            .map_or_else(Vec::new, |a| a.iter().filter_map(|v| v.as_str()).collect());
        assert_eq!(got, roles);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_audience_and_issuer_are_refused() {
    if !oidc::available("oidc wrong audience") {
        return;
    }
    let provider = OidcProvider::start();
    let client = loaded_client(&provider).await;
    let token = provider.token(RS256_CLIENT);
    let mut p = policy(provider.issuer());
    p.audiences = vec!["https://other.portcullis.test".to_owned()];
    assert_eq!(
        client.validate(&token, &p).await.unwrap_err(),
        OidcError::Jwt(JwtError::WrongAudience)
    );
    // A configured issuer that differs from the discovered one (here by a trailing slash) is
    // refused at discovery.
    let slash = Client::new(OidcConfig::new(format!("{}/", provider.issuer()))).unwrap();
    assert!(matches!(
        slash.refresh().await,
        Err(OidcError::IssuerMismatch { .. })
    ));
    assert_eq!(slash.readiness(), Readiness::NotReady);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_key_is_fetched_on_unknown_kid() {
    if !oidc::available("oidc rotation") {
        return;
    }
    let provider = OidcProvider::start();
    let client = loaded_client(&provider).await;
    let before = client.fetch_count();
    let old = provider.token(RS256_CLIENT);
    let kids = provider.rotate();
    let token = provider.token(RS256_CLIENT);
    let started = Instant::now();
    let claims = client
        .validate(&token, &policy(provider.issuer()))
        .await
        .expect("token signed with the rotated key");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        kids.iter()
            .any(|k| claims.header().kid.as_deref() == Some(k))
    );
    assert_eq!(client.fetch_count(), before + 1);
    // The previous generation is still published, so older tokens keep validating.
    client
        .validate(&old, &policy(provider.issuer()))
        .await
        .expect("token signed with the previous key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kids_refetch_at_most_once_per_window() {
    if !oidc::available("oidc random kids") {
        return;
    }
    let provider = OidcProvider::start();
    let client = loaded_client(&provider).await;
    let before = client.fetch_count();
    let token = provider.token(RS256_CLIENT);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64 {
        let forged = forge(
            &token,
            &serde_json::json!({"alg": "RS256", "typ": "at+jwt", "kid": format!("random-{i}")}),
        );
        let (client, policy) = (client.clone(), policy(provider.issuer()));
        tasks.spawn(async move { client.validate(&forged, &policy).await });
    }
    while let Some(result) = tasks.join_next().await {
        assert_eq!(
            result.expect("task"),
            Err(OidcError::Jwt(JwtError::UnknownKid))
        );
    }
    // A second burst inside the same 10 s window fetches nothing more.
    for i in 0..16 {
        let forged = forge(
            &token,
            &serde_json::json!({"alg": "RS256", "typ": "at+jwt", "kid": format!("again-{i}")}),
        );
        assert_eq!(
            client.validate(&forged, &policy(provider.issuer())).await,
            Err(OidcError::Jwt(JwtError::UnknownKid))
        );
    }
    let fetched = client.fetch_count() - before;
    assert!(fetched <= 1, "{fetched} JWKS fetches for random kids");
    // Known kid with a garbage signature: refused without any fetch.
    let kid = client.keys().keys()[0].kid().map(str::to_owned);
    let forged = forge(
        &token,
        &serde_json::json!({"alg": "RS256", "typ": "at+jwt", "kid": kid}),
    );
    assert_eq!(
        client.validate(&forged, &policy(provider.issuer())).await,
        Err(OidcError::Jwt(JwtError::BadSignature))
    );
    assert_eq!(client.fetch_count() - before, fetched);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_keys_serve_while_provider_is_down() {
    if !oidc::available("oidc provider down") {
        return;
    }
    let mut provider = OidcProvider::start();
    let client = loaded_client(&provider).await;
    let token = provider.token(ES256_CLIENT);
    let issuer = provider.issuer().to_owned();
    provider.kill();
    assert!(client.refresh().await.is_err(), "provider is gone");
    assert_eq!(client.readiness(), Readiness::Ready);
    client
        .validate(&token, &policy(&issuer))
        .await
        .expect("cached keys still validate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_provider_comes_up() {
    if !oidc::available("oidc start-up while down") {
        return;
    }
    let port = oidc::free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let mut config = OidcConfig::new(&issuer);
    config.retry_interval = Duration::from_millis(100);
    let client = Client::new(config).unwrap();
    let timer = client.spawn_refresh();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(client.readiness(), Readiness::NotReady);
    assert_eq!(
        client.validate("a.b.c", &policy(&issuer)).await,
        Err(OidcError::NotReady)
    );

    let provider = OidcProvider::start_on(port);
    assert_eq!(provider.issuer(), issuer);
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.readiness() == Readiness::NotReady {
        assert!(Instant::now() < deadline, "still not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = provider.token(RS256_CLIENT);
    client
        .validate(&token, &policy(&issuer))
        .await
        .expect("valid once keys loaded");
    timer.abort();
}
