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
        other => {
            eprintln!("unknown {CHILD_ENV} case {other:?}");
            return ExitCode::from(4);
        }
    }
    ExitCode::SUCCESS
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

    cleanup();
    if failures.is_empty() {
        println!("test result: ok. 3 passed");
        ExitCode::SUCCESS
    } else {
        for f in &failures {
            eprintln!("FAILED {f}");
        }
        ExitCode::FAILURE
    }
}
