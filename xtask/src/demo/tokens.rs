//! The demo's identity provider: one P-256 key, published as a static JWKS file the gateway
//! reads (`[[token_providers]] jwks_file`), and access tokens (RFC 9068 shape, ES256) signed
//! with it. A real deployment points the provider at its OpenID issuer instead; the gateway
//! validates both the same way.

use anyhow::anyhow;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};

pub const ISSUER: &str = "https://idp.demo";
pub const AUDIENCE: &str = "https://api.demo";
const KID: &str = "demo-key-1";

pub struct Issuer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Issuer {
    pub fn new() -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow!("generating the demo signing key"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| anyhow!("loading the demo signing key"))?;
        Ok(Issuer { key, rng })
    }

    /// The public key as a JWKS document.
    pub fn jwks(&self) -> String {
        // An uncompressed SEC1 point: 0x04, then x and y, 32 bytes each.
        let point = self.key.public_key().as_ref();
        serde_json::json!({
            "keys": [{
                "kty": "EC",
                "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
                "kid": KID,
                "alg": "ES256",
                "use": "sig",
            }]
        })
        .to_string()
    }

    /// An access token for `subject` with `roles`, valid for ten minutes.
    pub fn token(&self, subject: &str, roles: &[&str]) -> anyhow::Result<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let header = serde_json::json!({ "alg": "ES256", "typ": "at+jwt", "kid": KID });
        let claims = serde_json::json!({
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "client_id": subject,
            "roles": roles,
            "iat": now,
            "exp": now + 600,
            "jti": format!("{subject}-{now}"),
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map_err(|_| anyhow!("signing the demo token"))?;
        Ok(format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }
}
