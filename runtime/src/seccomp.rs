//! `linux.seccomp` compiled to one classic BPF filter, in pure Rust (no
//! libseccomp): rules on a call's number alone are compiled here, argument
//! rules by the `seccompiler` crate.
//!
//! # How the spec maps onto the filter
//!
//! A segment of the filter has one on-match and one default action (as a
//! seccompiler filter has), while the spec gives every rule its own action.
//! The program is therefore a chain of segments in one BPF program,
//! evaluated in order:
//!
//! 1. a dispatch on the audit arch: x86_64 calls go to the x86_64 chain,
//!    i386 calls (`int 0x80`, 32-bit programs) to the i386 chain when
//!    `SCMP_ARCH_X86` is listed, and anything else (including x32 calls,
//!    `nr >= 0x40000000` under the x86_64 arch) gets
//!    `SECCOMP_RET_KILL_PROCESS`. Each chain holds the same rules, with the
//!    numbers of its own system call table; then, per chain:
//! 2. one segment per distinct non-allow action (KILL_PROCESS, KILL_THREAD,
//!    TRAP, ERRNO(n), TRACE(n), LOG), most restrictive first, in the kernel's
//!    precedence order for stacked filters (seccomp(2), "Filter return
//!    values"). A segment returns its action when one of its rules matches,
//!    and otherwise jumps to the next segment (its `ret ALLOW` instructions
//!    are rewritten into jumps to its end);
//! 3. the default segment: every rule whose action is not the default
//!    returns ALLOW, anything else the default action. With an ALLOW default
//!    it is replaced by a plain `ret ALLOW`.
//!
//! So when several rules with different actions match one call, the most
//! restrictive action wins, as if each action were its own stacked filter;
//! between two ERRNO (or TRACE) rules with different values, the one listed
//! first in the spec wins.
//!
//! # Compatibility choices, all as runc/crun do with libseccomp
//!
//! * Syscall names that no covered table has (`arm_fadvise64_64`, names
//!   from newer kernels than the tables, `_llseek` when only x86_64 is
//!   covered) are skipped: Docker's profile lists syscalls of every
//!   architecture. A name one table has and the other lacks (`socketcall`,
//!   `mmap2`; `uretprobe`) applies where it exists.
//!   [`SeccompProgram::skipped_syscalls`] lists the skipped names so the
//!   caller can log them. A name that is not a syscall name at all (empty,
//!   characters outside `[a-z0-9_]`) is an error.
//! * A rule whose action equals the default action is skipped (libseccomp
//!   refuses it, runc drops it).
//! * ERRNO and TRACE without `errnoRet` return EPERM.
//! * `SCMP_ACT_KILL` is `SCMP_ACT_KILL_THREAD`, as in libseccomp.
//! * The `args` of one rule are ANDed; when two of them name the same
//!   argument index, each becomes a rule of its own (ORed), as runc does.
//!   Comparisons are on the full 64-bit argument, like libseccomp.
//!   `SCMP_CMP_MASKED_EQ` is `(arg & value) == valueTwo`. In the i386
//!   chain only the low 32 bits are compared (of the argument, the value
//!   and the mask), as libseccomp does for 32-bit architectures: an i386
//!   argument is a 32-bit register.
//! * `architectures` must include `SCMP_ARCH_X86_64` (or `SCMP_ARCH_NATIVE`).
//!   `SCMP_ARCH_X86` adds the i386 chain; without it i386 calls are killed,
//!   as libseccomp does for an architecture missing from a filter (its "bad
//!   arch" action). An absent or empty list means x86_64 only.
//!   `SCMP_ARCH_X32` is accepted, but x32 calls are always killed: the x32
//!   ABI is compiled out of Debian's kernels and most others
//!   (`CONFIG_X86_X32_ABI`), where such a call could only fail with ENOSYS.
//!   Other architectures in the list cannot occur on an x86_64 host.
//!
//! Not supported, refused with `unsupported: linux.seccomp.<field>`:
//! `SCMP_ACT_NOTIFY`, `listenerPath`, `listenerMetadata` and the
//! `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` flag (all need a notify
//! listener), and any host architecture but x86_64.

use std::collections::BTreeMap;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, LinuxSyscall,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::sys;

mod default_profile;
mod i386_syscalls;
mod x86_64_syscalls;

pub use default_profile::default_profile;

/// BPF_MAXINSNS: the most instructions the kernel takes in one filter.
pub const MAX_INSTRUCTIONS: usize = 4096;

/// x32 system calls are x86_64 calls with this bit set in the number
/// (`__X32_SYSCALL_BIT`).
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// `AUDIT_ARCH_X86_64` (`EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`).
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// `AUDIT_ARCH_I386` (`EM_386 | __AUDIT_ARCH_LE`).
const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;
/// Offsets in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
/// BPF_LD | BPF_W | BPF_ABS (0x00 | 0x00 | 0x20).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JA: u16 = 0x05;
const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10;
const BPF_JMP_JGE_K: u16 = 0x05 | 0x30;
const BPF_RET_K: u16 = 0x06;

/// A seccomp section of a spec that cannot be compiled.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("unsupported: linux.seccomp.{field} ({detail})")]
    Unsupported { field: &'static str, detail: String },
    #[error("linux.seccomp.syscalls[{rule}]: names is empty")]
    EmptyNames { rule: usize },
    #[error("linux.seccomp.syscalls[{rule}]: {name:?} is not a system call name")]
    BadSyscallName { rule: usize, name: String },
    #[error("linux.seccomp.syscalls[{rule}].args: index {index} is out of range 0..=5")]
    ArgIndex { rule: usize, index: usize },
    #[error(
        "linux.seccomp.syscalls[{rule}].args: valueTwo {value_two} is only meaningful with SCMP_CMP_MASKED_EQ, not {op}"
    )]
    ValueTwo {
        rule: usize,
        value_two: u64,
        op: LinuxSeccompOperator,
    },
    #[error(
        "linux.seccomp.{field}: errnoRet is only meaningful with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not {action}"
    )]
    ErrnoRetWithoutErrno {
        field: String,
        action: LinuxSeccompAction,
    },
    #[error("linux.seccomp.{field}: errnoRet {errno} is out of range 0..=4095")]
    ErrnoRetRange { field: String, errno: u32 },
    #[error("compile seccomp {what}")]
    Compile {
        what: String,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error(
        "compile seccomp {what}: seccompiler's filter does not start with the expected arch check"
    )]
    Prologue { what: String },
    #[error("seccomp filter has {len} instructions, the kernel takes at most {MAX_INSTRUCTIONS}")]
    TooLarge { len: usize },
    #[error("build the default seccomp profile")]
    DefaultProfile {
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("install seccomp filter")]
    Install {
        #[source]
        source: std::io::Error,
    },
}

/// A compiled filter, ready to install in the container's process.
#[derive(Debug, Clone)]
pub struct SeccompProgram {
    instructions: Vec<libc::sock_filter>,
    flags: u32,
    skipped_syscalls: Vec<String>,
}

impl SeccompProgram {
    /// The BPF instructions; empty when the spec allows everything and there
    /// is nothing to install.
    pub fn instructions(&self) -> &[libc::sock_filter] {
        &self.instructions
    }

    /// `SECCOMP_FILTER_FLAG_*` bits passed to seccomp(2).
    pub fn flags(&self) -> u32 {
        self.flags
    }

    /// Syscall names of the spec that x86_64 does not have, left out of the
    /// filter (see the module documentation).
    pub fn skipped_syscalls(&self) -> &[String] {
        &self.skipped_syscalls
    }

    /// Installs the filter on the calling thread.
    ///
    /// Needs no_new_privs or CAP_SYS_ADMIN. It does not allocate, so it is
    /// safe in a child forked from a multi-threaded process; the program was
    /// built before the fork. A program with no instructions installs
    /// nothing.
    pub fn install(&self) -> Result<(), SeccompError> {
        if self.instructions.is_empty() {
            return Ok(());
        }
        sys::bpf::seccomp_set_mode_filter(&self.instructions, self.flags)
            .map_err(|source| SeccompError::Install { source })
    }
}

/// The x86_64 number of a system call name.
pub fn syscall_number(name: &str) -> Option<u32> {
    Abi::X86_64.number(name)
}

/// The i386 number of a system call name (`int 0x80`, 32-bit programs).
pub fn i386_syscall_number(name: &str) -> Option<u32> {
    Abi::I386.number(name)
}

/// Every x86_64 system call name this module knows, sorted.
pub fn syscall_names() -> impl Iterator<Item = &'static str> {
    x86_64_syscalls::X86_64_SYSCALLS
        .iter()
        .map(|(name, _)| *name)
}

/// A system call ABI a filter can cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Abi {
    X86_64,
    I386,
}

impl Abi {
    fn audit_arch(self) -> u32 {
        match self {
            Abi::X86_64 => AUDIT_ARCH_X86_64,
            Abi::I386 => AUDIT_ARCH_I386,
        }
    }

    fn number(self, name: &str) -> Option<u32> {
        let table = match self {
            Abi::X86_64 => x86_64_syscalls::X86_64_SYSCALLS,
            Abi::I386 => i386_syscalls::I386_SYSCALLS,
        };
        table
            .binary_search_by(|(known, _)| (*known).cmp(name))
            .ok()
            .map(|i| table[i].1)
    }

    /// How much of a 64-bit `seccomp_data` argument the ABI's calls use.
    fn arg_len(self) -> SeccompCmpArgLen {
        match self {
            Abi::X86_64 => SeccompCmpArgLen::Qword,
            Abi::I386 => SeccompCmpArgLen::Dword,
        }
    }
}

/// The rules of one action: per syscall number, either unconditional or a
/// list of alternative argument rules.
type RuleMap = BTreeMap<u32, Option<Vec<SeccompRule>>>;

/// One entry of `linux.seccomp.syscalls`, checked, whose action is not the
/// default one.
struct Entry<'a> {
    /// Its index in `linux.seccomp.syscalls`, for errors.
    index: usize,
    action: SeccompAction,
    syscall: &'a LinuxSyscall,
}

/// Compiles a spec's `linux.seccomp` to a BPF program.
pub fn compile(seccomp: &LinuxSeccomp) -> Result<SeccompProgram, SeccompError> {
    if !cfg!(target_arch = "x86_64") {
        return Err(SeccompError::Unsupported {
            field: "architectures",
            detail: format!(
                "berth compiles seccomp filters for x86_64 hosts only, this is {}",
                std::env::consts::ARCH
            ),
        });
    }
    let abis = abis_of(seccomp.architectures().as_deref())?;
    let flags = filter_flags(seccomp.flags().as_deref())?;
    if let Some(path) = seccomp.listener_path() {
        return Err(SeccompError::Unsupported {
            field: "listenerPath",
            detail: format!(
                "seccomp notify listener {} is not implemented",
                path.display()
            ),
        });
    }
    if seccomp.listener_metadata().is_some() {
        return Err(SeccompError::Unsupported {
            field: "listenerMetadata",
            detail: "seccomp notify listeners are not implemented".to_string(),
        });
    }

    let default = action_of(
        seccomp.default_action(),
        seccomp.default_errno_ret(),
        "defaultAction",
    )?;
    let mut entries = Vec::new();
    for (i, syscall) in seccomp.syscalls().iter().flatten().enumerate() {
        let action = action_of(
            syscall.action(),
            syscall.errno_ret(),
            &format!("syscalls[{i}]"),
        )?;
        check_names(i, syscall.names())?;
        // Checked for every entry, even one the default action makes moot.
        rules_of(i, syscall, Abi::X86_64)?;
        if action != default {
            entries.push(Entry {
                index: i,
                action,
                syscall,
            });
        }
    }
    let mut skipped: Vec<String> = seccomp
        .syscalls()
        .iter()
        .flatten()
        .flat_map(|s| s.names())
        .filter(|name| abis.iter().all(|abi| abi.number(name).is_none()))
        .cloned()
        .collect();
    skipped.sort();
    skipped.dedup();

    // Allowing everything needs no filter at all.
    if default == SeccompAction::Allow && entries.iter().all(|e| e.action == SeccompAction::Allow) {
        return Ok(SeccompProgram {
            instructions: Vec::new(),
            flags,
            skipped_syscalls: skipped,
        });
    }

    let chains = abis
        .iter()
        .map(|&abi| chain(abi, &entries, &default))
        .collect::<Result<Vec<_>, _>>()?;
    let program = assemble(&abis, chains);
    if program.len() > MAX_INSTRUCTIONS {
        return Err(SeccompError::TooLarge { len: program.len() });
    }
    Ok(SeccompProgram {
        instructions: program
            .into_iter()
            .map(|i| libc::sock_filter {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect(),
        flags,
        skipped_syscalls: skipped,
    })
}

/// The filter for one ABI's calls: one segment per non-allow action, most
/// restrictive first, then the default segment. It ends in returns only.
fn chain(
    abi: Abi,
    entries: &[Entry<'_>],
    default: &SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    // Rules grouped by action, in order of first appearance.
    let mut groups: Vec<(SeccompAction, RuleMap)> = Vec::new();
    for entry in entries {
        let numbers: Vec<u32> = (entry.syscall.names().iter())
            .filter_map(|n| abi.number(n))
            .collect();
        if numbers.is_empty() {
            continue;
        }
        let rules = rules_of(entry.index, entry.syscall, abi)?;
        let g = match groups.iter().position(|(a, _)| *a == entry.action) {
            Some(g) => g,
            None => {
                groups.push((entry.action.clone(), RuleMap::new()));
                groups.len() - 1
            }
        };
        for nr in numbers {
            merge_rules(&mut groups[g].1, nr, rules.clone());
        }
    }
    groups.sort_by_key(|(action, _)| precedence(action));
    let mut program = BpfProgram::new();
    let mut allowed = RuleMap::new();
    for (action, map) in groups {
        for (nr, rules) in &map {
            merge_rules(&mut allowed, *nr, rules.clone());
        }
        if action == SeccompAction::Allow {
            continue;
        }
        let segment = build(map, SeccompAction::Allow, action)?;
        program.extend(fall_through_on_allow(segment));
    }
    if *default == SeccompAction::Allow {
        program.push(stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW));
    } else {
        program.extend(build(allowed, default.clone(), SeccompAction::Allow)?);
    }
    Ok(program)
}

/// The ABIs `architectures` asks to filter; x86_64 always comes first.
fn abis_of(archs: Option<&[Arch]>) -> Result<Vec<Abi>, SeccompError> {
    let Some(archs) = archs.filter(|a| !a.is_empty()) else {
        return Ok(vec![Abi::X86_64]);
    };
    if !archs
        .iter()
        .any(|a| matches!(a, Arch::ScmpArchX86_64 | Arch::ScmpArchNative))
    {
        return Err(SeccompError::Unsupported {
            field: "architectures",
            detail: format!(
                "{archs:?} does not include SCMP_ARCH_X86_64; berth filters x86_64 hosts, whose own calls are x86_64 calls"
            ),
        });
    }
    let mut abis = vec![Abi::X86_64];
    if archs.contains(&Arch::ScmpArchX86) {
        abis.push(Abi::I386);
    }
    Ok(abis)
}

fn filter_flags(flags: Option<&[LinuxSeccompFilterFlag]>) -> Result<u32, SeccompError> {
    let mut bits = 0u32;
    for flag in flags.into_iter().flatten() {
        bits |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                return Err(SeccompError::Unsupported {
                    field: "flags",
                    detail: "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV needs a notify listener, which is not implemented".to_string(),
                });
            }
        } as u32;
    }
    Ok(bits)
}

fn action_of(
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    field: &str,
) -> Result<SeccompAction, SeccompError> {
    let errno = || -> Result<u32, SeccompError> {
        match errno_ret {
            None => Ok(libc::EPERM as u32),
            // The kernel clamps ERRNO data to MAX_ERRNO (4095); a larger
            // value would not come back as written.
            Some(errno) if errno > 4095 => Err(SeccompError::ErrnoRetRange {
                field: field.to_string(),
                errno,
            }),
            Some(errno) => Ok(errno),
        }
    };
    let no_errno = |a: SeccompAction| match errno_ret {
        None => Ok(a),
        Some(_) => Err(SeccompError::ErrnoRetWithoutErrno {
            field: field.to_string(),
            action,
        }),
    };
    match action {
        LinuxSeccompAction::ScmpActAllow => no_errno(SeccompAction::Allow),
        LinuxSeccompAction::ScmpActErrno => Ok(SeccompAction::Errno(errno()?)),
        LinuxSeccompAction::ScmpActTrace => Ok(SeccompAction::Trace(errno()?)),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            no_errno(SeccompAction::KillThread)
        }
        LinuxSeccompAction::ScmpActKillProcess => no_errno(SeccompAction::KillProcess),
        LinuxSeccompAction::ScmpActTrap => no_errno(SeccompAction::Trap),
        LinuxSeccompAction::ScmpActLog => no_errno(SeccompAction::Log),
        LinuxSeccompAction::ScmpActNotify => Err(SeccompError::Unsupported {
            field: if field == "defaultAction" {
                "defaultAction"
            } else {
                "syscalls.action"
            },
            detail: format!(
                "{field}: SCMP_ACT_NOTIFY needs a notify listener, which is not implemented"
            ),
        }),
    }
}

/// The kernel's precedence of actions from stacked filters, most restrictive
/// first (seccomp(2)).
fn precedence(action: &SeccompAction) -> u8 {
    match action {
        SeccompAction::KillProcess => 0,
        SeccompAction::KillThread => 1,
        SeccompAction::Trap => 2,
        SeccompAction::Errno(_) => 3,
        SeccompAction::Trace(_) => 4,
        SeccompAction::Log => 5,
        SeccompAction::Allow => 6,
    }
}

/// The argument rules of one spec entry; `None` matches any arguments.
fn rules_of(
    rule: usize,
    syscall: &LinuxSyscall,
    abi: Abi,
) -> Result<Option<Vec<SeccompRule>>, SeccompError> {
    let args = match syscall.args() {
        Some(args) if !args.is_empty() => args,
        _ => return Ok(None),
    };
    let conditions = args
        .iter()
        .map(|arg| condition_of(rule, arg, abi))
        .collect::<Result<Vec<_>, _>>()?;
    let mut indexes: Vec<usize> = args.iter().map(|a| a.index()).collect();
    indexes.sort_unstable();
    let repeated = indexes.windows(2).any(|w| w[0] == w[1]);
    let compile_err = |source| SeccompError::Compile {
        what: format!("linux.seccomp.syscalls[{rule}].args"),
        source,
    };
    let rules = if repeated {
        // runc: conditions on the same argument become alternatives.
        conditions
            .into_iter()
            .map(|c| SeccompRule::new(vec![c]).map_err(compile_err))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        vec![SeccompRule::new(conditions).map_err(compile_err)?]
    };
    Ok(Some(rules))
}

fn condition_of(
    rule: usize,
    arg: &LinuxSeccompArg,
    abi: Abi,
) -> Result<SeccompCondition, SeccompError> {
    let index = arg.index();
    if index > 5 {
        return Err(SeccompError::ArgIndex { rule, index });
    }
    let value_two = arg.value_two().unwrap_or(0);
    // An i386 argument is 32 bits wide: compare the low halves only.
    let width = |v: u64| match abi.arg_len() {
        SeccompCmpArgLen::Dword => v & u64::from(u32::MAX),
        SeccompCmpArgLen::Qword => v,
    };
    let op = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => SeccompCmpOp::Ne,
        LinuxSeccompOperator::ScmpCmpLt => SeccompCmpOp::Lt,
        LinuxSeccompOperator::ScmpCmpLe => SeccompCmpOp::Le,
        LinuxSeccompOperator::ScmpCmpEq => SeccompCmpOp::Eq,
        LinuxSeccompOperator::ScmpCmpGe => SeccompCmpOp::Ge,
        LinuxSeccompOperator::ScmpCmpGt => SeccompCmpOp::Gt,
        LinuxSeccompOperator::ScmpCmpMaskedEq => SeccompCmpOp::MaskedEq(width(arg.value())),
    };
    let value = if let SeccompCmpOp::MaskedEq(_) = op {
        width(value_two)
    } else if value_two != 0 {
        // Docker's profiles write "valueTwo": 0 on every argument, so only
        // a non-zero value is a mistake.
        return Err(SeccompError::ValueTwo {
            rule,
            value_two,
            op: arg.op(),
        });
    } else {
        width(arg.value())
    };
    // index <= 5 was checked above.
    SeccompCondition::new(index as u8, abi.arg_len(), op, value).map_err(|source| {
        SeccompError::Compile {
            what: format!("linux.seccomp.syscalls[{rule}].args"),
            source,
        }
    })
}

fn check_names(rule: usize, names: &[String]) -> Result<(), SeccompError> {
    if names.is_empty() {
        return Err(SeccompError::EmptyNames { rule });
    }
    for name in names {
        let well_formed = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !well_formed {
            return Err(SeccompError::BadSyscallName {
                rule,
                name: name.clone(),
            });
        }
    }
    Ok(())
}

/// Adds `rules` for `nr`: an unconditional entry absorbs any conditional
/// ones.
fn merge_rules(map: &mut RuleMap, nr: u32, rules: Option<Vec<SeccompRule>>) {
    match (map.get_mut(&nr), rules) {
        (None, rules) => {
            map.insert(nr, rules);
        }
        (Some(existing), None) => *existing = None,
        (Some(None), Some(_)) => {}
        (Some(Some(existing)), Some(mut more)) => existing.append(&mut more),
    }
}

/// One segment: `on_match` for a call the map's rules match, `mismatch`
/// otherwise. It starts by loading the call's number and ends in returns.
///
/// Calls matched on their number alone (most of a Docker-style allowlist)
/// cost one instruction each: runs of `jeq` that jump to one shared return.
/// seccompiler spends five on each, which put Docker's profile with its i386
/// chain over the kernel's 4096. Calls with argument rules are left to
/// seccompiler.
fn build(
    map: RuleMap,
    mismatch: SeccompAction,
    on_match: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    /// A conditional jump reaches 255 instructions ahead.
    const RUN: usize = 255;
    let what = format!("filter segment for {on_match:?} (default {mismatch:?})");
    let mut numbers = Vec::new();
    let mut conditional = BTreeMap::new();
    for (nr, rules) in map {
        match rules {
            None => numbers.push(nr),
            Some(rules) => {
                conditional.insert(i64::from(nr), rules);
            }
        }
    }
    let mut segment = vec![stmt(BPF_LD_W_ABS, DATA_NR)];
    for run in numbers.chunks(RUN) {
        for (i, nr) in run.iter().enumerate() {
            // To the `ret` after the run's last `jeq` and its `ja`.
            let to_ret = (run.len() - i) as u8;
            segment.push(jump(BPF_JMP_JEQ_K, *nr, to_ret, 0));
        }
        segment.push(stmt(BPF_JMP_JA, 1));
        segment.push(stmt(BPF_RET_K, u32::from(on_match.clone())));
    }
    if conditional.is_empty() {
        segment.push(stmt(BPF_RET_K, u32::from(mismatch)));
        return Ok(segment);
    }
    let compile_err = |source| SeccompError::Compile {
        what: what.clone(),
        source,
    };
    let filter = SeccompFilter::new(conditional, mismatch, on_match, TargetArch::x86_64)
        .map_err(compile_err)?;
    let mut rules = BpfProgram::try_from(filter).map_err(compile_err)?;
    // seccompiler starts every filter with its own check that the arch is
    // x86_64; the dispatch in front of the chains has done that, and it
    // would kill the i386 chain's calls.
    let prologue = [
        stmt(BPF_LD_W_ABS, DATA_ARCH),
        jump(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
    ];
    if !rules.starts_with(&prologue) {
        return Err(SeccompError::Prologue { what });
    }
    // What follows reloads the number itself.
    segment.extend(rules.drain(prologue.len()..));
    Ok(segment)
}

fn stmt(code: u16, k: u32) -> seccompiler::sock_filter {
    seccompiler::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> seccompiler::sock_filter {
    seccompiler::sock_filter { code, jt, jf, k }
}

/// The whole program: a dispatch on the audit arch that sends each call
/// to the chain of its ABI and kills calls of any other, then the x86_64
/// block ([`x32_guard`] and its chain), then the other chains.
fn assemble(abis: &[Abi], chains: Vec<BpfProgram>) -> BpfProgram {
    let others = abis.len() - 1;
    // ld arch; jeq x86_64; (jeq arch; ja chain) per other ABI; ret kill
    let header = 2 + 2 * others + 1;
    let mut blocks: Vec<BpfProgram> = Vec::with_capacity(abis.len());
    for (abi, chain) in abis.iter().zip(chains) {
        let mut block = if *abi == Abi::X86_64 {
            x32_guard()
        } else {
            BpfProgram::new()
        };
        block.extend(chain);
        blocks.push(block);
    }
    let mut program = vec![
        stmt(BPF_LD_W_ABS, DATA_ARCH),
        // x86_64's block comes right after the header; at most 2 * 1 + 1
        // instructions to jump over, well within a conditional jump's reach.
        jump(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, (header - 2) as u8, 0),
    ];
    let mut start = header + blocks[0].len();
    for (abi, block) in abis.iter().zip(&blocks).skip(1) {
        program.push(jump(BPF_JMP_JEQ_K, abi.audit_arch(), 0, 1));
        // A chain may be thousands of instructions away: `ja` takes 32 bits.
        let next = program.len() + 1;
        program.push(stmt(BPF_JMP_JA, (start - next) as u32));
        start += block.len();
    }
    program.push(stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS));
    debug_assert_eq!(program.len(), header);
    program.extend(blocks.into_iter().flatten());
    program
}

/// Kills x32 calls (`nr >= __X32_SYSCALL_BIT` under the x86_64 arch), which
/// the x86_64 rules do not describe.
fn x32_guard() -> BpfProgram {
    vec![
        stmt(BPF_LD_W_ABS, DATA_NR),
        jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
    ]
}

/// Turns a segment's `ret ALLOW` (its mismatch result; its match action is
/// never ALLOW) into a jump past the segment, so evaluation continues with
/// the next one.
fn fall_through_on_allow(mut segment: BpfProgram) -> BpfProgram {
    let len = segment.len();
    for (i, ins) in segment.iter_mut().enumerate() {
        if ins.code == BPF_RET_K && ins.k == libc::SECCOMP_RET_ALLOW {
            *ins = stmt(BPF_JMP_JA, (len - i - 1) as u32);
        }
    }
    segment
}

#[cfg(test)]
mod tests;
