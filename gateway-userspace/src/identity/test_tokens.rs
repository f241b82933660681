//! Test support: Ed25519 keys, their JWKS, and tokens signed with them.

use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};

use super::encoding::b64url_encode;

/// An Ed25519 signing key with a `kid`.
pub(crate) struct TestKey {
    pub kid: String,
    pair: Ed25519KeyPair,
}

impl TestKey {
    pub(crate) fn new(kid: &str) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("generate");
        TestKey {
            kid: kid.to_owned(),
            pair: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key"),
        }
    }

    /// The public JWK.
    pub(crate) fn jwk(&self) -> Value {
        json!({
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": self.kid,
            "x": b64url_encode(self.pair.public_key().as_ref()),
        })
    }

    /// A compact JWS of `claims`, with this key's `kid` unless `kid` is false.
    pub(crate) fn sign_with(&self, claims: &Value, kid: bool) -> String {
        let header = if kid {
            json!({"alg": "EdDSA", "typ": "at+jwt", "kid": self.kid})
        } else {
            json!({"alg": "EdDSA", "typ": "at+jwt"})
        };
        let input = format!(
            "{}.{}",
            b64url_encode(header.to_string().as_bytes()),
            b64url_encode(claims.to_string().as_bytes())
        );
        let sig = self.pair.sign(input.as_bytes());
        format!("{input}.{}", b64url_encode(sig.as_ref()))
    }

    pub(crate) fn sign(&self, claims: &Value) -> String {
        self.sign_with(claims, true)
    }
}

/// `{"keys": [...]}` of these keys.
pub(crate) fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}
