//! `berth-build build MANIFEST -o OUTDIR --kernel DEB_OR_DIR [--init PATH]`.
//!
//! The build manifest is berth-init's manifest plus a top-level `images`
//! map `{NAME: "oci:PATH[:TAG]" | "docker-archive:PATH[:REF]"}` (paths
//! relative to the manifest file). The build:
//!
//! 1. takes `images` out, rewrites each `bundle` (a directory on the build
//!    host, relative to the manifest) to where the bundle will be in the
//!    initramfs, `/berth/bundles/{tasks,services}/NAME`, adds the modules
//!    the machine needs (below), and validates the result with berth-init's
//!    own validation, the image names being the map's keys;
//! 2. resolves and verifies every image and writes them as one OCI layout
//!    at `/berth/images`, each tagged with its NAME, layers recompressed to
//!    zstd and stored once when images share them ([`layout`]);
//! 3. copies each bundle (its `config.json`, with `root.path` set to
//!    `rootfs`, and its root filesystem tree, owners and modes kept) as it
//!    is: berth-init runs a bundle's `config.json` unchanged, from that
//!    directory ([`bundle_entries`]);
//! 4. adds the kernel modules with their dependencies and a `modules.dep`
//!    ([`kernel`]), `/init` (a static berth-init), `/dev/console`,
//!    `/dev/null`, the mount point directories and
//!    `/etc/berth/manifest.json`;
//! 5. writes OUTDIR/initrd.img (newc cpio, zstd) and OUTDIR/vmlinuz.
//!
//! Everything is written into a temporary directory next to OUTDIR and
//! renamed into place at the end: a failed build leaves no output.
//!
//! Modules added to the manifest's lists (berth-init loads only what the
//! manifest names, plus `button` and `evdev` for the power button, which it
//! loads by itself and the build therefore always ships): `virtio_pci` and
//! `virtio_blk` when there is a `data_disk`; `virtio_pci` and `virtio_net`
//! to `network.modules` when `network.interfaces` is not empty (berth-init
//! loads those with the network, in the background) — QEMU's disk and NIC;
//! Debian's cloud kernel has all of them as modules — and the data disk's `fstype`
//! when the kernel has it as a module, and `overlay` when a unit that is
//! not `read_only` (or is, but holds CAP_SYS_ADMIN) runs from an image
//! (berth-init unpacks each image once and gives every such unit an
//! overlayfs on it; a read-only unit's root is the unpacked tree itself,
//! bound read-only). `virtio_pci` is the bus driver and no module
//! `depends=` on it, so it must be named.

pub mod cpio;
pub mod elf;
pub mod kernel;
pub mod layout;

use std::error::Error;
use std::fs;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::args::{Args, ArgsError};
use cpio::{CpioError, Entry, Kind, Tree};
use kernel::{KernelError, KernelTree};
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
    println!("built {} (kernel {})", opts.out.display(), r.release);
    for i in &r.images {
        let shared = if i.shared > 0 {
            format!(", {:.2} MiB shared with earlier images", mib(i.shared))
        } else {
            String::new()
        };
        println!(
            "  image {:<16} {} layer(s), {:.2} MiB unpacked, {:.2} MiB zstd{shared}  ({})",
            i.name,
            i.layers,
            mib(i.unpacked),
            mib(i.stored),
            i.reference
        );
    }
    println!(
        "  modules: {}",
        if r.modules.is_empty() {
            "none".into()
        } else {
            r.modules.join(" ")
        }
    );
    println!(
        "  initrd.img: {:.2} MiB ({} entries)",
        mib(r.initrd_size),
        r.entries
    );
}

/// A bundle to copy: where it is on the host, where it goes.
#[derive(Debug, Clone)]
struct BundleCopy {
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
}

/// Splits a build manifest: removes `images`, rewrites `bundle` paths,
/// adds the machine's modules (`has_module` says what the kernel has as a
/// module), and validates the rest with berth-init's validation.
pub fn prepare(
    path: &Path,
    bytes: &[u8],
    has_module: &dyn Fn(&str) -> bool,
) -> Result<Prepared, BuildError> {
    let bad = |message: String| BuildError::BadManifest {
        path: path.to_owned(),
        message,
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let mut value: Value =
        serde_json::from_slice(bytes).map_err(|source| BuildError::ParseManifest {
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
                unit: name,
                host: base.join(bundle),
                archive: archive.clone(),
            });
            unit.insert("bundle".into(), Value::String(format!("/{archive}")));
        }
    }
    add_machine_modules(obj, has_module);
    let names: Vec<String> = images.iter().map(|(n, _)| n.clone()).collect();
    let text = serde_json::to_vec(&value).unwrap_or_default();
    berth_init::manifest::parse(&text, &names).map_err(|source| BuildError::Invalid {
        path: path.to_owned(),
        source,
    })?;
    Ok(Prepared {
        manifest: value,
        images,
        bundles,
    })
}

/// Appends the modules the machine's disk and NIC need (see the module docs).
fn add_machine_modules(
    obj: &mut serde_json::Map<String, Value>,
    has_module: &dyn Fn(&str) -> bool,
) {
    let mut extra: Vec<String> = Vec::new();
    if let Some(disk) = obj.get("data_disk") {
        extra.push("virtio_pci".into());
        extra.push("virtio_blk".into());
        if let Some(fs) = disk.get("fstype").and_then(Value::as_str)
            && has_module(fs)
        {
            extra.push(fs.to_owned());
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
            append_modules(list, net_extra, has_module);
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
        return;
    }
    let modules = obj
        .entry("modules")
        .or_insert_with(|| Value::Array(Vec::new()));
    // A non-array `modules` is left for validation to refuse.
    if let Some(list) = modules.as_array_mut() {
        append_modules(list, extra, has_module);
    }
}

/// Appends the modules of `extra` the kernel has as modules and `list`
/// does not name yet.
fn append_modules(list: &mut Vec<Value>, extra: Vec<String>, has_module: &dyn Fn(&str) -> bool) {
    for m in extra {
        if !list.iter().any(|v| v.as_str() == Some(m.as_str())) && has_module(&m) {
            list.push(Value::String(m));
        }
    }
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
    let bytes = fs::read(&opts.manifest).map_err(|source| BuildError::ReadManifest {
        path: opts.manifest.clone(),
        source,
    })?;
    // Check the manifest before anything slow (without the kernel: the
    // machine modules are checked again once it is known).
    prepare(&opts.manifest, &bytes, &|_| true)?;
    let init = read_static_init(&opts.init)?;
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
    let prepared = prepare(&opts.manifest, &bytes, &|m| kt.has_module(m))?;

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
    let resolved = kt.resolve(&wanted).map_err(kernel_err)?;
    let mods_dir = format!("lib/modules/{}", kt.release);
    for m in &resolved {
        tree.host_file(
            &format!("{mods_dir}/{}", m.path),
            0o644,
            &kt.modules_dir.join(&m.path),
        )
        .map_err(cpio)?;
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
        let base = opts.manifest.parent().unwrap_or(Path::new("."));
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
                lw.add_image(name, reference, base, &mut progress)
                    .map_err(BuildError::Layout)?,
            );
        }
        if show {
            eprintln!("\rimages packed                              ");
        }
        lw.finish().map_err(BuildError::Layout)?;
        add_host_tree(&mut tree, &layout_dir, IMAGES_PATH, false).map_err(|source| {
            BuildError::Output {
                path: layout_dir.clone(),
                source,
            }
        })?;
    }

    // Bundles.
    for b in &prepared.bundles {
        bundle_entries(&mut tree, b)?;
    }

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
    fs::copy(&kt.vmlinuz, &vmlinuz).map_err(out_err(&vmlinuz))?;
    let initrd_size = fs::metadata(&initrd).map_err(out_err(&initrd))?.len();
    fs::remove_dir_all(&work).map_err(out_err(&work))?;

    // Into place: an existing OUTDIR is moved aside, replaced, removed.
    let old = parent.join(format!(
        ".{out_name}.berth-build-old-{}",
        std::process::id()
    ));
    check_replaceable(&opts.out)?;
    let had_old = fs::symlink_metadata(&opts.out).is_ok();
    if had_old {
        fs::rename(&opts.out, &old).map_err(out_err(&opts.out))?;
    }
    if let Err(e) = fs::rename(&tmp.path, &opts.out) {
        if had_old {
            let _ = fs::rename(&old, &opts.out);
        }
        return Err(BuildError::Output {
            path: opts.out.clone(),
            source: e,
        });
    }
    let mut tmp = tmp;
    tmp.keep = true;
    if had_old {
        let _ = fs::remove_dir_all(&old);
    }
    Ok(BuildReport {
        images: summaries,
        modules: resolved.iter().map(|m| m.name.clone()).collect(),
        release: kt.release.clone(),
        initrd_size,
        entries: tree.len(),
    })
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
        return Err(refuse(
            "is a symbolic link: give the directory it points to".into(),
        ));
    }
    if !meta.is_dir() {
        return Err(refuse("exists and is not a directory".into()));
    }
    let entries = fs::read_dir(out).map_err(|source| BuildError::Output {
        path: out.to_owned(),
        source,
    })?;
    for e in entries {
        let name = e
            .map_err(|source| BuildError::Output {
                path: out.to_owned(),
                source,
            })?
            .file_name();
        if name != "initrd.img" && name != "vmlinuz" {
            return Err(refuse(format!(
                "exists and holds {name:?}, not only a previous build's initrd.img and vmlinuz: \
                 refusing to replace it"
            )));
        }
    }
    Ok(())
}

fn read_static_init(path: &Path) -> Result<Vec<u8>, BuildError> {
    let bytes = fs::read(path).map_err(|source| BuildError::ReadInit {
        path: path.to_owned(),
        source,
    })?;
    match elf::is_static(&bytes) {
        Ok(true) => Ok(bytes),
        Ok(false) => Err(BuildError::InitDynamic {
            path: path.to_owned(),
        }),
        Err(source) => Err(BuildError::InitElf {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Adds the tree at `host` under `archive`, sorted, types kept; hardlinks
/// become copies. With `keep_owner` (a bundle's root filesystem) modes and
/// owners are kept; without (what the build wrote itself, the image
/// layout) entries are root's with 0755 for directories and 0644 for
/// files, so the bytes do not depend on the umask the build ran under.
fn add_host_tree(
    tree: &mut Tree,
    host: &Path,
    archive: &str,
    keep_owner: bool,
) -> std::io::Result<()> {
    let meta = fs::symlink_metadata(host)?;
    let entry = host_entry(host, &meta, keep_owner)?;
    let is_dir = entry.kind == Kind::Dir;
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
            add_host_tree(
                tree,
                &host.join(&name),
                &format!("{archive}/{name_str}"),
                keep_owner,
            )?;
        }
    }
    Ok(())
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
    })
}

/// Copies a runtime bundle: `config.json` (with `root.path` = `rootfs`)
/// and the root filesystem it names.
fn bundle_entries(tree: &mut Tree, b: &BundleCopy) -> Result<(), BuildError> {
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
    let bytes = fs::read(&config_path).map_err(io_err(&config_path))?;
    let mut config: Value = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("config.json is not valid JSON: {e}")))?;
    let root = config
        .get("root")
        .and_then(|r| r.get("path"))
        .and_then(Value::as_str)
        .ok_or_else(|| bad("config.json has no root.path".into()))?
        .to_owned();
    let rootfs = b.host.join(&root);
    if !rootfs.is_dir() {
        return Err(bad(format!("root.path {root:?} is not a directory")));
    }
    let config_bytes = if root == "rootfs" {
        bytes
    } else {
        config["root"]["path"] = Value::String("rootfs".into());
        serde_json::to_vec_pretty(&config).unwrap_or_default()
    };
    tree.bytes(&format!("{}/config.json", b.archive), 0o644, config_bytes)
        .map_err(BuildError::Cpio)?;
    add_host_tree(tree, &rootfs, &format!("{}/rootfs", b.archive), true).map_err(io_err(&rootfs))
}

#[cfg(test)]
mod tests;
