//! mTLS tests: the client-certificate verifier (`portcullis::identity::mtls::client_verifier`)
//! through real TLS handshakes, the certificate facts read from the peer certificate, the
//! per-route rules, RFC 8705 `cnf.x5t#S256` matching, and the x509-limbo cases that apply to
//! client certificates (tier A of `limbo-index.json`).
//!
//! The server stands in for a TLS listener: tokio-rustls with a `ServerConfig` built like
//! `portcullis::proxy::tls::server_config` (same `crypto_provider()`, TLS 1.3 and 1.2) but with
//! our verifier via `.with_client_cert_verifier(...)`. Once mTLS is wired into the config, the
//! listener will call the same `client_verifier` from `server_config`'s private hook, so these
//! handshakes exercise the code it will run. Certificates come from the generated test PKI.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use portcullis::identity::mtls::{
    CertFacts, CertRule, ClientAuth, RevocationPolicy, cert_facts, client_verifier,
    client_verifier_with, cnf_matches, forwarded_headers,
};
use portcullis::proxy::tls::crypto_provider;
use portcullis_tests::pki::{Leaf, TestPki, hex, sha256};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const STEP: Duration = Duration::from_secs(10);
const VERSIONS: [&rustls::SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

/// What the server saw of one connection: the client's chain (empty: no certificate), or why
/// the handshake failed.
type Outcome = Result<Vec<CertificateDer<'static>>, String>;

/// A listener-like server config: our provider and versions, `verifier` for client
/// certificates, `server` as the server's certificate.
fn server_config(verifier: Arc<dyn ClientCertVerifier>, server: &Leaf) -> Arc<ServerConfig> {
    Arc::new(
        ServerConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&VERSIONS)
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(server.chain(), server.private_key())
            .expect("server certificate"),
    )
}

/// A client trusting `roots`, presenting `identity` (chain and key) if any.
fn client_config(
    roots: Arc<RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Arc<ClientConfig> {
    try_client_config(roots, identity).expect("client identity")
}

/// [`client_config`], reporting a key rustls cannot load (or that does not fit the
/// certificate) instead of panicking.
fn try_client_config(
    roots: Arc<RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let builder = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&VERSIONS)
        .expect("versions")
        .with_root_certificates(roots);
    Ok(Arc::new(match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    }))
}

/// One connection: the server accepts one handshake and reports the client's chain; the client
/// connects, sends a line and reads until the server closes (in TLS 1.3 the client learns
/// about a refused certificate only after its own handshake finished, so its result is not
/// the one that counts).
async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let acceptor = TlsAcceptor::from(server);
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = timeout(STEP, acceptor.accept(tcp))
            .await
            .map_err(|_| "server handshake timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let chain = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        let _ = tls.write_all(b"ok\n").await;
        let _ = tls.shutdown().await;
        Ok::<_, String>(chain)
    });
    let client_side = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").expect("name");
        let mut tls = TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"hello\n").await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(buf)
    };
    let _ = timeout(STEP, client_side).await;
    timeout(STEP, server_side)
        .await
        .expect("server timed out")
        .expect("server task")
}

fn identity(leaf: &Leaf) -> Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    Some((leaf.chain(), leaf.private_key()))
}

#[tokio::test]
async fn required_mode_accepts_only_valid_unrevoked_certificates() {
    let pki = TestPki::new("required");
    let other = TestPki::new("other");
    let server = pki.server(&["localhost"]);
    let good = pki.client("good", &[]);
    let revoked = pki.client("revoked", &[]);
    let stranger = other.client("stranger", &[]);
    let crl = pki.crl(&[&revoked]);
    let verifier = client_verifier(ClientAuth::Required, pki.roots(), vec![crl])
        .expect("verifier")
        .expect("some verifier");
    let config = server_config(verifier, &server);
    let roots = pki.roots();

    let ok = handshake(
        config.clone(),
        client_config(roots.clone(), identity(&good)),
    )
    .await;
    assert_eq!(ok.expect("valid certificate accepted")[0], good.cert);

    let none = handshake(config.clone(), client_config(roots.clone(), None)).await;
    assert!(none.is_err(), "no certificate must be refused: {none:?}");

    let foreign = handshake(
        config.clone(),
        client_config(roots.clone(), identity(&stranger)),
    )
    .await;
    assert!(foreign.is_err(), "another CA must be refused: {foreign:?}");

    let rev = handshake(
        config.clone(),
        client_config(roots.clone(), identity(&revoked)),
    )
    .await;
    let err = rev.expect_err("revoked certificate must be refused");
    assert!(err.to_lowercase().contains("revoked"), "{err}");
}

#[tokio::test]
async fn optional_mode_accepts_no_certificate_but_refuses_bad_ones() {
    let pki = TestPki::new("optional");
    let other = TestPki::new("other-optional");
    let server = pki.server(&["localhost"]);
    let good = pki.client("good", &[]);
    let revoked = pki.client("revoked", &[]);
    let stranger = other.client("stranger", &[]);
    let verifier = client_verifier(
        ClientAuth::Optional,
        pki.roots(),
        vec![pki.crl(&[&revoked])],
    )
    .expect("verifier")
    .expect("some verifier");
    let config = server_config(verifier, &server);
    let roots = pki.roots();

    let anonymous = handshake(config.clone(), client_config(roots.clone(), None)).await;
    assert_eq!(anonymous.expect("no certificate is fine"), Vec::new());
    let ok = handshake(
        config.clone(),
        client_config(roots.clone(), identity(&good)),
    )
    .await;
    assert_eq!(ok.expect("valid certificate")[0], good.cert);
    let foreign = handshake(
        config.clone(),
        client_config(roots.clone(), identity(&stranger)),
    )
    .await;
    assert!(foreign.is_err(), "{foreign:?}");
    let rev = handshake(config, client_config(roots, identity(&revoked))).await;
    assert!(rev.is_err(), "{rev:?}");
}

#[tokio::test]
async fn unknown_revocation_status_is_denied_unless_allowed() {
    // CRLs are configured, but none from the client's CA: its status is unknown.
    let pki = TestPki::new("unknown");
    let other = TestPki::new("crl-elsewhere");
    let server = pki.server(&["localhost"]);
    let good = pki.client("good", &[]);
    let crls = vec![other.crl(&[])];
    let strict = client_verifier(ClientAuth::Required, pki.roots(), crls.clone())
        .unwrap()
        .unwrap();
    let client = client_config(pki.roots(), identity(&good));
    let denied = handshake(server_config(strict, &server), client.clone()).await;
    assert!(denied.is_err(), "unknown status must be denied: {denied:?}");

    let lenient = client_verifier_with(
        ClientAuth::Required,
        pki.roots(),
        crls,
        RevocationPolicy {
            allow_unknown_status: true,
            ..RevocationPolicy::default()
        },
    )
    .unwrap()
    .unwrap();
    let allowed = handshake(server_config(lenient, &server), client).await;
    assert!(allowed.is_ok(), "{allowed:?}");
}

#[test]
fn none_mode_builds_no_verifier() {
    let pki = TestPki::new("none");
    assert!(
        client_verifier(ClientAuth::None, pki.roots(), Vec::new())
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn facts_of_the_peer_certificate_match_what_was_issued() {
    let pki = TestPki::new("facts");
    let server = pki.server(&["localhost"]);
    let leaf = pki.client("alice", &["alice.example.com", "svc.example.net"]);
    let verifier = client_verifier(ClientAuth::Required, pki.roots(), Vec::new())
        .unwrap()
        .unwrap();
    let chain = handshake(
        server_config(verifier, &server),
        client_config(pki.roots(), identity(&leaf)),
    )
    .await
    .expect("handshake");
    let facts = cert_facts(&chain[0]).expect("facts");
    assert_eq!(facts.sha256_thumbprint, hex(&sha256(leaf.cert.as_ref())));
    // rcgen writes CN then O; RFC 4514 lists the most significant (last) RDN first.
    assert_eq!(facts.subject, "O=Portcullis tests (facts),CN=alice");
    assert_eq!(
        facts.issuer,
        "O=Portcullis tests,CN=Portcullis Test CA facts"
    );
    assert_eq!(facts.dns_sans, ["alice.example.com", "svc.example.net"]);
    assert!(facts.uri_sans.is_empty());
    let days = facts
        .not_after
        .duration_since(std::time::SystemTime::now())
        .expect("in the future")
        .as_secs()
        / 86_400;
    assert!((87..=89).contains(&days), "{days}");

    let headers = forwarded_headers(&facts);
    let get = |n: &str| {
        headers
            .iter()
            .find(|(name, _)| name.as_str() == n)
            .map(|(_, v)| v.to_str().unwrap().to_owned())
    };
    assert_eq!(
        get("x-client-cert-thumbprint").as_deref(),
        Some(facts.sha256_thumbprint.as_str())
    );
    assert_eq!(
        get("x-client-cert-subject").as_deref(),
        Some("O=Portcullis tests (facts),CN=alice")
    );
    assert_eq!(
        get("x-client-cert-san-dns").as_deref(),
        Some("alice.example.com,svc.example.net")
    );
    assert_eq!(get("x-client-cert-san-uri"), None);
}

fn sample_facts() -> CertFacts {
    CertFacts {
        sha256_thumbprint: hex(&sha256(b"certificate")),
        subject: "O=Example,CN=svc".into(),
        issuer: "O=Example,CN=Example CA".into(),
        dns_sans: vec!["svc.prod.example.com".into()],
        uri_sans: vec!["spiffe://example.org/ns/prod/sa/web".into()],
        not_after: std::time::SystemTime::now(),
    }
}

#[test]
fn rules_allow_deny_matrix() {
    let facts = sample_facts();
    let rule = |f: fn(&mut CertRule)| {
        let mut r = CertRule::default();
        f(&mut r);
        r
    };
    let thumb = facts.sha256_thumbprint.clone();
    let cases: Vec<(&str, CertRule, bool)> = vec![
        ("empty rule", CertRule::default(), true),
        (
            "thumbprint upper-case",
            CertRule {
                thumbprints: vec![thumb.to_uppercase()],
                ..Default::default()
            },
            true,
        ),
        (
            "other thumbprint",
            CertRule {
                thumbprints: vec!["00".repeat(32)],
                ..Default::default()
            },
            false,
        ),
        (
            "subject",
            rule(|r| r.subjects = vec!["O=Example,CN=svc".into()]),
            true,
        ),
        (
            "subject in other order",
            rule(|r| r.subjects = vec!["CN=svc,O=Example".into()]),
            false,
        ),
        (
            "issuer any of",
            rule(|r| r.issuers = vec!["CN=x".into(), "O=Example,CN=Example CA".into()]),
            true,
        ),
        (
            "dns wildcard one label",
            rule(|r| r.dns = vec!["*.prod.example.com".into()]),
            true,
        ),
        (
            "dns wildcard two labels",
            rule(|r| r.dns = vec!["*.example.com".into()]),
            false,
        ),
        (
            "dns exact case-insensitive",
            rule(|r| r.dns = vec!["SVC.prod.example.com".into()]),
            true,
        ),
        (
            "spiffe trust domain",
            rule(|r| r.uris = vec!["spiffe://example.org/".into()]),
            true,
        ),
        (
            "spiffe other domain",
            rule(|r| r.uris = vec!["spiffe://example.com/".into()]),
            false,
        ),
        (
            "spiffe domain without slash is exact",
            rule(|r| r.uris = vec!["spiffe://example.org".into()]),
            false,
        ),
        (
            "spiffe exact id",
            rule(|r| r.uris = vec!["spiffe://example.org/ns/prod/sa/web".into()]),
            true,
        ),
        (
            "AND across lists: one fails",
            rule(|r| {
                r.subjects = vec!["O=Example,CN=svc".into()];
                r.uris = vec!["spiffe://example.org/ns/dev/".into()];
            }),
            false,
        ),
        (
            "AND across lists: all match",
            rule(|r| {
                r.issuers = vec!["O=Example,CN=Example CA".into()];
                r.dns = vec!["*.prod.example.com".into()];
                r.uris = vec!["spiffe://example.org/ns/prod/".into()];
            }),
            true,
        ),
    ];
    for (name, rule, expected) in cases {
        assert_eq!(rule.allows(&facts), expected, "{name}");
    }
}

#[test]
fn cnf_x5t_s256_binding() {
    let pki = TestPki::new("cnf");
    let leaf = pki.client("bound", &[]);
    let other = pki.client("other", &[]);
    let facts = cert_facts(&leaf.cert).unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let good = b64.encode(sha256(leaf.cert.as_ref()));
    assert!(cnf_matches(&good, &facts));
    assert!(!cnf_matches(
        &b64.encode(sha256(other.cert.as_ref())),
        &facts
    ));
    let padded = base64::engine::general_purpose::URL_SAFE.encode(sha256(leaf.cert.as_ref()));
    assert!(!cnf_matches(&padded, &facts), "padding is not base64url");
    let std_alphabet =
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(sha256(leaf.cert.as_ref()));
    if std_alphabet != good {
        assert!(!cnf_matches(&std_alphabet, &facts));
    }
    assert!(
        !cnf_matches(&facts.sha256_thumbprint, &facts),
        "hex is not accepted"
    );
    assert!(!cnf_matches("", &facts));
}

// ---------------------------------------------------------------------------------------------
// x509-limbo, tier A ("direct client").

/// Cases where our verdict differs from limbo's expectation, with the verdict we give
/// (`true`: accepted) and why. The test fails if one of them changes, so this list stays true.
const DEVIATIONS: &[(&str, bool, &str)] = &[
    (
        "rfc5280::eku::ee-wrong-eku",
        true,
        "limbo validates as a server (serverAuth); the leaf's clientAuth-only EKU is exactly what a \
         client certificate needs",
    ),
    (
        "rfc5280::ca-as-leaf-wrong-san",
        true,
        "the failure is a server-name mismatch; a client has no expected name (routes check SANs \
         with CertRule)",
    ),
    (
        "webpki::eku::ee-without-eku",
        true,
        "a CA/B Forum rule for server certificates; rustls-webpki accepts a leaf without EKU \
         (RFC 5280 §4.2.1.12: absence means any purpose)",
    ),
    (
        "rfc5280::ca-as-leaf",
        false,
        "rustls-webpki refuses a CA certificate (cA=TRUE) as end entity, as limbo's own \
         webpki::ca-as-leaf expects",
    ),
    (
        "pathlen::validation-ignores-pathlen-in-leaf",
        false,
        "the leaf is a CA certificate (cA=TRUE, with a pathLen); rustls-webpki refuses a CA \
         certificate as end entity (CaUsedAsEndEntity), as limbo's webpki::ca-as-leaf expects",
    ),
    ("rfc5280::nc::nc-permits-email-exact", false, EMAIL_NC),
    ("rfc5280::nc::nc-permits-email-domain", false, EMAIL_NC),
    (
        "rfc5280::nc::nc-permits-email-literal-asterisk-exact-match",
        false,
        EMAIL_NC,
    ),
    (
        "rfc5280::nc::nc-permits-email-literal-double-asterisk",
        false,
        EMAIL_NC,
    ),
    (
        "rfc5280::nc::nc-permits-email-literal-mid-asterisk",
        false,
        EMAIL_NC,
    ),
];

const EMAIL_NC: &str = "rustls-webpki does not implement rfc822Name (email) name constraints and fails closed \
         (RFC 5280 §4.2.1.10 allows rejecting a name form it cannot process)";

fn testdata() -> PathBuf {
    std::env::var_os("PORTCULLIS_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/testdata"
            ))
        })
}

fn pem_certs(list: &serde_json::Value) -> Vec<CertificateDer<'static>> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|pem| {
            CertificateDer::from_pem_slice(pem.as_str().expect("PEM string").as_bytes())
                .expect("PEM certificate")
        })
        .collect()
}

/// `YYYY-MM-DDTHH:MM:SS+00:00` (limbo writes UTC) as a Unix time.
fn parse_time(s: &str) -> UnixTime {
    let n = |r: std::ops::Range<usize>| s[r].parse::<u32>().expect("digits");
    assert!(s.ends_with("+00:00") || s.ends_with('Z'), "{s}");
    let month = time::Month::try_from(n(5..7) as u8).expect("month");
    let date = time::Date::from_calendar_date(n(0..4) as i32, month, n(8..10) as u8).expect("date");
    let tod =
        time::Time::from_hms(n(11..13) as u8, n(14..16) as u8, n(17..19) as u8).expect("time");
    let ts = time::PrimitiveDateTime::new(date, tod)
        .assume_utc()
        .unix_timestamp();
    UnixTime::since_unix_epoch(Duration::from_secs(ts as u64))
}

#[tokio::test]
async fn x509_limbo_client_cases() {
    let dir = testdata().join("x509-limbo");
    let (Ok(index), Ok(limbo)) = (
        std::fs::read(dir.join("limbo-index.json")),
        std::fs::read(dir.join("limbo.json")),
    ) else {
        eprintln!("x509-limbo: {} not found, skipped", dir.display());
        return;
    };
    let index: serde_json::Value = serde_json::from_slice(&index).expect("index JSON");
    let limbo: serde_json::Value = serde_json::from_slice(&limbo).expect("limbo JSON");
    let cases = limbo["testcases"].as_array().expect("testcases");
    let server_pki = TestPki::new("limbo-server");
    let server_leaf = server_pki.server(&["localhost"]);

    let (mut passed, mut deviated, mut skipped, mut handshakes) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for entry in index.as_array().expect("index array") {
        if !entry["tier"].as_str().unwrap_or("").starts_with("A") {
            continue;
        }
        let id = entry["id"].as_str().expect("id");
        let case = cases
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("{id} missing from limbo.json"));
        let trusted = pem_certs(&case["trusted_certs"]);
        let intermediates = pem_certs(&case["untrusted_intermediates"]);
        let crls: Vec<_> = case["crls"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|pem| {
                rustls::pki_types::CertificateRevocationListDer::from_pem_slice(
                    pem.as_str().unwrap().as_bytes(),
                )
                .expect("PEM CRL")
            })
            .collect();
        let peer = CertificateDer::from_pem_slice(
            case["peer_certificate"].as_str().expect("peer").as_bytes(),
        )
        .expect("peer PEM");
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(trusted);
        if added == 0 || case["max_chain_depth"].is_number() {
            eprintln!("x509-limbo: {id}: skipped (no usable trust anchor or a depth limit)");
            skipped += 1;
            continue;
        }
        let Ok(Some(verifier)) = client_verifier(ClientAuth::Required, Arc::new(roots), crls)
        else {
            eprintln!("x509-limbo: {id}: skipped (verifier not built)");
            skipped += 1;
            continue;
        };
        let key = case["peer_certificate_key"]
            .as_str()
            .and_then(|pem| PrivateKeyDer::from_pem_slice(pem.as_bytes()).ok());
        // A real handshake when the case has the leaf's key (and rustls can load it) and no
        // fixed validation time; otherwise the verifier directly, at the case's time or now.
        let client = match (case["validation_time"].as_str(), key) {
            (None, Some(key)) => {
                let mut chain = vec![peer.clone()];
                chain.extend(intermediates.iter().cloned());
                try_client_config(server_pki.roots(), Some((chain, key))).ok()
            }
            _ => None,
        };
        let accepted = match client {
            Some(client) => {
                handshakes += 1;
                handshake(server_config(verifier, &server_leaf), client)
                    .await
                    .is_ok()
            }
            None => {
                let now = case["validation_time"]
                    .as_str()
                    .map(parse_time)
                    .unwrap_or_else(UnixTime::now);
                verifier
                    .verify_client_cert(&peer, &intermediates, now)
                    .is_ok()
            }
        };
        let expected = case["expected_result"] == "SUCCESS";
        if accepted == expected {
            passed += 1;
        } else if let Some((_, verdict, reason)) = DEVIATIONS.iter().find(|(d, ..)| *d == id) {
            assert_eq!(*verdict, accepted, "{id}: recorded deviation changed");
            eprintln!("x509-limbo: {id}: deviation ({reason})");
            deviated += 1;
        } else {
            failures.push(format!("{id}: expected {expected}, accepted {accepted}"));
        }
    }
    eprintln!(
        "x509-limbo tier A: {passed} passed, {deviated} documented deviations, {skipped} skipped, \
         {} failed ({handshakes} through real handshakes)",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(passed > 0, "no case ran");
}
