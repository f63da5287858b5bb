//! A bundle's root filesystem packed as one OCI layer.
//!
//! [`pack_rootfs`] writes the tree as a tar, deterministically: the root
//! first as `./`, then depth first, each directory's entries sorted by name
//! (byte order), mtimes 0 (as the initramfs's), owners and modes as they
//! are, no user or group names. The tree is walked by directory file
//! descriptor, nothing followed (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`), and
//! each file opened is checked to be what was listed (type, device and
//! inode): a tree changed while it is packed cannot make the build read
//! outside it, nor hang it on a fifo. A name an OCI layer cannot carry
//! (`.wh.*`: the unpacker takes it for a whiteout) fails the pack. A
//! file with several names in the tree (hard links) is written once, its
//! other names as links to the first. Extended attributes go into PAX
//! `SCHILY.xattr.*` records, which berth-init's unpacker sets again: the
//! namespaces it sets (`user.*` and `security.capability`, on files and
//! directories); any other attribute would be lost at boot, so it fails
//! the pack, naming file and attribute, apart from the labels the build
//! host's security modules put on every file ([`host_only_xattr`]), and so
//! does one a PAX record cannot carry as it is (an empty value reads as a
//! deletion, a name with `=` splits elsewhere, a name not UTF-8), a file
//! capability bound to a user namespace's root (inert in the appliance,
//! whose containers get none), and `user.*` when the appliance's kernel
//! keeps none on tmpfs, where berth-init unpacks the root ([`PackOptions`]:
//! Linux 6.6 added them). Names
//! and link targets too long for the ustar header go into PAX `path` and
//! `linkpath` records, as do owners above ustar's 7 octal digits.
//!
//! [`write_layout`] puts that tar, uncompressed, into a one-image OCI
//! layout (tagged [`ROOTFS_IMAGE`], a config with no execution parameters:
//! the bundle's `config.json` is the spec), which the build then recompresses
//! and verifies with the images' own [`super::layout::LayoutWriter`].

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use berth_bundles::digest::{Hasher, Sha256Digest};
use serde_json::json;
use tar::{EntryType, Header};

/// The deepest a packed root's directories may go (the root is level 1):
/// each level being walked holds an fd, and the build's open files limit
/// may be 1024. Deeper is refused in one line (as is a tree no path can
/// name: 2048 levels of one-letter names fill PATH_MAX).
pub const MAX_DEPTH: usize = 512;

/// The tag of the root filesystem image in a packed bundle's layout.
pub const ROOTFS_IMAGE: &str = "rootfs";

/// Extended attributes a bundle's file may have that the appliance does
/// without: what the build host's security modules put on its files (an
/// SELinux host labels every file it has: `security.selinux`), which the
/// appliance's kernel gives its own files, if it uses them at all.
pub fn host_only_xattr(name: &[u8]) -> bool {
    matches!(
        name,
        b"security.selinux" | b"security.apparmor" | b"security.ima" | b"security.evm"
    ) || name.starts_with(b"security.SMACK64")
}

/// Whether berth-init's unpacker sets the attribute again at boot
/// (berth_bundles::apply: `user.*` and `security.capability`).
fn unpacker_sets(name: &[u8]) -> bool {
    name.starts_with(b"user.") || name == b"security.capability"
}

/// Calls `read` (a listxattr or getxattr) with a buffer that grows, four
/// times at a step from `initial` until it is past `max` bytes, while the
/// kernel says it is too small (ERANGE: the list or value grew since, or is
/// larger than the guess); returns the bytes read.
fn read_growing(
    initial: usize,
    max: usize,
    mut read: impl FnMut(&mut [u8]) -> Result<usize, Errno>,
) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; initial];
    loop {
        match read(&mut buf[..]) {
            Ok(len) => {
                buf.truncate(len);
                return Ok(buf);
            }
            Err(Errno::RANGE) if buf.len() < max => buf.resize(buf.len() * 4, 0),
            Err(e) => return Err(e),
        }
    }
}

/// The names a listxattr call (`list`) gives (the kernel's limit is 64 KiB).
fn listed_names(list: impl FnMut(&mut [u8]) -> Result<usize, Errno>) -> io::Result<Vec<Vec<u8>>> {
    let names = match read_growing(1024, 1 << 17, list) {
        Ok(names) => names,
        // A filesystem without extended attributes holds none.
        Err(Errno::OPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    Ok(names
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// The value a getxattr call (`get`) gives (the kernel's limit is 64 KiB).
fn read_value(get: impl FnMut(&mut [u8]) -> Result<usize, Errno>) -> io::Result<Vec<u8>> {
    Ok(read_growing(256, 1 << 17, get)?)
}

/// The names of the extended attributes of `path` (not following a link).
pub fn xattr_names(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    listed_names(|buf| rustix::fs::llistxattr(path, buf))
}

fn xattr_value(path: &Path, name: &[u8]) -> io::Result<Vec<u8>> {
    let name = OsStr::from_bytes(name);
    read_value(|buf| rustix::fs::lgetxattr(path, name, buf))
}

/// What the appliance keeps of a packed tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackOptions {
    /// Why `user.*` attributes would be lost at boot (`None`: kept): the
    /// appliance's kernel has no `user.*` attributes on tmpfs.
    pub user_xattrs_lost: Option<String>,
    /// Whether the kernel has extended attributes on tmpfs at all
    /// (`CONFIG_TMPFS_XATTR`): without, a file capability fails too.
    pub tmpfs_xattrs: bool,
}

impl PackOptions {
    /// The options for an appliance booting the kernel `release`
    /// (`6.1.0-28-cloud-amd64`): tmpfs keeps `user.*` attributes from
    /// Linux 6.6 on.
    pub fn for_kernel(release: &str, tmpfs_xattrs: bool) -> Self {
        let mut parts = release.split(|c: char| !c.is_ascii_digit());
        let major = parts.next().and_then(|p| p.parse::<u32>().ok());
        let minor = parts.next().and_then(|p| p.parse::<u32>().ok());
        let kept = matches!((major, minor), (Some(a), Some(b)) if (a, b) >= (6, 6));
        PackOptions {
            user_xattrs_lost: (!kept).then(|| {
                format!(
                    "the appliance's kernel {release} keeps no user.* attributes on tmpfs, \
                     where berth-init unpacks a bundle's root (Linux 6.6 added them)"
                )
            }),
            tmpfs_xattrs,
        }
    }
}

/// Where an entry's extended attributes are read.
enum XattrSource<'a> {
    /// The file or directory itself, opened (and checked against its
    /// listing): what is read is what is packed.
    Fd(BorrowedFd<'a>),
    /// The entry `name` of the directory `dir`, not followed (symlinks,
    /// devices, fifos, which are never opened), through
    /// `/proc/self/fd/DIR/NAME`.
    At(BorrowedFd<'a>, &'a OsStr),
}

/// The names of an entry's extended attributes.
fn source_names(source: &XattrSource<'_>) -> io::Result<Vec<Vec<u8>>> {
    match source {
        XattrSource::Fd(fd) => listed_names(|buf| rustix::fs::flistxattr(fd, buf)),
        XattrSource::At(dir, name) => xattr_names(&proc_path(*dir, name)?),
    }
}

/// The value of one extended attribute of an entry.
fn source_value(source: &XattrSource<'_>, attr: &[u8]) -> io::Result<Vec<u8>> {
    match source {
        XattrSource::Fd(fd) => {
            let attr = OsStr::from_bytes(attr);
            read_value(|buf| rustix::fs::fgetxattr(fd, attr, buf))
        }
        XattrSource::At(dir, name) => xattr_value(&proc_path(*dir, name)?, attr),
    }
}

/// `/proc/self/fd/DIR/NAME`: the entry itself, whatever the path to `dir`
/// leads to meanwhile.
fn proc_path(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<PathBuf> {
    let fds = Path::new("/proc/self/fd");
    if !fds.is_dir() {
        return Err(io::Error::other(
            "/proc/self/fd is missing: packing a bundle's links and device nodes needs /proc mounted",
        ));
    }
    let mut p = fds.join(dir.as_raw_fd().to_string());
    p.push(name);
    Ok(p)
}

/// The extended attributes of an entry of type `ft` (at `path`, for
/// messages) that go into the layer, sorted by name; an attribute the
/// appliance would lose is an error.
fn packed_xattrs(
    source: XattrSource<'_>,
    path: &Path,
    ft: FileType,
    opts: &PackOptions,
) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let refuse = |attr: &[u8], why: &str| {
        let shown = String::from_utf8_lossy(attr);
        io::Error::other(format!(
            "{}: has the extended attribute {shown}, {why}: remove it (setfattr -x {shown}) \
             if the file does without it",
            path.display()
        ))
    };
    let mut names =
        source_names(&source).map_err(|e| in_path("list the extended attributes of", path, e))?;
    names.retain(|n| !host_only_xattr(n));
    names.sort();
    let kept = ft == FileType::RegularFile || ft == FileType::Directory;
    let mut out = Vec::with_capacity(names.len());
    for attr in names {
        if !opts.tmpfs_xattrs {
            return Err(refuse(
                &attr,
                "and the appliance's kernel has no extended attributes on tmpfs (CONFIG_TMPFS_XATTR), where berth-init unpacks a bundle's root",
            ));
        }
        if !(kept && unpacker_sets(&attr)) {
            return Err(refuse(
                &attr,
                "which berth-init does not set when it unpacks the bundle (only user.* and \
                 security.capability, on files and directories)",
            ));
        }
        if attr.starts_with(b"user.")
            && let Some(why) = &opts.user_xattrs_lost
        {
            return Err(refuse(&attr, why));
        }
        if std::str::from_utf8(&attr).is_err() || attr.contains(&b'=') {
            return Err(refuse(
                &attr,
                "whose name a layer cannot carry (a PAX record)",
            ));
        }
        let value = source_value(&source, &attr)
            .map_err(|e| in_path("read an extended attribute of", path, e))?;
        if value.is_empty() {
            return Err(refuse(
                &attr,
                "whose value is empty, which a layer reads as its removal",
            ));
        }
        // struct vfs_ns_cap_data: revision 3 carries the root uid of the
        // user namespace the capability belongs to.
        if attr == b"security.capability"
            && value.len() >= 24
            && value[3] == 0x03
            && value[20..24] != [0, 0, 0, 0]
        {
            return Err(refuse(
                &attr,
                "a file capability bound to a user namespace's root, which is inert in the \
                 appliance (its containers get no user namespace)",
            ));
        }
        out.push((attr, value));
    }
    Ok(out)
}

/// An I/O error with what was being done, to which file.
fn in_path(op: &str, path: &Path, e: impl Into<io::Error>) -> io::Error {
    let e: io::Error = e.into();
    io::Error::new(e.kind(), format!("{op} {}: {e}", path.display()))
}

/// What [`pack_rootfs`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Packed {
    /// Bytes of file content (a file with several names once).
    pub bytes: u64,
    /// Entries, the root included.
    pub entries: u64,
}

/// Writes the tree at `root` as a tar to `out` (see the module docs).
pub fn pack_rootfs(root: &Path, out: impl Write, opts: &PackOptions) -> io::Result<Packed> {
    let mut w = TarWriter {
        out,
        links: HashMap::new(),
        packed: Packed::default(),
        opts,
    };
    let fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| in_path("open", root, e))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| in_path("stat", root, e))?;
    let xattrs = packed_xattrs(XattrSource::Fd(fd.as_fd()), root, FileType::Directory, opts)?;
    w.entry(root, b"./", &st, Body::None, &xattrs)?;
    w.walk(fd, root)?;
    // Two zero blocks end the archive.
    w.out.write_all(&[0u8; 1024])?;
    w.out.flush()?;
    Ok(w.packed)
}

struct TarWriter<'a, W> {
    out: W,
    /// (device, inode) → the name its data was written under.
    links: HashMap<(u64, u64), Vec<u8>>,
    packed: Packed,
    opts: &'a PackOptions,
}

/// A directory being walked: its fd, path (for messages), name in the
/// layer (ending in `/`, empty for the root) and the names still to add,
/// sorted last first.
struct Level {
    fd: OwnedFd,
    path: PathBuf,
    prefix: Vec<u8>,
    names: Vec<Vec<u8>>,
}

impl Level {
    fn read(fd: OwnedFd, path: PathBuf, prefix: Vec<u8>) -> io::Result<Level> {
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&fd).map_err(|e| in_path("read", &path, e))? {
            let entry = entry.map_err(|e| in_path("read", &path, e))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(name.to_vec());
            }
        }
        // Popped from the end: the first name last.
        names.sort_by(|a, b| b.cmp(a));
        Ok(Level {
            fd,
            path,
            prefix,
            names,
        })
    }
}

/// What follows an entry's header.
enum Body {
    None,
    /// A regular file's data, opened.
    File(File),
    /// A symlink's target.
    Link(Vec<u8>),
}

impl<W: Write> TarWriter<'_, W> {
    /// Adds the entries below the root directory `root` (at `path`), depth
    /// first, without recursion: one [`Level`] per directory being walked,
    /// at most [`MAX_DEPTH`] (each holds its directory's fd).
    fn walk(&mut self, root: OwnedFd, path: &Path) -> io::Result<()> {
        let mut stack = vec![Level::read(root, path.to_owned(), Vec::new())?];
        loop {
            let depth = stack.len();
            let Some(level) = stack.last_mut() else {
                break;
            };
            let Some(raw) = level.names.pop() else {
                stack.pop();
                continue;
            };
            let name = OsStr::from_bytes(&raw);
            let child = level.path.join(name);
            if raw.starts_with(b".wh.") {
                return Err(io::Error::other(format!(
                    "{}: a name starting with .wh. cannot go into a layer (the unpacker takes it \
                     for a whiteout): rename it",
                    child.display()
                )));
            }
            let dir = &level.fd;
            let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| in_path("stat", &child, e))?;
            let ft = FileType::from_raw_mode(st.st_mode);
            let mut layer_name = level.prefix.clone();
            layer_name.extend_from_slice(&raw);
            match ft {
                FileType::Directory => {
                    if depth >= MAX_DEPTH {
                        return Err(io::Error::other(format!(
                            "{}: more than {MAX_DEPTH} directories deep, which a bundle's root \
                             cannot be",
                            child.display()
                        )));
                    }
                    let fd = open_listed(dir, name, &child, &st, OFlags::DIRECTORY)?;
                    let xattrs = packed_xattrs(XattrSource::Fd(fd.as_fd()), &child, ft, self.opts)?;
                    layer_name.push(b'/');
                    self.entry(&child, &layer_name, &st, Body::None, &xattrs)?;
                    stack.push(Level::read(fd, child, layer_name)?);
                }
                FileType::RegularFile => {
                    let linked = st.st_nlink > 1;
                    let key = (st.st_dev, st.st_ino);
                    if let Some(first) = linked.then(|| self.links.get(&key)).flatten() {
                        // The first name carried the inode's attributes.
                        let first = first.clone();
                        self.link(&child, &layer_name, &st, first)?;
                    } else {
                        let fd = open_listed(dir, name, &child, &st, OFlags::NONBLOCK)?;
                        let xattrs =
                            packed_xattrs(XattrSource::Fd(fd.as_fd()), &child, ft, self.opts)?;
                        self.entry(
                            &child,
                            &layer_name,
                            &st,
                            Body::File(File::from(fd)),
                            &xattrs,
                        )?;
                        if linked {
                            self.links.insert(key, layer_name);
                        }
                    }
                }
                FileType::Symlink => {
                    let source = XattrSource::At(dir.as_fd(), name);
                    let xattrs = packed_xattrs(source, &child, ft, self.opts)?;
                    let target = rustix::fs::readlinkat(dir, name, Vec::new())
                        .map_err(|e| in_path("read the link", &child, e))?;
                    self.entry(
                        &child,
                        &layer_name,
                        &st,
                        Body::Link(target.into_bytes()),
                        &xattrs,
                    )?;
                }
                _ => {
                    let source = XattrSource::At(dir.as_fd(), name);
                    let xattrs = packed_xattrs(source, &child, ft, self.opts)?;
                    self.entry(&child, &layer_name, &st, Body::None, &xattrs)?
                }
            }
        }
        Ok(())
    }

    /// A second name of a file already written: its data and metadata are
    /// the first name's.
    fn link(&mut self, path: &Path, name: &[u8], st: &Stat, first: Vec<u8>) -> io::Result<()> {
        let mut header = Header::new_ustar();
        header.set_entry_type(EntryType::Link);
        let mut pax = Vec::new();
        set_link(&mut header, &mut pax, first)?;
        self.finish_with(path, name, st, header, pax, 0, &[], Body::None)
    }

    /// One entry of type `st`'s, then its data when it is a file.
    fn entry(
        &mut self,
        path: &Path,
        name: &[u8],
        st: &Stat,
        body: Body,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> io::Result<()> {
        let mut header = Header::new_ustar();
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let mut size = 0;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => header.set_entry_type(EntryType::Directory),
            FileType::RegularFile => {
                header.set_entry_type(EntryType::Regular);
                size = st.st_size as u64;
            }
            FileType::Symlink => {
                header.set_entry_type(EntryType::Symlink);
                if let Body::Link(target) = &body {
                    set_link(&mut header, &mut pax, target.clone())?;
                }
            }
            ft @ (FileType::CharacterDevice | FileType::BlockDevice) => {
                header.set_entry_type(if ft == FileType::CharacterDevice {
                    EntryType::Char
                } else {
                    EntryType::Block
                });
                let (major, minor) = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
                if major > 0o7777777 || minor > 0o7777777 {
                    return Err(io::Error::other(format!(
                        "{}: device number {major}:{minor} does not fit a tar header",
                        path.display()
                    )));
                }
                header.set_device_major(major)?;
                header.set_device_minor(minor)?;
            }
            FileType::Fifo => header.set_entry_type(EntryType::Fifo),
            _ => {
                return Err(io::Error::other(format!(
                    "{}: a socket cannot be packed into a layer",
                    path.display()
                )));
            }
        }
        self.finish_with(path, name, st, header, pax, size, xattrs, body)
    }

    /// Names the entry, sets its mode, owners and size, writes its PAX
    /// records and header, then the file's data.
    #[allow(clippy::too_many_arguments)]
    fn finish_with(
        &mut self,
        path: &Path,
        name: &[u8],
        st: &Stat,
        mut header: Header,
        mut pax: Vec<(String, Vec<u8>)>,
        size: u64,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        body: Body,
    ) -> io::Result<()> {
        set_name(&mut header, &mut pax, name);
        header.set_mode(st.st_mode & 0o7777);
        header.set_mtime(0);
        for (key, id) in [("uid", st.st_uid), ("gid", st.st_gid)] {
            let id = u64::from(id);
            // Too large for the field: the record has it, and the field
            // the largest it holds (not 0, root, for a reader without PAX).
            let field = if id > 0o7777777 {
                pax.push((key.to_owned(), id.to_string().into_bytes()));
                0o7777777
            } else {
                id
            };
            if key == "uid" {
                header.set_uid(field);
            } else {
                header.set_gid(field);
            }
        }
        header.set_size(size);
        for (attr, value) in xattrs {
            let key = format!("SCHILY.xattr.{}", String::from_utf8_lossy(attr));
            pax.push((key, value.clone()));
        }
        if !pax.is_empty() {
            self.pax(&pax)?;
        }
        header.set_cksum();
        self.out.write_all(header.as_bytes())?;
        self.packed.entries += 1;
        if let Body::File(mut file) = body {
            // Read and write errors told apart: the writer's name their
            // own file (the layer being written).
            let mut buf = vec![0u8; 256 * 1024];
            let mut copied = 0u64;
            while copied < size {
                let want = buf
                    .len()
                    .min(usize::try_from(size - copied).unwrap_or(usize::MAX));
                let n = match file.read(&mut buf[..want]) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(in_path("read", path, e)),
                };
                self.out.write_all(&buf[..n])?;
                copied += n as u64;
            }
            // One more byte readable: the file grew while it was packed.
            let more = file
                .read(&mut [0u8; 1])
                .map_err(|e| in_path("read", path, e))?;
            if copied != size || more != 0 {
                return Err(io::Error::other(format!(
                    "{}: changed size while it was packed ({size} bytes when listed)",
                    path.display()
                )));
            }
            self.pad(size)?;
            self.packed.bytes += size;
        }
        Ok(())
    }

    /// One PAX extended header (`x`) holding `records`.
    fn pax(&mut self, records: &[(String, Vec<u8>)]) -> io::Result<()> {
        let mut body = Vec::new();
        for (key, value) in records {
            // "LEN KEY=VALUE\n", LEN counting its own digits.
            let rest = 1 + key.len() + 1 + value.len() + 1;
            let mut len = rest + 1;
            while len != rest + len.to_string().len() {
                len = rest + len.to_string().len();
            }
            body.extend_from_slice(format!("{len} {key}=").as_bytes());
            body.extend_from_slice(value);
            body.push(b'\n');
        }
        let mut header = Header::new_ustar();
        header.set_entry_type(EntryType::XHeader);
        header.set_path("PaxHeader")?;
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_size(body.len() as u64);
        header.set_cksum();
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(&body)?;
        self.pad(body.len() as u64)
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rest = (512 - size % 512) % 512;
        self.out.write_all(&[0u8; 512][..rest as usize])
    }
}

/// Sets an entry's name as it is (no cleaning: `./` stays `./`, a
/// directory keeps its `/`): in ustar's name field, or split at a `/`
/// between its prefix and name fields, or else in a PAX `path` record
/// (the fields then hold the name cut short, for readers without PAX).
fn set_name(header: &mut Header, pax: &mut Vec<(String, Vec<u8>)>, name: &[u8]) {
    let fits = |n: &[u8], field: usize| n.len() <= field && !n.contains(&0);
    if fits(name, 100) {
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        return;
    }
    // The split's `/` belongs to neither field; a directory's trailing `/`
    // stays in the name field.
    let body = name.strip_suffix(b"/").unwrap_or(name);
    let split = (1..body.len())
        .filter(|&i| body[i] == b'/')
        .find(|&i| fits(&name[..i], 155) && fits(&name[i + 1..], 100) && i + 1 < name.len());
    if let (Some(i), Some(ustar)) = (split, header.as_ustar_mut()) {
        ustar.prefix[..i].copy_from_slice(&name[..i]);
        ustar.name[..name.len() - i - 1].copy_from_slice(&name[i + 1..]);
        return;
    }
    let cut = &name[..name.len().min(100)];
    header.as_old_mut().name[..cut.len()].copy_from_slice(cut);
    pax.push(("path".into(), name.to_vec()));
}

/// Sets a link target, in a PAX `linkpath` record when too long.
fn set_link(
    header: &mut Header,
    pax: &mut Vec<(String, Vec<u8>)>,
    target: Vec<u8>,
) -> io::Result<()> {
    if target.contains(&0) {
        return Err(io::Error::other("a link target holds a NUL byte"));
    }
    let cut = &target[..target.len().min(100)];
    header.as_old_mut().linkname[..cut.len()].copy_from_slice(cut);
    if target.len() > 100 {
        pax.push(("linkpath".into(), target));
    }
    Ok(())
}

/// Opens the entry `name` of `dir` (never following a link) and checks it
/// is what was listed as `st`: a tree changed meanwhile fails the pack.
fn open_listed(
    dir: &OwnedFd,
    name: &OsStr,
    path: &Path,
    st: &Stat,
    flags: OFlags,
) -> io::Result<OwnedFd> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | flags,
        Mode::empty(),
    )
    .map_err(|e| in_path("open", path, e))?;
    let now = rustix::fs::fstat(&fd).map_err(|e| in_path("stat", path, e))?;
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino)
        || FileType::from_raw_mode(now.st_mode) != FileType::from_raw_mode(st.st_mode)
    {
        return Err(io::Error::other(format!(
            "{}: changed while it was packed (another file is there now)",
            path.display()
        )));
    }
    Ok(fd)
}

/// Writes the tree at `rootfs` as a one-image OCI layout at `dir` (which
/// must not exist): the uncompressed layer, a config without execution
/// parameters for linux/amd64, tagged [`ROOTFS_IMAGE`].
pub fn write_layout(rootfs: &Path, dir: &Path, opts: &PackOptions) -> io::Result<Packed> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(|e| in_path("create", &blobs, e))?;
    let tmp = blobs.join("layer.tmp");
    let mut hashing = HashingFile {
        file: BufWriter::new(File::create(&tmp).map_err(|e| in_path("create", &tmp, e))?),
        hasher: Hasher::default(),
        path: tmp.clone(),
    };
    let packed = pack_rootfs(rootfs, &mut hashing, opts)?;
    hashing
        .file
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_data()
        .map_err(|e| in_path("write", &tmp, e))?;
    let size = hashing.hasher.count();
    let diff_id = hashing.hasher.finish();
    fs::rename(&tmp, blobs.join(diff_id.hex())).map_err(|e| in_path("rename", &tmp, e))?;
    let put = |value: serde_json::Value| -> io::Result<(Sha256Digest, u64)> {
        let bytes = serde_json::to_vec(&value).map_err(io::Error::other)?;
        let digest = Sha256Digest::of(&bytes);
        let path = blobs.join(digest.hex());
        fs::write(&path, &bytes).map_err(|e| in_path("write", &path, e))?;
        Ok((digest, bytes.len() as u64))
    };
    let (config, config_size) = put(json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [diff_id.to_string()] },
    }))?;
    let (manifest, manifest_size) = put(json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config.to_string(),
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": diff_id.to_string(),
            "size": size,
        }],
    }))?;
    let layout = dir.join("oci-layout");
    fs::write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(|e| in_path("write", &layout, e))?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest.to_string(),
            "size": manifest_size,
            "annotations": { "org.opencontainers.image.ref.name": ROOTFS_IMAGE },
        }],
    });
    let path = dir.join("index.json");
    fs::write(&path, serde_json::to_vec(&index).map_err(io::Error::other)?)
        .map_err(|e| in_path("write", &path, e))?;
    Ok(packed)
}

/// The layer being written, hashed on the way; its errors name it.
struct HashingFile {
    file: BufWriter<File>,
    hasher: Hasher,
    path: PathBuf,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self
            .file
            .write(buf)
            .map_err(|e| in_path("write", &self.path, e))?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file
            .flush()
            .map_err(|e| in_path("write", &self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree deeper than any path can name is one clear error, not a
    /// crash of the build (each level holds a stack frame and an fd).
    #[test]
    fn a_tree_deeper_than_paths_go_is_refused() {
        let dir = std::env::temp_dir().join(format!("berth-pack-deep-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut fd =
            rustix::fs::open(&dir, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        for _ in 0..MAX_DEPTH + 1 {
            rustix::fs::mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
            fd = rustix::fs::openat(&fd, "d", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
                .unwrap();
        }
        let err = pack_rootfs(&dir, io::sink(), &PackOptions::for_kernel("6.18.0", true))
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("more than 512 directories deep, which a bundle's root cannot be"),
            "{err}"
        );
        // Removed by fd too: its paths are longer than PATH_MAX.
        assert!(
            std::process::Command::new("rm")
                .args(["-rf"])
                .arg(&dir)
                .status()
                .unwrap()
                .success()
        );
    }

    /// GNU tar reads the layer as written: every name, the long ones from
    /// their PAX records, the links, and a `user.*` attribute.
    #[test]
    fn gnu_tar_reads_the_packed_tree() {
        let dir = std::env::temp_dir().join(format!("berth-pack-gnu-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let root = dir.join("root");
        let long = format!("{}/{}", "a".repeat(90), "b".repeat(180));
        fs::create_dir_all(root.join(&long)).unwrap();
        fs::write(root.join(&long).join("file"), b"data").unwrap();
        fs::write(root.join("one"), b"1").unwrap();
        fs::hard_link(root.join("one"), root.join("two")).unwrap();
        std::os::unix::fs::symlink("x".repeat(150), root.join("link")).unwrap();
        rustix::fs::lsetxattr(
            root.join("one"),
            "user.note",
            b"hello",
            rustix::fs::XattrFlags::empty(),
        )
        .expect("user.* xattrs on the temporary directory's filesystem");
        let tar = dir.join("layer.tar");
        let packed = pack_rootfs(
            &root,
            File::create(&tar).unwrap(),
            &PackOptions::for_kernel("6.18.0", true),
        )
        .unwrap();
        assert_eq!(packed.bytes, 5);
        let list = std::process::Command::new("tar")
            .args(["--xattrs", "--xattrs-include=user.*", "-tvf"])
            .arg(&tar)
            .output()
            .expect("GNU tar missing: apt-get install tar");
        assert!(
            list.status.success() && list.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&list.stderr)
        );
        let text = String::from_utf8_lossy(&list.stdout);
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .collect();
        let a = "a".repeat(90);
        let ab = format!("{a}/{}", "b".repeat(180));
        assert_eq!(
            names,
            [
                "./".to_owned(),
                format!("{a}/"),
                format!("{ab}/"),
                format!("{ab}/file"),
                "link".into(),
                "one".into(),
                "two".into(),
            ]
        );
        assert!(
            text.contains(&format!("link -> {}", "x".repeat(150))),
            "{text}"
        );
        assert!(text.contains("two link to one"), "{text}");
        let x = dir.join("x");
        fs::create_dir(&x).unwrap();
        let out = std::process::Command::new("tar")
            .args(["--xattrs", "--xattrs-include=user.*", "-xf"])
            .arg(&tar)
            .arg("-C")
            .arg(&x)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(fs::read(x.join(&long).join("file")).unwrap(), b"data");
        let mut value = [0u8; 16];
        let n = rustix::fs::lgetxattr(x.join("one"), "user.note", &mut value[..]).unwrap();
        assert_eq!(&value[..n], b"hello");
        let _ = fs::remove_dir_all(&dir);
    }
}
