//! Translation tests: compiled programs are run through a small classic-BPF
//! interpreter over synthetic `seccomp_data`, so every assertion is about
//! what the kernel would decide, not about instruction layout.

use super::*;
use oci_spec::runtime::Capability;

const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const KILL_PROCESS: u32 = libc::SECCOMP_RET_KILL_PROCESS;
const KILL_THREAD: u32 = libc::SECCOMP_RET_KILL_THREAD;
const TRAP: u32 = libc::SECCOMP_RET_TRAP;
const LOG: u32 = libc::SECCOMP_RET_LOG;

fn errno(n: u32) -> u32 {
    libc::SECCOMP_RET_ERRNO | n
}

fn trace(n: u32) -> u32 {
    libc::SECCOMP_RET_TRACE | n
}

/// Runs `prog` on one system call the way the kernel's classic BPF
/// interpreter would; panics on anything the kernel's checker would refuse
/// (unknown opcode, jump or load out of range, falling off the end).
fn run_on(prog: &[libc::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    assert!(!prog.is_empty() && prog.len() <= MAX_INSTRUCTIONS);
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_ne_bytes());
    data[4..8].copy_from_slice(&arch.to_ne_bytes());
    for (i, arg) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_ne_bytes());
    }
    let mut a: u32 = 0;
    let mut pc = 0usize;
    loop {
        let ins = prog
            .get(pc)
            .unwrap_or_else(|| panic!("pc {pc} past the end"));
        pc += 1;
        let k = ins.k;
        let cond = |taken: bool| usize::from(if taken { ins.jt } else { ins.jf });
        match ins.code {
            0x20 => {
                let k = k as usize;
                assert!(
                    k.is_multiple_of(4) && k + 4 <= data.len(),
                    "load offset {k}"
                );
                a = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap());
            }
            0x05 => pc += k as usize,
            0x15 => pc += cond(a == k),
            0x25 => pc += cond(a > k),
            0x35 => pc += cond(a >= k),
            0x45 => pc += cond(a & k != 0),
            0x54 => a &= k,
            0x06 => return k,
            other => panic!("opcode {other:#x} at {}", pc - 1),
        }
    }
}

fn run(prog: &SeccompProgram, name: &str, args: [u64; 6]) -> u32 {
    let nr = syscall_number(name).unwrap_or_else(|| panic!("no syscall {name}"));
    run_on(prog.instructions(), AUDIT_ARCH_X86_64, nr, args)
}

fn call(prog: &SeccompProgram, name: &str) -> u32 {
    run(prog, name, [0; 6])
}

fn arg0(prog: &SeccompProgram, name: &str, v: u64) -> u32 {
    run(prog, name, [v, 0, 0, 0, 0, 0])
}

fn compile_json(json: &str) -> Result<SeccompProgram, SeccompError> {
    let spec: LinuxSeccomp = serde_json::from_str(json).expect("valid LinuxSeccomp json");
    compile(&spec)
}

fn ok(json: &str) -> SeccompProgram {
    compile_json(json).unwrap()
}

fn err(json: &str) -> String {
    compile_json(json).unwrap_err().to_string()
}

#[test]
fn table_is_sorted_and_unique() {
    let t = x86_64_syscalls::X86_64_SYSCALLS;
    assert!(t.windows(2).all(|w| w[0].0 < w[1].0), "sorted by name");
    let mut numbers: Vec<u32> = t.iter().map(|e| e.1).collect();
    numbers.sort_unstable();
    assert!(numbers.windows(2).all(|w| w[0] != w[1]), "unique numbers");
}

#[test]
fn i386_table_is_sorted_and_unique() {
    let t = i386_syscalls::I386_SYSCALLS;
    assert!(t.windows(2).all(|w| w[0].0 < w[1].0), "sorted by name");
    let mut numbers: Vec<u32> = t.iter().map(|e| e.1).collect();
    numbers.sort_unstable();
    assert!(numbers.windows(2).all(|w| w[0] != w[1]), "unique numbers");
}

/// `(name, number)` of every `#define __NR_name number` in a uapi header.
fn header_numbers(path: &str) -> Vec<(String, u32)> {
    let header = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!("read {path}: {e}; linux-libc-dev missing: apt-get install linux-libc-dev")
    });
    let numbers: Vec<(String, u32)> = header
        .lines()
        .filter_map(|line| {
            let mut w = line.split_whitespace();
            let (Some("#define"), Some(name), Some(value)) = (w.next(), w.next(), w.next()) else {
                return None;
            };
            Some((name.strip_prefix("__NR_")?.to_string(), value.parse().ok()?))
        })
        .collect();
    assert!(
        numbers.len() > 300,
        "only {} syscalls in {path}",
        numbers.len()
    );
    numbers
}

#[test]
fn i386_table_matches_installed_header() {
    for (name, n) in header_numbers("/usr/include/x86_64-linux-gnu/asm/unistd_32.h") {
        assert_eq!(i386_syscall_number(&name), Some(n), "{name}");
    }
    // Since Linux 5.1 new calls have one number on every architecture.
    for (name, n) in x86_64_syscalls::X86_64_SYSCALLS {
        if *n >= 424 {
            assert_eq!(i386_syscall_number(name), Some(*n), "{name}");
        }
    }
    assert_eq!(i386_syscall_number("uretprobe"), None);
    assert_eq!(i386_syscall_number("arch_prctl"), Some(384));
    assert_eq!(syscall_number("arch_prctl"), Some(158));
}

#[test]
fn table_matches_installed_header_and_libc() {
    for (name, n) in header_numbers("/usr/include/x86_64-linux-gnu/asm/unistd_64.h") {
        assert_eq!(syscall_number(&name), Some(n), "{name}");
    }
    for (name, n) in [
        ("read", libc::SYS_read),
        ("mkdir", libc::SYS_mkdir),
        ("clone3", libc::SYS_clone3),
        ("fchmodat2", libc::SYS_fchmodat2),
        ("mseal", libc::SYS_mseal),
    ] {
        assert_eq!(syscall_number(name).map(i64::from), Some(n), "{name}");
    }
    assert_eq!(syscall_number("_llseek"), None);
    assert_eq!(syscall_number("nosuchcall"), None);
}

#[test]
fn denylist_returns_errno_ret_and_allows_the_rest() {
    let p = ok(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
        {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}"#);
    assert_eq!(call(&p, "mkdir"), errno(38));
    assert_eq!(call(&p, "mkdirat"), errno(38));
    assert_eq!(call(&p, "read"), ALLOW);
    assert_eq!(call(&p, "execve"), ALLOW);
}

#[test]
fn allowlist_denies_with_eperm_by_default() {
    let p = ok(r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
        {"names":["read","write","exit_group"],"action":"SCMP_ACT_ALLOW"}]}"#);
    assert_eq!(call(&p, "read"), ALLOW);
    assert_eq!(call(&p, "exit_group"), ALLOW);
    assert_eq!(call(&p, "mkdir"), errno(libc::EPERM as u32));
    // A number no rule names, past the table.
    assert_eq!(
        run_on(p.instructions(), AUDIT_ARCH_X86_64, 1000, [0; 6]),
        errno(1)
    );
}

#[test]
fn default_errno_ret_is_used() {
    let p = ok(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,"syscalls":[
        {"names":["read"],"action":"SCMP_ACT_ALLOW"}]}"#,
    );
    assert_eq!(call(&p, "mkdir"), errno(38));
    assert_eq!(call(&p, "read"), ALLOW);
}

#[test]
fn every_action_is_translated() {
    let p = ok(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
        {"names":["mkdir"],"action":"SCMP_ACT_KILL"},
        {"names":["rmdir"],"action":"SCMP_ACT_KILL_THREAD"},
        {"names":["unlink"],"action":"SCMP_ACT_KILL_PROCESS"},
        {"names":["chmod"],"action":"SCMP_ACT_TRAP"},
        {"names":["chown"],"action":"SCMP_ACT_LOG"},
        {"names":["link"],"action":"SCMP_ACT_TRACE","errnoRet":7},
        {"names":["symlink"],"action":"SCMP_ACT_TRACE"},
        {"names":["rename"],"action":"SCMP_ACT_ERRNO"}]}"#);
    assert_eq!(call(&p, "mkdir"), KILL_THREAD);
    assert_eq!(call(&p, "rmdir"), KILL_THREAD);
    assert_eq!(call(&p, "unlink"), KILL_PROCESS);
    assert_eq!(call(&p, "chmod"), TRAP);
    assert_eq!(call(&p, "chown"), LOG);
    assert_eq!(call(&p, "link"), trace(7));
    assert_eq!(call(&p, "symlink"), trace(1));
    assert_eq!(call(&p, "rename"), errno(1));
    assert_eq!(call(&p, "getpid"), ALLOW);
}

#[test]
fn kill_default_action() {
    let p = ok(r#"{"defaultAction":"SCMP_ACT_KILL_PROCESS","syscalls":[
        {"names":["getpid"],"action":"SCMP_ACT_ALLOW"},
        {"names":["getppid"],"action":"SCMP_ACT_ERRNO","errnoRet":5}]}"#);
    assert_eq!(call(&p, "getpid"), ALLOW);
    assert_eq!(call(&p, "getppid"), errno(5));
    assert_eq!(call(&p, "mkdir"), KILL_PROCESS);
}

#[test]
fn comparison_operators_on_64_bit_values() {
    let big: u64 = 0x1_0000_0005;
    let p = ok(&format!(
        r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
        {{"names":["read"],"action":"SCMP_ACT_ERRNO","errnoRet":1,"args":[{{"index":0,"value":{big},"op":"SCMP_CMP_EQ"}}]}},
        {{"names":["write"],"action":"SCMP_ACT_ERRNO","errnoRet":2,"args":[{{"index":0,"value":{big},"op":"SCMP_CMP_NE"}}]}},
        {{"names":["open"],"action":"SCMP_ACT_ERRNO","errnoRet":3,"args":[{{"index":0,"value":{big},"op":"SCMP_CMP_LT"}}]}},
        {{"names":["close"],"action":"SCMP_ACT_ERRNO","errnoRet":4,"args":[{{"index":0,"value":{big},"op":"SCMP_CMP_LE"}}]}},
        {{"names":["stat"],"action":"SCMP_ACT_ERRNO","errnoRet":5,"args":[{{"index":0,"value":{big},"op":"SCMP_CMP_GT"}}]}},
        {{"names":["fstat"],"action":"SCMP_ACT_ERRNO","errnoRet":6,"args":[{{"index":0,"value":{big},"op":"SCMP_CMP_GE"}}]}}
        ]}}"#
    ));
    // Values around `big`, including ones that only differ in the high word.
    let probes = [0u64, 5, big - 1, big, big + 1, 0x2_0000_0000, u64::MAX];
    for v in probes {
        let expect = |hit: bool, n: u32| if hit { errno(n) } else { ALLOW };
        assert_eq!(arg0(&p, "read", v), expect(v == big, 1), "EQ {v:#x}");
        assert_eq!(arg0(&p, "write", v), expect(v != big, 2), "NE {v:#x}");
        assert_eq!(arg0(&p, "open", v), expect(v < big, 3), "LT {v:#x}");
        assert_eq!(arg0(&p, "close", v), expect(v <= big, 4), "LE {v:#x}");
        assert_eq!(arg0(&p, "stat", v), expect(v > big, 5), "GT {v:#x}");
        assert_eq!(arg0(&p, "fstat", v), expect(v >= big, 6), "GE {v:#x}");
    }
}

#[test]
fn masked_eq_compares_arg_and_value_with_value_two() {
    // Docker's clone rule: deny when any namespace flag is set.
    let mask: u64 = 0x7e02_0000;
    let p = ok(&format!(
        r#"{{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
        {{"names":["clone"],"action":"SCMP_ACT_ALLOW","args":[{{"index":0,"value":{mask},"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}}]}}]}}"#
    ));
    assert_eq!(arg0(&p, "clone", 0x11), ALLOW); // SIGCHLD only
    assert_eq!(arg0(&p, "clone", 0x1_0000_0011), ALLOW); // high bits outside the mask
    assert_eq!(arg0(&p, "clone", libc::CLONE_NEWNS as u64 | 0x11), errno(1));
    assert_eq!(arg0(&p, "clone", libc::CLONE_NEWUSER as u64), errno(1));
    let q = ok(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
        {"names":["ioctl"],"action":"SCMP_ACT_ERRNO","args":[{"index":1,"value":255,"valueTwo":18,"op":"SCMP_CMP_MASKED_EQ"}]}]}"#);
    assert_eq!(run(&q, "ioctl", [0, 0x5412, 0, 0, 0, 0]), errno(1));
    assert_eq!(run(&q, "ioctl", [0, 0x5413, 0, 0, 0, 0]), ALLOW);
}

#[test]
fn args_on_different_indexes_are_anded() {
    let p = ok(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
        {"names":["kill"],"action":"SCMP_ACT_ERRNO","args":[
            {"index":0,"value":1,"op":"SCMP_CMP_EQ"},
            {"index":1,"value":9,"op":"SCMP_CMP_EQ"}]}]}"#);
    assert_eq!(run(&p, "kill", [1, 9, 0, 0, 0, 0]), errno(1));
    assert_eq!(run(&p, "kill", [1, 15, 0, 0, 0, 0]), ALLOW);
    assert_eq!(run(&p, "kill", [2, 9, 0, 0, 0, 0]), ALLOW);
}

#[test]
fn args_on_the_same_index_are_alternatives_like_runc() {
    let p = ok(r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
        {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[
            {"index":0,"value":0,"op":"SCMP_CMP_EQ"},
            {"index":0,"value":8,"op":"SCMP_CMP_EQ"},
            {"index":0,"value":4294967295,"op":"SCMP_CMP_EQ"}]}]}"#);
    for v in [0u64, 8, 0xffff_ffff] {
        assert_eq!(arg0(&p, "personality", v), ALLOW, "{v}");
    }
    assert_eq!(arg0(&p, "personality", 1), errno(1));
}

#[test]
fn all_six_argument_indexes() {
    for index in 0..6usize {
        let p = ok(&format!(
            r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {{"names":["mmap"],"action":"SCMP_ACT_ERRNO","args":[{{"index":{index},"value":77,"op":"SCMP_CMP_EQ"}}]}}]}}"#
        ));
        let mut args = [0u64; 6];
        args[index] = 77;
        assert_eq!(run(&p, "mmap", args), errno(1), "index {index}");
        assert_eq!(run(&p, "mmap", [77; 6].map(|v| v + 1)), ALLOW);
    }
}

#[test]
fn conditional_and_unconditional_rules_for_one_syscall() {
    // The unconditional entry wins over the conditional one of the same
    // action, in either order.
    for order in [0, 1] {
        let (a, b) = (
            r#"{"names":["dup"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":3,"op":"SCMP_CMP_EQ"}]}"#,
            r#"{"names":["dup"],"action":"SCMP_ACT_ALLOW"}"#,
        );
        let rules = if order == 0 { [a, b] } else { [b, a] };
        let p = ok(&format!(
            r#"{{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{},{}]}}"#,
            rules[0], rules[1]
        ));
        assert_eq!(arg0(&p, "dup", 3), ALLOW);
        assert_eq!(arg0(&p, "dup", 4), ALLOW);
    }
}

#[test]
fn most_restrictive_action_wins_on_overlap() {
    let p = ok(r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
        {"names":["clone","kill"],"action":"SCMP_ACT_ALLOW"},
        {"names":["clone"],"action":"SCMP_ACT_LOG","args":[{"index":0,"value":1,"op":"SCMP_CMP_EQ"}]},
        {"names":["clone"],"action":"SCMP_ACT_KILL_PROCESS","args":[{"index":0,"value":5,"op":"SCMP_CMP_EQ"}]},
        {"names":["clone"],"action":"SCMP_ACT_ERRNO","errnoRet":38,"args":[{"index":0,"value":5,"op":"SCMP_CMP_GE"}]},
        {"names":["kill"],"action":"SCMP_ACT_ERRNO","errnoRet":3,"args":[{"index":1,"value":9,"op":"SCMP_CMP_EQ"}]},
        {"names":["kill"],"action":"SCMP_ACT_ERRNO","errnoRet":4,"args":[{"index":1,"value":9,"op":"SCMP_CMP_EQ"}]}]}"#);
    assert_eq!(arg0(&p, "clone", 0), ALLOW);
    assert_eq!(arg0(&p, "clone", 1), LOG);
    assert_eq!(arg0(&p, "clone", 5), KILL_PROCESS);
    assert_eq!(arg0(&p, "clone", 6), errno(38));
    // Same class: the rule listed first wins.
    assert_eq!(run(&p, "kill", [1, 9, 0, 0, 0, 0]), errno(3));
    assert_eq!(run(&p, "kill", [1, 15, 0, 0, 0, 0]), ALLOW);
    assert_eq!(call(&p, "mkdir"), errno(1));
}

#[test]
fn rule_with_the_default_action_is_skipped() {
    let p = ok(r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
        {"names":["read"],"action":"SCMP_ACT_ALLOW"},
        {"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#);
    assert_eq!(call(&p, "mkdir"), errno(1));
    assert_eq!(call(&p, "read"), ALLOW);
    // An errno different from the default's is a different action.
    let q = ok(r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
        {"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}"#);
    assert_eq!(call(&q, "mkdir"), errno(38));
    assert_eq!(call(&q, "read"), errno(1));
}

/// Runs `prog` on the i386 call `name` (as `int 0x80` makes it).
fn run_i386(prog: &SeccompProgram, name: &str, args: [u64; 6]) -> u32 {
    let nr = i386_syscall_number(name).unwrap_or_else(|| panic!("no i386 syscall {name}"));
    run_on(prog.instructions(), AUDIT_ARCH_I386, nr, args)
}

const X86_AND_X86_64: &str = r#""architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86"]"#;

#[test]
fn i386_calls_are_killed_unless_scmp_arch_x86_is_listed() {
    for archs in [
        "",
        r#""architectures":[],"#,
        r#""architectures":["SCMP_ARCH_X86_64"],"#,
        r#""architectures":["SCMP_ARCH_NATIVE","SCMP_ARCH_X32"],"#,
    ] {
        for rules in [
            r#""defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]"#,
            r#""defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["mkdir","read"],"action":"SCMP_ACT_ALLOW"}]"#,
        ] {
            let p = ok(&format!("{{{archs}{rules}}}"));
            assert_eq!(
                run_i386(&p, "mkdir", [0; 6]),
                KILL_PROCESS,
                "{archs}{rules}"
            );
            assert_eq!(run_i386(&p, "read", [0; 6]), KILL_PROCESS, "{archs}{rules}");
            // The x86_64 rules still hold.
            assert_eq!(call(&p, "read"), ALLOW);
            assert_ne!(call(&p, "mkdir"), KILL_PROCESS);
        }
    }
}

#[test]
fn x32_calls_are_killed_even_when_listed() {
    for archs in [
        r#"["SCMP_ARCH_X86_64"]"#,
        r#"["SCMP_ARCH_X86_64","SCMP_ARCH_X86","SCMP_ARCH_X32"]"#,
    ] {
        let p = ok(&format!(
            r#"{{"defaultAction":"SCMP_ACT_ALLOW","architectures":{archs},
            "syscalls":[{{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}}]}}"#
        ));
        let x32_read = X32_SYSCALL_BIT | syscall_number("read").unwrap();
        assert_eq!(
            run_on(p.instructions(), AUDIT_ARCH_X86_64, x32_read, [0; 6]),
            KILL_PROCESS,
            "{archs}"
        );
        assert_eq!(call(&p, "read"), ALLOW);
    }
}

#[test]
fn other_audit_arches_are_killed() {
    let p = ok(&format!(
        r#"{{"defaultAction":"SCMP_ACT_ALLOW",{X86_AND_X86_64},
        "syscalls":[{{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}}]}}"#
    ));
    // AUDIT_ARCH_AARCH64, AUDIT_ARCH_ARM, 0.
    for arch in [183 | 0xc000_0000, 40 | 0x4000_0000, 0] {
        assert_eq!(run_on(p.instructions(), arch, 39, [0; 6]), KILL_PROCESS);
    }
}

#[test]
fn i386_calls_follow_the_rules_by_their_i386_numbers() {
    let p = ok(&format!(
        r#"{{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,{X86_AND_X86_64},"syscalls":[
        {{"names":["read","write","mkdir","socketcall","_llseek","uretprobe"],"action":"SCMP_ACT_ALLOW"}},
        {{"names":["mkdir"],"action":"SCMP_ACT_KILL_PROCESS","args":[{{"index":1,"value":448,"op":"SCMP_CMP_EQ"}}]}},
        {{"names":["getuid","getuid32"],"action":"SCMP_ACT_ERRNO","errnoRet":33}}]}}"#
    ));
    // i386 numbers differ from x86_64's: read 3/0, write 4/1, mkdir 39/83.
    assert_eq!(i386_syscall_number("mkdir"), Some(39));
    assert_eq!(run_i386(&p, "read", [0; 6]), ALLOW);
    assert_eq!(run_i386(&p, "write", [0; 6]), ALLOW);
    assert_eq!(run_i386(&p, "mkdir", [0, 0o755, 0, 0, 0, 0]), ALLOW);
    assert_eq!(run_i386(&p, "mkdir", [0, 0o700, 0, 0, 0, 0]), KILL_PROCESS);
    // Names only i386 has apply to i386 calls.
    assert_eq!(run_i386(&p, "socketcall", [0; 6]), ALLOW);
    assert_eq!(run_i386(&p, "_llseek", [0; 6]), ALLOW);
    assert_eq!(run_i386(&p, "getuid32", [0; 6]), errno(33));
    assert_eq!(run_i386(&p, "getuid", [0; 6]), errno(33));
    // The default action for i386 calls nobody listed.
    assert_eq!(run_i386(&p, "chdir", [0; 6]), errno(38));
    // An i386 number that means something else on x86_64 is not confused:
    // 3 is i386 read and x86_64 close.
    assert_eq!(run_on(p.instructions(), AUDIT_ARCH_I386, 3, [0; 6]), ALLOW);
    assert_eq!(call(&p, "close"), errno(38));
    // x86_64 keeps its own numbers, and its name uretprobe.
    assert_eq!(call(&p, "read"), ALLOW);
    assert_eq!(call(&p, "uretprobe"), ALLOW);
    assert_eq!(arg0(&p, "mkdir", 0), ALLOW);
    assert_eq!(run(&p, "mkdir", [0, 0o700, 0, 0, 0, 0]), KILL_PROCESS);
    assert_eq!(call(&p, "getuid"), errno(33));
    assert!(
        p.skipped_syscalls().is_empty(),
        "{:?}",
        p.skipped_syscalls()
    );
}

#[test]
fn i386_arguments_are_compared_on_their_low_32_bits() {
    let p = ok(&format!(
        r#"{{"defaultAction":"SCMP_ACT_ALLOW",{X86_AND_X86_64},"syscalls":[
        {{"names":["personality"],"action":"SCMP_ACT_ERRNO","errnoRet":1,"args":[{{"index":0,"value":18446744073709551615,"op":"SCMP_CMP_EQ"}}]}},
        {{"names":["clone"],"action":"SCMP_ACT_ERRNO","errnoRet":2,"args":[{{"index":0,"value":18446744071562067968,"valueTwo":6442450944,"op":"SCMP_CMP_MASKED_EQ"}}]}},
        {{"names":["umask"],"action":"SCMP_ACT_ERRNO","errnoRet":3,"args":[{{"index":0,"value":4294967296,"op":"SCMP_CMP_GT"}}]}}]}}"#
    ));
    // -1 as a 64-bit value is 0xffffffff for a 32-bit argument.
    assert_eq!(
        run_i386(&p, "personality", [0xffff_ffff, 0, 0, 0, 0, 0]),
        errno(1)
    );
    assert_eq!(arg0(&p, "personality", 0xffff_ffff), ALLOW);
    assert_eq!(arg0(&p, "personality", u64::MAX), errno(1));
    // The low halves of the mask and of valueTwo are both 0x80000000; in
    // 64 bits valueTwo has bit 32 set, which the mask can never give.
    assert_eq!(
        run_i386(&p, "clone", [0x8000_0011, 0, 0, 0, 0, 0]),
        errno(2)
    );
    assert_eq!(run_i386(&p, "clone", [0x11, 0, 0, 0, 0, 0]), ALLOW);
    assert_eq!(arg0(&p, "clone", 0x8000_0011), ALLOW);
    // 2^32 has a zero low half: every 32-bit value is greater.
    assert_eq!(run_i386(&p, "umask", [0o22, 0, 0, 0, 0, 0]), errno(3));
    assert_eq!(arg0(&p, "umask", 0o22), ALLOW);
}

#[test]
fn names_are_skipped_only_when_no_covered_table_has_them() {
    let json = |archs: &str| {
        format!(
            r#"{{"defaultAction":"SCMP_ACT_ERRNO",{archs}"syscalls":[
            {{"names":["read","_llseek","socketcall","arm_fadvise64_64","uretprobe"],"action":"SCMP_ACT_ALLOW"}}]}}"#
        )
    };
    let x86_64 = ok(&json(""));
    assert_eq!(
        x86_64.skipped_syscalls(),
        ["_llseek", "arm_fadvise64_64", "socketcall"]
    );
    let both = ok(&json(&format!("{X86_AND_X86_64},")));
    assert_eq!(both.skipped_syscalls(), ["arm_fadvise64_64"]);
}

#[test]
fn allow_everything_installs_nothing() {
    let p = ok(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#);
    assert!(p.instructions().is_empty());
    p.install().unwrap();
    let p = ok(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW"}]}"#,
    );
    assert!(p.instructions().is_empty());
}

#[test]
fn unknown_names_are_skipped_and_reported() {
    let p = ok(r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
        {"names":["read","_llseek","arm_fadvise64_64","futex_frobnicate","_llseek"],"action":"SCMP_ACT_ALLOW"},
        {"names":["s390_pci_mmio_read"],"action":"SCMP_ACT_ALLOW"}]}"#);
    assert_eq!(
        p.skipped_syscalls(),
        [
            "_llseek",
            "arm_fadvise64_64",
            "futex_frobnicate",
            "s390_pci_mmio_read"
        ]
    );
    assert_eq!(call(&p, "read"), ALLOW);
    assert_eq!(call(&p, "write"), errno(1));
}

#[test]
fn malformed_rules_are_errors() {
    let cases = [
        (
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":[],"action":"SCMP_ACT_ALLOW"}]}"#,
            "linux.seccomp.syscalls[0]: names is empty",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW"},{"names":["Read"],"action":"SCMP_ACT_ALLOW"}]}"#,
            "linux.seccomp.syscalls[1]: \"Read\" is not a system call name",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":[""],"action":"SCMP_ACT_ALLOW"}]}"#,
            "\"\" is not a system call name",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read;rm"],"action":"SCMP_ACT_ALLOW"}]}"#,
            "\"read;rm\" is not a system call name",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","args":[{"index":6,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
            "linux.seccomp.syscalls[0].args: index 6 is out of range 0..=5",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":1,"valueTwo":2,"op":"SCMP_CMP_EQ"}]}]}"#,
            "valueTwo 2 is only meaningful with SCMP_CMP_MASKED_EQ",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","errnoRet":5}]}"#,
            "linux.seccomp.syscalls[0]: errnoRet is only meaningful with SCMP_ACT_ERRNO or SCMP_ACT_TRACE",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_KILL","defaultErrnoRet":5}"#,
            "linux.seccomp.defaultAction: errnoRet is only meaningful",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":5000}"#,
            "linux.seccomp.defaultAction: errnoRet 5000 is out of range 0..=4095",
        ),
    ];
    for (json, want) in cases {
        let got = err(json);
        assert!(got.contains(want), "{json}\n  got: {got}\n want: {want}");
    }
}

#[test]
fn unsupported_features_are_refused() {
    let cases = [
        (
            r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#,
            "unsupported: linux.seccomp.defaultAction",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_NOTIFY"}]}"#,
            "unsupported: linux.seccomp.syscalls.action",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/run/seccomp.sock"}"#,
            "unsupported: linux.seccomp.listenerPath",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerMetadata":"x"}"#,
            "unsupported: linux.seccomp.listenerMetadata",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]}"#,
            "unsupported: linux.seccomp.flags",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_AARCH64","SCMP_ARCH_ARM"]}"#,
            "unsupported: linux.seccomp.architectures",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86"]}"#,
            "unsupported: linux.seccomp.architectures",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86","SCMP_ARCH_X32"]}"#,
            "unsupported: linux.seccomp.architectures",
        ),
    ];
    for (json, want) in cases {
        let got = err(json);
        assert!(got.starts_with(want), "{json}\n  got: {got}\n want: {want}");
    }
}

#[test]
fn architectures_with_x86_64_or_native_are_accepted() {
    for archs in [
        r#"["SCMP_ARCH_X86_64"]"#,
        r#"["SCMP_ARCH_X86_64","SCMP_ARCH_X86","SCMP_ARCH_X32"]"#,
        r#"["SCMP_ARCH_NATIVE"]"#,
        r#"["SCMP_ARCH_AARCH64","SCMP_ARCH_X86_64"]"#,
        r#"[]"#,
    ] {
        let p = ok(&format!(
            r#"{{"defaultAction":"SCMP_ACT_ERRNO","architectures":{archs},"syscalls":[{{"names":["read"],"action":"SCMP_ACT_ALLOW"}}]}}"#
        ));
        assert_eq!(call(&p, "read"), ALLOW, "{archs}");
    }
}

#[test]
fn flags_are_passed_to_the_kernel() {
    let p = ok(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","flags":["SECCOMP_FILTER_FLAG_LOG","SECCOMP_FILTER_FLAG_SPEC_ALLOW","SECCOMP_FILTER_FLAG_TSYNC"]}"#,
    );
    assert_eq!(
        u64::from(p.flags()),
        libc::SECCOMP_FILTER_FLAG_LOG
            | libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            | libc::SECCOMP_FILTER_FLAG_TSYNC
    );
    assert_eq!(ok(r#"{"defaultAction":"SCMP_ACT_ERRNO"}"#).flags(), 0);
}

/// A Docker-sized allowlist: every syscall of the table but a few.
#[test]
fn large_allowlist_fits_and_works() {
    let names: Vec<&str> = x86_64_syscalls::X86_64_SYSCALLS
        .iter()
        .map(|e| e.0)
        .filter(|n| !["mkdir", "ptrace", "reboot"].contains(n))
        .collect();
    let json = format!(
        r#"{{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
            {{"names":{},"action":"SCMP_ACT_ALLOW"}},
            {{"names":["clone"],"action":"SCMP_ACT_ERRNO","errnoRet":38,"args":[{{"index":0,"value":2080505856,"valueTwo":2080505856,"op":"SCMP_CMP_MASKED_EQ"}}]}}]}}"#,
        serde_json::to_string(&names).unwrap()
    );
    let p = ok(&json);
    assert!(p.instructions().len() <= MAX_INSTRUCTIONS);
    for (name, _) in x86_64_syscalls::X86_64_SYSCALLS {
        let want = if ["mkdir", "ptrace", "reboot"].contains(name) {
            errno(1)
        } else {
            ALLOW
        };
        assert_eq!(call(&p, name), want, "{name}");
    }
    assert_eq!(arg0(&p, "clone", 0x7c02_0000), errno(38));
}

/// Docker's default profile lists both tables' names and SCMP_ARCH_X86: an
/// allowlist of every name either table has, with argument rules, still
/// fits, and each call lands in its own chain.
#[test]
fn large_allowlist_for_both_tables_fits_and_works() {
    let denied = ["mkdir", "ptrace", "reboot"];
    let mut names: Vec<&str> = x86_64_syscalls::X86_64_SYSCALLS
        .iter()
        .chain(i386_syscalls::I386_SYSCALLS)
        .map(|e| e.0)
        .filter(|n| !denied.contains(n))
        .collect();
    names.sort_unstable();
    names.dedup();
    let json = format!(
        r#"{{"defaultAction":"SCMP_ACT_ERRNO",{X86_AND_X86_64},"syscalls":[
            {{"names":{},"action":"SCMP_ACT_ALLOW"}},
            {{"names":["clone"],"action":"SCMP_ACT_ERRNO","errnoRet":38,"args":[{{"index":0,"value":2080505856,"valueTwo":2080505856,"op":"SCMP_CMP_MASKED_EQ"}}]}},
            {{"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{{"index":0,"value":8,"op":"SCMP_CMP_EQ"}}]}}]}}"#,
        serde_json::to_string(&names).unwrap()
    );
    let p = ok(&json);
    assert!(p.instructions().len() <= MAX_INSTRUCTIONS);
    for (name, _) in x86_64_syscalls::X86_64_SYSCALLS {
        let want = if denied.contains(name) {
            errno(1)
        } else {
            ALLOW
        };
        assert_eq!(call(&p, name), want, "x86_64 {name}");
    }
    for (name, _) in i386_syscalls::I386_SYSCALLS {
        let want = if denied.contains(name) {
            errno(1)
        } else {
            ALLOW
        };
        assert_eq!(run_i386(&p, name, [0; 6]), want, "i386 {name}");
    }
    assert_eq!(arg0(&p, "clone", 0x7c02_0000), errno(38));
    assert_eq!(
        run_i386(&p, "clone", [0x7c02_0000, 0, 0, 0, 0, 0]),
        errno(38)
    );
}

#[test]
fn too_many_rules_is_an_error_not_a_truncated_filter() {
    let rules: Vec<String> = (0..900)
        .map(|i| {
            format!(
                r#"{{"names":["ioctl"],"action":"SCMP_ACT_ALLOW","args":[{{"index":1,"value":{i},"op":"SCMP_CMP_EQ"}}]}}"#
            )
        })
        .collect();
    let json = format!(
        r#"{{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{}]}}"#,
        rules.join(",")
    );
    let got = compile_json(&json).unwrap_err();
    assert!(
        matches!(
            got,
            SeccompError::TooLarge { .. } | SeccompError::Compile { .. }
        ),
        "{got}"
    );
}

fn default_for(caps: &[Capability]) -> SeccompProgram {
    let profile = default_profile(&caps.iter().copied().collect()).unwrap();
    compile(&profile).unwrap()
}

#[test]
fn default_profile_denies_what_needs_no_capability_and_allows_the_rest() {
    use Capability::*;
    let p = default_for(&[AuditWrite, Kill, NetBindService]);
    let eperm = errno(libc::EPERM as u32);
    for name in [
        "keyctl",
        "add_key",
        "request_key",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "bpf",
        "perf_event_open",
        "userfaultfd",
    ] {
        assert_eq!(call(&p, name), eperm, "x86_64 {name}");
        assert_eq!(run_i386(&p, name, [0; 6]), eperm, "i386 {name}");
    }
    let newuser = libc::CLONE_NEWUSER as u64;
    let newns = libc::CLONE_NEWNS as u64;
    let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
    for name in ["unshare", "clone"] {
        assert_eq!(arg0(&p, name, newuser), eperm, "{name}");
        assert_eq!(arg0(&p, name, newuser | newns), eperm, "{name}");
        assert_eq!(
            run_i386(&p, name, [newuser, 0, 0, 0, 0, 0]),
            eperm,
            "{name}"
        );
        // Other namespaces need CAP_SYS_ADMIN: left to the kernel.
        assert_eq!(arg0(&p, name, newns), ALLOW, "{name}");
    }
    assert_eq!(arg0(&p, "clone", thread), ALLOW);
    assert_eq!(arg0(&p, "clone", libc::SIGCHLD as u64), ALLOW);
    // clone3's flags are out of the filter's reach: libcs fall back.
    assert_eq!(call(&p, "clone3"), errno(libc::ENOSYS as u32));
    for name in [
        "read", "write", "openat", "execve", "mount", "ptrace", "socket",
    ] {
        assert_eq!(call(&p, name), ALLOW, "{name}");
    }
    assert_eq!(run_i386(&p, "socketcall", [0; 6]), ALLOW);
    let x32_read = X32_SYSCALL_BIT | syscall_number("read").unwrap();
    assert_eq!(
        run_on(p.instructions(), AUDIT_ARCH_X86_64, x32_read, [0; 6]),
        KILL_PROCESS
    );
    assert!(
        p.skipped_syscalls().is_empty(),
        "{:?}",
        p.skipped_syscalls()
    );
}

#[test]
fn default_profile_allows_what_the_containers_capabilities_stand_for() {
    use Capability::*;
    let eperm = errno(libc::EPERM as u32);
    let newuser = libc::CLONE_NEWUSER as u64;
    let admin = default_for(&[SysAdmin]);
    assert_eq!(call(&admin, "bpf"), ALLOW);
    assert_eq!(call(&admin, "perf_event_open"), ALLOW);
    assert_eq!(arg0(&admin, "unshare", newuser), ALLOW);
    assert_eq!(call(&admin, "clone3"), ALLOW);
    assert_eq!(call(&admin, "userfaultfd"), eperm);
    assert_eq!(call(&admin, "keyctl"), eperm);
    assert_eq!(call(&admin, "io_uring_setup"), eperm);
    let bpf = default_for(&[Bpf, Perfmon, SysPtrace]);
    assert_eq!(call(&bpf, "bpf"), ALLOW);
    assert_eq!(call(&bpf, "perf_event_open"), ALLOW);
    assert_eq!(call(&bpf, "userfaultfd"), ALLOW);
    assert_eq!(arg0(&bpf, "unshare", newuser), eperm);
    assert_eq!(call(&default_for(&[]), "bpf"), eperm);
}
