//! The kernel side of an appliance: `--kernel` (a Debian
//! `linux-image-*-cloud-amd64` package or an unpacked tree), its
//! `vmlinuz`, and the modules the manifest needs with their dependencies.
//!
//! Debian's package ships no `modules.dep` (its postinst runs `depmod`, and
//! kmod is not something we want to require), so dependencies come from
//! each module's own `.modinfo` `depends=` field, read from the ELF file,
//! and berth-build writes the `modules.dep` that berth-init's
//! `modules::ModuleIndex` parses: `path: dep-path dep-path …`, paths
//! relative to `/lib/modules/<release>`, the list transitive as depmod's.
//!
//! Compressed modules (`.ko.xz` since Debian trixie, `.ko.zst` on Ubuntu,
//! `.ko.gz`) are decompressed at build time and shipped as plain `.ko`
//! files, which `modules.dep` names: the initramfs is compressed as a
//! whole anyway, and berth-init then loads them without the kernel's own
//! decompressor (CONFIG_MODULE_DECOMPRESS, which a kernel may lack or
//! build for one format only). A module's signature is appended before it
//! is compressed (scripts/Makefile.modinst signs, then compresses), so the
//! plain file keeps it.

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use berth_init::modules::module_name;

use super::elf::{self, ElfError};

/// Why the kernel or a module could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("unpack kernel package {path} with dpkg -x (is dpkg installed?)")]
    Dpkg {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("unpack kernel package {path}: dpkg -x failed: {stderr}")]
    /// `stderr` is dpkg's message on one line.
    DpkgFailed { path: PathBuf, stderr: String },
    // The tree's own problems name paths inside it: the caller names the
    // tree (or the package it was unpacked from into a temporary place).
    #[error("no lib/modules/<release> directory (not a linux-image package or its unpacked tree)")]
    NoModulesDir,
    #[error("{count} releases under lib/modules ({releases}); give a tree with one")]
    ManyReleases { count: usize, releases: String },
    #[error("missing {what}")]
    Missing { what: String },
    /// A link could name any file of the build host, which would go into
    /// the appliance.
    #[error(
        "{what} is a symlink, not a file of the tree (the appliance takes files, not what links reach)"
    )]
    Symlink { what: String },
    #[error("CONFIG_RD_ZSTD is not y in {config}: it cannot unpack a zstd initramfs")]
    NoZstd { config: String },
    #[error("read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel module {path}")]
    Elf { path: PathBuf, source: ElfError },
    #[error(
        "kernel module {path} is compressed in a format berth-build cannot read \
         (it reads .ko, .ko.gz, .ko.xz and .ko.zst files)"
    )]
    UnknownCompression { path: PathBuf },
    #[error("decompress kernel module {path}")]
    Decompress {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel module {path} decompresses to more than {limit} bytes")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error(
        "kernel module {name} not found in {dir} (no module has that name or alias, nor is one built in)"
    )]
    UnknownModule { name: String, dir: PathBuf },
    #[error("kernel module {module} depends on {dependency}, which is not in {dir}")]
    UnknownDependency {
        module: String,
        dependency: String,
        dir: PathBuf,
    },
}

/// An unpacked kernel: release, image, config and module tree.
#[derive(Debug)]
pub struct KernelTree {
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>`.
    pub modules_dir: PathBuf,
    /// Module name → file, relative to `modules_dir` (compressed or not).
    pub modules: BTreeMap<String, String>,
    pub builtin: BTreeSet<String>,
    /// The raw `modules.builtin` text (copied into the initramfs).
    pub builtin_text: String,
    /// Whether its tmpfs has extended attributes (`CONFIG_TMPFS_XATTR=y`):
    /// a bundle's packed root is unpacked into tmpfs at boot.
    pub tmpfs_xattrs: bool,
    /// Alias → the built-in module that has it (`modules.builtin.modinfo`),
    /// keyed by [`alias_key`].
    builtin_aliases: BTreeMap<String, String>,
    /// Read on the first lookup of a name that no module and nothing
    /// built in has.
    module_aliases: OnceCell<ModuleAliases>,
}

/// What provides a name given for a module (a module's name, or an alias
/// such as `fs-iso9660`), as modprobe looks it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provider {
    /// Module files of the tree, by name: the module of that name, or
    /// the modules with that alias (modprobe loads them all).
    Modules(Vec<String>),
    /// Built into the kernel: the built-in module's name (nothing to
    /// load; berth-init skips the names `modules.builtin` lists).
    Builtin(String),
    /// Nothing of this kernel.
    Missing,
}

/// Unpacks `deb` into `dest` with `dpkg -x`, in a process group of its
/// own that an interrupted build kills (dpkg runs dpkg-deb and tar, which
/// would go on writing into the temporary directory being removed).
pub fn unpack_deb(deb: &Path, dest: &Path) -> Result<(), KernelError> {
    let dpkg_err = |source| KernelError::Dpkg {
        path: deb.to_owned(),
        source,
    };
    let child = Command::new("dpkg")
        .arg("-x")
        .arg(deb)
        .arg(dest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(dpkg_err)?;
    let group = child.id();
    crate::interrupt::register_group(group);
    let out = child.wait_with_output();
    crate::interrupt::unregister_group(group);
    let out = out.map_err(dpkg_err)?;
    if !out.status.success() {
        return Err(KernelError::DpkgFailed {
            path: deb.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    Ok(())
}

impl KernelTree {
    /// Reads an unpacked `linux-image` tree (root with `boot/` and
    /// `lib/modules/` or `usr/lib/modules/`).
    pub fn open(root: &Path) -> Result<Self, KernelError> {
        let lib = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|p| root.join(p))
            .find(|p| p.is_dir())
            .ok_or(KernelError::NoModulesDir)?;
        let mut releases: Vec<String> = fs::read_dir(&lib)
            .map_err(|source| KernelError::Read {
                path: lib.clone(),
                source,
            })?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        releases.sort();
        let release = match releases.as_slice() {
            [one] => one.clone(),
            [] => return Err(KernelError::NoModulesDir),
            many => {
                return Err(KernelError::ManyReleases {
                    count: many.len(),
                    releases: many.join(", "),
                });
            }
        };
        let missing = |what: String| KernelError::Missing { what };
        let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
        match fs::symlink_metadata(&vmlinuz) {
            Ok(m) if m.is_file() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(KernelError::Symlink {
                    what: format!("boot/vmlinuz-{release}"),
                });
            }
            _ => return Err(missing(format!("boot/vmlinuz-{release}"))),
        }
        let config = root.join(format!("boot/config-{release}"));
        let config_text =
            fs::read_to_string(&config).map_err(|_| missing(format!("boot/config-{release}")))?;
        // The initramfs is zstd: refuse a kernel that would not unpack it
        // (it would panic at boot with "no working init found").
        if !config_text.lines().any(|l| l.trim() == "CONFIG_RD_ZSTD=y") {
            return Err(KernelError::NoZstd {
                config: format!("boot/config-{release}"),
            });
        }
        let modules_dir = lib.join(&release);
        let mut modules = BTreeMap::new();
        index_modules(&modules_dir, "kernel", &mut modules)?;
        let builtin_text =
            fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
        let builtin = builtin_text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(module_name)
            .collect();
        let builtin_modinfo =
            fs::read(modules_dir.join("modules.builtin.modinfo")).unwrap_or_default();
        Ok(KernelTree {
            release,
            vmlinuz,
            modules_dir,
            modules,
            builtin,
            builtin_text,
            tmpfs_xattrs: config_text
                .lines()
                .any(|l| l.trim() == "CONFIG_TMPFS_XATTR=y"),
            builtin_aliases: builtin_aliases(&builtin_modinfo),
            module_aliases: OnceCell::new(),
        })
    }

    /// Whether `name` is a module file of this kernel (not built in).
    pub fn has_module(&self, name: &str) -> bool {
        self.modules.contains_key(&module_name(name))
    }

    /// The modules `wanted` names and everything they depend on, as
    /// `(name, relative path, direct dependency names)`, sorted by name.
    /// Built-in modules are skipped (there is nothing to load).
    pub fn resolve(&self, wanted: &[String]) -> Result<Vec<ResolvedModule>, KernelError> {
        let mut done: BTreeMap<String, ResolvedModule> = BTreeMap::new();
        let mut todo: Vec<(String, Option<String>)> =
            wanted.iter().map(|w| (module_name(w), None)).collect();
        while let Some((name, wanted_by)) = todo.pop() {
            if done.contains_key(&name) || self.builtin.contains(&name) {
                continue;
            }
            let Some(rel) = self.modules.get(&name) else {
                return Err(match wanted_by {
                    None => KernelError::UnknownModule {
                        name,
                        dir: self.modules_dir.clone(),
                    },
                    Some(module) => KernelError::UnknownDependency {
                        module,
                        dependency: name,
                        dir: self.modules_dir.clone(),
                    },
                });
            };
            let bytes = self.read_module(rel)?;
            let path = self.modules_dir.join(rel);
            let elf_err = |source| KernelError::Elf {
                path: path.clone(),
                source,
            };
            let mut deps = module_depends(&bytes).map_err(elf_err)?;
            // Its `softdep pre:` modules load before it too, as modprobe
            // loads them: the initramfs has no modprobe for the kernel to
            // ask for one later (btrfs asks the crypto API for its
            // checksum's module when it mounts).
            for soft in module_softdeps_pre(&bytes).map_err(elf_err)? {
                for provider in self.softdep_providers(&soft)? {
                    if provider != name && !deps.contains(&provider) {
                        deps.push(provider);
                    }
                }
            }
            for d in &deps {
                todo.push((d.clone(), Some(name.clone())));
            }
            done.insert(
                name.clone(),
                ResolvedModule {
                    name,
                    path: plain_path(rel).to_owned(),
                    source: rel.clone(),
                    deps,
                    // A plain file is copied from the tree when shipped;
                    // a compressed one is not decompressed again.
                    decompressed: (plain_path(rel) != rel).then_some(bytes),
                },
            );
        }
        Ok(done.into_values().collect())
    }
}

/// The aliases of the module files, keyed by [`alias_key`].
#[derive(Debug, Default)]
struct ModuleAliases {
    /// Alias → the module files that have it.
    by_alias: BTreeMap<String, Vec<String>>,
    /// The module files whose `.modinfo` could not be read (without a
    /// `modules.alias`): left out of `by_alias`, each with why.
    skipped: Vec<KernelError>,
}

/// An alias as kmod compares them (libkmod `alias_normalize`): `-` and
/// `_` are one.
fn alias_key(alias: &str) -> String {
    alias.replace('-', "_")
}

impl KernelTree {
    /// What provides `wanted`, as modprobe finds it: a module file of
    /// that name, a built-in module of that name, a built-in module with
    /// that alias, else the module files with that alias (the order of
    /// the checks is this build's: what is built in needs no file).
    pub fn provider(&self, wanted: &str) -> Result<Provider, KernelError> {
        let name = module_name(wanted);
        if self.modules.contains_key(&name) {
            return Ok(Provider::Modules(vec![name]));
        }
        if self.builtin.contains(&name) {
            return Ok(Provider::Builtin(name));
        }
        let key = alias_key(wanted);
        if let Some(module) = self.builtin_aliases.get(&key) {
            return Ok(Provider::Builtin(module.clone()));
        }
        Ok(match self.module_aliases()?.by_alias.get(&key) {
            Some(modules) => Provider::Modules(modules.clone()),
            None => Provider::Missing,
        })
    }

    /// The module files that provide what a `softdep` names
    /// ([`Self::provider`]): none when it is built in, and none when
    /// nothing provides it (modprobe goes on without it too).
    fn softdep_providers(&self, wanted: &str) -> Result<Vec<String>, KernelError> {
        Ok(match self.provider(wanted)? {
            Provider::Modules(modules) => modules,
            Provider::Builtin(_) | Provider::Missing => Vec::new(),
        })
    }

    /// The module files left out of the alias lookups so far because they
    /// could not be read: a build goes on without them (the caller warns),
    /// as modprobe does; one asked for by name still fails [`Self::resolve`].
    pub fn skipped_modules(&self) -> &[KernelError] {
        self.module_aliases
            .get()
            .map_or(&[], |aliases| aliases.skipped.as_slice())
    }

    fn module_aliases(&self) -> Result<&ModuleAliases, KernelError> {
        if let Some(aliases) = self.module_aliases.get() {
            return Ok(aliases);
        }
        let aliases = self.read_module_aliases()?;
        Ok(self.module_aliases.get_or_init(|| aliases))
    }

    /// The aliases of the module files: depmod's `modules.alias` when the
    /// tree has one (an installed system's; Debian's packages ship none,
    /// their postinst runs depmod), else every module file's `.modinfo`,
    /// read once per build and only when a name is looked up that no
    /// module has. A module file that cannot be read there is skipped,
    /// not an error: a build must not fail on a module nobody asked for.
    fn read_module_aliases(&self) -> Result<ModuleAliases, KernelError> {
        let index = self.modules_dir.join("modules.alias");
        match fs::read(&index) {
            Ok(text) => {
                return Ok(ModuleAliases {
                    by_alias: modules_alias(&String::from_utf8_lossy(&text), &self.modules),
                    skipped: Vec::new(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(KernelError::Read {
                    path: index,
                    source,
                });
            }
        }
        let mut aliases = ModuleAliases::default();
        for (name, rel) in &self.modules {
            let info = self.read_module(rel).and_then(|bytes| {
                elf::modinfo(&bytes).map_err(|source| KernelError::Elf {
                    path: self.modules_dir.join(rel),
                    source,
                })
            });
            let info = match info {
                Ok(info) => info,
                Err(e) => {
                    aliases.skipped.push(e);
                    continue;
                }
            };
            for (key, value) in info {
                if key == "alias" {
                    let providers = aliases.by_alias.entry(alias_key(&value)).or_default();
                    if !providers.contains(name) {
                        providers.push(name.clone());
                    }
                }
            }
        }
        Ok(aliases)
    }
}

/// `modules.alias` as depmod writes it (`alias PATTERN MODULE` lines,
/// `#` comments), by [`alias_key`], for the modules of `modules` (a line
/// naming another, left from an older tree, is passed over). Patterns are
/// matched whole, as `.modinfo` aliases are: the names looked up are
/// `fs-*`, `net-pf-*`, crypto names, not device ids.
fn modules_alias(text: &str, modules: &BTreeMap<String, String>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some("alias"), Some(alias), Some(module), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            continue;
        };
        let module = module_name(module);
        if !modules.contains_key(&module) {
            continue;
        }
        let providers = out.entry(alias_key(alias)).or_default();
        if !providers.contains(&module) {
            providers.push(module);
        }
    }
    out
}

/// The aliases in `modules.builtin.modinfo` (`module.alias=value`
/// records, NUL-terminated), by [`alias_key`], with their module's name.
fn builtin_aliases(text: &[u8]) -> BTreeMap<String, String> {
    text.split(|&b| b == 0)
        .filter_map(|record| std::str::from_utf8(record).ok())
        .filter_map(|record| record.split_once('='))
        .filter_map(|(key, value)| {
            let (module, field) = key.split_once('.')?;
            (field == "alias").then(|| (alias_key(value), module_name(module)))
        })
        .collect()
}

/// The modules a module's `softdep=` entries name to load before it
/// (`pre:`), as kmod reads them: the names after `pre:` up to `post:`;
/// `post:` ones, and names before either, are not taken.
pub fn module_softdeps_pre(ko: &[u8]) -> Result<Vec<String>, ElfError> {
    Ok(elf::modinfo(ko)?
        .into_iter()
        .filter(|(k, _)| k == "softdep")
        .flat_map(|(_, v)| softdeps_pre(&v))
        .collect())
}

fn softdeps_pre(value: &str) -> Vec<String> {
    let mut pre = false;
    let mut out = Vec::new();
    for token in value.split_whitespace() {
        match token {
            "pre:" => pre = true,
            "post:" => pre = false,
            name if pre => out.push(name.to_owned()),
            _ => {}
        }
    }
    out
}

/// A module to ship.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModule {
    pub name: String,
    /// Where it goes in the initramfs, relative to `lib/modules/<release>`:
    /// a plain `.ko`, whatever the tree holds.
    pub path: String,
    /// The file of the kernel tree, relative to its `lib/modules/<release>`
    /// (`.ko`, `.ko.xz`, ...): [`KernelTree::read_module`] reads it.
    pub source: String,
    /// Direct dependencies (names), built-ins included, and the modules
    /// that provide its `softdep pre:` names.
    pub deps: Vec<String>,
    /// What a compressed `source` decompressed to, kept from the read
    /// that found its dependencies; `None` for a plain `.ko`.
    pub decompressed: Option<Vec<u8>>,
}

/// The `depends=` names of a module file (empty when it has none).
pub fn module_depends(ko: &[u8]) -> Result<Vec<String>, ElfError> {
    Ok(elf::modinfo(ko)?
        .into_iter()
        .filter(|(k, _)| k == "depends")
        .flat_map(|(_, v)| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(module_name)
                .collect::<Vec<_>>()
        })
        .collect())
}

/// `modules.dep` for `modules` (closed under dependencies): one line per
/// module, its transitive dependencies' paths after the colon, sorted.
pub fn modules_dep(modules: &[ResolvedModule]) -> String {
    let by_name: BTreeMap<&str, &ResolvedModule> =
        modules.iter().map(|m| (m.name.as_str(), m)).collect();
    let mut lines: Vec<String> = modules
        .iter()
        .map(|m| {
            let mut seen = BTreeSet::new();
            let mut order = Vec::new();
            let mut stack: Vec<&str> = m.deps.iter().map(String::as_str).collect();
            while let Some(d) = stack.pop() {
                // Built-ins are not in `by_name`: nothing to load for them.
                let Some(dm) = by_name.get(d) else { continue };
                if seen.insert(d) {
                    order.push(dm.path.clone());
                    stack.extend(dm.deps.iter().map(String::as_str));
                }
            }
            order.sort();
            format!("{}: {}", m.path, order.join(" "))
                .trim_end()
                .to_owned()
        })
        .collect();
    lines.sort();
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

fn index_modules(
    base: &Path,
    rel: &str,
    out: &mut BTreeMap<String, String>,
) -> Result<(), KernelError> {
    let dir = base.join(rel);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(KernelError::Read { path: dir, source }),
    };
    let mut names: Vec<(String, bool, bool)> = entries
        .filter_map(|e| e.ok())
        .map(|e| {
            let kind = e.file_type().ok();
            let is_dir = kind.is_some_and(|t| t.is_dir());
            let is_link = kind.is_some_and(|t| t.is_symlink());
            (
                e.file_name().to_string_lossy().into_owned(),
                is_dir,
                is_link,
            )
        })
        .collect();
    names.sort();
    for (name, is_dir, is_link) in names {
        let path = format!("{rel}/{name}");
        if is_link && name.contains(".ko") {
            return Err(KernelError::Symlink {
                what: format!("module {path}"),
            });
        }
        if is_dir {
            index_modules(base, &path, out)?;
        } else if name.ends_with(".ko") {
            // A plain file wins over a compressed one of the same module.
            out.insert(module_name(&name), path);
        } else if name.contains(".ko.") {
            // Compressed (.ko.xz, .ko.zst, .ko.gz), or in a format we
            // cannot read: recorded so that a request for one gives a clear
            // error instead of "not found" (see `KernelTree::read_module`).
            out.entry(module_name(&name)).or_insert(path);
        }
    }
    Ok(())
}

/// The compressions of module files (kmod's and the kernel's:
/// CONFIG_MODULE_COMPRESS_{GZIP,XZ,ZSTD}).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

fn compression(rel: &str) -> Option<Compression> {
    if rel.ends_with(".ko") {
        Some(Compression::None)
    } else if rel.ends_with(".ko.gz") {
        Some(Compression::Gzip)
    } else if rel.ends_with(".ko.xz") {
        Some(Compression::Xz)
    } else if rel.ends_with(".ko.zst") {
        Some(Compression::Zstd)
    } else {
        None
    }
}

/// A module file's path without its compression suffix
/// (`kernel/fs/isofs/isofs.ko.xz` → `kernel/fs/isofs/isofs.ko`).
pub fn plain_path(rel: &str) -> &str {
    match rel.rfind(".ko") {
        Some(at) => &rel[..at + 3],
        None => rel,
    }
}

/// The largest module file a decompression may give: the largest modules
/// (GPU drivers) are tens of MiB; a file that says more is not a module.
const MAX_MODULE: u64 = 256 << 20;
/// The memory the xz decoder may take for its dictionary, in KiB: modules
/// are compressed with a 1 MiB one (scripts/Makefile.modinst), `xz -9`
/// takes 64 MiB.
const XZ_MEM_LIMIT_KB: u32 = 128 << 10;

impl KernelTree {
    /// The bytes of module file `rel` (relative to `modules_dir`),
    /// decompressed.
    pub fn read_module(&self, rel: &str) -> Result<Vec<u8>, KernelError> {
        let path = self.modules_dir.join(rel);
        let Some(kind) = compression(rel) else {
            return Err(KernelError::UnknownCompression { path });
        };
        let file = fs::File::open(&path).map_err(|source| KernelError::Read {
            path: path.clone(),
            source,
        })?;
        let file = std::io::BufReader::new(file);
        let decompress_err = |source| KernelError::Decompress {
            path: path.clone(),
            source,
        };
        let reader: Box<dyn Read> = match kind {
            Compression::None => {
                let mut file = file;
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes)
                    .map_err(|source| KernelError::Read {
                        path: path.clone(),
                        source,
                    })?;
                return Ok(bytes);
            }
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
            // Concatenated streams are one file to xz(1) too.
            Compression::Xz => Box::new(lzma_rust2::XzReader::new_mem_limit(
                file,
                true,
                XZ_MEM_LIMIT_KB,
            )),
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::with_buffer(file).map_err(decompress_err)?)
            }
        };
        let mut bytes = Vec::new();
        reader
            .take(MAX_MODULE + 1)
            .read_to_end(&mut bytes)
            .map_err(decompress_err)?;
        if bytes.len() as u64 > MAX_MODULE {
            return Err(KernelError::TooLarge {
                path,
                limit: MAX_MODULE,
            });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{
        FAKE_RELEASE, GZIP, XZ, ZSTD, compress, fake_kernel, fake_module, scratch,
    };

    fn m(name: &str, path: &str, deps: &[&str]) -> ResolvedModule {
        ResolvedModule {
            name: name.into(),
            path: path.into(),
            source: path.into(),
            deps: deps.iter().map(|d| d.to_string()).collect(),
            decompressed: None,
        }
    }

    /// A link in the tree could name any file of the build host: the
    /// kernel image and the modules must be files of the tree.
    #[test]
    fn symlinks_to_the_kernel_or_a_module_are_refused() {
        let root = scratch("ktree-symlinks");
        fake_kernel(&root, &[], "");
        let r = FAKE_RELEASE;
        let vmlinuz = root.join(format!("boot/vmlinuz-{r}"));
        fs::write(root.join("secret"), "the build host's").unwrap();
        fs::remove_file(&vmlinuz).unwrap();
        std::os::unix::fs::symlink(root.join("secret"), &vmlinuz).unwrap();
        let err = KernelTree::open(&root).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "boot/vmlinuz-{r} is a symlink, not a file of the tree (the appliance takes files, not what links reach)"
            )
        );
        fs::remove_file(&vmlinuz).unwrap();
        fs::write(&vmlinuz, "bzImage").unwrap();
        let modules = root.join(format!("lib/modules/{r}/kernel"));
        fs::create_dir_all(&modules).unwrap();
        std::os::unix::fs::symlink(root.join("secret"), modules.join("evil.ko")).unwrap();
        let err = KernelTree::open(&root).unwrap_err().to_string();
        assert!(
            err.starts_with("module kernel/evil.ko is a symlink"),
            "{err}"
        );
        fs::remove_dir_all(&root).unwrap();
    }

    /// Debian (xz since trixie) and Ubuntu (zstd) compress their modules:
    /// read decompressed, named as plain `.ko` files in `modules.dep`.
    #[test]
    fn compressed_modules_are_read_decompressed_and_shipped_plain() {
        let evdev = fake_module(b"name=evdev\0depends=\0");
        let foo = fake_module(b"name=foo\0depends=bar,baz\0");
        let bar = fake_module(b"name=bar\0depends=\0");
        let baz = fake_module(b"name=baz\0depends=\0");
        let root = scratch("ktree-compressed");
        fake_kernel(
            &root,
            &[
                ("kernel/drivers/input/evdev.ko.xz", compress(XZ, &evdev)),
                ("kernel/foo/foo.ko.zst", compress(ZSTD, &foo)),
                ("kernel/bar/bar.ko.xz", compress(XZ, &bar)),
                ("kernel/baz/baz.ko.gz", compress(GZIP, &baz)),
                ("kernel/bad/broken.ko.xz", b"\xfd7zXZ\0 not really".to_vec()),
                ("kernel/bad/cut.ko.zst", {
                    let mut z = compress(ZSTD, &foo);
                    z.truncate(z.len() / 2);
                    z
                }),
                ("kernel/bad/flipped.ko.xz", {
                    // The xz check (CRC32) catches what the decoder takes.
                    let mut x = compress(XZ, &foo);
                    let at = x.len() / 2;
                    x[at] ^= 0x10;
                    x
                }),
                ("kernel/bad/odd.ko.bz2", b"BZh9".to_vec()),
            ],
            "",
        );
        let kt = KernelTree::open(&root).unwrap();
        let resolved = kt.resolve(&["foo".into(), "evdev".into()]).unwrap();
        let paths: Vec<(&str, &str)> = resolved
            .iter()
            .map(|m| (m.path.as_str(), m.source.as_str()))
            .collect();
        assert_eq!(
            paths,
            [
                ("kernel/bar/bar.ko", "kernel/bar/bar.ko.xz"),
                ("kernel/baz/baz.ko", "kernel/baz/baz.ko.gz"),
                (
                    "kernel/drivers/input/evdev.ko",
                    "kernel/drivers/input/evdev.ko.xz"
                ),
                ("kernel/foo/foo.ko", "kernel/foo/foo.ko.zst"),
            ]
        );
        for (m, plain) in resolved.iter().zip([&bar, &baz, &evdev, &foo]) {
            let bytes = kt.read_module(&m.source).unwrap();
            assert_eq!(&bytes, plain, "{}", m.source);
            // Kept from the read that found its dependencies.
            assert_eq!(m.decompressed.as_ref(), Some(plain), "{}", m.source);
            let info = elf::modinfo(&bytes).unwrap();
            assert!(info.contains(&("name".into(), m.name.clone())), "{info:?}");
        }
        let dep = modules_dep(&resolved);
        assert!(
            dep.contains("kernel/foo/foo.ko: kernel/bar/bar.ko kernel/baz/baz.ko\n"),
            "{dep}"
        );
        assert!(!dep.contains(".ko."), "{dep}");
        // What cannot be read is named.
        let dir = kt.modules_dir.display().to_string();
        for (name, want) in [
            (
                "broken",
                format!("decompress kernel module {dir}/kernel/bad/broken.ko.xz"),
            ),
            (
                "cut",
                format!("decompress kernel module {dir}/kernel/bad/cut.ko.zst"),
            ),
            (
                "flipped",
                format!("decompress kernel module {dir}/kernel/bad/flipped.ko.xz"),
            ),
            (
                "odd",
                format!(
                    "kernel module {dir}/kernel/bad/odd.ko.bz2 is compressed in a format \
                     berth-build cannot read (it reads .ko, .ko.gz, .ko.xz and .ko.zst files)"
                ),
            ),
        ] {
            let err = kt.resolve(&[name.into()]).unwrap_err();
            assert_eq!(err.to_string(), want);
        }
        fs::remove_dir_all(&root).unwrap();
    }

    /// ext4's `softdep pre: crc32c` names an alias, so every module's
    /// `.modinfo` is read to find it: one module that cannot be read (not
    /// asked for, not depended on) is skipped and named, not the build's
    /// failure.
    #[test]
    fn an_unreadable_module_is_skipped_when_looking_up_aliases() {
        let ext4 = fake_module(b"name=ext4\0depends=\0softdep=pre: crc32c\0");
        let crc = fake_module(b"name=crc32c_generic\0alias=crc32c\0alias=crypto-crc32c\0");
        let root = scratch("ktree-skip-unreadable");
        fake_kernel(
            &root,
            &[
                ("kernel/fs/ext4/ext4.ko.xz", compress(XZ, &ext4)),
                ("kernel/crypto/crc32c_generic.ko.zst", compress(ZSTD, &crc)),
                (
                    "kernel/drivers/gpu/junk.ko.xz",
                    b"\xfd7zXZ\0 not really".to_vec(),
                ),
                ("kernel/drivers/gpu/odd.ko.bz2", b"BZh9".to_vec()),
                ("kernel/drivers/gpu/text.ko", b"not an ELF file".to_vec()),
            ],
            "",
        );
        let kt = KernelTree::open(&root).unwrap();
        assert!(kt.skipped_modules().is_empty(), "nothing looked up yet");
        let resolved = kt.resolve(&["ext4".into()]).unwrap();
        let names: Vec<(&str, &[String])> = resolved
            .iter()
            .map(|m| (m.name.as_str(), m.deps.as_slice()))
            .collect();
        assert_eq!(
            names,
            [
                ("crc32c_generic", &[][..]),
                ("ext4", &["crc32c_generic".to_owned()][..])
            ]
        );
        assert_eq!(
            kt.provider("crypto-crc32c").unwrap(),
            Provider::Modules(vec!["crc32c_generic".into()])
        );
        let dir = kt.modules_dir.display().to_string();
        let skipped: Vec<String> = kt.skipped_modules().iter().map(|e| e.to_string()).collect();
        assert_eq!(
            skipped,
            [
                format!("decompress kernel module {dir}/kernel/drivers/gpu/junk.ko.xz"),
                format!(
                    "kernel module {dir}/kernel/drivers/gpu/odd.ko.bz2 is compressed in a format \
                     berth-build cannot read (it reads .ko, .ko.gz, .ko.xz and .ko.zst files)"
                ),
                format!("kernel module {dir}/kernel/drivers/gpu/text.ko"),
            ]
        );
        // Asked for by name, it is still an error.
        let err = kt.resolve(&["junk".into()]).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("decompress kernel module {dir}/kernel/drivers/gpu/junk.ko.xz")
        );
        fs::remove_dir_all(&root).unwrap();
    }

    /// depmod's `modules.alias`, where the tree has one, answers alias
    /// lookups without reading a module: an alias only it has resolves,
    /// a line for a module not in the tree is passed over, and the
    /// unreadable module is never opened.
    #[test]
    fn modules_alias_is_used_when_the_tree_has_it() {
        let ext4 = fake_module(b"name=ext4\0depends=\0softdep=pre: crc32c\0");
        let crc = fake_module(b"name=crc32c_generic\0");
        let root = scratch("ktree-modules-alias");
        fake_kernel(
            &root,
            &[
                ("kernel/fs/ext4/ext4.ko.xz", compress(XZ, &ext4)),
                ("kernel/crypto/crc32c-generic.ko.xz", compress(XZ, &crc)),
                (
                    "kernel/drivers/gpu/junk.ko.xz",
                    b"\xfd7zXZ\0 not really".to_vec(),
                ),
                (
                    "modules.alias",
                    b"# Aliases extracted from modules themselves.\n\
                      alias crc32c crc32c-generic\n\
                      alias fs-only-here ext4\n\
                      alias fs-gone gone_module\n\
                      alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n"
                        .to_vec(),
                ),
            ],
            "",
        );
        let kt = KernelTree::open(&root).unwrap();
        assert_eq!(
            kt.provider("fs_only-here").unwrap(),
            Provider::Modules(vec!["ext4".into()])
        );
        assert_eq!(kt.provider("fs-gone").unwrap(), Provider::Missing);
        let resolved = kt.resolve(&["ext4".into()]).unwrap();
        let entry = resolved.iter().find(|m| m.name == "ext4").unwrap();
        assert_eq!(entry.deps, ["crc32c_generic"]);
        assert!(kt.skipped_modules().is_empty());
        fs::remove_dir_all(&root).unwrap();
    }

    /// What we write is what berth-init reads: load order deps first.
    #[test]
    fn modules_dep_round_trips_through_the_init_parser() {
        let mods = vec![
            m(
                "virtio_net",
                "kernel/drivers/net/virtio_net.ko",
                &["net_failover", "virtio"],
            ),
            m(
                "net_failover",
                "kernel/drivers/net/net_failover.ko",
                &["failover"],
            ),
            m("failover", "kernel/net/core/failover.ko", &[]),
            m("virtio", "kernel/drivers/virtio/virtio.ko", &["crc32c"]),
        ];
        let dep = modules_dep(&mods);
        assert!(dep.contains(
            "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/drivers/virtio/virtio.ko kernel/net/core/failover.ko\n"
        ), "{dep}");
        assert!(dep.contains("kernel/net/core/failover.ko:\n"), "{dep}");
        let idx = berth_init::modules::ModuleIndex::parse(&dep, "kernel/lib/crc32c.ko\n").unwrap();
        let order: Vec<String> = idx
            .load_order(&["virtio_net".into()])
            .unwrap()
            .into_iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let pos = |p: &str| order.iter().position(|o| o.ends_with(p)).unwrap();
        assert!(pos("failover.ko") < pos("net_failover.ko"));
        assert!(pos("net_failover.ko") < pos("virtio_net.ko"));
        assert!(pos("virtio.ko") < pos("virtio_net.ko"));
    }

    #[test]
    fn softdep_pre_names_as_kmod_reads_them() {
        assert_eq!(softdeps_pre("pre: crc32c"), ["crc32c"]);
        assert_eq!(softdeps_pre("pre: a b post: c pre: d"), ["a", "b", "d"]);
        assert!(softdeps_pre("post: mpls_gso").is_empty());
        assert!(
            softdeps_pre("gcm ccm").is_empty(),
            "names before pre: are not taken"
        );
        assert_eq!(
            builtin_aliases(b"crc32c_generic.alias=crc32c\0crc32c_generic.alias=crypto-crc32c\0ext4.license=GPL\0ext4.alias=fs-ext4\0"),
            [
                ("crc32c", "crc32c_generic"),
                ("crypto_crc32c", "crc32c_generic"),
                ("fs_ext4", "ext4")
            ]
            .map(|(a, m)| (a.to_owned(), m.to_owned()))
            .into_iter()
            .collect()
        );
    }

    /// `.modinfo` of real modules of the fetched Debian cloud kernel.
    #[test]
    fn depends_of_real_cloud_kernel_modules() {
        let cache = berth_qemu::default_cache_dir().unwrap();
        let k = berth_qemu::fetch_kernel(&cache).unwrap_or_else(|e| {
            panic!(
                "fetch the cloud kernel (needs apt lists: apt-get update): {}",
                berth_qemu::error_chain(&e)
            )
        });
        let tree = KernelTree::open(&k.root).unwrap();
        assert_eq!(tree.release, k.release);
        let ko = fs::read(tree.modules_dir.join(&tree.modules["virtio_net"])).unwrap();
        let mut deps = module_depends(&ko).unwrap();
        deps.sort();
        assert_eq!(deps, ["net_failover", "virtio", "virtio_ring"]);
        let info = elf::modinfo(&ko).unwrap();
        assert!(
            info.contains(&("name".into(), "virtio_net".into())),
            "{info:?}"
        );
        let evdev = fs::read(tree.modules_dir.join(&tree.modules["evdev"])).unwrap();
        assert!(module_depends(&evdev).unwrap().is_empty());
        // ext4 is built into the cloud kernel: nothing to ship for it.
        assert!(tree.builtin.contains("ext4"));
        assert!(tree.resolve(&["ext4".into()]).unwrap().is_empty());
        let resolved = tree.resolve(&["virtio_net".into()]).unwrap();
        let names: Vec<&str> = resolved.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "failover",
                "net_failover",
                "virtio",
                "virtio_net",
                "virtio_ring"
            ]
        );
        assert!(matches!(
            tree.resolve(&["nope".into()]),
            Err(KernelError::UnknownModule { .. })
        ));
        // btrfs's `softdep pre:` names, through their aliases (xxhash64,
        // blake2b-256), and xt_LOG's by module name: shipped and loaded
        // before them. crc32c and sha256 are built in.
        let btrfs = tree.resolve(&["btrfs".into()]).unwrap();
        let names: Vec<&str> = btrfs.iter().map(|m| m.name.as_str()).collect();
        for soft in ["xxhash_generic", "blake2b_generic"] {
            assert!(names.contains(&soft), "{names:?}");
        }
        let entry = btrfs.iter().find(|m| m.name == "btrfs").unwrap();
        assert!(
            entry.deps.iter().any(|d| d == "xxhash_generic"),
            "{entry:?}"
        );
        let xt_log = tree.resolve(&["xt_LOG".into()]).unwrap();
        assert!(
            xt_log.iter().any(|m| m.name == "nf_log_syslog"),
            "{xt_log:?}"
        );
    }
}
