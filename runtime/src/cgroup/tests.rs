use super::*;
use std::collections::BTreeMap;

fn linux(json: &str) -> Linux {
    serde_json::from_str(json).expect("valid linux json")
}

fn plan_of(json: &str) -> Result<Option<CgroupPlan>, CgroupError> {
    plan(&linux(json), "web")
}

fn writes(json: &str) -> BTreeMap<String, String> {
    plan_of(json)
        .unwrap()
        .expect("a plan")
        .writes
        .into_iter()
        .collect()
}

fn err(json: &str) -> String {
    plan_of(json).unwrap_err().to_string()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn no_resources_and_no_path_needs_no_cgroup() {
    assert_eq!(plan_of("{}").unwrap(), None);
    assert_eq!(plan_of(r#"{"resources":{}}"#).unwrap(), None);
    assert_eq!(plan_of(r#"{"resources":{"devices":[]}}"#).unwrap(), None);
    assert_eq!(plan_of(r#"{"resources":{"memory":{}}}"#).unwrap(), None);
}

#[test]
fn path_only_plan_needs_no_controllers() {
    let p = plan_of(r#"{"cgroupsPath":"/machine/web"}"#)
        .unwrap()
        .unwrap();
    assert_eq!(p.path, CgroupPath::Root(PathBuf::from("machine/web")));
    assert!(p.controllers.is_empty());
    assert!(p.writes.is_empty());
}

#[test]
fn cgroups_path_forms() {
    let path = |json: &str| plan_of(json).unwrap().unwrap().path;
    assert_eq!(
        path(r#"{"cgroupsPath":"/a/b/c"}"#),
        CgroupPath::Root(PathBuf::from("a/b/c"))
    );
    assert_eq!(
        path(r#"{"cgroupsPath":"a/./b"}"#),
        CgroupPath::OwnParent(PathBuf::from("a/b"))
    );
    // Default: /berth/<id>, only when there is something to limit.
    assert_eq!(
        path(r#"{"resources":{"pids":{"limit":10}}}"#),
        CgroupPath::Root(PathBuf::from("berth/web"))
    );
}

#[test]
fn bad_cgroups_paths_are_refused() {
    for (json, want) in [
        (r#"{"cgroupsPath":"/a/../../etc"}"#, "\"..\" is not allowed"),
        (r#"{"cgroupsPath":"../x"}"#, "\"..\" is not allowed"),
        (r#"{"cgroupsPath":"/"}"#, "names the root cgroup"),
        (
            r#"{"cgroupsPath":"/a/cgroup.procs"}"#,
            "cgroup interface file",
        ),
        (
            r#"{"cgroupsPath":"system.slice:berth:web"}"#,
            "unsupported: linux.cgroupsPath",
        ),
    ] {
        let got = err(json);
        assert!(got.contains(want), "{json}: {got}");
    }
    for id in ["", ".", "..", "a/b", "cgroup.procs"] {
        let got = plan(&linux(r#"{"resources":{"pids":{"limit":1}}}"#), id)
            .unwrap_err()
            .to_string();
        assert!(got.contains("cannot name a cgroup"), "{id:?}: {got}");
    }
}

#[test]
fn resolve_paths() {
    let own = Path::new("/user.slice/session-1.scope");
    assert_eq!(
        resolve(&CgroupPath::Root(PathBuf::from("berth/web")), own),
        PathBuf::from("berth/web")
    );
    assert_eq!(
        resolve(&CgroupPath::OwnParent(PathBuf::from("web")), own),
        PathBuf::from("user.slice/web")
    );
    assert_eq!(
        resolve(&CgroupPath::OwnParent(PathBuf::from("web")), Path::new("/")),
        PathBuf::from("web")
    );
}

#[test]
fn memory_limits() {
    let w = writes(
        r#"{"resources":{"memory":{"limit":536870912,"reservation":268435456,"swap":1073741824}}}"#,
    );
    assert_eq!(
        w,
        map(&[
            ("memory.max", "536870912"),
            ("memory.low", "268435456"),
            ("memory.swap.max", "536870912"),
        ])
    );
    let p = plan_of(r#"{"resources":{"memory":{"limit":1048576}}}"#)
        .unwrap()
        .unwrap();
    assert_eq!(p.controllers, BTreeSet::from(["memory".to_string()]));
}

#[test]
fn memory_unlimited_and_unset_values() {
    assert_eq!(
        writes(r#"{"resources":{"memory":{"limit":-1}}}"#),
        map(&[("memory.max", "max"), ("memory.swap.max", "max")])
    );
    assert_eq!(
        writes(r#"{"resources":{"memory":{"limit":1000000,"swap":-1}}}"#),
        map(&[("memory.max", "1000000"), ("memory.swap.max", "max")])
    );
    assert_eq!(
        writes(r#"{"resources":{"memory":{"limit":1000000,"swap":1000000}}}"#),
        map(&[("memory.max", "1000000"), ("memory.swap.max", "0")])
    );
    assert_eq!(
        writes(r#"{"resources":{"memory":{"limit":1000000,"reservation":0,"swap":0}}}"#),
        map(&[("memory.max", "1000000")])
    );
}

#[test]
fn bad_memory_values() {
    for (json, want) in [
        (
            r#"{"memory":{"limit":-2}}"#,
            "linux.resources.memory.limit: invalid value -2",
        ),
        (
            r#"{"memory":{"limit":1000,"swap":999}}"#,
            "at least the memory limit 1000",
        ),
        (
            r#"{"memory":{"swap":5000}}"#,
            "needs a positive memory limit",
        ),
        (
            r#"{"memory":{"limit":-1,"swap":5000}}"#,
            "needs a positive memory limit",
        ),
        (
            r#"{"memory":{"limit":1000,"swap":-5}}"#,
            "memory.swap: invalid value -5",
        ),
    ] {
        let got = err(&format!(r#"{{"resources":{json}}}"#));
        assert!(got.contains(want), "{json}: {got}");
    }
}

#[test]
fn shares_to_weight_endpoints_and_runc_values() {
    assert_eq!(shares_to_weight(2), 1);
    assert_eq!(shares_to_weight(262_144), 10_000);
    assert_eq!(shares_to_weight(1024), 39);
    assert_eq!(shares_to_weight(512), 20);
    assert_eq!(shares_to_weight(0), 1);
    assert_eq!(shares_to_weight(u64::MAX), 10_000);
    // Monotonic over the whole range.
    let mut last = 0;
    for s in (2..=262_144).step_by(997) {
        let w = shares_to_weight(s);
        assert!(w >= last && (1..=10_000).contains(&w), "{s} -> {w}");
        last = w;
    }
}

#[test]
fn cpu_limits() {
    let w = writes(
        r#"{"resources":{"cpu":{"shares":1024,"quota":50000,"period":100000,"cpus":"0-1,3","mems":"0"}}}"#,
    );
    assert_eq!(
        w,
        map(&[
            ("cpu.weight", "39"),
            ("cpu.max", "50000 100000"),
            ("cpuset.cpus", "0-1,3"),
            ("cpuset.mems", "0"),
        ])
    );
    let p = plan_of(r#"{"resources":{"cpu":{"shares":1024,"cpus":"0"}}}"#)
        .unwrap()
        .unwrap();
    assert_eq!(
        p.controllers,
        BTreeSet::from(["cpu".to_string(), "cpuset".to_string()])
    );
}

#[test]
fn cpu_max_forms() {
    let max = |cpu: &str| {
        writes(&format!(r#"{{"resources":{{"cpu":{cpu}}}}}"#))
            .get("cpu.max")
            .cloned()
    };
    assert_eq!(max(r#"{"quota":20000}"#).as_deref(), Some("20000"));
    assert_eq!(max(r#"{"quota":-1}"#).as_deref(), Some("max"));
    assert_eq!(max(r#"{"period":50000}"#).as_deref(), Some("max 50000"));
    assert_eq!(
        max(r#"{"quota":-1,"period":50000}"#).as_deref(),
        Some("max 50000")
    );
    assert_eq!(
        writes(r#"{"resources":{"cpu":{"quota":0,"period":0,"shares":2}}}"#).get("cpu.max"),
        None
    );
    assert_eq!(
        writes(r#"{"resources":{"cpu":{"burst":1000,"idle":1}}}"#),
        map(&[("cpu.max.burst", "1000"), ("cpu.idle", "1")])
    );
}

#[test]
fn bad_cpu_values() {
    for (json, want) in [
        (
            r#"{"cpu":{"shares":1}}"#,
            "cpu.shares: invalid value 1: must be in 2..=262144",
        ),
        (
            r#"{"cpu":{"shares":262145}}"#,
            "cpu.shares: invalid value 262145",
        ),
        (r#"{"cpu":{"quota":-7}}"#, "cpu.quota: invalid value -7"),
        (r#"{"cpu":{"cpus":"0-3\nx"}}"#, "cpu.cpus: invalid value"),
        (r#"{"cpu":{"idle":2}}"#, "cpu.idle: invalid value 2"),
    ] {
        let got = err(&format!(r#"{{"resources":{json}}}"#));
        assert!(got.contains(want), "{json}: {got}");
    }
}

#[test]
fn pids_limit() {
    assert_eq!(
        writes(r#"{"resources":{"pids":{"limit":64}}}"#),
        map(&[("pids.max", "64")])
    );
    assert_eq!(
        writes(r#"{"resources":{"pids":{"limit":-1}}}"#),
        map(&[("pids.max", "max")])
    );
    assert_eq!(
        writes(r#"{"resources":{"pids":{"limit":0}}}"#),
        map(&[("pids.max", "max")])
    );
}

#[test]
fn unified_values_are_written_and_override() {
    let p = plan_of(
        r#"{"resources":{"memory":{"limit":1000000},
            "unified":{"memory.max":"2000000","io.weight":"default 200","cgroup.max.depth":"3"}}}"#,
    )
    .unwrap()
    .unwrap();
    let w: BTreeMap<_, _> = p.writes.iter().cloned().collect();
    assert_eq!(
        w,
        map(&[
            ("memory.max", "2000000"),
            ("io.weight", "default 200"),
            ("cgroup.max.depth", "3"),
        ])
    );
    // One write per file, unified last.
    assert_eq!(
        p.writes.iter().filter(|(f, _)| f == "memory.max").count(),
        1
    );
    assert_eq!(
        p.controllers,
        BTreeSet::from(["io".to_string(), "memory".to_string()])
    );
}

#[test]
fn bad_unified_keys_are_refused() {
    for key in [
        "../memory.max",
        "memory.max/../../x",
        "a/b",
        "..",
        "nodot",
        ".hidden",
        "memory..max",
        "cgroup.procs",
        "cgroup.subtree_control",
        "cgroup.kill",
    ] {
        let json = format!(
            r#"{{"resources":{{"unified":{{{}:"1"}}}}}}"#,
            serde_json::to_string(key).unwrap()
        );
        let got = err(&json);
        assert!(got.starts_with("linux.resources.unified["), "{key}: {got}");
    }
}

#[test]
fn untranslated_resources_are_unsupported() {
    for (json, field) in [
        (r#"{"blockIO":{"weight":10}}"#, "blockIO"),
        (
            r#"{"hugepageLimits":[{"pageSize":"2MB","limit":1}]}"#,
            "hugepageLimits",
        ),
        (r#"{"network":{"classID":1}}"#, "network"),
        (r#"{"rdma":{"mlx5_1":{"hcaHandles":3}}}"#, "rdma"),
        (r#"{"memory":{"kernel":1}}"#, "memory.kernel"),
        (r#"{"memory":{"kernelTCP":1}}"#, "memory.kernelTCP"),
        (r#"{"memory":{"swappiness":10}}"#, "memory.swappiness"),
        (
            r#"{"memory":{"disableOOMKiller":true}}"#,
            "memory.disableOOMKiller",
        ),
        (r#"{"cpu":{"realtimeRuntime":10}}"#, "cpu.realtimeRuntime"),
        (r#"{"cpu":{"realtimePeriod":10}}"#, "cpu.realtimeRuntime"),
    ] {
        let got = err(&format!(r#"{{"resources":{json}}}"#));
        assert!(
            got.starts_with(&format!("unsupported: linux.resources.{field} (")),
            "{json}: {got}"
        );
    }
}

const HYBRID_MOUNTINFO: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
25 22 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
27 26 0:25 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
28 26 0:26 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,memory
";

#[test]
fn finds_the_cgroup2_mount() {
    assert_eq!(
        find_cgroup2_mount(HYBRID_MOUNTINFO),
        Some(PathBuf::from("/sys/fs/cgroup/unified"))
    );
    let unified = "30 22 0:27 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n\
                   31 22 0:28 / /tmp/other rw shared:5 - cgroup2 cgroup2 rw\n";
    assert_eq!(
        find_cgroup2_mount(unified),
        Some(PathBuf::from("/sys/fs/cgroup"))
    );
    let elsewhere = "31 22 0:28 / /run/my\\040cgroup rw shared:5 - cgroup2 none rw\n";
    assert_eq!(
        find_cgroup2_mount(elsewhere),
        Some(PathBuf::from("/run/my cgroup"))
    );
    assert_eq!(
        find_cgroup2_mount("22 1 0:21 / / rw - ext4 /dev/vda1 rw\n"),
        None
    );
    assert_eq!(find_cgroup2_mount(""), None);
}

#[test]
fn parses_own_cgroup() {
    let text =
        "12:memory:/user.slice\n1:name=systemd:/user.slice/s.scope\n0::/user.slice/s.scope\n";
    assert_eq!(
        parse_own_cgroup(text),
        Some(PathBuf::from("/user.slice/s.scope"))
    );
    assert_eq!(parse_own_cgroup("0::/\n"), Some(PathBuf::from("/")));
    assert_eq!(parse_own_cgroup("4:pids:/x\n"), None);
}

#[test]
fn create_under_refuses_paths_leaving_the_mount() {
    let plan = CgroupPlan {
        path: CgroupPath::Root(PathBuf::from("x")),
        controllers: BTreeSet::new(),
        writes: Vec::new(),
        devices: None,
    };
    let tmp = std::env::temp_dir();
    for bad in ["/etc/x", "../x", "a/../../x", ""] {
        let got = Cgroup::create_under(&tmp, Path::new(bad), &plan).unwrap_err();
        assert!(matches!(got, CgroupError::BadPath { .. }), "{bad}: {got}");
    }
}

/// A directory standing in for a cgroup2 mount, to check the executor's
/// controller handling without touching the host's hierarchy.
fn fake_hierarchy(name: &str, controllers: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("berth-fake-cg-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("cgroup.controllers"), controllers).unwrap();
    fs::write(root.join("cgroup.subtree_control"), "").unwrap();
    root
}

#[test]
fn missing_controller_is_named_with_the_hierarchy() {
    let root = fake_hierarchy("missing", "cpu io\n");
    let plan = plan_of(r#"{"cgroupsPath":"/a/b","resources":{"memory":{"limit":1048576}}}"#)
        .unwrap()
        .unwrap();
    let got = Cgroup::create_under(&root, Path::new("a/b"), &plan)
        .unwrap_err()
        .to_string();
    assert!(
        got.contains("controller memory is not available in"),
        "{got}"
    );
    assert!(got.contains(&root.display().to_string()), "{got}");
    assert!(got.contains("\"cpu io\""), "{got}");
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn controllers_are_enabled_in_the_top_ancestor() {
    let root = fake_hierarchy("enable", "cpu memory pids\n");
    let plan = plan_of(
        r#"{"cgroupsPath":"/a","resources":{"memory":{"limit":1048576},"pids":{"limit":5}}}"#,
    )
    .unwrap()
    .unwrap();
    // A plain directory is no cgroupfs: writing memory.max into it fails
    // since the file does not exist, after the controllers were enabled.
    let got = Cgroup::create_under(&root, Path::new("a"), &plan).unwrap_err();
    assert!(
        matches!(&got, CgroupError::Write { path, .. } if path.ends_with("a/memory.max")),
        "{got}"
    );
    assert_eq!(
        fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
        "+memory +pids"
    );
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_failed_create_removes_the_directories_it_made() {
    let root = fake_hierarchy("undo", "");
    let plan = CgroupPlan {
        path: CgroupPath::Root(PathBuf::from("a/b")),
        controllers: BTreeSet::new(),
        writes: vec![("memory.max".to_string(), "1048576".to_string())],
        devices: None,
    };
    // memory.max cannot be written into a plain directory.
    let got = Cgroup::create_under(&root, Path::new("a/b"), &plan).unwrap_err();
    assert!(matches!(&got, CgroupError::Write { .. }), "{got}");
    assert!(!root.join("a").exists(), "a and a/b left behind");
    // One that was there before is not this call's to remove.
    fs::create_dir_all(root.join("a/b")).unwrap();
    Cgroup::create_under(&root, Path::new("a/b"), &plan).unwrap_err();
    assert!(root.join("a/b").is_dir());
    fs::remove_dir_all(&root).unwrap();
}

/// A cgroup with cgroups below it (made by what ran in it) is removed
/// with them; on its own the directory could never be removed.
#[test]
fn remove_takes_the_cgroups_below() {
    let mount = find_cgroup2_mount(&fs::read_to_string("/proc/self/mountinfo").unwrap())
        .expect("a cgroup2 mount (the unified hierarchy)");
    let plan = CgroupPlan {
        path: CgroupPath::Root(PathBuf::from("x")),
        controllers: BTreeSet::new(),
        writes: Vec::new(),
        devices: None,
    };
    let top = format!("berth-below-{}", std::process::id());
    let cg = Cgroup::create_under(&mount, Path::new(&top), &plan).unwrap();
    fs::create_dir_all(cg.path().join("a/b")).unwrap();
    fs::create_dir(cg.path().join("c")).unwrap();
    cg.remove().unwrap();
    assert!(!mount.join(&top).exists(), "{top} left behind");
}

#[test]
fn a_limit_the_kernel_refuses_leaves_no_cgroup() {
    let mount = find_cgroup2_mount(&fs::read_to_string("/proc/self/mountinfo").unwrap())
        .expect("a cgroup2 mount (the unified hierarchy)");
    let plan = CgroupPlan {
        path: CgroupPath::Root(PathBuf::from("x")),
        controllers: BTreeSet::new(),
        writes: vec![("cgroup.max.depth".to_string(), "notanumber".to_string())],
        devices: None,
    };
    let top = format!("berth-undo-{}", std::process::id());
    let got = Cgroup::create_under(&mount, &Path::new(&top).join("leaf"), &plan).unwrap_err();
    assert!(matches!(&got, CgroupError::Write { .. }), "{got}");
    assert!(!mount.join(&top).exists(), "{top} left behind");
}

/// The host's real cgroup2 mount (on this hybrid host,
/// /sys/fs/cgroup/unified without controllers): create a cgroup from a
/// path-only plan, move a process in, list, kill and remove it. Limits
/// need controllers this host binds to v1; the QEMU ring covers them.
#[test]
fn real_cgroup_lifecycle_on_the_host() {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount = find_cgroup2_mount(&mountinfo)
        .expect("no cgroup2 mount on this host: mount -t cgroup2 none /sys/fs/cgroup/unified");
    let top = format!("berth-rtx-test-{}", std::process::id());
    let plan = plan_of(&format!(r#"{{"cgroupsPath":"/{top}/c1"}}"#))
        .unwrap()
        .unwrap();
    let cg = Cgroup::create(&plan).unwrap_or_else(|e| {
        panic!(
            "create cgroup under {}: {e:?} (run the tests as root)",
            mount.display()
        )
    });
    assert_eq!(cg.path(), mount.join(&top).join("c1"));
    assert!(cg.path().is_dir());

    // The fd is a directory fd with O_CLOEXEC (fdinfo flags are octal).
    let fd = std::os::fd::AsRawFd::as_raw_fd(&cg.dir_fd());
    let fdinfo = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
    let flags = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
        .unwrap();
    assert_ne!(flags & libc::O_CLOEXEC as u32, 0, "{fdinfo}");
    assert_ne!(flags & libc::O_DIRECTORY as u32, 0, "{fdinfo}");

    assert_eq!(cg.pids().unwrap(), Vec::<i32>::new());
    let mut child = std::process::Command::new("/bin/sleep")
        .arg("600")
        .spawn()
        .expect("spawn /bin/sleep");
    let pid = child.id() as i32;
    cg.add_pid(pid).unwrap();
    assert_eq!(cg.pids().unwrap(), vec![pid]);
    let own = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(own.lines().any(|l| l == format!("0::/{top}/c1")), "{own}");

    cg.kill_all().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    let path = cg.path().to_path_buf();
    cg.remove().unwrap();
    assert!(!path.exists());
    // Reopening a removed cgroup fails with its path.
    let gone = Cgroup::open(&path).unwrap_err().to_string();
    assert!(gone.contains(&path.display().to_string()), "{gone}");
    fs::remove_dir(mount.join(&top)).unwrap();
}

#[test]
fn device_rules_are_planned_with_the_defaults() {
    let p = plan_of(r#"{"resources":{"devices":[{"allow":false,"access":"rwm"}]}}"#)
        .unwrap()
        .expect("device rules need a cgroup");
    assert_eq!(p.path, CgroupPath::Root(PathBuf::from("berth/web")));
    assert!(p.controllers.is_empty() && p.writes.is_empty());
    let rules = p.devices.unwrap();
    assert_eq!(rules.len(), 1 + devices::DEFAULT_RULES.len());
    assert!(!rules[0].allow);
    // An empty list restricts nothing and needs no program.
    let p = plan_of(r#"{"cgroupsPath":"/x","resources":{"devices":[]}}"#)
        .unwrap()
        .unwrap();
    assert_eq!(p.devices, None);
}

/// The eBPF device program for real: a process in the cgroup may read
/// /dev/kmsg (allowed "r"), not open it for writing, and may use the
/// default devices. This works on the hybrid host: device programs
/// attach to cgroup2 directories and need no controller.
#[test]
fn real_device_program_on_the_host() {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    assert!(
        Path::new("/dev/kmsg").exists(),
        "/dev/kmsg missing: the test needs a host devtmpfs"
    );
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount = find_cgroup2_mount(&mountinfo)
        .expect("no cgroup2 mount on this host: mount -t cgroup2 none /sys/fs/cgroup/unified");
    let top = format!("berth-rtx-dev-{}", std::process::id());
    let plan = plan_of(&format!(
        r#"{{"cgroupsPath":"/{top}/c","resources":{{"devices":[
            {{"allow":false,"access":"rwm"}},
            {{"allow":true,"type":"c","major":1,"minor":11,"access":"r"}}]}}}}"#
    ))
    .unwrap()
    .unwrap();
    let cg = Cgroup::create(&plan).unwrap_or_else(|e| {
        panic!(
            "create cgroup with device program under {}: {e:?} (run the tests as root)",
            mount.display()
        )
    });
    let script = "read go
(: < /dev/kmsg) 2>/dev/null && echo kmsg_read=ok || echo kmsg_read=denied
(: > /dev/kmsg) 2>/dev/null && echo kmsg_write=ok || echo kmsg_write=denied
(: < /dev/zero) 2>/dev/null && echo zero_read=ok || echo zero_read=denied
(: > /dev/full) 2>/dev/null && echo full_write=ok || echo full_write=denied
";
    let mut child = Command::new("/bin/sh")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn /bin/sh");
    cg.add_pid(child.id() as i32).unwrap();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text,
        "kmsg_read=ok\nkmsg_write=denied\nzero_read=ok\nfull_write=ok\n"
    );
    cg.remove().unwrap();
    fs::remove_dir(mount.join(&top)).unwrap();
}

/// The SIGKILL fallback of kernels before cgroup.kill (5.14), and every
/// other signal: the processes of the cgroups below are signalled too,
/// with the tree frozen meanwhile and thawed again; a tree frozen
/// already stays frozen (its processes still die of SIGKILL).
#[test]
fn signal_all_reaches_the_cgroups_below_and_thaws_only_what_it_froze() {
    let mount = find_cgroup2_mount(&fs::read_to_string("/proc/self/mountinfo").unwrap())
        .expect("a cgroup2 mount (the unified hierarchy)");
    let plan = CgroupPlan {
        path: CgroupPath::Root(PathBuf::from("x")),
        controllers: BTreeSet::new(),
        writes: Vec::new(),
        devices: None,
    };
    for frozen_before in [false, true] {
        let top = format!("berth-signal-{}-{frozen_before}", std::process::id());
        let cg = Cgroup::create_under(&mount, Path::new(&top), &plan).unwrap();
        fs::create_dir_all(cg.path().join("a/b")).unwrap();
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("600")
            .spawn()
            .expect("spawn /bin/sleep");
        let pid = child.id() as i32;
        fs::write(cg.path().join("a/b/cgroup.procs"), pid.to_string()).unwrap();
        assert_eq!(cg.pids().unwrap(), vec![pid], "the pids of the tree");
        if frozen_before {
            fs::write(cg.path().join("cgroup.freeze"), "1").unwrap();
        }
        let r = cg.signal_all(libc::SIGKILL);
        let status = child.wait().unwrap();
        let freeze = fs::read_to_string(cg.path().join("cgroup.freeze")).unwrap();
        fs::write(cg.path().join("cgroup.freeze"), "0").unwrap();
        cg.remove().unwrap();
        r.unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "frozen before: {frozen_before}"
        );
        let want = if frozen_before { "1" } else { "0" };
        assert_eq!(freeze.trim(), want, "frozen before: {frozen_before}");
    }
}
