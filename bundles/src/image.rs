//! Reading images: references, OCI layouts and docker-archive tars, index
//! and platform selection, manifests and configs, all verified by digest.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{DigestError, Sha256Digest, VerifyingReader, digest_error};

/// Largest JSON document (index, manifest, config) read into memory.
pub const MAX_JSON: u64 = 16 << 20;

/// Errors of reading an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {reason}")]
    BadReference {
        reference: String,
        reason: &'static str,
    },
    #[error("invalid platform {platform:?}: expected os/arch[/variant]")]
    BadPlatform { platform: String },
    #[error("{image}: open {path}")]
    Open {
        image: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{image}: read archive index")]
    ArchiveIndex {
        image: String,
        #[source]
        source: io::Error,
    },
    #[error("{image}: missing {what} {name}")]
    Missing {
        image: String,
        what: &'static str,
        name: String,
    },
    #[error("{image}: read {what} {name}")]
    Read {
        image: String,
        what: &'static str,
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("{image}: {what} {name}")]
    Verify {
        image: String,
        what: &'static str,
        name: String,
        #[source]
        source: DigestError,
    },
    #[error("{image}: {what} {name} is larger than {max} bytes")]
    TooLarge {
        image: String,
        what: &'static str,
        name: String,
        max: u64,
    },
    #[error("{image}: malformed {what} {name}")]
    Json {
        image: String,
        what: &'static str,
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{image}: {what} {name} has invalid digest")]
    BadDigest {
        image: String,
        what: &'static str,
        name: String,
        #[source]
        source: DigestError,
    },
    #[error("{image}: {reason}")]
    Select { image: String, reason: String },
    /// The image (or every entry of its index) is for another platform.
    #[error("{image}: {reason}")]
    Platform { image: String, reason: String },
    #[error("{image}: {what} {name} has unsupported media type {media_type:?}")]
    MediaType {
        image: String,
        what: &'static str,
        name: String,
        media_type: String,
    },
    #[error("{image}: {reason}")]
    Invalid { image: String, reason: String },
}

/// Where an image comes from, in skopeo's transport syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// `oci:PATH[:TAG]`: an OCI image layout directory.
    Oci { path: PathBuf, tag: Option<String> },
    /// `docker-archive:PATH[:REF]`: a `docker save` tar.
    DockerArchive {
        path: PathBuf,
        reference: Option<String>,
    },
}

impl ImageRef {
    /// Parses `oci:PATH[:TAG]` or `docker-archive:PATH[:REF]`. As in
    /// containers/image, the path ends at the first `:`.
    pub fn parse(text: &str) -> Result<Self, ImageError> {
        let bad = |reason| ImageError::BadReference {
            reference: text.to_string(),
            reason,
        };
        let (transport, rest) = text
            .split_once(':')
            .ok_or_else(|| bad("expected oci:PATH[:TAG] or docker-archive:PATH[:REF]"))?;
        let (path, name) = match rest.split_once(':') {
            Some((p, n)) => (p, Some(n)),
            None => (rest, None),
        };
        if path.is_empty() {
            return Err(bad("empty path"));
        }
        if name == Some("") {
            return Err(bad("empty tag after ':'"));
        }
        let name = name.map(str::to_string);
        match transport {
            "oci" => Ok(Self::Oci {
                path: path.into(),
                tag: name,
            }),
            "docker-archive" => Ok(Self::DockerArchive {
                path: path.into(),
                reference: name,
            }),
            _ => Err(bad("unknown transport: use oci: or docker-archive:")),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Oci { path, tag } => {
                write!(f, "oci:{}", path.display())?;
                if let Some(t) = tag {
                    write!(f, ":{t}")?;
                }
                Ok(())
            }
            Self::DockerArchive { path, reference } => {
                write!(f, "docker-archive:{}", path.display())?;
                if let Some(r) = reference {
                    write!(f, ":{r}")?;
                }
                Ok(())
            }
        }
    }
}

/// An OS/architecture pair with an optional variant, normalised the way
/// containerd does (`x86_64` → `amd64`, `aarch64` → `arm64`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Default for Platform {
    fn default() -> Self {
        Self {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

impl Platform {
    /// Parses `os/arch[/variant]`.
    pub fn parse(text: &str) -> Result<Self, ImageError> {
        let parts: Vec<&str> = text.split('/').collect();
        let bad = || ImageError::BadPlatform {
            platform: text.to_string(),
        };
        if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        Ok(Self::new(parts[0], parts[1], parts.get(2).copied()))
    }

    /// Builds a normalised platform.
    pub fn new(os: &str, arch: &str, variant: Option<&str>) -> Self {
        let os = os.to_ascii_lowercase();
        let arch = arch.to_ascii_lowercase();
        let variant = variant
            .filter(|v| !v.is_empty())
            .map(str::to_ascii_lowercase);
        let (architecture, variant) = match (arch.as_str(), variant.as_deref()) {
            ("x86_64" | "x86-64" | "amd64", Some("v1")) => ("amd64".to_string(), None),
            ("x86_64" | "x86-64", v) => ("amd64".to_string(), v.map(str::to_string)),
            ("aarch64" | "arm64", v) => ("arm64".to_string(), v.and_then(arm64_variant)),
            ("armhf", _) => ("arm".to_string(), Some("v7".to_string())),
            ("armel", _) => ("arm".to_string(), Some("v6".to_string())),
            ("arm", None) => ("arm".to_string(), Some("v7".to_string())),
            ("arm", Some(v @ ("5" | "6" | "7" | "8"))) => {
                ("arm".to_string(), Some(format!("v{v}")))
            }
            ("i386", v) => ("386".to_string(), v.map(str::to_string)),
            (a, v) => (a.to_string(), v.map(str::to_string)),
        };
        Self {
            os,
            architecture,
            variant,
        }
    }

    /// Does an image for `other` run here? See [`Self::rank`].
    pub fn matches(&self, other: &Platform) -> bool {
        self.rank(other).is_some()
    }

    /// How well an image for `other` fits here: `None` when it does not
    /// run here, and higher for a newer variant, the best of several
    /// (containerd's order). Without a variant here, any variant fits, but
    /// the plain image (no variant) first. With one, newer variants run
    /// older ones' code:
    /// amd64/vN runs v1 (plain amd64) to vN, arm/vN runs v5 to vN, and
    /// arm64/v8.N runs v8 to v8.N, arm64/v9.N v9 to v9.N and v8 to v8.(N+5).
    /// Other variants must be equal.
    pub fn rank(&self, other: &Platform) -> Option<u32> {
        if self.os != other.os || self.architecture != other.architecture {
            return None;
        }
        let got = other.variant.as_deref();
        let Some(want) = self.variant.as_deref() else {
            // The plain image first: a variant's may need a newer CPU
            // than this one (amd64/v3 on QEMU's default CPU).
            return Some(u32::from(got.is_none()));
        };
        let level = |v: &str, lo: u32, hi: u32| {
            (v.strip_prefix('v')?.parse::<u32>().ok()).filter(|n| (lo..=hi).contains(n))
        };
        let arm64 = |v: Option<&str>| -> Option<(u32, u32)> {
            let Some(v) = v else { return Some((8, 0)) };
            let v = v.strip_prefix('v')?;
            let (major, minor) = v.split_once('.').unwrap_or((v, "0"));
            let (major, minor) = (major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?);
            (matches!(major, 8 | 9) && minor < 100).then_some((major, minor))
        };
        let fits = || match self.architecture.as_str() {
            "amd64" => {
                let w = level(want, 1, 4)?;
                let g = got.map_or(Some(1), |g| level(g, 1, 4))?;
                (g <= w).then_some(g)
            }
            "arm" => {
                let w = level(want, 5, 8)?;
                let g = level(got?, 5, 8)?;
                (g <= w).then_some(g)
            }
            "arm64" => {
                let (w, g) = (arm64(Some(want))?, arm64(got)?);
                let runs = (g.0 == w.0 && g.1 <= w.1) || (g.0 == 8 && w.0 == 9 && g.1 <= w.1 + 5);
                runs.then_some(g.0 * 100 + g.1)
            }
            _ => None,
        };
        // A variant outside the known orders still takes its equal.
        fits().or((got == Some(want)).then_some(u32::MAX))
    }
}

/// An arm64 variant in containerd's normal form: v8 (in any spelling:
/// `8`, `v8`, `v8.0`) is plain arm64, v9 (`9`, `9.0`, `v9.0`) is `v9`, and
/// a bare `8.N`/`9.N` takes its `v`, so `linux/arm64/9` selects an image
/// declaring `v9`. A variant outside that grammar is kept as written.
fn arm64_variant(v: &str) -> Option<String> {
    let digits = v.strip_prefix('v').unwrap_or(v);
    let (major, minor) = digits.split_once('.').unwrap_or((digits, "0"));
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    match (number(major), number(minor)) {
        (Some(8), Some(0)) => None,
        (Some(9), Some(0)) => Some("v9".to_string()),
        (Some(major @ (8 | 9)), Some(minor)) => Some(format!("v{major}.{minor}")),
        _ => Some(v.to_string()),
    }
}

/// The text form escapes control characters ([`crate::printable`]): the
/// fields come from the image (its config, its index), and this form goes
/// into messages and onto terminals (`inspect`, `unpack`), where a newline
/// would forge a line and an escape sequence would talk to the terminal.
impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::printable;
        write!(
            f,
            "{}/{}",
            printable(&self.os),
            printable(&self.architecture)
        )?;
        if let Some(v) = &self.variant {
            write!(f, "/{}", printable(v))?;
        }
        Ok(())
    }
}

/// A content descriptor, as in `descriptor.md`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<DescriptorPlatform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

/// The `platform` of an index entry.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct DescriptorPlatform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image index (also the layout's `index.json`). Read through
/// [`Reader::document`], which refuses one that is also a manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    pub manifests: Vec<Descriptor>,
}

/// An image manifest. Read through [`Reader::document`], which refuses one
/// that is also an index or whose `mediaType` is not its descriptor's.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// Which of the two documents a descriptor leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DocumentKind {
    Index,
    Manifest,
}

impl DocumentKind {
    fn what(self) -> &'static str {
        match self {
            Self::Index => "index",
            Self::Manifest => "manifest",
        }
    }
}

/// The fields that tell an index from a manifest, read from a document's
/// bytes before it is taken as either. One JSON document that is both (its
/// `manifests` and its `config` + `layers`) is read as an index by one tool
/// and as a manifest by another: two images under one digest
/// (CVE-2021-41190, GHSA-77vh-xpmg-72qh). containerd's `validateMediaType`
/// refuses the same shapes; a field counts when present, even as `null`.
#[derive(Deserialize)]
struct DocumentShape {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<u64>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default, deserialize_with = "present")]
    manifests: bool,
    #[serde(default, deserialize_with = "present")]
    config: bool,
    #[serde(default, deserialize_with = "present")]
    layers: bool,
}

/// `true` for a field that is there, whatever its value.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

impl DocumentShape {
    /// Why a document read as `kind` is refused: its `schemaVersion` is not
    /// 2, its own `mediaType` is not the one `declared` by the descriptor
    /// that led to it (for `index.json`, which has none: not an index's), or
    /// it has the other kind's fields.
    fn problem(&self, kind: DocumentKind, declared: Option<&str>) -> Option<String> {
        if let Some(v) = self.schema_version.filter(|v| *v != 2) {
            return Some(format!("has schemaVersion {v}"));
        }
        if let Some(own) = &self.media_type {
            match declared {
                Some(declared) if own != declared => {
                    return Some(format!(
                        "has mediaType {own:?}, but its descriptor says {declared:?}"
                    ));
                }
                None if !INDEX_TYPES.contains(&own.as_str()) => {
                    return Some(format!("has mediaType {own:?}, not an image index's"));
                }
                _ => {}
            }
        }
        let (other, fields) = match kind {
            DocumentKind::Index => (
                "a manifest",
                vec![("config", self.config), ("layers", self.layers)],
            ),
            DocumentKind::Manifest => ("an index", vec![("manifests", self.manifests)]),
        };
        let present: Vec<String> = (fields.iter().filter(|(_, has)| *has))
            .map(|(field, _)| format!("{field:?}"))
            .collect();
        (!present.is_empty()).then(|| format!("is also {other} (it has {})", present.join(" and ")))
    }
}

/// The image configuration (`config.md`); unknown fields are ignored, as
/// the spec requires.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    pub rootfs: RootFs,
}

/// `rootfs` of the image config.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub typ: String,
    pub diff_ids: Vec<String>,
}

/// The execution parameters of the image config. Nulls are accepted where
/// Docker writes them.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, deserialize_with = "null_default")]
    pub user: String,
    #[serde(default, deserialize_with = "null_default")]
    pub exposed_ports: BTreeMap<String, serde_json::Value>,
    #[serde(default, deserialize_with = "null_default")]
    pub env: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub entrypoint: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub cmd: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub volumes: BTreeMap<String, serde_json::Value>,
    #[serde(default, deserialize_with = "null_default")]
    pub working_dir: String,
    #[serde(default, deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_default")]
    pub stop_signal: String,
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An entry of docker-archive's `manifest.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveItem {
    config: String,
    #[serde(default, deserialize_with = "null_default")]
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    /// Unknown until the first bytes are read (docker-archive).
    Sniff,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "tar",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Sniff => "sniffed",
        })
    }
}

/// Maps a layer media type to its compression; encrypted, foreign and
/// unknown types are refused.
pub fn layer_compression(media_type: &str) -> Option<Compression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Some(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
const CONFIG_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Where a blob lives in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobLocation {
    /// `blobs/sha256/<hex>` of an OCI layout.
    Digest(Sha256Digest),
    /// A member of a docker-archive, by the name manifest.json gives.
    Member(String),
}

/// One layer of a resolved image.
#[derive(Debug, Clone, Serialize)]
pub struct Layer {
    /// The compressed blob's digest, when the format names one.
    #[serde(serialize_with = "opt_display")]
    pub digest: Option<Sha256Digest>,
    pub size: u64,
    pub media_type: String,
    pub compression: Compression,
    #[serde(serialize_with = "display")]
    pub diff_id: Sha256Digest,
    #[serde(skip)]
    pub location: BlobLocation,
}

impl Layer {
    /// The layer's name in messages: its blob digest, or its DiffID when
    /// the format names no blob digest (legacy docker-archive layers).
    pub fn name(&self) -> String {
        (self.digest.as_ref()).map_or_else(|| self.diff_id.to_string(), |d| d.to_string())
    }
}

fn display<S: serde::Serializer, T: fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn opt_display<S: serde::Serializer, T: fmt::Display>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

/// A member of a docker-archive tar: where its data starts and its size.
#[derive(Debug, Clone)]
pub(crate) enum Member {
    File { offset: u64, size: u64 },
    Link(String),
}

/// Blob storage behind an image reference.
#[derive(Debug)]
pub(crate) enum Store {
    Dir(PathBuf),
    Archive {
        path: PathBuf,
        members: HashMap<String, Member>,
    },
}

/// A readable blob and its stored size.
pub type BlobReader = Box<dyn Read + Send>;

impl Store {
    /// Opens a file of the store by relative name: `None` if absent.
    fn open(&self, name: &str) -> io::Result<Option<(BlobReader, u64)>> {
        match self {
            // Without blocking: a FIFO in a layout must not wait for a
            // writer (nor a device be read as a blob).
            Store::Dir(root) => match crate::small_file::open_regular(&root.join(name)) {
                Ok((f, size)) => Ok(Some((Box::new(f), size))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
            Store::Archive { path, members } => {
                let mut name = normalise_member(name);
                for _ in 0..16 {
                    match members.get(&name) {
                        None => return Ok(None),
                        Some(Member::Link(target)) => name = target.clone(),
                        Some(Member::File { offset, size }) => {
                            let mut f = File::open(path)?;
                            f.seek(SeekFrom::Start(*offset))?;
                            return Ok(Some((Box::new(f.take(*size)), *size)));
                        }
                    }
                }
                Err(io::Error::other("too many levels of links in archive"))
            }
        }
    }

    fn open_blob(&self, loc: &BlobLocation) -> io::Result<Option<(BlobReader, u64)>> {
        match loc {
            BlobLocation::Digest(d) => self.open(&format!("blobs/sha256/{}", d.hex())),
            BlobLocation::Member(name) => self.open(name),
        }
    }
}

/// Cleans an archive member name lexically (no leading `./` or `/`, no
/// `..` above the top): the names are only keys of a map, never paths.
fn normalise_member(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

fn index_archive(path: &Path) -> io::Result<HashMap<String, Member>> {
    let mut archive = tar::Archive::new(File::open(path)?);
    let mut members = HashMap::new();
    let refuse = |name: &str, what: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("member {name:?}: {what}"),
        )
    };
    for entry in archive.entries_with_seek()? {
        let entry = entry?;
        let name = normalise_member(&String::from_utf8_lossy(&entry.path_bytes()));
        let kind = entry.header().entry_type();
        // As for layers (`apply::header_only`): Docker and skopeo read the
        // archive with Go's archive/tar, which skips no data after these;
        // the tar crate skips their size. Either could then see members the
        // other does not, another manifest.json among them.
        if crate::apply::header_only(kind) && entry.size() != 0 {
            let kind = format!("{kind:?}").to_lowercase();
            let what = format!(
                "a {kind} entry with {} bytes of data (tar readers disagree on where the next entry starts)",
                entry.size()
            );
            return Err(refuse(&name, what));
        }
        let member = match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => Member::File {
                offset: entry.raw_file_position(),
                size: entry.size(),
            },
            tar::EntryType::Symlink => {
                let target = String::from_utf8_lossy(&entry.link_name_bytes().unwrap_or_default())
                    .into_owned();
                let base = name.rsplit_once('/').map_or("", |(d, _)| d);
                let joined = if target.starts_with('/') {
                    target
                } else {
                    format!("{base}/{target}")
                };
                Member::Link(normalise_member(&joined))
            }
            tar::EntryType::Link => {
                let target = String::from_utf8_lossy(&entry.link_name_bytes().unwrap_or_default())
                    .into_owned();
                Member::Link(normalise_member(&target))
            }
            _ => continue,
        };
        // Which of two members of one name a reader takes is its own
        // choice (the first, the last): one image for berth, another for
        // the tool that checked the archive.
        if members.insert(name.clone(), member).is_some() {
            return Err(refuse(&name, "appears twice in the archive".into()));
        }
    }
    Ok(members)
}

/// An image resolved down to one platform's manifest and config.
#[derive(Debug)]
pub struct Image {
    /// The reference text, for messages.
    pub name: String,
    /// The manifest digest (none for a docker-archive).
    pub manifest_digest: Option<Sha256Digest>,
    pub config_digest: Sha256Digest,
    pub platform: Platform,
    pub config: ImageConfig,
    pub layers: Vec<Layer>,
    store: Store,
}

/// Reads whole JSON documents with verification and a size cap.
struct Reader<'a> {
    name: &'a str,
    store: &'a Store,
}

impl Reader<'_> {
    fn read_verified(
        &self,
        what: &'static str,
        loc: &BlobLocation,
        digest: Option<&Sha256Digest>,
        size: Option<u64>,
    ) -> Result<Vec<u8>, ImageError> {
        let label = loc_label(loc);
        let (raw, stored) = self
            .store
            .open_blob(loc)
            .map_err(|source| ImageError::Read {
                image: self.name.to_string(),
                what,
                name: label.clone(),
                source,
            })?
            .ok_or_else(|| ImageError::Missing {
                image: self.name.to_string(),
                what,
                name: label.clone(),
            })?;
        let too_large = || ImageError::TooLarge {
            image: self.name.to_string(),
            what,
            name: label.clone(),
            max: MAX_JSON,
        };
        if size.unwrap_or(stored) > MAX_JSON {
            return Err(too_large());
        }
        let mut reader: Box<dyn Read> = match digest {
            Some(d) => Box::new(VerifyingReader::new(raw, d.clone(), size)),
            None => raw,
        };
        let mut buf = Vec::new();
        (&mut reader)
            .take(MAX_JSON + 1)
            .read_to_end(&mut buf)
            .map_err(|source| match digest_error(&source) {
                Some(source) => ImageError::Verify {
                    image: self.name.to_string(),
                    what,
                    name: label.clone(),
                    source,
                },
                None => ImageError::Read {
                    image: self.name.to_string(),
                    what,
                    name: label.clone(),
                    source,
                },
            })?;
        if buf.len() as u64 > MAX_JSON {
            return Err(too_large());
        }
        Ok(buf)
    }

    fn json<T: for<'de> Deserialize<'de>>(
        &self,
        what: &'static str,
        loc: &BlobLocation,
        digest: Option<&Sha256Digest>,
        size: Option<u64>,
    ) -> Result<T, ImageError> {
        let bytes = self.read_verified(what, loc, digest, size)?;
        serde_json::from_slice(&bytes).map_err(|source| ImageError::Json {
            image: self.name.to_string(),
            what,
            name: loc_label(loc),
            source,
        })
    }

    /// Reads an index or a manifest (as [`Self::json`]) and refuses it
    /// unless it is only that, as its descriptor's `declared` media type
    /// says (see [`DocumentShape`]).
    fn document<T: for<'de> Deserialize<'de>>(
        &self,
        kind: DocumentKind,
        loc: &BlobLocation,
        digest: Option<&Sha256Digest>,
        size: Option<u64>,
        declared: Option<&str>,
    ) -> Result<T, ImageError> {
        let what = kind.what();
        let bytes = self.read_verified(what, loc, digest, size)?;
        let malformed = |source| ImageError::Json {
            image: self.name.to_string(),
            what,
            name: loc_label(loc),
            source,
        };
        let shape: DocumentShape = serde_json::from_slice(&bytes).map_err(malformed)?;
        if let Some(problem) = shape.problem(kind, declared) {
            return Err(ImageError::Invalid {
                image: self.name.to_string(),
                reason: format!("{what} {} {problem}", loc_label(loc)),
            });
        }
        serde_json::from_slice(&bytes).map_err(malformed)
    }

    fn descriptor_digest(
        &self,
        what: &'static str,
        d: &Descriptor,
    ) -> Result<Sha256Digest, ImageError> {
        Sha256Digest::parse(&d.digest).map_err(|source| ImageError::BadDigest {
            image: self.name.to_string(),
            what,
            name: format!("{:?}", d.digest),
            source,
        })
    }
}

/// A blob's name in messages. Member names come from the archive's
/// `manifest.json`, so their control characters are escaped.
fn loc_label(loc: &BlobLocation) -> String {
    match loc {
        BlobLocation::Digest(d) => d.to_string(),
        BlobLocation::Member(m) => crate::printable(m).into_owned(),
    }
}

impl Image {
    /// Opens and resolves an image for `platform`.
    pub fn open(reference: &ImageRef, platform: &Platform) -> Result<Self, ImageError> {
        let name = reference.to_string();
        match reference {
            ImageRef::Oci { path, tag } => {
                let meta = std::fs::metadata(path).map_err(|source| ImageError::Open {
                    image: name.clone(),
                    path: path.clone(),
                    source,
                })?;
                if !meta.is_dir() {
                    return Err(ImageError::Invalid {
                        image: name,
                        reason: format!("{} is not an OCI layout directory", path.display()),
                    });
                }
                let store = Store::Dir(path.clone());
                Self::from_layout(name, store, tag.as_deref(), platform)
            }
            ImageRef::DockerArchive { path, reference } => {
                let members = index_archive(path).map_err(|source| ImageError::ArchiveIndex {
                    image: name.clone(),
                    source: crate::printable_io(source),
                })?;
                let store = Store::Archive {
                    path: path.clone(),
                    members,
                };
                Self::from_docker_archive(name, store, reference.as_deref(), platform)
            }
        }
    }

    fn from_layout(
        name: String,
        store: Store,
        tag: Option<&str>,
        platform: &Platform,
    ) -> Result<Self, ImageError> {
        let rd = Reader {
            name: &name,
            store: &store,
        };
        let layout: serde_json::Value = rd.json(
            "layout file",
            &BlobLocation::Member("oci-layout".into()),
            None,
            None,
        )?;
        if layout
            .get("imageLayoutVersion")
            .and_then(|v| v.as_str())
            .is_none()
        {
            return Err(ImageError::Invalid {
                image: name,
                reason: "oci-layout has no imageLayoutVersion".into(),
            });
        }
        let index: Index = rd.document(
            DocumentKind::Index,
            &BlobLocation::Member("index.json".into()),
            None,
            None,
            None,
        )?;
        let mut candidates: Vec<&Descriptor> = match tag {
            Some(t) => index
                .manifests
                .iter()
                .filter(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(t))
                .collect(),
            None => index.manifests.iter().collect(),
        };
        if candidates.is_empty() {
            let tags = tag_list(index.manifests.iter());
            return Err(ImageError::Select {
                image: name,
                reason: match tag {
                    Some(t) => format!("no image tagged {t:?} in the layout (tags: {tags})"),
                    None => "the layout holds no image".into(),
                },
            });
        }
        // Several untagged choices are fine only if they differ by platform.
        if candidates.len() > 1 && candidates.iter().any(|d| d.platform.is_none()) {
            let tags = tag_list(candidates.iter().copied());
            return Err(ImageError::Select {
                image: name,
                reason: format!(
                    "the layout holds {} images: name one with :TAG (tags: {tags})",
                    candidates.len(),
                ),
            });
        }
        if candidates.len() > 1 {
            let rank = |d: &Descriptor| {
                (d.platform.as_ref()).and_then(|p| platform.rank(&descriptor_platform(p)))
            };
            let best = candidates.iter().filter_map(|d| rank(d)).max();
            candidates.retain(|d| best.is_some() && rank(d) == best);
        }
        let Some(first) = candidates.first() else {
            return Err(ImageError::Platform {
                image: name,
                reason: format!("no image for platform {platform}"),
            });
        };
        let manifest_desc = resolve_descriptor(&rd, first, platform, 0)?;
        let manifest_digest = rd.descriptor_digest("manifest", &manifest_desc)?;
        let manifest: Manifest = rd.document(
            DocumentKind::Manifest,
            &BlobLocation::Digest(manifest_digest.clone()),
            Some(&manifest_digest),
            Some(manifest_desc.size),
            Some(&manifest_desc.media_type),
        )?;
        if !CONFIG_TYPES.contains(&manifest.config.media_type.as_str()) {
            return Err(ImageError::MediaType {
                image: name,
                what: "config",
                name: crate::printable(&manifest.config.digest).into_owned(),
                media_type: manifest.config.media_type.clone(),
            });
        }
        let config_digest = rd.descriptor_digest("config", &manifest.config)?;
        let config: ImageConfig = rd.json(
            "config",
            &BlobLocation::Digest(config_digest.clone()),
            Some(&config_digest),
            Some(manifest.config.size),
        )?;
        let diff_ids = check_config(&name, &config, &config_digest, manifest.layers.len())?;
        let mut layers = Vec::with_capacity(manifest.layers.len());
        for (desc, diff_id) in manifest.layers.iter().zip(diff_ids) {
            let digest = rd.descriptor_digest("layer", desc)?;
            let compression =
                layer_compression(&desc.media_type).ok_or_else(|| ImageError::MediaType {
                    image: name.clone(),
                    what: "layer",
                    name: digest.to_string(),
                    media_type: desc.media_type.clone(),
                })?;
            if desc.media_type.contains("nondistributable") {
                log::info!("{name}: layer {digest} is non-distributable; using the local blob");
            }
            layers.push(Layer {
                location: BlobLocation::Digest(digest.clone()),
                digest: Some(digest),
                size: desc.size,
                media_type: desc.media_type.clone(),
                compression,
                diff_id,
            });
        }
        let image_platform = config_platform(&config);
        check_platform(&name, platform, &image_platform)?;
        Ok(Self {
            name,
            manifest_digest: Some(manifest_digest),
            config_digest,
            platform: image_platform,
            config,
            layers,
            store,
        })
    }

    fn from_docker_archive(
        name: String,
        store: Store,
        reference: Option<&str>,
        platform: &Platform,
    ) -> Result<Self, ImageError> {
        let rd = Reader {
            name: &name,
            store: &store,
        };
        let items: Option<Vec<ArchiveItem>> = rd.json(
            "manifest",
            &BlobLocation::Member("manifest.json".into()),
            None,
            None,
        )?;
        let items = items.unwrap_or_default();
        let item = match reference {
            Some(r) => {
                let want = if r.rsplit('/').next().is_some_and(|last| last.contains(':')) {
                    r.to_string()
                } else {
                    format!("{r}:latest")
                };
                // Docker Hub names are written in several spellings.
                let strip = |t: &str| {
                    let t = t.strip_prefix("docker.io/").unwrap_or(t);
                    t.strip_prefix("library/").unwrap_or(t).to_string()
                };
                items
                    .iter()
                    .find(|i| i.repo_tags.iter().any(|t| strip(t) == strip(&want)))
                    .ok_or_else(|| ImageError::Select {
                        image: name.clone(),
                        reason: format!("no image tagged {want:?} in the archive"),
                    })?
            }
            None if items.len() == 1 => &items[0],
            None => {
                return Err(ImageError::Select {
                    image: name.clone(),
                    reason: format!(
                        "the archive holds {} images: name one with :REF (tags: {})",
                        items.len(),
                        items
                            .iter()
                            .flat_map(|i| &i.repo_tags)
                            .map(|t| crate::printable(t))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
        };
        // Config and layer names are untrusted keys into the member map.
        // Where a name carries a digest (`<hex>.json`, `blobs/sha256/<hex>`)
        // the blob is verified against it.
        let config_member = normalise_member(&item.config);
        let config_digest = member_digest(&config_member);
        let config_bytes = rd.read_verified(
            "config",
            &BlobLocation::Member(config_member.clone()),
            config_digest.as_ref(),
            None,
        )?;
        let config: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|source| ImageError::Json {
                image: name.clone(),
                what: "config",
                name: config_member.clone(),
                source,
            })?;
        let config_digest = config_digest.unwrap_or_else(|| Sha256Digest::of(&config_bytes));
        let diff_ids = check_config(&name, &config, &config_digest, item.layers.len())?;
        let mut layers = Vec::new();
        for (member, diff_id) in item.layers.iter().zip(diff_ids) {
            let member = normalise_member(member);
            let size = match store.open(&member) {
                Ok(Some((_, size))) => size,
                Ok(None) => {
                    return Err(ImageError::Missing {
                        image: name.clone(),
                        what: "layer",
                        name: crate::printable(&member).into_owned(),
                    });
                }
                Err(source) => {
                    return Err(ImageError::Read {
                        image: name.clone(),
                        what: "layer",
                        name: crate::printable(&member).into_owned(),
                        source,
                    });
                }
            };
            layers.push(Layer {
                digest: member_digest(&member),
                size,
                media_type: String::new(),
                compression: Compression::Sniff,
                diff_id,
                location: BlobLocation::Member(member),
            });
        }
        let image_platform = config_platform(&config);
        check_platform(&name, platform, &image_platform)?;
        Ok(Self {
            name,
            manifest_digest: None,
            config_digest,
            platform: image_platform,
            config,
            layers,
            store,
        })
    }

    /// Opens a layer's raw (still compressed) blob, verified by size and
    /// digest where the format names them. The check completes when the
    /// reader reaches end of stream.
    pub fn open_layer(&self, layer: &Layer) -> Result<BlobReader, ImageError> {
        let raw = self.open_layer_unverified(layer)?;
        Ok(match &layer.digest {
            Some(d) => Box::new(VerifyingReader::new(raw, d.clone(), Some(layer.size))),
            None => raw,
        })
    }

    /// Opens a layer's raw blob without verifying it: the caller must check
    /// `layer.size` and `layer.digest` itself (the threaded unpack does,
    /// hashing on whichever thread is free).
    pub(crate) fn open_layer_unverified(&self, layer: &Layer) -> Result<BlobReader, ImageError> {
        let label = loc_label(&layer.location);
        let (raw, _) = self
            .store
            .open_blob(&layer.location)
            .map_err(|source| ImageError::Read {
                image: self.name.clone(),
                what: "layer",
                name: label.clone(),
                source,
            })?
            .ok_or_else(|| ImageError::Missing {
                image: self.name.clone(),
                what: "layer",
                name: label,
            })?;
        Ok(raw)
    }
}

/// `blobs/sha256/<hex>` or `<hex>.json` / `<hex>/layer.tar`-style names
/// that embed a digest of their content. Legacy `<id>/layer.tar` ids are
/// not content digests, so only the first two forms count.
fn member_digest(member: &str) -> Option<Sha256Digest> {
    if let Some(hex) = member.strip_prefix("blobs/sha256/") {
        return Sha256Digest::parse(&format!("sha256:{hex}")).ok();
    }
    let hex = member.strip_suffix(".json")?;
    Sha256Digest::parse(&format!("sha256:{hex}")).ok()
}

/// The `ref.name` tags of index entries for a message, their control
/// characters escaped.
fn tag_list<'a>(entries: impl Iterator<Item = &'a Descriptor>) -> String {
    entries
        .filter_map(|d| d.annotations.get(REF_NAME))
        .map(|t| crate::printable(t))
        .collect::<Vec<_>>()
        .join(", ")
}

fn descriptor_platform(p: &DescriptorPlatform) -> Platform {
    Platform::new(&p.os, &p.architecture, p.variant.as_deref())
}

fn config_platform(c: &ImageConfig) -> Platform {
    Platform::new(&c.os, &c.architecture, c.variant.as_deref())
}

fn check_platform(name: &str, want: &Platform, got: &Platform) -> Result<(), ImageError> {
    if want.matches(got) {
        Ok(())
    } else {
        Err(ImageError::Platform {
            image: name.to_string(),
            reason: format!("image is for {got}, not {want}"),
        })
    }
}

/// Validates `rootfs` and returns the parsed diff_ids.
fn check_config(
    name: &str,
    config: &ImageConfig,
    digest: &Sha256Digest,
    layers: usize,
) -> Result<Vec<Sha256Digest>, ImageError> {
    if config.rootfs.typ != "layers" {
        return Err(ImageError::Invalid {
            image: name.to_string(),
            reason: format!(
                "config {digest}: rootfs.type is {:?}, not \"layers\"",
                config.rootfs.typ
            ),
        });
    }
    if config.rootfs.diff_ids.len() != layers {
        return Err(ImageError::Invalid {
            image: name.to_string(),
            reason: format!(
                "config {digest} lists {} diff_ids for {layers} layers",
                config.rootfs.diff_ids.len()
            ),
        });
    }
    config
        .rootfs
        .diff_ids
        .iter()
        .map(|d| {
            Sha256Digest::parse(d).map_err(|source| ImageError::BadDigest {
                image: name.to_string(),
                what: "diff_id",
                name: format!("{d:?}"),
                source,
            })
        })
        .collect()
}

/// Follows nested indexes down to the first manifest for `platform`.
fn resolve_descriptor(
    rd: &Reader<'_>,
    desc: &Descriptor,
    platform: &Platform,
    depth: u32,
) -> Result<Descriptor, ImageError> {
    if MANIFEST_TYPES.contains(&desc.media_type.as_str()) {
        return Ok(desc.clone());
    }
    if !INDEX_TYPES.contains(&desc.media_type.as_str()) {
        return Err(ImageError::MediaType {
            image: rd.name.to_string(),
            what: "manifest",
            name: crate::printable(&desc.digest).into_owned(),
            media_type: desc.media_type.clone(),
        });
    }
    if depth >= 8 {
        return Err(ImageError::Invalid {
            image: rd.name.to_string(),
            reason: "image indexes nested more than 8 deep".into(),
        });
    }
    let digest = rd.descriptor_digest("index", desc)?;
    let index: Index = rd.document(
        DocumentKind::Index,
        &BlobLocation::Digest(digest.clone()),
        Some(&digest),
        Some(desc.size),
        Some(&desc.media_type),
    )?;
    // The best fitting entry, the first of equals (image-index.md: first
    // match wins); entries of unknown media type (attestations, artifacts)
    // are skipped, never an error. An entry without a platform fits as a
    // platform without variant does.
    let mut best: Option<(u32, &Descriptor)> = None;
    for entry in &index.manifests {
        let known = MANIFEST_TYPES.contains(&entry.media_type.as_str())
            || INDEX_TYPES.contains(&entry.media_type.as_str());
        let rank = match &entry.platform {
            None => Some(0),
            Some(p) => platform.rank(&descriptor_platform(p)),
        };
        if let Some(rank) = rank.filter(|_| known)
            && best.is_none_or(|(b, _)| rank > b)
        {
            best = Some((rank, entry));
        }
    }
    if let Some((_, entry)) = best {
        return resolve_descriptor(rd, entry, platform, depth + 1);
    }
    let available: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|e| {
            e.platform
                .as_ref()
                .map(|p| descriptor_platform(p).to_string())
        })
        .collect();
    Err(ImageError::Select {
        image: rd.name.to_string(),
        reason: format!(
            "index {digest} has no image for {platform} (has: {})",
            available.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_refs() {
        assert_eq!(
            ImageRef::parse("oci:/tmp/img:latest").unwrap(),
            ImageRef::Oci {
                path: "/tmp/img".into(),
                tag: Some("latest".into())
            }
        );
        assert_eq!(
            ImageRef::parse("oci:img").unwrap(),
            ImageRef::Oci {
                path: "img".into(),
                tag: None
            }
        );
        assert_eq!(
            ImageRef::parse("docker-archive:a.tar:busybox:1.36").unwrap(),
            ImageRef::DockerArchive {
                path: "a.tar".into(),
                reference: Some("busybox:1.36".into())
            }
        );
        for bad in ["img", "docker:busybox", "oci:", "oci:x:", ""] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn platform_table() {
        let p = |s| Platform::parse(s).unwrap();
        assert_eq!(p("linux/x86_64"), p("linux/amd64"));
        assert_eq!(p("linux/amd64/v1"), p("linux/amd64"));
        assert_eq!(p("linux/aarch64"), p("linux/arm64"));
        assert_eq!(p("linux/arm64/v8"), p("linux/arm64"));
        for plain in ["8", "v8", "v8.0", "8.0", "V8"] {
            assert_eq!(
                Platform::parse(&format!("linux/arm64/{plain}")).unwrap(),
                p("linux/arm64"),
                "{plain}"
            );
        }
        for v9 in ["9", "9.0", "v9.0", "v9"] {
            let got = Platform::parse(&format!("linux/aarch64/{v9}")).unwrap();
            assert_eq!(got.to_string(), "linux/arm64/v9", "{v9}");
        }
        assert_eq!(p("linux/arm64/8.2").to_string(), "linux/arm64/v8.2");
        assert_eq!(p("linux/arm64/9.1").to_string(), "linux/arm64/v9.1");
        assert_eq!(p("linux/arm64/v8.2").to_string(), "linux/arm64/v8.2");
        // Unknown spellings stay as written (and so match only their equal).
        assert_eq!(p("linux/arm64/v10").to_string(), "linux/arm64/v10");
        assert_eq!(p("linux/arm64/8.x").to_string(), "linux/arm64/8.x");
        for n in ["5", "6", "7", "8"] {
            let got = Platform::parse(&format!("linux/arm/{n}")).unwrap();
            assert_eq!(got.to_string(), format!("linux/arm/v{n}"));
        }
        assert_eq!(p("linux/armhf"), p("linux/arm/v7"));
        assert_eq!(p("linux/arm"), p("linux/arm/v7"));
        assert!(p("linux/amd64").matches(&p("linux/amd64/v3")));
        assert_eq!(p("linux/amd64").rank(&p("linux/amd64/v3")), Some(0));
        assert_eq!(p("linux/amd64").rank(&p("linux/amd64")), Some(1));
        // Newer variants run older ones' code (containerd's order).
        let rank = |want, got| p(want).rank(&p(got));
        assert_eq!(rank("linux/amd64/v3", "linux/amd64"), Some(1));
        assert_eq!(rank("linux/amd64/v3", "linux/amd64/v2"), Some(2));
        assert_eq!(rank("linux/amd64/v3", "linux/amd64/v3"), Some(3));
        assert_eq!(rank("linux/amd64/v2", "linux/amd64/v3"), None);
        assert_eq!(rank("linux/amd64/v2", "linux/amd64/v9"), None);
        assert_eq!(rank("linux/arm/v7", "linux/arm/v6"), Some(6));
        assert_eq!(rank("linux/arm/v6", "linux/arm/v7"), None);
        assert_eq!(rank("linux/arm64/v8.2", "linux/arm64"), Some(800));
        assert_eq!(rank("linux/arm64/v8.2", "linux/arm64/v8.3"), None);
        assert_eq!(rank("linux/arm64/v9.0", "linux/arm64/v8.5"), Some(805));
        assert_eq!(rank("linux/arm64/v9.0", "linux/arm64/v8.6"), None);
        assert_eq!(rank("linux/arm64/v8.5", "linux/arm64/v9.0"), None);
        // The normalised forms rank as their canonical spellings.
        assert_eq!(rank("linux/arm64/9", "linux/arm64/v9"), Some(900));
        assert_eq!(rank("linux/arm64/v9", "linux/arm64/9.0"), Some(900));
        assert_eq!(rank("linux/arm64/9", "linux/arm64/8.5"), Some(805));
        assert_eq!(rank("linux/arm64/9", "linux/arm64/v8"), Some(800));
        assert_eq!(rank("linux/arm64/8.2", "linux/arm64/v8.1"), Some(801));
        assert_eq!(rank("linux/arm64/v8.1", "linux/arm64/8.2"), None);
        assert_eq!(rank("linux/arm64/v8.5", "linux/arm64/9"), None);
        assert_eq!(rank("linux/arm/7", "linux/arm/5"), Some(5));
        assert_eq!(
            rank("linux/riscv64/rva23", "linux/riscv64/rva23"),
            Some(u32::MAX)
        );
        assert_eq!(rank("linux/riscv64/rva23", "linux/riscv64"), None);
        // Outside the known orders, equal variants still match.
        assert_eq!(rank("linux/amd64/v5", "linux/amd64/v5"), Some(u32::MAX));
        assert_eq!(rank("linux/arm/v4", "linux/arm/v4"), Some(u32::MAX));
        assert_eq!(rank("linux/amd64/v5", "linux/amd64"), None);
        assert!(!p("linux/amd64").matches(&p("linux/arm64")));
        assert!(!p("linux/amd64").matches(&p("windows/amd64")));
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d"] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn media_types() {
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar+zstd"),
            Some(Compression::Zstd)
        );
        assert_eq!(
            layer_compression("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar+gzip+encrypted"),
            None
        );
        assert_eq!(
            layer_compression("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"),
            None
        );
        assert_eq!(layer_compression("text/plain"), None);
    }

    #[test]
    fn document_shapes() {
        let problem = |json: &str, kind, declared| {
            serde_json::from_str::<DocumentShape>(json)
                .unwrap()
                .problem(kind, declared)
        };
        let (oci_m, oci_i) = (MANIFEST_TYPES[0], INDEX_TYPES[0]);
        let (docker_m, docker_l) = (MANIFEST_TYPES[1], INDEX_TYPES[1]);
        use DocumentKind::{Index as I, Manifest as M};
        // Each kind as itself, with or without its own mediaType.
        let m = r#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        assert_eq!(problem(m, M, Some(oci_m)), None);
        let dm =
            format!(r#"{{"schemaVersion":2,"mediaType":"{docker_m}","config":{{}},"layers":[]}}"#);
        assert_eq!(problem(&dm, M, Some(docker_m)), None);
        let dl = format!(r#"{{"schemaVersion":2,"mediaType":"{docker_l}","manifests":[]}}"#);
        assert_eq!(problem(&dl, I, Some(docker_l)), None);
        assert_eq!(problem(&dl, I, None), None);
        assert_eq!(
            problem(r#"{"schemaVersion":2,"manifests":[]}"#, I, None),
            None
        );
        // A field counts when present, whatever its value.
        assert_eq!(
            problem(
                r#"{"schemaVersion":2,"config":{},"layers":[],"manifests":null}"#,
                M,
                Some(oci_m)
            ),
            Some(r#"is also an index (it has "manifests")"#.into())
        );
        assert_eq!(
            problem(
                r#"{"schemaVersion":2,"manifests":[],"config":null}"#,
                I,
                Some(oci_i)
            ),
            Some(r#"is also a manifest (it has "config")"#.into())
        );
        // Own mediaType against the descriptor's, within a kind too.
        assert_eq!(
            problem(&dm, M, Some(oci_m)),
            Some(format!(
                "has mediaType {docker_m:?}, but its descriptor says {oci_m:?}"
            ))
        );
        assert_eq!(
            problem(&dm, I, None),
            Some(format!("has mediaType {docker_m:?}, not an image index's"))
        );
        assert_eq!(
            problem(r#"{"schemaVersion":1,"manifests":[]}"#, I, Some(oci_i)),
            Some("has schemaVersion 1".into())
        );
    }

    #[test]
    fn member_names() {
        assert_eq!(normalise_member("./a/../../b//c"), "b/c");
        let hex = "a".repeat(64);
        assert!(member_digest(&format!("blobs/sha256/{hex}")).is_some());
        assert!(member_digest(&format!("{hex}.json")).is_some());
        assert!(member_digest(&format!("{hex}/layer.tar")).is_none());
        assert!(member_digest("blobs/sha256/../x").is_none());
    }
}
