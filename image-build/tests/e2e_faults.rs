//! Appliances that meet trouble inside the VM, end to end under QEMU: an
//! image whose blob is corrupted inside the initrd (after berth-build
//! verified it), cgroup v2 limits on a real cgroup2 hierarchy with
//! controllers (memory → OOM kill and restart; pids → fork fails), and a
//! graceful power-off right after a service wrote records to the data disk
//! without syncing them (they must survive it and a reboot), and a data
//! disk without its filesystem (a clear fatal line, then a power-off).
//!
//! Root and QEMU; a missing tool fails with an install hint, never a skip.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use berth_qemu::{DataDisk, Outcome, Vm, VmConfig};
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

/// Builds an appliance of `manifest` over [`two_image_layout`] in a new
/// scratch directory; returns the directory and the build's OUTDIR.
fn build_appliance(tag: &str, manifest: serde_json::Value) -> (PathBuf, PathBuf) {
    let dir = scratch(tag);
    two_image_layout(&dir);
    let path = dir.join("manifest.json");
    fs::write(&path, manifest.to_string()).unwrap();
    let out = dir.join("out");
    build_ok(&path, &out);
    (dir, out)
}

fn boot(out: &Path) -> Vm {
    boot_with(out, VmConfig::default())
}

fn boot_with(out: &Path, config: VmConfig) -> Vm {
    require_tool("qemu-system-x86_64", "apt-get install qemu-system-x86");
    let appliance = berth_qemu::Appliance::from_dir(out).unwrap();
    Vm::boot(&appliance, &config).expect("boot")
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
    let (dir, out) = build_appliance(
        "baddigest",
        serde_json::json!({
            "version": 1,
            "images": {"bb": "oci:layout:bb", "other": "oci:layout:other"},
            "services": [
                {"name": "good", "image": "bb", "command": ["/bin/sh", "-c", TICKER], "stop_timeout": "5s"},
                {"name": "broken", "image": "other", "command": ["/bin/sh", "-c", TICKER], "stop_timeout": "5s"}
            ]
        }),
    );

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
    let (dir, out) = build_appliance(
        tag,
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
        }),
    );
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

/// How many records the writer appends on its first boot (~30 KiB).
const RECORDS: usize = 300;

/// The writer service: counts the records on the data disk and checks they
/// are `record 1` … `record N` in order; on an empty disk it appends
/// [`RECORDS`] of them, one `printf >>` each, and never syncs.
fn writer_script() -> String {
    format!(
        r#"f=/state/records; touch $f
n=$(wc -l < $f); bad=$(awk '$0 != "record " NR " " pad {{b++}} END {{print b+0}}' pad="$(printf '%080d' 0)" $f)
echo "found $n records, $bad out of order"
if [ $n -eq 0 ]; then
  i=1; while [ $i -le {RECORDS} ]; do printf 'record %d %080d\n' $i 0 >> $f; i=$((i+1)); done
  echo "wrote {RECORDS} records"
fi
trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"#
    )
}

/// Issue 5: N records written by a service to the data disk survive a
/// graceful power-off (QMP power-down) and a reboot: N read back, in order.
/// The appliance tells the kernel to keep dirty data in memory for the
/// whole test (periodic writeback off, ext4 `commit=600`), so only PID 1's
/// shutdown (stop the units, sync, unmount) can bring the records to the
/// disk: without it they are lost (tried). Between the boots the host checks
/// the disk itself: unmounted cleanly (no journal to replay) and holding the
/// N records.
#[test]
fn records_written_by_a_service_survive_a_power_off_and_a_reboot() {
    require_root();
    require_tool("debugfs", "apt-get install e2fsprogs");
    let (dir, out) = build_appliance(
        "records",
        serde_json::json!({
            "version": 1,
            "images": {"bb": "oci:layout:bb"},
            "sysctls": {"vm.dirty_writeback_centisecs": "0", "vm.dirty_expire_centisecs": "60000"},
            "data_disk": {"device": "/dev/vda", "fstype": "ext4", "options": ["commit=600"]},
            // Log files on the data disk, open until the shutdown: PID 1
            // closes them before it unmounts the disk.
            "log": {"files": {"dir": "/data/log"}},
            "services": [
                {"name": "writer", "image": "bb", "command": ["/bin/sh", "-c", writer_script()],
                 "network": "none",
                 "mounts": [{"type": "persistent", "source": "state", "target": "/state"}],
                 "stop_timeout": "5s"}
            ]
        }),
    );
    let disk = dir.join("data.img");
    let config = |size| VmConfig {
        data_disk: Some(DataDisk {
            path: disk.clone(),
            size,
        }),
        ..VmConfig::default()
    };

    let vm = boot_with(&out, config(Some(64 << 20)));
    ok(&vm, vm.wait_for_line("writer: found 0 records", TIMEOUT));
    ok(
        &vm,
        vm.wait_for_line(&format!("writer: wrote {RECORDS} records"), TIMEOUT),
    );
    let log = power_off(&vm);
    let order = [
        "berth: service writer stopping",
        "berth: service writer stopped",
        "berth: powering off",
    ]
    .map(|line| log.find(line));
    assert!(
        order.iter().all(Option::is_some) && order.windows(2).all(|w| w[0] < w[1]),
        "expected the writer stopped before the power-off:\n{log}"
    );
    drop(vm);

    // On the host, without mounting: the journal holds nothing to replay
    // (PID 1 unmounted the disk) and the file has every record.
    let header = std::process::Command::new("dumpe2fs")
        .arg("-h")
        .arg(&disk)
        .output()
        .expect("dumpe2fs missing: apt-get install e2fsprogs");
    let header = String::from_utf8_lossy(&header.stdout);
    let features = header
        .lines()
        .find(|l| l.starts_with("Filesystem features:"))
        .unwrap_or_else(|| panic!("no features in dumpe2fs -h:\n{header}"));
    assert!(
        !features.contains("needs_recovery"),
        "the data disk was not unmounted cleanly: {features}"
    );
    let cat = std::process::Command::new("debugfs")
        .args(["-R", "cat /state/records"])
        .arg(&disk)
        .output()
        .expect("debugfs missing: apt-get install e2fsprogs");
    let text = String::from_utf8_lossy(&cat.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        RECORDS,
        "records on the disk after the power-off"
    );
    for (i, line) in lines.iter().enumerate() {
        assert!(line.starts_with(&format!("record {} ", i + 1)), "{line}");
    }
    // The log files were on that disk, up to the shutdown.
    for (file, line) in [
        (
            "/log/writer.log",
            format!("writer: wrote {RECORDS} records"),
        ),
        (
            "/log/berth.log",
            "berth: service writer stopped".to_string(),
        ),
    ] {
        let cat = std::process::Command::new("debugfs")
            .args(["-R", &format!("cat {file}")])
            .arg(&disk)
            .output()
            .expect("debugfs missing: apt-get install e2fsprogs");
        let text = String::from_utf8_lossy(&cat.stdout);
        assert!(text.contains(&line), "{file} lacks {line:?}:\n{text}");
    }

    // Second boot, same disk: the service reads them back.
    let vm = boot_with(&out, config(None));
    let found = ok(&vm, vm.wait_for_line("writer: found ", TIMEOUT));
    assert!(
        found.ends_with(&format!("found {RECORDS} records, 0 out of order")),
        "{found}\n{}",
        vm.serial_log()
    );
    let log = power_off(&vm);
    assert!(!log.contains("writer: wrote"), "{log}");
    let _ = fs::remove_dir_all(&dir);
}

/// A data disk that holds no ext4 filesystem (here: a file of text, which
/// berth-qemu's own blank-disk check lets through): PID 1 cannot mount
/// it, says so in one fatal line with what it most likely means, and
/// powers the machine off; berth-qemu's outcome names that line.
#[test]
fn a_data_disk_without_its_filesystem_is_a_clear_fatal_error() {
    require_root();
    let (dir, out) = build_appliance(
        "e2e-bad-disk",
        serde_json::json!({
            "version": 1,
            "images": {"bb": "oci:layout:bb"},
            "data_disk": {"device": "/dev/vda", "fstype": "ext4"},
            "services": [{"name": "svc", "image": "bb", "command": ["/bin/sleep", "1000"]}]
        }),
    );
    let disk = dir.join("data.img");
    let mut bytes = vec![0u8; 16 << 20];
    bytes[..24].copy_from_slice(b"not a filesystem at all\n");
    fs::write(&disk, &bytes).unwrap();
    let vm = boot_with(
        &out,
        VmConfig {
            data_disk: Some(DataDisk {
                path: disk.clone(),
                size: None,
            }),
            ..VmConfig::default()
        },
    );
    let status = ok(&vm, vm.wait_exit(TIMEOUT));
    let log = vm.serial_log();
    assert!(status.success(), "qemu exited with {status}\n{log}");
    let Some(Outcome::FailedPowerOff { line }) = vm.outcome().unwrap() else {
        panic!("expected PID 1's fatal line and a power-off\n{log}");
    };
    assert!(
        line.ends_with(
            "berth: fatal: mount data disk /dev/vda (ext4) on /data: EINVAL: Invalid argument (no ext4 filesystem on it, or an option it refuses)"
        ),
        "{line}\n{log}"
    );
    assert!(!log.contains("service svc started"), "{log}");
    // The disk is as it was: nothing formats it behind the user's back.
    assert_eq!(fs::read(&disk).unwrap(), bytes);
    drop(vm);
    let _ = fs::remove_dir_all(&dir);
}
