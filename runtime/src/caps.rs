//! Linux capabilities: names ⇄ numbers (capabilities(7),
//! `include/uapi/linux/capability.h`), 64-bit masks, and the five sets of a
//! spec's `process.capabilities`.
//!
//! Applying the sets (PR_CAPBSET_DROP, capset(2), PR_CAP_AMBIENT_RAISE) is the
//! container setup's job; this module only computes the masks.

use std::fmt;

use oci_spec::runtime::{Capability, LinuxCapabilities};

/// Capability names indexed by their number, 0 (`CAP_CHOWN`) to 40
/// (`CAP_CHECKPOINT_RESTORE`, Linux 5.9).
pub const CAP_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The highest capability number this module knows.
pub const CAP_LAST_KNOWN: u32 = CAP_NAMES.len() as u32 - 1;

/// A capability name or set that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapsError {
    #[error("unknown capability {name:?}")]
    UnknownName { name: String },
    #[error("capability number {number} is out of range 0..=63")]
    NumberOutOfRange { number: u32 },
    #[error(
        "process.capabilities: effective capabilities {caps} are not in the permitted set (capset(2) would fail with EPERM)"
    )]
    EffectiveNotPermitted { caps: CapSet },
}

/// The number of a capability name: `CAP_SYS_ADMIN` (case-insensitive; the
/// `CAP_` prefix may be left out, as oci-spec and Kubernetes allow).
pub fn cap_from_name(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAP_NAMES
        .iter()
        .position(|known| &known[4..] == bare)
        .map(|n| n as u32)
}

/// The name of capability number `n`, `None` past [`CAP_LAST_KNOWN`].
pub fn cap_name(n: u32) -> Option<&'static str> {
    CAP_NAMES.get(n as usize).copied()
}

/// The number of an oci-spec capability.
pub fn cap_number(cap: Capability) -> u32 {
    match cap {
        Capability::Chown => 0,
        Capability::DacOverride => 1,
        Capability::DacReadSearch => 2,
        Capability::Fowner => 3,
        Capability::Fsetid => 4,
        Capability::Kill => 5,
        Capability::Setgid => 6,
        Capability::Setuid => 7,
        Capability::Setpcap => 8,
        Capability::LinuxImmutable => 9,
        Capability::NetBindService => 10,
        Capability::NetBroadcast => 11,
        Capability::NetAdmin => 12,
        Capability::NetRaw => 13,
        Capability::IpcLock => 14,
        Capability::IpcOwner => 15,
        Capability::SysModule => 16,
        Capability::SysRawio => 17,
        Capability::SysChroot => 18,
        Capability::SysPtrace => 19,
        Capability::SysPacct => 20,
        Capability::SysAdmin => 21,
        Capability::SysBoot => 22,
        Capability::SysNice => 23,
        Capability::SysResource => 24,
        Capability::SysTime => 25,
        Capability::SysTtyConfig => 26,
        Capability::Mknod => 27,
        Capability::Lease => 28,
        Capability::AuditWrite => 29,
        Capability::AuditControl => 30,
        Capability::Setfcap => 31,
        Capability::MacOverride => 32,
        Capability::MacAdmin => 33,
        Capability::Syslog => 34,
        Capability::WakeAlarm => 35,
        Capability::BlockSuspend => 36,
        Capability::AuditRead => 37,
        Capability::Perfmon => 38,
        Capability::Bpf => 39,
        Capability::CheckpointRestore => 40,
    }
}

/// A set of capabilities as the kernel's 64-bit mask (bit n = capability n).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CapSet(pub u64);

impl CapSet {
    /// No capability.
    pub const EMPTY: CapSet = CapSet(0);

    /// Every capability from 0 to `last_cap` inclusive (a kernel's
    /// `/proc/sys/kernel/cap_last_cap`).
    pub fn all_up_to(last_cap: u32) -> CapSet {
        if last_cap >= 63 {
            CapSet(u64::MAX)
        } else {
            CapSet((1u64 << (last_cap + 1)) - 1)
        }
    }

    /// The set of these names; the first unknown name is the error.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<CapSet, CapsError> {
        let mut set = CapSet::EMPTY;
        for name in names {
            let name = name.as_ref();
            let n = cap_from_name(name).ok_or_else(|| CapsError::UnknownName {
                name: name.to_string(),
            })?;
            set.insert(n)?;
        }
        Ok(set)
    }

    /// The set of these oci-spec capabilities.
    pub fn from_caps<'a>(caps: impl IntoIterator<Item = &'a Capability>) -> CapSet {
        CapSet(
            caps.into_iter()
                .fold(0u64, |bits, cap| bits | (1u64 << cap_number(*cap))),
        )
    }

    /// Adds capability `n`.
    pub fn insert(&mut self, n: u32) -> Result<(), CapsError> {
        if n > 63 {
            return Err(CapsError::NumberOutOfRange { number: n });
        }
        self.0 |= 1u64 << n;
        Ok(())
    }

    /// Whether capability `n` is in the set.
    pub fn contains(self, n: u32) -> bool {
        n < 64 && self.0 & (1u64 << n) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn union(self, other: CapSet) -> CapSet {
        CapSet(self.0 | other.0)
    }

    pub fn intersection(self, other: CapSet) -> CapSet {
        CapSet(self.0 & other.0)
    }

    /// The capabilities of `self` that are not in `other`.
    pub fn difference(self, other: CapSet) -> CapSet {
        CapSet(self.0 & !other.0)
    }

    pub fn is_subset(self, other: CapSet) -> bool {
        self.difference(other).is_empty()
    }

    /// The capabilities the running kernel knows (`last_cap` from
    /// `/proc/sys/kernel/cap_last_cap`). runc and crun leave capabilities
    /// newer than the kernel out of the sets rather than fail, since
    /// prctl/capset would reject them; the caller should report
    /// `self.difference(self.restrict_to(last_cap))` when it is not empty.
    pub fn restrict_to(self, last_cap: u32) -> CapSet {
        self.intersection(CapSet::all_up_to(last_cap))
    }

    /// The capability numbers in ascending order.
    pub fn iter(self) -> impl Iterator<Item = u32> {
        (0..64u32).filter(move |n| self.contains(*n))
    }

    /// Names in ascending number order; numbers without a known name are
    /// written `CAP_<n>`.
    pub fn names(self) -> Vec<String> {
        self.iter()
            .map(|n| cap_name(n).map_or_else(|| format!("CAP_{n}"), str::to_string))
            .collect()
    }
}

impl fmt::Display for CapSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]", self.names().join(", "))
    }
}

/// The capability set `runc spec` grants a container: CAP_AUDIT_WRITE,
/// CAP_KILL and CAP_NET_BIND_SERVICE.
pub fn default_caps() -> CapSet {
    CapSet((1 << 29) | (1 << 5) | (1 << 10))
}

/// The five capability sets of a container process, as masks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSets {
    pub bounding: CapSet,
    pub effective: CapSet,
    pub permitted: CapSet,
    pub inheritable: CapSet,
    /// The ambient capabilities that can be raised: the requested ambient
    /// set limited to permitted ∩ inheritable.
    pub ambient: CapSet,
    /// Requested ambient capabilities left out because they are not in both
    /// permitted and inheritable: PR_CAP_AMBIENT_RAISE refuses those with
    /// EPERM (prctl(2)). `runc spec` itself asks for ambient capabilities
    /// without inheritable ones, and runc only warns about them, so they are
    /// not an error; the caller should log them.
    pub ambient_unraisable: CapSet,
}

impl CapSets {
    /// The masks of a spec's `process.capabilities`; an absent set is empty,
    /// as in runc.
    pub fn from_spec(caps: &LinuxCapabilities) -> Result<CapSets, CapsError> {
        let mask = |set: &Option<oci_spec::runtime::Capabilities>| {
            set.as_ref().map_or(CapSet::EMPTY, CapSet::from_caps)
        };
        let effective = mask(caps.effective());
        let permitted = mask(caps.permitted());
        let inheritable = mask(caps.inheritable());
        let requested_ambient = mask(caps.ambient());
        if !effective.is_subset(permitted) {
            return Err(CapsError::EffectiveNotPermitted {
                caps: effective.difference(permitted),
            });
        }
        let raisable = permitted.intersection(inheritable);
        Ok(CapSets {
            bounding: mask(caps.bounding()),
            effective,
            permitted,
            inheritable,
            ambient: requested_ambient.intersection(raisable),
            ambient_unraisable: requested_ambient.difference(raisable),
        })
    }

    /// Every set limited to the capabilities the kernel knows; see
    /// [`CapSet::restrict_to`].
    pub fn restrict_to(self, last_cap: u32) -> CapSets {
        CapSets {
            bounding: self.bounding.restrict_to(last_cap),
            effective: self.effective.restrict_to(last_cap),
            permitted: self.permitted.restrict_to(last_cap),
            inheritable: self.inheritable.restrict_to(last_cap),
            ambient: self.ambient.restrict_to(last_cap),
            ambient_unraisable: self.ambient_unraisable.restrict_to(last_cap),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Checks the table against the kernel's own header, so a typo in a
    /// number cannot pass.
    #[test]
    fn table_matches_linux_uapi_header() {
        let path = "/usr/include/linux/capability.h";
        let header = std::fs::read_to_string(path).unwrap_or_else(|e| {
            panic!("read {path}: {e}; linux-libc-dev missing: apt-get install linux-libc-dev")
        });
        let mut seen = 0;
        for line in header.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("#define") {
                continue;
            }
            let (Some(name), Some(value)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = value.parse::<u32>() else {
                continue;
            };
            if !name.starts_with("CAP_") || name == "CAP_LAST_CAP" {
                continue;
            }
            if let (Some(ours), Some(_)) = (cap_name(n), cap_from_name(name)) {
                assert_eq!(ours, name, "capability {n}");
                seen += 1;
            }
        }
        assert_eq!(seen, CAP_NAMES.len(), "every capability found in {path}");
    }

    #[test]
    fn names_and_numbers_round_trip() {
        for (n, name) in CAP_NAMES.iter().enumerate() {
            assert_eq!(cap_from_name(name), Some(n as u32));
            assert_eq!(cap_from_name(&name.to_lowercase()), Some(n as u32));
            assert_eq!(cap_from_name(&name[4..]), Some(n as u32));
            assert_eq!(cap_name(n as u32), Some(*name));
        }
        assert_eq!(cap_from_name("CAP_CHOWN"), Some(0));
        assert_eq!(cap_from_name("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(cap_from_name("CAP_NOPE"), None);
        assert_eq!(cap_from_name("CAP_"), None);
        assert_eq!(cap_name(41), None);
    }

    /// The oci-spec enum maps to the same number as its JSON name.
    #[test]
    fn oci_spec_capabilities_match_the_table() {
        let mut numbers = HashSet::new();
        for name in CAP_NAMES {
            let cap: Capability = serde_json::from_str(&format!("\"{name}\"")).unwrap();
            assert_eq!(cap_name(cap_number(cap)), Some(name));
            numbers.insert(cap_number(cap));
        }
        assert_eq!(numbers.len(), CAP_NAMES.len());
    }

    #[test]
    fn from_names_builds_the_mask() {
        let set = CapSet::from_names(&["CAP_CHOWN", "CAP_KILL", "CAP_SYS_ADMIN"]).unwrap();
        assert_eq!(set, CapSet(1 | (1 << 5) | (1 << 21)));
        assert_eq!(set.names(), ["CAP_CHOWN", "CAP_KILL", "CAP_SYS_ADMIN"]);
        assert_eq!(set.iter().collect::<Vec<_>>(), [0, 5, 21]);
        assert_eq!(set.to_string(), "[CAP_CHOWN, CAP_KILL, CAP_SYS_ADMIN]");
        assert_eq!(CapSet::from_names::<&str>(&[]).unwrap(), CapSet::EMPTY);
    }

    #[test]
    fn from_names_names_the_unknown_capability() {
        let err = CapSet::from_names(&["CAP_KILL", "CAP_FLY"]).unwrap_err();
        assert_eq!(
            err,
            CapsError::UnknownName {
                name: "CAP_FLY".to_string()
            }
        );
        assert_eq!(err.to_string(), "unknown capability \"CAP_FLY\"");
    }

    #[test]
    fn restrict_to_drops_caps_the_kernel_lacks() {
        let set = CapSet::from_names(&["CAP_CHOWN", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"]).unwrap();
        // A 5.4 kernel: cap_last_cap = 37 (CAP_AUDIT_READ).
        assert_eq!(set.restrict_to(37).names(), ["CAP_CHOWN"]);
        assert_eq!(set.restrict_to(39).names(), ["CAP_CHOWN", "CAP_BPF"]);
        assert_eq!(set.restrict_to(40), set);
        assert_eq!(set.restrict_to(63), set);
        assert_eq!(CapSet::all_up_to(0), CapSet(1));
        assert_eq!(CapSet::all_up_to(40), CapSet((1 << 41) - 1));
        assert_eq!(CapSet::all_up_to(63), CapSet(u64::MAX));
        assert_eq!(CapSet::all_up_to(200), CapSet(u64::MAX));
    }

    #[test]
    fn insert_refuses_numbers_past_63() {
        let mut set = CapSet::EMPTY;
        assert!(set.insert(63).is_ok());
        assert_eq!(
            set.insert(64),
            Err(CapsError::NumberOutOfRange { number: 64 })
        );
        assert!(!set.contains(64));
        assert_eq!(set.names(), ["CAP_63"]);
    }

    #[test]
    fn default_caps_are_runc_specs() {
        assert_eq!(
            default_caps().names(),
            ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"]
        );
        assert_eq!(
            default_caps(),
            CapSet::from_names(&["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]).unwrap()
        );
    }

    fn spec_caps(json: &str) -> LinuxCapabilities {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn from_spec_builds_five_masks() {
        let caps = spec_caps(
            r#"{
                "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW", "CAP_SETUID"],
                "effective": ["CAP_KILL"],
                "permitted": ["CAP_KILL", "CAP_NET_RAW"],
                "inheritable": ["CAP_NET_RAW", "CAP_SETUID"],
                "ambient": ["CAP_NET_RAW"]
            }"#,
        );
        let sets = CapSets::from_spec(&caps).unwrap();
        assert_eq!(
            sets.bounding.names(),
            ["CAP_CHOWN", "CAP_KILL", "CAP_SETUID", "CAP_NET_RAW"]
        );
        assert_eq!(sets.effective.names(), ["CAP_KILL"]);
        assert_eq!(sets.permitted.names(), ["CAP_KILL", "CAP_NET_RAW"]);
        assert_eq!(sets.inheritable.names(), ["CAP_SETUID", "CAP_NET_RAW"]);
        assert_eq!(sets.ambient.names(), ["CAP_NET_RAW"]);
        assert!(sets.ambient_unraisable.is_empty());
    }

    #[test]
    fn absent_sets_are_empty() {
        let sets = CapSets::from_spec(&spec_caps("{}")).unwrap();
        assert_eq!(sets, CapSets::default());
        let sets = CapSets::from_spec(&spec_caps(r#"{"bounding":["CAP_KILL"]}"#)).unwrap();
        assert_eq!(sets.bounding.names(), ["CAP_KILL"]);
        assert!(sets.effective.is_empty() && sets.permitted.is_empty());
    }

    /// `runc spec` asks for ambient capabilities without inheritable ones:
    /// they cannot be raised, are reported, and are not an error.
    #[test]
    fn runc_spec_default_ambient_is_reported_unraisable() {
        let caps = spec_caps(
            r#"{
                "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "ambient": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
            }"#,
        );
        let sets = CapSets::from_spec(&caps).unwrap();
        assert_eq!(sets.bounding, default_caps());
        assert_eq!(sets.effective, default_caps());
        assert_eq!(sets.permitted, default_caps());
        assert!(sets.inheritable.is_empty());
        assert!(sets.ambient.is_empty());
        assert_eq!(sets.ambient_unraisable, default_caps());
    }

    #[test]
    fn oci_spec_default_capabilities_match_default_caps() {
        let sets = CapSets::from_spec(&LinuxCapabilities::default()).unwrap();
        assert_eq!(sets.bounding, default_caps());
        assert_eq!(sets.permitted, default_caps());
        assert_eq!(sets.effective, default_caps());
    }

    #[test]
    fn effective_outside_permitted_is_an_error() {
        let caps =
            spec_caps(r#"{"effective":["CAP_KILL","CAP_SYS_ADMIN"],"permitted":["CAP_KILL"]}"#);
        let err = CapSets::from_spec(&caps).unwrap_err();
        assert_eq!(
            err,
            CapsError::EffectiveNotPermitted {
                caps: CapSet(1 << 21)
            }
        );
        assert!(err.to_string().contains("[CAP_SYS_ADMIN]"), "{err}");
    }

    #[test]
    fn sets_restrict_together() {
        let caps = spec_caps(
            r#"{"bounding":["CAP_BPF","CAP_KILL"],"effective":["CAP_BPF"],"permitted":["CAP_BPF"],
                "inheritable":["CAP_BPF"],"ambient":["CAP_BPF"]}"#,
        );
        let sets = CapSets::from_spec(&caps).unwrap().restrict_to(38);
        assert_eq!(sets.bounding.names(), ["CAP_KILL"]);
        assert!(sets.effective.is_empty() && sets.ambient.is_empty());
    }
}
