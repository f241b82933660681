//! The kernel's test-run facility (BPF_PROG_TEST_RUN): runs a loaded program on a synthetic
//! packet without any interface or traffic, and reports its verdict and its own run time per
//! packet. Used by the program tests and by `cargo xtask bench kernel`. aya 0.14 does not wrap
//! this command, so it is issued directly.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// `union bpf_attr`, the `test` member (include/uapi/linux/bpf.h).
#[repr(C, align(8))]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// What one test run reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestRun {
    /// The program's return value (an XDP action).
    pub retval: u32,
    /// Mean program time per repetition, in nanoseconds, as measured by the kernel.
    pub duration_ns: u32,
}

/// Runs the program `prog` on `packet` `repeat` times (at least once).
pub fn test_run(prog: BorrowedFd<'_>, packet: &[u8], repeat: u32) -> io::Result<TestRun> {
    // The kernel may write the (possibly modified) packet back; give it room.
    let mut out = vec![0u8; packet.len() + 256];
    let mut attr = TestAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: repeat.max(1),
        ..TestAttr::default()
    };
    // SAFETY: attr is a valid, fully initialised bpf_attr prefix; the pointers inside refer to
    // buffers that outlive the call, with their true sizes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestAttr,
            std::mem::size_of::<TestAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TestRun {
        retval: attr.retval,
        duration_ns: attr.duration,
    })
}
