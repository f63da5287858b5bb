//! The `berth-qemu` binary: `run` exit codes and Ctrl-C handling, against
//! real boots of busybox "floor" appliances.

mod common;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::standin::{Monitor, StandIn};
use common::{INIT_PROLOGUE, POWER_BUTTON_THEN_POWEROFF, TIMEOUT, floor_appliance};

const BIN: &str = env!("CARGO_BIN_EXE_berth-qemu");

/// A running `berth-qemu run`, its stdout and stderr collected.
struct Cli {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

fn collect(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let out = Arc::clone(&buf);
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            out.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    buf
}

impl Cli {
    fn run(outdir: &std::path::Path) -> Cli {
        Self::run_with(outdir, &[])
    }

    fn run_with(outdir: &std::path::Path, options: &[&str]) -> Cli {
        Self::spawn(Command::new(BIN).arg("run").arg(outdir).args(options))
    }

    /// `run` of a stand-in QEMU's OUTDIR, the stand-in first on PATH.
    fn run_standin(standin: &StandIn) -> Cli {
        Self::run_standin_with(standin, &[])
    }

    /// Like `run_standin`, with more environment variables.
    fn run_standin_with(standin: &StandIn, env: &[(&str, &str)]) -> Cli {
        let path = format!(
            "{}:{}",
            standin.bin_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Self::spawn(
            Command::new(BIN)
                .arg("run")
                .arg(standin.outdir())
                .env("PATH", path)
                .envs(env.iter().copied()),
        )
    }

    fn spawn(command: &mut Command) -> Cli {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Cli {
            child,
            stdout,
            stderr,
        }
    }

    /// Like `run`, with stderr a pipe whose reading end is closed: every
    /// write berth-qemu makes to it fails (EPIPE), as when its terminal
    /// went away.
    fn run_with_stderr_gone(outdir: &std::path::Path) -> Cli {
        let mut child = Command::new(BIN)
            .arg("run")
            .arg(outdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = collect(child.stdout.take().unwrap());
        drop(child.stderr.take());
        Cli {
            child,
            stdout,
            stderr: Arc::new(Mutex::new(String::new())),
        }
    }

    fn dump(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.lock().unwrap(),
            self.stderr.lock().unwrap()
        )
    }

    fn wait_stdout(&self, pattern: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while !self.stdout.lock().unwrap().contains(pattern) {
            assert!(
                Instant::now() < deadline,
                "no {pattern:?} on the console\n{}",
                self.dump()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    fn wait_stderr(&self, pattern: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while !self.stderr.lock().unwrap().contains(pattern) {
            assert!(
                Instant::now() < deadline,
                "no {pattern:?} on stderr\n{}",
                self.dump()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn interrupt(&self) {
        self.signal("INT");
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Exit code, and stderr once the collector drained it.
    fn finish(self) -> (i32, String) {
        self.finish_within(TIMEOUT)
    }

    /// Like `finish`, failing if berth-qemu runs `timeout` longer.
    fn finish_within(mut self, timeout: std::time::Duration) -> (i32, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "berth-qemu did not exit within {timeout:?}\n{}",
                    self.dump()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        std::thread::sleep(std::time::Duration::from_millis(200));
        let code = status
            .code()
            .unwrap_or_else(|| panic!("killed: {status}\n{}", self.dump()));
        (code, self.dump())
    }
}

/// A test that fails half-way must not leave its berth-qemu (and with it,
/// through the parent-death signal, its QEMU) running.
impl Drop for Cli {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            // Its run directory (the QMP socket's), which it had no chance to remove.
            let run_dir = std::env::temp_dir().join(format!("berth-qemu-{}-0", self.child.id()));
            let _ = std::fs::remove_dir_all(run_dir);
        }
    }
}

#[test]
fn run_exits_0_after_a_clean_power_off() {
    // A service's output, prefixed with its unit name, cannot pass for
    // PID 1's fatal error.
    let init = "#!/bin/busybox sh\necho '[     1.100] web: berth: fatal: only words'\necho 'berth-floor: bye'\n/bin/busybox poweroff -f\n";
    let appliance = floor_appliance("cli-poweroff", init, &[]);
    let cli = Cli::run(appliance.initrd.parent().unwrap());
    let (code, out) = cli.finish();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("berth-floor: bye"), "{out}");
    assert!(
        out.contains("berth-qemu: the appliance powered off"),
        "{out}"
    );
}

#[test]
fn run_exits_6_when_pid1_reports_a_fatal_error_and_powers_off() {
    // What berth-init does with its default `on_fatal: poweroff` when the
    // boot fails (e.g. the demo without its data disk): a `berth: fatal:`
    // line, then an orderly power-off.
    let init = r#"#!/bin/busybox sh
echo '[     1.694] berth: fatal: mount data disk /dev/vda (ext4) on /data: ENOENT'
echo '[     1.695] berth: powering off'
/bin/busybox poweroff -f
"#;
    let appliance = floor_appliance("cli-fatal", init, &[]);
    let cli = Cli::run(appliance.initrd.parent().unwrap());
    let (code, out) = cli.finish();
    assert_eq!(code, 6, "{out}");
    assert!(
        out.contains("berth-qemu: PID 1 reported a fatal error and powered off: [     1.694] berth: fatal: mount data disk /dev/vda (ext4) on /data: ENOENT"),
        "{out}"
    );
    assert!(!out.contains("the appliance powered off"), "{out}");
}

#[test]
fn run_exits_3_and_names_the_fatal_error_when_pid1_reboots() {
    // berth-init with `on_fatal: reboot`; -no-reboot makes QEMU exit.
    let init = r#"#!/bin/busybox sh
echo '[     1.694] berth: fatal: boot task t1 failed: exit status 1'
echo '[     1.695] berth: rebooting'
/bin/busybox reboot -f
"#;
    let appliance = floor_appliance("cli-fatal-reboot", init, &[]);
    let cli = Cli::run(appliance.initrd.parent().unwrap());
    let (code, out) = cli.finish();
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("berth-qemu: the appliance rebooted after PID 1 reported: [     1.694] berth: fatal: boot task t1 failed: exit status 1; QEMU runs with -no-reboot"),
        "{out}"
    );
}

#[test]
fn run_exits_2_when_pid1_dies() {
    let init = "#!/bin/busybox sh\necho 'berth-floor: dying'\nexit 1\n";
    let appliance = floor_appliance("cli-panic", init, &[]);
    let cli = Cli::run(appliance.initrd.parent().unwrap());
    let (code, out) = cli.finish();
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("the guest kernel panicked"), "{out}");
    assert!(out.contains("Attempted to kill init"), "{out}");
}

#[test]
fn first_ctrl_c_presses_the_power_button() {
    let init = format!("{INIT_PROLOGUE}{POWER_BUTTON_THEN_POWEROFF}");
    let appliance = floor_appliance("cli-ctrl-c", &init, &["button", "evdev"]);
    let cli = Cli::run(appliance.initrd.parent().unwrap());
    cli.wait_stdout("berth-floor: waiting for the power button");
    cli.interrupt();
    cli.wait_stdout("berth-floor: power button pressed");
    let (code, out) = cli.finish();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("asking the appliance to power down (QMP system_powerdown)"),
        "{out}"
    );
}

/// The terminal went away (SIGHUP): the appliance is powered down, not
/// killed with berth-qemu, so its data disk is unmounted cleanly.
#[test]
fn hang_up_powers_the_appliance_down() {
    let init = format!("{INIT_PROLOGUE}{POWER_BUTTON_THEN_POWEROFF}");
    let appliance = floor_appliance("cli-hup", &init, &["button", "evdev"]);
    let cli = Cli::run(appliance.initrd.parent().unwrap());
    cli.wait_stdout("berth-floor: waiting for the power button");
    cli.signal("HUP");
    cli.wait_stdout("berth-floor: power button pressed");
    let run_dir = std::env::temp_dir().join(format!("berth-qemu-{}-0", cli.child.id()));
    let (code, out) = cli.finish();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("hung up: asking the appliance to power down"),
        "{out}"
    );
    // The grace timer does not keep the VM (and its run directory) alive.
    assert!(!run_dir.exists(), "{} left behind", run_dir.display());
}

/// After a SIGHUP nobody can press Ctrl-C again: a guest that does not
/// power down is stopped after the grace period (60 s, so the run gets
/// that much longer than the usual bound).
#[test]
fn hang_up_stops_a_guest_that_does_not_power_down() {
    let init =
        "#!/bin/busybox sh\necho 'berth-floor: idle'\nwhile true; do /bin/busybox sleep 1; done\n";
    let appliance = floor_appliance("cli-hup-deaf", init, &[]);
    let marker = appliance.initrd.display().to_string();
    let cli = Cli::run(appliance.initrd.parent().unwrap());
    cli.wait_stdout("berth-floor: idle");
    cli.signal("HUP");
    // A second hang-up is not a second Ctrl-C.
    std::thread::sleep(std::time::Duration::from_secs(2));
    cli.signal("HUP");
    let (code, out) = cli.finish_within(TIMEOUT + std::time::Duration::from_secs(60));
    assert_eq!(code, 130, "{out}");
    assert!(
        out.contains("did not power down within 60 s: stopping QEMU"),
        "{out}"
    );
    assert!(!out.contains("berth-qemu: stopping QEMU"), "{out}");
    assert!(qemu_processes(&marker).is_empty(), "QEMU left running");
}

#[test]
fn ctrl_c_during_boot_is_repeated_until_the_guest_hears_it() {
    // The button's driver comes late, as with berth-init, which loads it in
    // the background: a press before that has no listener and is lost.
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox sleep 2\n{INIT_PROLOGUE}{POWER_BUTTON_THEN_POWEROFF}"
    );
    let appliance = floor_appliance("cli-ctrl-c-early", &init, &["button", "evdev"]);
    let cli = Cli::run(appliance.initrd.parent().unwrap());
    cli.wait_stdout("Run /init");
    cli.interrupt();
    assert!(
        !cli.stdout
            .lock()
            .unwrap()
            .contains("berth-floor: waiting for the power button"),
        "pressed too late to test anything\n{}",
        cli.dump()
    );
    cli.wait_stdout("berth-floor: power button pressed");
    let (code, out) = cli.finish();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("berth-qemu: the appliance powered off"),
        "{out}"
    );
    assert!(out.contains("no reaction to the power button yet"), "{out}");
}

#[test]
fn run_refuses_nonsense_values_before_starting_qemu() {
    // A stand-in OUTDIR: were QEMU started, it would fail on these files.
    let dir = common::scratch("cli-nonsense");
    std::fs::write(dir.join("vmlinuz"), b"stand-in").unwrap();
    std::fs::write(dir.join("initrd.img"), b"stand-in").unwrap();
    for (option, value, message) in [
        (
            "--memory",
            "0",
            "guest memory in MB must be a whole number from 128 to 1048576",
        ),
        (
            "--cpus",
            "0",
            "the number of cpus must be a whole number from 1 to 255",
        ),
        ("--data-disk", ":64M", "no file name before the size"),
        (
            "--data-disk",
            "data.img:0",
            "invalid data disk size 0 for data.img",
        ),
    ] {
        let out = Command::new(BIN)
            .arg("run")
            .arg(&dir)
            .args([option, value])
            .current_dir(&dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{option} {value}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{option} {value}: {stderr}");
        assert!(
            stderr.starts_with("berth-qemu: invalid value") && stderr.contains(message),
            "{option} {value}: {stderr}"
        );
        assert!(!stderr.contains("booting"), "{stderr}");
    }
    // An existing disk that was never formatted: refused before QEMU starts.
    let blank = dir.join("blank.img");
    std::fs::File::create(&blank)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let out = Command::new(BIN)
        .arg("run")
        .arg(&dir)
        .arg("--data-disk")
        .arg(&blank)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("holds no filesystem (its first MiB is all zeros)"),
        "{stderr}"
    );
    std::fs::remove_file(&blank).unwrap();
    // A host port another program listens on: named, before the data disk
    // is made and before QEMU starts.
    let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(BIN)
        .arg("run")
        .arg(&dir)
        .args(["--port", &format!("{port}:80"), "--data-disk", "new.img"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "berth-qemu: host port 127.0.0.1:{port} (--port {port}:80) is in use by another program or vm: choose a free host port\n"
        )
    );
    drop(taken);
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["initrd.img", "vmlinuz"], "no disk was created");
}

/// `--kvm` where KVM cannot boot the appliance is one clear line, exit 1,
/// before anything starts. This host's /dev/kvm is PVM's, which hangs a
/// stock kernel without a word on the console; elsewhere the check passes
/// and QEMU itself refuses the stand-in files.
#[test]
fn run_with_kvm_says_why_kvm_cannot_boot_here() {
    let dir = common::scratch("cli-kvm");
    std::fs::write(dir.join("vmlinuz"), b"stand-in").unwrap();
    std::fs::write(dir.join("initrd.img"), b"stand-in").unwrap();
    let out = Command::new(BIN)
        .arg("run")
        .arg(&dir)
        .arg("--kvm")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    let opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let expected = if pvm {
        "berth-qemu: kvm was requested but this host's /dev/kvm is kvm_pvm"
    } else if !opens {
        "berth-qemu: kvm was requested but /dev/kvm cannot be opened read-write"
    } else {
        "berth-qemu: qemu exited at start"
    };
    assert!(stderr.contains(expected), "expected {expected:?}: {stderr}");
    if pvm || !opens {
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("run without --kvm") || !pvm, "{stderr}");
    }
}

/// A Ctrl-C (or SIGTERM) while the data disk is being created: the disk
/// is finished whole (mkfs runs in its own process group), nothing
/// temporary is left, QEMU is not started, and the exit is 130.
#[test]
fn a_signal_while_the_disk_is_made_stops_before_the_boot() {
    let dir = common::scratch("cli-disk-signal");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("vmlinuz"), b"not started").unwrap();
    std::fs::write(out.join("initrd.img"), b"not started").unwrap();
    // A slow mkfs.ext4 first on PATH, which says when it runs.
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let started = dir.join("mkfs-started");
    let mkfs = bin.join("mkfs.ext4");
    std::fs::write(
        &mkfs,
        format!(
            "#!/bin/sh\ntouch {}\nsleep 2\nexec /sbin/mkfs.ext4 \"$@\"\n",
            started.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&mkfs, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let disk = dir.join("data.img");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for signal in ["INT", "TERM"] {
        let _ = std::fs::remove_file(&disk);
        let _ = std::fs::remove_file(&started);
        let mut child = Command::new(BIN)
            .arg("run")
            .arg(&out)
            .arg("--data-disk")
            .arg(format!("{}:16M", disk.display()))
            .env("PATH", &path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = collect(child.stderr.take().unwrap());
        let deadline = Instant::now() + TIMEOUT;
        while !started.exists() {
            assert!(Instant::now() < deadline, "mkfs never ran");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let code = child.wait().unwrap().code();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let err = stderr.lock().unwrap().clone();
        assert_eq!(code, Some(130), "SIG{signal}: {err}");
        assert!(
            err.contains("before QEMU started: not booting"),
            "SIG{signal}: {err}"
        );
        assert!(!err.contains("booting /"), "SIG{signal}: {err}");
        let bytes = std::fs::read(&disk).unwrap();
        assert_eq!(
            &bytes[1024 + 0x38..1024 + 0x3a],
            &[0x53, 0xef],
            "a whole ext4 disk"
        );
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["bin", "data.img", "mkfs-started", "out"],
            "SIG{signal}"
        );
    }
}

#[test]
fn second_ctrl_c_stops_qemu() {
    // This init ignores the power button: only the second Ctrl-C ends it.
    let init =
        "#!/bin/busybox sh\necho 'berth-floor: idle'\nwhile true; do /bin/busybox sleep 1; done\n";
    let appliance = floor_appliance("cli-ctrl-c-twice", init, &[]);
    let cli = Cli::run(appliance.initrd.parent().unwrap());
    cli.wait_stdout("berth-floor: idle");
    cli.interrupt();
    let deadline = Instant::now() + TIMEOUT;
    while !cli
        .stderr
        .lock()
        .unwrap()
        .contains("asking the appliance to power down")
    {
        assert!(
            Instant::now() < deadline,
            "first Ctrl-C not handled\n{}",
            cli.dump()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    cli.interrupt();
    let (code, out) = cli.finish();
    assert_eq!(code, 130, "{out}");
    assert!(out.contains("berth-qemu: stopping QEMU"), "{out}");
}

/// A QEMU whose monitor answers nothing (its main loop stuck): the first
/// Ctrl-C's power-button press waits for a reply that never comes, and the
/// second Ctrl-C still stops QEMU within seconds (a `quit` sent in at most
/// 1 s, then 3 s of grace), not behind that press.
#[test]
fn second_ctrl_c_stops_qemu_whose_monitor_does_not_answer() {
    let standin = StandIn::new("cli-silent-monitor", "echo 'stand-in: up'", Monitor::Silent);
    let cli = Cli::run_standin(&standin);
    cli.wait_stdout("stand-in: up");
    cli.interrupt();
    assert!(
        standin.wait_for_command("system_powerdown", TIMEOUT),
        "no power-button press\n{}",
        cli.dump()
    );
    cli.interrupt();
    let pid = standin.pid().unwrap();
    let (code, out) = cli.finish();
    assert_eq!(code, 130, "{out}");
    assert!(out.contains("berth-qemu: stopping QEMU"), "{out}");
    assert!(!common::standin::is_alive(pid), "QEMU left running\n{out}");
    // QMP quit was tried first.
    assert!(standin.commands().contains(&"quit".to_string()), "{out}");
    // Not behind the press: that one gives up on its reply after 30 s
    // and says so, unless QEMU is gone by then. A stop queued behind it
    // came only after that line.
    assert!(!out.contains("power-down request failed"), "{out}");
}

/// While the second Ctrl-C's `quit` waits for QEMU to act on it, a third
/// kills QEMU at once.
#[test]
fn third_ctrl_c_kills_qemu() {
    let standin = StandIn::new("cli-third-ctrl-c", "echo 'stand-in: up'", Monitor::Silent);
    // A grace of 30 s instead of 3 (a test-only variable): the third
    // Ctrl-C comes well within it even on a loaded machine, so what ends
    // QEMU is the third, not the grace running out.
    let cli = Cli::run_standin_with(&standin, &[("BERTH_QEMU_TEST_QUIT_GRACE_SECS", "30")]);
    cli.wait_stdout("stand-in: up");
    cli.interrupt();
    cli.wait_stderr("asking the appliance to power down");
    cli.interrupt();
    // The stopper now waits for the stand-in to act on `quit`.
    cli.wait_stderr("berth-qemu: stopping QEMU (QMP quit, SIGKILL if it still runs 30 s later");
    cli.interrupt();
    let pid = standin.pid().unwrap();
    let (code, out) = cli.finish();
    assert_eq!(code, 130, "{out}");
    assert!(out.contains("berth-qemu: killing QEMU (SIGKILL)"), "{out}");
    assert!(!common::standin::is_alive(pid), "QEMU left running\n{out}");
}

/// Its messages cannot be written (the terminal went away): Ctrl-C still
/// works, twice stops QEMU (writing them used to panic the signal thread,
/// and Ctrl-C did nothing any more).
#[test]
fn ctrl_c_works_when_stderr_is_gone() {
    let init =
        "#!/bin/busybox sh\necho 'berth-floor: idle'\nwhile true; do /bin/busybox sleep 1; done\n";
    let appliance = floor_appliance("cli-no-stderr", init, &[]);
    let cli = Cli::run_with_stderr_gone(appliance.initrd.parent().unwrap());
    cli.wait_stdout("berth-floor: idle");
    cli.interrupt();
    std::thread::sleep(std::time::Duration::from_secs(1));
    cli.interrupt();
    let marker = appliance.initrd.display().to_string();
    let (code, out) = cli.finish();
    assert_eq!(code, 130, "{out}");
    assert!(qemu_processes(&marker).is_empty(), "QEMU left running");
}

/// Pids of the QEMU processes whose command line names `marker`.
fn qemu_processes(marker: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args
            .first()
            .is_some_and(|a| a.ends_with("qemu-system-x86_64"))
            && args.iter().any(|a| a.contains(marker))
        {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn qemu_does_not_outlive_a_killed_berth_qemu() {
    let init =
        "#!/bin/busybox sh\necho 'berth-floor: idle'\nwhile true; do /bin/busybox sleep 1; done\n";
    let appliance = floor_appliance("cli-sigkill", init, &[]);
    let mut cli = Cli::run(appliance.initrd.parent().unwrap());
    cli.wait_stdout("berth-floor: idle");
    let marker = appliance.initrd.display().to_string();
    assert_eq!(qemu_processes(&marker).len(), 1, "{}", cli.dump());
    // SIGKILL: berth-qemu gets no chance to stop QEMU itself, nor to
    // remove its run directory (the QMP socket's), which this test does.
    let run_dir = std::env::temp_dir().join(format!("berth-qemu-{}-0", cli.child.id()));
    cli.child.kill().unwrap();
    cli.child.wait().unwrap();
    assert!(run_dir.join("qmp.sock").exists(), "{}", run_dir.display());
    let _ = std::fs::remove_dir_all(&run_dir);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = qemu_processes(&marker);
        if left.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            for pid in &left {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            panic!("QEMU {left:?} outlived its berth-qemu\n{}", cli.dump());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The parent-death signal ties QEMU to a thread berth-qemu keeps until
/// QEMU is reaped: killed outright, berth-qemu takes QEMU with it (the
/// same as `qemu_does_not_outlive_a_killed_berth_qemu`, with a stand-in).
#[test]
fn a_killed_berth_qemu_takes_its_qemu_with_it() {
    let standin = StandIn::new(
        "cli-sigkill-standin",
        "echo 'stand-in: up'",
        Monitor::Answers,
    );
    let mut cli = Cli::run_standin(&standin);
    cli.wait_stdout("stand-in: up");
    let pid = standin.pid().unwrap();
    assert!(common::standin::is_alive(pid), "{}", cli.dump());
    cli.child.kill().unwrap();
    cli.child.wait().unwrap();
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("berth-qemu-{}-0", cli.child.id())),
    );
    let deadline = Instant::now() + TIMEOUT;
    while common::standin::is_alive(pid) {
        if Instant::now() >= deadline {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!(
                "the stand-in QEMU {pid} outlived its berth-qemu\n{}",
                cli.dump()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Without setpriv QEMU would outlive a killed berth-qemu: refused, with
/// the package to install, before anything starts.
#[test]
fn run_refuses_to_start_qemu_without_setpriv() {
    let standin = StandIn::new("cli-no-setpriv", "echo 'stand-in: up'", Monitor::Answers);
    // Only the stand-in: no setpriv on PATH.
    let out = Command::new(BIN)
        .arg("run")
        .arg(standin.outdir())
        .env("PATH", standin.bin_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("setpriv") && stderr.contains("apt-get install util-linux"),
        "{stderr}"
    );
    assert!(!stderr.contains("booting"), "{stderr}");
    assert_eq!(standin.pid(), None, "the stand-in ran");
}

/// A terminal that takes nothing (Ctrl-S, a `| less` nobody scrolls): the
/// console is still drained, so QEMU never blocks on its stdout, and the
/// echo drops what it cannot keep and says so.
#[test]
fn a_terminal_that_takes_nothing_does_not_stop_qemu() {
    let standin = StandIn::new(
        "cli-stuck-terminal",
        // 4 MB of console, then a file once all of it was taken.
        r#"head -c 4000000 /dev/zero | tr '\0' x
echo
echo flooded > "$(dirname "$0")/../flooded"
echo 'stand-in: flooded'"#,
        Monitor::Answers,
    );
    let path = format!(
        "{}:{}",
        standin.bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new(BIN)
        .arg("run")
        .arg(standin.outdir())
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Never read: full after 64 KiB.
    let _stdout = child.stdout.take().unwrap();
    let stderr = collect(child.stderr.take().unwrap());
    let cli = Cli {
        child,
        stdout: Arc::new(Mutex::new(String::new())),
        stderr,
    };
    let flooded = standin.dir.join("flooded");
    let deadline = Instant::now() + TIMEOUT;
    while !flooded.exists() {
        assert!(
            Instant::now() < deadline,
            "the stand-in QEMU is stuck writing its console\n{}",
            cli.dump()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    cli.interrupt();
    cli.wait_stderr("asking the appliance to power down");
    cli.interrupt();
    let (code, out) = cli.finish();
    assert_eq!(code, 130, "{out}");
    assert!(
        out.contains("the terminal did not take the console's last output within 5 s"),
        "{out}"
    );
    assert!(
        out.contains("bytes of console output were not shown: the terminal did not keep up"),
        "{out}"
    );
}

#[test]
fn run_refuses_an_outdir_without_an_appliance() {
    let out = Command::new(BIN)
        .args(["run", "/nonexistent/berth-outdir"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/berth-outdir/vmlinuz is missing"),
        "{stderr}"
    );
}

/// `berth-qemu run OUTDIR` under `umask 000`, with a stand-in QEMU first
/// on PATH that boots nothing: it writes to `report` what it found (the
/// umask it inherited, its QMP socket's directory, its `-initrd` file) and
/// exits 1. Returns the report and berth-qemu's exit code and stderr.
fn run_with_report_qemu(dir: &std::path::Path, outdir: &str) -> (String, Option<i32>, String) {
    let out = dir.join(outdir);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("vmlinuz"), b"stand-in").unwrap();
    std::fs::write(out.join("initrd.img"), b"stand-in").unwrap();
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let report = dir.join("report");
    let qemu = bin.join("qemu-system-x86_64");
    std::fs::write(
        &qemu,
        format!(
            r#"#!/bin/sh
while [ $# -gt 0 ]; do
    case "$1" in
        -qmp) qmp=${{2#unix:}}; qmp=${{qmp%,server=on,wait=off}}; shift ;;
        -initrd) initrd=$2; shift ;;
    esac
    shift
done
{{
    echo "umask $(umask)"
    echo "run dir $(stat -c '%a %u' "$(dirname "$qmp")")"
    if [ -f "$initrd" ]; then echo "initrd found"; else echo "initrd $initrd missing"; fi
}} > {report}
echo "stand-in qemu: not booting" >&2
exit 1
"#,
            report = report.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&qemu, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = Command::new("sh")
        .args(["-c", "umask 000 && exec \"$@\"", "sh", BIN, "run"])
        .arg(&out)
        .env("PATH", &path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("the stand-in qemu did not run ({e}): {stderr}"));
    (report, output.status.code(), stderr)
}

/// QEMU binds its QMP socket with the mode the umask leaves: the
/// directory around it must keep other users out even under umask 000,
/// as QMP runs host commands (`migrate` to `exec:`) as berth-qemu's user.
#[test]
fn the_qmp_directory_is_private_under_umask_000() {
    let dir = common::scratch("cli-umask");
    let (report, code, stderr) = run_with_report_qemu(&dir, "out");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("stand-in qemu: not booting"), "{stderr}");
    let uid = std::fs::metadata(&dir).unwrap().uid();
    assert_eq!(
        report,
        format!("umask 0000\nrun dir 700 {uid}\ninitrd found\n"),
        "{stderr}"
    );
}

/// `-initrd` takes its path whole: an OUTDIR with a comma boots the
/// files in it (in QEMU 7.2, not an option list whose commas are doubled).
#[test]
fn an_outdir_with_a_comma_reaches_qemu_as_it_is() {
    let dir = common::scratch("cli-comma");
    let (report, code, stderr) = run_with_report_qemu(&dir, "out,dir");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(report.ends_with("\ninitrd found\n"), "{report}");
}

#[test]
fn boot_time_prints_the_median_and_samples() {
    let init = "#!/bin/busybox sh\necho 'berth-floor: timed'\n/bin/busybox poweroff -f\n";
    let appliance = floor_appliance("cli-boot-time", init, &[]);
    let out = Command::new(BIN)
        .arg("boot-time")
        .arg(appliance.initrd.parent().unwrap())
        .args(["--until", "berth-floor: timed", "--runs", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().next().unwrap_or("");
    assert!(
        line.starts_with("boot to \"berth-floor: timed\": median "),
        "{line}"
    );
    let samples = line
        .split("samples ms: ")
        .nth(1)
        .unwrap()
        .trim_end_matches(')');
    let samples: Vec<u64> = samples.split(' ').map(|s| s.parse().unwrap()).collect();
    assert_eq!(samples.len(), 2, "{line}");
    assert!(samples.iter().all(|&ms| ms > 0), "{line}");
    // Under TCG, QEMU's own count of the guest code it translated: a
    // kernel's boot is tens of thousands of blocks.
    let blocks = stdout.lines().nth(1).unwrap_or("");
    let counts = blocks
        .strip_prefix("code translated by TCG up to the line: median ")
        .and_then(|rest| rest.split_once(" blocks (samples: "))
        .map(|(_, list)| list.trim_end_matches(')'))
        .unwrap_or_else(|| panic!("no translated-code line: {stdout}"));
    let counts: Vec<u64> = counts.split(' ').map(|s| s.parse().unwrap()).collect();
    assert_eq!(counts.len(), 2, "{blocks}");
    assert!(counts.iter().all(|&n| n > 10_000), "{blocks}");
}

#[test]
fn run_options_reach_the_guest() {
    let init = format!(
        "{INIT_PROLOGUE}{}",
        r#"
echo "berth-floor: cmdline $(cat /proc/cmdline)"
echo "berth-floor: disk $(cat /sys/block/vda/serial) $(cat /sys/block/vda/size) sectors"
echo "berth-floor: $(grep MemTotal /proc/meminfo)"
poweroff -f
"#
    );
    let appliance = floor_appliance("cli-options", &init, &["virtio_pci", "virtio_blk"]);
    let outdir = appliance.initrd.parent().unwrap();
    let disk = outdir.join("data.img");
    let port = berth_qemu::free_port().unwrap().to_string();
    let cli = Cli::run_with(
        outdir,
        &[
            "--data-disk",
            &format!("{}:24M", disk.display()),
            "--port",
            &format!("{port}:8080"),
            "--memory",
            "384",
            "--append",
            "berth.test=1",
        ],
    );
    let (code, out) = cli.finish();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("berth-floor: cmdline console=ttyS0 panic=-1 berth.test=1"),
        "{out}"
    );
    assert!(
        out.contains("berth-floor: disk berth-data 49152 sectors"),
        "{out}"
    );
    assert!(out.contains(&format!("127.0.0.1:{port} -> 8080")), "{out}");
    // 384 MiB minus what the firmware and kernel reserve.
    let mem_kb: u64 = out
        .lines()
        .find_map(|l| l.split("MemTotal:").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal\n{out}"));
    assert!((300_000..=393_216).contains(&mem_kb), "{mem_kb} kB\n{out}");
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 24 << 20);
}
