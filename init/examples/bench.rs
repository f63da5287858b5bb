//! PID 1 benchmark (host namespace ring), as root:
//!
//! ```text
//! cargo test -p berth-init --test static_binary    # builds the static binary
//! cargo run --release -p berth-init --example bench [-- BINARY [RUNS]]
//! ```
//!
//! Prints, for the berth-init binary (default: the static musl build in
//! `target/static-check`): its size, the time from PID 1's first line to its
//! first service's spawn (posix_spawn returns once the child has exec'd),
//! read from PID 1's own millisecond stamps over RUNS boots (median and min),
//! and PID 1's resident memory with 10 services running.
//!
//! Services are host busybox commands until the container launcher lands.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn manifest(services: usize) -> String {
    let svc: Vec<String> = (0..services)
        .map(|i| {
            format!(r#"{{"name":"s{i}","host":true,"command":["/bin/busybox","sleep","1000"]}}"#)
        })
        .collect();
    format!(r#"{{"version":1,"services":[{}]}}"#, svc.join(","))
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

fn start(bin: &Path, manifest_path: &Path) -> Run {
    let mut child = Command::new("unshare")
        .args(["--pid", "--fork", "--mount", "--mount-proc"])
        .arg(bin)
        .arg("--manifest")
        .arg(manifest_path)
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
    let one = dir.join("one.json");
    let ten = dir.join("ten.json");
    std::fs::write(&one, manifest(1)).expect("write manifest");
    std::fs::write(&ten, manifest(10)).expect("write manifest");

    let size = std::fs::metadata(&bin).expect("binary").len();

    let mut first_exec = Vec::with_capacity(runs);
    for _ in 0..runs {
        let run = start(&bin, &one);
        let begin = stamp_ms(&run.wait_for("berth: berth-init")).expect("stamp");
        let started = stamp_ms(&run.wait_for("berth: service s0 started")).expect("stamp");
        first_exec.push(started.saturating_sub(begin));
        run.stop();
    }
    first_exec.sort_unstable();

    let run = start(&bin, &ten);
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
    let _ = std::fs::remove_dir_all(&dir);

    println!("berth-init benchmark ({})", bin.display());
    println!(
        "  binary size              {:>8.2} MiB  (target <= 3 MiB)",
        size as f64 / 1048576.0
    );
    println!(
        "  PID 1 start -> 1st exec  {:>8} ms median, {} ms min over {runs} boots  (target <= 20 ms)",
        first_exec[first_exec.len() / 2],
        first_exec[0]
    );
    println!(
        "  RSS with 10 services     {:>8.2} MiB  (target <= 4 MiB)",
        rss_kib as f64 / 1024.0
    );
}
