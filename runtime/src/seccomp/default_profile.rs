//! berth's default seccomp profile, for containers whose spec comes from
//! an image rather than from a hand-written config (what containerd and
//! Kubernetes call `RuntimeDefault`).
//!
//! A container made from an image runs as root with a few capabilities.
//! Whatever needs a capability it lacks (mounting, loading modules, setting
//! the clock, rebooting) the kernel refuses already, so the profile does not
//! list it. What it does deny are kernel interfaces a process reaches with
//! no capability at all, that a service has no use for, and that keep
//! turning up in kernel exploits:
//!
//! * new user namespaces (`unshare` or `clone` with `CLONE_NEWUSER`): inside
//!   one a process holds every capability over new mount, network and other
//!   namespaces, which exposes all of their code to it. `clone3` takes its
//!   flags in memory a filter cannot read, so it fails with ENOSYS, and C
//!   libraries fall back to `clone`, whose flags the filter sees.
//! * kernel keyrings (`keyctl`, `add_key`, `request_key`): not namespaced,
//!   shared with the host.
//! * io_uring (`io_uring_setup`, `_enter`, `_register`): a second system
//!   call interface that seccomp cannot filter.
//! * `bpf`, `perf_event_open` and `userfaultfd`, each allowed again when
//!   the container holds the capability that stands for it (as Docker's
//!   profile does): CAP_BPF or CAP_SYS_ADMIN, CAP_PERFMON or CAP_SYS_ADMIN,
//!   CAP_SYS_PTRACE. With CAP_SYS_ADMIN user namespaces are allowed too.
//!
//! Denied calls fail with EPERM, as if a capability were missing; nothing
//! is killed. Everything else is allowed, for x86_64 and i386 programs.

use std::collections::HashSet;

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};

use super::SeccompError;

/// The profile for a container that holds `caps` (its permitted set).
pub fn default_profile(caps: &HashSet<Capability>) -> Result<LinuxSeccomp, SeccompError> {
    let has = |any: &[Capability]| any.iter().any(|c| caps.contains(c));
    let mut denied = vec![
        "add_key",
        "io_uring_enter",
        "io_uring_register",
        "io_uring_setup",
        "keyctl",
        "request_key",
    ];
    if !has(&[Capability::Bpf, Capability::SysAdmin]) {
        denied.push("bpf");
    }
    if !has(&[Capability::Perfmon, Capability::SysAdmin]) {
        denied.push("perf_event_open");
    }
    if !has(&[Capability::SysPtrace]) {
        denied.push("userfaultfd");
    }
    let mut syscalls = vec![rule(&denied, libc::EPERM, None)];
    if !has(&[Capability::SysAdmin]) {
        let newuser = libc::CLONE_NEWUSER as u64;
        let flags = LinuxSeccompArgBuilder::default()
            .index(0usize)
            .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
            .value(newuser)
            .value_two(newuser)
            .build()
            .map_err(|source| SeccompError::DefaultProfile { source })?;
        syscalls.push(rule(&["clone", "unshare"], libc::EPERM, Some(flags)));
        syscalls.push(rule(&["clone3"], libc::ENOSYS, None));
    }
    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(LinuxSeccompAction::ScmpActAllow);
    profile.set_architectures(Some(vec![
        Arch::ScmpArchX86_64,
        Arch::ScmpArchX86,
        Arch::ScmpArchX32,
    ]));
    profile.set_syscalls(Some(syscalls));
    Ok(profile)
}

/// `names` fail with `errno`, when `arg` matches if one is given.
fn rule(names: &[&str], errno: i32, arg: Option<LinuxSeccompArg>) -> LinuxSyscall {
    let mut rule = LinuxSyscall::default();
    rule.set_names(names.iter().map(|n| n.to_string()).collect());
    rule.set_action(LinuxSeccompAction::ScmpActErrno);
    rule.set_errno_ret(Some(errno as u32));
    rule.set_args(arg.map(|a| vec![a]));
    rule
}
