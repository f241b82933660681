//! The one path by which rule sets reach the kernel: [`KernelControl::apply`] loads a new
//! generation with its tables filled, then swaps it into every interface's pinned link with
//! `bpf_link_update`, which the kernel performs atomically (a packet sees the old program or
//! the new one, never a mix). A restart that finds the same tables pinned adopts them and loads
//! nothing. [`teardown`] is the explicit way to remove everything.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use aya::maps::Array;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::XdpLink;
use aya::programs::{Xdp, XdpMode};
use gateway_common::{maps, meta};

use super::bans::open_map;
use super::generation::Generation;
use super::time::unix_now;
use super::{KernelError, PinLayout, pin_err};
use crate::rules::table::{CompiledRules, TableStats};

/// The attach mode asked for in the config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) where the interface supports it, generic otherwise.
    #[default]
    Auto,
    Native,
    Generic,
}

/// The attach mode in use on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    Native,
    Generic,
}

impl AttachedMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "native" => Some(Self::Native),
            "generic" => Some(Self::Generic),
            _ => None,
        }
    }

    fn xdp_mode(self) -> XdpMode {
        match self {
            Self::Native => XdpMode::Driver,
            Self::Generic => XdpMode::Skb,
        }
    }
}

/// An interface with the program attached, as found in the pins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub interface: String,
    pub mode: AttachedMode,
}

/// What [`KernelControl::apply`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The pinned tables already were these, on these interfaces: nothing was loaded.
    Unchanged { generation: u64 },
    /// A new generation was loaded and swapped in.
    Swapped {
        generation: u64,
        stats: TableStats,
        /// Every configured interface and its mode; `true` where the link was created now.
        attached: Vec<(Attachment, bool)>,
        /// Interfaces detached because they left the config.
        detached: Vec<String>,
    },
}

/// Owner of the pinned program, links and generation metadata.
pub struct KernelControl {
    layout: PinLayout,
    /// The generation this process loaded, kept open so its tables stay inspectable; the
    /// kernel keeps it alive through the pinned links either way.
    current: Option<Generation>,
}

impl KernelControl {
    pub fn new(pin_root: &Path) -> Self {
        Self {
            layout: PinLayout::new(pin_root),
            current: None,
        }
    }

    pub fn layout(&self) -> &PinLayout {
        &self.layout
    }

    /// The generation this process loaded, if any.
    pub fn current(&mut self) -> Option<&mut Generation> {
        self.current.as_mut()
    }

    /// Makes the kernel enforce `rules` on exactly `interfaces`. On error nothing changes:
    /// links already moved to the new program are moved back, links made now are removed.
    pub fn apply(
        &mut self,
        rules: &CompiledRules,
        interfaces: &[String],
        mode: AttachMode,
    ) -> Result<ReloadOutcome, KernelError> {
        let existing = attachments(&self.layout)?;
        let wanted: BTreeSet<&str> = interfaces.iter().map(String::as_str).collect();
        let have: BTreeSet<&str> = existing.iter().map(|a| a.interface.as_str()).collect();
        if self.layout.exists()
            && wanted == have
            && read_meta(&self.layout, meta::FINGERPRINT)? == Some(rules.fingerprint())
        {
            let generation = read_meta(&self.layout, meta::GENERATION)?.unwrap_or(0);
            return Ok(ReloadOutcome::Unchanged { generation });
        }

        let mut generation = Generation::load(&self.layout, rules)?;
        let links_dir = self.layout.links();
        fs::create_dir_all(&links_dir)
            .map_err(pin_err("creating the link directory", &links_dir))?;

        let mut attached = Vec::new();
        let result = (|| {
            let prog = generation.program()?;
            for interface in interfaces {
                if let Some(a) = existing.iter().find(|a| &a.interface == interface) {
                    swap_link(prog, &self.layout, a)?;
                    attached.push((a.clone(), false));
                } else {
                    let mode = attach_new(prog, &self.layout, interface, mode)?;
                    attached.push((
                        Attachment {
                            interface: interface.clone(),
                            mode,
                        },
                        true,
                    ));
                }
            }
            pin_program(prog, &self.layout)
        })();
        if let Err(e) = result {
            self.roll_back(&attached);
            return Err(e);
        }

        let mut detached = Vec::new();
        for a in existing
            .iter()
            .filter(|a| !wanted.contains(a.interface.as_str()))
        {
            unpin_link(&self.layout.link(&a.interface, a.mode))?;
            detached.push(a.interface.clone());
        }

        let number = read_meta(&self.layout, meta::GENERATION)?.unwrap_or(0) + 1;
        write_meta(
            &self.layout,
            meta::LAYOUT,
            u64::from(gateway_common::LAYOUT_VERSION),
        )?;
        write_meta(&self.layout, meta::GENERATION, number)?;
        write_meta(&self.layout, meta::FINGERPRINT, generation.fingerprint)?;
        write_meta(&self.layout, meta::LOADED_UNIX, unix_now())?;
        let stats = generation.stats;
        self.current = Some(generation);
        Ok(ReloadOutcome::Swapped {
            generation: number,
            stats,
            attached,
            detached,
        })
    }

    /// Undoes a partial apply: links that were swapped go back to the pinned (previous)
    /// program, links created by this apply are removed. Best effort: it runs on an error path.
    fn roll_back(&self, done: &[(Attachment, bool)]) {
        let mut previous = Xdp::from_pin(
            self.layout.program(),
            aya_obj::programs::XdpAttachType::Interface,
        )
        .ok();
        for (a, created) in done {
            let path = self.layout.link(&a.interface, a.mode);
            if *created {
                let _ = unpin_link(&path);
            } else if let Some(prog) = previous.as_mut() {
                let _ = swap_link(prog, &self.layout, a);
            }
        }
    }
}

/// Moves an existing pinned link to `prog` (atomic in the kernel).
fn swap_link(prog: &mut Xdp, layout: &PinLayout, a: &Attachment) -> Result<(), KernelError> {
    let path = layout.link(&a.interface, a.mode);
    let pinned = PinnedLink::from_pin(&path).map_err(|e| KernelError::Attach {
        interface: a.interface.clone(),
        reason: format!("opening pinned link {}: {e}", path.display()),
    })?;
    let fd_link: FdLink = pinned.into();
    let link = XdpLink::try_from(fd_link).map_err(|e| KernelError::Attach {
        interface: a.interface.clone(),
        reason: format!("pinned link {} is not an XDP link: {e}", path.display()),
    })?;
    prog.attach_to_link(link)
        .map_err(|e| KernelError::program(format!("swapping the program on {}", a.interface), e))?;
    Ok(())
}

/// Attaches `prog` to `interface` with a new pinned link, trying native before generic when
/// the mode is `Auto` (aya does not fall back by itself).
fn attach_new(
    prog: &mut Xdp,
    layout: &PinLayout,
    interface: &str,
    mode: AttachMode,
) -> Result<AttachedMode, KernelError> {
    let candidates: &[AttachedMode] = match mode {
        AttachMode::Auto => &[AttachedMode::Native, AttachedMode::Generic],
        AttachMode::Native => &[AttachedMode::Native],
        AttachMode::Generic => &[AttachedMode::Generic],
    };
    let mut failures = Vec::new();
    for m in candidates {
        match prog.attach(interface, m.xdp_mode()) {
            Ok(id) => {
                let link = prog.take_link(id).map_err(|e| {
                    KernelError::program(format!("taking the link on {interface}"), e)
                })?;
                let fd_link = FdLink::try_from(link).map_err(|e| KernelError::Attach {
                    interface: interface.into(),
                    reason: format!("the kernel gave no bpf_link (needs Linux 5.9 or later): {e}"),
                })?;
                let path = layout.link(interface, *m);
                fd_link.pin(&path).map_err(|e| KernelError::Attach {
                    interface: interface.into(),
                    reason: format!("pinning the link at {}: {e}", path.display()),
                })?;
                return Ok(*m);
            }
            Err(e) => failures.push(format!("{}: {e}", m.as_str())),
        }
    }
    Err(KernelError::Attach {
        interface: interface.into(),
        reason: failures.join("; "),
    })
}

/// Pins `prog` at the layout's program path, replacing the previous pin in one rename.
fn pin_program(prog: &mut Xdp, layout: &PinLayout) -> Result<(), KernelError> {
    let target = layout.program();
    // bpffs refuses names with a dot (reserved for its own files), hence the underscore.
    let staging = layout.dir().join("prog_staging");
    let _ = fs::remove_file(&staging);
    prog.pin(&staging).map_err(|e| KernelError::Pin {
        what: "pinning the program",
        path: staging.clone(),
        source: std::io::Error::other(format!("{e:?}")),
    })?;
    fs::rename(&staging, &target).map_err(pin_err("replacing the program pin", &target))
}

fn unpin_link(path: &Path) -> Result<(), KernelError> {
    match PinnedLink::from_pin(path) {
        // Unpinning drops the last reference: the kernel detaches the program.
        Ok(link) => link
            .unpin()
            .map(drop)
            .map_err(pin_err("unpinning link", path)),
        Err(_) => fs::remove_file(path).map_err(pin_err("removing link pin", path)),
    }
}

/// Interfaces with a pinned link, from the pin names.
pub fn attachments(layout: &PinLayout) -> Result<Vec<Attachment>, KernelError> {
    let dir = layout.links();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(pin_err("reading the link directory", &dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((interface, mode)) = name.rsplit_once('@')
            && let Some(mode) = AttachedMode::parse(mode)
        {
            out.push(Attachment {
                interface: interface.to_string(),
                mode,
            });
        }
    }
    out.sort_by(|a, b| a.interface.cmp(&b.interface));
    Ok(out)
}

/// Reads a META slot; `None` when nothing is pinned yet or the slot was never written.
pub fn read_meta(layout: &PinLayout, slot: u32) -> Result<Option<u64>, KernelError> {
    if !layout.map(maps::META).exists() {
        return Ok(None);
    }
    let array: Array<_, u64> = Array::try_from(open_map(layout, maps::META)?)
        .map_err(|e| KernelError::map("opening META", e))?;
    let v = array
        .get(&slot, 0)
        .map_err(|e| KernelError::map("reading META", e))?;
    Ok((v != 0).then_some(v))
}

fn write_meta(layout: &PinLayout, slot: u32, value: u64) -> Result<(), KernelError> {
    let mut array: Array<_, u64> = Array::try_from(open_map(layout, maps::META)?)
        .map_err(|e| KernelError::map("opening META", e))?;
    array
        .set(slot, value, 0)
        .map_err(|e| KernelError::map("writing META", e))
}

/// Removes everything Portcullis pinned under `pin_root`: detaches every link, unpins the
/// program and the maps (bans and counters are lost). Returns what was removed.
pub fn teardown(pin_root: &Path) -> Result<Vec<String>, KernelError> {
    let layout = PinLayout::new(pin_root);
    let mut removed = Vec::new();
    for a in attachments(&layout)? {
        unpin_link(&layout.link(&a.interface, a.mode))?;
        removed.push(format!("link {} ({})", a.interface, a.mode.as_str()));
    }
    for path in [layout.program(), layout.dir().join("prog_staging")] {
        if path.exists() {
            fs::remove_file(&path).map_err(pin_err("unpinning the program", &path))?;
            removed.push(format!("program {}", path.display()));
        }
    }
    if let Ok(entries) = fs::read_dir(layout.maps()) {
        for entry in entries.flatten() {
            let path = entry.path();
            fs::remove_file(&path).map_err(pin_err("unpinning a map", &path))?;
            removed.push(format!("map {}", path.display()));
        }
    }
    for dir in [
        layout.links(),
        layout.maps(),
        layout.dir().to_path_buf(),
        pin_root.to_path_buf(),
    ] {
        // Only empty directories go; anything else under the root is not ours to remove.
        let _ = fs::remove_dir(&dir);
    }
    Ok(removed)
}
