//! Fetching Debian's cloud kernel: `apt-get download` of the real, versioned
//! `linux-image-<release>-cloud-amd64` package, unpacked with `dpkg -x` into a
//! cache directory.
//!
//! `linux-image-cloud-amd64` is a metapackage: it holds no kernel, only a
//! `Depends:` on the versioned package (`linux-image-6.1.0-57-cloud-amd64` on
//! bookworm, signed; `...-unsigned` carries the same image without the Secure
//! Boot signature). We resolve the metapackage's candidate with `apt-cache`,
//! take its versioned dependency and download that. Nothing here needs root:
//! `apt-get download` writes into its working directory and `dpkg -x` only
//! unpacks files.
//!
//! Cache layout (default root: see [`default_cache_dir`]):
//!
//! ```text
//! <cache>/<package>_<package-version>/
//!     <package>_<package-version>_amd64.deb   the downloaded package
//!     root/                                   `dpkg -x` of it (boot/, lib/modules/<release>/)
//!     .berth-complete                         written last: the entry is usable
//! ```
//!
//! An entry is built in a private temporary directory next to it and renamed
//! into place, so concurrent fetches (parallel tests, several checkouts
//! sharing one cache) never see half an extraction; the loser of the race
//! drops its copy and uses the winner's.
//!
//! The Debian package does not ship `modules.dep` (its postinst runs `depmod`),
//! so the modules directory holds the `.ko` files, `modules.builtin` and
//! `modules.order`; whoever needs dependencies reads them from the modules'
//! `depends=` modinfo field or runs depmod on a copy.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// The metapackage that always points at Debian's current cloud kernel.
pub const CLOUD_KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";

const COMPLETE_MARKER: &str = ".berth-complete";

/// A Debian cloud kernel unpacked in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// Kernel release, as `uname -r` prints it (`6.1.0-57-cloud-amd64`).
    pub release: String,
    /// The versioned package that was downloaded.
    pub package: String,
    /// Its Debian version (`6.1.192-3`).
    pub package_version: String,
    /// The downloaded `.deb` (image-build takes it as `--kernel`).
    pub deb: PathBuf,
    /// The `dpkg -x` root.
    pub root: PathBuf,
    /// `root/boot/vmlinuz-<release>`.
    pub vmlinuz: PathBuf,
    /// `root/boot/config-<release>`: which drivers are built in (`=y`) or modules (`=m`).
    pub config: PathBuf,
    /// `root/lib/modules/<release>` (or `root/usr/lib/modules/<release>` on merged-/usr releases).
    pub modules_dir: PathBuf,
}

/// Errors of fetching and unpacking the kernel package.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("no cache directory: neither XDG_CACHE_HOME nor HOME is set")]
    NoCacheDir,
    #[error("could not run {program} (is it installed? apt-get install {package})")]
    Spawn {
        program: String,
        package: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error(
        "apt knows no installation candidate for {package}: run `apt-get update` (as root) and retry"
    )]
    NoCandidate { package: String },
    #[error("{package} {version} has no linux-image-*-cloud-amd64 dependency (Depends: {depends})")]
    NoVersionedDependency {
        package: String,
        version: String,
        depends: String,
    },
    #[error("could not create cache directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not list {path}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "`apt-get download {spec}` failed ({status}); stale package lists? run `apt-get update`: {stderr}"
    )]
    Download {
        spec: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("apt-get download left no .deb in {dir}")]
    NoDeb { dir: PathBuf },
    #[error("package {deb} holds no boot/vmlinuz-*")]
    NoVmlinuz { deb: PathBuf },
    #[error("package {deb} holds several kernels: {found:?}")]
    SeveralVmlinuz { deb: PathBuf, found: Vec<String> },
    #[error("package {deb} holds no modules directory for {release}")]
    NoModules { deb: PathBuf, release: String },
    #[error("could not write {path}")]
    WriteMarker {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not move {from} to {to}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The default cache: `$XDG_CACHE_HOME/berth/kernel`, else
/// `$HOME/.cache/berth/kernel` (the XDG default). A per-user cache rather than
/// `target/` so every checkout, worktree and test run shares one 27 MB download.
pub fn default_cache_dir() -> Result<PathBuf, KernelError> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => PathBuf::from(home).join(".cache"),
            None => return Err(KernelError::NoCacheDir),
        },
    };
    Ok(base.join("berth").join("kernel"))
}

/// The versioned package behind the metapackage, with the version to download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPackage {
    pub name: String,
    pub version: String,
}

/// Asks apt (local package lists only, no network) which versioned cloud kernel
/// package `linux-image-cloud-amd64` currently depends on.
pub fn resolve_cloud_kernel() -> Result<KernelPackage, KernelError> {
    let meta_version = candidate_version(CLOUD_KERNEL_METAPACKAGE)?;
    let spec = format!("{CLOUD_KERNEL_METAPACKAGE}={meta_version}");
    let show = run_capture(
        "apt-cache",
        "apt",
        &["show", "--no-all-versions", &spec],
        None,
    )?;
    let depends = parse_control_field(&show, "Depends").unwrap_or_default();
    let name =
        pick_versioned_kernel(&depends).ok_or_else(|| KernelError::NoVersionedDependency {
            package: CLOUD_KERNEL_METAPACKAGE.to_string(),
            version: meta_version.clone(),
            depends: depends.clone(),
        })?;
    let version = candidate_version(&name)?;
    Ok(KernelPackage { name, version })
}

/// Resolves, downloads and unpacks the cloud kernel into `cache_dir`, or
/// reuses the cached extraction of the same package version.
pub fn fetch_kernel(cache_dir: &Path) -> Result<Kernel, KernelError> {
    let package = resolve_cloud_kernel()?;
    fetch_package(cache_dir, &package)
}

/// Downloads and unpacks one given kernel package (cached like [`fetch_kernel`]).
pub fn fetch_package(cache_dir: &Path, package: &KernelPackage) -> Result<Kernel, KernelError> {
    fs::create_dir_all(cache_dir).map_err(|source| KernelError::CreateDir {
        path: cache_dir.to_path_buf(),
        source,
    })?;
    let entry = cache_dir.join(format!("{}_{}", package.name, package.version));
    if entry.join(COMPLETE_MARKER).is_file() {
        return inspect_entry(&entry, package);
    }

    remove_stale_staging(cache_dir);
    let staging = unique_staging_dir(cache_dir);
    let result = build_entry(&staging, package);
    if let Err(err) = result {
        let _ = fs::remove_dir_all(&staging);
        return Err(err);
    }
    match fs::rename(&staging, &entry) {
        Ok(()) => {}
        // Another fetch finished first (rename onto a non-empty directory
        // fails with ENOTEMPTY or EEXIST): keep its copy.
        Err(_) if entry.join(COMPLETE_MARKER).is_file() => {
            let _ = fs::remove_dir_all(&staging);
        }
        Err(source) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(KernelError::Rename {
                from: staging,
                to: entry,
                source,
            });
        }
    }
    inspect_entry(&entry, package)
}

/// Removes `.staging-<pid>-*` directories whose fetch process is gone (it
/// crashed or was killed mid-download); live fetches are left alone.
fn remove_stale_staging(cache_dir: &Path) {
    let Ok(entries) = fs::read_dir(cache_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(".staging-"))
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn unique_staging_dir(cache_dir: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    cache_dir.join(format!(".staging-{}-{n}", std::process::id()))
}

/// Downloads and unpacks into `staging`, then writes the completion marker.
fn build_entry(staging: &Path, package: &KernelPackage) -> Result<(), KernelError> {
    // A leftover from a crashed fetch with the same pid and counter.
    let _ = fs::remove_dir_all(staging);
    fs::create_dir_all(staging).map_err(|source| KernelError::CreateDir {
        path: staging.to_path_buf(),
        source,
    })?;
    let spec = format!("{}={}", package.name, package.version);
    run_capture("apt-get", "apt", &["download", "-q", &spec], Some(staging)).map_err(|err| {
        match err {
            KernelError::Command { status, stderr, .. } => KernelError::Download {
                spec: spec.clone(),
                status,
                stderr,
            },
            other => other,
        }
    })?;
    let deb = find_deb(staging)?;
    let root = staging.join("root");
    let (deb_s, root_s) = (deb.to_string_lossy(), root.to_string_lossy());
    run_capture("dpkg", "dpkg", &["-x", &deb_s, &root_s], None)?;
    // Check the tree before declaring it complete.
    locate_kernel(&root, &deb)?;
    let marker = staging.join(COMPLETE_MARKER);
    fs::write(&marker, format!("{}={}\n", package.name, package.version)).map_err(|source| {
        KernelError::WriteMarker {
            path: marker,
            source,
        }
    })
}

fn inspect_entry(entry: &Path, package: &KernelPackage) -> Result<Kernel, KernelError> {
    let deb = find_deb(entry)?;
    let root = entry.join("root");
    let (release, vmlinuz, modules_dir) = locate_kernel(&root, &deb)?;
    Ok(Kernel {
        config: root.join("boot").join(format!("config-{release}")),
        release,
        package: package.name.clone(),
        package_version: package.version.clone(),
        deb,
        root,
        vmlinuz,
        modules_dir,
    })
}

fn find_deb(dir: &Path) -> Result<PathBuf, KernelError> {
    let entries = fs::read_dir(dir).map_err(|source| KernelError::ReadDir {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| KernelError::ReadDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "deb") && path.is_file() {
            return Ok(path);
        }
    }
    Err(KernelError::NoDeb {
        dir: dir.to_path_buf(),
    })
}

/// Finds the one `boot/vmlinuz-<release>` and its modules directory.
fn locate_kernel(root: &Path, deb: &Path) -> Result<(String, PathBuf, PathBuf), KernelError> {
    let boot = root.join("boot");
    let entries = fs::read_dir(&boot).map_err(|_| KernelError::NoVmlinuz {
        deb: deb.to_path_buf(),
    })?;
    let mut releases = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| KernelError::ReadDir {
            path: boot.clone(),
            source,
        })?;
        if let Some(release) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix("vmlinuz-"))
        {
            releases.push(release.to_string());
        }
    }
    let release = match releases.as_slice() {
        [] => {
            return Err(KernelError::NoVmlinuz {
                deb: deb.to_path_buf(),
            });
        }
        [one] => one.clone(),
        _ => {
            return Err(KernelError::SeveralVmlinuz {
                deb: deb.to_path_buf(),
                found: releases,
            });
        }
    };
    let vmlinuz = boot.join(format!("vmlinuz-{release}"));
    let modules_dir = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|base| root.join(base).join(&release))
        .find(|dir| dir.is_dir())
        .ok_or_else(|| KernelError::NoModules {
            deb: deb.to_path_buf(),
            release: release.clone(),
        })?;
    Ok((release, vmlinuz, modules_dir))
}

/// `apt-cache policy PACKAGE` → its candidate version.
fn candidate_version(package: &str) -> Result<String, KernelError> {
    let policy = run_capture("apt-cache", "apt", &["policy", package], None)?;
    parse_candidate(&policy).ok_or_else(|| KernelError::NoCandidate {
        package: package.to_string(),
    })
}

/// The `Candidate:` of `apt-cache policy` output; `None` when apt has none
/// (`(none)`, or no output at all for a package missing from the lists).
pub fn parse_candidate(policy: &str) -> Option<String> {
    policy
        .lines()
        .find_map(|line| line.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .filter(|v| !v.is_empty() && *v != "(none)")
        .map(str::to_string)
}

/// A field of the first stanza of a Debian control-format text, with
/// continuation lines joined.
pub fn parse_control_field(text: &str, field: &str) -> Option<String> {
    let mut value: Option<String> = None;
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        if let Some(v) = value.as_mut() {
            if line.starts_with([' ', '\t']) {
                v.push(' ');
                v.push_str(line.trim());
                continue;
            }
            break;
        }
        if let Some((name, rest)) = line.split_once(':')
            && name.eq_ignore_ascii_case(field)
        {
            value = Some(rest.trim().to_string());
        }
    }
    value
}

/// From a `Depends:` value, the first `linux-image-<release>-cloud-amd64`
/// (signed) or `...-cloud-amd64-unsigned` package, alternatives included,
/// version constraints dropped.
pub fn pick_versioned_kernel(depends: &str) -> Option<String> {
    depends
        .split([',', '|'])
        .map(|alt| alt.split('(').next().unwrap_or("").trim())
        .map(|name| name.split(':').next().unwrap_or(name))
        .find(|name| {
            let Some(rest) = name.strip_prefix("linux-image-") else {
                return false;
            };
            let release = rest.strip_suffix("-unsigned").unwrap_or(rest);
            // A release starts with a digit: this excludes the metapackage itself.
            release.ends_with("-cloud-amd64") && release.starts_with(|c: char| c.is_ascii_digit())
        })
        .map(str::to_string)
}

/// Runs a program, returns its stdout; a non-zero exit carries stderr.
fn run_capture(
    program: &str,
    package: &'static str,
    args: &[&str],
    cwd: Option<&Path>,
) -> Result<String, KernelError> {
    let mut cmd = Command::new(program);
    cmd.args(args).env("LC_ALL", "C");
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = cmd.output().map_err(|source| KernelError::Spawn {
        program: program.to_string(),
        package,
        source,
    })?;
    if !out.status.success() {
        return Err(KernelError::Command {
            command: format!("{program} {}", args.join(" ")),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_is_parsed() {
        let policy = "linux-image-cloud-amd64:\n  Installed: (none)\n  Candidate: 6.1.192-3\n  Version table:\n     6.1.192-3 500\n";
        assert_eq!(parse_candidate(policy).as_deref(), Some("6.1.192-3"));
    }

    #[test]
    fn no_candidate_is_none() {
        let policy = "linux-image-cloud-amd64:\n  Installed: (none)\n  Candidate: (none)\n  Version table:\n";
        assert_eq!(parse_candidate(policy), None);
        // apt-cache policy prints nothing for a package absent from the lists.
        assert_eq!(parse_candidate(""), None);
    }

    #[test]
    fn control_field_joins_continuations_and_stops_at_stanza_end() {
        let text = "Package: linux-image-cloud-amd64\nDepends: a (>= 1),\n b | c\nDescription: x\n\nDepends: other\n";
        assert_eq!(
            parse_control_field(text, "Depends").as_deref(),
            Some("a (>= 1), b | c")
        );
        assert_eq!(parse_control_field(text, "Missing"), None);
    }

    #[test]
    fn versioned_kernel_is_picked() {
        assert_eq!(
            pick_versioned_kernel("linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)").as_deref(),
            Some("linux-image-6.1.0-57-cloud-amd64")
        );
        assert_eq!(
            pick_versioned_kernel("kmod, linux-image-6.12.9-cloud-amd64-unsigned | foo").as_deref(),
            Some("linux-image-6.12.9-cloud-amd64-unsigned")
        );
        assert_eq!(pick_versioned_kernel("linux-image-cloud-amd64, kmod"), None);
        assert_eq!(pick_versioned_kernel("linux-image-6.1.0-57-amd64"), None);
        assert_eq!(pick_versioned_kernel(""), None);
    }

    fn fake_tree(dir: &Path, releases: &[&str], modules_for: &[&str]) -> PathBuf {
        let root = dir.join("root");
        fs::create_dir_all(root.join("boot")).unwrap();
        for r in releases {
            fs::write(root.join("boot").join(format!("vmlinuz-{r}")), b"k").unwrap();
        }
        for r in modules_for {
            fs::create_dir_all(root.join("lib/modules").join(r)).unwrap();
        }
        root
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "berth-qemu-kernel-test-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn kernel_is_located_in_an_unpacked_tree() {
        let dir = scratch("locate");
        let root = fake_tree(&dir, &["6.1.0-57-cloud-amd64"], &["6.1.0-57-cloud-amd64"]);
        let (release, vmlinuz, modules) = locate_kernel(&root, Path::new("k.deb")).unwrap();
        assert_eq!(release, "6.1.0-57-cloud-amd64");
        assert_eq!(vmlinuz, root.join("boot/vmlinuz-6.1.0-57-cloud-amd64"));
        assert_eq!(modules, root.join("lib/modules/6.1.0-57-cloud-amd64"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn broken_trees_are_refused() {
        let dir = scratch("broken");
        let root = fake_tree(&dir.join("a"), &[], &[]);
        assert!(matches!(
            locate_kernel(&root, Path::new("k.deb")),
            Err(KernelError::NoVmlinuz { .. })
        ));
        let root = fake_tree(&dir.join("b"), &["1.0-cloud-amd64", "2.0-cloud-amd64"], &[]);
        assert!(matches!(
            locate_kernel(&root, Path::new("k.deb")),
            Err(KernelError::SeveralVmlinuz { .. })
        ));
        let root = fake_tree(&dir.join("c"), &["1.0-cloud-amd64"], &["9.9"]);
        assert!(matches!(
            locate_kernel(&root, Path::new("k.deb")),
            Err(KernelError::NoModules { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_package_has_no_candidate() {
        // Real apt-cache, local lists only.
        let err = candidate_version("berth-no-such-package-xyz").unwrap_err();
        assert!(
            matches!(&err, KernelError::NoCandidate { package } if package == "berth-no-such-package-xyz"),
            "{err}"
        );
    }

    #[test]
    fn no_candidate_error_says_to_run_apt_get_update() {
        let err = KernelError::NoCandidate {
            package: CLOUD_KERNEL_METAPACKAGE.to_string(),
        };
        assert!(err.to_string().contains("apt-get update"), "{err}");
    }
}
