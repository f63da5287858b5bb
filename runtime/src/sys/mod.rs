//! Thin wrappers over the raw syscalls the runtime needs.
//!
//! This is the only module of the workspace with `unsafe`. Every wrapper is
//! thin: no policy, no logging, an `io::Result` whose error is the errno;
//! callers add the context (which step, which path).
//!
//! Many wrappers run in the container's first process between `clone3` and
//! `execve`. That process is a copy of a possibly multi-threaded parent made
//! without glibc's fork handlers, so it must not allocate or take libc locks.
//! Every wrapper here is allocation-free, and the credential calls use the
//! raw syscalls: glibc's `setresuid` & co. broadcast to all threads the
//! parent had (nptl "setxid"), which would hang in the child.

pub mod bpf;

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

pub use libc::{SCHED_IDLE, SCHED_OTHER, gid_t, pid_t, uid_t};

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_long(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Retries a call interrupted by a signal.
fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            other => return other,
        }
    }
}

/// A `/proc/self/fd/N` path in a stack buffer, so the child can name an fd
/// to `mount(2)` without allocating.
pub struct FdPath {
    buf: [u8; 32],
}

impl FdPath {
    pub fn new(fd: RawFd) -> FdPath {
        let prefix = b"/proc/self/fd/";
        let mut buf = [0u8; 32];
        buf[..prefix.len()].copy_from_slice(prefix);
        let mut digits = [0u8; 12];
        let mut n = fd.unsigned_abs();
        let mut len = 0;
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for i in 0..len {
            buf[prefix.len() + i] = digits[len - 1 - i];
        }
        FdPath { buf }
    }

    pub fn as_cstr(&self) -> &CStr {
        // The buffer always holds a NUL after the digits (32 bytes > 14 + 11).
        CStr::from_bytes_until_nul(&self.buf).unwrap_or(c"/")
    }
}

// ---------------------------------------------------------------- files

/// `openat2(2)` (libc has no wrapper): `resolve` takes `RESOLVE_*` flags.
pub fn openat2(
    dirfd: BorrowedFd<'_>,
    path: &CStr,
    flags: u64,
    mode: u64,
    resolve: u64,
) -> io::Result<OwnedFd> {
    // struct open_how of openat2(2); libc's is non-exhaustive.
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: flags | libc::O_CLOEXEC as u64,
        mode,
        resolve,
    };
    retry(|| {
        // SAFETY: `path` is NUL-terminated, `how` is a valid open_how of the
        // size passed; the returned fd is new and owned by nobody else.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        let fd = cvt_long(ret)? as RawFd;
        // SAFETY: the kernel just returned this fd to us.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    })
}

/// `openat(2)`, always with `O_CLOEXEC`.
pub fn openat(
    dirfd: Option<BorrowedFd<'_>>,
    path: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    let dir = dirfd.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    retry(|| {
        // SAFETY: `path` is NUL-terminated; the fd returned is new.
        let fd = cvt(unsafe {
            libc::openat(
                dir,
                path.as_ptr(),
                flags | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        })?;
        // SAFETY: the kernel just returned this fd to us.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    })
}

pub fn mkdirat(dirfd: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    cvt(unsafe { libc::mkdirat(dirfd.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

pub fn mknodat(
    dirfd: BorrowedFd<'_>,
    name: &CStr,
    mode: libc::mode_t,
    dev: libc::dev_t,
) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    cvt(unsafe { libc::mknodat(dirfd.as_raw_fd(), name.as_ptr(), mode, dev) }).map(drop)
}

pub fn symlinkat(target: &CStr, dirfd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dirfd.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// `fchownat(fd, "", uid, gid, AT_EMPTY_PATH)`: chown the file the fd names.
pub fn fchown_fd(fd: BorrowedFd<'_>, uid: uid_t, gid: gid_t) -> io::Result<()> {
    // SAFETY: the empty path is a valid NUL-terminated string.
    cvt(unsafe { libc::fchownat(fd.as_raw_fd(), c"".as_ptr(), uid, gid, libc::AT_EMPTY_PATH) })
        .map(drop)
}

pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value; the kernel fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable stat buffer.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// `struct statfs` as the x86_64 kernel fills it (libc hides `f_flags`).
#[repr(C)]
#[derive(Default)]
struct KernelStatfs {
    f_type: i64,
    f_bsize: i64,
    f_blocks: u64,
    f_bfree: u64,
    f_bavail: u64,
    f_files: u64,
    f_ffree: u64,
    f_fsid: [i32; 2],
    f_namelen: i64,
    f_frsize: i64,
    f_flags: i64,
    f_spare: [i64; 4],
}

/// Raw `fstatfs(2)`: glibc's `fstatvfs` may read /proc/mounts (and
/// allocate) to find the mount flags, which the child must not do.
fn kernel_fstatfs(fd: BorrowedFd<'_>) -> io::Result<KernelStatfs> {
    let mut st = KernelStatfs::default();
    // SAFETY: `st` matches the kernel's struct statfs on x86_64 and is
    // writable for its whole size.
    cvt_long(unsafe {
        libc::syscall(
            libc::SYS_fstatfs,
            fd.as_raw_fd(),
            &mut st as *mut KernelStatfs,
        )
    })?;
    Ok(st)
}

/// The `ST_*` mount flags of the mount the fd is on.
pub fn mount_flags(fd: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(kernel_fstatfs(fd)?.f_flags as u64)
}

pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    retry(|| {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    })
}

pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    retry(|| {
        // SAFETY: `buf` is valid for reads of its length.
        let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    })
}

/// Writes all of `buf` (pipes and procfs files take it in one go; loop anyway).
pub fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = write(fd, buf)?;
        if n == 0 {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        buf = &buf[n..];
    }
    Ok(())
}

/// `pipe2(O_CLOEXEC)`: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `dup3(old, new, 0)`: the new fd is NOT close-on-exec (stdio of the child).
pub fn dup_onto(old: RawFd, new: RawFd) -> io::Result<()> {
    if old == new {
        // dup3 refuses equal fds; just clear close-on-exec.
        // SAFETY: fcntl on an fd number has no memory effects.
        return cvt(unsafe { libc::fcntl(old, libc::F_SETFD, 0) }).map(drop);
    }
    // SAFETY: dup3 only manipulates the fd table.
    retry(|| cvt(unsafe { libc::dup3(old, new, 0) }).map(drop))
}

/// `close_range(first, ~0, CLOSE_RANGE_CLOEXEC)`: every fd from `first` on
/// is closed by the coming `execve` (CVE-2024-21626), while the error pipe
/// still works until then.
pub fn cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range with CLOEXEC only sets flags in the fd table.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    cvt_long(ret).map(drop)
}

pub fn mkfifo(path: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated.
    cvt(unsafe { libc::mkfifo(path.as_ptr(), mode) }).map(drop)
}

// ---------------------------------------------------------------- mounts

/// `mount(2)`; `None` arguments are passed as NULL.
pub fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let p = |s: Option<&CStr>| s.map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is NULL or a NUL-terminated string.
    cvt(unsafe { libc::mount(p(source), target.as_ptr(), p(fstype), flags, p(data).cast()) })
        .map(drop)
}

pub fn umount2(target: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `target` is NUL-terminated.
    cvt(unsafe { libc::umount2(target.as_ptr(), flags) }).map(drop)
}

/// `pivot_root(2)` (no libc wrapper).
pub fn pivot_root(new_root: &CStr, put_old: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated.
    cvt_long(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) })
        .map(drop)
}

pub fn fchdir(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fchdir has no memory effects.
    cvt(unsafe { libc::fchdir(fd.as_raw_fd()) }).map(drop)
}

pub fn chdir(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated.
    cvt(unsafe { libc::chdir(path.as_ptr()) }).map(drop)
}

/// Whether the cwd is reachable from the root: `getcwd(2)` fails with
/// ENOENT or returns "(unreachable)…" when it is not (CVE-2024-21626).
pub fn cwd_is_reachable() -> io::Result<bool> {
    let mut buf = [0u8; 4096];
    // SAFETY: raw getcwd writes at most `buf.len()` bytes into `buf`.
    let ret = unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) };
    match cvt_long(ret) {
        Ok(_) => Ok(buf[0] == b'/'),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------- processes

/// Arguments of `clone3` that the runtime uses.
pub struct CloneArgs {
    /// `CLONE_NEW*` flags (and `CLONE_INTO_CGROUP` is added when `cgroup` is set).
    pub flags: u64,
    /// A cgroup2 directory fd for `CLONE_INTO_CGROUP`.
    pub cgroup: Option<RawFd>,
}

/// Runs `child` in a new process made by `clone3` (fork-like: no shared
/// memory, no new stack, SIGCHLD on exit) and returns its pid in the parent.
///
/// # Safety
/// `child` runs in a copy of this process made without the libc fork
/// handlers while other threads may hold locks: it must only make
/// async-signal-safe calls (no allocation, no locks, no stdio) and must
/// never return (it ends in `execve` or `exit_now`; should it return, the
/// child exits with 127).
pub unsafe fn clone3(args: &CloneArgs, child: impl FnOnce()) -> io::Result<pid_t> {
    #[repr(C)]
    #[derive(Default)]
    struct RawCloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let mut raw = RawCloneArgs {
        flags: args.flags,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if let Some(fd) = args.cgroup {
        raw.flags |= CLONE_INTO_CGROUP;
        raw.cgroup = fd as u64;
    }
    // SAFETY: `raw` is a valid clone_args of the size passed; without
    // CLONE_VM the child gets a copy-on-write copy of our memory and
    // continues on a copy of this stack, like fork(2). The caller promises
    // the child only runs async-signal-safe code and never returns.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw as *const RawCloneArgs,
            std::mem::size_of::<RawCloneArgs>(),
        )
    };
    match cvt_long(ret)? {
        0 => {
            child();
            exit_now(127)
        }
        pid => Ok(pid as pid_t),
    }
}

/// `_exit(2)`: no atexit handlers, no stdio flush (safe in the child).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no process state we rely on.
    unsafe { libc::_exit(code) }
}

/// `execve(2)`; returns only on failure.
pub fn execve(
    path: &CStr,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> io::Error {
    if argv.last().is_some_and(|p| !p.is_null()) || envp.last().is_some_and(|p| !p.is_null()) {
        return io::Error::from_raw_os_error(libc::EINVAL);
    }
    // SAFETY: `argv` and `envp` are NULL-terminated arrays (checked above)
    // of pointers to NUL-terminated strings the caller keeps alive.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

/// `fexecve(3)` (`execveat(fd, "", …, AT_EMPTY_PATH)`): executes the file
/// the fd names; returns only on failure.
pub fn fexecve(
    fd: BorrowedFd<'_>,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> io::Error {
    if argv.last().is_some_and(|p| !p.is_null()) || envp.last().is_some_and(|p| !p.is_null()) {
        return io::Error::from_raw_os_error(libc::EINVAL);
    }
    // SAFETY: `argv` and `envp` are NULL-terminated arrays (checked above)
    // of pointers to NUL-terminated strings the caller keeps alive.
    unsafe { libc::fexecve(fd.as_raw_fd(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

/// `access(path, X_OK)`.
pub fn can_execute(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated.
    cvt(unsafe { libc::access(path.as_ptr(), libc::X_OK) })?;
    // access(X_OK) passes a directory (search permission); execve then
    // fails with EACCES, which is what it gets here, before start.
    // SAFETY: an all-zero stat is valid; stat(2) fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated, `st` valid for writes.
    cvt(unsafe { libc::stat(path.as_ptr(), &mut st) })?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::from_raw_os_error(libc::EACCES));
    }
    Ok(())
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStatus {
    Exited(i32),
    Signaled(i32),
}

fn decode_status(status: libc::c_int) -> Option<WaitStatus> {
    if libc::WIFEXITED(status) {
        Some(WaitStatus::Exited(libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        Some(WaitStatus::Signaled(libc::WTERMSIG(status)))
    } else {
        None
    }
}

/// `waitpid(pid, 0)` until the child has ended.
pub fn wait_pid(pid: pid_t) -> io::Result<WaitStatus> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid writable int.
        retry(|| cvt(unsafe { libc::waitpid(pid, &mut status, 0) }))?;
        if let Some(s) = decode_status(status) {
            return Ok(s);
        }
    }
}

/// `waitpid(-1, WNOHANG)`: one reaped child, or None when none has ended.
pub fn reap_any() -> io::Result<Option<(pid_t, WaitStatus)>> {
    let mut status = 0;
    // SAFETY: `status` is a valid writable int.
    let pid = retry(|| cvt(unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) }))?;
    if pid == 0 {
        return Ok(None);
    }
    Ok(decode_status(status).map(|s| (pid, s)))
}

/// `kill(2)`; signal 0 probes existence.
pub fn kill(pid: pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill has no memory effects.
    cvt(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Resets every signal to its default disposition and unblocks all: a
/// container's first process starts clean whatever PID 1 set up.
pub fn reset_signals() -> io::Result<()> {
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL is always a valid disposition; an invalid signal
        // number only makes signal() fail, which we ignore (glibc reserves two).
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    // SAFETY: an empty sigset_t is a valid mask; the old mask is not wanted.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        cvt(libc::sigprocmask(
            libc::SIG_SETMASK,
            &set,
            std::ptr::null_mut(),
        ))?;
    }
    Ok(())
}

/// Gives SIGPIPE back its default action (end the process), for a CLI
/// whose output may go to a pipe that closes early (`| head`): Rust
/// starts with it ignored, so every write after that fails with EPIPE
/// and `println!` panics. Never for PID 1, which must not die of it.
pub fn restore_default_sigpipe() {
    // SAFETY: SIG_DFL is a valid disposition for SIGPIPE; no handler runs.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// Brings the loopback interface of the current network namespace up
/// (`SIOCGIFFLAGS`/`SIOCSIFFLAGS` on a datagram socket, netdevice(7)), as
/// runc and crun do in a network namespace they create. No allocation:
/// callable in the cloned child.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is valid; the name "lo" fits IFNAMSIZ.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the flags into `req`, valid for writes.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) })?;
    // SAFETY: the union member written by SIOCGIFFLAGS is ifru_flags.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads `req`, a valid ifreq.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) }).map(drop)
}

/// `setns(2)`.
pub fn setns(fd: BorrowedFd<'_>, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: setns has no memory effects.
    cvt(unsafe { libc::setns(fd.as_raw_fd(), nstype) }).map(drop)
}

pub fn setsid() -> io::Result<()> {
    // SAFETY: setsid has no memory effects.
    cvt(unsafe { libc::setsid() }).map(drop)
}

pub fn umask(mask: libc::mode_t) {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask) };
}

// ---------------------------------------------------------------- credentials

/// Raw `setresuid` (see the module comment: glibc's wrapper hangs here).
pub fn setresuid(uid: uid_t) -> io::Result<()> {
    // SAFETY: raw syscall without memory effects.
    cvt_long(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) }).map(drop)
}

pub fn setresgid(gid: gid_t) -> io::Result<()> {
    // SAFETY: raw syscall without memory effects.
    cvt_long(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) }).map(drop)
}

pub fn setgroups(groups: &[gid_t]) -> io::Result<()> {
    // SAFETY: `groups` is valid for reads of its length.
    cvt_long(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) }).map(drop)
}

pub fn prctl(
    option: libc::c_int,
    arg2: libc::c_ulong,
    arg3: libc::c_ulong,
) -> io::Result<libc::c_int> {
    // SAFETY: the prctl options used by the runtime take integers only.
    cvt(unsafe { libc::prctl(option, arg2, arg3, 0 as libc::c_ulong, 0 as libc::c_ulong) })
}

/// The three capability sets, as `capset(2)` version 3 takes them.
pub fn capset(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let lo = |v: u64| v as u32;
    let hi = |v: u64| (v >> 32) as u32;
    let data = [
        Data {
            effective: lo(effective),
            permitted: lo(permitted),
            inheritable: lo(inheritable),
        },
        Data {
            effective: hi(effective),
            permitted: hi(permitted),
            inheritable: hi(inheritable),
        },
    ];
    // SAFETY: header and the two data words are valid for version 3.
    cvt_long(unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) })
        .map(drop)
}

/// `prlimit(0, resource, new, NULL)`.
pub fn setrlimit(resource: libc::c_int, soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit64 {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit64; the old value is not wanted.
    cvt(unsafe { libc::prlimit64(0, resource as _, &lim, std::ptr::null_mut()) }).map(drop)
}

pub fn sethostname(name: &[u8]) -> io::Result<()> {
    // SAFETY: `name` is valid for reads of its length.
    cvt(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

pub fn setdomainname(name: &[u8]) -> io::Result<()> {
    // SAFETY: `name` is valid for reads of its length.
    cvt(unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// `makedev(3)`.
pub fn makedev(major: u64, minor: u64) -> libc::dev_t {
    libc::makedev(major as u32, minor as u32)
}

/// (major, minor) of a device number.
pub fn dev_parts(dev: libc::dev_t) -> (u64, u64) {
    (libc::major(dev) as u64, libc::minor(dev) as u64)
}

/// Best-effort write to fd 2 (the child's last words before `_exit`).
pub fn write_stderr(buf: &[u8]) {
    // SAFETY: `buf` is valid for reads of its length; fd 2 may be closed,
    // then write fails and we ignore it.
    let _ = unsafe { libc::write(2, buf.as_ptr().cast(), buf.len()) };
}

pub fn unlinkat(dirfd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    cvt(unsafe { libc::unlinkat(dirfd.as_raw_fd(), name.as_ptr(), 0) }).map(drop)
}

const PROC_SUPER_MAGIC: libc::c_long = 0x9fa0;

/// Whether the fd is on a procfs (`fstatfs`), so a write meant for /proc
/// cannot land on a file a container mounted over it (CVE-2019-16884).
pub fn is_procfs(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(kernel_fstatfs(fd)?.f_type as libc::c_long == PROC_SUPER_MAGIC)
}

const NSFS_MAGIC: libc::c_long = 0x6e73_6673;

/// Whether the fd is a namespace file (`fstatfs` type `NSFS_MAGIC`), as
/// `/proc/<pid>/ns/*` and their bind mounts are.
pub fn is_nsfs(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(kernel_fstatfs(fd)?.f_type as libc::c_long == NSFS_MAGIC)
}

pub fn getuid() -> uid_t {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

/// `waitpid(pid, WNOHANG)`: the status if that child has ended.
pub fn try_wait_pid(pid: pid_t) -> io::Result<Option<WaitStatus>> {
    let mut status = 0;
    // SAFETY: `status` is a valid writable int.
    let ret = retry(|| cvt(unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) }))?;
    if ret == 0 {
        return Ok(None);
    }
    Ok(decode_status(status))
}

/// Clones the container's first process into the plan's namespaces and
/// runs [`crate::process::child_main`] in it; returns the child's pid.
///
/// `join_pid`: a pid namespace to put the child in. `setns(CLONE_NEWPID)`
/// only changes where this thread's *children* go, so it is done here,
/// around the clone, and undone after: the child is still our direct
/// child (CLONE_PARENT is refused to PID 1) and no second fork is needed.
pub fn clone_container(
    args: &CloneArgs,
    join_pid: Option<BorrowedFd<'_>>,
    cx: &crate::process::ChildContext<'_>,
) -> io::Result<pid_t> {
    let restore = match join_pid {
        Some(target) => {
            let own = openat(None, c"/proc/thread-self/ns/pid", libc::O_RDONLY, 0)?;
            setns(target, libc::CLONE_NEWPID)?;
            Some(own)
        }
        None => None,
    };
    // SAFETY: child_main only makes async-signal-safe calls: it reads the
    // precomputed plan and context, calls the allocation-free wrappers of
    // this module, and ends in execve or _exit, never returning.
    let r = unsafe { clone3(args, || crate::process::child_main(cx)) };
    if let Some(own) = restore {
        setns(own.as_fd(), libc::CLONE_NEWPID)?;
    }
    r
}

fn sigset_of(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: an all-zero sigset_t is valid; sigemptyset/sigaddset only
    // write into it (invalid numbers make sigaddset fail, ignored).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks the signals in the calling thread (and threads it spawns later).
pub fn block_signals(signals: &[libc::c_int]) -> io::Result<()> {
    let set = sigset_of(signals);
    // SAFETY: `set` is a valid sigset_t; the old mask is not wanted.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        Err(io::Error::from_raw_os_error(ret))
    } else {
        Ok(())
    }
}

/// `sigwait(3)` for one of the (blocked) signals.
pub fn wait_signal(signals: &[libc::c_int]) -> io::Result<libc::c_int> {
    let set = sigset_of(signals);
    let mut sig = 0;
    // SAFETY: `set` and `sig` are valid for the call.
    let ret = unsafe { libc::sigwait(&set, &mut sig) };
    if ret != 0 {
        Err(io::Error::from_raw_os_error(ret))
    } else {
        Ok(sig)
    }
}

/// Closes every fd from 3 up except those in `keep` (sorted ascending):
/// `close_range(2)` over each gap. Allocation-free, for the child.
pub fn close_fds_except(keep: &[RawFd]) -> io::Result<()> {
    let mut first: u32 = 3;
    for &fd in keep {
        let Ok(fd) = u32::try_from(fd) else { continue };
        if fd < first {
            continue;
        }
        if fd > first {
            close_range(first, fd - 1)?;
        }
        first = fd + 1;
    }
    close_range(first, u32::MAX)
}

/// `close(2)` of one fd. For the child after a seccomp filter is loaded:
/// every profile allows close, not every one allows close_range (older
/// Docker and containerd profiles, recorded ones).
pub fn close(fd: RawFd) -> io::Result<()> {
    // SAFETY: closes one fd of this process; the caller no longer uses it
    // (and owns no OwnedFd for it that would close it again).
    cvt(unsafe { libc::close(fd) }).map(drop)
}

fn close_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: close_range only closes fds of this process; the caller
    // keeps the ones it still uses out of the range.
    cvt_long(unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) }).map(drop)
}

/// `unshare(2)`; `CLONE_NEWNS` needs a single-threaded caller.
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare has no memory effects.
    cvt(unsafe { libc::unshare(flags) }).map(drop)
}

/// `pidfd_open(2)` (no libc wrapper): an fd that becomes readable when
/// the process exits.
pub fn pidfd_open(pid: pid_t) -> io::Result<OwnedFd> {
    // SAFETY: raw syscall without memory effects; the fd returned is new.
    let fd = cvt_long(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })? as RawFd;
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The scheduling policy `sched_setscheduler(2)` gives a thread
/// (`tid` 0: the calling thread), with priority 0: `SCHED_OTHER` or
/// `SCHED_IDLE`. A raw syscall: musl's wrapper is a stub returning ENOSYS
/// (POSIX means a process, Linux means a thread).
pub fn set_thread_policy(tid: pid_t, policy: libc::c_int) -> io::Result<()> {
    // The kernel's struct sched_param is one int (musl's libc type adds
    // fields the kernel never reads).
    let priority: libc::c_int = 0;
    // SAFETY: `priority` is a valid struct sched_param the kernel only reads.
    cvt_long(unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            tid,
            policy,
            &priority as *const libc::c_int,
        )
    })
    .map(drop)
}

/// A thread's scheduling policy (`sched_getscheduler(2)`, raw as above).
pub fn thread_policy(tid: pid_t) -> io::Result<libc::c_int> {
    // SAFETY: raw syscall without memory effects.
    cvt_long(unsafe { libc::syscall(libc::SYS_sched_getscheduler, tid) }).map(|p| p as libc::c_int)
}

/// The calling thread's id (`gettid(2)`).
pub fn gettid() -> pid_t {
    // SAFETY: gettid cannot fail and has no memory effects.
    unsafe { libc::syscall(libc::SYS_gettid) as pid_t }
}

/// Waits until `fd` is readable or `timeout_ms` passes (-1: forever);
/// true when readable.
pub fn poll_readable(fd: BorrowedFd<'_>, timeout_ms: libc::c_int) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd.
    let n = retry(|| cvt(unsafe { libc::poll(&mut p, 1, timeout_ms) }))?;
    Ok(n > 0)
}

/// Forks a plain child that runs `child`: clone3 without flags, or,
/// under a seccomp profile that hides clone3 (Docker's, containerd's and
/// berth's default ones answer ENOSYS so that C libraries fall back, as
/// the container's process itself must when it runs startContainer hooks
/// under the filter), a fork-like clone(2).
///
/// # Safety
/// As for [`clone3`]: `child` must only make async-signal-safe calls and
/// never return.
unsafe fn fork_plain(child: &dyn Fn()) -> io::Result<pid_t> {
    let args = CloneArgs {
        flags: 0,
        cgroup: None,
    };
    // SAFETY: the caller's promise about `child`, passed on.
    match unsafe { clone3(&args, child) } {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            // SAFETY: clone without CLONE_VM or a new stack is fork(2)
            // without libc's handlers: the child continues on a copy of
            // this stack and only runs `child`, as above.
            let ret = unsafe {
                libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0)
            };
            match cvt_long(ret)? {
                0 => {
                    child();
                    exit_now(127)
                }
                pid => Ok(pid as pid_t),
            }
        }
        r => r,
    }
}

/// Forks the process of a createContainer or startContainer hook (`open`:
/// the fds the container's process may hold, see
/// [`crate::process::run_hook_child`]). See [`fork_plain`]: without
/// no_new_privs, startContainer hooks are forked under the container's
/// seccomp filter.
pub fn fork_hook(hook: &crate::process::ChildHook, open: &[RawFd]) -> io::Result<pid_t> {
    // SAFETY: run_hook_child only calls allocation-free wrappers of this
    // module (dup, close_range, close, execve, _exit) on precomputed data,
    // and never returns.
    unsafe { fork_plain(&|| crate::process::run_hook_child(hook, open)) }
}

/// Forks a plain child that becomes a host process (`crate::host`). See
/// [`fork_plain`].
pub(crate) fn fork_host(child: &crate::host::Child<'_>) -> io::Result<pid_t> {
    // SAFETY: host_child only calls allocation-free wrappers of this module
    // (signal, setpgid, dup3, close_range, prlimit, chdir, execve, write,
    // _exit) on data the parent prepared, and never returns.
    unsafe { fork_plain(&|| crate::host::host_child(child)) }
}

/// `setpgid(0, 0)`: the caller leads a new process group.
pub fn setpgid_self() -> io::Result<()> {
    // SAFETY: setpgid has no memory effects.
    cvt(unsafe { libc::setpgid(0, 0) }).map(drop)
}

/// `fcntl(F_DUPFD_CLOEXEC)`: a close-on-exec copy numbered `min` or above.
pub fn dup_above(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl only manipulates the fd table.
    let new = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) })?;
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// `readlinkat(2)` of a symlink the fd names (`O_PATH|O_NOFOLLOW`), into
/// `buf`; returns the target's length. Allocation-free.
pub fn readlink_fd(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length; the empty path
    // names the fd itself.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize == buf.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_path_formats_the_number() {
        assert_eq!(FdPath::new(0).as_cstr(), c"/proc/self/fd/0");
        assert_eq!(FdPath::new(1234567).as_cstr(), c"/proc/self/fd/1234567");
    }

    #[test]
    fn procfs_is_recognised_and_other_filesystems_are_not() {
        let proc_fd = openat(None, c"/proc/self", libc::O_PATH, 0).unwrap();
        assert!(is_procfs(proc_fd.as_fd()).unwrap());
        let root = openat(None, c"/", libc::O_PATH, 0).unwrap();
        assert!(!is_procfs(root.as_fd()).unwrap());
    }

    #[test]
    fn close_fds_except_keeps_the_listed_ones() {
        // Runs in a forked child: closing fds in the test process would
        // break the harness.
        let (r, w) = pipe().unwrap();
        let keep = [w.as_raw_fd()];
        // SAFETY: the child only calls async-signal-safe wrappers and exits.
        let pid = unsafe {
            clone3(
                &CloneArgs {
                    flags: 0,
                    cgroup: None,
                },
                || {
                    let ok = close_fds_except(&keep).is_ok()
                        && fcntl_ok(keep[0])
                        && !fcntl_ok(r.as_raw_fd());
                    exit_now(if ok { 0 } else { 1 })
                },
            )
        }
        .unwrap();
        assert_eq!(wait_pid(pid).unwrap(), WaitStatus::Exited(0));
    }

    fn fcntl_ok(fd: RawFd) -> bool {
        // SAFETY: F_GETFD only reads the fd flags.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    }

    #[test]
    fn mount_flags_match_mountinfo() {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        for dir in ["/", "/proc"] {
            // The last line for a mount point is the mount on top.
            let opts = info
                .lines()
                .rfind(|l| l.split(' ').nth(4) == Some(dir))
                .and_then(|l| l.split(' ').nth(5))
                .unwrap()
                .to_string();
            let path = std::ffi::CString::new(dir).unwrap();
            let fd = openat(None, &path, libc::O_PATH, 0).unwrap();
            let flags = mount_flags(fd.as_fd()).unwrap();
            for (name, bit) in [
                ("ro", libc::ST_RDONLY),
                ("nosuid", libc::ST_NOSUID),
                ("nodev", libc::ST_NODEV),
                ("noexec", libc::ST_NOEXEC),
            ] {
                let want = opts.split(',').any(|o| o == name);
                assert_eq!(flags & bit != 0, want, "{dir} {name} in {opts}");
            }
        }
    }

    #[test]
    fn a_cwd_outside_the_root_is_unreachable() {
        // CVE-2024-21626: after a chroot the old cwd lies outside the
        // root; getcwd says "(unreachable)". In a forked child, so the
        // test process keeps its root.
        // SAFETY: the child only makes raw syscalls (chroot changes only
        // its own root) and exits.
        let pid = unsafe {
            clone3(
                &CloneArgs {
                    flags: 0,
                    cgroup: None,
                },
                || {
                    let before = chdir(c"/tmp").is_ok() && cwd_is_reachable().unwrap_or(false);
                    let chrooted = libc::chroot(c"/usr".as_ptr()) == 0;
                    let after = cwd_is_reachable().unwrap_or(true);
                    exit_now(if before && chrooted && !after { 0 } else { 1 })
                },
            )
        }
        .unwrap();
        assert_eq!(wait_pid(pid).unwrap(), WaitStatus::Exited(0));
    }
}
