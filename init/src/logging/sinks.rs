//! Where log lines go: the console (never allowed to block PID 1) and
//! size-rotated files.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A bounded queue in front of a non-blocking writer (the console). A slow
/// serial line must not stall the event loop: what does not fit is dropped
/// and counted, and the rest is written when the fd is writable again.
#[derive(Debug)]
pub struct Outbox<W: Write> {
    writer: W,
    queue: VecDeque<u8>,
    capacity: usize,
    dropped: u64,
    broken: bool,
}

impl<W: Write> Outbox<W> {
    pub fn new(writer: W, capacity: usize) -> Self {
        Self {
            writer,
            queue: VecDeque::with_capacity(capacity),
            capacity,
            dropped: 0,
            broken: false,
        }
    }

    /// The writer, for a test that gives it a smaller queue.
    #[cfg(test)]
    pub fn into_writer(self) -> W {
        self.writer
    }

    /// Queues one line made of `parts` (all or nothing) and writes what the
    /// writer takes now. Returns false if the line was dropped.
    pub fn push(&mut self, parts: &[&[u8]]) -> bool {
        if self.broken {
            return false;
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if self.queue.len() + total > self.capacity {
            self.dropped = self.dropped.saturating_add(1);
            return false;
        }
        for p in parts {
            self.queue.extend(p.iter());
        }
        self.flush();
        true
    }

    /// Writes as much as the writer takes without blocking.
    pub fn flush(&mut self) {
        while !self.queue.is_empty() && !self.broken {
            let (front, _) = self.queue.as_slices();
            match self.writer.write(front) {
                Ok(0) => {
                    self.broken = true;
                }
                Ok(n) => {
                    self.queue.drain(..n.min(self.queue.len()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // EIO on a hung-up console, EPIPE on a closed pipe: nothing
                // will ever be read again; stop writing rather than spin.
                Err(_) => self.broken = true,
            }
        }
    }

    /// Bytes waiting for the writer to become writable.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    /// Lines dropped since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    pub fn writer(&self) -> &W {
        &self.writer
    }
}

/// Why a log file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum LogFileError {
    #[error("log file")]
    Open(#[source] crate::beneath::BeneathError),
    #[error("write log file {path}")]
    Write { path: PathBuf, source: io::Error },
    #[error("rotate log file {from} to {to}")]
    Rotate {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
}

/// `dir/name.log`, rotated to `name.log.1` … `name.log.<keep>` when the next
/// line would take it past `max_size`. Every name is taken in the directory
/// by its fd, and no symlink is followed ([`crate::beneath`]): the log
/// directory may be on the data disk, where containers leave what they
/// like (a link named `web.log` must not make PID 1 append to its target).
#[derive(Debug)]
pub struct RotatingFile {
    dir: Arc<OwnedFd>,
    /// `dir/name.log`, for messages.
    path: PathBuf,
    name: String,
    file: File,
    size: u64,
    max_size: u64,
    keep: u32,
    /// After a failed write ([`RotatingFile::offer`]): no write is tried
    /// before this time.
    paused_until: Option<u64>,
    /// Lines not written since the failure.
    missed: u64,
    /// The rotation's renames are done but the new file could not be
    /// opened: the next try only opens it (renaming again would push the
    /// rotated files one further, losing the oldest at each try).
    reopen_pending: bool,
}

/// How long a log file rests after a failed write (a full disk, mostly)
/// before the next line tries again.
pub const RETRY_MS: u64 = 60_000;

/// What became of a line offered to a log file.
#[derive(Debug)]
pub enum Offer {
    Written,
    /// Not tried: the file rests after a failure.
    Skipped,
    /// The first failure of an outage: the file rests for [`RETRY_MS`].
    Failed(LogFileError),
    /// Written again after an outage that cost `missed` lines.
    Resumed {
        missed: u64,
    },
}

impl RotatingFile {
    /// `dir` is the directory `dir_path`, opened (see [`open_log_dir`]).
    pub fn open(
        dir: &Arc<OwnedFd>,
        dir_path: &Path,
        name: &str,
        max_size: u64,
        keep: u32,
    ) -> Result<Self, LogFileError> {
        let name = format!("{name}.log");
        let file = File::from(
            crate::beneath::open_append(dir.as_fd(), dir_path, &name)
                .map_err(LogFileError::Open)?,
        );
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self {
            dir: Arc::clone(dir),
            path: dir_path.join(&name),
            name,
            file,
            size,
            max_size,
            keep,
            paused_until: None,
            missed: 0,
            reopen_pending: false,
        })
    }

    /// Writes a line unless the file rests after a failure; a failure
    /// makes it rest for [`RETRY_MS`] (said once, by `Failed`), and the
    /// first line written after it says how many were missed. A full disk
    /// on a device that runs for months fills up and empties again: the
    /// file is not given up for good.
    pub fn offer(&mut self, parts: &[&[u8]], now: u64) -> Offer {
        if self.paused_until.is_some_and(|t| now < t) {
            self.missed = self.missed.saturating_add(1);
            return Offer::Skipped;
        }
        match self.write_line(parts) {
            Ok(()) => match self.paused_until.take() {
                Some(_) => Offer::Resumed {
                    missed: std::mem::take(&mut self.missed),
                },
                None => Offer::Written,
            },
            Err(e) => {
                let first = self.paused_until.is_none();
                self.paused_until = Some(now.saturating_add(RETRY_MS));
                self.missed = self.missed.saturating_add(1);
                if first {
                    Offer::Failed(e)
                } else {
                    Offer::Skipped
                }
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn rotated(&self, n: u32) -> String {
        format!("{}.{n}", self.name)
    }

    /// Appends one line made of `parts`.
    pub fn write_line(&mut self, parts: &[&[u8]]) -> Result<(), LogFileError> {
        let total: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if self.size > 0 && self.size + total > self.max_size {
            self.rotate()?;
        }
        let line = parts.concat();
        if let Err(source) = self.file.write_all(&line) {
            // No half line left behind (ENOSPC mid-write): the file ends
            // where the last whole line did.
            let _ = self.file.set_len(self.size);
            return Err(LogFileError::Write {
                path: self.path.clone(),
                source,
            });
        }
        self.size += total;
        Ok(())
    }

    /// Renames within the directory: a rename moves a symlink itself,
    /// never what it points to (rename(2)).
    fn rename(&self, from: &str, to: &str) -> Result<(), LogFileError> {
        match nix::fcntl::renameat(self.dir.as_fd(), from, self.dir.as_fd(), to) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(LogFileError::Rotate {
                from: self.path.with_file_name(from),
                to: self.path.with_file_name(to),
                source: e.into(),
            }),
        }
    }

    fn rotate(&mut self) -> Result<(), LogFileError> {
        if self.keep == 0 {
            // Nothing kept: start the file over.
            self.file.set_len(0).map_err(|source| LogFileError::Write {
                path: self.path.clone(),
                source,
            })?;
            self.size = 0;
            return Ok(());
        }
        if !self.reopen_pending {
            for n in (1..self.keep).rev() {
                self.rename(&self.rotated(n), &self.rotated(n + 1))?;
            }
            self.rename(&self.name, &self.rotated(1))?;
            self.reopen_pending = true;
        }
        self.file = File::from(
            crate::beneath::open_append(
                self.dir.as_fd(),
                self.path.parent().unwrap_or(Path::new("/")),
                &self.name,
            )
            .map_err(LogFileError::Open)?,
        );
        self.reopen_pending = false;
        self.size = 0;
        Ok(())
    }
}

/// Opens the log directory `dir` (made when missing), following no
/// symlink on the way: it may be on the data disk.
pub fn open_log_dir(dir: &Path) -> Result<Arc<OwnedFd>, crate::beneath::BeneathError> {
    let (base, rel) = match dir.strip_prefix("/") {
        Ok(rel) => (Path::new("/"), rel),
        Err(_) => (Path::new("."), dir),
    };
    let base_fd = File::open(base).map_err(|source| crate::beneath::BeneathError::Io {
        op: "open",
        path: base.to_owned(),
        source,
    })?;
    crate::beneath::open_dir(base_fd.as_fd(), base, rel, true).map(Arc::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes `budget` bytes, then would block; or fails.
    struct Slow {
        got: Vec<u8>,
        budget: usize,
        fail: bool,
    }

    impl Write for Slow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.fail {
                return Err(io::Error::from_raw_os_error(nix::libc::EIO));
            }
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.budget);
            self.got.extend_from_slice(&buf[..n]);
            self.budget -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn outbox_never_blocks_and_drops_when_full() {
        let mut o = Outbox::new(
            Slow {
                got: vec![],
                budget: 6,
                fail: false,
            },
            10,
        );
        assert!(o.push(&[b"abc", b"\n"]));
        assert!(o.push(&[b"defg\n"]));
        assert_eq!(o.writer().got, b"abc\nde");
        assert_eq!(o.pending(), 3);
        assert!(!o.push(&[b"1234567\n"]));
        // 3 pending + 8 = 11 > 10: dropped whole, never half a line.
        assert_eq!(o.pending(), 3);
        assert_eq!(o.take_dropped(), 1);
        assert_eq!(o.take_dropped(), 0);
        o.writer.budget = 100;
        o.flush();
        assert_eq!(o.writer().got, b"abc\ndefg\n");
        assert_eq!(o.pending(), 0);
    }

    #[test]
    fn outbox_stops_on_a_dead_writer() {
        let mut o = Outbox::new(
            Slow {
                got: vec![],
                budget: 0,
                fail: true,
            },
            100,
        );
        o.push(&[b"x\n"]);
        assert!(o.is_broken());
        assert!(!o.push(&[b"y\n"]));
    }

    #[test]
    fn files_rotate_by_size() {
        let dir = std::env::temp_dir().join(format!("berth-rotate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let fd = open_log_dir(&dir).unwrap();
        let mut f = RotatingFile::open(&fd, &dir, "web", 10, 2).unwrap();
        for i in 0..7 {
            f.write_line(&[format!("line{i}").as_bytes(), b"\n"])
                .unwrap();
        }
        let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap_or_default();
        // 6 bytes a line, 10 max: one line per file; two rotated kept.
        assert_eq!(read("web.log"), "line6\n");
        assert_eq!(read("web.log.1"), "line5\n");
        assert_eq!(read("web.log.2"), "line4\n");
        assert!(!dir.join("web.log.3").exists());
        // Reopening continues the size count.
        drop(f);
        let mut f = RotatingFile::open(&fd, &dir, "web", 10, 2).unwrap();
        f.write_line(&[b"ab\n"]).unwrap();
        assert_eq!(read("web.log"), "line6\nab\n");
        f.write_line(&[b"cd\n"]).unwrap();
        assert_eq!(read("web.log"), "cd\n");
        assert_eq!(read("web.log.1"), "line6\nab\n");

        let mut f = RotatingFile::open(&fd, &dir, "nokeep", 10, 0).unwrap();
        for _ in 0..5 {
            f.write_line(&[b"12345\n"]).unwrap();
        }
        assert_eq!(read("nokeep.log"), "12345\n");
        assert!(!dir.join("nokeep.log.1").exists());

        // Names a container left in the directory: a link is refused (its
        // target untouched); a link in the rotation's way is moved like
        // any name, never written through.
        let precious = dir.join("precious");
        std::fs::write(&precious, "keep").unwrap();
        std::os::unix::fs::symlink(&precious, dir.join("victim.log")).unwrap();
        let e = RotatingFile::open(&fd, &dir, "victim", 10, 2).unwrap_err();
        assert!(
            crate::logging::error_chain(&e).contains("is a symbolic link"),
            "{}",
            crate::logging::error_chain(&e)
        );
        std::fs::remove_file(dir.join("web.log.1")).unwrap();
        std::os::unix::fs::symlink(&precious, dir.join("web.log.1")).unwrap();
        let mut f = RotatingFile::open(&fd, &dir, "web", 10, 2).unwrap();
        for _ in 0..3 {
            f.write_line(&[b"0123456789\n"]).unwrap();
        }
        assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep");
        std::fs::remove_dir_all(&dir).unwrap();
        // The directory itself through a link: refused.
        let real = dir.with_extension("real");
        std::fs::create_dir_all(&real).unwrap();
        std::os::unix::fs::symlink(&real, &dir).unwrap();
        assert!(open_log_dir(&dir.join("sub")).is_err());
        assert!(!real.join("sub").exists());
        std::fs::remove_file(&dir).unwrap();
        std::fs::remove_dir_all(&real).unwrap();
    }

    /// A small tmpfs, unmounted when dropped.
    struct SmallFs(PathBuf);

    impl SmallFs {
        /// A tmpfs with `options` (its limits) on a directory of its own.
        fn mount(tag: &str, options: &str) -> SmallFs {
            let dir = std::env::temp_dir().join(format!("berth-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            nix::mount::mount(
                Some("tmpfs"),
                &dir,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some(options),
            )
            .expect("mount a tmpfs (the tests run as root)");
            SmallFs(dir)
        }
    }

    impl Drop for SmallFs {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    /// A rotation whose renames were done but whose new file could not be
    /// made (no inode left) tries only the new file again: the rotated
    /// files are not pushed one further at each try, losing the oldest.
    #[test]
    fn a_failed_rotation_tries_again_without_renaming_again() {
        let fs = SmallFs::mount("inodes", "nr_inodes=16");
        let fd = open_log_dir(&fs.0).unwrap();
        let mut f = RotatingFile::open(&fd, &fs.0, "web", 10, 2).unwrap();
        let mut now = 0;
        for i in 0..3 {
            let text = format!("line{i}");
            assert!(matches!(
                f.offer(&[text.as_bytes(), b"\n"], now),
                Offer::Written
            ));
        }
        let read = |n: &str| std::fs::read_to_string(fs.0.join(n)).unwrap_or_default();
        assert_eq!(
            (read("web.log.2"), read("web.log.1")),
            ("line0\n".into(), "line1\n".into())
        );
        // Every inode taken; the oldest rotated file held open, so the
        // rename over it frees none.
        let mut n = 0;
        while std::fs::write(fs.0.join(format!("f{n}")), "").is_ok() {
            n += 1;
        }
        let held = std::fs::File::open(fs.0.join("web.log.2")).unwrap();
        assert!(matches!(f.offer(&[b"line3", b"\n"], now), Offer::Failed(_)));
        let after_failure = (read("web.log.2"), read("web.log.1"));
        assert_eq!(after_failure, ("line1\n".into(), "line2\n".into()));
        for _ in 0..3 {
            now += RETRY_MS + 1;
            assert!(matches!(f.offer(&[b"line4", b"\n"], now), Offer::Skipped));
            assert_eq!((read("web.log.2"), read("web.log.1")), after_failure);
        }
        drop(held);
        now += RETRY_MS + 1;
        assert!(matches!(
            f.offer(&[b"line5", b"\n"], now),
            Offer::Resumed { .. }
        ));
        assert_eq!(read("web.log"), "line5\n");
        assert_eq!((read("web.log.2"), read("web.log.1")), after_failure);
    }

    #[test]
    fn a_full_disk_pauses_the_file_and_it_is_written_again_later() {
        let fs = SmallFs::mount("full", "size=64k");
        // Room for the log but a few lines.
        std::fs::write(fs.0.join("filler"), vec![1u8; 60 * 1024]).unwrap();
        let fd = open_log_dir(&fs.0).unwrap();
        let mut f = RotatingFile::open(&fd, &fs.0, "web", 1 << 20, 1).unwrap();
        let text = vec![b'x'; 1000];
        let line: [&[u8]; 2] = [&text, b"\n"];
        let mut now = 0;
        let failed = loop {
            now += 1;
            match f.offer(&line, now) {
                Offer::Written => {}
                Offer::Failed(e) => break e,
                other => panic!("{other:?}"),
            }
            assert!(now < 100, "the tmpfs never filled");
        };
        assert!(
            crate::logging::error_chain(&failed).contains("No space left on device"),
            "{failed:?}"
        );
        // Only whole lines: no half line from the write that failed.
        let written = std::fs::read(fs.0.join("web.log")).unwrap();
        assert_eq!(written.len() % 1001, 0);
        assert_eq!(written.len() as u64, (now - 1) * 1001);
        // Resting: no write, no second message.
        for _ in 0..3 {
            now += 1000;
            assert!(matches!(f.offer(&line, now), Offer::Skipped));
        }
        // Space again, and the rest is over: written, and the gap said.
        std::fs::remove_file(fs.0.join("filler")).unwrap();
        now += RETRY_MS;
        assert!(matches!(f.offer(&line, now), Offer::Resumed { missed: 4 }));
        assert!(matches!(f.offer(&line, now), Offer::Written));
        drop(f);
        drop(fd);
    }
}
