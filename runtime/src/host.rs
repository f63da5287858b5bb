//! A plain child process outside any container: how PID 1 starts a
//! `host: true` unit.
//!
//! `posix_spawn` cannot give the child a resource limit of its own or a
//! working directory, so PID 1 had to lower its own RLIMIT_NOFILE around
//! each spawn. That failed once PID 1 held about 1,020 fds (the spawn's own
//! pipe no longer fitted under the lowered limit) and, for the moment it
//! lasted, hit every other thread of PID 1 too. Here the child sets its
//! limit itself, between `clone3` and `execve`.
//!
//! The child is a fork-like copy of a possibly multi-threaded parent: it
//! only reads what [`HostCommand::spawn`] prepared and calls `sys`, and
//! reports a failure before `execve` as (step, errno) over a close-on-exec
//! pipe, so the parent can say what went wrong.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::PosixRlimitType;

use crate::process::pointer_array;
use crate::spec::rlimit_resource;
use crate::sys;

/// Why a host process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum HostSpawnError {
    #[error("{what} holds a NUL byte")]
    Nul { what: &'static str },
    #[error("find {program:?} in PATH {path:?}")]
    Lookup {
        program: String,
        path: String,
        source: io::Error,
    },
    #[error("open /dev/null for stdin")]
    DevNull { source: io::Error },
    #[error("prepare the stdio of {program}")]
    Stdio { program: PathBuf, source: io::Error },
    #[error("make the pipe that reports a failed start of {program}")]
    Pipe { program: PathBuf, source: io::Error },
    #[error("fork for {program}")]
    Fork { program: PathBuf, source: io::Error },
    #[error("set {resource} to {soft}:{hard} before exec of {program}")]
    Rlimit {
        resource: PosixRlimitType,
        soft: u64,
        hard: u64,
        program: PathBuf,
        source: io::Error,
    },
    #[error("{step} before exec of {program}")]
    Setup {
        step: &'static str,
        program: PathBuf,
        source: io::Error,
    },
    #[error("change directory to {dir} for {program}")]
    Chdir {
        dir: PathBuf,
        program: PathBuf,
        source: io::Error,
    },
    #[error("exec {program}")]
    Exec { program: PathBuf, source: io::Error },
}

/// What the child reports, as the first word of its record.
#[derive(Clone, Copy)]
#[repr(u32)]
enum Step {
    Signals = 1,
    ProcessGroup,
    Stdio,
    CloseFds,
    Rlimit,
    Chdir,
    Exec,
    Cgroup,
}

impl Step {
    fn from_u32(v: u32) -> Option<Step> {
        [
            Step::Signals,
            Step::ProcessGroup,
            Step::Stdio,
            Step::CloseFds,
            Step::Rlimit,
            Step::Chdir,
            Step::Exec,
            Step::Cgroup,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }

    fn what(self) -> &'static str {
        match self {
            Step::Signals => "reset the signal mask and dispositions",
            Step::ProcessGroup => "make a process group",
            Step::Stdio => "set up stdin, stdout and stderr",
            Step::CloseFds => "mark inherited fds close-on-exec",
            Step::Rlimit => "set a resource limit",
            Step::Chdir => "change directory",
            Step::Exec => "exec",
            Step::Cgroup => "move into its cgroup",
        }
    }
}

/// A program to run as a direct child of the caller, in the caller's root,
/// namespaces and cgroup. The child gets `/dev/null` as stdin, the given
/// fds as stdout and stderr, no other fd of the caller, an empty signal
/// mask, default signal dispositions and a process group of its own.
#[derive(Debug)]
pub struct HostCommand<'a> {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    exe: Option<PathBuf>,
    cwd: Option<PathBuf>,
    rlimits: Vec<(PosixRlimitType, u64, u64)>,
    stdin: Option<BorrowedFd<'a>>,
    stdout: BorrowedFd<'a>,
    stderr: BorrowedFd<'a>,
    cgroup_procs: Option<BorrowedFd<'a>>,
}

/// The fixed-size record the child writes before it gives up: step,
/// errno, index (which limit).
const RECORD: usize = 12;

impl<'a> HostCommand<'a> {
    /// `argv[0]` is the program: a path, or a name looked up in the `PATH`
    /// of `env` (as `execvp` would, with the child's own `PATH`).
    pub fn new(
        argv: Vec<String>,
        env: Vec<(String, String)>,
        stdout: BorrowedFd<'a>,
        stderr: BorrowedFd<'a>,
    ) -> Self {
        HostCommand {
            argv,
            env,
            exe: None,
            cwd: None,
            rlimits: Vec::new(),
            stdin: None,
            stdout,
            stderr,
            cgroup_procs: None,
        }
    }

    /// The file to execute, found by the caller (default: `argv[0]`,
    /// looked up in `PATH`); `argv[0]` stays what it is.
    pub fn exe(mut self, path: PathBuf) -> Self {
        self.exe = Some(path);
        self
    }

    /// The child's stdin (default: `/dev/null`).
    pub fn stdin(mut self, fd: BorrowedFd<'a>) -> Self {
        self.stdin = Some(fd);
        self
    }

    /// The child's working directory (default: the caller's).
    pub fn cwd(mut self, dir: PathBuf) -> Self {
        self.cwd = Some(dir);
        self
    }

    /// The `cgroup.procs` file (opened for writing) of the cgroup the child
    /// moves itself into, first thing, before it runs anything of the
    /// program: whatever the program starts (a daemon that leaves its
    /// process group with setsid, say) is born there too.
    pub fn cgroup_procs(mut self, fd: BorrowedFd<'a>) -> Self {
        self.cgroup_procs = Some(fd);
        self
    }

    /// A resource limit of the child, set in this order before exec
    /// (default: the caller's). Raising a hard limit needs
    /// CAP_SYS_RESOURCE.
    pub fn rlimit(mut self, resource: PosixRlimitType, soft: u64, hard: u64) -> Self {
        self.rlimits.push((resource, soft, hard));
        self
    }

    /// Starts the child; returns its pid once it has exec'd (the caller
    /// reaps it). A failure before exec is reported with the step, and the
    /// failed child is reaped here.
    pub fn spawn(&self) -> Result<libc::pid_t, HostSpawnError> {
        let Some(name) = self.argv.first() else {
            return Err(HostSpawnError::Lookup {
                program: String::new(),
                path: String::new(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "empty command"),
            });
        };
        let path_var = self
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map_or("", |(_, v)| v.as_str());
        let program = match &self.exe {
            Some(path) => path.clone(),
            None => find_program(name, path_var, self.cwd.as_deref())?,
        };
        let nul = |what| move |_| HostSpawnError::Nul { what };
        let exe = CString::new(program.as_os_str().as_bytes()).map_err(nul("the program"))?;
        let args: Vec<CString> = self
            .argv
            .iter()
            .map(|a| CString::new(a.as_str()))
            .collect::<Result<_, _>>()
            .map_err(nul("argv"))?;
        let envs: Vec<CString> = self
            .env
            .iter()
            .map(|(k, v)| CString::new(format!("{k}={v}")))
            .collect::<Result<_, _>>()
            .map_err(nul("env"))?;
        let cwd = match &self.cwd {
            Some(d) => Some(CString::new(d.as_os_str().as_bytes()).map_err(nul("cwd"))?),
            None => None,
        };
        let argp = pointer_array(&args);
        let envp = pointer_array(&envs);
        let limits: Vec<(libc::c_int, u64, u64)> = self
            .rlimits
            .iter()
            .map(|&(r, soft, hard)| (rlimit_resource(r), soft, hard))
            .collect();

        let devnull;
        let stdin_fd = match self.stdin {
            Some(fd) => fd,
            None => {
                devnull = std::fs::File::open("/dev/null")
                    .map_err(|source| HostSpawnError::DevNull { source })?;
                devnull.as_fd()
            }
        };
        let stdio_error = |source| HostSpawnError::Stdio {
            program: program.clone(),
            source,
        };
        // The child copies these onto 0, 1 and 2 in turn: none may be one
        // of those numbers, or an earlier copy would overwrite a later
        // source (possible when PID 1 started with a standard fd closed).
        let stdin = above_stdio(stdin_fd).map_err(stdio_error)?;
        let stdout = above_stdio(self.stdout).map_err(stdio_error)?;
        let stderr = above_stdio(self.stderr).map_err(stdio_error)?;
        let (report_r, report_w) = sys::pipe().map_err(|source| HostSpawnError::Pipe {
            program: program.clone(),
            source,
        })?;

        let child = Child {
            exe: &exe,
            argv: &argp,
            envp: &envp,
            cwd: cwd.as_deref(),
            rlimits: &limits,
            stdio: [
                stdin
                    .as_ref()
                    .map_or(stdin_fd.as_raw_fd(), AsRawFd::as_raw_fd),
                stdout
                    .as_ref()
                    .map_or(self.stdout.as_raw_fd(), AsRawFd::as_raw_fd),
                stderr
                    .as_ref()
                    .map_or(self.stderr.as_raw_fd(), AsRawFd::as_raw_fd),
            ],
            report: report_w.as_fd(),
            cgroup_procs: self.cgroup_procs,
        };
        let pid = sys::fork_host(&child).map_err(|source| HostSpawnError::Fork {
            program: program.clone(),
            source,
        })?;
        drop(report_w);
        let mut record = [0u8; RECORD];
        let mut got = 0;
        while got < RECORD {
            match sys::read(report_r.as_fd(), &mut record[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Cannot tell: the child is running or will be reaped as
                // any other.
                Err(_) => break,
            }
        }
        if got < RECORD {
            // The pipe closed at exec: the program runs.
            return Ok(pid);
        }
        // The child exits at once; reap it here so the caller never sees
        // a pid it was not given. ECHILD (reaped elsewhere) changes nothing.
        let _ = sys::wait_pid(pid);
        let word = |i: usize| [record[i], record[i + 1], record[i + 2], record[i + 3]];
        let step = u32::from_ne_bytes(word(0));
        let source = io::Error::from_raw_os_error(i32::from_ne_bytes(word(4)));
        let index = u32::from_ne_bytes(word(8)) as usize;
        Err(match Step::from_u32(step) {
            Some(Step::Exec) => HostSpawnError::Exec { program, source },
            Some(Step::Rlimit) if index < self.rlimits.len() => {
                let (resource, soft, hard) = self.rlimits[index];
                HostSpawnError::Rlimit {
                    resource,
                    soft,
                    hard,
                    program,
                    source,
                }
            }
            Some(Step::Chdir) => HostSpawnError::Chdir {
                dir: self.cwd.clone().unwrap_or_default(),
                program,
                source,
            },
            Some(s) => HostSpawnError::Setup {
                step: s.what(),
                program,
                source,
            },
            None => HostSpawnError::Setup {
                step: "an unknown step",
                program,
                source,
            },
        })
    }
}

/// A close-on-exec copy numbered 3 or above when `fd` is 0, 1 or 2.
fn above_stdio(fd: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    if fd.as_raw_fd() > 2 {
        return Ok(None);
    }
    sys::dup_above(fd, 3).map(Some)
}

/// `execvp`'s search: a name with a `/` is taken as it is; otherwise the
/// first entry of `path_var` (`:`-separated, an empty entry is the
/// current directory) holding an executable regular file of that name.
/// When none does, EACCES if some entry had the name but could not run
/// it, else ENOENT. Relative entries are looked at from `cwd` (default:
/// the caller's), where the child will exec.
pub fn find_program(
    name: &str,
    path_var: &str,
    cwd: Option<&Path>,
) -> Result<PathBuf, HostSpawnError> {
    let lookup_error = |source| HostSpawnError::Lookup {
        program: name.to_owned(),
        path: path_var.to_owned(),
        source,
    };
    if name.is_empty() {
        return Err(lookup_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty command",
        )));
    }
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    let mut denied = false;
    for dir in path_var.split(':') {
        let candidate = Path::new(if dir.is_empty() { "." } else { dir }).join(name);
        let seen_from = match cwd {
            Some(base) if candidate.is_relative() => base.join(&candidate),
            _ => candidate.clone(),
        };
        let Ok(c) = CString::new(seen_from.as_os_str().as_bytes()) else {
            continue;
        };
        match sys::can_execute(&c) {
            Ok(()) => return Ok(candidate),
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => denied = true,
            Err(_) => {}
        }
    }
    let errno = if denied { libc::EACCES } else { libc::ENOENT };
    Err(lookup_error(io::Error::from_raw_os_error(errno)))
}

/// What the child reads; everything was allocated by the parent.
pub(crate) struct Child<'a> {
    exe: &'a CStr,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    cwd: Option<&'a CStr>,
    rlimits: &'a [(libc::c_int, u64, u64)],
    /// Sources for fds 0, 1 and 2, each 3 or above.
    stdio: [RawFd; 3],
    report: BorrowedFd<'a>,
    cgroup_procs: Option<BorrowedFd<'a>>,
}

/// The child (see [`sys::fork_host`]): never returns.
pub(crate) fn host_child(c: &Child<'_>) -> ! {
    let Err((step, e, index)) = child_steps(c);
    let mut record = [0u8; RECORD];
    record[..4].copy_from_slice(&(step as u32).to_ne_bytes());
    record[4..8].copy_from_slice(&e.raw_os_error().unwrap_or(libc::EIO).to_ne_bytes());
    record[8..].copy_from_slice(&index.to_ne_bytes());
    let _ = sys::write_all(c.report, &record);
    sys::exit_now(127)
}

enum Never {}

fn child_steps(c: &Child<'_>) -> Result<Never, (Step, io::Error, u32)> {
    let at = |step| move |e| (step, e, 0);
    if let Some(procs) = c.cgroup_procs {
        // "0": the writer itself.
        sys::write_all(procs, b"0").map_err(at(Step::Cgroup))?;
    }
    sys::reset_signals().map_err(at(Step::Signals))?;
    sys::setpgid_self().map_err(at(Step::ProcessGroup))?;
    for (target, &source) in c.stdio.iter().enumerate() {
        sys::dup_onto(source, target as RawFd).map_err(at(Step::Stdio))?;
    }
    // Every fd PID 1 opens is close-on-exec already; this makes sure of it
    // for the child (CVE-2024-21626), and keeps the report pipe until exec.
    sys::cloexec_from(3).map_err(at(Step::CloseFds))?;
    for (i, &(resource, soft, hard)) in c.rlimits.iter().enumerate() {
        sys::setrlimit(resource, soft, hard).map_err(|e| (Step::Rlimit, e, i as u32))?;
    }
    if let Some(dir) = c.cwd {
        sys::chdir(dir).map_err(at(Step::Chdir))?;
    }
    Err((Step::Exec, sys::execve(c.exe, c.argv, c.envp), 0))
}
