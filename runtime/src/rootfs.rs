//! The container's filesystem view, built by the child before exec: the
//! mounts of the spec, device nodes, masked and read-only paths, then
//! pivot_root with the old root detached.
//!
//! Runs in the freshly cloned child: no allocation, only `sys` calls on
//! data precomputed in [`crate::spec::Plan`]. Every destination is resolved
//! inside the rootfs by fd (`openat2(RESOLVE_IN_ROOT|RESOLVE_NO_MAGICLINKS)`)
//! and the mount goes onto that fd through `/proc/self/fd/N`, so a symlink
//! or a racing rename in the rootfs cannot send a mount outside it
//! (CVE-2021-30465).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use crate::process::{ChildError, Step};
use crate::spec::{InRootPath, MountKind, MountPlan, Plan};
use crate::sys::{self, FdPath};

const RESOLVE_IN_ROOT: u64 = 0x10;
/// statfs(2) `ST_RELATIME` (musl's libc crate lacks the constant).
const ST_RELATIME: u64 = 0x1000;
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;

fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error()
}

/// Opens a path inside the root with `O_PATH`.
pub(crate) fn open_in_root(root: BorrowedFd<'_>, path: &CStr) -> io::Result<OwnedFd> {
    sys::openat2(
        root,
        path,
        libc::O_PATH as u64,
        0,
        RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    )
}

/// Opens the path made of `prefixes`/`names` inside the root, creating
/// missing components: directories, and the last one a file when `file`.
/// Each component is created with `*at` on the fd of its in-root-resolved
/// parent, so nothing is created outside the root.
fn ensure(
    root: BorrowedFd<'_>,
    prefixes: &[std::ffi::CString],
    names: &[std::ffi::CString],
    file: bool,
) -> io::Result<OwnedFd> {
    let Some(full) = prefixes.last() else {
        return sys::openat(Some(root), c".", libc::O_PATH | libc::O_DIRECTORY, 0);
    };
    match open_in_root(root, full) {
        Ok(fd) => return Ok(fd),
        Err(e) if errno(&e) != Some(libc::ENOENT) => return Err(e),
        Err(_) => {}
    }
    let mut parent: Option<OwnedFd> = None;
    for (i, (prefix, name)) in prefixes.iter().zip(names).enumerate() {
        match open_in_root(root, prefix) {
            Ok(fd) => {
                parent = Some(fd);
                continue;
            }
            Err(e) if errno(&e) != Some(libc::ENOENT) => return Err(e),
            Err(_) => {}
        }
        let dir = parent.as_ref().map_or(root, |f| f.as_fd());
        let created = if file && i + 1 == names.len() {
            sys::openat(
                Some(dir),
                name,
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
                0o644,
            )
            .map(drop)
        } else {
            sys::mkdirat(dir, name, 0o755)
        };
        match created {
            Err(e) if errno(&e) != Some(libc::EEXIST) => return Err(e),
            _ => {}
        }
        parent = Some(open_in_root(root, prefix)?);
    }
    parent.ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

fn ensure_path(root: BorrowedFd<'_>, p: &InRootPath, file: bool) -> io::Result<OwnedFd> {
    ensure(root, &p.prefixes, &p.names, file)
}

/// Remounts the mount `fd` names (opened on it, so the fd is the mount,
/// not what is under it) with `flags`.
fn remount_fd(fd: BorrowedFd<'_>, flags: libc::c_ulong) -> io::Result<()> {
    sys::mount(
        None,
        FdPath::new(fd.as_raw_fd()).as_cstr(),
        None,
        flags,
        None,
    )
}

/// The flags a bind remount must keep: in a user namespace the kernel
/// refuses to clear nosuid/nodev/noexec a mount already has (locked flags).
fn locked_flags(fd: BorrowedFd<'_>) -> io::Result<libc::c_ulong> {
    let f = sys::mount_flags(fd)? as libc::c_ulong;
    let mut out = 0;
    for (st_flag, ms_flag) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (ST_RELATIME, libc::MS_RELATIME),
    ] {
        if f & st_flag != 0 {
            out |= ms_flag;
        }
    }
    Ok(out)
}

fn at(step: Step, index: usize) -> impl Fn(io::Error) -> ChildError {
    move |e| ChildError::new(step, index, &e)
}

/// Makes a missing cwd, as runc and crun do (an image's WorkingDir need
/// not exist in its layers): after the mounts, so a cwd beneath one is
/// made inside it, and before the root goes read-only. In-root, like a
/// mount destination; owned by root, mode 0755.
pub fn create_cwd(plan: &Plan, root: BorrowedFd<'_>) -> Result<(), ChildError> {
    ensure_path(root, &plan.cwd_dest, false)
        .map(drop)
        .map_err(at(Step::MakeCwd, 0))
}

/// Makes the rootfs a mount point in the new mount namespace and returns
/// an fd on it. `/` goes rslave (or as rootfsPropagation says) first, so
/// nothing done here propagates to the host.
pub fn prepare_root(plan: &Plan, rootfs: &CStr) -> Result<OwnedFd, ChildError> {
    sys::mount(None, c"/", None, plan.root_propagation, None)
        .map_err(at(Step::RootPropagation, 0))?;
    sys::mount(
        Some(rootfs),
        rootfs,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .map_err(at(Step::BindRootfs, 0))?;
    sys::openat(None, rootfs, libc::O_PATH | libc::O_DIRECTORY, 0).map_err(at(Step::OpenRootfs, 0))
}

/// Whether `target`, on procfs, is the file of the top of the container's
/// /proc that `m` names (one of `PROC_BIND_FILES`): a regular file in the
/// root directory of a procfs (inode 1) mounted where /proc leads. An image
/// that makes /proc a symlink into another procfs's `self` cannot aim the
/// bind at a per-process file.
fn lxcfs_file(root: BorrowedFd<'_>, target: BorrowedFd<'_>, m: &MountPlan) -> bool {
    let (Some(dir), Some(name)) = (m.dest.prefixes.first(), m.dest.names.last()) else {
        return false;
    };
    if m.dest.names.len() != 2 {
        return false;
    }
    let Ok(proc_dir) = open_in_root(root, dir) else {
        return false;
    };
    let (Ok(d), Ok(t)) = (sys::fstat(proc_dir.as_fd()), sys::fstat(target)) else {
        return false;
    };
    let Ok(named) = sys::openat(
        Some(proc_dir.as_fd()),
        name,
        libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        0,
    ) else {
        return false;
    };
    let Ok(n) = sys::fstat(named.as_fd()) else {
        return false;
    };
    d.st_ino == 1
        && sys::is_procfs(proc_dir.as_fd()).unwrap_or(false)
        && t.st_mode & libc::S_IFMT == libc::S_IFREG
        && (t.st_dev, t.st_ino) == (d.st_dev, n.st_ino)
        && n.st_dev == d.st_dev
}

/// Applies the spec's mounts in order.
pub fn mount_all(plan: &Plan, root: BorrowedFd<'_>) -> Result<(), ChildError> {
    for (i, m) in plan.mounts.iter().enumerate() {
        let target = ensure_path(root, &m.dest, m.file).map_err(at(Step::MountTarget, i))?;
        // Destinations under /proc are refused in the plan, but an image
        // symlink (/dev -> /proc) can still send one onto the container's
        // procfs: it would hide the procfs, the masked and read-only /proc
        // paths would then not be found and skipped, and the unmasked
        // procfs would live on underneath (CVE-2019-16884, CVE-2023-28642).
        // The one exception: a file over one of LXCFS's files, which must
        // then be that file of the container's /proc (see `lxcfs_file`).
        let on_proc = sys::is_procfs(target.as_fd()).map_err(at(Step::MountOnProc, i))?;
        if on_proc && !(m.over_proc_file && lxcfs_file(root, target.as_fd(), m)) {
            return Err(ChildError::new(
                Step::MountOnProc,
                i,
                &io::Error::from_raw_os_error(libc::EPERM),
            ));
        }
        let tpath = FdPath::new(target.as_raw_fd());
        match &m.kind {
            MountKind::Bind { source, recursive } => {
                let rec = if *recursive { libc::MS_REC } else { 0 };
                sys::mount(
                    Some(source),
                    tpath.as_cstr(),
                    None,
                    libc::MS_BIND | rec,
                    None,
                )
                .map_err(at(Step::Mount, i))?;
                if m.flags != 0 {
                    // Bind mounts ignore flags on creation: remount the new
                    // mount (reopened, so the fd names it, not what is under it).
                    let top = open_in_root(root, &m.dest.full).map_err(at(Step::MountTarget, i))?;
                    let locked = locked_flags(top.as_fd()).map_err(at(Step::Remount, i))?;
                    let flags = libc::MS_REMOUNT | libc::MS_BIND | m.flags | locked;
                    let remount = |flags| remount_fd(top.as_fd(), flags);
                    match remount(flags) {
                        // In a user namespace a read-only source mount is
                        // locked read-only too: keep it so (as runc retries
                        // with the source's lockable flags).
                        Err(e)
                            if e.raw_os_error() == Some(libc::EPERM)
                                && flags & libc::MS_RDONLY == 0
                                && sys::mount_flags(top.as_fd())
                                    .is_ok_and(|f| f as libc::c_ulong & libc::ST_RDONLY != 0) =>
                        {
                            remount(flags | libc::MS_RDONLY).map_err(at(Step::Remount, i))?
                        }
                        other => other.map_err(at(Step::Remount, i))?,
                    }
                }
            }
            MountKind::Fs {
                fstype,
                source,
                data,
            } => {
                sys::mount(
                    Some(source),
                    tpath.as_cstr(),
                    Some(fstype),
                    m.flags,
                    data.as_deref(),
                )
                .map_err(at(Step::Mount, i))?;
            }
        }
        if m.propagation != 0 {
            let top = open_in_root(root, &m.dest.full).map_err(at(Step::MountTarget, i))?;
            sys::mount(
                None,
                FdPath::new(top.as_raw_fd()).as_cstr(),
                None,
                m.propagation,
                None,
            )
            .map_err(at(Step::MountPropagation, i))?;
        }
    }
    Ok(())
}

/// Creates the device nodes (mknod, or a bind mount of the host node in a
/// user namespace, where mknod is not allowed) and the `/dev` symlinks.
pub fn create_devices(
    plan: &Plan,
    root: BorrowedFd<'_>,
    in_userns: bool,
) -> Result<(), ChildError> {
    for (i, d) in plan.devices.iter().enumerate() {
        let n = d.path.names.len();
        let Some(name) = d.path.names.last() else {
            return Err(ChildError::new(
                Step::Device,
                i,
                &io::Error::from_raw_os_error(libc::EINVAL),
            ));
        };
        let dir = ensure(
            root,
            &d.path.prefixes[..n - 1],
            &d.path.names[..n - 1],
            false,
        )
        .map_err(at(Step::Device, i))?;
        if in_userns {
            let node = ensure_path(root, &d.path, true).map_err(at(Step::Device, i))?;
            sys::mount(
                Some(&d.host_path),
                FdPath::new(node.as_raw_fd()).as_cstr(),
                None,
                libc::MS_BIND,
                None,
            )
            .map_err(at(Step::Device, i))?;
            continue;
        }
        let dev = sys::makedev(d.major, d.minor);
        match sys::mknodat(dir.as_fd(), name, d.mode, dev) {
            Err(e) if errno(&e) == Some(libc::EEXIST) => {
                // A node left in the rootfs: replace it, so type, numbers
                // and mode are the spec's.
                sys::unlinkat(dir.as_fd(), name).map_err(at(Step::Device, i))?;
                sys::mknodat(dir.as_fd(), name, d.mode, dev).map_err(at(Step::Device, i))?;
            }
            other => other.map_err(at(Step::Device, i))?,
        }
        if d.uid != 0 || d.gid != 0 {
            let node = sys::openat(Some(dir.as_fd()), name, libc::O_PATH | libc::O_NOFOLLOW, 0)
                .map_err(at(Step::Device, i))?;
            sys::fchown_fd(node.as_fd(), d.uid, d.gid).map_err(at(Step::Device, i))?;
        }
    }
    if plan.default_dev {
        let dev = ensure_path(root, &plan.dev_dir, false).map_err(at(Step::DevSymlink, 0))?;
        let links: [(&CStr, &CStr); 5] = [
            (c"/proc/self/fd", c"fd"),
            (c"/proc/self/fd/0", c"stdin"),
            (c"/proc/self/fd/1", c"stdout"),
            (c"/proc/self/fd/2", c"stderr"),
            (c"pts/ptmx", c"ptmx"),
        ];
        for (i, (target, name)) in links.iter().enumerate() {
            match sys::symlinkat(target, dev.as_fd(), name) {
                Err(e) if errno(&e) != Some(libc::EEXIST) => {
                    return Err(ChildError::new(Step::DevSymlink, i, &e));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Masks paths: a read-only empty tmpfs over directories, the host's
/// `/dev/null` over files. `/dev/null` is opened once, without following
/// symlinks, and checked to be char 1:3 before use (CVE-2025-31133). It is
/// opened here, not in the parent: a bind source must be in the caller's
/// mount namespace. Missing paths are skipped.
pub fn mask_paths(plan: &Plan, root: BorrowedFd<'_>) -> Result<(), ChildError> {
    if plan.masked.is_empty() {
        return Ok(());
    }
    let devnull = sys::openat(None, c"/dev/null", libc::O_PATH | libc::O_NOFOLLOW, 0)
        .map_err(at(Step::DevNull, 0))?;
    let st = sys::fstat(devnull.as_fd()).map_err(at(Step::DevNull, 0))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR || st.st_rdev != sys::makedev(1, 3) {
        return Err(ChildError::new(
            Step::DevNull,
            0,
            &io::Error::from_raw_os_error(libc::ENODEV),
        ));
    }
    let null_path = FdPath::new(devnull.as_raw_fd());
    for (i, p) in plan.masked.iter().enumerate() {
        let fd = match open_in_root(root, &p.full) {
            Ok(fd) => fd,
            Err(e) if errno(&e) == Some(libc::ENOENT) => continue,
            Err(e) => return Err(ChildError::new(Step::Mask, i, &e)),
        };
        let st = sys::fstat(fd.as_fd()).map_err(at(Step::Mask, i))?;
        let target = FdPath::new(fd.as_raw_fd());
        let r = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            // An empty, read-only directory, listable as with runc and crun
            // (mode 000 made `ls`/`find` fail without CAP_DAC_OVERRIDE).
            let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            sys::mount(
                Some(c"tmpfs"),
                target.as_cstr(),
                Some(c"tmpfs"),
                flags,
                Some(c"size=0,mode=555"),
            )
        } else {
            sys::mount(
                Some(null_path.as_cstr()),
                target.as_cstr(),
                None,
                libc::MS_BIND,
                None,
            )
        };
        r.map_err(at(Step::Mask, i))?;
    }
    Ok(())
}

/// Makes paths read-only: bind each onto itself, then remount the new
/// mount read-only. Missing paths are skipped.
pub fn readonly_paths(plan: &Plan, root: BorrowedFd<'_>) -> Result<(), ChildError> {
    for (i, p) in plan.readonly.iter().enumerate() {
        let fd = match open_in_root(root, &p.full) {
            Ok(fd) => fd,
            Err(e) if errno(&e) == Some(libc::ENOENT) => continue,
            Err(e) => return Err(ChildError::new(Step::Readonly, i, &e)),
        };
        let path = FdPath::new(fd.as_raw_fd());
        sys::mount(
            Some(path.as_cstr()),
            path.as_cstr(),
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )
        .map_err(at(Step::Readonly, i))?;
        let top = open_in_root(root, &p.full).map_err(at(Step::Readonly, i))?;
        let locked = locked_flags(top.as_fd()).map_err(at(Step::Readonly, i))?;
        let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | locked;
        remount_fd(top.as_fd(), flags).map_err(at(Step::Readonly, i))?;
    }
    Ok(())
}

/// pivot_root into the rootfs and detach the old root (never chroot):
/// `pivot_root(".", ".")` stacks the old root on the new one, which is
/// then lazily unmounted (pivot_root(2), "NOTES"). The old root is already
/// rslave or rprivate ([`prepare_root`]), so the unmount does not
/// propagate to the host.
pub fn pivot(plan: &Plan, root: BorrowedFd<'_>) -> Result<(), ChildError> {
    sys::fchdir(root).map_err(at(Step::PivotRoot, 0))?;
    sys::pivot_root(c".", c".").map_err(at(Step::PivotRoot, 0))?;
    sys::umount2(c".", libc::MNT_DETACH).map_err(at(Step::UmountOldRoot, 0))?;
    sys::chdir(c"/").map_err(at(Step::PivotRoot, 0))?;
    if plan.rootfs_propagation_after != 0 {
        sys::mount(None, c"/", None, plan.rootfs_propagation_after, None)
            .map_err(at(Step::RootPropagation, 0))?;
    }
    if plan.readonly_root {
        let top = sys::openat(None, c"/", libc::O_PATH | libc::O_DIRECTORY, 0)
            .map_err(at(Step::ReadonlyRoot, 0))?;
        let locked = locked_flags(top.as_fd()).map_err(at(Step::ReadonlyRoot, 0))?;
        let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | locked;
        sys::mount(None, c"/", None, flags, None).map_err(at(Step::ReadonlyRoot, 0))?;
    }
    Ok(())
}

/// Before the clone, in the parent: makes the targets of dangling
/// symlinks on the mount destinations exist inside the rootfs, as runc's
/// in-root MkdirAll does. The common case: `/etc/resolv.conf` pointing at
/// `../run/systemd/resolve/stub-resolv.conf`, which the image does not
/// ship, with a bind mount on it. Everything is resolved inside the
/// rootfs (RESOLVE_IN_ROOT) and created with `*at` calls on resolved
/// parents, so a symlink can send nothing outside. Destinations without a
/// dangling symlink are left to the child.
pub fn create_symlink_targets(plan: &Plan, rootfs: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let root_path = std::ffi::CString::new(rootfs.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let root = sys::openat(None, &root_path, libc::O_PATH | libc::O_DIRECTORY, 0)?;
    let cwd = (&plan.cwd_dest, false);
    let mounts = plan.mounts.iter().map(|m| (&m.dest, m.file));
    for (dest, file) in mounts.chain([cwd]) {
        if open_in_root(root.as_fd(), &dest.full).is_ok() {
            continue;
        }
        follow_dangling(root.as_fd(), dest.as_str(), file, 0)?;
    }
    Ok(())
}

/// Before the clone, in the parent, for a rootfs the container will find
/// read-only (a read-only bind of a tree several containers share, where
/// the child could create nothing): creates every mount destination that
/// is not beneath an earlier mount's destination (those are made inside
/// that mount by the child), then the cwd unless it is at or beneath a
/// mount's destination; dangling symlinks on the way followed as
/// [`create_symlink_targets`] does. Resolved and created exactly as the
/// child would, inside the rootfs.
pub fn create_mount_targets(plan: &Plan, rootfs: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    create_symlink_targets(plan, rootfs)?;
    let root_path = std::ffi::CString::new(rootfs.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let root = sys::openat(None, &root_path, libc::O_PATH | libc::O_DIRECTORY, 0)?;
    for (i, m) in plan.mounts.iter().enumerate() {
        let inner = &m.dest.prefixes[..m.dest.prefixes.len().saturating_sub(1)];
        if plan.mounts[..i]
            .iter()
            .any(|earlier| inner.contains(&earlier.dest.full))
        {
            continue;
        }
        drop(ensure_path(root.as_fd(), &m.dest, m.file)?);
    }
    let cwd = &plan.cwd_dest;
    if !plan
        .mounts
        .iter()
        .any(|m| cwd.prefixes.contains(&m.dest.full))
    {
        drop(ensure_path(root.as_fd(), cwd, false)?);
    }
    Ok(())
}

fn follow_dangling(root: BorrowedFd<'_>, path: &str, file: bool, depth: u32) -> io::Result<()> {
    // Linux's own limit on nested symlinks (path_resolution(7)).
    if depth > 40 {
        return Err(io::Error::from_raw_os_error(libc::ELOOP));
    }
    let clean = InRootPath::new("", std::path::Path::new(path))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let n = clean.names.len();
    for i in 0..n {
        if open_in_root(root, &clean.prefixes[i]).is_ok() {
            continue;
        }
        // Missing: a dangling symlink, or simply absent (the child creates those).
        let parent = if i == 0 {
            c"/".to_owned()
        } else {
            clean.prefixes[i - 1].clone()
        };
        let Ok(dir) = open_in_root(root, &parent) else {
            return Ok(());
        };
        let Ok(link) = sys::openat(
            Some(dir.as_fd()),
            &clean.names[i],
            libc::O_PATH | libc::O_NOFOLLOW,
            0,
        ) else {
            return Ok(());
        };
        if sys::fstat(link.as_fd())?.st_mode & libc::S_IFMT != libc::S_IFLNK {
            return Ok(());
        }
        let mut buf = [0u8; 4096];
        let len = sys::readlink_fd(link.as_fd(), &mut buf)?;
        let target = String::from_utf8_lossy(&buf[..len]).into_owned();
        let parent_str = parent.to_string_lossy().into_owned();
        let resolved = if target.starts_with('/') {
            target
        } else {
            format!("{parent_str}/{target}")
        };
        let last = i + 1 == n;
        follow_dangling(root, &resolved, file && last, depth + 1)?;
        let t = InRootPath::new("", std::path::Path::new(&resolved))
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        drop(ensure_path(root, &t, file && last)?);
        // The rest of the path now resolves through the link; re-walk.
        return follow_dangling(root, path, file, depth + 1);
    }
    Ok(())
}
