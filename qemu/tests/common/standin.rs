//! A stand-in for `qemu-system-x86_64`, for tests of berth-qemu's own
//! handling of QEMU (locks, signals, threads, the console pipe) that need
//! no guest: a shell script that prints to its console and answers console
//! input, with its QMP socket a symlink to a QMP server run by the test
//! (the Vm connects through the link).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_qemu::{Appliance, VmConfig};

use super::scratch;

/// How the stand-in's monitor behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Monitor {
    /// Answers every command with `{"return": {}}`; `quit` also ends the
    /// stand-in, as QEMU's does.
    Answers,
    /// Greets and negotiates capabilities, then reads every command and
    /// answers none: a QEMU whose main loop is stuck.
    Silent,
}

/// One stand-in QEMU, for one boot.
pub struct StandIn {
    /// The scratch directory: `bin/qemu-system-x86_64`, `out/` (a
    /// stand-in appliance) and `pid` once the stand-in ran.
    pub dir: PathBuf,
    pub appliance: Appliance,
    socket: PathBuf,
    commands: Arc<Mutex<Vec<String>>>,
}

impl StandIn {
    /// A stand-in that runs the shell commands `console` (its console
    /// output), then answers each console input line `LINE` with
    /// `stand-in: got LINE`, until it is killed or told to quit.
    pub fn new(name: &str, console: &str, monitor: Monitor) -> StandIn {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = scratch(name);
        // In the temporary directory, not the scratch one: a unix socket's
        // path is at most 107 bytes.
        let socket = std::env::temp_dir().join(format!(
            "berth-standin-{}-{}.sock",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).unwrap();
        let out = dir.join("out");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("vmlinuz"), b"stand-in").unwrap();
        std::fs::write(out.join("initrd.img"), b"stand-in").unwrap();
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let program = bin.join("qemu-system-x86_64");
        let pid = dir.join("pid");
        std::fs::write(
            &program,
            format!(
                r#"#!/bin/sh
# berth-qemu test stand-in for qemu-system-x86_64
while [ $# -gt 0 ]; do
    case "$1" in
        -qmp) qmp=${{2#unix:}}; qmp=${{qmp%,server=on,wait=off}}; shift ;;
    esac
    shift
done
echo $$ > '{pid}.new' && mv '{pid}.new' '{pid}'
ln -s '{socket}' "$qmp" || exit 1
{console}
# Builtins only from here on: a SIGKILL of this pid leaves nothing that
# holds the console pipe open.
while read -r line; do echo "stand-in: got $line"; done
exec sleep 1000000
"#,
                pid = pid.display(),
                socket = socket.display(),
            ),
        )
        .unwrap();
        std::fs::set_permissions(
            &program,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let commands = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&commands);
        std::thread::spawn(move || serve(&listener, monitor, &pid, &seen));
        StandIn {
            appliance: Appliance::from_dir(&out).unwrap(),
            dir,
            socket,
            commands,
        }
    }

    /// A config that boots this stand-in.
    pub fn config(&self) -> VmConfig {
        VmConfig {
            qemu: self.bin_dir().join("qemu-system-x86_64"),
            ..VmConfig::default()
        }
    }

    /// The directory holding `qemu-system-x86_64`, for PATH.
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.join("bin")
    }

    /// The stand-in OUTDIR (`vmlinuz`, `initrd.img`).
    pub fn outdir(&self) -> PathBuf {
        self.dir.join("out")
    }

    /// The stand-in's pid, once it ran.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Whether the stand-in ran and is still running (a zombie is not).
    pub fn is_running(&self) -> bool {
        self.pid().is_some_and(is_alive)
    }

    /// The QMP commands it received so far, by name.
    pub fn commands(&self) -> Vec<String> {
        self.commands.lock().unwrap().clone()
    }

    /// Waits until it received the QMP command `name`.
    pub fn wait_for_command(&self, name: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.commands().iter().any(|c| c == name) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Whether `pid` runs: it exists and is not a zombie (a container's PID 1
/// may never reap an orphan).
pub fn is_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name's closing parenthesis.
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// The monitor: one connection at a time, as QEMU's.
fn serve(listener: &UnixListener, monitor: Monitor, pid: &Path, seen: &Mutex<Vec<String>>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { return };
        let Ok(mut out) = stream.try_clone() else {
            return;
        };
        if out
            .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
            .is_err()
        {
            continue;
        }
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let request: serde_json::Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(_) => continue,
            };
            let name = request["execute"].as_str().unwrap_or("?").to_string();
            seen.lock().unwrap().push(name.clone());
            if name != "qmp_capabilities" && monitor == Monitor::Silent {
                continue;
            }
            let _ = out.write_all(b"{\"return\": {}}\r\n");
            if name == "quit"
                && let Some(pid) = std::fs::read_to_string(pid)
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok())
            {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
        }
    }
}
