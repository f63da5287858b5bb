//! Loading BPF programs into the kernel: classic BPF seccomp filters
//! (seccomp(2)) and eBPF cgroup device programs (bpf(2)).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

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

/// One eBPF instruction, `struct bpf_insn` of linux/bpf.h: `regs` holds
/// dst_reg in its low and src_reg in its high nibble (little-endian
/// bitfields).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfInsn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// `BPF_PROG_TYPE_CGROUP_DEVICE` of `enum bpf_prog_type`.
pub const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
/// `BPF_CGROUP_DEVICE` of `enum bpf_attach_type`.
pub const BPF_CGROUP_DEVICE: u32 = 6;
/// `BPF_F_ALLOW_MULTI`: other programs attached to the cgroup and its
/// ancestors keep running; the device is allowed only if all allow it.
pub const BPF_F_ALLOW_MULTI: u32 = 1 << 1;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD, up to
/// `expected_attach_type`; the kernel zero-fills the rest.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The BPF_PROG_ATTACH fields of `union bpf_attr`.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// Loads an eBPF program (`bpf(BPF_PROG_LOAD)`), returning its fd with
/// O_CLOEXEC (the kernel always sets it on bpf fds). When the verifier
/// refuses the program its log is written to `log` (NUL-terminated);
/// pass an empty slice for no log.
pub fn prog_load(
    prog_type: u32,
    expected_attach_type: u32,
    insns: &[BpfInsn],
    license: &CStr,
    name: &str,
    log: &mut [u8],
) -> io::Result<OwnedFd> {
    let Ok(insn_cnt) = u32::try_from(insns.len()) else {
        return Err(io::Error::from_raw_os_error(libc::E2BIG));
    };
    let mut prog_name = [0u8; 16];
    // At most 15 bytes and a NUL; the kernel accepts [A-Za-z0-9_.].
    for (dst, src) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src;
    }
    let (log_level, log_size) = if log.is_empty() {
        (0, 0)
    } else {
        (1, u32::try_from(log.len()).unwrap_or(u32::MAX))
    };
    let attr = ProgLoadAttr {
        prog_type,
        insn_cnt,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level,
        log_size,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
        prog_name,
        prog_ifindex: 0,
        expected_attach_type,
    };
    // SAFETY: `attr` is a valid prefix of `union bpf_attr` for
    // BPF_PROG_LOAD and its size is passed; the pointers in it (insns,
    // license, log buffer with its exact size) are valid for the call,
    // which only reads the first two and writes at most log_size bytes to
    // the third.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success bpf(2) returns a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

/// Attaches program `prog` to `target` (a cgroup directory fd) with
/// `bpf(BPF_PROG_ATTACH)`.
pub fn prog_attach(
    target: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
    attach_type: u32,
    flags: u32,
) -> io::Result<()> {
    let attr = ProgAttachAttr {
        target_fd: target.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type,
        attach_flags: flags,
        replace_bpf_fd: 0,
    };
    // SAFETY: `attr` is a valid BPF_PROG_ATTACH `union bpf_attr` prefix of
    // the given size; the fds are borrowed and stay open for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const ProgAttachAttr,
            std::mem::size_of::<ProgAttachAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
