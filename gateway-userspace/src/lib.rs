//! Portcullis: a kernel-assisted API protection gateway.
//!
//! - [`rules`]: the kernel rule model and its compiler into XDP tables (no privileges needed).
//! - [`kernel`]: loading, adopting, swapping and pinning the XDP program; bans; counters.
//! - [`cluster`]: rate limits, quotas and bans shared by gateways through Redis.
//! - [`config`]: the TOML configuration, parsed raw and compiled into a validated form.
//! - [`daemon`]: `portcullis run`, the long-running process.
//! - [`limits`]: rate limits and quotas per key, checked after identity.
//! - [`abuse`]: abuse bans, refusals counted per client turned into kernel or userspace bans.

pub mod abuse;
pub mod admin;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod identity;
pub mod kernel;
pub mod limits;
pub mod metrics;
pub mod proxy;
pub mod rules;
pub mod validation;
