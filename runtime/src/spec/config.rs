//! Reading a bundle's `config.json` into an oci-spec `Spec`.
//!
//! oci-spec's own `Deserialize` for `Spec` checks `process.execCPUAffinity`
//! with a regular expression, and that one call links the whole `regex`
//! engine (with its Unicode tables) into every binary that reads a bundle:
//! 987 KB of the static PID 1's 3.1 MB (measured). berth refuses
//! `execCPUAffinity` in its plan anyway. So the spec's top level and its
//! `process` are read here, field for field as oci-spec declares them (same
//! names, same defaults, same required fields), with oci-spec's own types
//! for everything below them. The affinity lists are checked as they are
//! read, as oci-spec checks them, by [`valid_cpu_list`], which takes ASCII
//! digits only (oci-spec's `\d` takes any Unicode digit; the kernel does
//! not). Tests compare the results and the errors with oci-spec's
//! `Deserialize` on full and on malformed configs.

use oci_spec::runtime::{ExecCPUAffinity, Process, Spec};

use super::SpecError;

/// Reads a bundle's `config.json` into a spec. When the bytes are not one,
/// the error says why in the config's own terms where serde's words would
/// not: a file that is not UTF-8 or not a JSON object, a missing
/// `ociVersion`, a capability name no kernel has (oci-spec says "no variant
/// for CAP_X (converted to X)"). runc 1.1.5 and crun 1.8.1 warn about or
/// skip an unknown capability; berth refuses what it cannot apply.
pub fn parse_config(bytes: &[u8]) -> Result<Spec, SpecError> {
    // JSON text is UTF-8 (RFC 8259 8.1); serde_json checks only the strings
    // it keeps, so a bad byte in an ignored field would pass unseen.
    let text = std::str::from_utf8(bytes).map_err(|e| SpecError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    // serde also reads a struct from a JSON array of its fields in order:
    // `[]` would be a spec with every field absent ("missing root").
    if !text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
    {
        return Err(explain_config(text).unwrap_or(SpecError::NotObject));
    }
    match serde_json::from_str::<raw::Spec>(text) {
        // oci-spec defaults an absent `ociVersion` to "".
        Ok(raw) if raw.version.is_empty() => Err(SpecError::Missing("ociVersion")),
        Ok(raw) => Ok(raw.into_spec()),
        // Only a failed parse pays for the second look.
        Err(e) => Err(explain_config(text).unwrap_or(SpecError::Json(e))),
    }
}

/// A clearer reason than serde's why `text` is not a spec, if there is one.
fn explain_config(text: &str) -> Option<SpecError> {
    let value = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => v,
        Err(e) => return Some(SpecError::Json(e)),
    };
    if !value.is_object() {
        return Some(SpecError::NotObject);
    }
    let caps = value.pointer("/process/capabilities")?;
    for set in [
        "bounding",
        "effective",
        "inheritable",
        "permitted",
        "ambient",
    ] {
        let Some(names) = caps.get(set).and_then(|v| v.as_array()) else {
            continue;
        };
        // A name that is not a string is left to serde's "invalid type".
        for name in names.iter().filter_map(|n| n.as_str()) {
            if crate::caps::cap_from_name(name).is_none() {
                return Some(SpecError::UnknownCapability {
                    set,
                    name: name.to_string(),
                });
            }
        }
    }
    None
}

/// The mirrors. Their Rust names are oci-spec's: serde puts the type's own
/// name in its messages (`expected struct Process with 16 elements`).
mod raw {
    use std::collections::HashMap;
    use std::path::PathBuf;

    use oci_spec::runtime::{
        Hooks, Linux, LinuxCapabilities, LinuxIOPriority, LinuxIdMapping, Mount, PosixRlimit, Root,
        Scheduler, Solaris, User, VM, Windows, ZOS,
    };
    use serde::{Deserialize, Deserializer};

    /// `Spec` as oci-spec 0.10 declares it, but for `process`.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct Spec {
        #[serde(default, rename = "ociVersion")]
        pub version: String,
        #[serde(default)]
        pub root: Option<Root>,
        #[serde(default)]
        pub mounts: Option<Vec<Mount>>,
        #[serde(default)]
        pub process: Option<Process>,
        #[serde(default)]
        pub hostname: Option<String>,
        #[serde(default)]
        pub domainname: Option<String>,
        #[serde(default)]
        pub hooks: Option<Hooks>,
        #[serde(default)]
        pub annotations: Option<HashMap<String, String>>,
        #[serde(default)]
        pub linux: Option<Linux>,
        #[serde(default)]
        pub solaris: Option<Solaris>,
        #[serde(default)]
        pub windows: Option<Windows>,
        #[serde(default)]
        pub vm: Option<VM>,
        #[serde(default)]
        pub zos: Option<ZOS>,
        // Not in the runtime spec; oci-spec reads them (deprecated), so do we.
        #[serde(default)]
        pub uid_mappings: Option<Vec<LinuxIdMapping>>,
        #[serde(default)]
        pub gid_mappings: Option<Vec<LinuxIdMapping>>,
    }

    /// `Process` as oci-spec 0.10 declares it, but for `execCPUAffinity`.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct Process {
        #[serde(default)]
        pub terminal: Option<bool>,
        #[serde(default)]
        pub console_size: Option<oci_spec::runtime::Box>,
        pub user: User,
        #[serde(default)]
        pub args: Option<Vec<String>>,
        #[serde(default)]
        pub command_line: Option<String>,
        #[serde(default)]
        pub env: Option<Vec<String>>,
        pub cwd: PathBuf,
        #[serde(default)]
        pub capabilities: Option<LinuxCapabilities>,
        #[serde(default)]
        pub rlimits: Option<Vec<PosixRlimit>>,
        #[serde(default)]
        pub no_new_privileges: Option<bool>,
        #[serde(default)]
        pub apparmor_profile: Option<String>,
        pub oom_score_adj: Option<i32>,
        #[serde(default)]
        pub selinux_label: Option<String>,
        #[serde(default)]
        pub io_priority: Option<LinuxIOPriority>,
        #[serde(default)]
        pub scheduler: Option<Scheduler>,
        #[serde(default, rename = "execCPUAffinity")]
        pub exec_cpu_affinity: Option<ExecCPUAffinity>,
    }

    /// `ExecCPUAffinity` as oci-spec 0.10 declares it; each list is checked
    /// as it is read, as oci-spec does, so it is the first error it meets.
    #[derive(Deserialize)]
    pub(super) struct ExecCPUAffinity {
        #[serde(default, deserialize_with = "cpu_list")]
        pub initial: Option<String>,
        #[serde(default, rename = "final", deserialize_with = "cpu_list")]
        pub cpu_affinity_final: Option<String>,
    }

    fn cpu_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let list = Option::<String>::deserialize(d)?;
        match list {
            Some(l) if !super::valid_cpu_list(&l) => Err(serde::de::Error::custom(format!(
                "execCPUAffinity: {l:?} is not a CPU list such as 0-3,7"
            ))),
            _ => Ok(list),
        }
    }
}

impl raw::Spec {
    #[allow(deprecated)] // the top-level id mappings, kept as oci-spec keeps them
    fn into_spec(self) -> Spec {
        let mut spec = Spec::default();
        spec.set_version(self.version)
            .set_root(self.root)
            .set_mounts(self.mounts)
            .set_process(self.process.map(raw::Process::into_process))
            .set_hostname(self.hostname)
            .set_domainname(self.domainname)
            .set_hooks(self.hooks)
            .set_annotations(self.annotations)
            .set_linux(self.linux)
            .set_solaris(self.solaris)
            .set_windows(self.windows)
            .set_vm(self.vm)
            .set_zos(self.zos)
            .set_uid_mappings(self.uid_mappings)
            .set_gid_mappings(self.gid_mappings);
        spec
    }
}

impl raw::Process {
    fn into_process(self) -> Process {
        let affinity = self.exec_cpu_affinity.map(|raw| {
            let mut affinity = ExecCPUAffinity::default();
            affinity
                .set_initial(raw.initial)
                .set_cpu_affinity_final(raw.cpu_affinity_final);
            affinity
        });
        let mut process = Process::default();
        process
            .set_terminal(self.terminal)
            .set_console_size(self.console_size)
            .set_user(self.user)
            .set_args(self.args)
            .set_command_line(self.command_line)
            .set_env(self.env)
            .set_cwd(self.cwd)
            .set_capabilities(self.capabilities)
            .set_rlimits(self.rlimits)
            .set_no_new_privileges(self.no_new_privileges)
            .set_apparmor_profile(self.apparmor_profile)
            .set_oom_score_adj(self.oom_score_adj)
            .set_selinux_label(self.selinux_label)
            .set_io_priority(self.io_priority)
            .set_scheduler(self.scheduler)
            .set_exec_cpu_affinity(affinity);
        process
    }
}

/// The runtime spec's CPU list: `N` or `N-M`, joined by commas (`0-3,7`).
/// oci-spec's pattern is `^(\d+(-\d+)?)(,\d+(-\d+)?)*$`; this takes ASCII
/// digits only, as the kernel's `cpulist_parse` does.
fn valid_cpu_list(list: &str) -> bool {
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    list.split(',').all(|item| match item.split_once('-') {
        Some((from, to)) => number(from) && number(to),
        None => number(item),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// oci-spec's own reading, which the regex-free one must match.
    fn upstream(text: &str) -> Result<Spec, String> {
        serde_json::from_str::<Spec>(text).map_err(|e| e.to_string())
    }

    fn ours(text: &str) -> Result<Spec, String> {
        serde_json::from_str::<raw::Spec>(text)
            .map(raw::Spec::into_spec)
            .map_err(|e| e.to_string())
    }

    /// Every field of the runtime spec that oci-spec 0.10 reads, set.
    const FULL: &str = r#"{
        "ociVersion": "1.2.0",
        "root": {"path": "rootfs", "readonly": true},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "type": "bind", "source": "/srv", "options": ["rbind", "ro"],
             "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]}
        ],
        "process": {
            "terminal": false,
            "consoleSize": {"height": 24, "width": 80},
            "user": {"uid": 1, "gid": 2, "umask": 18, "additionalGids": [3, 4], "username": "u"},
            "args": ["/bin/sh", "-c", "true"],
            "commandLine": "sh",
            "env": ["PATH=/bin", "A=b"],
            "cwd": "/work",
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
                             "inheritable": [], "permitted": ["CAP_KILL"], "ambient": []},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}],
            "noNewPrivileges": true,
            "apparmorProfile": "unconfined",
            "oomScoreAdj": -500,
            "selinuxLabel": "system_u:system_r:container_t:s0",
            "ioPriority": {"class": "IOPRIO_CLASS_BE", "priority": 4},
            "scheduler": {"policy": "SCHED_OTHER", "nice": 5},
            "execCPUAffinity": {"initial": "0-3,7", "final": "1"}
        },
        "hostname": "h",
        "domainname": "d",
        "hooks": {"prestart": [{"path": "/bin/true", "args": ["true"], "timeout": 3}],
                  "poststop": [{"path": "/bin/true"}]},
        "annotations": {"org.example": "x", "b": "c"},
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network", "path": "/proc/1/ns/net"}],
            "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
            "resources": {"memory": {"limit": 1048576}, "pids": {"limit": 10},
                          "devices": [{"allow": false, "access": "rwm"}]},
            "cgroupsPath": "/berth/x",
            "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
                        "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]},
            "maskedPaths": ["/proc/kcore"],
            "readonlyPaths": ["/proc/sys"],
            "sysctl": {"net.ipv4.ip_forward": "1"}
        },
        "solaris": {"milestone": "m"},
        "windows": {"layerFolders": ["C:\\l"]},
        "vm": {"kernel": {"path": "/k"}},
        "zos": {"namespaces": [{"type": "pid"}]},
        "uidMappings": [{"containerID": 0, "hostID": 1, "size": 1}],
        "x-unknown": {"ignored": [1, 2]}
    }"#;

    #[test]
    fn configs_read_as_oci_spec_reads_them() {
        let default = serde_json::to_string(&Spec::default()).unwrap();
        let minimal =
            r#"{"ociVersion": "1.0.2", "process": {"user": {"uid": 0, "gid": 0}, "cwd": "/"}}"#;
        let no_process = r#"{"ociVersion": "1.0.2", "root": {"path": "r"}}"#;
        let no_affinity = FULL.replace(
            r#""execCPUAffinity": {"initial": "0-3,7", "final": "1"}"#,
            r#""execCPUAffinity": {}"#,
        );
        for text in [FULL, &default, minimal, no_process, &no_affinity, "{}"] {
            let want = upstream(text).expect("oci-spec reads it");
            assert_eq!(ours(text).unwrap(), want, "{text}");
        }
        // FULL really sets what it means to: nothing fell back to a default.
        let full = ours(FULL).unwrap();
        let process = full.process().as_ref().unwrap();
        let affinity = process.exec_cpu_affinity().as_ref().unwrap();
        assert_eq!(affinity.cpu_affinity_final().as_deref(), Some("1"));
        assert_eq!(process.oom_score_adj(), Some(-500));
        assert!(full.zos().is_some() && full.vm().is_some());
        #[allow(deprecated)]
        let top_level = full.uid_mappings();
        assert_eq!(top_level.as_ref().map(Vec::len), Some(1));
    }

    #[test]
    fn malformed_configs_fail_with_oci_specs_words() {
        for bad in [
            r#"{"ociVersion": "1.0.2", "process": {"cwd": "/"}}"#,
            r#"{"ociVersion": "1.0.2", "process": {"user": {"uid": 0, "gid": 0}}}"#,
            r#"{"ociVersion": "1.0.2", "process": "sh"}"#,
            // serde reads a struct from an array too; its message names the type.
            r#"{"ociVersion": "1.0.2", "process": [null, null, {"uid": 0, "gid": 0}, null, null, null, "/"]}"#,
            r#"{"ociVersion": "1.0.2", "process": {"user": {"uid": 0, "gid": 0}, "cwd": "/", "args": [1]}}"#,
            r#"{"ociVersion": "1.0.2", "process": {"user": {"uid": 0, "gid": 0}, "cwd": "/", "oomScoreAdj": "x"}}"#,
            r#"{"ociVersion": "1.0.2", "process": {"user": {"uid": 0, "gid": 0}, "cwd": "/", "rlimits": [{"type": "RLIMIT_BOGUS", "hard": 1, "soft": 1}]}}"#,
            r#"{"ociVersion": "1.0.2", "process": {"user": {"uid": 0, "gid": 0}, "cwd": "/", "execCPUAffinity": {"initial": 3}}}"#,
            r#"{"ociVersion": "1.0.2", "root": {"path": 1}}"#,
            r#"{"ociVersion": 1}"#,
            r#"{"ociVersion": "1.0.2", "linux": {"namespaces": [{"type": "nope"}]}}"#,
        ] {
            let want = upstream(bad).expect_err(bad);
            assert_eq!(ours(bad).expect_err(bad), want, "{bad}");
        }
    }

    #[test]
    fn cpu_lists_are_checked_as_oci_spec_checks_them() {
        for (list, ok) in [
            ("0", true),
            ("0-3,7", true),
            ("12,3-4,5-6", true),
            ("", false),
            (",", false),
            ("1,", false),
            ("-1", false),
            ("1-", false),
            ("1-2-3", false),
            ("a", false),
            ("1 ,2", false),
        ] {
            assert_eq!(valid_cpu_list(list), ok, "{list:?}");
            let text = format!(
                r#"{{"ociVersion": "1.0.2", "process": {{"user": {{"uid": 0, "gid": 0}}, "cwd": "/", "execCPUAffinity": {{"final": "{list}"}}}}}}"#
            );
            match (ours(&text), upstream(&text)) {
                (Ok(spec), Ok(_)) => assert!(ok, "{list:?} read as {spec:?}"),
                // The same place, in berth's words.
                (Err(e), Err(theirs)) => {
                    assert!(!ok, "{list:?}: {e}");
                    let at = theirs.rsplit_once(" at line ").unwrap().1;
                    assert_eq!(
                        e,
                        format!(
                            "execCPUAffinity: {list:?} is not a CPU list such as 0-3,7 at line {at}"
                        )
                    );
                }
                (ours, theirs) => panic!("{list:?}: berth {ours:?}, oci-spec {theirs:?}"),
            }
        }
        // Checked as it is read, as oci-spec checks it: a bad list is the
        // first error, before one that comes later in the text.
        for text in [
            r#"{"ociVersion": "1.0.2", "process": {"user": {"uid": 0, "gid": 0}, "cwd": "/", "execCPUAffinity": {"final": "x", "initial": "y"}}, "root": {"path": 1}}"#,
            r#"{"ociVersion": "1.0.2", "process": {"user": {"uid": 0, "gid": 0}, "execCPUAffinity": {"initial": "x"}}}"#,
        ] {
            let theirs = upstream(text).unwrap_err();
            let e = ours(text).unwrap_err();
            assert_eq!(
                e.rsplit_once(" at line ").unwrap().1,
                theirs.rsplit_once(" at line ").unwrap().1,
                "{e} / {theirs}"
            );
            assert!(e.starts_with("execCPUAffinity: "), "{e}");
        }
        // oci-spec's `\d` takes any Unicode digit; the kernel and berth
        // take ASCII ones.
        assert!(!valid_cpu_list("١-٣"));
    }
}
