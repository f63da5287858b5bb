//! The appliance's images as one OCI image layout (`/berth/images`).
//!
//! Every image is resolved and verified with `berth-bundles` (manifest and
//! config digests by `Image::open`; each compressed blob's digest and size
//! by `Image::open_layer`), each layer is decompressed here and its
//! uncompressed sha256 checked against the config's `diff_id`, then
//! recompressed to zstd. Layers are keyed by diff_id, so a layer two images
//! share is stored once (and verified for each image).
//!
//! In the same pass every tar entry is read with the unpacker's own
//! reading (`berth_bundles::apply::read_entry`: names that climb out with
//! `..`, bad whiteouts, unreadable header fields, unsupported types,
//! hardlink targets), and file data reaching past the layer's end is
//! refused as the unpacker refuses it: a layer berth-init would refuse at
//! boot fails the build, naming image, layer and entry. `/etc/passwd` and
//! `/etc/group` are followed through the layers ([`ImageFacts`]) for the
//! build's check of each image unit's spec.
//!
//! The new config is the verified config re-serialized from the fields
//! berth-bundles reads (the execution parameters and `rootfs.diff_ids`,
//! unchanged): `history` and unknown fields are dropped, so the config
//! digest (the "image id") differs from the input's. The new manifest
//! names that config and the zstd blobs by their own digests.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use berth_bundles::Platform;
use berth_bundles::apply::{ApplyError, ReadEntry, hardlink_target, read_entry, tar_read_error};
use berth_bundles::digest::{Hasher, Sha256Digest};
use berth_bundles::image::{Compression, Image, ImageConfig, ImageError, ImageRef, Layer};
use berth_bundles::layer::{
    ZSTD_WINDOW_LOG_MAX, is_zstd_window_error, zstd_window_check, zstd_window_refusal,
};
use berth_bundles::sparse::SparseFile;
use berth_bundles::tar_guard::{SparseDone, SparseTarget, TarGuard};
use serde_json::json;

use super::tree::{Found, ImageTree, LinkTarget, Node, Refusal};

/// Why an image could not be packed.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("image {name} ({reference}): bad reference")]
    Reference {
        name: String,
        reference: String,
        source: Box<ImageError>,
    },
    #[error("image {name} ({reference})")]
    Open {
        name: String,
        reference: String,
        source: Box<ImageError>,
    },
    #[error("image {name}: open layer {index}")]
    OpenLayer {
        name: String,
        index: usize,
        source: Box<ImageError>,
    },
    #[error("image {name}: layer {index} ({what})")]
    Layer {
        name: String,
        index: usize,
        what: String,
        source: io::Error,
    },
    #[error(
        "image {name}: layer {index}: uncompressed content has digest {actual}, the config says {expected}"
    )]
    DiffId {
        name: String,
        index: usize,
        expected: String,
        actual: String,
    },
    #[error("image {name}: layer {index} has unsupported media type {media_type:?}")]
    MediaType {
        name: String,
        index: usize,
        media_type: String,
    },
    #[error("image {name}: layer {index}: the unpacker would refuse it")]
    Entry {
        name: String,
        index: usize,
        source: ApplyError,
    },
    #[error("write {path}")]
    Write { path: PathBuf, source: io::Error },
}

/// zstd level of recompressed layers: near the ratio of 19 for a fraction
/// of its time on small images; the init decompresses any level equally fast.
const LAYER_LEVEL: i32 = 12;

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// What was written for one image, for the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSummary {
    pub name: String,
    pub reference: String,
    pub layers: usize,
    /// Uncompressed tar bytes of its layers.
    pub unpacked: u64,
    /// Bytes of its zstd layers, config and manifest.
    pub stored: u64,
    /// Of `stored`, bytes of layers already stored for an earlier image.
    pub shared: u64,
}

/// A file of the image as its layers leave it, seen while they are read
/// (no unpack): what berth-init's user lookup reads at boot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ImageFile {
    /// No layer makes it, or a later one removes it.
    #[default]
    Absent,
    /// A regular file (symlinks to it followed) with these bytes.
    File(Vec<u8>),
    /// Something the build cannot read without unpacking: not a regular
    /// file, or one reached through a link whose target's name is not
    /// `passwd` or `group` (the only names whose bytes are kept).
    Other,
}

/// What the build knows of a packed image, for the checks of its units.
#[derive(Debug, Clone, Default)]
pub struct ImageFacts {
    pub config: ImageConfig,
    /// `/etc/passwd` and `/etc/group`, set when the last layer is read.
    pub passwd: ImageFile,
    pub group: ImageFile,
    /// Every path, as the layers leave it (for the units' programs).
    pub tree: ImageTree,
    /// The bytes of every regular file named `passwd` or `group`, by the
    /// path it landed at: `/etc/passwd` may be a link to one (Nix-built
    /// images link it into the store).
    fact_bytes: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl ImageFacts {
    /// Sets `passwd` and `group` from the tree the layers left.
    fn settle(&mut self) {
        let file = |facts: &ImageFacts, path: &[u8]| match facts.tree.resolve(path) {
            Found::Missing => ImageFile::Absent,
            _ => facts
                .tree
                .locate_file(path)
                .and_then(|(at, _)| facts.fact_bytes.get(&at))
                .map_or(ImageFile::Other, |bytes| ImageFile::File(bytes.clone())),
        };
        self.passwd = file(self, b"/etc/passwd");
        self.group = file(self, b"/etc/group");
        self.fact_bytes.clear();
    }
}

/// The names whose bytes [`ImageFacts`] keeps.
const FACT_NAMES: [&[u8]; 2] = [b"passwd", b"group"];

/// Bytes read of `/etc/passwd` or `/etc/group` at most, as berth-bundles'
/// user lookup reads them.
const FACT_FILE_MAX: u64 = 8 << 20;

/// A layout being written under `dir` (`blobs/sha256/…`, `index.json`).
pub struct LayoutWriter {
    dir: PathBuf,
    /// diff_id → (zstd digest, size).
    layers: BTreeMap<String, (Sha256Digest, u64)>,
    /// name → manifest descriptor JSON.
    index: BTreeMap<String, serde_json::Value>,
    /// name → what the image's units are checked against.
    facts: BTreeMap<String, ImageFacts>,
}

fn write_err(path: &Path) -> impl FnOnce(io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Write {
        path: path.to_owned(),
        source,
    }
}

impl LayoutWriter {
    pub fn new(dir: &Path) -> Result<Self, LayoutError> {
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(write_err(&blobs))?;
        Ok(LayoutWriter {
            dir: dir.to_owned(),
            layers: BTreeMap::new(),
            index: BTreeMap::new(),
            facts: BTreeMap::new(),
        })
    }

    /// What was seen of image `name` while it was packed.
    pub fn facts(&self, name: &str) -> Option<&ImageFacts> {
        self.facts.get(name)
    }

    fn blob_path(&self, digest: &Sha256Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }

    fn put_json(&self, value: &serde_json::Value) -> Result<(Sha256Digest, u64), LayoutError> {
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        let digest = Sha256Digest::of(&bytes);
        let path = self.blob_path(&digest);
        fs::write(&path, &bytes).map_err(write_err(&path))?;
        Ok((digest, bytes.len() as u64))
    }

    /// Resolves, verifies and stores the image `reference` as `name`.
    /// `progress` is told the layer being packed and the uncompressed bytes
    /// done so far (at its start, then about every MiB).
    pub fn add_image(
        &mut self,
        name: &str,
        reference: &str,
        base: &Path,
        progress: &mut dyn FnMut(&str, usize, usize, u64),
    ) -> Result<ImageSummary, LayoutError> {
        let mut parsed = ImageRef::parse(reference).map_err(|source| LayoutError::Reference {
            name: name.into(),
            reference: reference.into(),
            source: Box::new(source),
        })?;
        // Paths in the build manifest are relative to the manifest file.
        match &mut parsed {
            ImageRef::Oci { path, .. } | ImageRef::DockerArchive { path, .. } => {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        }
        self.add_parsed(name, reference, &parsed, progress)
    }

    /// [`LayoutWriter::add_image`] of a parsed reference (`reference` is
    /// what messages and the summary call it).
    pub fn add_parsed(
        &mut self,
        name: &str,
        reference: &str,
        parsed: &ImageRef,
        progress: &mut dyn FnMut(&str, usize, usize, u64),
    ) -> Result<ImageSummary, LayoutError> {
        let image =
            Image::open(parsed, &Platform::default()).map_err(|source| LayoutError::Open {
                name: name.into(),
                reference: reference.into(),
                source: Box::new(source),
            })?;
        let mut summary = ImageSummary {
            name: name.into(),
            reference: reference.into(),
            layers: image.layers.len(),
            unpacked: 0,
            stored: 0,
            shared: 0,
        };
        let mut descriptors = Vec::new();
        let mut facts = ImageFacts {
            config: image.config.clone(),
            ..ImageFacts::default()
        };
        for (index, layer) in image.layers.iter().enumerate() {
            let diff_id = layer.diff_id.to_string();
            let already = self.layers.get(&diff_id).cloned();
            let (digest, size, unpacked) = self.pack_layer(
                &image,
                name,
                index,
                layer,
                already.is_none(),
                &mut facts,
                &mut |done| progress(name, index, image.layers.len(), done),
            )?;
            let (digest, size) = match already {
                Some(stored) => {
                    summary.shared += stored.1;
                    stored
                }
                None => {
                    self.layers.insert(diff_id, (digest.clone(), size));
                    (digest, size)
                }
            };
            summary.unpacked += unpacked;
            summary.stored += size;
            descriptors.push(json!({
                "mediaType": LAYER_ZSTD,
                "digest": digest.to_string(),
                "size": size,
            }));
        }
        let config = serde_json::to_value(&image.config).unwrap_or_default();
        let (config_digest, config_size) = self.put_json(&config)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {
                "mediaType": CONFIG_TYPE,
                "digest": config_digest.to_string(),
                "size": config_size,
            },
            "layers": descriptors,
        });
        let (manifest_digest, manifest_size) = self.put_json(&manifest)?;
        facts.settle();
        self.facts.insert(name.into(), facts);
        summary.stored += config_size + manifest_size;
        let mut platform = json!({
            "architecture": image.platform.architecture,
            "os": image.platform.os,
        });
        if let Some(v) = &image.platform.variant {
            platform["variant"] = json!(v);
        }
        self.index.insert(
            name.into(),
            json!({
                "mediaType": MANIFEST_TYPE,
                "digest": manifest_digest.to_string(),
                "size": manifest_size,
                "platform": platform,
                "annotations": { "org.opencontainers.image.ref.name": name },
            }),
        );
        Ok(summary)
    }

    /// Reads one layer through verification; when `store`, writes it as a
    /// zstd blob. Returns (zstd digest, zstd size, uncompressed size); the
    /// digest and size are meaningless when not storing. Every tar entry is
    /// checked as the unpacker will check it at boot ([`check_entry`]) and
    /// `facts` follows the files it records.
    #[allow(clippy::too_many_arguments)]
    fn pack_layer(
        &self,
        image: &Image,
        name: &str,
        index: usize,
        layer: &Layer,
        store: bool,
        facts: &mut ImageFacts,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(Sha256Digest, u64, u64), LayoutError> {
        progress(0);
        let layer_err = |what: &str| {
            let what = what.to_owned();
            move |source| LayoutError::Layer {
                name: name.into(),
                index,
                what,
                source,
            }
        };
        if berth_bundles::image::layer_compression(&layer.media_type).is_none()
            && layer.compression != Compression::Sniff
        {
            return Err(LayoutError::MediaType {
                name: name.into(),
                index,
                media_type: layer.media_type.clone(),
            });
        }
        let mut raw = image
            .open_layer(layer)
            .map_err(|source| LayoutError::OpenLayer {
                name: name.into(),
                index,
                source: Box::new(source),
            })?;
        // The blob is copied whole first: its digest and size are checked
        // when the verifying reader reaches the end, which a decompressor
        // that stops at the end of its frame might never ask for.
        let raw_path = self.dir.join(format!("blobs/.raw-{index}.tmp"));
        {
            let mut f = File::create(&raw_path).map_err(write_err(&raw_path))?;
            io::copy(&mut raw, &mut f).map_err(layer_err("read and verify the blob"))?;
        }
        let result = self.recompress(name, index, layer, store, &raw_path, facts, progress);
        let _ = fs::remove_file(&raw_path);
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn recompress(
        &self,
        name: &str,
        index: usize,
        layer: &Layer,
        store: bool,
        raw_path: &Path,
        facts: &mut ImageFacts,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(Sha256Digest, u64, u64), LayoutError> {
        let layer_err = |what: &str| {
            let what = what.to_owned();
            move |source| LayoutError::Layer {
                name: name.into(),
                index,
                what,
                source,
            }
        };
        let f = File::open(raw_path).map_err(layer_err("reopen"))?;
        let mut raw = BufReader::with_capacity(1 << 16, f);
        let compression = match layer.compression {
            Compression::Sniff => {
                sniff(io::BufRead::fill_buf(&mut raw).map_err(layer_err("read"))?)
            }
            c => c,
        };
        let plain: Box<dyn Read> = match compression {
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(raw)),
            Compression::Zstd => {
                // The unpacker's window limit and words: the build recodes
                // the layer, but `berth-build unpack` of the same image
                // must not be the one to fail.
                let head = io::BufRead::fill_buf(&mut raw).map_err(layer_err("read"))?;
                zstd_window_check(head).map_err(|why| layer_err("zstd")(io::Error::other(why)))?;
                let mut d =
                    zstd::stream::read::Decoder::with_buffer(raw).map_err(layer_err("zstd"))?;
                d.window_log_max(ZSTD_WINDOW_LOG_MAX)
                    .map_err(layer_err("zstd"))?;
                Box::new(d)
            }
            Compression::None | Compression::Sniff => Box::new(raw),
        };
        // Written to a temporary name, renamed to its digest at the end.
        let tmp = self.dir.join(format!("blobs/.layer-{index}.tmp"));
        let encoder = if store {
            let f = File::create(&tmp).map_err(write_err(&tmp))?;
            let out = HashingWriter {
                inner: BufWriter::new(f),
                hasher: Hasher::default(),
            };
            Some(zstd::stream::write::Encoder::new(out, LAYER_LEVEL).map_err(write_err(&tmp))?)
        } else {
            None
        };
        // One pass: the tar parser reads the layer through the tee, which
        // hashes it (diff_id) and recompresses it; what follows the tar's
        // end is read through the tee too.
        let mut tee = Tee {
            inner: plain,
            diff: Hasher::default(),
            encoder,
            write_error: None,
            tail: None,
            progress,
        };
        let entries = check_entries(&mut tee, index, facts);
        let drained = io::copy(&mut tee, &mut io::sink());
        // File data the tar promised past the real end (into the zeros the
        // tee hands out after it) is a truncated layer to the unpacker.
        let entries = entries.and_then(|last| match last {
            Some(last) if last.offset + last.size > tee.diff.count() => {
                Err(ApplyError::Truncated {
                    path: last.path,
                    expected: last.size,
                    actual: tee.diff.count().saturating_sub(last.offset),
                })
            }
            _ => Ok(()),
        });
        if let Some(e) = tee.write_error.take() {
            let _ = fs::remove_file(&tmp);
            return Err(write_err(&tmp)(e));
        }
        if let Err(e) = drained {
            let _ = fs::remove_file(&tmp);
            // A later frame's window (the first one's was checked above).
            let e = if compression == Compression::Zstd && is_zstd_window_error(&e) {
                io::Error::other(zstd_window_refusal(None))
            } else {
                e
            };
            return Err(layer_err("read and verify")(e));
        }
        let unpacked = tee.diff.count();
        let actual = tee.diff.finish();
        if actual != layer.diff_id {
            let _ = fs::remove_file(&tmp);
            return Err(LayoutError::DiffId {
                name: name.into(),
                index,
                expected: layer.diff_id.to_string(),
                actual: actual.to_string(),
            });
        }
        // The content is the one the config names: a bad entry is the
        // image's, not a corruption on the way.
        if let Err(source) = entries {
            let _ = fs::remove_file(&tmp);
            return Err(LayoutError::Entry {
                name: name.into(),
                index,
                source,
            });
        }
        let encoder = tee.encoder;
        let Some(enc) = encoder else {
            return Ok((actual, 0, unpacked));
        };
        let mut out = enc.finish().map_err(write_err(&tmp))?;
        out.inner.flush().map_err(write_err(&tmp))?;
        let size = out.hasher.count();
        let digest = out.hasher.finish();
        let dest = self.blob_path(&digest);
        fs::rename(&tmp, &dest).map_err(write_err(&dest))?;
        Ok((digest, size, unpacked))
    }

    /// Writes `oci-layout` and `index.json` (images sorted by name).
    pub fn finish(self) -> Result<(), LayoutError> {
        let layout = self.dir.join("oci-layout");
        fs::write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(write_err(&layout))?;
        let index = json!({
            "schemaVersion": 2,
            "mediaType": INDEX_TYPE,
            "manifests": self.index.into_values().collect::<Vec<_>>(),
        });
        let path = self.dir.join("index.json");
        fs::write(&path, serde_json::to_vec(&index).unwrap_or_default()).map_err(write_err(&path))
    }
}

type LayerEncoder = zstd::stream::write::Encoder<'static, HashingWriter<BufWriter<File>>>;

/// Reads the uncompressed layer for the tar parser while hashing it and
/// feeding the zstd encoder. A write failure is kept apart from read
/// failures (it is the output's, not the image's).
struct Tee<'a> {
    inner: Box<dyn Read>,
    diff: Hasher,
    encoder: Option<LayerEncoder>,
    write_error: Option<io::Error>,
    /// Zeros still to hand out once the real stream has ended.
    tail: Option<u64>,
    progress: &'a mut dyn FnMut(u64),
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.write_error.is_some() {
            return Err(io::Error::other(
                "the recompressed layer could not be written",
            ));
        }
        if let Some(tail) = self.tail.as_mut() {
            let n = buf.len().min(usize::try_from(*tail).unwrap_or(usize::MAX));
            buf[..n].fill(0);
            *tail -= n as u64;
            return Ok(n);
        }
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            // As the unpacker reads a layer (berth_bundles::layer's
            // ZeroTail): umoci 0.4.7 ends a tar right after the last
            // entry's data, without padding or end-of-archive blocks; the
            // end reads as zeros up to the next block plus two blocks,
            // outside the diff_id and the stored layer.
            let count = self.diff.count();
            self.tail = Some((512 - count % 512) % 512 + 1024);
            return self.read(buf);
        }
        let before = self.diff.count();
        self.diff.update(&buf[..n]);
        if before >> 20 != self.diff.count() >> 20 {
            (self.progress)(self.diff.count());
        }
        if let Some(enc) = self.encoder.as_mut()
            && let Err(e) = enc.write_all(&buf[..n])
        {
            self.write_error = Some(e);
            return Err(io::Error::other(
                "the recompressed layer could not be written",
            ));
        }
        Ok(n)
    }
}

/// Reads every entry of layer `index`'s tar with the unpacker's own
/// reading (`berth_bundles::apply::read_entry`: every check it makes of
/// an entry before touching the filesystem), and follows the files of
/// [`ImageFacts`] through the layer.
/// Returns the last regular file's data (its end is checked against the
/// real end of the stream, as the unpacker does).
fn check_entries(
    reader: &mut dyn Read,
    index: usize,
    facts: &mut ImageFacts,
) -> Result<Option<FileData>, ApplyError> {
    let guard = TarGuard::new(reader);
    let sparse = guard.sparse_sink();
    let mut archive = tar::Archive::new(guard);
    archive.set_ignore_zeros(false);
    let mut entries = archive.entries().map_err(tar_read_error)?;
    let mut last = None;
    let mut pending: Option<SparseFact> = None;
    loop {
        // The reader skips a sparse entry's data on its way to the next
        // entry, filling in the bytes of a sparse passwd or group file.
        let next = entries.next();
        if let Some(SparseFact { at, path, keep }) = pending.take() {
            if let Some(Err(e)) = next {
                return Err(tar_read_error(e));
            }
            match sparse.borrow_mut().finish() {
                Some(SparseDone {
                    target: SparseTarget::Memory(bytes),
                    data: Some(_),
                    ..
                }) => {
                    if keep {
                        facts.fact_bytes.insert(at, bytes);
                    }
                }
                _ => return Err(ApplyError::SparseNotFollowed { path }),
            };
        }
        let Some(entry) = next else { break };
        let mut entry = entry.map_err(tar_read_error)?;
        // A sparse file's data starts after its map (an old GNU one's
        // extension blocks), where the tar crate does not count it.
        let data_start = sparse.borrow().data_start();
        // The PAX records as the reader kept them, split by their lengths
        // as the unpacker splits them.
        let raw_pax = (sparse.borrow_mut()).take_pax_records(entry.raw_header_position());
        let (data, fact) = check_entry(&mut entry, raw_pax.as_deref(), index, facts, data_start)?;
        if let Some(data) = data {
            last = Some(data);
        }
        if let Some((at, file, keep)) = fact {
            // Only the bytes of a file the build reads are kept (the
            // reader drops what falls past the end of the vector).
            let len = if keep {
                file.real_size.min(FACT_FILE_MAX)
            } else {
                0
            };
            let bytes = vec![0; len as usize];
            let path = String::from_utf8_lossy(&at).into_owned();
            if sparse
                .borrow_mut()
                .attach(SparseTarget::Memory(bytes), file.real_size)
                .is_err()
            {
                return Err(ApplyError::SparseNotFollowed { path });
            }
            pending = Some(SparseFact { at, path, keep });
        }
    }
    Ok(last)
}

/// Where a sparse file is in the tree, what it is, and whether it is a
/// `passwd` or `group` file whose bytes the build reads.
type SparseFactAt = (Vec<u8>, SparseFile, bool);

/// A sparse file the reader follows as the unpacker's does (so a layer
/// the boot would refuse is refused here too); a `passwd` or `group`
/// file's bytes come once the reader is past it.
struct SparseFact {
    at: Vec<u8>,
    path: String,
    keep: bool,
}

/// Where a regular file's data is in the uncompressed layer.
struct FileData {
    path: String,
    offset: u64,
    size: u64,
}

fn check_entry(
    entry: &mut tar::Entry<'_, TarGuard<&mut dyn Read>>,
    raw_pax: Option<&[u8]>,
    index: usize,
    facts: &mut ImageFacts,
    sparse_start: Option<u64>,
) -> Result<(Option<FileData>, Option<SparseFactAt>), ApplyError> {
    let (path, read) = read_entry(entry, raw_pax)?;
    let (parent, base) = match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[][..], &path[..]),
    };
    let kind = match read {
        ReadEntry::Skip => return Ok((None, None)),
        // A loop on the way: the unpacker's own error (apply.rs).
        ReadEntry::Opaque => {
            facts
                .tree
                .opaque(parent, index)
                .map_err(|_| ApplyError::Fs {
                    op: "open directory",
                    path: String::from_utf8_lossy(parent).into_owned(),
                    source: rustix::io::Errno::LOOP.into(),
                })?;
            return Ok((None, None));
        }
        ReadEntry::Whiteout => {
            let mut removed = parent.to_vec();
            if !removed.is_empty() {
                removed.push(b'/');
            }
            removed.extend_from_slice(base.get(b".wh.".len()..).unwrap_or_default());
            facts
                .tree
                .whiteout(&removed, index)
                .map_err(|_| ApplyError::Fs {
                    op: "resolve parent directory",
                    path: String::from_utf8_lossy(parent).into_owned(),
                    source: rustix::io::Errno::LOOP.into(),
                })?;
            return Ok((None, None));
        }
        ReadEntry::Create { kind, meta } => (kind, meta.sparse().cloned()),
    };
    let (kind, sparse) = kind;
    let shown = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
    // A hardlink is its target (read_entry checked it names one), which
    // must exist when the unpacker links it.
    let link_target = if kind == tar::EntryType::Link {
        let raw = entry.link_name_bytes().unwrap_or_default().into_owned();
        // Cleaned as the unpacker cleans it (`..` lexically, before any
        // symlink is followed).
        let target = hardlink_target(&path, &raw)?;
        match facts.tree.link_target(&target) {
            Ok(found) => Some(found),
            Err(LinkTarget::TooManyLinks) => {
                return Err(ApplyError::Fs {
                    op: "resolve hardlink target",
                    path: shown(&raw),
                    source: rustix::io::Errno::LOOP.into(),
                });
            }
            Err(missing_or_dir) => {
                return Err(ApplyError::Hardlink {
                    path: shown(&path),
                    target: shown(&raw),
                    reason: match missing_or_dir {
                        LinkTarget::Directory => "is a directory",
                        _ => "does not exist",
                    },
                });
            }
        }
    } else {
        None
    };
    let node = match (kind, &link_target) {
        (tar::EntryType::Directory, _) => Node::Dir,
        (tar::EntryType::Symlink, _) => {
            Node::Symlink(entry.link_name_bytes().unwrap_or_default().into_owned())
        }
        (tar::EntryType::Link, Some((_, node))) => node.clone(),
        (tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Link, _) => {
            Node::File {
                mode: entry.header().mode().unwrap_or(0),
            }
        }
        _ => Node::Other,
    };
    let bytes = match (kind, link_target) {
        (tar::EntryType::Regular, _) if FACT_NAMES.contains(&base) => {
            let read_error = |source| ApplyError::ReadData {
                path: String::from_utf8_lossy(&path).into_owned(),
                source,
            };
            if sparse.is_some() {
                // Filled in by the layer reader (check_entries).
                None
            } else {
                let mut bytes = Vec::new();
                entry
                    .take(FACT_FILE_MAX)
                    .read_to_end(&mut bytes)
                    .map_err(read_error)?;
                Some(bytes)
            }
        }
        (tar::EntryType::Link, Some((target, Node::File { .. }))) => {
            facts.fact_bytes.get(&target).cloned()
        }
        _ => None,
    };
    // Where the unpacker would find no directory to create it in, it
    // refuses the entry: so does the build.
    let at = facts.tree.create(&path, node, index).map_err(|refusal| {
        let (path, parent) = (shown(&path), shown(parent));
        match refusal {
            Refusal::ParentNotDir => ApplyError::ParentNotDirectory { path, parent },
            Refusal::DanglingParent => ApplyError::DanglingParent { path, parent },
            Refusal::TooManyLinks => ApplyError::Fs {
                op: "resolve parent",
                path,
                source: rustix::io::Errno::LOOP.into(),
            },
        }
    })?;
    let mut sparse_at = None;
    if let Some(at) = at {
        // Whatever was at `at` before is replaced, its bytes with it.
        match bytes {
            Some(bytes) => facts.fact_bytes.insert(at.clone(), bytes),
            None => facts.fact_bytes.remove(&at),
        };
        if kind == tar::EntryType::Regular
            && let Some(file) = &sparse
        {
            sparse_at = Some((at, file.clone(), FACT_NAMES.contains(&base)));
        }
    }
    let data = (kind == tar::EntryType::Regular).then(|| FileData {
        path: String::from_utf8_lossy(&path).into_owned(),
        offset: sparse_start.unwrap_or_else(|| entry.raw_file_position()),
        // A sparse file's stored data (map and chunks), not its real size.
        size: sparse.map_or_else(|| entry.size(), |s| s.stored_size),
    });
    Ok((data, sparse_at))
}

struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Compression of a docker-archive layer, by its magic number.
fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    enum E<'a> {
        File(&'a str, &'a [u8]),
        Link(&'a str, &'a str),
        Hard(&'a str, &'a str),
        Dir(&'a str),
    }

    fn layer(entries: &[E<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            let (name, data, link): (&str, &[u8], Option<&str>) = match e {
                E::File(n, d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    (n, d, None)
                }
                E::Link(n, t) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    (n, b"", Some(t))
                }
                E::Hard(n, t) => {
                    h.set_entry_type(tar::EntryType::Link);
                    (n, b"", Some(t))
                }
                E::Dir(n) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    (n, b"", None)
                }
            };
            h.set_size(data.len() as u64);
            match link {
                Some(t) => b.append_link(&mut h, name, t).unwrap(),
                None => b.append_data(&mut h, name, data).unwrap(),
            }
        }
        b.into_inner().unwrap()
    }

    fn facts_of(layers: &[Vec<u8>]) -> ImageFacts {
        let mut facts = ImageFacts::default();
        for (i, l) in layers.iter().enumerate() {
            check_entries(&mut l.as_slice(), i, &mut facts).unwrap();
        }
        facts.settle();
        facts
    }

    const USERS: &[u8] = b"root:x:0:0::/root:/bin/sh\n";

    #[test]
    fn user_files_are_read_through_links_as_the_boot_reads_them() {
        // A Nix-built image: /etc/passwd links into the store.
        let f = facts_of(&[layer(&[
            E::File("nix/store/abc-fake-nss/etc/passwd", USERS),
            E::File("nix/store/abc-fake-nss/etc/group", b"root:x:0:\n"),
            E::Link("etc/passwd", "/nix/store/abc-fake-nss/etc/passwd"),
            E::Link("etc/group", "../nix/store/abc-fake-nss/etc/group"),
        ])]);
        assert_eq!(f.passwd, ImageFile::File(USERS.to_vec()));
        assert_eq!(f.group, ImageFile::File(b"root:x:0:\n".to_vec()));
        // /etc itself a link; /etc/passwd a hardlink.
        let f = facts_of(&[layer(&[
            E::File("usr/share/base/passwd", USERS),
            E::Link("etc", "private/etc"),
            E::Dir("private/etc"),
            E::Hard("private/etc/passwd", "usr/share/base/passwd"),
        ])]);
        assert_eq!(f.passwd, ImageFile::File(USERS.to_vec()));
        assert_eq!(f.group, ImageFile::Absent);
        // A link to a file of another name: its bytes were not kept, the
        // user is looked up at boot only.
        let f = facts_of(&[layer(&[
            E::File("usr/share/users.txt", USERS),
            E::Link("etc/passwd", "../usr/share/users.txt"),
            E::Dir("etc/group"),
        ])]);
        assert_eq!(f.passwd, ImageFile::Other);
        assert_eq!(f.group, ImageFile::Other);
    }

    /// A sparse `etc/passwd`: USERS at 0, `tail` at 4096, 5000 bytes.
    fn sparse_users() -> Vec<u8> {
        let mut want = vec![0u8; 5000];
        want[..USERS.len()].copy_from_slice(USERS);
        want[4096..4100].copy_from_slice(b"tail");
        want
    }

    /// `etc/passwd` as an old GNU sparse member (typeflag S).
    fn old_gnu_passwd() -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_path("etc/passwd").unwrap();
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(516);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.set_real_size(5000);
        for (i, (offset, length)) in [(0, 512), (4096, 4), (5000, 0)].into_iter().enumerate() {
            gnu.sparse[i].set_offset(offset);
            gnu.sparse[i].set_length(length);
        }
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        let mut data = USERS.to_vec();
        data.resize(512, 0);
        data.extend_from_slice(b"tail");
        out.extend_from_slice(&data);
        out.resize(out.len().next_multiple_of(512) + 1024, 0);
        out
    }

    /// `etc/passwd` as a PAX 0.1 sparse member with `map`.
    fn pax_passwd(map: &str, numblocks: &str) -> Vec<u8> {
        let mut records = Vec::new();
        for (k, v) in [
            ("GNU.sparse.major", "0"),
            ("GNU.sparse.minor", "1"),
            ("GNU.sparse.name", "etc/passwd"),
            ("GNU.sparse.size", "5000"),
            ("GNU.sparse.numblocks", numblocks),
            ("GNU.sparse.map", map),
        ] {
            let body = format!(" {k}={v}\n");
            let mut len = body.len() + 1;
            while len != body.len() + len.to_string().len() {
                len = body.len() + len.to_string().len();
            }
            records.extend_from_slice(format!("{len}{body}").as_bytes());
        }
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_mode(0o644);
        h.set_size(records.len() as u64);
        b.append_data(&mut h, "PaxHeaders/passwd", &records[..])
            .unwrap();
        let mut data = USERS.to_vec();
        data.extend_from_slice(b"tail");
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, "GNUSparseFile.0/passwd", &data[..])
            .unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn sparse_user_files_are_read_as_the_unpacker_writes_them() {
        let map = format!("0,{},4096,4", USERS.len());
        for (what, tar) in [
            ("old GNU", old_gnu_passwd()),
            ("pax 0.1", pax_passwd(&map, "2")),
        ] {
            let f = facts_of(&[tar]);
            assert_eq!(f.passwd, ImageFile::File(sparse_users()), "{what}");
        }
        // Hardlinked: the same bytes.
        let mut two = pax_passwd(&map, "2");
        two.truncate(two.len() - 1024);
        two.extend(layer(&[E::Hard("etc/group", "etc/passwd")]));
        let f = facts_of(&[two]);
        assert_eq!(f.group, ImageFile::File(sparse_users()));
        // A bad map is the unpacker's refusal, by name.
        let bad = pax_passwd("0,30,20,4", "2");
        let Err(err) = check_entries(&mut bad.as_slice(), 0, &mut ImageFacts::default()) else {
            panic!("an overlapping map was taken");
        };
        let mut msg = err.to_string();
        let mut cur = std::error::Error::source(&err);
        while let Some(c) = cur {
            msg.push_str(&format!(": {c}"));
            cur = c.source();
        }
        assert!(
            msg.contains("tar entry \"etc/passwd\": bad sparse file: sparse map chunk 1 at 20"),
            "{msg}"
        );
    }

    #[test]
    fn user_files_follow_later_layers() {
        let base = layer(&[E::File("etc/passwd", USERS), E::File("etc/group", b"g\n")]);
        // Whited out, or its link's target whited out: absent.
        let gone = layer(&[E::File("etc/.wh.passwd", b"")]);
        let f = facts_of(&[base.clone(), gone]);
        assert_eq!(
            (f.passwd, f.group),
            (ImageFile::Absent, ImageFile::File(b"g\n".to_vec()))
        );
        let f = facts_of(&[
            layer(&[
                E::File("srv/passwd", USERS),
                E::Link("etc/passwd", "/srv/passwd"),
            ]),
            layer(&[E::File("srv/.wh.passwd", b"")]),
        ]);
        assert_eq!(f.passwd, ImageFile::Absent);
        // Replaced: by new bytes, by a directory, by a hardlink to a file
        // whose bytes were not kept (the old bytes must not stay).
        let f = facts_of(&[base.clone(), layer(&[E::File("etc/passwd", b"new\n")])]);
        assert_eq!(f.passwd, ImageFile::File(b"new\n".to_vec()));
        let f = facts_of(&[
            base.clone(),
            layer(&[E::File("etc/.wh.passwd", b""), E::Dir("etc/passwd")]),
        ]);
        assert_eq!(f.passwd, ImageFile::Other);
        let f = facts_of(&[
            base,
            layer(&[E::File("usr/x", b"x\n"), E::Hard("etc/passwd", "usr/x")]),
        ]);
        assert_eq!(f.passwd, ImageFile::Other);
    }
}
