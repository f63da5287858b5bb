//! A bundle's root filesystem packed as one OCI layer.
//!
//! [`pack_rootfs`] writes the tree as a tar, deterministically: entries
//! sorted by name (byte order), the root first as `./`, mtimes 0 (as the
//! initramfs's), owners and modes as they are, no user or group names. A
//! file with several names in the tree (hard links) is written once, its
//! other names as links to the first. Extended attributes go into PAX
//! `SCHILY.xattr.*` records, which berth-init's unpacker sets again: the
//! namespaces it sets (`user.*` and `security.capability`, on files and
//! directories); any other attribute would be lost at boot, so it fails
//! the pack, naming file and attribute, apart from the labels the build
//! host's security modules put on every file ([`host_only_xattr`]). Names
//! and link targets too long for the ustar header go into PAX `path` and
//! `linkpath` records, as do owners above ustar's 7 octal digits.
//!
//! [`write_layout`] puts that tar, uncompressed, into a one-image OCI
//! layout (tagged [`ROOTFS_IMAGE`], a config with no execution parameters:
//! the bundle's `config.json` is the spec), which the build then recompresses
//! and verifies with the images' own [`super::layout::LayoutWriter`].

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use berth_bundles::digest::{Hasher, Sha256Digest};
use serde_json::json;
use tar::{EntryType, Header};

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

/// The names of the extended attributes of `path` (not following a link).
pub fn xattr_names(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    use rustix::fs::{llistxattr, llistxattr_query};
    use rustix::io::Errno;
    let size = match llistxattr_query(path) {
        Ok(0) => return Ok(Vec::new()),
        Ok(size) => size,
        // A filesystem without extended attributes holds none.
        Err(Errno::OPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut names = vec![0u8; size];
    let len = match llistxattr(path, &mut names[..]) {
        Ok(len) => len,
        // Grown since the query.
        Err(Errno::RANGE) => {
            names = vec![0u8; llistxattr_query(path)?];
            llistxattr(path, &mut names[..])?
        }
        Err(e) => return Err(e.into()),
    };
    Ok(names[..len]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

fn xattr_value(path: &Path, name: &[u8]) -> io::Result<Vec<u8>> {
    use rustix::fs::lgetxattr;
    use rustix::io::Errno;
    let name = std::ffi::OsStr::from_bytes(name);
    let mut value = vec![0u8; 256];
    loop {
        match lgetxattr(path, name, &mut value[..]) {
            Ok(len) => {
                value.truncate(len);
                return Ok(value);
            }
            // Larger than the buffer: the kernel's limit is 64 KiB.
            Err(Errno::RANGE) if value.len() < 1 << 17 => value.resize(value.len() * 4, 0),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The extended attributes of `path` that go into the layer, sorted by
/// name; an attribute the appliance would lose is an error.
fn packed_xattrs(path: &Path, meta: &fs::Metadata) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut names = xattr_names(path)?;
    names.retain(|n| !host_only_xattr(n));
    names.sort();
    let kept = meta.is_file() || meta.is_dir();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if !(kept && unpacker_sets(&name)) {
            let shown = String::from_utf8_lossy(&name);
            return Err(io::Error::other(format!(
                "{}: has the extended attribute {shown}, which berth-init does not set when it \
                 unpacks the bundle (only user.* and security.capability, on files and \
                 directories): remove it (setfattr -x {shown}) if the file does without it",
                path.display()
            )));
        }
        let value = xattr_value(path, &name)?;
        out.push((name, value));
    }
    Ok(out)
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
pub fn pack_rootfs(root: &Path, out: impl Write) -> io::Result<Packed> {
    let mut w = TarWriter {
        out,
        links: HashMap::new(),
        packed: Packed::default(),
    };
    w.add(root, b"./")?;
    // Two zero blocks end the archive.
    w.out.write_all(&[0u8; 1024])?;
    w.out.flush()?;
    Ok(w.packed)
}

struct TarWriter<W> {
    out: W,
    /// (device, inode) → the name its data was written under.
    links: HashMap<(u64, u64), Vec<u8>>,
    packed: Packed,
}

impl<W: Write> TarWriter<W> {
    fn add(&mut self, path: &Path, name: &[u8]) -> io::Result<()> {
        let meta = fs::symlink_metadata(path)?;
        self.entry(path, name, &meta)?;
        if meta.is_dir() {
            let mut names: Vec<_> = fs::read_dir(path)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()?;
            names.sort();
            for child in names {
                let mut child_name = if name == b"./" {
                    Vec::new()
                } else {
                    name.to_vec()
                };
                child_name.extend_from_slice(child.as_bytes());
                if fs::symlink_metadata(path.join(&child))?.is_dir() {
                    child_name.push(b'/');
                }
                self.add(&path.join(&child), &child_name)?;
            }
        }
        Ok(())
    }

    fn entry(&mut self, path: &Path, name: &[u8], meta: &fs::Metadata) -> io::Result<()> {
        let ft = meta.file_type();
        let mut header = Header::new_ustar();
        let mut pax: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut data: Option<File> = None;
        let mut size = 0;
        let xattrs = packed_xattrs(path, meta)?;
        let linked = meta.is_file() && meta.nlink() > 1;
        if let Some(first) = linked
            .then(|| self.links.get(&(meta.dev(), meta.ino())))
            .flatten()
        {
            // Another name of a file already written: its data and
            // metadata are the first name's.
            header.set_entry_type(EntryType::Link);
            set_link(&mut header, &mut pax, first.clone())?;
        } else if ft.is_dir() {
            header.set_entry_type(EntryType::Directory);
        } else if ft.is_file() {
            header.set_entry_type(EntryType::Regular);
            size = meta.len();
            data = Some(
                fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .open(path)?,
            );
            if linked {
                self.links.insert((meta.dev(), meta.ino()), name.to_vec());
            }
        } else if ft.is_symlink() {
            header.set_entry_type(EntryType::Symlink);
            set_link(
                &mut header,
                &mut pax,
                fs::read_link(path)?.as_os_str().as_bytes().to_vec(),
            )?;
        } else if ft.is_char_device() || ft.is_block_device() {
            header.set_entry_type(if ft.is_char_device() {
                EntryType::Char
            } else {
                EntryType::Block
            });
            let rdev = meta.rdev();
            // Linux dev_t: major in bits 8-19 and 32-63, minor in 0-7 and 20-31.
            let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
            let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
            let field = |n: u64| {
                u32::try_from(n)
                    .ok()
                    .filter(|n| *n <= 0o7777777)
                    .ok_or_else(|| {
                        io::Error::other(format!(
                            "{}: device number {major}:{minor} does not fit a tar header",
                            path.display()
                        ))
                    })
            };
            header.set_device_major(field(major)?)?;
            header.set_device_minor(field(minor)?)?;
        } else if ft.is_fifo() {
            header.set_entry_type(EntryType::Fifo);
        } else {
            return Err(io::Error::other(format!(
                "{}: a socket cannot be packed into a layer",
                path.display()
            )));
        }
        set_name(&mut header, &mut pax, name);
        header.set_mode(meta.mode() & 0o7777);
        header.set_mtime(0);
        for (key, id) in [("uid", meta.uid()), ("gid", meta.gid())] {
            let id = u64::from(id);
            let field = if id > 0o7777777 {
                pax.push((key, id.to_string().into_bytes()));
                0
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
        let keys: Vec<String> = xattrs
            .iter()
            .map(|(n, _)| format!("SCHILY.xattr.{}", String::from_utf8_lossy(n)))
            .collect();
        for (key, (_, value)) in keys.iter().zip(&xattrs) {
            pax.push((key, value.clone()));
        }
        if !pax.is_empty() {
            self.pax(&pax)?;
        }
        header.set_cksum();
        self.out.write_all(header.as_bytes())?;
        self.packed.entries += 1;
        if let Some(mut file) = data {
            let copied = io::copy(&mut (&mut file).take(size), &mut self.out)?;
            // One more byte readable: the file grew while it was packed.
            if copied != size || file.read(&mut [0u8; 1])? != 0 {
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
    fn pax(&mut self, records: &[(&str, Vec<u8>)]) -> io::Result<()> {
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
fn set_name(header: &mut Header, pax: &mut Vec<(&str, Vec<u8>)>, name: &[u8]) {
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
    pax.push(("path", name.to_vec()));
}

/// Sets a link target, in a PAX `linkpath` record when too long.
fn set_link(
    header: &mut Header,
    pax: &mut Vec<(&str, Vec<u8>)>,
    target: Vec<u8>,
) -> io::Result<()> {
    if target.contains(&0) {
        return Err(io::Error::other("a link target holds a NUL byte"));
    }
    let cut = &target[..target.len().min(100)];
    header.as_old_mut().linkname[..cut.len()].copy_from_slice(cut);
    if target.len() > 100 {
        pax.push(("linkpath", target));
    }
    Ok(())
}

/// Writes the tree at `rootfs` as a one-image OCI layout at `dir` (which
/// must not exist): the uncompressed layer, a config without execution
/// parameters for linux/amd64, tagged [`ROOTFS_IMAGE`].
pub fn write_layout(rootfs: &Path, dir: &Path) -> io::Result<Packed> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let tmp = blobs.join("layer.tmp");
    let mut hashing = HashingFile {
        file: BufWriter::new(File::create(&tmp)?),
        hasher: Hasher::default(),
    };
    let packed = pack_rootfs(rootfs, &mut hashing)?;
    hashing
        .file
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_data()?;
    let size = hashing.hasher.count();
    let diff_id = hashing.hasher.finish();
    fs::rename(&tmp, blobs.join(diff_id.hex()))?;
    let put = |value: serde_json::Value| -> io::Result<(Sha256Digest, u64)> {
        let bytes = serde_json::to_vec(&value).map_err(io::Error::other)?;
        let digest = Sha256Digest::of(&bytes);
        fs::write(blobs.join(digest.hex()), &bytes)?;
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
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest.to_string(),
            "size": manifest_size,
            "annotations": { "org.opencontainers.image.ref.name": ROOTFS_IMAGE },
        }],
    });
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).map_err(io::Error::other)?,
    )?;
    Ok(packed)
}

struct HashingFile {
    file: BufWriter<File>,
    hasher: Hasher,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let packed = pack_rootfs(&root, File::create(&tar).unwrap()).unwrap();
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
