//! Booting an appliance under QEMU and driving it: the serial console through
//! a pipe, QMP through a unix socket, port forwards on 127.0.0.1, a data disk.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::ops::RangeInclusive;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::console::{ConsoleLog, LineWait, time_left};
use crate::disk::{DataDisk, DiskError, prepare_data_disk};
use crate::qmp::{Qmp, QmpControl, QmpError, ctrl_alt_delete_keys};

/// The kernel prefixes every panic with this (`panic()` in kernel/panic.c);
/// a dead PID 1 reads "Kernel panic - not syncing: Attempted to kill init!".
pub const PANIC_MARKER: &str = "Kernel panic - not syncing";
/// `kernel_power_off()` prints this (pr_emerg, so even with `quiet`).
pub const POWER_OFF_MARKER: &str = "reboot: Power down";
/// `kernel_restart()` prints this; with `-no-reboot` QEMU then exits.
pub const RESTART_MARKER: &str = "reboot: Restarting system";
/// What berth-init (init/src/main.rs, supervisor.rs) logs when it fails and
/// gives up, before powering off or rebooting as its `on_fatal` says:
/// `[     1.694] berth: fatal: mount data disk ...`.
pub const FATAL_MARKER: &str = "berth: fatal: ";
/// What berth-init's panic hook writes straight to the console (no
/// timestamp) before it powers off or reboots.
pub const PID1_PANIC_MARKER: &str = "berth: panic: ";

/// The text of one of berth-init's own console lines, after its timestamp
/// and `berth: `: `[     1.694] berth: fatal: x` gives `fatal: x`. The
/// timestamp is berth-init's `[seconds.millis] ` or, when it logs through
/// /dev/kmsg, printk's `[seconds.micros] `. A service's line is
/// `[stamp] NAME: text` and `berth` is a reserved unit name, so no service
/// output can look like this; `None` for any other line.
pub fn pid1_message(line: &str) -> Option<&str> {
    let line = line.trim_end_matches('\r');
    let rest = line.strip_prefix('[')?;
    let (stamp, rest) = rest.split_once("] ")?;
    let (secs, frac) = stamp.trim_start_matches(' ').split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(secs) || !digits(frac) {
        return None;
    }
    rest.strip_prefix("berth: ")
}

/// Whether a console line is the kernel's own and starts with `marker`:
/// right after printk's `[seconds.micros] ` timestamp, or at the line's
/// start when printk prints no time. A service's output never is (its
/// lines read `[stamp] NAME: text`), so a service that prints "Kernel
/// panic - not syncing" or "reboot: Power down" cannot fake the end of
/// the machine.
pub fn is_kernel_line(line: &str, marker: &str) -> bool {
    let line = line.trim_end_matches('\r');
    if line.starts_with(marker) {
        return true;
    }
    let Some((stamp, rest)) = line.strip_prefix('[').and_then(|r| r.split_once("] ")) else {
        return false;
    };
    let Some((secs, micros)) = stamp.trim_start_matches(' ').split_once('.') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(secs) && digits(micros) && rest.starts_with(marker)
}

/// Whether a console line is PID 1 reporting that it failed: berth-init's
/// own `berth: fatal: ` line, or its panic hook's `berth: panic: ` line
/// (which starts the line: everything else on the console, the kernel's
/// and the services' lines, starts with a `[timestamp]`).
pub fn is_pid1_failure(line: &str) -> bool {
    let line = line.trim_end_matches('\r');
    line.starts_with(PID1_PANIC_MARKER)
        || pid1_message(line).is_some_and(|m| m.starts_with("fatal: "))
}

/// Guest memory a VM may have, in MiB. From QEMU's own default, 128: the
/// Debian cloud kernel with the demo's initramfs needs 80 (at 64 it dies
/// before its first console line, and QEMU exits 0), and a bigger
/// initramfs needs more. Above 1 TiB is beyond the 40 physical address
/// bits of TCG's default CPU.
pub const MEMORY_MB_RANGE: RangeInclusive<u32> = 128..=1_048_576;
/// Virtual CPUs a VM may have: above 255 x86 needs x2APIC and interrupt
/// remapping (an IOMMU), which the machine we build does not have.
pub const CPUS_RANGE: RangeInclusive<u32> = 1..=255;

/// How long QEMU gets to create its QMP socket before boot gives up.
const QMP_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long [`Vm::stop`] tries to hand `quit` to a monitor that reads
/// nothing.
const QUIT_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// An appliance: a kernel and an initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appliance {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

impl Appliance {
    /// An OUTDIR of `berth-build build`: `vmlinuz` and `initrd.img`.
    pub fn from_dir(dir: &Path) -> Result<Self, VmError> {
        let appliance = Appliance {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
        };
        appliance.check()?;
        Ok(appliance)
    }

    fn check(&self) -> Result<(), VmError> {
        for path in [&self.kernel, &self.initrd] {
            let problem = match fs::metadata(path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(VmError::MissingFile { path: path.clone() });
                }
                Err(e) => e.to_string(),
                Ok(meta) if !meta.is_file() => "not a regular file".to_string(),
                Ok(meta) if meta.len() == 0 => "empty".to_string(),
                Ok(_) => continue,
            };
            return Err(VmError::BadFile {
                path: path.clone(),
                problem,
            });
        }
        Ok(())
    }
}

/// How the guest CPU is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// Software emulation: slower, works everywhere (where /dev/kvm is
    /// PVM's, KVM hangs a stock kernel: see [`check_kvm`]).
    #[default]
    Tcg,
    /// Hardware virtualisation; only when asked for and `/dev/kvm` opens.
    Kvm,
    /// Software emulation counting guest time in instructions (`-icount
    /// shift=0,sleep=off`: one instruction is one nanosecond of the guest's
    /// clock, and idle time is skipped). The guest clock no longer depends
    /// on the host's speed or load: for measurements, not for use.
    TcgIcount,
}

/// What to boot the appliance with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub memory_mb: u32,
    pub cpus: u32,
    /// TCP forwards `(host port, guest port)`; the host side is bound to 127.0.0.1.
    pub ports: Vec<(u16, u16)>,
    pub data_disk: Option<DataDisk>,
    /// Appended to `console=ttyS0 panic=-1`.
    pub extra_cmdline: String,
    pub accel: Accel,
    /// The QEMU binary.
    pub qemu: PathBuf,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            memory_mb: 512,
            cpus: 1,
            ports: Vec::new(),
            data_disk: None,
            extra_cmdline: String::new(),
            accel: Accel::Tcg,
            qemu: PathBuf::from("qemu-system-x86_64"),
        }
    }
}

/// How the appliance ended, read from the console and QEMU's exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest powered off (QEMU exits 0).
    PoweredOff,
    /// PID 1 (berth-init) reported a fatal error (`berth: fatal: ...` or
    /// `berth: panic: ...`, see [`is_pid1_failure`]) and then powered the
    /// guest off, as its default `on_fatal: poweroff` says; the first such
    /// line. A power-off, but not a clean one: the appliance failed.
    FailedPowerOff { line: String },
    /// The kernel panicked, e.g. because PID 1 died; the panic line.
    Panicked { line: String },
    /// The guest asked for a reboot (or ctrl-alt-del hit a kernel that
    /// reboots on it); `-no-reboot` turned that into QEMU exiting.
    Rebooted,
    /// We stopped QEMU (QMP `quit` or kill) before the guest ended.
    StoppedByHost,
    /// QEMU exited on its own with a failure status.
    QemuFailed { status: ExitStatus },
    /// QEMU exited 0 without a power-off, reboot or panic on the console.
    Unexplained { status: ExitStatus },
}

impl Outcome {
    fn classify(console: &ConsoleLog, status: ExitStatus, host_stopped: bool) -> Outcome {
        let text = console.text();
        let kernel_said = |marker| text.lines().any(|l| is_kernel_line(l, marker));
        if let Some(line) = text.lines().find(|l| is_kernel_line(l, PANIC_MARKER)) {
            return Outcome::Panicked {
                line: line.trim_end_matches('\r').to_string(),
            };
        }
        if kernel_said(POWER_OFF_MARKER) && status.success() {
            if let Some(line) = text.lines().find(|l| is_pid1_failure(l)) {
                return Outcome::FailedPowerOff {
                    line: line.trim_end_matches('\r').to_string(),
                };
            }
            return Outcome::PoweredOff;
        }
        if kernel_said(RESTART_MARKER) && status.success() {
            return Outcome::Rebooted;
        }
        if host_stopped {
            return Outcome::StoppedByHost;
        }
        if status.success() {
            Outcome::Unexplained { status }
        } else {
            Outcome::QemuFailed { status }
        }
    }
}

impl VmConfig {
    /// Refuses what QEMU would fail on, or do something silly with: memory
    /// or CPUs out of range, a zero port, one host port forwarded twice.
    pub fn validate(&self) -> Result<(), VmError> {
        if !MEMORY_MB_RANGE.contains(&self.memory_mb) {
            return Err(VmError::BadMemory {
                memory_mb: self.memory_mb,
            });
        }
        if !CPUS_RANGE.contains(&self.cpus) {
            return Err(VmError::BadCpus { cpus: self.cpus });
        }
        for (i, &(host, guest)) in self.ports.iter().enumerate() {
            if host == 0 || guest == 0 {
                return Err(VmError::BadPort { host, guest });
            }
            if self.ports[..i].iter().any(|&(h, _)| h == host) {
                return Err(VmError::DuplicatePort { host });
            }
        }
        Ok(())
    }

    /// Whether QEMU will be able to listen on each forwarded host port:
    /// each is bound once, then let go (QEMU binds it a moment later; a
    /// program taking it in between still gets QEMU's own refusal). Says
    /// which port is taken instead of QEMU's "Could not set up host
    /// forwarding rule".
    pub fn check_host_ports(&self) -> Result<(), VmError> {
        for &(host, guest) in &self.ports {
            match std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, host)) {
                Ok(listener) => drop(listener),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    return Err(VmError::PortInUse { host, guest });
                }
                Err(source) => return Err(VmError::PortUnusable { host, source }),
            }
        }
        Ok(())
    }
}

/// Errors of booting and driving a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("appliance file {path} is missing")]
    MissingFile { path: PathBuf },
    #[error("appliance file {path} is unusable: {problem}")]
    BadFile { path: PathBuf, problem: String },
    #[error("invalid port forward {host}:{guest}: ports must be non-zero")]
    BadPort { host: u16, guest: u16 },
    #[error("host port 127.0.0.1:{host} is forwarded twice: one --port per host port")]
    DuplicatePort { host: u16 },
    #[error(
        "host port 127.0.0.1:{host} (--port {host}:{guest}) is in use by another program or vm: choose a free host port"
    )]
    PortInUse { host: u16, guest: u16 },
    #[error("host port 127.0.0.1:{host} cannot be listened on")]
    PortUnusable {
        host: u16,
        #[source]
        source: io::Error,
    },
    #[error("invalid guest memory {memory_mb} MiB: must be {} to {} MiB", MEMORY_MB_RANGE.start(), MEMORY_MB_RANGE.end())]
    BadMemory { memory_mb: u32 },
    #[error("invalid number of cpus {cpus}: must be {} to {}", CPUS_RANGE.start(), CPUS_RANGE.end())]
    BadCpus { cpus: u32 },
    #[error("kvm was requested but /dev/kvm cannot be opened read-write")]
    KvmUnavailable {
        #[source]
        source: io::Error,
    },
    #[error(
        "kvm was requested but this host's /dev/kvm is kvm_pvm (nested paravirtual KVM), which runs only kernels built as PVM guests; Debian's kernels are not, and hang there: run without --kvm (TCG)"
    )]
    KvmPvm,
    // Every DiskError names the disk's path already.
    #[error("could not prepare the data disk")]
    DataDisk {
        path: PathBuf,
        #[source]
        source: DiskError,
    },
    #[error("could not create the vm run directory {path}")]
    RunDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "vm run directory {path} is not private to this user ({problem}): the qmp socket in it would give control of qemu"
    )]
    RunDirNotPrivate { path: PathBuf, problem: String },
    #[error("could not read this process's effective uid from /proc/self/status")]
    EffectiveUid {
        #[source]
        source: io::Error,
    },
    #[error(
        "qmp socket path {path} is longer than a unix socket address allows: set TMPDIR to a shorter directory"
    )]
    SocketPathTooLong { path: PathBuf },
    #[error(
        "setpriv is not installed (apt-get install util-linux): qemu is started through it so that it dies with berth-qemu"
    )]
    NoSetpriv,
    #[error("could not start {program} (apt-get install qemu-system-x86)")]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("qemu exited at start ({status}): {stderr}")]
    QemuStart { status: ExitStatus, stderr: String },
    #[error("qemu did not open its qmp socket {path} within {timeout:?}")]
    QmpTimeout {
        path: PathBuf,
        timeout: Duration,
        #[source]
        source: QmpError,
    },
    #[error("could not use the qmp socket {path}")]
    QmpSocket {
        path: PathBuf,
        #[source]
        source: QmpError,
    },
    #[error("qmp command {command} failed")]
    Qmp {
        command: String,
        #[source]
        source: QmpError,
    },
    #[error("qmp command {command} replied {reply:?}, expected {expected}")]
    QmpReply {
        command: String,
        reply: String,
        expected: &'static str,
    },
    #[error("no console line containing {pattern:?} within {timeout:?}")]
    LineTimeout { pattern: String, timeout: Duration },
    /// `why`: empty, or " after " and the line that tells why the guest
    /// ended (PID 1's fatal error, the kernel's panic).
    #[error("qemu exited ({status}){why} before the console printed a line containing {pattern:?}")]
    LineNeverCame {
        pattern: String,
        status: String,
        why: String,
    },
    #[error("qemu still running after {timeout:?}")]
    ExitTimeout { timeout: Duration },
    #[error("could not wait for qemu")]
    Wait {
        #[source]
        source: io::Error,
    },
    #[error("could not kill qemu")]
    Kill {
        #[source]
        source: io::Error,
    },
    #[error("could not write to the serial console")]
    ConsoleInput {
        #[source]
        source: io::Error,
    },
    #[error("could not pick a free port on 127.0.0.1")]
    FreePort {
        #[source]
        source: io::Error,
    },
}

/// QEMU's complaint as one line: its lines joined with "; " (a locked
/// data disk, say, is "Failed to get "write" lock" and then "Is another
/// process using the image [FILE]?").
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// [`check_kvm`] for this host's `/sys/module` and `/dev/kvm`.
pub fn check_host_kvm() -> Result<(), VmError> {
    check_kvm(Path::new("/sys/module"), Path::new("/dev/kvm"))
}

/// Whether KVM can boot an appliance here: `kvm_dev` opens read-write, and
/// it is not PVM's (`kvm_pvm` among the loaded modules under `sys_module`).
/// PVM runs nested guests without hardware virtualisation, but only
/// kernels built for it; a stock kernel hangs right after its real-mode
/// setup, without a word on the console, so it is refused up front.
pub fn check_kvm(sys_module: &Path, kvm_dev: &Path) -> Result<(), VmError> {
    if sys_module.join("kvm_pvm").exists() {
        return Err(VmError::KvmPvm);
    }
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(kvm_dev)
        .map(drop)
        .map_err(|source| VmError::KvmUnavailable { source })
}

/// A free TCP port on 127.0.0.1 (bound, then released: another process may
/// take it in between, which is good enough for tests and a CLI).
pub fn free_port() -> Result<u16, VmError> {
    let listener =
        TcpListener::bind(("127.0.0.1", 0)).map_err(|source| VmError::FreePort { source })?;
    let port = listener
        .local_addr()
        .map_err(|source| VmError::FreePort { source })?
        .port();
    Ok(port)
}

/// The full kernel command line for a config.
pub fn kernel_cmdline(config: &VmConfig) -> String {
    // console=ttyS0: the kernel and PID 1 talk on the serial port we read.
    // panic=-1: reboot at once on panic, which -no-reboot turns into QEMU
    // exiting, so a dead PID 1 fails a test in seconds instead of hanging.
    let mut cmdline = String::from("console=ttyS0 panic=-1");
    let extra = config.extra_cmdline.trim();
    if !extra.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    cmdline
}

/// A path as a value inside one of QEMU's option lists (`-drive`, `-qmp`),
/// which separate with commas: a literal comma is doubled. Byte by byte, so
/// a file name that is not UTF-8 reaches QEMU as it is. Only for option
/// lists: a plain argument (`-kernel`, `-initrd`) is taken whole, and a
/// doubled comma there names another file.
fn escape_option(value: &Path) -> OsString {
    let mut escaped = Vec::with_capacity(value.as_os_str().len());
    for &byte in value.as_os_str().as_bytes() {
        escaped.push(byte);
        if byte == b',' {
            escaped.push(b',');
        }
    }
    OsString::from_vec(escaped)
}

/// The QEMU command line (without the program) for an appliance and config,
/// with the QMP socket at `qmp`. Pure: checks nothing on disk.
pub fn qemu_args(
    appliance: &Appliance,
    config: &VmConfig,
    qmp: &Path,
) -> Result<Vec<OsString>, VmError> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
    // No default devices (VGA, default NIC, parallel port, CD-ROM): only what
    // we add below. q35, not pc: on QEMU < 9.2 pc's ACPI _PRT is a 128-round
    // AML loop the kernel interprets for every PCI device it enables
    // (measured under TCG: the virtio_pci probe of disk + NIC took 250-650
    // ms; on q35, with a static table, ~20 ms). q35 still has the i8042
    // keyboard controller (send-key reaches the guest through it) and ACPI
    // (system_powerdown).
    push(&["-nodefaults", "-no-user-config", "-display", "none"]);
    config.validate()?;
    let memory = config.memory_mb.to_string();
    match config.accel {
        // Under TCG the guest's RAM is a memfd (shared memory, 4 KiB
        // pages), not QEMU's default anonymous memory, which QEMU marks for
        // transparent huge pages: there each first touch of a 2 MiB region
        // makes the host zero all of it, though the guest's early
        // allocations touch a few pages in each. TCG gains nothing from
        // huge pages (its TLB maps 4 KiB guest pages either way). Measured
        // on the demo (perf, 2026-12-01): zeroing went from 14 % of QEMU's
        // CPU time to 4-6 %, and the boot to the first service from 4.60 s
        // to 4.17 s (mean of eight interleaved pairs; the floor's alike
        // either way, six pairs). KVM keeps huge pages: there they let the
        // second-level (EPT) tables map guest RAM in 2 MiB pages.
        Accel::Tcg | Accel::TcgIcount => push(&[
            "-object",
            &format!("memory-backend-memfd,id=ram,size={memory}M"),
            "-machine",
            "q35,memory-backend=ram",
        ]),
        Accel::Kvm => push(&["-machine", "q35"]),
    }
    match config.accel {
        Accel::Tcg => push(&["-accel", "tcg"]),
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::TcgIcount => push(&["-accel", "tcg", "-icount", "shift=0,sleep=off"]),
    }
    let cpus = config.cpus.to_string();
    push(&["-m", &memory, "-smp", &cpus]);
    // -no-reboot: a guest reboot (and the reboot after a panic) ends QEMU.
    push(&["-no-reboot"]);
    // The serial console on QEMU's stdio, which are our pipes; signal=off so
    // a ^C byte is console input, never a signal to QEMU.
    push(&[
        "-chardev",
        "stdio,id=console,signal=off",
        "-serial",
        "chardev:console",
    ]);
    let mut qmp_arg = OsString::from("unix:");
    qmp_arg.push(escape_option(qmp));
    qmp_arg.push(",server=on,wait=off");
    args.push("-qmp".into());
    args.push(qmp_arg);

    // User networking, restricted: the guest reaches neither the host nor the
    // outside; only the explicit forwards below, bound to 127.0.0.1, get in.
    let mut netdev = String::from("user,id=net0,restrict=on");
    for &(host, guest) in &config.ports {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
    }
    args.push("-netdev".into());
    args.push(netdev.into());
    // romfile= (empty): no iPXE option ROM, which SeaBIOS would otherwise
    // initialise on every boot for a network boot we never do.
    args.push("-device".into());
    args.push("virtio-net-pci,netdev=net0,romfile=".into());

    if let Some(disk) = &config.data_disk {
        // The file driver named, and the path as its filename: QEMU parses
        // no protocol out of it. Given as `file=PATH`, the block layer
        // reads whatever precedes a `:` before any `/` as a protocol
        // (`a:b.img` is "Unknown protocol 'a'", `nbd:...` would connect)
        // and `json:{...}` as the options themselves; an absolute path or
        // a `./` prefix would dodge those two rules, this dodges every
        // rule, now and in later QEMUs. The disk is a regular file
        // ([`prepare_data_disk`]), what the file driver requires.
        let mut drive = OsString::from("file.driver=file,file.filename=");
        drive.push(escape_option(&disk.path));
        drive.push(",format=raw,if=none,id=data");
        args.push("-drive".into());
        args.push(drive);
        args.push("-device".into());
        args.push("virtio-blk-pci,drive=data,serial=berth-data".into());
    }

    // Plain arguments, not option lists: their commas stay as they are.
    args.push("-kernel".into());
    args.push(appliance.kernel.as_os_str().to_owned());
    args.push("-initrd".into());
    args.push(appliance.initrd.as_os_str().to_owned());
    args.push("-append".into());
    args.push(kernel_cmdline(config).into());
    Ok(args)
}

/// A private directory for the QMP socket, removed when the VM is dropped.
fn make_run_dir() -> Result<PathBuf, VmError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    if n == 0 {
        remove_stale_run_dirs(&std::env::temp_dir());
    }
    let dir = std::env::temp_dir().join(format!("berth-qemu-{}-{n}", std::process::id()));
    // A leftover of a killed berth-qemu that had our pid. Not followed if
    // it is a symlink; in a sticky /tmp, another user's stays.
    let _ = fs::remove_dir_all(&dir);
    create_private_dir(&dir)?;
    Ok(dir)
}

/// Creates `dir` for this user alone, or takes an existing one that
/// already is: whoever can connect to the QMP socket inside controls QEMU,
/// and through it runs commands as us (`migrate` to an `exec:` URI runs a
/// shell command). The socket's own mode comes from the umask, so the
/// directory is what keeps other users out.
fn create_private_dir(dir: &Path) -> Result<(), VmError> {
    use std::os::unix::fs::DirBuilderExt;
    // 0700 given to mkdir(2) itself, not set by a chmod after it: the
    // umask only clears bits, so the directory is never open to others,
    // not even for a moment, whatever the umask.
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        // Another user may have made it first (the name is predictable):
        // checked below like our own.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(VmError::RunDir {
                path: dir.to_path_buf(),
                source,
            });
        }
    }
    check_private_dir(dir, effective_uid()?)
}

/// Refuses `dir` unless it is a directory (not a symlink to one, which
/// another user could point elsewhere) owned by `euid` without any group
/// or other permission bits.
fn check_private_dir(dir: &Path, euid: u32) -> Result<(), VmError> {
    use std::os::unix::fs::MetadataExt;
    // lstat: the symlink itself, not where it leads.
    let meta = fs::symlink_metadata(dir).map_err(|source| VmError::RunDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let problem = if meta.file_type().is_symlink() {
        "it is a symlink".to_string()
    } else if !meta.is_dir() {
        "it is not a directory".to_string()
    } else if meta.uid() != euid {
        format!("it is owned by uid {}, not {euid}", meta.uid())
    } else if meta.mode() & 0o077 != 0 {
        format!("its mode is {:04o}", meta.mode() & 0o7777)
    } else {
        return Ok(());
    };
    Err(VmError::RunDirNotPrivate {
        path: dir.to_path_buf(),
        problem,
    })
}

/// This process's effective uid: the second field of the `Uid:` line of
/// /proc/self/status (real, effective, saved, filesystem). std has no
/// geteuid, and this crate calls nothing unsafe.
fn effective_uid() -> Result<u32, VmError> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|source| VmError::EffectiveUid { source })?;
    parse_effective_uid(&status).ok_or_else(|| VmError::EffectiveUid {
        source: io::Error::new(io::ErrorKind::InvalidData, "no valid Uid: line"),
    })
}

fn parse_effective_uid(status: &str) -> Option<u32> {
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}

/// Removes the run directories (`berth-qemu-PID-N`) under `tmp` of
/// processes that no longer run: a berth-qemu killed before it could
/// clean up (SIGKILL, or a signal during `boot-time`) leaves its QMP
/// socket's directory behind. A live PID's are kept, whoever it is now.
fn remove_stale_run_dirs(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("berth-qemu-")) else {
            continue;
        };
        let Some((pid, n)) = rest.split_once('-') else {
            continue;
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if digits(pid)
            && digits(n)
            && !Path::new("/proc").join(pid).exists()
            && entry.file_type().is_ok_and(|t| t.is_dir())
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// A running (or ended) QEMU. All methods take `&self`, so a `Vm` can be
/// shared between a thread waiting for its exit and one handling signals.
/// Dropping it kills QEMU.
pub struct Vm {
    process: Mutex<Process>,
    stdin: Mutex<Option<ChildStdin>>,
    qmp: Mutex<Qmp>,
    /// The QMP socket again, outside `qmp`'s lock: see [`Vm::stop`].
    monitor: QmpControl,
    console: Arc<ConsoleLog>,
    stderr: Arc<ConsoleLog>,
    readers: Vec<JoinHandle<()>>,
    run_dir: PathBuf,
    started: Instant,
    host_stopped: AtomicBool,
    /// The length of the console plus QEMU's stderr when
    /// [`Vm::print_serial_log`] last printed them (`usize::MAX`: never).
    printed_log: AtomicUsize,
    /// The console's echo, when booted with one.
    echo: Option<Arc<EchoState>>,
    /// Released after QEMU was killed and reaped (`Drop for Vm`).
    keeper: Keeper,
}

/// The thread QEMU is spawned from, kept until the Vm is dropped. QEMU's
/// parent-death signal fires when the thread that forked it ends, not the
/// process (prctl(2), PR_SET_PDEATHSIG: the "parent" is that thread):
/// spawned from the thread that called `boot`, QEMU would be killed as
/// soon as that thread ended, say a `thread::spawn(|| Vm::boot(..))`
/// joined before the Vm is used. This thread ends after `Drop for Vm`
/// killed and reaped QEMU, or with the whole process, which is when the
/// signal is wanted (berth-qemu or a test harness killed outright).
#[derive(Debug)]
struct Keeper {
    /// Dropping it lets the thread end.
    release: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Keeper {
    fn spawn(mut cmd: Command) -> io::Result<(Child, Keeper)> {
        let (spawned_tx, spawned) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("qemu-keeper".to_string())
            .spawn(move || {
                let result = cmd.spawn();
                let running = result.is_ok();
                let _ = spawned_tx.send(result);
                if running {
                    // Returns once `release` is dropped.
                    let _ = released.recv();
                }
            })?;
        let child = spawned
            .recv()
            .map_err(|_| io::Error::other("the thread spawning qemu ended without a word"))??;
        let keeper = Keeper {
            release: Some(release),
            thread: Some(thread),
        };
        Ok((child, keeper))
    }

    /// Lets the thread end, and waits for it: QEMU must be reaped already,
    /// or it gets its parent-death SIGKILL now.
    fn release(&mut self) {
        drop(self.release.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.release();
    }
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("run_dir", &self.run_dir)
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

/// A boot whose host-side checks passed ([`Vm::check_host`]).
#[derive(Debug)]
pub struct HostChecked<'a> {
    appliance: &'a Appliance,
    config: &'a VmConfig,
}

impl HostChecked<'_> {
    /// Starts QEMU; returns once it runs and QMP is connected. A port
    /// taken since the check still gets QEMU's own refusal.
    pub fn boot(self, echo: Option<Box<dyn Write + Send>>) -> Result<Vm, VmError> {
        let run_dir = make_run_dir()?;
        match Vm::spawn(self.appliance, self.config, echo, &run_dir) {
            Ok(vm) => Ok(vm),
            Err(err) => {
                let _ = fs::remove_dir_all(&run_dir);
                Err(err)
            }
        }
    }
}

/// QEMU's process and, once it was reaped, its exit status: under one
/// lock, so that waiting for the exit and killing never take two locks in
/// opposite orders.
#[derive(Debug)]
struct Process {
    child: Child,
    exit: Option<ExitStatus>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Vm {
    /// Boots the appliance; returns once QEMU runs and QMP is connected.
    pub fn boot(appliance: &Appliance, config: &VmConfig) -> Result<Vm, VmError> {
        Self::boot_with_echo(appliance, config, None)
    }

    /// Like [`Vm::boot`], also copying every console byte to `echo` as it
    /// arrives (the CLI passes the terminal). The echo is written from a
    /// thread of its own, through a bounded queue: an `echo` that blocks
    /// never holds up the log or QEMU, and loses what the queue cannot
    /// keep (see [`Vm::echo_dropped`], [`Vm::wait_echo`]).
    pub fn boot_with_echo(
        appliance: &Appliance,
        config: &VmConfig,
        echo: Option<Box<dyn Write + Send>>,
    ) -> Result<Vm, VmError> {
        Self::check_host(appliance, config)?.boot(echo)
    }

    /// What a boot checks on the host before QEMU starts, in order: the
    /// config's values, the appliance's files, util-linux `setpriv` on
    /// PATH (QEMU is started through it), KVM when asked for, the
    /// forwarded host ports, and the data disk (an existing one's first
    /// MiB read, a missing one created and formatted). A caller that must
    /// refuse before it prints anything (the CLI) checks here, then boots
    /// the result with [`HostChecked::boot`], which does not check again.
    pub fn check_host<'a>(
        appliance: &'a Appliance,
        config: &'a VmConfig,
    ) -> Result<HostChecked<'a>, VmError> {
        config.validate()?;
        appliance.check()?;
        find_program(Path::new("setpriv")).ok_or(VmError::NoSetpriv)?;
        if config.accel == Accel::Kvm {
            check_host_kvm()?;
        }
        config.check_host_ports()?;
        if let Some(disk) = &config.data_disk {
            prepare_data_disk(disk).map_err(|source| VmError::DataDisk {
                path: disk.path.clone(),
                source,
            })?;
        }
        Ok(HostChecked { appliance, config })
    }

    fn spawn(
        appliance: &Appliance,
        config: &VmConfig,
        echo: Option<Box<dyn Write + Send>>,
        run_dir: &Path,
    ) -> Result<Vm, VmError> {
        let qmp_path = run_dir.join("qmp.sock");
        // sun_path is 108 bytes including the terminating NUL.
        if qmp_path.as_os_str().len() > 107 {
            return Err(VmError::SocketPathTooLong { path: qmp_path });
        }
        let args = qemu_args(appliance, config, &qmp_path)?;
        let qemu = find_program(&config.qemu).ok_or_else(|| VmError::Spawn {
            program: config.qemu.clone(),
            source: io::Error::from(io::ErrorKind::NotFound),
        })?;
        // QEMU must not outlive us (it has its own process group, so a
        // SIGKILL of berth-qemu or of a test harness would leave it running,
        // holding its ports): util-linux setpriv sets its parent-death signal
        // (prctl PR_SET_PDEATHSIG, kept across the exec of QEMU), which fires
        // when the thread that spawned it ends: the Keeper's, which lives as
        // long as the Vm.
        let setpriv = find_program(Path::new("setpriv")).ok_or(VmError::NoSetpriv)?;
        let mut cmd = Command::new(setpriv);
        cmd.args(["--pdeathsig", "KILL", "--"])
            .arg(&qemu)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a ^C on the terminal goes to berth-qemu,
            // which decides what to do (power down first, stop on the second).
            .process_group(0);
        let started = Instant::now();
        let (mut child, keeper) = Keeper::spawn(cmd).map_err(|source| VmError::Spawn {
            program: config.qemu.clone(),
            source,
        })?;
        let console = Arc::new(ConsoleLog::new());
        let stderr_log = Arc::new(ConsoleLog::new());
        let mut readers = Vec::new();
        let echo = echo.map(Echo::spawn);
        let echo_state = echo.as_ref().map(|e| Arc::clone(&e.state));
        if let Some(out) = child.stdout.take() {
            readers.push(spawn_reader(out, Arc::clone(&console), echo));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(spawn_reader(err, Arc::clone(&stderr_log), None));
        }
        let stdin = child.stdin.take();

        let (qmp, monitor) = match connect_qmp(&mut child, &qmp_path) {
            Ok(connected) => connected,
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                for r in readers {
                    let _ = r.join();
                }
                return Err(match err {
                    // Reader threads are joined: stderr is complete.
                    VmError::QemuStart { status, .. } => VmError::QemuStart {
                        status,
                        stderr: one_line(&stderr_log.text()),
                    },
                    other => other,
                });
            }
        };
        Ok(Vm {
            process: Mutex::new(Process { child, exit: None }),
            stdin: Mutex::new(stdin),
            qmp: Mutex::new(qmp),
            monitor,
            console,
            stderr: stderr_log,
            readers,
            run_dir: run_dir.to_path_buf(),
            started,
            host_stopped: AtomicBool::new(false),
            printed_log: AtomicUsize::new(usize::MAX),
            echo: echo_state,
            keeper,
        })
    }

    /// When QEMU was spawned.
    pub fn started_at(&self) -> Instant {
        self.started
    }

    /// The serial console so far (its last 64 MiB at most; see [`ConsoleLog`]).
    pub fn serial_log(&self) -> String {
        self.console.text()
    }

    /// QEMU's own stderr so far (its warnings and errors).
    pub fn qemu_stderr(&self) -> String {
        self.stderr.text()
    }

    /// Console bytes the echo ([`Vm::boot_with_echo`]) dropped because its
    /// writer did not keep up; the log has every one of them.
    pub fn echo_dropped(&self) -> u64 {
        self.echo
            .as_ref()
            .map_or(0, |e| e.dropped.load(Ordering::SeqCst))
    }

    /// Waits until the echo has written all the console sent it, which it
    /// can only have once QEMU has exited (or until writing it failed); at
    /// once without an echo. False on timeout: its writer is still stuck.
    pub fn wait_echo(&self, timeout: Duration) -> bool {
        self.echo.as_ref().is_none_or(|e| e.wait_done(timeout))
    }

    /// A position in the console log, for [`Vm::wait_for_line_after`].
    pub fn serial_mark(&self) -> usize {
        self.console.len()
    }

    /// Console lines containing `pattern` so far.
    pub fn count_lines(&self, pattern: &str) -> usize {
        self.console.count_lines(pattern)
    }

    /// Waits for a console line containing `pattern`, searching the whole log
    /// from the start of the boot; returns the line.
    pub fn wait_for_line(&self, pattern: &str, timeout: Duration) -> Result<String, VmError> {
        self.wait_for_line_after(0, pattern, timeout)
    }

    /// Like [`Vm::wait_for_line`], only lines from `mark` on (a value of
    /// [`Vm::serial_mark`]) count.
    pub fn wait_for_line_after(
        &self,
        mark: usize,
        pattern: &str,
        timeout: Duration,
    ) -> Result<String, VmError> {
        let found = self.console.wait_for_line(mark, pattern, timeout);
        self.line_wait_result(found, pattern, timeout)
    }

    fn line_wait_result(
        &self,
        found: LineWait,
        pattern: &str,
        timeout: Duration,
    ) -> Result<String, VmError> {
        match found {
            LineWait::Found { line, .. } => Ok(line),
            LineWait::TimedOut => Err(VmError::LineTimeout {
                pattern: pattern.to_string(),
                timeout,
            }),
            LineWait::Closed => {
                // The console closes when QEMU exits; give the status a moment.
                let status = self
                    .wait_exit(Duration::from_secs(5))
                    .map_or_else(|_| "status unknown".to_string(), |s| s.to_string());
                // Why the guest ended, when its console says (a fatal
                // error of PID 1, a kernel panic).
                let why = match self.outcome() {
                    Ok(Some(Outcome::FailedPowerOff { line } | Outcome::Panicked { line })) => {
                        format!(" after {}", line.trim())
                    }
                    _ => String::new(),
                };
                Err(VmError::LineNeverCame {
                    pattern: pattern.to_string(),
                    status,
                    why,
                })
            }
        }
    }

    /// Waits for one of berth-init's own console lines (see [`pid1_message`])
    /// whose text after `berth: ` starts with `prefix`, from `mark` on (a
    /// value of [`Vm::serial_mark`]); returns the line. A service printing
    /// the same words does not count.
    pub fn wait_for_pid1_line_after(
        &self,
        mark: usize,
        prefix: &str,
        timeout: Duration,
    ) -> Result<String, VmError> {
        let found = self.console.wait_for_line_where(
            mark,
            |line| pid1_message(line).is_some_and(|m| m.starts_with(prefix)),
            timeout,
        );
        self.line_wait_result(found, &format!("berth: {prefix}"), timeout)
    }

    /// Writes bytes to the guest's serial console input.
    pub fn write_console(&self, bytes: &[u8]) -> Result<(), VmError> {
        let mut stdin = lock(&self.stdin);
        let Some(pipe) = stdin.as_mut() else {
            return Err(VmError::ConsoleInput {
                source: io::Error::from(io::ErrorKind::BrokenPipe),
            });
        };
        pipe.write_all(bytes)
            .and_then(|()| pipe.flush())
            .map_err(|source| VmError::ConsoleInput { source })
    }

    /// Runs a QMP command, returns its `return` value.
    pub fn qmp_execute(&self, command: &str, arguments: Option<Value>) -> Result<Value, VmError> {
        lock(&self.qmp)
            .execute(command, arguments)
            .map_err(|source| VmError::Qmp {
                command: command.to_string(),
                source,
            })
    }

    /// QMP `system_powerdown`: presses the ACPI power button. Returns once
    /// QEMU acknowledged it (`{"return": {}}`); the guest reacts on its own.
    pub fn qmp_powerdown(&self) -> Result<(), VmError> {
        self.qmp_execute("system_powerdown", None).map(drop)
    }

    /// QMP `send-key ctrl-alt-delete` on the PS/2 keyboard. The kernel
    /// reboots at once, or signals PID 1 with SIGINT once PID 1 has turned
    /// that off with `reboot(RB_DISABLE_CAD)` (reboot(2)).
    pub fn qmp_send_ctrl_alt_del(&self) -> Result<(), VmError> {
        self.qmp_execute("send-key", Some(ctrl_alt_delete_keys()))
            .map(drop)
    }

    /// QMP `quit`: QEMU stops at once, the guest gets no say. Like every
    /// command, it waits for a command another thread has in flight to be
    /// answered; [`Vm::stop`] does not.
    pub fn qmp_quit(&self) -> Result<(), VmError> {
        self.host_stopped.store(true, Ordering::SeqCst);
        match lock(&self.qmp).execute("quit", None) {
            Ok(_) => Ok(()),
            // QEMU may exit before its reply is flushed.
            Err(QmpError::Closed { .. }) => Ok(()),
            Err(source) => Err(VmError::Qmp {
                command: "quit".to_string(),
                source,
            }),
        }
    }

    /// QMP events received so far while running commands.
    pub fn qmp_events(&self) -> Vec<Value> {
        lock(&self.qmp).events().to_vec()
    }

    /// QEMU's exit status if it has exited.
    pub fn try_exit(&self) -> Result<Option<ExitStatus>, VmError> {
        let mut process = lock(&self.process);
        if process.exit.is_none() {
            process.exit = process
                .child
                .try_wait()
                .map_err(|source| VmError::Wait { source })?;
            if process.exit.is_some() {
                self.end_monitor();
            }
        }
        Ok(process.exit)
    }

    /// QEMU is gone: a thread still waiting on its monitor (a command sent
    /// just before the end) stops waiting. The socket's other end closes
    /// with QEMU anyway; this does not count on it.
    fn end_monitor(&self) {
        self.monitor.shutdown();
    }

    /// Waits for QEMU to exit.
    pub fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus, VmError> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if let Some(status) = self.try_exit()? {
                return Ok(status);
            }
            let Some(left) = time_left(deadline) else {
                return Err(VmError::ExitTimeout { timeout });
            };
            std::thread::sleep(left.min(Duration::from_millis(10)));
        }
    }

    /// How the appliance ended; `None` while QEMU runs. Reads the whole
    /// console, so call it after [`Vm::wait_exit`].
    pub fn outcome(&self) -> Result<Option<Outcome>, VmError> {
        let Some(status) = self.try_exit()? else {
            return Ok(None);
        };
        // QEMU has exited; let the reader drain what it wrote last.
        self.console.wait_closed(Duration::from_secs(5));
        Ok(Some(Outcome::classify(
            &self.console,
            status,
            self.host_stopped.load(Ordering::SeqCst),
        )))
    }

    /// Kills QEMU (SIGKILL) and waits until it is reaped.
    ///
    /// The signal is sent under the process lock, but the wait polls
    /// [`Vm::try_exit`] without holding it: a QEMU in uninterruptible
    /// sleep (a disk image on a hung NFS server) dies only when its I/O
    /// returns, and a `wait` under the lock would hold up every other
    /// thread's `try_exit`, and `wait_exit` and `stop` past their
    /// timeouts. Whichever thread reaps it, all see the same status.
    pub fn kill(&self) -> Result<ExitStatus, VmError> {
        {
            let mut process = lock(&self.process);
            if process.exit.is_none() {
                // Exited on its own already: not stopped by us.
                process.exit = process
                    .child
                    .try_wait()
                    .map_err(|source| VmError::Wait { source })?;
            }
            if let Some(status) = process.exit {
                self.end_monitor();
                return Ok(status);
            }
            self.host_stopped.store(true, Ordering::SeqCst);
            // It may have exited since: not reaped yet (that takes this
            // lock), its pid is still ours, and the kill is harmless.
            process
                .child
                .kill()
                .map_err(|source| VmError::Kill { source })?;
        }
        // No timeout: the kill is certain to end it, only not when.
        self.wait_exit(Duration::MAX)
    }

    /// Stops QEMU promptly, whatever its monitor is doing: QMP `quit`,
    /// then SIGKILL if QEMU still runs `grace` later. The `quit` goes
    /// straight onto the monitor's socket, not after a command another
    /// thread is waiting on (QEMU answers from its main loop: when that is
    /// stuck, a power-button press waits the whole reply timeout, and a
    /// `quit` queued behind it would too). Returns within about `grace`
    /// plus a second.
    pub fn stop(&self, grace: Duration) -> Result<ExitStatus, VmError> {
        if let Some(status) = self.try_exit()? {
            return Ok(status);
        }
        self.host_stopped.store(true, Ordering::SeqCst);
        // Failing to send is fine: the kill below follows.
        let _ = self.monitor.send("quit", QUIT_SEND_TIMEOUT.min(grace));
        match self.wait_exit(grace) {
            Err(VmError::ExitTimeout { .. }) => self.kill(),
            other => other,
        }
    }

    /// Writes the whole serial console and QEMU's stderr to `out`, framed.
    pub fn write_serial_log(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(
            out,
            "----- serial console ({} bytes) -----",
            self.console.len()
        )?;
        writeln!(out, "{}", self.console.text())?;
        let stderr = self.stderr.text();
        if !stderr.trim().is_empty() {
            writeln!(out, "----- qemu stderr -----")?;
            writeln!(out, "{stderr}")?;
        }
        writeln!(out, "----- end of serial console -----")
    }

    /// Prints the whole serial console and QEMU's stderr to stderr, framed
    /// ([`Vm::write_serial_log`]). A Vm dropped while its thread panics
    /// prints it too, unless this printed the same log already.
    pub fn print_serial_log(&self) {
        let mut text = Vec::new();
        let printed = self.console.len() + self.stderr.len();
        let _ = self.write_serial_log(&mut text);
        // eprint!, not a write to io::stderr(): in a test, the harness
        // captures eprint! and shows it with the test's failure.
        eprint!("{}", String::from_utf8_lossy(&text));
        self.printed_log.store(printed, Ordering::SeqCst);
    }

    /// Passes `result` through, printing the whole console first if it is an error.
    pub fn or_dump<T>(&self, result: Result<T, VmError>) -> Result<T, VmError> {
        if result.is_err() {
            self.print_serial_log();
        }
        result
    }
}

/// `program` itself when it holds a `/`, else the first executable file of
/// that name in `$PATH`.
fn find_program(program: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| {
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.as_os_str().as_encoded_bytes().contains(&b'/') {
        return runnable(program).then(|| program.to_owned());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| runnable(p))
}

impl Drop for Vm {
    fn drop(&mut self) {
        // A test failing with the Vm in scope (a plain assert, an unwrap)
        // shows the whole console with its failure, as the QEMU ring
        // promises, unless it printed this very log itself already.
        if std::thread::panicking() {
            let now = self.console.len() + self.stderr.len();
            if self.printed_log.load(Ordering::SeqCst) != now {
                // A panic here, while unwinding, would abort: eprint!
                // panics when stderr cannot be written.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.print_serial_log();
                }));
            }
        }
        let _ = self.kill();
        // Reaped (or, if that failed, killed now by its parent-death signal).
        self.keeper.release();
        // Closing stdin and reaping QEMU closed its pipes: the readers end.
        lock(&self.stdin).take();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let _ = fs::remove_dir_all(&self.run_dir);
    }
}

/// How many console chunks (each at most 4 KiB, one read of the pipe)
/// may wait for the echo's writer: 1 MiB. What comes beyond is dropped
/// from the echo (never from the log).
const ECHO_QUEUE_CHUNKS: usize = 256;

/// Written to the echo once, where it first dropped output.
const ECHO_GAP_NOTE: &[u8] = b"\r\n[berth-qemu: the terminal fell behind the console: output dropped here, and wherever it falls behind again]\r\n";

/// How far an echo has got: shared by the reader, the echo's writer thread
/// and the Vm.
#[derive(Debug, Default)]
struct EchoState {
    /// Console bytes dropped because the queue was full.
    dropped: AtomicU64,
    /// The writer thread has ended: all that was queued is written, or
    /// writing failed (the terminal went away).
    done: Mutex<bool>,
    ended: Condvar,
}

impl EchoState {
    fn wait_done(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let mut done = lock(&self.done);
        while !*done {
            let Some(left) = time_left(deadline) else {
                return false;
            };
            done = self
                .ended
                .wait_timeout(done, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// The reader's end of an echo. Console bytes reach the echo's writer
/// (the terminal) through a bounded queue and a thread of its own, so a
/// writer that stops taking output (Ctrl-S, a `| less` nobody scrolls)
/// holds up only the echo: the reader goes on draining QEMU's stdout into
/// the log, where a reader that waited for the terminal let the pipe fill
/// and froze QEMU, guest and monitor. What the queue cannot keep is
/// dropped and counted, and the echo says so once, where it happened.
struct Echo {
    /// Chunks, each with whether output was dropped just before it.
    queue: mpsc::SyncSender<(Vec<u8>, bool)>,
    /// Output was dropped since the last chunk queued.
    gap: bool,
    state: Arc<EchoState>,
}

impl Echo {
    fn spawn(mut out: Box<dyn Write + Send>) -> Echo {
        let (queue, chunks) = mpsc::sync_channel::<(Vec<u8>, bool)>(ECHO_QUEUE_CHUNKS);
        let state = Arc::new(EchoState::default());
        let shared = Arc::clone(&state);
        // Never joined: nothing waits for a terminal that may never drain
        // (Vm::wait_echo waits with a timeout).
        std::thread::spawn(move || {
            let mut noted = false;
            let mut failed = false;
            for (chunk, after_gap) in chunks {
                if after_gap && !noted {
                    noted = true;
                    failed = write_flush(&mut out, ECHO_GAP_NOTE).is_err();
                }
                // A closed terminal ends the echo; the log goes on.
                failed = failed || write_flush(&mut out, &chunk).is_err();
                if failed {
                    break;
                }
            }
            // The console ended: output dropped after the last chunk that
            // got through was not noted yet.
            if !failed && !noted && shared.dropped.load(Ordering::SeqCst) > 0 {
                let _ = write_flush(&mut out, ECHO_GAP_NOTE);
            }
            *lock(&shared.done) = true;
            shared.ended.notify_all();
        });
        Echo {
            queue,
            gap: false,
            state,
        }
    }

    /// Queues a chunk for the writer, or drops it if the queue is full.
    /// Never blocks.
    fn send(&mut self, chunk: &[u8]) {
        match self.queue.try_send((chunk.to_vec(), self.gap)) {
            Ok(()) => self.gap = false,
            Err(mpsc::TrySendError::Full(_)) => {
                self.state
                    .dropped
                    .fetch_add(chunk.len() as u64, Ordering::SeqCst);
                self.gap = true;
            }
            // The writer ended: its terminal went away.
            Err(mpsc::TrySendError::Disconnected(_)) => {}
        }
    }
}

fn write_flush(out: &mut dyn Write, bytes: &[u8]) -> io::Result<()> {
    out.write_all(bytes)?;
    out.flush()
}

/// Copies a pipe into a log (and an optional echo) until EOF, then closes
/// the log. The echo never holds it up.
fn spawn_reader(
    mut pipe: impl Read + Send + 'static,
    log: Arc<ConsoleLog>,
    mut echo: Option<Echo>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let chunk = &buf[..n];
                    log.append(chunk);
                    if let Some(echo) = echo.as_mut() {
                        echo.send(chunk);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        log.close();
    })
}

/// Connects to QEMU's QMP socket, retrying while QEMU starts up; fails early
/// if QEMU exits (bad option, missing file). Returns the session and a
/// control handle on its socket.
fn connect_qmp(child: &mut Child, path: &Path) -> Result<(Qmp, QmpControl), VmError> {
    let deadline = Instant::now() + QMP_CONNECT_TIMEOUT;
    loop {
        match Qmp::connect(path) {
            Ok(qmp) => {
                let control = qmp.control().map_err(|source| VmError::QmpSocket {
                    path: path.to_path_buf(),
                    source,
                })?;
                return Ok((qmp, control));
            }
            Err(err) => {
                if let Some(status) = child
                    .try_wait()
                    .map_err(|source| VmError::Wait { source })?
                {
                    return Err(VmError::QemuStart {
                        status,
                        stderr: String::new(),
                    });
                }
                if Instant::now() >= deadline {
                    return Err(VmError::QmpTimeout {
                        path: path.to_path_buf(),
                        timeout: QMP_CONNECT_TIMEOUT,
                        source: err,
                    });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_in_path_or_by_path() {
        assert_eq!(
            find_program(Path::new("/bin/sh")),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(find_program(Path::new("/nonexistent/qemu")), None);
        // A directory or a non-executable file is no program.
        assert_eq!(find_program(Path::new("/etc")), None);
        assert_eq!(find_program(Path::new("/etc/passwd")), None);
        let sh = find_program(Path::new("sh")).expect("sh in PATH");
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{}", sh.display());
        assert_eq!(find_program(Path::new("berth-no-such-program")), None);
    }

    fn appliance() -> Appliance {
        Appliance {
            kernel: "/k/vmlinuz".into(),
            initrd: "/k/initrd.img".into(),
        }
    }

    fn args_string(config: &VmConfig) -> Vec<String> {
        qemu_args(&appliance(), config, Path::new("/run/q/qmp.sock"))
            .unwrap()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    fn value_of<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn icount_counts_guest_time_in_instructions() {
        let args = args_string(&VmConfig {
            accel: Accel::TcgIcount,
            ..VmConfig::default()
        });
        assert_eq!(value_of(&args, "-accel"), ["tcg"]);
        assert_eq!(value_of(&args, "-icount"), ["shift=0,sleep=off"]);
        assert!(value_of(&args_string(&VmConfig::default()), "-icount").is_empty());
    }

    #[test]
    fn default_command_line() {
        let args = args_string(&VmConfig::default());
        assert_eq!(value_of(&args, "-accel"), ["tcg"]);
        assert!(args.iter().any(|a| a == "-no-reboot"));
        assert!(args.iter().any(|a| a == "-nodefaults"));
        assert_eq!(value_of(&args, "-append"), ["console=ttyS0 panic=-1"]);
        assert_eq!(
            value_of(&args, "-qmp"),
            ["unix:/run/q/qmp.sock,server=on,wait=off"]
        );
        assert_eq!(value_of(&args, "-netdev"), ["user,id=net0,restrict=on"]);
        assert_eq!(
            value_of(&args, "-device"),
            ["virtio-net-pci,netdev=net0,romfile="]
        );
        assert_eq!(value_of(&args, "-kernel"), ["/k/vmlinuz"]);
        assert_eq!(value_of(&args, "-initrd"), ["/k/initrd.img"]);
        assert_eq!(value_of(&args, "-m"), ["512"]);
        assert!(value_of(&args, "-drive").is_empty());
        // Guest RAM in 4 KiB pages of a memfd under TCG, as large as -m.
        assert_eq!(
            value_of(&args, "-object"),
            ["memory-backend-memfd,id=ram,size=512M"]
        );
        assert_eq!(value_of(&args, "-machine"), ["q35,memory-backend=ram"]);
    }

    #[test]
    fn forwards_disk_and_cmdline() {
        let config = VmConfig {
            memory_mb: 256,
            ports: vec![(18080, 80), (2222, 22)],
            data_disk: Some(DataDisk {
                path: "/d/a,b.img".into(),
                size: None,
            }),
            extra_cmdline: "  quiet berth.debug=1 ".into(),
            ..VmConfig::default()
        };
        let args = args_string(&config);
        assert_eq!(
            value_of(&args, "-netdev"),
            [
                "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:18080-:80,hostfwd=tcp:127.0.0.1:2222-:22"
            ]
        );
        assert_eq!(
            value_of(&args, "-drive"),
            ["file.driver=file,file.filename=/d/a,,b.img,format=raw,if=none,id=data"]
        );
        assert_eq!(
            value_of(&args, "-device"),
            [
                "virtio-net-pci,netdev=net0,romfile=",
                "virtio-blk-pci,drive=data,serial=berth-data"
            ]
        );
        assert_eq!(
            value_of(&args, "-append"),
            ["console=ttyS0 panic=-1 quiet berth.debug=1"]
        );
        assert_eq!(value_of(&args, "-m"), ["256"]);
        assert_eq!(
            value_of(&args, "-object"),
            ["memory-backend-memfd,id=ram,size=256M"]
        );
    }

    /// `-kernel` and `-initrd` are plain arguments: a doubled comma would
    /// name a file that does not exist ("error reading initrd").
    #[test]
    fn kernel_and_initrd_paths_keep_their_commas() {
        let appliance = Appliance {
            kernel: "/x/a,b/vmlinuz".into(),
            initrd: "/x/a,b/initrd.img".into(),
        };
        let args: Vec<String> = qemu_args(&appliance, &VmConfig::default(), Path::new("/q"))
            .unwrap()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(value_of(&args, "-kernel"), ["/x/a,b/vmlinuz"]);
        assert_eq!(value_of(&args, "-initrd"), ["/x/a,b/initrd.img"]);
    }

    /// As `file=PATH`, QEMU reads `a:` as a protocol ("Unknown protocol
    /// 'a'") and `json:{...}` as options; named through the file driver,
    /// every one of these is a file name (checked against QEMU 7.2).
    #[test]
    fn data_disk_paths_are_never_read_as_a_protocol_or_options() {
        for (path, filename) in [
            ("a:b.img", "a:b.img"),
            ("json:{}", "json:{}"),
            (
                r#"json:{"driver":"nbd","host":"x"}"#,
                r#"json:{"driver":"nbd",,"host":"x"}"#,
            ),
            ("nbd:localhost:10809", "nbd:localhost:10809"),
            ("file:x.img", "file:x.img"),
            ("/d/a:b.img", "/d/a:b.img"),
        ] {
            let args = args_string(&VmConfig {
                data_disk: Some(DataDisk {
                    path: path.into(),
                    size: None,
                }),
                ..VmConfig::default()
            });
            assert_eq!(
                value_of(&args, "-drive"),
                [format!(
                    "file.driver=file,file.filename={filename},format=raw,if=none,id=data"
                )],
                "{path}"
            );
        }
    }

    /// Inside an option list a path's commas are doubled byte by byte: a
    /// file name that is not UTF-8 is not mangled on the way.
    #[test]
    fn option_values_escape_commas_in_paths_that_are_not_utf8() {
        let path = |bytes: &[u8]| PathBuf::from(OsString::from_vec(bytes.to_vec()));
        let config = VmConfig {
            data_disk: Some(DataDisk {
                path: path(b"/d/\xff,x.img"),
                size: None,
            }),
            ..VmConfig::default()
        };
        let args = qemu_args(&appliance(), &config, &path(b"/run/\xfe,q/qmp.sock")).unwrap();
        let value = |flag: &str| -> Vec<Vec<u8>> {
            args.windows(2)
                .filter(|w| w[0] == flag)
                .map(|w| w[1].as_bytes().to_vec())
                .collect()
        };
        assert_eq!(
            value("-drive"),
            [
                b"file.driver=file,file.filename=/d/\xff,,x.img,format=raw,if=none,id=data"
                    .to_vec()
            ]
        );
        assert_eq!(
            value("-qmp"),
            [b"unix:/run/\xfe,,q/qmp.sock,server=on,wait=off".to_vec()]
        );
    }

    #[test]
    fn kvm_only_when_asked_and_zero_ports_refused() {
        let args = args_string(&VmConfig {
            accel: Accel::Kvm,
            ..VmConfig::default()
        });
        assert_eq!(value_of(&args, "-accel"), ["kvm"]);
        // KVM keeps QEMU's anonymous, huge-page RAM.
        assert!(value_of(&args, "-object").is_empty());
        assert_eq!(value_of(&args, "-machine"), ["q35"]);
        let err = qemu_args(
            &appliance(),
            &VmConfig {
                ports: vec![(0, 80)],
                ..VmConfig::default()
            },
            Path::new("/q"),
        )
        .unwrap_err();
        assert!(matches!(err, VmError::BadPort { host: 0, guest: 80 }));
        let err = VmConfig {
            ports: vec![(18093, 80), (18094, 80), (18093, 8080)],
            ..VmConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(
            matches!(err, VmError::DuplicatePort { host: 18093 }),
            "{err}"
        );
        // One guest port behind two host ports is fine.
        VmConfig {
            ports: vec![(18093, 80), (18094, 80)],
            ..VmConfig::default()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn run_directories_of_dead_processes_are_removed() {
        let tmp = std::env::temp_dir().join(format!("berth-stale-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        // Above the kernel's largest pid (2^22): never a live process.
        let dead = tmp.join("berth-qemu-999999999-0");
        let live = tmp.join(format!("berth-qemu-{}-7", std::process::id()));
        let other = tmp.join("berth-qemu-notes");
        for dir in [&dead, &live, &other] {
            fs::create_dir_all(dir).unwrap();
            fs::write(dir.join("qmp.sock"), b"").unwrap();
        }
        let file = tmp.join("berth-qemu-999999998-0");
        fs::write(&file, b"a file, not ours").unwrap();
        remove_stale_run_dirs(&tmp);
        assert!(!dead.exists());
        assert!(live.exists() && other.exists() && file.exists());
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn run_directories_are_ours_alone_or_refused() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let tmp = std::env::temp_dir().join(format!("berth-private-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir(&tmp).unwrap();
        let euid = effective_uid().unwrap();
        // Made here: this user's, 0700 whatever the umask (the CLI test
        // `the_qmp_directory_is_private_under_umask_000` sets it to 000).
        let dir = tmp.join("made");
        create_private_dir(&dir).unwrap();
        let meta = fs::symlink_metadata(&dir).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (euid, 0o700));
        // Found already there and private to us: taken.
        create_private_dir(&dir).unwrap();
        let refused = |path: &Path, euid: u32| match check_private_dir(path, euid) {
            Err(VmError::RunDirNotPrivate { problem, .. }) => problem,
            other => panic!("{}: {other:?}", path.display()),
        };
        // Someone else's.
        assert_eq!(
            refused(&dir, euid + 1),
            format!("it is owned by uid {euid}, not {}", euid + 1)
        );
        // Open to the group or to others.
        for mode in [0o777, 0o750, 0o701, 0o1733] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(refused(&dir, euid), format!("its mode is {mode:04o}"));
            let err = create_private_dir(&dir).unwrap_err();
            assert!(
                err.to_string().contains("is not private to this user"),
                "{err}"
            );
        }
        // A symlink, even to a private directory of ours.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let link = tmp.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert_eq!(refused(&link, euid), "it is a symlink");
        assert!(create_private_dir(&link).is_err());
        let file = tmp.join("file");
        fs::write(&file, b"").unwrap();
        assert_eq!(refused(&file, euid), "it is not a directory");
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn the_effective_uid_is_read_from_proc() {
        let status =
            "Name:\tberth-qemu\nUmask:\t0022\nUid:\t1000\t1001\t1002\t1003\nGid:\t0\t0\t0\t0\n";
        assert_eq!(parse_effective_uid(status), Some(1001));
        assert_eq!(parse_effective_uid("Name:\tx\n"), None);
        assert_eq!(parse_effective_uid("Uid:\t1000\n"), None);
        assert_eq!(parse_effective_uid("Uid:\t1000\tx\t0\t0\n"), None);
        // What this process's new files are owned by.
        use std::os::unix::fs::MetadataExt;
        let file = std::env::temp_dir().join(format!("berth-euid-{}", std::process::id()));
        fs::write(&file, b"").unwrap();
        let owner = fs::metadata(&file).unwrap().uid();
        fs::remove_file(&file).unwrap();
        assert_eq!(effective_uid().unwrap(), owner);
    }

    #[test]
    fn qemu_complaints_become_one_line() {
        assert_eq!(
            one_line(
                "qemu-system-x86_64: -device virtio-blk-pci,drive=data: Failed to get \"write\" lock\nIs another process using the image [/d.img]?\n"
            ),
            "qemu-system-x86_64: -device virtio-blk-pci,drive=data: Failed to get \"write\" lock; Is another process using the image [/d.img]?"
        );
        assert_eq!(one_line("  \n"), "");
    }

    #[test]
    fn kvm_is_refused_on_pvm_and_when_dev_kvm_does_not_open() {
        let dir = std::env::temp_dir().join(format!("berth-kvm-check-{}", std::process::id()));
        let modules = dir.join("module");
        fs::create_dir_all(modules.join("kvm")).unwrap();
        let dev = dir.join("kvm");
        fs::write(&dev, b"").unwrap();
        // Plain KVM whose device opens: accepted.
        check_kvm(&modules, &dev).unwrap();
        // No device: the open error, with its cause.
        let err = check_kvm(&modules, &dir.join("missing")).unwrap_err();
        assert!(matches!(err, VmError::KvmUnavailable { .. }), "{err:?}");
        // PVM's module loaded: refused before the device is even tried.
        fs::create_dir_all(modules.join("kvm_pvm")).unwrap();
        let err = check_kvm(&modules, &dev).unwrap_err();
        assert!(matches!(err, VmError::KvmPvm), "{err:?}");
        assert!(err.to_string().contains("run without --kvm"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn zero_or_absurd_memory_and_cpus_are_refused() {
        let args = |memory_mb, cpus| {
            qemu_args(
                &appliance(),
                &VmConfig {
                    memory_mb,
                    cpus,
                    ..VmConfig::default()
                },
                Path::new("/q"),
            )
        };
        for memory_mb in [0, 32, 127, 1_048_577, u32::MAX] {
            let err = args(memory_mb, 1).unwrap_err();
            assert!(
                matches!(err, VmError::BadMemory { memory_mb: m } if m == memory_mb),
                "{err}"
            );
        }
        for cpus in [0, 256, u32::MAX] {
            let err = args(512, cpus).unwrap_err();
            assert!(
                matches!(err, VmError::BadCpus { cpus: c } if c == cpus),
                "{err}"
            );
        }
        assert_eq!(
            args(0, 1).unwrap_err().to_string(),
            "invalid guest memory 0 MiB: must be 128 to 1048576 MiB"
        );
        let ok = args(128, 255).unwrap();
        let ok: Vec<String> = ok.into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(value_of(&ok, "-m"), ["128"]);
        assert_eq!(value_of(&ok, "-smp"), ["255"]);
    }

    #[test]
    fn missing_appliance_files_are_reported() {
        let err = Appliance::from_dir(Path::new("/nonexistent/berth-out")).unwrap_err();
        assert!(
            matches!(&err, VmError::MissingFile { path } if path.ends_with("vmlinuz")),
            "{err}"
        );
        let dir = std::env::temp_dir().join(format!("berth-appliance-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("vmlinuz")).unwrap();
        fs::write(dir.join("initrd.img"), b"").unwrap();
        let err = Appliance::from_dir(&dir).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("vmlinuz is unusable: not a regular file"),
            "{err}"
        );
        fs::remove_dir(dir.join("vmlinuz")).unwrap();
        fs::write(dir.join("vmlinuz"), b"k").unwrap();
        let err = Appliance::from_dir(&dir).unwrap_err();
        assert!(
            err.to_string().ends_with("initrd.img is unusable: empty"),
            "{err}"
        );
        fs::write(dir.join("initrd.img"), b"i").unwrap();
        Appliance::from_dir(&dir).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The CLI checks before its "booting" line, then boots: the data
    /// disk's first MiB is read once, at the check.
    #[test]
    fn a_checked_boot_does_not_check_the_host_again() {
        let dir = std::env::temp_dir().join(format!("berth-checked-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("vmlinuz"), b"k").unwrap();
        fs::write(dir.join("initrd.img"), b"i").unwrap();
        let appliance = Appliance::from_dir(&dir).unwrap();
        let disk = dir.join("data.img");
        let config = VmConfig {
            data_disk: Some(DataDisk {
                path: disk.clone(),
                size: None,
            }),
            // Stands for a QEMU that fails at once: what the boot reaches
            // when nothing before it refuses.
            qemu: "/bin/false".into(),
            ..VmConfig::default()
        };
        let blank = vec![0u8; 4 << 20];
        let mut formatted = blank.clone();
        formatted[1080] = 0x53; // where ext4's magic is
        fs::write(&disk, &blank).unwrap();
        let err = Vm::check_host(&appliance, &config).unwrap_err();
        assert!(
            matches!(
                &err,
                VmError::DataDisk {
                    source: DiskError::Unformatted { .. },
                    ..
                }
            ),
            "{err:?}"
        );
        fs::write(&disk, &formatted).unwrap();
        let checked = Vm::check_host(&appliance, &config).unwrap();
        // Blanked after the check: a second look would refuse it.
        fs::write(&disk, &blank).unwrap();
        let err = checked.boot(None).unwrap_err();
        assert!(matches!(err, VmError::QemuStart { .. }), "{err:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    fn status(code: i32) -> ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        ExitStatus::from_raw(code << 8)
    }

    fn log(text: &str) -> ConsoleLog {
        let log = ConsoleLog::new();
        log.append(text.as_bytes());
        log.close();
        log
    }

    #[test]
    fn outcomes_are_classified() {
        let panic = "[ 1.0] Run /init\r\n[ 1.2] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\r\n";
        assert_eq!(
            Outcome::classify(&log(panic), status(0), false),
            Outcome::Panicked {
                line:
                    "[ 1.2] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100"
                        .into()
            }
        );
        assert_eq!(
            Outcome::classify(&log("x\r\n[ 2.0] reboot: Power down\r\n"), status(0), false),
            Outcome::PoweredOff
        );
        assert_eq!(
            Outcome::classify(
                &log("[ 2.0] reboot: Restarting system\r\n"),
                status(0),
                false
            ),
            Outcome::Rebooted
        );
        assert_eq!(
            Outcome::classify(&log("booting\r\n"), status(0), true),
            Outcome::StoppedByHost
        );
        // Printk without timestamps; a service's lines never count, even
        // with a printk-like stamp inside them.
        assert!(matches!(
            Outcome::classify(&log("Kernel panic - not syncing: x\r\n"), status(0), false),
            Outcome::Panicked { .. }
        ));
        let spoof = "[     4.085] logger: Kernel panic - not syncing: (forwarded)\r\n\
                     [     4.090] logger: [    1.000000] Kernel panic - not syncing: x\r\n\
                     [     4.100] berth: powering off\r\n[    4.2] reboot: Power down\r\n";
        assert_eq!(
            Outcome::classify(&log(spoof), status(0), false),
            Outcome::PoweredOff
        );
        let spoof = "[     4.085] svc: reboot: Restarting system\r\n";
        assert_eq!(
            Outcome::classify(&log(spoof), status(0), true),
            Outcome::StoppedByHost
        );
        assert_eq!(
            Outcome::classify(&log("booting\r\n"), status(1), false),
            Outcome::QemuFailed { status: status(1) }
        );
        assert_eq!(
            Outcome::classify(&log("booting\r\n"), status(0), false),
            Outcome::Unexplained { status: status(0) }
        );
    }

    #[test]
    fn pid1_lines_are_told_from_service_and_kernel_lines() {
        assert_eq!(
            pid1_message("[     1.694] berth: fatal: mount /data: ENOENT\r"),
            Some("fatal: mount /data: ENOENT")
        );
        // Through /dev/kmsg, printk's stamp; a long uptime widens berth's.
        assert_eq!(pid1_message("[    1.616105] berth: ready"), Some("ready"));
        assert_eq!(pid1_message("[123456.000] berth: x"), Some("x"));
        for other in [
            "[     1.694] web: berth: fatal: fake",
            "[     1.694] berthx: fatal: x",
            "berth: fatal: no stamp",
            "x[     1.694] berth: fatal: x",
            "[     1.694]berth: fatal: x",
            "[      .694] berth: fatal: x",
            "[     1.] berth: fatal: x",
            "[   1a.694] berth: fatal: x",
            "[     1.694 berth: fatal: x",
            "",
        ] {
            assert_eq!(pid1_message(other), None, "{other:?}");
        }
        assert!(is_pid1_failure(
            "[     1.694] berth: fatal: mount data disk /dev/vda (ext4) on /data: ENOENT"
        ));
        assert!(is_pid1_failure(
            "berth: panic: panicked at init/src/main.rs:1:1:\r"
        ));
        for not in [
            "[     1.694] berth: powering off",
            "[     1.694] web: berth: fatal: fake",
            "[     1.694] web: berth: panic: fake",
            "[     1.694] berth: service web: fatal: no",
            "  berth: panic: indented",
        ] {
            assert!(!is_pid1_failure(not), "{not:?}");
        }
    }

    #[test]
    fn a_power_off_after_a_fatal_error_is_a_failure() {
        let fatal = "[     1.694] berth: fatal: mount data disk /dev/vda (ext4) on /data: ENOENT";
        let console = format!(
            "[ 1.0] Run /init\r\n{fatal}\r\n[     1.700] berth: powering off\r\n[ 1.8] reboot: Power down\r\n"
        );
        assert_eq!(
            Outcome::classify(&log(&console), status(0), false),
            Outcome::FailedPowerOff { line: fatal.into() }
        );
        // A service cannot fake it: its lines carry its name.
        let faked = "[     1.0] web: berth: fatal: not really\r\n[     1.1] web: [     1.694] berth: fatal: x\r\n[ 2.0] reboot: Power down\r\n";
        assert_eq!(
            Outcome::classify(&log(faked), status(0), false),
            Outcome::PoweredOff
        );
        // on_fatal: reboot stays a reboot; a host stop stays one.
        assert_eq!(
            Outcome::classify(
                &log(&format!("{fatal}\r\n[ 2.0] reboot: Restarting system\r\n")),
                status(0),
                false
            ),
            Outcome::Rebooted
        );
        assert_eq!(
            Outcome::classify(&log(&format!("{fatal}\r\n")), status(0), true),
            Outcome::StoppedByHost
        );
    }

    /// An echo that takes nothing until it is released: a terminal under
    /// Ctrl-S, a `| less` nobody scrolls.
    struct StuckEcho {
        release: mpsc::Receiver<()>,
        released: bool,
        written: Arc<Mutex<Vec<u8>>>,
        /// Told when the first write starts, so a test knows which chunk
        /// the stuck writer holds.
        stuck: Option<mpsc::Sender<()>>,
    }

    impl StuckEcho {
        fn new(release: mpsc::Receiver<()>, written: &Arc<Mutex<Vec<u8>>>) -> StuckEcho {
            StuckEcho {
                release,
                released: false,
                written: Arc::clone(written),
                stuck: None,
            }
        }
    }

    impl Write for StuckEcho {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Some(stuck) = self.stuck.take() {
                let _ = stuck.send(());
            }
            if !self.released {
                let _ = self.release.recv();
                self.released = true;
            }
            lock(&self.written).extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The console pipe is drained into the log whatever the echo does:
    /// a reader that waited for the terminal filled QEMU's stdout pipe,
    /// and the guest and the monitor froze with it.
    #[test]
    fn an_echo_that_takes_nothing_does_not_stop_the_log() {
        let total = 8 << 20;
        let (release, released) = mpsc::channel();
        let written = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(ConsoleLog::new());
        let echo = Echo::spawn(Box::new(StuckEcho::new(released, &written)));
        let state = Arc::clone(&echo.state);
        let reader = spawn_reader(
            io::repeat(b'x').take(total as u64),
            Arc::clone(&log),
            Some(echo),
        );
        let closed = log.wait_closed(Duration::from_secs(60));
        let logged = log.len();
        drop(release);
        assert!(closed, "the log stopped at {logged} of {total} bytes");
        assert_eq!(logged, total);
        reader.join().unwrap();
        // Released, the echo writes what it kept, and says once that it
        // dropped the rest.
        assert!(state.wait_done(Duration::from_secs(60)));
        let written = lock(&written).clone();
        let dropped = state.dropped.load(Ordering::SeqCst) as usize;
        assert!(dropped > 0);
        let notes = written
            .windows(ECHO_GAP_NOTE.len())
            .filter(|w| *w == ECHO_GAP_NOTE)
            .count();
        assert_eq!(notes, 1);
        assert_eq!(written.len() - ECHO_GAP_NOTE.len() + dropped, total);
    }

    /// A pipe whose reads return what the test sends, one message each;
    /// EOF once the sender is gone.
    struct ScriptedPipe(mpsc::Receiver<Vec<u8>>);

    impl Read for ScriptedPipe {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Ok(bytes) = self.0.recv() else {
                return Ok(0);
            };
            buf[..bytes.len()].copy_from_slice(&bytes);
            Ok(bytes.len())
        }
    }

    /// The note stands where the echo dropped output: after what it kept
    /// from before, ahead of what came once it caught up.
    ///
    /// The writer must hold the first chunk, stuck, before the rest comes:
    /// a writer that took it only after the queue had filled would free a
    /// slot while the reader still drops, and the note would land among
    /// the dropped chunks. So the first chunk goes alone, and the rest
    /// follows once the writer says it is stuck writing it.
    #[test]
    fn the_echo_notes_the_gap_where_it_is() {
        let (release, released) = mpsc::channel();
        let (stuck, writer_stuck) = mpsc::channel();
        let written = Arc::new(Mutex::new(Vec::new()));
        let echo = Echo::spawn(Box::new(StuckEcho {
            stuck: Some(stuck),
            ..StuckEcho::new(released, &written)
        }));
        let state = Arc::clone(&echo.state);
        let (pipe, chunks) = mpsc::channel();
        let log = Arc::new(ConsoleLog::new());
        let reader = spawn_reader(ScriptedPipe(chunks), Arc::clone(&log), Some(echo));
        let chunk = 4096;
        let sent = 2 * ECHO_QUEUE_CHUNKS;
        let before = sent * chunk;
        pipe.send(vec![b'a'; chunk]).unwrap();
        writer_stuck
            .recv_timeout(Duration::from_secs(60))
            .expect("the echo's writer never took the first chunk");
        // More than the queue holds, while the echo takes nothing: one
        // chunk in the writer, a queue full, the rest dropped.
        for _ in 1..sent {
            pipe.send(vec![b'a'; chunk]).unwrap();
        }
        // The reader drops a chunk from the echo after logging it: the
        // count is the last thing it updates.
        let dropped = (sent - 1 - ECHO_QUEUE_CHUNKS) * chunk;
        let deadline = Instant::now() + Duration::from_secs(60);
        while (state.dropped.load(Ordering::SeqCst) as usize) < dropped {
            assert!(
                Instant::now() < deadline,
                "the log stopped at {}, {} bytes dropped",
                log.len(),
                state.dropped.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(log.len(), before);
        assert_eq!(state.dropped.load(Ordering::SeqCst) as usize, dropped);
        // Let it write what it kept.
        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while lock(&written).len() < before - dropped {
            assert!(Instant::now() < deadline, "the echo did not catch up");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Fewer than the queue holds, to a writer that keeps up: none is
        // dropped.
        for _ in 0..10 {
            pipe.send(vec![b'b'; chunk]).unwrap();
        }
        drop(pipe);
        reader.join().unwrap();
        assert!(state.wait_done(Duration::from_secs(60)));
        assert_eq!(state.dropped.load(Ordering::SeqCst) as usize, dropped);
        let mut expected = vec![b'a'; before - dropped];
        expected.extend_from_slice(ECHO_GAP_NOTE);
        expected.extend_from_slice(&vec![b'b'; 10 * chunk]);
        assert!(*lock(&written) == expected);
    }

    /// An echo that keeps up gets every byte, and no note.
    #[test]
    fn an_echo_that_keeps_up_gets_everything() {
        let (release, released) = mpsc::channel();
        drop(release);
        let written = Arc::new(Mutex::new(Vec::new()));
        let echo = Echo::spawn(Box::new(StuckEcho::new(released, &written)));
        let state = Arc::clone(&echo.state);
        let text: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let log = Arc::new(ConsoleLog::new());
        let reader = spawn_reader(io::Cursor::new(text.clone()), Arc::clone(&log), Some(echo));
        reader.join().unwrap();
        assert!(state.wait_done(Duration::from_secs(60)));
        // 400 000 bytes: fewer chunks than the queue holds, so none is
        // dropped however the threads run.
        assert_eq!(state.dropped.load(Ordering::SeqCst), 0);
        assert_eq!(*lock(&written), text);
    }

    #[test]
    fn free_port_is_nonzero() {
        assert_ne!(free_port().unwrap(), 0);
    }
}
