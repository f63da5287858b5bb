//! The one module with `unsafe` code and raw syscalls. Wrappers are thin: no
//! policy, no logging; they return `io::Result` and callers add context.

pub mod bpf;

use std::io;

/// Sends `sig` to `pid` (kill(2)).
pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes two integers and touches no memory of ours.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
