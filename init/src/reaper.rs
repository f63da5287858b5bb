//! The container init of a unit with `"init": true` (`docker run --init`,
//! tini's job): berth-init's own binary, executed by the runtime as the
//! container's first process ([`berth_runtime::InitProgram`]) under the
//! name [`REAPER_ARGV0`], in front of the unit's program.
//!
//! A program that is its container's PID 1 must reap what it did not
//! start: every orphan of its pid namespace is reparented to it. A shell
//! script or a `sleep` that forks helpers and never waits leaves each of
//! them a zombie, until the unit's pids limit (or the kernel's) is used
//! up. The reaper starts the program as its only child, forwards the
//! signals it gets to it, reaps every child that ends, and exits with the
//! program's status (128 + the signal when a signal ended it, as tini
//! does) once the program has ended.
//!
//! It runs with everything the container's process has (credentials,
//! capabilities, seccomp), from a sealed in-memory copy of PID 1's binary
//! ([`sealed_binary`]): nothing of the container's root is needed, and
//! nothing the container can reach leads to PID 1's own file.

use std::os::fd::AsFd;

use nix::libc;

use berth_runtime::host::HostCommand;
use berth_runtime::sys;

/// `argv[0]` under which berth-init is the reaper. The kernel starts PID 1
/// as `/init` (or the path of `init=`), so a machine's PID 1 is never
/// taken for it.
pub const REAPER_ARGV0: &str = "berth-init-reaper";

/// The reaper's argv in front of the program's: `[REAPER_ARGV0, "--"]`.
pub fn reaper_args() -> Vec<String> {
    vec![REAPER_ARGV0.to_owned(), "--".to_owned()]
}

/// Why this berth-init cannot be a container's init, if it cannot: it is
/// not static (a build for the host, not the musl one a machine runs), and
/// the container's root has no dynamic loader for it. A compile-time fact.
pub fn unusable_as_init() -> Option<String> {
    if cfg!(target_feature = "crt-static") {
        return None;
    }
    let exe = std::fs::read_link("/proc/self/exe")
        .map_or_else(|_| "berth-init".to_owned(), |p| p.display().to_string());
    Some(format!(
        "{exe} is dynamically linked, and the container has no loader for it: \
         \"init\": true needs the static berth-init (x86_64-unknown-linux-musl), \
         as a machine runs"
    ))
}

/// What `"init": true` containers execute: one copy of this binary in
/// memory, sealed against writes, made once (3 MiB). A container then
/// reaches that copy as its `/proc/1/exe`, never PID 1's own file (which
/// only "Text file busy" would keep it from rewriting; CVE-2019-5736).
/// The error is the unit's message.
pub fn sealed_binary() -> Result<std::fs::File, String> {
    if let Some(why) = unusable_as_init() {
        return Err(why);
    }
    berth_runtime::exeseal::sealed_copy_of_self(REAPER_ARGV0)
        .map_err(|e| format!("the container's init: {}", crate::logging::error_chain(&e)))
}

/// Signals the reaper does not wait for: the ones a fault raises in the
/// reaper itself (blocking them would hide a crash), and the terminal
/// stops it has no use for.
const NOT_FORWARDED: [libc::c_int; 11] = [
    libc::SIGKILL,
    libc::SIGSTOP,
    libc::SIGFPE,
    libc::SIGILL,
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGABRT,
    libc::SIGTRAP,
    libc::SIGSYS,
    libc::SIGTTIN,
    libc::SIGTTOU,
];

/// The signals the reaper waits for: every other one, SIGCHLD included.
fn waited_signals() -> Vec<libc::c_int> {
    (1..=libc::SIGRTMAX())
        .filter(|s| !NOT_FORWARDED.contains(s))
        .collect()
}

/// What the reaper does with a signal it waited for.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Reap whatever ended.
    Reap,
    /// Pass the signal on to the program.
    Forward(libc::c_int),
}

pub fn next(signal: libc::c_int) -> Next {
    if signal == libc::SIGCHLD {
        Next::Reap
    } else {
        Next::Forward(signal)
    }
}

/// The exit code that carries the program's status.
pub fn exit_code(status: sys::WaitStatus) -> i32 {
    match status {
        sys::WaitStatus::Exited(c) => c,
        sys::WaitStatus::Signaled(s) => 128 + s,
    }
}

/// Runs the reaper; `args` is its argv after `argv[0]`: `--` then the
/// program's argv. Returns the code to exit with once the program has
/// ended (or could not start).
pub fn run(args: &[String]) -> i32 {
    let (program, name) = match args.split_first() {
        Some((dashes, rest)) if dashes == "--" => match rest.first() {
            Some(name) => (rest, name),
            None => return fail("usage: berth-init-reaper -- PROGRAM [ARG]...", 2),
        },
        _ => return fail("usage: berth-init-reaper -- PROGRAM [ARG]...", 2),
    };
    // Blocked before the child exists, so none is lost; the child starts
    // with an empty mask (HostCommand resets it).
    let signals = waited_signals();
    if let Err(e) = sys::block_signals(&signals) {
        return fail(&format!("block signals: {e}"), 127);
    }
    // Orphans of a container without a pid namespace of its own come here
    // too (in one, they do anyway: the reaper is its PID 1).
    let _ = sys::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0);
    let env: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    // Found as the runtime found it before exec'ing the reaper: a name
    // with a `/` as it is, else in the absolute entries of the container's
    // PATH (or the runtime's default).
    let exe = if name.contains('/') {
        Ok(std::path::PathBuf::from(name))
    } else {
        let path = env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map_or(berth_runtime::spec::DEFAULT_PATH, |(_, v)| v.as_str());
        let absolute: Vec<&str> = path.split(':').filter(|d| d.starts_with('/')).collect();
        berth_runtime::host::find_program(name, &absolute.join(":"), None)
    };
    let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let child = exe.and_then(|exe| {
        HostCommand::new(program.to_vec(), env, stdout.as_fd(), stderr.as_fd())
            .exe(exe)
            .stdin(stdin.as_fd())
            .spawn()
    });
    let child = match child {
        Ok(pid) => pid,
        // As the runtime says it without a reaper (and `docker run`): 127,
        // the program (or its #! interpreter, or its loader) is not there;
        // 126, it is there but cannot be run.
        Err(e) => {
            use berth_runtime::host::HostSpawnError as E;
            let code = match &e {
                E::Lookup { source, .. } | E::Exec { source, .. }
                    if source.raw_os_error() == Some(libc::ENOENT) =>
                {
                    127
                }
                E::Lookup { .. } | E::Exec { .. } => 126,
                _ => 1,
            };
            return fail(&crate::logging::error_chain(&e), code);
        }
    };
    loop {
        let signal = match sys::wait_signal(&signals) {
            Ok(s) => s,
            Err(e) => return fail(&format!("wait for a signal: {e}"), 127),
        };
        match next(signal) {
            Next::Forward(s) => {
                // ESRCH: it ended and its SIGCHLD is on the way.
                let _ = sys::kill(child, s);
            }
            Next::Reap => {
                while let Ok(Some((pid, status))) = sys::reap_any() {
                    if pid == child {
                        // What it left behind ends with the namespace
                        // (or is reaped by PID 1 when there is none).
                        return exit_code(status);
                    }
                }
            }
        }
    }
}

/// Says what went wrong on stderr (the unit's log), if it is still
/// there; returns `code`.
fn fail(message: &str, code: i32) -> i32 {
    use std::io::Write;
    // Not eprintln!: a closed stderr would make it panic.
    let _ = writeln!(std::io::stderr(), "berth-init-reaper: {message}");
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_and_stops_are_not_waited_for() {
        let s = waited_signals();
        for sig in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGCHLD,
            libc::SIGUSR1,
        ] {
            assert!(s.contains(&sig), "{sig}");
        }
        for sig in NOT_FORWARDED {
            assert!(!s.contains(&sig), "{sig}");
        }
        assert!(s.contains(&libc::SIGRTMAX()));
    }

    #[test]
    fn a_dynamic_build_says_it_cannot_be_an_init() {
        // Tests are built for the host (glibc, dynamic).
        let why = unusable_as_init().expect("a dynamic test build");
        assert!(why.contains("is dynamically linked"), "{why}");
    }

    #[test]
    fn the_status_passes_through() {
        assert_eq!(exit_code(sys::WaitStatus::Exited(3)), 3);
        assert_eq!(exit_code(sys::WaitStatus::Signaled(libc::SIGTERM)), 143);
        assert_eq!(next(libc::SIGCHLD), Next::Reap);
        assert_eq!(next(libc::SIGTERM), Next::Forward(libc::SIGTERM));
    }
}
