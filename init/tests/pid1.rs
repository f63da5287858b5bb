//! Ring 2: the real `berth-init` binary as PID 1 of an
//! `unshare --pid --fork --mount --mount-proc` namespace, supervising host
//! busybox services. Needs root, util-linux `unshare` and busybox-static;
//! a missing prerequisite fails the test with an install hint.
//!
//! The tests read marker lines from PID 1's console (its stdout) and wait
//! for them with generous timeouts; they never assert on durations.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_berth-init");
const BUSYBOX: &str = "/bin/busybox";
const WAIT: Duration = Duration::from_secs(30);

fn prerequisites() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests run berth-init in new pid and mount namespaces: run them as root"
    );
    assert!(
        Path::new(BUSYBOX).exists(),
        "busybox-static missing ({BUSYBOX}): apt-get install busybox-static"
    );
    let unshare = Command::new("unshare").arg("--version").output();
    assert!(
        unshare.is_ok_and(|o| o.status.success()),
        "unshare missing: apt-get install util-linux"
    );
}

struct Log {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

/// berth-init running as PID 1 of its own namespaces.
struct Pid1 {
    child: Child,
    log: Arc<Log>,
    dir: PathBuf,
    status: Option<ExitStatus>,
    in_namespace: bool,
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("berth-pid1-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Pid1 {
    fn start(tag: &str, manifest: &str) -> Self {
        Self::start_with(tag, manifest, true)
    }

    /// `in_namespace`: PID 1 of a new pid namespace, or a plain process.
    fn start_with(tag: &str, manifest: &str, in_namespace: bool) -> Self {
        prerequisites();
        let dir = temp_dir(tag);
        let path = dir.join("manifest.json");
        std::fs::write(&path, manifest).unwrap();
        let mut cmd = if in_namespace {
            let mut c = Command::new("unshare");
            c.args(["--pid", "--fork", "--mount", "--mount-proc", BIN]);
            c
        } else {
            Command::new(BIN)
        };
        let mut child = cmd
            .arg("--manifest")
            .arg(&path)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run unshare");
        let log = Arc::new(Log {
            lines: Mutex::new(Vec::new()),
            changed: Condvar::new(),
        });
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    log.lines.lock().unwrap().push(line);
                    log.changed.notify_all();
                }
            });
        }
        Self {
            child,
            log,
            dir,
            status: None,
            in_namespace,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.log.lines.lock().unwrap().clone()
    }

    fn dump(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits for a line containing `needle`; returns it.
    fn wait_for(&self, needle: &str) -> String {
        self.wait_for_nth(needle, 1)
    }

    /// Waits until `n` lines contain `needle`; returns the n-th.
    fn wait_for_nth(&self, needle: &str, n: usize) -> String {
        let deadline = Instant::now() + WAIT;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            if let Some(line) = lines.iter().filter(|l| l.contains(needle)).nth(n - 1) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {n}× {needle:?}; PID 1 said:\n{}",
                lines.join("\n")
            );
            lines = self.log.changed.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// Position of the first line containing `needle` (must exist).
    fn index_of(&self, needle: &str) -> usize {
        self.lines()
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line {needle:?} in:\n{}", self.dump()))
    }

    /// The host pid of berth-init (the child of unshare).
    fn init_pid(&self) -> i32 {
        let unshare = self.child.id() as i32;
        if !self.in_namespace {
            return unshare;
        }
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(pid) = children_of(unshare).first() {
                return *pid;
            }
            assert!(
                Instant::now() < deadline,
                "berth-init did not start under unshare"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.init_pid()), sig).unwrap();
    }

    /// Host pid of the process that is `ns_pid` inside our namespace.
    fn host_pid(&self, ns_pid: i32) -> i32 {
        let ns = std::fs::read_link(format!("/proc/{}/ns/pid", self.init_pid())).unwrap();
        for pid in all_pids() {
            if std::fs::read_link(format!("/proc/{pid}/ns/pid"))
                .ok()
                .as_ref()
                != Some(&ns)
            {
                continue;
            }
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let nspid = status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .unwrap_or("");
            if nspid.split_whitespace().last().and_then(|p| p.parse().ok()) == Some(ns_pid) {
                return pid;
            }
        }
        panic!(
            "no process {ns_pid} in the namespace; PID 1 said:\n{}",
            self.dump()
        );
    }

    /// Host pids of every process in our pid namespace.
    fn namespace_pids(&self) -> Vec<i32> {
        let ns = std::fs::read_link(format!("/proc/{}/ns/pid", self.init_pid())).unwrap();
        all_pids()
            .into_iter()
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/ns/pid"))
                    .ok()
                    .as_ref()
                    == Some(&ns)
            })
            .collect()
    }

    /// Processes of our namespace in state Z.
    fn zombies(&self) -> Vec<i32> {
        self.namespace_pids()
            .into_iter()
            .filter(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .collect()
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.status = Some(status);
                // Let the readers take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "berth-init did not exit; it said:\n{}",
                self.dump()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pid1 {
    fn drop(&mut self) {
        if self.status.is_none() && self.child.try_wait().ok().flatten().is_none() {
            // Killing PID 1 of the namespace kills everything in it.
            if let Some(pid) = children_of(self.child.id() as i32).first() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect()
}

fn children_of(parent: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            rest.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<i32>().ok())
                == Some(parent)
        })
        .collect()
}

/// A `host: true` unit running `busybox sh -c SCRIPT`.
fn sh(name: &str, script: &str, extra: &str) -> String {
    let script = serde_json::to_string(script).unwrap();
    format!(r#"{{"name":"{name}","host":true,"command":["{BUSYBOX}","sh","-c",{script}]{extra}}}"#)
}

fn manifest(tasks: &[String], services: &[String]) -> String {
    format!(
        r#"{{"version":1,"tasks":[{}],"services":[{}]}}"#,
        tasks.join(","),
        services.join(",")
    )
}

fn ns_pid_of(line: &str) -> i32 {
    line.rsplit_once("pid=")
        .and_then(|(_, p)| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}

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
    let delays: Vec<u64> = p
        .lines()
        .iter()
        .filter(|l| l.contains("berth: service crash exited status=3, restart in "))
        .map(|l| {
            l.rsplit_once("restart in ")
                .unwrap()
                .1
                .trim_end_matches("ms")
                .parse()
                .unwrap()
        })
        .collect();
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
            line.contains("state=exited") && line.ends_with(&format!(" code={code}")),
            "{line}"
        );
    }
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
                "trap 'exit 0' TERM; while true; do sleep 0.1; done",
                "",
            ),
        ],
    );
    let mut p = Pid1::start("stubborn", &m);
    p.wait_for("stubborn: up");
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
    p.wait_for("berth: fatal: invalid manifest:");
    p.wait_for("services.b.stop_timeout: invalid duration \"soon\"");
    p.wait_for("services: dependency cycle: a -> b -> a");

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
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn image_services_are_refused_until_the_container_launcher_lands() {
    let m = r#"{"version":1,"services":[{"name":"web","bundle":"/nonexistent/bundle"}]}"#;
    let mut p = Pid1::start("bundle", m);
    assert_eq!(p.wait_exit().code(), Some(1), "{}", p.dump());
    p.wait_for("web: bundle /nonexistent/bundle is not supported by the host-process launcher");
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
        "berth: service nope failed to start: nope: spawn /does/not/exist: No such file or directory (os error 2), restart in 100ms",
    );
    p.wait_for("berth: service nope failed: start limit reached (2 starts in 1m)");
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
