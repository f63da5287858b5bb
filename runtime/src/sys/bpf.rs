//! Loading BPF programs into the kernel: classic BPF seccomp filters
//! (seccomp(2)).

use std::io;

/// Installs a classic BPF seccomp filter on the calling thread
/// (`seccomp(SECCOMP_SET_MODE_FILTER, flags, &prog)`, seccomp(2)).
///
/// Needs no_new_privs set or CAP_SYS_ADMIN in the caller's user namespace.
/// Async-signal-safe: it does not allocate, so it may run in the child of a
/// fork from a multi-threaded process.
pub fn seccomp_set_mode_filter(program: &[libc::sock_filter], flags: u32) -> io::Result<()> {
    // The kernel limits a filter to BPF_MAXINSNS (4096) instructions; a
    // longer slice cannot even be described by sock_fprog's u16 length.
    let Ok(len) = u16::try_from(program.len()) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    let prog = libc::sock_fprog {
        len,
        // The kernel only reads through this pointer (copy_from_user).
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `program`, which outlives the call, and holds
    // its exact length; the kernel copies the instructions and keeps no
    // pointer to them. The syscall takes (operation, flags, pointer).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::c_ulong::from(flags),
            &prog as *const libc::sock_fprog,
        )
    };
    match rc {
        0 => Ok(()),
        // With SECCOMP_FILTER_FLAG_TSYNC a positive return is the id of a
        // thread that could not be synchronised; report it as EAGAIN
        // rather than allocate a custom error here.
        rc if rc > 0 => Err(io::Error::from_raw_os_error(libc::EAGAIN)),
        _ => Err(io::Error::last_os_error()),
    }
}
