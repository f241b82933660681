//! One generation of the filter: the program and its prefix tables, loaded from a compiled
//! rule set, not yet attached. Each reload builds a new generation, fills it completely, and
//! only then swaps it into the interface links (see `control`), so the kernel never sees a
//! half-filled table. Shared maps (bans, counters) are reused from their pins.

use std::os::fd::{AsFd, BorrowedFd};

use aya::maps::Array;
use aya::programs::Xdp;
use aya::{Ebpf, EbpfLoader};
use gateway_common::{Decision, Node, maps, programs};

use super::counters::KernelSlots;
use super::{KernelError, PinLayout, objects, pin_err};
use crate::rules::table::{CompiledRules, TableStats};

/// A loaded, unattached program with its filled tables.
pub struct Generation {
    ebpf: Ebpf,
    pub stats: TableStats,
    pub fingerprint: u64,
}

impl Generation {
    /// Loads the filter with `rules` into the kernel. Shared maps are created under
    /// `layout.maps()` the first time and reused afterwards.
    pub fn load(layout: &PinLayout, rules: &CompiledRules) -> Result<Self, KernelError> {
        let maps_dir = layout.maps();
        std::fs::create_dir_all(&maps_dir)
            .map_err(pin_err("creating the pin directory", &maps_dir))?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .map_max_entries(maps::NODES4, rules.v4.len() as u32)
            .map_max_entries(maps::NODES6, rules.v6.len() as u32)
            .map_max_entries(maps::DECISIONS, rules.verdicts.len() as u32)
            .load(objects::FILTER)?;

        let decisions = {
            let mut slots = KernelSlots::open(layout)?;
            rules.decisions(&mut slots)?
        };
        fill::<Node>(&mut ebpf, maps::NODES4, &rules.v4)?;
        fill::<Node>(&mut ebpf, maps::NODES6, &rules.v6)?;
        fill::<Decision>(&mut ebpf, maps::DECISIONS, &decisions)?;

        let prog = program(&mut ebpf)?;
        prog.load()
            .map_err(|e| KernelError::program("verifying the XDP program", e))?;
        Ok(Self {
            ebpf,
            stats: rules.stats,
            fingerprint: rules.fingerprint(),
        })
    }

    /// The XDP program of this generation.
    pub fn program(&mut self) -> Result<&mut Xdp, KernelError> {
        program(&mut self.ebpf)
    }

    /// The program's file descriptor (for test runs).
    pub fn program_fd(&self) -> Result<BorrowedFd<'_>, KernelError> {
        let prog: &Xdp = self
            .ebpf
            .program(programs::FILTER)
            .ok_or_else(missing_program)?
            .try_into()
            .map_err(|e| KernelError::program("opening the XDP program", e))?;
        let fd = prog
            .fd()
            .map_err(|e| KernelError::program("opening the XDP program", e))?;
        Ok(fd.as_fd())
    }
}

impl Generation {
    /// Kernel memory of this generation's tables (NODES4, NODES6, DECISIONS), as the kernel
    /// accounts it (`memlock` in the maps' fdinfo).
    pub fn table_memory(&self) -> std::io::Result<u64> {
        let mut total = 0;
        for name in [maps::NODES4, maps::NODES6, maps::DECISIONS] {
            let map = self
                .ebpf
                .map(name)
                .ok_or_else(|| std::io::Error::other(format!("no map {name}")))?;
            total += map_memlock(map)?;
        }
        Ok(total)
    }
}

/// The `memlock` figure of a map's fdinfo: the kernel's own account of its memory.
pub fn map_memlock(map: &aya::maps::Map) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd as _;
    let data = map_data(map).ok_or_else(|| std::io::Error::other("unsupported map type"))?;
    let fd = data.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no memlock line in fdinfo"))
}

fn map_data(map: &aya::maps::Map) -> Option<&aya::maps::MapData> {
    use aya::maps::Map;
    match map {
        Map::Array(d) | Map::HashMap(d) | Map::LpmTrie(d) | Map::PerCpuArray(d) => Some(d),
        _ => None,
    }
}

fn missing_program() -> KernelError {
    KernelError::program(
        "the BPF object has no `portcullis` program",
        aya::programs::ProgramError::NotLoaded,
    )
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp, KernelError> {
    ebpf.program_mut(programs::FILTER)
        .ok_or_else(missing_program)?
        .try_into()
        .map_err(|e| KernelError::program("opening the XDP program", e))
}

/// Writes `values` into the array map `name`, index for index.
fn fill<T: aya::Pod>(ebpf: &mut Ebpf, name: &str, values: &[T]) -> Result<(), KernelError> {
    let map = ebpf.map_mut(name).ok_or_else(|| {
        KernelError::map(
            format!("map {name}"),
            aya::maps::MapError::InvalidName { name: name.into() },
        )
    })?;
    let mut array: Array<_, T> =
        Array::try_from(map).map_err(|e| KernelError::map(format!("opening map {name}"), e))?;
    for (i, v) in values.iter().enumerate() {
        array
            .set(i as u32, v, 0)
            .map_err(|e| KernelError::map(format!("filling map {name}"), e))?;
    }
    Ok(())
}
