//! Root integration tests: real containers from a busybox rootfs, run in
//! process through the library, checked from inside.

mod common;

use std::fs;

use berth_runtime::ExitStatus;
use common::{Bundle, chain, create_error, run, run_ok};
use serde_json::json;

#[test]
fn exit_codes_pass_through() {
    let mut b = Bundle::new();
    for code in [0, 1, 3, 127, 255] {
        b.script(&format!("exit {code}"));
        assert_eq!(run(&b).status, ExitStatus::Exited(code));
    }
}

#[test]
fn killed_by_signal_reports_the_signal_and_128_plus() {
    let mut b = Bundle::new();
    // Not pid 1 of a pid namespace: init ignores signals it has no handler for.
    b.config["linux"]["namespaces"] = json!([{"type": "mount"}]);
    b.config.as_object_mut().unwrap().remove("hostname");
    b.script("kill -KILL $$");
    let o = run(&b);
    assert_eq!(o.status, ExitStatus::Signaled(9));
    assert_eq!(o.status.code(), 137);
}

#[test]
fn env_cwd_and_args_are_the_specs() {
    let mut b = Bundle::new();
    b.config["process"]["env"] = json!(["PATH=/bin", "GREETING=hello world"]);
    b.config["process"]["cwd"] = json!("/tmp");
    b.config["process"]["args"] =
        json!(["sh", "-c", "echo \"$GREETING|$(pwd)|$0|$1\"", "zero", "one"]);
    let o = run(&b);
    assert_eq!(o.stdout, "hello world|/tmp|zero|one\n");
}

#[test]
fn a_missing_cwd_is_made_inside_the_root() {
    // As runc and crun: an image's WorkingDir need not be in its layers.
    let mut b = Bundle::new();
    b.config["process"]["cwd"] = json!("/does/not/exist");
    b.config["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    assert_eq!(
        run_ok(&mut b, "pwd; stat -c '%a %u' ."),
        "/does/not/exist\n755 0\n"
    );

    // Through a symlink that points above the root: made inside it.
    let mut b = Bundle::new();
    std::os::unix::fs::symlink("../../../../escape", b.rootfs().join("app")).unwrap();
    b.config["process"]["cwd"] = json!("/app/sub");
    assert_eq!(run_ok(&mut b, "pwd"), "/escape/sub\n");
    assert!(b.rootfs().join("escape/sub").is_dir());
    assert!(!b.dir().join("escape").exists(), "nothing outside the root");

    // On a read-only root: made before the root goes read-only.
    let mut b = Bundle::new();
    b.config["root"]["readonly"] = json!(true);
    b.config["process"]["cwd"] = json!("/work");
    assert_eq!(
        run_ok(&mut b, "pwd; touch x 2>/dev/null || echo ro"),
        "/work\nro\n"
    );

    // Beneath a mount: made inside that mount, not in the root below it.
    let mut b = Bundle::new();
    b.config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs"}));
    b.config["process"]["cwd"] = json!("/scratch/build");
    assert_eq!(run_ok(&mut b, "pwd"), "/scratch/build\n");
    assert!(!b.rootfs().join("scratch/build").exists());
}

#[test]
fn a_cwd_that_cannot_be_a_directory_fails_clearly() {
    let mut b = Bundle::new();
    b.config["process"]["cwd"] = json!("/bin/busybox");
    let e = create_error(&b);
    assert!(e.contains("change to cwd /bin/busybox"), "{e}");
    assert!(e.contains("Not a directory"), "{e}");

    // Beneath a read-only mount it cannot be made.
    let mut b = Bundle::new();
    b.config["process"]["cwd"] = json!("/sys/berth-nothing");
    let e = create_error(&b);
    assert!(e.contains("create cwd /sys/berth-nothing"), "{e}");
    assert!(e.contains("Read-only file system"), "{e}");
}

#[test]
fn a_missing_executable_fails_at_create() {
    let mut b = Bundle::new();
    b.config["process"]["args"] = json!(["no-such-program"]);
    let e = create_error(&b);
    assert!(e.contains("find executable no-such-program"), "{e}");
    // A directory is searchable, never executable: refused at create too.
    let mut b = Bundle::new();
    b.config["process"]["args"] = json!(["/etc"]);
    let e = create_error(&b);
    assert!(
        e.contains("find executable /etc") && e.contains("Permission denied"),
        "{e}"
    );
}

#[test]
fn a_script_whose_interpreter_is_missing_says_so_on_its_stderr() {
    // Found and executable, so create succeeds; execve then fails for
    // what the program loads, after start.
    let mut b = Bundle::new();
    std::fs::write(
        b.rootfs().join("bin/bad.sh"),
        "#!/nonexistent/interp\necho hi\n",
    )
    .unwrap();
    std::fs::set_permissions(
        b.rootfs().join("bin/bad.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    b.config["process"]["args"] = json!(["/bin/bad.sh"]);
    let out = match common::try_run(&b) {
        Ok(out) => out,
        Err(e) => panic!("{}", chain(&e)),
    };
    assert_eq!(out.status, ExitStatus::Exited(127), "{out:?}");
    assert_eq!(
        out.stderr,
        "berth-runtime: container process failed: exec /bin/bad.sh: No such file or directory \
         (its #! interpreter or its dynamic loader is missing)\n"
    );
}

#[test]
fn home_comes_from_the_roots_passwd_when_the_spec_has_none() {
    // As runc and crun: the user's home in the rootfs's /etc/passwd
    // (root:/root, user:/tmp in the test rootfs), else /.
    let mut b = Bundle::new();
    b.config["process"]["env"] = json!(["PATH=/bin"]);
    assert_eq!(run_ok(&mut b, "echo $HOME"), "/root\n");
    b.config["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    assert_eq!(run_ok(&mut b, "echo $HOME"), "/tmp\n");
    b.config["process"]["user"] = json!({"uid": 4242, "gid": 4242});
    assert_eq!(run_ok(&mut b, "echo $HOME"), "/\n");
    // The spec's own HOME wins.
    b.config["process"]["env"] = json!(["PATH=/bin", "HOME=/srv"]);
    assert_eq!(run_ok(&mut b, "echo $HOME"), "/srv\n");
}

#[test]
fn user_groups_and_umask() {
    let mut b = Bundle::new();
    b.config["process"]["user"] =
        json!({"uid": 1000, "gid": 1000, "additionalGids": [5, 7], "umask": 63});
    let out = run_ok(&mut b, "id -u; id -g; id -G; umask");
    assert_eq!(out, "1000\n1000\n1000 5 7\n0077\n");
}

#[test]
fn hostname_and_domainname() {
    let mut b = Bundle::new();
    b.config["hostname"] = json!("box1");
    b.config["domainname"] = json!("example.test");
    let out = run_ok(&mut b, "hostname; cat /proc/sys/kernel/domainname");
    assert_eq!(out, "box1\nexample.test\n");
}

#[test]
fn rlimits_are_applied() {
    let mut b = Bundle::new();
    b.config["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456}, {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}]);
    let out = run_ok(&mut b, "ulimit -n; ulimit -H -n; ulimit -c");
    assert_eq!(out, "123\n456\n0\n");
}

#[test]
fn oom_score_adj_is_written() {
    let mut b = Bundle::new();
    b.config["process"]["oomScoreAdj"] = json!(321);
    assert_eq!(run_ok(&mut b, "cat /proc/self/oom_score_adj"), "321\n");
}

#[test]
fn no_new_privileges_is_set_or_not() {
    let mut b = Bundle::new();
    b.config["process"]["noNewPrivileges"] = json!(true);
    assert_eq!(
        run_ok(&mut b, "grep NoNewPrivs /proc/self/status"),
        "NoNewPrivs:\t1\n"
    );
    b.config["process"]["noNewPrivileges"] = json!(false);
    assert_eq!(
        run_ok(&mut b, "grep NoNewPrivs /proc/self/status"),
        "NoNewPrivs:\t0\n"
    );
}

fn status_caps(out: &str, key: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("{key} in {out}"));
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

#[test]
fn capabilities_are_set_exactly() {
    let mut b = Bundle::new();
    let caps = ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_CHOWN"];
    b.config["process"]["capabilities"] = json!({
        "bounding": caps, "effective": caps, "permitted": caps, "inheritable": ["CAP_KILL"], "ambient": ["CAP_KILL"]
    });
    b.config["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    let out = run_ok(&mut b, "cat /proc/self/status");
    let want = (1u64 << 5) | (1 << 10) | (1 << 0);
    assert_eq!(status_caps(&out, "CapBnd:"), want);
    // sh execs as uid 1000: effective/permitted come only from ambient.
    assert_eq!(status_caps(&out, "CapAmb:"), 1 << 5);
    assert_eq!(status_caps(&out, "CapInh:"), 1 << 5);
    assert_eq!(status_caps(&out, "CapEff:"), 1 << 5);
}

#[test]
fn without_cap_net_admin_links_cannot_be_changed() {
    let mut b = Bundle::new();
    let caps = ["CAP_KILL", "CAP_NET_BIND_SERVICE"];
    b.config["process"]["capabilities"] =
        json!({"bounding": caps, "effective": caps, "permitted": caps});
    // The runtime brings lo up in the namespace it makes (and busybox
    // skips a no-op change), so taking it down is the change that needs
    // the cap.
    b.script("ip link set lo down; echo status=$?");
    let o = run(&b);
    assert!(
        o.stdout.contains("status=1") || o.stdout.contains("status=2"),
        "{o:?}"
    );
    assert!(
        o.stderr.contains("ermission") || o.stderr.contains("not permitted"),
        "{o:?}"
    );
    let caps = ["CAP_NET_ADMIN"];
    b.config["process"]["capabilities"] =
        json!({"bounding": caps, "effective": caps, "permitted": caps});
    let out = run_ok(
        &mut b,
        "ip link set lo down && ip link set lo up && echo ok",
    );
    assert_eq!(out, "ok\n");
}

#[test]
fn a_new_network_namespace_has_lo_up_and_no_capabilities_means_none() {
    // As runc and crun: lo is up (127.0.0.1 works), and a spec without
    // `process.capabilities` gets no capability (not root's full sets).
    let mut b = Bundle::new();
    if let Some(p) = b.config["process"].as_object_mut() {
        p.remove("capabilities");
    }
    // A connection to a closed port on 127.0.0.1 is refused when lo is up
    // and "Network is unreachable" when it is down; no listener to race.
    let out = run_ok(
        &mut b,
        "cat /sys/class/net/lo/flags; grep -E '^Cap(Eff|Prm|Bnd)' /proc/self/status; \
         nc 127.0.0.1 9 </dev/null 2>&1 | grep -o -e 'Connection refused' -e 'unreachable'",
    );
    assert_eq!(
        out,
        "0x9\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nConnection refused\n"
    );
}

fn host_ns(kind: &str) -> String {
    fs::read_link(format!("/proc/self/ns/{kind}"))
        .unwrap()
        .display()
        .to_string()
}

#[test]
fn namespaces_are_new_ones() {
    let mut b = Bundle::new();
    b.config["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}]);
    let kinds = ["pid", "net", "ipc", "uts", "mnt", "cgroup"];
    let script: String = kinds
        .iter()
        .map(|k| format!("readlink /proc/self/ns/{k}; "))
        .collect::<String>()
        + "echo $$";
    let out = run_ok(&mut b, &script);
    let lines: Vec<&str> = out.lines().collect();
    for (i, k) in kinds.iter().enumerate() {
        assert_ne!(lines[i], host_ns(k), "{k} namespace is the host's");
        assert!(lines[i].starts_with(&format!("{k}:[")), "{}", lines[i]);
    }
    assert_eq!(
        lines[6], "1",
        "the container process is pid 1 of its namespace"
    );
}

#[test]
fn without_a_network_namespace_the_host_one_is_shared() {
    let mut b = Bundle::new();
    b.config["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "mount"}]);
    b.config.as_object_mut().unwrap().remove("hostname");
    assert_eq!(
        run_ok(&mut b, "readlink /proc/self/ns/net").trim(),
        host_ns("net")
    );
}

/// A bind of a read-only host mount with other options (nosuid), in a
/// user namespace: the kernel keeps the source's read-only flag locked, so
/// the remount must keep it (it failed with EPERM), and the container
/// sees the mount read-only.
#[test]
fn a_read_only_bind_source_in_a_user_namespace_stays_read_only() {
    let src = common::TempDir::new("rosrc");
    fs::write(src.0.join("f"), "inside\n").unwrap();
    let sh = |cmd: &str| {
        let ok = std::process::Command::new("sh")
            .args(["-c", cmd])
            .status()
            .unwrap()
            .success();
        assert!(ok, "{cmd}");
    };
    let p = src.0.display();
    sh(&format!(
        "mount --bind {p} {p} && mount -o remount,bind,ro {p}"
    ));
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(p.to_string());
    let mut b = Bundle::new();
    b.config["linux"]["namespaces"] =
        json!([{"type": "pid"}, {"type": "mount"}, {"type": "user"}, {"type": "uts"}]);
    b.config["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    b.config["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    let mut mounts: Vec<serde_json::Value> = b.config["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["type"] != "sysfs")
        .cloned()
        .collect();
    // Made here: root of the user namespace is no owner of the rootfs.
    fs::create_dir(b.rootfs().join("ro")).unwrap();
    mounts.push(json!({"destination": "/ro", "type": "bind", "source": src.0, "options": ["bind", "nosuid"]}));
    b.config["mounts"] = json!(mounts);
    b.config["linux"]["maskedPaths"] = json!(["/proc/kcore"]);
    let out = run_ok(
        &mut b,
        "cat /ro/f; touch /ro/g 2>/dev/null && echo written || echo refused; grep ' /ro ' /proc/self/mounts",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["inside", "refused"], "{out}");
    assert!(
        lines[2].contains(" ro,") && lines[2].contains("nosuid"),
        "{out}"
    );
}

#[test]
fn user_namespace_with_mappings() {
    let mut b = Bundle::new();
    b.config["linux"]["namespaces"] =
        json!([{"type": "pid"}, {"type": "mount"}, {"type": "user"}, {"type": "uts"}]);
    b.config["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    b.config["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    // sysfs needs a network namespace owned by the user namespace.
    let mounts = b.config["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["type"] != "sysfs")
        .cloned()
        .collect::<Vec<_>>();
    b.config["mounts"] = json!(mounts);
    b.config["linux"]["maskedPaths"] = json!(["/proc/kcore"]);
    let out = run_ok(
        &mut b,
        "cat /proc/self/uid_map /proc/self/gid_map; id -u; ls -n /bin/busybox | awk '{print $3}'; readlink /proc/self/ns/user; cat /dev/null && echo null-ok",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["0", "100000", "65536"]
    );
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["0", "100000", "65536"]
    );
    assert_eq!(lines[2], "0");
    // Host root's files are not mapped: they show as the overflow uid.
    assert_eq!(lines[3], "65534");
    assert_ne!(lines[4], host_ns("user"));
    assert_eq!(lines[5], "null-ok");
}

#[test]
fn joining_namespaces_by_path() {
    // A first container holds the namespaces; the second joins them.
    let mut holder = Bundle::new();
    holder.script("sleep 30");
    holder.write();
    let t = common::runtime();
    let mut h =
        t.rt.create(
            &common::unique_id("holder"),
            holder.dir(),
            Default::default(),
        )
        .unwrap();
    h.start().unwrap();
    let pid = h.pid();
    let mut b = Bundle::new();
    b.config["linux"]["namespaces"] = json!([
        {"type": "pid", "path": format!("/proc/{pid}/ns/pid")},
        {"type": "network", "path": format!("/proc/{pid}/ns/net")},
        {"type": "uts", "path": format!("/proc/{pid}/ns/uts")},
        {"type": "ipc", "path": format!("/proc/{pid}/ns/ipc")},
        {"type": "mount"}
    ]);
    b.config.as_object_mut().unwrap().remove("hostname");
    let out = run_ok(
        &mut b,
        "for k in net uts ipc pid; do readlink /proc/self/ns/$k; done; hostname; echo $$",
    );
    let want: Vec<String> = ["net", "uts", "ipc", "pid"]
        .iter()
        .map(|k| {
            fs::read_link(format!("/proc/{pid}/ns/{k}"))
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        &lines[..4],
        &want.iter().map(String::as_str).collect::<Vec<_>>()[..]
    );
    assert_eq!(lines[4], "berth-test", "the holder's hostname");
    assert_ne!(
        lines[5], "1",
        "a process joining a pid namespace is not its init"
    );
    h.kill(9, false).unwrap();
    assert_eq!(h.wait().unwrap(), ExitStatus::Signaled(9));
    h.delete(false).unwrap();
}

#[test]
fn a_namespace_path_that_is_not_a_namespace_is_refused_without_opening_it() {
    // The config names a FIFO (or a device) as a namespace to join: a
    // plain open would block the creating process (PID 1) until a writer
    // appears, or arm a device such as a watchdog. Refused instead.
    let dir = common::TempDir::new("nsfifo");
    let fifo = dir.0.join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    berth_runtime::sys::mkfifo(&c, 0o600).unwrap();
    for (kind, path) in [
        ("network", fifo.clone()),
        ("pid", fifo.clone()),
        ("uts", "/dev/null".into()),
    ] {
        let mut b = Bundle::new();
        b.config["linux"]["namespaces"] = json!([{"type": kind, "path": path}, {"type": "mount"}]);
        b.config.as_object_mut().unwrap().remove("hostname");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(create_error(&b));
        });
        // A watchdog for the hang only, not a timing assertion.
        let e = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!("create hangs on a {kind} namespace path {}", path.display())
            });
        assert!(
            e.contains("not a namespace") && e.contains(&path.display().to_string()),
            "{e}"
        );
    }
}

fn mount_line<'a>(mounts: &'a str, dest: &str) -> &'a str {
    mounts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(dest))
        .unwrap_or_else(|| panic!("no mount at {dest} in\n{mounts}"))
}

#[test]
fn mounts_with_their_flags() {
    let mut b = Bundle::new();
    let host = common::TempDir::new("bindsrc");
    fs::write(host.0.join("file"), "from host\n").unwrap();
    fs::create_dir(host.0.join("sub")).unwrap();
    let mounts = b.config["mounts"].as_array_mut().unwrap();
    mounts.push(json!({"destination": "/mnt/t", "type": "tmpfs", "source": "tmpfs", "options": ["ro", "nosuid", "nodev", "noexec", "size=1m"]}));
    mounts.push(json!({"destination": "/mnt/b", "type": "bind", "source": host.0, "options": ["rbind", "ro", "nosuid"]}));
    mounts.push(json!({"destination": "/mnt/f", "type": "none", "source": host.0.join("file"), "options": ["bind"]}));
    mounts.push(json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}));
    mounts.push(json!({"destination": "/sys/fs/cgroup", "type": "cgroup2", "source": "cgroup", "options": ["ro", "relatime"]}));
    mounts.push(json!({"destination": "/mnt/rel", "type": "tmpfs", "source": "tmpfs", "options": ["relatime", "rw"]}));
    let out = run_ok(
        &mut b,
        "cat /proc/mounts; echo ---; cat /mnt/b/file /mnt/f; touch /mnt/b/x 2>&1 || echo bind-ro; touch /mnt/t/x 2>&1 || echo tmpfs-ro",
    );
    let (mounts, rest) = out.split_once("---\n").unwrap();
    let t = mount_line(mounts, "/mnt/t");
    assert!(
        t.starts_with("tmpfs /mnt/t tmpfs ro,nosuid,nodev,noexec"),
        "{t}"
    );
    assert!(t.contains("size=1024k"), "{t}");
    let bm = mount_line(mounts, "/mnt/b");
    assert!(bm.contains(" ro,nosuid"), "{bm}");
    assert!(
        mount_line(mounts, "/mnt/f").contains(" rw"),
        "file bind mounts are rw by default"
    );
    assert!(
        mount_line(mounts, "/dev/mqueue")
            .starts_with("mqueue /dev/mqueue mqueue rw,nosuid,nodev,noexec")
    );
    assert!(
        mount_line(mounts, "/sys/fs/cgroup").contains("cgroup2 ro"),
        "{mounts}"
    );
    assert!(mount_line(mounts, "/mnt/rel").contains("relatime"));
    assert!(mount_line(mounts, "/proc").starts_with("proc /proc proc rw"));
    assert!(mount_line(mounts, "/dev/pts").starts_with("devpts /dev/pts devpts rw,nosuid,noexec"));
    assert!(mount_line(mounts, "/sys").starts_with("sysfs /sys sysfs ro,nosuid,nodev,noexec"));
    assert!(rest.starts_with("from host\nfrom host\n"), "{rest}");
    assert!(
        rest.contains("bind-ro") && rest.contains("tmpfs-ro"),
        "{rest}"
    );
    assert!(!host.0.join("x").exists());
}

#[test]
fn mount_propagation_options() {
    let mut b = Bundle::new();
    b.config["linux"]["rootfsPropagation"] = json!("shared");
    let mounts = b.config["mounts"].as_array_mut().unwrap();
    mounts.push(
        json!({"destination": "/mnt/s", "type": "tmpfs", "source": "tmpfs", "options": ["shared"]}),
    );
    mounts.push(json!({"destination": "/mnt/p", "type": "tmpfs", "source": "tmpfs", "options": ["private"]}));
    mounts.push(json!({"destination": "/mnt/u", "type": "tmpfs", "source": "tmpfs", "options": ["unbindable"]}));
    let info = run_ok(&mut b, "cat /proc/self/mountinfo");
    let line = |dest: &str| {
        info.lines()
            .find(|l| l.split_whitespace().nth(4) == Some(dest))
            .unwrap_or_else(|| panic!("{dest} in {info}"))
            .to_string()
    };
    assert!(line("/").contains(" shared:"), "{}", line("/"));
    assert!(line("/mnt/s").contains(" shared:"), "{}", line("/mnt/s"));
    assert!(
        !line("/mnt/p").contains("shared:") && !line("/mnt/p").contains("master:"),
        "{}",
        line("/mnt/p")
    );
    assert!(line("/mnt/u").contains(" unbindable"), "{}", line("/mnt/u"));
}

#[test]
fn readonly_root() {
    let mut b = Bundle::new();
    b.config["root"]["readonly"] = json!(true);
    let out = run_ok(
        &mut b,
        "touch /newfile 2>&1 || echo refused; grep ' / ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1",
    );
    assert!(
        out.contains("Read-only file system") && out.contains("refused\nro\n"),
        "{out}"
    );
    assert!(!b.rootfs().join("newfile").exists());
}

#[test]
fn masked_and_readonly_paths() {
    let mut b = Bundle::new();
    fs::create_dir_all(b.rootfs().join("secret/dir")).unwrap();
    fs::write(b.rootfs().join("secret/dir/key"), "k").unwrap();
    fs::write(b.rootfs().join("secret/file"), "s").unwrap();
    b.config["linux"]["maskedPaths"] = json!([
        "/proc/keys",
        "/secret/dir",
        "/secret/file",
        "/does/not/exist"
    ]);
    b.config["linux"]["readonlyPaths"] = json!(["/proc/sys", "/tmp", "/missing"]);
    let out = run_ok(
        &mut b,
        "wc -c < /proc/keys; ls -A /secret/dir | wc -l; wc -c < /secret/file; \
         echo x > /proc/sys/kernel/hostname 2>/dev/null || echo sys-ro; touch /tmp/x 2>/dev/null || echo tmp-ro; \
         touch /secret/dir/n 2>/dev/null || echo masked-ro; stat -c %t,%T /secret/file; \
         ls /secret/dir && echo listed",
    );
    // A masked directory is empty and listable (no capability here, so no
    // CAP_DAC_OVERRIDE), as with runc.
    assert_eq!(out, "0\n0\n0\nsys-ro\ntmp-ro\nmasked-ro\n1,3\nlisted\n");
}

#[test]
fn default_devices_and_dev_symlinks() {
    let mut b = Bundle::new();
    b.config["linux"]["devices"] = json!([
        {"path": "/dev/custom/null2", "type": "c", "major": 1, "minor": 3, "fileMode": 384, "uid": 1000, "gid": 1000},
        {"path": "/dev/fifo", "type": "p", "major": 0, "minor": 0}
    ]);
    let out = run_ok(
        &mut b,
        "for d in null zero full random urandom tty; do stat -c '%n %F %t,%T %a' /dev/$d; done; \
         stat -c '%n %F %t,%T %a %u %g' /dev/custom/null2; stat -c '%F' /dev/fifo; \
         for l in fd stdin stdout stderr ptmx; do echo $l=$(readlink /dev/$l); done; \
         head -c 4 /dev/zero | wc -c; echo hi > /dev/null && echo null-ok",
    );
    let want = "/dev/null character special file 1,3 666\n\
                /dev/zero character special file 1,5 666\n\
                /dev/full character special file 1,7 666\n\
                /dev/random character special file 1,8 666\n\
                /dev/urandom character special file 1,9 666\n\
                /dev/tty character special file 5,0 666\n\
                /dev/custom/null2 character special file 1,3 600 1000 1000\n\
                fifo\n\
                fd=/proc/self/fd\nstdin=/proc/self/fd/0\nstdout=/proc/self/fd/1\nstderr=/proc/self/fd/2\nptmx=pts/ptmx\n\
                4\nnull-ok\n";
    assert_eq!(out, want);
}

#[test]
fn sysctls_are_written_in_the_containers_namespaces() {
    let mut b = Bundle::new();
    b.config["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1", "kernel.shmmni": "1234"});
    let host_fwd = fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let host_shm = fs::read_to_string("/proc/sys/kernel/shmmni").unwrap();
    assert_eq!(
        run_ok(
            &mut b,
            "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmni"
        ),
        "1\n1234\n"
    );
    assert_eq!(
        fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        host_fwd
    );
    assert_eq!(
        fs::read_to_string("/proc/sys/kernel/shmmni").unwrap(),
        host_shm
    );
}

#[test]
fn no_fds_leak_into_the_container() {
    // An fd without close-on-exec in the caller (as a careless PID 1 might
    // hold) must still not reach the container (CVE-2024-21626).
    let f = fs::File::open("/etc/hostname").unwrap();
    berth_runtime::sys::dup_onto(std::os::fd::AsRawFd::as_raw_fd(&f), 77).unwrap();
    let mut b = Bundle::new();
    let out = run_ok(&mut b, "ls /proc/self/fd | sort -n | tr '\\n' ' '");
    // 0-2, plus the directory ls itself has open.
    assert_eq!(out, "0 1 2 3 ");
}

#[test]
fn the_program_cannot_be_found_through_an_fd_the_runtime_holds() {
    // CVE-2024-21626, the program path: while the child sets up it holds
    // host directories (the host's /proc/sys for sysctls), and
    // close-on-exec closes them only after execve has resolved its path.
    // A program named /proc/self/fd/N/../../HOST-PATH would then be a
    // host binary, running in the container with a handle on itself.
    let host = common::TempDir::new("hostbin");
    let outside = host.0.join("busybox");
    fs::copy("/bin/busybox", &outside).unwrap();
    let before = fs::read(&outside).unwrap();
    let mut b = Bundle::new();
    b.config["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
    let rel = outside.strip_prefix("/").unwrap().display().to_string();
    for fd in 3..40 {
        let program = format!("/proc/self/fd/{fd}/../../{rel}");
        b.config["process"]["args"] = json!([
            program,
            "sh",
            "-c",
            "echo escaped; echo x >> /proc/self/exe"
        ]);
        match common::try_run(&b) {
            Ok(o) => {
                assert!(
                    !o.stdout.contains("escaped"),
                    "fd {fd}: a host program ran in the container: {o:?}"
                );
                assert_ne!(o.status, ExitStatus::Exited(0), "fd {fd}: {o:?}");
            }
            Err(e) => {
                let e = chain(&e);
                assert!(
                    e.contains("No such file") || e.contains("Not a directory"),
                    "fd {fd}: {e}"
                );
            }
        }
    }
    assert_eq!(fs::read(&outside).unwrap(), before, "host binary unchanged");
}

#[test]
fn seccomp_denies_a_syscall_with_the_configured_errno() {
    let mut b = Bundle::new();
    b.config["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]
    });
    b.config["process"]["noNewPrivileges"] = json!(true);
    let out = run_ok(
        &mut b,
        "mkdir /tmp/d 2>&1; echo status=$?; touch /tmp/f && echo touch-ok",
    );
    assert!(out.contains("Function not implemented"), "{out}");
    assert!(
        out.contains("status=1") && out.contains("touch-ok"),
        "{out}"
    );
    // Without no_new_privs the filter is loaded while CAP_SYS_ADMIN is held.
    b.config["process"]["noNewPrivileges"] = json!(false);
    let out = run_ok(&mut b, "mkdir /tmp/d 2>&1; true");
    assert!(out.contains("Function not implemented"), "{out}");
}

/// A profile without `close_range` (older Docker and containerd profiles,
/// recorded ones) still runs the container, with or without
/// no_new_privs, and a startContainer hook under it: after the filter the
/// fds are closed one by one with close(2), and none but stdio reaches the
/// program or the hook (CVE-2024-21626).
#[test]
fn a_profile_denying_close_range_still_runs_the_container_and_leaks_no_fd() {
    for nnp in [true, false] {
        let mut b = Bundle::new();
        b.config["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["close_range"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        });
        b.config["process"]["noNewPrivileges"] = json!(nnp);
        b.config["process"]["args"] = json!(["/bin/true"]);
        let o = run(&b);
        assert_eq!(o.status, ExitStatus::Exited(0), "nnp {nnp}: {o:?}");
        b.config["hooks"] = json!({"startContainer": [{"path": "/bin/sh", "args": ["sh", "-c",
            "ls /proc/self/fd | sort -n | tr '\\n' ' ' > /tmp/hookfds"]}]});
        let out = run_ok(
            &mut b,
            "cat /tmp/hookfds; echo; ls /proc/self/fd | sort -n | tr '\\n' ' '",
        );
        // 0-2, plus the directory ls itself has open.
        assert_eq!(out, "0 1 2 3 \n0 1 2 3 ", "nnp {nnp}");
    }
}

#[test]
fn hostile_mount_destination_stays_inside_the_rootfs() {
    // The rootfs has absolute symlinks to a host directory: a mount at
    // them resolves inside the rootfs (CVE-2021-30465 class).
    let host = common::TempDir::new("victim");
    fs::write(host.0.join("marker"), "host").unwrap();
    let mut b = Bundle::new();
    let inside = b.rootfs().join(host.0.strip_prefix("/").unwrap());
    fs::create_dir_all(&inside).unwrap();
    std::os::unix::fs::symlink(&host.0, b.rootfs().join("evil")).unwrap();
    let mounts = b.config["mounts"].as_array_mut().unwrap();
    mounts.push(json!({"destination": "/evil", "type": "tmpfs", "source": "tmpfs"}));
    mounts.push(json!({"destination": "/../../../../escape", "type": "tmpfs", "source": "tmpfs"}));
    let out = run_ok(
        &mut b,
        "ls -A /evil | wc -l; touch /evil/inside; grep -c ' /escape ' /proc/mounts",
    );
    assert_eq!(out, "0\n1\n");
    assert_eq!(
        fs::read_dir(&host.0).unwrap().count(),
        1,
        "nothing created in the host directory"
    );
    let host_mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !host_mounts.contains(&host.0.display().to_string()),
        "nothing mounted on the host"
    );
    assert!(!std::path::Path::new("/escape").exists());

    // A dangling symlink to a host path: its target is created inside
    // the rootfs (as runc's in-root MkdirAll does), never on the host.
    fs::remove_dir_all(&inside).unwrap();
    let out = run_ok(
        &mut b,
        "ls -A /evil | wc -l; grep -c ' /escape ' /proc/mounts",
    );
    assert_eq!(out, "0\n1\n");
    assert!(inside.is_dir(), "target created inside the rootfs");
    assert_eq!(fs::read_dir(&host.0).unwrap().count(), 1);
}

#[test]
fn bind_mount_on_a_dangling_relative_symlink_like_resolv_conf() {
    let host = common::TempDir::new("resolv");
    fs::write(host.0.join("resolv.conf"), "nameserver 127.0.0.53\n").unwrap();
    let mut b = Bundle::new();
    std::os::unix::fs::symlink(
        "../run/systemd/resolve/stub-resolv.conf",
        b.rootfs().join("etc/resolv.conf"),
    )
    .unwrap();
    b.config["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/etc/resolv.conf", "type": "bind", "source": host.0.join("resolv.conf"), "options": ["rbind", "ro"]
    }));
    let out = run_ok(&mut b, "cat /etc/resolv.conf");
    assert_eq!(out, "nameserver 127.0.0.53\n");
    assert!(
        b.rootfs()
            .join("run/systemd/resolve/stub-resolv.conf")
            .is_file()
    );
}

/// Runs `b`'s process (its config as it stands) from the root `rootfs`
/// through `create_from_spec`, as berth-init does with a shared tree.
fn run_on_root(b: &Bundle, rootfs: &std::path::Path) -> Result<common::Outcome, String> {
    run_from_spec(b, rootfs, None).map(|(outcome, _)| outcome)
}

/// [`run_on_root`], through `create_from_spec_in` when `bundle` is given;
/// also returns the bundle the container's state named.
fn run_from_spec(
    b: &Bundle,
    rootfs: &std::path::Path,
    bundle: Option<&std::path::Path>,
) -> Result<(common::Outcome, std::path::PathBuf), String> {
    use std::io::Read;
    let spec: oci_spec::runtime::Spec = serde_json::from_value(b.config.clone()).unwrap();
    let t = common::runtime();
    let (mut out_r, out_w) = std::io::pipe().unwrap();
    let opts = berth_runtime::CreateOptions {
        stdio: berth_runtime::Stdio {
            stdin: None,
            stdout: Some(out_w.into()),
            stderr: None,
        },
        ..Default::default()
    };
    let id = common::unique_id("shared");
    let created = match bundle {
        Some(bundle) => t.rt.create_from_spec_in(&id, &spec, rootfs, bundle, opts),
        None => t.rt.create_from_spec(&id, &spec, rootfs, opts),
    };
    let mut c = created.map_err(|e| chain(&e))?;
    let named = c.state().bundle;
    c.start().map_err(|e| chain(&e))?;
    let status = c.wait().map_err(|e| chain(&e))?;
    c.delete(false).map_err(|e| chain(&e))?;
    let mut stdout = String::new();
    out_r.read_to_string(&mut stdout).unwrap();
    Ok((
        common::Outcome {
            status,
            stdout,
            stderr: String::new(),
        },
        named,
    ))
}

/// `create_from_spec_in`: a root unpacked away from its bundle (berth-init
/// and a packed bundle). Relative bind sources resolve against the bundle
/// given, and the state names it, not the root's parent.
#[test]
fn a_root_away_from_its_bundle_keeps_the_bundle_for_binds_and_state() {
    let mut b = Bundle::new();
    let elsewhere = common::TempDir::new("away-root");
    let rootfs = elsewhere.0.join("unit");
    assert!(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(b.rootfs())
            .arg(&rootfs)
            .status()
            .unwrap()
            .success()
    );
    fs::create_dir_all(b.dir().join("extra")).unwrap();
    fs::write(b.dir().join("extra/marker"), "from-the-bundle\n").unwrap();
    b.script("cat /extra/marker");
    b.config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!(
            {"destination": "/extra", "type": "bind", "source": "extra", "options": ["rbind", "ro"]}
        ));
    let (out, named) = run_from_spec(&b, &rootfs, Some(b.dir())).unwrap();
    assert_eq!(named, b.dir());
    assert_eq!(out.status, ExitStatus::Exited(0), "{out:?}");
    assert_eq!(out.stdout, "from-the-bundle\n");
}

/// `mount` as a command (this crate's tests have no mount wrapper).
fn mount_cmd(args: &[&str]) {
    let st = std::process::Command::new("mount")
        .args(args)
        .status()
        .unwrap();
    assert!(st.success(), "mount {args:?}");
}

#[test]
fn a_read_only_shared_root_gets_its_mount_targets_beforehand() {
    // berth-init gives read-only units a read-only bind of the image tree
    // they share: the container's first process can create nothing there,
    // so create_mount_targets makes the destinations first, while the tree
    // is writable; the ones beneath another mount stay the child's.
    let host = common::TempDir::new("ro-root-src");
    fs::write(host.0.join("f"), "data\n").unwrap();
    let mut b = Bundle::new();
    for d in ["proc", "dev", "sys"] {
        fs::remove_dir(b.rootfs().join(d)).unwrap();
    }
    // A dangling relative symlink on a destination: followed inside.
    std::os::unix::fs::symlink("../var/lib/data", b.rootfs().join("etc/data")).unwrap();
    let mounts = b.config["mounts"].as_array_mut().unwrap();
    mounts.push(json!({"destination": "/srv/in", "type": "bind", "source": host.0, "options": ["rbind", "ro"]}));
    mounts.push(json!({"destination": "/etc/hostfile", "type": "bind", "source": host.0.join("f"), "options": ["bind", "ro"]}));
    mounts.push(json!({"destination": "/etc/data", "type": "tmpfs", "source": "tmpfs"}));
    mounts.push(json!({"destination": "/etc/data/nested", "type": "tmpfs", "source": "tmpfs"}));
    b.config["root"]["readonly"] = json!(true);
    b.config["process"]["cwd"] = json!("/work/dir");
    b.script(
        "cat /srv/in/f /etc/hostfile; test -c /dev/null && test -d /dev/pts && echo dev; \
         test -d /etc/data/nested && echo nested; touch /x 2>/dev/null || echo root=ro; pwd",
    );
    let tree = b.rootfs();
    let ro = b.dir().join("ro");
    fs::create_dir(&ro).unwrap();
    mount_cmd(&["--bind", tree.to_str().unwrap(), ro.to_str().unwrap()]);
    mount_cmd(&["-o", "remount,bind,ro", ro.to_str().unwrap()]);
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(ro.clone());

    // Without them the child fails on the first missing destination.
    let err = run_on_root(&b, &ro).unwrap_err();
    assert!(err.contains("Read-only file system"), "{err}");

    let spec: oci_spec::runtime::Spec = serde_json::from_value(b.config.clone()).unwrap();
    common::runtime()
        .rt
        .create_mount_targets("shared", &spec, &tree)
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    // The host's root is never a rootfs.
    let err = common::runtime()
        .rt
        .create_mount_targets("shared", &spec, std::path::Path::new("/"))
        .unwrap_err();
    assert!(chain(&err).contains("rootfs"), "{}", chain(&err));
    for d in ["proc", "dev", "sys", "srv/in", "var/lib/data", "work/dir"] {
        assert!(tree.join(d).is_dir(), "{d}");
    }
    assert!(tree.join("etc/hostfile").is_file());
    // Beneath /dev and /etc/data: left to the child, inside those mounts.
    assert!(!tree.join("dev/pts").exists());
    assert!(!tree.join("var/lib/data/nested").exists());
    assert!(!b.dir().join("var").exists(), "nothing outside the root");

    let out = run_on_root(&b, &ro).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status, ExitStatus::Exited(0), "{out:?}");
    assert_eq!(out.stdout, "data\ndata\ndev\nnested\nroot=ro\n/work/dir\n");

    // A cwd beneath a mount is the child's to make, inside that mount.
    let mut b2 = b.config.clone();
    b2["process"]["cwd"] = json!("/etc/data/cwd");
    let spec: oci_spec::runtime::Spec = serde_json::from_value(b2).unwrap();
    common::runtime()
        .rt
        .create_mount_targets("shared", &spec, &tree)
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    assert!(!tree.join("var/lib/data/cwd").exists());
}

#[test]
fn mounts_over_proc_are_refused() {
    let mut b = Bundle::new();
    b.config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/proc/self/attr", "type": "tmpfs", "source": "tmpfs"}));
    let e = create_error(&b);
    assert!(
        e.contains("/proc/self/attr is on /proc and not of type proc"),
        "{e}"
    );
}

/// LXCFS's way: a file bound over /proc/meminfo (and the other files of
/// PROC_BIND_FILES) is what the container reads, as with runc; a file over
/// another procfs file is still refused.
#[test]
fn a_file_can_be_bound_over_the_lxcfs_proc_files() {
    let mut b = Bundle::new();
    let fake = b.dir().join("meminfo");
    fs::write(&fake, "MemTotal:         65536 kB\n").unwrap();
    let uptime = b.dir().join("uptime");
    fs::write(&uptime, "42.00 40.00\n").unwrap();
    for (dest, source) in [("/proc/meminfo", &fake), ("/proc/uptime", &uptime)] {
        b.config["mounts"].as_array_mut().unwrap().push(json!({
            "destination": dest, "type": "bind",
            "source": source, "options": ["bind", "ro"]
        }));
    }
    let out = run_ok(
        &mut b,
        "cat /proc/meminfo /proc/uptime; head -c 3 /proc/stat",
    );
    assert_eq!(out, "MemTotal:         65536 kB\n42.00 40.00\ncpu");

    let mut b = Bundle::new();
    let fake = b.dir().join("kcore");
    fs::write(&fake, "x").unwrap();
    b.config["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/proc/kcore", "type": "bind", "source": fake, "options": ["bind"]
    }));
    let e = create_error(&b);
    assert!(
        e.contains("/proc/kcore is on /proc and not of type proc"),
        "{e}"
    );

    // An image whose /proc leads into another procfs's `self`: the bind
    // would cover the container process's own /proc/PID/stat. Refused.
    let mut b = Bundle::new();
    let fake = b.dir().join("stat");
    fs::write(&fake, "cpu 0\n").unwrap();
    let mounts = b.config["mounts"].as_array_mut().unwrap();
    mounts.retain(|m| m["destination"] != "/proc");
    mounts.push(json!({"destination": "/mnt", "type": "proc", "source": "proc"}));
    mounts.push(json!({
        "destination": "/proc/stat", "type": "bind", "source": fake, "options": ["bind"]
    }));
    b.config["linux"]["maskedPaths"] = json!([]);
    b.config["linux"]["readonlyPaths"] = json!([]);
    fs::remove_dir(b.rootfs().join("proc")).unwrap();
    fs::create_dir_all(b.rootfs().join("mnt")).unwrap();
    std::os::unix::fs::symlink("mnt/self", b.rootfs().join("proc")).unwrap();
    let e = create_error(&b);
    assert!(e.contains("/proc/stat") && e.contains("procfs"), "{e}");
}

#[test]
fn an_image_symlink_cannot_redirect_a_mount_onto_proc() {
    // The image makes /dev a symlink to /proc: the /dev tmpfs would land
    // on the container's procfs and hide it, so the masked and read-only
    // /proc paths are skipped (not found) while the real procfs lives on
    // underneath (CVE-2019-16884 / CVE-2023-28642 class). Refused.
    let b = Bundle::new();
    fs::remove_dir(b.rootfs().join("dev")).unwrap();
    std::os::unix::fs::symlink("proc", b.rootfs().join("dev")).unwrap();
    let e = create_error(&b);
    assert!(e.contains("/dev") && e.contains("procfs"), "{e}");

    // The same through /sys.
    let b = Bundle::new();
    fs::remove_dir(b.rootfs().join("sys")).unwrap();
    std::os::unix::fs::symlink("/proc", b.rootfs().join("sys")).unwrap();
    let e = create_error(&b);
    assert!(e.contains("/sys") && e.contains("procfs"), "{e}");
}

#[test]
fn malformed_config_and_missing_rootfs_are_clear_errors() {
    let b = Bundle::new();
    fs::write(b.dir().join("config.json"), "{\"ociVersion\": ").unwrap();
    let t = common::runtime();
    let e = chain(&t.rt.create("x1", b.dir(), Default::default()).unwrap_err());
    assert!(
        e.starts_with(&format!(
            "parse config {}/config.json: EOF",
            b.dir().display()
        )),
        "{e}"
    );

    let mut b = Bundle::new();
    b.config["root"]["path"] = json!("nope");
    let e = create_error(&b);
    assert!(e.contains("rootfs") && e.contains("nope is missing"), "{e}");

    let mut b = Bundle::new();
    b.config["ociVersion"] = json!("2.0.0");
    assert!(create_error(&b).contains("unsupported ociVersion \"2.0.0\""));

    let mut b = Bundle::new();
    b.config["process"]["terminal"] = json!(true);
    assert!(create_error(&b).ends_with("unsupported: process.terminal"));
}

#[test]
fn a_failing_mount_names_the_step_the_destination_and_a_binds_source() {
    let mut b = Bundle::new();
    b.config["mounts"].as_array_mut().unwrap().push(json!({"destination": "/mnt/x", "type": "bind", "source": "/nonexistent-source", "options": ["bind"]}));
    let e = create_error(&b);
    assert!(
        e.contains("mount /mnt/x (bind of /nonexistent-source): No such file or directory"),
        "{e}"
    );
    // A source relative to the bundle is named as resolved.
    let mut b = Bundle::new();
    b.config["mounts"].as_array_mut().unwrap().push(
        json!({"destination": "/mnt/x", "type": "bind", "source": "extra", "options": ["bind"]}),
    );
    let e = create_error(&b);
    let want = format!(
        "(bind of {}): No such file",
        b.dir().join("extra").display()
    );
    assert!(e.contains(&want), "{e}");
}

#[test]
fn create_from_an_in_memory_spec() {
    let b = Bundle::new();
    let mut cfg = b.config.clone();
    cfg["process"]["args"] = json!(["sh", "-c", "exit 42"]);
    cfg["root"]["path"] = json!("/ignored");
    let spec: oci_spec::runtime::Spec = serde_json::from_value(cfg).unwrap();
    let t = common::runtime();
    let mut c =
        t.rt.create_from_spec("mem1", &spec, &b.rootfs(), Default::default())
            .unwrap();
    assert_eq!(c.state().status, berth_runtime::state::Status::Created);
    c.start().unwrap();
    assert_eq!(c.wait().unwrap(), ExitStatus::Exited(42));
    assert_eq!(c.state().status, berth_runtime::state::Status::Stopped);
    c.delete(false).unwrap();
}

#[test]
fn lifecycle_through_the_library_with_the_callers_own_reaper() {
    let mut b = Bundle::new();
    // pid 1 of its namespace: only signals it handles reach it.
    b.script("trap 'exit 7' TERM; touch /tmp/ready; sleep 30 & wait");
    b.config["annotations"] = json!({"org.example.k": "v"});
    b.write();
    let t = common::runtime();
    let mut c = t.rt.create("life", b.dir(), Default::default()).unwrap();
    let st = c.state();
    assert_eq!(st.status, berth_runtime::state::Status::Created);
    assert_eq!(st.pid, Some(c.pid()));
    assert_eq!(
        st.annotations.get("org.example.k").map(String::as_str),
        Some("v")
    );
    assert!(matches!(
        t.rt.create("life", b.dir(), Default::default()),
        Err(berth_runtime::ContainerError::Exists { .. })
    ));
    // Another handle, as a second process would load it.
    let other = t.rt.load("life").unwrap();
    assert_eq!(other.pid(), c.pid());
    c.start().unwrap();
    assert!(matches!(
        c.delete(false),
        Err(berth_runtime::ContainerError::WrongStatus { .. })
    ));
    assert_eq!(other.status(), berth_runtime::state::Status::Running);
    assert!(c.start().is_err(), "a second start is refused");
    // Signal only once the trap is set.
    while !b.rootfs().join("tmp/ready").exists() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    other.kill(15, false).unwrap();
    // The caller reaps with its own waitpid loop, as PID 1 does.
    // (waitpid(-1) would steal the children of tests running in parallel.)
    let status = berth_runtime::sys::wait_pid(c.pid()).unwrap();
    c.set_exited(status.into());
    assert_eq!(c.exit_status(), Some(ExitStatus::Exited(7)));
    assert_eq!(c.status(), berth_runtime::state::Status::Stopped);
    c.delete(false).unwrap();
    assert!(matches!(
        t.rt.load("life"),
        Err(berth_runtime::ContainerError::NotFound { .. })
    ));
}

#[test]
fn cgroups_path_puts_the_process_straight_into_its_cgroup() {
    let mut b = Bundle::new();
    let id = common::unique_id("cg");
    let cg = format!("/berth-test/{id}");
    b.config["linux"]["cgroupsPath"] = json!(cg);
    // Two processes in the container: kill --all must reach both.
    b.script("cat /proc/self/cgroup; sleep 30 & touch /tmp/ready; wait");
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
    let mut c = t.rt.create(&id, b.dir(), opts).unwrap();
    c.start().unwrap();
    while !b.rootfs().join("tmp/ready").exists() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    c.kill(9, true).unwrap();
    assert_eq!(c.wait().unwrap(), ExitStatus::Signaled(9));
    c.delete(false).unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut out_r, &mut out).unwrap();
    // The cgroup v2 line: the process was cloned into the cgroup.
    assert!(out.lines().any(|l| l == format!("0::{cg}")), "{out}");
    let mount = berth_runtime::cgroup::find_cgroup2_mount(
        &fs::read_to_string("/proc/self/mountinfo").unwrap(),
    )
    .unwrap();
    assert!(
        !mount.join(cg.trim_start_matches('/')).exists(),
        "delete removed the cgroup"
    );
    let _ = fs::remove_dir(mount.join("berth-test"));
}

/// `kill --all` of a stopped container reaches what its first process
/// left in its cgroup (no pid namespace of its own, so a background
/// process outlives it), as runc's does; a plain kill is still refused.
#[test]
fn kill_all_of_a_stopped_container_reaches_its_cgroups_leftovers() {
    let mut b = Bundle::new();
    let id = common::unique_id("stopped-all");
    b.config["linux"]["cgroupsPath"] = json!(format!("/berth-test/{id}"));
    b.config["linux"]["namespaces"] = json!([{"type": "mount"}]);
    b.config.as_object_mut().unwrap().remove("hostname");
    b.script("setsid sleep 1000 & exit 0");
    b.write();
    let t = common::runtime();
    let mut c = t.rt.create(&id, b.dir(), Default::default()).unwrap();
    c.start().unwrap();
    assert_eq!(c.wait().unwrap(), ExitStatus::Exited(0));
    let mount = berth_runtime::cgroup::find_cgroup2_mount(
        &fs::read_to_string("/proc/self/mountinfo").unwrap(),
    )
    .unwrap();
    let procs = mount.join(format!("berth-test/{id}/cgroup.procs"));
    let left = || {
        fs::read_to_string(&procs)
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert_eq!(left(), 1, "the background sleep is still in the cgroup");
    let e = common::chain(&c.kill(libc::SIGTERM, false).unwrap_err());
    assert!(e.contains("stopped"), "{e}");
    c.kill(libc::SIGKILL, true).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while left() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the leftover lives on"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    c.delete(false).unwrap();
    let _ = fs::remove_dir(mount.join("berth-test"));
}

/// `kill --all` with a signal other than KILL reaches the cgroups below
/// the container's: one that delegates cgroups (systemd inside) keeps its
/// processes there. The tree is thawed again afterwards.
#[test]
fn kill_all_reaches_the_processes_in_cgroups_below_the_containers() {
    let mut b = Bundle::new();
    let id = common::unique_id("subcg");
    b.config["linux"]["cgroupsPath"] = json!(format!("/berth-test/{id}"));
    // No pid namespace: the shell is no namespace init ignoring TERM, and
    // the sleep's pid is a host pid.
    b.config["linux"]["namespaces"] = json!([{"type": "mount"}]);
    b.config.as_object_mut().unwrap().remove("hostname");
    b.script("sleep 1000 & echo $! > /tmp/pid; wait");
    b.write();
    let t = common::runtime();
    let mut c = t.rt.create(&id, b.dir(), Default::default()).unwrap();
    c.start().unwrap();
    let pid_file = b.rootfs().join("tmp/pid");
    let pid = loop {
        match fs::read_to_string(&pid_file) {
            Ok(p) if p.ends_with('\n') => break p.trim().parse::<i32>().unwrap(),
            _ => std::thread::sleep(std::time::Duration::from_millis(5)),
        }
    };
    let mount = berth_runtime::cgroup::find_cgroup2_mount(
        &fs::read_to_string("/proc/self/mountinfo").unwrap(),
    )
    .unwrap();
    let cg = mount.join(format!("berth-test/{id}"));
    fs::create_dir(cg.join("sub")).unwrap();
    fs::write(cg.join("sub/cgroup.procs"), pid.to_string()).unwrap();
    // Held open now, so a pid reused later cannot pass for it.
    let pidfd = berth_runtime::sys::pidfd_open(pid).unwrap();
    c.kill(libc::SIGTERM, true).unwrap();
    assert_eq!(c.wait().unwrap(), ExitStatus::Signaled(libc::SIGTERM));
    // The sleep is no child of ours: its pidfd turns readable when it ends.
    let ended = berth_runtime::sys::poll_readable(std::os::fd::AsFd::as_fd(&pidfd), 10_000);
    if !matches!(ended, Ok(true)) {
        let _ = berth_runtime::sys::kill(pid, libc::SIGKILL);
    }
    let freeze = fs::read_to_string(cg.join("cgroup.freeze")).unwrap_or_default();
    c.delete(false).unwrap();
    let _ = fs::remove_dir(mount.join("berth-test"));
    assert!(
        matches!(ended, Ok(true)),
        "the sleep in the cgroup below lives on"
    );
    assert_eq!(freeze.trim(), "0", "the cgroup was left frozen");
}

#[test]
fn a_cgroups_path_naming_a_populated_cgroup_is_refused() {
    // cgroupsPath comes from the config: naming a cgroup that already holds
    // processes (a host service) would put the container among them, and
    // a failed create or the delete would kill them all. Refused, and the
    // processes there live on.
    let mount = berth_runtime::cgroup::find_cgroup2_mount(
        &fs::read_to_string("/proc/self/mountinfo").unwrap(),
    )
    .expect("a cgroup2 mount (the unified hierarchy)");
    let id = common::unique_id("busy");
    let cg = format!("/berth-test/{id}");
    let dir = mount.join(cg.trim_start_matches('/'));
    fs::create_dir_all(&dir).unwrap();
    let mut victim = std::process::Command::new("/bin/busybox")
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    fs::write(dir.join("cgroup.procs"), victim.id().to_string()).unwrap();
    let mut b = Bundle::new();
    b.config["linux"]["cgroupsPath"] = json!(cg);
    let e = create_error(&b);
    let alive = victim.try_wait().unwrap().is_none();
    let _ = victim.kill();
    let _ = victim.wait();
    // Back to our own cgroup is implicit: the process is gone.
    let _ = fs::remove_dir(&dir);
    let _ = fs::remove_dir(mount.join("berth-test"));
    assert!(alive, "the process already in the cgroup was killed");
    assert!(e.contains("not empty"), "{e}");
}

#[test]
fn concurrent_starts_of_one_container_start_it_once() {
    // Two `start`s of one id (two berth-runc invocations, say): one starts
    // it, the other is told it is not created any more; never an I/O error
    // from losing the race, never the poststart hooks twice.
    let mut b = Bundle::new();
    b.script("sleep 30");
    let log = common::TempDir::new("poststart");
    let log_file = log.0.join("log");
    b.config["hooks"] = json!({"poststart": [{"path": "/bin/sh", "args": ["sh", "-c", format!("echo x >> {}", log_file.display())]}]});
    b.write();
    let t = common::runtime();
    for round in 0..10 {
        let id = common::unique_id("twice");
        let mut c = t.rt.create(&id, b.dir(), Default::default()).unwrap();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let results: Vec<_> = (0..2)
            .map(|_| {
                let (rt, id, barrier) = (t.rt.clone(), id.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut c = rt.load(&id).unwrap();
                    barrier.wait();
                    c.start()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        c.delete(true).unwrap();
        let oks = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(oks, 1, "round {round}: {results:?}");
        for r in &results {
            if let Err(e) = r {
                assert!(
                    matches!(e, berth_runtime::ContainerError::WrongStatus { .. }),
                    "round {round}: the losing start failed with {}",
                    chain(e)
                );
            }
        }
        let runs = fs::read_to_string(&log_file).unwrap().lines().count();
        assert_eq!(runs, round + 1, "poststart ran once per container");
    }
}

#[test]
fn root_path_dot_is_the_bundle_itself() {
    let mut b = Bundle::new();
    b.config["root"]["path"] = json!(".");
    b.script("test -f /config.json && echo bundle-root");
    // The bundle is the rootfs directory: write the config there.
    fs::write(
        b.rootfs().join("config.json"),
        serde_json::to_vec(&b.config).unwrap(),
    )
    .unwrap();
    let t = common::runtime();
    let (mut out_r, out_w) = std::io::pipe().unwrap();
    let opts = berth_runtime::CreateOptions {
        stdio: berth_runtime::Stdio {
            stdout: Some(out_w.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut c = t.rt.create("dot", &b.rootfs(), opts).unwrap();
    c.start().unwrap();
    assert_eq!(c.wait().unwrap(), ExitStatus::Exited(0));
    c.delete(false).unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut out_r, &mut out).unwrap();
    assert_eq!(out, "bundle-root\n");
}

#[test]
fn kill_all_without_a_pid_namespace_or_cgroup_is_refused() {
    let mut b = Bundle::new();
    b.config["linux"]["namespaces"] = json!([{"type": "mount"}]);
    b.config.as_object_mut().unwrap().remove("hostname");
    b.script("sleep 30");
    b.write();
    let t = common::runtime();
    let mut c =
        t.rt.create(&common::unique_id("unscoped"), b.dir(), Default::default())
            .unwrap();
    let e = chain(&c.kill(9, true).unwrap_err());
    assert!(e.contains("own pid namespace or cgroup"), "{e}");
    // delete --force still stops it: through its one known process.
    c.start().unwrap();
    c.delete(true).unwrap();
    assert_eq!(c.exit_status(), Some(ExitStatus::Signaled(9)));
}

#[test]
fn delete_force_reaps_its_own_child_every_time() {
    // delete --force kills the process and must reap it when it is our
    // child, however the kill races with the wait: a process seen as a
    // zombie between two polls is still ours to reap (no zombie left, the
    // status known).
    let mut b = Bundle::new();
    b.script("sleep 30");
    b.write();
    let t = common::runtime();
    for _ in 0..20 {
        let mut c =
            t.rt.create(&common::unique_id("reap"), b.dir(), Default::default())
                .unwrap();
        c.start().unwrap();
        let pid = c.pid();
        c.delete(true).unwrap();
        assert_eq!(c.exit_status(), Some(ExitStatus::Signaled(9)));
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} left as a zombie"
        );
    }
}

#[test]
fn a_symlink_loop_on_a_mount_destination_is_a_clear_error() {
    let mut b = Bundle::new();
    std::os::unix::fs::symlink("/loop2", b.rootfs().join("loop1")).unwrap();
    std::os::unix::fs::symlink("/loop1", b.rootfs().join("loop2")).unwrap();
    b.config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/loop1/x", "type": "tmpfs", "source": "tmpfs"}));
    let e = create_error(&b);
    assert!(
        e.contains("create mount destinations behind symlinks") && e.contains("symbolic links"),
        "{e}"
    );
}

#[test]
fn the_child_never_deadlocks_on_locks_other_threads_hold() {
    // The child is cloned from a multi-threaded process without libc's
    // fork handlers: had it allocated, a malloc lock held by another
    // thread at clone time would hang it. glibc gives threads their own
    // arenas, so the check runs in a re-executed copy of this test binary
    // with one arena for all threads, where the lock is really shared.
    const CHILD: &str = "BERTH_TEST_ALLOC_CHILD";
    if std::env::var_os(CHILD).is_some() {
        churn_while_creating();
        return;
    }
    let log = common::TempDir::new("alloc-check");
    let err_path = log.0.join("stderr");
    // Its output goes to a file: a hung clone keeps its stdio open, and
    // must not keep the harness's pipes open with it.
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "the_child_never_deadlocks_on_locks_other_threads_hold",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("GLIBC_TUNABLES", "glibc.malloc.arena_max=1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    // A generous watchdog: only a hang trips it, never slowness.
    for _ in 0..1200 {
        if let Some(status) = child.try_wait().unwrap() {
            let err = fs::read_to_string(&err_path).unwrap_or_default();
            assert!(
                status.success(),
                "the re-executed check failed: {status}\n{err}"
            );
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Kill the hung container processes (its children) and the check.
    let parent = child.id().to_string();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let stat = fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(") ")
            .map(|(_, r)| r.split(' ').collect())
            .unwrap_or_default();
        if fields.get(1) == Some(&parent.as_str())
            && let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok())
        {
            let _ = berth_runtime::sys::kill(pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("container creates hung while another thread allocated: the child allocates");
}

fn churn_while_creating() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let v: Vec<String> = (0..64).map(|i| format!("{i}-{n}")).collect();
                n = n.wrapping_add(v.len());
            }
            n
        })
    };
    let mut b = Bundle::new();
    b.script("exit 0");
    for _ in 0..60 {
        assert_eq!(run(&b).status, ExitStatus::Exited(0));
    }
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
}

/// `CreateOptions::init`: the init runs from an fd opened outside the
/// container's root, as the container's first process, with its own
/// arguments in front of `process.args`.
#[test]
fn an_init_runs_from_an_fd_in_front_of_the_program() {
    let mut b = Bundle::new();
    b.script("echo program");
    b.write();
    // Not reachable in the rootfs under this name: only the fd brings it.
    let host_busybox = fs::File::open("/bin/busybox").unwrap();
    let t = common::runtime();
    let (mut out_r, out_w) = std::io::pipe().unwrap();
    let opts = berth_runtime::CreateOptions {
        stdio: berth_runtime::Stdio {
            stdout: Some(out_w.into()),
            ..Default::default()
        },
        init: Some(berth_runtime::InitProgram {
            exe: host_busybox.into(),
            args: vec!["echo".into(), "init:".into()],
        }),
    };
    let mut c = t.rt.create("withinit", b.dir(), opts).unwrap();
    c.start().unwrap();
    assert_eq!(c.wait().unwrap(), ExitStatus::Exited(0));
    c.delete(false).unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut out_r, &mut out).unwrap();
    let args = b.config["process"]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(out, format!("init: {args}\n"));
}
