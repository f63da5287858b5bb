//! berth-runc driven as a shell user would: separate invocations for
//! create, state, start, kill, delete; run's exit status; one-line errors.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{Bundle, TempDir};
use serde_json::{Value, json};

/// Runs berth-runc with its stdout and stderr in files: a created
/// container inherits them (as with runc), so pipes would stay open.
fn runc(root: &Path, args: &[&str]) -> Output {
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let out_path = root.join(format!("out-{n}"));
    let err_path = root.join(format!("err-{n}"));
    let status = Command::new(env!("CARGO_BIN_EXE_berth-runc"))
        .arg("--root")
        .arg(root.join("state"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap())
        .status()
        .expect("run berth-runc");
    Output {
        status,
        stdout: fs::read(&out_path).unwrap(),
        stderr: fs::read(&err_path).unwrap(),
    }
}

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn ok(root: &Path, args: &[&str]) -> String {
    let o = runc(root, args);
    assert!(
        o.status.success(),
        "berth-runc {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// The single stderr line of a failing invocation.
fn err(root: &Path, args: &[&str]) -> String {
    let o = runc(root, args);
    assert_eq!(o.status.code(), Some(1), "berth-runc {args:?} should fail");
    let e = String::from_utf8(o.stderr).unwrap();
    assert_eq!(e.lines().count(), 1, "one line: {e:?}");
    assert!(e.starts_with("berth-runc: "), "{e}");
    e
}

fn state(root: &Path, id: &str) -> Value {
    serde_json::from_str(&ok(root, &["state", id])).unwrap()
}

fn wait_status(root: &Path, id: &str, want: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while state(root, id)["status"] != want {
        assert!(
            std::time::Instant::now() < deadline,
            "{id} never became {want}: {}",
            state(root, id)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn create_start_kill_delete_as_separate_invocations() {
    let root = TempDir::new("cli-root");
    let mut b = Bundle::new();
    b.script("trap 'exit 0' TERM; touch /tmp/ready; sleep 60 & wait");
    b.write();
    let bundle = b.dir().to_str().unwrap();
    let pid_file = root.0.join("pid");
    ok(
        &root.0,
        &[
            "create",
            "--bundle",
            bundle,
            "--pid-file",
            pid_file.to_str().unwrap(),
            "c1",
        ],
    );
    let st = state(&root.0, "c1");
    assert_eq!(st["status"], "created");
    assert_eq!(st["id"], "c1");
    assert_eq!(st["bundle"], json!(b.dir()));
    assert_eq!(st["rootfs"], json!(b.rootfs()));
    assert!(st["created"].as_str().unwrap().ends_with('Z'));
    assert_eq!(st["owner"], "root");
    let pid: i64 = fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    assert_eq!(st["pid"], pid);
    assert!(
        !b.rootfs().join("tmp/ready").exists(),
        "the process waits for start"
    );

    let list = ok(&root.0, &["list"]);
    assert!(list.starts_with("ID"), "{list}");
    assert!(
        list.lines()
            .any(|l| l.starts_with("c1 ") && l.contains("created")),
        "{list}"
    );
    assert_eq!(ok(&root.0, &["list", "-q"]), "c1\n");
    let json_list: Value =
        serde_json::from_str(&ok(&root.0, &["list", "--format", "json"])).unwrap();
    assert_eq!(json_list[0]["id"], "c1");

    ok(&root.0, &["start", "c1"]);
    wait_status(&root.0, "c1", "running");
    assert!(err(&root.0, &["start", "c1"]).contains("is running, not created"));
    assert!(err(&root.0, &["delete", "c1"]).contains("is running"));
    while !b.rootfs().join("tmp/ready").exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Signal 0 checks that the process lives, as with runc.
    ok(&root.0, &["kill", "c1", "0"]);
    ok(&root.0, &["kill", "c1", "SIGTERM"]);
    wait_status(&root.0, "c1", "stopped");
    assert!(err(&root.0, &["kill", "c1"]).contains("is stopped"));
    assert!(err(&root.0, &["kill", "c1", "0"]).contains("is stopped"));
    ok(&root.0, &["delete", "c1"]);
    assert!(err(&root.0, &["state", "c1"]).contains("container c1 does not exist"));
    assert_eq!(ok(&root.0, &["list", "-q"]), "");

    // A created container (pid 1 of its pid namespace, waiting for start,
    // deaf to a plain TERM) is ended by kill, and cannot start after.
    ok(&root.0, &["create", "--bundle", bundle, "c2"]);
    ok(&root.0, &["kill", "c2"]);
    wait_status(&root.0, "c2", "stopped");
    assert!(err(&root.0, &["start", "c2"]).contains("is stopped"));
    ok(&root.0, &["delete", "c2"]);
}

#[test]
fn the_created_process_does_not_carry_the_callers_environment() {
    // Until start it is berth-runc itself; what the caller had in its
    // environment (a token) is not in /proc/PID/environ.
    let root = TempDir::new("cli-root");
    let mut b = Bundle::new();
    b.script("exit 0");
    b.write();
    let st = Command::new(env!("CARGO_BIN_EXE_berth-runc"))
        .arg("--root")
        .arg(root.0.join("state"))
        .args(["create", "--bundle", b.dir().to_str().unwrap(), "env1"])
        .env("BERTH_TEST_SECRET", "s3cr3t")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let pid = state(&root.0, "env1")["pid"].as_i64().unwrap();
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        !String::from_utf8_lossy(&environ).contains("BERTH_TEST_SECRET"),
        "{}",
        String::from_utf8_lossy(&environ)
    );
    ok(&root.0, &["delete", "env1"]);
}

#[test]
fn kill_takes_names_numbers_and_all_and_delete_force_stops() {
    let root = TempDir::new("cli-root");
    let mut b = Bundle::new();
    b.script("sleep 60 & sleep 60");
    b.write();
    let bundle = b.dir().to_str().unwrap();
    ok(&root.0, &["create", "-b", bundle, "k1"]);
    ok(&root.0, &["start", "k1"]);
    assert!(err(&root.0, &["kill", "k1", "NOSUCH"]).contains("unknown signal name"));
    // 0 only probes that the process lives (runc 1.1 takes it too).
    ok(&root.0, &["kill", "k1", "0"]);
    ok(&root.0, &["kill", "--all", "k1", "9"]);
    wait_status(&root.0, "k1", "stopped");
    ok(&root.0, &["delete", "k1"]);

    ok(&root.0, &["create", "-b", bundle, "k2"]);
    ok(&root.0, &["start", "k2"]);
    ok(&root.0, &["delete", "--force", "k2"]);
    assert!(err(&root.0, &["state", "k2"]).contains("does not exist"));
    // A created container is deleted without force, as runc does.
    ok(&root.0, &["create", "-b", bundle, "k2"]);
    ok(&root.0, &["delete", "k2"]);
    assert!(err(&root.0, &["state", "k2"]).contains("does not exist"));
    // runc: delete --force of a missing container succeeds.
    ok(&root.0, &["delete", "-f", "k2"]);
}

#[test]
fn run_exits_with_the_containers_status() {
    let root = TempDir::new("cli-root");
    let mut b = Bundle::new();
    let bundle = b.dir().to_str().unwrap().to_string();
    b.script("echo out; echo err >&2; exit 42");
    b.write();
    let o = runc(&root.0, &["run", "--bundle", &bundle, "r1"]);
    assert_eq!(o.status.code(), Some(42));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");
    assert_eq!(
        ok(&root.0, &["list", "-q"]),
        "",
        "run deletes the container"
    );
    // Killed by a signal: 128 + signal (no pid namespace, so the shell is
    // not an init that ignores signals).
    b.config["linux"]["namespaces"] = json!([{"type": "mount"}]);
    b.config.as_object_mut().unwrap().remove("hostname");
    b.script("kill -KILL $$");
    b.write();
    assert_eq!(
        runc(&root.0, &["run", "-b", &bundle, "r2"]).status.code(),
        Some(137)
    );
    // A failing poststop hook is a warning: the status stays the
    // container's.
    b.script("exit 5");
    b.config["hooks"] = json!({"poststop": [{"path": "/bin/sh", "args": ["sh", "-c", "exit 7"]}]});
    b.write();
    let o = runc(&root.0, &["run", "-b", &bundle, "r3"]);
    assert_eq!(o.status.code(), Some(5));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("berth-runc: warning: ") && err.contains("exit status 7"),
        "{err}"
    );
    assert_eq!(ok(&root.0, &["list", "-q"]), "");
    // A failing startContainer hook: the program never runs, the status
    // is 1 (runc 1.1.5 and crun 1.8.1 give 1 too), and stderr says why.
    b.script("echo ran");
    b.config["hooks"] =
        json!({"startContainer": [{"path": "/bin/busybox", "args": ["busybox", "false"]}]});
    b.write();
    let o = runc(&root.0, &["run", "-b", &bundle, "r4"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "");
    assert!(err.contains("startContainer hook"), "{err}");
    // A program the kernel cannot run (no ELF, no #!) fails at exec,
    // after start: found but not runnable, the shell's 126.
    b.config.as_object_mut().unwrap().remove("hooks");
    b.config["process"]["args"] = json!(["/not-a-program"]);
    b.write();
    let garbage = b.rootfs().join("not-a-program");
    fs::write(&garbage, "neither ELF nor #!\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&garbage, fs::Permissions::from_mode(0o755)).unwrap();
    let o = runc(&root.0, &["run", "-b", &bundle, "r5"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(126), "{err}");
}

#[test]
fn delete_force_says_what_it_cannot_reach() {
    // No pid namespace and no cgroup: only the first process can be
    // found and killed; delete says so.
    let root = TempDir::new("cli-root");
    let mut b = Bundle::new();
    let bundle = b.dir().to_str().unwrap().to_string();
    b.config["linux"]["namespaces"] = json!([{"type": "mount"}]);
    b.config.as_object_mut().unwrap().remove("hostname");
    b.script("sleep 1000");
    b.write();
    ok(&root.0, &["run", "-d", "-b", &bundle, "nopid"]);
    let o = runc(&root.0, &["delete", "-f", "nopid"]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("has neither a pid namespace nor a cgroup of its own"),
        "{err}"
    );
    assert_eq!(ok(&root.0, &["list", "-q"]), "");
}

#[test]
fn run_forwards_signals_to_the_container() {
    let root = TempDir::new("cli-root");
    let mut b = Bundle::new();
    b.script("trap 'exit 5' TERM; touch /tmp/ready; sleep 60 & wait");
    b.write();
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth-runc"))
        .arg("--root")
        .arg(root.0.join("state"))
        .args(["run", "-b", b.dir().to_str().unwrap(), "f1"])
        .spawn()
        .unwrap();
    while !b.rootfs().join("tmp/ready").exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    berth_runtime::sys::kill(child.id() as i32, libc::SIGTERM).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(5));
}

#[test]
fn spec_writes_a_runnable_default_config() {
    let root = TempDir::new("cli-root");
    let b = Bundle::new();
    let dir = TempDir::new("spec");
    ok(&root.0, &["spec", "--bundle", dir.0.to_str().unwrap()]);
    let mut cfg: Value =
        serde_json::from_str(&fs::read_to_string(dir.0.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["process"]["terminal"], false);
    assert!(
        err(&root.0, &["spec", "--bundle", dir.0.to_str().unwrap()]).contains("already exists")
    );
    // Runs as is on the busybox rootfs (read-only root, default caps).
    cfg["process"]["args"] = json!(["sh", "-c", "touch /x 2>/dev/null || exit 9"]);
    fs::write(b.dir().join("config.json"), cfg.to_string()).unwrap();
    let log = root.0.join("log");
    let o = runc(
        &root.0,
        &[
            "--log",
            log.to_str().unwrap(),
            "run",
            "-b",
            b.dir().to_str().unwrap(),
            "s1",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Like `runc spec`, the default asks for ambient capabilities without
    // inheritable ones: not raised, and said so in the log.
    let log = fs::read_to_string(&log).unwrap();
    assert!(
        log.starts_with("level=warning msg=\"ambient capabilities"),
        "{log}"
    );
}

#[test]
fn errors_are_one_line_and_go_to_the_log_too() {
    let root = TempDir::new("cli-root");
    let b = Bundle::new();
    fs::write(b.dir().join("config.json"), "{not json").unwrap();
    let bundle = b.dir().to_str().unwrap();
    let e = err(&root.0, &["create", "-b", bundle, "e1"]);
    assert!(
        e.contains("parse config") && e.contains("config.json"),
        "{e}"
    );
    // serde alone would read an array as a struct with no fields.
    fs::write(b.dir().join("config.json"), " [] ").unwrap();
    let e = err(&root.0, &["create", "-b", bundle, "e1"]);
    assert!(e.contains("config.json: not a JSON object"), "{e}");
    fs::write(b.dir().join("config.json"), "{not json").unwrap();
    let log = root.0.join("log.json");
    err(
        &root.0,
        &[
            "--log",
            log.to_str().unwrap(),
            "--log-format",
            "json",
            "create",
            "-b",
            bundle,
            "e1",
        ],
    );
    let entry: Value =
        serde_json::from_str(fs::read_to_string(&log).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(entry["level"], "error");
    assert!(entry["msg"].as_str().unwrap().contains("parse config"));
    assert!(err(&root.0, &["frobnicate"]).contains("unknown command"));
    // An id that is not UTF-8: a usage error, not a panic.
    use std::os::unix::ffi::OsStrExt;
    let o = Command::new(env!("CARGO_BIN_EXE_berth-runc"))
        .args(["--root", root.0.to_str().unwrap(), "state"])
        .arg(std::ffi::OsStr::from_bytes(b"a\xff"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "berth-runc: argument \"a\\xFF\" is not UTF-8\n"
    );
    assert!(err(&root.0, &["start"]).contains("missing container id"));
    assert!(
        err(&root.0, &["create", "-b", "/nonexistent", "e2"])
            .contains("read config /nonexistent/config.json")
    );
    assert!(err(&root.0, &["state", "../etc"]).contains("invalid container id"));
    assert!(err(&root.0, &["--log-format", "xml", "list"]).contains("--log-format"));
}

#[test]
fn the_container_process_runs_from_a_sealed_copy_of_the_runtime() {
    // CVE-2019-5736: until its exec the container's process is the runtime
    // binary, and a `#!/proc/self/exe` entrypoint would run it inside the
    // container; a host file there could be reopened for writing once no
    // one executes it. berth-runc runs from a sealed memfd copy instead.
    let root = TempDir::new("cli-root");
    let mut b = Bundle::new();
    b.script("true");
    b.write();
    let bundle = b.dir().to_str().unwrap();
    ok(&root.0, &["create", "--bundle", bundle, "sealed"]);
    let pid = state(&root.0, "sealed")["pid"].as_i64().unwrap();
    let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let exe_file = fs::File::open(format!("/proc/{pid}/exe")).unwrap();
    let seals = rustix::fs::fcntl_get_seals(&exe_file);
    ok(&root.0, &["delete", "--force", "sealed"]);
    assert!(
        exe.to_string_lossy().starts_with("/memfd:"),
        "the waiting container process runs {}",
        exe.display()
    );
    let seals = seals.expect("a sealable memfd");
    for s in [
        rustix::fs::SealFlags::SEAL,
        rustix::fs::SealFlags::SHRINK,
        rustix::fs::SealFlags::GROW,
        rustix::fs::SealFlags::WRITE,
    ] {
        assert!(seals.contains(s), "seal {s:?} missing: {seals:?}");
    }
}

#[test]
fn the_sealed_copy_runs_where_memfds_default_to_noexec() {
    // vm.memfd_noexec=1 (Linux 6.3+, per pid namespace) seals memfds
    // non-executable unless MFD_EXEC is asked for. Set in a pid namespace
    // of its own, so the host keeps its setting.
    assert!(
        Path::new("/usr/bin/unshare").exists(),
        "unshare missing: apt-get install util-linux"
    );
    let root = TempDir::new("cli-root");
    let mut b = Bundle::new();
    b.script("exit 7");
    b.write();
    let script = format!(
        "echo 1 > /proc/sys/vm/memfd_noexec && exec {} --root {} run --bundle {} noexec",
        env!("CARGO_BIN_EXE_berth-runc"),
        root.0.join("state").display(),
        b.dir().display()
    );
    let out = Command::new("/usr/bin/unshare")
        .args(["--pid", "--fork", "sh", "-c", &script])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn delete_force_clears_what_an_aborted_create_left() {
    // A create killed before it wrote state.json leaves the container's
    // directory behind: the id then "exists" for create but not for
    // delete. As runc does, delete --force removes the directory.
    let root = TempDir::new("cli-root");
    let mut b = Bundle::new();
    b.script("true");
    b.write();
    let bundle = b.dir().to_str().unwrap();
    let dir = root.0.join("state").join("aborted");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("exec.fifo"), "").unwrap();
    assert!(err(&root.0, &["create", "-b", bundle, "aborted"]).contains("already exists"));
    assert!(err(&root.0, &["delete", "aborted"]).contains("does not exist"));
    assert!(dir.exists(), "delete without force leaves it");
    ok(&root.0, &["delete", "--force", "aborted"]);
    assert!(
        !dir.exists(),
        "delete --force removed the leftover directory"
    );
    ok(&root.0, &["create", "-b", bundle, "aborted"]);
    ok(&root.0, &["delete", "--force", "aborted"]);
}

/// Output into a pipe whose reader is gone (`berth-runc list | head`)
/// ends berth-runc quietly with the status a shell gives a command ended
/// by SIGPIPE: no panic, no abort (exit 134), no message. berth-runc
/// itself ignores SIGPIPE, so that a write elsewhere cannot end it
/// half-way through a create.
#[test]
fn a_closed_stdout_pipe_ends_berth_runc_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let root = TempDir::new("cli-root");
    let mut b = Bundle::new();
    let bundle = b.dir().to_str().unwrap().to_string();
    b.script("sleep 60");
    b.write();
    ok(&root.0, &["create", "-b", &bundle, "piped"]);
    for args in [
        &["--help"][..],
        &["--version"],
        &["list"],
        &["list", "-q"],
        &["list", "--format", "json"],
        &["state", "piped"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_berth-runc"))
            .arg("--root")
            .arg(root.0.join("state"))
            .args(args)
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), None, "{args:?}: {:?}", out.status);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
    ok(&root.0, &["delete", "--force", "piped"]);
}

/// berth-runc ignores SIGPIPE; the hooks it runs and the container's
/// process start with it at its default action, as a program expects.
#[test]
fn sigpipe_is_ignored_by_berth_runc_only() {
    let root = TempDir::new("cli-root");
    let tmp = TempDir::new("sigpipe");
    let log = tmp.0.join("log");
    let mut b = Bundle::new();
    let bundle = b.dir().to_str().unwrap().to_string();
    // SigIgn is a hex mask; SIGPIPE (13) is bit 12.
    let ign = |who: &str, status: &str| {
        format!(
            "echo {who}=$(( 0x$(sed -n 's/^SigIgn:[[:space:]]*//p' {status}) >> 12 & 1 )) >> {}",
            log.display()
        )
    };
    b.config["hooks"] = json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c",
        format!("{}; {}", ign("runtime", "/proc/$PPID/status"), ign("hook", "/proc/self/status"))]}]});
    b.script("sed -n 's/^SigIgn:[[:space:]]*//p' /proc/self/status");
    b.write();
    let out = ok(&root.0, &["run", "-b", &bundle, "sigpipe"]);
    let container = u64::from_str_radix(out.trim(), 16).unwrap();
    assert_eq!(
        container >> 12 & 1,
        0,
        "the container ignores SIGPIPE: {out}"
    );
    assert_eq!(
        fs::read_to_string(&log).unwrap(),
        "runtime=1\nhook=0\n",
        "berth-runc ignores SIGPIPE, its hook does not"
    );
}

/// A write of berth-runc to a pipe whose reader is gone, half-way through
/// a create (here the byte that lets the container's process go on after
/// the createRuntime hooks, when a hook killed it), is a one-line error
/// and the create is undone: no death by SIGPIPE leaving the state
/// behind and the poststop hooks not run.
#[test]
fn a_write_to_a_closed_pipe_during_create_is_a_one_line_error() {
    let root = TempDir::new("cli-root");
    let tmp = TempDir::new("epipe");
    let log = tmp.0.join("poststop");
    let mut b = Bundle::new();
    let bundle = b.dir().to_str().unwrap().to_string();
    // The hook kills the container's process and waits until it is a
    // zombie, whose fds (the pipe's read end) are closed.
    let kill = r#"pid=$(grep -o '"pid": *[0-9]*' | grep -o '[0-9]*$'); kill -9 "$pid"
        while [ "$(sed 's/.*) \(.\).*/\1/' /proc/$pid/stat)" != Z ]; do sleep 0.01; done"#;
    b.config["hooks"] = json!({
        "createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", kill]}],
        "poststop": [{"path": "/bin/sh", "args": ["sh", "-c", format!("echo ran >> {}", log.display())]}]
    });
    b.write();
    let e = err(&root.0, &["create", "-b", &bundle, "epipe"]);
    assert!(e.contains("killed by signal 9"), "{e}");
    assert_eq!(ok(&root.0, &["list", "-q"]), "");
    let left = fs::read_dir(root.0.join("state")).map_or(0, |d| d.count());
    assert_eq!(left, 0, "the create left state behind");
    assert_eq!(fs::read_to_string(&log).unwrap(), "ran\n");
}

/// Where vm.memfd_noexec=2 forbids executable memfds (per pid namespace),
/// berth-runc cannot make the sealed copy it runs containers from: it says
/// so, and which setting, rather than a bare "Permission denied".
#[test]
fn memfd_noexec_2_is_named() {
    let root = TempDir::new("cli-root");
    let mut b = Bundle::new();
    let bundle = b.dir().to_str().unwrap().to_string();
    b.script("exit 0");
    b.write();
    assert!(
        std::path::Path::new("/proc/sys/vm/memfd_noexec").exists(),
        "this test needs Linux 6.3 or later (vm.memfd_noexec)"
    );
    let o = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "sh", "-c"])
        .arg(r#"echo 2 > /proc/sys/vm/memfd_noexec && exec "$@""#)
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_berth-runc"))
        .arg("--root")
        .arg(&root.0)
        .args(["run", "--bundle", &bundle, "noexec"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("vm.memfd_noexec=2"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
