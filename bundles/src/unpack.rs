//! Image → runtime bundle: `DEST/rootfs` from the layers, `DEST/config.json`
//! from the config, like `umoci unpack`.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::apply::{ApplyError, LayerStats, Rootfs, remove_dir_tree};
use crate::image::{Image, ImageError, ImageRef, Layer, Platform};
use crate::layer::{Cancel, LayerError, LayerOptions, unpack_layer_with};
use crate::spec::{Overrides, SpecError, runtime_spec};

/// Errors of unpacking an image into a bundle.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error("{path}: destination exists and is not an empty directory")]
    DestNotEmpty { path: PathBuf },
    #[error("create {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("make {path} private (mode 0700)")]
    Private {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Root(#[from] ApplyError),
    #[error("{image}: runtime spec")]
    Spec {
        image: String,
        #[source]
        source: SpecError,
    },
    #[error("write {path}")]
    WriteSpec {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The unpack failed (`source`), and removing what it had written
    /// failed too: a partial bundle is left at `path`.
    #[error("the unpack failed and left a partial bundle in {path} (removing it: {cleanup})")]
    Cleanup {
        path: PathBuf,
        /// Why the removal failed, on one line.
        cleanup: String,
        #[source]
        source: Box<UnpackError>,
    },
}

/// Progress events for a caller that shows them.
#[derive(Debug)]
pub enum Progress<'a> {
    LayerStart {
        index: usize,
        count: usize,
        layer: &'a Layer,
    },
    LayerDone {
        index: usize,
        count: usize,
        stats: &'a LayerStats,
    },
}

/// Options of [`unpack_bundle`].
#[derive(Default)]
pub struct UnpackOptions<'a> {
    pub platform: Platform,
    pub overrides: Overrides,
    /// How each layer is verified and unpacked.
    pub layer: LayerOptions,
    pub progress: Option<&'a mut dyn FnMut(Progress<'_>)>,
}

/// What an unpack did.
#[derive(Debug)]
pub struct UnpackReport {
    pub image: Image,
    pub layers: Vec<LayerStats>,
}

/// Applies every layer of `image`, in order, to `rootfs`, with the
/// default [`LayerOptions`].
pub fn unpack_rootfs(
    image: &Image,
    rootfs: &Rootfs,
    progress: Option<&mut dyn FnMut(Progress<'_>)>,
) -> Result<Vec<LayerStats>, LayerError> {
    unpack_rootfs_with(image, rootfs, &LayerOptions::default(), progress)
}

/// Applies every layer of `image`, in order, to `rootfs`.
pub fn unpack_rootfs_with(
    image: &Image,
    rootfs: &Rootfs,
    opts: &LayerOptions,
    mut progress: Option<&mut dyn FnMut(Progress<'_>)>,
) -> Result<Vec<LayerStats>, LayerError> {
    // The root starts at time 0 (as with umoci); layers that do not
    // declare it keep it there.
    rootfs
        .reset_root_times()
        .map_err(|source| LayerError::Root {
            image: image.name.clone(),
            source,
        })?;
    let count = image.layers.len();
    let mut all = Vec::with_capacity(count);
    for (index, layer) in image.layers.iter().enumerate() {
        if opts.cancel.is_some_and(Cancel::raised) {
            return Err(cancelled(image, layer));
        }
        if let Some(p) = progress.as_deref_mut() {
            p(Progress::LayerStart {
                index,
                count,
                layer,
            });
        }
        let stats = unpack_layer_with(image, layer, rootfs, opts)?;
        if let Some(p) = progress.as_deref_mut() {
            p(Progress::LayerDone {
                index,
                count,
                stats: &stats,
            });
        }
        all.push(stats);
    }
    Ok(all)
}

/// Unpacks `reference` into the bundle directory `dest`, which must not
/// exist or be empty (its missing parents are created). On failure,
/// whatever this call created is removed, parents included.
pub fn unpack_bundle(
    reference: &ImageRef,
    dest: &Path,
    opts: UnpackOptions<'_>,
) -> Result<UnpackReport, UnpackError> {
    let image = Image::open(reference, &opts.platform)?;
    // What the unpack made and a failure removes: DEST and its missing
    // parents, from the topmost one (as `berth-build build` does for
    // OUTDIR, and as umoci creates a bundle's parents).
    // The mode of a DEST that was there, put back if the unpack fails.
    let mut old_mode = None;
    let made: Option<PathBuf> = match fs::read_dir(dest) {
        Ok(mut entries) => {
            if entries.next().is_some() || !fs::symlink_metadata(dest).is_ok_and(|m| m.is_dir()) {
                return Err(UnpackError::DestNotEmpty { path: dest.into() });
            }
            // As for a DEST made here (and as umoci does): the image's
            // setuid programs and device nodes are for root alone.
            let mode = fs::symlink_metadata(dest).map(|m| m.permissions().mode() & 0o7777);
            fs::set_permissions(dest, fs::Permissions::from_mode(0o700)).map_err(|source| {
                UnpackError::Private {
                    path: dest.into(),
                    source,
                }
            })?;
            old_mode = mode.ok();
            None
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let top = topmost_missing(dest);
            if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).map_err(|source| {
                    remove_made(dest, &top);
                    UnpackError::Create {
                        path: parent.into(),
                        source,
                    }
                })?;
            }
            fs::DirBuilder::new()
                .mode(0o700)
                .create(dest)
                .map_err(|source| {
                    remove_made(dest, &top);
                    UnpackError::Create {
                        path: dest.into(),
                        source,
                    }
                })?;
            Some(top)
        }
        Err(_) => return Err(UnpackError::DestNotEmpty { path: dest.into() }),
    };
    let res = fill_bundle(&image, dest, opts);
    match res {
        Ok(layers) => Ok(UnpackReport { image, layers }),
        Err(e) => {
            let cleanup = remove_written(dest);
            if let Some(top) = made {
                remove_made(dest, &top);
            }
            if let Some(mode) = old_mode {
                let _ = fs::set_permissions(dest, fs::Permissions::from_mode(mode));
            }
            match cleanup {
                Ok(()) => Err(e),
                Err(cleanup) => Err(UnpackError::Cleanup {
                    path: dest.into(),
                    cleanup,
                    source: Box::new(e),
                }),
            }
        }
    }
}

/// Removes what a failed unpack wrote into `dest`: `rootfs` and
/// `config.json`. The rootfs goes as a whiteout removes a tree
/// ([`remove_dir_tree`]), since a layer can build one tens of thousands of
/// levels deep: std's `remove_dir_all` recurses once per level and holds
/// an fd per level. The error is one line: the unpack's own error is the
/// cause of the message it goes into.
fn remove_written(dest: &Path) -> Result<(), String> {
    let res = remove_dir_tree(&dest.join("rootfs")).map_err(|e| one_line(&e));
    let config = dest.join("config.json");
    match fs::remove_file(&config) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            res.and(Err(format!("remove {}: {e}", config.display())))
        }
        _ => res,
    }
}

/// An error and its sources, `outer: inner: …`.
fn one_line(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cur = c.source();
    }
    line
}

/// The topmost of `dest` and its ancestors that does not exist.
fn topmost_missing(dest: &Path) -> PathBuf {
    let mut top = dest.to_path_buf();
    for a in dest.ancestors().skip(1) {
        if a.as_os_str().is_empty() || fs::symlink_metadata(a).is_ok() {
            break;
        }
        top = a.to_path_buf();
    }
    top
}

/// Removes the directories from `dest` up to `top`, each only if empty:
/// what an unpack made for DEST and nothing another process put there.
/// One that is not there (making it failed) is passed over; one that is
/// not empty stays, and so do its ancestors, which then are not either.
fn remove_made(dest: &Path, top: &Path) {
    for a in dest.ancestors() {
        let _ = fs::remove_dir(a);
        if a == top {
            break;
        }
    }
}

fn fill_bundle(
    image: &Image,
    dest: &Path,
    opts: UnpackOptions<'_>,
) -> Result<Vec<LayerStats>, UnpackError> {
    let root_path = dest.join("rootfs");
    fs::DirBuilder::new()
        .mode(0o755)
        .create(&root_path)
        .map_err(|source| UnpackError::Create {
            path: root_path.clone(),
            source,
        })?;
    let rootfs = Rootfs::open(&root_path)?;
    let stats = unpack_rootfs_with(image, &rootfs, &opts.layer, opts.progress)?;
    let spec = runtime_spec(&image.config, &rootfs, &opts.overrides).map_err(|source| {
        UnpackError::Spec {
            image: image.name.clone(),
            source,
        }
    })?;
    let path = dest.join("config.json");
    let write = || -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)?;
        // One write, not one per JSON token.
        let mut text = serde_json::to_vec_pretty(&spec).map_err(io::Error::other)?;
        text.push(b'\n');
        f.write_all(&text)?;
        f.sync_all()
    };
    write().map_err(|source| UnpackError::WriteSpec {
        path: path.clone(),
        source,
    })?;
    // The last moment to stop: a cancel from here on finds the bundle whole.
    if let (Some(cancel), Some(last)) = (opts.layer.cancel, image.layers.last())
        && cancel.raised()
    {
        return Err(cancelled(image, last).into());
    }
    Ok(stats)
}

fn cancelled(image: &Image, layer: &Layer) -> LayerError {
    LayerError::Cancelled {
        image: image.name.clone(),
        blob: layer.name(),
    }
}
