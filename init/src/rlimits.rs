//! Resource limits (setrlimit(2)): PID 1's own open-file limit, and the
//! limits every unit starts with.
//!
//! The kernel starts init with RLIMIT_NOFILE soft 1024, hard 4096
//! (`INR_OPEN_CUR`, `INR_OPEN_MAX` in include/uapi/linux/fs.h). PID 1 holds
//! pipes, pidfds and log files for every unit for months, so on a machine
//! it raises both to what the kernel allows, as systemd does. Its units
//! must not inherit that soft limit: `select(2)` cannot watch an fd at or
//! above `FD_SETSIZE` (1024), and programs that size a table by the soft
//! limit, or close every fd up to it, would pay for a million. So each unit
//! starts with soft 1024 and PID 1's hard limit (systemd's `DefaultLimitNOFILE`
//! and Docker ≥ 25 give 1024 and 524288), which a program that needs more
//! raises itself, unless its manifest entry or its bundle says otherwise.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Why PID 1 could not raise its own limit.
#[derive(Debug, thiserror::Error)]
pub enum RlimitError {
    #[error("read RLIMIT_NOFILE")]
    Get { source: nix::Error },
    #[error("set RLIMIT_NOFILE to {limit}")]
    Set { limit: u64, source: nix::Error },
}

/// The most open files PID 1 allows itself: the kernel's default
/// `fs.nr_open` (1024 × 1024). The fd table grows only as fds are opened,
/// so the ceiling costs nothing until used; past a million, PID 1 leaking
/// fds is the likelier story, and a unit that needs more (its hard limit
/// is PID 1's) can have it through `sysctls` (`fs.nr_open`) and its
/// `rlimits`.
pub const PID1_NOFILE_MAX: u64 = 1 << 20;

/// The RLIMIT_NOFILE (soft = hard) PID 1 gives itself, from its current
/// `(soft, hard)` and `fs.nr_open` (`None`: unreadable, the kernel's
/// default assumed): `fs.nr_open` up to [`PID1_NOFILE_MAX`], never below
/// the current hard limit. `None` when that raises nothing.
pub fn pid1_nofile(current: (u64, u64), nr_open: Option<u64>) -> Option<u64> {
    let limit = nr_open
        .unwrap_or(PID1_NOFILE_MAX)
        .min(PID1_NOFILE_MAX)
        .max(current.1);
    (limit > current.0).then_some(limit)
}

/// Raises PID 1's RLIMIT_NOFILE as [`pid1_nofile`] says; returns the new
/// limit, `None` when it was high enough. Call after the manifest's
/// sysctls, so a `fs.nr_open` it sets counts: the kernel refuses any
/// RLIMIT_NOFILE above `fs.nr_open`, a unit's too, and a unit's hard limit
/// is PID 1's.
pub fn raise_pid1_nofile() -> Result<Option<u64>, RlimitError> {
    let current =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|source| RlimitError::Get { source })?;
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let Some(limit) = pid1_nofile(current, nr_open) else {
        return Ok(None);
    };
    setrlimit(Resource::RLIMIT_NOFILE, limit, limit)
        .map_err(|source| RlimitError::Set { limit, source })?;
    Ok(Some(limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid1_takes_nr_open_up_to_a_million_and_never_lowers() {
        // The kernel's start: 1024/4096, nr_open 1048576.
        assert_eq!(pid1_nofile((1024, 4096), Some(1 << 20)), Some(1 << 20));
        // nr_open lowered by a sysctl: that.
        assert_eq!(pid1_nofile((1024, 4096), Some(65536)), Some(65536));
        // nr_open raised: capped.
        assert_eq!(pid1_nofile((1024, 4096), Some(1 << 30)), Some(1 << 20));
        // Unreadable: the kernel's default.
        assert_eq!(pid1_nofile((1024, 4096), None), Some(1 << 20));
        // A hard limit above the cap is kept, and the soft one raised to it.
        assert_eq!(pid1_nofile((1024, 1 << 21), Some(1 << 30)), Some(1 << 21));
        // Already there: nothing to do.
        assert_eq!(pid1_nofile((1 << 20, 1 << 20), Some(1 << 20)), None);
    }
}
