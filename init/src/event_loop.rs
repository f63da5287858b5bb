//! PID 1's single-threaded event loop (DESIGN.md): one epoll over
//! - a signalfd (SIGCHLD, SIGTERM, SIGINT, SIGPWR, SIGUSR1, SIGUSR2),
//! - one timerfd, armed for the earliest deadline of all units (restart
//!   backoff, stop timeout, task timeout): one timer re-armed after every
//!   wakeup does the work of a timer per deadline with a bounded fd count,
//! - the non-blocking read ends of every unit's stdout/stderr pipes,
//! - the console, while lines wait for it to become writable,
//! - the power-button input devices (machine role).
//!
//! On SIGCHLD it calls `waitpid(-1, WNOHANG)` until nothing is left to reap
//! and hands each status to the [`Supervisor`], which knows which unit owns
//! the pid; other pids are reaped orphans and only counted.
//!
//! Signals: SIGTERM, SIGINT (ctrl-alt-del once CAD is off), SIGPWR → ordered
//! shutdown (then reboot for SIGINT, power-off otherwise, on a machine); SIGUSR1 → one `status` line per service; SIGUSR2 → print every
//! service's log ring.

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use nix::sys::wait::WaitPidFlag;
use nix::unistd::Pid;

use berth_runtime::sys;

use crate::clock::now_ms;
use crate::launcher::{LaunchError, Launcher, UnitKind};
use crate::logging::{self, buffers::LineSplitter, buffers::Stream};
use crate::machine::MachineSetup;
use crate::manifest::Program;
use crate::service::{ExitStatus, Millis};
use crate::supervisor::{Phase, Runner, Supervisor};

const TOKEN_SIGNAL: u64 = 0;
const TOKEN_TIMER: u64 = 1;
const TOKEN_CONSOLE: u64 = 2;
/// Power-button input devices: this plus their index.
const TOKEN_BUTTON_BASE: u64 = 3;
const MAX_BUTTONS: usize = 8;
/// The machine set-up thread has ended (its eventfd).
const TOKEN_MACHINE: u64 = 12;
/// Pipe tokens are the fd number plus this.
const TOKEN_PIPE_BASE: u64 = 16;
/// One read per readable pipe per wakeup: a flooding service gets one
/// buffer's worth of PID 1's time per round, like every other pipe.
const READ_BUF: usize = 16 * 1024;

/// The signals PID 1 takes through its signalfd.
pub fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGPWR,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        set.add(s);
    }
    set
}

/// Why the loop could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    #[error("block signals")]
    BlockSignals { source: nix::Error },
    #[error("create signalfd")]
    SignalFd { source: nix::Error },
    #[error("create epoll instance")]
    Epoll { source: nix::Error },
    #[error("create timerfd")]
    Timer { source: nix::Error },
    #[error("watch {what}")]
    Watch {
        what: &'static str,
        source: nix::Error,
    },
}

/// Blocks the handled signals and opens the signalfd for them. Call before
/// starting any child, so no SIGCHLD is missed; children start with an empty
/// mask (std resets it before exec).
pub fn open_signals() -> Result<SignalFd, EventLoopError> {
    let set = handled_signals();
    set.thread_block()
        .map_err(|source| EventLoopError::BlockSignals { source })?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|source| EventLoopError::SignalFd { source })
}

/// How supervision ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Shutdown requested and done; `reboot` when it was ctrl-alt-del
    /// (SIGINT), power-off for SIGTERM, SIGPWR and the power button.
    Clean { reboot: bool },
    /// The boot failed (a mandatory task); every unit is down.
    Fatal(String),
}

struct PipeReader {
    fd: OwnedFd,
    unit: usize,
    stream: Stream,
    splitter: LineSplitter,
}

pub struct EventLoop<L: Launcher> {
    epoll: Epoll,
    signals: SignalFd,
    timer: TimerFd,
    launcher: L,
    pipes: BTreeMap<RawFd, PipeReader>,
    supervisor: Supervisor,
    buf: Vec<u8>,
    console_watched: bool,
    armed: Option<Millis>,
    buttons: Vec<(std::path::PathBuf, std::fs::File)>,
    /// The machine's background set-up (network, power button), if any.
    machine: Option<MachineSetup>,
    /// The first shutdown request was SIGINT (ctrl-alt-del).
    reboot_requested: bool,
}

/// Whether a `/proc/PID/stat` line says running (`R`): the state is the
/// first field after the command name, which is in parentheses and may
/// itself hold spaces, parentheses and any byte but NUL (proc(5)).
pub fn stat_running(stat: &[u8]) -> bool {
    let Some(end) = stat.iter().rposition(|&b| b == b')') else {
        return false;
    };
    let mut fields = stat
        .get(end + 1..)
        .unwrap_or_default()
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty());
    fields.next() == Some(b"R".as_slice())
}

/// The supervisor's hands inside the loop: spawn with fresh pipes, signal,
/// report through the logger.
struct LoopRunner<'a, L: Launcher> {
    launcher: &'a mut L,
    epoll: &'a Epoll,
    pipes: &'a mut BTreeMap<RawFd, PipeReader>,
    machine: Option<&'a MachineSetup>,
}

impl<L: Launcher> LoopRunner<'_, L> {
    /// A pipe whose read end PID 1 watches; returns the write end.
    fn open_pipe(&mut self, unit: usize, stream: Stream) -> Result<(OwnedFd, RawFd), nix::Error> {
        // O_CLOEXEC on both ends: the launcher dup2()s the write end onto
        // fd 1/2 in the child (which clears the flag there); no other
        // process may inherit either end.
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        nix::fcntl::fcntl(&read, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        let raw = read.as_raw_fd();
        let token = TOKEN_PIPE_BASE + u64::try_from(raw).unwrap_or(0);
        self.epoll
            .add(&read, EpollEvent::new(EpollFlags::EPOLLIN, token))?;
        self.pipes.insert(
            raw,
            PipeReader {
                fd: read,
                unit,
                stream,
                splitter: LineSplitter::new(logging::max_line()),
            },
        );
        Ok((write, raw))
    }

    fn close_pipe(&mut self, raw: RawFd) {
        if let Some(p) = self.pipes.remove(&raw) {
            let _ = self.epoll.delete(&p.fd);
        }
    }
}

impl<L: Launcher> Runner for LoopRunner<'_, L> {
    fn spawn(&mut self, kind: UnitKind, name: &str, program: &Program) -> Result<Pid, LaunchError> {
        let unit = logging::register_unit(name);
        let pipe_error = |source: nix::Error| LaunchError::Spawn {
            unit: name.to_owned(),
            program: "output pipes".to_owned(),
            source: std::io::Error::from(source),
        };
        let (out, out_raw) = self.open_pipe(unit, Stream::Stdout).map_err(pipe_error)?;
        let (err, err_raw) = match self.open_pipe(unit, Stream::Stderr) {
            Ok(pair) => pair,
            Err(e) => {
                self.close_pipe(out_raw);
                return Err(pipe_error(e));
            }
        };
        let result = self.launcher.spawn(kind, name, program, out, err);
        if result.is_ok()
            && kind == UnitKind::Service
            && let Some(machine) = self.machine
        {
            // A running service could starve an idle-priority thread (see
            // MachineSetup::raise); until now only boot tasks, which PID 1
            // waits for anyway, could.
            machine.raise();
        }
        if result.is_err() {
            // The write ends went with the failed spawn; the read ends would
            // only ever see EOF.
            self.close_pipe(out_raw);
            self.close_pipe(err_raw);
        }
        result
    }

    fn signal(&mut self, name: &str, pid: Pid, signal: Signal) -> Result<(), LaunchError> {
        self.launcher.signal(name, pid, signal)
    }

    fn reaped(&mut self, name: &str, pid: Pid, status: ExitStatus) {
        self.launcher.reaped(name, pid, status);
    }

    fn running(&mut self, pid: Pid) -> bool {
        // A process that is gone or unreadable is not running.
        std::fs::read(format!("/proc/{pid}/stat")).is_ok_and(|s| stat_running(&s))
    }

    fn report(&mut self, level: log::Level, line: fmt::Arguments<'_>) {
        log::log!(level, "{line}");
    }

    fn status(&mut self, line: fmt::Arguments<'_>) {
        logging::always(line);
    }

    fn can_start(&mut self, _kind: UnitKind, name: &str, program: &Program) -> bool {
        self.launcher.can_start(name, program)
    }

    fn setup_done(&mut self) -> bool {
        // `ready` promises the power button works: the thread has opened
        // its device by then, which queues a press until the loop reads it.
        self.machine.is_none_or(MachineSetup::ended)
    }
}

fn timespec(ms: Millis) -> TimeSpec {
    TimeSpec::from_duration(Duration::from_millis(ms))
}

impl<L: Launcher> EventLoop<L> {
    pub fn new(
        launcher: L,
        supervisor: Supervisor,
        signals: SignalFd,
    ) -> Result<Self, EventLoopError> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .map_err(|source| EventLoopError::Epoll { source })?;
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(|source| EventLoopError::Timer { source })?;
        epoll
            .add(&signals, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_SIGNAL))
            .map_err(|source| EventLoopError::Watch {
                what: "signalfd",
                source,
            })?;
        epoll
            .add(&timer, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_TIMER))
            .map_err(|source| EventLoopError::Watch {
                what: "timerfd",
                source,
            })?;
        Ok(Self {
            epoll,
            signals,
            timer,
            launcher,
            pipes: BTreeMap::new(),
            supervisor,
            buf: vec![0; READ_BUF],
            console_watched: false,
            armed: None,
            buttons: Vec::new(),
            machine: None,
            reboot_requested: false,
        })
    }

    /// Watches input devices that send KEY_POWER; a press shuts down like
    /// SIGPWR (see [`crate::power_button`]).
    pub fn watch_power_buttons(&mut self, buttons: Vec<(std::path::PathBuf, std::fs::File)>) {
        for (path, file) in buttons.into_iter().take(MAX_BUTTONS) {
            let token = TOKEN_BUTTON_BASE + self.buttons.len() as u64;
            match self
                .epoll
                .add(&file, EpollEvent::new(EpollFlags::EPOLLIN, token))
            {
                Ok(()) => {
                    log::info!("watching power button {}", path.display());
                    self.buttons.push((path, file));
                }
                Err(e) => log::warn!("watch power button {}: {e}", path.display()),
            }
        }
    }

    /// Watches the machine's background set-up: units that need part of
    /// it, and `ready`, wait for its eventfd; once it has ended the power
    /// buttons it opened are watched.
    pub fn watch_machine_setup(&mut self, machine: MachineSetup) {
        match self.epoll.add(
            machine.wake_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_MACHINE),
        ) {
            Ok(()) => self.machine = Some(machine),
            Err(e) => {
                // Nothing would wake the units that wait for it: wait now.
                log::warn!("watch the machine set-up thread: {e} (waiting for it)");
                machine.wait_done();
                self.watch_power_buttons(machine.take_buttons());
            }
        }
    }

    /// The set-up thread woke us: a piece of it has ended (the tick that
    /// follows starts what waited for it); once all of it has, its power
    /// buttons are watched.
    fn machine_setup_done(&mut self) {
        let Some(machine) = &self.machine else {
            return;
        };
        machine.clear_wake();
        if !machine.is_done() {
            return;
        }
        let buttons = machine.take_buttons();
        if let Some(machine) = self.machine.take() {
            let _ = self.epoll.delete(machine.wake_fd());
        }
        self.watch_power_buttons(buttons);
    }

    fn read_button(&mut self, index: usize) {
        let Some((path, file)) = self.buttons.get(index) else {
            return;
        };
        // Whole events only: the buffer is a multiple of the event size.
        let mut buf = [0u8; crate::power_button::INPUT_EVENT_SIZE * 16];
        match nix::unistd::read(file, &mut buf) {
            Ok(n) if crate::power_button::has_power_press(buf.get(..n).unwrap_or_default()) => {
                if self.supervisor.phase() != Phase::ShuttingDown {
                    log::info!("power button pressed: shutting down");
                }
                let now = now_ms();
                self.with_runner(|sup, r| sup.shutdown(now, r));
            }
            Ok(_) | Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(e) => {
                // ENODEV: the device went away. Stop watching it.
                log::warn!("read power button {}: {e}", path.display());
                let _ = self.epoll.delete(file);
            }
        }
    }

    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// Boots the units and supervises them until shutdown is complete.
    pub fn run(&mut self) -> Outcome {
        // ---- supervision phase: from here on nothing bails; a failure
        // belongs to one unit, and PID 1 keeps going.
        let now = now_ms();
        self.with_runner(|sup, r| sup.boot(now, r));
        let mut events = [EpollEvent::empty(); 64];
        while self.supervisor.phase() != Phase::Done {
            // Messages waiting for a TCP syslog receiver are tried again
            // at least once a second, not only with the next line.
            let timeout = if logging::flush_syslog() {
                EpollTimeout::from(1000u16)
            } else {
                EpollTimeout::NONE
            };
            self.wait_once(&mut events, timeout);
        }
        self.drain_pipes();
        match self.supervisor.fatal() {
            Some(reason) => Outcome::Fatal(reason.to_owned()),
            None => Outcome::Clean {
                reboot: self.reboot_requested,
            },
        }
    }

    /// After supervision: signal every remaining process (`kill_all`), reap
    /// until none is left or `grace` passes, then SIGKILL and reap again.
    /// Returns how many orphans were reaped in total.
    pub fn finish(&mut self, kill_all: &mut dyn FnMut(Signal) -> usize, grace: Duration) -> u64 {
        let mut events = [EpollEvent::empty(); 64];
        for (signal, wait) in [
            (Signal::SIGTERM, grace),
            (Signal::SIGKILL, Duration::from_secs(5)),
        ] {
            self.reap();
            if !self.has_children() {
                break;
            }
            let n = kill_all(signal);
            log::info!("sent {signal} to {n} remaining processes");
            let until =
                now_ms().saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
            while self.has_children() && now_ms() < until {
                let left = until.saturating_sub(now_ms()).min(1000);
                self.wait_once(
                    &mut events,
                    EpollTimeout::try_from(left).unwrap_or(EpollTimeout::ZERO),
                );
            }
        }
        self.drain_pipes();
        self.launcher.cleanup();
        self.supervisor.orphans()
    }

    fn has_children(&self) -> bool {
        // WNOWAIT: only look; the reap happens through SIGCHLD.
        !matches!(
            nix::sys::wait::waitid(
                nix::sys::wait::Id::All,
                WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT
            ),
            Err(Errno::ECHILD)
        )
    }

    fn with_runner<T>(&mut self, f: impl FnOnce(&mut Supervisor, &mut dyn Runner) -> T) -> T {
        let mut runner = LoopRunner {
            launcher: &mut self.launcher,
            epoll: &self.epoll,
            pipes: &mut self.pipes,
            machine: self.machine.as_ref(),
        };
        f(&mut self.supervisor, &mut runner)
    }

    /// One round: arm the timer, wait, handle what woke us.
    fn wait_once(&mut self, events: &mut [EpollEvent], timeout: EpollTimeout) {
        self.arm_timer();
        self.watch_console();
        let n = match self.epoll.wait(events, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => {
                // Cannot happen with valid arguments; never spin if it does.
                log::error!("epoll_wait: {e}");
                std::thread::sleep(Duration::from_millis(100));
                0
            }
        };
        log::trace!("wakeup: {n} events");
        let ready = events.get(..n).unwrap_or_default();
        // Output first, so a unit's last lines come before its exit marker.
        for ev in ready {
            let token = ev.data();
            if token >= TOKEN_PIPE_BASE {
                let raw = RawFd::try_from(token - TOKEN_PIPE_BASE).unwrap_or(-1);
                self.read_pipe(raw);
            }
        }
        for ev in ready {
            match ev.data() {
                TOKEN_SIGNAL => self.handle_signals(),
                TOKEN_TIMER => {
                    // Acknowledge; the deadlines are checked below anyway.
                    // The timer is spent: re-arm it even if the earliest
                    // deadline happens to be the same value.
                    let _ = nix::unistd::read(&self.timer, &mut [0u8; 8]);
                    self.armed = None;
                }
                TOKEN_CONSOLE => {
                    logging::flush_console();
                }
                TOKEN_MACHINE => self.machine_setup_done(),
                t if (TOKEN_BUTTON_BASE..TOKEN_BUTTON_BASE + MAX_BUTTONS as u64).contains(&t) => {
                    self.read_button(usize::try_from(t - TOKEN_BUTTON_BASE).unwrap_or(usize::MAX));
                }
                _ => {}
            }
        }
        let now = now_ms();
        self.with_runner(|sup, r| sup.tick(now, r));
    }

    fn arm_timer(&mut self) {
        let deadline = self.supervisor.next_deadline();
        if deadline == self.armed {
            return;
        }
        self.armed = deadline;
        let result = match deadline {
            // An absolute time of zero would disarm the timer: use 1 ms.
            Some(at) => self.timer.set(
                Expiration::OneShot(timespec(at.max(1))),
                TimerSetTimeFlags::TFD_TIMER_ABSTIME,
            ),
            None => self.timer.unset(),
        };
        if let Err(e) = result {
            log::error!("arm timerfd: {e}");
            self.armed = None;
        }
    }

    fn watch_console(&mut self) {
        let pending = logging::flush_console();
        if pending == self.console_watched {
            return;
        }
        let epoll = &self.epoll;
        let result = logging::with_console_fd(|fd| match fd {
            None => Ok(()),
            Some(fd) if pending => {
                epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLOUT, TOKEN_CONSOLE))
            }
            Some(fd) => epoll.delete(fd),
        });
        match result {
            Ok(()) => self.console_watched = pending,
            // EPERM: a regular file, which never blocks anyway.
            Err(Errno::EPERM) => {}
            Err(e) => log::debug!("watch console: {e}"),
        }
    }

    fn handle_signals(&mut self) {
        loop {
            let info = match self.signals.read_signal() {
                Ok(Some(info)) => info,
                Ok(None) => return,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("read signalfd: {e}");
                    return;
                }
            };
            let signo = i32::try_from(info.ssi_signo).unwrap_or(0);
            let now = now_ms();
            match Signal::try_from(signo) {
                Ok(Signal::SIGCHLD) => self.reap(),
                Ok(sig @ (Signal::SIGTERM | Signal::SIGINT | Signal::SIGPWR)) => {
                    if !matches!(self.supervisor.phase(), Phase::ShuttingDown | Phase::Done) {
                        log::info!("{sig} received: shutting down");
                        self.reboot_requested = sig == Signal::SIGINT;
                    }
                    self.with_runner(|sup, r| sup.shutdown(now, r));
                }
                Ok(Signal::SIGUSR1) => self.with_runner(|sup, r| sup.report_status(r)),
                Ok(Signal::SIGUSR2) => logging::dump_rings(),
                _ => log::debug!("ignored signal {signo}"),
            }
        }
    }

    /// waitpid(-1, WNOHANG) until nothing is left to reap. The status is
    /// decoded from the raw word (runtime::sys): nix's `waitpid` fails with
    /// EINVAL on a child killed by a real-time signal (its `Signal` has no
    /// SIGRTMIN..SIGRTMAX), after the kernel has reaped it — the unit's exit
    /// would be lost and the zombies behind it left for the next SIGCHLD.
    fn reap(&mut self) {
        loop {
            let (pid, status) = match sys::reap_any() {
                Ok(Some((pid, sys::WaitStatus::Exited(code)))) => (pid, ExitStatus::Code(code)),
                Ok(Some((pid, sys::WaitStatus::Signaled(sig)))) => (pid, ExitStatus::Signal(sig)),
                Ok(None) => return,
                Err(e) if e.raw_os_error() == Some(Errno::ECHILD as i32) => return,
                Err(e) => {
                    log::error!("waitpid: {e}");
                    return;
                }
            };
            let pid = Pid::from_raw(pid);
            let now = now_ms();
            let known = self.with_runner(|sup, r| sup.child_exited(pid, status, now, r));
            if !known {
                log::debug!("reaped orphan pid={pid} ({status})");
            }
        }
    }

    fn read_pipe(&mut self, raw: RawFd) {
        let close = {
            let Some(p) = self.pipes.get_mut(&raw) else {
                return;
            };
            let (unit, stream) = (p.unit, p.stream);
            let mut emit = |line: &[u8], cut: bool| logging::unit_line(unit, stream, line, cut);
            match nix::unistd::read(p.fd.as_fd(), &mut self.buf) {
                Ok(0) => {
                    p.splitter.finish(&mut emit);
                    true
                }
                Ok(n) => {
                    p.splitter
                        .feed(self.buf.get(..n).unwrap_or_default(), &mut emit);
                    false
                }
                Err(Errno::EAGAIN | Errno::EINTR) => false,
                Err(e) => {
                    log::warn!("read output pipe: {e}");
                    p.splitter.finish(&mut emit);
                    true
                }
            }
        };
        if close && let Some(p) = self.pipes.remove(&raw) {
            let _ = self.epoll.delete(&p.fd);
        }
    }

    /// Reads what is already in the pipes (at the end: last words of units).
    fn drain_pipes(&mut self) {
        let fds: Vec<RawFd> = self.pipes.keys().copied().collect();
        for raw in fds {
            // Bounded: at most 64 reads per pipe, a chatty orphan cannot
            // hold the shutdown.
            for _ in 0..64 {
                let before = self.pipes.contains_key(&raw);
                if !before {
                    break;
                }
                let Some(p) = self.pipes.get(&raw) else { break };
                let mut probe = [nix::poll::PollFd::new(
                    p.fd.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                if !matches!(
                    nix::poll::poll(&mut probe, nix::poll::PollTimeout::ZERO),
                    Ok(1)
                ) {
                    break;
                }
                self.read_pipe(raw);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex, mpsc};

    /// Starts nothing: records what it was asked to spawn. A unit may
    /// start once the machine's network step has ended.
    struct FakeLauncher {
        machine: MachineSetup,
        spawned: Arc<Mutex<Vec<String>>>,
    }

    impl Launcher for FakeLauncher {
        fn check(&self, _name: &str, _program: &Program) -> Result<(), LaunchError> {
            Ok(())
        }
        fn can_start(&mut self, _name: &str, _program: &Program) -> bool {
            self.machine.network_ended()
        }
        fn spawn(
            &mut self,
            _kind: UnitKind,
            name: &str,
            _program: &Program,
            _stdout: std::os::fd::OwnedFd,
            _stderr: std::os::fd::OwnedFd,
        ) -> Result<Pid, LaunchError> {
            self.spawned.lock().unwrap().push(name.to_owned());
            // No process has this pid: nothing is ever reaped for it.
            Ok(Pid::from_raw(i32::MAX))
        }
        fn signal(&mut self, _name: &str, _pid: Pid, _signal: Signal) -> Result<(), LaunchError> {
            Ok(())
        }
        fn reaped(&mut self, _name: &str, _pid: Pid, _status: ExitStatus) {}
    }

    #[test]
    fn the_set_up_threads_eventfd_starts_what_waited_and_then_ready() {
        let (network_tx, network_rx) = mpsc::channel::<()>();
        let (rest_tx, rest_rx) = mpsc::channel::<()>();
        let machine = MachineSetup::start(move |r| {
            network_rx.recv().unwrap();
            r.network(Ok(()));
            rest_rx.recv().unwrap();
        })
        .unwrap();
        let m = crate::manifest::parse(
            br#"{"version":1,"services":[{"name":"web","host":true,"command":["x"]}]}"#,
            &[],
        )
        .unwrap();
        let spawned = Arc::new(Mutex::new(Vec::new()));
        let launcher = FakeLauncher {
            machine: machine.clone(),
            spawned: Arc::clone(&spawned),
        };
        let supervisor = Supervisor::new(m.tasks, m.services).unwrap();
        let mut el = EventLoop::new(launcher, supervisor, open_signals().unwrap()).unwrap();
        el.watch_machine_setup(machine);
        let now = now_ms();
        el.with_runner(|s, r| s.boot(now, r));
        let mut events = [EpollEvent::empty(); 8];
        // Turns until `done`, at most 100 (10 s without events).
        let mut turn_until =
            |el: &mut EventLoop<FakeLauncher>, done: &dyn Fn(&EventLoop<FakeLauncher>) -> bool| {
                for _ in 0..100 {
                    if done(el) {
                        return true;
                    }
                    el.wait_once(&mut events, EpollTimeout::from(100u16));
                }
                done(el)
            };
        // Waiting: nothing started after 5 turns (0.5 s), and no deadline.
        for _ in 0..5 {
            el.wait_once(&mut [EpollEvent::empty(); 8], EpollTimeout::from(100u16));
        }
        assert!(spawned.lock().unwrap().is_empty());
        assert_eq!(el.supervisor().next_deadline(), None);
        // The end of the network step wakes the loop; its tick starts web.
        network_tx.send(()).unwrap();
        assert!(turn_until(&mut el, &|_| !spawned
            .lock()
            .unwrap()
            .is_empty()));
        assert_eq!(*spawned.lock().unwrap(), ["web"]);
        // `ready` waits for the rest of the set-up, then the loop lets go
        // of the thread's eventfd.
        assert!(el.supervisor().is_starting());
        assert!(el.machine.is_some());
        rest_tx.send(()).unwrap();
        assert!(turn_until(&mut el, &|el| !el.supervisor().is_starting()));
        assert!(turn_until(&mut el, &|el| el.machine.is_none()));
    }

    #[test]
    fn stat_state_is_read_after_the_command_name() {
        assert!(stat_running(b"90 (sh) R 1 90 90 0 -1 4194560 ..."));
        assert!(!stat_running(b"90 (sh) S 1 90 90 0 -1 4194560 ..."));
        assert!(!stat_running(b"90 (busybox) D 1 90"));
        assert!(!stat_running(b"90 (sh) Z 1 90"));
        // A command name may hold ") R (" itself: the last ')' ends it.
        assert!(!stat_running(b"90 (a) R (b) S 1 90"));
        assert!(stat_running(b"90 (x) S) R 1"));
        // Or bytes that are not UTF-8.
        assert!(stat_running(b"90 (\xff\xfe) R 1"));
        assert!(!stat_running(b""));
        assert!(!stat_running(b"90 (sh)"));
    }
}
