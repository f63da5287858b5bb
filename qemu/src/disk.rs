//! The appliance's persistent data disk: a raw image file attached as a
//! virtio-blk device, created and formatted ext4 on the host when missing.

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Size of a data disk created without an explicit size.
pub const DEFAULT_DATA_DISK_SIZE: u64 = 256 * 1024 * 1024;

/// Smallest disk we create: below this mkfs.ext4 has no room for a journal.
const MIN_DATA_DISK_SIZE: u64 = 4 * 1024 * 1024;

/// The ext4 label the guest can find the disk by.
pub const DATA_DISK_LABEL: &str = "berth-data";

/// A data disk: a raw image file and, for creation, its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDisk {
    pub path: PathBuf,
    /// Size to create the file with. For an existing file it must match (a
    /// disk is never resized or reformatted behind the user's back); `None`
    /// takes an existing file as it is, or creates [`DEFAULT_DATA_DISK_SIZE`].
    pub size: Option<u64>,
}

/// Errors of preparing the data disk.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(
        "invalid size {input:?}: expected a number of bytes with an optional K, M, G or T suffix"
    )]
    ParseSize { input: String },
    #[error("invalid data disk {input:?}: no file name before the size")]
    EmptyPath { input: String },
    #[error(
        "invalid data disk {input:?}: empty size after ':' (write {path}:SIZE, or {path} for an existing disk or the default size)",
        path = path.display()
    )]
    EmptySize { input: String, path: PathBuf },
    #[error(
        "invalid data disk size {size} for {path}: must be a multiple of 512 and at least {min} bytes"
    )]
    BadSize { path: PathBuf, size: u64, min: u64 },
    #[error("data disk {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error(
        "data disk {path} is a symlink to {target}, which does not exist: give that path to have the disk created there, or remove the link"
    )]
    DanglingLink { path: PathBuf, target: PathBuf },
    #[error(
        "data disk {path} exists with {actual} bytes but {requested} were requested: remove it or omit the size"
    )]
    SizeMismatch {
        path: PathBuf,
        actual: u64,
        requested: u64,
    },
    #[error("could not inspect data disk {path}")]
    Stat {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not create data disk {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not run mkfs.ext4 for {path} (apt-get install e2fsprogs)")]
    SpawnMkfs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mkfs.ext4 failed for {path} ({status}): {stderr}")]
    Mkfs {
        path: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error(
        "data disk {path} holds no filesystem (its first MiB is all zeros): delete it and berth-qemu creates and formats one, or format it with mkfs.ext4 -L {DATA_DISK_LABEL} {path}"
    )]
    Unformatted { path: PathBuf },
    #[error("could not read data disk {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not move the new data disk {from} to {to}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Parses `1048576`, `64K`, `64M`, `2G`, `1T` (binary multiples; `MiB`-style
/// and lower-case suffixes accepted).
pub fn parse_size(input: &str) -> Result<u64, DiskError> {
    let err = || DiskError::ParseSize {
        input: input.to_string(),
    };
    let (number, shift) = size_syntax(input.trim()).ok_or_else(err)?;
    let number: u64 = number.parse().map_err(|_| err())?;
    number.checked_mul(1u64 << shift).ok_or_else(err)
}

/// The digits and the suffix's shift of something written as a size, even
/// one too large for a u64; `None` when it is not written as a size.
fn size_syntax(s: &str) -> Option<(&str, u32)> {
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    if number.is_empty() {
        return None;
    }
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return None,
    };
    Some((number, shift))
}

/// Checks a size to create a disk with: a whole number of 512-byte sectors,
/// enough for an ext4 journal.
fn check_size(path: &Path, size: u64) -> Result<(), DiskError> {
    if size < MIN_DATA_DISK_SIZE || !size.is_multiple_of(512) {
        return Err(DiskError::BadSize {
            path: path.to_path_buf(),
            size,
            min: MIN_DATA_DISK_SIZE,
        });
    }
    Ok(())
}

impl FromStr for DataDisk {
    type Err = DiskError;

    /// `FILE` or `FILE:SIZE`. The argument is split at its last `:` only
    /// when what follows is written as a size (digits and an optional
    /// suffix); otherwise all of it is the file name, so `a:b.img` is a
    /// file. `FILE:` (an empty size) and an empty FILE are refused, and so
    /// is a size too small for a disk.
    fn from_str(s: &str) -> Result<Self, DiskError> {
        let (path, size) = match s.rsplit_once(':') {
            Some((path, "")) => {
                return Err(DiskError::EmptySize {
                    input: s.to_string(),
                    path: PathBuf::from(path),
                });
            }
            Some((path, size)) if size_syntax(size.trim()).is_some() => {
                (path, Some(parse_size(size)?))
            }
            _ => (s, None),
        };
        if path.is_empty() {
            return Err(DiskError::EmptyPath {
                input: s.to_string(),
            });
        }
        let path = PathBuf::from(path);
        if let Some(size) = size {
            check_size(&path, size)?;
        }
        Ok(DataDisk { path, size })
    }
}

/// Makes sure the disk exists: an existing file is checked, a missing one is
/// created at the requested size and formatted ext4 (label `berth-data`).
/// Returns whether it was created. Creation happens under a temporary name
/// that is linked into place after mkfs succeeded, so a failure never leaves
/// an unformatted disk behind (see [`create_data_disk`]).
pub fn prepare_data_disk(disk: &DataDisk) -> Result<bool, DiskError> {
    let path = &disk.path;
    match fs::metadata(path) {
        Ok(meta) => check_existing(disk, &meta).map(|()| false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // A link to a disk that is not there yet: creating one would
            // replace the user's link with a file (or the disk would land
            // where the link was not meant to point): refused.
            if let Ok(target) = fs::read_link(path) {
                return Err(DiskError::DanglingLink {
                    path: path.clone(),
                    target,
                });
            }
            if create_data_disk(path, disk.size.unwrap_or(DEFAULT_DATA_DISK_SIZE))? {
                return Ok(true);
            }
            // Another berth-qemu created it in the meantime: use theirs
            // (QEMU's image lock then decides who may open it).
            let meta = fs::metadata(path).map_err(|source| DiskError::Stat {
                path: path.clone(),
                source,
            })?;
            check_existing(disk, &meta).map(|()| false)
        }
        Err(source) => Err(DiskError::Stat {
            path: path.clone(),
            source,
        }),
    }
}

fn check_existing(disk: &DataDisk, meta: &fs::Metadata) -> Result<(), DiskError> {
    let path = &disk.path;
    if !meta.is_file() {
        return Err(DiskError::NotAFile { path: path.clone() });
    }
    if let Some(requested) = disk.size
        && requested != meta.len()
    {
        return Err(DiskError::SizeMismatch {
            path: path.clone(),
            actual: meta.len(),
            requested,
        });
    }
    check_formatted(path)
}

/// Refuses an existing disk that was never formatted (`truncate -s 1G
/// data.img`, say), which the guest could only fail to mount: every
/// filesystem writes its superblock within the first MiB (ext4 at 1 KiB,
/// XFS at 0, btrfs at 64 KiB), so all zeros there means none. Whether it
/// is the filesystem the manifest names is the guest's to find out.
fn check_formatted(path: &Path) -> Result<(), DiskError> {
    let read = |source| DiskError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut head = Vec::with_capacity(1 << 20);
    fs::File::open(path)
        .map_err(read)?
        .take(1 << 20)
        .read_to_end(&mut head)
        .map_err(read)?;
    if head.iter().all(|&b| b == 0) {
        return Err(DiskError::Unformatted {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Creates and formats the disk under a name of this process's own, then
/// links it into place only if `path` is still free, so two berth-qemu
/// runs creating one disk at once neither write one file together nor
/// replace a disk the other already uses. Returns whether this run made
/// it (false: another one did first).
fn create_data_disk(path: &Path, size: u64) -> Result<bool, DiskError> {
    check_size(path, size)?;
    let mut partial = path.as_os_str().to_owned();
    partial.push(format!(
        ".berth-partial-{}-{}",
        std::process::id(),
        PARTIAL_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let partial = PathBuf::from(partial);
    let result = format_new(path, &partial, size).and_then(|()| {
        match fs::hard_link(&partial, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            // A filesystem without hard links: a rename, which cannot tell
            // that another run got there first.
            Err(_) => {
                fs::rename(&partial, path)
                    .map(|()| true)
                    .map_err(|source| DiskError::Rename {
                        from: partial.clone(),
                        to: path.to_path_buf(),
                        source,
                    })
            }
        }
    });
    let _ = fs::remove_file(&partial);
    result
}

/// Distinguishes the temporary names of disks one process creates.
static PARTIAL_SEQ: AtomicU64 = AtomicU64::new(0);

/// Formats a new disk at `partial`; errors name the disk the user asked
/// for, `path`.
fn format_new(path: &Path, partial: &Path, size: u64) -> Result<(), DiskError> {
    let create = |source| DiskError::Create {
        path: path.to_path_buf(),
        source,
    };
    // A sparse file: only what mkfs writes takes space.
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(partial)
        .map_err(create)?;
    file.set_len(size).map_err(create)?;
    drop(file);
    // -F: the target is a regular file, not a block device; mkfs asks for
    // confirmation otherwise. Works without root.
    // Its own process group: a Ctrl-C on the terminal is berth-qemu's to
    // act on (after the disk is whole), not a kill of mkfs half-way.
    let out = Command::new("mkfs.ext4")
        .args(["-F", "-q", "-L", DATA_DISK_LABEL])
        .arg(partial)
        .env("LC_ALL", "C")
        .process_group(0)
        .output()
        .map_err(|source| DiskError::SpawnMkfs {
            path: path.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(DiskError::Mkfs {
            path: path.to_path_buf(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_parsed() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert_eq!(parse_size("1TiB").unwrap(), 1 << 40);
        for bad in [
            "",
            "M",
            "12Q",
            "-1",
            "1.5G",
            "99999999999999999999T",
            "18446744073709551615T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn data_disk_argument_is_parsed() {
        assert_eq!(
            "data.img:64M".parse::<DataDisk>().unwrap(),
            DataDisk {
                path: "data.img".into(),
                size: Some(64 << 20)
            }
        );
        assert_eq!(
            "/var/x/data.img".parse::<DataDisk>().unwrap(),
            DataDisk {
                path: "/var/x/data.img".into(),
                size: None
            }
        );
        // A size follows the last ':' only when it is written as one.
        for (arg, path, size) in [
            ("a:b.img", "a:b.img", None),
            ("a:b.img:64M", "a:b.img", Some(64 << 20)),
            ("/x/2024:01.img", "/x/2024:01.img", None),
            ("data.img:lots", "data.img:lots", None),
            ("data.img:16777216", "data.img", Some(16 << 20)),
            ("a::8M", "a:", Some(8 << 20)),
        ] {
            assert_eq!(
                arg.parse::<DataDisk>().unwrap(),
                DataDisk {
                    path: path.into(),
                    size
                },
                "{arg}"
            );
        }
    }

    #[test]
    fn empty_zero_or_overflowing_data_disk_arguments_are_refused() {
        let err = |arg: &str| arg.parse::<DataDisk>().unwrap_err();
        assert!(matches!(err(":64M"), DiskError::EmptyPath { .. }));
        assert!(matches!(err(""), DiskError::EmptyPath { .. }));
        assert!(matches!(err("data.img:"), DiskError::EmptySize { .. }));
        assert_eq!(
            err(":64M").to_string(),
            "invalid data disk \":64M\": no file name before the size"
        );
        for small in [
            "data.img:0",
            "data.img:0M",
            "data.img:1M",
            "data.img:16777217",
        ] {
            assert!(matches!(err(small), DiskError::BadSize { .. }), "{small}");
        }
        // Written as a size but too large for one: an error, not a file name.
        assert!(matches!(
            err("data.img:99999999999999999999T"),
            DiskError::ParseSize { .. }
        ));
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("berth-disk-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn missing_disk_is_created_as_ext4_and_then_reused() {
        let dir = scratch("create");
        let disk = DataDisk {
            path: dir.join("data.img"),
            size: Some(16 << 20),
        };
        assert!(prepare_data_disk(&disk).unwrap());
        let bytes = fs::read(&disk.path).unwrap();
        assert_eq!(bytes.len(), 16 << 20);
        // ext4 superblock at 1024: magic 0xEF53 at offset 0x38, label at 0x78.
        assert_eq!(&bytes[1024 + 0x38..1024 + 0x3a], &[0x53, 0xef]);
        assert_eq!(&bytes[1024 + 0x78..1024 + 0x78 + 10], b"berth-data");
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            1,
            "only the disk, no temporary file"
        );
        // Existing: reused, untouched, with or without the same size.
        fs::write(dir.join("marker"), b"").unwrap();
        assert!(!prepare_data_disk(&disk).unwrap());
        assert!(
            !prepare_data_disk(&DataDisk {
                path: disk.path.clone(),
                size: None
            })
            .unwrap()
        );
        assert_eq!(fs::read(&disk.path).unwrap(), bytes);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_existing_disk_that_was_never_formatted_is_refused_untouched() {
        let dir = scratch("unformatted");
        let path = dir.join("data.img");
        // `truncate -s 16M`: a sparse file of zeros.
        fs::File::create(&path).unwrap().set_len(16 << 20).unwrap();
        let disk = DataDisk {
            path: path.clone(),
            size: None,
        };
        let err = prepare_data_disk(&disk).unwrap_err();
        assert!(matches!(err, DiskError::Unformatted { .. }), "{err}");
        assert!(err.to_string().contains("mkfs.ext4 -L berth-data"), "{err}");
        assert_eq!(fs::metadata(&path).unwrap().len(), 16 << 20);
        assert!(fs::read(&path).unwrap().iter().all(|&b| b == 0));
        // A byte past the first MiB does not count; one within it does
        // (btrfs, say, starts at 64 KiB).
        let mut bytes = vec![0u8; 16 << 20];
        bytes[(1 << 20) + 5] = 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            prepare_data_disk(&disk).unwrap_err(),
            DiskError::Unformatted { .. }
        ));
        bytes[64 << 10] = 0x5f;
        fs::write(&path, &bytes).unwrap();
        assert!(!prepare_data_disk(&disk).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn runs_creating_one_disk_at_once_share_one_whole_disk() {
        let dir = scratch("race");
        let disk = DataDisk {
            path: dir.join("data.img"),
            size: Some(16 << 20),
        };
        let created: Vec<bool> = std::thread::scope(|s| {
            let runs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| prepare_data_disk(&disk).unwrap()))
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        assert_eq!(created.iter().filter(|c| **c).count(), 1, "{created:?}");
        let out = Command::new("e2fsck")
            .args(["-fn"])
            .arg(&disk.path)
            .output()
            .expect("e2fsck missing: apt-get install e2fsprogs");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["data.img"], "no temporary disk is left");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_link_to_a_missing_disk_is_refused_and_kept() {
        let dir = scratch("dangling");
        let link = dir.join("data.img");
        std::os::unix::fs::symlink(dir.join("disks/data.img"), &link).unwrap();
        let err = prepare_data_disk(&DataDisk {
            path: link.clone(),
            size: Some(16 << 20),
        })
        .unwrap_err();
        assert!(matches!(err, DiskError::DanglingLink { .. }), "{err}");
        assert!(fs::symlink_metadata(&link).unwrap().is_symlink());
        // A link to an existing disk is followed.
        fs::create_dir(dir.join("disks")).unwrap();
        let target = DataDisk {
            path: dir.join("disks/data.img"),
            size: Some(16 << 20),
        };
        assert!(prepare_data_disk(&target).unwrap());
        assert!(
            !prepare_data_disk(&DataDisk {
                path: link.clone(),
                size: None
            })
            .unwrap()
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mismatched_or_bad_requests_are_refused() {
        let dir = scratch("refuse");
        let path = dir.join("data.img");
        fs::write(&path, vec![0u8; 8192]).unwrap();
        let err = prepare_data_disk(&DataDisk {
            path: path.clone(),
            size: Some(16 << 20),
        })
        .unwrap_err();
        assert!(
            matches!(err, DiskError::SizeMismatch { actual: 8192, .. }),
            "{err}"
        );
        assert_eq!(fs::read(&path).unwrap().len(), 8192);

        let err = prepare_data_disk(&DataDisk {
            path: dir.clone(),
            size: None,
        })
        .unwrap_err();
        assert!(matches!(err, DiskError::NotAFile { .. }), "{err}");

        for size in [1 << 20, (16 << 20) + 1] {
            let err = prepare_data_disk(&DataDisk {
                path: dir.join("small.img"),
                size: Some(size),
            })
            .unwrap_err();
            assert!(matches!(err, DiskError::BadSize { .. }), "{err}");
            assert!(!dir.join("small.img").exists());
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
