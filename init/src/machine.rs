//! The part of a machine's set-up that the boot tasks and the first
//! services do not need, done by a thread of PID 1 at idle CPU priority.
//!
//! On a machine with one CPU everything PID 1 does before a unit starts
//! delays it. Two pieces of the set-up are needed later or by nothing in
//! the start sequence: the network (its NIC driver, addresses and routes),
//! which only units that share the machine's network namespace use, and
//! the power-button drivers, which only a shutdown uses. The thread does
//! them, in that order, under `SCHED_IDLE` (sched(7)): it runs when the
//! CPU would otherwise idle — a unit waiting for its disk, a service
//! sleeping — and takes nothing from the units starting meanwhile.
//!
//! Whoever needs a piece asks for it with [`MachineSetup::network_ended`]
//! or [`MachineSetup::ended`], which do not block: a piece not there yet
//! raises the thread to the normal policy, so a busy CPU cannot starve
//! what is waited for, and the thread's eventfd wakes the event loop when
//! each piece ends. The supervisor holds back the start of a unit that
//! shares the machine's network namespace until the network has ended,
//! and `ready` until everything has: the power button's device is open
//! from then on, and a press is queued in it even before the event loop
//! watches it. While units run PID 1 does not block on the thread:
//! services already running are read, reaped and stopped meanwhile.
//!
//! Idle priority only lasts until the first service runs
//! ([`MachineSetup::raise`]): a busy service would starve the thread, and
//! PID 1 with it whenever it needs a lock the thread holds (the log hub's,
//! the allocator's, the kernel's rtnl while a NIC probes). Before, only
//! boot tasks compete, and PID 1 waits for those anyway.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use berth_runtime::sys;
use nix::sys::eventfd::{EfdFlags, EventFd};

/// Opened power-button devices, with their paths for the log.
pub type Buttons = Vec<(PathBuf, File)>;

/// Why the background set-up could not start.
#[derive(Debug, thiserror::Error)]
pub enum MachineSetupError {
    #[error("create the eventfd of the machine set-up thread")]
    EventFd { source: nix::Error },
    #[error("start the machine set-up thread")]
    Thread { source: std::io::Error },
}

#[derive(Debug, Default)]
struct Progress {
    /// `None` until the network step has ended.
    network: Option<Result<(), String>>,
    /// Opened by the thread, taken by the event loop.
    buttons: Buttons,
    /// The thread's work has ended (or the thread died).
    done: bool,
}

#[derive(Debug)]
struct Shared {
    /// The thread's id once it runs, 0 before.
    tid: AtomicI32,
    /// Someone waits: the thread must run at the normal policy.
    raised: AtomicBool,
    progress: Mutex<Progress>,
    changed: Condvar,
    /// Readable once the work has ended: wakes the event loop.
    wake: EventFd,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Progress> {
        // A panic while holding the lock leaves plain data behind.
        self.progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wait_until(&self, ready: impl Fn(&Progress) -> bool) -> MutexGuard<'_, Progress> {
        let mut progress = self.lock();
        while !ready(&progress) {
            progress = self
                .changed
                .wait(progress)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        progress
    }

    /// Raises the thread to `SCHED_OTHER`, once. The thread checks
    /// `raised` after lowering itself, so whichever of the two runs second
    /// wins.
    fn raise(&self) {
        if self.raised.swap(true, Ordering::SeqCst) {
            return;
        }
        let tid = self.tid.load(Ordering::SeqCst);
        if tid != 0
            && let Err(e) = sys::set_thread_policy(tid, sys::SCHED_OTHER)
        {
            // Gone already (it has finished) is fine.
            if e.raw_os_error() != Some(nix::libc::ESRCH) {
                log::warn!("raise the machine set-up thread's priority: {e}");
            }
        }
    }
}

/// The thread's side: its work reports each piece through this.
#[derive(Debug)]
pub struct Reporter {
    shared: Arc<Shared>,
}

impl Reporter {
    /// The network step has ended with `result`.
    pub fn network(&self, result: Result<(), String>) {
        {
            let mut progress = self.shared.lock();
            // Under the lock, as in `drop`: the woken loop finds the result.
            if let Err(e) = self.shared.wake.write(1) {
                log::warn!("wake the event loop after the network set-up: {e}");
            }
            progress.network = Some(result);
        }
        self.shared.changed.notify_all();
    }

    /// Power-button devices opened for the event loop to watch.
    pub fn buttons(&self, buttons: Buttons) {
        self.shared.lock().buttons.extend(buttons);
    }
}

impl Drop for Reporter {
    /// The work has ended: nobody may wait forever. (A panic unwinds to
    /// here in tests; berth-init's release build aborts on panic, and its
    /// panic hook powers the machine off.)
    fn drop(&mut self) {
        {
            let mut progress = self.shared.lock();
            if progress.network.is_none() {
                progress.network = Some(Err(
                    "the machine set-up thread ended before the network was configured".to_owned(),
                ));
            }
            // Under the lock: whoever sees `done` also finds the eventfd
            // readable, and the event loop woken by it finds `done`.
            if let Err(e) = self.shared.wake.write(1) {
                log::warn!("wake the event loop after the machine set-up: {e}");
            }
            progress.done = true;
        }
        self.shared.changed.notify_all();
    }
}

/// The waiting side; clones share the one thread.
#[derive(Debug, Clone)]
pub struct MachineSetup {
    shared: Arc<Shared>,
}

impl MachineSetup {
    /// Runs `work` in a new thread at `SCHED_IDLE` priority.
    pub fn start(work: impl FnOnce(&Reporter) + Send + 'static) -> Result<Self, MachineSetupError> {
        Self::start_after(|| {}, work)
    }

    /// [`Self::start`], with `first` run in the thread before anything
    /// else (tests hold the thread there).
    fn start_after(
        first: impl FnOnce() + Send + 'static,
        work: impl FnOnce(&Reporter) + Send + 'static,
    ) -> Result<Self, MachineSetupError> {
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|source| MachineSetupError::EventFd { source })?;
        let shared = Arc::new(Shared {
            tid: AtomicI32::new(0),
            raised: AtomicBool::new(false),
            progress: Mutex::new(Progress::default()),
            changed: Condvar::new(),
            wake,
        });
        let reporter = Reporter {
            shared: Arc::clone(&shared),
        };
        std::thread::Builder::new()
            .name("machine-setup".to_owned())
            .stack_size(256 * 1024)
            .spawn(move || {
                first();
                let shared = Arc::clone(&reporter.shared);
                shared.tid.store(sys::gettid(), Ordering::SeqCst);
                if let Err(e) = sys::set_thread_policy(0, sys::SCHED_IDLE) {
                    log::warn!("machine set-up at idle priority: {e} (it runs at the normal one)");
                }
                if shared.raised.load(Ordering::SeqCst) {
                    let _ = sys::set_thread_policy(0, sys::SCHED_OTHER);
                }
                work(&reporter);
            })
            .map_err(|source| MachineSetupError::Thread { source })?;
        Ok(Self { shared })
    }

    /// Waits until the network step has ended; its result.
    pub fn wait_network(&self) -> Result<(), String> {
        self.shared.raise();
        let progress = self.shared.wait_until(|p| p.network.is_some());
        progress.network.clone().unwrap_or(Ok(()))
    }

    /// Whether the network step has ended (well or not), without waiting.
    /// Raises the thread first: a unit waits for it (or starts now). The
    /// event loop is woken (the eventfd) when it ends.
    pub fn network_ended(&self) -> bool {
        // Raised before the lock is taken: the thread may hold it.
        self.shared.raise();
        self.shared.lock().network.is_some()
    }

    /// Whether the whole set-up has ended, without waiting. Raises the
    /// thread first (`ready` waits for it). The eventfd says when.
    pub fn ended(&self) -> bool {
        self.shared.raise();
        self.shared.lock().done
    }

    /// From now on the thread runs at the normal policy. PID 1 calls this
    /// once a service runs: a busy service would starve an idle-priority
    /// thread, and with it PID 1 whenever it needs a lock the thread holds
    /// (the log's, the allocator's, the kernel's rtnl).
    pub fn raise(&self) {
        self.shared.raise();
    }

    /// Waits until the whole set-up has ended.
    pub fn wait_done(&self) {
        self.shared.raise();
        drop(self.shared.wait_until(|p| p.done));
    }

    /// Whether the whole set-up has ended.
    pub fn is_done(&self) -> bool {
        self.shared.lock().done
    }

    /// The power buttons opened so far (each handed out once).
    pub fn take_buttons(&self) -> Buttons {
        std::mem::take(&mut self.shared.lock().buttons)
    }

    /// Readable once the set-up has ended; [`Self::clear_wake`] empties it.
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.shared.wake.as_fd()
    }

    pub fn clear_wake(&self) {
        let _ = self.shared.wake.read();
    }

    /// The thread's id once it has started (0 before).
    #[cfg(test)]
    fn thread_id(&self) -> i32 {
        self.shared.tid.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    fn policy(tid: i32) -> i32 {
        sys::thread_policy(tid).unwrap()
    }

    /// Polls until `tid` runs under `want`.
    fn wait_for_policy(tid: i32, want: i32, what: &str) {
        let until = Instant::now() + Duration::from_secs(10);
        while policy(tid) != want {
            assert!(Instant::now() < until, "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The thread's id once it has started and lowered itself.
    fn lowered(setup: &MachineSetup) -> i32 {
        let until = Instant::now() + Duration::from_secs(10);
        while setup.thread_id() == 0 {
            assert!(Instant::now() < until, "the thread never started");
            std::thread::sleep(Duration::from_millis(1));
        }
        // It lowers itself right after recording its id.
        wait_for_policy(setup.thread_id(), sys::SCHED_IDLE, "never at SCHED_IDLE");
        setup.thread_id()
    }

    #[test]
    fn runs_at_idle_priority_until_waited_for() {
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (policy_tx, policy_rx) = mpsc::channel();
        let setup = MachineSetup::start(move |r| {
            go_rx.recv().unwrap();
            policy_tx.send(policy(0)).unwrap();
            r.network(Ok(()));
            go_rx.recv().unwrap();
        })
        .unwrap();
        let tid = lowered(&setup);
        // A waiter raises it before waiting.
        let waiter = {
            let setup = setup.clone();
            std::thread::spawn(move || setup.wait_network())
        };
        wait_for_policy(tid, sys::SCHED_OTHER, "the waiter did not raise it");
        go_tx.send(()).unwrap();
        assert_eq!(waiter.join().unwrap(), Ok(()));
        assert_eq!(policy_rx.recv().unwrap(), sys::SCHED_OTHER);
        // The end of the network step wakes the event loop.
        assert!(sys::poll_readable(setup.wake_fd(), 0).unwrap());
        setup.clear_wake();
        assert!(setup.network_ended());
        assert!(!setup.is_done());
        go_tx.send(()).unwrap();
        setup.wait_done();
        assert!(setup.is_done());
        assert!(sys::poll_readable(setup.wake_fd(), 0).unwrap());
    }

    #[test]
    fn asking_without_waiting_raises_the_thread() {
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let setup = MachineSetup::start(move |r| {
            go_rx.recv().unwrap();
            r.network(Ok(()));
            go_rx.recv().unwrap();
        })
        .unwrap();
        let tid = lowered(&setup);
        assert!(!setup.network_ended());
        assert_eq!(policy(tid), sys::SCHED_OTHER);
        assert!(!sys::poll_readable(setup.wake_fd(), 0).unwrap());
        go_tx.send(()).unwrap();
        // Woken when the network step ends; the rest is still going.
        assert!(sys::poll_readable(setup.wake_fd(), 10_000).unwrap());
        assert!(setup.network_ended());
        assert!(!setup.ended());
        go_tx.send(()).unwrap();
        setup.wait_done();
        assert!(setup.ended());
    }

    #[test]
    fn a_raise_before_the_thread_lowers_itself_wins() {
        let (hold_tx, hold_rx) = mpsc::channel::<()>();
        let (policy_tx, policy_rx) = mpsc::channel();
        let setup = MachineSetup::start_after(
            move || hold_rx.recv().unwrap(),
            move |_| policy_tx.send(policy(0)).unwrap(),
        )
        .unwrap();
        // The thread has not recorded its id: the raise is only the flag,
        // which the thread finds after lowering itself.
        setup.raise();
        assert_eq!(setup.thread_id(), 0);
        hold_tx.send(()).unwrap();
        assert_eq!(policy_rx.recv().unwrap(), sys::SCHED_OTHER);
        setup.wait_done();
    }

    #[test]
    fn network_errors_and_buttons_reach_the_waiters() {
        let file = File::open("/dev/null").unwrap();
        let setup = MachineSetup::start(move |r| {
            r.network(Err("interface eth0 not found".to_owned()));
            r.buttons(vec![(PathBuf::from("/dev/input/event0"), file)]);
        })
        .unwrap();
        setup.wait_done();
        assert!(setup.network_ended() && setup.ended());
        assert_eq!(
            setup.wait_network(),
            Err("interface eth0 not found".to_owned())
        );
        // The eventfd says the work has ended.
        assert!(sys::poll_readable(setup.wake_fd(), 0).unwrap());
        setup.clear_wake();
        assert!(!sys::poll_readable(setup.wake_fd(), 0).unwrap());
        let buttons = setup.take_buttons();
        assert_eq!(buttons.len(), 1);
        assert_eq!(buttons[0].0, PathBuf::from("/dev/input/event0"));
        assert!(setup.take_buttons().is_empty());
    }

    #[test]
    fn a_thread_that_dies_early_releases_its_waiters() {
        let setup = MachineSetup::start(|_| panic!("module loader exploded")).unwrap();
        // Neither waits forever.
        setup.wait_done();
        let err = setup.wait_network().unwrap_err();
        assert!(
            err.contains("ended before the network was configured"),
            "{err}"
        );
        assert!(sys::poll_readable(setup.wake_fd(), 0).unwrap());
    }
}
