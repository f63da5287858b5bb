//! A build interrupted by Ctrl-C (SIGINT), SIGTERM or SIGHUP removes its
//! temporary directory before the process ends, and a build removes the
//! ones that builds killed outright (SIGKILL, a crash) left next to its
//! OUTDIR. Without this an interrupted build left `.OUT.berth-build-PID`
//! behind, up to the size of an unpacked kernel package (~100 MB), that no
//! later build would remove (each uses its own PID).
//!
//! An unpack is stopped rather than ended: the first signal raises a flag
//! that the unpacker checks at each read of a layer blob
//! ([`berth_bundles::Cancel`]), so the unpacking thread stops and removes
//! what it made itself (a signal thread removing files under a writer that
//! goes on loses the race). A second signal ends the process at once.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Set once a signal is being handled: the build's own errors from then
/// on (dpkg killed under it, files removed under it) are not reported.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The first signal received (0 before one came).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Raised by the first signal in [`Mode::Cancel`].
static CANCEL: AtomicBool = AtomicBool::new(false);

/// Whether the build is being interrupted (the process is about to exit
/// with 128 + the signal).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Temporary directories to remove on a signal. Its lock is also held
/// while a finished output is put into place ([`commit`]).
static TEMPORARY: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Set by [`commit`] once the output is in place.
static COMMITTED: AtomicBool = AtomicBool::new(false);
/// Process groups of helpers (dpkg) that write into them, killed first.
static GROUPS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// What a signal does.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Remove the registered directories and exit with 128 + the signal.
    Exit,
    /// Raise [`cancel`]'s flag; the work stops and cleans up itself, and
    /// the caller asks [`cancelled`] how to end. A second signal exits.
    Cancel,
}

/// The flag [`Mode::Cancel`] raises, for the unpacker to watch.
pub fn cancel() -> berth_bundles::Cancel {
    berth_bundles::Cancel(&CANCEL)
}

/// After a signal in [`Mode::Cancel`]: the exit code (128 + the signal)
/// and what the signal did (`interrupted`, `terminated`, `hung up`).
pub fn cancelled() -> Option<(u8, &'static str)> {
    let sig = SIGNAL.load(Ordering::SeqCst);
    (CANCEL.load(Ordering::SeqCst) && sig != 0).then(|| (exit_code(sig), what(sig)))
}

fn what(sig: i32) -> &'static str {
    match sig {
        SIGINT => "interrupted",
        SIGTERM => "terminated",
        _ => "hung up",
    }
}

fn exit_code(sig: i32) -> u8 {
    u8::try_from(128 + sig).unwrap_or(u8::MAX)
}

/// Takes over SIGINT, SIGTERM and SIGHUP, to act on them as `mode` says.
pub fn install(mode: Mode) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let first = SIGNAL
                    .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok();
                if mode == Mode::Cancel && first {
                    // CANCEL before INTERRUPTED: whoever sees the second
                    // sees a cancel (and does not wait for an exit).
                    CANCEL.store(true, Ordering::SeqCst);
                    INTERRUPTED.store(true, Ordering::SeqCst);
                    continue;
                }
                INTERRUPTED.store(true, Ordering::SeqCst);
                let removed = if mode == Mode::Exit {
                    kill_groups();
                    remove_registered()
                } else {
                    Vec::new()
                };
                let what = what(sig);
                let what = if COMMITTED.load(Ordering::SeqCst) {
                    format!("{what} after the build was in place (OUTDIR is the new build)")
                } else {
                    what.to_owned()
                };
                // Not eprintln!: after a hang-up stderr is often gone, and
                // a panic here would end this thread before the exit.
                use std::io::Write as _;
                let _ = match (mode, removed.is_empty()) {
                    (Mode::Cancel, _) => writeln!(
                        std::io::stderr(),
                        "berth-build: {what} again; stopped without cleaning up"
                    ),
                    (Mode::Exit, true) => writeln!(std::io::stderr(), "berth-build: {what}"),
                    (Mode::Exit, false) => writeln!(
                        std::io::stderr(),
                        "berth-build: {what}; removed {}",
                        removed.join(", ")
                    ),
                };
                std::process::exit(128 + sig);
            }
        })?;
    Ok(())
}

fn kill_groups() {
    use rustix::process::{Pid, Signal, kill_process_group};
    for group in GROUPS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        if let Some(pid) = i32::try_from(*group).ok().and_then(Pid::from_raw) {
            let _ = kill_process_group(pid, Signal::KILL);
        }
    }
}

/// Removes the registered directories and names them. The build's other
/// threads go on writing into them until the process exits, and a killed
/// helper may take a moment to die: the removal is retried until the
/// directory stays gone.
fn remove_registered() -> Vec<String> {
    let paths = TEMPORARY.lock().unwrap_or_else(|e| e.into_inner());
    let mut removed = Vec::new();
    for p in paths.iter() {
        for _ in 0..50 {
            let _ = fs::remove_dir_all(p);
            std::thread::sleep(std::time::Duration::from_millis(20));
            if fs::symlink_metadata(p).is_err() {
                break;
            }
        }
        removed.push(p.display().to_string());
    }
    removed
}

/// Runs `commit`, the moves that put a finished build into place, unless
/// a signal is being handled (then `None`, and the signal thread removes
/// the temporary directory and ends the process). A signal that comes
/// during the moves waits for them: the registered directories are not
/// removed under them, so OUTDIR is never a half-removed directory.
pub fn commit<T>(commit: impl FnOnce() -> std::io::Result<T>) -> Option<std::io::Result<T>> {
    let _held = TEMPORARY.lock().unwrap_or_else(|e| e.into_inner());
    if interrupted() {
        return None;
    }
    let done = commit();
    if done.is_ok() {
        COMMITTED.store(true, Ordering::SeqCst);
    }
    Some(done)
}

/// Where an existing OUTDIR waits while the new one is moved in, on a
/// filesystem that cannot exchange two directories in one step.
pub fn aside_path(out: &Path) -> PathBuf {
    let name = out.file_name().unwrap_or_default().to_string_lossy();
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    parent.join(format!(".{name}.berth-build-old-{}", std::process::id()))
}

/// Whether `dir` holds a build's output: `initrd.img` and `vmlinuz`, and
/// nothing else.
fn is_output(dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    let mut names: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    names.sort();
    names == ["initrd.img", "vmlinuz"]
}

/// Registers the process group of a helper writing into a temporary
/// directory.
pub fn register_group(group: u32) {
    GROUPS.lock().unwrap_or_else(|e| e.into_inner()).push(group);
}

/// Forgets a helper's process group (it ended).
pub fn unregister_group(group: u32) {
    GROUPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|g| *g != group);
}

/// Registers a temporary directory (before it is created).
pub fn register(path: &Path) {
    TEMPORARY
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(path.to_owned());
}

/// Forgets a temporary directory (it was removed or became the output).
pub fn unregister(path: &Path) {
    TEMPORARY
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| p != path);
}

/// Removes `.NAME.berth-build-PID` and `.NAME.berth-build-old-PID` in
/// `parent` whose process is gone (a PID now used by another process keeps
/// its directory: it may be a build running right now). An `-old-` one
/// holding an output (`initrd.img` and `vmlinuz`) is a previous output
/// moved aside by a build killed before it moved the new one in: with no
/// OUTDIR it is put back instead.
pub fn remove_stale(parent: &Path, out_name: &str) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let prefix = format!(".{out_name}.berth-build-");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let (aside, pid) = match rest.strip_prefix("old-") {
            Some(pid) => (true, pid),
            None => (false, rest),
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let out = parent.join(out_name);
        if aside
            && is_output(&entry.path())
            && fs::symlink_metadata(&out).is_err()
            && fs::rename(entry.path(), &out).is_ok()
        {
            continue;
        }
        let _ = fs::remove_dir_all(entry.path());
    }
}
