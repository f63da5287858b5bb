//! How a task's or service's first process comes to exist.
//!
//! The supervisor does not know whether a program runs as a container or as
//! a plain host process: it asks a [`Launcher`]. The container launcher (on
//! top of `berth-runtime` and `berth-bundles`) is
//! [`crate::container::ContainerLauncher`]; this module has the host-process
//! one, [`ProcessLauncher`], which runs `host: true` programs and refuses
//! everything else (the container launcher hands it host programs).
//!
//! Contract for every launcher, because PID 1 reaps with `waitpid(-1)`:
//! - `spawn` returns the pid of a direct child of PID 1 and never waits for it;
//!   the event loop reaps it and routes the status back by pid.
//! - The child gets `stdout`/`stderr` as fds 1 and 2, `/dev/null` as stdin,
//!   an empty signal mask and default dispositions, and no other fd of PID 1
//!   (every fd PID 1 opens is close-on-exec; CVE-2024-21626).
//! - The child starts with RLIMIT_NOFILE soft 1024 (at most), not PID 1's
//!   raised soft limit (`crate::rlimits`).

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use berth_runtime::cgroup::{Cgroup, CgroupPath, CgroupPlan};
use berth_runtime::host::HostCommand;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::logging::error_chain;
use crate::manifest::{Program, Source};
use crate::service::ExitStatus;

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
    /// A host program could not be started (its lookup, or a step of its
    /// child before exec).
    #[error("{unit}")]
    HostSpawn {
        unit: String,
        source: berth_runtime::host::HostSpawnError,
    },
    /// A host unit's cgroup could not be made (a leftover of its last run
    /// still dying, say): the next start tries again.
    #[error("{unit}: make its cgroup")]
    Cgroup {
        unit: String,
        source: berth_runtime::cgroup::CgroupError,
    },
    /// The unit's image or bundle could not be prepared at boot (failed
    /// verification, missing blob, bad config): permanent.
    #[error("{unit}: {message}")]
    Prepare { unit: String, message: String },
    /// The machine's network, which the unit shares, could not be
    /// configured: permanent.
    #[error("{unit}: the machine's network: {message}")]
    Network { unit: String, message: String },
    /// The container runtime refused the container.
    #[error("{unit}: create container")]
    Create {
        unit: String,
        #[source]
        source: Box<berth_runtime::ContainerError>,
        /// Whether retrying cannot help (the spec asks for what this host lacks).
        permanent: bool,
    },
    #[error("{unit}: start container")]
    Start {
        unit: String,
        #[source]
        source: Box<berth_runtime::ContainerError>,
    },
    #[error("{unit}: send {signal} to the container")]
    SignalContainer {
        unit: String,
        signal: Signal,
        #[source]
        source: Box<berth_runtime::ContainerError>,
    },
    #[error("{unit}: send {signal} to pid {pid}")]
    Signal {
        unit: String,
        pid: Pid,
        signal: Signal,
        source: nix::Error,
    },
}

impl LaunchError {
    /// Whether no later attempt can succeed, so the unit fails at once
    /// instead of backing off toward its start limit.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Unsupported { .. } | Self::Prepare { .. } | Self::Network { .. } => true,
            Self::Create { permanent, .. } => *permanent,
            Self::Spawn { .. }
            | Self::HostSpawn { .. }
            | Self::Cgroup { .. }
            | Self::Start { .. }
            | Self::Signal { .. }
            | Self::SignalContainer { .. } => false,
        }
    }
}

/// PATH for programs when PID 1 has none (as the kernel starts it): the
/// runtime's, which a container without one gets too.
pub const DEFAULT_PATH: &str = berth_runtime::spec::DEFAULT_PATH;

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

    /// Whether the unit can start now: false while what it needs is still
    /// being set up (see [`crate::machine`]); the set-up wakes the event
    /// loop, which asks again.
    fn can_start(&mut self, _name: &str, _program: &Program) -> bool {
        true
    }

    /// Sends `signal` to the unit's first process.
    fn signal(&mut self, name: &str, pid: Pid, signal: Signal) -> Result<(), LaunchError>;

    /// Called once the unit's first process has been reaped (with its
    /// status), to release what the launcher holds for it (a container's
    /// cgroup and state).
    fn reaped(&mut self, name: &str, pid: Pid, status: ExitStatus);

    /// Called once at the end of supervision, after every process is gone,
    /// to remove what the launcher made for the whole boot.
    fn cleanup(&mut self) {}
}

/// Runs `host: true` programs as plain child processes of PID 1, in PID 1's
/// own root and namespaces: the way boot chores run from the initramfs.
/// With a cgroup2 mount ([`ProcessLauncher::with_cgroups`]) each unit's
/// processes live in a cgroup of their own, `/<parent>/<unit>`, as a
/// container's do, so that what a unit started goes with it.
#[derive(Debug, Default)]
pub struct ProcessLauncher {
    /// The cgroup2 mount and the parent cgroup below it.
    cgroups: Option<(PathBuf, String)>,
    /// Each running unit's cgroup.
    live: BTreeMap<String, Cgroup>,
}

impl ProcessLauncher {
    /// Units in PID 1's cgroup; what a unit leaves behind is found by its
    /// process group only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Each unit in `mount`/`parent`/`unit`.
    pub fn with_cgroups(mount: PathBuf, parent: String) -> Self {
        Self {
            cgroups: Some((mount, parent)),
            live: BTreeMap::new(),
        }
    }

    /// The unit's cgroup, made for a start. One left by its last run (its
    /// removal found it busy) is this unit's: what is in it is killed and
    /// it is removed first.
    fn unit_cgroup(&self, name: &str) -> Result<Option<Cgroup>, LaunchError> {
        let Some((mount, parent)) = &self.cgroups else {
            return Ok(None);
        };
        let relative = Path::new(parent).join(name);
        if let Ok(leftover) = Cgroup::open(&mount.join(&relative)) {
            end_cgroup(name, leftover);
        }
        let plan = CgroupPlan {
            path: CgroupPath::Root(relative.clone()),
            controllers: Default::default(),
            writes: Vec::new(),
            devices: None,
        };
        Cgroup::create_under(mount, &relative, &plan)
            .map(Some)
            .map_err(|source| LaunchError::Cgroup {
                unit: name.to_owned(),
                source,
            })
    }
}

/// Kills what is left in a unit's cgroup, the cgroups below it included
/// (`cgroup.kill` reaches them), and removes them all.
fn end_cgroup(name: &str, cgroup: Cgroup) {
    let left = cgroup.pids().map_or(0, |p| p.len());
    if left > 0 {
        log::warn!(
            "unit {name}: killed what its first process left behind ({left} in cgroup {})",
            cgroup.path().display()
        );
    }
    // Always: a cgroup below may hold processes even when this one's own
    // list is empty.
    if let Err(e) = cgroup.kill_all() {
        log::warn!("unit {name}: {}", error_chain(&e));
    }
    // Busy for 100 ms at most (PID 1's loop waits meanwhile): one still
    // busy is left for the unit's next start, which removes it first.
    if let Err(e) = cgroup.remove_within(std::time::Duration::from_millis(100)) {
        log::warn!("unit {name}: {} (left for its next start)", error_chain(&e));
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
        // PID 1's environment, then the program's overrides.
        let mut env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| !program.env.iter().any(|(o, _)| o == k))
            .collect();
        env.extend(program.env.iter().cloned());
        if !env.iter().any(|(k, _)| k == "PATH") {
            // The kernel starts init without PATH; give programs the usual
            // one. The program is looked up in the PATH it gets.
            env.push(("PATH".to_owned(), DEFAULT_PATH.to_owned()));
        }
        let mut command = HostCommand::new(argv, env, stdout.as_fd(), stderr.as_fd());
        // Not PID 1's raised open files limit: a unit's, and the manifest's
        // (crate::rlimits). The child sets them before exec.
        let limits =
            crate::rlimits::unit_rlimits(&[], &program.rlimits, crate::rlimits::pid1_nofile_hard());
        for l in limits {
            command = command.rlimit(l.typ, l.soft, l.hard);
        }
        if let Some(dir) = &program.cwd {
            command = command.cwd(dir.clone());
        }
        let cgroup = match self.unit_cgroup(name) {
            Ok(cgroup) => cgroup,
            // A cgroup2 mount PID 1 may not write (a rootless test
            // namespace): the unit runs as before cgroups, its leftovers
            // found by its process group.
            Err(LaunchError::Cgroup {
                source: berth_runtime::cgroup::CgroupError::CreateDir { path, source },
                ..
            }) if source.kind() == std::io::ErrorKind::PermissionDenied
                || source.raw_os_error() == Some(nix::errno::Errno::EROFS as i32) =>
            {
                log::warn!(
                    "unit {name}: no cgroup of its own ({}: {source}); what it leaves is found by its process group",
                    path.display()
                );
                None
            }
            Err(e) => return Err(e),
        };
        // The child writes itself into the cgroup before exec.
        let opened = cgroup
            .as_ref()
            .map(|c| {
                let path = c.path().join("cgroup.procs");
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|source| (path, source))
            })
            .transpose();
        let procs = match opened {
            Ok(procs) => procs,
            Err((path, source)) => {
                if let Some(c) = cgroup {
                    end_cgroup(name, c);
                }
                return Err(LaunchError::Spawn {
                    unit: name.to_owned(),
                    program: format!("(open {})", path.display()),
                    source,
                });
            }
        };
        if let Some(f) = &procs {
            command = command.cgroup_procs(f.as_fd());
        }
        let pid = match command.spawn() {
            Ok(pid) => pid,
            Err(source) => {
                if let Some(c) = cgroup {
                    end_cgroup(name, c);
                }
                return Err(LaunchError::HostSpawn {
                    unit: name.to_owned(),
                    source,
                });
            }
        };
        if let Some(c) = cgroup {
            self.live.insert(name.to_owned(), c);
        }
        // PID 1's copies of the write ends close here; the child holds its own.
        drop((stdout, stderr));
        Ok(Pid::from_raw(pid))
    }

    fn signal(&mut self, name: &str, pid: Pid, signal: Signal) -> Result<(), LaunchError> {
        kill(pid, signal).map_err(|source| LaunchError::Signal {
            unit: name.to_owned(),
            pid,
            signal,
            source,
        })
    }

    /// What the unit's first process left in its process group goes with
    /// it (tini's `-g`, systemd's default KillMode): a daemon a unit forked
    /// and forgot would otherwise pile up under PID 1 at every restart,
    /// each holding the unit's output pipe, until PID 1 runs out of fds.
    /// The group's id stays taken while a member lives, so it cannot name
    /// a newer process.
    fn reaped(&mut self, name: &str, pid: Pid, _status: ExitStatus) {
        if let Some(cgroup) = self.live.remove(name) {
            end_cgroup(name, cgroup);
            return;
        }
        match nix::sys::signal::killpg(pid, Signal::SIGKILL) {
            Ok(()) => log::warn!(
                "unit {name}: killed what its first process left behind (process group {pid})"
            ),
            Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => log::warn!("unit {name}: kill process group {pid}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cgroup2 mount PID 1 cannot write (read-only here; a rootless
    /// namespace in practice): host units still start, without a cgroup
    /// of their own, as before cgroups.
    #[test]
    fn host_units_start_where_their_cgroup_cannot_be_made() {
        let dir = std::env::temp_dir().join(format!("berth-rocg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &dir,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .expect("mount a tmpfs (the tests run as root)");
        let m = crate::manifest::parse(
            br#"{"version":1,"services":[{"name":"s","host":true,"command":["/bin/busybox","true"]}]}"#,
            &[],
        )
        .unwrap();
        let mut launcher = ProcessLauncher::with_cgroups(dir.clone(), "berth".into());
        let (_out_r, out_w) = nix::unistd::pipe().unwrap();
        let (_err_r, err_w) = nix::unistd::pipe().unwrap();
        let spawned = launcher.spawn(UnitKind::Service, "s", &m.services[0].program, out_w, err_w);
        let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&dir);
        let pid = spawned.unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        let status = nix::sys::wait::waitpid(pid, None).unwrap();
        assert_eq!(status, nix::sys::wait::WaitStatus::Exited(pid, 0));
        launcher.reaped("s", pid, ExitStatus::Code(0));
    }
}
