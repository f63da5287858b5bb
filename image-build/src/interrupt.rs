//! A build interrupted by Ctrl-C (SIGINT), SIGTERM or SIGHUP removes its
//! temporary directory before the process ends, and a build removes the
//! ones that builds killed outright (SIGKILL, a crash) left next to its
//! OUTDIR. Without this an interrupted build left `.OUT.berth-build-PID`
//! behind, up to the size of an unpacked kernel package (~100 MB), that no
//! later build would remove (each uses its own PID).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Set once a signal is being handled: the build's own errors from then
/// on (dpkg killed under it, files removed under it) are not reported.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether the build is being interrupted (the process is about to exit
/// with 128 + the signal).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Temporary directories to remove on a signal.
static TEMPORARY: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Process groups of helpers (dpkg) that write into them, killed first.
static GROUPS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Takes over SIGINT, SIGTERM and SIGHUP: on one of them the registered
/// directories are removed and the process exits with 128 + the signal.
pub fn install() -> std::io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                INTERRUPTED.store(true, Ordering::SeqCst);
                kill_groups();
                let removed = remove_registered();
                let what = match sig {
                    SIGINT => "interrupted",
                    SIGTERM => "terminated",
                    _ => "hung up",
                };
                // Not eprintln!: after a hang-up stderr is often gone, and
                // a panic here would end this thread before the exit.
                use std::io::Write as _;
                let _ = if removed.is_empty() {
                    writeln!(std::io::stderr(), "berth-build: {what}")
                } else {
                    writeln!(
                        std::io::stderr(),
                        "berth-build: {what}; removed {}",
                        removed.join(", ")
                    )
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
/// its directory: it may be a build running right now).
pub fn remove_stale(parent: &Path, out_name: &str) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let prefix = format!(".{out_name}.berth-build-");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .map(|rest| rest.strip_prefix("old-").unwrap_or(rest))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}
