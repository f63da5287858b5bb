//! `berth_runtime::host`: plain child processes, as PID 1 starts its host
//! units. Root is not needed, busybox-static is.

mod common;

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use berth_runtime::host::{HostCommand, HostSpawnError};
use berth_runtime::sys;
use common::{TempDir, chain};
use oci_spec::runtime::PosixRlimitType;

fn require_busybox() {
    assert!(
        std::path::Path::new("/bin/busybox").exists(),
        "busybox-static missing: apt-get install busybox-static"
    );
}

/// Runs the command `make` builds to its end, with one pipe for its
/// stdout and stderr; returns what it wrote and its exit status.
fn output(
    make: impl for<'a> FnOnce(BorrowedFd<'a>) -> HostCommand<'a>,
) -> (String, sys::WaitStatus) {
    let (r, w) = sys::pipe().unwrap();
    let pid = make(w.as_fd()).spawn().expect("spawn");
    drop(w);
    let mut text = String::new();
    std::fs::File::from(r).read_to_string(&mut text).unwrap();
    (text, sys::wait_pid(pid).unwrap())
}

fn sh(script: &str) -> Vec<String> {
    vec!["busybox".into(), "sh".into(), "-c".into(), script.into()]
}

#[test]
fn a_host_process_gets_its_limits_cwd_env_stdio_and_process_group() {
    require_busybox();
    let dir = TempDir::new("host-cwd");
    // Blocked here, so the child would inherit it without the reset.
    sys::block_signals(&[libc::SIGUSR2]).unwrap();
    let script = "echo cwd=$(pwd) foo=$FOO; \
        grep -E 'open files|core file' /proc/self/limits; \
        grep -E '^SigBlk' /proc/self/status; \
        echo pgrp=$(cut -d' ' -f5 /proc/$$/stat) pid=$$; \
        read line && echo stdin=$line || echo stdin=eof; \
        echo err >&2";
    let (text, status) = output(|out| {
        HostCommand::new(
            sh(script),
            vec![
                // The program is looked up in the child's PATH.
                ("PATH".into(), "/nonexistent:/bin".into()),
                ("FOO".into(), "bar".into()),
            ],
            out,
            out,
        )
        .cwd(dir.0.clone())
        .rlimit(PosixRlimitType::RlimitNofile, 100, 200)
        .rlimit(PosixRlimitType::RlimitCore, 0, 0)
    });
    assert_eq!(status, sys::WaitStatus::Exited(0), "{text}");
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{text}"))
            .to_owned()
    };
    assert_eq!(
        line("cwd="),
        format!("cwd={} foo=bar", dir.0.display()),
        "{text}"
    );
    let words = |l: String| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        words(line("Max open files"))[3..5],
        ["100", "200"],
        "{text}"
    );
    assert_eq!(
        words(line("Max core file size"))[4..6],
        ["0", "0"],
        "{text}"
    );
    assert_eq!(line("SigBlk:"), "SigBlk:\t0000000000000000", "{text}");
    let group = words(line("pgrp="));
    assert_eq!(
        group[0].trim_start_matches("pgrp="),
        group[1].trim_start_matches("pid="),
        "its own process group: {text}"
    );
    assert_eq!(line("stdin="), "stdin=eof", "{text}");
    assert!(text.lines().any(|l| l == "err"), "stderr: {text}");
}

/// The child holds stdin, stdout and stderr and nothing else of its
/// parent, even an fd that is not close-on-exec.
#[test]
fn a_host_process_inherits_no_other_fd() {
    require_busybox();
    let (_r, w) = sys::pipe().unwrap();
    // Not close-on-exec (dup3 onto itself clears the flag), numbered well
    // above the rest.
    let leak = sys::dup_above(w.as_fd(), 900).unwrap();
    sys::dup_onto(leak.as_raw_fd(), leak.as_raw_fd()).unwrap();
    let pid = HostCommand::new(
        vec!["/bin/busybox".into(), "sleep".into(), "100".into()],
        vec![],
        w.as_fd(),
        w.as_fd(),
    )
    .spawn()
    .unwrap();
    // spawn returns after the exec: the fd table is final.
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    fds.sort();
    sys::kill(pid, libc::SIGKILL).unwrap();
    sys::wait_pid(pid).unwrap();
    assert_eq!(fds, [0, 1, 2]);
    drop(leak);
}

/// A parent whose fds fill every number below 1024 (PID 1 after months
/// with many units) still starts a child with the unit's soft limit of
/// 1024: the child sets it itself. (PID 1 used to lower its own limit
/// around posix_spawn, and then had no fd number left for the spawn's
/// own pipe.)
#[test]
fn a_parent_with_more_than_1024_fds_starts_a_child_limited_to_1024() {
    require_busybox();
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let hard: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|h| h.parse().ok())
        .expect("Max open files in /proc/self/limits");
    assert!(
        hard >= 2048,
        "this test needs a hard RLIMIT_NOFILE of at least 2048, not {hard}"
    );
    // Raising a soft limit up to the hard one needs no privilege; the
    // other tests of this binary get it too, which changes nothing there.
    sys::setrlimit(libc::RLIMIT_NOFILE as libc::c_int, hard, hard).unwrap();
    let devnull = std::fs::File::open("/dev/null").unwrap();
    // The lowest free number is always taken: never another test's fd.
    let mut held = Vec::new();
    loop {
        let fd = sys::dup_above(devnull.as_fd(), 0).unwrap();
        let n = fd.as_raw_fd();
        held.push(fd);
        if n >= 1100 {
            break;
        }
    }
    let (text, status) = output(|out| {
        HostCommand::new(
            sh("grep 'open files' /proc/self/limits"),
            vec![("PATH".into(), "/bin".into())],
            out,
            out,
        )
        .rlimit(PosixRlimitType::RlimitNofile, 1024, hard)
    });
    drop(held);
    assert_eq!(status, sys::WaitStatus::Exited(0), "{text}");
    let words: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(words[3..5], ["1024", &hard.to_string()], "{text}");
}

/// A failure before exec names the step and what it was about, and the
/// failed child is reaped by `spawn` (no pid left for the caller).
#[test]
fn a_failure_before_exec_says_which_step() {
    require_busybox();
    let dir = TempDir::new("host-errors");
    let plain = dir.0.join("plain");
    std::fs::write(&plain, "not a program").unwrap();
    let (_r, w) = sys::pipe().unwrap();
    let err = |command: HostCommand<'_>| -> (String, HostSpawnError) {
        let e = command.spawn().expect_err("the start must fail");
        (chain(&e), e)
    };
    let path = || vec![("PATH".to_owned(), "/nonexistent:/bin".to_owned())];

    let (text, e) = err(HostCommand::new(
        vec!["no-such-program".into()],
        path(),
        w.as_fd(),
        w.as_fd(),
    ));
    assert!(matches!(e, HostSpawnError::Lookup { .. }), "{text}");
    assert_eq!(
        text,
        "find \"no-such-program\" in PATH \"/nonexistent:/bin\": No such file or directory (os error 2)"
    );

    let missing = dir.0.join("missing");
    let (text, e) =
        err(HostCommand::new(sh("true"), path(), w.as_fd(), w.as_fd()).cwd(missing.clone()));
    assert!(matches!(e, HostSpawnError::Chdir { .. }), "{text}");
    assert_eq!(
        text,
        format!(
            "change directory to {} for /bin/busybox: No such file or directory (os error 2)",
            missing.display()
        )
    );

    let (text, e) = err(HostCommand::new(
        vec![plain.display().to_string()],
        path(),
        w.as_fd(),
        w.as_fd(),
    ));
    assert!(matches!(e, HostSpawnError::Exec { .. }), "{text}");
    assert_eq!(
        text,
        format!("exec {}: Permission denied (os error 13)", plain.display())
    );

    // A soft limit above its hard one: prlimit(2) says EINVAL.
    let (text, e) = err(HostCommand::new(sh("true"), path(), w.as_fd(), w.as_fd())
        .rlimit(PosixRlimitType::RlimitNofile, 100, 200)
        .rlimit(PosixRlimitType::RlimitCore, 2, 1));
    assert!(matches!(e, HostSpawnError::Rlimit { .. }), "{text}");
    assert!(
        text.starts_with("set RLIMIT_CORE to 2:1 before exec of /bin/busybox: "),
        "{text}"
    );

    // A relative program runs from the cwd it is given.
    std::fs::create_dir(dir.0.join("bin")).unwrap();
    // busybox runs the applet its argv[0] names.
    std::os::unix::fs::symlink("/bin/busybox", dir.0.join("bin/echo")).unwrap();
    let (text, status) = output(|out| {
        HostCommand::new(vec!["bin/echo".into(), "relative".into()], path(), out, out)
            .cwd(dir.0.clone())
    });
    assert_eq!(
        (text.as_str(), status),
        ("relative\n", sys::WaitStatus::Exited(0))
    );
    // And so does a name found through a relative PATH entry.
    let (text, status) = output(|out| {
        HostCommand::new(
            vec!["echo".into(), "by PATH".into()],
            vec![("PATH".to_owned(), "bin".to_owned())],
            out,
            out,
        )
        .cwd(dir.0.clone())
    });
    assert_eq!(
        (text.as_str(), status),
        ("by PATH\n", sys::WaitStatus::Exited(0))
    );
}
