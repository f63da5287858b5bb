//! The container launcher: tasks and services as containers, through the
//! in-process runtime (`berth-runtime`), from the OCI image layout embedded
//! in the initramfs (`berth-bundles`) or from a runtime bundle directory.
//!
//! Life of a container unit:
//! - **boot** ([`ContainerLauncher::prepare`], once per unit and boot): the
//!   unit's image is opened in the layout by its `ref.name`. Each image is
//!   unpacked once ([`unpack_images`]), every blob's sha256 verified (and
//!   each diff_id, unless [`ContainerOptions::diff_id`] trusts them), into
//!   `RUN/images/<config digest>` (RUN is `/run/berth` on tmpfs on a
//!   machine); every unit then gets its own root `RUN/rootfs/<unit>/root`,
//!   an overlayfs whose lower layer is that shared tree and whose upper
//!   layer is the unit's own (`upper`, `work`), so one unpack serves all
//!   units of an image and no unit sees another's writes. A `read_only`
//!   unit's root (unless it holds CAP_SYS_ADMIN, see [`binds_root`]) is
//!   the shared tree itself, bound read-only (the mount
//!   destinations its container needs are made in the tree first, before
//!   any overlay sits on it): no overlayfs, nothing per unit. Without
//!   overlayfs (`/proc/filesystems` does not list it) each other unit
//!   unpacks its own copy into `RUN/rootfs/<unit>` instead. The runtime
//!   spec is derived from the image config plus the manifest's overrides
//!   ([`image_unit_spec`]). A bundle's `config.json` is read as it is
//!   ([`bundle_spec`]). A bundle on a host holds its root as a tree,
//!   `DIR/rootfs`, and runs from it. A bundle `berth-build` packed into
//!   the initramfs holds `DIR/rootfs.oci` instead ([`packed_rootfs`]): an
//!   OCI image layout whose one image, `rootfs`, has the bundle's root as
//!   its layer; it is verified and unpacked as an image is into
//!   `RUN/rootfs/<unit>`, the unit's own root, while relative bind
//!   sources of its config.json still resolve against DIR. A failure is
//!   remembered: the unit fails at its first start with that one-line
//!   error, without retries, and the other units run.
//! - **start** ([`Launcher::spawn`]): the runtime creates the container
//!   (PID 1 clones its first process, a direct child) with the unit's
//!   output pipes as stdout/stderr and `/dev/null` as stdin, then starts it.
//! - **exit** ([`Launcher::reaped`]): PID 1's own `waitpid(-1)` reaped the
//!   process; the runtime is told the status and deletes the container (its
//!   cgroup is removed; its mounts died with its mount namespace), so a
//!   restart creates it afresh.
//!
//! A unit's root is made once per boot and reused by restarts: a
//! container's writes to its root persist across restarts within a boot
//! (as with `runc` and a bundle), and vanish at power-off with the tmpfs.
//! A fresh copy per start would cost a full unpack (or a copy) per restart,
//! which a crash loop cannot afford; `read_only: true` gives a root that no
//! restart can change.
//!
//! Cgroups: every container gets `/<cgroup_parent>/<unit>` (default
//! `/berth/<unit>`) on the cgroup2 mount, so deleting it kills anything the
//! container left behind (without a cgroup2 mount, in a test on a v1-only
//! host, containers run in PID 1's cgroup, which is logged once). `resources` become `linux.resources`; where the
//! controllers are not available in cgroup v2 (a v1/v2 hybrid host) the
//! runtime refuses the container and the unit fails with that error: a
//! limit is never silently dropped.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use berth_bundles::apply::Rootfs;
use berth_bundles::image::{Image, ImageRef, MAX_JSON, Platform};
use berth_bundles::small_file::{Accept, read_small_file};
use berth_bundles::spec::{Overrides, runtime_spec};
use berth_bundles::unpack::unpack_rootfs_with;
use berth_bundles::{DiffIdCheck, LayerOptions};
use berth_runtime::cgroup::CgroupError;
use berth_runtime::{Container, ContainerError, CreateOptions, InitProgram, Runtime, Stdio};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxCpu, LinuxMemory, LinuxNamespaceType, LinuxPids,
    LinuxResources, Mount as OciMount, PosixRlimit, PosixRlimitType, Spec,
};

use crate::launcher::{LaunchError, Launcher, ProcessLauncher, UnitKind};
use crate::logging::error_chain;
use crate::machine::MachineSetup;
use crate::manifest::{Mount, NetworkMode, Program, Resources, SeccompMode, Source};
use crate::net::Rtnetlink;
use crate::rlimits::{self, Rlimit};
use crate::service::ExitStatus;

/// `org.opencontainers.image.ref.name`: how the manifest names an image.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// cpu.max period for `resources.cpus` (the kernel's default, 100 ms).
const CPU_PERIOD_US: u64 = 100_000;

/// Why a unit's container could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("read image index {path}")]
    ReadIndex {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parse image index {path}")]
    ParseIndex {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("image {image}")]
    OpenImage {
        image: String,
        #[source]
        source: Box<berth_bundles::image::ImageError>,
    },
    #[error("image {image}")]
    Unpack {
        image: String,
        #[source]
        source: Box<berth_bundles::layer::LayerError>,
    },
    #[error("image {image}: open rootfs {path}")]
    OpenRootfs {
        image: String,
        path: PathBuf,
        #[source]
        source: berth_bundles::apply::ApplyError,
    },
    #[error("image {image}: runtime spec")]
    Spec {
        image: String,
        #[source]
        source: berth_bundles::spec::SpecError,
    },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("bundle {path}: parse config.json")]
    BundleConfig {
        path: PathBuf,
        #[source]
        source: berth_runtime::spec::SpecError,
    },
    #[error("bundle {path}")]
    BundleRootfs {
        path: PathBuf,
        #[source]
        source: berth_runtime::spec::SpecError,
    },
    #[error("bundle {path}: rootfs.oci is not a directory")]
    PackedNotDir { path: PathBuf },
    #[error(
        "bundle {path} holds both rootfs and rootfs.oci (a packed bundle holds rootfs.oci only)"
    )]
    PackedAndTree { path: PathBuf },
    #[error("bundle {path}: root.path {root:?} is not \"rootfs\", the root its rootfs.oci packs")]
    PackedRootPath { path: PathBuf, root: PathBuf },
    #[error("bundle {path}: open rootfs.oci")]
    PackedImage {
        path: PathBuf,
        #[source]
        source: Box<berth_bundles::image::ImageError>,
    },
    #[error("bundle {path}: open the unit's root {target}")]
    PackedTarget {
        path: PathBuf,
        target: PathBuf,
        #[source]
        source: berth_bundles::apply::ApplyError,
    },
    #[error("bundle {path}: unpack rootfs.oci")]
    PackedUnpack {
        path: PathBuf,
        #[source]
        source: Box<berth_bundles::layer::LayerError>,
    },
    #[error("capability {name:?} is unknown to the runtime")]
    Capability { name: String },
    #[error("resource limit {typ}")]
    Rlimit {
        typ: PosixRlimitType,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("seccomp profile")]
    Seccomp {
        #[source]
        source: berth_runtime::seccomp::SeccompError,
    },
    /// The shared unpack of the unit's image failed for an earlier unit.
    #[error("{message}")]
    Earlier { message: String },
    #[error("mount overlay on {path}")]
    Overlay {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("overlay option {path:?} holds one of ',' ':' '\\' (overlayfs cannot take it)")]
    OverlayPath { path: PathBuf },
    #[error("persistent mount source {source_dir} on the data disk")]
    Persistent {
        source_dir: PathBuf,
        #[source]
        source: crate::beneath::BeneathError,
    },
    #[error("bind the persistent mount source {source_dir} to {path}")]
    PersistentBind {
        source_dir: PathBuf,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("bind {path} read-only")]
    Bind {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("shared image tree {path}")]
    MountTargets {
        path: PathBuf,
        #[source]
        source: Box<ContainerError>,
    },
}

/// Names of the images in the OCI layout at `layout` (`ref.name` of each
/// index entry). A missing layout holds no image; an unreadable one is an
/// error.
pub fn list_images(layout: &Path) -> Result<Vec<String>, PrepareError> {
    let path = layout.join("index.json");
    let bytes = match read_small_file(&path, MAX_JSON, Accept::Regular) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(PrepareError::ReadIndex { path, source }),
    };
    let index: berth_bundles::image::Index = serde_json::from_slice(&bytes)
        .map_err(|source| PrepareError::ParseIndex { path, source })?;
    let mut names: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|d| d.annotations.get(REF_NAME).cloned())
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Where the container launcher finds and keeps things.
#[derive(Debug, Clone)]
pub struct ContainerOptions {
    /// The OCI image layout (`/berth/images`, `berth.images=`, `--images`).
    pub images: PathBuf,
    /// Unpacked roots (`rootfs/<unit>`) and runtime state (`containers/`).
    pub run_dir: PathBuf,
    /// Sources of `persistent` mounts (`/data`, the data disk).
    pub data_dir: PathBuf,
    /// Top cgroup of every container (`/berth/<unit>`).
    pub cgroup_parent: String,
    /// Whether each layer's diff_id is checked again while unpacking.
    /// A machine trusts them ([`DiffIdCheck::TrustBlobDigest`]): its layout
    /// was written by `berth-build`, which checked every diff_id when it
    /// recompressed the layers, and each blob's sha256 (bound to the config
    /// through the manifest) is still verified while it streams, which
    /// fixes the decompressed bytes too. A second sha256 pass over the
    /// uncompressed tar costs PID 1 more than the first in a VM without
    /// SHA-NI. Layouts given with `--images` are verified in full.
    pub diff_id: DiffIdCheck,
    /// The machine's resolv.conf (`/run/resolv.conf`, when the manifest
    /// names DNS servers or search domains): image units on the host
    /// network get it bound read-only at `/etc/resolv.conf`, as Docker
    /// gives a container the host's.
    pub resolv_conf: Option<PathBuf>,
    /// The manifest's `hostname`: every image unit's (each has a UTS
    /// namespace of its own); without one, `berth`.
    pub hostname: Option<String>,
}

/// What [`ContainerLauncher::prepare`] did for a unit, for the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// `image NAME` or `bundle PATH`.
    pub what: String,
    /// Bytes of file content unpacked for this unit (0 for a bundle whose
    /// root is a tree, or for an image an earlier unit unpacked: see
    /// `shared`).
    pub bytes: u64,
    /// The image was already unpacked: this unit got an overlay on it, or
    /// (`read_only`) a read-only bind of it.
    pub shared: bool,
    /// The unit's root is the shared tree itself, bound read-only.
    pub read_only: bool,
    pub seconds: f64,
}

/// How a container unit gets a root of its own from its image.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Roots {
    /// Not decided yet: [`ContainerLauncher::shares_images`] decides, after the
    /// machine's modules are loaded.
    Undecided,
    /// One unpack per image, an overlayfs per unit.
    Overlay,
    /// No overlayfs: one unpack per unit.
    Unpack,
}

/// An image unpacked once: the lower layer of its units' overlays, and
/// the root itself (bound read-only) of its read-only units.
struct SharedImage {
    dir: PathBuf,
    image: Image,
    rootfs: Rootfs,
    /// An overlay is mounted on the tree: from now on it must not change
    /// (overlayfs(5): changes to a lower layer under a mounted overlay are
    /// undefined), so no mount destination may be created in it any more.
    overlaid: bool,
}

impl std::fmt::Debug for SharedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedImage")
            .field("dir", &self.dir)
            .field("image", &self.image.name)
            .finish_non_exhaustive()
    }
}

/// A unit ready to create, or why it never can be.
#[derive(Debug)]
enum Plan {
    Ready {
        spec: Box<Spec>,
        rootfs: PathBuf,
        /// A bundle unit's directory (where its config.json is, wherever
        /// its root is: a packed bundle's is unpacked into the run
        /// directory): where relative bind sources resolve and what the
        /// state and hooks call the bundle. `None` (image units): the
        /// root's parent.
        bundle: Option<PathBuf>,
    },
    Failed(String),
}

/// Images unpacked by [`unpack_images`], for [`ContainerLauncher::adopt`].
#[derive(Debug, Default)]
pub struct Unpacked {
    images: BTreeMap<String, Result<SharedImage, String>>,
    /// Image name → config digest, for each image that opened.
    keys: BTreeMap<String, String>,
    /// One per image unpacked (or failed), in order.
    pub reports: Vec<UnpackReport>,
}

/// How the unpack of one image went, for the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct UnpackReport {
    pub image: String,
    /// Bytes of file content written and seconds taken, or the error.
    pub result: Result<(u64, f64), String>,
}

/// Unpacks each image of `images` once (by config digest: two names of one
/// image share one tree) into `RUN/images/<config digest>`. A failure is
/// reported and kept; the units of that image fail with it when they would
/// start.
pub fn unpack_images(opts: &ContainerOptions, images: &[&str]) -> Unpacked {
    let mut out = Unpacked::default();
    for &image in images {
        let started = Instant::now();
        let img = match open_image(&opts.images, image) {
            Ok(img) => img,
            Err(e) => {
                // The unit's own prepare opens it again and fails the same way.
                out.reports.push(UnpackReport {
                    image: image.to_owned(),
                    result: Err(error_chain(&e)),
                });
                continue;
            }
        };
        let key = img.config_digest.hex().to_owned();
        out.keys.insert(image.to_owned(), key.clone());
        if out.images.contains_key(&key) {
            continue;
        }
        let result = unpack_shared(opts, image, img, &key);
        out.reports.push(UnpackReport {
            image: image.to_owned(),
            result: match &result {
                Ok((_, bytes)) => Ok((*bytes, started.elapsed().as_secs_f64())),
                Err(e) => Err(error_chain(e)),
            },
        });
        let entry = result
            .map(|(shared, _)| shared)
            .map_err(|e| error_chain(&e));
        out.images.insert(key, entry);
    }
    out
}

/// Runs image and bundle units as containers, host units as processes.
#[derive(Debug)]
pub struct ContainerLauncher {
    opts: ContainerOptions,
    runtime: Runtime,
    host: ProcessLauncher,
    plans: BTreeMap<String, Plan>,
    live: BTreeMap<String, Container>,
    /// `network: none` units' namespaces, held open while they run.
    netns: BTreeMap<String, OwnedFd>,
    /// Whether a cgroup2 filesystem is mounted (for a cgroup per container).
    cgroup2: bool,
    roots: Roots,
    /// Images unpacked (or failed) so far, by config digest.
    shared: BTreeMap<String, Result<SharedImage, String>>,
    /// Image name → its config digest, for the images opened so far.
    keys: BTreeMap<String, String>,
    /// Roots mounted (overlays, read-only binds), detached at cleanup.
    mounted: Vec<PathBuf>,
    /// The machine's background set-up: units that share the machine's
    /// network namespace start once it has configured the network.
    machine: Option<MachineSetup>,
    /// The container init of `"init": true` units: a sealed copy of this
    /// binary, made at the first such start (or why there is none).
    reaper: Option<Result<fs::File, String>>,
}

impl ContainerLauncher {
    pub fn new(opts: ContainerOptions) -> Self {
        let runtime = Runtime::new(opts.run_dir.join("containers"));
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let cgroup2 = berth_runtime::cgroup::find_cgroup2_mount(&mountinfo).is_some();
        if !cgroup2 {
            log::warn!("no cgroup2 filesystem mounted: containers run in PID 1's cgroup");
        }
        // Host units get a cgroup each too, beside the containers'.
        let host = match berth_runtime::cgroup::find_cgroup2_mount(&mountinfo) {
            Some(mount) => ProcessLauncher::with_cgroups(mount, opts.cgroup_parent.clone()),
            None => ProcessLauncher::new(),
        };
        Self {
            cgroup2,
            opts,
            runtime,
            host,
            plans: BTreeMap::new(),
            live: BTreeMap::new(),
            netns: BTreeMap::new(),
            roots: Roots::Undecided,
            shared: BTreeMap::new(),
            keys: BTreeMap::new(),
            mounted: Vec::new(),
            machine: None,
            reaper: None,
        }
    }

    /// Units that share the machine's network namespace (host units,
    /// containers without a network namespace of their own) wait for
    /// `machine`'s network before they start; the others do not.
    pub fn set_machine_setup(&mut self, machine: MachineSetup) {
        self.machine = Some(machine);
    }

    /// Whether the unit runs in the machine's network namespace: a host
    /// unit, or a container without a network namespace of its own (one
    /// that failed to prepare fails at its start anyway).
    fn shares_machine_network(&self, name: &str, program: &Program) -> bool {
        match program.source {
            Source::Host => true,
            Source::Image(_) | Source::Bundle(_) => match self.plans.get(name) {
                Some(Plan::Ready { spec, .. }) => !wants_own_netns(spec),
                _ => false,
            },
        }
    }

    /// Blocks until the network has ended, for a start that did not ask
    /// [`Launcher::can_start`] first.
    fn wait_for_network(&self, name: &str) -> Result<(), LaunchError> {
        match &self.machine {
            Some(machine) => machine
                .wait_network()
                .map_err(|message| LaunchError::Network {
                    unit: name.to_owned(),
                    message,
                }),
            None => Ok(()),
        }
    }

    /// Unpacks the unit's image (or reads its bundle) and derives its spec.
    /// `Ok(None)` for host units. On failure the unit is remembered as
    /// failed (its start reports the same error) and the error returned.
    pub fn prepare(
        &mut self,
        name: &str,
        program: &Program,
    ) -> Result<Option<Prepared>, LaunchError> {
        let started = Instant::now();
        let result = match &program.source {
            Source::Host => return Ok(None),
            Source::Image(image) => self
                .prepare_image(name, image, program)
                .map(|(plan, bytes, read_only)| (plan, format!("image {image}"), bytes, read_only)),
            Source::Bundle(dir) => self.prepare_bundle(dir, name).map(|(plan, bytes)| {
                (
                    plan,
                    format!("bundle {}", dir.display()),
                    Some(bytes),
                    false,
                )
            }),
        };
        match result {
            Ok((plan, what, bytes, read_only)) => {
                self.plans.insert(name.to_owned(), plan);
                Ok(Some(Prepared {
                    what,
                    bytes: bytes.unwrap_or(0),
                    shared: bytes.is_none(),
                    read_only,
                    seconds: started.elapsed().as_secs_f64(),
                }))
            }
            Err(e) => {
                let message = error_chain(&e);
                self.plans
                    .insert(name.to_owned(), Plan::Failed(message.clone()));
                Err(LaunchError::Prepare {
                    unit: name.to_owned(),
                    message,
                })
            }
        }
    }

    /// The unit's plan, the bytes unpacked for it (`None`: the image was
    /// unpacked for an earlier unit and this one shares it) and whether
    /// its root is the shared tree bound read-only.
    ///
    /// A `read_only` unit's root is the shared tree itself, bound
    /// read-only: no overlayfs needed (nor its module), nothing per unit
    /// to keep. The mount destinations its container needs are created in
    /// the tree first (it is read-only to the runtime by then), which is
    /// only allowed before an overlay is mounted on the tree; after that
    /// such a unit gets an overlay like the others (its spec keeps the
    /// root read-only). Other units get an overlay, or without overlayfs
    /// their own unpacked copy.
    fn prepare_image(
        &mut self,
        name: &str,
        image: &str,
        program: &Program,
    ) -> Result<(Plan, Option<u64>, bool), PrepareError> {
        let persistent = self.stage_persistent(name, program)?;
        if !self.shares_image(program) {
            let img = open_image(&self.opts.images, image)?;
            let dir = fresh_dir(&self.opts.run_dir.join("rootfs"), name)?;
            let result = self.fill_rootfs(name, image, &img, &dir, program, &persistent);
            if result.is_err() {
                // Never follows a symlink, never recurses: an image's tree
                // may be tens of thousands of levels deep.
                let _ = berth_bundles::apply::remove_dir_tree(&dir);
            }
            return result.map(|(plan, bytes)| (plan, Some(bytes), false));
        }
        let mut unpacked = None;
        let key = match self.keys.get(image) {
            // Opened (and unpacked, or failed) for an earlier unit.
            Some(key) => key.clone(),
            None => {
                let img = open_image(&self.opts.images, image)?;
                let key = img.config_digest.hex().to_owned();
                if !self.shared.contains_key(&key) {
                    let result = unpack_shared(&self.opts, image, img, &key);
                    unpacked = Some(result.as_ref().map_or(0, |(_, bytes)| *bytes));
                    let entry = result
                        .map(|(shared, _)| shared)
                        .map_err(|e| error_chain(&e));
                    self.shared.insert(key.clone(), entry);
                }
                self.keys.insert(image.to_owned(), key.clone());
                key
            }
        };
        let shared = match self.shared.get(&key) {
            Some(Ok(shared)) => shared,
            Some(Err(message)) => {
                return Err(PrepareError::Earlier {
                    message: message.clone(),
                });
            }
            None => {
                return Err(PrepareError::Earlier {
                    message: format!("image {image} was not unpacked"),
                });
            }
        };
        let spec = self.unit_spec(
            name,
            image,
            &shared.image,
            &shared.rootfs,
            program,
            &persistent,
        )?;
        let bind = binds_root(program) && !shared.overlaid;
        if bind {
            self.runtime
                .create_mount_targets(name, &spec, &shared.dir)
                .map_err(|source| PrepareError::MountTargets {
                    path: shared.dir.clone(),
                    source: Box::new(source),
                })?;
        }
        let unit_dir = fresh_dir(&self.opts.run_dir.join("rootfs"), name)?;
        let root = if bind {
            mount_read_only_bind(&shared.dir, &unit_dir)?
        } else {
            let root = mount_overlay(&shared.dir, &unit_dir)?;
            if let Some(Ok(shared)) = self.shared.get_mut(&key) {
                shared.overlaid = true;
            }
            root
        };
        self.mounted.push(root.clone());
        Ok((
            Plan::Ready {
                spec: Box::new(spec),
                rootfs: root,
                bundle: None,
            },
            unpacked,
            bind,
        ))
    }

    /// Whether `program`'s unit shares its image's one unpack: a read-only
    /// unit always (a read-only bind, see [`binds_root`]), the others
    /// through overlayfs.
    pub fn shares_image(&mut self, program: &Program) -> bool {
        binds_root(program) || self.shares_images()
    }

    /// Whether units share one unpack per image (through overlayfs), or
    /// each unpacks its own copy. Decided once, on first use, so on a
    /// machine after its modules (overlay among them) are loaded.
    pub fn shares_images(&mut self) -> bool {
        if self.roots == Roots::Undecided {
            self.roots = if overlay_available() {
                Roots::Overlay
            } else {
                log::info!(
                    "no overlayfs in this kernel: each container unit unpacks its own image copy"
                );
                Roots::Unpack
            };
        }
        self.roots == Roots::Overlay
    }

    /// Takes over the images [`unpack_images`] unpacked.
    pub fn adopt(&mut self, unpacked: Unpacked) {
        self.shared.extend(unpacked.images);
        self.keys.extend(unpacked.keys);
    }

    fn fill_rootfs(
        &self,
        name: &str,
        image: &str,
        img: &Image,
        dir: &Path,
        program: &Program,
        persistent: &[PathBuf],
    ) -> Result<(Plan, u64), PrepareError> {
        let rootfs = Rootfs::open(dir).map_err(|source| PrepareError::OpenRootfs {
            image: image.to_owned(),
            path: dir.to_owned(),
            source,
        })?;
        let layer = LayerOptions {
            diff_id: self.opts.diff_id,
            ..LayerOptions::default()
        };
        let stats = unpack_rootfs_with(img, &rootfs, &layer, None).map_err(|source| {
            PrepareError::Unpack {
                image: image.to_owned(),
                source: Box::new(source),
            }
        })?;
        warn_unsupported_xattrs(&format!("image {image}"), &stats);
        let bytes = stats.iter().map(|s| s.bytes).sum();
        let spec = self.unit_spec(name, image, img, &rootfs, program, persistent)?;
        Ok((
            Plan::Ready {
                spec: Box::new(spec),
                rootfs: dir.to_owned(),
                bundle: None,
            },
            bytes,
        ))
    }

    /// A bundle unit's plan and the bytes unpacked for it. A tree bundle
    /// (`dir/rootfs`) runs from its directory: 0 bytes. A packed bundle
    /// ([`packed_rootfs`]) has the image `rootfs` of its `rootfs.oci`
    /// unpacked, verified as an image is ([`ContainerOptions::diff_id`]),
    /// into a root of the unit's own, `RUN/rootfs/<unit>`, as a writable
    /// image unit without overlayfs gets (a bundle's root is the unit's
    /// alone: nothing to share); a failed unpack removes it.
    fn prepare_bundle(&self, dir: &Path, name: &str) -> Result<(Plan, u64), PrepareError> {
        let layout = packed_rootfs(dir)?;
        let (mut spec, rootfs) = bundle_spec(dir)?;
        let parent = self.cgroup2.then_some(self.opts.cgroup_parent.as_str());
        default_cgroups_path(&mut spec, name, parent);
        let Some(layout) = layout else {
            // The bundle is DIR wherever root.path puts the root (runc).
            return Ok((
                Plan::Ready {
                    spec: Box::new(spec),
                    rootfs,
                    bundle: Some(dir.to_owned()),
                },
                0,
            ));
        };
        if rootfs != dir.join("rootfs") {
            let root = spec.root().as_ref().map(|r| r.path().clone());
            return Err(PrepareError::PackedRootPath {
                path: dir.to_owned(),
                root: root.unwrap_or_default(),
            });
        }
        let img = open_layout_image(&layout, PACKED_ROOTFS_REF).map_err(|source| {
            PrepareError::PackedImage {
                path: dir.to_owned(),
                source: Box::new(source),
            }
        })?;
        let unit_dir = fresh_dir(&self.opts.run_dir.join("rootfs"), name)?;
        let layer = LayerOptions {
            diff_id: self.opts.diff_id,
            ..LayerOptions::default()
        };
        let unpacked = Rootfs::open(&unit_dir)
            .map_err(|source| PrepareError::PackedTarget {
                path: dir.to_owned(),
                target: unit_dir.clone(),
                source,
            })
            .and_then(|rootfs| {
                unpack_rootfs_with(&img, &rootfs, &layer, None).map_err(|source| {
                    PrepareError::PackedUnpack {
                        path: dir.to_owned(),
                        source: Box::new(source),
                    }
                })
            });
        let stats = match unpacked {
            Ok(stats) => stats,
            Err(e) => {
                // Never follows a symlink, never recurses (see prepare_image).
                let _ = berth_bundles::apply::remove_dir_tree(&unit_dir);
                return Err(e);
            }
        };
        warn_unsupported_xattrs(&format!("bundle {}", dir.display()), &stats);
        Ok((
            Plan::Ready {
                spec: Box::new(spec),
                rootfs: unit_dir,
                bundle: Some(dir.to_owned()),
            },
            stats.iter().map(|s| s.bytes).sum(),
        ))
    }

    /// The unit's runtime spec: the image config (user names resolved in
    /// `rootfs`), the manifest's overrides (`persistent`: the staged
    /// sources of its persistent mounts) and PID 1's defaults.
    fn unit_spec(
        &self,
        name: &str,
        image: &str,
        img: &Image,
        rootfs: &Rootfs,
        program: &Program,
        persistent: &[PathBuf],
    ) -> Result<Spec, PrepareError> {
        let parent = self.cgroup2.then_some(self.opts.cgroup_parent.as_str());
        let mut spec = image_unit_spec(
            name,
            image,
            &img.config,
            rootfs,
            program,
            persistent,
            parent,
        )?;
        if let Some(hostname) = &self.opts.hostname {
            spec.set_hostname(Some(hostname.clone()));
        }
        if let Some(resolv) = &self.opts.resolv_conf
            && program.network == NetworkMode::Host
        {
            let mut m = OciMount::default();
            m.set_destination(PathBuf::from("/etc/resolv.conf"));
            m.set_typ(Some("bind".to_owned()));
            m.set_source(Some(resolv.clone()));
            m.set_options(Some(
                ["bind", "ro", "nosuid", "nodev", "noexec"]
                    .map(str::to_owned)
                    .to_vec(),
            ));
            let mut mounts = spec.mounts().clone().unwrap_or_default();
            mounts.push(m);
            spec.set_mounts(Some(mounts));
        }
        Ok(spec)
    }

    /// The sources of the unit's persistent mounts, staged: each directory
    /// of the data disk is opened (made when missing) below the data
    /// directory without following a symlink ([`crate::beneath`]: a
    /// container may have left one there), then bound by its fd onto
    /// `run/persistent/UNIT/N` in PID 1's own tree, which no container can
    /// touch. The container's bind then takes that mount: what the path on
    /// the data disk becomes later changes nothing.
    fn stage_persistent(
        &mut self,
        name: &str,
        program: &Program,
    ) -> Result<Vec<PathBuf>, PrepareError> {
        let sources: Vec<&Path> = program
            .mounts
            .iter()
            .filter_map(|m| match m {
                Mount::Persistent { source, .. } => Some(source.as_path()),
                Mount::Tmpfs { .. } => None,
            })
            .collect();
        if sources.is_empty() {
            return Ok(Vec::new());
        }
        let data_dir = &self.opts.data_dir;
        // The data directory itself is PID 1's (a mount point it made, or
        // the host's --data-dir): only what is below it is untrusted.
        let data = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(data_dir)
            .and_then(|()| fs::File::open(data_dir))
            .map_err(|source| PrepareError::Io {
                op: "open the data directory",
                path: data_dir.clone(),
                source,
            })?;
        let unit_dir = self.opts.run_dir.join("persistent").join(name);
        clear_staging(&unit_dir)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&unit_dir)
            .map_err(|source| PrepareError::Io {
                op: "create",
                path: unit_dir.clone(),
                source,
            })?;
        let mut staged = Vec::with_capacity(sources.len());
        for (i, source) in sources.into_iter().enumerate() {
            let source_dir = data_dir.join(source);
            let fd = crate::beneath::open_dir(data.as_fd(), data_dir, source, true).map_err(
                |source| PrepareError::Persistent {
                    source_dir: source_dir.clone(),
                    source,
                },
            )?;
            let at = unit_dir.join(i.to_string());
            create_dir(&at)?;
            nix::mount::mount(
                Some(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str()),
                &at,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|source| PrepareError::PersistentBind {
                source_dir,
                path: at.clone(),
                source,
            })?;
            self.mounted.push(at.clone());
            staged.push(at);
        }
        Ok(staged)
    }

    fn create_and_start(
        &mut self,
        name: &str,
        init: bool,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> Result<Pid, LaunchError> {
        let (spec, rootfs, bundle) = match self.plans.get(name) {
            Some(Plan::Ready {
                spec,
                rootfs,
                bundle,
            }) => (spec, rootfs, bundle),
            Some(Plan::Failed(message)) => {
                return Err(LaunchError::Prepare {
                    unit: name.to_owned(),
                    message: message.clone(),
                });
            }
            None => {
                return Err(LaunchError::Prepare {
                    unit: name.to_owned(),
                    message: "not prepared at boot".to_owned(),
                });
            }
        };
        if !wants_own_netns(spec) {
            self.wait_for_network(name)?;
        }
        // A container of this name left by an earlier run or a failed
        // delete would make create fail with "exists": remove it first.
        if let Ok(mut stale) = self.runtime.load(name)
            && let Err(e) = stale.delete(true)
        {
            log::warn!("remove stale container {name}: {}", error_chain(&e));
        }
        let mut spec = spec.clone();
        let netns = if wants_own_netns(&spec) {
            let fd = new_netns_with_lo().map_err(|source| LaunchError::Spawn {
                unit: name.to_owned(),
                program: "network namespace with loopback".to_owned(),
                source,
            })?;
            set_netns_path(&mut spec, &fd);
            Some(fd)
        } else {
            None
        };
        let stdin = fs::File::open("/dev/null").map_err(|source| LaunchError::Spawn {
            unit: name.to_owned(),
            program: "/dev/null for stdin".to_owned(),
            source,
        })?;
        // `"init": true`: PID 1's own binary is the container's first
        // process, as its reaper (crate::reaper).
        let init = if init {
            let reaper = self.reaper.get_or_insert_with(crate::reaper::sealed_binary);
            let exe = match reaper {
                Ok(file) => file.try_clone().map_err(|source| LaunchError::Spawn {
                    unit: name.to_owned(),
                    program: "the sealed copy of berth-init, the container's init".to_owned(),
                    source,
                })?,
                Err(why) => {
                    return Err(LaunchError::Prepare {
                        unit: name.to_owned(),
                        message: why.clone(),
                    });
                }
            };
            Some(InitProgram {
                exe: OwnedFd::from(exe),
                args: crate::reaper::reaper_args(),
            })
        } else {
            None
        };
        let opts = CreateOptions {
            stdio: Stdio {
                stdin: Some(OwnedFd::from(stdin)),
                stdout: Some(stdout),
                stderr: Some(stderr),
            },
            init,
        };
        let t0 = Instant::now();
        let created = match bundle {
            Some(bundle) => self
                .runtime
                .create_from_spec_in(name, &spec, rootfs, bundle, opts),
            None => self.runtime.create_from_spec(name, &spec, rootfs, opts),
        };
        let mut container = created.map_err(|source| LaunchError::Create {
            unit: name.to_owned(),
            permanent: is_permanent(&source),
            source: Box::new(source),
        })?;
        let created = t0.elapsed();
        let started = container.start();
        // What create and start noted (ambient capabilities not raised,
        // poststart hooks run before the program was executed): said
        // whatever the start gave.
        for w in container.warnings() {
            log::warn!("container {name}: {w}");
        }
        if let Err(source) = started {
            // delete(force) kills and reaps the process itself: PID 1's loop
            // never saw its pid, so nothing else waits for it.
            let _ = container.delete(true);
            return Err(LaunchError::Start {
                unit: name.to_owned(),
                source: Box::new(source),
            });
        }
        log::debug!(
            "container {name}: created in {} ms, started in {} ms",
            created.as_millis(),
            t0.elapsed().saturating_sub(created).as_millis()
        );
        let pid = Pid::from_raw(container.pid());
        self.live.insert(name.to_owned(), container);
        if let Some(fd) = netns {
            self.netns.insert(name.to_owned(), fd);
        }
        Ok(pid)
    }
}

/// Unpacks `img` into `RUN/images/<key>`, once per boot.
fn unpack_shared(
    opts: &ContainerOptions,
    image: &str,
    img: Image,
    key: &str,
) -> Result<(SharedImage, u64), PrepareError> {
    let dir = fresh_dir(&opts.run_dir.join("images"), key)?;
    let layer = LayerOptions {
        diff_id: opts.diff_id,
        ..LayerOptions::default()
    };
    let unpack = || {
        let rootfs = Rootfs::open(&dir).map_err(|source| PrepareError::OpenRootfs {
            image: image.to_owned(),
            path: dir.clone(),
            source,
        })?;
        let stats = unpack_rootfs_with(&img, &rootfs, &layer, None).map_err(|source| {
            PrepareError::Unpack {
                image: image.to_owned(),
                source: Box::new(source),
            }
        })?;
        warn_unsupported_xattrs(&format!("image {image}"), &stats);
        Ok((rootfs, stats.iter().map(|s| s.bytes).sum()))
    };
    match unpack() {
        Ok((rootfs, bytes)) => Ok((
            SharedImage {
                dir,
                image: img,
                rootfs,
                overlaid: false,
            },
            bytes,
        )),
        Err(e) => {
            let _ = berth_bundles::apply::remove_dir_tree(&dir);
            Err(e)
        }
    }
}

/// Says once per unpack how many `user.*` attributes of `what`'s layers
/// the filesystem of the run directory could not hold (tmpfs before Linux
/// 6.6): the files are there without them.
fn warn_unsupported_xattrs(what: &str, stats: &[berth_bundles::apply::LayerStats]) {
    let lost: u64 = stats.iter().map(|s| s.unsupported_xattrs).sum();
    if lost > 0 {
        log::warn!(
            "{what}: {lost} user.* extended attributes not set: the filesystem of the run \
             directory does not support them (tmpfs before Linux 6.6, or without \
             CONFIG_TMPFS_XATTR)"
        );
    }
}

/// An empty directory `parent/name` (mode 0755; `parent` 0700). Whatever
/// an earlier run of a non-machine role left there is removed first.
fn fresh_dir(parent: &Path, name: &str) -> Result<PathBuf, PrepareError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .map_err(|source| PrepareError::Io {
            op: "create",
            path: parent.to_owned(),
            source,
        })?;
    let dir = parent.join(name);
    if fs::symlink_metadata(&dir).is_ok() {
        // An overlay root of an earlier run in this mount namespace.
        let _ = nix::mount::umount2(&dir.join("root"), nix::mount::MntFlags::MNT_DETACH);
        // Not std's remove_dir_all, which recurses once per level (an
        // image's tree may be tens of thousands deep: PID 1's stack).
        berth_bundles::apply::remove_dir_tree(&dir).map_err(|e| PrepareError::Io {
            op: "remove stale rootfs",
            path: dir.clone(),
            source: std::io::Error::other(error_chain(&e)),
        })?;
    }
    create_dir(&dir)?;
    Ok(dir)
}

/// Empties a unit's staging directory of persistent mount sources that
/// an earlier run in this mount namespace left (the process role): each
/// entry unmounted, then removed only if empty, never descended into (a
/// stale bind would be the data disk itself).
fn clear_staging(unit_dir: &Path) -> Result<(), PrepareError> {
    let Ok(entries) = fs::read_dir(unit_dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
        fs::remove_dir(&path).map_err(|source| PrepareError::Io {
            op: "remove stale staging directory",
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Creates the directory `path` (mode 0755; its parent must exist).
fn create_dir(path: &Path) -> Result<(), PrepareError> {
    fs::DirBuilder::new()
        .mode(0o755)
        .create(path)
        .map_err(|source| PrepareError::Io {
            op: "create",
            path: path.to_owned(),
            source,
        })
}

/// The image `image` (a `ref.name`) of the layout at `layout`, for this
/// machine's platform, its index, manifest and config verified.
fn open_image(layout: &Path, image: &str) -> Result<Image, PrepareError> {
    open_layout_image(layout, image).map_err(|source| PrepareError::OpenImage {
        image: image.to_owned(),
        source: Box::new(source),
    })
}

/// [`open_image`] with the image library's own error.
fn open_layout_image(layout: &Path, tag: &str) -> Result<Image, berth_bundles::image::ImageError> {
    let reference = ImageRef::Oci {
        path: layout.to_owned(),
        tag: Some(tag.to_owned()),
    };
    let platform = Platform::new("linux", std::env::consts::ARCH, None);
    Image::open(&reference, &platform)
}

/// Whether the kernel has overlayfs now (built in, or its module loaded).
fn overlay_available() -> bool {
    fs::read_to_string("/proc/filesystems").is_ok_and(|t| {
        t.lines()
            .any(|l| l.split_whitespace().last() == Some("overlay"))
    })
}

/// Mounts `unit/root`: an overlayfs of the shared tree `lower` under the
/// unit's own `unit/upper` (with its `unit/work`). Returns the root.
fn mount_overlay(lower: &Path, unit: &Path) -> Result<PathBuf, PrepareError> {
    let (upper, work, root) = (unit.join("upper"), unit.join("work"), unit.join("root"));
    for dir in [&upper, &work, &root] {
        create_dir(dir)?;
    }
    let data = overlay_options(lower, &upper, &work)?;
    nix::mount::mount(
        Some("overlay"),
        &root,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|source| PrepareError::Overlay {
        path: root.clone(),
        source,
    })?;
    Ok(root)
}

/// Whether a unit's root can be its image's shared tree, bound read-only:
/// the unit is `read_only`, and it is not granted CAP_SYS_ADMIN, with
/// which (containers get no user namespace) it could remount its root
/// read-write and write into the tree every unit of the image shares; such
/// a unit gets an overlay, whose upper layer takes what it writes.
pub fn binds_root(program: &Program) -> bool {
    program.read_only
        && !program
            .capabilities
            .iter()
            .flatten()
            .any(|c| c.eq_ignore_ascii_case("CAP_SYS_ADMIN"))
}

/// Mounts `unit/root`: the shared tree `tree` bound read-only (the tree
/// mount's nosuid/nodev/noexec/atime flags kept). Returns the root.
fn mount_read_only_bind(tree: &Path, unit: &Path) -> Result<PathBuf, PrepareError> {
    use nix::mount::{MsFlags, mount};
    use nix::sys::statvfs::{FsFlags, statvfs};
    let root = unit.join("root");
    create_dir(&root)?;
    let bind_err = |source| PrepareError::Bind {
        path: root.clone(),
        source,
    };
    mount(
        Some(tree),
        &root,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(bind_err)?;
    // A bind mount ignores flags when it is made: remount it read-only.
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
    let have = statvfs(&root).map_err(bind_err)?.flags();
    for (st, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        // statvfs(3) ST_RELATIME; musl's libc crate lacks the constant.
        (FsFlags::from_bits_retain(0x1000), MsFlags::MS_RELATIME),
    ] {
        if have.contains(st) {
            flags |= ms;
        }
    }
    if let Err(e) = mount(None::<&str>, &root, None::<&str>, flags, None::<&str>) {
        let _ = nix::mount::umount2(&root, nix::mount::MntFlags::MNT_DETACH);
        return Err(bind_err(e));
    }
    Ok(root)
}

/// `lowerdir=…,upperdir=…,workdir=…`. The legacy mount data cannot escape
/// a ',' and lowerdir splits at ':', so paths holding them are refused.
/// index=off: the one lower tree is shared by many overlays.
fn overlay_options(lower: &Path, upper: &Path, work: &Path) -> Result<String, PrepareError> {
    fn text(p: &Path) -> Result<&str, PrepareError> {
        p.to_str()
            .filter(|t| !t.contains([',', ':', '\\']))
            .ok_or_else(|| PrepareError::OverlayPath { path: p.to_owned() })
    }
    Ok(format!(
        "lowerdir={},upperdir={},workdir={},index=off",
        text(lower)?,
        text(upper)?,
        text(work)?
    ))
}

/// A spec asking for a new network namespace (no path): `network: none`.
fn wants_own_netns(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter()
                .any(|n| n.typ() == LinuxNamespaceType::Network && n.path().is_none())
        })
}

/// Points the spec's network namespace at PID 1's open fd of it; the
/// runtime opens `/proc/self/fd/N` in PID 1 itself, before the clone.
fn set_netns_path(spec: &mut Spec, fd: &OwnedFd) {
    let mut linux = spec.linux().clone().unwrap_or_default();
    let namespaces = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|mut n| {
            if n.typ() == LinuxNamespaceType::Network {
                n.set_path(Some(PathBuf::from(format!(
                    "/proc/self/fd/{}",
                    fd.as_raw_fd()
                ))));
            }
            n
        })
        .collect();
    linux.set_namespaces(Some(namespaces));
    spec.set_linux(Some(linux));
}

/// A new network namespace with `lo` up, as an fd. A namespace the clone
/// made would have `lo` down and nobody in it to bring it up, so PID 1
/// makes it the way `ip netns add` does: unshare(CLONE_NEWNET) moves the
/// calling thread (only it: the machine set-up thread stays in the
/// machine's namespace) into a new namespace, `lo` goes up over
/// rtnetlink, an fd keeps the namespace, and setns(2) takes the thread
/// back to its own namespace whatever happened.
fn new_netns_with_lo() -> io::Result<OwnedFd> {
    let own = fs::File::open("/proc/thread-self/ns/net")?;
    nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    let made = (|| -> io::Result<OwnedFd> {
        let fd = OwnedFd::from(fs::File::open("/proc/thread-self/ns/net")?);
        let mut nl = Rtnetlink::open().map_err(|e| io::Error::other(error_chain(&e)))?;
        nl.link_up("lo")
            .map_err(|e| io::Error::other(error_chain(&e)))?;
        Ok(fd)
    })();
    if let Err(e) = nix::sched::setns(&own, CloneFlags::CLONE_NEWNET) {
        // Cannot happen with an fd of a namespace we were in; if it does,
        // every later host-network unit would see the wrong network.
        log::error!("return to PID 1's network namespace: {e}");
        return Err(io::Error::from(e));
    }
    made
}

/// Errors no retry can fix: the spec asks for what this host lacks.
fn is_permanent(e: &ContainerError) -> bool {
    match e {
        ContainerError::Spec { .. } | ContainerError::Rootfs { .. } => true,
        ContainerError::Cgroup { source, .. } => matches!(
            source,
            CgroupError::Unsupported { .. }
                | CgroupError::UnsupportedPath { .. }
                | CgroupError::Invalid { .. }
                | CgroupError::BadPath { .. }
                | CgroupError::BadId { .. }
                | CgroupError::NoCgroup2Mount
                | CgroupError::ControllerMissing { .. }
        ),
        _ => false,
    }
}

/// A config.json without `linux.cgroupsPath` gets the unit's cgroup, as
/// runc and crun give every container one: deleting the container then
/// ends what it left behind, which a bundle without a pid namespace of its
/// own would otherwise leave under PID 1 at every restart.
fn default_cgroups_path(spec: &mut Spec, name: &str, cgroup_parent: Option<&str>) {
    if let Some(parent) = cgroup_parent
        && spec
            .linux()
            .as_ref()
            .is_none_or(|l| l.cgroups_path().is_none())
    {
        let mut linux = spec.linux().clone().unwrap_or_default();
        linux.set_cgroups_path(Some(PathBuf::from(format!("/{parent}/{name}"))));
        spec.set_linux(Some(linux));
    }
}

/// The file name of a packed bundle's root: an OCI image layout next to
/// config.json, in place of the `rootfs` tree.
pub const PACKED_ROOTFS: &str = "rootfs.oci";

/// The `ref.name` of the one image a packed bundle's `rootfs.oci` holds.
pub const PACKED_ROOTFS_REF: &str = "rootfs";

/// `dir/rootfs.oci` when `dir` is a packed bundle, `None` when its root is
/// a tree. Neither name is followed if it is a symlink: a `rootfs.oci`
/// that is not a directory, or one beside a `rootfs` of any kind, is an
/// error rather than a guess at which of the two is meant.
pub fn packed_rootfs(dir: &Path) -> Result<Option<PathBuf>, PrepareError> {
    let layout = dir.join(PACKED_ROOTFS);
    let stat = |path: &Path| match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PrepareError::Io {
            op: "inspect",
            path: path.to_owned(),
            source,
        }),
    };
    match stat(&layout)? {
        None => Ok(None),
        Some(m) if !m.is_dir() => Err(PrepareError::PackedNotDir {
            path: dir.to_owned(),
        }),
        Some(_) => match stat(&dir.join("rootfs"))? {
            None => Ok(Some(layout)),
            Some(_) => Err(PrepareError::PackedAndTree {
                path: dir.to_owned(),
            }),
        },
    }
}

/// A bundle unit's spec, as its start reads `dir/config.json` (PID 1's
/// defaults applied), and its root filesystem's path as `root.path` names
/// it (not checked: for a packed bundle, [`packed_rootfs`], it is the
/// absent `dir/rootfs`, and the unit's root is where rootfs.oci is
/// unpacked). Public so that `berth-build` reads a bundle at build time
/// exactly as a boot will.
pub fn bundle_spec(dir: &Path) -> Result<(Spec, PathBuf), PrepareError> {
    let path = dir.join("config.json");
    let bytes =
        read_small_file(&path, MAX_JSON, Accept::Regular).map_err(|source| PrepareError::Io {
            op: "read",
            path: path.clone(),
            source,
        })?;
    let mut spec =
        berth_runtime::spec::parse_config(&bytes).map_err(|source| PrepareError::BundleConfig {
            path: dir.to_owned(),
            source,
        })?;
    default_oom_score_adj(&mut spec);
    default_nofile(&mut spec, rlimits::pid1_nofile_hard())?;
    default_hook_timeouts(&mut spec);
    let rootfs = berth_runtime::spec::rootfs_path(&spec, dir).map_err(|source| {
        PrepareError::BundleRootfs {
            path: dir.to_owned(),
            source,
        }
    })?;
    Ok((spec, rootfs))
}

/// An image unit's runtime spec: the image config (user names resolved in
/// `rootfs`), the manifest's overrides (`persistent`: the host source of
/// each persistent mount, in order) and PID 1's defaults. What a unit
/// start uses; public so that `berth-build` runs the same conversion at
/// build time.
pub fn image_unit_spec(
    name: &str,
    image: &str,
    config: &berth_bundles::image::ImageConfig,
    rootfs: &Rootfs,
    program: &Program,
    persistent: &[PathBuf],
    cgroup_parent: Option<&str>,
) -> Result<Spec, PrepareError> {
    let overrides = program_overrides(program, persistent);
    let mut spec =
        runtime_spec(config, rootfs, &overrides).map_err(|source| PrepareError::Spec {
            image: image.to_owned(),
            source,
        })?;
    apply_program(&mut spec, name, program, cgroup_parent)?;
    default_oom_score_adj(&mut spec);
    Ok(spec)
}

/// The host sources of a program's persistent mounts as paths below
/// `data_dir`, unstaged: what `berth-build` checks a spec with.
pub fn persistent_sources(program: &Program, data_dir: &Path) -> Vec<PathBuf> {
    program
        .mounts
        .iter()
        .filter_map(|m| match m {
            Mount::Persistent { source, .. } => Some(data_dir.join(source)),
            Mount::Tmpfs { .. } => None,
        })
        .collect()
}

/// The manifest's overrides in `berth-bundles` terms; `persistent` holds
/// the host source of each persistent mount, in order.
fn program_overrides(program: &Program, persistent: &[PathBuf]) -> Overrides {
    let mut sources = persistent.iter();
    let mounts = program
        .mounts
        .iter()
        .filter_map(|m| match m {
            Mount::Persistent {
                target, read_only, ..
            } => sources
                .next()
                .map(|host| persistent_mount(host, target, *read_only)),
            Mount::Tmpfs { target, size, mode } => Some(tmpfs_mount(target, *size, *mode)),
        })
        .collect();
    Overrides {
        entrypoint: program.command.clone(),
        cmd: program.args.clone(),
        env: program
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        user: program.user.clone(),
        cwd: program
            .cwd
            .as_ref()
            .map(|c| c.to_string_lossy().into_owned()),
        mounts,
        ..Overrides::default()
    }
}

/// PID 1 runs with oom_score_adj -1000 and a container's first process
/// inherits it through clone (proc(5)): the OOM killer could then never pick
/// a container, and a service past its cgroup memory.max would loop in the
/// OOM killer forever instead of dying and being restarted. A spec that
/// says nothing gets the kernel's default, 0; one that sets a value keeps it.
fn default_oom_score_adj(spec: &mut Spec) {
    let Some(mut process) = spec.process().clone() else {
        return;
    };
    if process.oom_score_adj().is_none() {
        process.set_oom_score_adj(Some(0));
        spec.set_process(Some(process));
    }
}

/// The longest a bundle's OCI hook without its own `timeout` may run, in
/// seconds, before it is killed and counts as failed.
pub const HOOK_TIMEOUT_SECS: i64 = 10;

/// PID 1 waits for a unit's hooks (they run while its container is made
/// and removed) and reaps, reads signals and supervises nothing else
/// meanwhile: a hook without a `timeout` (the runtime spec makes it
/// optional, runc waits for ever) that hangs would hang the machine, its
/// power-off included. Such hooks get [`HOOK_TIMEOUT_SECS`].
fn default_hook_timeouts(spec: &mut Spec) {
    let Some(mut hooks) = spec.hooks().clone() else {
        return;
    };
    let bound = |list: &Option<Vec<oci_spec::runtime::Hook>>| {
        list.clone().map(|list| {
            list.into_iter()
                .map(|mut h| {
                    if h.timeout().is_none() {
                        h.set_timeout(Some(HOOK_TIMEOUT_SECS));
                    }
                    h
                })
                .collect()
        })
    };
    #[allow(deprecated)] // prestart: still run by runtimes, and by berth's
    {
        let prestart = bound(hooks.prestart());
        hooks.set_prestart(prestart);
    }
    let create_runtime = bound(hooks.create_runtime());
    hooks.set_create_runtime(create_runtime);
    let create_container = bound(hooks.create_container());
    hooks.set_create_container(create_container);
    let start_container = bound(hooks.start_container());
    hooks.set_start_container(start_container);
    let poststart = bound(hooks.poststart());
    hooks.set_poststart(poststart);
    let poststop = bound(hooks.poststop());
    hooks.set_poststop(poststop);
    spec.set_hooks(Some(hooks));
}

/// A bundle's config.json keeps its own limits; without an RLIMIT_NOFILE
/// its process would inherit PID 1's raised soft limit (runc leaves a
/// process its runtime's limits), so it gets a unit's default: soft 1024,
/// hard `nofile_hard` (PID 1's).
fn default_nofile(spec: &mut Spec, nofile_hard: u64) -> Result<(), PrepareError> {
    if let Some(process) = spec.process_mut() {
        let own: Vec<Rlimit> = process
            .rlimits()
            .iter()
            .flatten()
            .map(Rlimit::from)
            .collect();
        let limits = rlimits::unit_rlimits(&own, &[], nofile_hard);
        process.set_rlimits(Some(oci_rlimits(&limits)?));
    }
    Ok(())
}

/// `process.rlimits` of a spec.
fn oci_rlimits(limits: &[Rlimit]) -> Result<Vec<PosixRlimit>, PrepareError> {
    limits
        .iter()
        .map(|r| {
            r.to_oci()
                .map_err(|source| PrepareError::Rlimit { typ: r.typ, source })
        })
        .collect()
}

/// A bind mount of a directory of the data disk.
fn persistent_mount(host: &Path, target: &Path, read_only: bool) -> OciMount {
    let mut m = OciMount::default();
    m.set_destination(target.to_owned());
    m.set_typ(Some("bind".to_owned()));
    m.set_source(Some(host.to_owned()));
    let mut options = vec!["rbind".to_owned(), "nosuid".to_owned(), "nodev".to_owned()];
    options.push(if read_only { "ro" } else { "rw" }.to_owned());
    m.set_options(Some(options));
    m
}

fn tmpfs_mount(target: &Path, size: Option<u64>, mode: Option<u32>) -> OciMount {
    let mut m = OciMount::default();
    m.set_destination(target.to_owned());
    m.set_typ(Some("tmpfs".to_owned()));
    m.set_source(Some(PathBuf::from("tmpfs")));
    let mut options = vec!["nosuid".to_owned(), "nodev".to_owned()];
    if let Some(size) = size {
        options.push(format!("size={size}"));
    }
    if let Some(mode) = mode {
        options.push(format!("mode={mode:o}"));
    }
    m.set_options(Some(options));
    m
}

/// The manifest's container fields on top of a spec derived from an image:
/// network mode, resources and cgroup, capabilities, read-only root,
/// resource limits (the manifest's over a unit's default, RLIMIT_NOFILE
/// soft 1024, hard PID 1's: not the base spec's 1024/1024, which are
/// berth's and not the image's), and the default seccomp profile unless
/// the unit is `unconfined`.
pub fn apply_program(
    spec: &mut Spec,
    name: &str,
    program: &Program,
    cgroup_parent: Option<&str>,
) -> Result<(), PrepareError> {
    let mut linux = spec.linux().clone().unwrap_or_default();
    if program.network == NetworkMode::Host {
        // The VM's network: no namespace of its own.
        let namespaces = linux
            .namespaces()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.typ() != LinuxNamespaceType::Network)
            .collect();
        linux.set_namespaces(Some(namespaces));
    }
    // `network: none` keeps the image spec's new network namespace; each
    // start makes it with `lo` up (`new_netns_with_lo`).
    // Without a cgroup2 mount (`None`) the container stays in PID 1's
    // cgroup; resources then make the runtime refuse it, loudly.
    if let Some(parent) = cgroup_parent {
        linux.set_cgroups_path(Some(PathBuf::from(format!("/{parent}/{name}"))));
    }
    if !program.resources.is_empty() {
        linux.set_resources(Some(linux_resources(&program.resources)));
    }
    spec.set_linux(Some(linux));

    if let Some(process) = spec.process_mut() {
        let limits = rlimits::unit_rlimits(&[], &program.rlimits, rlimits::pid1_nofile_hard());
        process.set_rlimits(Some(oci_rlimits(&limits)?));
    }
    if let Some(names) = &program.capabilities {
        let mut caps = std::collections::HashSet::new();
        for n in names {
            let cap: Capability = serde_json::from_value(serde_json::Value::String(n.clone()))
                .map_err(|_| PrepareError::Capability { name: n.clone() })?;
            caps.insert(cap);
        }
        let mut process = spec.process().clone().unwrap_or_default();
        let mut set = LinuxCapabilities::default();
        set.set_bounding(Some(caps.clone()));
        set.set_effective(Some(caps.clone()));
        set.set_permitted(Some(caps));
        set.set_inheritable(None);
        set.set_ambient(None);
        process.set_capabilities(Some(set));
        spec.set_process(Some(process));
    }
    if program.read_only {
        let mut root = spec.root().clone().unwrap_or_default();
        root.set_readonly(Some(true));
        spec.set_root(Some(root));
    }
    if program.seccomp == SeccompMode::Default {
        // What the process can use: its permitted set, fixed by now.
        let permitted = (spec.process().as_ref())
            .and_then(|p| p.capabilities().as_ref())
            .and_then(|c| c.permitted().clone())
            .unwrap_or_default();
        let profile = berth_runtime::seccomp::default_profile(&permitted)
            .map_err(|source| PrepareError::Seccomp { source })?;
        let mut linux = spec.linux().clone().unwrap_or_default();
        linux.set_seccomp(Some(profile));
        spec.set_linux(Some(linux));
    }
    Ok(())
}

/// `resources` → `linux.resources` (cgroup v2 through the runtime).
pub fn linux_resources(r: &Resources) -> LinuxResources {
    let mut out = LinuxResources::default();
    if let Some(bytes) = r.memory {
        let mut m = LinuxMemory::default();
        m.set_limit(Some(i64::try_from(bytes).unwrap_or(i64::MAX)));
        out.set_memory(Some(m));
    }
    if let Some(cpus) = r.cpus {
        let mut c = LinuxCpu::default();
        // Validated to 0.01..=1024 CPUs: the quota is 1000 µs or more.
        let quota = (cpus * CPU_PERIOD_US as f64).round() as i64;
        c.set_quota(Some(quota));
        c.set_period(Some(CPU_PERIOD_US));
        out.set_cpu(Some(c));
    }
    if let Some(pids) = r.pids {
        let mut p = LinuxPids::default();
        p.set_limit(i64::try_from(pids).unwrap_or(i64::MAX));
        out.set_pids(Some(p));
    }
    out
}

/// Init's exit status in the runtime's terms.
fn runtime_status(status: ExitStatus) -> berth_runtime::ExitStatus {
    match status {
        ExitStatus::Code(c) => berth_runtime::ExitStatus::Exited(c),
        ExitStatus::Signal(s) => berth_runtime::ExitStatus::Signaled(s),
    }
}

/// The fields a bundle program may not set: its config.json is run as it is.
fn bundle_overrides(program: &Program) -> Vec<&'static str> {
    [
        ("command", program.command.is_some()),
        ("args", program.args.is_some()),
        ("env", !program.env.is_empty()),
        ("cwd", program.cwd.is_some()),
        ("user", program.user.is_some()),
        ("mounts", !program.mounts.is_empty()),
        ("network", program.network != NetworkMode::Host),
        ("resources", !program.resources.is_empty()),
        ("capabilities", program.capabilities.is_some()),
        ("read_only", program.read_only),
        ("rlimits", !program.rlimits.is_empty()),
    ]
    .into_iter()
    .filter_map(|(field, set)| set.then_some(field))
    .collect()
}

impl Launcher for ContainerLauncher {
    fn check(&self, name: &str, program: &Program) -> Result<(), LaunchError> {
        match &program.source {
            Source::Host => self.host.check(name, program),
            Source::Image(_) => Ok(()),
            Source::Bundle(dir) => {
                let fields = bundle_overrides(program);
                if fields.is_empty() {
                    return Ok(());
                }
                Err(LaunchError::Unsupported {
                    unit: name.to_owned(),
                    what: format!(
                        "{} for bundle {} (its config.json runs as it is)",
                        fields.join(", "),
                        dir.display()
                    ),
                    launcher: "container",
                })
            }
        }
    }

    fn can_start(&mut self, name: &str, program: &Program) -> bool {
        match &self.machine {
            Some(machine) if self.shares_machine_network(name, program) => machine.network_ended(),
            _ => true,
        }
    }

    fn spawn(
        &mut self,
        kind: UnitKind,
        name: &str,
        program: &Program,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> Result<Pid, LaunchError> {
        match program.source {
            Source::Host => {
                self.wait_for_network(name)?;
                self.host.spawn(kind, name, program, stdout, stderr)
            }
            Source::Image(_) | Source::Bundle(_) => {
                self.create_and_start(name, program.init, stdout, stderr)
            }
        }
    }

    fn signal(&mut self, name: &str, pid: Pid, signal: Signal) -> Result<(), LaunchError> {
        match self.live.get(name) {
            Some(c) if c.pid() == pid.as_raw() => {
                c.kill(signal as i32, false)
                    .map_err(|source| LaunchError::SignalContainer {
                        unit: name.to_owned(),
                        signal,
                        source: Box::new(source),
                    })
            }
            _ => self.host.signal(name, pid, signal),
        }
    }

    fn reaped(&mut self, name: &str, pid: Pid, status: ExitStatus) {
        let Some(mut container) = self.live.remove(name) else {
            // A host unit.
            self.host.reaped(name, pid, status);
            return;
        };
        if container.pid() != pid.as_raw() {
            // Not this container's process: keep it.
            self.live.insert(name.to_owned(), container);
            return;
        }
        // Its network namespace goes with it: ours was the last reference.
        self.netns.remove(name);
        container.set_exited(runtime_status(status));
        let before = container.warnings().len();
        if let Err(e) = container.delete(false) {
            log::warn!("delete container {name}: {}", error_chain(&e));
        }
        for w in container.warnings().iter().skip(before) {
            log::warn!("container {name}: {w}");
        }
    }

    fn cleanup(&mut self) {
        for (name, mut container) in std::mem::take(&mut self.live) {
            if let Err(e) = container.delete(true) {
                log::warn!("delete container {name}: {}", error_chain(&e));
            }
        }
        // Outside a mount namespace of its own (the process role) PID 1's
        // overlays and binds would outlive it.
        for root in std::mem::take(&mut self.mounted) {
            if let Err(e) = nix::mount::umount2(&root, nix::mount::MntFlags::MNT_DETACH) {
                log::warn!("unmount {}: {e}", root.display());
            }
        }
        // The parent cgroup made for the containers, now empty.
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        if let Some(mount) = berth_runtime::cgroup::find_cgroup2_mount(&mountinfo) {
            let dir = mount.join(&self.opts.cgroup_parent);
            match fs::remove_dir(&dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    log::warn!("remove cgroup {}: {e}", dir.display());
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse;

    fn program(json: &str) -> Program {
        let m = format!(
            r#"{{"version":1,"data_disk":{{"device":"/dev/vdb","fstype":"ext4"}},"services":[{json}]}}"#
        );
        parse(m.as_bytes(), &["busybox".to_owned()])
            .unwrap()
            .services
            .remove(0)
            .program
    }

    fn base() -> Spec {
        berth_bundles::spec::default_spec()
    }

    fn has_netns(spec: &Spec) -> bool {
        spec.linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| ns.iter().any(|n| n.typ() == LinuxNamespaceType::Network))
    }

    #[test]
    fn network_host_drops_the_namespace_and_none_keeps_it() {
        let mut spec = base();
        assert!(has_netns(&spec));
        apply_program(
            &mut spec,
            "web",
            &program(r#"{"name":"web","image":"busybox"}"#),
            Some("berth"),
        )
        .unwrap();
        assert!(!has_netns(&spec));
        let mut spec = base();
        apply_program(
            &mut spec,
            "web",
            &program(r#"{"name":"web","image":"busybox","network":"none"}"#),
            Some("berth"),
        )
        .unwrap();
        assert!(has_netns(&spec));
    }

    #[test]
    fn cgroup_resources_caps_and_read_only() {
        let mut spec = base();
        let p = program(
            r#"{"name":"db","image":"busybox","resources":{"memory":"64MiB","cpus":0.5,"pids":100},
                "capabilities":["CAP_NET_BIND_SERVICE","CAP_CHOWN"],"read_only":true}"#,
        );
        apply_program(&mut spec, "db", &p, Some("berth")).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/berth/db"))
        );
        let r = linux.resources().as_ref().unwrap();
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(64 << 20));
        assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(50_000));
        assert_eq!(r.cpu().as_ref().unwrap().period(), Some(100_000));
        assert_eq!(r.pids().as_ref().unwrap().limit(), 100);
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        let want: std::collections::HashSet<Capability> =
            [Capability::NetBindService, Capability::Chown].into();
        assert_eq!(caps.bounding().as_ref(), Some(&want));
        assert_eq!(caps.effective().as_ref(), Some(&want));
        assert_eq!(caps.permitted().as_ref(), Some(&want));
        assert!(caps.ambient().as_ref().is_none_or(|a| a.is_empty()));
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
    }

    /// Whether the spec `apply_program` makes for the unit `json` has a
    /// seccomp rule on `unshare` (the default profile's user-namespace
    /// rule), or `None` without a filter.
    fn denies_unshare(json: &str) -> Option<bool> {
        let mut spec = base();
        apply_program(&mut spec, "a", &program(json), None).unwrap();
        let profile = spec.linux().as_ref()?.seccomp().as_ref()?;
        let rules = profile.syscalls().clone().unwrap_or_default();
        Some(
            rules
                .iter()
                .any(|r| r.names().iter().any(|n| n == "unshare")),
        )
    }

    #[test]
    fn image_units_get_the_default_seccomp_profile_for_their_capabilities() {
        assert_eq!(
            denies_unshare(r#"{"name":"a","image":"busybox"}"#),
            Some(true)
        );
        // The profile follows the capabilities the manifest gives.
        assert_eq!(
            denies_unshare(r#"{"name":"a","image":"busybox","capabilities":["CAP_SYS_ADMIN"]}"#),
            Some(false)
        );
        assert_eq!(
            denies_unshare(r#"{"name":"a","image":"busybox","seccomp":"unconfined"}"#),
            None
        );
    }

    #[test]
    fn no_resources_no_limits_but_a_cgroup() {
        let mut spec = base();
        apply_program(
            &mut spec,
            "x",
            &program(r#"{"name":"x","image":"busybox"}"#),
            Some("t1"),
        )
        .unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.resources().is_none());
        assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/t1/x")));
        let mut spec = base();
        apply_program(
            &mut spec,
            "x",
            &program(r#"{"name":"x","image":"busybox"}"#),
            None,
        )
        .unwrap();
        assert_eq!(spec.linux().as_ref().unwrap().cgroups_path(), &None);
    }

    #[test]
    fn mounts_become_bind_and_tmpfs() {
        let m = persistent_mount(Path::new("/data/web"), Path::new("/srv"), true);
        assert_eq!(m.typ().as_deref(), Some("bind"));
        assert_eq!(m.source().as_deref(), Some(Path::new("/data/web")));
        assert!(m.options().as_ref().unwrap().contains(&"ro".to_owned()));
        let t = tmpfs_mount(Path::new("/tmp"), Some(1 << 20), Some(0o1777));
        assert_eq!(
            t.options().as_ref().unwrap(),
            &["nosuid", "nodev", "size=1048576", "mode=1777"]
        );
    }

    #[test]
    fn bundles_refuse_overrides() {
        let l = ContainerLauncher::new(ContainerOptions {
            images: "/nonexistent".into(),
            run_dir: "/nonexistent".into(),
            data_dir: "/nonexistent".into(),
            cgroup_parent: "berth".into(),
            diff_id: DiffIdCheck::Verify,
            resolv_conf: None,
            hostname: None,
        });
        let mut p = program(r#"{"name":"b","bundle":"/b"}"#);
        l.check("b", &p).unwrap();
        // Validation refuses these first; the launcher refuses them too.
        p.args = Some(vec!["x".to_owned()]);
        p.read_only = true;
        let err = error_chain(&l.check("b", &p).unwrap_err());
        assert!(err.contains("args, read_only for bundle /b"), "{err}");
    }

    fn rlimits_of(spec: &Spec) -> Vec<Rlimit> {
        let process = spec.process().as_ref().unwrap();
        process
            .rlimits()
            .iter()
            .flatten()
            .map(Rlimit::from)
            .collect()
    }

    fn limit(typ: PosixRlimitType, soft: u64, hard: u64) -> Rlimit {
        Rlimit { typ, soft, hard }
    }

    #[test]
    fn image_units_get_1024_open_files_and_pid1s_hard_limit() {
        let nofile = |soft, hard| limit(PosixRlimitType::RlimitNofile, soft, hard);
        let mut spec = base();
        // The base spec's 1024/1024 (oci-spec's default) is replaced.
        assert_eq!(rlimits_of(&spec), [nofile(1024, 1024)]);
        apply_program(
            &mut spec,
            "a",
            &program(r#"{"name":"a","image":"busybox"}"#),
            None,
        )
        .unwrap();
        let hard = rlimits::pid1_nofile_hard();
        assert_eq!(rlimits_of(&spec), [nofile(hard.min(1024), hard)]);
        // The manifest's: in place of the default, or besides it.
        let mut spec = base();
        apply_program(
            &mut spec,
            "a",
            &program(
                r#"{"name":"a","image":"busybox","rlimits":["nofile=64:128","core=unlimited"]}"#,
            ),
            None,
        )
        .unwrap();
        assert_eq!(
            rlimits_of(&spec),
            [
                nofile(64, 128),
                limit(PosixRlimitType::RlimitCore, u64::MAX, u64::MAX)
            ]
        );
        let mut spec = base();
        let p = program(r#"{"name":"a","image":"busybox","rlimits":["nproc=100"]}"#);
        apply_program(&mut spec, "a", &p, None).unwrap();
        assert_eq!(
            rlimits_of(&spec),
            [
                nofile(hard.min(1024), hard),
                limit(PosixRlimitType::RlimitNproc, 100, 100)
            ]
        );
    }

    #[test]
    fn bundles_keep_their_limits_and_get_the_open_files_default() {
        let nofile = |soft, hard| limit(PosixRlimitType::RlimitNofile, soft, hard);
        let core = limit(PosixRlimitType::RlimitCore, 0, 0);
        let with = |limits: Option<Vec<Rlimit>>| {
            let mut spec = base();
            let limits = limits.map(|l| oci_rlimits(&l).unwrap());
            spec.process_mut().as_mut().unwrap().set_rlimits(limits);
            default_nofile(&mut spec, 65536).unwrap();
            rlimits_of(&spec)
        };
        assert_eq!(with(Some(vec![nofile(100, 200)])), [nofile(100, 200)]);
        assert_eq!(with(Some(vec![core])), [core, nofile(1024, 65536)]);
        assert_eq!(with(None), [nofile(1024, 65536)]);
    }

    #[test]
    fn bundle_hooks_without_a_timeout_get_pid1s() {
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"user": {"uid": 0, "gid": 0}, "args": ["true"], "cwd": "/"},
            "root": {"path": "rootfs"},
            "hooks": {
                "prestart": [{"path": "/bin/a"}],
                "createRuntime": [{"path": "/bin/b"}, {"path": "/bin/c", "timeout": 60}],
                "createContainer": [{"path": "/bin/d"}],
                "startContainer": [{"path": "/bin/e"}],
                "poststart": [{"path": "/bin/f"}],
                "poststop": [{"path": "/bin/g"}]
            }
        });
        let dir = std::env::temp_dir().join(format!("berth-hooks-{}", std::process::id()));
        fs::create_dir_all(dir.join("rootfs")).unwrap();
        fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let (spec, _) = bundle_spec(&dir).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        let hooks = spec.hooks().clone().unwrap();
        #[allow(deprecated)]
        let prestart = hooks.prestart().clone().unwrap();
        let timeouts: Vec<(String, Option<i64>)> = prestart
            .iter()
            .chain(hooks.create_runtime().iter().flatten())
            .chain(hooks.create_container().iter().flatten())
            .chain(hooks.start_container().iter().flatten())
            .chain(hooks.poststart().iter().flatten())
            .chain(hooks.poststop().iter().flatten())
            .map(|h| (h.path().display().to_string(), h.timeout()))
            .collect();
        let ten = Some(HOOK_TIMEOUT_SECS);
        assert_eq!(
            timeouts,
            [
                ("/bin/a".into(), ten),
                ("/bin/b".into(), ten),
                ("/bin/c".into(), Some(60)),
                ("/bin/d".into(), ten),
                ("/bin/e".into(), ten),
                ("/bin/f".into(), ten),
                ("/bin/g".into(), ten),
            ]
        );
    }

    #[test]
    fn packed_bundles_hold_rootfs_oci_alone_and_as_a_directory() {
        let dir = std::env::temp_dir().join(format!("berth-packed-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let err = |dir: &Path| error_chain(&packed_rootfs(dir).unwrap_err());
        // A tree bundle, and one with no root at all (the runtime refuses
        // it at create, as before): not packed.
        assert_eq!(packed_rootfs(&dir).unwrap(), None);
        fs::create_dir(dir.join("rootfs")).unwrap();
        assert_eq!(packed_rootfs(&dir).unwrap(), None);
        // Both: whatever kind `rootfs` is, a dangling symlink too.
        fs::create_dir(dir.join("rootfs.oci")).unwrap();
        let both = format!("bundle {} holds both rootfs and rootfs.oci", dir.display());
        assert!(err(&dir).starts_with(&both), "{}", err(&dir));
        fs::remove_dir(dir.join("rootfs")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", dir.join("rootfs")).unwrap();
        assert!(err(&dir).starts_with(&both), "{}", err(&dir));
        fs::remove_file(dir.join("rootfs")).unwrap();
        assert_eq!(packed_rootfs(&dir).unwrap(), Some(dir.join("rootfs.oci")));
        // Not a directory: a file, or a symlink (not followed) to one.
        let not_dir = format!("bundle {}: rootfs.oci is not a directory", dir.display());
        fs::rename(dir.join("rootfs.oci"), dir.join("layout")).unwrap();
        std::os::unix::fs::symlink("layout", dir.join("rootfs.oci")).unwrap();
        assert_eq!(err(&dir), not_dir);
        fs::remove_file(dir.join("rootfs.oci")).unwrap();
        fs::write(dir.join("rootfs.oci"), "").unwrap();
        assert_eq!(err(&dir), not_dir);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_packed_bundles_root_path_must_be_rootfs() {
        let dir = std::env::temp_dir().join(format!("berth-packed-root-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("rootfs.oci")).unwrap();
        let mut config = serde_json::to_value(base()).unwrap();
        config["root"]["path"] = "/srv/root".into();
        fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let l = ContainerLauncher::new(ContainerOptions {
            images: "/nonexistent".into(),
            run_dir: dir.join("run"),
            data_dir: "/nonexistent".into(),
            cgroup_parent: "berth".into(),
            diff_id: DiffIdCheck::Verify,
            resolv_conf: None,
            hostname: None,
        });
        let e = error_chain(&l.prepare_bundle(&dir, "b").unwrap_err());
        assert_eq!(
            e,
            format!(
                "bundle {}: root.path \"/srv/root\" is not \"rootfs\", the root its rootfs.oci packs",
                dir.display()
            )
        );
        // "rootfs" it is, but the layout holds no image: the bundle and
        // the layout are named, and no root is left behind.
        config["root"]["path"] = "./rootfs/".into();
        fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let e = error_chain(&l.prepare_bundle(&dir, "b").unwrap_err());
        assert!(
            e.starts_with(&format!("bundle {}: open rootfs.oci: ", dir.display())),
            "{e}"
        );
        assert!(!dir.join("run/rootfs/b").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn containers_do_not_inherit_pid1s_oom_score_adj() {
        let mut spec = base();
        assert_eq!(spec.process().as_ref().unwrap().oom_score_adj(), None);
        default_oom_score_adj(&mut spec);
        assert_eq!(spec.process().as_ref().unwrap().oom_score_adj(), Some(0));

        let mut process = spec.process().clone().unwrap();
        process.set_oom_score_adj(Some(500));
        spec.set_process(Some(process));
        default_oom_score_adj(&mut spec);
        assert_eq!(spec.process().as_ref().unwrap().oom_score_adj(), Some(500));
    }

    #[test]
    fn overlay_options_refuse_what_mount_data_cannot_carry() {
        let (l, u, w) = (
            Path::new("/r/i/a"),
            Path::new("/r/u/upper"),
            Path::new("/r/u/work"),
        );
        assert_eq!(
            overlay_options(l, u, w).unwrap(),
            "lowerdir=/r/i/a,upperdir=/r/u/upper,workdir=/r/u/work,index=off"
        );
        for bad in ["/r/a,b", "/r/a:b", "/r/a\\b"] {
            let e = overlay_options(Path::new(bad), u, w).unwrap_err();
            assert!(matches!(e, PrepareError::OverlayPath { .. }), "{bad}: {e}");
            assert!(overlay_options(l, Path::new(bad), w).is_err());
        }
    }

    #[test]
    fn missing_layout_lists_no_images() {
        assert!(
            list_images(Path::new("/nonexistent/layout"))
                .unwrap()
                .is_empty()
        );
        let dir = std::env::temp_dir().join(format!("berth-list-images-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("index.json"),
            format!(
                r#"{{"schemaVersion":2,"manifests":[
                {{"mediaType":"m","digest":"sha256:00","size":1,"annotations":{{"{REF_NAME}":"b"}}}},
                {{"mediaType":"m","digest":"sha256:01","size":1,"annotations":{{"{REF_NAME}":"a"}}}},
                {{"mediaType":"m","digest":"sha256:02","size":1}}]}}"#
            ),
        )
        .unwrap();
        assert_eq!(list_images(&dir).unwrap(), ["a", "b"]);
        fs::write(dir.join("index.json"), "{").unwrap();
        assert!(list_images(&dir).is_err());
        // PID 1 reads it at every boot: an endless device or a FIFO is an
        // error at once, not a hang or the whole memory.
        fs::remove_file(dir.join("index.json")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.join("index.json")).unwrap();
        let err = error_chain(&list_images(&dir).unwrap_err());
        assert!(err.ends_with("not a regular file"), "{err}");
        fs::remove_file(dir.join("index.json")).unwrap();
        nix::unistd::mkfifo(
            &dir.join("index.json"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let err = error_chain(&list_images(&dir).unwrap_err());
        assert!(err.ends_with("not a regular file"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
