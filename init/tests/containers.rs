//! Ring 2 with containers: `berth-init` as PID 1 of a pid namespace runs
//! its units as containers from an OCI image layout the test builds from
//! Debian's busybox-static (tar layer → zstd or gzip blob, config,
//! manifest, index with `ref.name`), through the in-process runtime.
//! Needs root, util-linux `unshare`, busybox-static, tar, gzip, zstd and
//! sha256sum; a missing one fails the test with an install hint.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::*;
use nix::sys::signal::Signal;

/// Runs a tool of the test setup; a missing tool fails with an apt hint.
fn run(cmd: &mut Command, package: &str) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (apt-get install {package})"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn sha256(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path), "coreutils");
    String::from_utf8(out).unwrap()[..64].to_owned()
}

/// Writes `path` into the layout's blobs; returns its digest and size.
fn add_blob(layout: &Path, path: &Path) -> (String, u64) {
    let hex = sha256(path);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(path, dir.join(&hex)).unwrap();
    (
        format!("sha256:{hex}"),
        std::fs::metadata(path).unwrap().len(),
    )
}

fn add_json_blob(layout: &Path, work: &Path, value: &serde_json::Value) -> (String, u64) {
    let tmp = work.join("blob.json");
    std::fs::write(&tmp, serde_json::to_vec(value).unwrap()).unwrap();
    add_blob(layout, &tmp)
}

/// A busybox root: the static binary, a symlink per applet, passwd/group.
fn busybox_root(dir: &Path, marker: Option<&str>) {
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root", "srv"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, dir.join("bin/busybox")).unwrap();
    let list = run(Command::new(BUSYBOX).arg("--list"), "busybox-static");
    for applet in String::from_utf8(list).unwrap().lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\n").unwrap();
    if let Some(m) = marker {
        std::fs::write(dir.join("etc/marker"), m).unwrap();
    }
}

/// Adds an image named `name` (one layer) to the layout; returns the layer
/// blob's digest.
fn add_image(layout: &Path, work: &Path, name: &str, marker: Option<&str>, zstd: bool) -> String {
    let root = work.join(format!("root-{name}"));
    busybox_root(&root, marker);
    let tar = work.join(format!("{name}.tar"));
    run(
        Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
        "tar",
    );
    let exec = serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"});
    add_tar_image(layout, work, name, &tar, zstd, Some(exec))
}

/// Adds an image named `name` to the layout whose one layer is the tar
/// `tar`, and whose config's execution parameters are `exec` (none when
/// `None`); returns the layer blob's digest.
fn add_tar_image(
    layout: &Path,
    work: &Path,
    name: &str,
    tar: &Path,
    zstd: bool,
    exec: Option<serde_json::Value>,
) -> String {
    let diff_id = format!("sha256:{}", sha256(tar));
    let blob = work.join(format!("{name}.tar.blob"));
    let (media, bytes) = if zstd {
        let b = run(Command::new("zstd").args(["-q", "-c"]).arg(tar), "zstd");
        ("application/vnd.oci.image.layer.v1.tar+zstd", b)
    } else {
        let b = run(Command::new("gzip").args(["-n", "-c"]).arg(tar), "gzip");
        ("application/vnd.oci.image.layer.v1.tar+gzip", b)
    };
    std::fs::write(&blob, bytes).unwrap();
    let (layer_digest, layer_size) = add_blob(layout, &blob);
    let mut config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    if let Some(exec) = exec {
        config["config"] = exec;
    }
    let (config_digest, config_size) = add_json_blob(layout, work, &config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": media, "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = add_json_blob(layout, work, &manifest);
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value = std::fs::read(&index_path)
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap_or_else(|_| serde_json::json!({"schemaVersion": 2, "manifests": []}));
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": name},
        }));
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    layer_digest
}

/// A test's world: its directory, the image layout, and the arguments
/// that point berth-init at them.
struct World {
    dir: PathBuf,
    layout: PathBuf,
    cgroup_parent: String,
}

impl World {
    fn new(tag: &str) -> Self {
        prerequisites();
        let dir = temp_dir(&format!("ctr-{tag}"));
        let layout = dir.join("images");
        let work = dir.join("work");
        std::fs::create_dir_all(&layout).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        add_image(&layout, &work, "busybox", None, true);
        Self {
            dir,
            layout,
            cgroup_parent: format!("berth-test-{tag}-{}", std::process::id()),
        }
    }

    fn work(&self) -> PathBuf {
        self.dir.join("work")
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--images".into(),
            self.layout.display().to_string(),
            "--run-dir".into(),
            self.dir.join("run").display().to_string(),
            "--data-dir".into(),
            self.dir.join("data").display().to_string(),
            "--cgroup-parent".into(),
            self.cgroup_parent.clone(),
        ]
    }

    /// PID 1 from the static build a machine runs (for what needs it).
    fn start_static(&self, manifest: &str) -> Pid1 {
        Pid1::start_binary_in(self.dir.clone(), manifest, &self.args(), &static_bin())
    }

    fn start(&self, manifest: &str) -> Pid1 {
        Pid1::start_in(self.dir.clone(), manifest, &self.args())
    }

    /// The launcher's options for driving it in this process, as `args`
    /// gives them to PID 1.
    fn options(&self) -> berth_init::container::ContainerOptions {
        berth_init::container::ContainerOptions {
            images: self.layout.clone(),
            run_dir: self.dir.join("run"),
            data_dir: self.dir.join("data"),
            cgroup_parent: self.cgroup_parent.clone(),
            diff_id: berth_bundles::DiffIdCheck::Verify,
            resolv_conf: None,
            hostname: None,
        }
    }

    /// The services of `manifest`, validated against this world's layout.
    fn services(&self, manifest: &str) -> Vec<berth_init::manifest::Service> {
        berth_init::manifest::parse(manifest.as_bytes(), &["busybox".to_owned()])
            .unwrap()
            .services
    }

    /// The cgroup2 directory above every container of this test.
    fn cgroup_dir(&self) -> PathBuf {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mount = berth_runtime::cgroup::find_cgroup2_mount(&mountinfo)
            .expect("no cgroup2 mount on this host");
        mount.join(&self.cgroup_parent)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Pid1 removes the directory it ran in; a test that drives the
        // launcher itself leaves that to this.
        let _ = std::fs::remove_dir_all(&self.dir);
        // PID 1 removes its cgroups when it ends well; a test that failed
        // half-way leaves them, empty once its processes are gone.
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        if let Some(mount) = berth_runtime::cgroup::find_cgroup2_mount(&mountinfo) {
            remove_cgroup_tree(&mount.join(&self.cgroup_parent));
        }
    }
}

/// rmdir(2) of a cgroup and the cgroups below it, deepest first (a cgroup
/// directory goes once it has no children and no processes); best effort.
fn remove_cgroup_tree(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// A container unit from the busybox image running `sh -c SCRIPT`.
fn ctr(name: &str, script: &str, extra: &str) -> String {
    ctr_from(name, "busybox", script, extra)
}

fn ctr_from(name: &str, image: &str, script: &str, extra: &str) -> String {
    let script = serde_json::to_string(script).unwrap();
    format!(r#"{{"name":"{name}","image":"{image}","command":["/bin/sh","-c",{script}]{extra}}}"#)
}

/// Waits until `check` holds, or fails with PID 1's output.
fn eventually(p: &Pid1, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; PID 1 said:\n{}",
            p.dump()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn container_task_then_services_in_order_with_their_output() {
    let w = World::new("order");
    // A shell as the container's init ignores SIGTERM unless it traps it
    // (pid_namespaces(7)): the services trap it to stop cleanly.
    let forever = "trap 'echo bye; exit 0' TERM; echo up in $(cat /etc/hostname 2>/dev/null || hostname); while true; do sleep 0.1; done";
    let m = manifest(
        &[ctr("setup", "echo task from $(readlink /bin/sh)", "")],
        &[
            ctr("web", forever, r#","depends_on":["db"]"#),
            ctr("db", forever, ""),
        ],
    );
    let mut p = w.start(&m);
    p.wait_for("berth: ready");
    let order = [
        "image busybox unpacked: ",
        "image busybox shared with task setup (overlay in ",
        "image busybox shared with service web (overlay in ",
        "berth: task setup started pid=",
        "setup: task from busybox",
        "berth: task setup exited status=0",
        "berth: service db started pid=",
        "berth: service web started pid=",
        "berth: ready",
    ];
    let idx: Vec<usize> = order.iter().map(|n| p.index_of(n)).collect();
    assert!(
        idx.windows(2).all(|w| w[0] < w[1]),
        "out of order {idx:?}:\n{}",
        p.dump()
    );
    let unpacked = p.wait_for("image busybox unpacked: ");
    assert!(
        unpacked.contains(" MiB in ") && unpacked.ends_with(" MB/s)"),
        "{unpacked}"
    );
    p.wait_for("image busybox shared with service db (overlay in ");
    p.wait_for("web: up in berth");
    p.wait_for("db: up in berth");
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
    let stop = [
        "berth: service web stopping: sent SIGTERM",
        "web: bye",
        "berth: service web stopped (exited status=0)",
        "berth: service db stopping: sent SIGTERM",
        "berth: service db stopped (exited status=0)",
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
fn crashing_container_backs_off_until_its_start_limit() {
    let w = World::new("crash");
    let m = manifest(
        &[],
        &[
            ctr(
                "crash",
                "echo crashing; exit 3",
                r#","restart":{"policy":"always","backoff":{"initial":"100ms","factor":2,"max":"10s"},"start_limit":{"count":5,"interval":"1m"}}"#,
            ),
            ctr(
                "steady",
                "trap 'exit 0' TERM; while true; do sleep 0.2; done",
                "",
            ),
        ],
    );
    let mut p = w.start(&m);
    let failed = p.wait_for("berth: service crash failed: start limit reached");
    assert!(failed.contains("(5 starts in 1m)"), "{failed}");
    let delays = p.restart_delays("crash", "status=3");
    assert_eq!(delays, vec![100, 200, 400, 800], "{}", p.dump());
    assert_eq!(
        p.lines()
            .iter()
            .filter(|l| l.contains("crash: crashing"))
            .count(),
        5,
        "every restart is a new container:\n{}",
        p.dump()
    );
    p.signal(Signal::SIGUSR1);
    p.wait_for("berth: status service crash state=failed pid=0 restarts=4");
    p.wait_for("berth: status service steady state=running");
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

#[test]
fn container_exit_codes_and_kill_signal_are_recorded() {
    let w = World::new("codes");
    let no = r#","restart":{"policy":"no"}"#;
    let mut services: Vec<String> = [0, 1, 42, 255]
        .iter()
        .map(|c| ctr(&format!("code{c}"), &format!("exit {c}"), no))
        .collect();
    // The first process of a container is the init of its pid namespace:
    // signals from inside (kill $$) are ignored unless it has a handler,
    // so the killing signal comes from the host (pid_namespaces(7)).
    services.push(ctr("killed", "echo ready; exec sleep 1000", no));
    let mut p = w.start(&manifest(&[], &services));
    for c in [0, 1, 42, 255] {
        p.wait_for(&format!(
            "berth: service code{c} exited status={c}, not restarting"
        ));
    }
    let started = p.wait_for("berth: service killed started pid=");
    p.wait_for("killed: ready");
    let host = p.host_pid_nested(ns_pid_of(&started));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(host), Signal::SIGKILL).unwrap();
    p.wait_for("berth: service killed killed by signal 9, not restarting");
    p.signal(Signal::SIGUSR1);
    for (name, code) in [
        ("code0", 0),
        ("code42", 42),
        ("code255", 255),
        ("killed", 137),
    ] {
        let line = p.wait_for(&format!("berth: status service {name} "));
        assert!(
            line.contains("state=exited")
                && line.contains(&format!(" code={code} since="))
                && line.contains(" why=\""),
            "{line}"
        );
    }
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

#[test]
fn thousand_orphans_in_a_container_leave_no_zombies() {
    let w = World::new("orphans");
    // The container's shell is the init of its pid namespace: orphans are
    // reparented to it and it reaps them while it waits for its `sleep`.
    let m = manifest(
        &[],
        &[ctr(
            "spawner",
            "trap 'exit 0' TERM; for i in $(seq 1000); do (sleep 1 &) ; done; echo spawned; while true; do sleep 0.2; done",
            "",
        )],
    );
    let mut p = w.start(&m);
    p.wait_for("spawner: spawned");
    let init = p.init_pid();
    eventually(&p, "the orphans to be reaped", || {
        let below = descendants(init);
        below.len() <= 3 && !below.iter().any(|pid| is_zombie(*pid))
    });
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
    // Nothing of the container is left on the host.
    assert!(descendants(p.child.id() as i32).is_empty());
}

/// `"init": true`: berth-init's reaper runs in front of the program as the
/// container's PID 1. A program that never waits (`exec sleep`) leaves its
/// orphans as zombies without it, none with it; the stop signal reaches the
/// program through it; the program's status is the unit's.
#[test]
fn init_true_reaps_orphans_forwards_signals_and_passes_the_status_on() {
    let w = World::new("reaper");
    let script = "for i in $(seq 20); do (sleep 0.1 &) ; done; echo spawned; exec sleep 1000";
    let m = manifest(
        &[ctr("three", "exit 3", r#","init":true,"optional":true"#)],
        &[
            ctr("bare", script, r#","stop_signal":"SIGKILL""#),
            ctr("reaped", script, r#","init":true,"stop_timeout":"1m""#),
        ],
    );
    // The test build of berth-init is dynamic: the container has no
    // loader for it, and says so.
    let dynamic = World::new("reaper-dynamic");
    let mut p = dynamic.start(&manifest(&[], &[ctr("reaped", "true", r#","init":true"#)]));
    p.wait_for("berth: service reaped failed: reaped: ");
    p.wait_for("is dynamically linked, and the container has no loader for it: \"init\": true needs the static berth-init");
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
    drop(p);

    let mut p = w.start_static(&m);
    p.wait_for("berth: task three exited status=3 (optional, boot goes on)");
    let unit_pid = |name: &str| {
        let line = p.wait_for(&format!("berth: service {name} started"));
        p.host_pid_nested(ns_pid_of(&line))
    };
    let (bare, reaped) = (unit_pid("bare"), unit_pid("reaped"));
    p.wait_for("bare: spawned");
    p.wait_for("reaped: spawned");
    let zombies = |pid: i32| {
        descendants(pid)
            .into_iter()
            .filter(|d| is_zombie(*d))
            .count()
    };
    // Without an init, `sleep` is PID 1 and never reaps.
    eventually(&p, "20 zombies under the bare unit", || {
        zombies(bare) + usize::from(is_zombie(bare)) >= 20
    });
    // With one: the orphans end and are reaped; only the program is left
    // below the reaper.
    eventually(&p, "the reaped unit's orphans to be gone", || {
        descendants(reaped).len() == 1 && zombies(reaped) == 0
    });
    // Run from a sealed in-memory copy of berth-init, not its file.
    let exe = std::fs::read_link(format!("/proc/{reaped}/exe")).unwrap();
    assert!(
        exe.to_string_lossy()
            .starts_with("/memfd:berth-init-reaper"),
        "{exe:?}"
    );
    let status = std::fs::read_to_string(format!("/proc/{reaped}/cmdline")).unwrap();
    assert!(
        status.starts_with("berth-init-reaper\0--\0/bin/sh\0"),
        "{status:?}"
    );
    // SIGTERM to the reaper reaches `sleep`, which dies of it at once (as
    // its namespace's PID 1 it would ignore it): well before the 1m stop
    // timeout, with the program's status.
    p.signal(Signal::SIGTERM);
    p.wait_for("berth: service reaped stopped (exited status=143)");
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

#[test]
fn kill_9_of_a_container_restarts_it() {
    let w = World::new("kill9");
    let m = manifest(
        &[],
        &[ctr(
            "victim",
            "echo alive; exec sleep 1000",
            r#","restart":{"policy":"on-failure","backoff":{"initial":"200ms"}}"#,
        )],
    );
    let mut p = w.start(&m);
    let started = p.wait_for("berth: service victim started pid=");
    p.wait_for("victim: alive");
    let host = p.host_pid_nested(ns_pid_of(&started));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(host), Signal::SIGKILL).unwrap();
    p.wait_for("berth: service victim killed by signal 9, restart in 200ms");
    let again = p.wait_for_nth("berth: service victim started pid=", 2);
    assert_ne!(ns_pid_of(&again), ns_pid_of(&started));
    p.wait_for_nth("victim: alive", 2);
    p.signal(Signal::SIGUSR1);
    let status = p.wait_for("berth: status service victim");
    assert!(
        status.contains("state=running") && status.contains("restarts=1 last=killed by signal 9"),
        "{status}"
    );
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

#[test]
fn sigterm_stops_containers_and_leaves_nothing_behind() {
    let w = World::new("stop");
    let m = manifest(
        &[],
        &[
            ctr(
                "polite",
                "trap 'echo bye; exit 0' TERM; echo up; while true; do sleep 0.1; done",
                r#","depends_on":["stubborn"],"mounts":[{"type":"tmpfs","target":"/scratch","size":"1MiB"}]"#,
            ),
            // No handler: as its namespace's init it ignores SIGTERM.
            ctr(
                "stubborn",
                "echo up; exec sleep 1000",
                r#","stop_timeout":"1s""#,
            ),
        ],
    );
    let mut p = w.start(&m);
    p.wait_for("polite: up");
    p.wait_for("stubborn: up");
    assert!(
        w.cgroup_dir().join("polite").is_dir(),
        "no cgroup {}:\n{}",
        w.cgroup_dir().join("polite").display(),
        p.dump()
    );
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
    let stop = [
        "berth: service polite stopping: sent SIGTERM",
        "polite: bye",
        "berth: service polite stopped (exited status=0)",
        "berth: service stubborn stopping: sent SIGTERM",
        "berth: service stubborn did not stop within 1s: sent SIGKILL",
        "berth: service stubborn stopped (killed by signal 9)",
        "berth: exiting status=0",
    ];
    let idx: Vec<usize> = stop.iter().map(|n| p.index_of(n)).collect();
    assert!(
        idx.windows(2).all(|w| w[0] < w[1]),
        "stop order {idx:?}:\n{}",
        p.dump()
    );
    assert!(descendants(p.child.id() as i32).is_empty());
    // No cgroup, no runtime state, no mount of the test left.
    assert!(
        !w.cgroup_dir().exists(),
        "{} left behind",
        w.cgroup_dir().display()
    );
    let state: Vec<_> = std::fs::read_dir(w.dir.join("run/containers"))
        .unwrap()
        .collect();
    assert!(state.is_empty(), "runtime state left: {state:?}");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = w.dir.display().to_string();
    assert!(
        !mountinfo.lines().any(|l| l.contains(&dir)),
        "mounts left under {dir}:\n{mountinfo}"
    );
}

#[test]
fn corrupted_image_fails_its_service_and_the_others_run() {
    let w = World::new("corrupt");
    let layer = add_image(&w.layout, &w.work(), "broken", Some("b"), false);
    // Flip bytes in the middle of the layer blob, keeping its size.
    let blob = w
        .layout
        .join("blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0xff;
    }
    std::fs::write(&blob, bytes).unwrap();
    let m = manifest(
        &[],
        &[
            ctr_from("bad", "broken", "echo should not run", ""),
            ctr(
                "good",
                "trap 'exit 0' TERM; echo up; while true; do sleep 0.1; done",
                "",
            ),
        ],
    );
    let mut p = w.start(&m);
    p.wait_for("good: up");
    let failed = p.wait_for("berth: service bad failed: ");
    assert!(
        failed.contains(&layer) && failed.ends_with("(not restarting)"),
        "{failed}"
    );
    assert_eq!(
        p.lines()
            .iter()
            .filter(|l| l.contains("berth: service bad"))
            .count(),
        1,
        "one line, no retries:\n{}",
        p.dump()
    );
    assert!(!p.dump().contains("should not run"));
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

#[test]
fn persistent_mount_writes_reach_the_data_dir() {
    let w = World::new("persist");
    let m = format!(
        r#"{{"version":1,"data_disk":{{"device":"/dev/null","fstype":"none"}},"services":[{}]}}"#,
        ctr(
            "writer",
            "echo kept > /srv/state/file; echo wrote; exec sleep 1000",
            r#","mounts":[{"type":"persistent","source":"writer/state","target":"/srv/state"}]"#,
        ),
    );
    let mut p = w.start(&m);
    p.wait_for("writer: wrote");
    let file = w.dir.join("data/writer/state/file");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!(
            "{}: {e}\n{}",
            file.display(),
            p.dump()
        )),
        "kept\n"
    );
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

#[test]
fn persistent_sources_never_follow_links_on_the_data_disk() {
    // What a container left on the data disk in an earlier boot: links
    // out of the data directory where other units' sources are.
    let w = World::new("persist-links");
    let shared = w.dir.join("data/shared");
    std::fs::create_dir_all(shared.join("sub")).unwrap();
    std::fs::write(shared.join("sub/marker"), "original\n").unwrap();
    std::os::unix::fs::symlink("/", shared.join("abs")).unwrap();
    std::os::unix::fs::symlink("../..", shared.join("rel")).unwrap();
    let outside = w.dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, shared.join("made")).unwrap();
    // A log file planted as a link to another file.
    let logs = w.dir.join("data/logs");
    std::fs::create_dir_all(&logs).unwrap();
    let precious = w.dir.join("precious");
    std::fs::write(&precious, "keep\n").unwrap();
    std::os::unix::fs::symlink(&precious, logs.join("sub.log")).unwrap();
    let mount = |source: &str| {
        format!(r#","mounts":[{{"type":"persistent","source":"{source}","target":"/m"}}]"#)
    };
    let forever = "trap 'exit 0' TERM; while true; do sleep 0.1; done";
    let m = format!(
        r#"{{"version":1,"data_disk":{{"device":"/dev/null","fstype":"none"}},"log":{{"files":{{"dir":"{}"}}}},"tasks":[{}],"services":[{},{},{},{}]}}"#,
        logs.display(),
        // Swaps its source's `sub` for a link to / once every unit is
        // prepared: the service that mounts `shared/sub` still gets the
        // directory it was prepared with.
        ctr(
            "swap",
            "mv /m/sub /m/old && ln -s / /m/sub && echo swapped",
            &mount("shared")
        ),
        ctr("abs", &format!("ls /m; {forever}"), &mount("shared/abs")),
        ctr("rel", &format!("ls /m; {forever}"), &mount("shared/rel/x")),
        ctr(
            "made",
            &format!("ls /m; {forever}"),
            &mount("shared/made/new")
        ),
        ctr(
            "sub",
            &format!("cat /m/marker; ls /m/etc 2>/dev/null || echo no-etc; {forever}"),
            &mount("shared/sub")
        ),
    );
    let mut p = w.start(&m);
    p.wait_for("swap: swapped");
    p.wait_for("sub: original");
    p.wait_for("sub: no-etc");
    for unit in ["abs", "rel"] {
        let line = p.wait_for(&format!("service {unit} failed: "));
        assert!(
            line.contains("is a symbolic link") && line.contains("refusing to follow it"),
            "{line}"
        );
    }
    p.wait_for("service made failed: ");
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "PID 1 made a directory through a link"
    );
    let line = p.wait_for("sub.log is a symbolic link: refusing to follow it");
    assert!(line.contains("log file"), "{line}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep\n");
    // The other units' files are written.
    assert!(
        std::fs::read_to_string(logs.join("swap.log"))
            .unwrap()
            .contains("swapped")
    );
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

#[test]
fn network_none_sees_only_loopback() {
    let w = World::new("netnone");
    // flags 0x9 = IFF_UP | IFF_LOOPBACK: lo is up.
    let list =
        "echo links: $(ls /sys/class/net) lo=$(cat /sys/class/net/lo/flags); exec sleep 1000";
    let m = manifest(
        &[],
        &[
            ctr(
                "isolated",
                list,
                r#","network":"none","restart":{"policy":"always","backoff":{"initial":"100ms"}}"#,
            ),
            ctr("hosted", list, ""),
        ],
    );
    let mut p = w.start(&m);
    let isolated = p.wait_for("isolated: links: ");
    assert!(
        isolated.ends_with("isolated: links: lo lo=0x9"),
        "{isolated}"
    );
    // A restart gets a fresh namespace, again with lo up.
    let started = p.wait_for("berth: service isolated started pid=");
    let host = p.host_pid_nested(ns_pid_of(&started));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(host), Signal::SIGKILL).unwrap();
    let again = p.wait_for_nth("isolated: links: ", 2);
    assert!(again.ends_with("isolated: links: lo lo=0x9"), "{again}");
    // The host network mode sees the test host's interfaces (lo at least).
    let hosted = p.wait_for("hosted: links: ");
    let host_links = std::fs::read_dir("/sys/class/net").unwrap().count();
    let (links, _) = hosted.rsplit_once(" lo=").unwrap();
    assert_eq!(
        links.rsplit_once("links: ").unwrap().1.split(' ').count(),
        host_links,
        "{hosted}"
    );
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

/// Whether the cgroup2 mount offers the memory controller (not on a v1/v2
/// hybrid host, where it is bound to v1).
fn memory_controller_in_v2() -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    berth_runtime::cgroup::find_cgroup2_mount(&mountinfo)
        .and_then(|m| std::fs::read_to_string(m.join("cgroup.controllers")).ok())
        .is_some_and(|c| c.split_whitespace().any(|c| c == "memory"))
}

#[test]
fn resources_without_cgroup_v2_controllers_are_a_clear_error() {
    let w = World::new("limits");
    let m = manifest(
        &[],
        &[
            ctr(
                "limited",
                "echo limited runs; exec sleep 1000",
                r#","resources":{"memory":"64MiB","pids":50}"#,
            ),
            ctr("free", "echo free runs; exec sleep 1000", ""),
        ],
    );
    let mut p = w.start(&m);
    p.wait_for("free: free runs");
    if memory_controller_in_v2() {
        // A host with the controllers (the QEMU ring): the limit is real.
        p.wait_for("limited: limited runs");
        let max = std::fs::read_to_string(w.cgroup_dir().join("limited/memory.max")).unwrap();
        assert_eq!(max.trim(), (64u64 << 20).to_string());
    } else {
        let failed = p.wait_for("berth: service limited failed: ");
        assert!(
            failed.contains("cgroup controller")
                && failed.contains("is not available")
                && failed.ends_with("(not restarting)"),
            "{failed}"
        );
        assert!(!p.dump().contains("limited runs"));
    }
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

#[test]
fn bundle_unit_runs_its_config_as_is() {
    let w = World::new("bundle");
    let bundle = w.dir.join("bundle");
    busybox_root(&bundle.join("rootfs"), Some("from the bundle"));
    // An ambient capability not also inheritable cannot be raised: the
    // runtime's warning reaches the console.
    let mut config = shell_bundle_config(
        "echo $(cat /etc/marker) as $(id -u); exec sleep 1000",
        "rootfs",
    );
    config["process"]["capabilities"]["ambient"] = serde_json::json!(["CAP_KILL"]);
    config["process"]["capabilities"]["inheritable"] = serde_json::json!([]);
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec(&config).unwrap(),
    )
    .unwrap();
    let m = format!(
        r#"{{"version":1,"services":[{{"name":"bundled","bundle":{},"stop_signal":"SIGKILL"}}]}}"#,
        serde_json::to_string(&bundle).unwrap()
    );
    let mut p = w.start(&m);
    p.wait_for(&format!(
        "bundle {} read for service bundled",
        bundle.display()
    ));
    p.wait_for("bundled: from the bundle as 0");
    p.wait_for(
        "berth: container bundled: ambient capabilities not in both permitted and inheritable were not raised: CAP_KILL",
    );
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
    p.wait_for("berth: service bundled stopped (killed by signal 9)");

    // Overrides on a bundle are refused with the manifest, not ignored.
    let m = format!(
        r#"{{"version":1,"services":[{{"name":"bundled","bundle":{},"args":["x"]}}]}}"#,
        serde_json::to_string(&bundle).unwrap()
    );
    let dir = temp_dir("ctr-bundle-args");
    let mut p = Pid1::start_in(dir, &m, &w.args());
    assert_eq!(p.wait_exit().code(), Some(1), "{}", p.dump());
    p.wait_for("services.bundled.args: not supported for bundles (their config.json runs as it is");
    assert!(!p.dump().contains("bundled: "), "{}", p.dump());
}

/// A bundle's config.json (berth-bundles' default spec) running `script`
/// with busybox's sh from the root `root_path`.
fn shell_bundle_config(script: &str, root_path: &str) -> serde_json::Value {
    serde_json::to_value(shell_bundle_spec(script, root_path)).unwrap()
}

/// [`shell_bundle_config`] as a spec, to change further.
fn shell_bundle_spec(script: &str, root_path: &str) -> oci_spec::runtime::Spec {
    let mut spec = berth_bundles::spec::default_spec();
    let mut process = spec.process().clone().unwrap();
    process.set_args(Some(vec!["/bin/sh".into(), "-c".into(), script.into()]));
    process.set_env(Some(vec!["PATH=/bin".into()]));
    spec.set_process(Some(process));
    let mut root = spec.root().clone().unwrap();
    root.set_path(root_path.into());
    spec.set_root(Some(root));
    spec
}

/// A tree bundle whose root is not `DIR/rootfs` (`root.path` `sub/root`):
/// relative bind sources resolve against the bundle directory, as with
/// runc, not against the root's parent.
#[test]
fn a_tree_bundles_relative_binds_resolve_against_its_directory() {
    let w = World::new("bundle-subroot");
    let bundle = w.dir.join("bundle");
    busybox_root(&bundle.join("sub/root"), Some("from the sub root"));
    std::fs::create_dir_all(bundle.join("extra")).unwrap();
    std::fs::write(bundle.join("extra/note"), "bound from the bundle\n").unwrap();
    std::fs::create_dir_all(bundle.join("sub/extra")).unwrap();
    std::fs::write(
        bundle.join("sub/extra/note"),
        "bound from the root's parent\n",
    )
    .unwrap();
    let mut config = shell_bundle_config(
        "echo sub: $(cat /etc/marker), $(cat /mnt/extra/note)",
        "sub/root",
    );
    config["mounts"].as_array_mut().unwrap().push(serde_json::json!(
        {"destination": "/mnt/extra", "type": "bind", "source": "extra", "options": ["rbind", "ro"]}
    ));
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec(&config).unwrap(),
    )
    .unwrap();
    let m = format!(
        r#"{{"version":1,"tasks":[{{"name":"subroot","bundle":{}}}]}}"#,
        serde_json::to_string(&bundle).unwrap()
    );
    let mut p = w.start(&m);
    p.wait_for("subroot: sub: from the sub root, bound from the bundle");
    p.wait_for("berth: task subroot exited status=0");
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

/// A unit whose first process exits leaves nothing behind: a host unit's
/// process group is killed, and a bundle without a pid namespace of its
/// own gets the unit's cgroup, whose removal kills what is in it. Without
/// that, every restart added a process (and two pipe fds of PID 1's).
#[test]
fn what_a_unit_leaves_behind_ends_with_it() {
    let w = World::new("leftovers");
    let script = "sleep 1000 & echo left $!; sleep 0.1; exit 1";
    let bundle = w.dir.join("bundle");
    busybox_root(&bundle.join("rootfs"), None);
    let mut spec = shell_bundle_spec(script, "rootfs");
    // In PID 1's pid namespace, like a host agent.
    let mut linux = spec.linux().clone().unwrap();
    let namespaces = linux.namespaces().clone().unwrap_or_default();
    linux.set_namespaces(Some(
        namespaces
            .into_iter()
            .filter(|n| n.typ() != oci_spec::runtime::LinuxNamespaceType::Pid)
            .collect(),
    ));
    spec.set_linux(Some(linux));
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec(&spec).unwrap(),
    )
    .unwrap();
    let restart =
        r#""restart":{"backoff":{"initial":"100ms"},"start_limit":{"count":3,"interval":"1m"}}"#;
    let m = format!(
        r#"{{"version":1,"services":[
            {{"name":"host","host":true,"command":["{BUSYBOX}","sh","-c",{script}],{restart}}},
            {{"name":"bundled","bundle":{bundle},{restart}}}]}}"#,
        script = serde_json::to_string(&format!("PATH=/bin:/usr/bin; {script}")).unwrap(),
        bundle = serde_json::to_string(&bundle).unwrap(),
    );
    let mut p = w.start(&m);
    for name in ["host", "bundled"] {
        p.wait_for(&format!(
            "berth: service {name} failed: start limit reached"
        ));
        p.wait_for_nth(&format!("{name}: left "), 3);
    }
    p.wait_for_nth(
        "berth: unit host: killed what its first process left behind",
        3,
    );
    // Only PID 1 is left in its namespace.
    eventually(&p, "the leftovers to be gone", || {
        p.namespace_pids().len() == 1
    });
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

/// A packed bundle in `dir`, as berth-build writes one into an initramfs:
/// `config.json` (root.path `rootfs`, running `script`, with `dir/shared`
/// bound read-only at /srv/shared by a relative source) and `rootfs.oci`,
/// an image layout whose one image, `rootfs`, has no execution parameters
/// and as its one zstd layer a busybox root with `etc/marker` (`marker`),
/// its hard link `etc/marker.link`, and `etc/xattr` carrying the xattr
/// `user.berth=packed` (the PAX `SCHILY.xattr` record GNU tar writes). No
/// `dir/rootfs`. Returns the layer blob's digest.
fn write_packed_bundle(dir: &Path, script: &str, marker: &str) -> String {
    let work = dir.with_extension("work");
    let root = work.join("root");
    busybox_root(&root, Some(marker));
    std::fs::hard_link(root.join("etc/marker"), root.join("etc/marker.link")).unwrap();
    let extra = work.join("extra");
    std::fs::create_dir_all(extra.join("etc")).unwrap();
    std::fs::write(extra.join("etc/xattr"), "carries user.berth\n").unwrap();
    let tar = work.join("rootfs.tar");
    let pax = ["--format=pax", "--numeric-owner", "--owner=0", "--group=0"];
    run(
        Command::new("tar")
            .args(pax)
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
        "tar",
    );
    // Appended, so that only this entry carries the record.
    run(
        Command::new("tar")
            .args(pax)
            .arg("--pax-option=SCHILY.xattr.user.berth:=packed")
            .arg("-C")
            .arg(&extra)
            .arg("-rf")
            .arg(&tar)
            .arg("./etc/xattr"),
        "tar",
    );
    let layout = dir.join("rootfs.oci");
    std::fs::create_dir_all(&layout).unwrap();
    let layer = add_tar_image(&layout, &work, "rootfs", &tar, true, None);
    std::fs::create_dir_all(dir.join("shared")).unwrap();
    std::fs::write(dir.join("shared/note"), "beside config.json").unwrap();
    let spec = berth_bundles::spec::default_spec();
    let mut v = serde_json::to_value(&spec).unwrap();
    v["root"]["path"] = "rootfs".into();
    v["process"]["args"] = serde_json::json!(["/bin/sh", "-c", script]);
    v["process"]["env"] = serde_json::json!(["PATH=/bin"]);
    v["mounts"].as_array_mut().unwrap().push(serde_json::json!({
        "destination": "/srv/shared", "type": "bind", "source": "shared",
        "options": ["rbind", "ro"],
    }));
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&v).unwrap()).unwrap();
    layer
}

/// A service unit running the bundle at `dir`.
fn bundle_unit(name: &str, dir: &Path) -> String {
    format!(
        r#"{{"name":"{name}","bundle":{},"stop_signal":"SIGKILL"}}"#,
        serde_json::to_string(dir).unwrap()
    )
}

/// A packed bundle (rootfs.oci, no rootfs) runs from a root of the unit's
/// own, unpacked from its layer with owners, hard links and xattrs, while
/// its config.json's relative bind source still names a path of the
/// bundle.
#[test]
fn packed_bundle_runs_from_its_unpacked_layer() {
    use std::os::unix::fs::MetadataExt;
    let w = World::new("packed");
    let bundle = w.dir.join("packed");
    write_packed_bundle(
        &bundle,
        "echo $(cat /etc/marker) with $(cat /srv/shared/note) as $(id -u); \
         echo ran > /proof; exec sleep 1000",
        "from rootfs.oci",
    );
    let m = manifest(&[], &[bundle_unit("web", &bundle)]);
    let mut p = w.start(&m);
    let line = p.wait_for(&format!(
        "bundle {} unpacked for service web: ",
        bundle.display()
    ));
    assert!(
        line.contains(" MiB in ") && !line.contains(": 0.0 MiB"),
        "{line}"
    );
    p.wait_for("web: from rootfs.oci with beside config.json as 0");
    // The unit's own root is where the container runs: its write is there.
    let root = w.dir.join("run/rootfs/web");
    eventually(&p, "the container's /proof", || {
        std::fs::read_to_string(root.join("proof")).is_ok_and(|t| t == "ran\n")
    });
    // The xattr of the layer, read by GNU tar from the unpacked file.
    let archive = run(
        Command::new("tar")
            .args(["--xattrs", "--xattrs-include=user.*", "--format=pax", "-C"])
            .arg(&root)
            .args(["-cf", "-", "./etc/xattr"]),
        "tar",
    );
    let record = b"SCHILY.xattr.user.berth=packed\n";
    assert!(
        archive.windows(record.len()).any(|w| w == record),
        "no user.berth xattr on {}",
        root.join("etc/xattr").display()
    );
    let (a, b) = (
        std::fs::metadata(root.join("etc/marker")).unwrap(),
        std::fs::metadata(root.join("etc/marker.link")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "hard link not kept");
    // Nothing was made in the bundle.
    assert!(std::fs::symlink_metadata(bundle.join("rootfs")).is_err());
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

/// A packed bundle whose layer blob was damaged fails its unit with the
/// bundle and the layer named, leaving no partial root; the other units
/// run.
#[test]
fn damaged_packed_bundle_fails_its_unit_and_the_others_run() {
    let w = World::new("packed-bad");
    let bad = w.dir.join("bad");
    let layer = write_packed_bundle(&bad, "echo should not run", "bad");
    let blob = bad
        .join("rootfs.oci/blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&blob, bytes).unwrap();
    let good = w.dir.join("good");
    write_packed_bundle(
        &good,
        "trap 'exit 0' TERM; echo up; while true; do sleep 0.1; done",
        "good",
    );
    let m = manifest(&[], &[bundle_unit("bad", &bad), bundle_unit("good", &good)]);
    let mut p = w.start(&m);
    p.wait_for("good: up");
    let failed = p.wait_for("berth: service bad failed: ");
    assert!(
        failed.contains(&format!("bundle {}: unpack rootfs.oci: ", bad.display()))
            && failed.contains(&layer)
            && failed.contains("does not match its digest")
            && failed.ends_with("(not restarting)"),
        "{failed}"
    );
    assert_eq!(
        p.lines()
            .iter()
            .filter(|l| l.contains("berth: service bad"))
            .count(),
        1,
        "one line, no retries:\n{}",
        p.dump()
    );
    assert!(!p.dump().contains("should not run"));
    assert!(
        std::fs::symlink_metadata(w.dir.join("run/rootfs/bad")).is_err(),
        "the partial root of the failed unpack is left"
    );
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

/// A bundle holding both a `rootfs` tree and a `rootfs.oci` layout, or a
/// `rootfs.oci` that is not a directory (a symlink to one is not followed),
/// fails its unit with a one-line error naming the bundle.
#[test]
fn ambiguous_packed_bundles_are_refused() {
    let w = World::new("packed-ambiguous");
    let both = w.dir.join("both");
    write_packed_bundle(&both, "echo should not run", "both");
    busybox_root(&both.join("rootfs"), None);
    let link = w.dir.join("link");
    write_packed_bundle(&link, "echo should not run", "link");
    let moved = w.dir.join("layout-elsewhere");
    std::fs::rename(link.join("rootfs.oci"), &moved).unwrap();
    std::os::unix::fs::symlink(&moved, link.join("rootfs.oci")).unwrap();
    let m = manifest(
        &[],
        &[
            bundle_unit("both", &both),
            bundle_unit("link", &link),
            ctr(
                "good",
                "trap 'exit 0' TERM; echo up; while true; do sleep 0.1; done",
                "",
            ),
        ],
    );
    let mut p = w.start(&m);
    p.wait_for("good: up");
    let failed = p.wait_for("berth: service both failed: ");
    assert!(
        failed.contains(&format!(
            "bundle {} holds both rootfs and rootfs.oci",
            both.display()
        )) && failed.ends_with("(not restarting)"),
        "{failed}"
    );
    let failed = p.wait_for("berth: service link failed: ");
    assert!(
        failed.contains(&format!(
            "bundle {}: rootfs.oci is not a directory",
            link.display()
        )),
        "{failed}"
    );
    assert!(!p.dump().contains("should not run"), "{}", p.dump());
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

#[test]
fn manifest_overrides_reach_the_container() {
    let w = World::new("overrides");
    let script = "echo user=$(id -u):$(id -g) cwd=$(pwd) foo=$FOO path=$PATH; \
        touch /scratch/f && echo scratch=rw; \
        grep CapBnd /proc/self/status; exec sleep 1000";
    // As root, only a read-only root refuses the write.
    let probe = "touch /rootfile 2>/dev/null && echo root=rw || echo root=ro; exec sleep 1000";
    let m = manifest(
        &[],
        &[
            ctr("ro", probe, r#","read_only":true,"stop_signal":"SIGKILL""#),
            ctr("rw", probe, r#","stop_signal":"SIGKILL""#),
            format!(
                r#"{{"name":"tuned","image":"busybox","command":["/bin/sh","-c"],"args":[{}],
                "env":{{"FOO":"bar"}},"cwd":"/srv/work","user":"1000:1001","read_only":true,
                "mounts":[{{"type":"tmpfs","target":"/scratch","mode":"1777"}}],
                "capabilities":["CAP_NET_BIND_SERVICE"],"stop_signal":"SIGKILL"}}"#,
                serde_json::to_string(script).unwrap()
            ),
        ],
    );
    let mut p = w.start(&m);
    // The cwd, missing from the image, is made in the shared tree before
    // it is bound read-only (as runc and crun make a missing cwd).
    p.wait_for("tuned: user=1000:1001 cwd=/srv/work foo=bar path=/bin");
    p.wait_for("ro: root=ro");
    p.wait_for("rw: root=rw");
    p.wait_for("tuned: scratch=rw");
    // CAP_NET_BIND_SERVICE is bit 10: the bounding set holds it alone.
    let caps = p.wait_for("tuned: CapBnd:");
    assert!(caps.ends_with("0000000000000400"), "{caps}");
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

#[test]
fn image_units_run_under_the_default_seccomp_profile_unless_unconfined() {
    let w = World::new("seccomp");
    // Root without CAP_SYS_ADMIN may still make a user namespace (and hold
    // every capability inside it): the default profile says no.
    let probe =
        "grep Seccomp: /proc/self/status; unshare -U true 2>&1; echo userns=$?; exec sleep 1000";
    let m = manifest(
        &[],
        &[
            ctr("confined", probe, r#","stop_signal":"SIGKILL""#),
            ctr(
                "free",
                probe,
                r#","seccomp":"unconfined","stop_signal":"SIGKILL""#,
            ),
            ctr(
                "admin",
                probe,
                r#","capabilities":["CAP_SYS_ADMIN"],"stop_signal":"SIGKILL""#,
            ),
        ],
    );
    let mut p = w.start(&m);
    // Mode 2: a filter is installed.
    assert!(
        p.wait_for("confined: Seccomp:").ends_with("\t2"),
        "{}",
        p.dump()
    );
    p.wait_for("confined: unshare: unshare(0x10000000): Operation not permitted");
    p.wait_for("confined: userns=1");
    assert!(
        p.wait_for("free: Seccomp:").ends_with("\t0"),
        "{}",
        p.dump()
    );
    p.wait_for("free: userns=0");
    assert!(
        p.wait_for("admin: Seccomp:").ends_with("\t2"),
        "{}",
        p.dump()
    );
    p.wait_for("admin: userns=0");
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

#[test]
fn restarts_reuse_the_unpacked_rootfs() {
    let w = World::new("reuse");
    // Each run appends to a file in the container's root and crashes: the
    // rootfs is unpacked once per boot, so the second run sees the first.
    let m = manifest(
        &[],
        &[ctr(
            "counter",
            "echo run >> /runs; echo runs=$(wc -l < /runs); exit 1",
            r#","restart":{"policy":"on-failure","backoff":{"initial":"100ms"},"start_limit":{"count":2,"interval":"1m"}}"#,
        )],
    );
    let mut p = w.start(&m);
    p.wait_for("counter: runs=1");
    p.wait_for("counter: runs=2");
    p.wait_for("berth: service counter failed: start limit reached");
    assert_eq!(
        p.lines()
            .iter()
            .filter(|l| l.contains("image busybox unpacked"))
            .count(),
        1
    );
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

#[test]
fn read_only_units_share_the_image_tree_itself() {
    let w = World::new("robind");
    let forever = "trap 'exit 0' TERM; while true; do sleep 0.1; done";
    // The task `rw` writes into its root (an overlay); the read-only
    // services get the shared tree itself, bound read-only. They are
    // prepared before it although it comes first: /scratch, the
    // destination of their tmpfs, is missing from the image and can only
    // be made in the tree before an overlay sits on it.
    let scratch = r#","read_only":true,"mounts":[{"type":"tmpfs","target":"/scratch"}]"#;
    let m = manifest(
        &[ctr("rw", "echo new > /etc/added; echo wrote", "")],
        &[
            ctr(
                "ro1",
                &format!(
                    "touch /x 2>/dev/null && echo root=rw || echo root=ro; \
                     echo hi > /scratch/f && echo scratch=$(cat /scratch/f); {forever}"
                ),
                scratch,
            ),
            ctr(
                "ro2",
                &format!(
                    "echo added=$(test -e /etc/added && echo yes || echo no) \
                     f=$(test -e /scratch/f && echo yes || echo no); {forever}"
                ),
                scratch,
            ),
            // CAP_SYS_ADMIN could remount a bound tree read-write: this
            // one gets an overlay, which takes what it writes.
            ctr(
                "admin",
                &format!(
                    "mount -o remount,rw / && touch /admin-wrote && echo admin=wrote; {forever}"
                ),
                r#","read_only":true,"capabilities":["CAP_SYS_ADMIN"]"#,
            ),
        ],
    );
    let mut p = w.start(&m);
    p.wait_for("rw: wrote");
    p.wait_for("ro1: root=ro");
    p.wait_for("ro1: scratch=hi");
    p.wait_for("ro2: added=no f=no");
    p.wait_for("admin: admin=wrote");
    let ro1 = p.index_of("image busybox shared with service ro1 (read-only bind in ");
    let ro2 = p.index_of("image busybox shared with service ro2 (read-only bind in ");
    let rw = p.index_of("image busybox shared with task rw (overlay in ");
    assert!(ro1 < ro2 && ro2 < rw, "{}", p.dump());
    p.index_of("image busybox shared with service admin (overlay in ");
    // The bind is read-only in PID 1's own mount namespace too: nothing,
    // not even PID 1, writes the tree through it.
    let root = format!(
        "/proc/{}/root{}",
        p.init_pid(),
        w.dir.join("run/rootfs/ro1/root").display()
    );
    assert!(
        std::path::Path::new(&root).join("bin/busybox").exists(),
        "{root}"
    );
    let err = std::fs::write(format!("{root}/x"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS), "{err}");
    let shared: Vec<_> = std::fs::read_dir(w.dir.join("run/images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(shared.len(), 1, "{shared:?}");
    // The tmpfs's destination was made in the tree; nothing else changed.
    assert!(shared[0].join("scratch").is_dir());
    assert_eq!(
        std::fs::read_dir(shared[0].join("scratch"))
            .unwrap()
            .count(),
        0
    );
    assert!(!shared[0].join("etc/added").exists());
    assert!(!shared[0].join("x").exists());
    assert!(!shared[0].join("admin-wrote").exists());
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

#[test]
fn units_of_one_image_share_one_unpack_but_not_their_writes() {
    let w = World::new("share");
    let forever = "trap 'exit 0' TERM; while true; do sleep 0.1; done";
    // `writer` changes a file of the image, adds one and removes one;
    // `reader`, started after it, must still see the image as it was.
    let m = manifest(
        &[ctr(
            "writer",
            "echo changed > /etc/passwd; echo new > /etc/added; rm /bin/ls; echo wrote",
            "",
        )],
        &[ctr(
            "reader",
            &format!(
                "echo passwd=$(cut -d: -f1 /etc/passwd) added=$(test -e /etc/added && echo yes || echo no) ls=$(test -e /bin/ls && echo yes || echo no); {forever}"
            ),
            "",
        )],
    );
    let mut p = w.start(&m);
    p.wait_for("writer: wrote");
    let seen = p.wait_for("reader: passwd=");
    assert!(seen.ends_with("passwd=root added=no ls=yes"), "{seen}");
    let lines = p.lines();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("image busybox unpacked"))
            .count(),
        1,
        "{}",
        p.dump()
    );
    assert!(
        p.dump()
            .contains("image busybox shared with service reader (overlay in ")
    );
    // The shared tree itself is untouched; the writes are in writer's upper.
    let shared: Vec<_> = std::fs::read_dir(w.dir.join("run/images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(shared.len(), 1, "{shared:?}");
    assert_eq!(
        std::fs::read_to_string(shared[0].join("etc/passwd")).unwrap(),
        "root:x:0:0:root:/root:/bin/sh\n"
    );
    assert!(shared[0].join("bin/ls").symlink_metadata().is_ok());
    assert!(!shared[0].join("etc/added").exists());
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

/// On a machine the network is configured by a background thread
/// (`berth_init::machine`): a container that shares the machine's network
/// namespace starts once it has, one with a namespace of its own does not
/// wait; a failed network fails the first kind for good.
#[test]
fn units_sharing_the_network_wait_for_the_machine_setup() {
    use berth_init::container::ContainerLauncher;
    use berth_init::launcher::{LaunchError, Launcher, UnitKind};
    use berth_init::machine::MachineSetup;
    use berth_init::service::ExitStatus;
    use nix::sys::wait::{WaitStatus, waitpid};
    use std::sync::mpsc;

    let w = World::new("netwait");
    let m = manifest(
        &[],
        &[
            ctr("own", "exit 0", r#","read_only":true,"network":"none""#),
            ctr("shared", "exit 0", r#","read_only":true"#),
        ],
    );
    let services = w.services(&m);
    let mut l = ContainerLauncher::new(w.options());
    for s in &services {
        l.prepare(&s.name, &s.program).unwrap();
    }
    let (own, shared) = (services[0].program.clone(), services[1].program.clone());
    fn spawn(
        l: &mut ContainerLauncher,
        name: &str,
        p: &berth_init::manifest::Program,
    ) -> Result<nix::unistd::Pid, LaunchError> {
        let (_, out) = nix::unistd::pipe().unwrap();
        let (_, err) = nix::unistd::pipe().unwrap();
        l.spawn(UnitKind::Service, name, p, out, err)
    }
    fn run_to_exit(l: &mut ContainerLauncher, name: &str, pid: nix::unistd::Pid) {
        assert_eq!(
            waitpid(pid, None).unwrap(),
            WaitStatus::Exited(pid, 0),
            "{name}"
        );
        l.reaped(name, pid, ExitStatus::Code(0));
    }

    let (network_tx, network_rx) = mpsc::channel::<Result<(), String>>();
    let setup = MachineSetup::start(move |r| r.network(network_rx.recv().unwrap())).unwrap();
    l.set_machine_setup(setup.clone());
    // The supervisor asks first: only the unit that shares the network
    // has to wait (PID 1 goes on meanwhile).
    assert!(l.can_start("own", &own));
    assert!(!l.can_start("shared", &shared));
    // Its own namespace: starts while the network is still pending.
    let pid = spawn(&mut l, "own", &own).unwrap();
    run_to_exit(&mut l, "own", pid);
    // Started anyway, the launcher itself waits until the network is
    // configured.
    let waiting = std::thread::spawn(move || {
        let result = spawn(&mut l, "shared", &shared);
        (l, shared, result)
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        !waiting.is_finished(),
        "a unit sharing the network started before it was configured"
    );
    network_tx.send(Ok(())).unwrap();
    let (mut l, shared, result) = waiting.join().unwrap();
    run_to_exit(&mut l, "shared", result.unwrap());
    assert!(setup.network_ended());
    assert!(l.can_start("shared", &shared));

    // A network that failed fails such units for good, and only them.
    let failed =
        MachineSetup::start(|r| r.network(Err("interface eth0 not found".to_owned()))).unwrap();
    l.set_machine_setup(failed.clone());
    failed.wait_done();
    // Ended, if badly: the start goes ahead and fails.
    assert!(l.can_start("shared", &shared));
    let err = spawn(&mut l, "shared", &shared).unwrap_err();
    assert!(err.is_permanent());
    assert_eq!(
        berth_init::logging::error_chain(&err),
        "shared: the machine's network: interface eth0 not found"
    );
    let pid = spawn(&mut l, "own", &own).unwrap();
    run_to_exit(&mut l, "own", pid);
    l.cleanup();
}

/// The manifest's hostname is every image unit's, and its DNS reaches
/// image units on the machine's network: the
/// machine's resolv.conf bound read-only at /etc/resolv.conf (the image
/// has none), in a shared read-only root and in an overlay alike; a unit
/// with a network of its own gets no DNS.
#[test]
fn image_units_get_the_machines_hostname_and_resolv_conf() {
    use berth_init::container::{ContainerLauncher, ContainerOptions};
    use berth_init::launcher::{Launcher, UnitKind};
    use berth_init::service::ExitStatus;
    use nix::sys::wait::{WaitStatus, waitpid};
    use std::io::Read;

    let w = World::new("dns");
    let resolv = w.dir.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 10.0.2.3\nsearch qa.internal\n").unwrap();
    let probe = "hostname; cat /etc/resolv.conf 2>/dev/null || echo no-resolv; echo x >> /etc/resolv.conf 2>/dev/null || echo ro";
    let m = manifest(
        &[],
        &[
            ctr("shared", probe, r#","read_only":true"#),
            ctr("overlay", probe, ""),
            ctr("own", probe, r#","read_only":true,"network":"none""#),
        ],
    );
    let services = w.services(&m);
    let mut l = ContainerLauncher::new(ContainerOptions {
        resolv_conf: Some(resolv.clone()),
        hostname: Some("edge-1".into()),
        ..w.options()
    });
    let mut out = Vec::new();
    for s in &services {
        l.prepare(&s.name, &s.program).unwrap();
        let (mut r, wr) = std::io::pipe().unwrap();
        let (_, err) = nix::unistd::pipe().unwrap();
        let pid = l
            .spawn(UnitKind::Service, &s.name, &s.program, wr.into(), err)
            .unwrap();
        assert_eq!(
            waitpid(pid, None).unwrap(),
            WaitStatus::Exited(pid, 0),
            "{}",
            s.name
        );
        l.reaped(&s.name, pid, ExitStatus::Code(0));
        let mut text = String::new();
        r.read_to_string(&mut text).unwrap();
        out.push(text);
    }
    l.cleanup();
    let dns = "edge-1\nnameserver 10.0.2.3\nsearch qa.internal\nro\n";
    // `own` shares the tree in which `shared`'s mount target was made:
    // an empty file, no DNS; the machine's hostname all the same.
    assert_eq!(out, [dns, dns, "edge-1\nro\n"]);
    assert_eq!(
        std::fs::read_to_string(&resolv).unwrap(),
        "nameserver 10.0.2.3\nsearch qa.internal\n"
    );
}

/// A bundle in `dir` running `script` in a busybox root, with
/// `process.rlimits` set to `rlimits` (left out when `None`).
fn write_bundle(dir: &Path, script: &str, rlimits: Option<serde_json::Value>) {
    busybox_root(&dir.join("rootfs"), None);
    let spec = berth_bundles::spec::default_spec();
    let mut v = serde_json::to_value(&spec).unwrap();
    v["root"]["path"] = "rootfs".into();
    v["process"]["args"] = serde_json::json!(["/bin/sh", "-c", script]);
    v["process"]["env"] = serde_json::json!(["PATH=/bin"]);
    match rlimits {
        Some(r) => v["process"]["rlimits"] = r,
        None => {
            v["process"].as_object_mut().unwrap().remove("rlimits");
        }
    }
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&v).unwrap()).unwrap();
}

/// The soft and hard limits in a `/proc/self/limits` line a unit printed
/// (`[  1.234] unit: Max open files  1024  4096  files`), after `what`.
fn soft_hard(line: &str, what: &str) -> (String, String) {
    let rest = line.split_once(what).unwrap_or_else(|| panic!("{line}")).1;
    let mut words = rest.split_whitespace().map(str::to_owned);
    (words.next().unwrap(), words.next().unwrap())
}

/// Every unit starts with RLIMIT_NOFILE soft 1024 and PID 1's hard limit,
/// whatever PID 1's own soft limit (here raised to its hard one, as a
/// machine's PID 1 raises it), unless a bundle's config.json says
/// otherwise. No CAP_SYS_RESOURCE needed: only soft limits are raised,
/// and only up to the hard one.
#[test]
fn units_start_with_1024_open_files_and_pid1s_hard_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    // berth-init inherits this; the other tests of this binary get it too,
    // which changes nothing for them.
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let w = World::new("nofile");
    let probe = "grep 'open files' /proc/self/limits; exec sleep 1000";
    let own = w.dir.join("own");
    write_bundle(
        &own,
        probe,
        Some(serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 300, "hard": 600}])),
    );
    let bare = w.dir.join("bare");
    write_bundle(&bare, probe, None);
    let bundle = |name: &str, dir: &Path| {
        format!(
            r#"{{"name":"{name}","bundle":{},"stop_signal":"SIGKILL"}}"#,
            serde_json::to_string(dir).unwrap()
        )
    };
    let m = manifest(
        &[],
        &[
            ctr("image", probe, r#","stop_signal":"SIGKILL""#),
            sh("host", probe, r#","stop_signal":"SIGKILL""#),
            bundle("own", &own),
            bundle("bare", &bare),
        ],
    );
    let mut p = w.start(&m);
    let pid1 = std::fs::read_to_string(format!("/proc/{}/limits", p.init_pid())).unwrap();
    let pid1 = pid1.lines().find(|l| l.contains("open files")).unwrap();
    assert_eq!(
        soft_hard(pid1, "open files"),
        (hard.to_string(), hard.to_string())
    );
    let unit = (1024.min(hard).to_string(), hard.to_string());
    for name in ["image", "host", "bare"] {
        let line = p.wait_for(&format!("{name}: Max open files"));
        assert_eq!(soft_hard(&line, "open files"), unit, "{name}: {line}");
    }
    let line = p.wait_for("own: Max open files");
    assert_eq!(
        soft_hard(&line, "open files"),
        ("300".to_owned(), "600".to_owned())
    );
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

/// A unit's manifest `rlimits` reach its process, each in place of the
/// default, for an image unit and for a host unit (whose child sets them
/// before exec). Hard limits are only lowered (to no more than a fresh
/// kernel's: nofile 4096, locked memory 64 KiB), which needs no
/// CAP_SYS_RESOURCE.
#[test]
fn manifest_rlimits_reach_the_container() {
    let w = World::new("rlimits");
    let probe = "grep -E 'open files|core file|locked memory' /proc/self/limits; exec sleep 1000";
    let limits =
        r#","rlimits":["nofile=256:512","core=0","memlock=64KiB"],"stop_signal":"SIGKILL""#;
    let m = manifest(
        &[],
        &[ctr("ctrlim", probe, limits), sh("hostlim", probe, limits)],
    );
    let mut p = w.start(&m);
    let pair = |soft: &str, hard: &str| (soft.to_owned(), hard.to_owned());
    for unit in ["ctrlim", "hostlim"] {
        let line = p.wait_for(&format!("{unit}: Max open files"));
        assert_eq!(soft_hard(&line, "open files"), pair("256", "512"), "{line}");
        let line = p.wait_for(&format!("{unit}: Max core file size"));
        assert_eq!(soft_hard(&line, "core file size"), pair("0", "0"), "{line}");
        let line = p.wait_for(&format!("{unit}: Max locked memory"));
        assert_eq!(
            soft_hard(&line, "locked memory"),
            pair("65536", "65536"),
            "{line}"
        );
    }
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}

/// What PID 1 holds that a leak per start would grow: open fds, mounts in
/// its namespace, threads, its own memory (anonymous pages resident), and
/// on the host the cgroups and run-dir entries of its units.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Holdings {
    fds: usize,
    mounts: usize,
    threads: usize,
    anon_kib: u64,
    cgroups: usize,
    run_entries: usize,
}

fn count_tree(dir: &Path, dirs_only: bool) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            let below = if is_dir {
                count_tree(&e.path(), dirs_only)
            } else {
                0
            };
            usize::from(is_dir || !dirs_only) + below
        })
        .sum()
}

fn holdings(pid: i32, w: &World) -> Holdings {
    let proc = |what: &str| PathBuf::from(format!("/proc/{pid}/{what}"));
    let status = std::fs::read_to_string(proc("status")).unwrap();
    let anon_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssAnon in /proc/PID/status");
    let cgroup = w.cgroup_dir();
    assert!(cgroup.is_dir(), "no cgroup {}", cgroup.display());
    Holdings {
        fds: std::fs::read_dir(proc("fd")).unwrap().count(),
        mounts: std::fs::read_to_string(proc("mountinfo"))
            .unwrap()
            .lines()
            .count(),
        threads: std::fs::read_dir(proc("task")).unwrap().count(),
        anon_kib,
        cgroups: count_tree(&cgroup, true),
        run_entries: count_tree(&w.dir.join("run"), false),
    }
}

/// The least of each count over `samples` looks 10 ms apart: the counts
/// when no start is in flight, which a leak raises and a live start does not.
fn settled_holdings(pid: i32, w: &World, samples: usize) -> Holdings {
    let mut least = holdings(pid, w);
    for _ in 1..samples {
        std::thread::sleep(std::time::Duration::from_millis(10));
        let h = holdings(pid, w);
        least = Holdings {
            fds: least.fds.min(h.fds),
            mounts: least.mounts.min(h.mounts),
            threads: least.threads.min(h.threads),
            anon_kib: least.anon_kib.min(h.anon_kib),
            cgroups: least.cgroups.min(h.cgroups),
            run_entries: least.run_entries.min(h.run_entries),
        };
    }
    least
}

#[test]
fn hundreds_of_restarts_leave_pid_1_holding_what_it_held() {
    // An appliance runs for months: whatever PID 1 keeps per start of a
    // unit (an fd, a mount, a cgroup, a state file, memory) adds up. Two
    // units crash and restart every 20 ms: a container with everything a
    // start builds (its namespaces and own network namespace, a cgroup, an
    // overlay root on the shared image, a tmpfs, log pipes) and a host unit.
    // PID 1 is the static build a machine runs, with its allocator.
    let w = World::new("churn");
    let restart = r#","restart":{"policy":"always","backoff":{"initial":"20ms","factor":1,"max":"20ms"},"start_limit":{"count":100000,"interval":"1m"}}"#;
    let units = [
        ctr(
            "ctrloop",
            "echo run; exit 1",
            &format!(
                r#","network":"none","mounts":[{{"type":"tmpfs","target":"/scratch"}}]{restart}"#
            ),
        ),
        sh("hostloop", "echo run; exit 1", restart),
    ];
    // Each unit's ring of recent output (and PID 1's own) fills its pages
    // as lines come, up to `ring_size`: small here, so the warm-up fills them.
    let m = format!(
        r#"{{"version":1,"log":{{"ring_size":"1KiB"}},"services":[{}]}}"#,
        units.join(",")
    );
    let mut p = w.start_static(&m);
    let pid = p.init_pid();
    let wait_runs = |n| {
        for unit in ["ctrloop", "hostloop"] {
            p.wait_for_nth(&format!("] {unit}: run"), n);
        }
    };
    // Warm up first: rings, buffers and tables that reach their size once.
    wait_runs(100);
    let before = settled_holdings(pid, &w, 60);
    wait_runs(400);
    let after = settled_holdings(pid, &w, 60);
    println!("PID 1 after 100 starts of each unit: {before:?}; after 400: {after:?}");
    let same = |h: Holdings| Holdings { anon_kib: 0, ..h };
    assert_eq!(
        same(after),
        same(before),
        "after 300 more starts of each unit"
    );
    // Memory: the allocator may keep a little; 600 starts leaking even 100
    // bytes each would show as 60 KiB.
    assert!(
        after.anon_kib <= before.anon_kib + 48,
        "PID 1's memory grew from {} to {} KiB over 600 starts",
        before.anon_kib,
        after.anon_kib
    );
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit().code(), Some(0), "{}", p.dump());
}
