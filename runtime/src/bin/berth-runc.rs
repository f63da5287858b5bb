//! berth-runc: a runc-compatible command line over berth-runtime.
//!
//! `create`, `start`, `run`, `state`, `kill`, `delete`, `list`, `spec`
//! with runc's flags; global `--root`, `--log`, `--log-format` (containerd's
//! shim passes them). Errors go to stderr as one line, and to the log file
//! when one is given; the exit status is non-zero.
#![forbid(unsafe_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use berth_runtime::signal::parse_signal;
use berth_runtime::sys;
use berth_runtime::{Container, CreateOptions, Runtime};

const USAGE: &str =
    "usage: berth-runc [--root DIR] [--log FILE] [--log-format text|json] COMMAND [OPTIONS] [ID]

commands:
  create [--bundle DIR] [--pid-file FILE] ID   create a container; its process waits for start
  start ID                                     start a created container
  run [--bundle DIR] [--pid-file FILE] [--detach] ID
                                               create and start; wait and exit with its status
  state ID                                     print the container's state as JSON
  kill [--all] ID [SIGNAL]                     signal the container (default TERM)
  delete [--force] ID                          remove the container
  list [--format table|json] [--quiet]         list containers
  spec [--bundle DIR]                          write a default config.json";

/// Why a command ends without success.
#[derive(Debug)]
enum Failure {
    /// One line for stderr.
    Message(String),
    /// Whoever read our stdout went away (`berth-runc list | head`).
    StdoutClosed,
}

impl<E: std::error::Error> From<E> for Failure {
    fn from(e: E) -> Failure {
        let mut msg = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        Failure::Message(msg)
    }
}

fn fail<T>(msg: impl Into<String>) -> Result<T, Failure> {
    Err(Failure::Message(msg.into()))
}

/// Exit status of a command whose stdout reader went away: what a shell
/// reports for a command ended by SIGPIPE, as runc is.
const STDOUT_CLOSED_STATUS: u8 = 128 + libc::SIGPIPE as u8;

/// Writes `text` and a newline to stdout. A reader that went away
/// (EPIPE) is [`Failure::StdoutClosed`], which ends the command quietly.
fn out(text: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::StdoutClosed),
        Err(e) => fail(format!("write to stdout: {e}")),
    }
}

struct Global {
    root: PathBuf,
    log: Option<PathBuf>,
    json_log: bool,
}

/// Parsed options of one command: flags with values, boolean flags, positionals.
struct Args {
    values: Vec<(String, String)>,
    flags: Vec<String>,
    positional: Vec<String>,
}

impl Args {
    /// `with_value`: flag names (long and short) that take a value.
    fn parse(argv: &[String], with_value: &[&str], boolean: &[&str]) -> Result<Args, Failure> {
        let mut a = Args {
            values: Vec::new(),
            flags: Vec::new(),
            positional: Vec::new(),
        };
        let mut it = argv.iter();
        while let Some(arg) = it.next() {
            if arg == "--" {
                a.positional.extend(it.by_ref().cloned());
                break;
            }
            if arg.starts_with('-') && arg.len() > 1 && a.positional.is_empty()
                || (arg.starts_with("--") && arg.len() > 2)
            {
                let (name, inline) = match arg.split_once('=') {
                    Some((n, v)) => (n.trim_start_matches('-').to_string(), Some(v.to_string())),
                    None => (arg.trim_start_matches('-').to_string(), None),
                };
                if with_value.contains(&name.as_str()) {
                    let v = match inline {
                        Some(v) => v,
                        None => match it.next() {
                            Some(v) => v.clone(),
                            None => return fail(format!("flag {arg} needs a value")),
                        },
                    };
                    a.values.push((name, v));
                } else if boolean.contains(&name.as_str()) {
                    a.flags.push(name);
                } else {
                    return fail(format!("unknown flag {arg}"));
                }
            } else {
                a.positional.push(arg.clone());
            }
        }
        Ok(a)
    }

    fn value(&self, names: &[&str]) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| names.contains(&n.as_str()))
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, names: &[&str]) -> bool {
        self.flags.iter().any(|f| names.contains(&f.as_str()))
    }

    fn id(&self, cmd: &str) -> Result<&str, Failure> {
        match self.positional.first() {
            Some(id) => Ok(id),
            None => fail(format!("{cmd}: missing container id")),
        }
    }
}

fn main() -> ExitCode {
    // SIGPIPE stays ignored (Rust's start-up ignores it): berth-runc
    // writes to pipes half-way through a create (a hook's stdin, the
    // container process's pipes, the exec fifo), where death by a signal
    // would leave the state, the cgroup and the poststop hooks behind.
    // EPIPE is handled at each write instead; on stdout (`list | head`)
    // it ends the command quietly (out). The hooks and the container's
    // process get SIGPIPE back at its default action (std's spawn, and
    // sys::reset_signals in the container's process).
    let mut argv = Vec::new();
    for a in std::env::args_os().skip(1) {
        match a.into_string() {
            Ok(a) => argv.push(a),
            Err(a) => {
                let _ = writeln!(std::io::stderr(), "berth-runc: argument {a:?} is not UTF-8");
                return ExitCode::from(2);
            }
        }
    }
    let mut g = Global {
        root: PathBuf::from("/run/berth-runc"),
        log: None,
        json_log: false,
    };
    let mut i = 0;
    // Global flags come before the command.
    while i < argv.len() && argv[i].starts_with('-') {
        let (name, inline) = match argv[i].split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (argv[i].clone(), None),
        };
        let takes_value = matches!(
            name.as_str(),
            "--root" | "--log" | "--log-format" | "--criu" | "--rootless"
        );
        let value = if takes_value {
            match inline.or_else(|| {
                i += 1;
                argv.get(i).cloned()
            }) {
                Some(v) => Some(v),
                None => return report(&g, Failure::Message(format!("flag {name} needs a value"))),
            }
        } else {
            None
        };
        match (name.as_str(), value) {
            ("--root", Some(v)) => g.root = PathBuf::from(v),
            ("--log", Some(v)) => g.log = Some(PathBuf::from(v)),
            ("--log-format", Some(v)) => match v.as_str() {
                "text" => g.json_log = false,
                "json" => g.json_log = true,
                other => {
                    return report(
                        &g,
                        Failure::Message(format!(
                            "unknown --log-format {other:?}: use text or json"
                        )),
                    );
                }
            },
            // Accepted as runc does; berth has no systemd driver or CRIU.
            ("--debug", None) => {}
            ("--rootless", Some(v)) if v == "false" || v == "auto" => {}
            ("--systemd-cgroup", None) => {
                return report(&g, Failure::Message("unsupported: --systemd-cgroup".into()));
            }
            ("-h" | "--help", None) => {
                return match out(USAGE) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(f) => report(&g, f),
                };
            }
            ("-v" | "--version", None) => {
                let version = format!(
                    "berth-runc version {}\nspec: {}",
                    env!("CARGO_PKG_VERSION"),
                    berth_runtime::state::OCI_VERSION
                );
                return match out(&version) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(f) => report(&g, f),
                };
            }
            (other, _) => {
                return report(&g, Failure::Message(format!("unknown global flag {other}")));
            }
        }
        i += 1;
    }
    let Some(cmd) = argv.get(i) else {
        let _ = writeln!(std::io::stderr(), "{USAGE}");
        return ExitCode::from(2);
    };
    // The commands that clone a container process run from a sealed copy
    // of this binary (CVE-2019-5736): see berth_runtime::exeseal.
    if matches!(cmd.as_str(), "create" | "run")
        && let Err(e) = berth_runtime::exeseal::reexec_from_sealed_copy()
    {
        return report(&g, e.into());
    }
    let rest = &argv[i + 1..];
    let rt = Runtime::new(&g.root);
    let r = match cmd.as_str() {
        "create" => cmd_create(&g, &rt, rest),
        "start" => cmd_start(&g, &rt, rest),
        "run" => cmd_run(&g, &rt, rest),
        "state" => cmd_state(&rt, rest),
        "kill" => cmd_kill(&rt, rest),
        "delete" => cmd_delete(&g, &rt, rest),
        "list" => cmd_list(&rt, rest),
        "spec" => cmd_spec(rest),
        "help" => out(USAGE).map(|()| 0),
        other => fail(format!("unknown command {other:?} (see berth-runc --help)")),
    };
    match r {
        Ok(code) => ExitCode::from(code),
        Err(f) => report(&g, f),
    }
}

/// Prints the failure as one line on stderr (and to the log), exit 1; a
/// closed stdout ends the command quietly.
fn report(g: &Global, f: Failure) -> ExitCode {
    let msg = match f {
        Failure::Message(msg) => msg,
        Failure::StdoutClosed => return ExitCode::from(STDOUT_CLOSED_STATUS),
    };
    let line = msg.replace('\n', " ");
    // A closed stderr loses the line, not the log entry (nor a panic).
    let _ = writeln!(std::io::stderr(), "berth-runc: {line}");
    log(g, "error", &line);
    ExitCode::from(1)
}

/// Appends one entry to the `--log` file, if any (text or json, as runc).
/// A warning a user must see: to the `--log` file when there is one, else
/// on stderr (as runc logs to stderr by default).
fn warn(g: &Global, msg: &str) {
    if g.log.is_some() {
        log(g, "warning", msg);
    } else {
        let _ = writeln!(std::io::stderr(), "berth-runc: warning: {msg}");
    }
}

fn log(g: &Global, level: &str, msg: &str) {
    if let Some(path) = &g.log
        && let Ok(mut file) = fs::OpenOptions::new().create(true).append(true).open(path)
    {
        let entry = if g.json_log {
            serde_json::json!({"level": level, "msg": msg}).to_string()
        } else {
            format!("level={level} msg={msg:?}")
        };
        let _ = writeln!(file, "{entry}");
    }
}

fn write_pid_file(path: &str, pid: i32) -> Result<(), Failure> {
    // Written to a temporary name and renamed, as runc does, so readers
    // never see a partial pid.
    let path = Path::new(path);
    let tmp = path.with_extension("berth-tmp");
    fs::write(&tmp, pid.to_string())
        .map_err(|e| Failure::Message(format!("write pid file {}: {e}", tmp.display())))?;
    fs::rename(&tmp, path)
        .map_err(|e| Failure::Message(format!("rename pid file to {}: {e}", path.display())))
}

fn create_from_args(
    g: &Global,
    rt: &Runtime,
    rest: &[String],
    cmd: &str,
) -> Result<(Container, Args), Failure> {
    let a = Args::parse(
        rest,
        &["bundle", "b", "pid-file", "console-socket", "preserve-fds"],
        &["detach", "d", "no-pivot", "no-new-keyring", "keep"],
    )?;
    if a.value(&["console-socket"]).is_some() {
        return fail("unsupported: --console-socket (process.terminal is not supported)");
    }
    if a.value(&["preserve-fds"]).is_some_and(|v| v != "0") {
        return fail("unsupported: --preserve-fds");
    }
    if a.flag(&["no-pivot"]) {
        return fail("unsupported: --no-pivot (berth always uses pivot_root)");
    }
    let id = a.id(cmd)?.to_string();
    let bundle = PathBuf::from(a.value(&["bundle", "b"]).unwrap_or("."));
    let c = rt.create(&id, &bundle, CreateOptions::default())?;
    for w in c.warnings() {
        log(g, "warning", w);
    }
    if let Some(p) = a.value(&["pid-file"])
        && let Err(e) = write_pid_file(p, c.pid())
    {
        let mut c = c;
        let _ = c.delete(true);
        return Err(e);
    }
    Ok((c, a))
}

fn cmd_create(g: &Global, rt: &Runtime, rest: &[String]) -> Result<u8, Failure> {
    create_from_args(g, rt, rest, "create")?;
    Ok(0)
}

fn cmd_start(g: &Global, rt: &Runtime, rest: &[String]) -> Result<u8, Failure> {
    let a = Args::parse(rest, &[], &[])?;
    let mut c = rt.load(a.id("start")?)?;
    c.start()?;
    for w in c.warnings() {
        warn(g, w);
    }
    Ok(0)
}

fn cmd_run(g: &Global, rt: &Runtime, rest: &[String]) -> Result<u8, Failure> {
    // Signals sent to us while the container runs are forwarded to it;
    // blocked here, the child unblocks everything before exec.
    let forwarded = [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ];
    sys::block_signals(&forwarded)?;
    let (mut c, a) = create_from_args(g, rt, rest, "run")?;
    let created = c.warnings().len();
    if let Err(e) = c.start() {
        let _ = c.delete(true);
        return Err(e.into());
    }
    for w in c.warnings().iter().skip(created) {
        warn(g, w);
    }
    if a.flag(&["detach", "d"]) {
        return Ok(0);
    }
    let pid = c.pid();
    std::thread::spawn(move || {
        while let Ok(sig) = sys::wait_signal(&forwarded) {
            let _ = sys::kill(pid, sig);
        }
    });
    let status = c.wait();
    // Only what delete adds (create's and start's were logged already).
    let before = c.warnings().len();
    let deleted = c.delete(true);
    for w in c.warnings().iter().skip(before) {
        warn(g, w);
    }
    let status = status?;
    deleted?;
    Ok(status.code().clamp(0, 255) as u8)
}

fn cmd_state(rt: &Runtime, rest: &[String]) -> Result<u8, Failure> {
    let a = Args::parse(rest, &[], &[])?;
    let c = rt.load(a.id("state")?)?;
    out(&serde_json::to_string_pretty(&c.runc_state())?)?;
    Ok(0)
}

fn cmd_kill(rt: &Runtime, rest: &[String]) -> Result<u8, Failure> {
    let a = Args::parse(rest, &[], &["all", "a"])?;
    let id = a.id("kill")?;
    let sig = match a.positional.get(1).map(String::as_str) {
        // As runc: signal 0 checks that the container's process exists.
        Some("0") => 0,
        Some(s) => parse_signal(s)?.as_raw(),
        None => berth_runtime::signal::Signal::TERM.as_raw(),
    };
    rt.load(id)?.kill(sig, a.flag(&["all", "a"]))?;
    Ok(0)
}

fn cmd_delete(g: &Global, rt: &Runtime, rest: &[String]) -> Result<u8, Failure> {
    let a = Args::parse(rest, &[], &["force", "f"])?;
    let id = a.id("delete")?;
    let force = a.flag(&["force", "f"]);
    match rt.load(id) {
        Ok(mut c) => {
            c.delete(force)?;
            for w in c.warnings() {
                warn(g, w);
            }
        }
        // runc: deleting a missing container with --force is not an error.
        // As runc: a directory an aborted create left goes too.
        Err(berth_runtime::ContainerError::NotFound { .. }) if force => rt.remove_leftover(id)?,
        Err(e) => return Err(e.into()),
    }
    Ok(0)
}

fn cmd_list(rt: &Runtime, rest: &[String]) -> Result<u8, Failure> {
    let a = Args::parse(rest, &["format", "f"], &["quiet", "q"])?;
    let ids = rt.list()?;
    if a.flag(&["quiet", "q"]) {
        for id in ids {
            out(&id)?;
        }
        return Ok(0);
    }
    let states: Vec<_> = ids
        .iter()
        .filter_map(|id| rt.load(id).ok())
        .map(|c| c.runc_state())
        .collect();
    match a.value(&["format", "f"]).unwrap_or("table") {
        "json" => out(&serde_json::to_string(&states)?)?,
        "table" => {
            let rows: Vec<[String; 6]> = states
                .iter()
                .map(|s| {
                    [
                        s.id.clone(),
                        s.pid.to_string(),
                        s.status.to_string(),
                        s.bundle.display().to_string(),
                        s.created.clone(),
                        s.owner.clone(),
                    ]
                })
                .collect();
            let head = ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"].map(String::from);
            let mut widths = head.clone().map(|h| h.len());
            for r in &rows {
                for (w, c) in widths.iter_mut().zip(r) {
                    *w = (*w).max(c.len());
                }
            }
            for r in std::iter::once(&head).chain(rows.iter()) {
                let line: Vec<String> = r
                    .iter()
                    .zip(widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect();
                out(line.join("   ").trim_end())?;
            }
        }
        other => return fail(format!("unknown --format {other:?}: use table or json")),
    }
    Ok(0)
}

const DEFAULT_SPEC: &str = r#"{
  "ociVersion": "1.0.2-dev",
  "process": {
    "terminal": false,
    "user": {"uid": 0, "gid": 0},
    "args": ["sh"],
    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
    "cwd": "/",
    "capabilities": {
      "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
      "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
      "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
      "ambient": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    },
    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
    "noNewPrivileges": true
  },
  "root": {"path": "rootfs", "readonly": true},
  "hostname": "berth",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
  ],
  "linux": {
    "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}],
    "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
    "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
  }
}
"#;

fn cmd_spec(rest: &[String]) -> Result<u8, Failure> {
    let a = Args::parse(rest, &["bundle", "b"], &["rootless"])?;
    if a.flag(&["rootless"]) {
        return fail("unsupported: --rootless");
    }
    let dir = PathBuf::from(a.value(&["bundle", "b"]).unwrap_or("."));
    let path = dir.join("config.json");
    if path.exists() {
        return fail(format!(
            "{} already exists; remove it first",
            path.display()
        ));
    }
    fs::write(&path, DEFAULT_SPEC)
        .map_err(|e| Failure::Message(format!("write {}: {e}", path.display())))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_is_valid_and_plannable() {
        let spec: oci_spec::runtime::Spec = serde_json::from_str(DEFAULT_SPEC).unwrap();
        berth_runtime::spec::plan(&spec, Path::new("/b/rootfs"), Path::new("/b"), &|_| true)
            .unwrap();
        assert_eq!(spec.process().as_ref().unwrap().terminal(), Some(false));
    }

    #[test]
    fn flags_take_values_inline_or_next_and_positionals_follow() {
        let argv: Vec<String> = ["--bundle=/b", "--pid-file", "/p", "-d", "id1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let a = Args::parse(&argv, &["bundle", "pid-file"], &["d"]).unwrap();
        assert_eq!(a.value(&["bundle", "b"]), Some("/b"));
        assert_eq!(a.value(&["pid-file"]), Some("/p"));
        assert!(a.flag(&["d"]));
        assert_eq!(a.positional, vec!["id1"]);
        let argv: Vec<String> = ["id", "-9"].iter().map(|s| s.to_string()).collect();
        let a = Args::parse(&argv, &[], &["all"]).unwrap();
        assert_eq!(a.positional, vec!["id", "-9"]);
        assert!(Args::parse(&["--nope".to_string()], &[], &[]).is_err());
    }
}
