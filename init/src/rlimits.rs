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
use oci_spec::runtime::{PosixRlimit, PosixRlimitBuilder, PosixRlimitType};

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

/// A unit's soft RLIMIT_NOFILE unless it says otherwise: `FD_SETSIZE`.
pub const UNIT_NOFILE_SOFT: u64 = 1024;

/// `RLIM_INFINITY` ("unlimited") of the 64-bit interface (prlimit(2)).
pub const UNLIMITED: u64 = u64::MAX;

/// The manifest's names of the limits (getrlimit(2) without `RLIMIT_`,
/// lower case, as Docker's `--ulimit` and Compose's `ulimits` write them),
/// each with its OCI type and whether it counts bytes (then a size string
/// such as `"64MiB"` is accepted).
pub const RESOURCES: [(&str, PosixRlimitType, bool); 16] = [
    ("as", PosixRlimitType::RlimitAs, true),
    ("core", PosixRlimitType::RlimitCore, true),
    ("cpu", PosixRlimitType::RlimitCpu, false),
    ("data", PosixRlimitType::RlimitData, true),
    ("fsize", PosixRlimitType::RlimitFsize, true),
    ("locks", PosixRlimitType::RlimitLocks, false),
    ("memlock", PosixRlimitType::RlimitMemlock, true),
    ("msgqueue", PosixRlimitType::RlimitMsgqueue, true),
    ("nice", PosixRlimitType::RlimitNice, false),
    ("nofile", PosixRlimitType::RlimitNofile, false),
    ("nproc", PosixRlimitType::RlimitNproc, false),
    ("rss", PosixRlimitType::RlimitRss, true),
    ("rtprio", PosixRlimitType::RlimitRtprio, false),
    ("rttime", PosixRlimitType::RlimitRttime, false),
    ("sigpending", PosixRlimitType::RlimitSigpending, false),
    ("stack", PosixRlimitType::RlimitStack, true),
];

/// [`RESOURCES`]' names, for a message.
pub const RESOURCE_NAMES: &str = "expected as, core, cpu, data, fsize, locks, memlock, msgqueue, \
     nice, nofile, nproc, rss, rtprio, rttime, sigpending, stack";

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

/// PID 1's hard RLIMIT_NOFILE: the hard limit its units start with.
pub fn pid1_nofile_hard() -> u64 {
    // getrlimit(2) only fails for an unknown resource; 1024 keeps a unit
    // at the soft default should it ever.
    getrlimit(Resource::RLIMIT_NOFILE).map_or(UNIT_NOFILE_SOFT, |(_, hard)| hard)
}

/// One resource limit of a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub typ: PosixRlimitType,
    pub soft: u64,
    pub hard: u64,
}

impl Rlimit {
    /// The limit in a runtime spec (oci-spec only builds one).
    pub fn to_oci(self) -> Result<PosixRlimit, oci_spec::OciSpecError> {
        PosixRlimitBuilder::default()
            .typ(self.typ)
            .soft(self.soft)
            .hard(self.hard)
            .build()
    }
}

impl From<&PosixRlimit> for Rlimit {
    fn from(r: &PosixRlimit) -> Self {
        Self {
            typ: r.typ(),
            soft: r.soft(),
            hard: r.hard(),
        }
    }
}

/// A unit's `process.rlimits`: `own` (a bundle's config.json; nothing for
/// an image unit, whose base spec's limits are berth's defaults, not the
/// image's), RLIMIT_NOFILE soft 1024 and hard `nofile_hard` (PID 1's) when
/// `own` sets none, then `overrides` (the manifest's) in place of the
/// limits of the same type.
pub fn unit_rlimits(own: &[Rlimit], overrides: &[Rlimit], nofile_hard: u64) -> Vec<Rlimit> {
    let mut out = own.to_vec();
    if !out.iter().any(|r| r.typ == PosixRlimitType::RlimitNofile) {
        out.push(Rlimit {
            typ: PosixRlimitType::RlimitNofile,
            soft: UNIT_NOFILE_SOFT.min(nofile_hard),
            hard: nofile_hard,
        });
    }
    for o in overrides {
        out.retain(|r| r.typ != o.typ);
        out.push(*o);
    }
    out
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

    #[test]
    fn resource_names_are_sorted_and_unique() {
        assert!(RESOURCES.windows(2).all(|w| w[0].0 < w[1].0));
        let names: Vec<&str> = RESOURCES.iter().map(|(n, ..)| *n).collect();
        assert_eq!(RESOURCE_NAMES, format!("expected {}", names.join(", ")));
    }

    #[test]
    fn units_get_1024_and_pid1s_hard_limit_unless_they_say_otherwise() {
        let nofile = |soft, hard| Rlimit {
            typ: PosixRlimitType::RlimitNofile,
            soft,
            hard,
        };
        let core = Rlimit {
            typ: PosixRlimitType::RlimitCore,
            soft: 0,
            hard: 0,
        };
        assert_eq!(unit_rlimits(&[], &[], 1 << 20), [nofile(1024, 1 << 20)]);
        // A hard limit below 1024 caps the soft one.
        assert_eq!(unit_rlimits(&[], &[], 512), [nofile(512, 512)]);
        // A bundle's own limits stay, NOFILE included.
        assert_eq!(
            unit_rlimits(&[core, nofile(10, 20)], &[], 1 << 20),
            [core, nofile(10, 20)]
        );
        assert_eq!(unit_rlimits(&[core], &[], 4096), [core, nofile(1024, 4096)]);
        // The manifest's replace the default.
        assert_eq!(
            unit_rlimits(&[], &[nofile(4096, 8192), core], 1 << 20),
            [nofile(4096, 8192), core]
        );
    }
}
