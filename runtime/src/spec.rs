//! Spec validation and the plan: everything the container's first process
//! will do, computed in the parent from the `Spec` before `clone3`.
//!
//! The child must not parse, allocate or format, so every path, string and
//! flag it needs is turned into a `CString` or an integer here. Whatever
//! the spec asks for that the runtime does not implement is refused with
//! `unsupported: <field>`, never silently ignored.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxDeviceType, LinuxNamespaceType, Mount, PosixRlimitType, Spec};

use crate::caps::{CapSets, CapsError};

mod config;
pub use config::parse_config;

/// A spec the runtime cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("unsupported ociVersion {0:?}: accepted are 1.0.x to 1.2.x")]
    Version(String),
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("mount destination {dest} is on /proc and not of type proc: refused (CVE-2019-16884)")]
    MountOverProc { dest: String },
    #[error("unknown mount option {option:?} for {dest}")]
    MountOption { dest: String, option: String },
    #[error("string contains a NUL byte in {field}")]
    Nul { field: String },
    #[error("capabilities")]
    Caps(#[source] CapsError),
    #[error("not UTF-8 (invalid byte at offset {offset})")]
    NotUtf8 { offset: usize },
    #[error("not a JSON object (a runtime spec is one)")]
    NotObject,
    #[error("unknown capability {name:?} in process.capabilities.{set}")]
    UnknownCapability { set: &'static str, name: String },
    #[error(transparent)]
    Json(serde_json::Error),
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

fn unsupported(field: impl Into<String>) -> SpecError {
    SpecError::Unsupported(field.into())
}

fn cstring(field: &str, s: impl Into<Vec<u8>>) -> Result<CString, SpecError> {
    CString::new(s).map_err(|_| SpecError::Nul {
        field: field.to_string(),
    })
}

/// A destination inside the rootfs, cleaned lexically (`.`/`..` folded,
/// never above `/`) and split so the child can create it component by
/// component with in-root resolution (`openat2(RESOLVE_IN_ROOT)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InRootPath {
    /// The cleaned absolute path, e.g. `/a/b`.
    pub full: CString,
    /// Each prefix: `/a`, `/a/b`.
    pub prefixes: Vec<CString>,
    /// Each component: `a`, `b`.
    pub names: Vec<CString>,
}

impl InRootPath {
    pub fn new(field: &str, path: &Path) -> Result<InRootPath, SpecError> {
        let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
        for c in path.components() {
            match c {
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                Component::ParentDir => {
                    parts.pop();
                }
                Component::Normal(n) => parts.push(n),
            }
        }
        let mut prefixes = Vec::with_capacity(parts.len());
        let mut names = Vec::with_capacity(parts.len());
        let mut acc = Vec::new();
        for p in &parts {
            acc.push(b'/');
            acc.extend_from_slice(p.as_bytes());
            prefixes.push(cstring(field, acc.clone())?);
            names.push(cstring(field, p.as_bytes())?);
        }
        let full = if acc.is_empty() {
            c"/".to_owned()
        } else {
            cstring(field, acc)?
        };
        Ok(InRootPath {
            full,
            prefixes,
            names,
        })
    }

    pub fn as_str(&self) -> &str {
        self.full.to_str().unwrap_or("<non-utf8>")
    }

    pub fn is_root(&self) -> bool {
        self.names.is_empty()
    }
}

/// What a mount puts at its destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    /// A bind mount of a host path (`bind` or `rbind`).
    Bind { source: CString, recursive: bool },
    /// A new filesystem instance.
    Fs {
        fstype: CString,
        source: CString,
        data: Option<CString>,
    },
}

/// One entry of `mounts`, ready for the child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    pub dest: InRootPath,
    pub kind: MountKind,
    /// `MS_*` flags for the mount itself (ro, nosuid, …).
    pub flags: libc::c_ulong,
    /// Propagation flags applied afterwards (`MS_SHARED|MS_REC`, …), or 0.
    pub propagation: libc::c_ulong,
    /// The destination is a file (bind mount of a non-directory).
    pub file: bool,
    /// A file bound over one of [`PROC_BIND_FILES`]: the only mount
    /// allowed onto the container's procfs.
    pub over_proc_file: bool,
}

/// A device node to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePlan {
    pub path: InRootPath,
    /// `S_IFCHR`, `S_IFBLK` or `S_IFIFO` plus the permission bits.
    pub mode: libc::mode_t,
    pub major: u64,
    pub minor: u64,
    pub uid: u32,
    pub gid: u32,
    /// Host path to bind from when mknod is not allowed (user namespace).
    pub host_path: CString,
}

/// A namespace to join by path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinNamespace {
    pub kind: LinuxNamespaceType,
    pub path: PathBuf,
}

/// The namespace part of the plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespacePlan {
    /// `CLONE_NEW*` for the namespaces to create.
    pub clone_flags: u64,
    /// Namespaces to join (the child runs `setns` in order; never user).
    pub join: Vec<JoinNamespace>,
    /// A pid namespace to join; done by the parent around `clone3`.
    pub join_pid: Option<PathBuf>,
    /// `uid_map` / `gid_map` contents when a user namespace is created.
    pub uid_map: String,
    pub gid_map: String,
}

impl NamespacePlan {
    pub fn new_user(&self) -> bool {
        self.clone_flags & libc::CLONE_NEWUSER as u64 != 0
    }

    pub fn new_net(&self) -> bool {
        self.clone_flags & libc::CLONE_NEWNET as u64 != 0
    }
}

/// Everything the child needs to become the container process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub rootfs: PathBuf,
    pub readonly_root: bool,
    pub namespaces: NamespacePlan,
    /// Propagation of `/` in the new mount namespace before anything is mounted.
    pub root_propagation: libc::c_ulong,
    /// Propagation re-applied to the new `/` after pivot_root (shared, unbindable).
    pub rootfs_propagation_after: libc::c_ulong,
    pub mounts: Vec<MountPlan>,
    /// Create the default devices and `/dev` symlinks (no host `/dev` bind).
    pub default_dev: bool,
    /// `/dev`, split for in-root creation (the child must not allocate it).
    pub dev_dir: InRootPath,
    pub devices: Vec<DevicePlan>,
    pub masked: Vec<InRootPath>,
    pub readonly: Vec<InRootPath>,
    pub hostname: Option<Vec<u8>>,
    pub domainname: Option<Vec<u8>>,
    /// (path under /proc/sys, value).
    pub sysctls: Vec<(CString, Vec<u8>)>,
    pub rlimits: Vec<(libc::c_int, u64, u64)>,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: u32,
    pub caps: Option<CapSets>,
    pub no_new_privs: bool,
    pub oom_score_adj: Option<i32>,
    pub args: Vec<CString>,
    pub env: Vec<CString>,
    pub cwd: CString,
    /// The cwd cleaned and split for in-root creation: a missing one is
    /// made inside the root before pivot_root, as runc and crun do.
    pub cwd_dest: InRootPath,
    /// Where `args[0]` may be: itself when it has a `/`, else each `$PATH` entry.
    pub exec_candidates: Vec<CString>,
}

/// Where a program named without a `/` is looked for when
/// `process.env` has no `PATH` (only its absolute entries count).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Checks the `ociVersion`: 1.0.x to 1.2.x (pre-release suffixes allowed).
pub fn check_version(v: &str) -> Result<(), SpecError> {
    let mut it = v.split(['.', '-', '+']);
    let major = it.next();
    let minor = it.next().and_then(|m| m.parse::<u32>().ok());
    match (major, minor) {
        (Some("1"), Some(0..=2)) => Ok(()),
        _ => Err(SpecError::Version(v.to_string())),
    }
}

/// Resolves `root.path` against the bundle directory.
pub fn rootfs_path(spec: &Spec, bundle: &Path) -> Result<PathBuf, SpecError> {
    let root = spec.root().as_ref().ok_or(SpecError::Missing("root"))?;
    let p = root.path();
    if p.as_os_str().is_empty() {
        return Err(SpecError::Missing("root.path"));
    }
    Ok(if p.is_absolute() {
        p.clone()
    } else {
        bundle.join(p)
    })
}

/// Refuses every field the runtime does not implement.
pub fn check_supported(spec: &Spec) -> Result<(), SpecError> {
    check_version(spec.version())?;
    if spec.solaris().is_some() {
        return Err(unsupported("solaris"));
    }
    if spec.windows().is_some() {
        return Err(unsupported("windows"));
    }
    if spec.vm().is_some() {
        return Err(unsupported("vm"));
    }
    if spec.zos().is_some() {
        return Err(unsupported("zos"));
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or(SpecError::Missing("process"))?;
    if process.terminal() == Some(true) {
        return Err(unsupported("process.terminal"));
    }
    if process.console_size().is_some() {
        return Err(unsupported("process.consoleSize"));
    }
    if process.command_line().is_some() {
        return Err(unsupported("process.commandLine"));
    }
    if process
        .apparmor_profile()
        .as_ref()
        .is_some_and(|s| !s.is_empty())
    {
        return Err(unsupported("process.apparmorProfile"));
    }
    if process
        .selinux_label()
        .as_ref()
        .is_some_and(|s| !s.is_empty())
    {
        return Err(unsupported("process.selinuxLabel"));
    }
    if process.io_priority().is_some() {
        return Err(unsupported("process.ioPriority"));
    }
    if process.scheduler().is_some() {
        return Err(unsupported("process.scheduler"));
    }
    if process.exec_cpu_affinity().is_some() {
        return Err(unsupported("process.execCPUAffinity"));
    }
    if let Some(mounts) = spec.mounts() {
        for m in mounts {
            if m.uid_mappings().is_some() || m.gid_mappings().is_some() {
                return Err(unsupported("mounts.uidMappings"));
            }
        }
    }
    if let Some(linux) = spec.linux() {
        if linux.net_devices().as_ref().is_some_and(|d| !d.is_empty()) {
            return Err(unsupported("linux.netDevices"));
        }
        if linux.intel_rdt().is_some() {
            return Err(unsupported("linux.intelRdt"));
        }
        if linux.memory_policy().is_some() {
            return Err(unsupported("linux.memoryPolicy"));
        }
        if linux.personality().is_some() {
            return Err(unsupported("linux.personality"));
        }
        if linux.time_offsets().as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(unsupported("linux.timeOffsets"));
        }
        if linux.mount_label().as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(unsupported("linux.mountLabel"));
        }
    }
    Ok(())
}

fn namespace_flag(kind: LinuxNamespaceType) -> Result<u64, SpecError> {
    Ok(match kind {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::Time => return Err(unsupported("linux.namespaces type time")),
    } as u64)
}

fn plan_namespaces(spec: &Spec) -> Result<NamespacePlan, SpecError> {
    let mut plan = NamespacePlan::default();
    let linux = spec.linux().as_ref();
    let namespaces = linux.and_then(|l| l.namespaces().as_ref());
    let mut seen = 0u64;
    for ns in namespaces.into_iter().flatten() {
        let flag = namespace_flag(ns.typ())?;
        if seen & flag != 0 {
            return Err(invalid(
                "linux.namespaces",
                format!("{} listed twice", ns.typ()),
            ));
        }
        seen |= flag;
        match ns.path() {
            None => plan.clone_flags |= flag,
            Some(p) if ns.typ() == LinuxNamespaceType::Mount => {
                return Err(unsupported(format!(
                    "linux.namespaces mnt path {}",
                    p.display()
                )));
            }
            Some(p) if ns.typ() == LinuxNamespaceType::Pid => plan.join_pid = Some(p.clone()),
            Some(p) => plan.join.push(JoinNamespace {
                kind: ns.typ(),
                path: p.clone(),
            }),
        }
    }
    if plan.clone_flags & libc::CLONE_NEWNS as u64 == 0 {
        // The rootfs, pivot_root and every mount need a private mount namespace.
        return Err(unsupported("a container without a new mount namespace"));
    }
    if plan.join.iter().any(|j| j.kind == LinuxNamespaceType::User) {
        // The namespaces clone3 creates would belong to the runtime's user
        // namespace, not the joined one, so the container could not mount
        // in its own mount namespace; runc unshares them after the setns,
        // which this single-clone design does not do.
        return Err(unsupported(
            "linux.namespaces user path (joining a user namespace)",
        ));
    }
    if plan.new_user() && (!plan.join.is_empty() || plan.join_pid.is_some()) {
        // Joining a namespace owned by another user namespace needs
        // privileges the new one does not have (crun delays the userns
        // creation for this; not implemented).
        return Err(unsupported(
            "joining namespaces together with a new user namespace",
        ));
    }
    let map = |m: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>| {
        m.into_iter()
            .flatten()
            .map(|e| format!("{} {} {}\n", e.container_id(), e.host_id(), e.size()))
            .collect::<String>()
    };
    let uid_maps = linux.and_then(|l| l.uid_mappings().as_ref());
    let gid_maps = linux.and_then(|l| l.gid_mappings().as_ref());
    if plan.new_user() {
        plan.uid_map = map(uid_maps);
        plan.gid_map = map(gid_maps);
        if plan.uid_map.is_empty() || plan.gid_map.is_empty() {
            return Err(invalid(
                "linux.uidMappings",
                "a new user namespace needs uid and gid mappings",
            ));
        }
    } else if uid_maps.is_some_and(|m| !m.is_empty()) || gid_maps.is_some_and(|m| !m.is_empty()) {
        return Err(invalid(
            "linux.uidMappings",
            "mappings without a new user namespace",
        ));
    }
    Ok(plan)
}

fn propagation_flag(name: &str) -> Option<libc::c_ulong> {
    Some(match name {
        "private" => libc::MS_PRIVATE,
        "rprivate" => libc::MS_PRIVATE | libc::MS_REC,
        "shared" => libc::MS_SHARED,
        "rshared" => libc::MS_SHARED | libc::MS_REC,
        "slave" => libc::MS_SLAVE,
        "rslave" => libc::MS_SLAVE | libc::MS_REC,
        "unbindable" => libc::MS_UNBINDABLE,
        "runbindable" => libc::MS_UNBINDABLE | libc::MS_REC,
        _ => return None,
    })
}

/// Parsed mount options: (set flags, cleared flags, propagation, bind, recursive, data).
struct MountOptions {
    flags: libc::c_ulong,
    propagation: libc::c_ulong,
    bind: bool,
    recursive: bool,
    data: Vec<String>,
}

fn parse_mount_options(dest: &str, options: &[String]) -> Result<MountOptions, SpecError> {
    let mut o = MountOptions {
        flags: 0,
        propagation: 0,
        bind: false,
        recursive: false,
        data: Vec::new(),
    };
    for opt in options {
        let (set, clear): (libc::c_ulong, libc::c_ulong) = match opt.as_str() {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "mand" => (libc::MS_MANDLOCK, 0),
            "nomand" => (0, libc::MS_MANDLOCK),
            "noatime" => (libc::MS_NOATIME, 0),
            "atime" => (0, libc::MS_NOATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "nostrictatime" => (0, libc::MS_STRICTATIME),
            "lazytime" => (libc::MS_LAZYTIME, 0),
            "nolazytime" => (0, libc::MS_LAZYTIME),
            "silent" => (libc::MS_SILENT, 0),
            "loud" => (0, libc::MS_SILENT),
            "defaults" => (0, 0),
            "bind" => {
                o.bind = true;
                (0, 0)
            }
            "rbind" => {
                o.bind = true;
                o.recursive = true;
                (0, 0)
            }
            other => {
                if let Some(p) = propagation_flag(other) {
                    o.propagation = p;
                    (0, 0)
                } else if matches!(
                    other,
                    "idmap" | "ridmap" | "tmpcopyup" | "copy-symlink" | "remount"
                ) || other.starts_with("r") && other.len() > 1 && is_recursive_attr(other)
                {
                    return Err(unsupported(format!("mount option {other} ({dest})")));
                } else if other.is_empty() || other.contains(',') {
                    return Err(SpecError::MountOption {
                        dest: dest.to_string(),
                        option: other.to_string(),
                    });
                } else {
                    // Filesystem-specific (mode=755, size=64k, newinstance,
                    // gid=5): passed to the filesystem as data, which
                    // rejects what it does not know.
                    o.data.push(other.to_string());
                    (0, 0)
                }
            }
        };
        o.flags = (o.flags | set) & !clear;
    }
    Ok(o)
}

/// The recursive mount attributes of mount_setattr (`rro`, `rnosuid`, …).
fn is_recursive_attr(opt: &str) -> bool {
    matches!(
        opt,
        "rro"
            | "rrw"
            | "rnosuid"
            | "rsuid"
            | "rnodev"
            | "rdev"
            | "rnoexec"
            | "rexec"
            | "rnodiratime"
            | "rdiratime"
            | "rrelatime"
            | "rnorelatime"
            | "rnoatime"
            | "ratime"
            | "rstrictatime"
            | "rnostrictatime"
            | "rnosymfollow"
            | "rsymfollow"
    )
}

fn is_on_proc(dest: &InRootPath) -> bool {
    dest.names.first().is_some_and(|n| n.as_bytes() == b"proc")
}

/// The files of /proc that a bind mount of a file may cover, as runc
/// allows: what LXCFS serves per container (its own view of memory, CPUs,
/// disks, load and uptime). Each is a file at the top of procfs, not a
/// symlink and not under /proc/self, so the name is the file covered.
/// (runc also lists /proc/net/dev, a symlink into /proc/self, and
/// /proc/sys/kernel/ns_last_pid, which CRIU writes: berth refuses both.)
pub const PROC_BIND_FILES: [&str; 8] = [
    "/proc/cpuinfo",
    "/proc/diskstats",
    "/proc/loadavg",
    "/proc/meminfo",
    "/proc/slabinfo",
    "/proc/stat",
    "/proc/swaps",
    "/proc/uptime",
];

/// Plans one `mounts` entry. `source_is_dir` tells whether a bind source
/// is a directory (the caller stats it; a unit test passes a closure).
pub fn plan_mount(
    m: &Mount,
    bundle: &Path,
    source_is_dir: &dyn Fn(&Path) -> bool,
) -> Result<MountPlan, SpecError> {
    let dest_raw = m.destination();
    let dest = InRootPath::new("mounts.destination", dest_raw)?;
    let dest_s = dest.as_str().to_string();
    if dest.is_root() {
        return Err(invalid(
            "mounts.destination",
            "a mount over / is not allowed (use root.path)",
        ));
    }
    let typ = m.typ().as_deref().unwrap_or("");
    let opts = parse_mount_options(&dest_s, m.options().as_deref().unwrap_or(&[]))?;
    let bind = opts.bind || typ == "bind";
    let over_proc_file = bind && PROC_BIND_FILES.contains(&dest_s.as_str());
    if is_on_proc(&dest) && (bind || typ != "proc") && !over_proc_file {
        return Err(SpecError::MountOverProc { dest: dest_s });
    }
    let source = m.source().clone().unwrap_or_default();
    let kind = if bind {
        if source.as_os_str().is_empty() {
            return Err(invalid(
                format!("mounts[{dest_s}].source"),
                "a bind mount needs a source",
            ));
        }
        let source = if source.is_absolute() {
            source
        } else {
            bundle.join(source)
        };
        MountKind::Bind {
            source: cstring("mounts.source", source.as_os_str().as_bytes())?,
            recursive: opts.recursive,
        }
    } else {
        let fstype = match typ {
            "" => {
                return Err(invalid(
                    format!("mounts[{dest_s}].type"),
                    "missing (and not a bind mount)",
                ));
            }
            // berth targets cgroup v2 only: a `cgroup` mount (as `runc spec`
            // writes it) gets the unified hierarchy, as runc does on v2 hosts.
            "cgroup" => "cgroup2",
            "proc" | "sysfs" | "tmpfs" | "devpts" | "mqueue" | "cgroup2" | "ramfs" | "overlay"
            | "bpf" | "securityfs" | "debugfs" | "tracefs" | "hugetlbfs" | "fusectl"
            | "configfs" => typ,
            other => return Err(unsupported(format!("mount type {other} ({dest_s})"))),
        };
        let src = if source.as_os_str().is_empty() {
            fstype.as_bytes().to_vec()
        } else {
            source.as_os_str().as_bytes().to_vec()
        };
        let data = if opts.data.is_empty() {
            None
        } else {
            Some(cstring("mounts.options", opts.data.join(","))?)
        };
        MountKind::Fs {
            fstype: cstring("mounts.type", fstype)?,
            source: cstring("mounts.source", src)?,
            data,
        }
    };
    if bind && !opts.data.is_empty() {
        return Err(SpecError::MountOption {
            dest: dest_s,
            option: opts.data.join(","),
        });
    }
    let file = match &kind {
        MountKind::Bind { source, .. } => {
            !source_is_dir(Path::new(OsStr::from_bytes(source.as_bytes())))
        }
        MountKind::Fs { .. } => false,
    };
    if over_proc_file && !file {
        // A directory over a procfs file: the mount would fail anyway.
        return Err(SpecError::MountOverProc { dest: dest_s });
    }
    Ok(MountPlan {
        dest,
        kind,
        flags: opts.flags,
        propagation: opts.propagation,
        file,
        over_proc_file,
    })
}

pub(crate) fn rlimit_resource(t: PosixRlimitType) -> libc::c_int {
    (match t {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    }) as libc::c_int
}

/// Which namespace a sysctl belongs to; `None` when it is not namespaced
/// (then writing it would change the host).
fn sysctl_namespace(key: &str) -> Option<u64> {
    let ipc = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if ipc.contains(&key) || key.starts_with("fs.mqueue.") {
        Some(libc::CLONE_NEWIPC as u64)
    } else if key.starts_with("net.") {
        Some(libc::CLONE_NEWNET as u64)
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        Some(libc::CLONE_NEWUTS as u64)
    } else {
        None
    }
}

fn plan_sysctls(
    map: &HashMap<String, String>,
    own_ns: u64,
) -> Result<Vec<(CString, Vec<u8>)>, SpecError> {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    let mut out = Vec::new();
    for key in keys {
        let field = format!("linux.sysctl[{key}]");
        if key.is_empty() || key.contains('/') || key.split('.').any(|p| p.is_empty() || p == "..")
        {
            return Err(invalid(field, "not a sysctl name"));
        }
        match sysctl_namespace(key) {
            Some(ns) if own_ns & ns != 0 => {}
            Some(_) => {
                return Err(invalid(
                    field,
                    "the container does not have its own namespace for it",
                ));
            }
            None => return Err(invalid(field, "not namespaced: it would change the host")),
        }
        out.push((
            cstring(&field, key.replace('.', "/"))?,
            map[key].as_bytes().to_vec(),
        ));
    }
    Ok(out)
}

/// The default device nodes every container gets (runtime-spec "Default Devices").
fn default_devices() -> Vec<(&'static str, u64, u64)> {
    vec![
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
}

/// Builds the plan of a validated spec. `rootfs` is absolute.
/// The home directory of `uid` in `rootfs/etc/passwd`, the file resolved
/// inside the root (`RESOLVE_IN_ROOT`: a symlink there cannot send the
/// read outside it) and read only if it is a regular file (a FIFO would
/// block, a device reach a driver); at most 1 MiB.
fn passwd_home(rootfs: &Path, uid: u32) -> Option<String> {
    use std::io::Read;
    use std::os::fd::{AsFd, AsRawFd};
    let root = std::fs::File::open(rootfs).ok()?;
    // O_PATH first: looking opens nothing (no FIFO wait, no driver).
    let path = crate::rootfs::open_in_root(root.as_fd(), c"etc/passwd").ok()?;
    if crate::sys::fstat(path.as_fd()).ok()?.st_mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    let file = std::fs::File::open(format!("/proc/self/fd/{}", path.as_raw_fd())).ok()?;
    let mut text = String::new();
    file.take(1 << 20).read_to_string(&mut text).ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 7 && f[2].parse::<u32>().ok()? == uid && !f[5].is_empty())
            .then(|| f[5].to_owned())
    })
}

pub fn plan(
    spec: &Spec,
    rootfs: &Path,
    bundle: &Path,
    source_is_dir: &dyn Fn(&Path) -> bool,
) -> Result<Plan, SpecError> {
    check_supported(spec)?;
    let process = spec
        .process()
        .as_ref()
        .ok_or(SpecError::Missing("process"))?;
    let namespaces = plan_namespaces(spec)?;
    let own_ns = namespaces.clone_flags;
    let linux = spec.linux().clone().unwrap_or_default();

    let root_propagation;
    let mut rootfs_propagation_after = 0;
    match linux.rootfs_propagation().as_deref() {
        None | Some("") => root_propagation = libc::MS_SLAVE | libc::MS_REC,
        Some(p) => {
            let flag = propagation_flag(p)
                .ok_or_else(|| invalid("linux.rootfsPropagation", format!("unknown {p:?}")))?;
            if flag & (libc::MS_PRIVATE | libc::MS_SLAVE) != 0 {
                root_propagation = flag | libc::MS_REC;
            } else {
                // shared / unbindable: start from rslave so the host sees
                // nothing of the setup, then set the new root to it.
                root_propagation = libc::MS_SLAVE | libc::MS_REC;
                rootfs_propagation_after = flag;
            }
        }
    }

    let mut mounts = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let planned = plan_mount(m, bundle, source_is_dir)?;
        // The kernel refuses cgroup2 in a user namespace that has no
        // cgroup namespace of its own (EPERM at mount; runc binds the
        // host's tree instead, berth says what to add).
        if let MountKind::Fs { fstype, .. } = &planned.kind
            && fstype.as_bytes() == b"cgroup2"
            && namespaces.new_user()
            && namespaces.clone_flags & libc::CLONE_NEWCGROUP as u64 == 0
        {
            return Err(invalid(
                format!("mounts[{}]", planned.dest.as_str()),
                "a cgroup mount in a user namespace needs a cgroup namespace: add {\"type\": \"cgroup\"} to linux.namespaces",
            ));
        }
        mounts.push(planned);
    }
    let dev_is_bind = mounts
        .iter()
        .any(|m| m.dest.as_str() == "/dev" && matches!(m.kind, MountKind::Bind { .. }));

    let mut devices = Vec::new();
    let mk = |path: &str,
              mode: libc::mode_t,
              major: u64,
              minor: u64,
              uid: u32,
              gid: u32|
     -> Result<DevicePlan, SpecError> {
        let p = InRootPath::new("linux.devices.path", Path::new(path))?;
        Ok(DevicePlan {
            host_path: cstring("linux.devices.path", p.full.as_bytes())?,
            path: p,
            mode,
            major,
            minor,
            uid,
            gid,
        })
    };
    let spec_devices = linux.devices().clone().unwrap_or_default();
    if !dev_is_bind {
        for (path, major, minor) in default_devices() {
            if !spec_devices
                .iter()
                .any(|d| InRootPath::new("", d.path()).is_ok_and(|p| p.as_str() == path))
            {
                devices.push(mk(path, libc::S_IFCHR | 0o666, major, minor, 0, 0)?);
            }
        }
    }
    for d in &spec_devices {
        let field = format!("linux.devices[{}]", d.path().display());
        let dest = InRootPath::new(&field, d.path())?;
        if dest.names.first().is_none_or(|n| n.as_bytes() != b"dev") {
            return Err(invalid(field, "a device must be under /dev"));
        }
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
            LinuxDeviceType::B => libc::S_IFBLK,
            LinuxDeviceType::P => libc::S_IFIFO,
            LinuxDeviceType::A => return Err(invalid(field, "type a is for cgroup rules only")),
        };
        if d.major() < 0 || d.minor() < 0 {
            return Err(invalid(field, "negative major or minor"));
        }
        // mknod(2) passes a 32-bit dev_t to the kernel (12 bits of major,
        // 20 of minor): anything larger would be truncated into another
        // device number.
        if d.major() > 0xfff || d.minor() > 0xf_ffff {
            return Err(invalid(
                field,
                format!(
                    "device number {}:{} out of range (major at most 4095, minor at most 1048575)",
                    d.major(),
                    d.minor()
                ),
            ));
        }
        let perm = d.file_mode().unwrap_or(0o666) & 0o7777;
        devices.push(mk(
            dest.as_str(),
            kind | perm,
            d.major() as u64,
            d.minor() as u64,
            d.uid().unwrap_or(0),
            d.gid().unwrap_or(0),
        )?);
    }

    let masked = linux
        .masked_paths()
        .iter()
        .flatten()
        .map(|p| InRootPath::new("linux.maskedPaths", Path::new(p)))
        .collect::<Result<Vec<_>, _>>()?;
    let readonly = linux
        .readonly_paths()
        .iter()
        .flatten()
        .map(|p| InRootPath::new("linux.readonlyPaths", Path::new(p)))
        .collect::<Result<Vec<_>, _>>()?;
    for p in masked.iter().chain(readonly.iter()) {
        if p.is_root() {
            return Err(invalid(
                "linux.maskedPaths/readonlyPaths",
                "/ cannot be masked (use root.readonly)",
            ));
        }
    }

    let uts = own_ns & libc::CLONE_NEWUTS as u64 != 0;
    let hostname = spec
        .hostname()
        .as_ref()
        .filter(|h| !h.is_empty())
        .map(|h| h.as_bytes().to_vec());
    let domainname = spec
        .domainname()
        .as_ref()
        .filter(|h| !h.is_empty())
        .map(|h| h.as_bytes().to_vec());
    if (hostname.is_some() || domainname.is_some()) && !uts {
        let field = if hostname.is_some() {
            "hostname"
        } else {
            "domainname"
        };
        return Err(invalid(field, "setting it needs a new uts namespace"));
    }

    let sysctls = plan_sysctls(&linux.sysctl().clone().unwrap_or_default(), own_ns)?;

    let mut rlimits = Vec::new();
    for r in process.rlimits().iter().flatten() {
        if r.soft() > r.hard() {
            return Err(invalid(
                format!("process.rlimits[{:?}]", r.typ()),
                "soft limit above hard limit",
            ));
        }
        rlimits.push((rlimit_resource(r.typ()), r.soft(), r.hard()));
    }

    // No `capabilities` object is no capability at all, as in runc and
    // crun: never the caller's (root's full) sets.
    let caps = match process.capabilities() {
        None => Some(CapSets::default()),
        Some(c) => Some(CapSets::from_spec(c).map_err(SpecError::Caps)?),
    };

    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() || args[0].is_empty() {
        return Err(SpecError::Missing("process.args"));
    }
    let args = args
        .iter()
        .map(|a| cstring("process.args", a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut env_list = process.env().clone().unwrap_or_default();
    if !env_list.iter().any(|e| e.starts_with("HOME=")) {
        // As runc and crun: HOME from the root's /etc/passwd for the
        // user, else `/`.
        let home = passwd_home(rootfs, process.user().uid()).unwrap_or_else(|| "/".into());
        env_list.push(format!("HOME={home}"));
    }
    let env = env_list
        .iter()
        .map(|e| {
            // As runc: an entry is NAME=VALUE (execve would pass anything).
            if !e.contains('=') || e.starts_with('=') {
                return Err(invalid("process.env", format!("{e:?} is not NAME=VALUE")));
            }
            cstring("process.env", e.as_bytes())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cwd_path = process.cwd();
    if !cwd_path.is_absolute() {
        return Err(invalid(
            "process.cwd",
            format!("{} is not absolute", cwd_path.display()),
        ));
    }
    let cwd = cstring("process.cwd", cwd_path.as_os_str().as_bytes())?;
    let cwd_dest = InRootPath::new("process.cwd", cwd_path)?;
    let arg0 = args[0].to_bytes();
    let exec_candidates = if arg0.contains(&b'/') {
        vec![args[0].clone()]
    } else {
        let path = env_list
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        path.split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| {
                let mut v = d.trim_end_matches('/').as_bytes().to_vec();
                v.push(b'/');
                v.extend_from_slice(arg0);
                cstring("process.env PATH", v)
            })
            .collect::<Result<Vec<_>, _>>()?
    };

    let user = process.user();
    Ok(Plan {
        rootfs: rootfs.to_path_buf(),
        readonly_root: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        namespaces,
        root_propagation,
        rootfs_propagation_after,
        mounts,
        default_dev: !dev_is_bind,
        dev_dir: InRootPath::new("/dev", Path::new("/dev"))?,
        devices,
        masked,
        readonly,
        hostname,
        domainname,
        sysctls,
        rlimits,
        uid: user.uid(),
        gid: user.gid(),
        additional_gids: user.additional_gids().clone().unwrap_or_default(),
        umask: user.umask().unwrap_or(0o022),
        caps,
        no_new_privs: process.no_new_privileges().unwrap_or(false),
        oom_score_adj: process.oom_score_adj(),
        args,
        env,
        cwd,
        cwd_dest,
        exec_candidates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_from(json: &str) -> Spec {
        serde_json::from_str(json).expect("test spec parses")
    }

    const BASE: &str = r#"{
        "ociVersion": "1.0.2-dev",
        "root": {"path": "rootfs"},
        "process": {"cwd": "/", "args": ["sh"], "env": ["PATH=/bin:/usr/bin"], "user": {"uid": 0, "gid": 0}},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "ro", "rprivate"]}
        ],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}]}
    }"#;

    fn plan_of(json: &str) -> Result<Plan, SpecError> {
        plan(
            &spec_from(json),
            Path::new("/b/rootfs"),
            Path::new("/b"),
            &|_| true,
        )
    }

    fn config_error(bytes: &[u8]) -> String {
        parse_config(bytes).unwrap_err().to_string()
    }

    #[test]
    fn a_config_that_is_not_a_spec_says_why_in_one_line() {
        assert!(parse_config(BASE.as_bytes()).is_ok());
        for not_object in [&b"[]"[..], b" \n\"x\"", b"1", b"null", b"\t[{}]"] {
            assert_eq!(
                config_error(not_object),
                "not a JSON object (a runtime spec is one)",
                "{}",
                String::from_utf8_lossy(not_object)
            );
        }
        assert_eq!(config_error(b"{}"), "missing ociVersion");
        assert_eq!(config_error(br#"{"ociVersion": ""}"#), "missing ociVersion");
        assert_eq!(
            config_error(b"\xff\xfe{}"),
            "not UTF-8 (invalid byte at offset 0)"
        );
        // serde_json alone does not look at the bytes of an ignored field.
        assert_eq!(
            config_error(b"{\"ociVersion\": \"1.0.2\", \"x-note\": \"\xc3\"}"),
            "not UTF-8 (invalid byte at offset 35)"
        );
        assert_eq!(
            config_error(br#"{"ociVersion": "1.0.2""#),
            "EOF while parsing an object at line 1 column 22"
        );
        assert_eq!(
            config_error(br#"{"ociVersion": "1.0.2", "process": {"args": [1]}}"#),
            "invalid type: integer `1`, expected a string at line 1 column 46"
        );
    }

    #[test]
    fn an_unknown_capability_is_named_with_its_set() {
        let with_caps = |caps: &str| {
            BASE.replace(
                r#""user": {"uid": 0, "gid": 0}}"#,
                &format!(r#""user": {{"uid": 0, "gid": 0}}, "capabilities": {caps}}}"#),
            )
        };
        let ok = with_caps(r#"{"bounding": ["CAP_KILL", "chown"], "ambient": []}"#);
        let caps = parse_config(ok.as_bytes()).unwrap();
        let caps = caps.process().as_ref().unwrap().capabilities().as_ref();
        assert_eq!(caps.unwrap().bounding().as_ref().unwrap().len(), 2);
        for (set, name) in [
            ("bounding", "CAP_BOGUS"),
            ("effective", "BOGUS"),
            ("inheritable", "CAP_"),
            ("permitted", "CAP_KILL\\u001b[2J"),
            ("ambient", ""),
        ] {
            let json = with_caps(&format!(r#"{{"{set}": ["CAP_KILL", "{name}"]}}"#));
            let shown = format!("{:?}", name.replace("\\u001b", "\u{1b}"));
            assert_eq!(
                config_error(json.as_bytes()),
                format!("unknown capability {shown} in process.capabilities.{set}")
            );
        }
        // Not a string: serde's own words, with the place.
        let json = with_caps(r#"{"bounding": [5]}"#);
        assert!(
            config_error(json.as_bytes()).starts_with("invalid type: integer `5`"),
            "{}",
            config_error(json.as_bytes())
        );
    }

    #[test]
    fn a_cgroup_mount_in_a_user_namespace_needs_a_cgroup_namespace() {
        let with = |ns: &str| {
            BASE.replace(
                r#"{"type": "uts"}]"#,
                &format!(r#"{{"type": "uts"}}, {{"type": "user"}}{ns}], "uidMappings": [{{"containerID": 0, "hostID": 100000, "size": 65536}}], "gidMappings": [{{"containerID": 0, "hostID": 100000, "size": 65536}}]"#),
            )
            .replace(
                r#"{"destination": "/proc", "type": "proc", "source": "proc"},"#,
                r#"{"destination": "/proc", "type": "proc", "source": "proc"}, {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"},"#,
            )
        };
        let e = plan_of(&with("")).unwrap_err().to_string();
        assert!(e.contains("needs a cgroup namespace"), "{e}");
        plan_of(&with(r#", {"type": "cgroup"}"#)).unwrap();
    }

    #[test]
    fn env_entries_are_name_value_and_uts_fields_name_themselves() {
        for bad in ["NOEQUALS", "=x"] {
            let json = BASE.replace(r#""PATH=/bin:/usr/bin""#, &format!("{bad:?}"));
            let e = plan_of(&json).unwrap_err().to_string();
            assert!(
                e.contains("process.env") && e.contains("is not NAME=VALUE"),
                "{e}"
            );
        }
        let no_uts = BASE.replace(r#", {"type": "uts"}"#, "");
        let json = no_uts.replacen('{', r#"{"domainname": "example.org","#, 1);
        let e = plan_of(&json).unwrap_err().to_string();
        assert!(e.contains("domainname"), "{e}");
        let json = no_uts.replacen('{', r#"{"hostname": "h","#, 1);
        let e = plan_of(&json).unwrap_err().to_string();
        assert!(e.contains("hostname"), "{e}");
    }

    #[test]
    fn in_root_path_is_cleaned_lexically_and_never_above_root() {
        let p = InRootPath::new("t", Path::new("/../a/./b/../c")).unwrap();
        assert_eq!(p.full.as_bytes(), b"/a/c");
        assert_eq!(p.prefixes, vec![c"/a".to_owned(), c"/a/c".to_owned()]);
        assert_eq!(p.names, vec![c"a".to_owned(), c"c".to_owned()]);
        let rel = InRootPath::new("t", Path::new("x/y")).unwrap();
        assert_eq!(rel.full.as_bytes(), b"/x/y");
        assert!(InRootPath::new("t", Path::new("/..")).unwrap().is_root());
    }

    #[test]
    fn mounts_are_planned_in_order_with_flags_data_and_propagation() {
        let p = plan_of(BASE).unwrap();
        assert_eq!(p.mounts.len(), 3);
        assert_eq!(p.mounts[0].dest.as_str(), "/proc");
        assert!(
            matches!(&p.mounts[0].kind, MountKind::Fs { fstype, .. } if fstype.as_bytes() == b"proc")
        );
        let dev = &p.mounts[1];
        assert_eq!(dev.flags, libc::MS_NOSUID | libc::MS_STRICTATIME);
        assert!(
            matches!(&dev.kind, MountKind::Fs { data: Some(d), .. } if d.as_bytes() == b"mode=755,size=65536k")
        );
        let data = &p.mounts[2];
        assert_eq!(
            data.kind,
            MountKind::Bind {
                source: c"/srv/data".to_owned(),
                recursive: true
            }
        );
        assert_eq!(data.flags, libc::MS_RDONLY);
        assert_eq!(data.propagation, libc::MS_PRIVATE | libc::MS_REC);
    }

    #[test]
    fn relative_bind_sources_are_relative_to_the_bundle() {
        let m: Mount =
            serde_json::from_str(r#"{"destination": "/x", "source": "data", "options": ["bind"]}"#)
                .unwrap();
        let p = plan_mount(&m, Path::new("/bundle"), &|_| false).unwrap();
        assert_eq!(
            p.kind,
            MountKind::Bind {
                source: c"/bundle/data".to_owned(),
                recursive: false
            }
        );
        assert!(p.file, "a non-directory source makes a file mountpoint");
    }

    #[test]
    fn rw_after_ro_clears_the_flag() {
        let m: Mount = serde_json::from_str(
            r#"{"destination": "/t", "type": "tmpfs", "options": ["ro", "noexec", "rw"]}"#,
        )
        .unwrap();
        let p = plan_mount(&m, Path::new("/b"), &|_| true).unwrap();
        assert_eq!(p.flags, libc::MS_NOEXEC);
        assert!(
            matches!(&p.kind, MountKind::Fs { source, data: None, .. } if source.as_bytes() == b"tmpfs")
        );
    }

    #[test]
    fn mounts_over_proc_other_than_proc_are_refused() {
        for dest in ["/proc", "/proc/sys", "/x/../proc/self"] {
            let m: Mount =
                serde_json::from_str(&format!(r#"{{"destination": "{dest}", "type": "tmpfs"}}"#))
                    .unwrap();
            let err = plan_mount(&m, Path::new("/b"), &|_| true).unwrap_err();
            assert!(
                matches!(err, SpecError::MountOverProc { .. }),
                "{dest}: {err}"
            );
        }
        let m: Mount = serde_json::from_str(
            r#"{"destination": "/proc", "source": "/proc", "options": ["rbind"]}"#,
        )
        .unwrap();
        assert!(matches!(
            plan_mount(&m, Path::new("/b"), &|_| true),
            Err(SpecError::MountOverProc { .. })
        ));
        // LXCFS's files: a file bound over one of them is allowed (as in
        // runc), nothing else is.
        let bind = |dest: &str, typ: &str| -> Mount {
            serde_json::from_str(&format!(
                r#"{{"destination": "{dest}", "type": "{typ}", "source": "/var/lib/lxcfs/proc/meminfo", "options": ["bind"]}}"#
            ))
            .unwrap()
        };
        for dest in PROC_BIND_FILES {
            let p = plan_mount(&bind(dest, "bind"), Path::new("/b"), &|_| false).unwrap();
            assert!(p.over_proc_file && p.file, "{dest}");
            // A directory over it is refused.
            let err = plan_mount(&bind(dest, "bind"), Path::new("/b"), &|_| true).unwrap_err();
            assert!(matches!(err, SpecError::MountOverProc { .. }), "{dest}");
        }
        let p = plan_mount(&bind("/proc/./meminfo", "none"), Path::new("/b"), &|_| {
            false
        });
        assert!(p.unwrap().over_proc_file);
        for dest in [
            "/proc/kcore",
            "/proc/self/meminfo",
            "/proc/net/dev",
            "/proc/meminfo/x",
        ] {
            let err = plan_mount(&bind(dest, "bind"), Path::new("/b"), &|_| false).unwrap_err();
            assert!(matches!(err, SpecError::MountOverProc { .. }), "{dest}");
        }
        let m: Mount =
            serde_json::from_str(r#"{"destination": "/proc/meminfo", "type": "tmpfs"}"#).unwrap();
        assert!(matches!(
            plan_mount(&m, Path::new("/b"), &|_| false),
            Err(SpecError::MountOverProc { .. })
        ));
    }

    #[test]
    fn mount_over_root_and_unknown_types_are_refused() {
        let m: Mount =
            serde_json::from_str(r#"{"destination": "/a/..", "type": "tmpfs"}"#).unwrap();
        assert!(matches!(
            plan_mount(&m, Path::new("/b"), &|_| true),
            Err(SpecError::Invalid { .. })
        ));
        let m: Mount = serde_json::from_str(r#"{"destination": "/a", "type": "nfs"}"#).unwrap();
        assert_eq!(
            plan_mount(&m, Path::new("/b"), &|_| true)
                .unwrap_err()
                .to_string(),
            "unsupported: mount type nfs (/a)"
        );
        let m: Mount = serde_json::from_str(
            r#"{"destination": "/a", "type": "bind", "source": "/x", "options": ["idmap"]}"#,
        )
        .unwrap();
        assert_eq!(
            plan_mount(&m, Path::new("/b"), &|_| true)
                .unwrap_err()
                .to_string(),
            "unsupported: mount option idmap (/a)"
        );
    }

    #[test]
    fn cgroup_v1_mount_type_becomes_cgroup2() {
        let m: Mount = serde_json::from_str(r#"{"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro"]}"#).unwrap();
        let p = plan_mount(&m, Path::new("/b"), &|_| true).unwrap();
        assert!(matches!(&p.kind, MountKind::Fs { fstype, .. } if fstype.as_bytes() == b"cgroup2"));
    }

    #[test]
    fn versions_1_0_to_1_2_are_accepted() {
        for v in ["1.0.0", "1.0.2-dev", "1.1.0", "1.2.1"] {
            check_version(v).unwrap();
        }
        for v in ["0.9.0", "1.3.0", "2.0.0", "", "one"] {
            assert!(check_version(v).is_err(), "{v}");
        }
    }

    #[test]
    fn unsupported_fields_are_named() {
        let cases = [
            (r#""terminal": true"#, "process.terminal"),
            (r#""apparmorProfile": "p""#, "process.apparmorProfile"),
        ];
        for (field, name) in cases {
            let json = BASE.replace(r#""cwd": "/","#, &format!(r#""cwd": "/", {field},"#));
            assert_eq!(
                plan_of(&json).unwrap_err().to_string(),
                format!("unsupported: {name}")
            );
        }
        let json = BASE.replace(r#"{"type": "uts"}"#, r#"{"type": "uts"}, {"type": "time"}"#);
        assert_eq!(
            plan_of(&json).unwrap_err().to_string(),
            "unsupported: linux.namespaces type time"
        );
        let json = BASE.replace(
            r#""linux": {"#,
            r#""linux": {"personality": {"domain": "LINUX"}, "#,
        );
        assert_eq!(
            plan_of(&json).unwrap_err().to_string(),
            "unsupported: linux.personality"
        );
    }

    #[test]
    fn a_mount_namespace_is_required() {
        let json = BASE.replace(r#"{"type": "mount"}, "#, "");
        assert!(matches!(plan_of(&json), Err(SpecError::Unsupported(_))));
    }

    #[test]
    fn namespaces_split_into_new_joined_and_pid_join() {
        let json = BASE.replace(
            r#"[{"type": "pid"}, {"type": "mount"}, {"type": "uts"}]"#,
            r#"[{"type": "pid", "path": "/proc/1/ns/pid"}, {"type": "mount"}, {"type": "network", "path": "/run/netns/x"}, {"type": "ipc"}]"#,
        );
        let p = plan_of(&json).unwrap();
        assert_eq!(
            p.namespaces.clone_flags,
            (libc::CLONE_NEWNS | libc::CLONE_NEWIPC) as u64
        );
        assert_eq!(p.namespaces.join_pid, Some(PathBuf::from("/proc/1/ns/pid")));
        assert_eq!(
            p.namespaces.join,
            vec![JoinNamespace {
                kind: LinuxNamespaceType::Network,
                path: "/run/netns/x".into()
            }]
        );
    }

    #[test]
    fn joining_a_user_namespace_is_refused() {
        let json = BASE.replace(
            r#"{"type": "uts"}]"#,
            r#"{"type": "uts"}, {"type": "user", "path": "/proc/1/ns/user"}]"#,
        );
        assert_eq!(
            plan_of(&json).unwrap_err().to_string(),
            "unsupported: linux.namespaces user path (joining a user namespace)"
        );
    }

    #[test]
    fn user_namespace_needs_maps_and_writes_them_as_lines() {
        let json = BASE.replace(
            r#"{"type": "uts"}]"#,
            r#"{"type": "uts"}, {"type": "user"}]"#,
        );
        assert!(matches!(plan_of(&json), Err(SpecError::Invalid { .. })));
        let json = json.replace(
            r#""linux": {"#,
            r#""linux": {"uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}], "gidMappings": [{"containerID": 0, "hostID": 200000, "size": 10}, {"containerID": 10, "hostID": 5, "size": 1}], "#,
        );
        let p = plan_of(&json).unwrap();
        assert!(p.namespaces.new_user());
        assert_eq!(p.namespaces.uid_map, "0 100000 65536\n");
        assert_eq!(p.namespaces.gid_map, "0 200000 10\n10 5 1\n");
    }

    #[test]
    fn default_devices_unless_dev_is_bound_and_spec_devices_override() {
        let p = plan_of(BASE).unwrap();
        let paths: Vec<&str> = p.devices.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/dev/null",
                "/dev/zero",
                "/dev/full",
                "/dev/random",
                "/dev/urandom",
                "/dev/tty"
            ]
        );
        assert!(p.default_dev);
        let json = BASE.replace(
            r#""linux": {"#,
            r#""linux": {"devices": [{"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 384, "uid": 5}, {"path": "/dev/net/tun", "type": "c", "major": 10, "minor": 200}], "#,
        );
        let p = plan_of(&json).unwrap();
        let null = p
            .devices
            .iter()
            .find(|d| d.path.as_str() == "/dev/null")
            .unwrap();
        assert_eq!((null.mode, null.uid), (libc::S_IFCHR | 0o600, 5));
        assert_eq!(
            p.devices
                .iter()
                .filter(|d| d.path.as_str() == "/dev/null")
                .count(),
            1
        );
        assert!(
            p.devices
                .iter()
                .any(|d| d.path.as_str() == "/dev/net/tun" && d.major == 10)
        );
        let json = BASE.replace(
            r#""destination": "/dev", "type": "tmpfs", "source": "tmpfs""#,
            r#""destination": "/dev", "type": "bind", "source": "/dev""#,
        );
        let json = json.replace(
            r#""nosuid", "strictatime", "mode=755", "size=65536k""#,
            r#""rbind""#,
        );
        let p = plan_of(&json).unwrap();
        assert!(p.devices.is_empty() && !p.default_dev);
    }

    #[test]
    fn device_numbers_the_kernel_cannot_encode_are_refused() {
        // mknod(2) takes a 32-bit dev: 12 bits of major, 20 of minor. A
        // larger number must not be truncated into another device.
        let dev = |major: i64, minor: i64| {
            BASE.replace(
                r#""linux": {"#,
                &format!(r#""linux": {{"devices": [{{"path": "/dev/x", "type": "c", "major": {major}, "minor": {minor}}}], "#),
            )
        };
        assert!(plan_of(&dev(4095, 1_048_575)).is_ok());
        for (major, minor) in [(4_294_967_297, 3), (4096, 0), (1, 1_048_576)] {
            match plan_of(&dev(major, minor)) {
                Err(SpecError::Invalid { field, reason }) => {
                    assert_eq!(field, "linux.devices[/dev/x]");
                    assert!(reason.contains("out of range"), "{reason}");
                }
                other => panic!("{major}:{minor} accepted: {other:?}"),
            }
        }
    }

    #[test]
    fn sysctls_must_be_namespaced_in_a_namespace_the_container_owns() {
        let with =
            |s: &str| BASE.replace(r#""linux": {"#, &format!(r#""linux": {{"sysctl": {s}, "#));
        let p = plan_of(&with(r#"{"kernel.hostname": "x"}"#)).unwrap();
        assert_eq!(
            p.sysctls,
            vec![(c"kernel/hostname".to_owned(), b"x".to_vec())]
        );
        assert!(matches!(
            plan_of(&with(r#"{"net.ipv4.ip_forward": "1"}"#)),
            Err(SpecError::Invalid { .. })
        ));
        assert!(matches!(
            plan_of(&with(r#"{"vm.swappiness": "1"}"#)),
            Err(SpecError::Invalid { .. })
        ));
        assert!(matches!(
            plan_of(&with(r#"{"kernel..hostname": "1"}"#)),
            Err(SpecError::Invalid { .. })
        ));
    }

    #[test]
    fn exec_candidates_follow_path_unless_arg0_has_a_slash() {
        let p = plan_of(BASE).unwrap();
        assert_eq!(
            p.exec_candidates,
            vec![c"/bin/sh".to_owned(), c"/usr/bin/sh".to_owned()]
        );
        let p = plan_of(&BASE.replace(r#"["sh"]"#, r#"["/bin/true", "x"]"#)).unwrap();
        assert_eq!(p.exec_candidates, vec![c"/bin/true".to_owned()]);
        assert!(matches!(
            plan_of(&BASE.replace(r#"["sh"]"#, "[]")),
            Err(SpecError::Missing("process.args"))
        ));
        assert!(matches!(
            plan_of(&BASE.replace(r#""cwd": "/""#, r#""cwd": "tmp""#)),
            Err(SpecError::Invalid { .. })
        ));
    }

    #[test]
    fn rootfs_propagation_shared_is_applied_after_pivot() {
        let json = BASE.replace(
            r#""linux": {"#,
            r#""linux": {"rootfsPropagation": "shared", "#,
        );
        let p = plan_of(&json).unwrap();
        assert_eq!(p.root_propagation, libc::MS_SLAVE | libc::MS_REC);
        assert_eq!(p.rootfs_propagation_after, libc::MS_SHARED);
        let json = BASE.replace(
            r#""linux": {"#,
            r#""linux": {"rootfsPropagation": "private", "#,
        );
        assert_eq!(
            plan_of(&json).unwrap().root_propagation,
            libc::MS_PRIVATE | libc::MS_REC
        );
    }

    #[test]
    fn rlimits_with_soft_above_hard_are_refused() {
        let json = BASE.replace(
            r#""cwd": "/","#,
            r#""cwd": "/", "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 5}],"#,
        );
        assert!(matches!(plan_of(&json), Err(SpecError::Invalid { .. })));
        let json = BASE.replace(
            r#""cwd": "/","#,
            r#""cwd": "/", "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 5, "hard": 10}],"#,
        );
        assert_eq!(
            plan_of(&json).unwrap().rlimits,
            vec![(libc::RLIMIT_NOFILE as i32, 5, 10)]
        );
    }
}
