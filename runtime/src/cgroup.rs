//! cgroup v2 for a container: a pure plan from the spec
//! (`linux.cgroupsPath`, `linux.resources`), then an executor that creates
//! the cgroup, writes the limits and keeps a directory fd for
//! `clone3(CLONE_INTO_CGROUP)`.
//!
//! Only the unified hierarchy is supported. Translations follow the kernel's
//! `Documentation/admin-guide/cgroup-v2.rst` and the conversions runc uses
//! for v1-style spec values:
//!
//! | spec | cgroup v2 file |
//! | --- | --- |
//! | `memory.limit` | `memory.max` (-1 → `max`) |
//! | `memory.reservation` | `memory.low` (-1 → `max`) |
//! | `memory.swap` (memory + swap) | `memory.swap.max` = swap − limit (-1 → `max`) |
//! | `cpu.shares` 2..=262144 | `cpu.weight` 1..=10000, linear |
//! | `cpu.quota`, `cpu.period` | `cpu.max` = "`quota`\|max [`period`]" |
//! | `cpu.burst` | `cpu.max.burst` |
//! | `cpu.idle` | `cpu.idle` |
//! | `cpu.cpus`, `cpu.mems` | `cpuset.cpus`, `cpuset.mems` |
//! | `pids.limit` | `pids.max` (≤ 0 → `max`) |
//! | `unified` | written as given, after the above |
//!
//! A value of 0 means "not set" for memory, shares, quota and period, as in
//! runc. Device rules (`linux.resources.devices`) become an eBPF device
//! program attached to the cgroup (see [`devices`]); an absent or empty
//! list attaches none. Everything else in `linux.resources` is refused with
//! `unsupported: linux.resources.<field>`.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::{Linux, LinuxCpu, LinuxMemory, LinuxResources};

use crate::sys;

pub mod devices;

use devices::DeviceRule;

/// Where a cgroup v2 plan lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupPath {
    /// Relative to the root of the cgroup2 mount (an absolute
    /// `cgroupsPath`, or the default `/berth/<id>`). Stored without the
    /// leading `/`.
    Root(PathBuf),
    /// A relative `cgroupsPath`: relative to the parent of the calling
    /// process's own cgroup, as runc resolves it (the own cgroup usually
    /// holds processes, so controllers cannot be enabled below it: the
    /// cgroup v2 "no internal processes" rule).
    OwnParent(PathBuf),
}

/// What to create and write for one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPlan {
    pub path: CgroupPath,
    /// Controllers the limits need, to enable in every ancestor's
    /// `cgroup.subtree_control`.
    pub controllers: BTreeSet<String>,
    /// `(file, value)` to write in the container's cgroup, in order.
    pub writes: Vec<(String, String)>,
    /// Device rules for the eBPF device program, the runtime's defaults
    /// appended; `None`: no device program.
    pub devices: Option<Vec<DeviceRule>>,
}

/// Failure to plan, create, use or remove a cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("unsupported: linux.resources.{field} ({reason})")]
    Unsupported { field: String, reason: String },
    #[error("unsupported: linux.cgroupsPath {path:?} ({reason})")]
    UnsupportedPath { path: String, reason: String },
    #[error("linux.resources.{field}: invalid value {value}: {reason}")]
    Invalid {
        field: String,
        value: String,
        reason: String,
    },
    #[error("linux.cgroupsPath {path:?}: {reason}")]
    BadPath { path: String, reason: String },
    #[error("container id {id:?} cannot name a cgroup")]
    BadId { id: String },
    #[error("read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no cgroup2 filesystem is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2Mount,
    #[error("no cgroup v2 entry (\"0::\") in /proc/self/cgroup")]
    NoOwnCgroup,
    #[error("create cgroup directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cgroup controller {controller} is not available in {dir} (cgroup.controllers: {available:?}); on a hybrid host it may be bound to cgroup v1"
    )]
    ControllerMissing {
        controller: String,
        dir: PathBuf,
        available: String,
    },
    #[error("enable controllers {controllers:?} in {path}")]
    EnableControllers {
        path: PathBuf,
        controllers: String,
        #[source]
        source: io::Error,
    },
    #[error("write {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("open cgroup directory {path}")]
    OpenDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parse process id {text:?} in {path}")]
    ParsePid { path: PathBuf, text: String },
    #[error("send signal {signal} to process {pid} of cgroup {path}")]
    Kill {
        path: PathBuf,
        pid: i32,
        signal: i32,
        #[source]
        source: io::Error,
    },
    #[error("thaw cgroup {path} after signalling its processes")]
    Thaw {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("remove cgroup {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("load the eBPF device program for {path}; verifier log: {log:?}")]
    LoadDeviceProgram {
        path: PathBuf,
        log: String,
        #[source]
        source: io::Error,
    },
    #[error("attach the eBPF device program to {path}")]
    AttachDeviceProgram {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("remove cgroup {path}: still populated by processes {pids:?}")]
    StillPopulated { path: PathBuf, pids: Vec<i32> },
    #[error(
        "cgroup {path} is not empty: it already holds processes, which a failed create or the delete would kill"
    )]
    NotEmpty { path: PathBuf },
}

fn unsupported(field: &str, reason: &str) -> CgroupError {
    CgroupError::Unsupported {
        field: field.to_string(),
        reason: reason.to_string(),
    }
}

fn invalid(field: &str, value: impl ToString, reason: &str) -> CgroupError {
    CgroupError::Invalid {
        field: field.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// Plans the cgroup of container `id`. `None` when the spec sets neither
/// `cgroupsPath` nor any resource: then the container needs no cgroup of
/// its own and none is created.
pub fn plan(linux: &Linux, id: &str) -> Result<Option<CgroupPlan>, CgroupError> {
    let (controllers, writes, devices) = match linux.resources() {
        Some(resources) => plan_resources(resources)?,
        None => (BTreeSet::new(), Vec::new(), None),
    };
    let path = match linux.cgroups_path() {
        Some(p) => cgroup_path(p)?,
        None if writes.is_empty() && devices.is_none() => return Ok(None),
        None => default_path(id)?,
    };
    Ok(Some(CgroupPlan {
        path,
        controllers,
        writes,
        devices,
    }))
}

fn default_path(id: &str) -> Result<CgroupPath, CgroupError> {
    let usable = !id.is_empty()
        && id != "."
        && id != ".."
        && !id.contains('/')
        && !id.contains('\0')
        && id != "cgroup"
        && !id.starts_with("cgroup.");
    if !usable {
        return Err(CgroupError::BadId { id: id.to_string() });
    }
    Ok(CgroupPath::Root(Path::new("berth").join(id)))
}

fn cgroup_path(p: &Path) -> Result<CgroupPath, CgroupError> {
    let text = p.to_string_lossy().into_owned();
    let bad = |reason: &str| CgroupError::BadPath {
        path: text.clone(),
        reason: reason.to_string(),
    };
    if text.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    // runc's systemd driver takes "slice:prefix:name"; berth has no
    // systemd driver.
    if !p.is_absolute() && text.matches(':').count() == 2 {
        return Err(CgroupError::UnsupportedPath {
            path: text,
            reason: "systemd slice:prefix:name paths need the systemd cgroup driver".to_string(),
        });
    }
    let mut clean = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => {
                let name = name.to_string_lossy();
                // Files of the cgroup interface cannot be cgroup names.
                if name.starts_with("cgroup.") {
                    return Err(bad("a component names a cgroup interface file"));
                }
                clean.push(&*name);
            }
            Component::ParentDir => return Err(bad("\"..\" is not allowed")),
            Component::Prefix(_) => return Err(bad("not a unix path")),
        }
    }
    if clean.as_os_str().is_empty() {
        return Err(bad("names the root cgroup, which cannot hold a container"));
    }
    Ok(if p.is_absolute() {
        CgroupPath::Root(clean)
    } else {
        CgroupPath::OwnParent(clean)
    })
}

type Planned = (
    BTreeSet<String>,
    Vec<(String, String)>,
    Option<Vec<DeviceRule>>,
);

fn plan_resources(r: &LinuxResources) -> Result<Planned, CgroupError> {
    let devices = match r.devices().as_deref() {
        None | Some([]) => None,
        Some(rules) => Some(devices::rules_from_spec(rules)?),
    };
    if r.block_io().is_some() {
        return Err(unsupported(
            "blockIO",
            "io controller limits are not implemented",
        ));
    }
    if r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()) {
        return Err(unsupported(
            "hugepageLimits",
            "hugetlb limits are not implemented",
        ));
    }
    if r.network().is_some() {
        return Err(unsupported(
            "network",
            "cgroup v2 has no net_cls/net_prio controllers",
        ));
    }
    if r.rdma().as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(unsupported("rdma", "rdma limits are not implemented"));
    }

    let mut writes: Vec<(String, String)> = Vec::new();
    if let Some(memory) = r.memory() {
        plan_memory(memory, &mut writes)?;
    }
    if let Some(cpu) = r.cpu() {
        plan_cpu(cpu, &mut writes)?;
    }
    if let Some(pids) = r.pids() {
        let limit = pids.limit();
        let value = if limit <= 0 {
            "max".to_string()
        } else {
            limit.to_string()
        };
        writes.push(("pids.max".to_string(), value));
    }
    if let Some(unified) = r.unified() {
        // Sorted, so the plan does not depend on HashMap order.
        let mut keys: Vec<&String> = unified.keys().collect();
        keys.sort();
        for key in keys {
            let value = &unified[key];
            check_unified(key, value)?;
            // unified overrides a translated value of the same file.
            writes.retain(|(file, _)| file != key);
            writes.push((key.clone(), value.clone()));
        }
    }
    let controllers = writes
        .iter()
        .filter_map(|(file, _)| controller_of(file))
        .map(str::to_string)
        .collect();
    Ok((controllers, writes, devices))
}

/// The controller owning an interface file (`memory.max` → `memory`);
/// `cgroup.*` files belong to the core.
fn controller_of(file: &str) -> Option<&str> {
    let prefix = file.split('.').next()?;
    (prefix != "cgroup").then_some(prefix)
}

fn check_unified(key: &str, value: &str) -> Result<(), CgroupError> {
    let field = format!("unified[{key:?}]");
    let well_formed = key.contains('.')
        && !key.starts_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if !well_formed || key.contains("..") {
        return Err(invalid(
            &field,
            key,
            "not a cgroup interface file name (no '/', no '..', [A-Za-z0-9._-] only)",
        ));
    }
    // The runtime owns membership and the hierarchy's shape.
    const MANAGED: [&str; 5] = [
        "cgroup.procs",
        "cgroup.threads",
        "cgroup.kill",
        "cgroup.subtree_control",
        "cgroup.type",
    ];
    if MANAGED.contains(&key) {
        return Err(invalid(&field, key, "managed by the runtime"));
    }
    if value.contains('\0') {
        return Err(invalid(&field, value.escape_debug(), "contains a NUL byte"));
    }
    Ok(())
}

/// "max" for -1, the number for a positive value, nothing for 0 (unset).
fn limit_value(field: &str, v: i64) -> Result<Option<String>, CgroupError> {
    match v {
        -1 => Ok(Some("max".to_string())),
        0 => Ok(None),
        v if v > 0 => Ok(Some(v.to_string())),
        v => Err(invalid(field, v, "must be -1 (unlimited) or positive")),
    }
}

fn plan_memory(m: &LinuxMemory, writes: &mut Vec<(String, String)>) -> Result<(), CgroupError> {
    if m.kernel().is_some() {
        return Err(unsupported(
            "memory.kernel",
            "cgroup v2 has no kernel memory limit",
        ));
    }
    if m.kernel_tcp().is_some() {
        return Err(unsupported(
            "memory.kernelTCP",
            "cgroup v2 has no kernel TCP limit",
        ));
    }
    if m.swappiness().is_some() {
        return Err(unsupported(
            "memory.swappiness",
            "cgroup v2 has no per-cgroup swappiness",
        ));
    }
    if m.disable_oom_killer().is_some() {
        return Err(unsupported(
            "memory.disableOOMKiller",
            "cgroup v2 cannot disable the OOM killer",
        ));
    }
    if m.use_hierarchy().is_some() {
        return Err(unsupported("memory.useHierarchy", "a cgroup v1 setting"));
    }
    if m.check_before_update().is_some() {
        return Err(unsupported(
            "memory.checkBeforeUpdate",
            "updates are not implemented",
        ));
    }
    let limit = m.limit().unwrap_or(0);
    if let Some(v) = limit_value("memory.limit", limit)? {
        writes.push(("memory.max".to_string(), v));
    }
    if let Some(v) = limit_value("memory.reservation", m.reservation().unwrap_or(0))? {
        writes.push(("memory.low".to_string(), v));
    }
    if let Some(v) = swap_max(m.swap().unwrap_or(0), limit)? {
        writes.push(("memory.swap.max".to_string(), v));
    }
    Ok(())
}

/// `memory.swap.max` from the spec's memory+swap total (v1 memsw
/// semantics) and the memory limit.
fn swap_max(swap: i64, limit: i64) -> Result<Option<String>, CgroupError> {
    match (swap, limit) {
        // Unlimited memory and swap not given: unlimited swap too, as v1
        // would have it.
        (0, -1) => Ok(Some("max".to_string())),
        (0, _) => Ok(None),
        (-1, _) => Ok(Some("max".to_string())),
        (s, _) if s < 0 => Err(invalid(
            "memory.swap",
            s,
            "must be -1 (unlimited) or positive",
        )),
        (s, l) if l <= 0 => Err(invalid(
            "memory.swap",
            s,
            "a swap limit needs a positive memory limit (swap counts memory + swap)",
        )),
        (s, l) if s < l => Err(invalid(
            "memory.swap",
            s,
            &format!("memory + swap must be at least the memory limit {l}"),
        )),
        (s, l) => Ok(Some((s - l).to_string())),
    }
}

/// cgroup v1 `cpu.shares` (2..=262144, default 1024) to v2 `cpu.weight`
/// (1..=10000, default 100): the straight line through (2, 1) and
/// (262144, 10000). 1024 maps to 39, as in runc; the defaults do not
/// match exactly, a known property of this conversion. Values outside
/// 2..=262144 are clamped, as the kernel clamps v1 shares.
pub fn shares_to_weight(shares: u64) -> u64 {
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

fn plan_cpu(c: &LinuxCpu, writes: &mut Vec<(String, String)>) -> Result<(), CgroupError> {
    if c.realtime_runtime().is_some() || c.realtime_period().is_some() {
        return Err(unsupported(
            "cpu.realtimeRuntime",
            "cgroup v2 has no realtime bandwidth (cpu.rt_*) files",
        ));
    }
    match c.shares() {
        None | Some(0) => {}
        Some(s @ 2..=262_144) => {
            writes.push(("cpu.weight".to_string(), shares_to_weight(s).to_string()))
        }
        Some(s) => return Err(invalid("cpu.shares", s, "must be in 2..=262144")),
    }
    let quota = c.quota().unwrap_or(0);
    let period = c.period().unwrap_or(0);
    if quota != 0 || period != 0 {
        let mut max = match quota {
            -1 | 0 => "max".to_string(),
            q if q > 0 => q.to_string(),
            q => {
                return Err(invalid(
                    "cpu.quota",
                    q,
                    "must be -1 (unlimited) or positive",
                ));
            }
        };
        if period != 0 {
            max.push_str(&format!(" {period}"));
        }
        writes.push(("cpu.max".to_string(), max));
    }
    if let Some(burst) = c.burst() {
        writes.push(("cpu.max.burst".to_string(), burst.to_string()));
    }
    if let Some(idle) = c.idle() {
        if idle != 0 && idle != 1 {
            return Err(invalid("cpu.idle", idle, "must be 0 or 1"));
        }
        writes.push(("cpu.idle".to_string(), idle.to_string()));
    }
    for (field, file, value) in [
        ("cpu.cpus", "cpuset.cpus", c.cpus()),
        ("cpu.mems", "cpuset.mems", c.mems()),
    ] {
        let Some(list) = value.as_deref().filter(|v| !v.is_empty()) else {
            continue;
        };
        let ok = list
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b',' || b == b'-');
        if !ok {
            return Err(invalid(field, list, "not a cpu/node list like 0-3,6"));
        }
        writes.push((file.to_string(), list.to_string()));
    }
    Ok(())
}

/// The cgroup2 mount point from `/proc/self/mountinfo` text: the unified
/// `/sys/fs/cgroup` first, then the hybrid layout's
/// `/sys/fs/cgroup/unified`, then any other cgroup2 mount.
pub fn find_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = Vec::new();
    for line in mountinfo.lines() {
        // id parent major:minor root mountpoint options [optional...] - fstype source super
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        if let Some(mount_point) = left.split_whitespace().nth(4) {
            found.push(PathBuf::from(unescape_mountinfo(mount_point)));
        }
    }
    for preferred in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if let Some(p) = found.iter().find(|p| p.as_os_str() == preferred) {
            return Some(p.clone());
        }
    }
    found.into_iter().next()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|o| std::str::from_utf8(o).ok())
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        if let Some(v) = octal {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The calling process's cgroup v2 path from `/proc/self/cgroup` text (the
/// `0::/path` line).
pub fn parse_own_cgroup(proc_self_cgroup: &str) -> Option<PathBuf> {
    proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(PathBuf::from)
}

/// The plan's directory relative to the cgroup2 mount, given the caller's
/// own cgroup (needed only for [`CgroupPath::OwnParent`]).
pub fn resolve(path: &CgroupPath, own_cgroup: &Path) -> PathBuf {
    match path {
        CgroupPath::Root(p) => p.clone(),
        CgroupPath::OwnParent(p) => {
            let own = own_cgroup.strip_prefix("/").unwrap_or(own_cgroup);
            own.parent().unwrap_or(Path::new("")).join(p)
        }
    }
}

fn read_to_string(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn write_file(path: &Path, value: &str) -> io::Result<()> {
    // cgroupfs parses each write(2) on its own: one write per value.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    f.write_all(value.as_bytes())
}

fn open_dir(path: &Path) -> Result<OwnedFd, CgroupError> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|source| CgroupError::OpenDir {
            path: path.to_path_buf(),
            source,
        })
}

/// A container's cgroup v2 directory, held open.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    dir: OwnedFd,
}

impl Cgroup {
    /// Creates the planned cgroup under the host's cgroup2 mount.
    pub fn create(plan: &CgroupPlan) -> Result<Cgroup, CgroupError> {
        let mountinfo = read_to_string(Path::new("/proc/self/mountinfo"))?;
        let mount = find_cgroup2_mount(&mountinfo).ok_or(CgroupError::NoCgroup2Mount)?;
        let own = match plan.path {
            CgroupPath::Root(_) => PathBuf::from("/"),
            CgroupPath::OwnParent(_) => {
                let text = read_to_string(Path::new("/proc/self/cgroup"))?;
                parse_own_cgroup(&text).ok_or(CgroupError::NoOwnCgroup)?
            }
        };
        Cgroup::create_under(&mount, &resolve(&plan.path, &own), plan)
    }

    /// Creates the cgroup `relative` (from [`resolve`]) under the cgroup2
    /// mount `mount`: every missing directory, the plan's controllers
    /// enabled in each ancestor's `cgroup.subtree_control`, then the
    /// limits.
    pub fn create_under(
        mount: &Path,
        relative: &Path,
        plan: &CgroupPlan,
    ) -> Result<Cgroup, CgroupError> {
        // Only plain names: an absolute or ".." component would leave the
        // cgroup2 mount.
        let plain = relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if !plain || relative.as_os_str().is_empty() {
            return Err(CgroupError::BadPath {
                path: relative.to_string_lossy().into_owned(),
                reason: "must be a non-empty relative path of plain names".to_string(),
            });
        }
        // The directories this call makes, removed again (deepest first)
        // when a later step fails: a limit the kernel refuses must not
        // leave a cgroup behind at every failed start.
        let mut made: Vec<PathBuf> = Vec::new();
        let result = Self::create_steps(mount, relative, plan, &mut made);
        if result.is_err() {
            for dir in made.iter().rev() {
                // Fails (and stays) if something else came to live there.
                let _ = fs::remove_dir(dir);
            }
        }
        result
    }

    fn create_steps(
        mount: &Path,
        relative: &Path,
        plan: &CgroupPlan,
        made: &mut Vec<PathBuf>,
    ) -> Result<Cgroup, CgroupError> {
        let wanted: Vec<&str> = plan.controllers.iter().map(String::as_str).collect();
        let mut dir = mount.to_path_buf();
        for component in relative.components() {
            if !wanted.is_empty() {
                enable_controllers(&dir, &wanted)?;
            }
            dir.push(component);
            match fs::create_dir(&dir) {
                Ok(()) => made.push(dir.clone()),
                // An existing leaf is reused, as runc does after a crash.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(CgroupError::CreateDir { path: dir, source }),
            }
        }
        // An existing leaf may be reused (left by a crash), but not one in
        // use: the container would share it with those processes, and the
        // cleanup after a failed create, or the delete, would kill them.
        // `populated` covers the descendants too (cgroup-v2.rst).
        // Every non-root cgroup2 directory has `cgroup.events`; only the
        // unit tests' plain directories lack it.
        let events_path = dir.join("cgroup.events");
        let events = match fs::read_to_string(&events_path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(CgroupError::Read {
                    path: events_path,
                    source,
                });
            }
        };
        if events.lines().any(|l| l.trim() == "populated 1") {
            return Err(CgroupError::NotEmpty { path: dir });
        }
        for (file, value) in &plan.writes {
            let path = dir.join(file);
            write_file(&path, value).map_err(|source| CgroupError::Write {
                path,
                value: value.clone(),
                source,
            })?;
        }
        let fd = open_dir(&dir)?;
        if let Some(rules) = &plan.devices {
            attach_device_program(&dir, fd.as_fd(), rules)?;
        }
        Ok(Cgroup { path: dir, dir: fd })
    }

    /// Opens an existing cgroup directory (to signal or delete a container
    /// created by another process).
    pub fn open(path: &Path) -> Result<Cgroup, CgroupError> {
        Ok(Cgroup {
            dir: open_dir(path)?,
            path: path.to_path_buf(),
        })
    }

    /// Absolute path of the cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `O_DIRECTORY | O_CLOEXEC` fd of the cgroup, for clone3's
    /// `CLONE_INTO_CGROUP`.
    pub fn dir_fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// Moves process `pid` into the cgroup.
    pub fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        let path = self.path.join("cgroup.procs");
        let value = pid.to_string();
        write_file(&path, &value).map_err(|source| CgroupError::Write {
            path,
            value,
            source,
        })
    }

    /// The processes in the cgroup and in every cgroup below it: a
    /// container that delegates cgroups (systemd inside) keeps its
    /// processes there, none in its own. Sorted, each once.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let mut pids = Vec::new();
        let mut dirs = vec![self.path.clone()];
        while let Some(dir) = dirs.pop() {
            let path = dir.join("cgroup.procs");
            let text = match fs::read_to_string(&path) {
                Ok(t) => t,
                // A cgroup below, removed since its parent was listed.
                Err(e) if e.kind() == io::ErrorKind::NotFound && dir != self.path => continue,
                Err(source) => return Err(CgroupError::Read { path, source }),
            };
            for l in text.lines().filter(|l| !l.is_empty()) {
                pids.push(l.trim().parse().map_err(|_| CgroupError::ParsePid {
                    path: path.clone(),
                    text: l.to_string(),
                })?);
            }
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(e.path());
                }
            }
        }
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// SIGKILLs every process in the cgroup and its descendants: one write
    /// to `cgroup.kill` (Linux 5.14+), else [`Cgroup::signal_all`]. Does
    /// not wait for them to die.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        let kill_file = self.path.join("cgroup.kill");
        if kill_file.exists() {
            return write_file(&kill_file, "1").map_err(|source| CgroupError::Write {
                path: kill_file,
                value: "1".to_string(),
                source,
            });
        }
        self.signal_all(libc::SIGKILL)
    }

    /// Sends `signal` to every process in the cgroup and its descendants.
    /// As runc does, the tree is frozen meanwhile (`cgroup.freeze`, Linux
    /// 5.2+), so that no process forks a child the list misses, and
    /// thawed again unless it was frozen already; a cgroup that cannot be
    /// frozen is signalled all the same. Every process is tried; the
    /// first failure is returned (ESRCH, gone meanwhile, is none).
    pub fn signal_all(&self, signal: i32) -> Result<(), CgroupError> {
        // Signal 0 only checks: nothing to hold still for it.
        let froze = signal != 0 && self.freeze();
        let mut result = self.pids().and_then(|pids| {
            let mut first = Ok(());
            for pid in pids {
                match sys::kill(pid, signal) {
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(source) if first.is_ok() => {
                        first = Err(CgroupError::Kill {
                            path: self.path.clone(),
                            pid,
                            signal,
                            source,
                        });
                    }
                    _ => {}
                }
            }
            first
        });
        if froze {
            let thawed = write_file(&self.path.join("cgroup.freeze"), "0").map_err(|source| {
                CgroupError::Thaw {
                    path: self.path.clone(),
                    source,
                }
            });
            result = result.and(thawed);
        }
        result
    }

    /// Freezes the cgroup's tree; true when this call froze it (it was
    /// thawed, and `cgroup.freeze` exists and could be written). Waits
    /// for `frozen 1` in `cgroup.events`, for a second at most: the
    /// kernel freezes each process when it next leaves the kernel, and
    /// one in uninterruptible sleep may take long; a fork after the write
    /// starts frozen anyway (cgroup-v2.rst, "cgroup.freeze").
    fn freeze(&self) -> bool {
        let file = self.path.join("cgroup.freeze");
        match fs::read_to_string(&file) {
            Ok(t) if t.trim() == "0" => {}
            _ => return false,
        }
        if write_file(&file, "1").is_err() {
            return false;
        }
        let events = self.path.join("cgroup.events");
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while std::time::Instant::now() < deadline {
            match fs::read_to_string(&events) {
                Ok(t) if !t.lines().any(|l| l.trim() == "frozen 1") => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                _ => break,
            }
        }
        true
    }

    /// Removes the cgroup directory. A cgroup whose processes were just
    /// killed stays populated until the kernel has torn them down, so
    /// EBUSY is retried for about a second before giving up.
    pub fn remove(self) -> Result<(), CgroupError> {
        self.remove_within(Duration::from_secs(1))
    }

    /// [`Cgroup::remove`], busy cgroups retried for `wait` at most. The
    /// cgroups below it go first, deepest first: what the container made
    /// there (a runtime it ran, a service manager) would otherwise keep
    /// the directory from ever being removed.
    pub fn remove_within(self, wait: Duration) -> Result<(), CgroupError> {
        let Cgroup { path, dir } = self;
        drop(dir);
        let deadline = std::time::Instant::now() + wait;
        remove_tree(&path, deadline)?;
        Ok(())
    }
}

/// Removes the cgroup directory `path` and those below it, deepest first;
/// EBUSY (killed processes not torn down yet) is retried until `deadline`.
fn remove_tree(path: &Path, deadline: std::time::Instant) -> Result<(), CgroupError> {
    let children = match fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CgroupError::Remove {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    for e in children.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path(), deadline)?;
        }
    }
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                let pids = fs::read_to_string(path.join("cgroup.procs"))
                    .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
                    .unwrap_or_default();
                return Err(CgroupError::StillPopulated {
                    path: path.to_path_buf(),
                    pids,
                });
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
}

/// Loads the device program for `rules` and attaches it to the cgroup.
/// The cgroup keeps the program alive; its fd is closed on return.
fn attach_device_program(
    path: &Path,
    dir: BorrowedFd<'_>,
    rules: &[DeviceRule],
) -> Result<(), CgroupError> {
    let program = devices::device_program(rules);
    let mut log = vec![0u8; 64 * 1024];
    let prog = sys::bpf::prog_load(
        sys::bpf::BPF_PROG_TYPE_CGROUP_DEVICE,
        sys::bpf::BPF_CGROUP_DEVICE,
        &program,
        c"Apache-2.0",
        "berth_devices",
        &mut log,
    )
    .map_err(|source| {
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        CgroupError::LoadDeviceProgram {
            path: path.to_path_buf(),
            log: String::from_utf8_lossy(&log[..end]).trim_end().to_string(),
            source,
        }
    })?;
    sys::bpf::prog_attach(
        dir,
        prog.as_fd(),
        sys::bpf::BPF_CGROUP_DEVICE,
        sys::bpf::BPF_F_ALLOW_MULTI,
    )
    .map_err(|source| CgroupError::AttachDeviceProgram {
        path: path.to_path_buf(),
        source,
    })
}

/// Enables `wanted` in `dir`'s `cgroup.subtree_control`, after checking
/// that `dir` has them in `cgroup.controllers`.
fn enable_controllers(dir: &Path, wanted: &[&str]) -> Result<(), CgroupError> {
    let available = read_to_string(&dir.join("cgroup.controllers"))?;
    let have: Vec<&str> = available.split_whitespace().collect();
    if let Some(missing) = wanted.iter().find(|c| !have.contains(c)) {
        return Err(CgroupError::ControllerMissing {
            controller: missing.to_string(),
            dir: dir.to_path_buf(),
            available: available.trim().to_string(),
        });
    }
    let enabled = read_to_string(&dir.join("cgroup.subtree_control"))?;
    let on: Vec<&str> = enabled.split_whitespace().collect();
    let to_enable: Vec<String> = wanted
        .iter()
        .filter(|c| !on.contains(c))
        .map(|c| format!("+{c}"))
        .collect();
    if to_enable.is_empty() {
        return Ok(());
    }
    let value = to_enable.join(" ");
    let path = dir.join("cgroup.subtree_control");
    write_file(&path, &value).map_err(|source| CgroupError::EnableControllers {
        path,
        controllers: value,
        source,
    })
}

#[cfg(test)]
mod tests;
