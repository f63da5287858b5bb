//! The early mounts PID 1 makes on a VM, as a plan (pure) and an executor.
//!
//! The plan is the list in the order it must happen: `/dev/pts` needs `/dev`,
//! the cgroup2 mount needs `/sys`. After cgroup2 is mounted, PID 1 enables
//! every available controller for its children (`cgroup.subtree_control`),
//! so containers get memory, cpu, pids and io limits. The root cgroup is
//! exempt from the "no internal processes" rule (cgroup-v2.rst), so PID 1
//! itself stays where it is.

use std::path::Path;

use nix::mount::MsFlags;

/// One mount of the boot plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountStep {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: Option<&'static str>,
    /// Mode of the mount point if PID 1 has to create it.
    pub dir_mode: u32,
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

/// The early mounts, in order.
pub fn boot_mounts() -> Vec<MountStep> {
    let step = |source, target, fstype, flags, data, dir_mode| MountStep {
        source,
        target,
        fstype,
        flags,
        data,
        dir_mode,
    };
    vec![
        step("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, None, 0o555),
        step("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, None, 0o555),
        // devtmpfs: the kernel creates the device nodes; no exec on /dev.
        step(
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
            Some("mode=0755"),
            0o755,
        ),
        // gid 5 is "tty" on every distribution; ptmxmode makes /dev/pts/ptmx
        // usable so /dev/ptmx can point at it.
        step(
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
            0o755,
        ),
        step(
            "shm",
            "/dev/shm",
            "tmpfs",
            NOSUID_NODEV,
            Some("mode=1777"),
            0o1777,
        ),
        step(
            "mqueue",
            "/dev/mqueue",
            "mqueue",
            NOSUID_NODEV_NOEXEC,
            None,
            0o755,
        ),
        step(
            "run",
            "/run",
            "tmpfs",
            NOSUID_NODEV,
            Some("mode=0755"),
            0o755,
        ),
        // The containers' roots (unpacked images, a unit's own copy, a
        // packed bundle's root), their overlays' layers and the runtime's
        // state: set-user-ID programs and file capabilities work in a
        // container's root as in any runtime's (bind mounts of a tree
        // keep the nosuid of the mount it is on, which /run's would make
        // them inert); device nodes in its trees stay inert.
        step(
            "berth-run",
            "/run/berth",
            "tmpfs",
            MsFlags::MS_NODEV,
            Some("mode=0755"),
            0o755,
        ),
        step(
            "tmp",
            "/tmp",
            "tmpfs",
            NOSUID_NODEV,
            Some("mode=1777"),
            0o1777,
        ),
        // nsdelegate: a cgroup namespace is a delegation boundary, so a
        // container cannot write its parent's control files.
        step(
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            NOSUID_NODEV_NOEXEC,
            Some("nsdelegate"),
            0o555,
        ),
    ]
}

/// What to write to the root's `cgroup.subtree_control` to delegate every
/// controller listed in its `cgroup.controllers` (`"cpu io memory pids"` →
/// `"+cpu +io +memory +pids"`); `None` when there are none.
pub fn subtree_control_line(controllers: &str) -> Option<String> {
    let parts: Vec<String> = controllers
        .split_whitespace()
        .map(|c| format!("+{c}"))
        .collect();
    if parts.is_empty() {
        None
    } else {
        Some(parts.join(" "))
    }
}

/// Why an early mount failed.
#[derive(Debug, thiserror::Error)]
pub enum BootMountError {
    #[error("create mount point {target}")]
    MountPoint {
        target: &'static str,
        source: std::io::Error,
    },
    #[error("mount {fstype} on {target}")]
    Mount {
        target: &'static str,
        fstype: &'static str,
        source: nix::Error,
    },
    #[error("delegate cgroup controllers {line:?}")]
    Delegate {
        line: String,
        source: std::io::Error,
    },
}

/// Applies the plan. A mount point that is already mounted (EBUSY: the
/// kernel mounted devtmpfs itself with CONFIG_DEVTMPFS_MOUNT) is fine.
pub fn apply_boot_mounts(plan: &[MountStep]) -> Result<Vec<&'static str>, BootMountError> {
    let mut done = Vec::with_capacity(plan.len());
    for step in plan {
        if !Path::new(step.target).exists() {
            std::fs::create_dir_all(step.target).map_err(|source| BootMountError::MountPoint {
                target: step.target,
                source,
            })?;
        }
        match nix::mount::mount(
            Some(step.source),
            step.target,
            Some(step.fstype),
            step.flags,
            step.data,
        ) {
            Ok(()) => done.push(step.target),
            Err(nix::Error::EBUSY) => log::debug!("{} already mounted", step.target),
            Err(source) => {
                return Err(BootMountError::Mount {
                    target: step.target,
                    fstype: step.fstype,
                    source,
                });
            }
        }
    }
    let controllers =
        std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    if let Some(line) = subtree_control_line(&controllers) {
        std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", &line)
            .map_err(|source| BootMountError::Delegate { line, source })?;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_order_and_flags() {
        let plan = boot_mounts();
        let targets: Vec<&str> = plan.iter().map(|s| s.target).collect();
        assert_eq!(
            targets,
            [
                "/proc",
                "/sys",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/run",
                "/run/berth",
                "/tmp",
                "/sys/fs/cgroup"
            ]
        );
        // Every mount point's parent is mounted earlier (or is /).
        for (i, step) in plan.iter().enumerate() {
            let parent = Path::new(step.target).parent().unwrap();
            let covered = parent == Path::new("/")
                || plan[..i]
                    .iter()
                    .any(|earlier| parent.starts_with(earlier.target));
            assert!(covered, "{} mounted before its parent", step.target);
        }
        // Containers' roots are the exception: set-user-ID and file
        // capabilities work there; device nodes do not.
        for step in &plan {
            assert_eq!(
                step.flags.contains(MsFlags::MS_NOSUID),
                step.target != "/run/berth",
                "{} must be nosuid, unless it holds containers' roots",
                step.target
            );
        }
        let roots = plan.iter().find(|s| s.target == "/run/berth").unwrap();
        assert_eq!(roots.flags, MsFlags::MS_NODEV);
        let cg = plan.last().unwrap();
        assert_eq!((cg.fstype, cg.data), ("cgroup2", Some("nsdelegate")));
        let dev = plan.iter().find(|s| s.target == "/dev").unwrap();
        assert!(
            !dev.flags.contains(MsFlags::MS_NODEV),
            "device nodes must work in /dev"
        );
    }

    #[test]
    fn delegation_line() {
        assert_eq!(
            subtree_control_line("cpuset cpu io memory hugetlb pids rdma misc\n").as_deref(),
            Some("+cpuset +cpu +io +memory +hugetlb +pids +rdma +misc")
        );
        assert_eq!(subtree_control_line(""), None);
        assert_eq!(subtree_control_line("\n"), None);
    }
}
