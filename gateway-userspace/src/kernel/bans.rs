//! Dynamic bans: the API the proxy uses to turn what it learns into kernel drops.
//! `ban(prefix, ttl, reason)`, `unban`, `list`, `sweep`. A ban is a hash entry keyed by
//! (family, length, masked address) with a CLOCK_MONOTONIC deadline the program checks itself,
//! so a ban expires on time even if no userspace process is running; `sweep` only reclaims the
//! memory of expired entries.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use aya::maps::{Array, HashMap, Map, MapData};
use gateway_common::{
    BAN_LEN_SLOTS, BAN_LENS_V4, BAN_LENS_V6, BanEntry, BanKey, FAMILY_V4, FAMILY_V6, ban_reason,
    maps,
};

use super::time::{monotonic_ns, unix_now};
use super::{KernelError, PinLayout};
use crate::rules::Prefix;

/// Why a client was banned; counted per reason in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BanReason {
    Manual,
    AuthFailure,
    RateLimit,
    Validation,
    Cluster,
}

impl BanReason {
    pub const ALL: [BanReason; 5] = [
        Self::Manual,
        Self::AuthFailure,
        Self::RateLimit,
        Self::Validation,
        Self::Cluster,
    ];

    /// The code stored in the kernel entry.
    pub fn code(self) -> u32 {
        match self {
            Self::Manual => ban_reason::MANUAL,
            Self::AuthFailure => ban_reason::AUTH_FAILURE,
            Self::RateLimit => ban_reason::RATE_LIMIT,
            Self::Validation => ban_reason::VALIDATION,
            Self::Cluster => ban_reason::CLUSTER,
        }
    }

    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::AuthFailure => "auth-failure",
            Self::RateLimit => "rate-limit",
            Self::Validation => "validation",
            Self::Cluster => "cluster",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl fmt::Display for BanReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A live ban as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ban {
    pub prefix: Prefix,
    pub reason: BanReason,
    /// Time left; `None` for a ban without expiry.
    pub remaining: Option<Duration>,
    pub created_unix: u64,
}

impl Ban {
    /// The JSON form shown by `portcullis ban list --json` and the admin endpoint.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "prefix": self.prefix.to_string(),
            "reason": self.reason.name(),
            "remaining_secs": self.remaining.map(|d| d.as_secs_f64()),
            "created_unix": self.created_unix,
        })
    }
}

/// Handle on the pinned ban maps.
pub struct Bans {
    map: HashMap<MapData, BanKey, BanEntry>,
    lens: Array<MapData, u64>,
}

/// The kernel key for a prefix.
pub fn ban_key(prefix: &Prefix) -> BanKey {
    let mut addr = [0u8; 16];
    let octets = prefix.octets();
    addr[..octets.len()].copy_from_slice(&octets);
    BanKey {
        family: if prefix.is_v6() { FAMILY_V6 } else { FAMILY_V4 },
        prefix_len: prefix.len(),
        _pad: [0; 2],
        addr,
    }
}

fn key_prefix(key: &BanKey) -> Option<Prefix> {
    let addr = match key.family {
        FAMILY_V4 => IpAddr::from([key.addr[0], key.addr[1], key.addr[2], key.addr[3]]),
        FAMILY_V6 => IpAddr::from(key.addr),
        _ => return None,
    };
    Prefix::new(addr, key.prefix_len).ok()
}

impl Bans {
    /// Opens the pinned ban maps (created by the first program load).
    pub fn open(layout: &PinLayout) -> Result<Self, KernelError> {
        if !layout.exists() {
            return Err(KernelError::NotPinned(layout.dir().to_path_buf()));
        }
        let map = open_map(layout, maps::BANS)?;
        let lens = open_map(layout, maps::BAN_LENS)?;
        Ok(Self {
            map: HashMap::try_from(map).map_err(|e| KernelError::map("opening the ban map", e))?,
            lens: Array::try_from(lens)
                .map_err(|e| KernelError::map("opening the ban lengths", e))?,
        })
    }

    /// Bans `prefix` for `ttl` (`None`: until removed). Replaces an existing ban of the same
    /// prefix. Takes effect for the next packet.
    pub fn ban(
        &mut self,
        prefix: Prefix,
        ttl: Option<Duration>,
        reason: BanReason,
    ) -> Result<(), KernelError> {
        let expires_at_ns = match ttl {
            None => 0,
            Some(t) if t.is_zero() => {
                return Err(KernelError::Ban(
                    "a ban's time to live must be more than zero".into(),
                ));
            }
            Some(t) => {
                monotonic_ns().saturating_add(u64::try_from(t.as_nanos()).unwrap_or(u64::MAX))
            }
        };
        // The length must be listed before the entry exists, or the program would not probe it.
        self.ensure_len(&prefix)?;
        let entry = BanEntry {
            expires_at_ns,
            created_unix: unix_now(),
            reason: reason.code(),
            _pad: 0,
        };
        self.map
            .insert(ban_key(&prefix), entry, 0)
            .map_err(|e| KernelError::map(format!("banning {prefix}"), e))
    }

    /// Removes the ban of exactly `prefix`. Returns whether there was one.
    pub fn unban(&mut self, prefix: Prefix) -> Result<bool, KernelError> {
        let existed = match self.map.remove(&ban_key(&prefix)) {
            Ok(()) => true,
            Err(e) if is_not_found(&e) => false,
            Err(e) => return Err(KernelError::map(format!("unbanning {prefix}"), e)),
        };
        self.refresh_lens()?;
        Ok(existed)
    }

    /// The live ban covering `addr`, if any: the same probe the program makes (each banned
    /// prefix length of the family), for the userspace backstop.
    pub fn lookup(&self, addr: IpAddr) -> Result<Option<BanReason>, KernelError> {
        let host = Prefix::host(addr);
        let now = monotonic_ns();
        for stored in self.read_lens(host.is_v6())? {
            let Ok(prefix) = Prefix::new(host.addr(), (stored - 1) as u8) else {
                continue;
            };
            match self.map.get(&ban_key(&prefix), 0) {
                Ok(e) if e.expires_at_ns == 0 || e.expires_at_ns > now => {
                    return Ok(Some(
                        BanReason::from_code(e.reason).unwrap_or(BanReason::Manual),
                    ));
                }
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(KernelError::map("looking up a ban", e)),
            }
        }
        Ok(None)
    }

    /// Live bans, most recent first.
    pub fn list(&self) -> Result<Vec<Ban>, KernelError> {
        let now = monotonic_ns();
        let mut out = Vec::new();
        for item in self.map.iter() {
            let (key, entry) = item.map_err(|e| KernelError::map("listing bans", e))?;
            if entry.expires_at_ns != 0 && entry.expires_at_ns <= now {
                continue;
            }
            let Some(prefix) = key_prefix(&key) else {
                continue;
            };
            out.push(Ban {
                prefix,
                reason: BanReason::from_code(entry.reason).unwrap_or(BanReason::Manual),
                remaining: (entry.expires_at_ns != 0)
                    .then(|| Duration::from_nanos(entry.expires_at_ns - now)),
                created_unix: entry.created_unix,
            });
        }
        out.sort_by(|a, b| {
            b.created_unix
                .cmp(&a.created_unix)
                .then(a.prefix.cmp(&b.prefix))
        });
        Ok(out)
    }

    /// Deletes expired entries (the program already ignores them) and unlists lengths that no
    /// longer have bans. Returns how many were removed.
    pub fn sweep(&mut self) -> Result<usize, KernelError> {
        let now = monotonic_ns();
        let expired: Vec<BanKey> = self
            .map
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, e)| e.expires_at_ns != 0 && e.expires_at_ns <= now)
            .map(|(k, _)| k)
            .collect();
        for k in &expired {
            match self.map.remove(k) {
                Ok(()) => {}
                // Removed meanwhile by someone else: the goal is reached.
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(KernelError::map("sweeping expired bans", e)),
            }
        }
        self.refresh_lens()?;
        Ok(expired.len())
    }

    fn entry(v6: bool) -> u32 {
        if v6 { BAN_LENS_V6 } else { BAN_LENS_V4 }
    }

    /// The lengths (stored as length + 1) packed in a family's word.
    fn unpack(word: u64) -> Vec<u64> {
        (0..BAN_LEN_SLOTS)
            .map(|i| (word >> (8 * i)) & 0xff)
            .filter(|b| *b != 0)
            .collect()
    }

    fn pack(lens: &[u64]) -> u64 {
        lens.iter()
            .enumerate()
            .fold(0, |w, (i, l)| w | (l << (8 * i)))
    }

    fn read_lens(&self, v6: bool) -> Result<Vec<u64>, KernelError> {
        let word = self
            .lens
            .get(&Self::entry(v6), 0)
            .map_err(|e| KernelError::map("reading ban lengths", e))?;
        Ok(Self::unpack(word))
    }

    fn write_lens(&mut self, v6: bool, lens: &[u64]) -> Result<(), KernelError> {
        // One 8-byte value: the program sees the old set or the new one.
        self.lens
            .set(Self::entry(v6), Self::pack(lens), 0)
            .map_err(|e| KernelError::map("writing ban lengths", e))
    }

    fn ensure_len(&mut self, prefix: &Prefix) -> Result<(), KernelError> {
        let want = u64::from(prefix.len()) + 1;
        let mut lens = self.read_lens(prefix.is_v6())?;
        if lens.contains(&want) {
            return Ok(());
        }
        if lens.len() >= BAN_LEN_SLOTS as usize {
            return Err(KernelError::Ban(format!(
                "cannot ban {prefix}: {BAN_LEN_SLOTS} different prefix lengths are already banned for this family"
            )));
        }
        lens.push(want);
        self.write_lens(prefix.is_v6(), &lens)
    }

    /// Drops lengths that no ban uses any more.
    fn refresh_lens(&mut self) -> Result<(), KernelError> {
        let mut used = std::collections::HashSet::new();
        for k in self.map.keys().filter_map(Result::ok) {
            used.insert((k.family == FAMILY_V6, u64::from(k.prefix_len) + 1));
        }
        for v6 in [false, true] {
            let lens = self.read_lens(v6)?;
            let kept: Vec<u64> = lens
                .iter()
                .copied()
                .filter(|l| used.contains(&(v6, *l)))
                .collect();
            if kept.len() != lens.len() {
                self.write_lens(v6, &kept)?;
            }
        }
        Ok(())
    }
}

/// A delete of a key that is not there: aya reports it as ENOENT from the syscall.
fn is_not_found(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Opens a pinned shared map by name.
pub(crate) fn open_map(layout: &PinLayout, name: &str) -> Result<Map, KernelError> {
    let path = layout.map(name);
    let data = MapData::from_pin(&path)
        .map_err(|e| KernelError::map(format!("opening pinned map {}", path.display()), e))?;
    Map::from_map_data(data)
        .map_err(|e| KernelError::map(format!("opening pinned map {}", path.display()), e))
}
