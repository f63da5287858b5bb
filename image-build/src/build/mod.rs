//! `berth-build build MANIFEST -o OUTDIR --kernel DEB_OR_DIR [--init PATH]`.
//!
//! The build manifest is berth-init's manifest plus a top-level `images`
//! map `{NAME: "oci:PATH[:TAG]" | "docker-archive:PATH[:REF]"}` (paths
//! relative to the manifest file's directory, or to the current directory
//! when the manifest is a pipe: [`manifest_base`]). The build:
//!
//! 1. takes `images` out, rewrites each `bundle` (a directory on the build
//!    host, relative to the manifest) to where the bundle will be in the
//!    initramfs, `/berth/bundles/{tasks,services}/NAME`, adds the modules
//!    the machine needs (below), and validates the result with berth-init's
//!    own validation, the image names being the map's keys;
//! 2. resolves and verifies every image and writes them as one OCI layout
//!    at `/berth/images`, each tagged with its NAME, layers recompressed to
//!    zstd and stored once when images share them ([`layout`]);
//! 3. copies each bundle's `config.json` (with `root.path` set to
//!    `rootfs`; berth-init runs it unchanged, from that directory) and the
//!    files its bind sources name relative to the bundle, and packs its root
//!    filesystem as a layer ([`pack`]: owners, modes, hard links, devices
//!    and the extended attributes berth-init sets kept) in a one-image OCI
//!    layout `rootfs.oci` beside it, recompressed and checked as the images
//!    are; berth-init unpacks and verifies it when the unit is prepared
//!    ([`bundle_entries`]);
//! 4. adds the kernel modules with their dependencies and a `modules.dep`
//!    ([`kernel`]; compressed ones decompressed, as plain `.ko` files),
//!    `/init` (a static berth-init), `/dev/console`,
//!    `/dev/null`, the mount point directories and
//!    `/etc/berth/manifest.json`;
//! 5. writes OUTDIR/initrd.img (newc cpio, zstd) and OUTDIR/vmlinuz.
//!
//! Everything is written into a temporary directory next to OUTDIR and
//! renamed into place at the end: a failed build leaves no output.
//!
//! What would fail at boot fails the build, with berth-init's, the
//! unpacker's and the runtime's own code (not copies of their rules):
//! - a bundle's `config.json` is read as berth-init reads it
//!   ([`berth_init::container::bundle_spec`]) and planned as the runtime
//!   plans a container before creating it ([`runtime_check`]);
//! - every tar entry of every layer is read with the unpacker's reading
//!   ([`berth_bundles::apply::read_entry`], see [`layout`]);
//! - each image unit's spec is derived as berth-init derives it
//!   ([`berth_init::container::image_unit_spec`]: the image config, the
//!   unit's overrides, user names looked up in the image's `/etc/passwd`
//!   and `/etc/group` as its layers leave them) and planned by the
//!   runtime;
//! - a host unit's program must be an executable file of the initramfs
//!   being built ([`check_host_units`]): PID 1's root holds `/init` and
//!   what the manifest brings, no shell or busybox.
//!
//! A bundle whose `rootfs` is a symlink packs the tree it points to: the
//! runtime canonicalizes a bundle's rootfs, so on a host such a bundle
//! runs that tree (the link itself would be packed as a dangling link).
//!
//! Modules added to the manifest's lists (berth-init loads only what the
//! manifest names, plus `button` and `evdev` for the power button, which it
//! loads by itself and the build therefore always ships): `virtio_pci` and
//! `virtio_blk` when there is a `data_disk`; `virtio_pci` and `virtio_net`
//! to `network.modules` when `network.interfaces` is not empty (berth-init
//! loads those with the network, in the background) — QEMU's disk and NIC;
//! Debian's cloud kernel has all of them as modules — and the module of
//! the data disk's `fstype` when the kernel has it as a module (by the
//! type's name or its `fs-TYPE` alias: `iso9660` is `isofs`), and
//! `overlay` when a unit that is not `read_only` (or is, but holds
//! CAP_SYS_ADMIN) runs from an image (berth-init unpacks each image once
//! and gives every such unit an overlayfs on it; a read-only unit's root
//! is the unpacked tree itself, bound read-only). `virtio_pci` is the bus
//! driver and no module `depends=` on it, so it must be named. A name of
//! the manifest's lists that is an alias (`fs-iso9660`) is written as the
//! module that has it: berth-init loads modules by name only.

pub mod cpio;
pub mod elf;
pub mod kernel;
pub mod layout;
pub mod pack;
pub mod tree;

use std::collections::HashMap;
use std::error::Error;
use std::fs;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use berth_bundles::image::{ImageRef, MAX_JSON};
use berth_bundles::small_file::{Accept, read_small_file};
use serde_json::Value;

use berth_init::manifest::{Program, Source};

use crate::args::{Args, ArgsError};
use cpio::{CpioError, Entry, Kind, Tree};
use kernel::{KernelError, KernelTree, Provider};
use layout::{ImageSummary, LayoutError, LayoutWriter};

/// Where berth-init reads its manifest.
pub const MANIFEST_PATH: &str = "etc/berth/manifest.json";
/// Where berth-init finds the image layout (its default `--images`).
pub const IMAGES_PATH: &str = "berth/images";
/// Where bundles are copied: `/berth/bundles/{tasks,services}/NAME`.
pub const BUNDLES_PATH: &str = "berth/bundles";
/// Modules berth-init loads by itself on a machine (power button).
pub const INIT_MODULES: &[&str] = &["button", "evdev"];
/// zstd level of the initramfs; the kernel unpacks any level.
const INITRD_LEVEL: i32 = 9;

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("read build manifest {path}")]
    ReadManifest {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse build manifest {path}")]
    ParseManifest {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("build manifest {path}: {message}")]
    BadManifest { path: PathBuf, message: String },
    #[error("build manifest {path}")]
    Invalid {
        path: PathBuf,
        source: berth_init::manifest::ManifestError,
    },
    #[error(
        "read init binary {path} (build it with `cargo build --release --target \
         x86_64-unknown-linux-musl -p berth-init`, or pass --init PATH)"
    )]
    ReadInit {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("init binary {path} is not a static executable")]
    InitElf {
        path: PathBuf,
        source: elf::ElfError,
    },
    #[error(
        "init binary {path} is dynamically linked (it names a program interpreter); \
         PID 1 of the initramfs must be static: cargo build --release --target x86_64-unknown-linux-musl -p berth-init"
    )]
    InitDynamic { path: PathBuf },
    #[error(
        "init binary {path} is not berth-init: it lacks the identity every berth-init holds \
         (what `berth-init --version` prints), so it would boot and ignore the manifest; \
         build berth-init with `cargo build --release --target x86_64-unknown-linux-musl -p berth-init`"
    )]
    NotBerthInit { path: PathBuf },
    #[error(
        "init binary {path} is berth-init {version}, which reads manifest version {reads}, \
         but this berth-build writes version {writes}: build both from the same source"
    )]
    InitManifestVersion {
        path: PathBuf,
        version: String,
        reads: u32,
        writes: u32,
    },
    #[error("--kernel {path}")]
    Kernel { path: PathBuf, source: KernelError },
    #[error("pack images")]
    Layout(#[source] LayoutError),
    #[error("bundle {path} of {unit}")]
    Bundle {
        unit: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bundle {path} of {unit}: {message}")]
    BadBundle {
        unit: String,
        path: PathBuf,
        message: String,
    },
    #[error("{kind} {unit}: {message}")]
    Unit {
        kind: &'static str,
        unit: String,
        message: String,
    },
    #[error(
        "{kind} {unit}: host units run programs from PID 1's own root, the initramfs, \
         where {program} {found} (it holds berth-init as /init and what the manifest brings): \
         run it from an image unit (\"image\": NAME) whose image has it"
    )]
    HostProgram {
        kind: &'static str,
        unit: String,
        program: String,
        /// `is not an executable file` or `is not found`.
        found: &'static str,
    },
    #[error(
        "{kind} {unit}: cwd {cwd} is not a directory of the initramfs, PID 1's own root \
         where host units run (it holds berth-init as /init and what the manifest brings)"
    )]
    HostCwd {
        kind: &'static str,
        unit: String,
        cwd: String,
    },
    #[error("initramfs entry")]
    Cpio(#[source] CpioError),
    #[error("output {path}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The inputs of a build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub manifest: PathBuf,
    pub out: PathBuf,
    pub kernel: PathBuf,
    pub init: PathBuf,
    /// Progress lines on stderr.
    pub progress: bool,
}

/// What a build produced, for the summary.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub images: Vec<ImageSummary>,
    pub modules: Vec<String>,
    pub release: String,
    pub initrd_size: u64,
    pub entries: usize,
    /// The init's version and size in bytes.
    pub init_version: String,
    pub init_size: u64,
    pub bundles: Vec<BundleSummary>,
}

/// A bundle as copied for one unit (each unit gets its own copy).
#[derive(Debug, Clone)]
pub struct BundleSummary {
    pub kind: &'static str,
    pub unit: String,
    pub path: PathBuf,
    /// Bytes of the files packed (a file with several names once) and
    /// copied (`config.json`, bind sources).
    pub bytes: u64,
    /// Bytes of its root filesystem's zstd layer, config and manifest.
    pub stored: u64,
}

/// The static init a workspace build makes.
pub fn default_init() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/x86_64-unknown-linux-musl/release/berth-init")
}

pub fn run(argv: &[String]) -> Result<(), Box<dyn Error>> {
    // `-o` is the one short option; the shared parser knows long ones only.
    if argv.last().is_some_and(|a| a == "-o") {
        return Err(ArgsError::MissingValue("-o".into()).into());
    }
    let argv: Vec<String> = argv
        .iter()
        .map(|a| {
            if a == "-o" {
                "--out".to_owned()
            } else {
                a.clone()
            }
        })
        .collect();
    let args = Args::parse(&argv, &[], &["--out", "--kernel", "--init"])?;
    let usage = "MANIFEST -o OUTDIR --kernel DEB_OR_DIR [--init PATH]";
    args.expect(1, usage)?;
    let out = args.value("--out").ok_or("missing -o OUTDIR")?;
    let kernel = args
        .value("--kernel")
        .ok_or("missing --kernel DEB_OR_DIR (a linux-image-*-cloud-amd64 .deb or unpacked tree)")?;
    let init = args
        .value("--init")
        .map_or_else(default_init, PathBuf::from);
    let opts = BuildOptions {
        manifest: PathBuf::from(&args.positional[0]),
        out: PathBuf::from(out),
        kernel: PathBuf::from(kernel),
        init,
        progress: std::io::stderr().is_terminal(),
    };
    let report = build(&opts)?;
    print_summary(&opts, &report);
    Ok(())
}

fn print_summary(opts: &BuildOptions, r: &BuildReport) {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    out!("built {} (kernel {})", opts.out.display(), r.release);
    for i in &r.images {
        let shared = if i.shared > 0 {
            format!(", {:.2} MiB shared with earlier images", mib(i.shared))
        } else {
            String::new()
        };
        out!(
            "  image {:<16} {} layer(s), {:.2} MiB unpacked, {:.2} MiB zstd{shared}  ({})",
            i.name,
            i.layers,
            mib(i.unpacked),
            mib(i.stored),
            i.reference
        );
    }
    for b in &r.bundles {
        out!(
            "  bundle for {} {:<10} {:.2} MiB, root filesystem {:.2} MiB zstd  ({})",
            b.kind,
            b.unit,
            mib(b.bytes),
            mib(b.stored),
            b.path.display()
        );
    }
    out!(
        "  modules: {}",
        if r.modules.is_empty() {
            "none".into()
        } else {
            r.modules.join(" ")
        }
    );
    out!(
        "  init: berth-init {}, {:.2} MiB",
        r.init_version,
        mib(r.init_size)
    );
    out!(
        "  initrd.img: {:.2} MiB ({} entries)",
        mib(r.initrd_size),
        r.entries
    );
}

/// A bundle to copy: where it is on the host, where it goes.
#[derive(Debug, Clone)]
struct BundleCopy {
    kind: &'static str,
    unit: String,
    host: PathBuf,
    archive: String,
}

/// The build manifest turned into the init manifest (as JSON), the image
/// map and the bundles. Pure: no file is read but the manifest's bytes.
#[derive(Debug)]
pub struct Prepared {
    pub manifest: Value,
    /// NAME → reference, sorted.
    pub images: Vec<(String, String)>,
    bundles: Vec<BundleCopy>,
    /// The init manifest as berth-init will read it.
    parsed: berth_init::manifest::Manifest,
}

/// The directory the manifest's relative image and bundle paths are
/// relative to: the manifest file's own directory, or the current
/// directory when the manifest is not a regular file (`<(jq . m.json)` is
/// a pipe at `/dev/fd/63`, whose directory means nothing to its writer).
pub fn manifest_base(path: &Path) -> PathBuf {
    match fs::metadata(path) {
        Ok(m) if m.is_file() => match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        },
        _ => PathBuf::from("."),
    }
}

/// What the kernel has for a module name or alias ([`KernelTree::provider`]).
pub type ModuleLookup<'a> = dyn Fn(&str) -> Result<Provider, BuildError> + 'a;

/// Splits a build manifest: removes `images`, rewrites `bundle` paths
/// (relative ones from `base`, see [`manifest_base`]), writes the modules
/// its lists name by an alias by their names and adds the machine's
/// modules (`lookup` says what the kernel has), and validates the rest
/// with berth-init's validation.
pub fn prepare(
    path: &Path,
    base: &Path,
    bytes: &[u8],
    lookup: &ModuleLookup<'_>,
) -> Result<Prepared, BuildError> {
    let bad = |message: String| BuildError::BadManifest {
        path: path.to_owned(),
        message,
    };
    let mut value: Value = serde_json::from_slice(berth_init::manifest::without_bom(bytes))
        .map_err(|source| BuildError::ParseManifest {
            path: path.to_owned(),
            source,
        })?;
    let obj = value
        .as_object_mut()
        .ok_or_else(|| bad("the top level must be an object".into()))?;
    let mut images = Vec::new();
    if let Some(map) = obj.remove("images") {
        let map = map
            .as_object()
            .ok_or_else(|| bad("images: must be an object {NAME: IMAGE_REF}".into()))?;
        for (name, reference) in map {
            // The name is the image's org.opencontainers.image.ref.name
            // in the appliance's layout (the OCI grammar: alphanumeric
            // components joined by - . _ : / @ +).
            let mut chars = name.chars();
            let well_formed = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
                && name.len() <= 128
                && chars.all(|c| c.is_ascii_alphanumeric() || "-._:/@+".contains(c))
                && !name.contains("..");
            if !well_formed {
                return Err(bad(format!(
                    "images: {:?} is not an image name (letters, digits and - . _ : / @ +, starting with a letter or digit)",
                    berth_bundles::printable(name)
                )));
            }
            let reference = reference.as_str().ok_or_else(|| {
                bad(format!(
                    "images.{name}: must be a string oci:PATH[:TAG] or docker-archive:PATH[:REF]"
                ))
            })?;
            images.push((name.clone(), reference.to_owned()));
        }
    }
    images.sort();
    // Field names and types, checked on the file as written (the full
    // check below runs on the manifest as it goes into the appliance,
    // whose line and column would not be the user's).
    berth_init::manifest::check_shape(bytes).map_err(|source| BuildError::Invalid {
        path: path.to_owned(),
        source,
    })?;
    let mut bundles = Vec::new();
    for kind in ["tasks", "services"] {
        let Some(list) = obj.get_mut(kind).and_then(Value::as_array_mut) else {
            continue;
        };
        for (i, unit) in list.iter_mut().enumerate() {
            let Some(unit) = unit.as_object_mut() else {
                continue;
            };
            let name = unit
                .get("name")
                .and_then(Value::as_str)
                .map_or_else(|| format!("{i}"), str::to_owned);
            let Some(bundle) = unit.get("bundle").and_then(Value::as_str) else {
                continue;
            };
            if name.contains('/') || name.starts_with('.') || name.is_empty() {
                return Err(bad(format!("{kind}.{name}: bad unit name for a bundle")));
            }
            let archive = format!("{BUNDLES_PATH}/{kind}/{name}");
            bundles.push(BundleCopy {
                kind: if kind == "tasks" { "task" } else { "service" },
                unit: name,
                host: base.join(bundle),
                archive: archive.clone(),
            });
            unit.insert("bundle".into(), Value::String(format!("/{archive}")));
        }
    }
    let network_modules = obj
        .get_mut("network")
        .and_then(|n| n.get_mut("modules"))
        .and_then(Value::as_array_mut);
    if let Some(list) = network_modules {
        name_aliased_modules(list, lookup)?;
    }
    if let Some(list) = obj.get_mut("modules").and_then(Value::as_array_mut) {
        name_aliased_modules(list, lookup)?;
    }
    add_machine_modules(obj, lookup)?;
    let names: Vec<String> = images.iter().map(|(n, _)| n.clone()).collect();
    let text = serde_json::to_vec(&value).unwrap_or_default();
    let parsed =
        berth_init::manifest::parse(&text, &names).map_err(|source| BuildError::Invalid {
            path: path.to_owned(),
            source,
        })?;
    Ok(Prepared {
        manifest: value,
        images,
        bundles,
        parsed,
    })
}

/// Writes the names of a module list that are aliases (`fs-iso9660`,
/// `crypto-crc32c`) as the modules that provide them, as modprobe would
/// load them: berth-init loads modules by name only (its `modules.dep`
/// index), so an alias would not be found at boot. One a built-in module
/// provides becomes that module's name, which berth-init skips. A name
/// nothing provides is left for the module resolution to refuse.
fn name_aliased_modules(
    list: &mut Vec<Value>,
    lookup: &ModuleLookup<'_>,
) -> Result<(), BuildError> {
    let mut named: Vec<Value> = Vec::with_capacity(list.len());
    for v in list.drain(..) {
        // Not a string: left for validation to refuse.
        let Some(name) = v.as_str() else {
            named.push(v);
            continue;
        };
        let own = berth_init::modules::module_name(name);
        let names = match lookup(name)? {
            Provider::Modules(modules) if modules != [own.clone()] => modules,
            Provider::Builtin(module) if module != own => vec![module],
            _ => vec![name.to_owned()],
        };
        for n in names {
            if !named.iter().any(|v| v.as_str() == Some(n.as_str())) {
                named.push(Value::String(n));
            }
        }
    }
    *list = named;
    Ok(())
}

/// The module files that provide the filesystem type `fstype`: a module
/// of that name, else the ones with the alias `fs-TYPE`, which the kernel
/// asks modprobe for when a mount names a type it lacks
/// (fs/filesystems.c `get_fs_type`): `iso9660` is in `isofs`.
fn fs_modules(fstype: &str, lookup: &ModuleLookup<'_>) -> Result<Vec<String>, BuildError> {
    Ok(match lookup(fstype)? {
        Provider::Modules(modules) => modules,
        Provider::Builtin(_) => Vec::new(),
        Provider::Missing => match lookup(&format!("fs-{fstype}"))? {
            Provider::Modules(modules) => modules,
            Provider::Builtin(_) | Provider::Missing => Vec::new(),
        },
    })
}

/// Appends the modules the machine's disk and NIC need (see the module docs).
fn add_machine_modules(
    obj: &mut serde_json::Map<String, Value>,
    lookup: &ModuleLookup<'_>,
) -> Result<(), BuildError> {
    let mut extra: Vec<String> = Vec::new();
    if let Some(disk) = obj.get("data_disk") {
        extra.push("virtio_pci".into());
        extra.push("virtio_blk".into());
        if let Some(fs) = disk.get("fstype").and_then(Value::as_str) {
            extra.extend(fs_modules(fs, lookup)?);
        }
    }
    let has_interfaces = obj
        .get("network")
        .and_then(|n| n.get("interfaces"))
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    if has_interfaces {
        // The NIC's drivers go with the network, which berth-init sets up
        // in the background (see berth_init::machine): `network.modules`.
        let net_extra: Vec<String> = vec!["virtio_pci".into(), "virtio_net".into()];
        if let Some(list) = obj
            .get_mut("network")
            .and_then(Value::as_object_mut)
            .map(|n| {
                n.entry("modules")
                    .or_insert_with(|| Value::Array(Vec::new()))
            })
            .and_then(Value::as_array_mut)
        {
            append_modules(list, net_extra, lookup)?;
        }
    }
    let writable_image_units = ["tasks", "services"]
        .iter()
        .filter_map(|k| obj.get(*k).and_then(Value::as_array))
        .flatten()
        .any(|unit| {
            // As berth_init::container::binds_root decides.
            let read_only = unit.get("read_only").and_then(Value::as_bool) == Some(true);
            let sys_admin = unit
                .get("capabilities")
                .and_then(Value::as_array)
                .is_some_and(|caps| caps.iter().any(|c| c == "CAP_SYS_ADMIN"));
            unit.get("image").is_some() && (!read_only || sys_admin)
        });
    if writable_image_units {
        extra.push("overlay".into());
    }
    if extra.is_empty() {
        return Ok(());
    }
    let modules = obj
        .entry("modules")
        .or_insert_with(|| Value::Array(Vec::new()));
    // A non-array `modules` is left for validation to refuse.
    if let Some(list) = modules.as_array_mut() {
        append_modules(list, extra, lookup)?;
    }
    Ok(())
}

/// Appends the modules of `extra` the kernel has as module files and
/// `list` does not name yet.
fn append_modules(
    list: &mut Vec<Value>,
    extra: Vec<String>,
    lookup: &ModuleLookup<'_>,
) -> Result<(), BuildError> {
    for m in extra {
        if list.iter().any(|v| v.as_str() == Some(m.as_str())) {
            continue;
        }
        if let Provider::Modules(modules) = lookup(&m)?
            && modules == [m.clone()]
        {
            list.push(Value::String(m));
        }
    }
    Ok(())
}

/// Removes the temporary directory unless the build got to the end, and
/// the directories above it that the build made (`-o a/b/out` with no
/// `a`), so a failed build leaves nothing.
struct TempDir {
    path: PathBuf,
    keep: bool,
    /// The highest directory that did not exist before the build.
    made: Option<PathBuf>,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
            if let Some(top) = &self.made {
                // Deepest first; one that is not empty stays.
                let mut dir = self.path.parent();
                while let Some(d) = dir {
                    if fs::remove_dir(d).is_err() || d == top {
                        break;
                    }
                    dir = d.parent();
                }
            }
        }
        crate::interrupt::unregister(&self.path);
    }
}

/// The highest ancestor of `dir` (or `dir` itself) that does not exist.
fn first_missing(dir: &Path) -> Option<PathBuf> {
    let mut missing = None;
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.as_os_str().is_empty() || fs::symlink_metadata(d).is_ok() {
            break;
        }
        missing = Some(d.to_owned());
        cur = d.parent();
    }
    missing
}

/// Runs a whole build.
pub fn build(opts: &BuildOptions) -> Result<BuildReport, BuildError> {
    let out_err = |path: &Path| {
        let path = path.to_owned();
        move |source| BuildError::Output { path, source }
    };
    let bytes = berth_init::manifest::read_manifest(&opts.manifest).map_err(|source| {
        BuildError::ReadManifest {
            path: opts.manifest.clone(),
            source,
        }
    })?;
    // Check the manifest before anything slow (without the kernel: the
    // machine modules are checked again once it is known).
    let base = manifest_base(&opts.manifest);
    let early = prepare(&opts.manifest, &base, &bytes, &|m| {
        Ok(Provider::Modules(vec![berth_init::modules::module_name(m)]))
    })?;
    for b in &early.bundles {
        check_bundle(b)?;
    }
    let (init, init_version) = read_static_init(&opts.init)?;
    let init_size = init.len() as u64;
    check_replaceable(&opts.out)?;

    let out_name = opts
        .out
        .file_name()
        .ok_or_else(|| BuildError::Output {
            path: opts.out.clone(),
            source: std::io::Error::other("OUTDIR has no file name"),
        })?
        .to_string_lossy()
        .into_owned();
    let parent = match opts.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    crate::interrupt::remove_stale(&parent, &out_name);
    let tmp = TempDir {
        path: parent.join(format!(".{out_name}.berth-build-{}", std::process::id())),
        keep: false,
        made: first_missing(&parent),
    };
    crate::interrupt::register(&tmp.path);
    let _ = fs::remove_dir_all(&tmp.path);
    fs::create_dir_all(&tmp.path).map_err(out_err(&tmp.path))?;
    let work = tmp.path.join("work");
    fs::create_dir_all(&work).map_err(out_err(&work))?;

    // The kernel.
    let kernel_root = if opts.kernel.is_dir() {
        opts.kernel.clone()
    } else {
        let dest = work.join("kernel");
        kernel::unpack_deb(&opts.kernel, &dest).map_err(|source| BuildError::Kernel {
            path: opts.kernel.clone(),
            source,
        })?;
        dest
    };
    let kernel_err = |source| BuildError::Kernel {
        path: opts.kernel.clone(),
        source,
    };
    let kt = KernelTree::open(&kernel_root).map_err(kernel_err)?;
    let prepared = prepare(&opts.manifest, &base, &bytes, &|m| {
        kt.provider(m).map_err(kernel_err)
    })?;

    let mut tree = Tree::default();
    let cpio = BuildError::Cpio;
    for (dir, perm) in [
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("run", 0o755),
        ("tmp", 0o1777),
        ("etc", 0o755),
        ("etc/berth", 0o755),
    ] {
        tree.dir(dir, perm).map_err(cpio)?;
    }
    // Rust's runtime reopens closed fds 0-2 on /dev/null, and the kernel
    // opens /dev/console for PID 1's stdio before devtmpfs exists.
    tree.add(
        "dev/console",
        Entry::root(Kind::Char { major: 5, minor: 1 }, 0o600),
    )
    .map_err(cpio)?;
    tree.add(
        "dev/null",
        Entry::root(Kind::Char { major: 1, minor: 3 }, 0o666),
    )
    .map_err(cpio)?;
    tree.bytes("init", 0o755, init).map_err(cpio)?;
    let mut manifest_text = serde_json::to_vec_pretty(&prepared.manifest).unwrap_or_default();
    manifest_text.push(b'\n');
    tree.bytes(MANIFEST_PATH, 0o644, manifest_text)
        .map_err(cpio)?;

    // Modules: the manifest's, the network's, the power button's.
    let names = |list: Option<&Value>| -> Vec<String> {
        list.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut wanted = names(prepared.manifest.get("modules"));
    wanted.extend(names(
        prepared
            .manifest
            .get("network")
            .and_then(|n| n.get("modules")),
    ));
    for m in INIT_MODULES {
        if kt.has_module(m) {
            wanted.push((*m).to_owned());
        }
    }
    let resolved = kt.resolve(&wanted);
    // Said before a failed resolution too: a name not found may be the
    // alias of a module skipped here.
    for e in kt.skipped_modules() {
        note!(
            "berth-build: warning: --kernel {}: {} (skipped when looking up module aliases)",
            opts.kernel.display(),
            crate::report(e)
        );
    }
    let mut resolved = resolved.map_err(kernel_err)?;
    let mods_dir = format!("lib/modules/{}", kt.release);
    for m in &mut resolved {
        let archive = format!("{mods_dir}/{}", m.path);
        match m.decompressed.take() {
            // Compressed in the tree: shipped plain, as `modules.dep`
            // names it (see [`kernel`]).
            Some(bytes) => tree.bytes(&archive, 0o644, bytes).map_err(cpio)?,
            None => tree
                .host_file(&archive, 0o644, &kt.modules_dir.join(&m.source))
                .map_err(cpio)?,
        }
    }
    tree.bytes(
        &format!("{mods_dir}/modules.dep"),
        0o644,
        kernel::modules_dep(&resolved).into_bytes(),
    )
    .map_err(cpio)?;
    tree.bytes(
        &format!("{mods_dir}/modules.builtin"),
        0o644,
        kt.builtin_text.clone().into_bytes(),
    )
    .map_err(cpio)?;

    // Images.
    let layout_dir = work.join("images");
    let mut summaries = Vec::new();
    if !prepared.images.is_empty() {
        let mut lw = LayoutWriter::new(&layout_dir).map_err(BuildError::Layout)?;
        let show = opts.progress;
        let mut progress = |name: &str, i: usize, n: usize, done: u64| {
            if show {
                let mut e = std::io::stderr().lock();
                let _ = write!(
                    e,
                    "\rimage {name}: layer {}/{n}: {:.1} MiB recompressed        ",
                    i + 1,
                    done as f64 / (1 << 20) as f64
                );
                let _ = e.flush();
            }
        };
        for (name, reference) in &prepared.images {
            summaries.push(
                lw.add_image(name, reference, &base, &mut progress)
                    .map_err(BuildError::Layout)?,
            );
        }
        if show {
            note!("\rimages packed                              ");
        }
        check_image_units(&prepared.parsed, &lw, &work.join("users"))?;
        lw.finish().map_err(BuildError::Layout)?;
        add_host_tree(&mut tree, &layout_dir, IMAGES_PATH, false).map_err(|source| {
            BuildError::Output {
                path: layout_dir.clone(),
                source,
            }
        })?;
    }

    // Bundles.
    let pack_opts = pack::PackOptions::for_kernel(&kt.release, kt.tmpfs_xattrs);
    let mut bundles = Vec::with_capacity(prepared.bundles.len());
    for (i, b) in prepared.bundles.iter().enumerate() {
        // By position: a unit name is no path component.
        let (bytes, stored) =
            bundle_entries(&mut tree, b, &work.join(format!("bundle-{i}")), &pack_opts)?;
        bundles.push(BundleSummary {
            kind: b.kind,
            unit: b.unit.clone(),
            path: b.host.clone(),
            bytes,
            stored,
        });
    }
    check_host_units(&prepared.parsed, &tree)?;

    // The archive.
    let initrd = tmp.path.join("initrd.img");
    let f = fs::File::create(&initrd).map_err(out_err(&initrd))?;
    let mut enc = zstd::stream::write::Encoder::new(std::io::BufWriter::new(f), INITRD_LEVEL)
        .map_err(out_err(&initrd))?;
    enc.include_checksum(true).map_err(out_err(&initrd))?;
    tree.write(&mut enc).map_err(cpio)?;
    let mut w = enc.finish().map_err(out_err(&initrd))?;
    w.flush().map_err(out_err(&initrd))?;
    drop(w);
    let vmlinuz = tmp.path.join("vmlinuz");
    // Created like initrd.img (its mode from the umask), not with the
    // package file's mode as fs::copy would.
    fs::File::open(&kt.vmlinuz)
        .and_then(|mut from| {
            let mut to = fs::File::create(&vmlinuz)?;
            std::io::copy(&mut from, &mut to).map(drop)
        })
        .map_err(out_err(&vmlinuz))?;
    let initrd_size = fs::metadata(&initrd).map_err(out_err(&initrd))?.len();
    fs::remove_dir_all(&work).map_err(out_err(&work))?;

    // Into place, with the signal thread held off: a Ctrl-C from here on
    // leaves OUTDIR whole, the old output or the new one.
    check_replaceable(&opts.out)?;
    let placed = crate::interrupt::commit(|| put_in_place(&tmp.path, &opts.out))
        .unwrap_or_else(|| Err(std::io::Error::from(std::io::ErrorKind::Interrupted)));
    placed.map_err(out_err(&opts.out))?;
    // tmp.path now holds the previous output, if there was one: the
    // guard's drop removes it.
    Ok(BuildReport {
        images: summaries,
        modules: resolved.iter().map(|m| m.name.clone()).collect(),
        release: kt.release.clone(),
        initrd_size,
        entries: tree.len(),
        init_version,
        init_size,
        bundles,
    })
}

/// Moves the finished output `tmp` to `out`. An existing `out` is
/// exchanged with it in one step (renameat2 RENAME_EXCHANGE), so at no
/// moment is there no OUTDIR, even for a build killed outright, and the
/// previous output ends at `tmp`'s path, for the caller to remove. Where
/// the filesystem cannot exchange (NFS, some FUSE), `out` is moved aside
/// to `.NAME.berth-build-old-PID` first; a build killed between the two
/// moves leaves it there, and the next build puts it back
/// ([`crate::interrupt::remove_stale`]).
fn put_in_place(tmp: &Path, out: &Path) -> std::io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return fs::rename(tmp, out),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    match renameat_with(CWD, tmp, CWD, out, RenameFlags::EXCHANGE) {
        Ok(()) => return Ok(()),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {}
        Err(e) => return Err(e.into()),
    }
    let old = crate::interrupt::aside_path(out);
    fs::rename(out, &old)?;
    if let Err(e) = fs::rename(tmp, out) {
        let _ = fs::rename(&old, out);
        return Err(e);
    }
    // Where the exchange would have left it, for the caller to remove;
    // the new output is in place whatever happens now.
    if fs::rename(&old, tmp).is_err() {
        let _ = fs::remove_dir_all(&old);
    }
    Ok(())
}

/// An existing OUTDIR is replaced only when it is a previous output (a
/// directory holding nothing but `initrd.img` and `vmlinuz`): `-o` pointed
/// at a directory with other files must not delete them.
fn check_replaceable(out: &Path) -> Result<(), BuildError> {
    let refuse = |why: String| BuildError::Output {
        path: out.to_owned(),
        source: std::io::Error::other(why),
    };
    let meta = match fs::symlink_metadata(out) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(BuildError::Output {
                path: out.to_owned(),
                source,
            });
        }
    };
    if meta.is_symlink() {
        // The output is moved into place with rename(2), which would
        // replace the link, not what it points to.
        return Err(refuse(if out.exists() {
            "is a symbolic link: give the directory it points to".into()
        } else {
            "is a symbolic link to nothing: give a directory path".into()
        }));
    }
    if !meta.is_dir() {
        return Err(refuse("exists and is not a directory".into()));
    }
    let entries = fs::read_dir(out).map_err(|source| BuildError::Output {
        path: out.to_owned(),
        source,
    })?;
    for e in entries {
        let e = e.map_err(|source| BuildError::Output {
            path: out.to_owned(),
            source,
        })?;
        let name = e.file_name();
        // A build writes files: a directory of that name holds something
        // else, which the replacement would delete.
        let file = e.file_type().is_ok_and(|t| t.is_file());
        if !file || (name != "initrd.img" && name != "vmlinuz") {
            return Err(refuse(format!(
                "exists and holds {name:?}, not only a previous build's initrd.img and vmlinuz files: \
                 refusing to replace it"
            )));
        }
    }
    Ok(())
}

/// The init binary's bytes and its identity (berth-init's version),
/// once it is known to be a static berth-init reading the manifest
/// version this build writes.
fn read_static_init(path: &Path) -> Result<(Vec<u8>, String), BuildError> {
    // berth-init's budget is 3 MiB; far more is not a berth-init.
    let bytes =
        read_small_file(path, 256 << 20, Accept::Any).map_err(|source| BuildError::ReadInit {
            path: path.to_owned(),
            source,
        })?;
    match elf::is_static(&bytes) {
        Ok(true) => {}
        Ok(false) => {
            return Err(BuildError::InitDynamic {
                path: path.to_owned(),
            });
        }
        Err(source) => {
            return Err(BuildError::InitElf {
                path: path.to_owned(),
                source,
            });
        }
    }
    let id =
        berth_init::identity::find_identity(&bytes).ok_or_else(|| BuildError::NotBerthInit {
            path: path.to_owned(),
        })?;
    let writes = berth_init::manifest::VERSION;
    if id.manifest_version != writes {
        return Err(BuildError::InitManifestVersion {
            path: path.to_owned(),
            version: id.version,
            reads: id.manifest_version,
            writes,
        });
    }
    Ok((bytes, id.version))
}

/// Refuses a file copied as it is into the initramfs (a bind source of a
/// bundle, outside its root filesystem) that has an extended attribute
/// other than the host's own ([`pack::host_only_xattr`]): newc has no
/// field for them, so the file would lose it in the initramfs, and with it
/// what the attribute does (file capabilities above all,
/// `security.capability`; `user.*` and `trusted.*` data; POSIX ACLs, which
/// grant more than the mode says). A bundle's root filesystem is packed as
/// a layer instead, which carries them ([`pack`]).
fn check_xattrs(path: &Path) -> std::io::Result<()> {
    let names = pack::xattr_names(path)?;
    let Some(name) = names.iter().find(|n| !pack::host_only_xattr(n)) else {
        return Ok(());
    };
    let name = String::from_utf8_lossy(name);
    Err(std::io::Error::other(format!(
        "{}: has the extended attribute {name}, and files outside a bundle's root \
         filesystem cannot carry extended attributes in an initramfs (newc has no place \
         for them): move the file into the bundle's rootfs, or remove the attribute \
         (setfattr -x {name}) if the file does without it",
        path.display()
    )))
}

/// Adds the tree at `host` under `archive`, sorted, types kept. Files with
/// more than one name in the tree (hard links) stay one inode
/// ([`cpio::Tree::link_group`]), the tree being this copy: two copies of
/// one bundle (two units) share nothing. With `keep_owner` (a bundle's
/// bind sources, copied beside its `config.json`) modes and owners are
/// kept and a file with extended attributes is refused ([`check_xattrs`]);
/// without (what the build wrote itself, the image layouts) entries are
/// root's with 0755 for directories and 0644 for files, so the bytes do
/// not depend on the umask the build ran under. Returns the bytes of the
/// files added (a linked file's once).
fn add_host_tree(
    tree: &mut Tree,
    host: &Path,
    archive: &str,
    keep_owner: bool,
) -> std::io::Result<u64> {
    add_host_entries(tree, host, archive, keep_owner, &mut HashMap::new())
}

/// [`add_host_tree`], with the link group of each (device, inode) of the
/// tree's files seen so far.
fn add_host_entries(
    tree: &mut Tree,
    host: &Path,
    archive: &str,
    keep_owner: bool,
    links: &mut HashMap<(u64, u64), u64>,
) -> std::io::Result<u64> {
    let meta = fs::symlink_metadata(host)?;
    if keep_owner {
        check_xattrs(host)?;
    }
    let mut entry = host_entry(host, &meta, keep_owner)?;
    let is_dir = entry.kind == Kind::Dir;
    let mut bytes = if meta.is_file() { meta.len() } else { 0 };
    if meta.is_file() && meta.nlink() > 1 {
        match links.entry((meta.dev(), meta.ino())) {
            std::collections::hash_map::Entry::Occupied(group) => {
                entry.link = Some(*group.get());
                bytes = 0;
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                entry.link = Some(*v.insert(tree.link_group()));
            }
        }
    }
    tree.add(archive, entry).map_err(std::io::Error::other)?;
    if is_dir {
        let mut names: Vec<_> = fs::read_dir(host)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for name in names {
            let name_str = name.to_str().ok_or_else(|| {
                std::io::Error::other(format!(
                    "{}: file name is not UTF-8",
                    host.join(&name).display()
                ))
            })?;
            bytes += add_host_entries(
                tree,
                &host.join(&name),
                &format!("{archive}/{name_str}"),
                keep_owner,
                links,
            )?;
        }
    }
    Ok(bytes)
}

fn host_entry(path: &Path, meta: &fs::Metadata, keep_owner: bool) -> std::io::Result<Entry> {
    let ft = meta.file_type();
    let rdev = meta.rdev();
    // Linux dev_t: major in bits 8-19 and 32-63, minor in 0-7 and 20-31.
    let major = (((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff)) as u32;
    let minor = ((rdev & 0xff) | ((rdev >> 12) & !0xff)) as u32;
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File(cpio::Data::File {
            path: path.to_owned(),
            size: meta.len(),
        })
    } else if ft.is_symlink() {
        let target = fs::read_link(path)?;
        Kind::Symlink(target.to_str().map(str::to_owned).ok_or_else(|| {
            std::io::Error::other(format!("{}: link target is not UTF-8", path.display()))
        })?)
    } else if ft.is_char_device() {
        Kind::Char { major, minor }
    } else if ft.is_block_device() {
        Kind::Block { major, minor }
    } else if ft.is_fifo() {
        Kind::Fifo
    } else {
        return Err(std::io::Error::other(format!(
            "{}: sockets cannot go into an initramfs",
            path.display()
        )));
    };
    let (uid, gid) = if keep_owner {
        (meta.uid(), meta.gid())
    } else {
        (0, 0)
    };
    let perm = match (keep_owner, &kind) {
        (true, _) => meta.mode() & 0o7777,
        (false, Kind::Dir) => 0o755,
        (false, _) => 0o644,
    };
    Ok(Entry {
        kind,
        perm,
        uid,
        gid,
        link: None,
    })
}

/// Where berth-init puts each container's cgroup on a machine (its
/// `--cgroup-parent` default), for the runtime's checks of a unit's spec.
const CGROUP_PARENT: &str = "berth";

/// The checks the runtime makes of a spec when it creates the container
/// `id`, before it touches anything: the plan of the container's first
/// process and of its cgroup. Bind sources are on the machine, not here:
/// each is taken for a directory.
fn runtime_check(
    id: &str,
    spec: &oci_spec::runtime::Spec,
    bundle: &Path,
) -> Result<berth_runtime::spec::Plan, String> {
    let chain = |e: &dyn Error| berth_init::logging::error_chain(e);
    let plan = berth_runtime::spec::plan(spec, &bundle.join("rootfs"), bundle, &|_| true)
        .map_err(|e| chain(&e))?;
    let linux = spec.linux().clone().unwrap_or_default();
    berth_runtime::cgroup::plan(&linux, id).map_err(|e| chain(&e))?;
    Ok(plan)
}

/// Whether the image has the program the unit runs: the runtime's own
/// candidates (`args[0]`, or each PATH directory joined with it, as
/// `execvp`) resolved in the image's tree; one must be a file with an
/// execute bit. A candidate below one of the spec's mounts (a persistent
/// directory, a tmpfs, /proc) is only known at boot, so it passes.
fn check_program(
    spec: &oci_spec::runtime::Spec,
    plan: &berth_runtime::spec::Plan,
    tree: &tree::ImageTree,
    tree_name: &str,
) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let mounts: Vec<PathBuf> = spec
        .mounts()
        .iter()
        .flatten()
        .map(|m| m.destination().clone())
        .collect();
    // `args[0]` with a `/` but not absolute is relative to the cwd.
    let cwd = spec
        .process()
        .as_ref()
        .map_or_else(|| PathBuf::from("/"), |p| p.cwd().clone());
    let mut looked = Vec::new();
    for candidate in &plan.exec_candidates {
        let path = cwd.join(Path::new(std::ffi::OsStr::from_bytes(candidate.to_bytes())));
        if mounts.iter().any(|m| path.starts_with(m)) {
            return Ok(());
        }
        if let tree::Found::Node(tree::Node::File { mode }) =
            tree.resolve(path.as_os_str().as_bytes())
            && mode & 0o111 != 0
        {
            return Ok(());
        }
        looked.push(path.display().to_string());
    }
    let arg0 = spec
        .process()
        .as_ref()
        .and_then(|p| p.args().as_ref())
        .and_then(|a| a.first())
        .cloned()
        .unwrap_or_default();
    Err(if looked.len() == 1 && looked[0] == arg0 {
        format!("its command {arg0} is not an executable file in {tree_name}")
    } else {
        format!(
            "its command {arg0} is not an executable file in {tree_name} (looked for {})",
            looked.join(", ")
        )
    })
}

/// Reads a bundle's `config.json` as berth-init will when the unit starts
/// and runs the runtime's checks on it; returns the root filesystem to
/// pack. A `rootfs` that is a symlink is followed, as the runtime
/// canonicalizes the root of a bundle on a host: the tree it points to
/// is packed (the link itself would dangle in the appliance).
fn check_bundle(b: &BundleCopy) -> Result<CheckedBundle, BuildError> {
    let unit_err = |message: String| BuildError::Unit {
        kind: b.kind,
        unit: b.unit.clone(),
        message,
    };
    let (spec, rootfs) = berth_init::container::bundle_spec(&b.host)
        .map_err(|e| unit_err(berth_init::logging::error_chain(&e)))?;
    let bad = |message: String| BuildError::BadBundle {
        unit: b.unit.clone(),
        path: b.host.clone(),
        message,
    };
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().display().to_string())
        .unwrap_or_default();
    let real = match fs::canonicalize(&rootfs) {
        Ok(p) if p.is_dir() && p != Path::new("/") => p,
        Ok(p) if p == Path::new("/") => {
            return Err(bad(format!("root.path {root:?} is the build host's /")));
        }
        _ => return Err(bad(format!("root.path {root:?} is not a directory"))),
    };
    let archive = Path::new("/").join(&b.archive);
    let plan = runtime_check(&b.unit, &spec, &archive)
        .map_err(|e| unit_err(format!("bundle {}: {e}", b.host.display())))?;
    Ok(CheckedBundle {
        spec,
        plan,
        rootfs: real,
    })
}

/// A bundle as [`check_bundle`] found it.
struct CheckedBundle {
    spec: oci_spec::runtime::Spec,
    plan: berth_runtime::spec::Plan,
    /// The root filesystem to pack (links followed).
    rootfs: PathBuf,
}

/// Every unit of the manifest, with its kind.
fn units(m: &berth_init::manifest::Manifest) -> Vec<(&'static str, &str, &Program)> {
    m.tasks
        .iter()
        .map(|t| ("task", t.name.as_str(), &t.program))
        .chain(
            m.services
                .iter()
                .map(|s| ("service", s.name.as_str(), &s.program)),
        )
        .collect()
}

/// Runs, for each image unit, the conversion berth-init runs at boot (the
/// image config with the unit's overrides, user names looked up in the
/// image's `/etc/passwd` and `/etc/group` as its layers leave them), then
/// the runtime's checks of the spec. `scratch` holds a small root with
/// those two files per unit.
fn check_image_units(
    m: &berth_init::manifest::Manifest,
    lw: &LayoutWriter,
    scratch: &Path,
) -> Result<(), BuildError> {
    for (i, (kind, name, program)) in units(m).into_iter().enumerate() {
        let Source::Image(image) = &program.source else {
            continue;
        };
        let unit_err = |message: String| BuildError::Unit {
            kind,
            unit: name.to_owned(),
            message,
        };
        let Some(facts) = lw.facts(image) else {
            // Validation refused units naming unknown images already.
            return Err(unit_err(format!("image {image} was not packed")));
        };
        // By position: an image name is no path component.
        let root = scratch.join(i.to_string());
        let write = |path: &Path, bytes: &[u8]| -> Result<(), BuildError> {
            fs::create_dir_all(path.parent().unwrap_or(Path::new("/")))
                .and_then(|()| fs::write(path, bytes))
                .map_err(|source| BuildError::Output {
                    path: path.to_owned(),
                    source,
                })
        };
        let mut readable = true;
        fs::create_dir_all(&root).map_err(|source| BuildError::Output {
            path: root.clone(),
            source,
        })?;
        for (file, fact) in [("etc/passwd", &facts.passwd), ("etc/group", &facts.group)] {
            match fact {
                layout::ImageFile::File(bytes) => write(&root.join(file), bytes)?,
                layout::ImageFile::Absent => {}
                // Not a file the build read: the user is looked up at
                // boot only.
                layout::ImageFile::Other => readable = false,
            }
        }
        if !readable {
            continue;
        }
        let rootfs =
            berth_bundles::apply::Rootfs::open(&root).map_err(|source| BuildError::Output {
                path: root.clone(),
                source: std::io::Error::other(berth_init::logging::error_chain(&source)),
            })?;
        let spec = berth_init::container::image_unit_spec(
            name,
            image,
            &facts.config,
            &rootfs,
            program,
            &berth_init::container::persistent_sources(
                program,
                Path::new(berth_init::manifest::DATA_DIR),
            ),
            Some(CGROUP_PARENT),
        )
        .map_err(|e| unit_err(berth_init::logging::error_chain(&e)))?;
        let plan = runtime_check(
            name,
            &spec,
            Path::new("/run/berth/rootfs").join(name).as_path(),
        )
        .map_err(|e| unit_err(format!("image {image}: {e}")))?;
        check_program(&spec, &plan, &facts.tree, "the image")
            .map_err(|e| unit_err(format!("image {image}: {e}")))?;
    }
    Ok(())
}

/// A host unit runs its program in PID 1's own root, the initramfs, from
/// its `cwd` (default `/`, PID 1's working directory), which must be a
/// directory there or below what PID 1 mounts at boot (`/run`, `/tmp`,
/// the data disk's `/data`, ...): a name with a `/` is a path from that directory and a
/// bare name is looked up in `PATH` (the unit's `env`, else berth-init's
/// default: the kernel starts PID 1 without one), as
/// `berth_runtime::host` does at boot. The program must be a file of the
/// initramfs being built, executable, symlinks followed inside it.
fn check_host_units(m: &berth_init::manifest::Manifest, tree: &Tree) -> Result<(), BuildError> {
    for (kind, name, program) in units(m) {
        if program.source != Source::Host {
            continue;
        }
        let argv = program.host_argv();
        let Some(exe) = argv.first() else {
            continue;
        };
        let cwd = program
            .cwd
            .as_deref()
            .map_or("/".to_owned(), |d| d.to_string_lossy().into_owned());
        // What PID 1 mounts at boot (and the data disk, with its own
        // contents) is not in the initramfs: a cwd there is found then,
        // or the start says it is missing.
        let under = |top: &str| {
            cwd.strip_prefix(top)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        let made_at_boot = berth_init::bootplan::boot_mounts()
            .iter()
            .any(|step| under(step.target))
            || (m.data_disk.is_some() && under(berth_init::manifest::DATA_DIR));
        let is_dir = made_at_boot
            || cwd.split('/').all(|c| c.is_empty() || c == ".")
            || matches!(resolve_in_tree(tree, &cwd), Some(e) if e.kind == Kind::Dir);
        if !is_dir {
            return Err(BuildError::HostCwd {
                kind,
                unit: name.to_owned(),
                cwd,
            });
        }
        let from_cwd = |p: &str| {
            if p.starts_with('/') {
                p.to_owned()
            } else {
                format!("{}/{p}", cwd.trim_end_matches('/'))
            }
        };
        let candidates: Vec<String> = if exe.contains('/') {
            vec![from_cwd(exe)]
        } else {
            let path = program
                .env
                .iter()
                .rev()
                .find(|(k, _)| k == "PATH")
                .map_or(berth_init::launcher::DEFAULT_PATH, |(_, v)| v.as_str());
            // An empty entry is the current directory, as for execvp.
            path.split(':')
                .map(|d| {
                    if d.is_empty() {
                        "."
                    } else {
                        d.trim_end_matches('/')
                    }
                })
                .map(|d| from_cwd(&format!("{d}/{exe}")))
                .collect()
        };
        let entries: Vec<&Entry> = candidates
            .iter()
            .filter_map(|c| resolve_in_tree(tree, c))
            .collect();
        let runnable = |e: &&Entry| matches!(e.kind, Kind::File(_)) && e.perm & 0o111 != 0;
        if !entries.iter().any(runnable) {
            return Err(BuildError::HostProgram {
                kind,
                unit: name.to_owned(),
                program: exe.clone(),
                found: if entries.is_empty() {
                    "is not found"
                } else {
                    "is not an executable file"
                },
            });
        }
    }
    Ok(())
}

/// The entry at `path` (from `/`) in the initramfs, symlinks followed
/// inside it as the kernel would in PID 1's root (at most 40, ELOOP).
fn resolve_in_tree<'t>(tree: &'t Tree, path: &str) -> Option<&'t Entry> {
    let mut todo: Vec<String> = path
        .split('/')
        .rev()
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_owned)
        .collect();
    let mut at: Vec<String> = Vec::new();
    let mut links = 0;
    let mut last = None;
    while let Some(comp) = todo.pop() {
        if comp == ".." {
            at.pop();
            last = None;
            continue;
        }
        at.push(comp);
        let key = at.join("/");
        let entry = tree.get(&key)?;
        if let Kind::Symlink(target) = &entry.kind {
            links += 1;
            if links > 40 {
                return None;
            }
            at.pop();
            if target.starts_with('/') {
                at.clear();
            }
            todo.extend(
                target
                    .split('/')
                    .rev()
                    .filter(|c| !c.is_empty() && *c != ".")
                    .map(str::to_owned),
            );
            last = None;
            continue;
        }
        last = Some(entry);
    }
    last
}

/// Adds a runtime bundle for one unit: `config.json` (with `root.path` =
/// `rootfs`), its root filesystem packed as a layer in `rootfs.oci`
/// ([`pack`], through `scratch`), and the bind sources it names relative
/// to the bundle. Returns the bytes of its files (packed and copied) and
/// of the packed layout.
fn bundle_entries(
    tree: &mut Tree,
    b: &BundleCopy,
    scratch: &Path,
    opts: &pack::PackOptions,
) -> Result<(u64, u64), BuildError> {
    let config_path = b.host.join("config.json");
    let io_err = |path: &Path| {
        let unit = b.unit.clone();
        let path = path.to_owned();
        move |source| BuildError::Bundle { unit, path, source }
    };
    let bad = |message: String| BuildError::BadBundle {
        unit: b.unit.clone(),
        path: b.host.clone(),
        message,
    };
    let checked = check_bundle(b)?;
    let rootfs = &checked.rootfs;
    let bytes =
        read_small_file(&config_path, MAX_JSON, Accept::Regular).map_err(io_err(&config_path))?;
    let mut config: Value = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("config.json is not valid JSON: {e}")))?;
    let root = config
        .get("root")
        .and_then(|r| r.get("path"))
        .and_then(Value::as_str)
        .ok_or_else(|| bad("config.json has no root.path".into()))?
        .to_owned();
    let config_bytes = if root == "rootfs" {
        bytes
    } else {
        config["root"]["path"] = Value::String("rootfs".into());
        serde_json::to_vec_pretty(&config).unwrap_or_default()
    };
    let mut bytes = config_bytes.len() as u64;
    tree.bytes(&format!("{}/config.json", b.archive), 0o644, config_bytes)
        .map_err(BuildError::Cpio)?;
    // The root filesystem as a layer: an uncompressed one-image layout
    // first, then recompressed and verified as every image is.
    let raw = scratch.join("raw");
    let packed = pack::write_layout(rootfs, &raw, opts).map_err(io_err(rootfs))?;
    bytes += packed.bytes;
    let layout_dir = scratch.join("rootfs.oci");
    // The layer's refusals name the bundle and its unit.
    let layout_err = |e: LayoutError| BuildError::Unit {
        kind: b.kind,
        unit: b.unit.clone(),
        message: format!(
            "bundle {}: {}",
            b.host.display(),
            berth_init::logging::error_chain(&e)
        ),
    };
    let mut lw = LayoutWriter::new(&layout_dir).map_err(layout_err)?;
    let reference = ImageRef::Oci {
        path: raw.clone(),
        tag: Some(pack::ROOTFS_IMAGE.into()),
    };
    let summary = lw
        .add_parsed(
            pack::ROOTFS_IMAGE,
            &format!("bundle {}", b.host.display()),
            &reference,
            &mut |_, _, _, _| {},
        )
        .map_err(layout_err)?;
    // Its program, looked for as the runtime will look for it at boot.
    if let Some(facts) = lw.facts(pack::ROOTFS_IMAGE) {
        check_program(
            &checked.spec,
            &checked.plan,
            &facts.tree,
            "the bundle's root filesystem",
        )
        .map_err(|e| BuildError::Unit {
            kind: b.kind,
            unit: b.unit.clone(),
            message: format!("bundle {}: {e}", b.host.display()),
        })?;
    }
    lw.finish().map_err(layout_err)?;
    // The uncompressed copy is not needed any more; the build's temporary
    // directory goes at the end anyway.
    let _ = fs::remove_dir_all(&raw);
    add_host_tree(
        tree,
        &layout_dir,
        &format!("{}/rootfs.oci", b.archive),
        false,
    )
    .map_err(|source| BuildError::Output {
        path: layout_dir.clone(),
        source,
    })?;
    // Bind sources relative to the bundle (runtime-spec: "relative to the
    // bundle") go with it, to the same place in its copy.
    let mut copied: Vec<String> = Vec::new();
    for source in relative_bind_sources(&config).map_err(bad)? {
        // berth-init runs a packed bundle from its unpacked layer: nothing
        // of the copy may be named `rootfs` (or be below it).
        if ["rootfs", "rootfs.oci"]
            .iter()
            .any(|r| source == *r || source.starts_with(&format!("{r}/")))
        {
            return Err(bad(format!(
                "bind source {source:?} (relative to the bundle) is in its root filesystem, \
                 which is packed as a layer and unpacked elsewhere at boot: give the mount \
                 an absolute source, or a path outside the bundle's rootfs"
            )));
        }
        if copied
            .iter()
            .any(|c| source == *c || source.starts_with(&format!("{c}/")))
        {
            continue;
        }
        let host = b.host.join(&source);
        if fs::symlink_metadata(&host).is_err() {
            return Err(bad(format!(
                "bind source {source:?} (relative to the bundle) does not exist: {}",
                host.display()
            )));
        }
        // The copy is what the bundle holds: a symlink on the way would
        // make it whatever the link reaches on the build host (`data ->
        // /root/.ssh` would put the host's keys into the appliance). A
        // link as the source itself is copied as a link.
        let mut on_the_way = b.host.clone();
        for part in source.split('/').take(source.split('/').count() - 1) {
            on_the_way.push(part);
            if fs::symlink_metadata(&on_the_way).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(bad(format!(
                    "bind source {source:?} goes through the symlink {}: only what is in the bundle is copied (name the real path)",
                    on_the_way.display()
                )));
            }
        }
        bytes += add_host_tree(tree, &host, &format!("{}/{source}", b.archive), true)
            .map_err(io_err(&host))?;
        copied.push(source);
    }
    Ok((bytes, summary.stored))
}

/// The bind mount sources of a bundle's `config.json` that are relative
/// paths (to the bundle directory), cleaned, shortest first; one that
/// climbs out of the bundle, names the bundle itself or its config.json
/// is refused.
fn relative_bind_sources(config: &Value) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for m in config
        .get("mounts")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
    {
        let bind = m.get("type").and_then(Value::as_str) == Some("bind")
            || m.get("options").and_then(Value::as_array).is_some_and(|o| {
                o.iter()
                    .any(|o| matches!(o.as_str(), Some("bind" | "rbind")))
            });
        let Some(source) = m.get("source").and_then(Value::as_str) else {
            continue;
        };
        if !bind || source.is_empty() || source.starts_with('/') {
            continue;
        }
        let mut parts = Vec::new();
        for comp in source.split('/') {
            match comp {
                "" | "." => {}
                ".." => {
                    return Err(format!(
                        "bind source {source:?} leaves the bundle directory"
                    ));
                }
                c => parts.push(c),
            }
        }
        let clean = parts.join("/");
        if clean.is_empty() || clean == "config.json" {
            return Err(format!(
                "bind source {source:?} is the bundle's own {}",
                if clean.is_empty() {
                    "directory"
                } else {
                    "config.json"
                }
            ));
        }
        out.push(clean);
    }
    out.sort_by_key(|s| (s.len(), s.clone()));
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests;
