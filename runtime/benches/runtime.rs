//! Side-by-side start-up benchmark: one busybox bundle running `/bin/true`
//! N times through (a) the berth-runtime library in process (create, start,
//! wait, delete), (b) `berth-runc run`, (c) `crun run`, (d) `runc run`.
//!
//! Run as root: `cargo bench -p berth-runtime --bench runtime -- [--runs N]`.
//!
//! All four run in one private mount namespace where
//! `/sys/fs/cgroup/unified` is unmounted: crun 1.8.1 refuses the hybrid
//! cgroup layout of this kind of host, so every runtime gets the same
//! (cgroup v1) view. Runtimes are interleaved run by run so that machine
//! noise spreads evenly; the medians, minima and ratios to crun are printed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_runtime::{CreateOptions, ExitStatus, Runtime, sys};

fn die(msg: &str) -> ! {
    eprintln!("bench: {msg}");
    std::process::exit(1)
}

fn which(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    die(&format!("{name} missing: apt-get install {name}"))
}

/// A private mount namespace without the cgroup2 `unified` mount.
fn enter_private_namespace() {
    sys::unshare(libc::CLONE_NEWNS)
        .unwrap_or_else(|e| die(&format!("unshare the mount namespace: {e}")));
    sys::mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)
        .unwrap_or_else(|e| die(&format!("make / private: {e}")));
    match sys::umount2(c"/sys/fs/cgroup/unified", libc::MNT_DETACH) {
        Ok(()) => {}
        // Not a hybrid host: nothing to hide.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {}
        Err(e) => die(&format!("unmount /sys/fs/cgroup/unified: {e}")),
    }
}

fn make_bundle(dir: &Path, berth_runc: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    let rootfs = dir.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(rootfs.join(d))
            .unwrap_or_else(|e| die(&format!("create {}: {e}", rootfs.display())));
    }
    if !Path::new("/bin/busybox").exists() {
        die("busybox-static missing: apt-get install busybox-static");
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .unwrap_or_else(|e| die(&format!("copy busybox: {e}")));
    for applet in ["true", "sh"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
            .unwrap_or_else(|e| die(&format!("symlink: {e}")));
    }
    let st = Command::new(berth_runc)
        .args(["spec", "--bundle"])
        .arg(dir)
        .status();
    if !st.is_ok_and(|s| s.success()) {
        die("berth-runc spec failed");
    }
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| die(&format!("read {}: {e}", path.display())));
    let mut cfg: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| die(&format!("parse config: {e}")));
    cfg["process"]["args"] = serde_json::json!(["/bin/true"]);
    std::fs::write(&path, cfg.to_string()).unwrap_or_else(|e| die(&format!("write config: {e}")));
}

struct Series {
    name: &'static str,
    samples: Vec<Duration>,
}

impl Series {
    fn median(&self) -> Duration {
        let mut v = self.samples.clone();
        v.sort();
        v[v.len() / 2]
    }
    fn min(&self) -> Duration {
        self.samples.iter().copied().min().unwrap_or_default()
    }
}

fn run_cli(bin: &Path, root_flag: Option<&Path>, bundle: &Path, id: &str) -> Duration {
    let mut cmd = Command::new(bin);
    if let Some(r) = root_flag {
        cmd.arg("--root").arg(r);
    }
    cmd.args(["run", "--bundle"]).arg(bundle).arg(id);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| die(&format!("run {}: {e}", bin.display())));
    let d = t.elapsed();
    if !out.status.success() {
        die(&format!(
            "{} run failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    d
}

fn run_lib(rt: &Runtime, bundle: &Path) -> Duration {
    let t = Instant::now();
    let mut c = rt
        .create("bench-lib", bundle, CreateOptions::default())
        .unwrap_or_else(|e| die(&format!("library create: {e}")));
    c.start()
        .unwrap_or_else(|e| die(&format!("library start: {e}")));
    let status = c
        .wait()
        .unwrap_or_else(|e| die(&format!("library wait: {e}")));
    c.delete(false)
        .unwrap_or_else(|e| die(&format!("library delete: {e}")));
    let d = t.elapsed();
    if status != ExitStatus::Exited(0) {
        die(&format!("library run: /bin/true ended with {status}"));
    }
    d
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let mut runs = 50usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" | "-n" => {
                runs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .unwrap_or_else(|| die("--runs needs a positive number"))
            }
            // cargo bench passes --bench.
            "--bench" => {}
            other => die(&format!("unknown argument {other:?} (use --runs N)")),
        }
    }
    if sys::getuid() != 0 {
        die("run as root (containers need namespaces and mounts)");
    }
    let berth_runc = PathBuf::from(env!("CARGO_BIN_EXE_berth-runc"));
    let crun = which("crun");
    let runc = which("runc");
    enter_private_namespace();
    let work = PathBuf::from(format!("/tmp/berth-bench-{}", std::process::id()));
    let bundle = work.join("bundle");
    make_bundle(&bundle, &berth_runc);
    let lib_root = work.join("lib-state");
    let cli_root = work.join("cli-state");
    let rt = Runtime::new(&lib_root);
    // Keep the ids distinct from anything the host runs.
    let id = format!("berth-bench-{}", std::process::id());

    let mut series = [
        Series {
            name: "(a) berth-runtime library",
            samples: Vec::new(),
        },
        Series {
            name: "(b) berth-runc run",
            samples: Vec::new(),
        },
        Series {
            name: "(c) crun run",
            samples: Vec::new(),
        },
        Series {
            name: "(d) runc run",
            samples: Vec::new(),
        },
    ];
    let warmup = 5;
    for i in 0..warmup + runs {
        let d = [
            run_lib(&rt, &bundle),
            run_cli(&berth_runc, Some(&cli_root), &bundle, &id),
            run_cli(&crun, None, &bundle, &id),
            run_cli(&runc, None, &bundle, &id),
        ];
        if i >= warmup {
            for (s, d) in series.iter_mut().zip(d) {
                s.samples.push(d);
            }
        }
    }
    let crun_median = series[2].median().as_secs_f64();
    let crun_min = series[2].min().as_secs_f64();
    println!("busybox /bin/true, {runs} runs each after {warmup} warm-up runs, interleaved;");
    println!("private mount namespace with /sys/fs/cgroup/unified unmounted\n");
    println!(
        "{:<28} {:>10} {:>10} {:>16} {:>13}",
        "runtime", "median", "min", "median / crun", "min / crun"
    );
    for s in &series {
        println!(
            "{:<28} {:>10} {:>10} {:>15.3}x {:>12.3}x",
            s.name,
            ms(s.median()),
            ms(s.min()),
            s.median().as_secs_f64() / crun_median,
            s.min().as_secs_f64() / crun_min
        );
    }
    let ratio_a = series[0].median().as_secs_f64() / crun_median;
    let ratio_b = series[1].median().as_secs_f64() / crun_median;
    let verdict = |r: f64, target: f64| if r <= target { "met" } else { "NOT met" };
    println!(
        "\ntargets: (a) <= 0.25x crun: {} ({ratio_a:.3}x); (b) <= 0.8x crun: {} ({ratio_b:.3}x)",
        verdict(ratio_a, 0.25),
        verdict(ratio_b, 0.8)
    );
    let _ = std::fs::remove_dir_all(&work);
}
