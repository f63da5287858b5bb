//! Moving PID 1's root off the initramfs onto a tmpfs, switch_root style,
//! without copying it.
//!
//! The kernel unpacks the initramfs into `rootfs`, a mount that can never be
//! unmounted or moved, and pivot_root(2) refuses to work when the current
//! root is it (EINVAL; pivot_root(2) "new_root … must not be on the same
//! mount as the current root" and rootfs has no parent). Containers need
//! pivot_root (chroot is escapable), so PID 1 first:
//! 1. mounts a tmpfs on [`NEW_ROOT`],
//! 2. bind-mounts each top-level entry of the initramfs into it (the
//!    directories recursively; a symlink is recreated), except the
//!    directories the boot mounts cover (`/proc`, `/dev`, …: the
//!    initramfs's own `/dev/console` is only needed until devtmpfs is
//!    mounted over it),
//! 3. moves the tmpfs over `/` (MS_MOVE) and chroots into it.
//!
//! PID 1's root is then a mount with a parent, which is all pivot_root asks
//! of the caller's root. Binding instead of copying (what switch_root and
//! LinuxKit's init do, to free the initramfs) costs a few syscalls whatever
//! the size of the embedded images, where a copy costs a pass over every
//! byte at boot; the memory is the same, since the copy frees what it
//! copied. The initramfs's files stay reachable only through the binds.
//!
//! [`plan_switch`] decides what happens to each entry; a unit test checks
//! it. Steps 1 and 3 only make sense as the machine's PID 1 (the QEMU ring
//! boots it).

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// Where the new root is assembled before it moves over `/`.
pub const NEW_ROOT: &str = "/.berth-root";

/// Why the root could not be moved.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("create {path} in the new root")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{step} ({path})")]
    Switch {
        step: &'static str,
        path: PathBuf,
        source: nix::Error,
    },
}

/// True if `/proc/self/mountinfo` says `/` is the kernel's initramfs
/// (`rootfs`; fields after " - " are fstype and source).
pub fn root_is_initramfs(mountinfo: &str) -> bool {
    mountinfo.lines().any(|line| {
        let mut fields = line.split(' ');
        let mount_point = fields.nth(4);
        let fstype = line
            .split_once(" - ")
            .and_then(|(_, rest)| rest.split(' ').next());
        mount_point == Some("/") && fstype == Some("rootfs")
    })
}

/// A top-level entry of the initramfs, as [`plan_switch`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    Symlink,
    /// A regular file, device node, fifo or socket.
    Other,
}

/// What happens to one top-level entry of the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchStep {
    /// A directory in the new root with the entry bind-mounted (MS_REC) on it.
    BindDir(String),
    /// An empty file in the new root with the entry bind-mounted on it.
    BindFile(String),
    /// The same symlink, recreated (a bind would follow it).
    Symlink(String),
    /// Left out: the new root's directory `NEW_ROOT` itself, or a boot
    /// mount's target (created by the boot mounts).
    Skip(String),
}

/// What to do with each top-level entry `(name, kind)` of the initramfs;
/// `mount_targets` are the boot mounts' targets (`/proc`, `/dev/pts`, …),
/// whose first components are left for the boot mounts to create.
pub fn plan_switch(entries: &[(String, EntryKind)], mount_targets: &[&str]) -> Vec<SwitchStep> {
    let new_root = NEW_ROOT.trim_start_matches('/');
    let covered = |name: &str| {
        name == new_root
            || mount_targets
                .iter()
                .filter_map(|t| t.trim_start_matches('/').split('/').next())
                .any(|top| top == name)
    };
    let mut steps: Vec<SwitchStep> = entries
        .iter()
        .map(|(name, kind)| {
            let name = name.clone();
            match kind {
                _ if covered(&name) => SwitchStep::Skip(name),
                EntryKind::Dir => SwitchStep::BindDir(name),
                EntryKind::Symlink => SwitchStep::Symlink(name),
                EntryKind::Other => SwitchStep::BindFile(name),
            }
        })
        .collect();
    steps.sort_by(|a, b| step_name(a).cmp(step_name(b)));
    steps
}

fn step_name(step: &SwitchStep) -> &str {
    match step {
        SwitchStep::BindDir(n)
        | SwitchStep::BindFile(n)
        | SwitchStep::Symlink(n)
        | SwitchStep::Skip(n) => n,
    }
}

/// What the switch did, for the timeline.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SwitchStats {
    /// Entries bind-mounted or recreated in the new root.
    pub carried: usize,
}

/// Steps 1-3 of the module doc, as the machine's PID 1 only.
/// `mount_targets` as for [`plan_switch`].
pub fn move_root_to_tmpfs(mount_targets: &[&str]) -> Result<SwitchStats, RootfsError> {
    let new_root = Path::new(NEW_ROOT);
    let switch = |step, path: &Path, source| RootfsError::Switch {
        step,
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(new_root).map_err(|source| RootfsError::Create {
        path: new_root.to_owned(),
        source,
    })?;
    mount(
        Some("rootfs"),
        new_root,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(|e| switch("mount tmpfs", new_root, e))?;
    // /proc was mounted to detect the role; it is mounted again after the
    // switch. Detach it so the old root holds no mounts.
    let _ = umount2("/proc", MntFlags::MNT_DETACH);

    let read_err = |source| RootfsError::Read {
        path: PathBuf::from("/"),
        source,
    };
    let mut entries = Vec::new();
    for entry in std::fs::read_dir("/").map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let kind = entry.file_type().map_err(read_err)?;
        let kind = if kind.is_dir() {
            EntryKind::Dir
        } else if kind.is_symlink() {
            EntryKind::Symlink
        } else {
            EntryKind::Other
        };
        entries.push((entry.file_name().to_string_lossy().into_owned(), kind));
    }
    let mut stats = SwitchStats::default();
    for step in plan_switch(&entries, mount_targets) {
        let (from, to) = {
            let name = step_name(&step);
            (Path::new("/").join(name), new_root.join(name))
        };
        let create_err = |source| RootfsError::Create {
            path: to.clone(),
            source,
        };
        let bind = |flags: MsFlags| {
            mount(
                Some(&from),
                &to,
                None::<&str>,
                MsFlags::MS_BIND | flags,
                None::<&str>,
            )
            .map_err(|e| switch("bind initramfs entry", &from, e))
        };
        match step {
            SwitchStep::Skip(_) => continue,
            SwitchStep::BindDir(_) => {
                std::fs::create_dir(&to).map_err(create_err)?;
                bind(MsFlags::MS_REC)?;
            }
            SwitchStep::BindFile(_) => {
                std::fs::File::create(&to).map_err(create_err)?;
                bind(MsFlags::empty())?;
            }
            SwitchStep::Symlink(_) => {
                let target = std::fs::read_link(&from).map_err(|source| RootfsError::Read {
                    path: from.clone(),
                    source,
                })?;
                std::os::unix::fs::symlink(target, &to).map_err(create_err)?;
            }
        }
        stats.carried += 1;
    }
    nix::unistd::chdir(new_root).map_err(|e| switch("chdir", new_root, e))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| switch("move new root over /", new_root, e))?;
    nix::unistd::chroot(".").map_err(|e| switch("chroot", new_root, e))?;
    nix::unistd::chdir("/").map_err(|e| switch("chdir /", new_root, e))?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_initramfs_root() {
        let initramfs = "1 1 0:2 / / rw shared:1 - rootfs rootfs rw,size=1012344k,nr_inodes=253086\n\
                         22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:2 - proc proc rw\n";
        assert!(root_is_initramfs(initramfs));
        let disk = "25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n";
        assert!(!root_is_initramfs(disk));
        let moved = "30 29 0:30 / / rw shared:9 - tmpfs rootfs rw,mode=755\n";
        assert!(!root_is_initramfs(moved));
        assert!(!root_is_initramfs(""));
    }

    #[test]
    fn switch_binds_the_initramfs_and_leaves_boot_mount_targets() {
        let entries: Vec<(String, EntryKind)> = [
            ("init", EntryKind::Other),
            ("berth", EntryKind::Dir),
            ("dev", EntryKind::Dir),
            ("etc", EntryKind::Dir),
            ("lib", EntryKind::Dir),
            ("proc", EntryKind::Dir),
            ("sbin", EntryKind::Symlink),
            (".berth-root", EntryKind::Dir),
            ("sysroot", EntryKind::Dir),
        ]
        .iter()
        .map(|(n, k)| ((*n).to_owned(), *k))
        .collect();
        let targets: Vec<&str> = crate::bootplan::boot_mounts()
            .iter()
            .map(|m| m.target)
            .collect();
        let s = |n: &str| n.to_owned();
        assert_eq!(
            plan_switch(&entries, &targets),
            [
                SwitchStep::Skip(s(".berth-root")),
                SwitchStep::BindDir(s("berth")),
                SwitchStep::Skip(s("dev")),
                SwitchStep::BindDir(s("etc")),
                SwitchStep::BindFile(s("init")),
                SwitchStep::BindDir(s("lib")),
                SwitchStep::Skip(s("proc")),
                SwitchStep::Symlink(s("sbin")),
                // "sys" is a boot mount target, "sysroot" is not.
                SwitchStep::BindDir(s("sysroot")),
            ]
        );
    }
}
