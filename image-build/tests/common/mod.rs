//! Helpers shared by the end-to-end tests of `berth-build` (each test file
//! uses a subset, hence the `dead_code` allowance): root and tool checks that
//! fail with an install hint, the cloud kernel, the static PID 1, running
//! `berth-build`; with the fixtures the unit tests use too (fake kernel
//! trees and modules, compressors), from `src/testing.rs`.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

// The unit tests' fixtures, shared by path: berth-build has no library to
// import them from.
#[path = "../../src/testing.rs"]
mod testing;
pub use testing::*;

pub const TARGET: &str = "x86_64-unknown-linux-musl";
pub const TIMEOUT: Duration = Duration::from_secs(180);

pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests need root (device nodes in the initramfs, cpio -i of them): run cargo test as root"
    );
}

/// The workspace root.
pub fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

pub fn sh(script: &str) {
    let out = Command::new("sh").arg("-ec").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The cloud kernel, fetched once per user (cached by berth-qemu).
pub fn kernel() -> &'static berth_qemu::Kernel {
    static K: OnceLock<berth_qemu::Kernel> = OnceLock::new();
    K.get_or_init(|| {
        require_tool("dpkg", "apt-get install dpkg");
        let cache = berth_qemu::default_cache_dir().expect("kernel cache dir");
        berth_qemu::fetch_kernel(&cache).unwrap_or_else(|e| {
            panic!(
                "fetch the cloud kernel (needs apt lists: apt-get update): {}",
                berth_qemu::error_chain(&e)
            )
        })
    })
}

/// The static PID 1, built like init/tests/static_binary.rs does (its own
/// target dir, so it never waits on the cargo running this test).
pub fn static_init() -> &'static Path {
    static INIT: OnceLock<PathBuf> = OnceLock::new();
    INIT.get_or_init(|| {
        let workspace = workspace();
        let target_dir = workspace.join("target/static-check");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(workspace)
            .args(["build", "--release", "--locked", "--target", TARGET])
            .args(["-p", "berth-init", "--bin", "berth-init"])
            .env("CARGO_TARGET_DIR", &target_dir)
            .output()
            .expect("run cargo");
        assert!(
            out.status.success(),
            "static build of berth-init failed (needs `rustup target add {TARGET}` and `apt-get install musl-tools lld`):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        target_dir.join(TARGET).join("release/berth-init")
    })
}

pub fn berth_build(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth-build"))
        .args(args)
        .output()
        .expect("run berth-build")
}

/// `berth-build build MANIFEST -o OUT` with the cloud kernel package and the
/// static init; returns the summary printed on stdout.
pub fn build_ok(manifest: &Path, out: &Path) -> String {
    let k = kernel();
    let o = berth_build(&[
        "build",
        manifest.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--kernel",
        k.deb.to_str().unwrap(),
        "--init",
        static_init().to_str().unwrap(),
    ]);
    assert!(
        o.status.success(),
        "berth-build failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Unpacks an initrd.img (zstd newc) with Debian's zstd and cpio.
pub fn extract(initrd: &Path, dest: &Path) {
    require_tool("zstd", "apt-get install zstd");
    require_tool("cpio", "apt-get install cpio");
    fs::create_dir_all(dest).unwrap();
    sh(&format!(
        "cd {} && zstd -dc {} | cpio -i -d -m --quiet --no-absolute-filenames",
        dest.display(),
        initrd.display()
    ));
}

/// The demo's build inputs in `dir` (manifest.json and the OCI layout), made
/// by the same script `.ci/demo` runs.
pub fn prepare_demo(dir: &Path) -> PathBuf {
    require_tool("umoci", "apt-get install umoci");
    let script = workspace().join("image-build/examples/demo/prepare.sh");
    let o = Command::new("bash")
        .arg(&script)
        .arg(dir)
        .output()
        .expect("run prepare.sh");
    assert!(
        o.status.success(),
        "{}: {}{}",
        script.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    dir.join("manifest.json")
}

/// Panics with the error chain, after printing the serial log.
pub fn ok<T>(vm: &berth_qemu::Vm, r: Result<T, berth_qemu::VmError>) -> T {
    vm.or_dump(r)
        .unwrap_or_else(|e| panic!("{}", berth_qemu::error_chain(&e)))
}

/// An OCI layout at `dir/NAME` holding image `NAME`: one uncompressed layer
/// (`tar`), the container config `config` (the image config's `config`).
pub fn one_layer_layout(dir: &Path, name: &str, tar: &[u8], config: serde_json::Value) -> PathBuf {
    one_blob_layout(dir, name, tar, None, config)
}

/// [`one_layer_layout`] with the layer stored as `zstd` (bytes of a zstd
/// stream of `tar`) when given.
pub fn one_blob_layout(
    dir: &Path,
    name: &str,
    tar: &[u8],
    zstd: Option<&[u8]>,
    config: serde_json::Value,
) -> PathBuf {
    use berth_bundles::digest::Sha256Digest;
    let layout = dir.join(name);
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> (String, usize) {
        let d = Sha256Digest::of(bytes);
        fs::write(blobs.join(d.hex()), bytes).unwrap();
        (d.to_string(), bytes.len())
    };
    let diff_id = Sha256Digest::of(tar).to_string();
    let (layer, layer_size) = put(zstd.unwrap_or(tar));
    let media_type = match zstd {
        Some(_) => "application/vnd.oci.image.layer.v1.tar+zstd",
        None => "application/vnd.oci.image.layer.v1.tar",
    };
    let image_config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let (cfg, cfg_size) = put(&serde_json::to_vec(&image_config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": cfg_size},
        "layers": [{"mediaType": media_type, "digest": layer, "size": layer_size}],
    });
    let (m, m_size) = put(&serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": m,
            "size": m_size,
            "annotations": {"org.opencontainers.image.ref.name": name},
        }],
    });
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    layout
}

/// `berth-build build MANIFEST -o OUT --kernel KERNEL` with the static init.
pub fn build_with_kernel(manifest: &Path, out: &Path, kernel: &Path) -> Output {
    berth_build(&[
        "build",
        manifest.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--kernel",
        kernel.to_str().unwrap(),
        "--init",
        static_init().to_str().unwrap(),
    ])
}
