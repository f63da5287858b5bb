//! The harness of the ring-2 tests: `berth-init` as PID 1 of an
//! `unshare --pid --fork --mount --mount-proc` namespace, its console lines
//! collected and waited for with generous timeouts (never asserted on time).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_berth-init");
pub const BUSYBOX: &str = "/bin/busybox";
pub const WAIT: Duration = Duration::from_secs(30);

/// The static musl berth-init, as a machine runs it, built once per test
/// binary with the release profile into `target/static-check` (where the
/// `static_binary` test builds it: the second build is a no-op).
pub fn static_bin() -> PathBuf {
    static STATIC: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    STATIC
        .get_or_init(|| {
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
            let target_dir = workspace.join("target/static-check");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let out = Command::new(cargo)
                .current_dir(workspace)
                .args(["build", "--release", "--locked", "--target", "x86_64-unknown-linux-musl"])
                .args(["-p", "berth-init", "--bin", "berth-init"])
                .env("CARGO_TARGET_DIR", &target_dir)
                .output()
                .expect("run cargo");
            assert!(
                out.status.success(),
                "static build of berth-init failed (needs `rustup target add x86_64-unknown-linux-musl` and `apt-get install musl-tools lld`):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            target_dir.join("x86_64-unknown-linux-musl/release/berth-init")
        })
        .clone()
}

pub fn prerequisites() {
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

pub struct Log {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

/// berth-init running as PID 1 of its own namespaces.
pub struct Pid1 {
    pub child: Child,
    log: Arc<Log>,
    pub dir: PathBuf,
    status: Option<ExitStatus>,
    in_namespace: bool,
    /// The cgroup of this PID 1's units when the harness chose it (tests
    /// run side by side, and units of one name must not meet there).
    pub cgroup: Option<PathBuf>,
}

/// A parent cgroup for one PID 1 of this test process, unless the test
/// gave its own.
fn own_cgroup_parent(args: &[String]) -> Option<String> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    if args.iter().any(|a| a == "--cgroup-parent") {
        return None;
    }
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    Some(format!("berth-test-pid1-{}-{n}", std::process::id()))
}

/// The host's cgroup2 mount.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    berth_runtime::cgroup::find_cgroup2_mount(&mountinfo)
}

/// Removes a units' parent cgroup and what is left below it (emptied by
/// the kill of their PID 1; the kernel may take a moment).
fn remove_cgroup_tree(dir: &Path) {
    for _ in 0..200 {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        match std::fs::remove_dir(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => return,
        }
    }
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("berth-pid1-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Pid1 {
    pub fn start(tag: &str, manifest: &str) -> Self {
        Self::start_with(tag, manifest, true)
    }

    /// `in_namespace`: PID 1 of a new pid namespace, or a plain process.
    pub fn start_with(tag: &str, manifest: &str, in_namespace: bool) -> Self {
        prerequisites();
        Self::launch(temp_dir(tag), manifest, in_namespace, &[], Path::new(BIN))
    }

    /// PID 1 of a new pid namespace with extra arguments, in `dir` (made
    /// by [`temp_dir`], removed on drop).
    pub fn start_in(dir: PathBuf, manifest: &str, args: &[String]) -> Self {
        prerequisites();
        Self::launch(dir, manifest, true, args, Path::new(BIN))
    }

    /// [`Pid1::start_in`] with another berth-init binary.
    pub fn start_binary_in(dir: PathBuf, manifest: &str, args: &[String], bin: &Path) -> Self {
        prerequisites();
        Self::launch(dir, manifest, true, args, bin)
    }

    fn launch(
        dir: PathBuf,
        manifest: &str,
        in_namespace: bool,
        args: &[String],
        bin: &Path,
    ) -> Self {
        let path = dir.join("manifest.json");
        std::fs::write(&path, manifest).unwrap();
        let parent = own_cgroup_parent(args);
        let cgroup = parent
            .as_ref()
            .and_then(|p| cgroup2_mount().map(|m| m.join(p)));
        let mut cmd = if in_namespace {
            let mut c = Command::new("unshare");
            c.args(["--pid", "--fork", "--mount", "--mount-proc"])
                .arg(bin);
            c
        } else {
            Command::new(bin)
        };
        let mut child = cmd
            .arg("--manifest")
            .arg(&path)
            .args(args)
            .args(parent.iter().flat_map(|p| ["--cgroup-parent", p]))
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
            cgroup,
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.log.lines.lock().unwrap().clone()
    }

    /// The delays of `berth: service NAME exited ..., restart in Nms`
    /// marker lines, in order; `exit` is the part after "exited ", e.g.
    /// "status=3".
    pub fn restart_delays(&self, unit: &str, exit: &str) -> Vec<u64> {
        let marker = format!("berth: service {unit} exited {exit}, restart in ");
        self.lines()
            .iter()
            .filter_map(|l| l.split_once(&marker))
            .map(|(_, delay)| {
                delay
                    .trim_end_matches("ms")
                    .parse()
                    .unwrap_or_else(|e| panic!("restart delay {delay:?}: {e}"))
            })
            .collect()
    }

    pub fn dump(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits for a line containing `needle`; returns it.
    pub fn wait_for(&self, needle: &str) -> String {
        self.wait_for_nth(needle, 1)
    }

    /// Waits until `n` lines contain `needle`; returns the n-th.
    pub fn wait_for_nth(&self, needle: &str, n: usize) -> String {
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
    pub fn index_of(&self, needle: &str) -> usize {
        self.lines()
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line {needle:?} in:\n{}", self.dump()))
    }

    /// The host pid of berth-init (the child of unshare).
    pub fn init_pid(&self) -> i32 {
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

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.init_pid()), sig).unwrap();
    }

    /// Host pid of the process that is `ns_pid` inside our namespace.
    pub fn host_pid(&self, ns_pid: i32) -> i32 {
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

    /// Host pid of the process that is `pid` in PID 1's namespace, also
    /// when it lives in a nested (container) pid namespace: the second
    /// NSpid entry is the pid one level below the host.
    pub fn host_pid_nested(&self, pid: i32) -> i32 {
        let init = self.init_pid();
        for host in descendants(init) {
            let status =
                std::fs::read_to_string(format!("/proc/{host}/status")).unwrap_or_default();
            let nspid: Vec<i32> = status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .unwrap_or("")
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            if nspid.get(1) == Some(&pid) {
                return host;
            }
        }
        panic!("no process {pid} below PID 1; it said:\n{}", self.dump());
    }

    /// Host pids of every process in our pid namespace.
    pub fn namespace_pids(&self) -> Vec<i32> {
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
    pub fn zombies(&self) -> Vec<i32> {
        self.namespace_pids()
            .into_iter()
            .filter(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .collect()
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
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
        if let Some(cgroup) = &self.cgroup {
            remove_cgroup_tree(cgroup);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect()
}

pub fn children_of(parent: i32) -> Vec<i32> {
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
pub fn sh(name: &str, script: &str, extra: &str) -> String {
    let script = serde_json::to_string(script).unwrap();
    format!(r#"{{"name":"{name}","host":true,"command":["{BUSYBOX}","sh","-c",{script}]{extra}}}"#)
}

pub fn manifest(tasks: &[String], services: &[String]) -> String {
    format!(
        r#"{{"version":1,"tasks":[{}],"services":[{}]}}"#,
        tasks.join(","),
        services.join(",")
    )
}

pub fn ns_pid_of(line: &str) -> i32 {
    line.rsplit_once("pid=")
        .and_then(|(_, p)| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}

/// Every process below `pid` (children, their children, ...).
pub fn descendants(pid: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = all_pids()
        .into_iter()
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let rest = stat.rsplit_once(')')?.1.to_owned();
            let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((p, ppid))
        })
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for (p, pp) in &parents {
            if *pp == parent {
                out.push(*p);
                frontier.push(*p);
            }
        }
    }
    out
}

/// Whether `pid` is a zombie.
pub fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_default()
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}
