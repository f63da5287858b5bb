//! Hooks run at their lifecycle points, in order, with the state on stdin.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use berth_runtime::ExitStatus;
use common::{Bundle, TempDir, create_error};
use serde_json::{Value, json};

fn hook(log: &std::path::Path, name: &str) -> Value {
    // Appends "<name> <state json>" as one line.
    json!({"path": "/bin/sh", "args": ["sh", "-c", format!("printf '%s ' {name} >> {0}; cat >> {0}; echo >> {0}", log.display())]})
}

#[test]
fn hooks_run_in_order_with_the_state_on_stdin() {
    let tmp = TempDir::new("hooklog");
    let log = tmp.0.join("log");
    let mut b = Bundle::new();
    b.script("exit 0");
    b.config["annotations"] = json!({"a": "b"});
    b.config["hooks"] = json!({
        "prestart": [hook(&log, "prestart")],
        "createRuntime": [hook(&log, "createRuntime1"), hook(&log, "createRuntime2")],
        "poststart": [hook(&log, "poststart")],
        "poststop": [hook(&log, "poststop")]
    });
    b.write();
    let t = common::runtime();
    let mut c = t.rt.create("hooked", b.dir(), Default::default()).unwrap();
    let pid = c.pid();
    assert_eq!(
        fs::read_to_string(&log).unwrap().lines().count(),
        3,
        "create runs prestart and createRuntime"
    );
    c.start().unwrap();
    assert_eq!(c.wait().unwrap(), ExitStatus::Exited(0));
    c.delete(false).unwrap();
    let text = fs::read_to_string(&log).unwrap();
    let lines: Vec<(&str, Value)> = text
        .lines()
        .map(|l| {
            let (name, json) = l.split_once(' ').unwrap();
            (name, serde_json::from_str(json).unwrap())
        })
        .collect();
    let names: Vec<&str> = lines.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "prestart",
            "createRuntime1",
            "createRuntime2",
            "poststart",
            "poststop"
        ]
    );
    for (name, state) in &lines {
        assert_eq!(state["id"], "hooked", "{name}");
        assert_eq!(state["bundle"], json!(b.dir()), "{name}");
        assert_eq!(state["annotations"]["a"], "b", "{name}");
        assert!(state["ociVersion"].is_string());
    }
    assert_eq!(lines[0].1["status"], "creating");
    assert_eq!(lines[0].1["pid"], pid);
    assert_eq!(lines[3].1["status"], "running");
    assert_eq!(lines[4].1["status"], "stopped");
}

#[test]
fn a_failing_create_runtime_hook_fails_create_and_cleans_up() {
    let mut b = Bundle::new();
    b.config["hooks"] = json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "echo nope >&2; exit 3"]}]});
    let e = create_error(&b);
    assert!(
        e.contains("createRuntime") && e.contains("exit status 3"),
        "{e}"
    );
}

#[test]
fn a_hook_past_its_timeout_is_an_error() {
    let mut b = Bundle::new();
    b.config["hooks"] =
        json!({"prestart": [{"path": "/bin/sleep", "args": ["sleep", "60"], "timeout": 1}]});
    let e = create_error(&b);
    assert!(e.contains("prestart") && e.contains("timed out"), "{e}");
}

#[test]
fn create_container_and_start_container_hooks_run_inside_the_container() {
    let tmp = TempDir::new("hooklog");
    let log = tmp.0.join("log");
    let mut b = Bundle::new();
    // The program sees the startContainer hook's file: it ran first.
    b.script("cat /tmp/started");
    b.config["hooks"] = json!({
        "createRuntime": [hook(&log, "createRuntime")],
        // Before pivot_root, in the container's mount namespace: the
        // container's /proc is mounted under the rootfs.
        "createContainer": [{"path": "/bin/sh", "args": ["sh", "-c", format!(
            "printf 'createContainer ' >> {0}; cat >> {0}; echo >> {0}; grep -q ' {1}/proc ' /proc/self/mountinfo && echo mounted >> {0}",
            log.display(), b.rootfs().display())]}],
        // After start, resolved in the container's root.
        "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "cat > /tmp/started"], "env": ["PATH=/bin"]}]
    });
    b.write();
    let t = common::runtime();
    let (mut out_r, out_w) = std::io::pipe().unwrap();
    let opts = berth_runtime::CreateOptions {
        stdio: berth_runtime::Stdio {
            stdout: Some(out_w.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut c = t.rt.create("inhooks", b.dir(), opts).unwrap();
    let pid = c.pid();
    assert!(
        !b.rootfs().join("tmp/started").exists(),
        "startContainer waits for start"
    );
    c.start().unwrap();
    assert_eq!(c.wait().unwrap(), ExitStatus::Exited(0));
    c.delete(false).unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut out_r, &mut out).unwrap();
    let started: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(started["status"], "created");
    assert_eq!(started["pid"], pid);
    let text = fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("createRuntime "), "{text}");
    assert!(lines[1].starts_with("createContainer "), "{text}");
    let state: Value = serde_json::from_str(lines[1].split_once(' ').unwrap().1).unwrap();
    assert_eq!(state["status"], "creating");
    assert_eq!(state["id"], "inhooks");
    assert_eq!(lines[2], "mounted");
}

#[test]
fn a_failing_create_container_hook_fails_create() {
    let mut b = Bundle::new();
    b.config["hooks"] =
        json!({"createContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "exit 4"]}]});
    let e = create_error(&b);
    assert!(
        e.contains("createContainer hook failed: /bin/sh exited with status 4"),
        "{e}"
    );
    b.config["hooks"] =
        json!({"createContainer": [{"path": "/bin/sleep", "args": ["sleep", "60"], "timeout": 1}]});
    let e = create_error(&b);
    assert!(
        e.contains("run createContainer hook: /bin/sleep timed out"),
        "{e}"
    );
}

#[test]
fn a_failed_create_still_runs_the_poststop_hooks() {
    // runtime-spec: a failing prestart/createRuntime/createContainer hook
    // stops the container and the lifecycle goes on with delete, whose
    // poststop hooks undo what the earlier ones set up (runc's destroy
    // runs them too). The same holds for any failure after validation.
    let tmp = TempDir::new("hooklog");
    let log = tmp.0.join("log");
    let mut b = Bundle::new();
    b.config["hooks"] = json!({
        "createRuntime": [hook(&log, "createRuntime"), {"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]}],
        "poststop": [hook(&log, "poststop")]
    });
    let e = create_error(&b);
    assert!(e.contains("exit status 3"), "{e}");
    let text = fs::read_to_string(&log).unwrap();
    let names: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(names, ["createRuntime", "poststop"]);
    let (_, state) = text.lines().nth(1).unwrap().split_once(' ').unwrap();
    let state: Value = serde_json::from_str(state).unwrap();
    assert_eq!(state["status"], "stopped");

    // A failure in the container process (a cwd that is a file) too.
    fs::remove_file(&log).unwrap();
    let mut b = Bundle::new();
    b.config["process"]["cwd"] = json!("/bin/busybox");
    b.config["hooks"] = json!({"poststop": [hook(&log, "poststop")]});
    let e = create_error(&b);
    assert!(e.contains("change to cwd /bin/busybox"), "{e}");
    assert_eq!(fs::read_to_string(&log).unwrap().lines().count(), 1);
}

/// runtime-spec: a failing poststop hook is a warning; the remaining
/// hooks run and the container is deleted all the same.
#[test]
fn a_failing_poststop_hook_is_a_warning_and_delete_goes_on() {
    let tmp = TempDir::new("poststop-fail");
    let log = tmp.0.join("log");
    let mut b = Bundle::new();
    b.script("exit 5");
    b.config["hooks"] = json!({"poststop": [
        {"path": "/bin/sh", "args": ["sh", "-c", "echo hookerr >&2; exit 7"]},
        hook(&log, "poststop2")
    ]});
    b.write();
    let t = common::runtime();
    let mut c =
        t.rt.create("poststop-fail", b.dir(), Default::default())
            .unwrap();
    c.start().unwrap();
    assert_eq!(c.wait().unwrap(), ExitStatus::Exited(5));
    c.delete(false).unwrap();
    assert_eq!(c.warnings().len(), 1, "{:?}", c.warnings());
    assert!(
        c.warnings()[0].contains("exit status 7") && c.warnings()[0].contains("hookerr"),
        "{:?}",
        c.warnings()
    );
    assert_eq!(fs::read_to_string(&log).unwrap().lines().count(), 1);
    assert!(t.rt.load("poststop-fail").is_err(), "deleted");
}

/// A poststart hook that fails fails the start and ends the container, as
/// runc does: the caller is not left with a running container it was told
/// did not start.
#[test]
fn a_failed_poststart_hook_ends_the_container() {
    let mut b = Bundle::new();
    b.script("sleep 30");
    b.config["hooks"] = json!({"poststart": [{"path": "/bin/false"}]});
    b.write();
    let t = common::runtime();
    let mut c =
        t.rt.create("poststart-fails", b.dir(), Default::default())
            .unwrap();
    let err = common::chain(&c.start().unwrap_err());
    assert!(err.contains("poststart"), "{err}");
    assert_eq!(c.wait().unwrap(), ExitStatus::Signaled(9));
    c.delete(false).unwrap();
}

/// berth's default profile (as Docker's and containerd's) makes clone3
/// fail with ENOSYS. Without no_new_privs the filter is loaded before
/// start, so the startContainer hooks are forked under it: the fork falls
/// back to clone(2), as a C library's does.
#[test]
fn a_start_container_hook_runs_under_the_default_profile_without_no_new_privileges() {
    let profile = berth_runtime::seccomp::default_profile(&Default::default()).unwrap();
    let mut b = Bundle::new();
    b.config["linux"]["seccomp"] = serde_json::to_value(&profile).unwrap();
    b.config["process"]["noNewPrivileges"] = json!(false);
    b.config["hooks"] = json!({"startContainer": [
        {"path": "/bin/sh", "args": ["sh", "-c", "echo hooked > /tmp/started"]}
    ]});
    let out = common::run_ok(&mut b, "cat /tmp/started");
    assert_eq!(out, "hooked\n");
}

/// runtime-spec: poststop runs after the container is deleted. As runc's
/// destroy: what the container left in its cgroup is killed and the
/// cgroup and the state are gone when the poststop hooks run.
#[test]
fn poststop_runs_after_the_processes_and_the_state_are_gone() {
    let tmp = TempDir::new("poststop-after");
    let log = tmp.0.join("log");
    let mut b = Bundle::new();
    let id = common::unique_id("poststop-after");
    let mount = berth_runtime::cgroup::find_cgroup2_mount(
        &fs::read_to_string("/proc/self/mountinfo").unwrap(),
    )
    .expect("a cgroup2 mount (the unified hierarchy)");
    let cg = mount.join(format!("berth-test/{id}"));
    b.config["linux"]["cgroupsPath"] = json!(format!("/berth-test/{id}"));
    // No pid namespace: the background sleep outlives the shell.
    b.config["linux"]["namespaces"] = json!([{"type": "mount"}]);
    b.config.as_object_mut().unwrap().remove("hostname");
    b.script("setsid sleep 1000 & exit 0");
    let t = common::runtime();
    let state = t.rt.root().join(&id).join("state.json");
    b.config["hooks"] = json!({"poststop": [{"path": "/bin/sh", "args": ["sh", "-c", format!(
        "echo procs=$(cat {}/cgroup.procs 2>/dev/null | wc -l) state=$(test -e {} && echo yes || echo no) >> {}",
        cg.display(), state.display(), log.display())]}]});
    b.write();
    let mut c = t.rt.create(&id, b.dir(), Default::default()).unwrap();
    c.start().unwrap();
    assert_eq!(c.wait().unwrap(), ExitStatus::Exited(0));
    assert!(state.exists());
    c.delete(false).unwrap();
    let _ = fs::remove_dir(mount.join("berth-test"));
    assert_eq!(fs::read_to_string(&log).unwrap(), "procs=0 state=no\n");
    assert!(!cg.exists(), "the cgroup is gone");
}

/// A delete that fails (here the state directory cannot be removed: a
/// mount inside it) runs no poststop hook and leaves the container
/// loadable; the retried delete (another process's, say) runs them, once,
/// and a third delete is told the container is gone.
#[test]
fn poststop_runs_once_when_a_delete_is_tried_again() {
    let tmp = TempDir::new("poststop-once");
    let log = tmp.0.join("log");
    let mut b = Bundle::new();
    b.script("exit 0");
    b.config["hooks"] = json!({"poststop": [hook(&log, "poststop")]});
    b.write();
    let t = common::runtime();
    let id = common::unique_id("poststop-once");
    let mut c = t.rt.create(&id, b.dir(), Default::default()).unwrap();
    c.start().unwrap();
    assert_eq!(c.wait().unwrap(), ExitStatus::Exited(0));

    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let busy = t.rt.root().join(&id).join("busy");
    fs::create_dir(&busy).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&busy)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a tmpfs on {}", busy.display());
    let guard = Unmount(busy);
    let lines = || fs::read_to_string(&log).unwrap_or_default().lines().count();
    let e = common::chain(&c.delete(false).unwrap_err());
    assert!(e.contains("remove"), "{e}");
    assert_eq!(lines(), 0, "poststop ran though the delete failed");
    drop(guard);
    t.rt.load(&id).unwrap().delete(false).unwrap();
    assert_eq!(lines(), 1, "poststop runs once");
    assert!(
        !t.rt.root().join(&id).exists(),
        "the state directory is gone"
    );
    assert!(matches!(
        t.rt.load(&id),
        Err(berth_runtime::ContainerError::NotFound { .. })
    ));
    // The first handle, stale now.
    assert!(matches!(
        c.delete(false),
        Err(berth_runtime::ContainerError::NotFound { .. })
    ));
    assert_eq!(lines(), 1, "poststop runs once");
}

/// runtime-spec order: startContainer hooks, then the program is
/// executed, then the poststart hooks. The startContainer hook waits (2 s
/// at most) for a file the poststart hook makes: a poststart hook that
/// ran before the program would make it at once and find the process
/// still in the runtime's code; run in order it finds the program.
/// `start` learns of the exec when the fifo is closed, inside execve and
/// before the kernel sets the new argument area (begin_new_exec, then
/// create_elf_tables): a hook quick enough reads an empty cmdline, so it
/// reads again until there is one (5 s at most). The runtime's own
/// cmdline is never empty: an early hook still reads it and fails.
#[test]
fn poststart_runs_after_the_program_is_executed() {
    let shared = TempDir::new("poststart-order");
    let log = shared.0.join("log");
    let mut b = Bundle::new();
    b.config["process"]["args"] = json!(["sleep", "1000"]);
    b.config["mounts"].as_array_mut().unwrap().push(
        json!({"destination": "/shared", "type": "bind", "source": shared.0, "options": ["rbind"]}),
    );
    b.config["hooks"] = json!({
        "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c",
            "i=0; while [ ! -e /shared/poststart ] && [ $i -lt 20 ]; do sleep 0.1; i=$((i+1)); done; echo startContainer >> /shared/log"]}],
        "poststart": [{"path": "/bin/sh", "args": ["sh", "-c", format!(
            "pid=$(grep -o '\"pid\": *[0-9]*' | grep -o '[0-9]*$'); i=0; cmd=; \
             while [ -z \"$cmd\" ] && [ $i -lt 50 ]; do \
             cmd=$(tr '\\0' ' ' < /proc/$pid/cmdline); [ -n \"$cmd\" ] || sleep 0.1; i=$((i+1)); done; \
             echo poststart $cmd >> {0}; touch {1}",
            log.display(), shared.0.join("poststart").display())]}]
    });
    b.write();
    let t = common::runtime();
    let id = common::unique_id("poststart-order");
    let mut c = t.rt.create(&id, b.dir(), Default::default()).unwrap();
    c.start().unwrap();
    let text = fs::read_to_string(&log).unwrap();
    c.kill(libc::SIGKILL, false).unwrap();
    assert_eq!(c.wait().unwrap(), ExitStatus::Signaled(libc::SIGKILL));
    c.delete(false).unwrap();
    assert_eq!(text, "startContainer\npoststart sleep 1000\n");
}

/// runtime-spec: a failing startContainer hook is an error, and the
/// poststart hooks do not run. The process ends before exec, which closes
/// the exec fifo as an exec would: start tells the two apart and fails
/// with the process's own error, for a hook that fails, one that times
/// out, and an execve that fails (a script's missing interpreter).
#[test]
fn a_failing_start_container_hook_fails_start_without_poststart() {
    let cases = [
        (
            Some(json!({"path": "/bin/sh", "args": ["sh", "-c", "exit 6"]})),
            "startContainer hook failed: /bin/sh exited with status 6",
            1,
        ),
        (
            Some(json!({"path": "/bin/sleep", "args": ["sleep", "60"], "timeout": 1})),
            "run startContainer hook: /bin/sleep timed out",
            1,
        ),
        (None, "exec: No such file or directory", 127),
    ];
    for (start_hook, wanted, code) in cases {
        let tmp = TempDir::new("startcontainer-fails");
        let marker = tmp.0.join("poststart");
        let mut b = Bundle::new();
        b.script("sleep 30");
        b.config["hooks"] = json!({
            "poststart": [{"path": "/bin/sh", "args": ["sh", "-c", format!("touch {}", marker.display())]}]
        });
        match start_hook {
            Some(h) => b.config["hooks"]["startContainer"] = json!([h]),
            None => {
                let script = b.rootfs().join("bin/bad.sh");
                fs::write(&script, "#!/nonexistent/interp\nsleep 30\n").unwrap();
                fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
                b.config["process"]["args"] = json!(["/bin/bad.sh"]);
            }
        }
        b.write();
        let t = common::runtime();
        let id = common::unique_id("startcontainer-fails");
        let mut c = t.rt.create(&id, b.dir(), Default::default()).unwrap();
        let started = c.start();
        let exited = c.wait().unwrap();
        c.delete(true).unwrap();
        let err = common::chain(&started.expect_err("start succeeded"));
        assert!(err.contains(wanted), "{err}");
        assert!(!marker.exists(), "poststart ran after: {wanted}");
        assert_eq!(exited, ExitStatus::Exited(code), "{wanted}");
    }
}
