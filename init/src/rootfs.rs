//! Moving PID 1's root off the initramfs onto a tmpfs, switch_root style.
//!
//! The kernel unpacks the initramfs into `rootfs`, a mount that can never be
//! unmounted or moved, and pivot_root(2) refuses to work when the current
//! root is it (EINVAL; pivot_root(2) "new_root … must not be on the same
//! mount as the current root" and rootfs has no parent). Containers need
//! pivot_root (chroot is escapable), so PID 1 first:
//! 1. mounts a tmpfs on [`NEW_ROOT`],
//! 2. copies everything on the rootfs into it, deleting each original once
//!    copied so memory use stays about the size of the initramfs (the
//!    embedded images dominate it),
//! 3. moves the tmpfs over `/` (MS_MOVE) and chroots into it.
//!
//! Only the copy is done here by plain file operations; what a root test can
//! check. Steps 1 and 3 only make sense as the machine's PID 1 (the QEMU ring).

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

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
    #[error("copy {from} to {to}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
    #[error("set owner, mode or times of {path}")]
    Attributes {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("remove copied {path}")]
    Remove {
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

/// What a copy did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyStats {
    pub entries: u64,
    pub bytes: u64,
    /// Mount points of other filesystems, recreated empty.
    pub mount_points: u64,
}

/// Copies the tree at `src` into the existing directory `dst`: regular
/// files, directories, symlinks, hardlinks, device nodes and fifos, with
/// owner, mode (setuid/setgid/sticky included) and mtime. It stays on
/// `src`'s filesystem: a directory of another filesystem (a mount point)
/// is recreated empty. `skip` names paths left out (the destination when it
/// is inside `src`). With `remove_source`, each entry is removed once copied.
pub fn copy_tree(
    src: &Path,
    dst: &Path,
    skip: &[&Path],
    remove_source: bool,
) -> Result<CopyStats, RootfsError> {
    let meta = std::fs::symlink_metadata(src).map_err(|source| RootfsError::Read {
        path: src.to_owned(),
        source,
    })?;
    let mut copier = Copier {
        dev: meta.dev(),
        skip,
        remove_source,
        links: HashMap::new(),
        stats: CopyStats::default(),
    };
    copier.copy_dir_contents(src, dst)?;
    set_attributes(dst, &meta)?;
    Ok(copier.stats)
}

struct Copier<'a> {
    dev: u64,
    skip: &'a [&'a Path],
    remove_source: bool,
    /// (dev, inode) of multiply linked files already copied → their copy.
    links: HashMap<(u64, u64), PathBuf>,
    stats: CopyStats,
}

impl Copier<'_> {
    fn copy_dir_contents(&mut self, src: &Path, dst: &Path) -> Result<(), RootfsError> {
        let entries = std::fs::read_dir(src).map_err(|source| RootfsError::Read {
            path: src.to_owned(),
            source,
        })?;
        // Collect first: removing entries while iterating a directory is
        // allowed but skips entries on some filesystems.
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| RootfsError::Read {
                path: src.to_owned(),
                source,
            })?;
            names.push(entry.file_name());
        }
        for name in names {
            let from = src.join(&name);
            if self.skip.iter().any(|s| *s == from) {
                continue;
            }
            self.copy_entry(&from, &dst.join(&name))?;
        }
        Ok(())
    }

    fn copy_entry(&mut self, from: &Path, to: &Path) -> Result<(), RootfsError> {
        let copy_err = |source: std::io::Error| RootfsError::Copy {
            from: from.to_owned(),
            to: to.to_owned(),
            source,
        };
        let meta = std::fs::symlink_metadata(from).map_err(|source| RootfsError::Read {
            path: from.to_owned(),
            source,
        })?;
        let kind = meta.file_type();
        self.stats.entries += 1;
        if kind.is_dir() {
            std::fs::create_dir(to).map_err(copy_err)?;
            if meta.dev() == self.dev {
                self.copy_dir_contents(from, to)?;
            } else {
                self.stats.mount_points += 1;
            }
            set_attributes(to, &meta)?;
            if self.remove_source && meta.dev() == self.dev {
                std::fs::remove_dir(from).map_err(|source| RootfsError::Remove {
                    path: from.to_owned(),
                    source,
                })?;
            }
            return Ok(());
        }
        // No nlink test here: with remove_source the first copy's source is
        // gone, so the last link of a group reads nlink 1.
        if !kind.is_symlink()
            && let Some(first) = self.links.get(&(meta.dev(), meta.ino()))
        {
            std::fs::hard_link(first, to).map_err(copy_err)?;
            return self.remove(from);
        }
        if kind.is_symlink() {
            let target = std::fs::read_link(from).map_err(copy_err)?;
            std::os::unix::fs::symlink(&target, to).map_err(copy_err)?;
        } else if kind.is_file() {
            self.stats.bytes += std::fs::copy(from, to).map_err(copy_err)?;
        } else if kind.is_char_device() || kind.is_block_device() || kind.is_fifo() {
            let sflag = if kind.is_char_device() {
                SFlag::S_IFCHR
            } else if kind.is_block_device() {
                SFlag::S_IFBLK
            } else {
                SFlag::S_IFIFO
            };
            let mode = Mode::from_bits_truncate(meta.mode() & 0o7777);
            nix::sys::stat::mknod(to, sflag, mode, meta.rdev()).map_err(|e| copy_err(e.into()))?;
        } else {
            // A socket in an initramfs has no listener behind it: nothing to carry over.
            log::debug!("not copying socket {}", from.display());
            return self.remove(from);
        }
        set_attributes(to, &meta)?;
        if meta.nlink() > 1 && !kind.is_symlink() {
            self.links.insert((meta.dev(), meta.ino()), to.to_owned());
        }
        self.remove(from)
    }

    fn remove(&self, path: &Path) -> Result<(), RootfsError> {
        if !self.remove_source {
            return Ok(());
        }
        std::fs::remove_file(path).map_err(|source| RootfsError::Remove {
            path: path.to_owned(),
            source,
        })
    }
}

/// Owner, then mode (chown clears setuid bits), then times; symlinks keep
/// their own owner and times and have no mode.
fn set_attributes(path: &Path, meta: &std::fs::Metadata) -> Result<(), RootfsError> {
    let err = |source: std::io::Error| RootfsError::Attributes {
        path: path.to_owned(),
        source,
    };
    std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid())).map_err(err)?;
    if !meta.file_type().is_symlink() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(err)?;
    }
    let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &atime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| err(e.into()))
}

/// Steps 1-3 of the module doc, as the machine's PID 1 only.
pub fn move_root_to_tmpfs() -> Result<CopyStats, RootfsError> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    let new_root = Path::new(NEW_ROOT);
    let switch = |step, source| RootfsError::Switch {
        step,
        path: new_root.to_owned(),
        source,
    };
    std::fs::create_dir_all(new_root).map_err(|source| RootfsError::Copy {
        from: PathBuf::from("/"),
        to: new_root.to_owned(),
        source,
    })?;
    mount(
        Some("rootfs"),
        new_root,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(|e| switch("mount tmpfs", e))?;
    // /proc was mounted to detect the role; it is mounted again after the
    // switch. Detach it so the old root holds no mounts.
    let _ = umount2("/proc", MntFlags::MNT_DETACH);
    let stats = copy_tree(Path::new("/"), new_root, &[new_root], true)?;
    nix::unistd::chdir(new_root).map_err(|e| switch("chdir", e))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| switch("move new root over /", e))?;
    nix::unistd::chroot(".").map_err(|e| switch("chroot", e))?;
    nix::unistd::chdir("/").map_err(|e| switch("chdir /", e))?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

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

    /// Needs root (owners, device nodes).
    #[test]
    fn copies_every_kind_and_removes_the_source() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "copy test needs root (chown, mknod)"
        );
        let base = std::env::temp_dir().join(format!("berth-rootfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (src, dst) = (base.join("src"), base.join("dst"));
        std::fs::create_dir_all(src.join("etc/empty")).unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::write(src.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::fs::write(src.join("suid"), "x").unwrap();
        std::fs::set_permissions(src.join("suid"), std::fs::Permissions::from_mode(0o4755))
            .unwrap();
        std::os::unix::fs::chown(src.join("etc/passwd"), Some(1234), Some(5678)).unwrap();
        std::fs::set_permissions(
            src.join("etc/empty"),
            std::fs::Permissions::from_mode(0o1777),
        )
        .unwrap();
        std::fs::hard_link(src.join("etc/passwd"), src.join("passwd-link")).unwrap();
        std::os::unix::fs::symlink("etc/passwd", src.join("link")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", src.join("dangling")).unwrap();
        nix::sys::stat::mknod(
            &src.join("null"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        nix::unistd::mkfifo(&src.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let mtime = TimeSpec::new(1_000_000, 0);
        utimensat(
            nix::fcntl::AT_FDCWD,
            &src.join("suid"),
            &mtime,
            &mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();

        let stats = copy_tree(&src, &dst, &[], true).unwrap();
        assert_eq!(stats.entries, 9);
        assert_eq!(stats.mount_points, 0);

        let m = |p: &str| std::fs::symlink_metadata(dst.join(p)).unwrap();
        assert_eq!(
            std::fs::read_to_string(dst.join("etc/passwd")).unwrap(),
            "root:x:0:0::/root:/bin/sh\n"
        );
        assert_eq!((m("etc/passwd").uid(), m("etc/passwd").gid()), (1234, 5678));
        assert_eq!(m("suid").mode() & 0o7777, 0o4755);
        assert_eq!(m("suid").mtime(), 1_000_000);
        assert_eq!(m("etc/empty").mode() & 0o7777, 0o1777);
        assert_eq!(
            m("passwd-link").ino(),
            m("etc/passwd").ino(),
            "hardlinks stay linked"
        );
        assert_eq!(
            std::fs::read_link(dst.join("link")).unwrap(),
            PathBuf::from("etc/passwd")
        );
        assert_eq!(
            std::fs::read_link(dst.join("dangling")).unwrap(),
            PathBuf::from("/nonexistent")
        );
        assert!(m("null").file_type().is_char_device());
        assert_eq!(m("null").rdev(), nix::sys::stat::makedev(1, 3));
        assert!(m("fifo").file_type().is_fifo());
        // The source is emptied as it is copied.
        assert_eq!(std::fs::read_dir(&src).unwrap().count(), 0);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn skips_and_keeps_source_when_asked() {
        let base = std::env::temp_dir().join(format!("berth-rootfs-skip-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let src = base.join("src");
        std::fs::create_dir_all(src.join("keep")).unwrap();
        std::fs::create_dir_all(src.join("newroot")).unwrap();
        std::fs::write(src.join("keep/file"), "data").unwrap();
        let dst = src.join("newroot");
        let stats = copy_tree(&src, &dst, &[dst.as_path()], false).unwrap();
        assert_eq!(stats.entries, 2);
        assert_eq!(stats.bytes, 4);
        assert!(dst.join("keep/file").exists());
        assert!(
            !dst.join("newroot").exists(),
            "the destination is not copied into itself"
        );
        assert!(src.join("keep/file").exists(), "the source stays");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
