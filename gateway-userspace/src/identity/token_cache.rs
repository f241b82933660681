//! The verified-token cache of one token provider: a token that validated is not verified
//! again (no signature check, no JSON parsing) until its `exp` or until its signing key leaves
//! the provider's JWKS.
//!
//! - **Key.** SHA-256 of the token: the token itself is never stored, so a memory dump of the
//!   cache holds no bearer credential, only claims.
//! - **Lifetime.** An entry answers until the token's `exp` exactly (the clock-skew leeway is
//!   not applied to cached tokens; past `exp` a token is verified again, which still honours the
//!   leeway), and only while the key that verified it is published: each entry keeps the
//!   fingerprint of that key ([`KeyEpoch::key_fingerprint`]) and the epoch it last checked it
//!   in. When the provider's key epoch changes the fingerprint is compared again on the next
//!   hit; a key gone or replaced under the same `kid` removes the entry (a miss). `nbf` and
//!   `iat` need no re-check: they were satisfied when the token was verified and only move
//!   further into the past.
//! - **Policy.** One cache per provider, filled and read under that provider's one
//!   [`crate::identity::jwt::ValidationPolicy`] (see [`crate::identity::validator`]).
//! - **Bound and eviction.** At most `capacity` entries over all shards (each shard holds its
//!   share). A full shard evicts with CLOCK (second chance): a hit sets the entry's reference
//!   bit; the hand clears set bits and takes the first entry whose bit is clear or that has
//!   expired. That is O(1) amortised (at most two sweeps), and lets tokens in use survive a
//!   burst of one-off ones. Only tokens that validated are ever inserted, so flushing the cache
//!   takes valid tokens from the identity provider: garbage or forged tokens cannot evict
//!   anything, and each valid token inserted evicts at most one entry, whose owner pays one
//!   full verification on its next request.
//! - **Concurrency.** Up to 16 shards (one per 256 entries, so small caches have one), each behind a `RwLock`: a hit takes a
//!   read lock only (the reference bit and the checked epoch are atomics), so hits on any
//!   shard proceed in parallel; inserts and removals take one shard's write lock.
//! - **Counters.** Hits and misses are atomics ([`CacheCounters`]), shared across reloads by
//!   provider name, and every named cache is listed for the metrics ([`readings`]).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::identity::jwt::Claims;
use crate::identity::oidc::{Fingerprint, KeyEpoch};

/// SHA-256 of a token: the cache key.
pub type TokenKey = [u8; 32];

/// Most shards per cache.
const MAX_SHARDS: usize = 16;
/// Fewest entries per shard when there are several.
const MIN_SHARD_ENTRIES: usize = 256;

/// Hit and miss counts of a provider's cache (shared across reloads by provider name so the
/// exported counters only grow).
#[derive(Debug, Default)]
pub struct CacheCounters {
    hits: AtomicU64,
    misses: AtomicU64,
}

impl CacheCounters {
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }
}

/// A snapshot of a cache's counters and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
    pub capacity: usize,
}

struct Entry {
    key: TokenKey,
    claims: Arc<Claims>,
    /// `exp` in milliseconds since the epoch.
    expires_ms: u64,
    kid: Option<Box<str>>,
    /// The verifying key's fingerprint.
    key_fp: Fingerprint,
    /// The key epoch in which `key_fp` was last found current.
    epoch: AtomicU64,
    /// CLOCK reference bit.
    referenced: AtomicBool,
}

impl Entry {
    fn live(&self, now_ms: u64) -> bool {
        now_ms < self.expires_ms
    }

    /// Whether the verifying key is still published in `epoch`; records the epoch when it is.
    fn key_current(&self, epoch: &KeyEpoch) -> bool {
        if self.epoch.load(Ordering::Acquire) == epoch.id {
            return true;
        }
        let current = epoch.key_fingerprint(self.kid.as_deref()) == Some(self.key_fp);
        if current {
            self.epoch.store(epoch.id, Ordering::Release);
        }
        current
    }
}

/// The slots of one shard and the index into them.
struct Shard {
    index: HashMap<TokenKey, usize, BuildHasherDefault<KeyHasher>>,
    slots: Vec<Entry>,
    hand: usize,
    capacity: usize,
}

impl Shard {
    fn remove_at(&mut self, i: usize) {
        let gone = self.slots.swap_remove(i);
        self.index.remove(&gone.key);
        if let Some(moved) = self.slots.get(i) {
            self.index.insert(moved.key, i);
        }
        if self.hand >= self.slots.len() {
            self.hand = 0;
        }
    }

    /// The CLOCK victim: the first entry from the hand that has expired or whose reference bit
    /// is clear (clearing set bits on the way). Two sweeps at most.
    fn victim(&mut self, now_ms: u64) -> usize {
        let len = self.slots.len();
        for _ in 0..2 * len {
            let i = self.hand % len;
            self.hand = (i + 1) % len;
            let e = &self.slots[i];
            if !e.live(now_ms) || !e.referenced.swap(false, Ordering::Relaxed) {
                return i;
            }
        }
        self.hand
    }
}

/// Keys are SHA-256 outputs, already uniform: eight of their bytes are the hash. Only tokens
/// that validated are inserted, so the stored keys cannot be chosen to collide.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as its length (a usize write) and then its bytes.
        if let Some(b) = bytes.get(8..16) {
            let mut word = [0u8; 8];
            word.copy_from_slice(b);
            self.0 = u64::from_le_bytes(word);
        }
    }
    fn write_usize(&mut self, _: usize) {}
}

struct Inner {
    name: String,
    shards: Box<[RwLock<Shard>]>,
    capacity: usize,
    counters: Arc<CacheCounters>,
}

/// A bounded cache of verified tokens (see the module documentation). Cheap to clone.
#[derive(Clone)]
pub struct TokenCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("name", &self.inner.name)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Every named cache alive, for the metrics. Touched only when a cache is created and at
/// scrape time, never on the request path.
static LIVE: Mutex<Vec<Weak<Inner>>> = Mutex::new(Vec::new());

/// One named cache's numbers, for the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheReading {
    pub provider: String,
    pub stats: CacheStats,
}

/// The readings of every live named cache; when a reload briefly keeps two caches of one
/// provider, the newer one's.
pub fn readings() -> Vec<CacheReading> {
    let mut live = match LIVE.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    live.retain(|w| w.strong_count() > 0);
    let mut out: Vec<CacheReading> = Vec::new();
    for inner in live.iter().filter_map(Weak::upgrade) {
        let reading = CacheReading {
            provider: inner.name.clone(),
            stats: TokenCache { inner }.stats(),
        };
        match out.iter_mut().find(|r| r.provider == reading.provider) {
            Some(r) => *r = reading,
            None => out.push(reading),
        }
    }
    out
}

/// Milliseconds since the epoch (0 before it).
fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl TokenCache {
    /// An unnamed cache of at most `capacity` entries (0: disabled); not listed in the metrics.
    pub fn new(capacity: usize) -> Self {
        Self::build(String::new(), capacity, Arc::default())
    }

    /// A cache listed in the metrics under `provider`, counting into `counters`.
    pub fn named(provider: &str, capacity: usize, counters: Arc<CacheCounters>) -> Self {
        let cache = Self::build(provider.to_owned(), capacity, counters);
        let mut live = match LIVE.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&cache.inner));
        cache
    }

    fn build(name: String, capacity: usize, counters: Arc<CacheCounters>) -> Self {
        // Shards only pay off with room in each: a tiny shard would evict an entry whenever two
        // live tokens hash to it while the cache as a whole has space. So at least
        // MIN_SHARD_ENTRIES per shard (one shard for small caches), at most MAX_SHARDS.
        // No shards at all when the cache is disabled (capacity 0).
        let n = if capacity == 0 {
            0
        } else {
            (capacity / MIN_SHARD_ENTRIES).clamp(1, MAX_SHARDS)
        };
        // Shares that add up to exactly `capacity`.
        let shards = (0..n)
            .map(|i| {
                let share = capacity / n + usize::from(i < capacity % n);
                RwLock::new(Shard {
                    index: HashMap::with_capacity_and_hasher(share, Default::default()),
                    slots: Vec::with_capacity(share),
                    hand: 0,
                    capacity: share,
                })
            })
            .collect();
        TokenCache {
            inner: Arc::new(Inner {
                name,
                shards,
                capacity,
                counters,
            }),
        }
    }

    /// The cache key of a token.
    pub fn key(token: &str) -> TokenKey {
        crate::identity::oidc::fingerprint(token.as_bytes())
    }

    /// Whether the cache stores anything at all.
    pub fn enabled(&self) -> bool {
        self.inner.capacity > 0
    }

    /// The bound.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// The shared hit and miss counters.
    pub fn counters(&self) -> &Arc<CacheCounters> {
        &self.inner.counters
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| s.read().map_or(0, |s| s.slots.len()))
            .sum()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counters and size now.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.inner.counters.hits(),
            misses: self.inner.counters.misses(),
            entries: self.len(),
            capacity: self.inner.capacity,
        }
    }

    fn shard(&self, key: &TokenKey) -> Option<&RwLock<Shard>> {
        let n = self.inner.shards.len();
        if n == 0 {
            return None;
        }
        let mut word = [0u8; 8];
        word.copy_from_slice(&key[..8]);
        self.inner
            .shards
            .get((u64::from_le_bytes(word) % n as u64) as usize)
    }

    /// The claims of a cached token that has not expired at `now` and whose key is still in
    /// `epoch`; counts a hit or a miss. An entry found dead is removed.
    pub fn get(&self, key: &TokenKey, now: SystemTime, epoch: &KeyEpoch) -> Option<Arc<Claims>> {
        let shard = self.shard(key)?;
        let now_ms = millis(now);
        let dead = {
            let Ok(s) = shard.read() else {
                self.miss();
                return None;
            };
            match s.index.get(key).and_then(|&i| s.slots.get(i)) {
                None => false,
                Some(e) if e.live(now_ms) && e.key_current(epoch) => {
                    e.referenced.store(true, Ordering::Relaxed);
                    self.inner.counters.hits.fetch_add(1, Ordering::Relaxed);
                    return Some(e.claims.clone());
                }
                Some(_) => true,
            }
        };
        if dead && let Ok(mut s) = shard.write() {
            // Looked up again: the slot may have moved or been replaced meanwhile.
            if let Some(&i) = s.index.get(key)
                && s.slots
                    .get(i)
                    .is_some_and(|e| !e.live(now_ms) || !e.key_current(epoch))
            {
                s.remove_at(i);
            }
        }
        self.miss();
        None
    }

    fn miss(&self) {
        self.inner.counters.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Stores the claims of a token that validated at `now` with a key of `epoch`. Tokens
    /// already past `exp`, or whose key `epoch` does not know, are not stored.
    pub fn insert(&self, key: TokenKey, claims: Arc<Claims>, now: SystemTime, epoch: &KeyEpoch) {
        let Some(shard) = self.shard(&key) else {
            return;
        };
        let Some(expires_ms) = claims.expires_at().map(millis) else {
            return;
        };
        let now_ms = millis(now);
        if now_ms >= expires_ms {
            return;
        }
        let kid = claims.header().kid.as_deref();
        let Some(key_fp) = epoch.key_fingerprint(kid) else {
            return;
        };
        let entry = Entry {
            key,
            kid: kid.map(Box::from),
            claims,
            expires_ms,
            key_fp,
            epoch: AtomicU64::new(epoch.id),
            referenced: AtomicBool::new(false),
        };
        let Ok(mut s) = shard.write() else {
            return;
        };
        if let Some(&i) = s.index.get(&key) {
            s.slots[i] = entry;
            return;
        }
        if s.slots.len() < s.capacity {
            let i = s.slots.len();
            s.slots.push(entry);
            s.index.insert(key, i);
            return;
        }
        let i = s.victim(now_ms);
        let old = s.slots[i].key;
        s.index.remove(&old);
        s.slots[i] = entry;
        s.index.insert(key, i);
    }

    /// Removes every entry.
    pub fn clear(&self) {
        for shard in self.inner.shards.iter() {
            if let Ok(mut s) = shard.write() {
                s.slots.clear();
                s.index.clear();
                s.hand = 0;
            }
        }
    }
}
