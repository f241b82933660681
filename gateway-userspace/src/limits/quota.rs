//! Quotas: calls and bytes per key over a calendar period (an hour, a day or a month, in UTC,
//! so every gateway and every restart agrees on when a period ends). Counters live behind
//! [`QuotaStore`]; [`LocalQuotaStore`] keeps them in memory and in the state file
//! (`super::state_file`), so they survive restarts.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::{Period, QuotaSpec};

use super::rate::OVERFLOW_KEY;

/// Calls and bytes counted in one period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub calls: u64,
    pub bytes: u64,
}

/// One counter: quota name, key, the start of its period (Unix seconds) and what it counted.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub quota: String,
    pub key: String,
    pub window: u64,
    #[serde(flatten)]
    pub usage: Usage,
}

/// Where quota counters live. A counter belongs to one period: a read or an addition with a
/// later `window` starts it from zero.
pub trait QuotaStore: Send + Sync {
    /// What `key` has used of `quota` in the period starting at `window`.
    fn usage(&self, quota: &str, key: &str, window: u64) -> Usage;
    /// Counts `calls` and `bytes` and returns the usage after them.
    fn add(&self, quota: &str, key: &str, window: u64, calls: u64, bytes: u64) -> Usage;
    /// Drops counters of past periods (`current` gives each quota's current window).
    fn prune(&self, current: &dyn Fn(&str) -> Option<u64>);
    /// Counters held, per quota name.
    fn tracked(&self) -> BTreeMap<String, usize>;
    /// Every counter, for the state file and the admin endpoint.
    fn entries(&self) -> Vec<Entry>;
}

/// In-process counters, bounded to `max_keys` keys per quota (new keys beyond share one
/// overflow counter, as rate limits do).
pub struct LocalQuotaStore {
    map: Mutex<BTreeMap<(String, String), (u64, Usage)>>,
    max_keys: std::sync::atomic::AtomicUsize,
    dirty: AtomicBool,
}

impl LocalQuotaStore {
    pub fn new(max_keys: usize) -> Self {
        Self {
            map: Mutex::new(BTreeMap::new()),
            max_keys: max_keys.into(),
            dirty: AtomicBool::new(false),
        }
    }

    /// A store holding `entries` (read from the state file).
    pub fn with_entries(max_keys: usize, entries: Vec<Entry>) -> Self {
        let store = Self::new(max_keys);
        {
            let mut map = store.lock();
            for e in entries {
                map.insert((e.quota, e.key), (e.window, e.usage));
            }
        }
        store
    }

    pub fn set_max_keys(&self, max_keys: usize) {
        self.max_keys.store(max_keys, Ordering::Relaxed);
    }

    /// Marks the counters as changed (a write that failed is retried).
    pub fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    /// Whether anything changed since the last call (for the periodic flush).
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), (u64, Usage)>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn slot(
        &self,
        map: &BTreeMap<(String, String), (u64, Usage)>,
        quota: &str,
        key: &str,
    ) -> (String, String) {
        let wanted = (quota.to_owned(), key.to_owned());
        if map.contains_key(&wanted) {
            return wanted;
        }
        let held = map
            .range((quota.to_owned(), String::new())..)
            .take_while(|((q, _), _)| q == quota)
            .count();
        if held < self.max_keys.load(Ordering::Relaxed) {
            wanted
        } else {
            (quota.to_owned(), OVERFLOW_KEY.to_owned())
        }
    }
}

impl QuotaStore for LocalQuotaStore {
    fn usage(&self, quota: &str, key: &str, window: u64) -> Usage {
        let map = self.lock();
        let slot = self.slot(&map, quota, key);
        match map.get(&slot) {
            Some(&(w, usage)) if w == window => usage,
            _ => Usage::default(),
        }
    }

    fn add(&self, quota: &str, key: &str, window: u64, calls: u64, bytes: u64) -> Usage {
        let mut map = self.lock();
        let slot = self.slot(&map, quota, key);
        let entry = map.entry(slot).or_insert((window, Usage::default()));
        if entry.0 != window {
            *entry = (window, Usage::default());
        }
        entry.1.calls = entry.1.calls.saturating_add(calls);
        entry.1.bytes = entry.1.bytes.saturating_add(bytes);
        self.dirty.store(true, Ordering::Release);
        entry.1
    }

    fn prune(&self, current: &dyn Fn(&str) -> Option<u64>) {
        let mut map = self.lock();
        let before = map.len();
        // A quota no longer configured keeps its counters: a reload that removes it and a
        // reload that brings it back within the period must not reset anyone's usage.
        map.retain(|(quota, _), (window, _)| current(quota).is_none_or(|w| *window >= w));
        if map.len() != before {
            self.dirty.store(true, Ordering::Release);
        }
    }

    fn tracked(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (quota, _) in self.lock().keys() {
            *out.entry(quota.clone()).or_insert(0) += 1;
        }
        out
    }

    fn entries(&self) -> Vec<Entry> {
        self.lock()
            .iter()
            .map(|((quota, key), (window, usage))| Entry {
                quota: quota.clone(),
                key: key.clone(),
                window: *window,
                usage: *usage,
            })
            .collect()
    }
}

/// The limits that apply to an API key id: the tier naming it, else the quota's own.
pub fn limits_for(spec: &QuotaSpec, key_id: Option<&str>) -> (Option<u64>, Option<u64>) {
    let tier = key_id.and_then(|id| spec.tiers.iter().find(|t| t.keys.iter().any(|k| k == id)));
    match tier {
        Some(t) => (t.calls.or(spec.calls), t.bytes.or(spec.bytes)),
        None => (spec.calls, spec.bytes),
    }
}

const HOUR: u64 = 3600;
const DAY: u64 = 86_400;

/// The period containing `unix` (seconds): its start and its end, in Unix seconds (UTC).
pub fn window(period: Period, unix: u64) -> (u64, u64) {
    match period {
        Period::Hour => {
            let start = unix - unix % HOUR;
            (start, start + HOUR)
        }
        Period::Day => {
            let start = unix - unix % DAY;
            (start, start + DAY)
        }
        Period::Month => {
            let days = unix / DAY;
            let (y, m, _) = civil_from_days(days);
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            (
                days_from_civil(y, m, 1) * DAY,
                days_from_civil(ny, nm, 1) * DAY,
            )
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm), for dates
/// from 1970 on.
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).saturating_sub(719_468)
}

/// The date of a day count since 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_windows_in_utc() {
        // 2026-11-22T08:30:15Z
        let t = 1_795_336_215;
        assert_eq!(window(Period::Hour, t), (1_795_334_400, 1_795_338_000));
        assert_eq!(window(Period::Day, t), (1_795_305_600, 1_795_392_000));
        // November 2026: from the 1st to December 1st.
        assert_eq!(window(Period::Month, t), (1_793_491_200, 1_796_083_200));
        // December rolls into January of the next year.
        let dec = 1_796_083_200 + 5 * DAY;
        assert_eq!(window(Period::Month, dec), (1_796_083_200, 1_798_761_600));
        // February of a leap year has 29 days.
        let feb_2028 = days_from_civil(2028, 2, 10) * DAY;
        let (s, e) = window(Period::Month, feb_2028);
        assert_eq!((e - s) / DAY, 29);
        for days in [0, 59, 365, 10_000, 20_000, 30_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn counters_restart_with_each_period() {
        let s = LocalQuotaStore::new(10);
        assert_eq!(
            s.add("q", "k", 100, 1, 10),
            Usage {
                calls: 1,
                bytes: 10
            }
        );
        assert_eq!(
            s.add("q", "k", 100, 1, 5),
            Usage {
                calls: 2,
                bytes: 15
            }
        );
        assert_eq!(
            s.usage("q", "k", 100),
            Usage {
                calls: 2,
                bytes: 15
            }
        );
        assert_eq!(s.usage("q", "k", 200), Usage::default());
        assert_eq!(s.add("q", "k", 200, 1, 0), Usage { calls: 1, bytes: 0 });
        assert!(s.take_dirty());
        assert!(!s.take_dirty());
    }

    #[test]
    fn the_key_cap_and_pruning() {
        let s = LocalQuotaStore::new(2);
        s.add("q", "a", 100, 1, 0);
        s.add("q", "b", 100, 1, 0);
        s.add("q", "c", 100, 1, 0);
        s.add("q", "d", 100, 1, 0);
        assert_eq!(
            s.usage("q", "d", 100).calls,
            2,
            "c and d share the overflow"
        );
        assert_eq!(s.tracked()["q"], 3);
        // Another quota has its own cap.
        s.add("other", "a", 100, 1, 0);
        s.prune(&|q| (q == "q").then_some(200));
        assert_eq!(s.tracked().get("q"), None);
        assert_eq!(s.tracked()["other"], 1);
    }

    #[test]
    fn tiers_override_the_limits_they_name() {
        let spec = QuotaSpec {
            name: "q".into(),
            period: Period::Day,
            calls: Some(10),
            bytes: Some(100),
            key: crate::config::KeySpec {
                parts: vec![],
                ipv4_prefix: 32,
                ipv6_prefix: 128,
            },
            scope: Default::default(),
            tiers: vec![crate::config::QuotaTier {
                keys: vec!["gold".into()],
                calls: Some(1000),
                bytes: None,
            }],
        };
        assert_eq!(limits_for(&spec, Some("gold")), (Some(1000), Some(100)));
        assert_eq!(limits_for(&spec, Some("free")), (Some(10), Some(100)));
    }
}
