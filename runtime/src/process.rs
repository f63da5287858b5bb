//! The container's first process between `clone3` and `execve`.
//!
//! Everything here runs in the child, a copy of a possibly multi-threaded
//! parent made without libc's fork handlers: no allocation, no locks, no
//! formatting. It only reads the precomputed [`Plan`] and [`ChildContext`]
//! and calls `sys`. A failure is sent to the parent as a fixed-size record
//! (which step, which entry, errno) over a close-on-exec pipe; the parent
//! turns it into a message with the path.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use crate::rootfs;
use crate::spec::Plan;
use crate::sys;

/// A step of the child's setup, as reported to the parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    Signals = 1,
    Dumpable,
    Setsid,
    WaitUserMap,
    Setns,
    Loopback,
    Stdio,
    RootPropagation,
    BindRootfs,
    OpenRootfs,
    MountTarget,
    MountOnProc,
    Mount,
    Remount,
    MountPropagation,
    Device,
    DevSymlink,
    Hooks,
    DevNull,
    Mask,
    Readonly,
    PivotRoot,
    UmountOldRoot,
    ReadonlyRoot,
    Hostname,
    Domainname,
    Sysctl,
    Rlimit,
    MakeCwd,
    Chdir,
    CwdUnreachable,
    Seccomp,
    CapBounding,
    KeepCaps,
    Setgroups,
    Setgid,
    Setuid,
    Capset,
    Ambient,
    NoNewPrivs,
    FindExecutable,
    StartGate,
    CreateContainerHook,
    CreateContainerHookStatus,
    StartContainerHook,
    StartContainerHookStatus,
    CloseFds,
    Exec,
}

const ALL_STEPS: [Step; 48] = [
    Step::Signals,
    Step::Dumpable,
    Step::Setsid,
    Step::WaitUserMap,
    Step::Setns,
    Step::Loopback,
    Step::Stdio,
    Step::RootPropagation,
    Step::BindRootfs,
    Step::OpenRootfs,
    Step::MountTarget,
    Step::MountOnProc,
    Step::Mount,
    Step::Remount,
    Step::MountPropagation,
    Step::Device,
    Step::DevSymlink,
    Step::Hooks,
    Step::DevNull,
    Step::Mask,
    Step::Readonly,
    Step::PivotRoot,
    Step::UmountOldRoot,
    Step::ReadonlyRoot,
    Step::Hostname,
    Step::Domainname,
    Step::Sysctl,
    Step::Rlimit,
    Step::MakeCwd,
    Step::Chdir,
    Step::CwdUnreachable,
    Step::Seccomp,
    Step::CapBounding,
    Step::KeepCaps,
    Step::Setgroups,
    Step::Setgid,
    Step::Setuid,
    Step::Capset,
    Step::Ambient,
    Step::NoNewPrivs,
    Step::FindExecutable,
    Step::StartGate,
    Step::CreateContainerHook,
    Step::CreateContainerHookStatus,
    Step::StartContainerHook,
    Step::StartContainerHookStatus,
    Step::CloseFds,
    Step::Exec,
];

impl Step {
    pub fn from_raw(n: u32) -> Option<Step> {
        ALL_STEPS.iter().copied().find(|s| *s as u32 == n)
    }

    /// What the step does, for the error message.
    pub fn describe(self) -> &'static str {
        match self {
            Step::Signals => "reset signal dispositions",
            Step::Dumpable => "make the process non-dumpable",
            Step::Setsid => "start a new session",
            Step::WaitUserMap => "wait for the user namespace mappings",
            Step::Setns => "join namespace",
            Step::Loopback => "bring up lo in the new network namespace",
            Step::Stdio => "set up stdio",
            Step::RootPropagation => "set mount propagation of /",
            Step::BindRootfs => "bind mount the rootfs onto itself",
            Step::OpenRootfs => "open the rootfs",
            Step::MountTarget => "resolve or create mount destination",
            Step::MountOnProc => "refuse mount resolved onto procfs at",
            Step::Mount => "mount",
            Step::Remount => "remount with flags",
            Step::MountPropagation => "set mount propagation",
            Step::Device => "create device",
            Step::DevSymlink => "create /dev symlink",
            Step::Hooks => "wait for createRuntime hooks",
            Step::DevNull => "verify /dev/null for masked paths",
            Step::Mask => "mask path",
            Step::Readonly => "make path read-only",
            Step::PivotRoot => "pivot_root into the rootfs",
            Step::UmountOldRoot => "detach the old root",
            Step::ReadonlyRoot => "remount the root read-only",
            Step::Hostname => "set hostname",
            Step::Domainname => "set domainname",
            Step::Sysctl => "write sysctl",
            Step::Rlimit => "set rlimit",
            Step::MakeCwd => "create cwd",
            Step::Chdir => "change to cwd",
            Step::CwdUnreachable => "check cwd is inside the container",
            Step::Seccomp => "install seccomp filter",
            Step::CapBounding => "drop bounding capability",
            Step::KeepCaps => "set keepcaps",
            Step::Setgroups => "set additional groups",
            Step::Setgid => "set gid",
            Step::Setuid => "set uid",
            Step::Capset => "set capabilities",
            Step::Ambient => "raise ambient capability",
            Step::NoNewPrivs => "set no_new_privs",
            Step::FindExecutable => "find executable",
            Step::StartGate => "wait for start",
            Step::CreateContainerHook => "run createContainer hook",
            Step::CreateContainerHookStatus => "createContainer hook failed",
            Step::StartContainerHook => "run startContainer hook",
            Step::StartContainerHookStatus => "startContainer hook failed",
            Step::CloseFds => "close inherited fds",
            Step::Exec => "exec",
        }
    }
}

/// A failed step in the child: which step, which entry of its list
/// (mount, device, path, namespace), and the errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildError {
    pub step: Step,
    pub index: u32,
    pub errno: i32,
}

impl ChildError {
    pub fn new(step: Step, index: usize, e: &io::Error) -> ChildError {
        ChildError {
            step,
            index: index as u32,
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// Record kinds on the child → parent pipe.
pub const MSG_READY: u32 = 1;
pub const MSG_ERROR: u32 = 2;
pub const MSG_HOOKS: u32 = 3;

/// One 16-byte record: kind, step, errno, index.
pub fn encode(kind: u32, step: u32, errno: i32, index: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&kind.to_ne_bytes());
    b[4..8].copy_from_slice(&step.to_ne_bytes());
    b[8..12].copy_from_slice(&errno.to_ne_bytes());
    b[12..16].copy_from_slice(&index.to_ne_bytes());
    b
}

pub fn decode(b: &[u8; 16]) -> (u32, u32, i32, u32) {
    let w = |i: usize| [b[i], b[i + 1], b[i + 2], b[i + 3]];
    (
        u32::from_ne_bytes(w(0)),
        u32::from_ne_bytes(w(4)),
        i32::from_ne_bytes(w(8)),
        u32::from_ne_bytes(w(12)),
    )
}

/// A createContainer or startContainer hook, run by the child itself in
/// the container's namespaces (runtime-spec "Hooks"), prepared by the
/// parent: strings, pointer arrays, and a pipe already holding the state
/// JSON as its stdin.
pub struct ChildHook {
    pub path: std::ffi::CString,
    pub argv: Vec<*const libc::c_char>,
    pub envp: Vec<*const libc::c_char>,
    /// Read end of a pipe the parent fills with the state and closes.
    pub stdin: OwnedFd,
    /// Milliseconds, or -1 for no timeout.
    pub timeout_ms: libc::c_int,
    /// The strings `argv` and `envp` point into.
    pub strings: (Vec<std::ffi::CString>, Vec<std::ffi::CString>),
}

/// The hook process: state on stdin, nothing else inherited, exec.
/// `open`: every fd above 2 the container's process may hold, closed one
/// by one when close_range fails (a startContainer hook forked under a
/// seccomp profile without it).
pub fn run_hook_child(hook: &ChildHook, open: &[RawFd]) -> ! {
    if sys::dup_onto(std::os::fd::AsRawFd::as_raw_fd(&hook.stdin), 0).is_err()
        || close_each_unless_range(&[], open).is_err()
    {
        sys::exit_now(126);
    }
    let _ = sys::execve(&hook.path, &hook.argv, &hook.envp);
    sys::exit_now(127)
}

/// Closes every fd from 3 up but `keep` (sorted): with close_range, or,
/// when it fails (a seccomp profile without it: older Docker and
/// containerd profiles, recorded ones), with one close(2) for each fd of
/// `open` not in `keep`. `open` must name every fd above 2 that can be
/// open: the caller closed everything else with close_range before the
/// filter was loaded.
fn close_each_unless_range(keep: &[RawFd], open: &[RawFd]) -> io::Result<()> {
    if sys::close_fds_except(keep).is_ok() {
        return Ok(());
    }
    for &fd in open {
        if fd <= 2 || keep.binary_search(&fd).is_ok() {
            continue;
        }
        match sys::close(fd) {
            // Closed already (close_range may have done part of it).
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => {}
            r => r?,
        }
    }
    Ok(())
}

/// Runs hooks in order; a spawn failure, a timeout (ETIMEDOUT) or a
/// non-zero exit fails the step. `open`: the fds the process holds above
/// 2, which the hook must not inherit.
fn run_hooks(
    hooks: &[ChildHook],
    spawn: Step,
    status: Step,
    open: &[RawFd],
) -> Result<(), ChildError> {
    for (i, h) in hooks.iter().enumerate() {
        let pid = sys::fork_hook(h, open).map_err(at(spawn, i))?;
        let pidfd = sys::pidfd_open(pid).map_err(at(spawn, i))?;
        let done = sys::poll_readable(pidfd.as_fd(), h.timeout_ms).map_err(at(spawn, i))?;
        if !done {
            let _ = sys::kill(pid, libc::SIGKILL);
            let _ = sys::wait_pid(pid);
            return Err(ChildError::new(
                spawn,
                i,
                &io::Error::from_raw_os_error(libc::ETIMEDOUT),
            ));
        }
        match sys::wait_pid(pid).map_err(at(spawn, i))? {
            sys::WaitStatus::Exited(0) => {}
            // The errno field carries the shell-style status here.
            sys::WaitStatus::Exited(c) => {
                return Err(ChildError {
                    step: status,
                    index: i as u32,
                    errno: c,
                });
            }
            sys::WaitStatus::Signaled(s) => {
                return Err(ChildError {
                    step: status,
                    index: i as u32,
                    errno: 128 + s,
                });
            }
        }
    }
    Ok(())
}

/// What the child has besides the plan: fds opened by the parent and the
/// `execve` pointer arrays.
pub struct ChildContext<'a> {
    pub plan: &'a Plan,
    pub rootfs: &'a CStr,
    /// Write end of the child → parent record pipe.
    pub report: OwnedFd,
    /// Read end of the parent → child pipe (user maps written, hooks done).
    pub sync: OwnedFd,
    /// The exec fifo, opened read-write: the child blocks reading it until
    /// `start` writes a byte, holds it open (close-on-exec) until execve,
    /// and writes its error record into it when it fails instead.
    pub gate: OwnedFd,
    /// `/proc/sys` of a verified procfs, for sysctls.
    pub proc_sys: Option<OwnedFd>,
    /// Namespaces to join, in order, with their `CLONE_NEW*` type.
    pub join: Vec<(OwnedFd, libc::c_int)>,
    /// Fds to install as 0, 1, 2 (None: inherit).
    pub stdio: [Option<RawFd>; 3],
    /// Fds the child keeps (sorted): its own pipes, the gate, the procfs
    /// handle, the hooks' inputs. Everything else inherited from the
    /// parent (other containers' pipes, say), and the namespaces it has
    /// joined, is closed right after stdio is set up, so a container
    /// waiting for start holds nothing of PID 1's.
    pub keep_fds: Vec<RawFd>,
    /// Fds the child keeps once its root and sysctls are set up (sorted):
    /// the report pipe, the gate, the start hooks' inputs, the init.
    pub keep_for_start: Vec<RawFd>,
    /// Fds left open at exec (sorted): the report pipe, the gate (its
    /// closing at execve tells `start` the program runs) and the init,
    /// all opened close-on-exec by the parent, none a directory. No path the program's name can
    /// take through /proc/self/fd reaches outside the root.
    pub keep_at_exec: Vec<RawFd>,
    /// `CAP_LAST_CAP` of the running kernel.
    pub last_cap: u32,
    /// Ask the parent to run createRuntime/prestart hooks before pivot_root.
    pub want_hooks: bool,
    pub argv: Vec<*const libc::c_char>,
    pub envp: Vec<*const libc::c_char>,
    /// The init to execute instead of the program, and its argv (its own
    /// arguments, then the program's).
    pub init: Option<(BorrowedFd<'a>, Vec<*const libc::c_char>)>,
    pub seccomp: Option<&'a crate::seccomp::SeccompProgram>,
    pub create_container_hooks: Vec<ChildHook>,
    pub start_container_hooks: Vec<ChildHook>,
}

impl ChildContext<'_> {
    fn send(&self, kind: u32, err: Option<ChildError>) {
        let rec = match err {
            Some(e) => encode(kind, e.step as u32, e.errno, e.index),
            None => encode(kind, 0, 0, 0),
        };
        // Nothing to do if the parent is gone.
        let _ = sys::write_all(self.report.as_fd(), &rec);
    }

    /// Blocks until the parent writes one byte on the sync pipe.
    fn wait_parent(&self, step: Step) -> Result<(), ChildError> {
        let mut b = [0u8; 1];
        match sys::read(self.sync.as_fd(), &mut b) {
            Ok(1) if b[0] == 0 => Ok(()),
            Ok(_) => Err(ChildError::new(
                step,
                0,
                &io::Error::from_raw_os_error(libc::ECANCELED),
            )),
            Err(e) => Err(ChildError::new(step, 0, &e)),
        }
    }
}

fn at(step: Step, index: usize) -> impl Fn(io::Error) -> ChildError {
    move |e| ChildError::new(step, index, &e)
}

/// The child's entry point: set up, report ready, wait for start, exec.
pub fn child_main(cx: &ChildContext<'_>) -> ! {
    let err = match setup_and_exec(cx) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    // After the start gate the creating process may be gone (a CLI
    // `create` exits): say it on the container's stderr too, first, as the
    // pipe write may end us with SIGPIPE.
    if matches!(
        err.step,
        Step::StartGate
            | Step::StartContainerHook
            | Step::StartContainerHookStatus
            | Step::Seccomp
            | Step::CloseFds
    ) {
        sys::write_stderr(b"berth-runtime: container process failed: ");
        sys::write_stderr(err.step.describe().as_bytes());
        sys::write_stderr(b"\n");
    }
    // After start the creator has usually closed the pipe's read end: the
    // write must fail with EPIPE, not end us with SIGPIPE (the status
    // would read as the program's death by a signal).
    let _ = sys::block_signals(&[libc::SIGPIPE]);
    cx.send(MSG_ERROR, Some(err));
    // The same record into the exec fifo, which only this process holds
    // open: `start`, waiting for the fifo to lose its last reader, reads
    // it there to tell an end before exec (a startContainer hook, exec
    // itself) from the program's execve. Before start nobody reads it and
    // the fifo goes with this process. Never EPIPE: the fd reads too.
    let rec = encode(MSG_ERROR, err.step as u32, err.errno, err.index);
    let _ = sys::write_all(cx.gate.as_fd(), &rec);
    // After start this is the container's exit status, and a caller that
    // created it elsewhere sees nothing else. As `docker run` says it: 127,
    // the program (or its #! interpreter, or its loader) is not there;
    // 126, it is there but cannot be run; any other failure (a
    // startContainer hook, seccomp) is 1, as with runc and crun.
    sys::exit_now(match err.step {
        Step::Exec | Step::FindExecutable if err.errno == libc::ENOENT => 127,
        Step::Exec | Step::FindExecutable => 126,
        _ => 1,
    })
}

enum Never {}

fn setup_and_exec(cx: &ChildContext<'_>) -> Result<Never, ChildError> {
    let plan = cx.plan;
    sys::reset_signals().map_err(at(Step::Signals, 0))?;
    // Non-dumpable until exec: nothing in the container can ptrace us or
    // open our /proc files while we hold host fds (CVE-2019-5736 class).
    sys::prctl(libc::PR_SET_DUMPABLE, 0, 0).map_err(at(Step::Dumpable, 0))?;
    sys::setsid().map_err(at(Step::Setsid, 0))?;
    // Device nodes and created directories get exactly the spec's modes.
    sys::umask(0);

    let userns = plan.namespaces.new_user();
    if userns {
        cx.wait_parent(Step::WaitUserMap)?;
        // Become root of the new user namespace (the maps are written now).
        sys::setresgid(0).map_err(at(Step::Setgid, 0))?;
        sys::setresuid(0).map_err(at(Step::Setuid, 0))?;
    }
    for (i, (fd, nstype)) in cx.join.iter().enumerate() {
        sys::setns(fd.as_fd(), *nstype).map_err(at(Step::Setns, i))?;
    }
    // A network namespace made for the container starts with `lo` down;
    // one joined by path is left as its owner set it up.
    if plan.namespaces.new_net() {
        sys::loopback_up().map_err(at(Step::Loopback, 0))?;
    }
    for (target, fd) in cx.stdio.iter().enumerate() {
        if let Some(fd) = fd {
            sys::dup_onto(*fd, target as RawFd).map_err(at(Step::Stdio, target))?;
        }
    }
    sys::close_fds_except(&cx.keep_fds).map_err(at(Step::CloseFds, 0))?;

    let root = rootfs::prepare_root(plan, cx.rootfs)?;
    rootfs::mount_all(plan, root.as_fd())?;
    rootfs::create_devices(plan, root.as_fd(), userns)?;
    rootfs::create_cwd(plan, root.as_fd())?;
    if cx.want_hooks {
        cx.send(MSG_HOOKS, None);
        cx.wait_parent(Step::Hooks)?;
    }
    // In the container's mount namespace, mounts done, before pivot_root.
    // No filter is loaded yet: close_range closes what the hook must not
    // have (the root's fd among them), `keep_fds` is only its fallback.
    run_hooks(
        &cx.create_container_hooks,
        Step::CreateContainerHook,
        Step::CreateContainerHookStatus,
        &cx.keep_fds,
    )?;
    rootfs::mask_paths(plan, root.as_fd())?;
    rootfs::readonly_paths(plan, root.as_fd())?;
    rootfs::pivot(plan, root.as_fd())?;
    drop(root);

    if let Some(h) = &plan.hostname {
        sys::sethostname(h).map_err(at(Step::Hostname, 0))?;
    }
    if let Some(d) = &plan.domainname {
        sys::setdomainname(d).map_err(at(Step::Domainname, 0))?;
    }
    if let Some(proc_sys) = &cx.proc_sys {
        for (i, (key, value)) in plan.sysctls.iter().enumerate() {
            write_sysctl(proc_sys.as_fd(), key, value).map_err(at(Step::Sysctl, i))?;
        }
    }
    // The host's /proc/sys and the other setup handles, gone before the
    // program is looked up (CVE-2024-21626).
    sys::close_fds_except(&cx.keep_for_start).map_err(at(Step::CloseFds, 1))?;
    for (i, (res, soft, hard)) in plan.rlimits.iter().enumerate() {
        sys::setrlimit(*res, *soft, *hard).map_err(at(Step::Rlimit, i))?;
    }

    if plan.no_new_privs {
        sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0).map_err(at(Step::NoNewPrivs, 0))?;
    } else if let Some(filter) = cx.seccomp {
        // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: do it
        // before the capabilities are dropped (as runc does).
        filter.install().map_err(|_| {
            ChildError::new(Step::Seccomp, 0, &io::Error::from_raw_os_error(libc::EPERM))
        })?;
    }
    set_credentials(cx)?;

    // cwd after the uid switch, so the user's own permissions apply.
    sys::chdir(&plan.cwd).map_err(at(Step::Chdir, 0))?;
    // CVE-2024-21626: a cwd outside the root (through a leaked fd) shows
    // as unreachable; refuse to exec there.
    match sys::cwd_is_reachable() {
        Ok(true) => {}
        Ok(false) => {
            return Err(ChildError::new(
                Step::CwdUnreachable,
                0,
                &io::Error::from_raw_os_error(libc::EPERM),
            ));
        }
        Err(e) => return Err(ChildError::new(Step::CwdUnreachable, 0, &e)),
    }
    let exe = find_executable(plan)?;
    sys::umask(plan.umask);

    cx.send(MSG_READY, None);
    let mut b = [0u8; 1];
    match sys::read(cx.gate.as_fd(), &mut b) {
        Ok(1) => {}
        Ok(_) => {
            return Err(ChildError::new(
                Step::StartGate,
                0,
                &io::Error::from_raw_os_error(libc::EPIPE),
            ));
        }
        Err(e) => return Err(ChildError::new(Step::StartGate, 0, &e)),
    }
    // After start, before the program: resolved in the container's root.
    // Since the last close_range only `keep_for_start` are open (the
    // pidfds of hooks are closed again): without no_new_privs the filter
    // is loaded already, and may deny close_range.
    run_hooks(
        &cx.start_container_hooks,
        Step::StartContainerHook,
        Step::StartContainerHookStatus,
        &cx.keep_for_start,
    )?;
    // Every fd but stdio is closed now or at exec (CVE-2024-21626); the
    // report pipe and the exec fifo stay usable until then so an exec
    // failure still reaches the parent, or `start` (whose poststart hooks
    // wait for the fifo to close). Before the late filter, so that
    // close_range need not be in the profile; after the early one, one
    // close(2) at a time if it is not. What is kept is close-on-exec from
    // its opening (the parent makes sure of it); marking every fd so as
    // well is only a second line, which such a profile may deny.
    close_each_unless_range(&cx.keep_at_exec, &cx.keep_for_start).map_err(at(Step::CloseFds, 2))?;
    let _ = sys::cloexec_from(3);
    if plan.no_new_privs
        && let Some(filter) = cx.seccomp
    {
        // As late as possible, so the filter does not have to allow the
        // runtime's own syscalls.
        filter.install().map_err(|_| {
            ChildError::new(Step::Seccomp, 0, &io::Error::from_raw_os_error(libc::EPERM))
        })?;
    }
    let (e, what) = match &cx.init {
        // An ELF binary runs from a close-on-exec fd (only a script's
        // interpreter would need it open).
        Some((fd, argv)) => (sys::fexecve(*fd, argv, &cx.envp), c"the container's init"),
        None => (sys::execve(exe, &cx.argv, &cx.envp), exe),
    };
    let err = ChildError::new(Step::Exec, 0, &e);
    // The container's stderr is where its own output goes: the program
    // and the reason, as runc prints them (the creating process may be
    // gone, or may already count the container as started).
    exec_failure(what, err.errno, &mut |part| sys::write_stderr(part));
    Err(err)
}

/// Says `berth-runtime: container process failed: exec PROGRAM: REASON`
/// through `out`, in pieces (the child does not allocate). The program
/// was found and is executable ([`find_executable`]), so ENOENT from
/// execve means what it loads is missing: a script's `#!` interpreter or
/// a binary's loader.
fn exec_failure(exe: &CStr, errno: i32, out: &mut dyn FnMut(&[u8])) {
    let (reason, hint): (&[u8], &[u8]) = match errno {
        libc::ENOENT => (
            b"No such file or directory",
            b" (its #! interpreter or its dynamic loader is missing)",
        ),
        libc::EACCES => (b"Permission denied", b""),
        libc::ENOEXEC => (b"Exec format error", b" (not a program for this machine)"),
        libc::ENOTDIR => (b"Not a directory", b""),
        libc::ELOOP => (b"Too many levels of symbolic links", b""),
        libc::E2BIG => (b"Argument list too long", b""),
        libc::ETXTBSY => (b"Text file busy", b""),
        libc::ENOMEM => (b"Cannot allocate memory", b""),
        libc::EPERM => (b"Operation not permitted", b""),
        libc::EISDIR => (b"Is a directory", b""),
        libc::ELIBBAD => (b"Accessing a corrupted shared library", b""),
        libc::EINVAL => (b"Invalid argument", b""),
        _ => (b"errno ", b""),
    };
    out(b"berth-runtime: container process failed: exec ");
    out(exe.to_bytes());
    out(b": ");
    out(reason);
    if reason == b"errno " {
        let mut digits = [0u8; 10];
        let mut n = errno.unsigned_abs();
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 || at == 0 {
                break;
            }
        }
        out(&digits[at..]);
    }
    out(hint);
    out(b"\n");
}

/// Opens `/proc/sys/<key>` beneath the verified `/proc/sys` fd without
/// following any symlink or crossing a mount, checks it is procfs
/// (CVE-2019-16884 class) and writes the value.
fn write_sysctl(proc_sys: BorrowedFd<'_>, key: &CStr, value: &[u8]) -> io::Result<()> {
    const RESOLVE_NO_XDEV: u64 = 0x01;
    const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
    const RESOLVE_NO_SYMLINKS: u64 = 0x04;
    const RESOLVE_BENEATH: u64 = 0x08;
    let fd = sys::openat2(
        proc_sys,
        key,
        (libc::O_WRONLY | libc::O_TRUNC) as u64,
        0,
        RESOLVE_BENEATH | RESOLVE_NO_XDEV | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    )?;
    if !sys::is_procfs(fd.as_fd())? {
        return Err(io::Error::from_raw_os_error(libc::EXDEV));
    }
    sys::write_all(fd.as_fd(), value)
}

/// Drops the bounding set, switches uid/gid/groups keeping the permitted
/// capabilities, then sets the spec's capability sets and ambient ones.
fn set_credentials(cx: &ChildContext<'_>) -> Result<(), ChildError> {
    let plan = cx.plan;
    if let Some(caps) = &plan.caps {
        for cap in 0..=cx.last_cap {
            if !caps.bounding.contains(cap) {
                sys::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0)
                    .map_err(at(Step::CapBounding, cap as usize))?;
            }
        }
        sys::prctl(libc::PR_SET_KEEPCAPS, 1, 0).map_err(at(Step::KeepCaps, 0))?;
    }
    sys::setgroups(&plan.additional_gids).map_err(at(Step::Setgroups, 0))?;
    sys::setresgid(plan.gid).map_err(at(Step::Setgid, 0))?;
    sys::setresuid(plan.uid).map_err(at(Step::Setuid, 0))?;
    if let Some(caps) = &plan.caps {
        sys::prctl(libc::PR_SET_KEEPCAPS, 0, 0).map_err(at(Step::KeepCaps, 0))?;
        sys::capset(caps.effective.0, caps.permitted.0, caps.inheritable.0)
            .map_err(at(Step::Capset, 0))?;
        sys::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
        )
        .map_err(at(Step::Ambient, 0))?;
        for cap in 0..=cx.last_cap {
            if caps.ambient.contains(cap) {
                sys::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    cap as libc::c_ulong,
                )
                .map_err(at(Step::Ambient, cap as usize))?;
            }
        }
    }
    Ok(())
}

/// The first candidate the (new) user may execute.
fn find_executable(plan: &Plan) -> Result<&CStr, ChildError> {
    let mut last = io::Error::from_raw_os_error(libc::ENOENT);
    for c in &plan.exec_candidates {
        match sys::can_execute(c) {
            Ok(()) => return Ok(c),
            Err(e) => last = e,
        }
    }
    Err(ChildError::new(Step::FindExecutable, 0, &last))
}

/// Builds the NULL-terminated pointer array `execve` takes.
pub fn pointer_array(strings: &[std::ffi::CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_failures_name_the_program_and_the_reason() {
        let said = |errno| {
            let mut v = Vec::new();
            exec_failure(c"/app/run.sh", errno, &mut |p| v.extend_from_slice(p));
            String::from_utf8(v).unwrap()
        };
        assert_eq!(
            said(libc::ENOENT),
            "berth-runtime: container process failed: exec /app/run.sh: No such file or directory (its #! interpreter or its dynamic loader is missing)\n"
        );
        assert_eq!(
            said(libc::EACCES),
            "berth-runtime: container process failed: exec /app/run.sh: Permission denied\n"
        );
        assert_eq!(
            said(4095),
            "berth-runtime: container process failed: exec /app/run.sh: errno 4095\n"
        );
    }

    #[test]
    fn records_round_trip() {
        let b = encode(MSG_ERROR, Step::Mount as u32, libc::ENOENT, 7);
        assert_eq!(decode(&b), (MSG_ERROR, Step::Mount as u32, libc::ENOENT, 7));
    }

    #[test]
    fn every_step_decodes_to_itself() {
        for s in ALL_STEPS {
            assert_eq!(Step::from_raw(s as u32), Some(s));
        }
        assert_eq!(Step::from_raw(0), None);
        assert_eq!(Step::from_raw(999), None);
    }

    #[test]
    fn pointer_array_is_null_terminated() {
        let v = vec![c"a".to_owned(), c"b".to_owned()];
        let p = pointer_array(&v);
        assert_eq!(p.len(), 3);
        assert!(p[2].is_null());
    }
}
