//! Kernel counters: per-CPU packets and bytes per verdict and reason, summed for metrics and
//! `portcullis stats`; and the registry that gives every rule counter a stable slot, so a
//! reload or restart does not reshuffle what a slot means.

use aya::maps::{HashMap, MapData, PerCpuArray};
use gateway_common::{COUNTER_NAME_LEN, Counter, maps, slot};

use super::bans::open_map;
use super::{BanReason, KernelError, PinLayout};
use crate::rules::table::{CounterSlots, counter_name, fixed_slot};

/// One counter, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterReading {
    /// `verdict/reason`, for example `drop/geo:RU`, `report/deny:bogons`, `pass/allow`.
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
}

impl CounterReading {
    /// `pass`, `drop` or `report`.
    pub fn verdict(&self) -> &str {
        self.name.split_once('/').map_or("", |(v, _)| v)
    }

    /// What decided, for example `geo:RU`.
    pub fn reason(&self) -> &str {
        self.name.split_once('/').map_or(&self.name, |(_, r)| r)
    }
}

fn fixed_names() -> Vec<String> {
    let mut names: Vec<String> = [
        counter_name::PASS_NO_RULE,
        counter_name::PASS_ALLOW,
        counter_name::PASS_UNPARSED,
        counter_name::PASS_NOT_IP,
    ]
    .map(String::from)
    .into();
    names.extend(BanReason::ALL.iter().map(|r| format!("drop/ban:{r}")));
    names
}

fn name_key(name: &str) -> Option<[u8; COUNTER_NAME_LEN]> {
    let bytes = name.as_bytes();
    if bytes.len() > COUNTER_NAME_LEN {
        return None;
    }
    let mut key = [0u8; COUNTER_NAME_LEN];
    key[..bytes.len()].copy_from_slice(bytes);
    Some(key)
}

fn key_name(key: &[u8; COUNTER_NAME_LEN]) -> String {
    let end = key.iter().position(|b| *b == 0).unwrap_or(COUNTER_NAME_LEN);
    String::from_utf8_lossy(&key[..end]).into_owned()
}

/// The pinned registry of counter names to slots.
pub(crate) struct KernelSlots {
    names: HashMap<MapData, [u8; COUNTER_NAME_LEN], u32>,
    next: u32,
}

impl KernelSlots {
    pub(crate) fn open(layout: &PinLayout) -> Result<Self, KernelError> {
        let names: HashMap<MapData, [u8; COUNTER_NAME_LEN], u32> =
            HashMap::try_from(open_map(layout, maps::COUNTER_NAMES)?)
                .map_err(|e| KernelError::map("opening the counter registry", e))?;
        let next = names
            .iter()
            .filter_map(Result::ok)
            .map(|(_, s)| s + 1)
            .max()
            .unwrap_or(slot::FIRST_DYNAMIC)
            .max(slot::FIRST_DYNAMIC);
        Ok(Self { names, next })
    }
}

impl CounterSlots for KernelSlots {
    fn slot(&mut self, name: &str) -> Option<u32> {
        if let Some(s) = fixed_slot(name) {
            return Some(s);
        }
        // Names longer than the key are cut at a character boundary; rule names are short.
        let mut cut = name.len().min(COUNTER_NAME_LEN);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        let key = name_key(&name[..cut])?;
        if let Ok(s) = self.names.get(&key, 0) {
            return Some(s);
        }
        if self.next >= slot::COUNT {
            return None;
        }
        let s = self.next;
        self.names.insert(key, s, 0).ok()?;
        self.next += 1;
        Some(s)
    }
}

/// Reader of the pinned counters.
pub struct Counters {
    values: PerCpuArray<MapData, Counter>,
    names: HashMap<MapData, [u8; COUNTER_NAME_LEN], u32>,
}

impl Counters {
    pub fn open(layout: &PinLayout) -> Result<Self, KernelError> {
        if !layout.exists() {
            return Err(KernelError::NotPinned(layout.dir().to_path_buf()));
        }
        Ok(Self {
            values: PerCpuArray::try_from(open_map(layout, maps::COUNTERS)?)
                .map_err(|e| KernelError::map("opening the counters", e))?,
            names: HashMap::try_from(open_map(layout, maps::COUNTER_NAMES)?)
                .map_err(|e| KernelError::map("opening the counter registry", e))?,
        })
    }

    /// Every named counter, summed over CPUs, sorted by name.
    pub fn read(&self) -> Result<Vec<CounterReading>, KernelError> {
        let mut named: Vec<(String, u32)> = fixed_names()
            .into_iter()
            .filter_map(|n| fixed_slot(&n).map(|s| (n, s)))
            .collect();
        for item in self.names.iter() {
            let (key, s) = item.map_err(|e| KernelError::map("reading the counter registry", e))?;
            named.push((key_name(&key), s));
        }
        let mut out = Vec::with_capacity(named.len());
        for (name, s) in named {
            let per_cpu = self
                .values
                .get(&s, 0)
                .map_err(|e| KernelError::map("reading counters", e))?;
            let (packets, bytes) = per_cpu
                .iter()
                .fold((0u64, 0u64), |(p, b), c| (p + c.packets, b + c.bytes));
            out.push(CounterReading {
                name,
                packets,
                bytes,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The reading for one counter name (zero when never registered).
    pub fn get(&self, name: &str) -> Result<CounterReading, KernelError> {
        Ok(self
            .read()?
            .into_iter()
            .find(|c| c.name == name)
            .unwrap_or(CounterReading {
                name: name.to_string(),
                packets: 0,
                bytes: 0,
            }))
    }
}
