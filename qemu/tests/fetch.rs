//! The real cloud kernel download (needs apt lists with the package; CI
//! runs `apt-get update` in .ci/setup when it installs anything).

use berth_qemu::{default_cache_dir, fetch_kernel};

#[test]
fn cloud_kernel_is_fetched_and_reused() {
    let dir = default_cache_dir().expect("cache dir");
    let kernel = fetch_kernel(&dir).unwrap_or_else(|err| {
        panic!(
            "fetching the cloud kernel failed (needs apt lists: apt-get update): {}",
            berth_qemu::error_chain(&err)
        )
    });
    assert!(kernel.vmlinuz.is_file(), "{}", kernel.vmlinuz.display());
    assert!(kernel.modules_dir.join("kernel").is_dir());
    assert!(kernel.modules_dir.join("modules.builtin").is_file());
    assert!(kernel.config.is_file());
    assert!(
        kernel.release.ends_with("-cloud-amd64"),
        "{}",
        kernel.release
    );
    assert!(kernel.deb.is_file());
    assert!(kernel.vmlinuz.starts_with(&dir));
    // Second call: same cache entry, nothing re-downloaded.
    let mtime = std::fs::metadata(&kernel.deb).unwrap().modified().unwrap();
    let again = fetch_kernel(&dir).unwrap();
    assert_eq!(again, kernel);
    assert_eq!(
        std::fs::metadata(&again.deb).unwrap().modified().unwrap(),
        mtime
    );
}

/// `berth-qemu fetch-kernel | head -1`: output into a pipe whose reader is
/// gone is dropped; the command still ends well (no panic, no abort).
#[test]
fn fetch_kernel_into_a_closed_pipe_ends_well() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth-qemu"))
        .arg("fetch-kernel")
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
