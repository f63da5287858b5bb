//! The `Vm`'s own handling of QEMU — its locks, its threads, its console
//! pipe — against a stand-in QEMU (common/standin.rs): no guest, no real
//! QEMU, seconds.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use berth_qemu::{Vm, VmError};
use common::standin::{Monitor, StandIn};

/// Generous bound for a stand-in to do anything at all.
const SOON: Duration = Duration::from_secs(10);

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

/// Set in the child process of the tests below that need a test that
/// fails: how it fails.
const FAILING_CHILD: &str = "BERTH_QEMU_TEST_FAILING_CHILD";

/// A test that fails while its Vm is in scope, run in a child process by
/// the tests below (with [`FAILING_CHILD`] set to `assert` or `or_dump`);
/// passes at once anywhere else.
#[test]
fn failing_test_with_a_vm() {
    let Some(how) = std::env::var_os(FAILING_CHILD) else {
        return;
    };
    let standin = StandIn::new(
        &format!("lifecycle-failing-child-{}", how.to_string_lossy()),
        "echo 'stand-in: first line'; echo 'stand-in: last line'",
        Monitor::Answers,
    );
    let vm = Vm::boot(&standin.appliance, &standin.config()).unwrap();
    vm.wait_for_line("stand-in: last line", SOON).unwrap();
    if how == "or_dump" {
        // Prints the log itself, then fails.
        vm.or_dump(vm.wait_for_line("never", Duration::from_millis(10)))
            .unwrap();
    }
    assert_eq!(vm.count_lines("stand-in:"), 3, "a plain assert fails");
}

/// Runs `failing_test_with_a_vm` failing `how`; returns its captured
/// output, which libtest prints after the failed test's name, and the
/// whole output, for messages.
fn run_failing_test(how: &str) -> (String, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "failing_test_with_a_vm", "--test-threads=1"])
        .env(FAILING_CHILD, how)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(101), "{report}");
    let failure = stdout
        .split("---- failing_test_with_a_vm stdout ----")
        .nth(1)
        .unwrap_or_else(|| panic!("no captured output\n{report}"));
    (failure.to_string(), report)
}

/// The QEMU ring's "on failure print the whole serial log": a test that
/// panics with a Vm in scope shows the console with its failure, without
/// calling `or_dump` or `print_serial_log` itself.
#[test]
fn a_failing_test_shows_the_whole_serial_log() {
    let (failure, report) = run_failing_test("assert");
    assert!(failure.contains("a plain assert fails"), "{report}");
    let console = failure
        .split_once("----- serial console (")
        .and_then(|(_, rest)| rest.split_once("----- end of serial console -----"))
        .map(|(console, _)| console)
        .unwrap_or_else(|| panic!("no serial console\n{report}"));
    assert!(
        console.contains("stand-in: first line\nstand-in: last line\n"),
        "{report}"
    );
}

/// A test that printed the log itself (`or_dump`) does not get it twice.
#[test]
fn a_log_printed_already_is_not_printed_again() {
    let (failure, report) = run_failing_test("or_dump");
    assert!(failure.contains("LineTimeout"), "{report}");
    assert!(failure.contains("stand-in: last line"), "{report}");
    assert_eq!(
        failure.matches("----- serial console (").count(),
        1,
        "{report}"
    );
}

/// QEMU's parent-death signal (`setpriv --pdeathsig KILL`) fires when the
/// thread that spawned it ends (prctl(2)), which must not be the thread
/// that called `boot`: a Vm booted in a thread and used after it ended
/// keeps its QEMU.
#[test]
fn qemu_outlives_the_thread_that_booted_it() {
    let standin = StandIn::new(
        "lifecycle-boot-thread",
        "echo 'stand-in: up'",
        Monitor::Answers,
    );
    let (appliance, config) = (standin.appliance.clone(), standin.config());
    let vm = std::thread::spawn(move || Vm::boot(&appliance, &config))
        .join()
        .unwrap()
        .unwrap();
    // The signal follows the thread's end within microseconds.
    match vm.wait_exit(Duration::from_millis(500)) {
        Err(VmError::ExitTimeout { .. }) => {}
        other => panic!("QEMU ended with the thread that booted it: {other:?}"),
    }
    vm.write_console(b"ping\n").unwrap();
    vm.wait_for_line("stand-in: got ping", SOON).unwrap();
    vm.qmp_execute("query-status", None).unwrap();
    assert!(standin.is_running());
    assert_eq!(vm.try_exit().unwrap(), None);
}
