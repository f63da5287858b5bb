//! berth-init: PID 1 of a berth appliance.
//!
//! ```text
//! berth-init [--manifest FILE] [--images DIR] [--run-dir DIR]
//!            [--data-dir DIR] [--cgroup-parent NAME]
//!                                  boot and supervise (as PID 1)
//! berth-init [--images DIR] --check FILE
//!                                  validate a manifest and exit
//! ```
//!
//! `--images` is the OCI image layout whose `ref.name`s the manifest's
//! `image` fields name (default `/berth/images`, or `berth.images=` on a
//! machine); `--run-dir` holds the unpacked roots and the runtime's state
//! (default `/run/berth`); `--data-dir` is where `persistent` mounts come
//! from (default `/data`, the data disk); `--cgroup-parent` names the
//! cgroup above every container's (default `berth`). The last three exist
//! for the namespace and process roles (tests, development).
//!
//! # Roles, and how the binary tells them apart
//!
//! - **machine**: `getpid() == 1` in the initial pid namespace — the kernel
//!   ran us as /init of a VM. Detected by the inode of `/proc/self/ns/pid`,
//!   which is `PROC_PID_INIT_INO` (0xEFFFFFFC, include/linux/proc_ns.h) only
//!   in the initial namespace; PID 1 mounts /proc first to look. Only this
//!   role mounts the early filesystems, reads `berth.*` from the kernel
//!   command line, sets the hostname, sysctls and modules, raises its own
//!   open files limit (`berth_init::rlimits`), and ends in
//!   sync + power-off or reboot (never a return from `main`: the kernel
//!   panics when PID 1 exits).
//! - **namespace**: `getpid() == 1` in a child pid namespace (tests under
//!   `unshare --pid --fork --mount`, or a tini-like init in a container).
//!   Same supervision, no machine setup; ends with an exit status.
//! - **process**: any other pid (development). PID 1 makes itself a child
//!   subreaper (prctl PR_SET_CHILD_SUBREAPER) so orphans still come to it.
//!
//! Exit status (namespace and process roles): 0 after a clean shutdown, 1
//! when the boot failed (invalid manifest, a mandatory task failed), 2 for
//! a usage error.
//!
//! # Containers
//!
//! `image` and `bundle` programs run as containers through the container
//! launcher (`berth_init::container`): every image is unpacked and verified
//! once at boot (a timeline line each, with size and MB/s); a unit whose
//! image fails is marked failed with its error when it would start, and the
//! others run. `host: true` programs run in PID 1's own root.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::exit,
        clippy::todo,
        clippy::unimplemented
    )
)]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use berth_init::bootplan;
use berth_init::clock::now_ms;
use berth_init::cmdline::{self, BootOptions};
use berth_init::container::{self, ContainerLauncher, ContainerOptions};
use berth_init::event_loop::{self, EventLoop, Outcome};
use berth_init::launcher::{Launcher, UnitKind};
use berth_init::logging::{self, error_chain};
use berth_init::machine::MachineSetup;
use berth_init::manifest::{self, DATA_DIR, FatalAction, Manifest};
use berth_init::modules::{self, ModuleIndex};
use berth_init::net;
use berth_init::power_button;
use berth_init::rlimits;
use berth_init::rootfs;
use berth_init::service::Millis;
use berth_init::supervisor::{self, Supervisor};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::reboot::RebootMode;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// `PROC_PID_INIT_INO` (include/linux/proc_ns.h): the initial pid namespace.
const INITIAL_PID_NS_INO: u64 = 0xEFFF_FFFC;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Machine,
    Namespace,
    Process,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Self::Machine => "machine PID 1",
            Self::Namespace => "PID 1 of a pid namespace",
            Self::Process => "a plain process (subreaper)",
        }
    }
}

/// What the panic hook does; set once the manifest (or cmdline) says.
static ON_FATAL: AtomicU8 = AtomicU8::new(0);

fn store_on_fatal(action: FatalAction) {
    ON_FATAL.store(
        if action == FatalAction::Reboot { 1 } else { 0 },
        Ordering::Relaxed,
    );
}

fn load_on_fatal() -> FatalAction {
    if ON_FATAL.load(Ordering::Relaxed) == 1 {
        FatalAction::Reboot
    } else {
        FatalAction::Poweroff
    }
}

#[derive(Default)]
struct Args {
    manifest: Option<PathBuf>,
    check: Option<PathBuf>,
    images: Option<PathBuf>,
    run_dir: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    cgroup_parent: Option<String>,
    unknown: Vec<String>,
}

const USAGE: &str = "usage: berth-init [--manifest FILE] [--images DIR] [--run-dir DIR] \
[--data-dir DIR] [--cgroup-parent NAME] | [--images DIR] --check FILE | --help | --version";

/// Where containers' state and roots live: on the tmpfs PID 1 mounts on /run.
const RUN_DIR: &str = "/run/berth";
const CGROUP_PARENT: &str = "berth";

fn parse_args(args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut out = Args::default();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let slot = match arg.as_str() {
            "--manifest" => &mut out.manifest,
            "--check" => &mut out.check,
            "--images" => &mut out.images,
            "--run-dir" => &mut out.run_dir,
            "--data-dir" => &mut out.data_dir,
            "--cgroup-parent" => {
                let value = args.next().ok_or_else(|| format!("{arg} needs a name"))?;
                let plain = !value.is_empty()
                    && Path::new(&value)
                        .components()
                        .all(|c| matches!(c, std::path::Component::Normal(_)));
                if !plain {
                    return Err(format!("{arg} {value:?}: needs a relative cgroup path"));
                }
                out.cgroup_parent = Some(value);
                continue;
            }
            _ => {
                out.unknown.push(arg);
                continue;
            }
        };
        let value = args.next().ok_or_else(|| format!("{arg} needs a path"))?;
        *slot = Some(PathBuf::from(value));
    }
    Ok(out)
}

fn main() {
    let start = now_ms();
    // A unit's container init (`"init": true`), before anything PID 1 does.
    if std::env::args_os()
        .next()
        .is_some_and(|a| a == berth_init::reaper::REAPER_ARGV0)
    {
        let args: Vec<String> = std::env::args_os()
            .skip(1)
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        exit_with(berth_init::reaper::run(&args));
    }
    let argv = utf8_args();
    // The one-shot commands write to stdout and end: a closed pipe ends
    // them too (PID 1 keeps SIGPIPE ignored).
    if argv
        .iter()
        .any(|a| matches!(a.as_str(), "--help" | "-h" | "--version" | "--check"))
    {
        berth_runtime::sys::restore_default_sigpipe();
    }
    if argv.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        exit_with(0);
    }
    if argv.iter().any(|a| a == "--version") {
        // As one piece: berth-build finds it in the binary.
        println!("{}", berth_init::IDENTITY);
        exit_with(0);
    }
    let role = detect_role();
    let args = match parse_args(argv.into_iter()) {
        Ok(args) => args,
        Err(e) if role != Role::Machine => {
            eprintln!("berth-init: {e}\n{USAGE}");
            exit_with(2);
        }
        Err(_) => Args::default(),
    };
    if let Some(path) = &args.check {
        let images = args
            .images
            .clone()
            .unwrap_or_else(|| PathBuf::from(cmdline::DEFAULT_IMAGES));
        check_manifest(path, &images);
    }
    if !args.unknown.is_empty() && role != Role::Machine {
        eprintln!("berth-init: unknown arguments {:?}\n{USAGE}", args.unknown);
        exit_with(2);
    }

    let console = open_console(role);
    install_panic_hook(&console, role);
    let kmsg = if role == Role::Machine {
        open_kmsg()
    } else {
        None
    };
    if let Err(e) = logging::init(console, kmsg, log::LevelFilter::Info) {
        // Without a logger PID 1 can still report on stderr and go on.
        eprintln!("berth-init: {}", error_chain(&e));
    }
    log::info!(
        "berth-init {} starting as {} (pid {})",
        env!("CARGO_PKG_VERSION"),
        role.name(),
        std::process::id()
    );
    if !args.unknown.is_empty() {
        // The kernel hands init the command-line words it does not know.
        log::debug!("ignoring init arguments {:?}", args.unknown);
    }

    // ---- boot phase: an error here is fatal (report, then power off or
    // exit with a status).
    let outcome = match boot_and_supervise(role, &args, start) {
        Ok(outcome) => outcome,
        Err(e) => {
            // One line: what reads the console (berth-qemu) takes the
            // fatal line as the reason the appliance ended.
            log::error!("fatal: {}", one_line(&e));
            Outcome::Fatal(e)
        }
    };
    finish(role, outcome, start);
}

/// Everything from signals to the end of supervision. Returns the outcome,
/// or a boot error (before any child was started).
fn boot_and_supervise(role: Role, args: &Args, start: Millis) -> Result<Outcome, String> {
    // Signals first: no child may exist before the signalfd does.
    let signals = event_loop::open_signals().map_err(|e| error_chain(&e))?;
    if role == Role::Machine {
        // ctrl-alt-del becomes SIGINT for us instead of an instant reboot.
        if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
            log::warn!("turn ctrl-alt-del off: {e}");
        }
        // Containers need pivot_root, which the initramfs root refuses.
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let plan = bootplan::boot_mounts();
        if rootfs::root_is_initramfs(&mountinfo) {
            let targets: Vec<&str> = plan.iter().map(|m| m.target).collect();
            let stats = rootfs::move_root_to_tmpfs(&targets).map_err(|e| error_chain(&e))?;
            timeline(
                start,
                &format!(
                    "root moved to tmpfs ({} initramfs entries bound)",
                    stats.carried
                ),
            );
        }
        let done = bootplan::apply_boot_mounts(&plan).map_err(|e| error_chain(&e))?;
        timeline(start, &format!("mounts done ({} new)", done.len()));
        // With devtmpfs mounted, a console or /dev/kmsg may exist now.
        logging::add_missing_sinks(|| open_console(Role::Machine), open_kmsg);
    } else if role == Role::Process
        && let Err(e) = nix::sys::prctl::set_child_subreaper(true)
    {
        log::warn!("become child subreaper: {e} (orphans will not be reaped here)");
    }
    set_oom_score_adj();

    let opts = if role == Role::Machine {
        let line = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        cmdline::parse_cmdline(&line)
    } else {
        BootOptions::default()
    };
    for w in &opts.warnings {
        log::warn!("kernel command line: {w}");
    }
    if let Some(level) = opts.log_level {
        logging::set_level(level);
    }
    if let Some(action) = opts.on_fatal {
        store_on_fatal(action);
    }

    let path = args
        .manifest
        .clone()
        .or_else(|| opts.manifest.clone())
        .unwrap_or_else(|| PathBuf::from(cmdline::DEFAULT_MANIFEST));
    let images = args
        .images
        .clone()
        .or_else(|| opts.images.clone())
        .unwrap_or_else(|| PathBuf::from(cmdline::DEFAULT_IMAGES));
    let names = container::list_images(&images).map_err(|e| error_chain(&e))?;
    let manifest = manifest::load(&path, &names).map_err(|e| {
        format!(
            "{} (images from the layout {})",
            error_chain(&e),
            images.display()
        )
    })?;
    if opts.on_fatal.is_none() {
        store_on_fatal(manifest.on_fatal);
    }
    timeline(
        start,
        &format!(
            "manifest {} loaded ({} tasks, {} services)",
            path.display(),
            manifest.tasks.len(),
            manifest.services.len()
        ),
    );
    logging::set_level(opts.log_level.unwrap_or(manifest.log.level));

    let container_opts = ContainerOptions {
        images,
        run_dir: args
            .run_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(RUN_DIR)),
        data_dir: args
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DATA_DIR)),
        cgroup_parent: args
            .cgroup_parent
            .clone()
            .unwrap_or_else(|| CGROUP_PARENT.to_owned()),
        diff_id: if role == Role::Machine {
            berth_bundles::DiffIdCheck::TrustBlobDigest
        } else {
            berth_bundles::DiffIdCheck::Verify
        },
        // Written by the network set-up (configure_network) on a machine.
        resolv_conf: (role == Role::Machine
            && (!manifest.network.nameservers.is_empty() || !manifest.network.search.is_empty()))
        .then(|| PathBuf::from(RESOLV_CONF)),
        hostname: manifest.hostname.clone(),
    };
    let mut launcher = ContainerLauncher::new(container_opts.clone());
    let units: Vec<(UnitKind, &String, &manifest::Program)> = manifest
        .tasks
        .iter()
        .map(|t| (UnitKind::Task, &t.name, &t.program))
        .chain(
            manifest
                .services
                .iter()
                .map(|s| (UnitKind::Service, &s.name, &s.program)),
        )
        .collect();
    for (_, name, program) in &units {
        launcher.check(name, program).map_err(|e| error_chain(&e))?;
    }

    let machine = if role == Role::Machine {
        let late_sysctls = configure_machine(&manifest)?;
        // After the sysctls (fs.nr_open), before any unit: their hard limit
        // is PID 1's. Not fatal: PID 1 runs on the kernel's 1024 as well.
        match rlimits::raise_pid1_nofile() {
            Ok(Some(limit)) => log::debug!("open files limit raised to {limit}"),
            Ok(None) => {}
            Err(e) => log::warn!("{} (PID 1 keeps its open files limit)", error_chain(&e)),
        }
        timeline(start, "machine configured");
        let machine = start_machine_setup(&manifest, late_sysctls, start)?;
        launcher.set_machine_setup(machine.clone());
        Some(machine)
    } else {
        report_skipped_machine_setup(&manifest);
        None
    };
    // Each image unpacked once (verified, into /run/berth/images), after
    // the machine set-up, in this thread: run beside the module loading on
    // one vCPU it slowed both (module init waits on kernel workers, which
    // queued behind the unpack), even at nice 19.
    // Without overlayfs each writable unit unpacks its own copy when it is
    // prepared.
    let mut images: Vec<&str> = Vec::new();
    for (_, _, p) in &units {
        if let manifest::Source::Image(image) = &p.source
            && launcher.shares_image(p)
        {
            images.push(image.as_str());
        }
    }
    images.sort_unstable();
    images.dedup();
    let unpacked = container::unpack_images(&container_opts, &images);
    for report in &unpacked.reports {
        match &report.result {
            Ok((bytes, seconds)) => timeline(
                start,
                &format!(
                    "image {} unpacked: {}",
                    report.image,
                    size_and_rate(*bytes, *seconds)
                ),
            ),
            // Reported once, as the failure of each unit of the image.
            Err(e) => log::debug!("image {}: {e}", report.image),
        }
    }
    launcher.adopt(unpacked);
    // A syslog server on the network is connected to now: with a route.
    if let Some(machine) = &machine
        && matches!(
            manifest.log.syslog,
            Some(manifest::SyslogTarget::Udp(_) | manifest::SyslogTarget::Tcp(_))
        )
    {
        // A failure is the network's (logged by the set-up thread); the
        // syslog sink then reports its own.
        let _ = machine.wait_network();
    }
    // After the data disk is mounted: the log directory usually lives on it.
    logging::configure(&manifest.log).map_err(|e| error_chain(&e))?;
    if let Some(level) = opts.log_level {
        logging::set_level(level);
    }

    // Every unit prepared once, now: after the data disk (persistent mount
    // sources) and before any unit starts. A failure belongs to its unit,
    // which fails when it would start; the boot goes on. Read-only units
    // first: their roots are the shared trees themselves, whose missing
    // mount destinations can only be created before any overlay is
    // mounted on them.
    let mut units = units;
    units.sort_by_key(|(_, _, p)| !container::binds_root(p));
    for (kind, name, program) in &units {
        match launcher.prepare(name, program) {
            Ok(None) => {}
            Ok(Some(p)) => timeline(start, &unpacked_line(*kind, name, &p)),
            // Reported once, as the unit's failure when it would start.
            Err(e) => log::debug!("{kind} {}", error_chain(&e)),
        }
    }
    drop(units);

    let Manifest {
        tasks, services, ..
    } = manifest;
    let mut supervisor = Supervisor::new(tasks, services).map_err(|e| error_chain(&e))?;
    // One CPU: a service and the next one's creation would share it and
    // both come up later; each start waits for the one before to block.
    if std::thread::available_parallelism().map_or(true, |n| n.get() == 1) {
        log::debug!(
            "one CPU: each service starts once the one before has blocked (at most {} ms)",
            supervisor::PACE_MAX.as_millis()
        );
        supervisor.set_paced_starts(true);
    }
    let mut event_loop =
        EventLoop::new(launcher, supervisor, signals).map_err(|e| error_chain(&e))?;
    if let Some(machine) = machine {
        event_loop.watch_machine_setup(machine);
    }
    timeline(start, "supervision starts");
    let outcome = event_loop.run();
    timeline(start, "all units down");
    let mut kill_all = |sig: Signal| kill_remaining(role, sig);
    let orphans = event_loop.finish(&mut kill_all, Duration::from_secs(2));
    log::info!("reaped {orphans} orphans in total");
    Ok(outcome)
}

fn timeline(start: Millis, what: &str) {
    log::info!("timeline +{}ms: {what}", now_ms().saturating_sub(start));
}

/// `image busybox shared with service db (overlay in 1 ms)`, `… (read-only
/// bind in 1 ms)`, or without overlayfs `image busybox unpacked for service
/// web: 1.1 MiB in 12 ms (92 MB/s)`, `bundle /b unpacked for service web:
/// …` for a packed bundle (its rootfs.oci), or `bundle /b read for service
/// web in 1 ms` for a bundle whose root is a tree.
fn unpacked_line(kind: UnitKind, name: &str, p: &container::Prepared) -> String {
    let ms = p.seconds * 1000.0;
    if p.read_only {
        return format!(
            "{} shared with {kind} {name} (read-only bind in {ms:.0} ms)",
            p.what
        );
    }
    if p.shared {
        return format!(
            "{} shared with {kind} {name} (overlay in {ms:.0} ms)",
            p.what
        );
    }
    if p.bytes == 0 {
        return format!("{} read for {kind} {name} in {ms:.0} ms", p.what);
    }
    format!(
        "{} unpacked for {kind} {name}: {}",
        p.what,
        size_and_rate(p.bytes, p.seconds)
    )
}

/// `1.9 MiB in 12 ms (160 MB/s)`.
fn size_and_rate(bytes: u64, seconds: f64) -> String {
    let mib = bytes as f64 / f64::from(1u32 << 20);
    let rate = if seconds > 0.0 {
        bytes as f64 / 1e6 / seconds
    } else {
        0.0
    };
    format!(
        "{mib:.1} MiB in {:.0} ms ({rate:.0} MB/s)",
        seconds * 1000.0
    )
}

fn check_manifest(path: &Path, images: &Path) -> ! {
    let names = match container::list_images(images) {
        Ok(names) => names,
        Err(e) => {
            eprintln!("berth-init: {}", error_chain(&e));
            exit_with(1);
        }
    };
    match manifest::load(path, &names) {
        Ok(m) => {
            println!(
                "{}: ok ({} tasks, {} services)",
                path.display(),
                m.tasks.len(),
                m.services.len()
            );
            exit_with(0);
        }
        Err(e) => {
            // What was checked against: the layout (the boot says the
            // same), and whether this is a build manifest, whose image
            // map and relative bundle paths only berth-build resolves.
            let layout = if images.join("index.json").is_file() {
                format!("images from the layout {}", images.display())
            } else {
                format!(
                    "no image layout at {}: --images DIR names one",
                    images.display()
                )
            };
            let build = berth_init::manifest::read_manifest(path)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some_and(|v| v.get("images").is_some());
            let build = if build {
                "; it has `images`: a build manifest, which `berth-build build` checks with its images and relative bundle paths resolved"
            } else {
                ""
            };
            eprintln!("berth-init: {} ({layout}{build})", error_chain(&e));
            exit_with(1);
        }
    }
}

/// Machine or not: see the module documentation.
/// The arguments as text. The kernel hands PID 1 the command-line words
/// it does not know, in whatever bytes they were typed: as PID 1 a word
/// that is not UTF-8 is taken lossily (one such word must not end the
/// machine; unknown words are ignored there anyway). Elsewhere it is a
/// usage error.
fn utf8_args() -> Vec<String> {
    let pid1 = std::process::id() == 1;
    std::env::args_os()
        .skip(1)
        .map(|a| match a.into_string() {
            Ok(s) => s,
            Err(a) if pid1 => a.to_string_lossy().into_owned(),
            Err(a) => {
                eprintln!("berth-init: argument {a:?} is not UTF-8");
                exit_with(2);
            }
        })
        .collect()
}

fn detect_role() -> Role {
    if std::process::id() != 1 {
        return Role::Process;
    }
    if !Path::new("/proc/self/ns/pid").exists() {
        // A VM's /init starts without /proc; mount it to look (it is the
        // first boot mount anyway). In a container without the right to
        // mount, we are not the machine.
        let _ = std::fs::create_dir_all("/proc");
        if nix::mount::mount(
            Some("proc"),
            "/proc",
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .is_err()
        {
            return Role::Namespace;
        }
    }
    match std::fs::metadata("/proc/self/ns/pid") {
        Ok(meta) if meta.ino() == INITIAL_PID_NS_INO => Role::Machine,
        _ => Role::Namespace,
    }
}

fn open_kmsg() -> Option<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_CLOEXEC)
        .open("/dev/kmsg")
        .ok()
}

/// The console: a private, non-blocking, close-on-exec file description,
/// so a slow console never blocks PID 1 and no service inherits it.
fn open_console(role: Role) -> Option<File> {
    let mut opts = OpenOptions::new();
    opts.write(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC | nix::libc::O_NOCTTY);
    let path = if role == Role::Machine {
        "/dev/console"
    } else {
        "/proc/self/fd/1"
    };
    // Reopening /proc/self/fd/1 gives a new open file description for a pipe
    // or tty, so O_NONBLOCK does not leak to whoever else shares our stdout.
    opts.open(path).ok().or_else(|| {
        // On a machine without /dev/console, fd 1 is the /dev/null Rust's
        // startup put there: no console at all is better (kmsg takes over).
        if role == Role::Machine {
            return None;
        }
        let fd = nix::unistd::dup(std::io::stdout()).ok()?;
        let file = File::from(fd);
        let _ = nix::fcntl::fcntl(
            &file,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        Some(file)
    })
}

/// A panic must not take PID 1 down silently: the hook writes to its own,
/// pre-opened (blocking) console fd, and on a machine powers off or reboots
/// as configured. In the other roles the abort that follows ends the
/// namespace, which is what a test wants to see.
fn install_panic_hook(console: &Option<File>, role: Role) {
    let Some(fd) = console.as_ref().and_then(|c| c.try_clone().ok()) else {
        return;
    };
    // The clone shares O_NONBLOCK with the console; a panic message is
    // short, and losing it beats blocking forever.
    std::panic::set_hook(Box::new(move |info| {
        let mut out = &fd;
        let _ = writeln!(out, "berth: panic: {info}");
        if role == Role::Machine {
            panic_power_down(load_on_fatal(), &fd);
        }
    }));
}

/// [`power_down`] for the panic hook: nothing here takes the log lock,
/// which the panicking code may hold (the release build aborts on panic,
/// so it is never released): the lines go to the hook's own console fd.
fn panic_power_down(action: FatalAction, console: &File) -> ! {
    let (mode, what) = match action {
        FatalAction::Poweroff => (RebootMode::RB_POWER_OFF, "powering off"),
        FatalAction::Reboot => (RebootMode::RB_AUTOBOOT, "rebooting"),
    };
    let mut out = console;
    let _ = writeln!(out, "berth: {what}");
    logging::flush_if_free();
    nix::unistd::sync();
    let Err(e) = nix::sys::reboot::reboot(mode);
    let _ = writeln!(out, "berth: reboot(2): {e}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn set_oom_score_adj() {
    // PID 1 is the last process the OOM killer may pick: without it every
    // service is orphaned and the kernel panics.
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
        log::warn!("set oom_score_adj -1000: {e}");
    }
}

/// What every unit may need before it starts: hostname, modules, sysctls
/// and the data disk. Returns the sysctls left for the network (see
/// [`is_late_sysctl`]); the rest is [`start_machine_setup`]'s.
fn configure_machine(m: &Manifest) -> Result<Vec<(String, String)>, String> {
    if let Some(hostname) = &m.hostname {
        nix::unistd::sethostname(hostname).map_err(|e| format!("set hostname {hostname}: {e}"))?;
    }
    if !m.modules.is_empty() {
        let loaded = load_kernel_modules(&m.modules)?;
        log::info!("loaded {loaded} kernel modules");
    }
    let mut late = Vec::new();
    for (key, value) in &m.sysctls {
        if is_late_sysctl(key) {
            late.push((key.clone(), value.clone()));
        } else {
            set_sysctl(key, value)?;
        }
    }
    if let Some(disk) = &m.data_disk {
        let (flags, data) = mount_options(&disk.options);
        // Containers write the disk: a device node or a setuid file they
        // leave there must mean nothing to PID 1 either (their own binds
        // of it are nosuid,nodev too).
        let flags = flags | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
        let _ = std::fs::create_dir_all(DATA_DIR);
        nix::mount::mount(
            Some(&disk.device),
            DATA_DIR,
            Some(disk.fstype.as_str()),
            flags,
            data.as_deref(),
        )
        .map_err(|e| {
            format!(
                "mount data disk {} ({}) on {DATA_DIR}: {e}{}",
                disk.device.display(),
                disk.fstype,
                data_disk_hint(e, &disk.device, &disk.fstype)
            )
        })?;
    }
    Ok(late)
}

/// A message of several lines as one: `invalid manifest:` and its
/// `  - problem` lines become `invalid manifest: problem; problem`.
fn one_line(text: &str) -> String {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.strip_prefix("- ").unwrap_or(l));
    let first = lines.next().unwrap_or_default().to_owned();
    let rest: Vec<&str> = lines.collect();
    match (rest.is_empty(), first.ends_with(':')) {
        (true, _) => first,
        (false, true) => format!("{first} {}", rest.join("; ")),
        (false, false) => format!("{first}; {}", rest.join("; ")),
    }
}

/// What a failed data-disk mount most likely means, for the fatal line
/// (the kernel's own reason is a log line above it, if any).
fn data_disk_hint(errno: nix::errno::Errno, device: &Path, fstype: &str) -> String {
    use nix::errno::Errno;
    use std::io::Read;
    match errno {
        Errno::ENOENT | Errno::ENXIO => {
            " (no such device: is the disk attached? berth-qemu: --data-disk FILE)".to_string()
        }
        Errno::ENODEV => {
            format!(" (the kernel has no {fstype} driver: add its module to `modules`)")
        }
        Errno::EINVAL => {
            let mut head = Vec::new();
            let blank = std::fs::File::open(device)
                .and_then(|f| f.take(1 << 20).read_to_end(&mut head))
                .is_ok_and(|n| n > 0 && head.iter().all(|&b| b == 0));
            if blank {
                " (the device holds no filesystem: its first MiB is all zeros)".to_string()
            } else {
                format!(" (no {fstype} filesystem on it, or an option it refuses)")
            }
        }
        _ => String::new(),
    }
}

/// A `net.*` sysctl that does not exist yet (an interface's, which comes
/// with its driver): set with the network, after its modules. The others
/// are set before any unit starts: a new network namespace copies the
/// IPv4 `conf/all` and `conf/default` values of the machine's.
fn is_late_sysctl(key: &str) -> bool {
    key.starts_with("net.") && !sysctl_path(key).exists()
}

fn sysctl_path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

fn set_sysctl(key: &str, value: &str) -> Result<(), String> {
    std::fs::write(sysctl_path(key), value).map_err(|e| format!("set sysctl {key}={value}: {e}"))
}

/// The network and the power button, in a thread at idle priority
/// (`berth_init::machine`): units that share the machine's network start
/// once it is configured, `ready` waits for both.
fn start_machine_setup(
    m: &Manifest,
    sysctls: Vec<(String, String)>,
    start: Millis,
) -> Result<MachineSetup, String> {
    let network = m.network.clone();
    let setup = MachineSetup::start(move |report| {
        let result = configure_network(&network, &sysctls);
        match &result {
            Ok(()) => timeline(start, "network configured"),
            Err(e) => log::error!("network: {e}"),
        }
        report.network(result);
        // The ACPI power button needs `button` (the key) and `evdev` (the
        // device node); best effort: a kernel may have them built in or
        // lack them.
        let wanted = ["button".to_owned(), "evdev".to_owned()];
        if let Err(e) = load_kernel_modules(&wanted) {
            log::info!("power button modules: {e}");
        }
        let found = power_button::find_power_buttons(
            Path::new("/sys/class/input"),
            Path::new("/dev/input"),
        );
        if found.is_empty() {
            log::info!("no power button found: shut down with SIGTERM, SIGPWR or ctrl-alt-del");
        }
        report.buttons(power_button::open_power_buttons(&found));
    });
    setup.map_err(|e| error_chain(&e))
}

/// Where the machine's DNS settings are written.
const RESOLV_CONF: &str = "/run/resolv.conf";

/// The network's modules and sysctls; loopback always; the manifest's
/// interfaces, routes and DNS.
fn configure_network(n: &manifest::Network, sysctls: &[(String, String)]) -> Result<(), String> {
    if !n.modules.is_empty() {
        let loaded = load_kernel_modules(&n.modules)?;
        log::info!("loaded {loaded} kernel modules for the network");
    }
    for (key, value) in sysctls {
        set_sysctl(key, value)?;
    }
    net::configure_network(n, Path::new(RESOLV_CONF)).map_err(|e| error_chain(&e))?;
    if (!n.nameservers.is_empty() || !n.search.is_empty())
        && std::fs::symlink_metadata("/etc/resolv.conf").is_err()
    {
        // Host programs read /etc/resolv.conf; image units on the host
        // network get RESOLV_CONF bound there (ContainerOptions).
        let _ = std::fs::create_dir_all("/etc");
        let _ = std::os::unix::fs::symlink(RESOLV_CONF, "/etc/resolv.conf");
    }
    Ok(())
}

/// Loads `names` and their dependencies from /lib/modules/$(uname -r).
fn load_kernel_modules(names: &[String]) -> Result<usize, String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dir = PathBuf::from("/lib/modules").join(release.trim());
    let dep_path = dir.join("modules.dep");
    let dep = std::fs::read_to_string(&dep_path)
        .map_err(|e| format!("read {}: {e}", dep_path.display()))?;
    let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let index = ModuleIndex::parse(&dep, &builtin).map_err(|e| error_chain(&e))?;
    let order = index.load_order(names).map_err(|e| error_chain(&e))?;
    modules::load_modules(&dir, &order).map_err(|e| error_chain(&e))
}

/// mount(8)-style options: flags for the generic ones, the rest as data.
fn mount_options(options: &[String]) -> (MsFlags, Option<String>) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            other => data.push(other),
        }
    }
    (
        flags,
        if data.is_empty() {
            None
        } else {
            Some(data.join(","))
        },
    )
}

fn report_skipped_machine_setup(m: &Manifest) {
    let mut skipped = Vec::new();
    if m.hostname.is_some() {
        skipped.push("hostname");
    }
    if !m.modules.is_empty() {
        skipped.push("modules");
    }
    if !m.sysctls.is_empty() {
        skipped.push("sysctls");
    }
    if m.data_disk.is_some() {
        skipped.push("data_disk");
    }
    if !m.network.interfaces.is_empty() || !m.network.nameservers.is_empty() {
        skipped.push("network");
    }
    if !skipped.is_empty() {
        log::info!(
            "not the machine's PID 1: leaving {} to the host",
            skipped.join(", ")
        );
    }
}

/// Signals every process that is left. As PID 1 of a namespace or machine,
/// kill(-1) reaches all of them but us (kill(2)); as a plain process it
/// would reach everything the user owns, so there only our children (found
/// in /proc) are signalled. Returns how many were signalled.
fn kill_remaining(role: Role, signal: Signal) -> usize {
    if role != Role::Process {
        let n = count_processes();
        let _ = nix::sys::signal::kill(Pid::from_raw(-1), signal);
        return n;
    }
    let me = std::process::id();
    let mut n = 0;
    for pid in children_of(me) {
        if nix::sys::signal::kill(Pid::from_raw(pid), signal).is_ok() {
            n += 1;
        }
    }
    n
}

/// User processes other than us (kernel threads have an empty cmdline).
fn count_processes() -> usize {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.parse::<u32>().is_ok()
                        && name != me
                        && std::fs::read(e.path().join("cmdline")).is_ok_and(|c| !c.is_empty())
                })
                .count()
        })
        .unwrap_or(0)
}

fn children_of(parent: u32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // "pid (comm) state ppid ...": comm may hold spaces and parens,
            // so parse after the last ')'.
            let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
            after
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u32>().ok())
                == Some(parent)
        })
        .collect()
}

/// The end: exit with a status, or on a machine sync, unmount and power
/// off / reboot. Never returns.
fn finish(role: Role, outcome: Outcome, start: Millis) -> ! {
    let code = match &outcome {
        Outcome::Clean { .. } => 0,
        Outcome::Fatal(_) => 1,
    };
    if role != Role::Machine {
        timeline(start, "shutdown complete");
        log::info!("exiting status={code}");
        logging::flush_syslog_for(SYSLOG_FLUSH);
        log::logger().flush();
        exit_with(code);
    }
    let action = match outcome {
        Outcome::Clean { reboot: false } => FatalAction::Poweroff,
        Outcome::Clean { reboot: true } => FatalAction::Reboot,
        Outcome::Fatal(_) => load_on_fatal(),
    };
    nix::unistd::sync();
    // The log files may be on the data disk.
    logging::close_files();
    unmount_data_disk();
    // Reverse order of the boot mounts; lazily, as a busy mount must not
    // keep the machine up.
    for m in bootplan::boot_mounts().iter().rev() {
        let _ = nix::mount::umount2(m.target, MntFlags::MNT_DETACH);
    }
    timeline(start, "shutdown complete");
    logging::flush_syslog_for(SYSLOG_FLUSH);
    power_down(action);
}

/// How long the last lines may take to reach a TCP syslog receiver at the
/// end.
const SYSLOG_FLUSH: Duration = Duration::from_secs(2);

/// Remounts the data disk read-only (ext4 then writes a clean
/// superblock, whoever still holds the filesystem) and unmounts it for
/// real, which closes its journal. A lazy detach of a busy mount alone
/// would only hide it: the filesystem would stay live until the power-off
/// and need recovery at the next mount.
fn unmount_data_disk() {
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(DATA_DIR)));
    if !mounted {
        return;
    }
    // Read-only first: that applies to the filesystem, so it also covers
    // the binds of it in containers' mount namespaces, which keep it alive
    // after our unmount succeeds (a unit given up on at shutdown, say).
    let read_only = nix::mount::mount(
        None::<&str>,
        DATA_DIR,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    );
    match (nix::mount::umount2(DATA_DIR, MntFlags::empty()), read_only) {
        (Ok(()), Ok(())) => return,
        (Ok(()), Err(e)) => log::warn!(
            "read-only remount of {DATA_DIR}: {e}; unmounted, but a container may still hold it"
        ),
        (Err(busy), Ok(())) => {
            log::warn!("unmount {DATA_DIR}: {busy}; it is read-only (clean), detached")
        }
        (Err(busy), Err(e)) => log::error!(
            "unmount {DATA_DIR}: {busy}; read-only remount: {e}: the data disk will need recovery at the next boot"
        ),
    }
    let _ = nix::mount::umount2(DATA_DIR, MntFlags::MNT_DETACH);
}

fn power_down(action: FatalAction) -> ! {
    let (mode, what) = match action {
        FatalAction::Poweroff => (RebootMode::RB_POWER_OFF, "powering off"),
        FatalAction::Reboot => (RebootMode::RB_AUTOBOOT, "rebooting"),
    };
    log::info!("{what}");
    log::logger().flush();
    nix::unistd::sync();
    let Err(e) = nix::sys::reboot::reboot(mode);
    log::error!("reboot(2): {e}");
    // PID 1 must not return: wait for the end the kernel was asked for.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The one place the binary exits, only reached when it is not the
/// machine's PID 1 (or before it started anything, for --help/--check).
#[allow(clippy::exit)]
fn exit_with(code: i32) -> ! {
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::errno::Errno;

    #[test]
    fn fatal_messages_are_one_line() {
        assert_eq!(
            one_line("invalid manifest:\n  - services.a: x\n  - tasks.b: y"),
            "invalid manifest: services.a: x; tasks.b: y"
        );
        assert_eq!(
            one_line("mount data disk: EINVAL"),
            "mount data disk: EINVAL"
        );
        assert_eq!(one_line("a\nb\n"), "a; b");
    }

    #[test]
    fn a_failed_data_disk_mount_says_what_it_most_likely_means() {
        let dir = std::env::temp_dir().join(format!("berth-init-disk-hint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let blank = dir.join("blank");
        std::fs::File::create(&blank)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        let hint = data_disk_hint(Errno::EINVAL, &blank, "ext4");
        assert_eq!(
            hint,
            " (the device holds no filesystem: its first MiB is all zeros)"
        );
        let other = dir.join("other");
        std::fs::write(&other, b"XFSB").unwrap();
        let hint = data_disk_hint(Errno::EINVAL, &other, "ext4");
        assert_eq!(hint, " (no ext4 filesystem on it, or an option it refuses)");
        // An empty or unreadable device is not called blank.
        let hint = data_disk_hint(Errno::EINVAL, &dir.join("missing"), "ext4");
        assert!(hint.contains("no ext4 filesystem on it"), "{hint}");
        assert!(data_disk_hint(Errno::ENOENT, &blank, "ext4").contains("is the disk attached"));
        assert!(data_disk_hint(Errno::ENODEV, &blank, "btrfs").contains("no btrfs driver"));
        assert_eq!(data_disk_hint(Errno::EBUSY, &blank, "ext4"), "");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
