//! Client certificates (mTLS): the rustls verifier a TLS listener uses to ask for and check
//! client certificates, the facts the request path reads from a verified certificate, the
//! per-route allow rules over those facts, the headers that carry chosen facts to the backend,
//! and the RFC 8705 binding of access tokens to the certificate (`cnf.x5t#S256`).
//!
//! Wiring: `proxy::tls::server_config` builds the listener's verifier with
//! [`client_verifier_with`] for every config generation (so reloaded CA bundles and CRLs apply
//! to new handshakes; nothing here caches across reloads); the listener reads [`cert_facts`]
//! once per connection; the identity phase calls [`CertRule::allows`], [`cnf_matches`] and
//! [`forwarded_headers`] per request.
//!
//! See `docs/mtls.md` for the operator's view.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use x509_parser::asn1_rs::ToDer;
use x509_parser::der_parser::oid::Oid;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

use crate::proxy::tls::crypto_provider;

/// Whether a listener asks for client certificates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// No certificate is requested (the default): every route sees "no certificate".
    #[default]
    None,
    /// A certificate is requested; a client may send none and still connect (routes that need
    /// one then refuse with 403), but a certificate that is sent must verify, or the handshake
    /// fails. Lets one listener serve routes with and without mTLS.
    Optional,
    /// A valid certificate is required to complete the handshake.
    Required,
}

/// How revocation is checked when CRLs are configured. The [`Default`] is the strict one; each
/// field is an explicit opt-out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevocationPolicy {
    /// Check only the client's own certificate, not the intermediates above it. Default
    /// `false`: the whole chain is checked (rustls's `RevocationCheckDepth::Chain`), because a
    /// revoked intermediate CA is exactly the compromise CRLs exist to contain.
    pub end_entity_only: bool,
    /// Accept a certificate whose revocation status is unknown, that is when no configured CRL
    /// covers its issuer. Default `false` (rustls's `UnknownStatusPolicy::Deny`): with CRLs
    /// configured, a certificate from an issuer we hold no CRL for is refused. Fail closed: a
    /// missing or mis-named CRL file must not silently turn revocation off.
    pub allow_unknown_status: bool,
    /// Accept CRLs past their `nextUpdate`. Default `false`: an expired CRL is treated as an
    /// error (rustls's `enforce_revocation_expiration`), since a stale CRL cannot list
    /// recent revocations. rustls itself defaults to ignoring the expiry; we do not.
    pub allow_expired_crls: bool,
}

/// Why a client verifier cannot be built or a certificate cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum MtlsError {
    /// rustls refused the verifier: for example an empty CA bundle, or a CRL it cannot parse.
    #[error("cannot build the client certificate verifier: {0}")]
    Verifier(#[from] VerifierBuilderError),
    /// The certificate is not DER X.509 we can read.
    #[error("cannot parse the client certificate: {0}")]
    BadCertificate(String),
}

/// The verifier for a listener's client certificates, with the strict [`RevocationPolicy`]:
/// `None` for [`ClientAuth::None`] (the listener keeps rustls's `NoClientAuth`).
///
/// `roots` is the listener's CA bundle: a client chain must end at one of them. With `crls`
/// empty no revocation check is made; with CRLs, see [`RevocationPolicy`]. Chains are checked
/// by rustls-webpki with the [`crypto_provider`]'s signature algorithms, the clientAuth
/// extended key usage is required when the certificate carries an EKU extension, and names are
/// not checked (a client has no name to expect: routes check names with [`CertRule`]).
pub fn client_verifier(
    mode: ClientAuth,
    roots: Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Option<Arc<dyn ClientCertVerifier>>, MtlsError> {
    client_verifier_with(mode, roots, crls, RevocationPolicy::default())
}

/// [`client_verifier`] with an explicit [`RevocationPolicy`].
pub fn client_verifier_with(
    mode: ClientAuth,
    roots: Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    policy: RevocationPolicy,
) -> Result<Option<Arc<dyn ClientCertVerifier>>, MtlsError> {
    if mode == ClientAuth::None {
        return Ok(None);
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(roots, crypto_provider()).with_crls(crls);
    // rustls's defaults are `RevocationCheckDepth::Chain` and `UnknownStatusPolicy::Deny`; they
    // are restated by omission here and only loosened on an explicit opt-out.
    if policy.end_entity_only {
        builder = builder.only_check_end_entity_revocation();
    }
    if policy.allow_unknown_status {
        builder = builder.allow_unknown_revocation_status();
    }
    if !policy.allow_expired_crls {
        builder = builder.enforce_revocation_expiration();
    }
    if mode == ClientAuth::Optional {
        builder = builder.allow_unauthenticated();
    }
    Ok(Some(builder.build()?))
}

/// What the request path knows about a verified client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFacts {
    /// SHA-256 of the certificate's DER, lowercase hex (64 characters).
    pub sha256_thumbprint: String,
    /// The subject DN as an RFC 4514 string (most significant RDN last, e.g.
    /// `CN=client,O=Example`).
    pub subject: String,
    /// The issuer DN, RFC 4514 like `subject`.
    pub issuer: String,
    /// The DNS names of the subjectAltName extension, as written in the certificate.
    pub dns_sans: Vec<String>,
    /// The URIs of the subjectAltName extension (SPIFFE IDs among them).
    pub uri_sans: Vec<String>,
    /// The end of the certificate's validity.
    pub not_after: SystemTime,
}

/// Reads the [`CertFacts`] of a certificate (normally the client's end-entity certificate,
/// after the verifier accepted it).
pub fn cert_facts(der: &CertificateDer<'_>) -> Result<CertFacts, MtlsError> {
    let (rest, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|e| MtlsError::BadCertificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(MtlsError::BadCertificate(
            "trailing data after the certificate".into(),
        ));
    }
    let mut dns_sans = Vec::new();
    let mut uri_sans = Vec::new();
    let san = cert
        .subject_alternative_name()
        .map_err(|e| MtlsError::BadCertificate(e.to_string()))?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => dns_sans.push((*dns).to_owned()),
                GeneralName::URI(uri) => uri_sans.push((*uri).to_owned()),
                _ => {}
            }
        }
    }
    let not_after = cert.validity().not_after.timestamp();
    let not_after = if not_after >= 0 {
        UNIX_EPOCH + Duration::from_secs(not_after.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(not_after.unsigned_abs())
    };
    Ok(CertFacts {
        sha256_thumbprint: hex(&sha256(der.as_ref())),
        subject: rfc4514(cert.subject()),
        issuer: rfc4514(cert.issuer()),
        dns_sans,
        uri_sans,
        not_after,
    })
}

/// A route's allow list for client certificates.
///
/// Semantics: every **non-empty** list must match (AND across lists), and a list matches when
/// **any** of its entries matches (OR within a list). A rule with all lists empty allows any
/// verified certificate (but still needs one: without a certificate there are no facts to pass
/// to [`CertRule::allows`]).
///
/// - `thumbprints`: SHA-256 of the DER, hex; case and `:` separators are ignored.
/// - `subjects`, `issuers`: the RFC 4514 string of [`CertFacts`], compared exactly.
/// - `dns`: a DNS SAN, ASCII case-insensitive; `*.example.com` matches exactly one label in
///   front of `example.com` (`a.example.com`, not `example.com` nor `a.b.example.com`), like
///   a certificate wildcard (RFC 6125 §6.4.3). A SAN that itself contains `*` only matches an
///   entry equal to it.
/// - `uris`: a URI SAN, compared exactly; an entry ending in `/` is a prefix, so
///   `spiffe://example.org/` admits every SPIFFE ID of that trust domain and
///   `spiffe://example.org/ns/prod/` every ID below that path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertRule {
    /// Allowed SHA-256 thumbprints.
    pub thumbprints: Vec<String>,
    /// Allowed subject DNs (RFC 4514).
    pub subjects: Vec<String>,
    /// Allowed issuer DNs (RFC 4514).
    pub issuers: Vec<String>,
    /// Allowed DNS SANs, exact or `*.suffix`.
    pub dns: Vec<String>,
    /// Allowed URI SANs, exact or a prefix ending in `/`.
    pub uris: Vec<String>,
}

impl CertRule {
    /// Whether a certificate with these facts may use the route; see [`CertRule`].
    pub fn allows(&self, facts: &CertFacts) -> bool {
        let thumbprint = facts.sha256_thumbprint.to_ascii_lowercase();
        list_matches(&self.thumbprints, |t| normalise_thumbprint(t) == thumbprint)
            && list_matches(&self.subjects, |s| *s == facts.subject)
            && list_matches(&self.issuers, |s| *s == facts.issuer)
            && list_matches(&self.dns, |pattern| {
                facts.dns_sans.iter().any(|name| dns_matches(pattern, name))
            })
            && list_matches(&self.uris, |pattern| {
                facts.uri_sans.iter().any(|uri| uri_matches(pattern, uri))
            })
    }
}

fn list_matches(list: &[String], matches: impl Fn(&String) -> bool) -> bool {
    list.is_empty() || list.iter().any(matches)
}

fn normalise_thumbprint(t: &str) -> String {
    t.chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn dns_matches(pattern: &str, name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    let pattern = pattern.strip_suffix('.').unwrap_or(pattern);
    match pattern.strip_prefix("*.") {
        Some(suffix) if !suffix.is_empty() => {
            let Some((label, rest)) = name.split_once('.') else {
                return false;
            };
            !label.is_empty() && !label.contains('*') && rest.eq_ignore_ascii_case(suffix)
        }
        _ => pattern.eq_ignore_ascii_case(name),
    }
}

fn uri_matches(pattern: &str, uri: &str) -> bool {
    if pattern.ends_with('/') {
        uri.len() > pattern.len() && uri.starts_with(pattern)
    } else {
        pattern == uri
    }
}

/// Header carrying [`CertFacts::sha256_thumbprint`].
pub const HEADER_THUMBPRINT: &str = "x-client-cert-thumbprint";
/// Header carrying [`CertFacts::subject`].
pub const HEADER_SUBJECT: &str = "x-client-cert-subject";
/// Header carrying [`CertFacts::issuer`].
pub const HEADER_ISSUER: &str = "x-client-cert-issuer";
/// Header carrying [`CertFacts::dns_sans`], comma-separated.
pub const HEADER_SAN_DNS: &str = "x-client-cert-san-dns";
/// Header carrying [`CertFacts::uri_sans`], comma-separated.
pub const HEADER_SAN_URI: &str = "x-client-cert-san-uri";
/// Header carrying [`CertFacts::not_after`], seconds since the Unix epoch.
pub const HEADER_NOT_AFTER: &str = "x-client-cert-not-after";

/// Every header [`forwarded_headers`] may set. The request path removes all of them from the
/// client's request before adding its own, so a client cannot forge them (also when it sent no
/// certificate).
pub const FORWARDED_HEADER_NAMES: [&str; 6] = [
    HEADER_THUMBPRINT,
    HEADER_SUBJECT,
    HEADER_ISSUER,
    HEADER_SAN_DNS,
    HEADER_SAN_URI,
    HEADER_NOT_AFTER,
];

/// Removes every client-sent copy of the [`FORWARDED_HEADER_NAMES`].
pub fn strip_client_copies(headers: &mut HeaderMap) {
    for name in FORWARDED_HEADER_NAMES {
        headers.remove(name);
    }
}

/// The headers that carry a certificate's facts to the backend. Values are sanitised: every
/// byte outside printable ASCII (control characters, DEL, non-ASCII UTF-8) and `%` is written
/// as `%XX`, so no value can split a header or smuggle a line; in the comma-separated SAN
/// lists `,` is escaped too, so a URI containing a comma cannot fake a second entry. Empty SAN
/// lists are left out.
pub fn forwarded_headers(facts: &CertFacts) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(FORWARDED_HEADER_NAMES.len());
    let mut push = |name: &'static str, value: String| {
        // Cannot fail: `sanitise` only emits visible ASCII and spaces.
        if let Ok(value) = HeaderValue::from_str(&value) {
            out.push((HeaderName::from_static(name), value));
        }
    };
    push(HEADER_THUMBPRINT, sanitise(&facts.sha256_thumbprint, false));
    push(HEADER_SUBJECT, sanitise(&facts.subject, false));
    push(HEADER_ISSUER, sanitise(&facts.issuer, false));
    let list = |items: &[String]| {
        items
            .iter()
            .map(|item| sanitise(item, true))
            .collect::<Vec<_>>()
            .join(",")
    };
    if !facts.dns_sans.is_empty() {
        push(HEADER_SAN_DNS, list(&facts.dns_sans));
    }
    if !facts.uri_sans.is_empty() {
        push(HEADER_SAN_URI, list(&facts.uri_sans));
    }
    let not_after = match facts.not_after.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs().to_string(),
        Err(e) => format!("-{}", e.duration().as_secs()),
    };
    push(HEADER_NOT_AFTER, not_after);
    out
}

fn sanitise(value: &str, escape_comma: bool) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        let plain = (0x20..0x7f).contains(&b) && b != b'%' && !(escape_comma && b == b',');
        if plain {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// RFC 8705 §3.1: whether an access token's `cnf` claim member `x5t#S256` names this
/// certificate. The member is base64url, without padding, of the SHA-256 of the certificate's
/// DER; the comparison is exact (no padding, no whitespace, case-sensitive) and in time
/// independent of where the values differ.
pub fn cnf_matches(claims_cnf_x5t_s256: &str, facts: &CertFacts) -> bool {
    let Some(digest) = unhex32(&facts.sha256_thumbprint) else {
        return false;
    };
    let expected = crate::identity::encoding::b64url_encode(&digest);
    let presented = claims_cnf_x5t_s256.as_bytes();
    if presented.len() != expected.len() {
        // The length of a SHA-256 thumbprint (43) is public: leaking it reveals nothing.
        return false;
    }
    let mut diff = 0u8;
    for (a, b) in presented.iter().zip(expected.as_bytes()) {
        diff |= a ^ b;
    }
    std::hint::black_box(diff) == 0
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// A distinguished name as RFC 4514 §2 writes it: RDNs most significant last, separated by
/// `,`; multi-valued RDNs joined by `+`; well-known attribute types by their short names (the
/// RFC's table plus the common `emailAddress`, `serialNumber`), others as dotted OIDs; string
/// values escaped per §2.4, other values as `#` and the hex of their DER.
fn rfc4514(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    let rdns: Vec<_> = name.iter_rdn().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = attr.attr_type();
            match short_name(oid) {
                Some(short) => out.push_str(short),
                None => out.push_str(&oid.to_id_string()),
            }
            out.push('=');
            match attr.as_str() {
                Ok(value) if short_name(oid).is_some() => escape_value(value, &mut out),
                _ => {
                    out.push('#');
                    out.push_str(&hex(attr
                        .attr_value()
                        .to_der_vec()
                        .unwrap_or_default()
                        .as_slice()));
                }
            }
        }
    }
    out
}

fn short_name(oid: &Oid<'_>) -> Option<&'static str> {
    Some(match oid.to_id_string().as_str() {
        "2.5.4.3" => "CN",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.6" => "C",
        "2.5.4.9" => "STREET",
        "2.5.4.5" => "serialNumber",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        "1.2.840.113549.1.9.1" => "emailAddress",
        _ => return None,
    })
}

fn escape_value(value: &str, out: &mut String) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' | ' ' if i == 0 => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            _ => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> CertFacts {
        CertFacts {
            sha256_thumbprint: hex(&sha256(b"cert")),
            subject: "CN=svc,O=Example".into(),
            issuer: "CN=CA,O=Example".into(),
            dns_sans: vec!["api.example.com".into()],
            uri_sans: vec!["spiffe://example.org/ns/prod/sa/web".into()],
            not_after: UNIX_EPOCH + Duration::from_secs(2_000_000_000),
        }
    }

    #[test]
    fn dns_and_uri_patterns() {
        assert!(dns_matches("*.example.com", "a.EXAMPLE.com"));
        assert!(!dns_matches("*.example.com", "example.com"));
        assert!(!dns_matches("*.example.com", "a.b.example.com"));
        assert!(!dns_matches("*.example.com", "*.example.com"));
        assert!(dns_matches("api.example.com", "API.example.com."));
        assert!(uri_matches(
            "spiffe://example.org/",
            "spiffe://example.org/x"
        ));
        assert!(!uri_matches(
            "spiffe://example.org/",
            "spiffe://example.org/"
        ));
        assert!(!uri_matches(
            "spiffe://example.org/",
            "spiffe://example.org.evil/x"
        ));
        assert!(!uri_matches(
            "spiffe://example.org",
            "spiffe://example.org/x"
        ));
    }

    #[test]
    fn rule_semantics() {
        let f = facts();
        assert!(CertRule::default().allows(&f));
        let upper = f.sha256_thumbprint.to_ascii_uppercase();
        let colons: Vec<String> = upper
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        let rule = CertRule {
            thumbprints: vec!["00".into(), colons.join(":")],
            ..Default::default()
        };
        assert!(rule.allows(&f));
        let rule = CertRule {
            subjects: vec!["CN=svc,O=Example".into()],
            uris: vec!["spiffe://other.org/".into()],
            ..Default::default()
        };
        assert!(!rule.allows(&f), "AND across lists");
    }

    #[test]
    fn headers_are_sanitised() {
        let mut f = facts();
        f.subject = "CN=a\r\nx-evil: 1,O=é%".into();
        f.uri_sans = vec!["urn:a,b".into(), "urn:c".into()];
        let headers = forwarded_headers(&f);
        let get = |n: &str| {
            headers
                .iter()
                .find(|(name, _)| name == n)
                .map(|(_, v)| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            get(HEADER_SUBJECT).unwrap(),
            "CN=a%0D%0Ax-evil: 1,O=%C3%A9%25"
        );
        assert_eq!(get(HEADER_SAN_URI).unwrap(), "urn:a%2Cb,urn:c");
        assert_eq!(get(HEADER_NOT_AFTER).unwrap(), "2000000000");
    }

    #[test]
    fn cnf() {
        let f = facts();
        let good = crate::identity::encoding::b64url_encode(&sha256(b"cert"));
        assert!(cnf_matches(&good, &f));
        assert!(!cnf_matches(&format!("{good}="), &f));
        assert!(!cnf_matches(
            &crate::identity::encoding::b64url_encode(&sha256(b"other")),
            &f
        ));
        assert!(!cnf_matches("", &f));
    }

    #[test]
    fn none_mode_has_no_verifier() {
        let v = client_verifier(ClientAuth::None, Arc::new(RootCertStore::empty()), vec![]);
        assert!(v.unwrap().is_none());
        let v = client_verifier(
            ClientAuth::Required,
            Arc::new(RootCertStore::empty()),
            vec![],
        );
        assert!(matches!(v, Err(MtlsError::Verifier(_))));
    }
}
