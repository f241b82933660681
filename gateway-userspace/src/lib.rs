//! Portcullis: a kernel-assisted API protection gateway.
//!
//! - [`rules`]: the kernel rule model and its compiler into XDP tables (no privileges needed).
//! - [`kernel`]: loading, adopting, swapping and pinning the XDP program; bans; counters.
//! - [`config`]: the TOML configuration, parsed raw and compiled into a validated form.
//! - [`daemon`]: `portcullis run`, the long-running process.

pub mod admin;
pub mod config;
pub mod daemon;
pub mod identity;
pub mod kernel;
pub mod metrics;
pub mod proxy;
pub mod rules;
