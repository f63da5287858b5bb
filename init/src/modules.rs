//! Kernel modules: `modules.dep` parsing and load order.
//!
//! `depmod` writes one line per module, `path: dep dep …`, paths relative to
//! `/lib/modules/$(uname -r)`. The dependency list is already transitive,
//! but its order is not something to rely on, so we resolve it ourselves:
//! depth first, each module's own dependencies before it, each module once.
//! Built-in modules (`modules.builtin`) need no loading.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Why a module list cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModuleError {
    #[error("modules.dep line {line}: no ':' in {text:?}")]
    Malformed { line: usize, text: String },
    #[error("module {name} not found in modules.dep")]
    Unknown { name: String },
    #[error("module dependency cycle: {}", chain.join(" -> "))]
    Cycle { chain: Vec<String> },
}

/// The name the kernel uses for a module file:
/// `kernel/drivers/net/virtio_net.ko.zst` → `virtio_net`, `-` read as `_`.
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    path: String,
    deps: Vec<String>,
}

/// Parsed `modules.dep` (plus `modules.builtin`).
#[derive(Debug, Clone, Default)]
pub struct ModuleIndex {
    modules: BTreeMap<String, Entry>,
    builtin: BTreeSet<String>,
}

impl ModuleIndex {
    pub fn parse(modules_dep: &str, modules_builtin: &str) -> Result<Self, ModuleError> {
        let mut modules = BTreeMap::new();
        for (i, line) in modules_dep.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((path, deps)) = line.split_once(':') else {
                return Err(ModuleError::Malformed {
                    line: i + 1,
                    text: line.to_owned(),
                });
            };
            let path = path.trim().to_owned();
            let deps = deps.split_whitespace().map(module_name).collect();
            modules.insert(module_name(&path), Entry { path, deps });
        }
        let builtin = modules_builtin
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(module_name)
            .collect();
        Ok(Self { modules, builtin })
    }

    /// The files to load, in order, for the modules `wanted` names: every
    /// dependency before its dependents, each file once, built-ins skipped.
    pub fn load_order(&self, wanted: &[String]) -> Result<Vec<PathBuf>, ModuleError> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        for name in wanted {
            let mut chain = Vec::new();
            self.visit(&module_name(name), &mut chain, &mut done, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        chain: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        order: &mut Vec<PathBuf>,
    ) -> Result<(), ModuleError> {
        if done.contains(name) || self.builtin.contains(name) {
            return Ok(());
        }
        if chain.iter().any(|c| c == name) {
            let mut chain = chain.clone();
            chain.push(name.to_owned());
            return Err(ModuleError::Cycle { chain });
        }
        let entry = self.modules.get(name).ok_or_else(|| ModuleError::Unknown {
            name: name.to_owned(),
        })?;
        chain.push(name.to_owned());
        for dep in &entry.deps {
            self.visit(dep, chain, done, order)?;
        }
        chain.pop();
        done.insert(name.to_owned());
        order.push(PathBuf::from(&entry.path));
        Ok(())
    }
}

/// Why a module file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModuleLoadError {
    #[error("open module {path}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("load module {path}")]
    Load { path: PathBuf, source: nix::Error },
}

/// Loads the files of `order` (relative to `dir`) with finit_module(2).
/// Compressed modules (`.ko.zst`, `.ko.xz`, `.ko.gz`) are handed to the
/// kernel as they are with MODULE_INIT_COMPRESSED_FILE (Linux 5.17+, needs
/// CONFIG_MODULE_DECOMPRESS). EEXIST means already loaded, which is fine.
pub fn load_modules(dir: &Path, order: &[PathBuf]) -> Result<usize, ModuleLoadError> {
    use nix::kmod::{ModuleInitFlags, finit_module};
    // include/uapi/linux/module.h; nix has no name for it yet.
    const MODULE_INIT_COMPRESSED_FILE: u32 = 4;
    let mut loaded = 0;
    for rel in order {
        let name = module_name(&rel.to_string_lossy());
        // Loaded before (by another list, say the disk's and the NIC's
        // shared bus driver): finit_module would say EEXIST, but only after
        // reading the file and checking its signature.
        if Path::new("/sys/module")
            .join(&name)
            .join("initstate")
            .exists()
        {
            continue;
        }
        let started = std::time::Instant::now();
        let path = dir.join(rel);
        let file = std::fs::File::open(&path).map_err(|source| ModuleLoadError::Open {
            path: path.clone(),
            source,
        })?;
        let compressed = !path.to_string_lossy().ends_with(".ko");
        let flags = if compressed {
            ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE)
        } else {
            ModuleInitFlags::empty()
        };
        let result = finit_module(&file, c"", flags);
        // The module's init runs inside finit_module, and with it the
        // probe of every device the driver binds: this time is what a slow
        // boot needs to see. (Measured: on QEMU 7.2's `pc` machine under
        // TCG virtio_pci takes 130-200 ms per device, because enabling a
        // PCI device makes the kernel evaluate the DSDT's _PRT, there a
        // 128-round AML loop; on `q35` it is a static table: ~20 ms.)
        log::debug!(
            "module {name} {} in {} ms (load, init and device probes)",
            match &result {
                Ok(()) => "loaded".to_owned(),
                Err(nix::Error::EEXIST) => "already loaded".to_owned(),
                Err(e) => format!("failed ({e})"),
            },
            started.elapsed().as_millis()
        );
        match result {
            Ok(()) => loaded += 1,
            Err(nix::Error::EEXIST) => {}
            Err(source) => return Err(ModuleLoadError::Load { path, source }),
        }
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/net/virtio_net.ko.zst: kernel/drivers/net/net_failover.ko.zst kernel/net/core/failover.ko.zst
kernel/drivers/net/net_failover.ko.zst: kernel/net/core/failover.ko.zst
kernel/net/core/failover.ko.zst:
kernel/fs/ext4/ext4.ko.xz: kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz kernel/lib/crc16.ko.xz
kernel/fs/mbcache.ko.xz:
kernel/fs/jbd2/jbd2.ko.xz:
kernel/lib/crc16.ko.xz:
kernel/drivers/input/evdev.ko:
kernel/drivers/acpi/button.ko:
kernel/drivers/hid/hid-generic.ko: kernel/drivers/hid/hid.ko
kernel/drivers/hid/hid.ko:
";

    fn paths(order: Vec<PathBuf>) -> Vec<String> {
        order
            .into_iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn names() {
        assert_eq!(
            module_name("kernel/drivers/net/virtio_net.ko.zst"),
            "virtio_net"
        );
        assert_eq!(
            module_name("kernel/drivers/hid/hid-generic.ko"),
            "hid_generic"
        );
        assert_eq!(module_name("ext4"), "ext4");
    }

    #[test]
    fn deps_first_each_once() {
        let idx = ModuleIndex::parse(DEP, "kernel/lib/crc16.ko\n").unwrap();
        let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
            (vec!["failover"], vec!["kernel/net/core/failover.ko.zst"]),
            (
                vec!["virtio_net", "net_failover"],
                vec![
                    "kernel/net/core/failover.ko.zst",
                    "kernel/drivers/net/net_failover.ko.zst",
                    "kernel/drivers/net/virtio_net.ko.zst",
                ],
            ),
            // crc16 is built in: skipped.
            (
                vec!["ext4"],
                vec![
                    "kernel/fs/mbcache.ko.xz",
                    "kernel/fs/jbd2/jbd2.ko.xz",
                    "kernel/fs/ext4/ext4.ko.xz",
                ],
            ),
            (
                vec!["hid-generic"],
                vec![
                    "kernel/drivers/hid/hid.ko",
                    "kernel/drivers/hid/hid-generic.ko",
                ],
            ),
            (vec!["crc16"], vec![]),
            (vec![], vec![]),
        ];
        for (wanted, want) in cases {
            let wanted: Vec<String> = wanted.into_iter().map(String::from).collect();
            assert_eq!(paths(idx.load_order(&wanted).unwrap()), want, "{wanted:?}");
        }
    }

    #[test]
    fn errors() {
        let idx = ModuleIndex::parse(DEP, "").unwrap();
        assert_eq!(
            idx.load_order(&["nope".into()]).unwrap_err().to_string(),
            "module nope not found in modules.dep"
        );
        let cyclic = ModuleIndex::parse("a.ko: b.ko\nb.ko: a.ko\n", "").unwrap();
        assert_eq!(
            cyclic.load_order(&["a".into()]).unwrap_err().to_string(),
            "module dependency cycle: a -> b -> a"
        );
        // A dependency that has no line of its own.
        let broken = ModuleIndex::parse("a.ko: gone.ko\n", "").unwrap();
        assert_eq!(
            broken.load_order(&["a".into()]),
            Err(ModuleError::Unknown {
                name: "gone".into()
            })
        );
        assert_eq!(
            ModuleIndex::parse("a.ko b.ko\n", "").unwrap_err(),
            ModuleError::Malformed {
                line: 1,
                text: "a.ko b.ko".into()
            }
        );
    }
}
