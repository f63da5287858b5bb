//! Shared fixture of the root integration tests: a busybox bundle laid out
//! from Debian's busybox-static, a private state root, and helpers that run
//! a container in process and collect its output.
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use berth_runtime::{CreateOptions, ExitStatus, Runtime, Stdio};
use serde_json::{Value, json};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Fails (never skips) when a prerequisite is missing.
pub fn require_root_and_busybox() {
    assert!(
        berth_runtime::sys::getuid() == 0,
        "these tests run containers and need root (CI runs cargo test as root)"
    );
    assert!(
        Path::new("/bin/busybox").exists(),
        "busybox-static missing: apt-get install busybox-static"
    );
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = PathBuf::from(format!("/tmp/berth-rt-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A bundle directory with a busybox rootfs and an editable config.
pub struct Bundle {
    pub tmp: TempDir,
    pub config: Value,
}

/// Lays out a busybox rootfs: the static binary plus RELATIVE applet
/// symlinks (`busybox --install -s` would write absolute host paths).
pub fn make_rootfs(rootfs: &Path) {
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        fs::create_dir_all(rootfs.join(d)).expect("create rootfs dir");
    }
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copy busybox");
    let out = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
        }
    }
    fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n",
    )
    .unwrap();
    fs::write(rootfs.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
}

impl Bundle {
    pub fn new() -> Bundle {
        require_root_and_busybox();
        let tmp = TempDir::new("bundle");
        make_rootfs(&tmp.0.join("rootfs"));
        let config = json!({
            "ociVersion": "1.0.2-dev",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": ["true"],
                "env": ["PATH=/bin", "HOME=/root"],
                "cwd": "/"
            },
            "root": {"path": "rootfs", "readonly": false},
            "hostname": "berth-test",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
            ],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
                "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware", "/proc/acpi"],
                "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"]
            }
        });
        Bundle { tmp, config }
    }

    pub fn dir(&self) -> &Path {
        &self.tmp.0
    }

    pub fn rootfs(&self) -> PathBuf {
        self.tmp.0.join("rootfs")
    }

    /// `process.args = ["sh", "-c", script]`.
    pub fn script(&mut self, script: &str) -> &mut Bundle {
        self.config["process"]["args"] = json!(["sh", "-c", script]);
        self
    }

    pub fn write(&self) {
        fs::write(
            self.tmp.0.join("config.json"),
            serde_json::to_vec_pretty(&self.config).unwrap(),
        )
        .unwrap();
    }
}

/// A runtime with a private state root.
pub struct TestRuntime {
    pub rt: Runtime,
    pub root: TempDir,
}

pub fn runtime() -> TestRuntime {
    let root = TempDir::new("root");
    TestRuntime {
        rt: Runtime::new(root.0.join("state")),
        root,
    }
}

/// What a container printed and how it ended.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Unique container ids per test process.
pub fn unique_id(tag: &str) -> String {
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

fn pipe() -> (std::io::PipeReader, OwnedFd) {
    let (r, w) = std::io::pipe().expect("pipe");
    (r, OwnedFd::from(w))
}

/// Creates, starts and waits for a container from the bundle, in process.
pub fn run(bundle: &Bundle) -> Outcome {
    try_run(bundle).unwrap_or_else(|e| panic!("run container: {}", chain(&e)))
}

pub fn try_run(bundle: &Bundle) -> Result<Outcome, berth_runtime::ContainerError> {
    bundle.write();
    let t = runtime();
    let (mut out_r, out_w) = pipe();
    let (mut err_r, err_w) = pipe();
    let opts = CreateOptions {
        stdio: Stdio {
            stdin: None,
            stdout: Some(out_w),
            stderr: Some(err_w),
        },
        init: None,
    };
    let mut c = t.rt.create(&unique_id("run"), bundle.dir(), opts)?;
    c.start()?;
    let status = c.wait()?;
    c.delete(false)?;
    let mut stdout = String::new();
    let mut stderr = String::new();
    out_r.read_to_string(&mut stdout).unwrap();
    err_r.read_to_string(&mut stderr).unwrap();
    Ok(Outcome {
        status,
        stdout,
        stderr,
    })
}

/// Runs a script and returns its stdout, asserting it exited 0.
pub fn run_ok(bundle: &mut Bundle, script: &str) -> String {
    bundle.script(script);
    let o = run(bundle);
    assert_eq!(
        o.status,
        ExitStatus::Exited(0),
        "script {script:?} failed: stdout {:?} stderr {:?}",
        o.stdout,
        o.stderr
    );
    o.stdout
}

/// The whole error chain on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

/// The error chain of a create that must fail.
pub fn create_error(bundle: &Bundle) -> String {
    bundle.write();
    let t = runtime();
    match t
        .rt
        .create(&unique_id("bad"), bundle.dir(), CreateOptions::default())
    {
        Ok(mut c) => {
            let _ = c.delete(true);
            panic!("create unexpectedly succeeded")
        }
        Err(e) => {
            let dirs = fs::read_dir(t.rt.root()).map(|d| d.count()).unwrap_or(0);
            assert_eq!(dirs, 0, "a failed create left state behind");
            chain(&e)
        }
    }
}
