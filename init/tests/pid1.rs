//! Ring 2: the real `berth-init` binary as PID 1 of an
//! `unshare --pid --fork --mount --mount-proc` namespace, supervising host
//! busybox services. Needs root, util-linux `unshare` and busybox-static;
//! a missing prerequisite fails the test with an install hint.
//!
//! The tests read marker lines from PID 1's console (its stdout) and wait
//! for them with generous timeouts; they never assert on durations.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn boot_tasks_then_services_in_dependency_order_and_reverse_stop() {
    let forever = "trap 'echo bye; exit 0' TERM; echo up; while true; do sleep 0.1; done";
    let m = manifest(
        &[
            sh("first", "echo task one", ""),
            sh("second", "echo task two", ""),
        ],
        &[
            sh("c", forever, r#","depends_on":["b"]"#),
            sh("b", forever, r#","depends_on":["a"]"#),
            sh("a", forever, ""),
        ],
    );
    let mut p = Pid1::start("order", &m);
    p.wait_for("berth: ready");
    let order = [
        "berth: task first started pid=",
        "first: task one",
        "berth: task first exited status=0",
        "berth: task second started pid=",
        "berth: task second exited status=0",
        "berth: service a started pid=",
        "berth: service b started pid=",
        "berth: service c started pid=",
        "berth: ready",
    ];
    let idx: Vec<usize> = order.iter().map(|n| p.index_of(n)).collect();
    assert!(
        idx.windows(2).all(|w| w[0] < w[1]),
        "out of order {idx:?}:\n{}",
        p.dump()
    );
    for s in ["a", "b", "c"] {
        p.wait_for(&format!("{s}: up"));
    }

    p.signal(nix::sys::signal::Signal::SIGTERM);
    let status = p.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", p.dump());
    // c depends on b depends on a: each is stopped only once its dependents are down.
    let stop = [
        "berth: service c stopping: sent SIGTERM",
        "berth: service c stopped (exited status=0)",
        "berth: service b stopping: sent SIGTERM",
        "berth: service b stopped (exited status=0)",
        "berth: service a stopping: sent SIGTERM",
        "berth: service a stopped (exited status=0)",
        "berth: exiting status=0",
    ];
    let idx: Vec<usize> = stop.iter().map(|n| p.index_of(n)).collect();
    assert!(
        idx.windows(2).all(|w| w[0] < w[1]),
        "stop order {idx:?}:\n{}",
        p.dump()
    );
}

#[test]
fn crash_loop_backs_off_with_growing_delays_until_start_limit() {
    let m = manifest(
        &[],
        &[
            sh(
                "crash",
                "echo crashing; exit 3",
                r#","restart":{"policy":"always","backoff":{"initial":"100ms","factor":2,"max":"10s"},"start_limit":{"count":5,"interval":"1m"}}"#,
            ),
            sh("steady", "while true; do sleep 0.2; done", ""),
        ],
    );
    let mut p = Pid1::start("crash", &m);
    let failed = p.wait_for("berth: service crash failed: start limit reached");
    assert!(failed.contains("(5 starts in 1m)"), "{failed}");
    let delays = p.restart_delays("crash", "status=3");
    assert_eq!(delays, vec![100, 200, 400, 800], "{}", p.dump());
    assert_eq!(
        p.lines()
            .iter()
            .filter(|l| l.contains("berth: service crash started pid="))
            .count(),
        5
    );
    // One failing service does not stop the others, and PID 1 stays up.
    p.signal(nix::sys::signal::Signal::SIGUSR1);
    p.wait_for(
        "berth: status service crash state=failed pid=0 restarts=4 last=exited status=3 code=3",
    );
    p.wait_for("berth: status service steady state=running");
    p.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

#[test]
fn kill_9_of_a_service_restarts_it() {
    let m = manifest(
        &[],
        &[sh(
            "victim",
            "echo alive; exec sleep 1000",
            r#","restart":{"policy":"on-failure","backoff":{"initial":"200ms"}}"#,
        )],
    );
    let mut p = Pid1::start("kill9", &m);
    let started = p.wait_for("berth: service victim started pid=");
    p.wait_for("victim: alive");
    let host = p.host_pid(ns_pid_of(&started));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(host),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    p.wait_for("berth: service victim killed by signal 9, restart in 200ms");
    let again = p.wait_for_nth("berth: service victim started pid=", 2);
    assert_ne!(ns_pid_of(&again), ns_pid_of(&started));
    p.wait_for_nth("victim: alive", 2);
    p.signal(nix::sys::signal::Signal::SIGUSR1);
    p.wait_for("berth: status service victim state=running");
    let status = p.wait_for("berth: status service victim");
    assert!(
        status.contains("restarts=1 last=killed by signal 9 code=137"),
        "{status}"
    );
    p.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

#[test]
fn thousand_orphans_leave_no_zombies() {
    // Each `( … &)` subshell exits at once, so its `sleep 1` is orphaned and
    // reparented to PID 1, which must reap all 1000 of them.
    let m = manifest(
        &[],
        &[sh(
            "spawner",
            "for i in $(seq 1000); do (sleep 1 &) ; done; echo spawned; exec sleep 1000",
            "",
        )],
    );
    let mut p = Pid1::start("orphans", &m);
    p.wait_for("spawner: spawned");
    // Wait until only PID 1 and the spawner are left, with no zombie.
    let deadline = Instant::now() + WAIT;
    loop {
        let (count, zombies) = (p.namespace_pids().len(), p.zombies());
        if count == 2 && zombies.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{count} processes, zombies {zombies:?} left:\n{}",
            p.dump()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    p.signal(nix::sys::signal::Signal::SIGUSR1);
    let line = p.wait_for("berth: status orphans reaped=");
    let reaped: u64 = line.rsplit_once('=').unwrap().1.parse().unwrap();
    assert!(
        reaped >= 1000,
        "only {reaped} orphans reaped:\n{}",
        p.dump()
    );
    p.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

#[test]
fn exit_codes_and_signals_are_recorded() {
    let no = r#","restart":{"policy":"no"}"#;
    let mut services: Vec<String> = [0, 1, 42, 255]
        .iter()
        .map(|c| sh(&format!("code{c}"), &format!("exit {c}"), no))
        .collect();
    services.push(sh("term", "kill -TERM $$; sleep 5", no));
    services.push(sh("kill", "kill -KILL $$; sleep 5", no));
    services.push(sh("segv", "kill -SEGV $$; sleep 5", no));
    let mut p = Pid1::start("codes", &manifest(&[], &services));
    for c in [0, 1, 42, 255] {
        p.wait_for(&format!(
            "berth: service code{c} exited status={c}, not restarting"
        ));
    }
    for (name, sig) in [("term", 15), ("kill", 9), ("segv", 11)] {
        p.wait_for(&format!(
            "berth: service {name} killed by signal {sig}, not restarting"
        ));
    }
    p.signal(nix::sys::signal::Signal::SIGUSR1);
    for (name, code) in [
        ("code42", 42),
        ("code255", 255),
        ("term", 143),
        ("kill", 137),
        ("segv", 139),
    ] {
        let line = p.wait_for(&format!("berth: status service {name} "));
        assert!(
            line.contains("state=exited")
                && line.contains(&format!(" code={code} since="))
                && line.contains(" why=\""),
            "{line}"
        );
    }
    p.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

#[test]
fn a_service_killed_by_a_real_time_signal_is_reaped_and_restarted() {
    // Signals 34..64 have no name in nix's `Signal`, whose waitpid fails
    // with EINVAL on them after the kernel has reaped the child. The second
    // service ends in the same moment, behind it in the same SIGCHLD.
    let again = r#","restart":{"policy":"on-failure","backoff":{"initial":"100ms"}}"#;
    let m = manifest(
        &[],
        &[
            sh("rt", "sleep 0.3; kill -40 $$; sleep 5", again),
            sh("plain", "sleep 0.3; exit 3", again),
        ],
    );
    let mut p = Pid1::start("rtsig", &m);
    p.wait_for("berth: service rt killed by signal 40, restart in 100ms");
    p.wait_for("berth: service plain exited status=3, restart in 100ms");
    // Both come back: their exits were not lost.
    for name in ["rt", "plain"] {
        p.wait_for_nth(&format!("berth: service {name} started pid="), 2);
    }
    p.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

#[test]
fn the_status_report_is_printed_whatever_the_log_level() {
    // `error` hides PID 1's own chatter (started, exited), not the report
    // an operator asks for.
    let m = format!(
        r#"{{"version":1,"log":{{"level":"error"}},"services":[{}]}}"#,
        sh("quiet", "echo ready; exec sleep 100", "")
    );
    let mut p = Pid1::start("status-level", &m);
    p.wait_for("quiet: ready");
    p.signal(nix::sys::signal::Signal::SIGUSR1);
    p.wait_for("berth: status service quiet state=running");
    p.wait_for("berth: status orphans reaped=0");
    assert!(
        !p.lines()
            .iter()
            .any(|l| l.contains("service quiet started")),
        "{}",
        p.dump()
    );
    p.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

#[test]
fn flooding_service_does_not_delay_another() {
    let m = format!(
        r#"{{"version":1,"log":{{"rate":{{"lines_per_sec":200,"burst":200}}}},"services":[{},{}]}}"#,
        sh(
            "flood",
            "exec yes 0123456789012345678901234567890123456789",
            ""
        ),
        sh(
            "quiet",
            "sleep 0.5; for i in 1 2 3 4 5; do echo tick $i; sleep 0.2; done; exec sleep 1000",
            r#","depends_on":["flood"]"#
        ),
    );
    let mut p = Pid1::start("flood", &m);
    p.wait_for("berth: service flood: ");
    for i in 1..=5 {
        p.wait_for(&format!("quiet: tick {i}"));
    }
    let dropped = p.wait_for("lines dropped (rate limit)");
    assert!(dropped.contains("berth: service flood: "), "{dropped}");
    p.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

#[test]
fn sigterm_kills_a_service_that_ignores_it_after_its_timeout() {
    let m = manifest(
        &[],
        &[
            sh(
                "stubborn",
                "trap '' TERM; echo up; while true; do sleep 0.1; done",
                r#","stop_timeout":"1s""#,
            ),
            sh(
                "polite",
                "trap 'exit 0' TERM; echo up; while true; do sleep 0.1; done",
                "",
            ),
        ],
    );
    let mut p = Pid1::start("stubborn", &m);
    // Both traps set before the signal (a SIGTERM before polite's trap
    // would kill it, not make it exit 0).
    p.wait_for("stubborn: up");
    p.wait_for("polite: up");
    p.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
    p.wait_for("berth: service stubborn did not stop within 1s: sent SIGKILL");
    p.wait_for("berth: service stubborn stopped (killed by signal 9)");
    p.wait_for("berth: service polite stopped (exited status=0)");
}

#[test]
fn failing_boot_task_stops_the_boot() {
    let m = manifest(
        &[sh("broken", "echo oops; exit 4", "")],
        &[sh("never", "echo should not run", "")],
    );
    let mut p = Pid1::start("task", &m);
    assert_eq!(p.wait_exit().code(), Some(1), "{}", p.dump());
    p.wait_for("berth: fatal: boot task broken failed: exited status=4");
    assert!(!p.dump().contains("service never started"), "{}", p.dump());
}

#[test]
fn invalid_manifest_is_refused_with_a_clear_error() {
    let m = r#"{"version":1,"services":[
        {"name":"a","host":true,"command":["/bin/true"],"depends_on":["b"]},
        {"name":"b","host":true,"command":["/bin/true"],"depends_on":["a"],"stop_timeout":"soon"}]}"#;
    let mut p = Pid1::start("invalid", m);
    assert_eq!(p.wait_exit().code(), Some(1), "{}", p.dump());
    // One line, every problem in it: what reads the console (berth-qemu)
    // takes the fatal line as the reason.
    let line = p.wait_for("berth: fatal: invalid manifest: ");
    assert!(
        line.contains("services.b.stop_timeout: invalid duration \"soon\"")
            && line.contains("; services: dependency cycle: a -> b -> a"),
        "{line}"
    );

    let mut p = Pid1::start(
        "unknown-field",
        r#"{"version":1,"services":[],"colour":"blue"}"#,
    );
    assert_eq!(p.wait_exit().code(), Some(1), "{}", p.dump());
    p.wait_for("berth: fatal: parse manifest at colour: unknown field `colour`");

    // --check says the same without booting anything.
    let dir = temp_dir("check");
    std::fs::write(dir.join("m.json"), m).unwrap();
    let out = Command::new(BIN)
        .arg("--check")
        .arg(dir.join("m.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dependency cycle: a -> b -> a"), "{err}");
    // What it checked against is named: here no layout at all. A build
    // manifest (with `images`, relative bundle paths) is named as one.
    let missing = dir.join("no-layout");
    std::fs::write(
        dir.join("build.json"),
        r#"{"version":1,"images":{"bb":"oci:layout:bb"},"services":[{"name":"a","image":"bb"},{"name":"b","bundle":"bun"}]}"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--images")
        .arg(&missing)
        .arg("--check")
        .arg(dir.join("build.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "(no image layout at {}: --images DIR names one; it has `images`: a build manifest, which `berth-build build` checks",
            missing.display()
        )),
        "{err}"
    );
    // Arguments that are not UTF-8: a usage error for a command; for PID 1
    // (which the kernel gives the command-line words it does not know, as
    // typed) a word like any other, never a panic.
    use std::os::unix::ffi::OsStrExt;
    let odd = std::ffi::OsStr::from_bytes(b"qa\xff");
    let out = Command::new(BIN).arg("--check").arg(odd).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "berth-init: argument \"qa\\xFF\" is not UTF-8\n"
    );
    std::fs::write(dir.join("ok.json"), r#"{"version":1}"#).unwrap();
    let out = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount",
            "--mount-proc",
            BIN,
            "--manifest",
        ])
        .arg(dir.join("ok.json"))
        .arg(odd)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // In a pid namespace an unknown word is refused; on a machine it is
    // ignored (`cmdline`).
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with("berth-init: unknown arguments [\"qa\u{fffd}\"]"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unreadable_bundle_fails_its_service_and_the_boot_goes_on() {
    let m = format!(
        r#"{{"version":1,"services":[{{"name":"web","bundle":"/nonexistent/bundle"}},{}]}}"#,
        sh(
            "other",
            "trap 'exit 0' TERM; echo up; while true; do sleep 0.1; done",
            ""
        )
    );
    let mut p = Pid1::start("bundle", &m);
    p.wait_for("other: up");
    p.wait_for(
        "berth: service web failed: web: read /nonexistent/bundle/config.json: No such file or directory (os error 2) (not restarting)",
    );
    p.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

#[test]
fn unknown_image_is_refused_at_boot() {
    let m = r#"{"version":1,"services":[{"name":"web","image":"nginx"}]}"#;
    let mut p = Pid1::start("unknown-image", m);
    assert_eq!(p.wait_exit().code(), Some(1), "{}", p.dump());
    p.wait_for("services.web.image: unknown image \"nginx\" (available: none)");
    p.wait_for("(images from the layout /berth/images)");

    // --check validates against the layout --images names.
    let dir = temp_dir("check-images");
    std::fs::write(dir.join("m.json"), m).unwrap();
    let out = Command::new(BIN)
        .arg("--images")
        .arg(dir.join("no-layout"))
        .arg("--check")
        .arg(dir.join("m.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("services.web.image: unknown image \"nginx\" (available: none)"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn as_a_plain_process_it_reaps_orphans_as_subreaper_and_exits() {
    let m = manifest(
        &[],
        &[
            sh(
                "orphaner",
                "(sleep 0.3 &); (sleep 0.3 &); echo forked; exec sleep 1000",
                "",
            ),
            sh(
                "other",
                "trap 'exit 0' TERM; while true; do sleep 0.1; done",
                "",
            ),
        ],
    );
    let mut p = Pid1::start_with("plain", &m, false);
    p.wait_for("starting as a plain process (subreaper)");
    p.wait_for("orphaner: forked");
    let deadline = Instant::now() + WAIT;
    loop {
        p.signal(nix::sys::signal::Signal::SIGUSR1);
        let n = p
            .lines()
            .iter()
            .filter(|l| l.contains("status orphans reaped="))
            .count();
        let line = p.wait_for_nth("berth: status orphans reaped=", n.max(1));
        if line.ends_with("reaped=2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "orphans not reaped:\n{}",
            p.dump()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    p.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
    p.wait_for("berth: service orphaner stopped (killed by signal 15)");
    p.wait_for("berth: service other stopped (exited status=0)");
    // Nothing it started is left behind.
    assert!(children_of(p.child.id() as i32).is_empty());
}

#[test]
fn missing_program_backs_off_and_hits_the_start_limit() {
    let m = r#"{"version":1,"services":[{"name":"nope","host":true,"command":["/does/not/exist"],
        "restart":{"start_limit":{"count":2,"interval":"1m"},"backoff":{"initial":"100ms"}}}]}"#;
    let mut p = Pid1::start("missing", m);
    p.wait_for(
        "berth: service nope failed to start: nope: exec /does/not/exist: No such file or directory (os error 2), restart in 100ms",
    );
    p.wait_for("berth: service nope failed: start limit reached (2 starts in 1m)");
    p.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

/// A host unit runs in its `cwd`; one that is missing fails its start
/// with the step and the directory, and the unit backs off.
#[test]
fn host_units_run_in_their_cwd() {
    prerequisites();
    let m = manifest(
        &[],
        &[
            sh(
                "here",
                "echo cwd=$(pwd); exec sleep 1000",
                r#","cwd":"/tmp""#,
            ),
            sh(
                "gone",
                "true",
                r#","cwd":"/does/not/exist","restart":{"backoff":{"initial":"100ms"}}"#,
            ),
        ],
    );
    let mut p = Pid1::start("host-cwd", &m);
    p.wait_for("here: cwd=/tmp");
    p.wait_for(&format!(
        "berth: service gone failed to start: gone: change directory to /does/not/exist for {BUSYBOX}: No such file or directory (os error 2), restart in 100ms"
    ));
    p.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

#[test]
fn service_output_goes_to_syslog_over_tcp() {
    use std::io::{BufRead, BufReader};
    prerequisites();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let m = format!(
        r#"{{"version":1,"log":{{"syslog":{{"tcp":"{addr}"}}}},"services":[{}]}}"#,
        sh(
            "talker",
            "echo hello tcp; i=0; while [ $i -lt 50 ]; do echo line $i; sleep 0.05; i=$((i+1)); done; echo done; exec sleep 1000",
            ""
        ),
    );
    let mut p = Pid1::start("syslogtcp", &m);
    // The connection is made by PID 1 without blocking; messages queued
    // before it completes are sent with later ones, one per line (RFC 6587
    // non-transparent framing), facility daemon, severity info.
    listener.set_nonblocking(false).unwrap();
    let (conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let mut lines = BufReader::new(conn).lines();
    let mut got = Vec::new();
    while !got.iter().any(|l: &String| l == "<30>talker: line 10") {
        match lines.next() {
            Some(Ok(l)) => got.push(l),
            other => panic!(
                "syslog over tcp ended ({other:?}); got {got:?}\n{}",
                p.dump()
            ),
        }
    }
    assert!(got.iter().any(|l| l == "<30>talker: hello tcp"), "{got:?}");
    assert!(
        got.iter()
            .any(|l| l.starts_with("<30>berth: service talker started pid=")),
        "{got:?}"
    );
    p.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

#[test]
fn service_output_goes_to_rotated_files_and_syslog() {
    prerequisites();
    let dir = temp_dir("logs");
    let syslog_path = dir.join("syslog.sock");
    let syslog = std::os::unix::net::UnixDatagram::bind(&syslog_path).unwrap();
    syslog.set_read_timeout(Some(WAIT)).unwrap();
    let logs = dir.join("logs");
    let m = format!(
        r#"{{"version":1,"log":{{"files":{{"dir":{},"max_size":"4KiB","keep":2}},"syslog":{{"unix":{}}}}},
            "services":[{}]}}"#,
        serde_json::to_string(&logs).unwrap(),
        serde_json::to_string(&syslog_path).unwrap(),
        sh(
            "talker",
            "echo hello syslog; i=0; while [ $i -lt 400 ]; do echo line $i; i=$((i+1)); done; echo done; exec sleep 1000",
            ""
        ),
    );
    let mut p = Pid1::start("logfiles", &m);
    p.wait_for("talker: done");
    // Syslog: RFC 3164 framing, facility daemon, severity info.
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    while !got.iter().any(|m: &String| m == "<30>talker: hello syslog") {
        let n = syslog
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no syslog message ({e}); got {got:?}"));
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    // Files: 400 lines of ~25 bytes rotate a 4 KiB file; two old ones kept.
    let current = std::fs::read_to_string(logs.join("talker.log")).unwrap();
    assert!(
        current.lines().last().unwrap().ends_with("talker: done"),
        "{current}"
    );
    assert!(current.len() <= 4096);
    for old in ["talker.log.1", "talker.log.2"] {
        let text = std::fs::read_to_string(logs.join(old)).unwrap();
        assert!(
            text.len() <= 4096 && text.lines().all(|l| l.contains("] talker: ")),
            "{old}: {text}"
        );
    }
    assert!(!logs.join("talker.log.3").exists());
    // PID 1's own lines have their file too.
    let own = std::fs::read_to_string(logs.join("berth.log")).unwrap();
    assert!(
        own.contains("] berth: service talker started pid="),
        "{own}"
    );
    p.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The one-shot commands (`--version`, `--help`, `--check`) end by SIGPIPE
/// when their stdout pipe has no reader, as any Unix tool: no panic.
#[test]
fn one_shot_commands_end_quietly_on_a_closed_pipe() {
    use std::os::unix::process::ExitStatusExt;
    for arg in ["--version", "--help"] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(BIN).arg(arg).stdout(writer).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(13),
            "{arg}: {:?}: {stderr}",
            out.status
        );
        assert!(stderr.is_empty(), "{arg}: {stderr}");
    }
}

/// A host unit that starts a daemon (setsid: out of its process group,
/// holding the unit's output pipes) and fails, over and over: each run's
/// daemon goes with it, since the unit's processes live in a cgroup of
/// its own that is killed when its first process is reaped. Neither the
/// daemons nor PID 1's ends of their pipes pile up.
#[test]
fn a_host_units_setsid_daemons_go_with_each_run() {
    let m = manifest(
        &[],
        &[sh(
            "daemonizer",
            "setsid sleep 98712 & sleep 0.2; exit 1",
            r#","restart":{"policy":"always","backoff":{"initial":"50ms","factor":1,"max":"50ms"},"start_limit":{"count":1000,"interval":"1m"}}"#,
        )],
    );
    let p = Pid1::start("setsid", &m);
    assert!(p.cgroup.is_some(), "no cgroup2 mount on this host");
    p.wait_for_nth("berth: service daemonizer exited status=1", 6);
    let sleepers = all_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.ends_with(b"98712\0"))
        })
        .count();
    assert!(
        sleepers <= 1,
        "{sleepers} daemons of earlier runs left:\n{}",
        p.dump()
    );
    p.wait_for("berth: unit daemonizer: killed what its first process left behind (1 in cgroup ");
}

/// The same with the daemon moved into a cgroup below the unit's (as a
/// runtime the unit runs would put a container): it is killed with the
/// unit's cgroup, the cgroup below is removed, and the unit keeps
/// starting instead of finding its cgroup still in use.
#[test]
fn a_host_units_leftovers_in_a_cgroup_below_go_too() {
    let mount = cgroup2_mount().expect("no cgroup2 mount on this host");
    let script = format!(
        "d={}$(sed -n 's/^0:://p' /proc/self/cgroup)/below; mkdir -p $d; \
         sh -c \"echo \\$\\$ > $d/cgroup.procs; exec setsid sleep 98713\" & sleep 0.2; exit 1",
        mount.display()
    );
    let m = manifest(
        &[],
        &[sh(
            "nester",
            &script,
            r#","restart":{"policy":"always","backoff":{"initial":"50ms","factor":1,"max":"50ms"},"start_limit":{"count":1000,"interval":"1m"}}"#,
        )],
    );
    let p = Pid1::start("nested-cgroup", &m);
    p.wait_for_nth("berth: service nester exited status=1", 5);
    let sleepers = all_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.ends_with(b"98713\0"))
        })
        .count();
    assert!(sleepers <= 1, "{sleepers} left:\n{}", p.dump());
    assert!(
        !p.lines().iter().any(|l| l.contains("make its cgroup")),
        "{}",
        p.dump()
    );
}

/// A log directory replaced by a symlink (as a unit with a persistent
/// mount above it could leave it on the data disk) costs the log files,
/// not the boot: one error line, and the services start.
#[test]
fn a_log_directory_that_is_a_symlink_does_not_stop_the_boot() {
    prerequisites();
    let dir = temp_dir("logdir-link");
    std::fs::create_dir_all(dir.join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(dir.join("elsewhere"), dir.join("logs")).unwrap();
    let m = format!(
        r#"{{"version":1,"log":{{"files":{{"dir":{}}}}},"services":[{}]}}"#,
        serde_json::to_string(&dir.join("logs")).unwrap(),
        sh("talker", "echo up; exec sleep 1000", ""),
    );
    let mut p = Pid1::start_in(dir.clone(), &m, &[]);
    p.wait_for("talker: up");
    let line = p.wait_for("no log files this boot");
    assert!(line.contains("symbolic link"), "{line}");
    assert!(
        std::fs::read_dir(dir.join("elsewhere"))
            .unwrap()
            .next()
            .is_none(),
        "nothing written through the link"
    );
    p.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}
