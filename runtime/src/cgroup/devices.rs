//! `linux.resources.devices` as an eBPF `BPF_PROG_TYPE_CGROUP_DEVICE`
//! program: cgroup v2 has no devices.allow/deny files, the kernel asks an
//! attached program on every open(2) and mknod(2) of a device node
//! (`Documentation/admin-guide/cgroup-v2.rst`, "Device controller").
//!
//! Semantics (chosen to give cgroup v1's results for the usual lists: a
//! deny-all first, then allowed devices, or an allow-all then denials):
//! the last rule that matches a request decides; nothing matching means
//! deny. A request is a device type, major, minor and a set of accesses
//! (r, w, m). An allow rule matches when it grants every requested access
//! (like a v1 exception); a deny rule matches when it denies any of them.
//! Type `a` and absent (or -1) major/minor are wildcards; type `u`
//! (unbuffered char) is `c`; `p` (FIFO) is refused, the device cgroup does
//! not see FIFOs.
//!
//! After the spec's rules come the devices the runtime spec requires in
//! every container (null, zero, full, random, urandom, tty, console, ptmx,
//! pts) with rwm, and mknod of any char or block device, as runc appends
//! them: the runtime creates `linux.devices` nodes from inside the cgroup.

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use super::CgroupError;
use crate::sys::bpf::BpfInsn;

/// `BPF_DEVCG_ACC_*` bits.
pub const ACC_MKNOD: u8 = 1;
pub const ACC_READ: u8 = 2;
pub const ACC_WRITE: u8 = 4;
const ACC_ALL: u8 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// `BPF_DEVCG_DEV_*` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevKind {
    Block = 1,
    Char = 2,
}

/// One device rule, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    pub allow: bool,
    /// `None`: any type.
    pub kind: Option<DevKind>,
    /// `None`: any major.
    pub major: Option<u32>,
    /// `None`: any minor.
    pub minor: Option<u32>,
    /// `ACC_*` bits, never empty.
    pub access: u8,
}

const fn allow_char(major: u32, minor: Option<u32>) -> DeviceRule {
    DeviceRule {
        allow: true,
        kind: Some(DevKind::Char),
        major: Some(major),
        minor,
        access: ACC_ALL,
    }
}

/// The rules appended after the spec's: mknod of anything, and the default
/// devices of the runtime spec (`config-linux.md#default-devices`).
pub const DEFAULT_RULES: [DeviceRule; 11] = [
    DeviceRule {
        allow: true,
        kind: Some(DevKind::Char),
        major: None,
        minor: None,
        access: ACC_MKNOD,
    },
    DeviceRule {
        allow: true,
        kind: Some(DevKind::Block),
        major: None,
        minor: None,
        access: ACC_MKNOD,
    },
    allow_char(1, Some(3)), // /dev/null
    allow_char(1, Some(5)), // /dev/zero
    allow_char(1, Some(7)), // /dev/full
    allow_char(1, Some(8)), // /dev/random
    allow_char(1, Some(9)), // /dev/urandom
    allow_char(5, Some(0)), // /dev/tty
    allow_char(5, Some(1)), // /dev/console
    allow_char(5, Some(2)), // /dev/ptmx
    allow_char(136, None),  // /dev/pts/*
];

fn invalid(index: usize, what: &str, value: impl ToString, reason: &str) -> CgroupError {
    CgroupError::Invalid {
        field: format!("devices[{index}].{what}"),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// Largest major and minor of a Linux `dev_t` (12 and 20 bits).
const MAX_MAJOR: i64 = (1 << 12) - 1;
const MAX_MINOR: i64 = (1 << 20) - 1;

fn number(index: usize, what: &str, v: Option<i64>, max: i64) -> Result<Option<u32>, CgroupError> {
    match v {
        None | Some(-1) => Ok(None),
        Some(n) if (0..=max).contains(&n) => Ok(Some(n as u32)),
        Some(n) => Err(invalid(
            index,
            what,
            n,
            &format!("must be -1 (any) or 0..={max}"),
        )),
    }
}

/// The validated rules of `linux.resources.devices` followed by
/// [`DEFAULT_RULES`].
pub fn rules_from_spec(devices: &[LinuxDeviceCgroup]) -> Result<Vec<DeviceRule>, CgroupError> {
    let mut rules = Vec::with_capacity(devices.len() + DEFAULT_RULES.len());
    for (i, d) in devices.iter().enumerate() {
        let kind = match d.typ().unwrap_or(LinuxDeviceType::A) {
            LinuxDeviceType::A => None,
            LinuxDeviceType::B => Some(DevKind::Block),
            LinuxDeviceType::C | LinuxDeviceType::U => Some(DevKind::Char),
            LinuxDeviceType::P => {
                return Err(CgroupError::Unsupported {
                    field: format!("devices[{i}].type"),
                    reason: "p: the device cgroup does not control FIFOs".to_string(),
                });
            }
        };
        let access = match d.access().as_deref() {
            None => ACC_ALL,
            Some(text) => {
                let mut bits = 0;
                for c in text.chars() {
                    bits |= match c {
                        'r' => ACC_READ,
                        'w' => ACC_WRITE,
                        'm' => ACC_MKNOD,
                        _ => return Err(invalid(i, "access", text, "only r, w and m")),
                    };
                }
                if bits == 0 {
                    return Err(invalid(i, "access", "\"\"", "empty"));
                }
                bits
            }
        };
        rules.push(DeviceRule {
            allow: d.allow(),
            kind,
            major: number(i, "major", d.major(), MAX_MAJOR)?,
            minor: number(i, "minor", d.minor(), MAX_MINOR)?,
            access,
        });
    }
    rules.extend(DEFAULT_RULES);
    Ok(rules)
}

impl DeviceRule {
    fn selects(&self, kind: DevKind, major: u32, minor: u32) -> bool {
        self.kind.is_none_or(|k| k == kind)
            && self.major.is_none_or(|m| m == major)
            && self.minor.is_none_or(|m| m == minor)
    }

    fn matches(&self, kind: DevKind, major: u32, minor: u32, access: u8) -> bool {
        self.selects(kind, major, minor)
            && if self.allow {
                access & !self.access == 0
            } else {
                access & self.access != 0
            }
    }

    /// Matches every request, so rules listed before it never decide.
    fn is_total(&self) -> bool {
        self.kind.is_none()
            && self.major.is_none()
            && self.minor.is_none()
            && self.access == ACC_ALL
    }
}

/// The decision the rules make for one request: the reference the eBPF
/// program implements.
pub fn evaluate(rules: &[DeviceRule], kind: DevKind, major: u32, minor: u32, access: u8) -> bool {
    rules
        .iter()
        .rev()
        .find(|r| r.matches(kind, major, minor, access))
        .is_some_and(|r| r.allow)
}

// eBPF opcodes (linux/bpf_common.h, linux/bpf.h).
const LDX_MEM_W: u8 = 0x01 | 0x60; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_AND_K: u8 = 0x04 | 0x50;
const ALU32_RSH_K: u8 = 0x04 | 0x70;
const ALU32_MOV_K: u8 = 0x04 | 0xb0;
const ALU32_MOV_X: u8 = 0x04 | 0xb0 | 0x08;
const JMP32_JEQ_K: u8 = 0x06 | 0x10;
const JMP32_JNE_K: u8 = 0x06 | 0x50;
const JMP_EXIT: u8 = 0x05 | 0x90;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
    BpfInsn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// Compiles the rules to a device program. Registers: r2 = type,
/// r3 = access, r4 = major, r5 = minor (from `struct bpf_cgroup_dev_ctx`:
/// `access_type = access << 16 | type`, `major`, `minor`); r0 = verdict.
pub fn device_program(rules: &[DeviceRule]) -> Vec<BpfInsn> {
    let mut prog = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    // Last rule first: the first match in this order decides.
    for rule in rules.iter().rev() {
        // Jumps with off = i16::MIN are patched to "skip to the next rule".
        let mut block = Vec::new();
        let skip = i16::MIN;
        if let Some(kind) = rule.kind {
            block.push(insn(JMP32_JNE_K, 2, 0, skip, kind as i32));
        }
        if rule.access != ACC_ALL {
            block.push(insn(ALU32_MOV_X, 0, 3, 0, 0));
            if rule.allow {
                // Any requested access outside the rule's: no match.
                block.push(insn(
                    ALU32_AND_K,
                    0,
                    0,
                    0,
                    i32::from(!rule.access & ACC_ALL),
                ));
                block.push(insn(JMP32_JNE_K, 0, 0, skip, 0));
            } else {
                // None of the requested accesses is denied: no match.
                block.push(insn(ALU32_AND_K, 0, 0, 0, i32::from(rule.access)));
                block.push(insn(JMP32_JEQ_K, 0, 0, skip, 0));
            }
        }
        if let Some(major) = rule.major {
            block.push(insn(JMP32_JNE_K, 4, 0, skip, major as i32));
        }
        if let Some(minor) = rule.minor {
            block.push(insn(JMP32_JNE_K, 5, 0, skip, minor as i32));
        }
        block.push(insn(ALU32_MOV_K, 0, 0, 0, i32::from(rule.allow)));
        block.push(insn(JMP_EXIT, 0, 0, 0, 0));
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.off == skip {
                // Blocks are at most 8 instructions long.
                ins.off = (len - i - 1) as i16;
            }
        }
        prog.extend(block);
        // The verifier refuses unreachable instructions: stop after a rule
        // that decides every request.
        if rule.is_total() {
            return prog;
        }
    }
    prog.push(insn(ALU32_MOV_K, 0, 0, 0, 0));
    prog.push(insn(JMP_EXIT, 0, 0, 0, 0));
    prog
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a device program like the kernel would, after checking what the
    /// verifier checks for this subset: known opcodes, jumps in range,
    /// every instruction reachable, no falling off the end.
    fn run(prog: &[BpfInsn], kind: DevKind, major: u32, minor: u32, access: u8) -> bool {
        let ctx = [(u32::from(access) << 16) | kind as u32, major, minor];
        let mut reg = [0u32; 11];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let (dst, src) = (usize::from(i.regs & 0xf), usize::from(i.regs >> 4));
            pc += 1;
            let jump = |taken: bool| if taken { i.off as usize } else { 0 };
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(src, 1, "loads only from the context");
                    reg[dst] = ctx[i.off as usize / 4];
                }
                ALU32_AND_K => reg[dst] &= i.imm as u32,
                ALU32_RSH_K => reg[dst] >>= i.imm as u32,
                ALU32_MOV_K => reg[dst] = i.imm as u32,
                ALU32_MOV_X => reg[dst] = reg[src],
                JMP32_JEQ_K => pc += jump(reg[dst] == i.imm as u32),
                JMP32_JNE_K => pc += jump(reg[dst] != i.imm as u32),
                JMP_EXIT => return reg[0] == 1,
                other => panic!("opcode {other:#x}"),
            }
        }
    }

    fn check_cfg(prog: &[BpfInsn]) {
        let mut reached = vec![false; prog.len()];
        let mut todo = vec![0usize];
        while let Some(pc) = todo.pop() {
            assert!(pc < prog.len(), "falls off the end");
            if std::mem::replace(&mut reached[pc], true) {
                continue;
            }
            let i = prog[pc];
            match i.code {
                JMP_EXIT => {}
                JMP32_JEQ_K | JMP32_JNE_K => {
                    assert!(i.off >= 0);
                    todo.push(pc + 1);
                    todo.push(pc + 1 + i.off as usize);
                }
                _ => todo.push(pc + 1),
            }
        }
        assert!(reached.iter().all(|r| *r), "unreachable instructions");
    }

    fn spec(json: &str) -> Vec<DeviceRule> {
        let devices: Vec<LinuxDeviceCgroup> = serde_json::from_str(json).unwrap();
        rules_from_spec(&devices).unwrap()
    }

    const R: u8 = ACC_READ;
    const W: u8 = ACC_WRITE;
    const M: u8 = ACC_MKNOD;

    /// Program and reference agree on every combination of a grid of
    /// requests.
    fn agree(rules: &[DeviceRule]) {
        let prog = device_program(rules);
        check_cfg(&prog);
        for kind in [DevKind::Char, DevKind::Block] {
            for major in [0, 1, 5, 10, 136, 4095] {
                for minor in [0, 1, 3, 7, 11, 1_048_575] {
                    for access in 1..=ACC_ALL {
                        assert_eq!(
                            run(&prog, kind, major, minor, access),
                            evaluate(rules, kind, major, minor, access),
                            "{kind:?} {major}:{minor} access {access:#b} rules {rules:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn runc_spec_default_denies_all_but_the_default_devices() {
        let rules = spec(r#"[{"allow":false,"access":"rwm"}]"#);
        agree(&rules);
        let prog = device_program(&rules);
        let c = DevKind::Char;
        for (major, minor) in [
            (1, 3),
            (1, 5),
            (1, 7),
            (1, 8),
            (1, 9),
            (5, 0),
            (5, 1),
            (5, 2),
            (136, 4),
        ] {
            assert!(run(&prog, c, major, minor, R | W), "{major}:{minor}");
        }
        assert!(!run(&prog, c, 1, 11, R), "kmsg");
        assert!(!run(&prog, DevKind::Block, 8, 0, R), "sda");
        // mknod of anything is allowed, using it is not.
        assert!(run(&prog, DevKind::Block, 8, 0, M));
        assert!(!run(&prog, DevKind::Block, 8, 0, M | R));
    }

    #[test]
    fn last_matching_rule_wins() {
        let rules = spec(
            r#"[{"allow":false,"access":"rwm"},
                {"allow":true,"type":"c","major":1,"minor":11,"access":"rw"},
                {"allow":false,"type":"c","major":1,"minor":11,"access":"w"}]"#,
        );
        agree(&rules);
        let prog = device_program(&rules);
        assert!(run(&prog, DevKind::Char, 1, 11, R));
        assert!(!run(&prog, DevKind::Char, 1, 11, W));
        assert!(!run(&prog, DevKind::Char, 1, 11, R | W));
        assert!(!run(&prog, DevKind::Char, 1, 12, R));
    }

    #[test]
    fn allow_rule_must_cover_every_requested_access() {
        let rules = spec(
            r#"[{"allow":false,"access":"rwm"},{"allow":true,"type":"b","major":8,"access":"r"}]"#,
        );
        agree(&rules);
        let prog = device_program(&rules);
        assert!(run(&prog, DevKind::Block, 8, 1, R));
        assert!(!run(&prog, DevKind::Block, 8, 1, R | W));
        assert!(!run(&prog, DevKind::Char, 8, 1, R));
    }

    #[test]
    fn allow_all_then_deny_some() {
        let rules = spec(
            r#"[{"allow":true,"access":"rwm"},{"allow":false,"type":"c","major":10,"access":"w"}]"#,
        );
        agree(&rules);
        let prog = device_program(&rules);
        assert!(run(&prog, DevKind::Block, 8, 0, R | W));
        assert!(run(&prog, DevKind::Char, 10, 200, R));
        assert!(!run(&prog, DevKind::Char, 10, 200, R | W));
    }

    #[test]
    fn wildcards_and_unbuffered_char() {
        let rules = spec(
            r#"[{"allow":false,"access":"rwm"},
                {"allow":true,"type":"u","major":-1,"minor":7,"access":"r"},
                {"allow":true,"type":"a","major":4,"access":"rwm"}]"#,
        );
        agree(&rules);
        let prog = device_program(&rules);
        assert!(run(&prog, DevKind::Char, 200, 7, R));
        assert!(!run(&prog, DevKind::Block, 200, 7, R));
        assert!(run(&prog, DevKind::Block, 4, 1, R | W | M));
    }

    #[test]
    fn empty_list_gets_only_the_defaults() {
        let rules = rules_from_spec(&[]).unwrap();
        assert_eq!(rules, DEFAULT_RULES);
        agree(&rules);
    }

    #[test]
    fn total_rule_cuts_the_program_short() {
        let rules = spec(
            r#"[{"allow":true,"type":"c","major":1,"minor":11},{"allow":true,"access":"rwm"}]"#,
        );
        let prog = device_program(&rules);
        check_cfg(&prog);
        agree(&rules);
        // Prologue, the default rules, the total allow: the earlier rule
        // cannot decide anything and is not emitted.
        let full = device_program(&spec(r#"[{"allow":true,"access":"rwm"}]"#));
        assert_eq!(prog, full);
    }

    /// Program and reference agree on many pseudo-random rule lists
    /// (a fixed-seed generator, so failures reproduce).
    #[test]
    fn random_rule_lists_agree_with_the_reference() {
        let mut seed: u64 = 0x5eed_1234_abcd_0001;
        let mut next = move |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for _ in 0..300 {
            let len = next(6) as usize;
            let rules: Vec<DeviceRule> = (0..len)
                .map(|_| DeviceRule {
                    allow: next(2) == 1,
                    kind: [None, Some(DevKind::Char), Some(DevKind::Block)][next(3) as usize],
                    major: [None, Some(1), Some(5), Some(136)][next(4) as usize],
                    minor: [None, Some(0), Some(3), Some(11)][next(4) as usize],
                    access: 1 + next(7) as u8,
                })
                .collect();
            agree(&rules);
            let mut with_defaults = rules.clone();
            with_defaults.extend(DEFAULT_RULES);
            agree(&with_defaults);
        }
    }

    #[test]
    fn bad_rules_are_refused() {
        for (json, want) in [
            (
                r#"[{"allow":true,"type":"p"}]"#,
                "unsupported: linux.resources.devices[0].type",
            ),
            (
                r#"[{"allow":true,"access":"rx"}]"#,
                "devices[0].access: invalid value rx",
            ),
            (
                r#"[{"allow":true,"access":""}]"#,
                "devices[0].access: invalid value",
            ),
            (
                r#"[{"allow":true,"major":4096}]"#,
                "devices[0].major: invalid value 4096",
            ),
            (
                r#"[{"allow":true,"minor":-2}]"#,
                "devices[0].minor: invalid value -2",
            ),
        ] {
            let devices: Vec<LinuxDeviceCgroup> = serde_json::from_str(json).unwrap();
            let got = rules_from_spec(&devices).unwrap_err().to_string();
            assert!(got.contains(want), "{json}: {got}");
        }
    }
}
