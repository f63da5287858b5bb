//! OCI lifecycle hooks (runtime-spec `config.md#posix-platform-hooks`):
//! each hook is executed with its `path`, `args` (`args[0]` is argv[0]) and
//! exactly its `env`, gets the container state JSON on stdin, and is killed
//! when its `timeout` (seconds) passes.
//!
//! A failing `prestart`, `createRuntime`, `createContainer` or
//! `startContainer` hook stops the sequence: the spec requires the runtime
//! to fail. A failing `poststart` or `poststop` hook does not stop the ones
//! after it (the spec asks for a warning and to carry on); their failures
//! are returned together for the caller to log.
//!
//! The hook runs in its own process group, so a timeout kills whatever it
//! started too. Its stdout is drained and dropped; the last
//! [`STDERR_TAIL`] bytes of its stderr go into the error when it fails.
//! Pipes are served with poll(2) on one thread, so a hook that never reads
//! stdin or floods stderr cannot block the caller past its timeout, and a
//! daemon the hook leaves behind holding the pipes does not hold up the
//! caller once the hook itself has exited.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;
use rustix::event::{PollFd, PollFlags};

use crate::state::{State, StateError};
use crate::sys;

/// How much of a failed hook's stderr is kept for the error.
pub const STDERR_TAIL: usize = 4096;

/// The hook points of the runtime spec, in lifecycle order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookKind {
    /// Deprecated in the spec in favour of the next three; still run.
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl HookKind {
    /// The field name in `hooks` of config.json.
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Prestart => "prestart",
            HookKind::CreateRuntime => "createRuntime",
            HookKind::CreateContainer => "createContainer",
            HookKind::StartContainer => "startContainer",
            HookKind::Poststart => "poststart",
            HookKind::Poststop => "poststop",
        }
    }

    /// Whether a failure lets the following hooks and the lifecycle go on
    /// (poststart, poststop).
    pub fn continues_after_failure(self) -> bool {
        matches!(self, HookKind::Poststart | HookKind::Poststop)
    }
}

impl fmt::Display for HookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A hook that could not run or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{kind} hook {index} ({path}): {reason}")]
    Invalid {
        kind: HookKind,
        index: usize,
        path: PathBuf,
        reason: String,
    },
    #[error("{kind} hook {index} ({path}): spawn")]
    Spawn {
        kind: HookKind,
        index: usize,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{kind} hook {index} ({path}): {op}")]
    Io {
        kind: HookKind,
        index: usize,
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{kind} hook {index} ({path}) timed out after {timeout}s and was killed")]
    Timeout {
        kind: HookKind,
        index: usize,
        path: PathBuf,
        timeout: i64,
    },
    #[error("{kind} hook {index} ({path}) failed with {status}; stderr: {stderr:?}")]
    Failed {
        kind: HookKind,
        index: usize,
        path: PathBuf,
        status: HookStatus,
        stderr: String,
    },
    #[error("{kind} hooks: {} failed, first: {}", .errors.len(), .errors[0])]
    Several {
        kind: HookKind,
        errors: Vec<HookError>,
    },
    #[error("{kind} hooks: state json for stdin")]
    State {
        kind: HookKind,
        #[source]
        source: StateError,
    },
}

/// How a hook process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookStatus {
    Exited(i32),
    Signaled(i32),
}

impl From<ExitStatus> for HookStatus {
    fn from(s: ExitStatus) -> HookStatus {
        match (s.code(), s.signal()) {
            (Some(code), _) => HookStatus::Exited(code),
            (None, Some(sig)) => HookStatus::Signaled(sig),
            // Stopped/continued statuses are not reported by wait() here.
            (None, None) => HookStatus::Exited(-1),
        }
    }
}

impl fmt::Display for HookStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookStatus::Exited(code) => write!(f, "exit status {code}"),
            HookStatus::Signaled(sig) => {
                let name = crate::signal::signal_name(*sig).unwrap_or_else(|| sig.to_string());
                write!(f, "signal {name}")
            }
        }
    }
}

/// Runs `hooks` of one kind in order with `state` on their stdin.
pub fn run_hooks(kind: HookKind, hooks: &[Hook], state: &State) -> Result<(), HookError> {
    if hooks.is_empty() {
        return Ok(());
    }
    let input = state
        .to_json()
        .map_err(|source| HookError::State { kind, source })?;
    let mut errors = Vec::new();
    for (index, hook) in hooks.iter().enumerate() {
        if let Err(e) = run_hook(kind, index, hook, &input) {
            if !kind.continues_after_failure() {
                return Err(e);
            }
            errors.push(e);
        }
    }
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(HookError::Several { kind, errors }),
    }
}

struct Ctx<'a> {
    kind: HookKind,
    index: usize,
    path: &'a PathBuf,
}

impl Ctx<'_> {
    fn invalid(&self, reason: String) -> HookError {
        HookError::Invalid {
            kind: self.kind,
            index: self.index,
            path: self.path.clone(),
            reason,
        }
    }

    fn io(&self, op: &'static str, source: io::Error) -> HookError {
        HookError::Io {
            kind: self.kind,
            index: self.index,
            path: self.path.clone(),
            op,
            source,
        }
    }
}

fn command(ctx: &Ctx<'_>, hook: &Hook) -> Result<Command, HookError> {
    if !hook.path().is_absolute() {
        return Err(ctx.invalid("path must be absolute".to_string()));
    }
    let mut cmd = Command::new(hook.path());
    // Without args, argv[0] is the path (std's default).
    if let Some((argv0, rest)) = hook.args().as_deref().and_then(<[String]>::split_first) {
        cmd.arg0(argv0).args(rest);
    }
    cmd.env_clear();
    for entry in hook.env().iter().flatten() {
        let Some((key, value)) = entry.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(ctx.invalid(format!("env entry {entry:?} is not KEY=VALUE")));
        };
        cmd.env(key, value);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout can kill what it started.
        .process_group(0);
    Ok(cmd)
}

fn run_hook(kind: HookKind, index: usize, hook: &Hook, input: &[u8]) -> Result<(), HookError> {
    let ctx = Ctx {
        kind,
        index,
        path: hook.path(),
    };
    let timeout = match hook.timeout() {
        None => None,
        Some(t) if t > 0 => Some(t),
        Some(t) => return Err(ctx.invalid(format!("timeout {t} must be greater than zero"))),
    };
    let mut cmd = command(&ctx, hook)?;
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn {
        kind,
        index,
        path: hook.path().clone(),
        source,
    })?;
    // checked_add: the timeout comes from the config and `Instant + huge`
    // panics; a deadline past what Instant can hold is never reached.
    let deadline =
        timeout.and_then(|t| Instant::now().checked_add(Duration::from_secs(t.unsigned_abs())));
    let (status, stderr) = match serve(&ctx, &mut child, input, deadline) {
        Ok(Some(done)) => done,
        Ok(None) => {
            kill_group(&mut child);
            return Err(HookError::Timeout {
                kind,
                index,
                path: hook.path().clone(),
                timeout: timeout.unwrap_or_default(),
            });
        }
        Err(e) => {
            kill_group(&mut child);
            return Err(e);
        }
    };
    if status.success() {
        return Ok(());
    }
    Err(HookError::Failed {
        kind,
        index,
        path: hook.path().clone(),
        status: status.into(),
        stderr: String::from_utf8_lossy(&stderr).trim_end().to_string(),
    })
}

/// Kills the hook's process group and reaps the hook.
fn kill_group(child: &mut Child) {
    // The group id is the hook's pid (process_group(0)). ESRCH: all gone.
    let _ = sys::kill(-(child.id() as i32), libc::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
}

/// Feeds stdin, drains stdout and stderr, and waits for the hook. `None`
/// when the deadline passed first.
fn serve(
    ctx: &Ctx<'_>,
    child: &mut Child,
    input: &[u8],
    deadline: Option<Instant>,
) -> Result<Option<(ExitStatus, Vec<u8>)>, HookError> {
    let mut stdin: Option<ChildStdin> = child.stdin.take();
    let mut stdout: Option<ChildStdout> = child.stdout.take();
    let mut stderr: Option<ChildStderr> = child.stderr.take();
    for fd in [
        stdin.as_ref().map(|f| f.as_fd()),
        stdout.as_ref().map(|f| f.as_fd()),
        stderr.as_ref().map(|f| f.as_fd()),
    ]
    .into_iter()
    .flatten()
    {
        set_nonblocking(fd).map_err(|e| ctx.io("set pipe non-blocking", e))?;
    }
    if input.is_empty() {
        stdin = None;
    }
    let mut written = 0;
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut idle_sleep = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait().map_err(|e| ctx.io("wait", e))? {
            // Take what is already there; a process the hook left behind
            // may keep the pipes open, so do not wait for EOF.
            if let Some(err) = stderr.as_mut() {
                drain(err, &mut buf, Some(&mut tail));
            }
            return Ok(Some((status, tail)));
        }
        let remaining = match deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(r) if !r.is_zero() => Some(r),
                _ => return Ok(None),
            },
            None => None,
        };
        // Wake up at least every 50ms to notice the hook's exit even while
        // something else holds its pipes.
        let slice = remaining.map_or(Duration::from_millis(50), |r| {
            r.min(Duration::from_millis(50))
        });

        if stdin.is_none() && stdout.is_none() && stderr.is_none() {
            std::thread::sleep(idle_sleep.min(slice));
            idle_sleep = (idle_sleep * 2).min(Duration::from_millis(50));
            continue;
        }
        let mut fds = Vec::with_capacity(3);
        if let Some(f) = stdin.as_ref() {
            fds.push(PollFd::new(f, PollFlags::OUT));
        }
        if let Some(f) = stdout.as_ref() {
            fds.push(PollFd::new(f, PollFlags::IN));
        }
        if let Some(f) = stderr.as_ref() {
            fds.push(PollFd::new(f, PollFlags::IN));
        }
        let ts = rustix::event::Timespec {
            tv_sec: slice.as_secs() as i64,
            tv_nsec: i64::from(slice.subsec_nanos()),
        };
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(ctx.io("poll hook pipes", e.into())),
        }
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        drop(fds);
        let mut i = 0;
        if stdin.is_some() {
            if ready[i] {
                if let Some(pipe) = stdin.as_mut() {
                    match pipe.write(&input[written..]) {
                        Ok(n) => written += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        // EPIPE: the hook does not read its stdin; fine.
                        Err(_) => written = input.len(),
                    }
                }
                if written >= input.len() {
                    // Closing the pipe gives the hook EOF.
                    stdin = None;
                }
            }
            i += 1;
        }
        if stdout.is_some() {
            if ready[i] && !stdout.as_mut().is_some_and(|p| drain(p, &mut buf, None)) {
                stdout = None;
            }
            i += 1;
        }
        if stderr.is_some()
            && ready[i]
            && !stderr
                .as_mut()
                .is_some_and(|p| drain(p, &mut buf, Some(&mut tail)))
        {
            stderr = None;
        }
    }
}

/// Reads what is available; keeps the last [`STDERR_TAIL`] bytes in `tail`
/// if given. Returns false at EOF or on an error (the pipe is done).
fn drain(pipe: &mut impl Read, buf: &mut [u8], mut tail: Option<&mut Vec<u8>>) -> bool {
    loop {
        match pipe.read(buf) {
            Ok(0) => return false,
            Ok(n) => {
                if let Some(t) = tail.as_deref_mut() {
                    t.extend_from_slice(&buf[..n]);
                    if t.len() > STDERR_TAIL {
                        let cut = t.len() - STDERR_TAIL;
                        t.drain(..cut);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

fn set_nonblocking(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

#[cfg(test)]
mod tests;
