//! Paths on the data disk, which containers write: a unit that mounts a
//! directory of it can leave symlinks, FIFOs or device nodes there for a
//! later boot (or a later unit) to find. PID 1 therefore walks below the
//! data directory by fd, one component at a time, following no symlink
//! (`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`), so neither the
//! persistent mount sources it binds nor the log files it appends to can
//! lead out of where the manifest says.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, SFlag, fstat, mkdirat};

/// Why a path below the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BeneathError {
    #[error("{path} is a symbolic link: refusing to follow it")]
    Symlink { path: PathBuf },
    #[error("{path} is not a directory")]
    NotDir { path: PathBuf },
    #[error("{path} is not a regular file")]
    NotFile { path: PathBuf },
    #[error("{path} must be relative, without . or ..")]
    NotRelative { path: PathBuf },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn how(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS)
}

/// Opens the directory `rel` below the directory `base` (whose path is
/// `shown`, for errors) as an `O_PATH` fd, following no symlink; with
/// `create`, missing components are made (mode 0755).
pub fn open_dir(
    base: BorrowedFd<'_>,
    shown: &Path,
    rel: &Path,
    create: bool,
) -> Result<OwnedFd, BeneathError> {
    let mut at = shown.to_path_buf();
    let mut dir: Option<OwnedFd> = None;
    let names = names(rel)?;
    if names.is_empty() {
        return open_at(
            base,
            OsStr::new("."),
            &at,
            OFlag::O_PATH | OFlag::O_DIRECTORY,
        );
    }
    for name in names {
        at.push(name);
        let parent = dir.as_ref().map_or(base, |d| d.as_fd());
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
        let next = match open_at(parent, name, &at, flags) {
            Err(BeneathError::Io { source, .. })
                if create && source.raw_os_error() == Some(Errno::ENOENT as i32) =>
            {
                match mkdirat(parent, name, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => {
                        return Err(BeneathError::Io {
                            op: "create directory",
                            path: at,
                            source: e.into(),
                        });
                    }
                }
                open_at(parent, name, &at, flags)?
            }
            other => other?,
        };
        dir = Some(next);
    }
    dir.ok_or(BeneathError::NotRelative {
        path: rel.to_owned(),
    })
}

/// Opens (creating it, mode 0640, when missing) the regular file `name`
/// of the directory `dir` for appending, following no symlink and never
/// blocking on a FIFO; anything but a regular file is refused.
pub fn open_append(dir: BorrowedFd<'_>, shown: &Path, name: &str) -> Result<OwnedFd, BeneathError> {
    let path = shown.join(name);
    // O_NONBLOCK: a FIFO without a reader fails (ENXIO) instead of
    // blocking PID 1; O_NOCTTY: a tty never becomes its terminal.
    let flags =
        OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    let fd = openat2(dir, name, how(flags).mode(Mode::from_bits_truncate(0o640)))
        .map_err(|e| classify(e, &path, "open"))?;
    let st = fstat(fd.as_fd()).map_err(|e| BeneathError::Io {
        op: "stat",
        path: path.clone(),
        source: e.into(),
    })?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(BeneathError::NotFile { path });
    }
    // Regular files ignore O_NONBLOCK; it is cleared all the same.
    nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_SETFL(OFlag::O_APPEND)).map_err(|e| {
        BeneathError::Io {
            op: "set flags of",
            path: path.clone(),
            source: e.into(),
        }
    })?;
    Ok(fd)
}

fn open_at(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    path: &Path,
    flags: OFlag,
) -> Result<OwnedFd, BeneathError> {
    openat2(parent, name, how(flags)).map_err(|e| {
        // O_NOFOLLOW with O_DIRECTORY says ENOTDIR for a symlink.
        let link = e == Errno::ENOTDIR
            && nix::sys::stat::fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok_and(
                |st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK,
            );
        classify(if link { Errno::ELOOP } else { e }, path, "open")
    })
}

fn classify(e: Errno, path: &Path, op: &'static str) -> BeneathError {
    match e {
        // RESOLVE_NO_SYMLINKS and O_NOFOLLOW both say ELOOP.
        Errno::ELOOP => BeneathError::Symlink {
            path: path.to_owned(),
        },
        Errno::ENOTDIR => BeneathError::NotDir {
            path: path.to_owned(),
        },
        e => BeneathError::Io {
            op,
            path: path.to_owned(),
            source: e.into(),
        },
    }
}

/// The plain names of a relative path; `.`, `..`, a root or a prefix is
/// refused (the manifest's validation already refuses them).
fn names(rel: &Path) -> Result<Vec<&OsStr>, BeneathError> {
    rel.components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(BeneathError::NotRelative {
                path: rel.to_owned(),
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Tmp(PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn tmp(tag: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!("berth-beneath-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.join("data")).unwrap();
        Tmp(p)
    }
    fn base(t: &Tmp) -> OwnedFd {
        std::fs::File::open(t.0.join("data")).unwrap().into()
    }

    #[test]
    fn directories_are_made_below_and_links_are_refused() {
        let t = tmp("dirs");
        let data = t.0.join("data");
        let b = base(&t);
        open_dir(b.as_fd(), &data, Path::new("app/cache"), true).unwrap();
        assert!(data.join("app/cache").is_dir());
        // Without create, a missing one is an error.
        let e = open_dir(b.as_fd(), &data, Path::new("app/none"), false).unwrap_err();
        assert!(e.to_string().contains("app/none"), "{e}");
        // Links anywhere on the way, absolute or relative, dangling or not.
        symlink("/", data.join("app/abs")).unwrap();
        symlink("../..", data.join("app/rel")).unwrap();
        symlink("/nonexistent-berth", data.join("app/dangling")).unwrap();
        for p in ["app/abs", "app/rel/x", "app/dangling/new"] {
            let e = open_dir(b.as_fd(), &data, Path::new(p), true).unwrap_err();
            assert!(matches!(e, BeneathError::Symlink { .. }), "{p}: {e}");
        }
        assert!(!Path::new("/nonexistent-berth").exists());
        std::fs::write(data.join("app/file"), "x").unwrap();
        let e = open_dir(b.as_fd(), &data, Path::new("app/file/x"), true).unwrap_err();
        assert!(matches!(e, BeneathError::NotDir { .. }), "{e}");
        for p in ["../x", "/etc", "a/../../x"] {
            let e = open_dir(b.as_fd(), &data, Path::new(p), true);
            assert!(matches!(e, Err(BeneathError::NotRelative { .. })), "{p}");
        }
    }

    #[test]
    fn log_files_are_regular_files_of_the_directory_itself() {
        let t = tmp("files");
        let data = t.0.join("data");
        let b = base(&t);
        let fd = open_append(b.as_fd(), &data, "ok.log").unwrap();
        std::io::Write::write_all(&mut std::fs::File::from(fd), b"line\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(data.join("ok.log")).unwrap(),
            "line\n"
        );
        std::fs::write(t.0.join("precious"), "keep").unwrap();
        symlink("../precious", data.join("link.log")).unwrap();
        let e = open_append(b.as_fd(), &data, "link.log").unwrap_err();
        assert!(matches!(e, BeneathError::Symlink { .. }), "{e}");
        nix::unistd::mkfifo(&data.join("fifo.log"), Mode::from_bits_truncate(0o600)).unwrap();
        // Refused at once: no reader, and never a wait for one.
        assert!(open_append(b.as_fd(), &data, "fifo.log").is_err());
        std::fs::create_dir(data.join("dir.log")).unwrap();
        assert!(open_append(b.as_fd(), &data, "dir.log").is_err());
        assert_eq!(
            std::fs::read_to_string(t.0.join("precious")).unwrap(),
            "keep"
        );
    }
}
