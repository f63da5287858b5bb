//! The supervisor: boot tasks, then services, then ordered shutdown — every
//! decision PID 1 makes about its children, without any I/O of its own.
//!
//! The event loop feeds it facts (a pid was reaped, the clock reached a
//! deadline, a shutdown was requested) with the current time, and it acts
//! through a [`Runner`]: spawn, signal, report a marker line. Tests drive it
//! with a fake runner and a fake clock.
//!
//! Rules:
//! - Tasks run one at a time, in manifest order. A failing task stops the
//!   boot (fatal) unless it is `optional`.
//! - Services start in dependency order once every task is done, one per
//!   loop turn; then `berth: ready`. `depends_on` orders starts; it does
//!   not wait for readiness (there are no health checks yet).
//! - Paced starts (on a machine with one CPU, see
//!   [`Supervisor::set_paced_starts`]): the next service starts once the
//!   one before has stopped running — its first process blocked, waits
//!   or exited — or after [`PACE_MAX`]. On one CPU the two would share it
//!   and both come up later; paced, each gets going before the next is
//!   created, and the boot as a whole takes as long.
//! - Shutdown: a service gets its stop signal once every service that depends
//!   on it is down; SIGKILL after its stop timeout. Independent services stop
//!   in parallel, so shutdown takes the longest chain, not the sum.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::launcher::{LaunchError, UnitKind};
use crate::logging::error_chain;
use crate::manifest::{Program, Service, Task};
use crate::order::{self, OrderError};
use crate::service::{
    Action, ExitStatus, KILL_WAIT, Millis, Note, ServiceMachine, ServiceNote, State,
};
use crate::units::HumanDuration;

/// How long a boot task gets between SIGTERM and SIGKILL at shutdown.
pub const TASK_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Paced starts: the longest a start waits for the service before it to
/// stop running (a service that never blocks holds the next one back this
/// long, no longer).
pub const PACE_MAX: Duration = Duration::from_millis(100);
/// Paced starts: how often a running service is looked at again.
const PACE_POLL: Millis = 5;

/// The supervisor's hands.
pub trait Runner {
    fn spawn(&mut self, kind: UnitKind, name: &str, program: &Program) -> Result<Pid, LaunchError>;
    fn signal(&mut self, name: &str, pid: Pid, signal: Signal) -> Result<(), LaunchError>;
    /// The unit's first process was reaped with `status`.
    fn reaped(&mut self, name: &str, pid: Pid, status: ExitStatus);
    /// Whether `pid` is running or waiting for a CPU (not blocked, not
    /// stopped, not exited): paced starts wait while it is.
    fn running(&mut self, pid: Pid) -> bool;
    /// A marker line, without the `berth: ` prefix.
    fn report(&mut self, level: log::Level, line: fmt::Arguments<'_>);
    /// A line of the status report someone asked for (SIGUSR1): printed
    /// whatever the log level, which is for what PID 1 says on its own.
    fn status(&mut self, line: fmt::Arguments<'_>) {
        self.report(log::Level::Info, line);
    }
    /// Whether the unit can start now: false while it waits for the
    /// machine's background set-up (see [`crate::machine`]: the network of
    /// a unit that shares it), whose progress wakes the event loop.
    fn can_start(&mut self, _kind: UnitKind, _name: &str, _program: &Program) -> bool {
        true
    }
    /// Whether the machine's background set-up has ended: `ready` waits
    /// for it (the power button works from then on).
    fn setup_done(&mut self) -> bool {
        true
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnitRef {
    Task(usize),
    Service(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskState {
    Pending,
    Running {
        pid: Pid,
        deadline: Option<Millis>,
        killed: bool,
    },
    Done,
    Skipped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Tasks,
    Services,
    ShuttingDown,
    Done,
}

#[derive(Debug)]
struct TaskRun {
    task: Task,
    state: TaskState,
}

#[derive(Debug)]
struct ServiceRun {
    service: Service,
    machine: ServiceMachine,
    /// Services that depend on this one.
    dependents: Vec<usize>,
    /// The last note of the service and when: what the status report says
    /// of a unit long after the line left the console and the ring.
    last: Option<(Millis, String)>,
}

impl ServiceRun {
    /// Reports `note` and keeps it as the service's last.
    fn note(&mut self, r: &mut dyn Runner, note: &Note, now: Millis) {
        let name = &self.service.name;
        let line = report_note(r, name, note);
        let prefix = format!("service {name} ");
        let text = line
            .strip_prefix(&prefix)
            .map_or(line.clone(), str::to_owned);
        self.last = Some((now, text));
    }
}

pub struct Supervisor {
    tasks: Vec<TaskRun>,
    services: Vec<ServiceRun>,
    start_order: Vec<usize>,
    /// While the services are being started: the position in `start_order`
    /// of the next one. One starts per [`Self::tick`], so the event loop
    /// reads the output (and reaps the exits) of the ones already started
    /// between two starts instead of after all of them.
    next_start: Option<usize>,
    /// Paced starts ([`Self::set_paced_starts`]).
    paced: bool,
    /// Paced: the service started last, which the next start waits for:
    /// its pid and when it was first looked at (the first loop turn after
    /// its start, so the wait's limit does not include its creation), and
    /// when it is looked at again.
    settling: Option<(Pid, Option<Millis>)>,
    settle_check: Millis,
    /// The next task or service, or `ready`, waits for the machine's
    /// set-up ([`Runner::can_start`], [`Runner::setup_done`]): no
    /// deadline, the runner wakes the loop, every tick looks again.
    waiting_for_setup: bool,
    pids: BTreeMap<Pid, UnitRef>,
    phase: Phase,
    fatal: Option<String>,
    orphans: u64,
}

/// A note as its marker line, returned too; a start limit hit by an exit
/// gives two lines, the exit and then `service web failed: start limit
/// reached (…)`.
fn report_note(r: &mut dyn Runner, name: &str, note: &Note) -> String {
    if let Note::StartLimit {
        status: Some(status),
        ..
    } = note
    {
        r.report(log::Level::Warn, format_args!("service {name} {status}"));
    }
    let line = ServiceNote(name, note).to_string();
    r.report(note.level(), format_args!("{line}"));
    line
}

fn ms(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Supervisor {
    pub fn new(tasks: Vec<Task>, services: Vec<Service>) -> Result<Self, OrderError> {
        let start_order = order::start_order(&services)?;
        let names: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
        let services: Vec<ServiceRun> = services
            .into_iter()
            .map(|service| {
                let machine = ServiceMachine::new(
                    service.restart.clone(),
                    service.stop_signal,
                    service.stop_timeout,
                );
                ServiceRun {
                    service,
                    machine,
                    dependents: Vec::new(),
                    last: None,
                }
            })
            .collect();
        let mut sup = Self {
            tasks: tasks
                .into_iter()
                .map(|task| TaskRun {
                    task,
                    state: TaskState::Pending,
                })
                .collect(),
            services,
            start_order,
            next_start: None,
            paced: false,
            settling: None,
            settle_check: 0,
            waiting_for_setup: false,
            pids: BTreeMap::new(),
            phase: Phase::Tasks,
            fatal: None,
            orphans: 0,
        };
        for i in 0..sup.services.len() {
            let deps = sup
                .services
                .get(i)
                .map(|s| s.service.depends_on.clone())
                .unwrap_or_default();
            for dep in deps {
                if let Some(j) = names.iter().position(|n| *n == dep)
                    && let Some(target) = sup.services.get_mut(j)
                {
                    target.dependents.push(i);
                }
            }
        }
        Ok(sup)
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Paced starts (see the module docs): for a machine with one CPU.
    /// Whether services are still to be started or `ready` not yet said.
    pub fn is_starting(&self) -> bool {
        self.next_start.is_some()
    }

    pub fn set_paced_starts(&mut self, paced: bool) {
        self.paced = paced;
    }

    /// Why the boot failed, once it has.
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.as_deref()
    }

    pub fn orphans(&self) -> u64 {
        self.orphans
    }

    /// Runs the boot tasks, then the services.
    pub fn boot(&mut self, now: Millis, r: &mut dyn Runner) {
        self.advance_tasks(now, r);
    }

    /// The earliest deadline of any unit: when [`Self::tick`] is due. While
    /// services are still to be started that is at once (0), or, paced,
    /// when the one started last is looked at again.
    pub fn next_deadline(&self) -> Option<Millis> {
        let start = self
            .next_start
            .filter(|_| !self.waiting_for_setup)
            .map(|_| self.settling.map_or(0, |_| self.settle_check));
        let tasks = self.tasks.iter().filter_map(|t| match t.state {
            TaskState::Running {
                deadline: Some(d), ..
            } => Some(d),
            _ => None,
        });
        let services = self.services.iter().filter_map(|s| s.machine.deadline());
        start.into_iter().chain(tasks).chain(services).min()
    }

    /// A pid was reaped. Returns false for pids that are no unit's (orphans
    /// reparented to PID 1), which are counted.
    pub fn child_exited(
        &mut self,
        pid: Pid,
        status: ExitStatus,
        now: Millis,
        r: &mut dyn Runner,
    ) -> bool {
        let Some(unit) = self.pids.remove(&pid) else {
            self.orphans = self.orphans.saturating_add(1);
            return false;
        };
        match unit {
            UnitRef::Task(i) => self.task_exited(i, pid, status, now, r),
            UnitRef::Service(i) => {
                let Some(run) = self.services.get_mut(i) else {
                    return true;
                };
                r.reaped(&run.service.name, pid, status);
                let note = run.machine.exited(status, now);
                run.note(r, &note, now);
                if self.phase == Phase::ShuttingDown {
                    self.advance_shutdown(now, r);
                }
            }
        }
        true
    }

    /// The clock reached (or passed) a deadline.
    pub fn tick(&mut self, now: Millis, r: &mut dyn Runner) {
        if std::mem::take(&mut self.waiting_for_setup) && self.phase == Phase::Tasks {
            self.advance_tasks(now, r);
        }
        self.start_next(now, r);
        for t in &mut self.tasks {
            if let TaskState::Running {
                pid,
                deadline: Some(d),
                killed: false,
            } = t.state
                && now >= d
            {
                // It is given up on if it is still there KILL_WAIT after
                // this (stuck in the kernel).
                t.state = TaskState::Running {
                    pid,
                    deadline: Some(now.saturating_add(ms(KILL_WAIT))),
                    killed: true,
                };
                let waited = if self.phase == Phase::ShuttingDown {
                    Some(TASK_STOP_TIMEOUT)
                } else {
                    t.task.timeout
                };
                r.report(
                    log::Level::Warn,
                    format_args!(
                        "task {} did not finish within {}: sent SIGKILL",
                        t.task.name,
                        HumanDuration(waited.unwrap_or_default())
                    ),
                );
                if let Err(e) = r.signal(&t.task.name, pid, Signal::SIGKILL) {
                    r.report(log::Level::Warn, format_args!("{}", error_chain(&e)));
                }
            }
        }
        // A task still there KILL_WAIT after its SIGKILL is stuck in the
        // kernel (a hung disk, a dead FUSE mount): it is given up on, at
        // boot as a failed task (the boot goes on past an optional one),
        // at shutdown so that the shutdown goes on.
        let stuck = self.tasks.iter().position(|t| {
            matches!(t.state, TaskState::Running { deadline: Some(d), killed: true, .. } if now >= d)
        });
        if let Some(i) = stuck {
            self.task_given_up(i, now, r);
        }
        for i in 0..self.services.len() {
            let Some(run) = self.services.get_mut(i) else {
                continue;
            };
            let (action, note) = run.machine.tick(now);
            if let Some(note) = note {
                run.note(r, &note, now);
            }
            self.act(i, action, now, r);
        }
        // A unit given up on may be the last one shutdown waited for.
        if self.phase == Phase::ShuttingDown {
            self.advance_shutdown(now, r);
        }
    }

    /// Starts the ordered shutdown (idempotent).
    pub fn shutdown(&mut self, now: Millis, r: &mut dyn Runner) {
        if matches!(self.phase, Phase::ShuttingDown | Phase::Done) {
            return;
        }
        self.phase = Phase::ShuttingDown;
        // Services not started yet stay pending: nothing to stop.
        self.next_start = None;
        self.settling = None;
        for t in &mut self.tasks {
            match t.state {
                TaskState::Pending => t.state = TaskState::Skipped,
                TaskState::Running { pid, .. } => {
                    t.state = TaskState::Running {
                        pid,
                        deadline: Some(now.saturating_add(ms(TASK_STOP_TIMEOUT))),
                        killed: false,
                    };
                    r.report(
                        log::Level::Info,
                        format_args!("task {} stopping: sent SIGTERM", t.task.name),
                    );
                    if let Err(e) = r.signal(&t.task.name, pid, Signal::SIGTERM) {
                        r.report(log::Level::Warn, format_args!("{}", error_chain(&e)));
                    }
                }
                TaskState::Done | TaskState::Skipped => {}
            }
        }
        for s in &mut self.services {
            s.machine.forbid_restarts();
        }
        self.advance_shutdown(now, r);
    }

    /// One `status` line per unit, for SIGUSR1: its state, pid, restarts
    /// and last exit, since when (PID 1's clock, as its log stamps), and for
    /// a unit that is down, why (its last note).
    pub fn report_status(&self, r: &mut dyn Runner) {
        for s in &self.services {
            let state = s.machine.state();
            let pid = state.pid().map(|p| p.as_raw()).unwrap_or(0);
            let mut line = format!(
                "status service {} state={} pid={pid} restarts={}",
                s.service.name,
                state.name(),
                s.machine.restarts()
            );
            if let Some(last) = s.machine.last_exit() {
                line.push_str(&format!(" last={last} code={}", last.code()));
            }
            if let Some((at, why)) = &s.last {
                line.push_str(&format!(" since={}.{:03}", at / 1000, at % 1000));
                if matches!(state, State::Failed | State::Exited { .. } | State::Stopped) {
                    line.push_str(&format!(" why={why:?}"));
                }
            }
            r.status(format_args!("{line}"));
        }
        r.status(format_args!("status orphans reaped={}", self.orphans));
    }

    /// State of a service by name (for tests and the control channel).
    pub fn service_state(&self, name: &str) -> Option<State> {
        self.services
            .iter()
            .find(|s| s.service.name == name)
            .map(|s| s.machine.state())
    }

    fn advance_tasks(&mut self, now: Millis, r: &mut dyn Runner) {
        while self.phase == Phase::Tasks {
            let Some(i) = self
                .tasks
                .iter()
                .position(|t| t.state == TaskState::Pending)
            else {
                self.start_services();
                return;
            };
            let Some(t) = self.tasks.get_mut(i) else {
                return;
            };
            if !r.can_start(UnitKind::Task, &t.task.name, &t.task.program) {
                self.waiting_for_setup = true;
                return;
            }
            match r.spawn(UnitKind::Task, &t.task.name, &t.task.program) {
                Ok(pid) => {
                    let deadline = t.task.timeout.map(|d| now.saturating_add(ms(d)));
                    t.state = TaskState::Running {
                        pid,
                        deadline,
                        killed: false,
                    };
                    self.pids.insert(pid, UnitRef::Task(i));
                    r.report(
                        log::Level::Info,
                        format_args!("task {} started pid={pid}", t.task.name),
                    );
                    return;
                }
                Err(e) => {
                    t.state = TaskState::Done;
                    if t.task.optional {
                        r.report(
                            log::Level::Warn,
                            format_args!(
                                "task {} failed to start: {} (optional, boot goes on)",
                                t.task.name,
                                error_chain(&e)
                            ),
                        );
                    } else {
                        let reason = format!(
                            "boot task {} failed to start: {}",
                            t.task.name,
                            error_chain(&e)
                        );
                        self.fail(reason, now, r);
                    }
                }
            }
        }
    }

    fn task_exited(
        &mut self,
        i: usize,
        pid: Pid,
        status: ExitStatus,
        now: Millis,
        r: &mut dyn Runner,
    ) {
        let Some(t) = self.tasks.get_mut(i) else {
            return;
        };
        r.reaped(&t.task.name, pid, status);
        if t.state == TaskState::Done {
            // Given up on earlier (stuck after SIGKILL); it ended at last.
            r.report(
                log::Level::Info,
                format_args!("task {} (given up on) {status}", t.task.name),
            );
            return;
        }
        t.state = TaskState::Done;
        if status.success() {
            r.report(
                log::Level::Info,
                format_args!("task {} {status}", t.task.name),
            );
        } else if self.phase != Phase::Tasks {
            r.report(
                log::Level::Info,
                format_args!("task {} {status} (shutting down)", t.task.name),
            );
        } else if t.task.optional {
            r.report(
                log::Level::Warn,
                format_args!("task {} {status} (optional, boot goes on)", t.task.name),
            );
        } else {
            r.report(
                log::Level::Error,
                format_args!("task {} failed: {status}", t.task.name),
            );
            let reason = format!("boot task {} failed: {status}", t.task.name);
            self.fail(reason, now, r);
            return;
        }
        match self.phase {
            Phase::Tasks => self.advance_tasks(now, r),
            Phase::ShuttingDown => self.advance_shutdown(now, r),
            Phase::Services | Phase::Done => {}
        }
    }

    /// Task `i` outlived its SIGKILL by [`KILL_WAIT`]. Its pid stays known:
    /// when it does end, its unit's resources are released.
    fn task_given_up(&mut self, i: usize, now: Millis, r: &mut dyn Runner) {
        let Some(t) = self.tasks.get_mut(i) else {
            return;
        };
        let TaskState::Running { pid, .. } = t.state else {
            return;
        };
        t.state = TaskState::Done;
        let stuck = format!(
            "task {} (pid {pid}) still there {} after SIGKILL (stuck in the kernel?)",
            t.task.name,
            HumanDuration(KILL_WAIT)
        );
        match self.phase {
            Phase::Tasks if t.task.optional => {
                r.report(
                    log::Level::Warn,
                    format_args!("{stuck}: given up on (optional, boot goes on)"),
                );
                self.advance_tasks(now, r);
            }
            Phase::Tasks => {
                r.report(log::Level::Error, format_args!("{stuck}: given up on"));
                let reason = format!(
                    "boot task {} did not end after SIGKILL (stuck in the kernel?)",
                    t.task.name
                );
                self.fail(reason, now, r);
            }
            Phase::ShuttingDown => {
                r.report(
                    log::Level::Error,
                    format_args!("{stuck}: shutdown goes on without it"),
                );
            }
            Phase::Services | Phase::Done => {}
        }
    }

    fn fail(&mut self, reason: String, now: Millis, r: &mut dyn Runner) {
        r.report(log::Level::Error, format_args!("fatal: {reason}"));
        self.fatal = Some(reason);
        self.shutdown(now, r);
    }

    /// Queues the services; the next [`Self::tick`] (due at once) starts
    /// the first. Not started here: this runs while the last task's exit
    /// is handled, and the same loop turn ends with a tick, which would
    /// start a second service before the first one's output was read.
    fn start_services(&mut self) {
        self.phase = Phase::Services;
        self.next_start = Some(0);
    }

    /// Starts the next service in start order (at most one spawn), and
    /// says `ready` after the last. Paced, not before the one started last
    /// has stopped running (or [`PACE_MAX`] has passed).
    fn start_next(&mut self, now: Millis, r: &mut dyn Runner) {
        if self.next_start.is_none() {
            return;
        }
        if let Some((pid, since)) = self.settling {
            let since = since.unwrap_or(now);
            if now < since.saturating_add(ms(PACE_MAX))
                && self.pids.contains_key(&pid)
                && r.running(pid)
            {
                self.settling = Some((pid, Some(since)));
                self.settle_check = now.saturating_add(PACE_POLL);
                return;
            }
            self.settling = None;
        }
        while let Some(pos) = self.next_start {
            if self.phase != Phase::Services {
                self.next_start = None;
                return;
            }
            let Some(&i) = self.start_order.get(pos) else {
                if !r.setup_done() {
                    self.waiting_for_setup = true;
                    return;
                }
                self.next_start = None;
                r.report(log::Level::Info, format_args!("ready"));
                return;
            };
            if let Some(run) = self.services.get(i)
                && !r.can_start(UnitKind::Service, &run.service.name, &run.service.program)
            {
                self.waiting_for_setup = true;
                return;
            }
            self.next_start = Some(pos + 1);
            let action = match self.services.get_mut(i) {
                Some(run) => run.machine.start(),
                None => continue,
            };
            let spawn = action == Action::Spawn;
            self.act(i, action, now, r);
            if spawn && self.start_order.get(pos + 1).is_some() {
                if self.paced
                    && let Some(pid) = self
                        .services
                        .get(i)
                        .and_then(|run| run.machine.state().pid())
                {
                    self.settling = Some((pid, None));
                    self.settle_check = now;
                }
                return;
            }
        }
    }

    /// Carries out a machine's action.
    fn act(&mut self, i: usize, action: Action, now: Millis, r: &mut dyn Runner) {
        let Some(run) = self.services.get_mut(i) else {
            return;
        };
        match action {
            Action::None => {}
            Action::Spawn => {
                let note = match r.spawn(UnitKind::Service, &run.service.name, &run.service.program)
                {
                    Ok(pid) => {
                        self.pids.insert(pid, UnitRef::Service(i));
                        run.machine.spawned(pid, now)
                    }
                    // Retrying cannot help an image that failed its
                    // verification or a spec this host cannot run.
                    Err(e) if e.is_permanent() => run.machine.launch_refused(error_chain(&e)),
                    Err(e) => run.machine.spawn_failed(error_chain(&e), now),
                };
                run.note(r, &note, now);
            }
            Action::Signal(pid, signal) => {
                if let Err(e) = r.signal(&run.service.name, pid, signal) {
                    r.report(log::Level::Warn, format_args!("{}", error_chain(&e)));
                }
            }
        }
    }

    fn advance_shutdown(&mut self, now: Millis, r: &mut dyn Runner) {
        // Reverse start order, so independent services are signalled in a
        // predictable order (the reverse of how they started).
        let order: Vec<usize> = self.start_order.iter().rev().copied().collect();
        for i in order {
            let Some(run) = self.services.get(i) else {
                continue;
            };
            let ready = run.dependents.iter().all(|&d| {
                self.services
                    .get(d)
                    .is_none_or(|dep| dep.machine.state().pid().is_none())
            });
            if !ready {
                continue;
            }
            let Some(run) = self.services.get_mut(i) else {
                continue;
            };
            let (action, note) = run.machine.stop(now);
            if let Some(note) = note {
                run.note(r, &note, now);
            }
            self.act(i, action, now, r);
        }
        let tasks_down = self
            .tasks
            .iter()
            .all(|t| !matches!(t.state, TaskState::Running { .. }));
        let services_down = self
            .services
            .iter()
            .all(|s| s.machine.state().pid().is_none());
        if tasks_down && services_down {
            self.phase = Phase::Done;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest;

    #[derive(Default)]
    struct FakeRunner {
        next_pid: i32,
        lines: Vec<String>,
        spawned: Vec<String>,
        signals: Vec<(String, Signal)>,
        reaped: Vec<String>,
        fail_spawn: Vec<String>,
        /// Spawn fails for good (a corrupt image).
        refuse: Vec<String>,
        pids: BTreeMap<String, Pid>,
        /// Pids `running` says yes for, and the pids it was asked about.
        running: Vec<Pid>,
        looked_at: Vec<Pid>,
        /// Units `can_start` says no for, and whether `setup_done` says no.
        blocked: Vec<String>,
        setup_pending: bool,
    }

    impl Runner for FakeRunner {
        fn spawn(&mut self, _kind: UnitKind, name: &str, _p: &Program) -> Result<Pid, LaunchError> {
            if self.fail_spawn.iter().any(|n| n == name) {
                return Err(LaunchError::Unsupported {
                    unit: name.into(),
                    what: "test".into(),
                    launcher: "fake",
                });
            }
            if self.refuse.iter().any(|n| n == name) {
                return Err(LaunchError::Prepare {
                    unit: name.into(),
                    message: "image x: layer sha256:ab: digest mismatch".into(),
                });
            }
            self.next_pid += 1;
            let pid = Pid::from_raw(100 + self.next_pid);
            self.spawned.push(name.to_owned());
            self.pids.insert(name.to_owned(), pid);
            Ok(pid)
        }
        fn signal(&mut self, name: &str, _pid: Pid, signal: Signal) -> Result<(), LaunchError> {
            self.signals.push((name.to_owned(), signal));
            Ok(())
        }
        fn reaped(&mut self, name: &str, _pid: Pid, _status: ExitStatus) {
            self.reaped.push(name.to_owned());
        }
        fn running(&mut self, pid: Pid) -> bool {
            self.looked_at.push(pid);
            self.running.contains(&pid)
        }
        fn report(&mut self, _level: log::Level, line: fmt::Arguments<'_>) {
            self.lines.push(line.to_string());
        }
        fn can_start(&mut self, _kind: UnitKind, name: &str, _p: &Program) -> bool {
            !self.blocked.iter().any(|n| n == name)
        }
        fn setup_done(&mut self) -> bool {
            !self.setup_pending
        }
    }

    impl FakeRunner {
        fn pid(&self, name: &str) -> Pid {
            self.pids[name]
        }
        fn take_lines(&mut self) -> Vec<String> {
            std::mem::take(&mut self.lines)
        }
    }

    /// Ticks until every service due to start has been started (one per
    /// tick, as the event loop does between reading output).
    fn settle(s: &mut Supervisor, r: &mut FakeRunner, now: Millis) {
        while s.next_deadline() == Some(0) {
            s.tick(now, r);
        }
    }

    fn supervisor(json: &str) -> Supervisor {
        let m = manifest::parse(json.as_bytes(), &[]).unwrap();
        Supervisor::new(m.tasks, m.services).unwrap()
    }

    const APP: &str = r#"{"version":1,
        "tasks":[{"name":"t1","host":true,"command":["x"]},{"name":"t2","host":true,"command":["x"],"optional":true}],
        "services":[
          {"name":"web","host":true,"command":["x"],"depends_on":["db"],"stop_timeout":"2s"},
          {"name":"db","host":true,"command":["x"],"stop_timeout":"3s"},
          {"name":"cron","host":true,"command":["x"],"restart":{"policy":"always"}}]}"#;

    #[test]
    fn tasks_in_order_then_services_by_dependency() {
        let mut s = supervisor(APP);
        let mut r = FakeRunner::default();
        s.boot(0, &mut r);
        assert_eq!(r.spawned, ["t1"], "one task at a time");
        assert!(s.child_exited(r.pid("t1"), ExitStatus::Code(0), 10, &mut r));
        assert_eq!(r.spawned, ["t1", "t2"]);
        // An optional task's failure does not stop the boot.
        s.child_exited(r.pid("t2"), ExitStatus::Code(3), 20, &mut r);
        // One service per tick (the loop reads output in between), the
        // first one too: the tick that ends this loop turn starts it.
        assert_eq!(r.spawned, ["t1", "t2"]);
        assert_eq!(s.next_deadline(), Some(0), "services to start");
        s.tick(21, &mut r);
        assert_eq!(r.spawned, ["t1", "t2", "db"]);
        s.tick(22, &mut r);
        assert_eq!(r.spawned, ["t1", "t2", "db", "web"]);
        s.tick(23, &mut r);
        assert_eq!(r.spawned, ["t1", "t2", "db", "web", "cron"]);
        assert_eq!(s.next_deadline(), None);
        assert_eq!(s.phase(), Phase::Services);
        assert_eq!(
            r.take_lines(),
            [
                "task t1 started pid=101",
                "task t1 exited status=0",
                "task t2 started pid=102",
                "task t2 exited status=3 (optional, boot goes on)",
                "service db started pid=103",
                "service web started pid=104",
                "service cron started pid=105",
                "ready",
            ]
        );
        assert_eq!(r.reaped, ["t1", "t2"]);
    }

    /// APP with paced starts, its tasks done and its first service (db)
    /// started at 20 ms.
    fn paced_first_service_started() -> (Supervisor, FakeRunner) {
        let mut s = supervisor(APP);
        s.set_paced_starts(true);
        let mut r = FakeRunner::default();
        s.boot(0, &mut r);
        s.child_exited(r.pid("t1"), ExitStatus::Code(0), 10, &mut r);
        s.child_exited(r.pid("t2"), ExitStatus::Code(0), 20, &mut r);
        s.tick(20, &mut r);
        (s, r)
    }

    #[test]
    fn units_and_ready_wait_for_the_machine_setup_without_a_deadline() {
        let mut s = supervisor(APP);
        let mut r = FakeRunner {
            blocked: vec!["t1".into(), "web".into()],
            setup_pending: true,
            ..FakeRunner::default()
        };
        // The first task waits: nothing started, no deadline (the runner
        // wakes the loop), and every tick looks again.
        s.boot(0, &mut r);
        assert!(r.spawned.is_empty());
        assert_eq!(s.next_deadline(), None);
        s.tick(5, &mut r);
        assert!(r.spawned.is_empty());
        r.blocked.retain(|n| n != "t1");
        s.tick(10, &mut r);
        assert_eq!(r.spawned, ["t1"]);
        s.child_exited(r.pid("t1"), ExitStatus::Code(0), 11, &mut r);
        s.child_exited(r.pid("t2"), ExitStatus::Code(0), 12, &mut r);
        // db starts; web (after db) waits, and cron behind it.
        settle(&mut s, &mut r, 13);
        assert_eq!(r.spawned, ["t1", "t2", "db"]);
        assert_eq!(s.next_deadline(), None);
        s.tick(14, &mut r);
        assert_eq!(r.spawned, ["t1", "t2", "db"]);
        r.blocked.clear();
        s.tick(15, &mut r);
        settle(&mut s, &mut r, 15);
        assert_eq!(r.spawned, ["t1", "t2", "db", "web", "cron"]);
        // `ready` waits for the whole set-up.
        assert!(!r.lines.iter().any(|l| l == "ready"), "{:?}", r.lines);
        assert_eq!(s.next_deadline(), None);
        r.setup_pending = false;
        s.tick(16, &mut r);
        assert_eq!(r.lines.last().map(String::as_str), Some("ready"));
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn paced_starts_wait_for_the_service_before_to_stop_running() {
        let (mut s, mut r) = paced_first_service_started();
        assert_eq!(r.spawned, ["t1", "t2", "db"]);
        // db runs: web waits. db is first looked at on the next loop turn
        // (the wait's limit counts from there), then every PACE_POLL ms.
        let db = r.pid("db");
        r.running.push(db);
        assert_eq!(s.next_deadline(), Some(20));
        s.tick(21, &mut r);
        assert_eq!(s.next_deadline(), Some(26));
        s.tick(26, &mut r);
        assert_eq!(r.spawned, ["t1", "t2", "db"]);
        assert_eq!(r.looked_at, [db, db]);
        // db blocks: web starts at the next look, then waits for web.
        r.running.clear();
        s.tick(31, &mut r);
        assert_eq!(r.spawned, ["t1", "t2", "db", "web"]);
        // web never stops running: cron starts PACE_MAX after web was
        // first looked at (32), not before.
        let web = r.pid("web");
        r.running.push(web);
        s.tick(32, &mut r);
        s.tick(100, &mut r);
        s.tick(131, &mut r);
        assert_eq!(r.spawned, ["t1", "t2", "db", "web"]);
        s.tick(32 + ms(PACE_MAX), &mut r);
        assert_eq!(r.spawned, ["t1", "t2", "db", "web", "cron"]);
        // cron was the last: nothing waits for it; `ready` at once.
        assert_eq!(r.lines.last().map(String::as_str), Some("ready"));
        assert_eq!(s.next_deadline(), None);
        assert_eq!(r.looked_at, [db, db, db, web, web, web]);
    }

    #[test]
    fn paced_start_goes_on_when_the_service_before_exits() {
        let (mut s, mut r) = paced_first_service_started();
        let db = r.pid("db");
        r.running.push(db);
        s.tick(25, &mut r);
        assert_eq!(r.spawned, ["t1", "t2", "db"]);
        // db exits (and its restart is someone else's business): a
        // reaped pid is not asked about again.
        s.child_exited(db, ExitStatus::Code(1), 27, &mut r);
        s.tick(27, &mut r);
        assert_eq!(r.spawned, ["t1", "t2", "db", "web"]);
        assert_eq!(r.looked_at, [db]);
        // A shutdown while waiting: nothing more starts.
        r.running.push(r.pid("web"));
        s.shutdown(28, &mut r);
        s.tick(300, &mut r);
        assert!(!r.spawned.contains(&"cron".to_owned()));
    }

    #[test]
    fn failing_task_is_fatal() {
        let mut s = supervisor(APP);
        let mut r = FakeRunner::default();
        s.boot(0, &mut r);
        s.child_exited(r.pid("t1"), ExitStatus::Signal(11), 10, &mut r);
        assert_eq!(
            r.spawned,
            ["t1"],
            "nothing starts after a failed mandatory task"
        );
        assert_eq!(s.fatal(), Some("boot task t1 failed: killed by signal 11"));
        assert_eq!(s.phase(), Phase::Done);
        assert!(
            r.lines
                .contains(&"fatal: boot task t1 failed: killed by signal 11".to_owned())
        );
    }

    #[test]
    fn task_spawn_error_is_fatal_unless_optional() {
        let mut s = supervisor(APP);
        let mut r = FakeRunner {
            fail_spawn: vec!["t1".into()],
            ..Default::default()
        };
        s.boot(0, &mut r);
        assert!(
            s.fatal()
                .unwrap()
                .starts_with("boot task t1 failed to start: ")
        );

        let mut s = supervisor(APP);
        let mut r = FakeRunner {
            fail_spawn: vec!["t2".into()],
            ..Default::default()
        };
        s.boot(0, &mut r);
        s.child_exited(r.pid("t1"), ExitStatus::Code(0), 1, &mut r);
        settle(&mut s, &mut r, 1);
        assert_eq!(s.fatal(), None);
        assert_eq!(r.spawned, ["t1", "db", "web", "cron"]);
    }

    #[test]
    fn task_timeout_kills() {
        let mut s = supervisor(
            r#"{"version":1,"tasks":[{"name":"slow","host":true,"command":["x"],"timeout":"30s"}]}"#,
        );
        let mut r = FakeRunner::default();
        s.boot(1000, &mut r);
        assert_eq!(s.next_deadline(), Some(31_000));
        s.tick(30_999, &mut r);
        assert!(r.signals.is_empty());
        s.tick(31_000, &mut r);
        assert_eq!(r.signals, [("slow".to_owned(), Signal::SIGKILL)]);
        assert_eq!(s.next_deadline(), Some(31_000 + ms(KILL_WAIT)));
        s.child_exited(r.pid("slow"), ExitStatus::Signal(9), 31_001, &mut r);
        assert_eq!(s.fatal(), Some("boot task slow failed: killed by signal 9"));
    }

    #[test]
    fn a_timed_out_task_that_survives_sigkill_fails_the_boot() {
        // Stuck in the kernel (a hung disk): SIGKILL cannot end it.
        let mut s = supervisor(
            r#"{"version":1,"tasks":[{"name":"stuck","host":true,"command":["x"],"timeout":"1s"}],
                "services":[{"name":"a","host":true,"command":["x"]}]}"#,
        );
        let mut r = FakeRunner::default();
        s.boot(0, &mut r);
        s.tick(1000, &mut r);
        assert_eq!(r.signals, [("stuck".to_owned(), Signal::SIGKILL)]);
        let gone = 1000 + ms(KILL_WAIT);
        s.tick(gone - 1, &mut r);
        assert_eq!(s.fatal(), None);
        s.tick(gone, &mut r);
        assert_eq!(
            s.fatal(),
            Some("boot task stuck did not end after SIGKILL (stuck in the kernel?)")
        );
        assert_eq!(s.phase(), Phase::Done);
        assert_eq!(r.spawned, ["stuck"], "no service starts");
        // Its end, if the kernel ever lets it go, releases the unit and changes nothing.
        s.child_exited(r.pid("stuck"), ExitStatus::Signal(9), gone + 1, &mut r);
        assert_eq!(r.reaped, ["stuck"]);
        assert_eq!(s.phase(), Phase::Done);
        assert!(
            r.lines
                .contains(&"task stuck (given up on) killed by signal 9".to_owned())
        );

        // An optional one is given up on and the boot goes on.
        let mut s = supervisor(
            r#"{"version":1,"tasks":[{"name":"stuck","host":true,"command":["x"],"timeout":"1s","optional":true}],
                "services":[{"name":"a","host":true,"command":["x"]}]}"#,
        );
        let mut r = FakeRunner::default();
        s.boot(0, &mut r);
        s.tick(1000, &mut r);
        s.tick(gone, &mut r);
        settle(&mut s, &mut r, gone);
        assert_eq!(s.fatal(), None);
        assert_eq!(r.spawned, ["stuck", "a"]);
        assert!(r.lines.iter().any(|l| l.ends_with(
            "still there 5s after SIGKILL (stuck in the kernel?): given up on (optional, boot goes on)"
        )));
    }

    #[test]
    fn crash_restart_and_orphans() {
        let mut s = supervisor(APP);
        let mut r = FakeRunner::default();
        s.boot(0, &mut r);
        s.child_exited(r.pid("t1"), ExitStatus::Code(0), 0, &mut r);
        s.child_exited(r.pid("t2"), ExitStatus::Code(0), 0, &mut r);
        settle(&mut s, &mut r, 0);
        r.take_lines();
        assert!(!s.child_exited(Pid::from_raw(9999), ExitStatus::Code(0), 5, &mut r));
        assert_eq!(s.orphans(), 1);
        s.child_exited(r.pid("cron"), ExitStatus::Signal(9), 100, &mut r);
        assert_eq!(s.next_deadline(), Some(500));
        s.tick(499, &mut r);
        s.tick(500, &mut r);
        assert_eq!(
            r.take_lines(),
            [
                "service cron killed by signal 9, restart in 400ms",
                "service cron started pid=106"
            ]
        );
        s.report_status(&mut r);
        assert_eq!(
            r.take_lines(),
            [
                "status service web state=running pid=104 restarts=0 since=0.000",
                "status service db state=running pid=103 restarts=0 since=0.000",
                "status service cron state=running pid=106 restarts=1 last=killed by signal 9 code=137 since=0.500",
                "status orphans reaped=1",
            ]
        );
    }

    #[test]
    fn start_limit_reports_the_exit_then_the_failure() {
        let mut s = supervisor(
            r#"{"version":1,"services":[{"name":"x","host":true,"command":["x"],
                "restart":{"start_limit":{"count":1,"interval":"1m"}}}]}"#,
        );
        let mut r = FakeRunner::default();
        s.boot(0, &mut r);
        settle(&mut s, &mut r, 0);
        r.take_lines();
        s.child_exited(r.pid("x"), ExitStatus::Code(2), 10, &mut r);
        assert_eq!(
            r.take_lines(),
            [
                "service x exited status=2",
                "service x failed: start limit reached (1 starts in 1m)"
            ]
        );
        assert_eq!(s.next_deadline(), None);
        assert_eq!(s.service_state("x"), Some(State::Failed));
        // Long after, the status report still says why, and since when.
        s.report_status(&mut r);
        assert_eq!(
            r.take_lines()[0],
            "status service x state=failed pid=0 restarts=0 last=exited status=2 code=2 since=0.010 why=\"failed: start limit reached (1 starts in 1m)\""
        );
    }

    #[test]
    fn permanent_launch_error_fails_at_once_without_retries() {
        let mut s = supervisor(
            r#"{"version":1,"services":[{"name":"bad","host":true,"command":["x"]},
                {"name":"good","host":true,"command":["x"]}]}"#,
        );
        let mut r = FakeRunner {
            refuse: vec!["bad".into()],
            ..FakeRunner::default()
        };
        s.boot(0, &mut r);
        settle(&mut s, &mut r, 0);
        assert_eq!(
            r.take_lines(),
            [
                "service bad failed: bad: image x: layer sha256:ab: digest mismatch (not restarting)",
                "service good started pid=101",
                "ready",
            ]
        );
        assert_eq!(s.service_state("bad"), Some(State::Failed));
        assert_eq!(s.next_deadline(), None, "no backoff for a permanent error");
        assert_eq!(r.spawned, ["good"]);
    }

    /// APP booted (its tasks done, its services started), its lines
    /// taken, and shut down at 1000 ms.
    fn shut_down_app() -> (Supervisor, FakeRunner) {
        let mut s = supervisor(APP);
        let mut r = FakeRunner::default();
        s.boot(0, &mut r);
        s.child_exited(r.pid("t1"), ExitStatus::Code(0), 0, &mut r);
        s.child_exited(r.pid("t2"), ExitStatus::Code(0), 0, &mut r);
        settle(&mut s, &mut r, 0);
        r.take_lines();
        s.shutdown(1000, &mut r);
        (s, r)
    }

    #[test]
    fn shutdown_stops_dependents_first_and_kills_after_timeout() {
        let (mut s, mut r) = shut_down_app();
        // cron and web have no dependents: signalled at once; db waits for web.
        assert_eq!(
            r.signals,
            [
                ("cron".to_owned(), Signal::SIGTERM),
                ("web".to_owned(), Signal::SIGTERM)
            ]
        );
        s.child_exited(r.pid("cron"), ExitStatus::Signal(15), 1100, &mut r);
        assert_eq!(s.phase(), Phase::ShuttingDown);
        // web ignores SIGTERM: SIGKILL after its 2 s.
        assert_eq!(s.next_deadline(), Some(3000));
        s.tick(3000, &mut r);
        assert_eq!(r.signals.last(), Some(&("web".to_owned(), Signal::SIGKILL)));
        assert!(
            !r.signals.iter().any(|(n, _)| n == "db"),
            "db is not stopped while web runs"
        );
        s.child_exited(r.pid("web"), ExitStatus::Signal(9), 3010, &mut r);
        assert_eq!(r.signals.last(), Some(&("db".to_owned(), Signal::SIGTERM)));
        s.child_exited(r.pid("db"), ExitStatus::Code(0), 3020, &mut r);
        assert_eq!(s.phase(), Phase::Done);
        assert_eq!(s.fatal(), None);
        assert_eq!(
            r.take_lines(),
            [
                "service cron stopping: sent SIGTERM, SIGKILL in 10s",
                "service web stopping: sent SIGTERM, SIGKILL in 2s",
                "service cron stopped (killed by signal 15)",
                "service web did not stop within 2s: sent SIGKILL",
                "service web stopped (killed by signal 9)",
                "service db stopping: sent SIGTERM, SIGKILL in 3s",
                "service db stopped (exited status=0)",
            ]
        );
        // Second request is a no-op.
        s.shutdown(4000, &mut r);
        assert!(r.lines.is_empty());
    }

    #[test]
    fn shutdown_goes_on_without_a_unit_that_survives_sigkill() {
        // web and then db never exit, not even after SIGKILL (stuck in
        // the kernel on a hung disk): each is given up on KILL_WAIT after
        // its SIGKILL, and shutdown ends.
        let (mut s, mut r) = shut_down_app();
        s.child_exited(r.pid("cron"), ExitStatus::Signal(15), 1100, &mut r);
        s.tick(3000, &mut r);
        assert_eq!(r.signals.last(), Some(&("web".to_owned(), Signal::SIGKILL)));
        let wait = ms(KILL_WAIT);
        assert_eq!(s.next_deadline(), Some(3000 + wait));
        s.tick(3000 + wait - 1, &mut r);
        assert_eq!(s.phase(), Phase::ShuttingDown);
        s.tick(3000 + wait, &mut r);
        assert_eq!(s.service_state("web"), Some(State::Stopped));
        assert_eq!(r.signals.last(), Some(&("db".to_owned(), Signal::SIGTERM)));
        let db_kill = 3000 + wait + 3000;
        s.tick(db_kill, &mut r);
        s.tick(db_kill + wait, &mut r);
        assert_eq!(s.phase(), Phase::Done);
        let lines = r.take_lines();
        assert!(
            lines.contains(&format!(
                "service web (pid {}) still there 5s after SIGKILL (stuck in the kernel?): shutdown goes on without it",
                r.pid("web")
            )),
            "{lines:#?}"
        );
        // Its exit, if the kernel ever lets it go, is only noted.
        s.child_exited(
            r.pid("web"),
            ExitStatus::Signal(9),
            db_kill + wait + 1,
            &mut r,
        );
        assert_eq!(s.phase(), Phase::Done);

        // A boot task the same.
        let mut s = supervisor(APP);
        let mut r = FakeRunner::default();
        s.boot(0, &mut r);
        s.shutdown(10, &mut r);
        let kill = 10 + ms(TASK_STOP_TIMEOUT);
        s.tick(kill, &mut r);
        assert_eq!(r.signals.last(), Some(&("t1".to_owned(), Signal::SIGKILL)));
        assert_eq!(s.next_deadline(), Some(kill + wait));
        s.tick(kill + wait, &mut r);
        assert_eq!(s.phase(), Phase::Done);
        assert!(
            r.take_lines()
                .iter()
                .any(|l| l.starts_with("task t1 (pid ")
                    && l.ends_with("shutdown goes on without it")),
        );
    }

    #[test]
    fn shutdown_during_backoff_and_tasks() {
        let mut s = supervisor(APP);
        let mut r = FakeRunner::default();
        s.boot(0, &mut r);
        // Shutdown while t1 runs: t1 gets SIGTERM, t2 and services never start.
        s.shutdown(10, &mut r);
        assert_eq!(r.signals, [("t1".to_owned(), Signal::SIGTERM)]);
        assert_eq!(s.next_deadline(), Some(5010));
        s.child_exited(r.pid("t1"), ExitStatus::Signal(15), 20, &mut r);
        assert_eq!(s.phase(), Phase::Done);
        assert_eq!(
            s.fatal(),
            None,
            "a task stopped by shutdown is not a boot failure"
        );
        assert_eq!(r.spawned, ["t1"]);

        let mut s =
            supervisor(r#"{"version":1,"services":[{"name":"a","host":true,"command":["x"]}]}"#);
        let mut r = FakeRunner::default();
        s.boot(0, &mut r);
        settle(&mut s, &mut r, 0);
        s.child_exited(r.pid("a"), ExitStatus::Code(1), 5, &mut r);
        s.shutdown(10, &mut r);
        assert_eq!(s.phase(), Phase::Done);
        assert_eq!(s.service_state("a"), Some(State::Stopped));
        s.tick(100_000, &mut r);
        assert_eq!(r.spawned, ["a"], "no restart after shutdown");
    }

    #[test]
    fn a_dependency_in_backoff_is_not_restarted_while_its_dependent_stops() {
        let mut s = supervisor(
            r#"{"version":1,"services":[
              {"name":"db","host":true,"command":["x"],"restart":{"policy":"always","backoff":{"initial":"400ms"}}},
              {"name":"web","host":true,"command":["x"],"depends_on":["db"],"stop_timeout":"10s"}]}"#,
        );
        let mut r = FakeRunner::default();
        s.boot(0, &mut r);
        settle(&mut s, &mut r, 0);
        assert_eq!(r.spawned, ["db", "web"]);
        // db crashes: back in 400 ms. Shutdown comes first; web is slow to stop.
        s.child_exited(r.pid("db"), ExitStatus::Code(1), 100, &mut r);
        s.shutdown(200, &mut r);
        assert_eq!(r.signals, [("web".to_owned(), Signal::SIGTERM)]);
        assert_eq!(s.next_deadline(), Some(10_200), "only web's stop timeout");
        s.tick(500, &mut r);
        s.tick(5_000, &mut r);
        assert_eq!(r.spawned, ["db", "web"], "db is not started again");
        s.child_exited(r.pid("web"), ExitStatus::Code(0), 6_000, &mut r);
        assert_eq!(s.phase(), Phase::Done);
        assert_eq!(s.service_state("db"), Some(State::Stopped));
        assert_eq!(r.spawned, ["db", "web"]);
    }

    #[test]
    fn shutdown_while_services_start_leaves_the_rest_unstarted() {
        let mut s = supervisor(APP);
        let mut r = FakeRunner::default();
        s.boot(0, &mut r);
        s.child_exited(r.pid("t1"), ExitStatus::Code(0), 0, &mut r);
        s.child_exited(r.pid("t2"), ExitStatus::Code(0), 0, &mut r);
        s.tick(1, &mut r);
        assert_eq!(r.spawned, ["t1", "t2", "db"]);
        s.shutdown(5, &mut r);
        assert_eq!(r.signals, [("db".to_owned(), Signal::SIGTERM)]);
        assert_eq!(s.next_deadline(), Some(3005), "only db's stop timeout");
        s.tick(6, &mut r);
        s.child_exited(r.pid("db"), ExitStatus::Code(0), 10, &mut r);
        assert_eq!(s.phase(), Phase::Done);
        assert_eq!(r.spawned, ["t1", "t2", "db"], "web and cron never start");
        assert!(!r.lines.contains(&"ready".to_owned()));
    }

    #[test]
    fn exit_during_shutdown_is_not_restarted() {
        let mut s = supervisor(APP);
        let mut r = FakeRunner::default();
        s.boot(0, &mut r);
        s.child_exited(r.pid("t1"), ExitStatus::Code(0), 0, &mut r);
        s.child_exited(r.pid("t2"), ExitStatus::Code(0), 0, &mut r);
        settle(&mut s, &mut r, 0);
        s.shutdown(100, &mut r);
        r.take_lines();
        // db dies on its own while web is stopping.
        s.child_exited(r.pid("db"), ExitStatus::Code(1), 150, &mut r);
        assert_eq!(
            r.take_lines(),
            ["service db exited status=1, not restarting"]
        );
        assert_eq!(
            s.next_deadline(),
            Some(2100),
            "only web's stop timeout is pending"
        );
    }
}
