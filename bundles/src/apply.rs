//! Applying layer tars to a root directory, by file descriptor.
//!
//! Every path of a layer is resolved inside the root with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`: `..` stops at the root
//! and symlinks (absolute ones included, such as Debian's `/var/run -> /run`)
//! are followed as if the root were `/`. Only the *parent* directory of an
//! entry is resolved that way; the last component is always handled with
//! `*at(parent_fd, name)` calls that never follow it (`O_NOFOLLOW`,
//! `AT_SYMLINK_NOFOLLOW`, `O_EXCL` on create). So neither a name in the tar
//! nor a symlink left by this or an earlier layer can make us create, change
//! or delete anything outside the root (the CVE-2018-15664, CVE-2021-32760
//! and CVE-2026-33056 classes).
//!
//! Whiteouts follow the OCI image spec (`layer.md`) with the per-layer set
//! `U` of paths this layer created (plus their ancestors): `.wh.NAME` and
//! `.wh..wh..opq` only remove what lower layers left.
//!
//! Decisions where the spec leaves room (documented in the README):
//! - names are cleaned lexically; a name that climbs above the root (`../x`)
//!   is an error, an absolute name is taken relative to the root;
//! - a missing parent directory is created (0755, root-owned); a parent that
//!   is a regular file or a dangling symlink is an error (containerd, moby);
//! - hardlinks keep the target's metadata (umoci); the target must already
//!   exist inside the root and is never followed if it is a symlink;
//! - xattrs: `user.*` and `security.capability` are set on files and
//!   directories; any other namespace (`security.selinux`, `trusted.*`,
//!   `system.*`) and xattrs on other file types are skipped with a debug log
//!   and counted in [`LayerStats::skipped_xattrs`]; so is a `user.*` one
//!   the target filesystem does not support (EOPNOTSUPP: tmpfs before Linux
//!   6.6), in [`LayerStats::unsupported_xattrs`] too, for the caller to
//!   warn about, as moby and containerd go on without it; a directory
//!   declared again ends with the new entry's xattrs only (umoci);
//! - sparse files (GNU's old `S` type and PAX formats 0.0, 0.1, 1.0) are
//!   regular files whose holes stay holes ([`crate::sparse`]); a malformed
//!   map is refused;
//! - unknown entry types and `.wh..wh.*` markers other than the opaque one
//!   are refused.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{
    self as rfs, AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps,
    XattrFlags,
};
use rustix::io::Errno;
use tar::EntryType;

use crate::sparse::{PaxSparse, SparseFile, SparseFormat};
use crate::tar_guard::SparseTarget;

/// A tar reading error whose text is safe to print: the tar crate puts the
/// raw bytes of a bad header (a name, a field) into its messages, and those
/// may hold a newline (a forged second line) or a terminal escape.
pub fn tar_read_error(e: io::Error) -> ApplyError {
    ApplyError::ReadEntry {
        source: crate::printable_io(e),
    }
}

/// Errors of applying a layer to a root directory.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("open root directory {path}")]
    OpenRoot {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("read tar entry")]
    ReadEntry {
        #[source]
        source: io::Error,
    },
    #[error("tar entry {name:?}: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("tar entry {path:?}: unsupported entry type {kind}")]
    UnsupportedType { path: String, kind: String },
    #[error(
        "tar entry {path:?}: a {kind} entry with {size} bytes of data (tar readers disagree on where the next entry starts)"
    )]
    DataOnHeaderOnly {
        path: String,
        kind: String,
        size: u64,
    },
    #[error("tar entry {path:?}: invalid whiteout {name:?}")]
    InvalidWhiteout { path: String, name: String },
    #[error("tar entry {path:?}: invalid header field {field}")]
    BadHeader {
        path: String,
        field: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("tar entry {path:?}: {field} {value} out of range")]
    OutOfRange {
        path: String,
        field: &'static str,
        value: u64,
    },
    #[error("tar entry {path:?}: parent {parent:?} is not a directory")]
    ParentNotDirectory { path: String, parent: String },
    #[error("tar entry {path:?}: parent {parent:?} is a dangling symlink")]
    DanglingParent { path: String, parent: String },
    #[error("tar entry {path:?}: hardlink target {target:?} {reason}")]
    Hardlink {
        path: String,
        target: String,
        reason: &'static str,
    },
    #[error("tar entry {path:?}: symlink without a target")]
    EmptySymlink { path: String },
    #[error("tar entry {path:?}: layer data truncated: got {actual} of {expected} bytes")]
    Truncated {
        path: String,
        expected: u64,
        actual: u64,
    },
    #[error("tar entry {path:?}: read file data")]
    ReadData {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("tar entry {path:?}: bad sparse file")]
    Sparse {
        path: String,
        #[source]
        source: Box<crate::sparse::SparseError>,
    },
    #[error("tar entry {path:?}: sparse map not followed by the layer reader")]
    SparseNotFollowed { path: String },
    #[error("tar entry {path:?}: refusing to replace the root directory with a non-directory")]
    RootType { path: String },
    #[error("directory {path:?} changed while the tree below it was removed")]
    TreeChanged { path: String },
    #[error("{op} {path:?}")]
    Fs {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

impl ApplyError {
    fn fs(op: &'static str, path: &[u8], errno: Errno) -> Self {
        Self::Fs {
            op,
            path: show(path),
            source: errno.into(),
        }
    }
}

/// An entry name for messages: a name may be a mebibyte long.
fn show(path: &[u8]) -> String {
    const MAX: usize = 256;
    match path.get(..MAX) {
        Some(head) if path.len() > MAX => {
            format!("{}… ({} bytes)", String::from_utf8_lossy(head), path.len())
        }
        _ => String::from_utf8_lossy(path).into_owned(),
    }
}

/// What applying one layer did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LayerStats {
    /// Entries read from the tar (whiteouts included).
    pub entries: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
    /// Whiteout and opaque markers applied.
    pub whiteouts: u64,
    /// Extended attributes not set (see the module documentation).
    pub skipped_xattrs: u64,
    /// Of `skipped_xattrs`, `user.*` attributes the target filesystem does
    /// not support (EOPNOTSUPP: tmpfs before Linux 6.6, some FUSE ones).
    pub unsupported_xattrs: u64,
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
const COPY_BUF: usize = 1 << 20;

/// Cleans a tar member name into `a/b/c` form (no leading `/`, no `.` or
/// empty components). An empty result names the root. Returns an error
/// reason when a `..` would climb above the root or the name holds a NUL.
pub fn clean_name(raw: &[u8]) -> Result<Vec<u8>, &'static str> {
    if raw.contains(&0) {
        return Err("name contains a NUL byte");
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() {
                    return Err("name escapes the root with '..'");
                }
            }
            c => parts.push(c),
        }
    }
    Ok(parts.join(&b'/'))
}

/// Splits a cleaned path into its parent and last component.
fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// What a whiteout marker means, from its base name.
#[derive(Debug, PartialEq, Eq)]
pub enum Whiteout<'a> {
    /// Not a whiteout.
    None,
    /// `.wh..wh..opq`: hide every lower entry of the directory.
    Opaque,
    /// `.wh.NAME`: hide NAME.
    Remove(&'a [u8]),
}

/// Classifies a base name; a `.wh.` with an empty, `.` or `..` target, and
/// AUFS metadata markers other than the opaque one, are errors.
pub fn classify_whiteout(name: &[u8]) -> Result<Whiteout<'_>, &'static str> {
    let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) else {
        return Ok(Whiteout::None);
    };
    if name == OPAQUE {
        return Ok(Whiteout::Opaque);
    }
    match target {
        b"" | b"." | b".." => Err("whiteout names no file"),
        t if t.starts_with(WHITEOUT_PREFIX) => Err("unsupported AUFS metadata marker"),
        t => Ok(Whiteout::Remove(t)),
    }
}

/// A root directory, held open, that layers are applied to.
pub struct Rootfs {
    root: OwnedFd,
    path: PathBuf,
    /// The root's path as the kernel names it (`/proc/self/fd/N`), to tell
    /// where inside the root a directory reached through symlinks is
    /// ([`Rootfs::real_path`]). `None` without `/proc`.
    real_root: Option<Vec<u8>>,
}

/// A directory by identity (`st_dev`, `st_ino`): the same directory may be
/// reached under two names (through a symlink), and its times belong to
/// it, not to a name.
type DirId = (u64, u64);

/// A directory fd kept for the entries that follow (see
/// [`LayerState::dirs`]), opened `O_RDONLY` so its times can be set on it.
struct CachedDir {
    path: Vec<u8>,
    /// Where it is in the root, symlinks resolved ([`Rootfs::real_path`]).
    real: Option<Vec<u8>>,
    fd: Rc<OwnedFd>,
    id: DirId,
}

/// An entry's parent directory, from the cache or resolved for it.
struct ParentDir {
    fd: Rc<OwnedFd>,
    id: DirId,
    cached: bool,
    real: Option<Vec<u8>>,
}

/// State kept while one layer is applied.
struct LayerState {
    /// Paths this layer created or replaced, plus all of their ancestors.
    upper: HashSet<Vec<u8>>,
    /// The times each directory this layer changed must end the layer
    /// with. Creating or removing a child sets a directory's mtime to the
    /// current time; umoci restores the parent's times after every entry,
    /// so a directory keeps the times it had (those of a lower layer) or
    /// the ones this layer declared for it. Here a directory's times are
    /// recorded before its first change in the layer (or taken from its
    /// entry, or 0 for a parent created because an entry needed it) and set
    /// back once, when its fd leaves the cache or the layer ends, through
    /// that fd: no path is looked up again, so a symlinked parent or a
    /// symlink replaced later in the layer cannot make them land elsewhere.
    /// Invariant: a directory is in this map before anything here changes
    /// it, and every fd it was changed through is restored after its last
    /// change.
    dir_times: HashMap<DirId, Timestamps>,
    /// The root directory (`O_RDONLY`), whose times are recorded when the
    /// layer starts and set back when it ends.
    root: (OwnedFd, DirId),
    /// Directories resolved in-root or created by this layer, most recent
    /// last (tar entries come grouped by directory, so the parent of an
    /// entry is nearly always here). A cached fd is the directory that was
    /// at that path when it was cached; only a removal can make that stale
    /// (this code never renames, and a symlink or file can take a
    /// directory's place only after the directory was removed), so every
    /// removal of a directory clears the cache.
    dirs: Vec<CachedDir>,
    /// Set when a directory was removed while an entry was applied.
    invalidated: bool,
    /// Where the real stream ended, once the reader knows.
    real_end: Option<Rc<Cell<Option<u64>>>>,
    /// Set when the reader can write file data itself ([`DirectWrite`]).
    direct: Option<DirectSink>,
    /// Where the layer reader writes a sparse file's chunks, and the file
    /// whose data it is writing (finished once the reader is past it).
    sparse: crate::tar_guard::SparseSink,
    sparse_pending: Option<PendingSparse>,
    stats: LayerStats,
    buf: Vec<u8>,
}

/// File data written by the layer stream itself: while `file` is set, each
/// read of the stream writes the bytes it would hand out to `file`, from
/// its own buffer, and returns their count; the caller's buffer is left
/// alone. That saves copying every byte of file data once more (tar's
/// `Entry` reads through a caller buffer). Only for regular entries, whose
/// data the tar crate passes through unchanged (a sparse entry is not read
/// through the tar crate at all: the layer reader writes its chunks, see
/// [`crate::tar_guard`]); `written` lets
/// [`copy_direct`] check that every byte did come from the stream.
#[derive(Default)]
pub(crate) struct DirectWrite {
    pub(crate) file: Option<File>,
    pub(crate) written: u64,
    /// Why a write failed (the read then fails too).
    pub(crate) error: Option<io::Error>,
}

pub(crate) type DirectSink = Rc<RefCell<DirectWrite>>;

/// A sparse file whose chunks the layer reader writes while it skips the
/// entry's data (after [`Rootfs::create_entry`]): its metadata waits.
struct PendingSparse {
    path: Vec<u8>,
    meta: EntryMeta,
    real_size: u64,
}

/// Directory fds kept in [`LayerState::dirs`], at most.
const DIR_CACHE: usize = 32;

/// Time zero: for the root before the first layer (as umoci) and for the
/// parent directories the unpacker creates itself, so that an unpack does
/// not depend on when it ran.
const EPOCH: Timestamps = Timestamps {
    last_access: Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    },
    last_modification: Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    },
};

fn stat_times(stat: &rfs::Stat) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: stat.st_atime,
            tv_nsec: stat.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: stat.st_mtime,
            tv_nsec: stat.st_mtime_nsec as _,
        },
    }
}

fn dir_id(stat: &rfs::Stat) -> DirId {
    (stat.st_dev, stat.st_ino)
}

impl LayerState {
    /// Records the times of the directory `fd` before this layer changes
    /// it (unless they are recorded already) and returns its identity.
    fn note_dir(&mut self, fd: BorrowedFd<'_>, path: &[u8]) -> Result<DirId, ApplyError> {
        let stat = rfs::fstat(fd).map_err(|e| ApplyError::fs("stat", path, e))?;
        let id = dir_id(&stat);
        self.dir_times
            .entry(id)
            .or_insert_with(|| stat_times(&stat));
        Ok(id)
    }

    /// Sets the directory back to the times it must end the layer with.
    fn restore_dir(&self, fd: BorrowedFd<'_>, id: DirId, path: &[u8]) -> Result<(), ApplyError> {
        match self.dir_times.get(&id) {
            Some(times) => {
                rfs::futimens(fd, times).map_err(|e| ApplyError::fs("set times of", path, e))
            }
            None => Ok(()),
        }
    }

    fn uncache(&self, dir: &CachedDir) -> Result<(), ApplyError> {
        self.restore_dir(dir.fd.as_fd(), dir.id, &dir.path)
    }

    fn cache_dir(&mut self, dir: CachedDir) -> Result<(), ApplyError> {
        let gone = if let Some(i) = self.dirs.iter().position(|d| d.path == dir.path) {
            Some(self.dirs.remove(i))
        } else if self.dirs.len() >= DIR_CACHE {
            Some(self.dirs.remove(0))
        } else {
            None
        };
        self.dirs.push(dir);
        match gone {
            Some(d) => self.uncache(&d),
            None => Ok(()),
        }
    }

    /// Empties the cache, setting each directory's times back first.
    fn clear_dirs(&mut self) -> Result<(), ApplyError> {
        let dirs = std::mem::take(&mut self.dirs);
        dirs.iter().try_for_each(|d| self.uncache(d))
    }
}

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS
}

fn mode_bits(mode: u32) -> Mode {
    Mode::from_bits_truncate(mode & 0o7777)
}

impl Rootfs {
    /// Opens an existing directory as the root. The directory itself is
    /// trusted (the caller made it); its final component is not followed.
    pub fn open(path: &Path) -> Result<Self, ApplyError> {
        let root = rfs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ApplyError::OpenRoot {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        let real_root = proc_fd_path(root.as_fd());
        Ok(Self {
            root,
            path: path.to_path_buf(),
            real_root,
        })
    }

    /// Where the directory `dir` is inside the root, every symlink on the
    /// way resolved (`""` for the root itself): a layer's entry reached
    /// through a symlink (`lib/new`, `lib -> usr/lib`) is at `usr/lib/new`,
    /// which is what the layer's own whiteouts must spare (umoci and
    /// containerd key that set by the resolved path too). `None` when the
    /// kernel cannot say (no `/proc`): the tar path is used then.
    fn real_path(&self, dir: BorrowedFd<'_>) -> Option<Vec<u8>> {
        let root = self.real_root.as_deref()?;
        let path = proc_fd_path(dir)?;
        if path == root {
            return Some(Vec::new());
        }
        let prefix_len = if root == b"/" { 0 } else { root.len() };
        match path.get(prefix_len..) {
            Some([b'/', rest @ ..]) if path.starts_with(root) => Some(rest.to_vec()),
            _ => None,
        }
    }

    /// The root directory fd (an `O_PATH` fd).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// The root directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `path` (cleaned, relative) inside the root, resolving every
    /// component in-root, following a final symlink in-root too.
    pub fn open_in_root(&self, path: &[u8], flags: OFlags) -> Result<OwnedFd, Errno> {
        let path = if path.is_empty() { b"." as &[u8] } else { path };
        loop {
            match rfs::openat2(
                &self.root,
                path,
                flags | OFlags::CLOEXEC,
                Mode::empty(),
                resolve_flags(),
            ) {
                // openat2 returns EAGAIN when a rename or mount raced with
                // the lookup (openat2(2)); nothing else writes the tree here,
                // so retrying terminates.
                Err(Errno::AGAIN) => continue,
                other => return other,
            }
        }
    }

    /// Applies one layer tar, read from `reader`, to the root.
    pub fn apply_layer<R: Read>(&self, reader: R) -> Result<LayerStats, ApplyError> {
        self.apply_layer_stream(reader, None, None)
    }

    /// [`Rootfs::apply_layer`] for a stream whose real end may be padded
    /// with zeros by the reader (see `layer.rs`): once `real_end` is known,
    /// file data reaching past it is truncation, not content.
    pub(crate) fn apply_layer_stream<R: Read>(
        &self,
        reader: R,
        real_end: Option<Rc<Cell<Option<u64>>>>,
        direct: Option<DirectSink>,
    ) -> Result<LayerStats, ApplyError> {
        let guard = crate::tar_guard::TarGuard::new(reader);
        let sparse = guard.sparse_sink();
        let mut archive = tar::Archive::new(guard);
        archive.set_ignore_zeros(false);
        let root = self
            .open_in_root(b"", OFlags::RDONLY | OFlags::DIRECTORY)
            .map_err(|e| ApplyError::fs("open", b"/", e))?;
        let root_stat = rfs::fstat(&root).map_err(|e| ApplyError::fs("stat", b"/", e))?;
        let root_id = dir_id(&root_stat);
        let mut state = LayerState {
            upper: HashSet::new(),
            dir_times: HashMap::from([(root_id, stat_times(&root_stat))]),
            root: (root, root_id),
            dirs: Vec::new(),
            invalidated: false,
            real_end,
            direct,
            sparse,
            sparse_pending: None,
            stats: LayerStats::default(),
            buf: vec![0; COPY_BUF],
        };
        let mut entries = archive.entries().map_err(tar_read_error)?;
        loop {
            // The reader skips a sparse entry's data on its way to the
            // next entry, writing the chunks: only then is that file done.
            let next = entries.next();
            if let Some(pending) = state.sparse_pending.take() {
                if let Some(Err(e)) = next {
                    return Err(tar_read_error(e));
                }
                self.finish_sparse(&mut state, pending)?;
            }
            let Some(entry) = next else { break };
            let mut entry = entry.map_err(tar_read_error)?;
            state.stats.entries += 1;
            self.apply_entry(&mut state, &mut entry)?;
        }
        // Directory times last: every directory still cached, then the
        // root (the others were set back when they left the cache).
        state.clear_dirs()?;
        let (root, root_id) = &state.root;
        state.restore_dir(root.as_fd(), *root_id, b"/")?;
        Ok(state.stats)
    }

    /// Sets the root directory's times to 0, as umoci does before the
    /// first layer: images rarely carry an entry for the root, and its
    /// times would otherwise be those of the moment of the unpack.
    pub fn reset_root_times(&self) -> Result<(), ApplyError> {
        let root = self
            .open_in_root(b"", OFlags::RDONLY | OFlags::DIRECTORY)
            .map_err(|e| ApplyError::fs("open", b"/", e))?;
        rfs::futimens(&root, &EPOCH).map_err(|e| ApplyError::fs("set times of", b"/", e))
    }

    fn apply_entry<R: Read>(
        &self,
        st: &mut LayerState,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), ApplyError> {
        let raw_pax = (st.sparse.borrow_mut()).take_pax_records(entry.raw_header_position());
        let (path, read) = read_entry(entry, raw_pax.as_deref())?;
        let (parent, name) = split_parent(&path);
        let (kind, meta) = match read {
            ReadEntry::Skip => return Ok(()),
            ReadEntry::Opaque => {
                st.stats.whiteouts += 1;
                return self.apply_opaque(st, parent);
            }
            ReadEntry::Whiteout => {
                st.stats.whiteouts += 1;
                let target = name.get(WHITEOUT_PREFIX.len()..).unwrap_or_default();
                return self.apply_whiteout(st, parent, target);
            }
            ReadEntry::Create { kind, meta } => (kind, meta),
        };

        if path.is_empty() {
            drop_old_xattrs(st.root.0.as_fd(), b"/", &meta.xattrs)?;
            self.set_fd_meta(&mut st.stats, st.root.0.as_fd(), b"/", &meta)?;
            st.dir_times.insert(st.root.1, meta.times);
            return Ok(());
        }

        let parent_dir = if parent.is_empty() {
            None
        } else {
            Some(self.take_parent(st, parent, &path)?)
        };
        // This layer's own paths, as they are in the root.
        let real_parent = match &parent_dir {
            None => Some(Vec::new()),
            Some(dir) => dir.real.clone(),
        };
        match real_parent {
            Some(mut real) => {
                if !real.is_empty() {
                    real.push(b'/');
                }
                real.extend_from_slice(name);
                mark_upper(&mut st.upper, &real);
            }
            None => mark_upper(&mut st.upper, &path),
        }
        let pfd = parent_dir
            .as_ref()
            .map_or(self.root.as_fd(), |dir| dir.fd.as_fd());
        let res = self.create_entry(st, entry, kind, pfd, name, &path, &meta);
        let invalidated = std::mem::take(&mut st.invalidated);
        res?;
        match parent_dir {
            // The cache was cleared (and its directories' times set back)
            // while this entry changed its parent: set the parent back too.
            Some(dir) if invalidated => st.restore_dir(dir.fd.as_fd(), dir.id, parent),
            Some(ParentDir {
                fd,
                id,
                cached: false,
                real,
            }) => st.cache_dir(CachedDir {
                path: parent.to_vec(),
                real,
                fd,
                id,
            }),
            _ => Ok(()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn create_entry<R: Read>(
        &self,
        st: &mut LayerState,
        entry: &mut tar::Entry<'_, R>,
        kind: EntryType,
        pfd: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
        meta: &EntryMeta,
    ) -> Result<(), ApplyError> {
        let EntryMeta {
            uid,
            gid,
            mode,
            dev,
            times,
            xattrs,
            sparse,
        } = meta;
        let (uid, gid, mode, dev) = (*uid, *gid, *mode, *dev);
        let path = path.to_vec();
        match kind {
            EntryType::Regular if let Some(sparse) = sparse => {
                let real_size = sparse.real_size;
                let fd = self.create_file(st, pfd, name, &path, mode)?;
                let target = SparseTarget::File(File::from(fd));
                let attached = st.sparse.borrow_mut().attach(target, real_size);
                if attached.is_err() {
                    return Err(ApplyError::SparseNotFollowed { path: show(&path) });
                }
                st.sparse_pending = Some(PendingSparse {
                    path,
                    meta: meta.clone(),
                    real_size,
                });
            }
            EntryType::Regular => {
                let fd = self.create_file(st, pfd, name, &path, mode)?;
                let expected = entry.size();
                let mut file = File::from(fd);
                let written = match &st.direct {
                    Some(sink) => {
                        let (n, f) = copy_direct(entry, file, sink, &mut st.buf, &path)?;
                        file = f;
                        n
                    }
                    None => copy_data(entry, &mut file, &mut st.buf, &path)?,
                };
                let real = st.real_end.as_ref().and_then(|c| c.get());
                if let Some(end) = real
                    && entry.raw_file_position() + written > end
                {
                    return Err(ApplyError::Truncated {
                        path: show(&path),
                        expected,
                        actual: end.saturating_sub(entry.raw_file_position()),
                    });
                }
                if written != expected {
                    return Err(ApplyError::Truncated {
                        path: show(&path),
                        expected,
                        actual: written,
                    });
                }
                st.stats.bytes += written;
                self.set_fd_meta(&mut st.stats, file.as_fd(), &path, meta)?;
                rfs::futimens(&file, times)
                    .map_err(|e| ApplyError::fs("set times of", &path, e))?;
            }
            EntryType::Directory => {
                // Dir over dir: the children stay, the metadata is the
                // entry's (its xattrs replace the old ones, as umoci).
                let existed = match rfs::mkdirat(pfd, name, Mode::from_bits_truncate(0o700)) {
                    Ok(()) => false,
                    Err(Errno::EXIST) => {
                        let stat = rfs::statat(pfd, name, AtFlags::SYMLINK_NOFOLLOW)
                            .map_err(|e| ApplyError::fs("stat", &path, e))?;
                        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
                            true
                        } else {
                            self.remove_existing(st, pfd, name, &path)?;
                            rfs::mkdirat(pfd, name, Mode::from_bits_truncate(0o700))
                                .map_err(|e| ApplyError::fs("create directory", &path, e))?;
                            false
                        }
                    }
                    Err(e) => return Err(ApplyError::fs("create directory", &path, e)),
                };
                let fd = rfs::openat(
                    pfd,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| ApplyError::fs("open directory", &path, e))?;
                if existed {
                    drop_old_xattrs(&fd, &path, xattrs)?;
                }
                let stat = self.set_fd_meta(&mut st.stats, &fd, &path, meta)?;
                // The entry's times win over any recorded before (a
                // directory declared again, or a child came first).
                let id = dir_id(&stat);
                st.dir_times.insert(id, times.clone());
                // Opened without following, under the in-root parent: the
                // directory now at `path`, for the entries inside it.
                st.cache_dir(CachedDir {
                    path: path.clone(),
                    real: self.real_path(fd.as_fd()),
                    fd: Rc::new(fd),
                    id,
                })?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                // Not empty: read_entry refused that.
                // The target is stored verbatim: containment applies when a
                // link is followed (always in-root here), not when made.
                retry_exist(self, st, pfd, name, &path, |p, n| {
                    rfs::symlinkat(&target[..], p, n)
                })
                .map_err(|e| ApplyError::fs("create symlink", &path, e))?;
                rfs::chownat(pfd, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| ApplyError::fs("change owner of", &path, e))?;
                rfs::utimensat(pfd, name, times, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| ApplyError::fs("set times of", &path, e))?;
                skip_xattrs(st, &path, xattrs);
            }
            EntryType::Link => {
                let raw_target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                self.apply_hardlink(st, pfd, name, &path, &raw_target)?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let ftype = match kind {
                    EntryType::Fifo => FileType::Fifo,
                    EntryType::Char => FileType::CharacterDevice,
                    _ => FileType::BlockDevice,
                };
                retry_exist(self, st, pfd, name, &path, |p, n| {
                    rfs::mknodat(p, n, ftype, mode_bits(mode & 0o777), dev)
                })
                .map_err(|e| ApplyError::fs("create node", &path, e))?;
                rfs::chownat(pfd, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| ApplyError::fs("change owner of", &path, e))?;
                // Linux fchmodat() has no AT_SYMLINK_NOFOLLOW and an O_PATH fd
                // cannot be fchmod()ed. The name was just created by mknodat
                // in the in-root parent and nothing else writes this tree, so
                // check it is still our node (not a symlink) and chmod it:
                // the mode passed to mknodat was cut by the umask.
                let stat = rfs::statat(pfd, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| ApplyError::fs("stat", &path, e))?;
                if FileType::from_raw_mode(stat.st_mode) != ftype {
                    return Err(ApplyError::fs("change mode of", &path, Errno::LOOP));
                }
                rfs::chmodat(pfd, name, mode_bits(mode), AtFlags::empty())
                    .map_err(|e| ApplyError::fs("change mode of", &path, e))?;
                rfs::utimensat(pfd, name, times, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| ApplyError::fs("set times of", &path, e))?;
                skip_xattrs(st, &path, xattrs);
            }
            other => {
                return Err(ApplyError::UnsupportedType {
                    path: show(&path),
                    kind: type_name(other),
                });
            }
        }
        Ok(())
    }

    /// Finishes a sparse file once the reader wrote its chunks: its size
    /// (the holes at its end are in no chunk), then owner, mode, xattrs and
    /// times as for any regular file.
    fn finish_sparse(&self, st: &mut LayerState, pending: PendingSparse) -> Result<(), ApplyError> {
        let PendingSparse {
            path,
            meta,
            real_size,
        } = pending;
        let done = st.sparse.borrow_mut().finish();
        let Some(done) = done else {
            return Err(ApplyError::SparseNotFollowed { path: show(&path) });
        };
        if let Some(source) = done.error {
            return Err(ApplyError::Fs {
                op: "write",
                path: show(&path),
                source,
            });
        }
        let stored = meta.sparse.as_ref().map_or(0, |s| s.stored_size);
        let Some((start, end)) = done.data else {
            return Err(ApplyError::Truncated {
                path: show(&path),
                expected: stored,
                actual: done.written,
            });
        };
        if let Some(real) = st.real_end.as_ref().and_then(|c| c.get())
            && end > real
        {
            return Err(ApplyError::Truncated {
                path: show(&path),
                expected: end - start,
                actual: real.saturating_sub(start),
            });
        }
        st.stats.bytes += done.written;
        let SparseTarget::File(file) = done.target else {
            return Err(ApplyError::SparseNotFollowed { path: show(&path) });
        };
        file.set_len(real_size).map_err(|source| ApplyError::Fs {
            op: "set size of",
            path: show(&path),
            source,
        })?;
        self.set_fd_meta(&mut st.stats, file.as_fd(), &path, &meta)?;
        rfs::futimens(&file, &meta.times).map_err(|e| ApplyError::fs("set times of", &path, e))
    }

    /// Sets owner, then mode (chown clears setuid/setgid, chown(2)), then
    /// xattrs on an open file or directory; returns its `fstat` from before
    /// (the identity is what the caller needs).
    fn set_fd_meta(
        &self,
        stats: &mut LayerStats,
        fd: impl AsFd,
        path: &[u8],
        meta: &EntryMeta,
    ) -> Result<rfs::Stat, ApplyError> {
        let EntryMeta {
            uid,
            gid,
            mode,
            xattrs,
            ..
        } = meta;
        let (uid, gid, mode) = (*uid, *gid, *mode);
        let fd = fd.as_fd();
        // Most entries already have the owner and mode they were created
        // with (root:root, 0644 or 0755 after the umask); one fstat is
        // cheaper than fchown + fchmod, which take the inode lock.
        let have = rfs::fstat(fd).map_err(|e| ApplyError::fs("stat", path, e))?;
        let chown = have.st_uid != uid.as_raw() || have.st_gid != gid.as_raw();
        if chown {
            rfs::fchown(fd, Some(uid), Some(gid))
                .map_err(|e| ApplyError::fs("change owner of", path, e))?;
        }
        // After a chown always chmod: chown clears setuid/setgid (chown(2)).
        if chown || have.st_mode & 0o7777 != mode & 0o7777 {
            rfs::fchmod(fd, mode_bits(mode))
                .map_err(|e| ApplyError::fs("change mode of", path, e))?;
        }
        for (key, value) in xattrs {
            if xattr_allowed(key) {
                match rfs::fsetxattr(fd, &key[..], value, XattrFlags::empty()) {
                    Ok(()) => {}
                    // A filesystem without user.* attributes (tmpfs before
                    // Linux 6.6): the file goes on without it, counted, as
                    // moby's and containerd's unpackers do. A file
                    // capability has no such excuse.
                    Err(Errno::OPNOTSUPP) if key.starts_with(b"user.") => {
                        log::debug!("{} not supported on {}", show(key), show(path));
                        stats.skipped_xattrs += 1;
                        stats.unsupported_xattrs += 1;
                    }
                    Err(e) => return Err(ApplyError::fs("set xattr on", path, e)),
                }
            } else {
                log::debug!("skipping xattr {} on {}", show(key), show(path));
                stats.skipped_xattrs += 1;
            }
        }
        Ok(have)
    }

    /// Resolves (creating missing directories) the parent of an entry, from
    /// the cache if it is there; a fresh one has its times recorded and is
    /// cached by the caller once the entry is made.
    fn take_parent(
        &self,
        st: &mut LayerState,
        parent: &[u8],
        entry: &[u8],
    ) -> Result<ParentDir, ApplyError> {
        if let Some(d) = st.dirs.iter().rev().find(|d| d.path == parent) {
            return Ok(ParentDir {
                fd: d.fd.clone(),
                id: d.id,
                cached: true,
                real: d.real.clone(),
            });
        }
        // O_RDONLY rather than O_PATH: the directory's times are set back
        // through this fd (futimens needs a real open file).
        let fd = match self.open_in_root(parent, OFlags::RDONLY | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => self.make_parents(st, parent, entry)?,
            Err(Errno::NOTDIR) => {
                return Err(ApplyError::ParentNotDirectory {
                    path: show(entry),
                    parent: show(parent),
                });
            }
            Err(e) => return Err(ApplyError::fs("resolve parent directory", parent, e)),
        };
        let id = st.note_dir(fd.as_fd(), parent)?;
        let real = self.real_path(fd.as_fd());
        Ok(ParentDir {
            fd: Rc::new(fd),
            id,
            cached: false,
            real,
        })
    }

    /// Creates the missing directories of `parent`, one component at a
    /// time, each resolved in-root. They get time 0 (umoci leaves them
    /// with the time of the unpack); the existing directory that gets the
    /// first of them keeps its times.
    fn make_parents(
        &self,
        st: &mut LayerState,
        parent: &[u8],
        entry: &[u8],
    ) -> Result<OwnedFd, ApplyError> {
        let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY;
        let mut cur = self
            .open_in_root(b"", dir_flags)
            .map_err(|e| ApplyError::fs("open", b"/", e))?;
        let mut end = 0;
        for comp in parent.split(|b| *b == b'/') {
            end += comp.len();
            let cur_path = &parent[..end.saturating_sub(comp.len() + 1)];
            let prefix = &parent[..end];
            end += 1;
            match self.open_in_root(prefix, dir_flags) {
                Ok(fd) => cur = fd,
                Err(Errno::NOENT) => {
                    let cur_id = st.note_dir(cur.as_fd(), cur_path)?;
                    match rfs::mkdirat(&cur, comp, Mode::from_bits_truncate(0o755)) {
                        Ok(()) => {}
                        Err(Errno::EXIST) => {
                            return Err(ApplyError::DanglingParent {
                                path: show(entry),
                                parent: show(prefix),
                            });
                        }
                        Err(e) => return Err(ApplyError::fs("create directory", prefix, e)),
                    }
                    st.restore_dir(cur.as_fd(), cur_id, cur_path)?;
                    cur = rfs::openat(
                        &cur,
                        comp,
                        dir_flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| ApplyError::fs("open directory", prefix, e))?;
                    let stat = rfs::fstat(&cur).map_err(|e| ApplyError::fs("stat", prefix, e))?;
                    st.dir_times.insert(dir_id(&stat), EPOCH);
                    // Its own times are set when its child is made (or
                    // when the caller's fd leaves the cache).
                }
                Err(Errno::NOTDIR) => {
                    return Err(ApplyError::ParentNotDirectory {
                        path: show(entry),
                        parent: show(prefix),
                    });
                }
                Err(e) => return Err(ApplyError::fs("resolve parent directory", prefix, e)),
            }
        }
        Ok(cur)
    }

    /// Creates a regular file with its permission bits (special bits come
    /// later, after the owner); the fd is write-only, so even a mode of
    /// 0444 does not stop the data from being written.
    fn create_file(
        &self,
        st: &mut LayerState,
        parent: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
        perm: u32,
    ) -> Result<OwnedFd, ApplyError> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mode = Mode::from_bits_truncate(perm & 0o777);
        match rfs::openat(parent, name, flags, mode) {
            Ok(fd) => Ok(fd),
            Err(Errno::EXIST) => {
                self.remove_existing(st, parent, name, path)?;
                rfs::openat(parent, name, flags, mode)
                    .map_err(|e| ApplyError::fs("create file", path, e))
            }
            Err(e) => Err(ApplyError::fs("create file", path, e)),
        }
    }

    /// Removes whatever is at `parent/name` (a whole tree for a directory).
    fn remove_existing(
        &self,
        st: &mut LayerState,
        parent: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
    ) -> Result<(), ApplyError> {
        // A symlink may be a component of cached parent paths (`bin ->
        // usr/bin`, `bin/a`, then `bin -> opt`, `bin/b`): once it is
        // replaced they lead elsewhere, and `bin/b` would land in usr/bin
        // where every other tar reader puts it in opt.
        if rfs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Symlink)
        {
            st.clear_dirs()?;
            st.invalidated = true;
        }
        match rfs::unlinkat(parent, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(Errno::ISDIR) => {
                // Removing a directory may orphan a cached parent fd.
                st.clear_dirs()?;
                st.invalidated = true;
                remove_tree(parent, name, path, None)
            }
            Err(e) => Err(ApplyError::fs("remove", path, e)),
        }
    }

    fn apply_whiteout(
        &self,
        st: &mut LayerState,
        parent: &[u8],
        target: &[u8],
    ) -> Result<(), ApplyError> {
        let mut path = parent.to_vec();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(target);
        let dir = match self.open_in_root(parent, OFlags::RDONLY | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            // Nothing below a missing parent to hide.
            Err(Errno::NOENT | Errno::NOTDIR) => return Ok(()),
            Err(e) => return Err(ApplyError::fs("resolve parent directory", parent, e)),
        };
        match rfs::statat(&dir, target, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => {}
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(ApplyError::fs("stat", &path, e)),
        }
        st.clear_dirs()?;
        let id = st.note_dir(dir.as_fd(), parent)?;
        // The layer's own paths are kept by where they are in the root.
        if let Some(mut real) = self.real_path(dir.as_fd()) {
            if !real.is_empty() {
                real.push(b'/');
            }
            real.extend_from_slice(target);
            path = real;
        }
        let mut keep = Keep {
            upper: &st.upper,
            times: &mut st.dir_times,
        };
        remove_tree(dir.as_fd(), target, &path, Some(&mut keep))?;
        st.restore_dir(dir.as_fd(), id, parent)
    }

    fn apply_opaque(&self, st: &mut LayerState, dir_path: &[u8]) -> Result<(), ApplyError> {
        let dir = match self.open_in_root(dir_path, OFlags::RDONLY | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::NOTDIR) => return Ok(()),
            Err(e) => return Err(ApplyError::fs("open directory", dir_path, e)),
        };
        st.clear_dirs()?;
        let id = st.note_dir(dir.as_fd(), dir_path)?;
        // The layer's own paths are kept by where they are in the root.
        let real = self.real_path(dir.as_fd());
        let base = real.as_deref().unwrap_or(dir_path);
        let mut keep = Keep {
            upper: &st.upper,
            times: &mut st.dir_times,
        };
        for name in list_dir(&dir, dir_path)? {
            let mut path = base.to_vec();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&name);
            remove_tree(dir.as_fd(), &name, &path, Some(&mut keep))?;
        }
        st.restore_dir(dir.as_fd(), id, dir_path)
    }

    fn apply_hardlink(
        &self,
        st: &mut LayerState,
        parent: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
        raw_target: &[u8],
    ) -> Result<(), ApplyError> {
        let err = |reason| ApplyError::Hardlink {
            path: show(path),
            target: show(raw_target),
            reason,
        };
        let target = hardlink_target(path, raw_target)?;
        let (tparent, tname) = split_parent(&target);
        let tdir = match self.open_in_root(tparent, OFlags::PATH | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::NOTDIR) => return Err(err("does not exist")),
            Err(e) => return Err(ApplyError::fs("resolve hardlink target", &target, e)),
        };
        // linkat without AT_SYMLINK_FOLLOW links a symlink itself, never
        // what it points to (linkat(2)).
        let link = |p: BorrowedFd<'_>, n: &[u8]| rfs::linkat(&tdir, tname, p, n, AtFlags::empty());
        match retry_exist(self, st, parent, name, path, link) {
            Ok(()) => Ok(()),
            Err(Errno::NOENT) => Err(err("does not exist")),
            Err(Errno::PERM) => Err(err("is a directory")),
            Err(e) => Err(ApplyError::fs("create hardlink", path, e)),
        }
    }
}

/// What the unpacker makes of a tar entry before it touches the
/// filesystem (see [`read_entry`]).
pub enum ReadEntry {
    /// Nothing to do (a PAX global header).
    Skip,
    /// `.wh..wh..opq`: hide the lower entries of the path's parent.
    Opaque,
    /// `.wh.NAME`: remove NAME from the path's parent.
    Whiteout,
    /// An entry to create at the path (empty: the root directory).
    Create { kind: EntryType, meta: EntryMeta },
}

/// Reads one tar entry as the unpacker does, with every check it makes
/// before touching the filesystem (name, whiteout, header fields, ids,
/// PAX extensions, type, link targets): the cleaned path and what to do.
/// Public so that a layer can be checked without being unpacked
/// (`berth-build` checks every entry of the layers it packs). `raw_pax`:
/// the entry's PAX records as the layer reader kept them
/// ([`crate::tar_guard::SparseOut::take_pax_records`]), split by their lengths
/// here; without them, as the tar crate splits them (at every newline).
pub fn read_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    raw_pax: Option<&[u8]>,
) -> Result<(Vec<u8>, ReadEntry), ApplyError> {
    let mut kind = entry.header().entry_type();
    // An old-style entry (type NUL, before ustar had a directory type)
    // whose name ends in `/` is a directory, for Go's archive/tar, GNU tar
    // and Python's tarfile alike.
    if entry.header().as_bytes()[156] == 0 && entry.path_bytes().ends_with(b"/") {
        kind = EntryType::Directory;
    }
    if kind == EntryType::XGlobalHeader {
        // Archive-wide PAX defaults (comments, mostly); containerd and
        // moby ignore them too.
        return Ok((Vec::new(), ReadEntry::Skip));
    }
    // A PAX sparse file's name is GNU.sparse.name (the header has a
    // `GNUSparseFile.PID/NAME` placeholder), as for Go's archive/tar.
    let records = pax_records(entry, raw_pax).map_err(|source| ApplyError::BadHeader {
        path: show(&entry.path_bytes()),
        field: "pax extensions",
        source,
    })?;
    let (pax_sparse, stored_size) = sparse_records(entry, &records)?;
    let raw = match &pax_sparse {
        Some(PaxSparse {
            name: Some(name), ..
        }) => name.clone(),
        _ => entry.path_bytes().into_owned(),
    };
    if header_only(kind) {
        // Only files carry data. For the other types readers part ways on
        // the size field: the tar crate skips that many bytes, Go's
        // archive/tar (containerd, Docker, umoci) and GNU tar skip none,
        // so bytes that one of them reads as data the others read as
        // entries — files only berth would create, or only they.
        let size = entry.header().entry_size().unwrap_or(u64::MAX);
        if size != 0 || entry.size() != 0 {
            return Err(ApplyError::DataOnHeaderOnly {
                path: show(&raw),
                kind: format!("{kind:?}").to_lowercase(),
                size: size.max(entry.size()),
            });
        }
    }
    let path = clean_name(&raw).map_err(|reason| ApplyError::BadName {
        name: show(&raw),
        reason,
    })?;
    // Whiteouts first: only their name counts (the spec says they are
    // regular files, tools fill the other header fields freely).
    let (_, name) = split_parent(&path);
    let whiteout = classify_whiteout(name).map_err(|_| ApplyError::InvalidWhiteout {
        path: show(&path),
        name: show(name),
    })?;
    match whiteout {
        Whiteout::Opaque => return Ok((path, ReadEntry::Opaque)),
        Whiteout::Remove(_) => return Ok((path, ReadEntry::Whiteout)),
        Whiteout::None => {}
    }

    let header = entry.header();
    // The path is only formatted when a field is bad.
    let field = |field: &'static str| {
        let path = &path;
        move |source| ApplyError::BadHeader {
            path: show(path),
            field,
            source,
        }
    };
    let mode = header.mode().map_err(field("mode"))?;
    let uid = header.uid().map_err(field("uid"))?;
    let gid = header.gid().map_err(field("gid"))?;
    let mtime = header.mtime().map_err(field("mtime"))?;
    let dev = match kind {
        EntryType::Char | EntryType::Block => {
            let major = header
                .device_major()
                .map_err(field("device major"))?
                .unwrap_or(0);
            let minor = header
                .device_minor()
                .map_err(field("device minor"))?
                .unwrap_or(0);
            rfs::makedev(major, minor)
        }
        _ => 0,
    };
    let uid = rfs::Uid::from_raw(id_of(&path, "uid", uid)?);
    let gid = rfs::Gid::from_raw(id_of(&path, "gid", gid)?);

    let pax = times_and_xattrs(&records, mtime).map_err(field("pax extensions"))?;
    let PaxFacts { mut times, xattrs } = pax;
    // A sparse file is a regular file whose data is a map of chunks (the
    // layer reader, `tar_guard`, checked the map as it went by).
    let sparse = if kind == EntryType::GNUSparse || pax_sparse.is_some() {
        let refuse = |source| ApplyError::Sparse {
            path: show(&path),
            source: Box::new(source),
        };
        if !matches!(kind, EntryType::Regular | EntryType::GNUSparse) {
            let kind = format!("{kind:?}").to_lowercase();
            return Err(refuse(crate::sparse::SparseError::NotAFile { kind }));
        }
        let file = match pax_sparse {
            Some(_) if kind == EntryType::GNUSparse => {
                return Err(refuse(crate::sparse::SparseError::TwoMaps));
            }
            Some(ps) => SparseFile {
                real_size: ps.real_size,
                stored_size: entry.size(),
                format: SparseFormat::Pax(ps.format),
            },
            // The tar crate made the entry's size the real size.
            None => SparseFile {
                real_size: entry.size(),
                stored_size,
                format: SparseFormat::OldGnu,
            },
        };
        kind = EntryType::Regular;
        Some(file)
    } else {
        None
    };
    if times.last_modification.tv_sec < 0 {
        times.last_modification = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        times.last_access = times.last_modification;
    }
    if path.is_empty() && kind != EntryType::Directory {
        return Err(ApplyError::RootType { path: show(&raw) });
    }
    match kind {
        EntryType::Regular
        | EntryType::Directory
        | EntryType::Char
        | EntryType::Block
        | EntryType::Fifo => {}
        EntryType::Symlink => {
            if entry.link_name_bytes().is_none_or(|t| t.is_empty()) {
                return Err(ApplyError::EmptySymlink { path: show(&path) });
            }
        }
        EntryType::Link => {
            let raw_target = entry.link_name_bytes().unwrap_or_default();
            hardlink_target(&path, &raw_target)?;
        }
        other => {
            return Err(ApplyError::UnsupportedType {
                path: show(&path),
                kind: type_name(other),
            });
        }
    }
    let meta = EntryMeta {
        uid,
        gid,
        mode,
        dev,
        times,
        xattrs,
        sparse,
    };
    Ok((path, ReadEntry::Create { kind, meta }))
}

/// An entry type for messages: what it is, and its typeflag as written.
fn type_name(kind: EntryType) -> String {
    let what = match kind {
        EntryType::Continuous => "contiguous file",
        EntryType::GNUSparse => "GNU sparse file",
        EntryType::GNULongName | EntryType::GNULongLink => "GNU long name",
        EntryType::XHeader => "pax extension",
        _ => "unknown",
    };
    format!("{what} (typeflag {:?})", char::from(kind.as_byte()))
}

/// Entry types whose header is the whole entry: a size other than zero is
/// not data but a disagreement between readers.
pub fn header_only(kind: EntryType) -> bool {
    matches!(
        kind,
        EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link
            | EntryType::Char
            | EntryType::Block
            | EntryType::Fifo
    )
}

/// A hardlink's target, cleaned; refused when it escapes the root, is the
/// root or is the entry itself.
pub fn hardlink_target(path: &[u8], raw_target: &[u8]) -> Result<Vec<u8>, ApplyError> {
    let err = |reason| ApplyError::Hardlink {
        path: show(path),
        target: show(raw_target),
        reason,
    };
    let target = clean_name(raw_target).map_err(err)?;
    if target.is_empty() {
        return Err(err("is the root directory"));
    }
    if target == path {
        return Err(err("is the entry itself"));
    }
    Ok(target)
}

/// Header fields of one entry, parsed before its data is read.
#[derive(Clone)]
pub struct EntryMeta {
    uid: rfs::Uid,
    gid: rfs::Gid,
    mode: u32,
    dev: rfs::Dev,
    times: Timestamps,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse: Option<SparseFile>,
}

impl EntryMeta {
    /// Set for a sparse file (a regular file whose data is a map of
    /// chunks; see [`crate::sparse`]).
    pub fn sparse(&self) -> Option<&SparseFile> {
        self.sparse.as_ref()
    }
}

/// Runs a create call; if the name exists, removes it and runs it again.
fn retry_exist(
    rootfs: &Rootfs,
    st: &mut LayerState,
    parent: BorrowedFd<'_>,
    name: &[u8],
    path: &[u8],
    mut create: impl FnMut(BorrowedFd<'_>, &[u8]) -> Result<(), Errno>,
) -> Result<(), Errno> {
    match create(parent, name) {
        Err(Errno::EXIST) => {
            rootfs
                .remove_existing(st, parent, name, path)
                .map_err(|e| match e {
                    ApplyError::Fs { source, .. } => {
                        Errno::from_io_error(&source).unwrap_or(Errno::IO)
                    }
                    _ => Errno::IO,
                })?;
            create(parent, name)
        }
        other => other,
    }
}

fn list_dir(dir: &OwnedFd, path: &[u8]) -> Result<Vec<Vec<u8>>, ApplyError> {
    let mut reader = Dir::read_from(dir).map_err(|e| ApplyError::fs("read directory", path, e))?;
    let mut names = Vec::new();
    while let Some(ent) = reader.read() {
        let ent = ent.map_err(|e| ApplyError::fs("read directory", path, e))?;
        let name = ent.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    Ok(names)
}

/// What a whiteout keeps: this layer's paths (and their ancestors), and
/// the times of the kept directories it takes children from.
struct Keep<'a> {
    upper: &'a HashSet<Vec<u8>>,
    times: &'a mut HashMap<DirId, Timestamps>,
}

/// Directory fds a tree removal holds open at once, at most (besides the
/// caller's `parent`). A tree may be far deeper than its names are long:
/// an entry's parent is looked up through symlinks (`hK -> /hK-1/a/…/a`,
/// each target up to PATH_MAX, adds ~2,000 levels) or found in the parent
/// cache without a lookup, so one layer can build a chain of 20,000 or
/// more levels with short names (`tests/corpus.rs`). So the removal
/// neither recurses (its levels are a `Vec` on the heap, some 150 bytes
/// each plus their names and those of their children still to remove: less
/// than the kernel keeps for the directories themselves) nor holds one fd
/// per level: the fd of a directory more than this many levels above the
/// one being emptied is closed, and opened again as `..` of its child when
/// the walk climbs back to it, checked to be the same directory (`st_dev`,
/// `st_ino`). There is no depth limit.
const REMOVE_OPEN_DIRS: usize = 64;

/// Removes `path` and everything below it, as a whiteout removes a tree:
/// never following a symlink (one at `path` itself is removed), without
/// recursion and with at most [`REMOVE_OPEN_DIRS`] fds open. Nothing to do
/// when it does not exist. For unpacked roots, which std's
/// `remove_dir_all` cannot be trusted with: it recurses once per level (as
/// of Rust 1.95; 15,000 levels overflow a 2 MiB stack) and holds an fd per
/// level.
pub fn remove_dir_tree(path: &Path) -> Result<(), ApplyError> {
    let shown = path.as_os_str().as_bytes();
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(ApplyError::fs("remove", shown, Errno::INVAL));
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let dir = match rfs::open(
        parent,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => {
            return Err(ApplyError::fs(
                "open directory",
                parent.as_os_str().as_bytes(),
                e,
            ));
        }
    };
    remove_tree(dir.as_fd(), name.as_bytes(), shown, None)
}

/// Removes `parent/name` and everything below it, never following a
/// symlink. Paths in `keep` (this layer's own entries and their ancestors)
/// survive: of a kept directory only the children not in `keep` go, and
/// its times are set back afterwards. Walks the tree without recursion and
/// with at most [`REMOVE_OPEN_DIRS`] fds open.
fn remove_tree(
    parent: BorrowedFd<'_>,
    name: &[u8],
    path: &[u8],
    keep: Option<&mut Keep<'_>>,
) -> Result<(), ApplyError> {
    remove_tree_with(parent, name, path, keep, REMOVE_OPEN_DIRS)
}

/// A directory [`remove_tree`] is emptying.
struct Level {
    /// Its name in the level above (or in the caller's `parent`).
    name: Vec<u8>,
    /// The length of its path in the walk's path buffer.
    path_len: usize,
    /// Its fd while it is not the deepest level (the deepest one's is the
    /// walk's `cur`), unless closed to bound the fds held.
    fd: Option<OwnedFd>,
    /// Its identity, taken when its fd was closed: the `..` it is opened
    /// again through must be this directory.
    id: Option<DirId>,
    /// Its children still to remove, the next one last.
    children: Vec<Vec<u8>>,
    /// For a kept directory, the times it gets back once its other
    /// children are gone (it stays); a directory without them is removed
    /// once empty.
    times: Option<Timestamps>,
}

fn remove_tree_with(
    parent: BorrowedFd<'_>,
    name: &[u8],
    path: &[u8],
    mut keep: Option<&mut Keep<'_>>,
    max_open: usize,
) -> Result<(), ApplyError> {
    let mut path = path.to_vec();
    let kept = keep.as_ref().is_some_and(|k| k.upper.contains(&path));
    let Some((mut cur, top)) = enter(parent, name, &path, kept, keep.as_deref_mut())? else {
        return Ok(());
    };
    let mut levels = vec![top];
    while let Some(level) = levels.last_mut() {
        if let Some(child) = level.children.pop() {
            path.truncate(level.path_len);
            path.push(b'/');
            path.extend_from_slice(&child);
            // `keep` holds the ancestors of each of its paths, so only a
            // kept directory can have kept children.
            let kept =
                level.times.is_some() && keep.as_ref().is_some_and(|k| k.upper.contains(&path));
            let Some((fd, next)) = enter(cur.as_fd(), &child, &path, kept, keep.as_deref_mut())?
            else {
                continue;
            };
            level.fd = Some(std::mem::replace(&mut cur, fd));
            levels.push(next);
            // Keep `cur` and the fds of the `max_open - 1` levels above
            // it; close the one before those, recording what it was.
            let far = levels.len().checked_sub(max_open + 1);
            if let Some(far) = far.and_then(|i| levels.get_mut(i))
                && let Some(fd) = far.fd.take()
            {
                let stat = rfs::fstat(&fd)
                    .map_err(|e| ApplyError::fs("stat", &path[..far.path_len], e))?;
                far.id = Some(dir_id(&stat));
            }
            continue;
        }
        // `level` is empty now (but for kept children).
        path.truncate(level.path_len);
        if let Some(times) = &level.times {
            rfs::futimens(&cur, times).map_err(|e| ApplyError::fs("set times of", &path, e))?;
        }
        let Some(done) = levels.pop() else { break };
        let Some(above) = levels.last_mut() else {
            // The top of the tree, in the caller's directory.
            return remove_emptied(parent, &done, &path);
        };
        // Its parent's fd, opened again through `..` if it was closed,
        // before `done` is removed (a removed directory has no `..`).
        let up = match above.fd.take() {
            Some(fd) => fd,
            None => {
                let above_path = &path[..above.path_len];
                let fd = rfs::openat(
                    &cur,
                    "..",
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| ApplyError::fs("open directory", above_path, e))?;
                let stat = rfs::fstat(&fd).map_err(|e| ApplyError::fs("stat", above_path, e))?;
                if above.id != Some(dir_id(&stat)) {
                    return Err(ApplyError::TreeChanged {
                        path: show(above_path),
                    });
                }
                fd
            }
        };
        remove_emptied(up.as_fd(), &done, &path)?;
        cur = up;
    }
    Ok(())
}

/// The first step of [`remove_tree`] on `parent/name`: removes it if it is
/// not a directory (or not kept), or opens and lists it, recording its
/// times if it is kept. `None` when there is nothing below it to walk.
fn enter(
    parent: BorrowedFd<'_>,
    name: &[u8],
    path: &[u8],
    kept: bool,
    keep: Option<&mut Keep<'_>>,
) -> Result<Option<(OwnedFd, Level)>, ApplyError> {
    if !kept {
        match rfs::unlinkat(parent, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => return Ok(None),
            Err(Errno::ISDIR) => {}
            Err(e) => return Err(ApplyError::fs("remove", path, e)),
        }
    }
    let dir = match rfs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        // A kept non-directory (or a symlink): leave it as it is.
        Err(Errno::NOTDIR | Errno::LOOP) if kept => return Ok(None),
        Err(e) => return Err(ApplyError::fs("open directory", path, e)),
    };
    // A kept directory loses children: record its times first (listing it
    // also changes its atime).
    let times = match keep {
        Some(k) if kept => {
            let stat = rfs::fstat(&dir).map_err(|e| ApplyError::fs("stat", path, e))?;
            let times = k.times.entry(dir_id(&stat)).or_insert(stat_times(&stat));
            Some(times.clone())
        }
        _ => None,
    };
    let mut children = list_dir(&dir, path)?;
    // Removed in directory order.
    children.reverse();
    let level = Level {
        name: name.to_vec(),
        path_len: path.len(),
        fd: None,
        id: None,
        children,
        times,
    };
    Ok(Some((dir, level)))
}

/// Removes the directory `done` from `parent` once it is empty, unless it
/// is kept. `path` is its path.
fn remove_emptied(parent: BorrowedFd<'_>, done: &Level, path: &[u8]) -> Result<(), ApplyError> {
    if done.times.is_some() {
        return Ok(());
    }
    rfs::unlinkat(parent, &done.name, AtFlags::REMOVEDIR)
        .map_err(|e| ApplyError::fs("remove directory", path, e))
}

/// The path the kernel gives for an open fd (`/proc/self/fd/N`).
fn proc_fd_path(fd: BorrowedFd<'_>) -> Option<Vec<u8>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStringExt;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .ok()
        .map(|p| p.into_os_string().into_vec())
}

/// Adds `path` and all of its ancestors to the layer's set `U`.
fn mark_upper(upper: &mut HashSet<Vec<u8>>, path: &[u8]) {
    let mut p = path;
    loop {
        // Ancestors come first in a tar: usually already there, and a
        // lookup costs no allocation.
        if upper.contains(p) || !upper.insert(p.to_vec()) {
            return;
        }
        match p.iter().rposition(|b| *b == b'/') {
            Some(i) => p = &p[..i],
            None => return,
        }
    }
}

fn id_of(path: &[u8], field: &'static str, value: u64) -> Result<u32, ApplyError> {
    // 2^32-1 means "unchanged" to chown(2); refuse it and anything wider.
    match u32::try_from(value) {
        Ok(v) if v != u32::MAX => Ok(v),
        _ => Err(ApplyError::OutOfRange {
            path: show(path),
            field,
            value,
        }),
    }
}

/// `user.*` and file capabilities are kept; other namespaces need policy
/// (SELinux labels, trusted.*) that an unpacker should not invent.
fn xattr_allowed(key: &[u8]) -> bool {
    key.starts_with(b"user.") || key == b"security.capability"
}

/// Removes the xattrs of an existing directory that a new entry for it
/// does not carry, so that it ends with the entry's xattrs only (umoci
/// clears them before it sets the entry's). Only the names an image can
/// set here ([`xattr_allowed`]: `user.*`, `security.capability`) are
/// removed. The others were not set by any layer, since those are skipped:
/// they come from the host (an LSM label such as `security.selinux` given
/// at creation, a `system.posix_acl_*` default ACL inherited from above
/// the root) and are left as they are; removing them is policy an
/// unpacker should not decide, and the kernel may refuse it.
fn drop_old_xattrs(
    fd: impl AsFd,
    path: &[u8],
    keep: &[(Vec<u8>, Vec<u8>)],
) -> Result<(), ApplyError> {
    let fd = fd.as_fd();
    let err = |e| ApplyError::fs("list xattrs of", path, e);
    let size = match rfs::flistxattr_query(fd) {
        Ok(size) => size,
        // A filesystem without xattrs (some FUSE ones) holds none to drop.
        Err(Errno::OPNOTSUPP) => return Ok(()),
        Err(e) => return Err(err(e)),
    };
    let mut names = vec![0u8; size];
    let len = match rfs::flistxattr(fd, &mut names[..]) {
        Ok(len) => len,
        // Grown since the query: nothing here adds xattrs concurrently,
        // but a second try with the new size costs nothing.
        Err(Errno::RANGE) => {
            names = vec![0u8; rfs::flistxattr_query(fd).map_err(err)?];
            rfs::flistxattr(fd, &mut names[..]).map_err(err)?
        }
        Err(e) => return Err(err(e)),
    };
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if xattr_allowed(name) && !keep.iter().any(|(k, _)| k == name) {
            match rfs::fremovexattr(fd, name) {
                // Gone already (nothing else writes here, but it is the
                // state wanted).
                Ok(()) | Err(Errno::NODATA) => {}
                Err(e) => return Err(ApplyError::fs("remove xattr of", path, e)),
            }
        }
    }
    Ok(())
}

fn skip_xattrs(st: &mut LayerState, path: &[u8], xattrs: &[(Vec<u8>, Vec<u8>)]) {
    for (key, _) in xattrs {
        log::debug!(
            "skipping xattr {} on non-regular file {}",
            show(key),
            show(path)
        );
        st.stats.skipped_xattrs += 1;
    }
}

/// What an entry's PAX records say.
struct PaxFacts {
    times: Timestamps,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// An entry's `GNU.sparse.*` PAX records ([`crate::sparse::pax_sparse`]),
/// and the bytes its data takes in the stream as the tar crate counts them
/// before it makes an old GNU sparse entry's size its real size (the
/// first PAX `size` record, else the header's).
fn sparse_records<R: Read>(
    entry: &tar::Entry<'_, R>,
    records: &[PaxRecord],
) -> Result<(Option<PaxSparse>, u64), ApplyError> {
    let name = show(&entry.path_bytes());
    let mut stored = entry
        .header()
        .entry_size()
        .map_err(|source| ApplyError::BadHeader {
            path: name.clone(),
            field: "size",
            source,
        })?;
    if let Some((_, value)) = records.iter().find(|(key, _)| key == b"size") {
        let value = std::str::from_utf8(value).ok();
        if let Some(n) = value.and_then(|v| v.parse::<u64>().ok()) {
            stored = n;
        }
    }
    let pairs = records
        .iter()
        .filter(|(key, _)| key.starts_with(b"GNU.sparse."))
        .map(|(k, v)| (&k[..], &v[..]));
    let sparse = crate::sparse::pax_sparse(pairs).map_err(|source| ApplyError::Sparse {
        path: name.clone(),
        source: Box::new(source),
    })?;
    Ok((sparse, stored))
}

/// One PAX record: key and value.
type PaxRecord = (Vec<u8>, Vec<u8>);

/// An entry's PAX records. `raw` is the `x` member's data as the layer
/// reader kept it ([`crate::tar_guard::SparseOut::take_pax_records`]): its records
/// are split by their lengths, as Go's archive/tar splits them, so a value
/// may hold a newline (a binary `security.capability` often does). The tar
/// crate splits at every newline; where that gives other records, what it
/// took from them itself (the path, the link target, the size that frames
/// the next entry, the owner) must still be what the records say, or the
/// entry is refused. Without `raw`, the tar crate's split.
fn pax_records<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    raw: Option<&[u8]>,
) -> io::Result<Vec<PaxRecord>> {
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, "malformed pax extension");
    let Some(raw) = raw else {
        let mut out = Vec::new();
        if let Some(exts) = entry.pax_extensions()? {
            for ext in exts {
                let ext = ext?;
                out.push((ext.key_bytes().to_vec(), ext.value_bytes().to_vec()));
            }
        }
        return Ok(out);
    };
    let records = crate::tar_guard::split_pax_records(raw).ok_or_else(malformed)?;
    // Without a newline inside a record, both splits cut at the same places.
    if records
        .iter()
        .any(|(key, value)| key.contains(&b'\n') || value.contains(&b'\n'))
    {
        same_as_the_tar_crate(raw, &records)?;
    }
    Ok(records
        .into_iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect())
}

/// Refuses PAX records from which the tar crate, splitting them at every
/// newline, takes another path, link target, size, uid or gid than the
/// records hold (a value with a newline can hide a record, or fake one).
fn same_as_the_tar_crate(raw: &[u8], records: &[(&[u8], &[u8])]) -> io::Result<()> {
    use crate::tar_guard::{tar_crate_number, tar_crate_records};
    let ours = |key: &[u8]| records.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let differ = |key: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "pax records whose {key} the tar reader cannot follow (a record holds a newline)"
            ),
        )
    };
    // Path and link target: the first well-formed line with the key.
    for key in ["path", "linkpath"] {
        let theirs = tar_crate_records(raw)
            .flatten()
            .find(|(k, _)| *k == key.as_bytes());
        if theirs.map(|(_, v)| v) != ours(key.as_bytes()) {
            return Err(differ(key));
        }
    }
    // Size, uid, gid: the first line with the key, unless a malformed
    // line comes first (then the header's field).
    let number = |v: &[u8]| std::str::from_utf8(v).ok()?.parse::<u64>().ok();
    for key in ["size", "uid", "gid"] {
        let theirs = tar_crate_number(raw, key.as_bytes());
        if theirs != ours(key.as_bytes()).and_then(number) {
            return Err(differ(key));
        }
    }
    Ok(())
}

/// The entry's times (PAX `mtime` with its fraction if present) and
/// xattrs (PAX `SCHILY.xattr.*`).
fn times_and_xattrs(records: &[PaxRecord], mtime: u64) -> io::Result<PaxFacts> {
    let mut ts = Timespec {
        tv_sec: i64::try_from(mtime).unwrap_or(i64::MAX),
        tv_nsec: 0,
    };
    let mut xattrs = Vec::new();
    for (key, value) in records {
        let key = &key[..];
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "pax record {what}={:?} is not a valid value",
                    String::from_utf8_lossy(value)
                ),
            )
        };
        if value.is_empty() && matches!(key, b"mtime" | b"uid" | b"gid" | b"size") {
            // POSIX pax: an empty value deletes the record, and the
            // header's field stands.
        } else if key == b"mtime" {
            // Not the header's time instead: a bad record is refused.
            ts = parse_pax_time(value).ok_or_else(|| bad("mtime"))?;
        } else if matches!(key, b"uid" | b"gid" | b"size") {
            // The tar crate keeps the header's value when it cannot
            // parse these: uid=-1 would make a setuid file root's, and
            // a size it ignored decides where the next entry starts.
            let text = std::str::from_utf8(value).ok();
            if text.and_then(|v| v.parse::<u64>().ok()).is_none() {
                return Err(bad(&String::from_utf8_lossy(key)));
            }
        } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
            xattrs.push((name.to_vec(), value.clone()));
        }
    }
    if !xattrs.is_empty() {
        xattrs = last_xattr_records(xattrs);
    }
    Ok(PaxFacts {
        times: Timestamps {
            last_access: ts,
            last_modification: ts,
        },
        xattrs,
    })
}

/// The xattrs that `SCHILY.xattr.*` records (in header order) leave: the
/// last record for a name wins, and one with an empty value deletes it
/// (POSIX pax: an empty value deletes the keyword). Go's archive/tar reads
/// them so (umoci, containerd and Docker set no xattr, not an empty one).
/// Linear: a 1 MiB PAX header holds tens of thousands of records.
fn last_xattr_records(records: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut seen = HashSet::new();
    let mut out: Vec<_> = records
        .into_iter()
        .rev()
        .filter(|(name, _)| seen.insert(name.clone()))
        .filter(|(_, value)| !value.is_empty())
        .collect();
    out.reverse();
    out
}

/// Parses a PAX time: decimal seconds with an optional fraction.
pub fn parse_pax_time(value: &[u8]) -> Option<Timespec> {
    let text = std::str::from_utf8(value).ok()?;
    let (secs, frac) = match text.split_once('.') {
        Some((s, f)) => (s, f),
        None => (text, ""),
    };
    let tv_sec: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut nanos = 0i64;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nanos += i64::from(b - b'0') * 10i64.pow(8 - i as u32);
    }
    let tv_nsec = if tv_sec < 0 && nanos > 0 {
        -nanos
    } else {
        nanos
    };
    Some(Timespec {
        tv_sec,
        tv_nsec: tv_nsec.rem_euclid(1_000_000_000),
    })
}

/// [`copy_data`] through a [`DirectWrite`]: the stream writes the data to
/// `file` itself; `buf` only bounds each read. Returns the byte count and
/// the file.
fn copy_direct<R: Read>(
    src: &mut R,
    file: File,
    sink: &DirectSink,
    buf: &mut [u8],
    path: &[u8],
) -> Result<(u64, File), ApplyError> {
    *sink.borrow_mut() = DirectWrite {
        file: Some(file),
        written: 0,
        error: None,
    };
    let mut total = 0u64;
    let res = loop {
        match src.read(buf) {
            Ok(0) => break Ok(()),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    let DirectWrite {
        file,
        written,
        error,
    } = std::mem::take(&mut *sink.borrow_mut());
    let write_failed = |source| ApplyError::Fs {
        op: "write",
        path: show(path),
        source,
    };
    if let Some(e) = error {
        return Err(write_failed(e));
    }
    if let Err(source) = res {
        return Err(ApplyError::ReadData {
            path: show(path),
            source,
        });
    }
    match file {
        Some(file) if written == total => Ok((total, file)),
        _ => Err(ApplyError::ReadData {
            path: show(path),
            source: io::Error::other("file data did not come from the layer stream"),
        }),
    }
}

fn copy_data<R: Read>(
    src: &mut R,
    dst: &mut File,
    buf: &mut [u8],
    path: &[u8],
) -> Result<u64, ApplyError> {
    let mut total = 0u64;
    loop {
        let n = match src.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(ApplyError::ReadData {
                    path: show(path),
                    source,
                });
            }
        };
        dst.write_all(&buf[..n]).map_err(|e| ApplyError::Fs {
            op: "write",
            path: show(path),
            source: e,
        })?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_messages_are_cut() {
        assert_eq!(show(b"etc/passwd"), "etc/passwd");
        let long = vec![b'a'; 1 << 20];
        let shown = show(&long);
        assert_eq!(shown, format!("{}… (1048576 bytes)", "a".repeat(256)));
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn clean_name_table() {
        let cases: &[(&[u8], Result<&[u8], ()>)] = &[
            (b"a/b/c", Ok(b"a/b/c")),
            (b"./a//b/./c/", Ok(b"a/b/c")),
            (b"/etc/passwd", Ok(b"etc/passwd")),
            (b"a/../b", Ok(b"b")),
            (b".", Ok(b"")),
            (b"./", Ok(b"")),
            (b"/", Ok(b"")),
            (b"..", Err(())),
            (b"../x", Err(())),
            (b"a/../../x", Err(())),
            (b"/../x", Err(())),
            (b"a\0b", Err(())),
        ];
        for (raw, want) in cases {
            let got = clean_name(raw).map_err(|_| ()).map(|v| v.to_vec());
            assert_eq!(got, want.map(|w| w.to_vec()), "{}", show(raw));
        }
    }

    #[test]
    fn whiteout_table() {
        let cases: &[(&[u8], Result<Whiteout<'_>, ()>)] = &[
            (b"file", Ok(Whiteout::None)),
            (b".whfile", Ok(Whiteout::None)),
            (b".wh.file", Ok(Whiteout::Remove(b"file"))),
            (b".wh..wh..opq", Ok(Whiteout::Opaque)),
            (b".wh.", Err(())),
            (b".wh..", Err(())),
            (b".wh...", Err(())),
            (b".wh..wh.plnk", Err(())),
            (b".wh..hidden", Ok(Whiteout::Remove(b".hidden"))),
        ];
        for (name, want) in cases {
            assert_eq!(
                &classify_whiteout(name).map_err(|_| ()),
                want,
                "{}",
                show(name)
            );
        }
    }

    #[test]
    fn upper_set_has_ancestors() {
        let mut u = HashSet::new();
        mark_upper(&mut u, b"a/b/c");
        mark_upper(&mut u, b"a/d");
        let mut all: Vec<_> = u.into_iter().collect();
        all.sort();
        assert_eq!(
            all,
            vec![
                b"a".to_vec(),
                b"a/b".to_vec(),
                b"a/b/c".to_vec(),
                b"a/d".to_vec()
            ]
        );
    }

    #[test]
    fn pax_time_table() {
        let t = |s, n| {
            Some(Timespec {
                tv_sec: s,
                tv_nsec: n,
            })
        };
        assert_eq!(parse_pax_time(b"1700000000"), t(1_700_000_000, 0));
        assert_eq!(
            parse_pax_time(b"1700000000.5"),
            t(1_700_000_000, 500_000_000)
        );
        assert_eq!(parse_pax_time(b"1.123456789123"), t(1, 123_456_789));
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b"1.x"), None);
    }

    #[test]
    fn xattr_records_last_wins_empty_deletes() {
        let rec = |n: &str, v: &str| (n.as_bytes().to_vec(), v.as_bytes().to_vec());
        assert_eq!(
            last_xattr_records(vec![
                rec("user.a", "1"),
                rec("user.e", ""),
                rec("user.b", "1"),
                rec("user.a", "2"),
                rec("user.b", ""),
                rec("user.c", ""),
                rec("user.c", "3"),
            ]),
            vec![rec("user.a", "2"), rec("user.c", "3")]
        );
    }

    #[test]
    fn id_range() {
        assert_eq!(id_of(b"x", "uid", 0).unwrap(), 0);
        assert_eq!(id_of(b"x", "uid", 65534).unwrap(), 65534);
        assert!(id_of(b"x", "uid", u64::from(u32::MAX)).is_err());
        assert!(id_of(b"x", "uid", 1 << 40).is_err());
    }

    /// Every file below `root` (relative paths), without following symlinks.
    fn tree(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut todo = vec![root.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                out.push(p.strip_prefix(root).unwrap().display().to_string());
                if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                    todo.push(p);
                }
            }
        }
        out.sort();
        out
    }

    /// The removal with at most one or two fds open (climbing back through
    /// `..`) and with the usual bound removes the same: everything but the
    /// kept paths, whose directories get their times back; a symlink in
    /// the tree is removed, never followed.
    #[test]
    fn remove_tree_with_few_fds_keeps_what_it_must() {
        for max_open in [1, 2, REMOVE_OPEN_DIRS] {
            let base = std::env::temp_dir().join(format!(
                "berth-apply-remove-{}-{max_open}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&base);
            let outside = base.join("outside");
            std::fs::create_dir_all(&outside).unwrap();
            std::fs::write(outside.join("precious"), b"p").unwrap();
            // t/d/d/…/d, 12 levels, each with a file, an empty directory
            // and a directory holding a file; a symlink to `outside` in
            // the middle; and a kept file at level 9.
            let mut d = base.join("t");
            for level in 1..=12 {
                d = d.join("d");
                std::fs::create_dir_all(d.join("e")).unwrap();
                std::fs::create_dir_all(d.join("g")).unwrap();
                std::fs::write(d.join("f"), b"f").unwrap();
                std::fs::write(d.join("g/h"), b"h").unwrap();
                if level == 6 {
                    std::os::unix::fs::symlink(&outside, d.join("out")).unwrap();
                }
                if level == 9 {
                    std::fs::write(d.join("kept"), b"k").unwrap();
                }
            }
            let kept_file = format!("t/{}/kept", ["d"; 9].join("/"));
            let mut upper = HashSet::new();
            mark_upper(&mut upper, kept_file.as_bytes());
            mark_upper(&mut upper, b"t/d/e");
            let old = Timestamps {
                last_access: Timespec {
                    tv_sec: 1000,
                    tv_nsec: 0,
                },
                last_modification: Timespec {
                    tv_sec: 2000,
                    tv_nsec: 0,
                },
            };
            let mut kept_dirs = vec![base.join("t")];
            for _ in 1..=9 {
                let next = kept_dirs.last().unwrap().join("d");
                kept_dirs.push(next);
            }
            for k in &kept_dirs {
                rfs::utimensat(rfs::CWD, k, &old, AtFlags::SYMLINK_NOFOLLOW).unwrap();
            }
            let base_fd =
                rfs::open(&base, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
            let mut times = HashMap::new();
            let mut keep = Keep {
                upper: &upper,
                times: &mut times,
            };
            remove_tree_with(base_fd.as_fd(), b"t", b"t", Some(&mut keep), max_open).unwrap();
            let mut want: Vec<String> = (1..=9)
                .map(|n| format!("t/{}", ["d"; 9][..n].join("/")))
                .collect();
            want.extend(["t".to_string(), kept_file.clone(), "t/d/e".into()]);
            want.extend(["outside".into(), "outside/precious".into()]);
            want.sort();
            assert_eq!(tree(&base), want, "max_open {max_open}");
            assert_eq!(times.len(), kept_dirs.len() + 1, "max_open {max_open}");
            for k in &kept_dirs {
                let m = std::os::unix::fs::MetadataExt::mtime(&std::fs::metadata(k).unwrap());
                assert_eq!(m, 2000, "{} (max_open {max_open})", k.display());
            }
            // Without `keep`, all of it goes; `outside` stays.
            remove_tree_with(base_fd.as_fd(), b"t", b"t", None, max_open).unwrap();
            assert_eq!(tree(&base), ["outside", "outside/precious"]);
            // By path: a symlink is removed, not followed; a missing path
            // (or parent) is nothing to do.
            std::os::unix::fs::symlink(&outside, base.join("ln")).unwrap();
            remove_dir_tree(&base.join("ln")).unwrap();
            remove_dir_tree(&base.join("missing")).unwrap();
            remove_dir_tree(&base.join("missing/x")).unwrap();
            assert_eq!(tree(&base), ["outside", "outside/precious"]);
            remove_dir_tree(&base).unwrap();
            assert!(!base.exists());
        }
    }
}
