//! PID 1 benchmark (host namespace ring), as root:
//!
//! ```text
//! cargo test -p berth-init --test static_binary    # builds the static binary
//! cargo run --release -p berth-init --example bench [-- BINARY [RUNS]]
//! ```
//!
//! Prints, for the berth-init binary (default: the static musl build in
//! `target/static-check`): its size, the time from PID 1's first line to its
//! first service's spawn (the spawn returns once the child has exec'd),
//! read from PID 1's own millisecond stamps over RUNS boots (median and min),
//! and PID 1's resident memory with 10 services running; once with host
//! busybox services, once with container services from a one-layer busybox
//! OCI image (zstd) that the benchmark builds with tar, zstd and sha256sum.
//! For containers, "first exec" is the `service started` line, written
//! once the runtime has released the container's process to exec; the
//! time includes unpacking and verifying the image (reported on its own)
//! into a run directory on tmpfs (`/dev/shm`), as `/run` is on a machine.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn manifest(services: usize, container: bool) -> String {
    let svc: Vec<String> = (0..services)
        .map(|i| {
            if container {
                format!(r#"{{"name":"s{i}","image":"busybox","command":["/bin/sleep","1000"],"stop_signal":"SIGKILL"}}"#)
            } else {
                format!(r#"{{"name":"s{i}","host":true,"command":["/bin/busybox","sleep","1000"]}}"#)
            }
        })
        .collect();
    format!(r#"{{"version":1,"services":[{}]}}"#, svc.join(","))
}

fn tool(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{cmd:?}: {e} (apt-get install tar zstd coreutils busybox-static)")
    });
    assert!(out.status.success(), "{cmd:?} failed");
    out.stdout
}

fn sha256(path: &Path) -> String {
    String::from_utf8_lossy(&tool(Command::new("sha256sum").arg(path)))[..64].to_owned()
}

fn blob(layout: &Path, path: &Path) -> serde_json::Value {
    let hex = sha256(path);
    let size = std::fs::metadata(path).expect("blob").len();
    std::fs::copy(path, layout.join("blobs/sha256").join(&hex)).expect("copy blob");
    serde_json::json!({"digest": format!("sha256:{hex}"), "size": size})
}

/// A one-layer busybox image named `busybox` in an OCI layout at `layout`.
fn build_image(work: &Path, layout: &Path) {
    let root = work.join("rootfs");
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static missing");
    let list = tool(Command::new("/bin/busybox").arg("--list"));
    for applet in String::from_utf8_lossy(&list)
        .lines()
        .filter(|a| *a != "busybox")
    {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("symlink");
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").expect("passwd");
    let tar = work.join("layer.tar");
    tool(
        Command::new("tar")
            .args(["--numeric-owner", "-C"])
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
    );
    let zst = work.join("layer.tar.zst");
    std::fs::write(
        &zst,
        tool(Command::new("zstd").args(["-q", "-c"]).arg(&tar)),
    )
    .expect("zst");
    std::fs::create_dir_all(layout.join("blobs/sha256")).expect("layout");
    let mut layer = blob(layout, &zst);
    layer["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd".into();
    let config = work.join("config.json");
    let cfg = serde_json::json!({"architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256(&tar))]}});
    std::fs::write(&config, cfg.to_string()).expect("config");
    let mut config = blob(layout, &config);
    config["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let manifest = work.join("manifest.json");
    let m = serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": [layer]});
    std::fs::write(&manifest, m.to_string()).expect("manifest");
    let mut desc = blob(layout, &manifest);
    desc["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
    desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "busybox"});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [desc]});
    std::fs::write(layout.join("index.json"), index.to_string()).expect("index");
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
}

/// `[    12.345] …` → 12345 ms.
fn stamp_ms(line: &str) -> Option<u64> {
    let inner = line.strip_prefix('[')?.split(']').next()?.trim();
    let (s, ms) = inner.split_once('.')?;
    Some(s.parse::<u64>().ok()? * 1000 + ms.parse::<u64>().ok()?)
}

struct Run {
    child: Child,
    lines: mpsc::Receiver<String>,
}

fn start(bin: &Path, manifest_path: &Path, extra: &[String]) -> Run {
    let mut child = Command::new("unshare")
        .args(["--pid", "--fork", "--mount", "--mount-proc"])
        .arg(bin)
        .arg("--manifest")
        .arg(manifest_path)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run unshare (util-linux) as root");
    let (tx, lines) = mpsc::channel();
    let out = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Run { child, lines }
}

impl Run {
    fn wait_for(&self, needle: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .expect("berth-init went quiet");
            if line.contains(needle) {
                return line;
            }
        }
    }

    fn init_pid(&self) -> i32 {
        let parent = self.child.id().to_string();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            if after.split_whitespace().nth(1) == Some(parent.as_str()) {
                return entry.file_name().to_string_lossy().parse().unwrap_or(0);
            }
        }
        panic!("berth-init not found under unshare");
    }

    fn stop(mut self) {
        let pid = self.init_pid();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf();
    let bin = args.first().map(PathBuf::from).unwrap_or_else(|| {
        root.join("target/static-check/x86_64-unknown-linux-musl/release/berth-init")
    });
    let runs: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(20);
    assert!(
        bin.exists(),
        "{} missing: build it with `cargo test -p berth-init --test static_binary`",
        bin.display()
    );
    let dir = std::env::temp_dir().join(format!("berth-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let layout = dir.join("images");
    // Roots go on tmpfs, as on a machine (/run); the temp dir may be a disk.
    let run_dir = PathBuf::from(format!("/dev/shm/berth-bench-{}", std::process::id()));
    build_image(&dir, &layout);
    let extra: Vec<String> = [
        "--images",
        &layout.display().to_string(),
        "--run-dir",
        &run_dir.display().to_string(),
        "--cgroup-parent",
        &format!("berth-bench-{}", std::process::id()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let size = std::fs::metadata(&bin).expect("binary").len();

    println!("berth-init benchmark ({})", bin.display());
    println!(
        "  binary size              {:>8.2} MiB  (target <= 3 MiB)",
        size as f64 / 1048576.0
    );
    for (kind, container) in [("host", false), ("container", true)] {
        let one = dir.join(format!("{kind}-one.json"));
        let ten = dir.join(format!("{kind}-ten.json"));
        std::fs::write(&one, manifest(1, container)).expect("write manifest");
        std::fs::write(&ten, manifest(10, container)).expect("write manifest");
        let mut first_exec = Vec::with_capacity(runs);
        let mut unpack = Vec::with_capacity(runs);
        for _ in 0..runs {
            let run = start(&bin, &one, &extra);
            let begin = stamp_ms(&run.wait_for("berth: berth-init")).expect("stamp");
            if container {
                // `... image busybox unpacked: 1.9 MiB in 12 ms (160 MB/s)`
                let line = run.wait_for("image busybox unpacked: ");
                let what = line
                    .rsplit_once(": ")
                    .map_or(line.clone(), |(_, r)| r.to_owned());
                let ms: u64 = what
                    .split_once(" in ")
                    .and_then(|(_, r)| r.split(' ').next()?.parse().ok())
                    .unwrap_or(0);
                unpack.push((ms, what));
            }
            let started = stamp_ms(&run.wait_for("berth: service s0 started")).expect("stamp");
            first_exec.push(started.saturating_sub(begin));
            run.stop();
        }
        first_exec.sort_unstable();
        unpack.sort();

        let run = start(&bin, &ten, &extra);
        run.wait_for("berth: ready");
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", run.init_pid())).unwrap_or_default();
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        run.stop();
        println!("{kind} services:");
        println!(
            "  PID 1 start -> 1st exec  {:>8} ms median, {} ms min over {runs} boots  (target <= 20 ms)",
            first_exec[first_exec.len() / 2],
            first_exec[0]
        );
        if let Some((_, u)) = unpack.get(unpack.len() / 2) {
            println!("  image unpack, median     {u}");
        }
        println!(
            "  RSS with 10 services     {:>8.2} MiB  (target <= 4 MiB)",
            rss_kib as f64 / 1024.0
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&run_dir);
}
