//! Token validation for one provider through its verified-token cache: the entry point the
//! proxy calls for every token.
//!
//! A [`TokenValidator`] binds a provider's keys ([`OidcProvider`]), its one
//! [`ValidationPolicy`] and its [`TokenCache`], so the cache is always read under the policy
//! it was filled under. A hit returns the cached `Arc<Claims>`: no signature check, no JSON,
//! no deep copy.

use std::sync::Arc;
use std::time::SystemTime;

use crate::identity::jwt::{self, Claims, JwtError, ValidationPolicy};
use crate::identity::oidc::{KeyEpoch, OidcError, OidcProvider, Readiness};
use crate::identity::token_cache::{CacheStats, TokenCache};

/// One provider's validation: keys, policy and verified-token cache. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TokenValidator {
    provider: OidcProvider,
    policy: Arc<ValidationPolicy>,
    cache: TokenCache,
}

impl TokenValidator {
    /// A validator with an unnamed cache of `provider.config().token_cache_entries` entries.
    pub fn new(provider: OidcProvider, policy: ValidationPolicy) -> Self {
        let cache = TokenCache::new(provider.config().token_cache_entries);
        Self::with_cache(provider, policy, cache)
    }

    /// A validator with the given cache (named for the metrics, or shared counters).
    pub fn with_cache(provider: OidcProvider, policy: ValidationPolicy, cache: TokenCache) -> Self {
        TokenValidator {
            provider,
            policy: Arc::new(policy),
            cache,
        }
    }

    pub fn provider(&self) -> &OidcProvider {
        &self.provider
    }

    pub fn policy(&self) -> &ValidationPolicy {
        &self.policy
    }

    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// Hits, misses and entries of the cache.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Validates `token` now: the cache, else full validation against the current keys, and on
    /// an unknown `kid` one refetch of the JWKS (single-flight, rate-limited) and a second try.
    pub async fn validate(&self, token: &str) -> Result<Arc<Claims>, OidcError> {
        self.validate_at(token, SystemTime::now()).await
    }

    /// [`TokenValidator::validate`] at `now` (tests inject the clock here).
    pub async fn validate_at(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<Arc<Claims>, OidcError> {
        let generation = self.provider.generation();
        let unknown = match self.validate_cached(token, now) {
            Err(e @ OidcError::Jwt(JwtError::UnknownKid)) => e,
            other => return other,
        };
        self.provider.refetch_for_unknown_kid(generation).await;
        if self.provider.generation() == generation {
            // No new keys (static keys, or the refetch was rate-limited or failed).
            return Err(unknown);
        }
        self.validate_cached(token, now)
    }

    /// Synchronous validation at `now` with the keys in hand: the cache, else full
    /// validation (whose success is cached). No network: an unknown `kid` is an error here.
    pub fn validate_cached(&self, token: &str, now: SystemTime) -> Result<Arc<Claims>, OidcError> {
        if self.provider.readiness() == Readiness::NotReady {
            return Err(OidcError::NotReady);
        }
        let epoch = self.provider.epoch_guard();
        // Oversized tokens are refused by validation before any decoding; they are not worth
        // hashing either.
        let key = (self.cache.enabled() && token.len() <= self.policy.max_token_bytes)
            .then(|| TokenCache::key(token));
        if let Some(key) = &key
            && let Some(claims) = self.cache.get(key, now, &epoch)
        {
            return Ok(claims);
        }
        self.verify(token, now, &epoch, key)
    }

    fn verify(
        &self,
        token: &str,
        now: SystemTime,
        epoch: &KeyEpoch,
        key: Option<[u8; 32]>,
    ) -> Result<Arc<Claims>, OidcError> {
        let claims = Arc::new(jwt::validate(token, &epoch.keys, &self.policy, now)?);
        if let Some(key) = key {
            self.cache.insert(key, claims.clone(), now, epoch);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use serde_json::json;

    use super::*;
    use crate::identity::oidc::{KeySource, OidcConfig, StaticJwks};
    use crate::identity::test_tokens::{TestKey, jwks};

    const ISSUER: &str = "https://idp.example";
    const AUD: &str = "api://orders";
    /// A fixed clock: tokens expire relative to it.
    const T0: u64 = 1_900_000_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn claims(sub: &str, exp: u64) -> serde_json::Value {
        json!({"iss": ISSUER, "aud": AUD, "sub": sub, "exp": exp, "iat": T0 - 10})
    }

    fn validator(keys: &[&TestKey], entries: usize) -> TokenValidator {
        let mut config = OidcConfig::new(ISSUER);
        config.keys = KeySource::Static(StaticJwks::new(jwks(keys).into_bytes()));
        config.token_cache_entries = entries;
        let provider = OidcProvider::new(config).expect("static provider");
        assert_eq!(provider.readiness(), Readiness::Ready);
        TokenValidator::new(provider, ValidationPolicy::new(ISSUER, vec![AUD.into()]))
    }

    #[test]
    fn a_hit_returns_the_same_claims_without_verifying() {
        let key = TestKey::new("k1");
        let v = validator(&[&key], 100);
        let token = key.sign(&claims("alice", T0 + 300));
        let first = v.validate_cached(&token, at(T0)).expect("valid");
        assert_eq!(v.cache_stats().misses, 1);
        assert_eq!(v.cache_stats().hits, 0);
        let second = v.validate_cached(&token, at(T0 + 1)).expect("cached");
        assert!(
            Arc::ptr_eq(&first, &second),
            "a hit returns the cached claims"
        );
        assert_eq!(second.subject(), Some("alice"));
        let s = v.cache_stats();
        assert_eq!((s.hits, s.misses, s.entries), (1, 1, 1));
        // A token with one byte changed is another key: a miss, and refused.
        let mut tampered = token.clone();
        tampered.push('A');
        assert!(v.validate_cached(&tampered, at(T0 + 1)).is_err());
        assert_eq!(v.cache_stats().misses, 2);
        assert_eq!(v.cache_stats().entries, 1);
    }

    #[test]
    fn the_cache_key_is_a_hash_not_the_token() {
        let key = TestKey::new("k1");
        let v = validator(&[&key], 10);
        let token = key.sign(&claims("alice", T0 + 300));
        v.validate_cached(&token, at(T0)).expect("valid");
        let debug = format!("{:?}", v.cache());
        assert!(!debug.contains(&token));
        assert_eq!(TokenCache::key(&token).len(), 32);
    }

    #[test]
    fn entries_expire_at_exp_exactly() {
        let key = TestKey::new("k1");
        let v = validator(&[&key], 10);
        let exp = T0 + 100;
        let token = key.sign(&claims("alice", exp));
        v.validate_cached(&token, at(T0)).expect("valid");
        v.validate_cached(&token, at(exp - 1)).expect("cached");
        assert_eq!(v.cache_stats().hits, 1);
        // At exp the entry is dead; full validation still applies the 60 s leeway, and the
        // expired token is not cached again.
        v.validate_cached(&token, at(exp)).expect("within leeway");
        let s = v.cache_stats();
        assert_eq!((s.hits, s.misses, s.entries), (1, 2, 0));
        assert_eq!(
            v.validate_cached(&token, at(exp + 61)).unwrap_err(),
            OidcError::Jwt(JwtError::Expired)
        );
        assert_eq!(v.cache_stats().hits, 1);
    }

    #[test]
    fn an_entry_dies_with_its_key() {
        let (k1, k2) = (TestKey::new("k1"), TestKey::new("k2"));
        let v = validator(&[&k1, &k2], 10);
        let t1 = k1.sign(&claims("alice", T0 + 300));
        let t2 = k2.sign(&claims("bob", T0 + 300));
        v.validate_cached(&t1, at(T0)).expect("valid");
        v.validate_cached(&t2, at(T0)).expect("valid");
        // The same keys again (a refresh): both stay cached.
        v.provider()
            .install_jwks(jwks(&[&k1, &k2]).as_bytes())
            .expect("same set");
        v.validate_cached(&t1, at(T0)).expect("hit");
        v.validate_cached(&t2, at(T0)).expect("hit");
        assert_eq!(v.cache_stats().hits, 2);
        // k1 rotated out: its token is verified again, and refused; k2's stays a hit.
        v.provider()
            .install_jwks(jwks(&[&k2]).as_bytes())
            .expect("k2 only");
        assert_eq!(
            v.validate_cached(&t1, at(T0)).unwrap_err(),
            OidcError::Jwt(JwtError::UnknownKid)
        );
        v.validate_cached(&t2, at(T0)).expect("hit");
        let s = v.cache_stats();
        assert_eq!((s.hits, s.entries), (3, 1));
        // Another key published under the old kid `k2`: the entry is not trusted any more.
        let impostor = TestKey::new("k2");
        v.provider()
            .install_jwks(jwks(&[&impostor]).as_bytes())
            .expect("new k2");
        assert_eq!(
            v.validate_cached(&t2, at(T0)).unwrap_err(),
            OidcError::Jwt(JwtError::BadSignature)
        );
        assert_eq!(v.cache_stats().entries, 0);
    }

    #[test]
    fn a_token_without_kid_is_cached_until_the_set_changes() {
        let (k1, k2) = (TestKey::new("k1"), TestKey::new("k2"));
        let v = validator(&[&k1], 10);
        let token = k1.sign_with(&claims("alice", T0 + 300), false);
        v.validate_cached(&token, at(T0)).expect("valid");
        v.validate_cached(&token, at(T0)).expect("hit");
        assert_eq!(v.cache_stats().hits, 1);
        v.provider()
            .install_jwks(jwks(&[&k1, &k2]).as_bytes())
            .expect("two keys");
        assert_eq!(
            v.validate_cached(&token, at(T0)).unwrap_err(),
            OidcError::Jwt(JwtError::MissingKid)
        );
        assert_eq!(v.cache_stats().hits, 1);
    }

    #[test]
    fn the_bound_holds_and_tokens_in_use_survive() {
        let key = TestKey::new("k1");
        let v = validator(&[&key], 20);
        let hot = key.sign(&claims("hot", T0 + 300));
        v.validate_cached(&hot, at(T0)).expect("valid");
        for i in 0..200 {
            // The hot token is used between every two new ones (sets its reference bit).
            v.validate_cached(&hot, at(T0)).expect("valid");
            let t = key.sign(&claims(&format!("user{i}"), T0 + 300));
            v.validate_cached(&t, at(T0)).expect("valid");
            assert!(v.cache().len() <= 20, "{} entries", v.cache().len());
        }
        assert_eq!(v.cache().len(), 20);
        let before = v.cache_stats().hits;
        v.validate_cached(&hot, at(T0)).expect("valid");
        assert_eq!(
            v.cache_stats().hits,
            before + 1,
            "the hot token stayed cached"
        );
    }

    #[test]
    fn zero_entries_disable_the_cache() {
        let key = TestKey::new("k1");
        let v = validator(&[&key], 0);
        let token = key.sign(&claims("alice", T0 + 300));
        let a = v.validate_cached(&token, at(T0)).expect("valid");
        let b = v.validate_cached(&token, at(T0)).expect("valid");
        assert!(!Arc::ptr_eq(&a, &b));
        let s = v.cache_stats();
        assert_eq!((s.hits, s.misses, s.entries), (0, 0, 0));
    }

    #[test]
    fn small_capacities_are_exact() {
        for capacity in [1, 3, 17, 33] {
            let cache = TokenCache::new(capacity);
            let key = TestKey::new("k1");
            let v = TokenValidator::with_cache(
                validator(&[&key], 0).provider().clone(),
                ValidationPolicy::new(ISSUER, vec![AUD.into()]),
                cache,
            );
            let provider = v.provider().clone();
            provider
                .install_jwks(jwks(&[&key]).as_bytes())
                .expect("keys");
            // Enough tokens that every shard fills (a shard missed by all of them has odds
            // below 1e-9).
            for i in 0..(capacity * 20 + 40) {
                let t = key.sign(&claims(&format!("u{i}"), T0 + 300));
                v.validate_cached(&t, at(T0)).expect("valid");
                assert!(v.cache().len() <= capacity);
            }
            assert_eq!(v.cache().len(), capacity);
        }
    }

    #[tokio::test]
    async fn not_ready_refuses_before_the_cache() {
        let p = OidcProvider::new(OidcConfig::new("http://127.0.0.1:1")).expect("provider");
        let v = TokenValidator::new(p, ValidationPolicy::new("http://127.0.0.1:1", vec![]));
        assert_eq!(v.validate("a.b.c").await.unwrap_err(), OidcError::NotReady);
    }

    #[test]
    fn a_refused_static_jwks_refuses_the_provider() {
        let mut config = OidcConfig::new(ISSUER);
        config.keys = KeySource::Static(StaticJwks::new(&br#"{"keys":[]}"#[..]));
        assert!(matches!(
            OidcProvider::new(config),
            Err(OidcError::Jwks(
                crate::identity::jwt::JwksError::NoUsableKeys { .. }
            ))
        ));
    }

    #[test]
    fn same_settings_sees_what_changes_a_provider() {
        let key = TestKey::new("k1");
        let mut a = OidcConfig::new(ISSUER);
        a.keys = KeySource::Static(StaticJwks::new(jwks(&[&key]).into_bytes()));
        let b = a.clone();
        assert!(a.same_settings(&b));
        let mut c = a.clone();
        c.keys = KeySource::Static(StaticJwks::new(jwks(&[&TestKey::new("k1")]).into_bytes()));
        assert!(!a.same_settings(&c));
        let mut c = a.clone();
        c.token_cache_entries = 5;
        assert!(!a.same_settings(&c));
        let mut c = a.clone();
        c.startup = crate::identity::oidc::StartupPolicy::Serve;
        assert!(!a.same_settings(&c));
        let mut c = a.clone();
        c.ca_fingerprint = Some([1; 32]);
        assert!(!a.same_settings(&c));
        let mut c = a.clone();
        c.default_refresh = Duration::from_secs(61);
        assert!(!a.same_settings(&c));
    }
}
