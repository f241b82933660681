//! Empty library target: it lets gateway-userspace name this crate as a build dependency, so
//! cargo rebuilds the XDP objects when this crate changes. The programs are the binaries.
#![no_std]
