//! How a task's or service's first process comes to exist.
//!
//! The supervisor does not know whether a program runs as a container or as
//! a plain host process: it asks a [`Launcher`]. The container launcher (on
//! top of `berth-runtime` and `berth-bundles`) plugs in here; this module
//! has the host-process one, [`ProcessLauncher`], which runs `host: true`
//! programs and refuses everything else.
//!
//! Contract for every launcher, because PID 1 reaps with `waitpid(-1)`:
//! - `spawn` returns the pid of a direct child of PID 1 and never waits for it;
//!   the event loop reaps it and routes the status back by pid.
//! - The child gets `stdout`/`stderr` as fds 1 and 2, `/dev/null` as stdin,
//!   an empty signal mask and default dispositions, and no other fd of PID 1
//!   (every fd PID 1 opens is close-on-exec; CVE-2024-21626).

use std::fmt;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::manifest::{Program, Source};

/// Why a program could not be started or signalled.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{unit}: {what} is not supported by the {launcher} launcher")]
    Unsupported {
        unit: String,
        what: String,
        launcher: &'static str,
    },
    #[error("{unit}: spawn {program}")]
    Spawn {
        unit: String,
        program: String,
        source: std::io::Error,
    },
    #[error("{unit}: send {signal} to pid {pid}")]
    Signal {
        unit: String,
        pid: Pid,
        signal: Signal,
        source: nix::Error,
    },
}

/// Which kind of unit a launch is for (tasks and services share a namespace
/// of names, but a container launcher may treat them differently).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnitKind {
    Task,
    Service,
}

impl fmt::Display for UnitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Task => "task",
            Self::Service => "service",
        })
    }
}

/// What the event loop needs from whoever starts programs.
pub trait Launcher {
    /// Refuses, before anything starts, a program this launcher cannot run,
    /// so an appliance fails at boot and not at the first restart.
    fn check(&self, name: &str, program: &Program) -> Result<(), LaunchError>;

    /// Starts `program` with the given output pipes; returns the pid of a
    /// direct child of the caller. Must not wait for it.
    fn spawn(
        &mut self,
        kind: UnitKind,
        name: &str,
        program: &Program,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> Result<Pid, LaunchError>;

    /// Sends `signal` to the unit's first process.
    fn signal(&mut self, name: &str, pid: Pid, signal: Signal) -> Result<(), LaunchError>;

    /// Called once the unit's first process has been reaped, to release what
    /// the launcher holds for it (a container's cgroup and state).
    fn reaped(&mut self, name: &str, pid: Pid);
}

/// Runs `host: true` programs as plain child processes of PID 1, in PID 1's
/// own root, namespaces and cgroup. The test/dev mode until the container
/// launcher lands, and the way boot chores run from the initramfs.
#[derive(Debug, Default)]
pub struct ProcessLauncher {
    _private: (),
}

impl ProcessLauncher {
    pub fn new() -> Self {
        Self { _private: () }
    }
}

impl Launcher for ProcessLauncher {
    fn check(&self, name: &str, program: &Program) -> Result<(), LaunchError> {
        let what = match &program.source {
            Source::Host => return Ok(()),
            Source::Image(image) => format!("image {image:?}"),
            Source::Bundle(dir) => format!("bundle {}", dir.display()),
        };
        Err(LaunchError::Unsupported {
            unit: name.to_owned(),
            what,
            launcher: "host-process",
        })
    }

    fn spawn(
        &mut self,
        _kind: UnitKind,
        name: &str,
        program: &Program,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> Result<Pid, LaunchError> {
        self.check(name, program)?;
        let argv = program.host_argv();
        let Some((exe, args)) = argv.split_first() else {
            return Err(LaunchError::Unsupported {
                unit: name.to_owned(),
                what: "an empty command".to_owned(),
                launcher: "host-process",
            });
        };
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .envs(program.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            // A new process group: a signal a person sends to PID 1's group
            // from a terminal (tests run us under a shell) must not reach
            // services directly; PID 1 forwards what it decides.
            .process_group(0);
        if let Some(dir) = &program.cwd {
            cmd.current_dir(dir);
        }
        // std resets the signal mask and the dispositions PID 1 changed
        // (SIGPIPE) in the child before exec, so services start clean.
        let child = cmd.spawn().map_err(|source| LaunchError::Spawn {
            unit: name.to_owned(),
            program: exe.clone(),
            source,
        })?;
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        // Dropping `Child` neither waits nor kills: the event loop reaps the
        // pid with waitpid(-1), as for every other child of PID 1.
        drop(child);
        Ok(pid)
    }

    fn signal(&mut self, name: &str, pid: Pid, signal: Signal) -> Result<(), LaunchError> {
        kill(pid, signal).map_err(|source| LaunchError::Signal {
            unit: name.to_owned(),
            pid,
            signal,
            source,
        })
    }

    fn reaped(&mut self, _name: &str, _pid: Pid) {
        // A host process leaves nothing behind once reaped.
    }
}
