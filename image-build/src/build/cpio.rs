//! The initramfs archive: a "newc" cpio (the format the kernel unpacks,
//! Documentation/driver-api/early-userspace/buffer-format.rst), written
//! deterministically.
//!
//! The tree is collected first ([`Tree`]), then written in one pass sorted
//! by path, so a parent always comes before its children; inode numbers
//! count up from 1 in that order, mtimes are 0, and generated entries are
//! owned by root. The same tree gives the same bytes.
//!
//! Hard links (regular files of one link group, [`Tree::link_group`]) are
//! one inode of the archive, written as GNU cpio writes them in newc and
//! the kernel's unpacker (init/initramfs.c, `maybe_link`) reads them: every
//! name with the same inode number and `nlink` the number of names, the
//! data once, after the last name (the others have size 0). The kernel
//! creates the first name and links the later ones to it, writing the
//! data through the last; GNU cpio holds the empty names back until the
//! data comes. A bundle of busybox with 400 links to its 1 MiB binary
//! costs 1 MiB of the machine's memory, not 400.

use std::collections::{BTreeMap, btree_map};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Why an entry could not be added or the archive written.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("archive path {path:?} is not a clean relative path")]
    BadPath { path: String },
    #[error("archive path {path:?} is added twice")]
    Duplicate { path: String },
    #[error("archive parent {parent:?} of {path:?} is not a directory")]
    ParentNotDir { parent: String, path: String },
    #[error("read {path} for the archive")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} changed size while archived (expected {expected} bytes, read {read})")]
    SizeChanged {
        path: PathBuf,
        expected: u64,
        read: u64,
    },
    #[error("{path}: file of {size} bytes is too large for newc (max 4 GiB)")]
    TooLarge { path: String, size: u64 },
    #[error("write the archive")]
    Write { source: io::Error },
}

/// Where a regular file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    Bytes(Vec<u8>),
    /// A host file of this size, streamed when written.
    File {
        path: PathBuf,
        size: u64,
    },
}

impl Data {
    fn len(&self) -> u64 {
        match self {
            Data::Bytes(b) => b.len() as u64,
            Data::File { size, .. } => *size,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Data),
    Symlink(String),
    Char { major: u32, minor: u32 },
    Block { major: u32, minor: u32 },
    Fifo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits (with setuid/setgid/sticky), no file type.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// For a regular file: its link group ([`Tree::link_group`]). The
    /// files of one group are names of one inode, with the same data,
    /// mode and owner.
    pub link: Option<u64>,
}

impl Entry {
    pub fn root(kind: Kind, perm: u32) -> Self {
        Entry {
            kind,
            perm,
            uid: 0,
            gid: 0,
            link: None,
        }
    }

    fn mode(&self) -> u32 {
        let typ = match self.kind {
            Kind::Dir => 0o040000,
            Kind::File(_) => 0o100000,
            Kind::Symlink(_) => 0o120000,
            Kind::Char { .. } => 0o020000,
            Kind::Block { .. } => 0o060000,
            Kind::Fifo => 0o010000,
        };
        typ | (self.perm & 0o7777)
    }
}

/// The archive's contents, keyed by relative path (`init`, `dev/console`).
#[derive(Debug, Default)]
pub struct Tree {
    entries: BTreeMap<String, Entry>,
    /// The last link group handed out.
    groups: u64,
}

fn check_path(path: &str) -> Result<(), CpioError> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.ends_with('/')
        || path.contains('\0')
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(CpioError::BadPath { path: path.into() });
    }
    Ok(())
}

impl Tree {
    /// Adds an entry; missing parents are created as root-owned 0755
    /// directories. A path may be added once (directories: again as no-op).
    pub fn add(&mut self, path: &str, entry: Entry) -> Result<(), CpioError> {
        check_path(path)?;
        let mut parent = String::new();
        for comp in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, p)| p)
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            match self.entries.get(&parent) {
                Some(e) if e.kind == Kind::Dir => {}
                Some(_) => {
                    return Err(CpioError::ParentNotDir {
                        parent,
                        path: path.into(),
                    });
                }
                None => {
                    self.entries
                        .insert(parent.clone(), Entry::root(Kind::Dir, 0o755));
                }
            }
        }
        if let Kind::File(data) = &entry.kind
            && data.len() > u64::from(u32::MAX)
        {
            return Err(CpioError::TooLarge {
                path: path.into(),
                size: data.len(),
            });
        }
        match self.entries.get(path) {
            // An explicit directory replaces an implied one (its mode wins).
            Some(e) if e.kind == Kind::Dir && entry.kind == Kind::Dir => {
                self.entries.insert(path.into(), entry);
                Ok(())
            }
            Some(_) => Err(CpioError::Duplicate { path: path.into() }),
            None => {
                self.entries.insert(path.into(), entry);
                Ok(())
            }
        }
    }

    /// Adds a directory (no-op when it exists as a directory).
    pub fn dir(&mut self, path: &str, perm: u32) -> Result<(), CpioError> {
        self.add(path, Entry::root(Kind::Dir, perm))
    }

    pub fn bytes(&mut self, path: &str, perm: u32, data: Vec<u8>) -> Result<(), CpioError> {
        self.add(path, Entry::root(Kind::File(Data::Bytes(data)), perm))
    }

    pub fn host_file(&mut self, path: &str, perm: u32, host: &Path) -> Result<(), CpioError> {
        let size = std::fs::metadata(host)
            .map_err(|source| CpioError::Read {
                path: host.to_owned(),
                source,
            })?
            .len();
        self.add(
            path,
            Entry::root(
                Kind::File(Data::File {
                    path: host.to_owned(),
                    size,
                }),
                perm,
            ),
        )
    }

    /// A new link group, for the names of one inode ([`Entry::link`]).
    pub fn link_group(&mut self) -> u64 {
        self.groups += 1;
        self.groups
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// The regular files of each link group with more than one name, in
    /// archive order.
    fn links(&self) -> BTreeMap<u64, Vec<&str>> {
        let mut groups: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
        for (path, entry) in &self.entries {
            if let (Kind::File(_), Some(group)) = (&entry.kind, entry.link) {
                groups.entry(group).or_default().push(path);
            }
        }
        groups.retain(|_, names| names.len() > 1);
        groups
    }

    /// Writes the newc archive, trailer included.
    pub fn write(&self, out: &mut dyn Write) -> Result<u64, CpioError> {
        let mut w = Counting { inner: out, n: 0 };
        let links = self.links();
        // A link group's inode number: its first name's.
        let mut inodes: BTreeMap<u64, u32> = BTreeMap::new();
        for (ino, (path, entry)) in (1u32..).zip(self.entries.iter()) {
            let group = entry
                .link
                .and_then(|g| links.get(&g).map(|names| (g, names)));
            let Some((group, names)) = group else {
                write_entry(&mut w, ino, path, entry, None)?;
                continue;
            };
            let ino = match inodes.entry(group) {
                btree_map::Entry::Occupied(o) => *o.get(),
                btree_map::Entry::Vacant(v) => *v.insert(ino),
            };
            let link = Link {
                nlink: names.len() as u32,
                data: names.last() == Some(&path.as_str()),
            };
            write_entry(&mut w, ino, path, entry, Some(link))?;
        }
        // The end marker: a name, every field zero but nlink (as GNU cpio).
        let trailer = Entry::root(Kind::File(Data::Bytes(Vec::new())), 0);
        write_header(&mut w, 0, "TRAILER!!!", &trailer, 0, 1, 0)?;
        Ok(w.n)
    }
}

struct Counting<'a> {
    inner: &'a mut dyn Write,
    n: u64,
}

impl Counting<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), CpioError> {
        self.inner
            .write_all(bytes)
            .map_err(|source| CpioError::Write { source })?;
        self.n += bytes.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> Result<(), CpioError> {
        let pad = (4 - (self.n % 4) as usize) % 4;
        self.put(&[0u8; 3][..pad])
    }
}

fn write_header(
    w: &mut Counting<'_>,
    ino: u32,
    name: &str,
    entry: &Entry,
    size: u32,
    nlink: u32,
    mode: u32,
) -> Result<(), CpioError> {
    let (rmaj, rmin) = match entry.kind {
        Kind::Char { major, minor } | Kind::Block { major, minor } => (major, minor),
        _ => (0, 0),
    };
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
    // devminor, rdevmajor, rdevminor, namesize (with the NUL), check.
    let header = format!(
        "070701{ino:08X}{mode:08X}{:08X}{:08X}{nlink:08X}{:08X}{size:08X}{:08X}{:08X}{rmaj:08X}{rmin:08X}{:08X}{:08X}",
        entry.uid,
        entry.gid,
        0,
        0,
        0,
        name.len() + 1,
        0
    );
    w.put(header.as_bytes())?;
    w.put(name.as_bytes())?;
    w.put(&[0])?;
    w.pad4()
}

/// A name of a regular file with other names in the archive.
#[derive(Debug, Clone, Copy)]
struct Link {
    /// Names of the inode in the archive.
    nlink: u32,
    /// Whether this name carries the data (the last one).
    data: bool,
}

fn write_entry(
    w: &mut Counting<'_>,
    ino: u32,
    path: &str,
    entry: &Entry,
    link: Option<Link>,
) -> Result<(), CpioError> {
    let nlink = match (&entry.kind, link) {
        (_, Some(link)) => link.nlink,
        (Kind::Dir, None) => 2,
        (_, None) => 1,
    };
    match &entry.kind {
        Kind::File(_) if link.is_some_and(|l| !l.data) => {
            write_header(w, ino, path, entry, 0, nlink, entry.mode())?;
        }
        Kind::File(data) => {
            let size = data.len();
            write_header(w, ino, path, entry, size as u32, nlink, entry.mode())?;
            match data {
                Data::Bytes(b) => w.put(b)?,
                Data::File { path: host, size } => copy_file(w, host, *size)?,
            }
        }
        Kind::Symlink(target) => {
            write_header(
                w,
                ino,
                path,
                entry,
                target.len() as u32,
                nlink,
                entry.mode(),
            )?;
            w.put(target.as_bytes())?;
        }
        _ => write_header(w, ino, path, entry, 0, nlink, entry.mode())?,
    }
    w.pad4()
}

fn copy_file(w: &mut Counting<'_>, host: &Path, size: u64) -> Result<(), CpioError> {
    let read_err = |source| CpioError::Read {
        path: host.to_owned(),
        source,
    };
    let mut f = File::open(host).map_err(read_err)?.take(size);
    let mut buf = vec![0u8; 1 << 16];
    let mut read = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        w.put(&buf[..n])?;
        read += n as u64;
    }
    if read != size {
        return Err(CpioError::SizeChanged {
            path: host.to_owned(),
            expected: size,
            read,
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::Command;

    /// An entry of a newc archive as read back.
    #[derive(Debug)]
    pub(crate) struct Header {
        pub name: String,
        pub ino: u32,
        pub mode: u32,
        pub nlink: u32,
        pub data: Vec<u8>,
    }

    /// Reads a newc archive (as the kernel's unpacker walks it), trailer
    /// excluded.
    pub(crate) fn parse_newc(b: &[u8]) -> Vec<Header> {
        let align = |n: usize| n.div_ceil(4) * 4;
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let h = &b[at..at + 110];
            assert_eq!(&h[..6], b"070701", "magic at {at}");
            let field = |i: usize| {
                let hex = std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).unwrap();
                u32::from_str_radix(hex, 16).unwrap()
            };
            let (namesize, size) = (field(11) as usize, field(6) as usize);
            let name = String::from_utf8(b[at + 110..at + 110 + namesize - 1].to_vec()).unwrap();
            at = align(at + 110 + namesize);
            let data = b[at..at + size].to_vec();
            at = align(at + size);
            if name == "TRAILER!!!" {
                assert_eq!(at, b.len());
                return out;
            }
            out.push(Header {
                name,
                ino: field(0),
                mode: field(1),
                nlink: field(4),
                data,
            });
        }
    }

    fn sample() -> Tree {
        let mut t = Tree::default();
        t.bytes("init", 0o755, b"#!/bin/sh\necho hi\n".to_vec())
            .unwrap();
        t.add(
            "dev/console",
            Entry::root(Kind::Char { major: 5, minor: 1 }, 0o600),
        )
        .unwrap();
        t.add(
            "dev/null",
            Entry::root(Kind::Char { major: 1, minor: 3 }, 0o666),
        )
        .unwrap();
        t.add(
            "bin/sh",
            Entry::root(Kind::Symlink("busybox".into()), 0o777),
        )
        .unwrap();
        t.dir("tmp", 0o1777).unwrap();
        t.bytes("etc/berth/manifest.json", 0o644, b"{}".to_vec())
            .unwrap();
        t.bytes("a/odd-size", 0o600, vec![7u8; 5]).unwrap();
        t
    }

    #[test]
    fn refuses_bad_paths_and_duplicates() {
        let mut t = sample();
        for p in ["", "/abs", "a/../b", "a//b", "a/", "./x"] {
            assert!(
                matches!(t.bytes(p, 0o644, vec![]), Err(CpioError::BadPath { .. })),
                "{p:?}"
            );
        }
        assert!(matches!(
            t.bytes("init", 0o644, vec![]),
            Err(CpioError::Duplicate { .. })
        ));
        assert!(matches!(
            t.bytes("init/x", 0o644, vec![]),
            Err(CpioError::ParentNotDir { .. })
        ));
        // Explicit directories may restate implied ones.
        t.dir("etc/berth", 0o700).unwrap();
        assert_eq!(t.get("etc/berth").unwrap().perm, 0o700);
    }

    #[test]
    fn same_tree_same_bytes_and_sorted() {
        let mut a = Vec::new();
        sample().write(&mut a).unwrap();
        let mut b = Vec::new();
        sample().write(&mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len() % 4, 0);
        assert!(a.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&a);
        let dev = text.find("dev\0").unwrap();
        let console = text.find("dev/console\0").unwrap();
        assert!(dev < console, "parent before child");
    }

    fn run_cpio(args: &[&str], dir: Option<&Path>, input: &[u8]) -> (String, String) {
        let mut cmd = Command::new("cpio");
        cmd.args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if let Some(d) = dir {
            cmd.current_dir(d);
        }
        let mut child = cmd.spawn().expect("cpio missing: apt-get install cpio");
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "cpio {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The names of one inode share its number and carry its data once,
    /// on the last name; GNU cpio extracts them as one inode.
    #[test]
    fn hard_links_are_one_inode_with_the_data_once() {
        use std::os::unix::fs::MetadataExt;
        let mut t = sample();
        let big: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        let group = t.link_group();
        let file = |data: &[u8], link| Entry {
            link: Some(link),
            ..Entry::root(Kind::File(Data::Bytes(data.to_vec())), 0o755)
        };
        for p in ["bin/busybox", "usr/bin/env", "bin/ls"] {
            t.add(p, file(&big, group)).unwrap();
        }
        // Alone in the archive: a file like any other.
        let lone = t.link_group();
        t.add("etc/lone", file(b"one", lone)).unwrap();
        let mut bytes = Vec::new();
        t.write(&mut bytes).unwrap();
        assert!(bytes.len() < (1 << 20) + 4096, "{} bytes", bytes.len());
        let mut again = Vec::new();
        t.write(&mut again).unwrap();
        assert_eq!(bytes, again);
        let headers = parse_newc(&bytes);
        let get = |name: &str| headers.iter().find(|h| h.name == name).unwrap();
        let (busybox, ls, env) = (get("bin/busybox"), get("bin/ls"), get("usr/bin/env"));
        assert_eq!((busybox.ino, busybox.nlink), (ls.ino, 3));
        assert_eq!((env.ino, env.nlink), (ls.ino, 3));
        assert!(busybox.data.is_empty() && ls.data.is_empty());
        assert_eq!(env.data, big, "the data goes with the last name");
        assert_eq!(busybox.mode, 0o100755);
        let lone = get("etc/lone");
        assert_eq!((lone.nlink, lone.data.as_slice()), (1, &b"one"[..]));
        let mut inodes: Vec<u32> = headers.iter().map(|h| h.ino).collect();
        inodes.sort();
        inodes.dedup();
        assert_eq!(inodes.len(), headers.len() - 2, "only the links share");

        let dir = std::env::temp_dir().join(format!("berth-cpio-links-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        run_cpio(&["-i", "-d", "-m", "--quiet"], Some(&dir), &bytes);
        let meta: Vec<std::fs::Metadata> = ["bin/busybox", "bin/ls", "usr/bin/env"]
            .iter()
            .map(|p| std::fs::metadata(dir.join(p)).unwrap())
            .collect();
        assert!(
            meta.iter()
                .all(|m| m.ino() == meta[0].ino() && m.nlink() == 3)
        );
        assert_eq!(std::fs::read(dir.join("bin/ls")).unwrap(), big);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Debian's GNU cpio reads what we write: names, types, modes, data.
    #[test]
    fn gnu_cpio_lists_and_extracts_it() {
        use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
        let mut bytes = Vec::new();
        let host = std::env::temp_dir().join(format!("berth-cpio-host-{}", std::process::id()));
        std::fs::write(&host, b"streamed from the host").unwrap();
        let mut t = sample();
        t.host_file("big/blob", 0o444, &host).unwrap();
        t.write(&mut bytes).unwrap();
        let (list, _) = run_cpio(&["-t", "--quiet"], None, &bytes);
        let names: Vec<&str> = list.lines().collect();
        assert_eq!(
            names,
            [
                "a",
                "a/odd-size",
                "big",
                "big/blob",
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "dev/null",
                "etc",
                "etc/berth",
                "etc/berth/manifest.json",
                "init",
                "tmp"
            ]
        );
        let dir = std::env::temp_dir().join(format!("berth-cpio-x-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        run_cpio(
            &["-i", "-m", "--quiet", "-d", "--no-absolute-filenames"],
            Some(&dir),
            &bytes,
        );
        assert_eq!(
            std::fs::read(dir.join("init")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            std::fs::read(dir.join("big/blob")).unwrap(),
            b"streamed from the host"
        );
        assert_eq!(std::fs::read(dir.join("a/odd-size")).unwrap(), vec![7u8; 5]);
        assert_eq!(
            std::fs::read_link(dir.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        let init = std::fs::metadata(dir.join("init")).unwrap();
        assert_eq!(init.permissions().mode() & 0o7777, 0o755);
        assert_eq!(init.mtime(), 0);
        let tmp = std::fs::metadata(dir.join("tmp")).unwrap();
        assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
        // Device nodes need root (mknod), which the test suite runs as.
        let console = std::fs::metadata(dir.join("dev/console"))
            .expect("cpio could not mknod dev/console: run the tests as root");
        assert!(console.file_type().is_char_device());
        assert_eq!(console.rdev(), (5 << 8) | 1);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(&host);
    }
}
