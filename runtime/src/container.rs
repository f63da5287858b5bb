//! Containers: create, start, kill, state, wait, delete.
//!
//! The process that calls [`Runtime::create`] is the parent of the
//! container's first process; it (or whoever inherits it, for a CLI
//! `create` that exits) reaps it. State lives under the runtime's root
//! directory, one directory per container, so separate processes (the
//! `berth-runc` invocations) see the same containers.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};

use crate::cgroup::Cgroup;
use crate::hooks::HookKind;
use crate::process::{self, ChildContext, Step};
use crate::spec::{self, MountKind, Plan, SpecError};
use crate::state::{State, Status};
use crate::sys::{self, WaitStatus};

/// Failures of container operations; each names the container.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("invalid container id {id:?}: use letters, digits and _ + - . (not . or ..)")]
    InvalidId { id: String },
    #[error("container {id} already exists")]
    Exists { id: String },
    #[error("container {id} does not exist")]
    NotFound { id: String },
    #[error("read config {path}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parse config {path}")]
    ParseConfig {
        path: PathBuf,
        #[source]
        source: SpecError,
    },
    #[error("container {id}: config")]
    Spec {
        id: String,
        #[source]
        source: SpecError,
    },
    #[error("container {id}: rootfs {path} is missing or not a directory")]
    Rootfs { id: String, path: PathBuf },
    #[error("container {id}: init argument {arg:?} holds a NUL byte")]
    InitArg { id: String, arg: String },
    #[error("container {id}: {op} {path}")]
    Io {
        id: String,
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("container {id}: clone the container process")]
    Clone {
        id: String,
        #[source]
        source: io::Error,
    },
    #[error("container {id}: {step}: {path} exited with status {status}")]
    HookStatus {
        id: String,
        step: &'static str,
        path: PathBuf,
        status: i32,
    },
    #[error("container {id}: {step}: {path} timed out")]
    HookTimeout {
        id: String,
        step: &'static str,
        path: PathBuf,
    },
    #[error("container {id}: the state is too large ({len} bytes) for in-container hooks' stdin")]
    HookInputTooLarge { id: String, len: usize },
    #[error("container {id}: {step}{what}")]
    Child {
        id: String,
        step: &'static str,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("container {id}: the container process exited during setup ({status})")]
    ChildDied { id: String, status: String },
    #[error("container {id}")]
    Hooks {
        id: String,
        #[source]
        source: crate::hooks::HookError,
    },
    #[error("container {id}: cgroup")]
    Cgroup {
        id: String,
        #[source]
        source: crate::cgroup::CgroupError,
    },
    #[error("container {id}: seccomp")]
    Seccomp {
        id: String,
        #[source]
        source: crate::seccomp::SeccompError,
    },
    #[error("container {id} is {status}, not {wanted}")]
    WrongStatus {
        id: String,
        status: Status,
        wanted: &'static str,
    },
    #[error("container {id}: its process is not waiting for start")]
    NotWaiting { id: String },
    #[error("container {id}: signal {signal}")]
    Kill {
        id: String,
        signal: i32,
        #[source]
        source: io::Error,
    },
    #[error(
        "container {id}: kill --all needs the container to have its own pid namespace or cgroup"
    )]
    KillAllUnscoped { id: String },
    #[error("container {id}: wait for the container process")]
    Wait {
        id: String,
        #[source]
        source: io::Error,
    },
    #[error("container {id}: state file {path}")]
    StateFile {
        id: String,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("container {id}: the process did not exit after SIGKILL")]
    KillTimeout { id: String },
}

/// How the container's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    /// The shell convention: the exit code, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => 128 + s,
        }
    }
}

impl From<WaitStatus> for ExitStatus {
    fn from(w: WaitStatus) -> ExitStatus {
        match w {
            WaitStatus::Exited(c) => ExitStatus::Exited(c),
            WaitStatus::Signaled(s) => ExitStatus::Signaled(s),
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Exited(c) => write!(f, "exit status {c}"),
            ExitStatus::Signaled(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// Stdio for the container's process; `None` inherits the caller's.
#[derive(Debug, Default)]
pub struct Stdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// What `create` needs besides the spec.
#[derive(Debug, Default)]
pub struct CreateOptions {
    pub stdio: Stdio,
    /// A program to run as the container's first process in front of
    /// `process.args` (`docker run --init`).
    pub init: Option<InitProgram>,
}

/// An init for the container (a reaper such as tini): executed from an
/// fd the caller opened, so it need not be in the container's root, with
/// `args` (its own argv, `args[0]` first) followed by `process.args`. It
/// runs after every other step (credentials, capabilities, seccomp), as
/// the program would; the program must still be found in the container's
/// root at create.
#[derive(Debug)]
pub struct InitProgram {
    pub exe: OwnedFd,
    pub args: Vec<String>,
}

/// What is persisted per container (`<root>/<id>/state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    id: String,
    bundle: PathBuf,
    rootfs: PathBuf,
    pid: i32,
    /// `/proc/<pid>/stat` start time, to tell our process from a reused pid.
    pid_start: u64,
    own_pid_ns: bool,
    created: String,
    owner: String,
    annotations: BTreeMap<String, String>,
    hooks: Option<oci_spec::runtime::Hooks>,
    /// The container's own cgroup directory, when it has one.
    cgroup: Option<PathBuf>,
}

/// runc's `state` output: the runtime-spec state plus rootfs, created, owner.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuncState {
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    pub status: Status,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A runtime with its state root.
#[derive(Debug, Clone)]
pub struct Runtime {
    root: PathBuf,
}

/// A container known to the runtime.
#[derive(Debug)]
pub struct Container {
    root: PathBuf,
    record: Record,
    exit: Option<ExitStatus>,
    warnings: Vec<String>,
    /// Set once `delete` has removed the state and run the poststop hooks.
    deleted: bool,
}

/// The rootfs as an absolute path without symlinks: a directory, never
/// the host's `/`.
fn canonical_rootfs(id: &str, rootfs: &Path) -> Result<PathBuf, ContainerError> {
    match fs::canonicalize(rootfs) {
        Ok(p) if p.is_dir() && p != Path::new("/") => Ok(p),
        _ => Err(ContainerError::Rootfs {
            id: id.to_string(),
            path: rootfs.to_path_buf(),
        }),
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 1024
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-' | b'.'))
}

/// Reads field 22 (starttime) and the state letter of `/proc/<pid>/stat`.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything.
    let rest = &s[s.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// RFC 3339 UTC timestamp with nanoseconds, as runc writes `created`.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        d.subsec_nanos()
    )
}

fn last_cap() -> u32 {
    fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

fn ns_flag(kind: LinuxNamespaceType) -> libc::c_int {
    kind as libc::c_int
}

impl Runtime {
    /// A runtime keeping state under `root` (created when needed).
    pub fn new(root: impl Into<PathBuf>) -> Runtime {
        Runtime { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Creates a container from a bundle directory (its `config.json`).
    pub fn create(
        &self,
        id: &str,
        bundle: &Path,
        opts: CreateOptions,
    ) -> Result<Container, ContainerError> {
        let bundle = std::path::absolute(bundle).unwrap_or_else(|_| bundle.to_path_buf());
        let config = bundle.join("config.json");
        let bytes = read_config(&config).map_err(|source| ContainerError::ReadConfig {
            path: config.clone(),
            source,
        })?;
        let spec = spec::parse_config(&bytes).map_err(|source| ContainerError::ParseConfig {
            path: config.clone(),
            source,
        })?;
        let rootfs = spec::rootfs_path(&spec, &bundle).map_err(|source| ContainerError::Spec {
            id: id.to_string(),
            source,
        })?;
        self.create_inner(id, &spec, &rootfs, &bundle, opts)
    }

    /// Prepares `rootfs` to be the read-only root of a container of `spec`
    /// that `create_from_spec` will make later: creates in it now the
    /// mount destinations the container's first process would otherwise
    /// create (see [`crate::rootfs::create_mount_targets`]). For a tree
    /// shared read-only by several containers: call it while the tree is
    /// still writable, before it is bound read-only. The rootfs is refused
    /// as by `create_from_spec` (not a directory, or `/`); relative bind
    /// sources resolve against its parent directory.
    pub fn create_mount_targets(
        &self,
        id: &str,
        spec: &Spec,
        rootfs: &Path,
    ) -> Result<(), ContainerError> {
        let rootfs = canonical_rootfs(id, rootfs)?;
        let rootfs = rootfs.as_path();
        let bundle = rootfs.parent().unwrap_or(Path::new("/"));
        let is_dir = |p: &Path| fs::metadata(p).map(|m| m.is_dir()).unwrap_or(true);
        let plan =
            spec::plan(spec, rootfs, bundle, &is_dir).map_err(|source| ContainerError::Spec {
                id: id.to_string(),
                source,
            })?;
        crate::rootfs::create_mount_targets(&plan, rootfs).map_err(|source| ContainerError::Io {
            id: id.to_string(),
            op: "create mount destinations in",
            path: rootfs.to_path_buf(),
            source,
        })
    }

    /// Creates a container from an in-memory spec and a rootfs path (how
    /// PID 1 uses the runtime); `root.path` of the spec is ignored.
    pub fn create_from_spec(
        &self,
        id: &str,
        spec: &Spec,
        rootfs: &Path,
        opts: CreateOptions,
    ) -> Result<Container, ContainerError> {
        let bundle = rootfs.parent().unwrap_or(Path::new("/"));
        self.create_from_spec_in(id, spec, rootfs, bundle, opts)
    }

    /// [`Runtime::create_from_spec`] of a bundle directory `bundle`, where
    /// its `config.json` is, whatever `rootfs` is (PID 1 unpacks a packed
    /// bundle's root into its run directory; a `root.path` may name any
    /// directory): what relative bind sources resolve against and what
    /// the container's state and its hooks call the bundle, as with runc.
    pub fn create_from_spec_in(
        &self,
        id: &str,
        spec: &Spec,
        rootfs: &Path,
        bundle: &Path,
        opts: CreateOptions,
    ) -> Result<Container, ContainerError> {
        let bundle = std::path::absolute(bundle).unwrap_or_else(|_| bundle.to_path_buf());
        self.create_inner(id, spec, rootfs, &bundle, opts)
    }

    fn create_inner(
        &self,
        id: &str,
        spec: &Spec,
        rootfs: &Path,
        bundle: &Path,
        opts: CreateOptions,
    ) -> Result<Container, ContainerError> {
        if !valid_id(id) {
            return Err(ContainerError::InvalidId { id: id.to_string() });
        }
        let ioerr = |op: &'static str, path: &Path| {
            let (id, path) = (id.to_string(), path.to_path_buf());
            move |source| ContainerError::Io {
                id,
                op,
                path,
                source,
            }
        };
        let rootfs = canonical_rootfs(id, rootfs)?;
        let is_dir = |p: &Path| fs::metadata(p).map(|m| m.is_dir()).unwrap_or(true);
        let plan =
            spec::plan(spec, &rootfs, bundle, &is_dir).map_err(|source| ContainerError::Spec {
                id: id.to_string(),
                source,
            })?;
        let linux = spec.linux().clone().unwrap_or_default();
        let cgroup_plan =
            crate::cgroup::plan(&linux, id).map_err(|source| ContainerError::Cgroup {
                id: id.to_string(),
                source,
            })?;

        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(ioerr("create state root", &self.root))?;
        let dir = self.dir(id);
        match fs::DirBuilder::new().mode(0o711).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(ContainerError::Exists { id: id.to_string() });
            }
            Err(e) => return Err(ioerr("create state directory", &dir)(e)),
        }
        let result = self.spawn(id, spec, &plan, cgroup_plan.as_ref(), bundle, &dir, opts);
        if result.is_err() {
            let _ = fs::remove_dir_all(&dir);
            // The lifecycle goes on with delete (runtime-spec "Lifecycle",
            // step 12), whose poststop hooks undo what prestart and
            // createRuntime hooks set up; runc's destroy runs them too.
            // Their own failure would only hide the create's error.
            if let Some(list) = spec.hooks().as_ref().and_then(|h| h.poststop().clone()) {
                let mut state = record_state_parts(id, 0, bundle, spec);
                state.status = Status::Stopped;
                state.pid = None;
                let _ = run_hook_list(id, HookKind::Poststop, &list, &state);
            }
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn(
        &self,
        id: &str,
        spec: &Spec,
        plan: &Plan,
        cgroup_plan: Option<&crate::cgroup::CgroupPlan>,
        bundle: &Path,
        dir: &Path,
        opts: CreateOptions,
    ) -> Result<Container, ContainerError> {
        let cgroup = match cgroup_plan {
            Some(p) => Some(Cgroup::create(p).map_err(|source| ContainerError::Cgroup {
                id: id.to_string(),
                source,
            })?),
            None => None,
        };
        let result = self.spawn_in(id, spec, plan, cgroup.as_ref(), bundle, dir, opts);
        if result.is_err()
            && let Some(cg) = cgroup
        {
            let _ = cg.kill_all();
            let _ = cg.remove();
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn_in(
        &self,
        id: &str,
        spec: &Spec,
        plan: &Plan,
        cgroup: Option<&Cgroup>,
        bundle: &Path,
        dir: &Path,
        opts: CreateOptions,
    ) -> Result<Container, ContainerError> {
        let ioerr = |op: &'static str, path: &Path| {
            let (id, path) = (id.to_string(), path.to_path_buf());
            move |source| ContainerError::Io {
                id,
                op,
                path,
                source,
            }
        };
        // Everything the child needs, opened here, close-on-exec.
        let fifo = dir.join("exec.fifo");
        let fifo_c = CString::new(fifo.as_os_str().as_bytes())
            .map_err(|_| ioerr("exec fifo", &fifo)(io::ErrorKind::InvalidInput.into()))?;
        sys::mkfifo(&fifo_c, 0o600).map_err(ioerr("create exec fifo", &fifo))?;
        let gate =
            sys::openat(None, &fifo_c, libc::O_RDWR, 0).map_err(ioerr("open exec fifo", &fifo))?;
        let proc_sys = if plan.sysctls.is_empty() {
            None
        } else {
            let fd = sys::openat(None, c"/proc/sys", libc::O_PATH | libc::O_DIRECTORY, 0)
                .map_err(ioerr("open", Path::new("/proc/sys")))?;
            match sys::is_procfs(fd.as_fd()) {
                Ok(true) => Some(fd),
                Ok(false) => {
                    return Err(ioerr("verify procfs", Path::new("/proc/sys"))(
                        io::ErrorKind::InvalidData.into(),
                    ));
                }
                Err(e) => return Err(ioerr("verify procfs", Path::new("/proc/sys"))(e)),
            }
        };
        let mut join = Vec::new();
        for j in &plan.namespaces.join {
            let fd = open_namespace(&j.path).map_err(ioerr("open namespace", &j.path))?;
            join.push((fd, ns_flag(j.kind)));
        }
        let join_pid = match &plan.namespaces.join_pid {
            Some(p) => Some(open_namespace(p).map_err(ioerr("open namespace", p))?),
            None => None,
        };
        crate::rootfs::create_symlink_targets(plan, &plan.rootfs).map_err(ioerr(
            "create mount destinations behind symlinks in",
            &plan.rootfs,
        ))?;
        let (report_r, report_w) = sys::pipe().map_err(ioerr("create pipe", dir))?;
        let (sync_r, sync_w) = sys::pipe().map_err(ioerr("create pipe", dir))?;
        let rootfs_c = CString::new(plan.rootfs.as_os_str().as_bytes()).map_err(|_| {
            ContainerError::Rootfs {
                id: id.to_string(),
                path: plan.rootfs.clone(),
            }
        })?;
        let hooks = spec.hooks().clone();
        let want_hooks = hooks.as_ref().is_some_and(|h| {
            #[allow(deprecated)]
            let pre = h.prestart().as_ref().is_some_and(|v| !v.is_empty());
            pre || h.create_runtime().as_ref().is_some_and(|v| !v.is_empty())
        });
        // The child dups these onto 0, 1, 2 in order: a source that is
        // itself 0-2 could be overwritten first, so move those above 2.
        let lift = |fd: &Option<OwnedFd>| -> Result<Option<OwnedFd>, ContainerError> {
            match fd {
                Some(f) if f.as_raw_fd() < 3 => sys::dup_above(f.as_fd(), 3)
                    .map(Some)
                    .map_err(ioerr("duplicate stdio fd", dir)),
                _ => Ok(None),
            }
        };
        let lifted = [
            lift(&opts.stdio.stdin)?,
            lift(&opts.stdio.stdout)?,
            lift(&opts.stdio.stderr)?,
        ];
        let sources = [&opts.stdio.stdin, &opts.stdio.stdout, &opts.stdio.stderr];
        let mut stdio_raw: [Option<RawFd>; 3] = [None; 3];
        for (i, (src, up)) in sources.iter().zip(&lifted).enumerate() {
            stdio_raw[i] = up.as_ref().or(src.as_ref()).map(|f| f.as_raw_fd());
        }
        let seccomp = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
            Some(s) => {
                Some(
                    crate::seccomp::compile(s).map_err(|source| ContainerError::Seccomp {
                        id: id.to_string(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        // What the child holds, step by step (CVE-2024-21626: close-on-exec
        // closes an fd only after execve has resolved the program's path,
        // and a path through /proc/self/fd/N of a host directory leads out
        // of the root). The namespaces to join are used before the first
        // close, the host's /proc/sys until the sysctls are written; at
        // exec only the report pipe, the exec fifo (the gate) and the
        // init's sealed copy are left, all close-on-exec, none a directory.
        let mut keep_fds: Vec<RawFd> =
            vec![report_w.as_raw_fd(), sync_r.as_raw_fd(), gate.as_raw_fd()];
        keep_fds.extend(proc_sys.as_ref().map(|f| f.as_raw_fd()));
        // The gate stays open until execve closes it (close-on-exec):
        // `start` waits for that before the poststart hooks.
        let mut keep_at_exec: Vec<RawFd> = vec![report_w.as_raw_fd(), gate.as_raw_fd()];
        let hooks_spec = spec.hooks().clone().unwrap_or_default();
        let (create_hooks, create_inputs) = child_hooks(id, hooks_spec.create_container())?;
        let (start_hooks, start_inputs) = child_hooks(id, hooks_spec.start_container())?;
        keep_fds.extend(
            create_hooks
                .iter()
                .chain(&start_hooks)
                .map(|h| h.stdin.as_raw_fd()),
        );
        let mut keep_for_start: Vec<RawFd> = vec![report_w.as_raw_fd(), gate.as_raw_fd()];
        keep_for_start.extend(start_hooks.iter().map(|h| h.stdin.as_raw_fd()));
        // The init's fd stays open until execve: a close-on-exec copy, as
        // the child may not be able to mark it so itself (a seccomp
        // profile without close_range).
        let init_exe = match &opts.init {
            Some(init) => Some(
                sys::dup_above(init.exe.as_fd(), 3)
                    .map_err(ioerr("duplicate the init's fd", dir))?,
            ),
            None => None,
        };
        let init_args: Vec<CString> = match (&opts.init, &init_exe) {
            (Some(init), Some(exe)) => {
                let mut args = Vec::with_capacity(init.args.len() + plan.args.len());
                for a in &init.args {
                    args.push(
                        CString::new(a.as_str()).map_err(|_| ContainerError::InitArg {
                            id: id.to_string(),
                            arg: a.clone(),
                        })?,
                    );
                }
                args.extend(plan.args.iter().cloned());
                keep_fds.push(exe.as_raw_fd());
                keep_for_start.push(exe.as_raw_fd());
                keep_at_exec.push(exe.as_raw_fd());
                args
            }
            _ => Vec::new(),
        };
        keep_fds.sort_unstable();
        keep_for_start.sort_unstable();
        keep_at_exec.sort_unstable();
        let cx = ChildContext {
            create_container_hooks: create_hooks,
            start_container_hooks: start_hooks,
            keep_fds,
            keep_for_start,
            keep_at_exec,
            seccomp: seccomp.as_ref(),
            plan,
            rootfs: &rootfs_c,
            report: report_w,
            sync: sync_r,
            gate,
            proc_sys,
            join,
            stdio: stdio_raw,
            last_cap: last_cap(),
            want_hooks,
            argv: process::pointer_array(&plan.args),
            envp: process::pointer_array(&plan.env),
            init: init_exe
                .as_ref()
                .map(|exe| (exe.as_fd(), process::pointer_array(&init_args))),
        };
        // Straight into the cgroup when there is one: no window in which
        // the process runs outside its limits, no later migration.
        let args = sys::CloneArgs {
            flags: plan.namespaces.clone_flags,
            cgroup: cgroup.map(|c| c.dir_fd().as_raw_fd()),
        };
        let pid = sys::clone_container(&args, join_pid.as_ref().map(|f| f.as_fd()), &cx).map_err(
            |source| ContainerError::Clone {
                id: id.to_string(),
                source,
            },
        )?;
        // Our copies of the child's ends: closing them makes a dead child
        // show as EOF, and the fifo have no reader but the child.
        drop(cx);
        drop(opts);
        drop(lifted);
        drop(init_exe);

        let fail = |e: ContainerError| {
            let _ = sys::kill(pid, libc::SIGKILL);
            let _ = sys::wait_pid(pid);
            e
        };
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        // A write to the child's pipes that fails with EPIPE means the
        // child is gone: the report below says how (an error record, or
        // its exit status), better than "Broken pipe". Nothing more is
        // written to it then.
        let mut child_gone = false;
        if plan.namespaces.new_user() {
            // The parent writes the maps: it has the privileges over the
            // parent user namespace that the child lacks.
            write_proc(
                &proc_dir.join("uid_map"),
                plan.namespaces.uid_map.as_bytes(),
            )
            .map_err(|e| fail(ioerr("write", &proc_dir.join("uid_map"))(e)))?;
            write_proc(
                &proc_dir.join("gid_map"),
                plan.namespaces.gid_map.as_bytes(),
            )
            .map_err(|e| fail(ioerr("write", &proc_dir.join("gid_map"))(e)))?;
            match sys::write_all(sync_w.as_fd(), &[0]) {
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => child_gone = true,
                r => r.map_err(|e| fail(ioerr("signal the child", dir)(e)))?,
            }
        }
        // The state for the in-container hooks, now that the pid is known.
        let hook_input = |status| {
            let mut r = record_state_parts(id, pid, bundle, spec);
            r.status = status;
            r
        };
        if !child_gone {
            feed_hook_inputs(id, create_inputs, &hook_input(Status::Creating)).map_err(fail)?;
            feed_hook_inputs(id, start_inputs, &hook_input(Status::Created)).map_err(fail)?;
        }
        if let Some(adj) = plan.oom_score_adj.filter(|_| !child_gone) {
            let path = proc_dir.join("oom_score_adj");
            write_proc(&path, adj.to_string().as_bytes())
                .map_err(|e| fail(ioerr("write", &path)(e)))?;
        }
        let pid_start = proc_stat(pid).map(|(_, s)| s).unwrap_or(0);
        let mut record = Record {
            id: id.to_string(),
            bundle: bundle.to_path_buf(),
            rootfs: plan.rootfs.clone(),
            pid,
            pid_start,
            // A joined pid namespace is not the container's to signal whole.
            own_pid_ns: plan.namespaces.clone_flags & libc::CLONE_NEWPID as u64 != 0,
            created: rfc3339(SystemTime::now()),
            owner: owner(),
            annotations: spec
                .annotations()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            hooks,
            cgroup: cgroup.map(|c| c.path().to_path_buf()),
        };
        let mut report = fs::File::from(report_r);
        loop {
            let mut rec = [0u8; 16];
            match report.read_exact(&mut rec) {
                Ok(()) => {}
                Err(_) => {
                    let status = sys::wait_pid(pid)
                        .map(|s| ExitStatus::from(s).to_string())
                        .unwrap_or_else(|e| e.to_string());
                    return Err(ContainerError::ChildDied {
                        id: id.to_string(),
                        status,
                    });
                }
            }
            let (kind, step, errno, index) = process::decode(&rec);
            match kind {
                process::MSG_READY => break,
                process::MSG_HOOKS => {
                    let state = record_state(&record, Status::Creating);
                    if let Some(h) = &record.hooks {
                        // prestart (deprecated) runs where createRuntime does, first.
                        #[allow(deprecated)]
                        let lists = [
                            (HookKind::Prestart, h.prestart()),
                            (HookKind::CreateRuntime, h.create_runtime()),
                        ];
                        for (kind, list) in lists {
                            if let Some(list) = list {
                                run_hook_list(id, kind, list, &state).map_err(fail)?;
                            }
                        }
                    }
                    match sys::write_all(sync_w.as_fd(), &[0]) {
                        // Gone (killed by a hook, say): the next read says how.
                        Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
                        r => r.map_err(|e| fail(ioerr("signal the child", dir)(e)))?,
                    }
                }
                _ => {
                    let _ = sys::wait_pid(pid);
                    let step = Step::from_raw(step);
                    let what = describe_entry(plan, step, index);
                    return Err(child_failure(
                        id,
                        Some(&hooks_spec),
                        step,
                        errno,
                        index,
                        what,
                    ));
                }
            }
        }
        record.pid_start = proc_stat(pid).map(|(_, s)| s).unwrap_or(pid_start);
        let mut warnings = Vec::new();
        if let Some(caps) = &plan.caps
            && !caps.ambient_unraisable.is_empty()
        {
            // PR_CAP_AMBIENT_RAISE refuses these (prctl(2)); runc warns too.
            warnings.push(format!(
                "ambient capabilities not in both permitted and inheritable were not raised: {}",
                caps.ambient_unraisable.names().join(", ")
            ));
        }
        if let Some(s) = seccomp
            .as_ref()
            .filter(|s| !s.skipped_syscalls().is_empty())
        {
            warnings.push(format!(
                "seccomp rules for syscalls this architecture lacks were left out: {}",
                s.skipped_syscalls().join(", ")
            ));
        }
        let c = Container {
            root: self.root.clone(),
            record,
            exit: None,
            warnings,
            deleted: false,
        };
        c.save().map_err(fail)?;
        Ok(c)
    }

    /// Loads a container created earlier (by this or another process).
    pub fn load(&self, id: &str) -> Result<Container, ContainerError> {
        if !valid_id(id) {
            return Err(ContainerError::InvalidId { id: id.to_string() });
        }
        let path = self.dir(id).join("state.json");
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ContainerError::NotFound { id: id.to_string() });
            }
            Err(source) => {
                return Err(ContainerError::Io {
                    id: id.to_string(),
                    op: "read",
                    path,
                    source,
                });
            }
        };
        let record =
            serde_json::from_slice(&bytes).map_err(|source| ContainerError::StateFile {
                id: id.to_string(),
                path,
                source,
            })?;
        Ok(Container {
            root: self.root.clone(),
            record,
            exit: None,
            warnings: Vec::new(),
            deleted: false,
        })
    }

    /// Removes what a create that died before writing its state left of
    /// container `id` (its directory: the exec fifo), so the id can be
    /// used again; runc's `delete --force` does the same. A container with
    /// a state is left alone (delete it instead). Note that a create still
    /// in progress in another process looks the same.
    pub fn remove_leftover(&self, id: &str) -> Result<(), ContainerError> {
        if !valid_id(id) {
            return Err(ContainerError::InvalidId { id: id.to_string() });
        }
        let dir = self.dir(id);
        if dir.join("state.json").exists() {
            return Err(ContainerError::Exists { id: id.to_string() });
        }
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ContainerError::Io {
                id: id.to_string(),
                op: "remove",
                path: dir,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Ids of every container under the root, sorted.
    pub fn list(&self) -> Result<Vec<String>, ContainerError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(ContainerError::Io {
                    id: String::new(),
                    op: "list",
                    path: self.root.clone(),
                    source,
                });
            }
        };
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("state.json").exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// create + start + wait + delete: the container's exit status.
    pub fn run(
        &self,
        id: &str,
        bundle: &Path,
        opts: CreateOptions,
    ) -> Result<ExitStatus, ContainerError> {
        let mut c = self.create(id, bundle, opts)?;
        let result = c.start().and_then(|()| c.wait());
        let deleted = c.delete(true);
        let status = result?;
        deleted?;
        Ok(status)
    }
}

/// Runs one list of hooks with the state on their stdin.
/// Whether a signal's default action ends the process (signal(7):
/// Term and Core), which a process that never installed handlers obeys.
fn ends_by_default(signal: i32) -> bool {
    !matches!(
        signal,
        0 | libc::SIGCHLD
            | libc::SIGCONT
            | libc::SIGURG
            | libc::SIGWINCH
            | libc::SIGSTOP
            | libc::SIGTSTP
            | libc::SIGTTIN
            | libc::SIGTTOU
    )
}

fn run_hook_list(
    id: &str,
    kind: HookKind,
    list: &[oci_spec::runtime::Hook],
    state: &State,
) -> Result<(), ContainerError> {
    crate::hooks::run_hooks(kind, list, state).map_err(|source| ContainerError::Hooks {
        id: id.to_string(),
        source,
    })
}

fn owner() -> String {
    match sys::getuid() {
        0 => "root".to_string(),
        uid => uid.to_string(),
    }
}

/// The state of a container being created, before its record exists.
fn record_state_parts(id: &str, pid: i32, bundle: &Path, spec: &Spec) -> State {
    State {
        oci_version: crate::state::OCI_VERSION.to_string(),
        id: id.to_string(),
        status: Status::Creating,
        pid: Some(pid),
        bundle: bundle.to_path_buf(),
        annotations: spec
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
    }
}

/// Prepares createContainer/startContainer hooks for the child: strings,
/// pointer arrays and one stdin pipe each (the read end goes to the hook,
/// the write end stays here until the state is known).
fn child_hooks(
    id: &str,
    list: &Option<Vec<oci_spec::runtime::Hook>>,
) -> Result<(Vec<process::ChildHook>, Vec<OwnedFd>), ContainerError> {
    let mut hooks = Vec::new();
    let mut inputs = Vec::new();
    for h in list.iter().flatten() {
        let bad = |reason: &str| ContainerError::Spec {
            id: id.to_string(),
            source: SpecError::Invalid {
                field: format!("hooks path {}", h.path().display()),
                reason: reason.to_string(),
            },
        };
        if !h.path().is_absolute() {
            return Err(bad("not an absolute path"));
        }
        let path = CString::new(h.path().as_os_str().as_bytes())
            .map_err(|_| bad("contains a NUL byte"))?;
        let args = match h.args() {
            Some(a) if !a.is_empty() => a.clone(),
            _ => vec![h.path().display().to_string()],
        };
        let args = args
            .into_iter()
            .map(CString::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad("args contain a NUL byte"))?;
        let env = h.env().clone().unwrap_or_default();
        let env = env
            .into_iter()
            .map(CString::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad("env contains a NUL byte"))?;
        let timeout_ms = match h.timeout() {
            Some(t) if t <= 0 => return Err(bad("timeout must be positive")),
            Some(t) => i32::try_from(t.saturating_mul(1000)).unwrap_or(i32::MAX),
            None => -1,
        };
        let (r, w) = sys::pipe().map_err(|source| ContainerError::Io {
            id: id.to_string(),
            op: "create hook pipe for",
            path: h.path().clone(),
            source,
        })?;
        hooks.push(process::ChildHook {
            path,
            argv: process::pointer_array(&args),
            envp: process::pointer_array(&env),
            stdin: r,
            timeout_ms,
            strings: (args, env),
        });
        inputs.push(w);
    }
    Ok((hooks, inputs))
}

/// Writes the state into each hook's stdin pipe and closes it. The pipe
/// must hold it all (the hook may run only after `start`). A pipe without
/// a reader (EPIPE) is skipped: the container's process is gone (its
/// report says why), or has run a createContainer hook that never read
/// its stdin and closed the pipe since.
fn feed_hook_inputs(id: &str, inputs: Vec<OwnedFd>, state: &State) -> Result<(), ContainerError> {
    if inputs.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_vec(state).map_err(|source| ContainerError::StateFile {
        id: id.to_string(),
        path: PathBuf::from("<hook state>"),
        source,
    })?;
    // PIPE_BUF is the atomic size; the default pipe capacity is 64 KiB.
    if json.len() > 60 * 1024 {
        return Err(ContainerError::HookInputTooLarge {
            id: id.to_string(),
            len: json.len(),
        });
    }
    for w in inputs {
        match sys::write_all(w.as_fd(), &json) {
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
            r => r.map_err(|source| ContainerError::Io {
                id: id.to_string(),
                op: "write hook state to",
                path: PathBuf::from("pipe"),
                source,
            })?,
        }
    }
    Ok(())
}

fn record_state(r: &Record, status: Status) -> State {
    State {
        oci_version: crate::state::OCI_VERSION.to_string(),
        id: r.id.clone(),
        status,
        pid: if status == Status::Stopped {
            None
        } else {
            Some(r.pid)
        },
        bundle: r.bundle.clone(),
        annotations: r.annotations.clone(),
    }
}

/// Opens a namespace file to join. The path comes from the config: it is
/// first opened `O_PATH` (no open side effects: a FIFO would block, a
/// device could act) and checked to be a namespace file, then reopened
/// through that fd for `setns(2)`, which refuses `O_PATH` fds.
fn open_namespace(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let probe = sys::openat(None, &c, libc::O_PATH, 0)?;
    if !sys::is_nsfs(probe.as_fd())? {
        return Err(io::Error::other("not a namespace file"));
    }
    let fd = sys::openat(
        None,
        sys::FdPath::new(probe.as_raw_fd()).as_cstr(),
        libc::O_RDONLY,
        0,
    )?;
    // The reopen followed a magic link: make sure it is still the file
    // just checked.
    if !sys::is_nsfs(fd.as_fd())? {
        return Err(io::Error::other("not a namespace file"));
    }
    Ok(fd)
}

/// Writes a /proc file after checking the open file is on procfs.
fn write_proc(path: &Path, value: &[u8]) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if !sys::is_procfs(f.as_fd())? {
        return Err(io::Error::from_raw_os_error(libc::EXDEV));
    }
    f.write_all(value)
}

/// The error a failure record of the container's process stands for
/// (step, errno, index): a createContainer or startContainer hook named
/// by its path, whether it failed, timed out or could not be run; any
/// other step with `what` (its entry, see [`describe_entry`]).
fn child_failure(
    id: &str,
    hooks: Option<&oci_spec::runtime::Hooks>,
    step: Option<Step>,
    errno: i32,
    index: u32,
    what: String,
) -> ContainerError {
    let hook_list = match (step, hooks) {
        (Some(Step::CreateContainerHook | Step::CreateContainerHookStatus), Some(h)) => {
            h.create_container().as_ref()
        }
        (Some(Step::StartContainerHook | Step::StartContainerHookStatus), Some(h)) => {
            h.start_container().as_ref()
        }
        _ => None,
    };
    let id = id.to_string();
    if let (Some(s), Some(list)) = (step, hook_list) {
        let path = list
            .get(index as usize)
            .map(|h| h.path().clone())
            .unwrap_or_default();
        let step = s.describe();
        return match s {
            Step::CreateContainerHookStatus | Step::StartContainerHookStatus => {
                ContainerError::HookStatus {
                    id,
                    step,
                    path,
                    status: errno,
                }
            }
            _ if errno == libc::ETIMEDOUT => ContainerError::HookTimeout { id, step, path },
            _ => ContainerError::Child {
                id,
                step,
                what: format!(" {}", path.display()),
                source: io::Error::from_raw_os_error(errno),
            },
        };
    }
    ContainerError::Child {
        id,
        step: step.map_or("setup", |s| s.describe()),
        what,
        source: io::Error::from_raw_os_error(errno),
    }
}

/// Names the entry a failed child step was working on.
fn describe_entry(plan: &Plan, step: Option<Step>, index: u32) -> String {
    let i = index as usize;
    let path = match step {
        // A bind names its source too: a missing one is the usual cause.
        Some(Step::Mount) => plan.mounts.get(i).map(|m| match &m.kind {
            MountKind::Bind { source, .. } => {
                format!("{} (bind of {})", m.dest.as_str(), source.to_string_lossy())
            }
            MountKind::Fs { .. } => m.dest.as_str().to_string(),
        }),
        Some(Step::MountTarget | Step::MountOnProc | Step::Remount | Step::MountPropagation) => {
            plan.mounts.get(i).map(|m| m.dest.as_str().to_string())
        }
        Some(Step::Device) => plan.devices.get(i).map(|d| d.path.as_str().to_string()),
        Some(Step::Mask) => plan.masked.get(i).map(|p| p.as_str().to_string()),
        Some(Step::Readonly) => plan.readonly.get(i).map(|p| p.as_str().to_string()),
        Some(Step::Setns) => plan
            .namespaces
            .join
            .get(i)
            .map(|j| j.path.display().to_string()),
        Some(Step::Sysctl) => plan
            .sysctls
            .get(i)
            .map(|(k, _)| k.to_string_lossy().replace('/', ".")),
        Some(Step::MakeCwd | Step::Chdir | Step::CwdUnreachable) => {
            Some(plan.cwd.to_string_lossy().into_owned())
        }
        Some(Step::FindExecutable | Step::Exec) => {
            plan.args.first().map(|a| a.to_string_lossy().into_owned())
        }
        Some(Step::Rlimit) => plan.rlimits.get(i).map(|(r, _, _)| format!("resource {r}")),
        Some(Step::CapBounding | Step::Ambient) => Some(format!("capability {i}")),
        _ => None,
    };
    path.map(|p| format!(" {p}")).unwrap_or_default()
}

impl Container {
    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// What create, start or delete accepted but could not do exactly as
    /// asked (for the caller to log); a loaded container starts with none.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Host pid of the container's first process.
    pub fn pid(&self) -> i32 {
        self.record.pid
    }

    pub fn bundle(&self) -> &Path {
        &self.record.bundle
    }

    fn dir(&self) -> PathBuf {
        self.root.join(&self.record.id)
    }

    fn save(&self) -> Result<(), ContainerError> {
        let dir = self.dir();
        let tmp = dir.join("state.json.tmp");
        let json =
            serde_json::to_vec(&self.record).map_err(|source| ContainerError::StateFile {
                id: self.record.id.clone(),
                path: tmp.clone(),
                source,
            })?;
        let ioerr = |op, path: &Path| {
            let (id, path) = (self.record.id.clone(), path.to_path_buf());
            move |source| ContainerError::Io {
                id,
                op,
                path,
                source,
            }
        };
        fs::write(&tmp, json).map_err(ioerr("write", &tmp))?;
        fs::rename(&tmp, dir.join("state.json")).map_err(ioerr("rename", &tmp))
    }

    /// Whether our process still exists (not a zombie, not a reused pid).
    fn alive(&self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match proc_stat(self.record.pid) {
            Some((state, start)) => {
                !matches!(state, 'Z' | 'X')
                    && (self.record.pid_start == 0 || start == self.record.pid_start)
            }
            None => false,
        }
    }

    /// The lifecycle status.
    pub fn status(&self) -> Status {
        if !self.alive() {
            Status::Stopped
        } else if self.dir().join("exec.fifo").exists() {
            Status::Created
        } else {
            Status::Running
        }
    }

    /// The runtime-spec state.
    pub fn state(&self) -> State {
        record_state(&self.record, self.status())
    }

    /// The state as `runc state` prints it.
    pub fn runc_state(&self) -> RuncState {
        let status = self.status();
        RuncState {
            oci_version: crate::state::OCI_VERSION.to_string(),
            id: self.record.id.clone(),
            pid: if status == Status::Stopped {
                0
            } else {
                self.record.pid
            },
            status,
            bundle: self.record.bundle.clone(),
            rootfs: self.record.rootfs.clone(),
            created: self.record.created.clone(),
            owner: self.record.owner.clone(),
            annotations: self.record.annotations.clone(),
        }
    }

    /// Lets the container's process exec its program and, once it has
    /// (after its startContainer hooks), runs the poststart hooks; a
    /// failed one ends the container and fails the start, as with runc.
    /// A process that ends before exec (a startContainer hook failed or
    /// timed out, execve failed) fails the start with its error, and no
    /// poststart hook runs. Without poststart hooks it returns as soon as
    /// the process is let go, as runc's does: such a failure is then only
    /// on the container's stderr and in its exit status. A wait cut short
    /// (see `await_program`) is a warning in [`warnings`].
    ///
    /// [`warnings`]: Container::warnings
    pub fn start(&mut self) -> Result<(), ContainerError> {
        let id = self.record.id.clone();
        let status = self.status();
        if status != Status::Created {
            return Err(ContainerError::WrongStatus {
                id,
                status,
                wanted: "created",
            });
        }
        let fifo = self.dir().join("exec.fifo");
        // Non-blocking: ENXIO when no reader, i.e. the process is gone.
        let mut f = match fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
        {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                return Err(ContainerError::NotWaiting { id });
            }
            // Another start claimed it since the status check.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ContainerError::WrongStatus {
                    id,
                    status: self.status(),
                    wanted: "created",
                });
            }
            Err(source) => {
                return Err(ContainerError::Io {
                    id,
                    op: "open",
                    path: fifo,
                    source,
                });
            }
        };
        // Claim the start by removing the fifo before writing: of two
        // concurrent starts (two CLI invocations) only the one whose
        // unlink succeeds lets the process go and runs the poststart hooks.
        match fs::remove_file(&fifo) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ContainerError::WrongStatus {
                    id,
                    status: self.status(),
                    wanted: "created",
                });
            }
            Err(source) => {
                return Err(ContainerError::Io {
                    id,
                    op: "remove",
                    path: fifo,
                    source,
                });
            }
        }
        match f.write_all(&[0]) {
            // The process died since the open (EPIPE: no reader left).
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                return Err(ContainerError::NotWaiting { id });
            }
            r => r.map_err(|source| ContainerError::Io {
                id: id.clone(),
                op: "write",
                path: fifo.clone(),
                source,
            })?,
        }
        let poststart = self
            .record
            .hooks
            .as_ref()
            .and_then(|h| h.poststart().clone());
        if poststart.as_ref().is_some_and(|l| !l.is_empty()) {
            // A process that ended before exec has ended the container:
            // its error is the start's, and no poststart hook runs.
            self.await_program(&f)?;
        }
        drop(f);
        if let Some(list) = poststart {
            let state = record_state(&self.record, Status::Running);
            if let Err(e) = run_hook_list(&id, HookKind::Poststart, &list, &state) {
                // As runc: a failed poststart hook ends the container, so
                // a caller told the start failed finds it stopped, not
                // running unsupervised.
                let _ = self.kill(libc::SIGKILL, false);
                return Err(e);
            }
        }
        Ok(())
    }

    /// After the start byte: waits until the container's process has
    /// executed the program, so that the poststart hooks run after it
    /// (runtime-spec: startContainer hooks, the program, then poststart).
    /// The process holds the exec fifo, close-on-exec, until execve:
    /// `fifo`'s write end reports POLLERR once no reader is left. It is
    /// left as well when the process ends before exec (a startContainer
    /// hook failed or timed out, execve failed): then the process's error
    /// is returned (see `ended_before_exec`).
    /// Bounded by the startContainer hooks' timeouts (which the process
    /// enforces) plus 10 s for the rest; a hook without a timeout is
    /// waited for as long as it runs, as the program is. Past the bound,
    /// or if poll fails, the hooks run anyway, with a warning.
    fn await_program(&mut self, fifo: &fs::File) -> Result<(), ContainerError> {
        let hooks = self
            .record
            .hooks
            .as_ref()
            .and_then(|h| h.start_container().as_ref());
        let mut bound = Some(Duration::from_secs(10));
        for h in hooks.into_iter().flatten() {
            bound = match (bound, h.timeout()) {
                (Some(b), Some(t)) if t > 0 => b.checked_add(Duration::from_secs(t.unsigned_abs())),
                _ => None,
            };
        }
        let deadline = bound.and_then(|b| Instant::now().checked_add(b));
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let ts = left.map(|l| rustix::event::Timespec {
                tv_sec: l.as_secs() as i64,
                tv_nsec: i64::from(l.subsec_nanos()),
            });
            // No events asked for: POLLERR and POLLHUP are always reported.
            let mut fds = [rustix::event::PollFd::new(
                fifo,
                rustix::event::PollFlags::empty(),
            )];
            match rustix::event::poll(&mut fds, ts.as_ref()) {
                Ok(0) => {
                    self.warnings.push(format!(
                        "its process had not executed the program {} s after start; \
                         the poststart hooks ran all the same",
                        bound.unwrap_or_default().as_secs()
                    ));
                    return Ok(());
                }
                Ok(_) => return self.ended_before_exec(fifo),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    self.warnings.push(format!(
                        "wait for its process to execute the program: {}; \
                         the poststart hooks ran all the same",
                        io::Error::from(e)
                    ));
                    return Ok(());
                }
            }
        }
    }

    /// Once the exec fifo has no reader left: tells an execve, which closed
    /// it and wrote nothing, from an end before exec. A process that fails
    /// after start writes its error record into the fifo before it exits
    /// (`process::child_main`); one that ended without taking the start
    /// byte left that byte in it. The pipe and what it holds live on while
    /// `fifo`, the write end, is open; the fifo's name is gone, so it is
    /// read through `/proc/self/fd`, without blocking. A process killed
    /// between the byte and execve leaves nothing, as a program that ran
    /// and died would: the poststart hooks run then.
    fn ended_before_exec(&mut self, fifo: &fs::File) -> Result<(), ContainerError> {
        let path = PathBuf::from(format!("/proc/self/fd/{}", fifo.as_raw_fd()));
        let opened = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path);
        // The start byte, then one record, at most.
        let mut buf = [0u8; 1 + 16];
        let mut len = 0;
        let read = opened.and_then(|mut r| {
            while len < buf.len() {
                match r.read(&mut buf[len..]) {
                    // EOF cannot come while we hold the write end; EAGAIN:
                    // nothing (more) written.
                    Ok(0) => break,
                    Ok(n) => len += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        });
        if let Err(e) = read {
            self.warnings.push(format!(
                "tell whether its process executed the program: read {}: {e}; \
                 the poststart hooks ran all the same",
                path.display()
            ));
            return Ok(());
        }
        let id = self.record.id.as_str();
        let data = &buf[..len];
        if let Some(rec) = data.last_chunk::<16>() {
            let (kind, step, errno, index) = process::decode(rec);
            if kind == process::MSG_ERROR {
                // The plan's entries are not kept: the container's stderr
                // has the process's own line (exec names the program).
                let hooks = self.record.hooks.as_ref();
                let step = Step::from_raw(step);
                return Err(child_failure(id, hooks, step, errno, index, String::new()));
            }
        }
        if data.is_empty() {
            Ok(())
        } else {
            // The byte untaken (or a record we do not know): it ended
            // without letting us know why.
            Err(ContainerError::NotWaiting { id: id.to_string() })
        }
    }

    /// Sends a signal to the container's process, or with `all` to every
    /// process of its cgroup and the cgroups below it (frozen meanwhile),
    /// or without a cgroup of its own to every process of its pid
    /// namespace.
    pub fn kill(&self, signal: i32, all: bool) -> Result<(), ContainerError> {
        let id = self.record.id.clone();
        let status = self.status();
        if status == Status::Stopped {
            // As runc: `kill --all` of a stopped container still reaches
            // what its first process left in its cgroup (a shim's
            // clean-up of daemons when there is no pid namespace of its
            // own); without a cgroup nothing of it can be named.
            match (all, &self.record.cgroup) {
                (true, Some(_)) => {}
                (true, None) => return Ok(()),
                (false, _) => {
                    return Err(ContainerError::WrongStatus {
                        id,
                        status,
                        wanted: "created or running",
                    });
                }
            }
        }
        // A created container's process waits for start, before the
        // program: as pid 1 of its own pid namespace it ignores every
        // signal it has no handler for (pid_namespaces(7)), so a TERM
        // would be lost and the container stay startable. A signal whose
        // default action ends a process ends it: SIGKILL does that.
        let signal = if status == Status::Created && ends_by_default(signal) {
            libc::SIGKILL
        } else {
            signal
        };
        let err = |source| ContainerError::Kill {
            id: self.record.id.clone(),
            signal,
            source,
        };
        if all && let Some(path) = &self.record.cgroup {
            let cgerr = |source| ContainerError::Cgroup {
                id: self.record.id.clone(),
                source,
            };
            // The cgroups below it too: a container that delegates cgroups
            // (systemd inside) has its processes there.
            let cg = Cgroup::open(path).map_err(cgerr)?;
            if signal == libc::SIGKILL {
                return cg.kill_all().map_err(cgerr);
            }
            return cg.signal_all(signal).map_err(cgerr);
        }
        if all && self.record.own_pid_ns {
            // Every process whose pid namespace is the container's.
            let ns = fs::metadata(format!("/proc/{}/ns/pid", self.record.pid)).map_err(err)?;
            use std::os::unix::fs::MetadataExt;
            let mut pids = Vec::new();
            for e in fs::read_dir("/proc").map_err(err)?.flatten() {
                if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok())
                    && let Ok(m) = fs::metadata(format!("/proc/{pid}/ns/pid"))
                    && m.ino() == ns.ino()
                    && m.dev() == ns.dev()
                {
                    pids.push(pid);
                }
            }
            for pid in pids {
                match sys::kill(pid, signal) {
                    Err(e) if e.raw_os_error() != Some(libc::ESRCH) => return Err(err(e)),
                    _ => {}
                }
            }
            return Ok(());
        }
        if all {
            // Neither a cgroup nor a pid namespace of its own tells which
            // processes are the container's: refuse rather than signal one.
            return Err(ContainerError::KillAllUnscoped { id });
        }
        sys::kill(self.record.pid, signal).map_err(err)
    }

    /// Waits for the container's process (only from its parent, the
    /// process that called `create`).
    pub fn wait(&mut self) -> Result<ExitStatus, ContainerError> {
        if let Some(s) = self.exit {
            return Ok(s);
        }
        let s = sys::wait_pid(self.record.pid).map_err(|source| ContainerError::Wait {
            id: self.record.id.clone(),
            source,
        })?;
        let s = ExitStatus::from(s);
        self.exit = Some(s);
        Ok(s)
    }

    /// Tells the container its process was reaped by the caller's own
    /// `waitpid(-1)` loop (PID 1), with this status.
    pub fn set_exited(&mut self, status: ExitStatus) {
        self.exit = Some(status);
    }

    /// The exit status, once known through `wait` or `set_exited`.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit
    }

    /// Removes the container: with `force` a live process is killed first
    /// (SIGKILL, then waited for); then what is left in its cgroup is
    /// killed and the cgroup and the state are removed, and only then,
    /// as runc's destroy does, the poststop hooks run (runtime-spec:
    /// "after the container is deleted"). A delete that fails before (a
    /// cgroup that stays busy) can be tried again and runs them then:
    /// they run once. The mount namespace, and every mount in it, dies
    /// with the process.
    pub fn delete(&mut self, force: bool) -> Result<(), ContainerError> {
        let id = self.record.id.clone();
        if self.deleted {
            return Err(ContainerError::NotFound { id });
        }
        let status = self.status();
        if status != Status::Stopped {
            // As runc: a created container (its program never ran) is
            // deleted without force; a running one needs it.
            if status == Status::Running && !force {
                return Err(ContainerError::WrongStatus {
                    id,
                    status,
                    wanted: "stopped or created (use force)",
                });
            }
            let scoped = self.record.cgroup.is_some() || self.record.own_pid_ns;
            self.kill(libc::SIGKILL, scoped).or_else(|e| match e {
                ContainerError::WrongStatus { .. } => Ok(()),
                e => Err(e),
            })?;
            self.await_exit()?;
            if !scoped && status == Status::Running {
                // Only the init can be found: what it started is not in a
                // pid namespace or cgroup of the container's.
                self.warnings.push(format!(
                    "container {id} has neither a pid namespace nor a cgroup of its own: \
                     only its first process was killed, processes it started may still run"
                ));
            }
        }
        self.remove_state()?;
        self.deleted = true;
        // The state is gone: whatever happens now, no later delete will
        // find the container, so the hooks run here.
        let dir = self.dir();
        let removed = match fs::remove_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ContainerError::Io {
                id: id.clone(),
                op: "remove",
                path: dir,
                source: e,
            }),
            _ => Ok(()),
        };
        if let Some(list) = self
            .record
            .hooks
            .as_ref()
            .and_then(|h| h.poststop().clone())
        {
            let state = record_state(&self.record, Status::Stopped);
            // runtime-spec: a failing poststop hook is a warning, the
            // remaining hooks and the lifecycle go on (runc logs it).
            if let Err(e) = run_hook_list(&id, HookKind::Poststop, &list, &state) {
                let mut text = e.to_string();
                let mut cur = std::error::Error::source(&e);
                while let Some(s) = cur {
                    text.push_str(": ");
                    text.push_str(&s.to_string());
                    cur = s.source();
                }
                self.warnings.push(text);
            }
        }
        removed
    }

    /// Kills what is left in the cgroup (daemons the first process
    /// started), removes the cgroup, then the state: everything in its
    /// directory but `state.json`, then `state.json`. Until that last
    /// unlink a failure leaves the container loadable, so that the delete
    /// can be tried again (by another process too); the directory itself
    /// goes afterwards, in [`Container::delete`]. NotFound when
    /// `state.json` is gone already: another delete has done it all.
    fn remove_state(&self) -> Result<(), ContainerError> {
        let id = || self.record.id.clone();
        if let Some(path) = &self.record.cgroup {
            let cgerr = |source| ContainerError::Cgroup { id: id(), source };
            match Cgroup::open(path) {
                Ok(cg) => {
                    cg.kill_all().map_err(cgerr)?;
                    cg.remove().map_err(cgerr)?;
                }
                Err(crate::cgroup::CgroupError::OpenDir { source, .. })
                    if source.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(cgerr(e)),
            }
        }
        let dir = self.dir();
        let ioerr = |op, path: PathBuf| {
            move |source: io::Error| {
                if source.kind() == io::ErrorKind::NotFound {
                    ContainerError::NotFound { id: id() }
                } else {
                    ContainerError::Io {
                        id: id(),
                        op,
                        path,
                        source,
                    }
                }
            }
        };
        let state = dir.join("state.json");
        for e in fs::read_dir(&dir).map_err(ioerr("read", dir.clone()))? {
            let e = e.map_err(ioerr("read", dir.clone()))?;
            let path = e.path();
            if path == state {
                continue;
            }
            let removed = if e.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match removed {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(ioerr("remove", path)(e));
                }
                _ => {}
            }
        }
        fs::remove_file(&state).map_err(ioerr("remove", state.clone()))
    }

    /// After SIGKILL: reap it if it is our child, else wait until whoever
    /// is its parent has.
    fn await_exit(&mut self) -> Result<(), ContainerError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match sys::try_wait_pid(self.record.pid) {
                Ok(Some(s)) => {
                    self.exit = Some(s.into());
                    return Ok(());
                }
                // Our child, not exited yet: keep polling until it is
                // reaped. Asking `alive()` here would race: a process that
                // became a zombie since the waitpid looks dead, and would
                // be left unreaped with its status lost.
                Ok(None) => {}
                // ECHILD: not our child; its parent reaps it.
                Err(_) => {
                    if !self.alive() {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(ContainerError::KillTimeout {
                    id: self.record.id.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// A bundle's config.json, up to 16 MiB: a path that is `/dev/zero` or a
/// runaway file ends in an error, not in all of the memory.
fn read_config(path: &Path) -> io::Result<Vec<u8>> {
    const MAX: u64 = 16 << 20;
    let mut bytes = Vec::new();
    fs::File::open(path)?
        .take(MAX + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX} bytes"),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_restricted() {
        for ok in ["a", "web-1", "x_y.z+1"] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é"] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn rfc3339_formats_utc() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.000000005Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert!(rfc3339(leap).starts_with("2000-02-29T"));
    }

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(ExitStatus::Exited(3).code(), 3);
        assert_eq!(ExitStatus::Signaled(9).code(), 137);
    }

    #[test]
    fn proc_stat_reads_our_own_process() {
        let (state, start) = proc_stat(std::process::id() as i32).unwrap();
        assert!(matches!(state, 'R' | 'S'));
        assert!(start > 0);
    }
}
