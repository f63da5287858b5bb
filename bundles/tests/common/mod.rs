//! Test helpers: a raw tar writer that can express any (malicious) name,
//! an OCI layout writer, scratch directories and tree snapshots.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use sha2::{Digest, Sha256};

/// Fails (never skips) when not root: these tests chown, mknod and set
/// security.capability.
/// An error and its sources, one line: `outer: inner: …`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests need root (chown, mknod, security.capability): run cargo test as root"
    );
}

pub fn require_tool(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(found, "{tool} missing: apt-get install {package}");
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "berth-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// One tar member, described freely.
#[derive(Clone, Debug)]
pub struct E {
    pub name: Vec<u8>,
    pub kind: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub link: Vec<u8>,
    pub data: Vec<u8>,
    pub dev: (u32, u32),
    pub pax: Vec<(String, Vec<u8>)>,
    /// Write the name as a GNU `L` long-name member instead of PAX.
    pub gnu_long: bool,
    /// Override the size field (to build truncated archives).
    pub size_override: Option<u64>,
}

impl E {
    fn new(name: impl AsRef<[u8]>, kind: u8, mode: u32) -> Self {
        E {
            name: name.as_ref().to_vec(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            link: Vec::new(),
            data: Vec::new(),
            dev: (0, 0),
            pax: Vec::new(),
            gnu_long: false,
            size_override: None,
        }
    }
    pub fn file(name: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> Self {
        let mut e = Self::new(name, b'0', 0o644);
        e.data = data.as_ref().to_vec();
        e
    }
    pub fn dir(name: impl AsRef<[u8]>) -> Self {
        Self::new(name, b'5', 0o755)
    }
    pub fn symlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        let mut e = Self::new(name, b'2', 0o777);
        e.link = target.as_ref().to_vec();
        e
    }
    pub fn hardlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        let mut e = Self::new(name, b'1', 0o644);
        e.link = target.as_ref().to_vec();
        e
    }
    pub fn node(name: impl AsRef<[u8]>, kind: u8, major: u32, minor: u32) -> Self {
        let mut e = Self::new(name, kind, 0o600);
        e.dev = (major, minor);
        e
    }
    pub fn whiteout(name: impl AsRef<[u8]>) -> Self {
        Self::file(name, b"")
    }
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub fn mtime(mut self, t: u64) -> Self {
        self.mtime = t;
        self
    }
    pub fn pax(mut self, key: &str, value: impl AsRef<[u8]>) -> Self {
        self.pax.push((key.to_string(), value.as_ref().to_vec()));
        self
    }
    pub fn gnu(mut self) -> Self {
        self.gnu_long = true;
        self
    }
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0width$o}\0", v, width = field.len() - 1);
    field.copy_from_slice(s.as_bytes());
}

fn header(name: &[u8], kind: u8, e: &E, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], u64::from(e.mode));
    octal(&mut h[108..116], e.uid.min(0o7777777));
    octal(&mut h[116..124], e.gid.min(0o7777777));
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], e.mtime);
    h[156] = kind;
    let l = e.link.len().min(100);
    h[157..157 + l].copy_from_slice(&e.link[..l]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], u64::from(e.dev.0));
    octal(&mut h[337..345], u64::from(e.dev.1));
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

fn pad(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(512) {
        out.push(0);
    }
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body_len = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body_len + 1;
    loop {
        let total = body_len + len.to_string().len();
        if total == len {
            break;
        }
        len = total;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// Serialises entries into a tar (with the two zero end blocks).
pub fn tar(entries: &[E]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut pax = e.pax.clone();
        let mut name = e.name.clone();
        if e.name.len() > 100 {
            if e.gnu_long {
                let mut data = e.name.clone();
                data.push(0);
                out.extend_from_slice(&header(b"././@LongLink", b'L', e, data.len() as u64));
                out.extend_from_slice(&data);
                pad(&mut out);
            } else {
                pax.push(("path".into(), e.name.clone()));
            }
            name = e.name[..100].to_vec();
        }
        if e.link.len() > 100 {
            pax.push(("linkpath".into(), e.link.clone()));
        }
        if !pax.is_empty() {
            let mut data = Vec::new();
            for (k, v) in &pax {
                data.extend(pax_record(k, v));
            }
            out.extend_from_slice(&header(b"PaxHeaders/x", b'x', e, data.len() as u64));
            out.extend_from_slice(&data);
            pad(&mut out);
        }
        let size = e.size_override.unwrap_or(e.data.len() as u64);
        out.extend_from_slice(&header(&name, e.kind, e, size));
        out.extend_from_slice(&e.data);
        pad(&mut out);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

pub fn compress(c: Comp, data: &[u8]) -> (Vec<u8>, &'static str) {
    match c {
        Comp::None => (data.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
        Comp::Gzip => (gzip(data), "application/vnd.oci.image.layer.v1.tar+gzip"),
        Comp::Zstd => (zstd(data), "application/vnd.oci.image.layer.v1.tar+zstd"),
    }
}

/// An OCI layout being written by a test.
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: &Path) -> Self {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            dir: dir.to_path_buf(),
        }
    }

    /// Stores a blob and returns its descriptor JSON.
    pub fn blob(&self, media_type: &str, data: &[u8]) -> serde_json::Value {
        let hex = sha256_hex(data);
        fs::write(self.dir.join("blobs/sha256").join(&hex), data).unwrap();
        serde_json::json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": data.len()})
    }

    pub fn blob_path(&self, desc: &serde_json::Value) -> PathBuf {
        let d = desc["digest"].as_str().unwrap();
        self.dir.join("blobs/sha256").join(&d[7..])
    }

    /// A config for the given layer tars (uncompressed).
    pub fn config(
        &self,
        tars: &[Vec<u8>],
        arch: &str,
        extra: serde_json::Value,
    ) -> serde_json::Value {
        let diff_ids: Vec<String> = tars
            .iter()
            .map(|t| format!("sha256:{}", sha256_hex(t)))
            .collect();
        let mut cfg = serde_json::json!({
            "architecture": arch, "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        if let serde_json::Value::Object(m) = extra {
            for (k, v) in m {
                cfg[k] = v;
            }
        }
        cfg
    }

    /// Writes a manifest for `layers` (uncompressed tars, compressed with
    /// `comp`) and returns its descriptor.
    pub fn image(
        &self,
        tars: &[Vec<u8>],
        comp: Comp,
        arch: &str,
    ) -> (serde_json::Value, Vec<serde_json::Value>) {
        let layers: Vec<serde_json::Value> = tars
            .iter()
            .map(|t| {
                let (data, mt) = compress(comp, t);
                self.blob(mt, &data)
            })
            .collect();
        let cfg = self.config(tars, arch, serde_json::json!({}));
        let cfg_desc = self.blob(
            "application/vnd.oci.image.config.v1+json",
            &serde_json::to_vec(&cfg).unwrap(),
        );
        (self.manifest(cfg_desc, &layers), layers)
    }

    pub fn manifest(
        &self,
        config: serde_json::Value,
        layers: &[serde_json::Value],
    ) -> serde_json::Value {
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": layers,
        });
        self.blob(
            "application/vnd.oci.image.manifest.v1+json",
            &serde_json::to_vec(&m).unwrap(),
        )
    }

    /// Writes index.json with the given descriptors, tagging each.
    pub fn index(&self, entries: &[(serde_json::Value, Option<&str>)]) {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .map(|(d, tag)| {
                let mut d = d.clone();
                if let Some(t) = tag {
                    d["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": t});
                }
                d
            })
            .collect();
        let idx = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
        fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&idx).unwrap(),
        )
        .unwrap();
    }
}

/// One node of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub content: Option<String>,
    pub link: Option<PathBuf>,
    pub rdev: u64,
    pub ino: u64,
}

/// Records everything below `root` (without following symlinks).
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, p: &Path, out: &mut BTreeMap<PathBuf, Node>) {
    let m = fs::symlink_metadata(p).unwrap();
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else if ft.is_char_device() {
        "char"
    } else if ft.is_block_device() {
        "block"
    } else if ft.is_fifo() {
        "fifo"
    } else {
        "other"
    };
    let rel = p.strip_prefix(root).unwrap().to_path_buf();
    out.insert(
        rel,
        Node {
            kind,
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            size: if ft.is_file() { m.size() } else { 0 },
            mtime: m.mtime(),
            content: ft.is_file().then(|| sha256_hex(&fs::read(p).unwrap())),
            link: ft.is_symlink().then(|| fs::read_link(p).unwrap()),
            rdev: m.rdev(),
            ino: m.ino(),
        },
    );
    if ft.is_dir() {
        let mut names: Vec<_> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for n in names {
            walk(root, &n, out);
        }
    }
}

/// Runs `cmd`, failing the test with its output when it fails.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `sh -euc SCRIPT`, as [`run`].
pub fn sh(script: &str) {
    run(Command::new("sh").arg("-euc").arg(script));
}
