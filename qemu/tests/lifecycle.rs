//! The `Vm`'s own handling of QEMU — its locks, its threads, its console
//! pipe — against a stand-in QEMU (common/standin.rs): no guest, no real
//! QEMU, seconds.

mod common;

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use berth_qemu::Vm;
use common::standin::{Monitor, StandIn};

/// `kill()` in one thread while others wait for the exit (`wait_exit`,
/// `try_exit`), as `berth-qemu run` does on a second Ctrl-C whose `quit`
/// failed: every call returns, whichever gets its locks first. (They once
/// took the same two locks in opposite orders.)
#[test]
fn kill_racing_waits_for_the_exit_always_returns() {
    let (done, finished) = mpsc::channel();
    let race = std::thread::spawn(move || {
        for i in 0..30 {
            let standin = StandIn::new(
                &format!("lifecycle-race-{i}"),
                "echo 'stand-in: up'",
                Monitor::Answers,
            );
            let vm = Arc::new(Vm::boot(&standin.appliance, &standin.config()).unwrap());
            let waiter = {
                let vm = Arc::clone(&vm);
                std::thread::spawn(move || vm.wait_exit(Duration::from_secs(600)).map(drop))
            };
            let poller = {
                let vm = Arc::clone(&vm);
                std::thread::spawn(move || {
                    loop {
                        match vm.try_exit() {
                            Ok(None) => std::thread::yield_now(),
                            other => return other.map(drop),
                        }
                    }
                })
            };
            vm.kill().unwrap();
            waiter.join().unwrap().unwrap();
            poller.join().unwrap().unwrap();
            assert!(!standin.is_running());
        }
        let _ = done.send(());
    });
    match finished.recv_timeout(Duration::from_secs(120)) {
        Ok(()) => race.join().unwrap(),
        // It failed: its panic, here.
        Err(mpsc::RecvTimeoutError::Disconnected) => race.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("kill() and the waits for the exit deadlocked")
        }
    }
}
