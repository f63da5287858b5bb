//! One service's lifecycle: the restart policy, backoff and start limit as a
//! pure state machine. Time comes in as milliseconds since boot, so tests
//! drive it with a fake clock; effects go out as [`Action`]s.
//!
//! ```text
//! pending → starting → running → (exited | failed) → backoff → starting …
//!                               → stopping → stopped
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::manifest::{RestartMode, RestartPolicy};
use crate::units::HumanDuration;

/// Milliseconds on the monotonic clock.
pub type Millis = u64;

fn ms(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How a process ended, as `waitpid` told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The shell's number: the exit code, or 128 + signal.
    pub fn code(self) -> i32 {
        match self {
            Self::Code(c) => c,
            Self::Signal(s) => 128 + s,
        }
    }

    pub fn success(self) -> bool {
        self == Self::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    /// `exited status=1` or `killed by signal 9`, as in the marker lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Code(c) => write!(f, "exited status={c}"),
            Self::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not started yet (waiting for boot tasks).
    Pending,
    /// The launcher has been asked to start it.
    Starting,
    Running {
        pid: Pid,
        since: Millis,
    },
    /// Ended on its own and will not be restarted (policy, exit code).
    Exited {
        status: ExitStatus,
    },
    /// Will not be started again: start limit, or a launch error at the limit.
    Failed,
    /// Waiting to be started again.
    Backoff {
        until: Millis,
    },
    /// Stop signal sent; SIGKILL at `deadline`, or once `killed`, given up
    /// on at `deadline` ([`KILL_WAIT`] after the SIGKILL).
    Stopping {
        pid: Pid,
        deadline: Millis,
        killed: bool,
    },
    /// Stopped on request (shutdown).
    Stopped,
}

impl State {
    /// Has a live process that must be waited for.
    pub fn pid(&self) -> Option<Pid> {
        match *self {
            Self::Running { pid, .. } | Self::Stopping { pid, .. } => Some(pid),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Starting => "starting",
            Self::Running { .. } => "running",
            Self::Exited { .. } => "exited",
            Self::Failed => "failed",
            Self::Backoff { .. } => "backoff",
            Self::Stopping { .. } => "stopping",
            Self::Stopped => "stopped",
        }
    }
}

/// What the machine asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start the program (then call `spawned` or `spawn_failed`).
    Spawn,
    /// Send a signal to the live process.
    Signal(Pid, Signal),
    /// Nothing to do.
    None,
}

/// A lifecycle fact worth a marker line. Displayed without the `berth: `
/// prefix the logger adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    Started {
        pid: Pid,
    },
    Restarting {
        status: ExitStatus,
        delay: Duration,
    },
    SpawnFailedRestarting {
        error: String,
        delay: Duration,
    },
    /// A failed start under `restart: no` (or at shutdown).
    SpawnFailedNotRestarting {
        error: String,
    },
    NotRestarting {
        status: ExitStatus,
    },
    /// The launcher refused for good (bad image, impossible spec).
    LaunchRefused {
        error: String,
    },
    StartLimit {
        status: Option<ExitStatus>,
        count: u32,
        interval: Duration,
    },
    StopSent {
        signal: Signal,
        timeout: Duration,
    },
    StopTimeout {
        timeout: Duration,
    },
    Stopped {
        status: ExitStatus,
    },
    /// No exit [`KILL_WAIT`] after SIGKILL: the process is stuck in the
    /// kernel (a hung disk); shutdown goes on without it.
    Abandoned {
        pid: Pid,
    },
}

/// How long a stopping unit's process may take to exit after SIGKILL
/// before shutdown goes on without it. SIGKILL cannot be caught, but a
/// process in uninterruptible sleep (a hung disk, a FUSE or NFS server
/// that went away) dies only when the kernel lets it; a power-off must not
/// wait for that for ever.
pub const KILL_WAIT: Duration = Duration::from_secs(5);

/// A [`Note`] with the service name: `service web started pid=123`.
pub struct ServiceNote<'a>(pub &'a str, pub &'a Note);

impl fmt::Display for ServiceNote<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.0;
        match self.1 {
            Note::Started { pid } => write!(f, "service {name} started pid={pid}"),
            Note::Restarting { status, delay } => {
                write!(
                    f,
                    "service {name} {status}, restart in {}",
                    HumanDuration(*delay)
                )
            }
            Note::SpawnFailedRestarting { error, delay } => {
                write!(
                    f,
                    "service {name} failed to start: {error}, restart in {}",
                    HumanDuration(*delay)
                )
            }
            Note::SpawnFailedNotRestarting { error } => {
                write!(f, "service {name} failed to start: {error}, not restarting")
            }
            Note::NotRestarting { status } => write!(f, "service {name} {status}, not restarting"),
            Note::LaunchRefused { error } => {
                write!(f, "service {name} failed: {error} (not restarting)")
            }
            Note::StartLimit {
                count, interval, ..
            } => {
                write!(
                    f,
                    "service {name} failed: start limit reached ({count} starts in {})",
                    HumanDuration(*interval)
                )
            }
            Note::StopSent { signal, timeout } => {
                write!(
                    f,
                    "service {name} stopping: sent {signal}, SIGKILL in {}",
                    HumanDuration(*timeout)
                )
            }
            Note::StopTimeout { timeout } => {
                write!(
                    f,
                    "service {name} did not stop within {}: sent SIGKILL",
                    HumanDuration(*timeout)
                )
            }
            Note::Stopped { status } => write!(f, "service {name} stopped ({status})"),
            Note::Abandoned { pid } => write!(
                f,
                "service {name} (pid {pid}) still there {} after SIGKILL (stuck in the kernel?): shutdown goes on without it",
                HumanDuration(KILL_WAIT)
            ),
        }
    }
}

impl Note {
    /// Notes that mean something went wrong are warnings, the rest info.
    pub fn level(&self) -> log::Level {
        match self {
            Self::Started { .. } | Self::StopSent { .. } | Self::Stopped { .. } => log::Level::Info,
            Self::NotRestarting { status } if status.success() => log::Level::Info,
            Self::StartLimit { .. }
            | Self::LaunchRefused { .. }
            | Self::SpawnFailedNotRestarting { .. }
            | Self::Abandoned { .. } => log::Level::Error,
            _ => log::Level::Warn,
        }
    }
}

/// Starts a start limit keeps when its count is larger than this are
/// counted per window instead.
const TRACKED_STARTS: u32 = 1024;

/// The starts a start limit counts, in memory that does not grow with the
/// manifest's `count` nor with months of restarts: with a `count` up to
/// [`TRACKED_STARTS`], the times of the starts within the last `interval`
/// (a sliding window, exact); above it, when the current window began and
/// how many starts it has seen (fixed windows, as systemd's start limit).
/// A huge `count` is how a manifest says "restart forever", and keeping
/// every start time of such a service would grow PID 1 by 8 bytes a start.
#[derive(Debug, Clone)]
enum StartLog {
    Sliding(VecDeque<Millis>),
    Windowed { since: Millis, starts: u32 },
}

impl StartLog {
    fn new(count: u32) -> Self {
        if count <= TRACKED_STARTS {
            StartLog::Sliding(VecDeque::with_capacity(count as usize))
        } else {
            StartLog::Windowed {
                since: 0,
                starts: 0,
            }
        }
    }

    fn record(&mut self, now: Millis, count: u32, interval: Millis) {
        match self {
            StartLog::Sliding(times) => {
                while times
                    .front()
                    .is_some_and(|&t| now.saturating_sub(t) >= interval)
                {
                    times.pop_front();
                }
                while times.len() >= count.max(1) as usize {
                    times.pop_front();
                }
                times.push_back(now);
            }
            StartLog::Windowed { since, starts } => {
                if *starts == 0 || now.saturating_sub(*since) >= interval {
                    *since = now;
                    *starts = 0;
                }
                *starts = starts.saturating_add(1);
            }
        }
    }

    fn reached(&self, now: Millis, count: u32, interval: Millis) -> bool {
        match self {
            StartLog::Sliding(times) => {
                times.len() >= count as usize
                    && times
                        .front()
                        .is_some_and(|&first| now.saturating_sub(first) < interval)
            }
            StartLog::Windowed { since, starts } => {
                *starts >= count && now.saturating_sub(*since) < interval
            }
        }
    }

    /// Start times held, for tests.
    #[cfg(test)]
    fn held(&self) -> usize {
        match self {
            StartLog::Sliding(times) => times.len(),
            StartLog::Windowed { .. } => 1,
        }
    }
}

/// The restart policy and the service's history.
#[derive(Debug, Clone)]
pub struct ServiceMachine {
    policy: RestartPolicy,
    stop_signal: Signal,
    stop_timeout: Duration,
    state: State,
    /// The starts the start limit counts.
    starts: StartLog,
    /// Failures since the last healthy run; the backoff exponent.
    consecutive: u32,
    restarts: u32,
    last_exit: Option<ExitStatus>,
    /// Cleared at shutdown: an exit then is final whatever the policy.
    restarts_allowed: bool,
}

impl ServiceMachine {
    pub fn new(policy: RestartPolicy, stop_signal: Signal, stop_timeout: Duration) -> Self {
        Self {
            starts: StartLog::new(policy.start_limit.count),
            policy,
            stop_signal,
            stop_timeout,
            state: State::Pending,
            consecutive: 0,
            restarts: 0,
            last_exit: None,
            restarts_allowed: true,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    pub fn last_exit(&self) -> Option<ExitStatus> {
        self.last_exit
    }

    /// When the driver must call [`Self::tick`] next.
    pub fn deadline(&self) -> Option<Millis> {
        match self.state {
            State::Backoff { until } => Some(until),
            State::Stopping { deadline, .. } => Some(deadline),
            _ => None,
        }
    }

    /// Not running and never will again without a new start request.
    pub fn is_down(&self) -> bool {
        matches!(
            self.state,
            State::Exited { .. } | State::Failed | State::Stopped | State::Pending
        )
    }

    /// The delay before restart number `n` (0-based since the last healthy
    /// run): initial × factor^n, capped at max.
    pub fn backoff_delay(&self, n: u32) -> Duration {
        let b = &self.policy.backoff;
        let max = ms(b.max) as f64;
        let exp = i32::try_from(n).unwrap_or(i32::MAX);
        let delay = (ms(b.initial) as f64 * b.factor.powi(exp)).min(max);
        // `as` saturates for floats, and delay is within [initial, max].
        Duration::from_millis(delay as u64)
    }

    /// From now on exits are final (PID 1 is shutting down). A restart
    /// already waiting out its backoff is called off: the service has no
    /// process, so it is stopped now, whatever its dependents still do.
    pub fn forbid_restarts(&mut self) {
        self.restarts_allowed = false;
        if let State::Backoff { .. } = self.state {
            self.state = State::Stopped;
        }
    }

    /// Pending → Starting.
    pub fn start(&mut self) -> Action {
        match self.state {
            State::Pending => {
                self.state = State::Starting;
                Action::Spawn
            }
            _ => Action::None,
        }
    }

    /// Starting → Running.
    pub fn spawned(&mut self, pid: Pid, now: Millis) -> Note {
        self.record_start(now);
        self.state = State::Running { pid, since: now };
        Note::Started { pid }
    }

    /// Starting → Backoff (or Failed at the start limit). A launch error is a
    /// failed start: it counts toward the limit and grows the backoff; under
    /// `restart: no` (or once PID 1 is shutting down) it is final.
    pub fn spawn_failed(&mut self, error: String, now: Millis) -> Note {
        self.record_start(now);
        if self.policy.mode == RestartMode::No || !self.restarts_allowed {
            self.state = State::Failed;
            return Note::SpawnFailedNotRestarting { error };
        }
        if self.limit_reached(now) {
            self.state = State::Failed;
            return self.limit_note(None);
        }
        let delay = self.next_delay();
        self.state = State::Backoff {
            until: now.saturating_add(ms(delay)),
        };
        Note::SpawnFailedRestarting { error, delay }
    }

    /// Starting → Failed: the launcher says no start can ever succeed (an
    /// image failed verification), so no backoff and no retry.
    pub fn launch_refused(&mut self, error: String) -> Note {
        self.state = State::Failed;
        Note::LaunchRefused { error }
    }

    /// The process ended.
    pub fn exited(&mut self, status: ExitStatus, now: Millis) -> Note {
        self.last_exit = Some(status);
        let since = match self.state {
            State::Stopping { .. } => {
                self.state = State::Stopped;
                return Note::Stopped { status };
            }
            State::Running { since, .. } => since,
            // Not ours to judge: the driver routes exits by pid, so this
            // only happens if it is buggy. Keep the state, report the exit.
            _ => return Note::NotRestarting { status },
        };
        if now.saturating_sub(since) >= ms(self.policy.backoff.reset_after) {
            // A healthy run: the next failure starts the backoff afresh.
            self.consecutive = 0;
        }
        let wanted = match self.policy.mode {
            RestartMode::No => false,
            RestartMode::OnFailure => !status.success(),
            RestartMode::Always => true,
        };
        let vetoed =
            matches!(status, ExitStatus::Code(c) if self.policy.no_restart_codes.contains(&c));
        if !wanted || vetoed || !self.restarts_allowed {
            self.state = State::Exited { status };
            return Note::NotRestarting { status };
        }
        if self.limit_reached(now) {
            self.state = State::Failed;
            return self.limit_note(Some(status));
        }
        let delay = self.next_delay();
        self.state = State::Backoff {
            until: now.saturating_add(ms(delay)),
        };
        Note::Restarting { status, delay }
    }

    /// Deadlines: the end of a backoff, a stop timeout, or the end of the
    /// wait after SIGKILL.
    pub fn tick(&mut self, now: Millis) -> (Action, Option<Note>) {
        match self.state {
            State::Backoff { until } if now >= until => {
                self.state = State::Starting;
                self.restarts = self.restarts.saturating_add(1);
                (Action::Spawn, None)
            }
            State::Stopping {
                pid,
                deadline,
                killed: false,
            } if now >= deadline => {
                self.state = State::Stopping {
                    pid,
                    deadline: now.saturating_add(ms(KILL_WAIT)),
                    killed: true,
                };
                (
                    Action::Signal(pid, Signal::SIGKILL),
                    Some(Note::StopTimeout {
                        timeout: self.stop_timeout,
                    }),
                )
            }
            State::Stopping {
                pid,
                deadline,
                killed: true,
            } if now >= deadline => {
                self.state = State::Stopped;
                (Action::None, Some(Note::Abandoned { pid }))
            }
            _ => (Action::None, None),
        }
    }

    /// Shutdown: Running → Stopping; anything not running → Stopped.
    pub fn stop(&mut self, now: Millis) -> (Action, Option<Note>) {
        match self.state {
            State::Running { pid, .. } => {
                self.state = State::Stopping {
                    pid,
                    deadline: now.saturating_add(ms(self.stop_timeout)),
                    killed: false,
                };
                let note = Note::StopSent {
                    signal: self.stop_signal,
                    timeout: self.stop_timeout,
                };
                (Action::Signal(pid, self.stop_signal), Some(note))
            }
            State::Pending | State::Starting | State::Backoff { .. } => {
                self.state = State::Stopped;
                (Action::None, None)
            }
            State::Stopping { .. } | State::Exited { .. } | State::Failed | State::Stopped => {
                (Action::None, None)
            }
        }
    }

    fn record_start(&mut self, now: Millis) {
        let limit = &self.policy.start_limit;
        self.starts.record(now, limit.count, ms(limit.interval));
    }

    /// `count` starts happened within the last `interval`: another start
    /// would exceed the limit.
    fn limit_reached(&self, now: Millis) -> bool {
        let limit = &self.policy.start_limit;
        self.starts.reached(now, limit.count, ms(limit.interval))
    }

    fn limit_note(&self, status: Option<ExitStatus>) -> Note {
        Note::StartLimit {
            status,
            count: self.policy.start_limit.count,
            interval: self.policy.start_limit.interval,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.backoff_delay(self.consecutive);
        self.consecutive = self.consecutive.saturating_add(1);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Backoff, StartLimit};

    fn policy(mode: RestartMode) -> RestartPolicy {
        RestartPolicy {
            mode,
            backoff: Backoff {
                initial: Duration::from_millis(400),
                factor: 2.0,
                max: Duration::from_millis(3000),
                reset_after: Duration::from_secs(60),
            },
            start_limit: StartLimit {
                count: 5,
                interval: Duration::from_secs(10),
            },
            no_restart_codes: vec![78],
        }
    }

    fn machine(mode: RestartMode) -> ServiceMachine {
        ServiceMachine::new(policy(mode), Signal::SIGTERM, Duration::from_secs(5))
    }

    /// Drives start → running with a fake clock.
    fn run(m: &mut ServiceMachine, now: Millis, pid: i32) {
        assert_eq!(m.start(), Action::Spawn);
        assert_eq!(
            m.spawned(Pid::from_raw(pid), now),
            Note::Started {
                pid: Pid::from_raw(pid)
            }
        );
    }

    fn delay_of(note: &Note) -> Option<u64> {
        match note {
            Note::Restarting { delay, .. } | Note::SpawnFailedRestarting { delay, .. } => {
                Some(delay.as_millis() as u64)
            }
            _ => None,
        }
    }

    #[test]
    fn crash_loop_grows_then_hits_start_limit() {
        let mut m = machine(RestartMode::Always);
        let mut now = 0;
        run(&mut m, now, 10);
        let mut delays = Vec::new();
        loop {
            now += 50; // crashes 50 ms after each start
            let note = m.exited(ExitStatus::Code(1), now);
            let Some(d) = delay_of(&note) else {
                assert_eq!(
                    ServiceNote("web", &note).to_string(),
                    "service web failed: start limit reached (5 starts in 10s)"
                );
                break;
            };
            delays.push(d);
            assert_eq!(m.deadline(), Some(now + d));
            // Nothing happens before the deadline.
            assert_eq!(m.tick(now + d - 1).0, Action::None);
            now += d;
            assert_eq!(m.tick(now).0, Action::Spawn);
            m.spawned(Pid::from_raw(11), now);
        }
        assert_eq!(delays, vec![400, 800, 1600, 3000]);
        assert_eq!(m.state(), State::Failed);
        assert_eq!(m.restarts(), 4);
        assert_eq!(m.deadline(), None);
        assert!(m.is_down());
    }

    #[test]
    fn delays_double_and_cap() {
        let m = machine(RestartMode::Always);
        let got: Vec<u128> = (0..6).map(|n| m.backoff_delay(n).as_millis()).collect();
        assert_eq!(got, vec![400, 800, 1600, 3000, 3000, 3000]);
        assert_eq!(m.backoff_delay(u32::MAX).as_millis(), 3000);
    }

    #[test]
    fn markers_read_as_documented() {
        let mut m = machine(RestartMode::Always);
        run(&mut m, 0, 123);
        assert_eq!(
            ServiceNote(
                "web",
                &Note::Started {
                    pid: Pid::from_raw(123)
                }
            )
            .to_string(),
            "service web started pid=123"
        );
        let n1 = m.exited(ExitStatus::Code(1), 10);
        assert_eq!(
            ServiceNote("web", &n1).to_string(),
            "service web exited status=1, restart in 400ms"
        );
        m.tick(410);
        m.spawned(Pid::from_raw(124), 410);
        let n2 = m.exited(ExitStatus::Signal(9), 420);
        assert_eq!(
            ServiceNote("web", &n2).to_string(),
            "service web killed by signal 9, restart in 800ms"
        );
    }

    #[test]
    fn healthy_uptime_resets_backoff() {
        let mut m = machine(RestartMode::OnFailure);
        run(&mut m, 0, 1);
        assert_eq!(delay_of(&m.exited(ExitStatus::Code(1), 100)), Some(400));
        m.tick(500);
        m.spawned(Pid::from_raw(2), 500);
        assert_eq!(delay_of(&m.exited(ExitStatus::Code(1), 600)), Some(800));
        m.tick(1400);
        m.spawned(Pid::from_raw(3), 1400);
        // Runs for a full reset_after (60 s): back to the initial delay.
        assert_eq!(delay_of(&m.exited(ExitStatus::Code(1), 61_400)), Some(400));
        m.tick(61_800);
        m.spawned(Pid::from_raw(4), 61_800);
        // Just short of reset_after: keeps growing.
        assert_eq!(delay_of(&m.exited(ExitStatus::Code(1), 121_799)), Some(800));
    }

    #[test]
    fn start_limit_counts_only_recent_starts() {
        let mut m = machine(RestartMode::Always);
        let mut now = 0;
        run(&mut m, now, 1);
        // Crashes every 3 s: 5 starts never fit in 10 s, so it never fails.
        for i in 0..20 {
            now += 3000;
            let note = m.exited(ExitStatus::Code(1), now);
            assert!(delay_of(&note).is_some(), "round {i}: {note:?}");
            now = m.deadline().unwrap();
            m.tick(now);
            m.spawned(Pid::from_raw(2 + i), now);
        }
        assert_eq!(m.restarts(), 20);
    }

    /// Months of restarts, whatever the count: what the limit keeps stays
    /// small, and the limit still holds.
    #[test]
    fn start_log_memory_does_not_grow_with_starts_or_count() {
        // A count it can keep: exact, only starts within the interval.
        let mut log = StartLog::new(1000);
        for i in 0..100_000u64 {
            log.record(i * 10, 1000, 60_000);
        }
        assert_eq!(log.held(), 1000);
        let mut log = StartLog::new(1000);
        for i in 0..100_000u64 {
            log.record(i * 1000, 1000, 60_000);
        }
        assert_eq!(log.held(), 60, "only the last minute");
        assert!(!log.reached(100_000_000, 1000, 60_000));
        // "Restart forever": a count too large to keep, counted per window.
        let mut log = StartLog::new(4_000_000_000);
        for i in 0..1_000_000u64 {
            log.record(i, 4_000_000_000, 1);
            assert!(!log.reached(i, 4_000_000_000, 1));
        }
        assert_eq!(log.held(), 1);
        let (count, interval) = (2000, 10_000);
        let mut log = StartLog::new(count);
        for i in 0..count {
            assert!(!log.reached(u64::from(i), count, interval));
            log.record(u64::from(i), count, interval);
        }
        assert!(log.reached(u64::from(count), count, interval));
        assert!(!log.reached(interval, count, interval));
    }

    #[test]
    fn policies_decide_restarts() {
        use ExitStatus::*;
        use RestartMode::*;
        let cases: &[(RestartMode, ExitStatus, bool)] = &[
            (No, Code(0), false),
            (No, Code(1), false),
            (No, Signal(9), false),
            (OnFailure, Code(0), false),
            (OnFailure, Code(1), true),
            (OnFailure, Signal(15), true),
            (OnFailure, Code(78), false), // no_restart_codes
            (Always, Code(0), true),
            (Always, Code(2), true),
            (Always, Signal(9), true),
            (Always, Code(78), false),
        ];
        for &(mode, status, restart) in cases {
            let mut m = machine(mode);
            run(&mut m, 0, 1);
            let note = m.exited(status, 5);
            assert_eq!(
                matches!(m.state(), State::Backoff { .. }),
                restart,
                "{mode:?} {status:?}: {note:?}"
            );
            if !restart {
                assert_eq!(m.state(), State::Exited { status });
                assert_eq!(note, Note::NotRestarting { status });
                assert_eq!(m.deadline(), None);
            }
            assert_eq!(m.last_exit(), Some(status));
        }
    }

    #[test]
    fn spawn_failures_back_off_and_count() {
        let mut m = machine(RestartMode::Always);
        let mut now = 0;
        assert_eq!(m.start(), Action::Spawn);
        let mut notes = Vec::new();
        loop {
            let note = m.spawn_failed("no such file".into(), now);
            let text = ServiceNote("db", &note).to_string();
            notes.push(text);
            match m.deadline() {
                Some(d) => {
                    now = d;
                    assert_eq!(m.tick(now).0, Action::Spawn);
                }
                None => break,
            }
        }
        assert_eq!(
            notes[0],
            "service db failed to start: no such file, restart in 400ms"
        );
        assert_eq!(
            notes.last().unwrap(),
            "service db failed: start limit reached (5 starts in 10s)"
        );
        assert_eq!(notes.len(), 5);
        assert_eq!(m.state(), State::Failed);

        // Under `restart: no` a failed start is final, and so it is once
        // PID 1 shuts down.
        let mut m = machine(RestartMode::No);
        assert_eq!(m.start(), Action::Spawn);
        let note = m.spawn_failed("no such file".into(), 0);
        assert_eq!(
            ServiceNote("db", &note).to_string(),
            "service db failed to start: no such file, not restarting"
        );
        assert_eq!(note.level(), log::Level::Error);
        assert_eq!((m.state(), m.deadline()), (State::Failed, None));
        let mut m = machine(RestartMode::Always);
        assert_eq!(m.start(), Action::Spawn);
        m.forbid_restarts();
        m.spawn_failed("no such file".into(), 0);
        assert_eq!((m.state(), m.deadline()), (State::Failed, None));
    }

    #[test]
    fn stop_then_kill_after_timeout() {
        let mut m = machine(RestartMode::Always);
        run(&mut m, 0, 42);
        let pid = Pid::from_raw(42);
        let (action, note) = m.stop(1000);
        assert_eq!(action, Action::Signal(pid, Signal::SIGTERM));
        assert_eq!(
            ServiceNote("web", &note.unwrap()).to_string(),
            "service web stopping: sent SIGTERM, SIGKILL in 5s"
        );
        assert_eq!(m.deadline(), Some(6000));
        assert_eq!(m.tick(5999).0, Action::None);
        let (action, note) = m.tick(6000);
        assert_eq!(action, Action::Signal(pid, Signal::SIGKILL));
        assert_eq!(
            ServiceNote("web", &note.unwrap()).to_string(),
            "service web did not stop within 5s: sent SIGKILL"
        );
        // SIGKILL is sent once; the next deadline is the end of the wait
        // for its exit.
        assert_eq!(m.deadline(), Some(6000 + ms(KILL_WAIT)));
        assert_eq!(m.tick(6500).0, Action::None);
        let note = m.exited(ExitStatus::Signal(9), 6001);
        assert_eq!(
            ServiceNote("web", &note).to_string(),
            "service web stopped (killed by signal 9)"
        );
        assert_eq!(m.state(), State::Stopped);
        // Even policy always does not restart a stopped service.
        assert_eq!(m.tick(100_000).0, Action::None);
    }

    #[test]
    fn stop_in_backoff_or_pending_is_immediate() {
        let mut m = machine(RestartMode::Always);
        assert_eq!(m.stop(0), (Action::None, None));
        assert_eq!(m.state(), State::Stopped);
        assert_eq!(m.start(), Action::None, "a stopped service is not started");

        let mut m = machine(RestartMode::Always);
        run(&mut m, 0, 1);
        m.exited(ExitStatus::Code(1), 1);
        assert_eq!(m.stop(2), (Action::None, None));
        assert_eq!(m.state(), State::Stopped);
        assert_eq!(m.tick(10_000).0, Action::None, "the backoff timer is void");
    }

    #[test]
    fn exit_status_numbers() {
        assert_eq!(ExitStatus::Code(3).code(), 3);
        assert_eq!(ExitStatus::Signal(9).code(), 137);
        assert!(ExitStatus::Code(0).success());
        assert!(!ExitStatus::Signal(0).success());
    }
}
