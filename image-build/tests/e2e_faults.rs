//! Appliances that meet trouble inside the VM, end to end under QEMU: an
//! image whose blob is corrupted inside the initrd (after berth-build
//! verified it), and cgroup v2 limits on a real cgroup2 hierarchy with
//! controllers (memory → OOM kill and restart; pids → fork fails).
//!
//! Root and QEMU; a missing tool fails with an install hint, never a skip.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use berth_qemu::{Outcome, Vm, VmConfig};
use common::{TIMEOUT, build_ok, extract, ok, require_root, require_tool, scratch, sh};

/// An OCI layout with two images of busybox-static whose layers differ
/// (`other` has one more file), so a corrupted blob hits one image only.
fn two_image_layout(dir: &Path) -> PathBuf {
    require_tool("umoci", "apt-get install umoci");
    assert!(
        Path::new("/bin/busybox").is_file(),
        "busybox-static missing: apt-get install busybox-static"
    );
    let root = dir.join("root");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    // Relative applet links (`busybox --install -s` would use the host's path).
    sh(&format!(
        "cd {} && for a in $(/bin/busybox --list); do [ $a = busybox ] || ln -s busybox $a; done",
        root.join("bin").display()
    ));
    let layout = dir.join("layout");
    sh(&format!(
        "umoci init --layout {l} && umoci new --image {l}:bb && umoci insert --image {l}:bb {r} / \
         && umoci config --image {l}:bb --config.cmd /bin/sh \
         && echo other > {r}/other && umoci new --image {l}:other \
         && umoci insert --image {l}:other {r} / && umoci config --image {l}:other --config.cmd /bin/sh",
        l = layout.display(),
        r = root.display()
    ));
    layout
}

fn boot(out: &Path) -> Vm {
    require_tool("qemu-system-x86_64", "apt-get install qemu-system-x86");
    let appliance = berth_qemu::Appliance::from_dir(out).unwrap();
    Vm::boot(&appliance, &VmConfig::default()).expect("boot")
}

fn power_off(vm: &Vm) -> String {
    // `ready` means the power button's device is open: the press is not
    // lost (berth-init loads its drivers in the background).
    ok(vm, vm.wait_for_line("berth: ready", TIMEOUT));
    ok(vm, vm.qmp_powerdown());
    let status = ok(vm, vm.wait_exit(TIMEOUT));
    let log = vm.serial_log();
    assert!(status.success(), "qemu exited with {status}\n{log}");
    assert_eq!(vm.outcome().unwrap(), Some(Outcome::PoweredOff), "{log}");
    log
}

/// The first layer digest (hex) of image `name` in an OCI layout.
fn layer_of(layout: &Path, name: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == name)
        .unwrap_or_else(|| panic!("no image {name} in {}", layout.display()));
    let m: serde_json::Value = serde_json::from_slice(
        &fs::read(
            layout.join("blobs/sha256").join(
                desc["digest"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("sha256:"),
            ),
        )
        .unwrap(),
    )
    .unwrap();
    m["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string()
}

/// A service shell that ticks and stops on SIGTERM (PID 1 of its pid
/// namespace gets only the signals it handles, pid_namespaces(7)).
const TICKER: &str =
    "trap 'exit 0' TERM; i=0; while :; do i=$((i+1)); echo tick $i; sleep 1 & wait $!; done";

#[test]
fn a_blob_corrupted_inside_the_initrd_fails_its_service_only() {
    require_root();
    let dir = scratch("baddigest");
    two_image_layout(&dir);
    let manifest = dir.join("manifest.json");
    fs::write(
        &manifest,
        serde_json::json!({
            "version": 1,
            "images": {"bb": "oci:layout:bb", "other": "oci:layout:other"},
            "services": [
                {"name": "good", "image": "bb", "command": ["/bin/sh", "-c", TICKER], "stop_timeout": "5s"},
                {"name": "broken", "image": "other", "command": ["/bin/sh", "-c", TICKER], "stop_timeout": "5s"}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let out = dir.join("out");
    build_ok(&manifest, &out);

    // Corrupt `other`'s layer blob inside the built initrd (same size, one
    // byte flipped), then repack it as berth-build would: newc, zstd.
    let x = dir.join("x");
    extract(&out.join("initrd.img"), &x);
    let images = x.join("berth/images");
    let blob = images.join("blobs/sha256").join(layer_of(&images, "other"));
    assert_ne!(layer_of(&images, "other"), layer_of(&images, "bb"));
    let mut bytes = fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&blob, &bytes).unwrap();
    sh(&format!(
        "cd {} && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | zstd -q -19 -o {}.new -f && mv {}.new {}",
        x.display(),
        out.join("initrd.img").display(),
        out.join("initrd.img").display(),
        out.join("initrd.img").display()
    ));

    let vm = boot(&out);
    let line = ok(
        &vm,
        vm.wait_for_line("berth: service broken failed: ", TIMEOUT),
    );
    assert!(line.contains("does not match its digest"), "{line}");
    assert!(line.contains("(not restarting)"), "{line}");
    // The other service runs on: it keeps ticking after the failure.
    let mark = vm.serial_mark();
    ok(&vm, vm.wait_for_line_after(mark, "good: tick", TIMEOUT));
    let log = power_off(&vm);
    assert_eq!(
        log.matches("berth: service broken failed").count(),
        1,
        "the broken service was retried:\n{log}"
    );
    assert!(log.contains("berth: service good stopped"), "{log}");
    let _ = fs::remove_dir_all(&dir);
}

/// Builds and boots an appliance with one service `svc` running `script`
/// under `resources`.
fn boot_with_limits(tag: &str, script: &str, resources: serde_json::Value) -> (PathBuf, Vm) {
    let dir = scratch(tag);
    two_image_layout(&dir);
    let manifest = dir.join("manifest.json");
    fs::write(
        &manifest,
        serde_json::json!({
            "version": 1,
            "images": {"bb": "oci:layout:bb"},
            "services": [
                {"name": "svc", "image": "bb", "command": ["/bin/sh", "-c", script],
                 "resources": resources,
                 "restart": {"policy": "on-failure",
                             "backoff": {"initial": "500ms", "factor": 2, "max": "4s", "reset_after": "5m"},
                             "start_limit": {"count": 100, "interval": "1m"}}}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let out = dir.join("out");
    build_ok(&manifest, &out);
    let vm = boot(&out);
    (dir, vm)
}

/// memory.max on the guest's cgroup2: a 100 MB shell variable under a
/// 32 MiB limit (the VM has 512 MiB, so only the limit can stop it) → the
/// OOM killer ends the shell with SIGKILL and berth restarts it.
///
/// Containers must not inherit PID 1's oom_score_adj of -1000, or the OOM
/// killer finds no victim and the service never dies (berth-init resets it
/// to 0 unless the spec sets one).
#[test]
fn cgroup_memory_limit_oom_kills_and_restarts_the_service() {
    require_root();
    let script = "echo allocating; x=$(yes | head -c 100000000); echo allocated ${#x} bytes";
    let (dir, vm) = boot_with_limits("memory", script, serde_json::json!({"memory": "32MiB"}));
    ok(
        &vm,
        vm.wait_for_line(
            "berth: service svc killed by signal 9, restart in ",
            TIMEOUT,
        ),
    );
    let mark = vm.serial_mark();
    ok(
        &vm,
        vm.wait_for_line_after(mark, "berth: service svc started", TIMEOUT),
    );
    ok(
        &vm,
        vm.wait_for_line_after(mark, "berth: service svc killed by signal 9", TIMEOUT),
    );
    let log = power_off(&vm);
    assert!(!log.contains("allocated 100000000 bytes"), "{log}");
    let _ = fs::remove_dir_all(&dir);
}

/// pids.max on the guest's cgroup2: 8 background sleeps under a limit of 4
/// → fork fails inside the container and the shell says so.
#[test]
fn cgroup_pids_limit_makes_fork_fail_inside_the_vm() {
    require_root();
    let script = "for i in 1 2 3 4 5 6 7 8; do sleep 30 & echo forked $i; done; echo forked all";
    let (dir, vm) = boot_with_limits("pids", script, serde_json::json!({"pids": 4}));
    ok(&vm, vm.wait_for_line("svc: forked 1", TIMEOUT));
    ok(&vm, vm.wait_for_line("can't fork", TIMEOUT));
    let log = power_off(&vm);
    assert!(!log.contains("svc: forked all"), "{log}");
    assert!(!log.contains("svc: forked 8"), "{log}");
    let _ = fs::remove_dir_all(&dir);
}
