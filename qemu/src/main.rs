//! berth-qemu: boot a berth appliance under QEMU.
//!
//! Exit codes of `run` (how the appliance ended):
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | the guest powered off cleanly |
//! | 1 | berth-qemu itself failed (bad arguments, QEMU did not start, ...) |
//! | 2 | the guest kernel panicked: PID 1 died or crashed |
//! | 3 | the guest rebooted (QEMU runs with `-no-reboot`, so it stopped) |
//! | 4 | QEMU failed on its own (non-zero exit) |
//! | 5 | QEMU exited without a power-off, reboot or panic on the console |
//! | 6 | PID 1 reported a fatal error (`berth: fatal: ...`) and powered off |
//! | 130 | stopped from the host: a second Ctrl-C |
#![forbid(unsafe_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, bail};
use berth_qemu::{
    Accel, Appliance, CPUS_RANGE, DataDisk, MEMORY_MB_RANGE, Outcome, Vm, VmConfig, VmError,
    error_chain, escape_controls, is_pid1_failure, measure_boot, measure_guest_boot, median,
    median_translated_blocks,
};
use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// `eprintln!` that cannot panic: when the terminal went away (stderr
/// closed or broken) berth-qemu must still handle Ctrl-C and stop QEMU;
/// a panic in the signal thread would lose both.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `println!` that cannot panic: output into a pipe that closed early
/// (`| head`) is dropped.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Parser)]
#[command(name = "berth-qemu", about = "Boot a berth appliance under QEMU")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot OUTDIR (vmlinuz + initrd.img) with the serial console on the
    /// terminal. Ctrl-C once: ACPI power button (QMP system_powerdown,
    /// repeated every 1.5 s until the guest reacts or QEMU exits);
    /// twice: stop QEMU. The exit code tells how the appliance ended.
    Run {
        /// Directory holding vmlinuz and initrd.img (berth-build's OUTDIR)
        outdir: PathBuf,
        #[command(flatten)]
        vm: VmArgs,
    },
    /// Download Debian's cloud kernel (apt-get download linux-image-*-cloud-amd64)
    /// and unpack it; prints the paths. Reuses a cached extraction.
    FetchKernel {
        /// Cache directory [default: $XDG_CACHE_HOME/berth/kernel or ~/.cache/berth/kernel]
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Boot OUTDIR several times and print the time from QEMU's start to the
    /// first console line containing TEXT (each VM is then stopped).
    BootTime {
        /// Directory holding vmlinuz and initrd.img
        outdir: PathBuf,
        /// The measured boot ends at the first console line containing TEXT
        #[arg(long, value_name = "TEXT", value_parser = parse_until)]
        until: String,
        /// Number of boots
        #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
        runs: u16,
        /// Give up on one boot after this many seconds
        #[arg(long, value_name = "SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        timeout: u64,
        /// Measure guest time instead: QEMU counts one instruction as one
        /// nanosecond of the guest's clock (-icount shift=0,sleep=off), and
        /// the sample is the timestamp on the matched line (printk's or
        /// berth-init's `[seconds]`). Independent of the host's load.
        #[arg(long, conflicts_with = "kvm")]
        icount: bool,
        #[command(flatten)]
        vm: VmArgs,
    },
}

#[derive(Args)]
struct VmArgs {
    /// Raw ext4 data disk as a virtio-blk device; created and formatted when
    /// missing (default size 256M, at least 4M; K/M/G/T suffixes). Split at
    /// the last ':' only when a size follows, so a:b.img is a file name
    #[arg(long, value_name = "FILE[:SIZE]")]
    data_disk: Option<DataDisk>,
    /// Forward 127.0.0.1:HOST on this machine to GUEST in the appliance (repeatable)
    #[arg(long = "port", value_name = "HOST:GUEST", value_parser = parse_port)]
    ports: Vec<(u16, u16)>,
    /// Guest memory in MB (MiB: 1 MB = 1024 × 1024 bytes), 128 to 1048576
    #[arg(long, value_name = "MB", default_value_t = 512, value_parser = parse_memory)]
    memory: u32,
    /// Virtual CPUs, 1 to 255
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_cpus)]
    cpus: u32,
    /// Extra kernel command line (after console=ttyS0 panic=-1)
    #[arg(long, value_name = "ARGS", default_value = "")]
    append: String,
    /// Use KVM instead of TCG software emulation; fails if /dev/kvm is unusable or is PVM's (kvm_pvm)
    #[arg(long)]
    kvm: bool,
}

impl VmArgs {
    fn config(self) -> VmConfig {
        VmConfig {
            memory_mb: self.memory,
            cpus: self.cpus,
            ports: self.ports,
            data_disk: self.data_disk,
            extra_cmdline: self.append,
            accel: if self.kvm { Accel::Kvm } else { Accel::Tcg },
            ..VmConfig::default()
        }
    }
}

/// A number in `range`, said as `what` in the error.
fn parse_in_range(
    s: &str,
    range: &std::ops::RangeInclusive<u32>,
    what: &str,
) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(format!(
            "{what} must be a whole number from {} to {}",
            range.start(),
            range.end()
        )),
    }
}

fn parse_memory(s: &str) -> Result<u32, String> {
    parse_in_range(s, &MEMORY_MB_RANGE, "guest memory in MB")
}

fn parse_cpus(s: &str) -> Result<u32, String> {
    parse_in_range(s, &CPUS_RANGE, "the number of cpus")
}

fn parse_port(s: &str) -> Result<(u16, u16), String> {
    let (host, guest) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected HOST:GUEST"))?;
    let port = |p: &str| match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{s:?}: {p:?} is not a port (1-65535)")),
        Ok(n) => Ok(n),
    };
    Ok((port(host)?, port(guest)?))
}

/// Parses the arguments. Help and version go to stdout (exit 0); a usage
/// error is one line on stderr and exit 1, like every other failure of
/// berth-qemu itself (clap's own 2 would read as "the guest panicked").
fn parse_args() -> Result<Cli, ExitCode> {
    Cli::try_parse().map_err(|err| match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = err.print();
            ExitCode::SUCCESS
        }
        // No subcommand: the help, on stderr.
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            ExitCode::from(1)
        }
        _ => {
            note!("berth-qemu: {}", usage_error(&err));
            ExitCode::from(1)
        }
    })
}

/// A clap error as one line: its message without the `error: ` tag, the
/// usage block and the `try '--help'` hint; a message clap spreads over
/// lines ("the following required arguments were not provided:" and the
/// arguments) is joined.
fn usage_error(err: &clap::Error) -> String {
    let text = err.to_string();
    let message: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("Usage:"))
        .filter(|l| !l.starts_with("For more information"))
        .map(str::trim)
        .collect();
    let message = message.join(" ");
    message
        .strip_prefix("error: ")
        .unwrap_or(&message)
        .to_string()
}

fn main() -> ExitCode {
    let cli = match parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let result = match cli.command {
        Cmd::Run { outdir, vm } => run(outdir, vm.config()),
        Cmd::FetchKernel { dir } => fetch_kernel(dir),
        Cmd::BootTime {
            outdir,
            until,
            runs,
            timeout,
            icount,
            vm,
        } => {
            let mut config = vm.config();
            if icount {
                config.accel = Accel::TcgIcount;
            }
            boot_time(outdir, &until, usize::from(runs), timeout, config)
        }
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            note!("berth-qemu: {}", failure_line(&err));
            ExitCode::from(1)
        }
    }
}

/// berth-qemu's own failure as the one line it prints. Escaped as a
/// whole: a `.context()` may name a file, and not every message went
/// through [`error_chain`].
fn failure_line(err: &anyhow::Error) -> String {
    escape_controls(&format!("{err:#}")).into_owned()
}

fn run(outdir: PathBuf, config: VmConfig) -> anyhow::Result<ExitCode> {
    let quit_grace = parse_quit_grace(std::env::var_os(QUIT_GRACE_ENV).as_deref())?;
    let appliance = Appliance::from_dir(&outdir).map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    // Registered before anything is made, so a Ctrl-C during the disk's
    // creation (mkfs runs in its own process group) or the boot reaches
    // us; during the boot the press is then repeated until the guest can
    // hear it (see `press_until_heard`).
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).context("installing signal handlers")?;
    let signal_handle = signals.handle();
    // Before the "booting" line, so that a refusal is the only line
    // printed; the boot then does not check again (an existing data disk's
    // first MiB is read once).
    let checked = Vm::check_host(&appliance, &config).map_err(|e| match &e {
        // A DiskError names the disk already.
        VmError::DataDisk { source, .. } => anyhow::anyhow!(error_chain(source)),
        _ => anyhow::anyhow!(error_chain(&e)),
    })?;
    if let Some(signal) = signals.pending().next() {
        note!(
            "berth-qemu: {} before QEMU started: not booting",
            signal_name(signal)
        );
        return Ok(ExitCode::from(130));
    }

    let forwards: Vec<String> = config
        .ports
        .iter()
        .map(|(h, g)| format!("127.0.0.1:{h} -> {g}"))
        .collect();
    note!(
        "berth-qemu: booting {} ({}, {} MiB{}{}); Ctrl-C powers it down, twice stops QEMU",
        outdir.display(),
        if config.accel == Accel::Kvm {
            "kvm"
        } else {
            "tcg"
        },
        config.memory_mb,
        if forwards.is_empty() {
            String::new()
        } else {
            format!(", ports {}", forwards.join(", "))
        },
        config.data_disk.as_ref().map_or(String::new(), |d| format!(
            ", data disk {}",
            d.path.display()
        )),
    );
    let vm = checked
        .boot(Some(Box::new(std::io::stdout())))
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    let vm = Arc::new(vm);

    let signal_thread = {
        let vm = Arc::clone(&vm);
        std::thread::spawn(move || handle_signals(&vm, &mut signals, quit_grace))
    };
    spawn_console_input(Arc::downgrade(&vm));

    let status = vm
        .wait_exit(Duration::MAX)
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    signal_handle.close();
    let _ = signal_thread.join();
    let outcome = vm
        .outcome()
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))?
        .context("qemu has not exited")?;
    // The console's last lines before the verdict. Not forever: a terminal
    // stopped with Ctrl-S, or a `| less` nobody scrolls, may never take
    // them (and stdout is not touched here: the echo may hold its lock).
    if !vm.wait_echo(ECHO_DRAIN) {
        note!(
            "\r\nberth-qemu: the terminal did not take the console's last output within {} s",
            ECHO_DRAIN.as_secs()
        );
    }
    let dropped = vm.echo_dropped();
    if dropped > 0 {
        note!(
            "berth-qemu: {dropped} bytes of console output were not shown: the terminal did not keep up"
        );
    }
    let code = match outcome {
        Outcome::PoweredOff => {
            note!("berth-qemu: the appliance powered off");
            0
        }
        Outcome::FailedPowerOff { line } => {
            note!("berth-qemu: PID 1 reported a fatal error and powered off: {line}");
            6
        }
        Outcome::Panicked { line } => {
            note!("berth-qemu: the guest kernel panicked (PID 1 died or crashed): {line}");
            2
        }
        Outcome::Rebooted => {
            // berth-init's `on_fatal: reboot` ends here too: say why.
            let log = vm.serial_log();
            let fatal = log
                .lines()
                .find(|l| is_pid1_failure(l))
                .map_or(String::new(), |l| {
                    format!(" after PID 1 reported: {}", l.trim_end_matches('\r'))
                });
            note!(
                "berth-qemu: the appliance rebooted{fatal}; QEMU runs with -no-reboot, so it stopped"
            );
            3
        }
        Outcome::QemuFailed { status } => {
            note!(
                "berth-qemu: qemu failed ({status}): {}",
                vm.qemu_stderr().trim()
            );
            4
        }
        Outcome::Unexplained { status } => {
            note!("berth-qemu: {}", unexplained(&status, &vm.serial_log()));
            5
        }
        Outcome::StoppedByHost => {
            note!("berth-qemu: qemu stopped ({status})");
            130
        }
    };
    Ok(ExitCode::from(code))
}

/// How long the console's echo gets, once QEMU has exited, to write what
/// it still holds.
const ECHO_DRAIN: Duration = Duration::from_secs(5);

/// How often the power button is pressed again while the guest shows no
/// reaction to it.
const PRESS_INTERVAL: Duration = Duration::from_millis(1500);

/// berth-init's line when the power button reached it (init/src/event_loop.rs
/// logs `berth: power button pressed: shutting down`).
const BUTTON_HEARD: &str = "power button pressed";

/// The message of exit code 5. Nothing at all on the console means the
/// kernel never got as far as its first line, which is what too little
/// memory for the kernel and the initramfs looks like.
fn unexplained(status: &std::process::ExitStatus, console: &str) -> String {
    let silent = if console.trim().is_empty() {
        "; the console stayed empty: the kernel never started (too little --memory for this kernel and initramfs?)"
    } else {
        ""
    };
    format!("qemu exited ({status}) without a power-off, reboot or panic on the console{silent}")
}

/// `--until`: every line contains the empty text, so it would time the
/// first line of all (SeaBIOS's), not a boot.
fn parse_until(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("the text to wait for must not be empty".to_string());
    }
    Ok(s.to_string())
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "interrupted (SIGINT)",
        SIGTERM => "terminated (SIGTERM)",
        SIGHUP => "hung up (SIGHUP)",
        _ => "signalled",
    }
}

/// Ctrl-C (or SIGTERM) once: press the power button until the guest hears
/// it; twice: stop QEMU ([`Vm::stop`]: QMP `quit`, SIGKILL `quit_grace`
/// ([`QUIT_GRACE`]) later); three times: SIGKILL now. Returns when the
/// signals were closed (QEMU exited), after the presser and the stopper
/// ended.
///
/// SIGHUP (the terminal went away, an SSH session dropped) powers down as
/// the first Ctrl-C does, so the data disk is unmounted cleanly instead of
/// QEMU being killed with berth-qemu; as nobody is left to press Ctrl-C
/// again, QEMU is stopped if the guest is still up [`HANGUP_GRACE`] later.
/// A SIGHUP after the first signal changes nothing.
fn handle_signals(vm: &Arc<Vm>, signals: &mut Signals, quit_grace: Duration) {
    let stop_pressing = Arc::new(AtomicBool::new(false));
    let mut presser: Option<JoinHandle<()>> = None;
    let mut stopper: Option<JoinHandle<()>> = None;
    for signal in signals.forever() {
        if presser.is_none() {
            if signal == SIGHUP {
                note!(
                    "\r\nberth-qemu: hung up: asking the appliance to power down (QMP system_powerdown); QEMU is stopped if it still runs in {} s",
                    HANGUP_GRACE.as_secs()
                );
                let vm = Arc::downgrade(vm);
                std::thread::spawn(move || stop_after(&vm, HANGUP_GRACE, quit_grace));
            } else {
                note!(
                    "\r\nberth-qemu: asking the appliance to power down (QMP system_powerdown); Ctrl-C again stops QEMU"
                );
            }
            let vm = Arc::clone(vm);
            let stop = Arc::clone(&stop_pressing);
            presser = Some(std::thread::spawn(move || press_until_heard(&vm, &stop)));
        } else if signal == SIGHUP {
            continue;
        } else if stopper.is_none() {
            stop_pressing.store(true, Ordering::SeqCst);
            note!(
                "\r\nberth-qemu: stopping QEMU (QMP quit, SIGKILL if it still runs {} s later; Ctrl-C again kills it now)",
                quit_grace.as_secs()
            );
            // In a thread of its own: a third Ctrl-C is heard meanwhile.
            let vm = Arc::clone(vm);
            stopper = Some(std::thread::spawn(move || {
                let _ = vm.stop(quit_grace);
            }));
        } else {
            note!("\r\nberth-qemu: killing QEMU (SIGKILL)");
            let _ = vm.kill();
        }
    }
    stop_pressing.store(true, Ordering::SeqCst);
    for thread in [presser, stopper].into_iter().flatten() {
        let _ = thread.join();
    }
}

/// How long QEMU gets to act on a `quit` before it is killed. It exits in
/// milliseconds when its main loop runs; when that is stuck, it never does.
const QUIT_GRACE: Duration = Duration::from_secs(3);

/// For berth-qemu's own tests only, not for users (the README does not
/// name it): whole seconds that replace [`QUIT_GRACE`]. A test of the third
/// Ctrl-C sets it long, so that its third signal always comes within the
/// grace, however loaded the machine running the test is.
const QUIT_GRACE_ENV: &str = "BERTH_QEMU_TEST_QUIT_GRACE_SECS";

/// The quit grace: [`QUIT_GRACE`], or the test's value of
/// [`QUIT_GRACE_ENV`]. A value that is not whole seconds is refused, so a
/// test cannot run with another grace than it asked for.
fn parse_quit_grace(value: Option<&std::ffi::OsStr>) -> anyhow::Result<Duration> {
    let Some(value) = value else {
        return Ok(QUIT_GRACE);
    };
    value
        .to_str()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .with_context(|| {
            format!(
                "{QUIT_GRACE_ENV}={}: not a whole number of seconds",
                value.to_string_lossy()
            )
        })
}

/// How long a guest gets to power down after berth-qemu was hung up on:
/// berth-init stops the services in order, each within its stop timeout
/// (10 s by default).
const HANGUP_GRACE: Duration = Duration::from_secs(60);

/// Stops QEMU unless it exited within `grace` (then as a second Ctrl-C
/// does, SIGKILL `quit_grace` after the `quit`). Holds only a weak
/// reference: the VM (and its run directory) goes when `run` is done with
/// it, not when this thread next wakes up.
fn stop_after(vm: &Weak<Vm>, grace: Duration, quit_grace: Duration) {
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        match vm.upgrade() {
            Some(vm) if matches!(vm.try_exit(), Ok(None)) => {}
            _ => return,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let Some(vm) = vm.upgrade() else {
        return;
    };
    if matches!(vm.try_exit(), Ok(None)) {
        note!(
            "\r\nberth-qemu: the appliance did not power down within {} s: stopping QEMU",
            grace.as_secs()
        );
        let _ = vm.stop(quit_grace);
    }
}

/// Presses the ACPI power button, and again every [`PRESS_INTERVAL`] until
/// berth-init logs that it heard it, QEMU exits or `stop` is set. A press
/// before the guest's button driver is loaded (berth-init loads it in the
/// background during boot) is lost: the ACPI event has no listener yet.
/// Presses after berth-init heard one are not needed, and harmless anyway:
/// a press during its shutdown does not start another.
fn press_until_heard(vm: &Vm, stop: &AtomicBool) {
    let mark = vm.serial_mark();
    let mut presses = 0u32;
    while !stop.load(Ordering::SeqCst) && !matches!(vm.try_exit(), Ok(Some(_)) | Err(_)) {
        presses += 1;
        if presses == 2 {
            note!(
                "\r\nberth-qemu: no reaction to the power button yet (its driver may still be loading): pressing it every {:.1} s",
                PRESS_INTERVAL.as_secs_f64()
            );
        }
        if let Err(err) = vm.qmp_powerdown() {
            if matches!(vm.try_exit(), Ok(Some(_))) {
                return;
            }
            note!(
                "\r\nberth-qemu: power-down request failed: {}",
                error_chain(&err)
            );
        }
        match vm.wait_for_pid1_line_after(mark, BUTTON_HEARD, PRESS_INTERVAL) {
            Err(VmError::LineTimeout { .. }) => {}
            // Heard, or the console closed (QEMU exited), or QEMU is gone.
            _ => return,
        }
    }
}

/// Copies our stdin to the guest's serial console (line by line, as the
/// terminal stays in cooked mode so Ctrl-C remains a signal to us). Holds
/// only a weak reference: it never keeps the VM alive, and on EOF it just
/// stops, leaving QEMU's console input open.
fn spawn_console_input(vm: Weak<Vm>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 1024];
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let Some(vm) = vm.upgrade() else { return };
            if vm.write_console(&buf[..n]).is_err() {
                return;
            }
        }
    });
}

fn fetch_kernel(dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let dir = match dir {
        Some(dir) => dir,
        None => berth_qemu::default_cache_dir()?,
    };
    let kernel = berth_qemu::fetch_kernel(&dir)
        .with_context(|| format!("fetching the cloud kernel into {}", dir.display()))?;
    out!("release:     {}", kernel.release);
    out!("package:     {}={}", kernel.package, kernel.package_version);
    out!("deb:         {}", kernel.deb.display());
    out!("vmlinuz:     {}", kernel.vmlinuz.display());
    out!("modules_dir: {}", kernel.modules_dir.display());
    out!("config:      {}", kernel.config.display());
    Ok(ExitCode::SUCCESS)
}

fn boot_time(
    outdir: PathBuf,
    until: &str,
    runs: usize,
    timeout: u64,
    config: VmConfig,
) -> anyhow::Result<ExitCode> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let appliance = Appliance::from_dir(&outdir).map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    let timeout = Duration::from_secs(timeout);
    let guest = config.accel == Accel::TcgIcount;
    let samples = if guest {
        measure_guest_boot(&appliance, &config, until, runs, timeout)
            .map_err(|e| anyhow::anyhow!(error_chain(&e)))
    } else {
        measure_boot(&appliance, &config, until, runs, timeout)
            .map_err(|e| anyhow::anyhow!(error_chain(&e)))
    }
    .with_context(|| format!("measuring the boot of {}", outdir.display()))?;
    let times: Vec<Duration> = samples.iter().map(|s| s.time).collect();
    let ms: Vec<String> = times
        .iter()
        .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
        .collect();
    out!(
        "boot to {until:?}: median {:.0} ms{} over {runs} runs (samples ms: {})",
        median(&times).as_secs_f64() * 1000.0,
        if guest {
            " of guest time (icount: 1 ns per instruction)"
        } else {
            ""
        },
        ms.join(" ")
    );
    if let Some(mid) = median_translated_blocks(&samples) {
        let list: Vec<String> = samples
            .iter()
            .filter_map(|s| s.translated_blocks)
            .map(|n| n.to_string())
            .collect();
        out!(
            "code translated by TCG up to the line: median {mid} blocks (samples: {})",
            list.join(" ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_one_line_with_its_controls_escaped() {
        let err =
            anyhow::Error::new(std::io::Error::other("bad\x1b[2J\nline")).context("read /tmp/a\rb");
        assert_eq!(
            failure_line(&err),
            "read /tmp/a\\x0db: bad\\x1b[2J\\x0aline"
        );
    }

    #[test]
    fn the_test_only_quit_grace_is_whole_seconds() {
        use std::ffi::OsStr;
        assert_eq!(parse_quit_grace(None).unwrap(), QUIT_GRACE);
        assert_eq!(
            parse_quit_grace(Some(OsStr::new("30"))).unwrap(),
            Duration::from_secs(30)
        );
        for bad in ["", "3s", "-1", "1.5"] {
            let err = parse_quit_grace(Some(OsStr::new(bad))).unwrap_err();
            assert_eq!(
                failure_line(&err),
                format!("{QUIT_GRACE_ENV}={bad}: not a whole number of seconds")
            );
        }
    }

    #[test]
    fn ports_are_parsed() {
        assert_eq!(parse_port("8080:80"), Ok((8080, 80)));
        for bad in ["8080", "0:80", "80:0", "x:80", "70000:80", ":80"] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }

    fn parse(args: &[&str]) -> Result<Cli, String> {
        Cli::try_parse_from(["berth-qemu"].iter().chain(args)).map_err(|e| usage_error(&e))
    }

    fn run_config(args: &[&str]) -> Result<VmConfig, String> {
        let mut full = vec!["run", "out"];
        full.extend_from_slice(args);
        match parse(&full)?.command {
            Cmd::Run { vm, .. } => Ok(vm.config()),
            _ => unreachable!("parsed run"),
        }
    }

    #[test]
    fn zero_and_absurd_vm_sizes_are_refused_in_one_line() {
        for (args, message) in [
            (
                ["--memory", "0"],
                "invalid value '0' for '--memory <MB>': guest memory in MB must be a whole number from 128 to 1048576",
            ),
            (
                ["--memory", "4294967296"],
                "invalid value '4294967296' for '--memory <MB>': guest memory in MB must be a whole number from 128 to 1048576",
            ),
            (
                ["--memory", "2G"],
                "invalid value '2G' for '--memory <MB>': guest memory in MB must be a whole number from 128 to 1048576",
            ),
            (
                ["--cpus", "0"],
                "invalid value '0' for '--cpus <N>': the number of cpus must be a whole number from 1 to 255",
            ),
            (
                ["--cpus", "1000"],
                "invalid value '1000' for '--cpus <N>': the number of cpus must be a whole number from 1 to 255",
            ),
            (
                ["--data-disk", ":64M"],
                "invalid value ':64M' for '--data-disk <FILE[:SIZE]>': invalid data disk \":64M\": no file name before the size",
            ),
        ] {
            let err = run_config(&args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} accepted"));
            assert_eq!(err, message, "{args:?}");
            assert!(!err.contains('\n'), "{err}");
        }
        for zero in ["data.img:0", "data.img:"] {
            assert!(run_config(&["--data-disk", zero]).is_err(), "{zero}");
        }
    }

    #[test]
    fn vm_options_are_parsed() {
        let config = run_config(&[
            "--memory",
            "384",
            "--cpus",
            "2",
            "--data-disk",
            "a:b.img",
            "--port",
            "8080:80",
        ])
        .unwrap();
        assert_eq!(config.memory_mb, 384);
        assert_eq!(config.cpus, 2);
        assert_eq!(
            config.data_disk,
            Some(DataDisk {
                path: "a:b.img".into(),
                size: None
            })
        );
        assert_eq!(config.ports, [(8080, 80)]);
        let defaults = run_config(&[]).unwrap();
        assert_eq!((defaults.memory_mb, defaults.cpus), (512, 1));
        let disk = run_config(&["--data-disk", "a:b.img:64M"])
            .unwrap()
            .data_disk;
        assert_eq!(
            disk,
            Some(DataDisk {
                path: "a:b.img".into(),
                size: Some(64 << 20)
            })
        );
    }

    #[test]
    fn an_empty_console_suggests_too_little_memory() {
        use std::os::unix::process::ExitStatusExt;
        let status = std::process::ExitStatus::from_raw(0);
        assert_eq!(
            unexplained(&status, " \r\n"),
            "qemu exited (exit status: 0) without a power-off, reboot or panic on the console; the console stayed empty: the kernel never started (too little --memory for this kernel and initramfs?)"
        );
        assert_eq!(
            unexplained(&status, "[    0.000000] Linux version 6.1\n"),
            "qemu exited (exit status: 0) without a power-off, reboot or panic on the console"
        );
    }

    #[test]
    fn missing_and_conflicting_arguments_are_one_line() {
        for (args, message) in [
            (
                &["boot-time", "out"][..],
                "the following required arguments were not provided: --until <TEXT>",
            ),
            (
                &["run"][..],
                "the following required arguments were not provided: <OUTDIR>",
            ),
            (
                &["boot-time", "out", "--until", "x", "--kvm", "--icount"][..],
                "the argument '--kvm' cannot be used with '--icount'",
            ),
        ] {
            assert_eq!(parse(args).err().as_deref(), Some(message), "{args:?}");
        }
    }

    #[test]
    fn boot_time_refuses_an_empty_until() {
        for until in ["", "  "] {
            let err = parse(&["boot-time", "out", "--until", until]).err();
            assert_eq!(
                err.as_deref(),
                Some(
                    format!(
                        "invalid value '{until}' for '--until <TEXT>': the text to wait for must not be empty"
                    )
                    .as_str()
                )
            );
        }
    }

    #[test]
    fn boot_time_refuses_zero_runs_and_timeout() {
        for args in [["--runs", "0"], ["--timeout", "0"]] {
            let mut full = vec!["boot-time", "out", "--until", "x"];
            full.extend_from_slice(&args);
            assert!(parse(&full).is_err(), "{args:?}");
        }
    }

    #[test]
    fn help_names_the_values_the_readme_names() {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        let run = cmd
            .find_subcommand_mut("run")
            .unwrap()
            .render_help()
            .to_string();
        for value in [
            "--memory <MB>",
            "--cpus <N>",
            "--data-disk <FILE[:SIZE]>",
            "--port <HOST:GUEST>",
            "--append <ARGS>",
        ] {
            assert!(run.contains(value), "{value} not in\n{run}");
        }
        let boot_time = cmd
            .find_subcommand_mut("boot-time")
            .unwrap()
            .render_help()
            .to_string();
        for value in ["--until <TEXT>", "--runs <N>", "--timeout <SECS>", "TEXT"] {
            assert!(boot_time.contains(value), "{value} not in\n{boot_time}");
        }
        assert!(!boot_time.contains("PATTERN"), "{boot_time}");
        let fetch = cmd
            .find_subcommand_mut("fetch-kernel")
            .unwrap()
            .render_help()
            .to_string();
        assert!(fetch.contains("--dir <DIR>"), "{fetch}");
    }
}
