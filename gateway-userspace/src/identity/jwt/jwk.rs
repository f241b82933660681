//! JWK sets (RFC 7517) reduced to verification-ready public keys, with hygiene checks.

use crate::identity::encoding::{b64url_decode, json_object};
use ring::signature;
use serde_json::{Map, Value};
use std::fmt;

/// A JWS algorithm this gateway verifies. `none` and every HMAC algorithm are not representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Algorithm {
    /// Every supported algorithm.
    pub const ALL: [Algorithm; 9] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    /// Parses a JOSE `alg` name, case-sensitively (RFC 7515 §4.1.1). `None` for anything not
    /// supported, including `none` and `HS*`.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    fn is_rsa(self) -> bool {
        matches!(
            self,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        )
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The public key material, already checked.
#[derive(Clone, PartialEq, Eq)]
enum Material {
    /// Modulus and exponent, big-endian without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// Uncompressed SEC1 point (0x04 || x || y) on P-256.
    P256(Vec<u8>),
    /// Uncompressed SEC1 point on P-384.
    P384(Vec<u8>),
    /// 32-byte Ed25519 public key.
    Ed25519(Vec<u8>),
}

/// One verification key from a JWKS.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    kid: Option<String>,
    /// The `alg` the JWK declared, which then is the only algorithm it verifies.
    alg: Option<Algorithm>,
    material: Material,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("type", &self.key_type())
            .finish()
    }
}

impl Key {
    /// The key id, if the JWK had one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// `RSA`, `EC P-256`, `EC P-384` or `OKP Ed25519`.
    pub fn key_type(&self) -> &'static str {
        match self.material {
            Material::Rsa { .. } => "RSA",
            Material::P256(_) => "EC P-256",
            Material::P384(_) => "EC P-384",
            Material::Ed25519(_) => "OKP Ed25519",
        }
    }

    /// The algorithms this key may verify: its declared `alg`, else every algorithm of its type.
    pub fn algorithms(&self) -> Vec<Algorithm> {
        Algorithm::ALL
            .into_iter()
            .filter(|a| self.fits(*a))
            .collect()
    }

    /// Whether a token with `alg` may be verified with this key: the algorithm must belong to the
    /// key's type (and curve), and equal the key's declared `alg` when there is one.
    pub fn fits(&self, alg: Algorithm) -> bool {
        let type_ok = match self.material {
            Material::Rsa { .. } => alg.is_rsa(),
            Material::P256(_) => alg == Algorithm::ES256,
            Material::P384(_) => alg == Algorithm::ES384,
            Material::Ed25519(_) => alg == Algorithm::EdDSA,
        };
        type_ok && self.alg.is_none_or(|a| a == alg)
    }

    /// Verifies `sig` over `msg`. The caller has checked [`Key::fits`]; this re-checks.
    pub(crate) fn verify(&self, alg: Algorithm, msg: &[u8], sig: &[u8]) -> bool {
        if !self.fits(alg) {
            return false;
        }
        match &self.material {
            Material::Rsa { n, e } => {
                let params: &signature::RsaParameters = match alg {
                    Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                    Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
                    Algorithm::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return false,
                };
                signature::RsaPublicKeyComponents { n, e }
                    .verify(params, msg, sig)
                    .is_ok()
            }
            Material::P256(p) => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, p.as_slice())
                    .verify(msg, sig)
                    .is_ok()
            }
            Material::P384(p) => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, p.as_slice())
                    .verify(msg, sig)
                    .is_ok()
            }
            Material::Ed25519(p) => {
                signature::UnparsedPublicKey::new(&signature::ED25519, p.as_slice())
                    .verify(msg, sig)
                    .is_ok()
            }
        }
    }
}

/// A key left out of a [`KeySet`], and why (for logs; holds no key material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedKey {
    /// Its `kid`, if any.
    pub kid: Option<String>,
    /// Why it is not used.
    pub reason: KeyRejection,
}

/// Why one JWK is not used for verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyRejection {
    #[error("not a JSON object or a required member is missing or of the wrong type")]
    Malformed,
    #[error("symmetric (oct) keys are never used: HMAC is refused by design")]
    Symmetric,
    #[error("unsupported key type or curve")]
    UnsupportedType,
    #[error("`use` is present and is not \"sig\"")]
    NotForSignatures,
    #[error("`key_ops` is present and does not contain \"verify\"")]
    KeyOpsWithoutVerify,
    #[error("`alg` is not a supported algorithm for this key type")]
    AlgDoesNotFit,
    #[error("the JWK carries private key material")]
    PrivateMaterial,
    #[error("RSA modulus shorter than 2048 bits")]
    RsaTooSmall,
    #[error("RSA modulus longer than 8192 bits")]
    RsaTooLarge,
    #[error("RSA public exponent not odd, below 3 or above 2^33")]
    RsaBadExponent,
    #[error("RSA modulus has the ROCA (CVE-2017-15361) fingerprint")]
    RsaRoca,
    #[error("EC or OKP coordinates of the wrong length or not a point on the curve")]
    BadPoint,
}

/// Why a whole JWKS is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// Not a JSON object with a `keys` array (RFC 7517 §5), or too large.
    #[error("JWKS is not a JSON object with a \"keys\" array")]
    Malformed,
    /// Two keys share a `kid`: which one a token means would be ambiguous.
    #[error("JWKS has duplicate kid values")]
    DuplicateKid,
    /// No key passed the hygiene checks.
    #[error("JWKS has no usable signature verification key ({} rejected)", rejected.len())]
    NoUsableKeys {
        /// Every key and the reason it was left out.
        rejected: Vec<RejectedKey>,
    },
}

/// Verification keys from one JWKS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    keys: Vec<Key>,
    rejected: Vec<RejectedKey>,
}

impl KeySet {
    /// The usable keys, in JWKS order.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// Keys of the JWKS that are not used, with the reason (e.g. `use: enc` keys).
    pub fn rejected(&self) -> &[RejectedKey] {
        &self.rejected
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there is no usable key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key with this `kid`.
    pub fn get(&self, kid: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    }

    /// The default algorithm allow-list: the union of what the keys may verify.
    pub fn algorithms(&self) -> Vec<Algorithm> {
        Algorithm::ALL
            .into_iter()
            .filter(|a| self.keys.iter().any(|k| k.fits(*a)))
            .collect()
    }
}

/// Largest JWKS document accepted, in bytes.
pub const MAX_JWKS_BYTES: usize = 1 << 20;

/// Parses a JWKS. Keys failing a hygiene check are left out and listed in
/// [`KeySet::rejected`]; the whole set is refused when it is malformed, when two keys (usable or
/// not) share a `kid`, or when no key is usable.
pub fn parse_jwks(json: &[u8]) -> Result<KeySet, JwksError> {
    if json.len() > MAX_JWKS_BYTES {
        return Err(JwksError::Malformed);
    }
    let doc = json_object(json).ok_or(JwksError::Malformed)?;
    let Some(Value::Array(list)) = doc.get("keys") else {
        return Err(JwksError::Malformed);
    };
    let mut set = KeySet::default();
    let mut kids: Vec<&str> = Vec::new();
    for v in list {
        let kid_str = v.get("kid").and_then(Value::as_str);
        if let Some(k) = kid_str {
            if kids.contains(&k) {
                return Err(JwksError::DuplicateKid);
            }
            kids.push(k);
        }
        match parse_jwk(v) {
            Ok(key) => set.keys.push(key),
            Err(reason) => set.rejected.push(RejectedKey {
                kid: kid_str.map(str::to_owned),
                reason,
            }),
        }
    }
    if set.keys.is_empty() {
        return Err(JwksError::NoUsableKeys {
            rejected: set.rejected,
        });
    }
    Ok(set)
}

fn b64_member(o: &Map<String, Value>, name: &str) -> Result<Vec<u8>, KeyRejection> {
    o.get(name)
        .and_then(Value::as_str)
        .and_then(|s| b64url_decode(s.as_bytes()))
        .ok_or(KeyRejection::Malformed)
}

/// Checks one JWK and turns it into a [`Key`].
pub fn parse_jwk(v: &Value) -> Result<Key, KeyRejection> {
    let o = v.as_object().ok_or(KeyRejection::Malformed)?;
    let opt_str = |name: &str| match o.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(KeyRejection::Malformed),
    };
    let kty = opt_str("kty")?.ok_or(KeyRejection::Malformed)?;
    let kid = opt_str("kid")?.map(str::to_owned);
    if kty == "oct" {
        return Err(KeyRejection::Symmetric);
    }
    if opt_str("use")?.is_some_and(|u| u != "sig") {
        return Err(KeyRejection::NotForSignatures);
    }
    if let Some(ops) = o.get("key_ops") {
        let ops = ops.as_array().ok_or(KeyRejection::Malformed)?;
        if !ops.iter().any(|x| x.as_str() == Some("verify")) {
            return Err(KeyRejection::KeyOpsWithoutVerify);
        }
    }
    if ["d", "p", "q", "dp", "dq", "qi", "oth", "k"]
        .iter()
        .any(|m| o.contains_key(*m))
    {
        return Err(KeyRejection::PrivateMaterial);
    }
    let alg = match opt_str("alg")? {
        None => None,
        Some(name) => Some(Algorithm::from_name(name).ok_or(KeyRejection::AlgDoesNotFit)?),
    };
    let material = match kty {
        "RSA" => {
            let n = strip_zeros(b64_member(o, "n")?);
            let e = strip_zeros(b64_member(o, "e")?);
            let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
            if bits < 2048 {
                return Err(KeyRejection::RsaTooSmall);
            }
            if bits > 8192 {
                return Err(KeyRejection::RsaTooLarge);
            }
            let e_val = e.iter().try_fold(0u64, |acc, b| {
                acc.checked_mul(256).map(|x| x | u64::from(*b))
            });
            match e_val {
                Some(x) if x >= 3 && x % 2 == 1 && x < (1 << 33) => {}
                _ => return Err(KeyRejection::RsaBadExponent),
            }
            if has_roca_fingerprint(&n) {
                return Err(KeyRejection::RsaRoca);
            }
            Material::Rsa { n, e }
        }
        "EC" => {
            let (len, agreement_alg) = match opt_str("crv")? {
                Some("P-256") => (32, &ring::agreement::ECDH_P256),
                Some("P-384") => (48, &ring::agreement::ECDH_P384),
                _ => return Err(KeyRejection::UnsupportedType),
            };
            let x = b64_member(o, "x")?;
            let y = b64_member(o, "y")?;
            if x.len() != len || y.len() != len {
                return Err(KeyRejection::BadPoint);
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            if !point_on_curve(agreement_alg, &point) {
                return Err(KeyRejection::BadPoint);
            }
            if len == 32 {
                Material::P256(point)
            } else {
                Material::P384(point)
            }
        }
        "OKP" => {
            if opt_str("crv")? != Some("Ed25519") {
                return Err(KeyRejection::UnsupportedType);
            }
            let x = b64_member(o, "x")?;
            if x.len() != 32 {
                return Err(KeyRejection::BadPoint);
            }
            Material::Ed25519(x)
        }
        _ => return Err(KeyRejection::UnsupportedType),
    };
    let key = Key {
        kid,
        alg: None,
        material,
    };
    if alg.is_some_and(|a| !key.fits(a)) {
        return Err(KeyRejection::AlgDoesNotFit);
    }
    Ok(Key { alg, ..key })
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let z = v.iter().take_while(|b| **b == 0).count();
    v.drain(..z);
    v
}

/// ring checks that a public point is on its curve only when it is used; an ECDH agreement with
/// an ephemeral key performs exactly that check (and nothing else observable).
fn point_on_curve(alg: &'static ring::agreement::Algorithm, point: &[u8]) -> bool {
    let rng = ring::rand::SystemRandom::new();
    let Ok(mine) = ring::agreement::EphemeralPrivateKey::generate(alg, &rng) else {
        return false;
    };
    let peer = ring::agreement::UnparsedPublicKey::new(alg, point);
    ring::agreement::agree_ephemeral(mine, &peer, |_| ()).is_ok()
}

/// The ROCA fingerprint (Nemec et al., CCS 2017): moduli from the vulnerable Infineon library
/// are, modulo each small prime p, in the subgroup generated by 65537. A random modulus passes
/// this for all primes below 168 with negligible probability.
fn has_roca_fingerprint(n: &[u8]) -> bool {
    const PRIMES: [u32; 38] = [
        3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89,
        97, 101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167,
    ];
    PRIMES.iter().all(|&p| {
        let r = n
            .iter()
            .fold(0u32, |acc, b| (acc * 256 + u32::from(*b)) % p);
        let g = 65537 % p;
        let mut x = 1u32;
        loop {
            if x == r {
                return true;
            }
            x = x * g % p;
            if x == 1 {
                return false;
            }
        }
    })
}
