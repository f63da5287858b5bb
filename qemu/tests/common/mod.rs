//! Shared pieces of the QEMU tests: the fetched kernel, "floor"
//! initramfs images (busybox-static plus a shell /init) built as newc cpio
//! archives with Debian's `cpio`, and a stand-in QEMU ([`standin`]).
#![allow(dead_code)]

pub mod standin;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use berth_qemu::{Appliance, Kernel, default_cache_dir, error_chain, fetch_kernel};

/// Generous: a TCG boot takes seconds, more on a loaded 2-core CI machine.
pub const TIMEOUT: Duration = Duration::from_secs(60);

const BUSYBOX: &str = "/bin/busybox";

/// The cloud kernel, fetched once per test process; missing prerequisites
/// fail the test with an install hint.
pub fn kernel() -> &'static Kernel {
    static KERNEL: OnceLock<Kernel> = OnceLock::new();
    KERNEL.get_or_init(|| {
        require_qemu();
        let dir = default_cache_dir().expect("no cache dir: set HOME or XDG_CACHE_HOME");
        fetch_kernel(&dir).unwrap_or_else(|err| {
            panic!(
                "could not fetch Debian's cloud kernel (apt-get update; apt must reach deb.debian.org): {}",
                error_chain(&err)
            )
        })
    })
}

fn require_qemu() {
    let ok = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "qemu-system-x86_64 missing: apt-get install qemu-system-x86"
    );
}

/// Checks /bin/busybox exists and is static (the initramfs has no libc).
fn require_static_busybox() {
    let bytes = fs::read(BUSYBOX)
        .unwrap_or_else(|e| panic!("{BUSYBOX} missing ({e}): apt-get install busybox-static"));
    assert!(
        bytes.len() > 64 && bytes.starts_with(b"\x7fELF") && bytes[4] == 2,
        "{BUSYBOX} is not a 64-bit ELF: apt-get install busybox-static"
    );
    // ELF64: e_phoff at 0x20, e_phentsize at 0x36, e_phnum at 0x38; a
    // PT_INTERP (3) program header means it needs a dynamic loader.
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap()) as usize;
    let u16_at = |o: usize| u16::from_le_bytes(bytes[o..o + 2].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let off = phoff + i * phentsize;
        let p_type = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap());
        assert_ne!(
            p_type, 3,
            "{BUSYBOX} is dynamically linked: apt-get install busybox-static"
        );
    }
}

/// A scratch directory for one test, emptied first.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("berth-qemu-tests")
        .join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds OUTDIR (`vmlinuz` + `initrd.img`) in the test's scratch directory:
/// busybox-static at /bin/busybox, /dev/console and /dev/null nodes, the
/// given kernel modules (with their dependencies, dependencies first, listed
/// in /lib/modules/load-order) and `init_script` as /init.
pub fn floor_appliance(name: &str, init_script: &str, modules: &[&str]) -> Appliance {
    require_static_busybox();
    let kernel = kernel();
    let out = scratch(name);
    let root = out.join("root");
    for dir in ["bin", "dev", "proc", "sys", "tmp", "mnt", "lib/modules"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    // The nodes the kernel and a Rust init expect before /dev is mounted;
    // mknod needs root, which the CI ring has.
    run(Command::new("mknod")
        .args(["-m", "600"])
        .arg(root.join("dev/console"))
        .args(["c", "5", "1"]));
    run(Command::new("mknod")
        .args(["-m", "666"])
        .arg(root.join("dev/null"))
        .args(["c", "1", "3"]));

    let order = module_load_order(&kernel.modules_dir, modules);
    let mut names = String::new();
    for (name, path) in &order {
        fs::copy(path, root.join("lib/modules").join(format!("{name}.ko"))).unwrap();
        names.push_str(name);
        names.push('\n');
    }
    fs::write(root.join("lib/modules/load-order"), names).unwrap();

    let init = root.join("init");
    fs::write(&init, init_script).unwrap();
    run(Command::new("chmod").arg("755").arg(&init));

    let initrd = out.join("initrd.img");
    let script = format!(
        "find . | LC_ALL=C sort | cpio -o -H newc --quiet > '{}'",
        initrd.display()
    );
    run(Command::new("sh").arg("-c").arg(script).current_dir(&root));
    let vmlinuz = out.join("vmlinuz");
    fs::copy(&kernel.vmlinuz, &vmlinuz).unwrap();
    Appliance::from_dir(&out).unwrap()
}

/// The `.ko` files of `wanted` and everything they depend on, dependencies
/// first. Dependencies come from each module's `depends=` modinfo string
/// (the package ships no modules.dep).
fn module_load_order(modules_dir: &Path, wanted: &[&str]) -> Vec<(String, PathBuf)> {
    let mut by_name = HashMap::new();
    index_modules(&modules_dir.join("kernel"), &mut by_name);
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    for name in wanted {
        visit_module(name, &by_name, &mut seen, &mut order);
    }
    order
}

fn index_modules(dir: &Path, by_name: &mut HashMap<String, PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            index_modules(&path, by_name);
        } else if let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ko"))
        {
            // Module names use '_' where file names may use '-'.
            by_name.insert(stem.replace('-', "_"), path);
        }
    }
}

fn visit_module(
    name: &str,
    by_name: &HashMap<String, PathBuf>,
    seen: &mut HashSet<String>,
    order: &mut Vec<(String, PathBuf)>,
) {
    let name = name.replace('-', "_");
    if !seen.insert(name.clone()) {
        return;
    }
    let path = by_name
        .get(&name)
        .unwrap_or_else(|| panic!("module {name} is not in the cloud kernel package"));
    let bytes = fs::read(path).unwrap();
    let key = b"\0depends=";
    if let Some(at) = bytes.windows(key.len()).position(|w| w == key) {
        let rest = &bytes[at + key.len()..];
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        let deps = String::from_utf8_lossy(&rest[..end]).into_owned();
        for dep in deps.split(',').filter(|d| !d.is_empty()) {
            visit_module(dep, by_name, seen, order);
        }
    }
    order.push((name, path.clone()));
}

/// The /init prologue: busybox applets on PATH, proc/sys/devtmpfs mounted,
/// the listed modules loaded in order.
pub const INIT_PROLOGUE: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /lib/modules/load-order); do
    insmod /lib/modules/$m.ko || echo "floor: insmod $m failed"
done
"#;

/// The local addresses of TCP sockets listening on `port`, IPv4 and IPv6, as
/// /proc/net/tcp{,6} print them (127.0.0.1 is `0100007F`; state 0A = LISTEN).
pub fn listening_addresses(port: u16) -> Vec<String> {
    let mut table = fs::read_to_string("/proc/net/tcp").unwrap();
    table.push_str(&fs::read_to_string("/proc/net/tcp6").unwrap_or_default());
    let suffix = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state) = (fields.get(1)?, fields.get(3)?);
            (local.ends_with(&suffix) && *state == "0A").then(|| local.to_string())
        })
        .collect()
}

/// Blocks until the ACPI power button is pressed (QMP system_powerdown),
/// then powers off; needs the `button` and `evdev` modules loaded.
pub const POWER_BUTTON_THEN_POWEROFF: &str = r#"
# The ACPI power button (LNXPWRBN, loaded as the `button` module) is an
# input device; reading its evdev node blocks until QMP system_powerdown
# presses it.
ev=
while [ -z "$ev" ]; do
    for d in /sys/class/input/input*; do
        if grep -q "Power Button" $d/name 2>/dev/null; then
            for e in $d/event*; do [ -e "$e" ] && ev=/dev/input/${e##*/}; done
        fi
    done
    [ -n "$ev" ] && [ -e "$ev" ] || { ev=; sleep 0.2; }
done
# Open it before saying so: evdev queues events only for open readers.
exec 3< "$ev"
echo "berth-floor: waiting for the power button on $ev"
# One struct input_event is 24 bytes on x86_64; evdev refuses shorter reads.
dd bs=24 count=1 <&3 > /dev/null 2>&1
echo "berth-floor: power button pressed"
poweroff -f
"#;
