//! Real seccomp filters in real processes: this test binary re-executes
//! itself with `BERTH_SECCOMP_CHILD=<case>`; the child compiles a spec,
//! installs the filter with `SeccompProgram::install` and reports what the
//! kernel did. Runs as root (installing a filter without no_new_privs needs
//! CAP_SYS_ADMIN), as CI does.
//!
//! `harness = false`: the child must be a single-threaded process whose
//! filtered thread is the one making the calls.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use berth_runtime::seccomp::{self, SeccompProgram};
use oci_spec::runtime::LinuxSeccomp;

const CHILD_ENV: &str = "BERTH_SECCOMP_CHILD";

fn main() -> ExitCode {
    match std::env::var(CHILD_ENV) {
        Ok(case) => child(&case),
        Err(_) => parent(),
    }
}

fn program(json: &str) -> SeccompProgram {
    let spec: LinuxSeccomp = serde_json::from_str(json).expect("test spec parses");
    seccomp::compile(&spec).expect("test spec compiles")
}

fn scratch(case: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("berth-seccomp-{case}-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Describes an io result as the parent expects it: `ok` or the errno.
fn outcome<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".to_string(),
        Err(e) => e
            .raw_os_error()
            .map_or_else(|| format!("{e}"), |n| n.to_string()),
    }
}

fn install_or_exit(p: &SeccompProgram) {
    if let Err(e) = p.install() {
        eprintln!("install failed: {e}: {:?}", std::error::Error::source(&e));
        std::process::exit(3);
    }
}

fn child(case: &str) -> ExitCode {
    let dir = scratch(case);
    let file = fs::File::create(dir.join("f")).expect("create scratch file");
    match case {
        // Denylist: mkdir fails with the configured errno, ftruncate only
        // when its length argument matches.
        "errno" => {
            install_or_exit(&program(
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":38},
                {"names":["ftruncate"],"action":"SCMP_ACT_ERRNO","errnoRet":33,
                 "args":[{"index":1,"value":12345,"op":"SCMP_CMP_EQ"}]}]}"#,
            ));
            println!(
                "mkdir={} ftruncate_12345={} ftruncate_100={}",
                outcome(fs::create_dir(dir.join("d"))),
                outcome(file.set_len(12345)),
                outcome(file.set_len(100)),
            );
        }
        // Allowlist with an EPERM default: everything but mkdir is allowed.
        "allowlist" => {
            let names: Vec<&str> = seccomp::syscall_names()
                .filter(|n| *n != "mkdir" && *n != "mkdirat")
                .collect();
            install_or_exit(&program(&format!(
                r#"{{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{{"names":{},"action":"SCMP_ACT_ALLOW"}}]}}"#,
                serde_json::to_string(&names).expect("names serialise")
            )));
            println!(
                "mkdir={} truncate={}",
                outcome(fs::create_dir(dir.join("d"))),
                outcome(file.set_len(7)),
            );
        }
        // KILL_PROCESS: the process dies of SIGSYS at mkdir.
        "kill" => {
            install_or_exit(&program(
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_KILL_PROCESS"}]}"#,
            ));
            let r = fs::create_dir(dir.join("d"));
            println!("survived mkdir: {r:?}");
        }
        // i386 calls (`int 0x80`) under SCMP_ARCH_X86 follow the rules by
        // their i386 numbers; without it they are killed.
        "i386" => {
            let calls = [
                ("getuid", I386_GETUID, 0),
                ("getgid", I386_GETGID, 0),
                ("umask_777", I386_UMASK, 0o777),
                ("umask_022", I386_UMASK, 0o022),
            ];
            let progs: Vec<(&str, PathBuf)> = calls
                .iter()
                .map(|(name, nr, arg)| (*name, write_int80_program(&dir, name, *nr, *arg)))
                .collect();
            install_or_exit(&program(
                r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86"],"syscalls":[
                {"names":["getuid"],"action":"SCMP_ACT_ERRNO","errnoRet":33},
                {"names":["umask"],"action":"SCMP_ACT_ERRNO","errnoRet":34,
                 "args":[{"index":0,"value":511,"op":"SCMP_CMP_EQ"}]}]}"#,
            ));
            let results: Vec<String> = progs
                .iter()
                .map(|(name, prog)| format!("{name}={}", int80_result(prog)))
                .collect();
            println!("{}", results.join(" "));
        }
        "i386_unlisted" => {
            let prog = write_int80_program(&dir, "getgid", I386_GETGID, 0);
            install_or_exit(&program(
                r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],"syscalls":[
                {"names":["getuid"],"action":"SCMP_ACT_ERRNO","errnoRet":33}]}"#,
            ));
            println!("getgid={}", int80_result(&prog));
        }
        other => {
            eprintln!("unknown {CHILD_ENV} case {other:?}");
            return ExitCode::from(4);
        }
    }
    ExitCode::SUCCESS
}

/// i386 system call numbers (asm/unistd_32.h).
const I386_GETUID: u32 = 24;
const I386_GETGID: u32 = 47;
const I386_UMASK: u32 = 60;

/// Writes a static x86_64 ELF executable that makes one i386 system call
/// through `int 0x80` (as a 32-bit program would; the kernel reports it as
/// AUDIT_ARCH_I386) and exits with the low byte of the result. Hand-made so
/// that the test needs neither a 32-bit toolchain nor unsafe code.
fn write_int80_program(dir: &std::path::Path, name: &str, nr: u32, arg0: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let mut code = vec![0xb8]; // mov eax, nr
    code.extend(nr.to_le_bytes());
    code.push(0xbb); // mov ebx, arg0
    code.extend(arg0.to_le_bytes());
    code.extend([0xcd, 0x80]); // int 0x80
    code.extend([0x89, 0xc7]); // mov edi, eax
    code.extend([0xb8, 60, 0, 0, 0]); // mov eax, 60 (x86_64 exit)
    code.extend([0x0f, 0x05]); // syscall
    let base: u64 = 0x40_0000;
    let (ehdr, phdr) = (64u16, 56u16);
    let size = u64::from(ehdr + phdr) + code.len() as u64;
    let mut elf = Vec::new();
    elf.extend(b"\x7fELF");
    elf.extend([2, 1, 1, 0]); // 64-bit, little-endian, version 1, System V
    elf.extend([0; 8]);
    elf.extend(2u16.to_le_bytes()); // ET_EXEC
    elf.extend(62u16.to_le_bytes()); // EM_X86_64
    elf.extend(1u32.to_le_bytes());
    elf.extend((base + u64::from(ehdr + phdr)).to_le_bytes()); // entry
    elf.extend(u64::from(ehdr).to_le_bytes()); // program headers
    elf.extend(0u64.to_le_bytes()); // no section headers
    elf.extend(0u32.to_le_bytes());
    elf.extend(ehdr.to_le_bytes());
    elf.extend(phdr.to_le_bytes());
    elf.extend(1u16.to_le_bytes());
    elf.extend([0; 6]);
    elf.extend(1u32.to_le_bytes()); // PT_LOAD
    elf.extend(5u32.to_le_bytes()); // R + X
    elf.extend(0u64.to_le_bytes());
    elf.extend(base.to_le_bytes());
    elf.extend(base.to_le_bytes());
    elf.extend(size.to_le_bytes());
    elf.extend(size.to_le_bytes());
    elf.extend(0x1000u64.to_le_bytes());
    elf.extend(code);
    let path = dir.join(name);
    fs::write(&path, elf).expect("write the int 0x80 program");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// What the program's call returned (its exit status as a negative errno,
/// or the value), or the signal that ended it.
fn int80_result(prog: &std::path::Path) -> String {
    match Command::new(prog).status() {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) if code > 128 => format!("-{}", 256 - code),
            (Some(code), _) => code.to_string(),
            (None, Some(sig)) => format!("signal {sig}"),
            (None, None) => format!("{status:?}"),
        },
        Err(e) => format!("exec failed: {e}"),
    }
}

struct Run {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

fn run_child(case: &str) -> Run {
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new(exe)
        .env(CHILD_ENV, case)
        .output()
        .expect("spawn test child");
    Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Removes the children's scratch dirs (named after their pids).
fn cleanup() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with("berth-seccomp-")
        {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn check(name: &str, run: &Run, ok: bool, failures: &mut Vec<String>) {
    if run.status.code() == Some(3) {
        failures.push(format!(
            "{name}: the child could not install a seccomp filter (needs root / CAP_SYS_ADMIN; run the tests as root): {}",
            run.stderr.trim()
        ));
    } else if ok {
        println!("test seccomp_filter::{name} ... ok");
    } else {
        failures.push(format!(
            "{name}: status {:?}, stdout {:?}, stderr {:?}",
            run.status, run.stdout, run.stderr
        ));
    }
}

fn parent() -> ExitCode {
    let mut failures = Vec::new();

    let r = run_child("errno");
    check(
        "errno_ret_and_argument_condition",
        &r,
        r.status.success() && r.stdout.trim() == "mkdir=38 ftruncate_12345=33 ftruncate_100=ok",
        &mut failures,
    );

    let r = run_child("allowlist");
    check(
        "allowlist_default_eperm",
        &r,
        r.status.success() && r.stdout.trim() == "mkdir=1 truncate=ok",
        &mut failures,
    );

    let r = run_child("kill");
    check(
        "kill_process_delivers_sigsys",
        &r,
        r.status.signal() == Some(libc::SIGSYS) && !r.stdout.contains("survived"),
        &mut failures,
    );

    let r = run_child("i386");
    check(
        "i386_calls_follow_the_rules_under_scmp_arch_x86",
        &r,
        // umask_022 returns the previous mask: whatever it was, not -34.
        r.status.success()
            && r.stdout
                .starts_with("getuid=-33 getgid=0 umask_777=-34 umask_022=")
            && !r.stdout.contains("umask_022=-")
            && !r.stdout.contains("signal"),
        &mut failures,
    );

    let r = run_child("i386_unlisted");
    check(
        "i386_calls_are_killed_without_scmp_arch_x86",
        &r,
        r.status.success() && r.stdout.trim() == format!("getgid=signal {}", libc::SIGSYS),
        &mut failures,
    );

    cleanup();
    if failures.is_empty() {
        println!("test result: ok. 5 passed");
        ExitCode::SUCCESS
    } else {
        for f in &failures {
            eprintln!("FAILED {f}");
        }
        ExitCode::FAILURE
    }
}
