//! Test fixtures shared by the unit tests (`mod testing` of the crate, under
//! `cfg(test)`) and the integration tests (`tests/common` takes this file by
//! `#[path]`: berth-build is a binary, so they cannot import it): kernel
//! trees and modules made on the spot, and the compressors that shrink
//! modules as kernel builds do. Standard library only, for both to build it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Fails with `hint` (how to install it) when `tool` is not on `PATH`: a
/// missing tool fails the test, never skips it.
pub fn require_tool(tool: &str, hint: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(found, "{tool} missing: {hint}");
}

/// A new empty directory for test `tag` of this process.
pub fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("berth-build-test-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A minimal ELF64 kernel module: a section name table and a `.modinfo`
/// section holding `modinfo` (`key=value\0` records), which is all
/// berth-build reads of a module.
pub fn fake_module(modinfo: &[u8]) -> Vec<u8> {
    let names = b"\0.shstrtab\0.modinfo\0";
    let mut b = vec![0u8; 0x40];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2;
    b[5] = 1;
    let names_off = b.len() as u64;
    b.extend_from_slice(names);
    let info_off = b.len() as u64;
    b.extend_from_slice(modinfo);
    let shoff = b.len() as u64;
    b[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
    b[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
    b[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
    b[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
    for (name, off, size) in [
        (0u32, 0u64, 0u64),
        (1, names_off, names.len() as u64),
        (11, info_off, modinfo.len() as u64),
    ] {
        let mut h = [0u8; 64];
        h[..4].copy_from_slice(&name.to_le_bytes());
        h[0x18..0x20].copy_from_slice(&off.to_le_bytes());
        h[0x20..0x28].copy_from_slice(&size.to_le_bytes());
        b.extend_from_slice(&h);
    }
    b
}

/// The release of [`fake_kernel`]'s tree.
pub const FAKE_RELEASE: &str = "6.12.0-0-cloud-amd64";

/// An unpacked kernel tree at `root` with `modules` (path below
/// `lib/modules/<release>`, bytes: module files, or the tree's index
/// files such as `modules.alias`) and `modules.builtin` (module paths);
/// its `vmlinuz` boots nothing.
pub fn fake_kernel(root: &Path, modules: &[(&str, Vec<u8>)], builtin: &str) {
    let r = FAKE_RELEASE;
    fs::create_dir_all(root.join("boot")).unwrap();
    fs::write(
        root.join(format!("boot/config-{r}")),
        "CONFIG_RD_ZSTD=y\nCONFIG_TMPFS_XATTR=y\n",
    )
    .unwrap();
    fs::write(root.join(format!("boot/vmlinuz-{r}")), "bzImage").unwrap();
    let dir = root.join(format!("lib/modules/{r}"));
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("modules.builtin"), builtin).unwrap();
    for (path, bytes) in modules {
        let path = dir.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }
}

/// scripts/Makefile.modinst's compressions, and gzip's: [`compress`]'s
/// command lines.
pub const XZ: &[&str] = &["xz", "--check=crc32", "--lzma2=dict=1MiB", "-c"];
pub const ZSTD: &[&str] = &["zstd", "-q", "-T0", "--ultra", "-22", "-c"];
pub const GZIP: &[&str] = &["gzip", "-n", "-9", "-c"];

/// `bytes` through a compressor's command line ([`XZ`], [`ZSTD`],
/// [`GZIP`]), as a kernel build or a distribution compresses its modules.
pub fn compress(argv: &[&str], bytes: &[u8]) -> Vec<u8> {
    let hint = "apt-get install xz-utils zstd gzip";
    require_tool(argv[0], hint);
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {} ({e}): {hint}", argv[0]));
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{argv:?}");
    out.stdout
}
