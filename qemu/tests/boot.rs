//! End-to-end: real Debian cloud kernel, busybox "floor" initramfs images,
//! QEMU under TCG. Runs as root in CI; a missing qemu, busybox-static or
//! kernel download fails with an install hint.

mod common;

use berth_qemu::{DataDisk, Outcome, Vm, VmConfig, free_port};
use common::{
    INIT_PROLOGUE, POWER_BUTTON_THEN_POWEROFF, TIMEOUT, floor_appliance, listening_addresses,
    scratch,
};

fn ok<T>(vm: &Vm, result: Result<T, berth_qemu::VmError>) -> T {
    match vm.or_dump(result) {
        Ok(v) => v,
        Err(err) => panic!("{}", berth_qemu::error_chain(&err)),
    }
}

/// Waits for exit and returns the outcome, printing the console if it fails.
fn ended(vm: &Vm) -> Outcome {
    ok(vm, vm.wait_exit(TIMEOUT));
    ok(vm, vm.outcome()).expect("qemu has exited")
}

const FLOOR_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "berth-floor: init ran, uptime $(/bin/busybox cut -d' ' -f1 /proc/uptime)"
/bin/busybox poweroff -f
"#;

#[test]
fn floor_initramfs_boots_and_powers_off() {
    let appliance = floor_appliance("floor", FLOOR_INIT, &[]);
    let vm = Vm::boot(&appliance, &VmConfig::default()).expect("boot");
    let line = ok(&vm, vm.wait_for_line("berth-floor: init ran", TIMEOUT));
    assert!(line.contains("uptime"), "{line}");
    let status = ok(&vm, vm.wait_exit(TIMEOUT));
    assert!(status.success(), "qemu exited with {status}");
    assert_eq!(ok(&vm, vm.outcome()), Some(Outcome::PoweredOff));
}

#[test]
fn power_off_after_pid1_fatal_error_is_a_failed_power_off() {
    // berth-init's lines when its boot fails with `on_fatal: poweroff`; a
    // service's line with the same words comes first and does not count.
    let init = r#"#!/bin/busybox sh
echo '[     1.600] web: [     1.600] berth: fatal: a service says so'
echo '[     1.694] berth: fatal: mount data disk /dev/vda (ext4) on /data: ENOENT'
echo '[     1.695] berth: powering off'
/bin/busybox poweroff -f
"#;
    let appliance = floor_appliance("fatal-poweroff", init, &[]);
    let vm = Vm::boot(&appliance, &VmConfig::default()).expect("boot");
    let fatal = ok(&vm, vm.wait_for_pid1_line_after(0, "fatal: ", TIMEOUT));
    assert!(
        fatal.starts_with("[     1.694] berth: fatal: mount data disk"),
        "{fatal}"
    );
    let status = ok(&vm, vm.wait_exit(TIMEOUT));
    assert!(status.success(), "qemu exited with {status}");
    assert_eq!(
        ended(&vm),
        Outcome::FailedPowerOff {
            line: "[     1.694] berth: fatal: mount data disk /dev/vda (ext4) on /data: ENOENT"
                .into()
        }
    );
    // A wait for a line that never came says why the guest ended.
    let err = vm
        .wait_for_line("service web started", TIMEOUT)
        .unwrap_err()
        .to_string();
    assert!(
        err.ends_with(
            "qemu exited (exit status: 0) after [     1.694] berth: fatal: mount data disk /dev/vda (ext4) on /data: ENOENT before the console printed a line containing \"service web started\""
        ),
        "{err}"
    );
}

#[test]
fn dead_pid1_is_reported_as_a_panic() {
    let init = "#!/bin/busybox sh\necho 'berth-floor: exiting on purpose'\nexit 3\n";
    let appliance = floor_appliance("dead-pid1", init, &[]);
    let vm = Vm::boot(&appliance, &VmConfig::default()).expect("boot");
    ok(
        &vm,
        vm.wait_for_line("berth-floor: exiting on purpose", TIMEOUT),
    );
    match ended(&vm) {
        Outcome::Panicked { line } => assert!(line.contains("Attempted to kill init"), "{line}"),
        other => {
            vm.print_serial_log();
            panic!("expected a panic, got {other:?}");
        }
    }
}

/// An init that waits forever (a shell PID 1 cannot catch ctrl-alt-del or
/// the power button by itself).
const IDLE_INIT: &str = r#"#!/bin/busybox sh
echo "berth-floor: idle"
while true; do /bin/busybox sleep 1; done
"#;

#[test]
fn ctrl_alt_delete_reaches_the_guest_kernel() {
    // Until PID 1 disables it with reboot(RB_DISABLE_CAD), the kernel answers
    // ctrl-alt-del from the keyboard with an immediate restart, which
    // -no-reboot turns into QEMU exiting: proof the key press arrived.
    let appliance = floor_appliance("cad", IDLE_INIT, &[]);
    let vm = Vm::boot(&appliance, &VmConfig::default()).expect("boot");
    ok(&vm, vm.wait_for_line("berth-floor: idle", TIMEOUT));
    ok(&vm, vm.qmp_send_ctrl_alt_del());
    assert_eq!(ended(&vm), Outcome::Rebooted);
}

#[test]
fn qmp_quit_stops_a_running_guest() {
    let appliance = floor_appliance("quit", IDLE_INIT, &[]);
    let vm = Vm::boot(&appliance, &VmConfig::default()).expect("boot");
    ok(&vm, vm.wait_for_line("berth-floor: idle", TIMEOUT));
    assert!(vm.try_exit().unwrap().is_none(), "guest should still run");
    ok(&vm, vm.qmp_quit());
    assert_eq!(ended(&vm), Outcome::StoppedByHost);
}

/// virtio_net is a module in the cloud kernel (CONFIG_VIRTIO_NET=m), as are
/// the ACPI power button and evdev, so the init loads them first.
const HTTPD_INIT: &str = r#"
ip link set lo up
ip addr add 10.0.2.15/24 dev eth0
ip link set eth0 up
mkdir -p /www
echo "hello from the berth floor" > /www/index.html
httpd -p 8080 -h /www
echo "berth-floor: httpd up"
"#;

#[test]
fn forwarded_port_serves_the_guest_and_power_button_powers_off() {
    let init = format!("{INIT_PROLOGUE}{HTTPD_INIT}{POWER_BUTTON_THEN_POWEROFF}");
    let appliance = floor_appliance(
        "httpd",
        &init,
        &["virtio_pci", "virtio_net", "button", "evdev"],
    );
    let port = free_port().unwrap();
    let config = VmConfig {
        ports: vec![(port, 8080)],
        ..VmConfig::default()
    };
    let vm = Vm::boot(&appliance, &config).expect("boot");
    // The forward listens on the loopback address only.
    assert_eq!(
        listening_addresses(port),
        ["0100007F:".to_string() + &format!("{port:04X}")]
    );
    ok(&vm, vm.wait_for_line("berth-floor: httpd up", TIMEOUT));
    let page = berth_qemu::http_get(port, "/index.html", TIMEOUT).unwrap_or_else(|err| {
        vm.print_serial_log();
        panic!("{err}")
    });
    assert!(page.contains("200 OK"), "{page}");
    assert!(page.contains("hello from the berth floor"), "{page}");

    ok(
        &vm,
        vm.wait_for_line("berth-floor: waiting for the power button", TIMEOUT),
    );
    // Acknowledged with {"return": {}} ...
    ok(&vm, vm.qmp_powerdown());
    // ... and the guest saw the button.
    ok(
        &vm,
        vm.wait_for_line("berth-floor: power button pressed", TIMEOUT),
    );
    assert_eq!(ended(&vm), Outcome::PoweredOff);
    assert_eq!(
        vm.count_lines("floor: insmod"),
        0,
        "a module failed to load"
    );
}

const DISK_INIT: &str = r#"
mount -t ext4 /dev/vda /mnt
echo "written by the guest" > /mnt/hello
echo "berth-floor: disk label $(cat /sys/block/vda/serial)"
umount /mnt
echo "berth-floor: disk done"
poweroff -f
"#;

#[test]
fn data_disk_is_created_formatted_and_written_by_the_guest() {
    let init = format!("{INIT_PROLOGUE}{DISK_INIT}");
    let appliance = floor_appliance("disk", &init, &["virtio_pci", "virtio_blk"]);
    let disk = scratch("disk-image").join("data.img");
    let config = VmConfig {
        data_disk: Some(DataDisk {
            path: disk.clone(),
            size: Some(32 << 20),
        }),
        ..VmConfig::default()
    };
    let vm = Vm::boot(&appliance, &config).expect("boot");
    let label = ok(&vm, vm.wait_for_line("berth-floor: disk label", TIMEOUT));
    assert!(label.ends_with("berth-data"), "{label}");
    ok(&vm, vm.wait_for_line("berth-floor: disk done", TIMEOUT));
    assert_eq!(ended(&vm), Outcome::PoweredOff);
    assert_eq!(
        vm.count_lines("floor: insmod"),
        0,
        "a module failed to load"
    );
    drop(vm);

    // Read the file back on the host, without mounting: debugfs (e2fsprogs).
    let out = std::process::Command::new("debugfs")
        .args(["-R", "cat /hello"])
        .arg(&disk)
        .output()
        .expect("debugfs missing: apt-get install e2fsprogs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "written by the guest\n"
    );
}

/// Two VMs on one data disk would both write its ext4 and corrupt it:
/// QEMU's image lock refuses the second, and its reason comes back whole,
/// as one line.
#[test]
fn a_data_disk_in_use_by_another_vm_is_refused() {
    let appliance = floor_appliance(
        "disk-lock",
        "#!/bin/busybox sh\n/bin/busybox sleep 1000\n",
        &[],
    );
    let disk = scratch("disk-lock-image").join("data.img");
    let config = VmConfig {
        data_disk: Some(DataDisk {
            path: disk.clone(),
            size: Some(8 << 20),
        }),
        ..VmConfig::default()
    };
    let first = Vm::boot(&appliance, &config).expect("boot");
    let err = Vm::boot(&appliance, &config).unwrap_err();
    match &err {
        berth_qemu::VmError::QemuStart { stderr, .. } => {
            assert!(
                stderr.contains("Failed to get \"write\" lock; Is another process using the image"),
                "{stderr}"
            );
            assert!(!stderr.contains('\n'), "{stderr}");
        }
        other => panic!("expected QemuStart, got {other:?}"),
    }
    ok(&first, first.qmp_quit());
    ok(&first, first.wait_exit(TIMEOUT));
}

#[test]
fn qemu_start_failure_is_reported_with_its_stderr() {
    let dir = scratch("bad-kernel");
    std::fs::write(dir.join("vmlinuz"), b"not a kernel").unwrap();
    std::fs::write(dir.join("initrd.img"), b"not an initramfs").unwrap();
    common::kernel(); // the install hint for a missing qemu comes first
    let appliance = berth_qemu::Appliance::from_dir(&dir).unwrap();
    let err = Vm::boot(&appliance, &VmConfig::default()).unwrap_err();
    match &err {
        berth_qemu::VmError::QemuStart { status, stderr } => {
            assert!(!status.success());
            assert!(!stderr.is_empty(), "qemu said nothing");
        }
        other => panic!("expected QemuStart, got {other:?}"),
    }
}

#[test]
fn missing_qemu_binary_names_the_package() {
    let appliance = floor_appliance("no-qemu", FLOOR_INIT, &[]);
    let config = VmConfig {
        qemu: "/nonexistent/qemu-system-x86_64".into(),
        ..VmConfig::default()
    };
    let err = Vm::boot(&appliance, &config).unwrap_err();
    assert!(
        err.to_string().contains("apt-get install qemu-system-x86"),
        "{err}"
    );
}

#[test]
fn busy_host_port_fails_the_boot_naming_the_port() {
    let appliance = floor_appliance("busy-port", FLOOR_INIT, &[]);
    let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = VmConfig {
        ports: vec![(port, 8080)],
        ..VmConfig::default()
    };
    let err = Vm::boot(&appliance, &config).unwrap_err();
    assert!(
        matches!(err, berth_qemu::VmError::PortInUse { host, guest: 8080 } if host == port),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains(&format!("127.0.0.1:{port} (--port {port}:8080) is in use")),
        "{err}"
    );
}

/// Guest time under `-icount` is the guest's instruction count: the same
/// boot gives the same timestamp whatever the host's load, and a line
/// without a timestamp is refused.
#[test]
fn icount_guest_time_is_the_same_for_the_same_boot() {
    use berth_qemu::{Accel, BenchError, measure_guest_boot};
    use std::time::Duration;
    let appliance = floor_appliance("icount", FLOOR_INIT, &[]);
    let config = VmConfig {
        accel: Accel::TcgIcount,
        ..VmConfig::default()
    };
    let samples = measure_guest_boot(&appliance, &config, "Run /init as init process", 2, TIMEOUT)
        .unwrap_or_else(|e| panic!("{}", berth_qemu::error_chain(&e)));
    let (a, b) = (samples[0].time, samples[1].time);
    assert!(a > Duration::from_millis(100), "{samples:?}");
    // Deterministic up to the few interrupts timed by the host (the
    // serial port's, QMP's): well within 2 %.
    let (lo, hi) = (a.min(b), a.max(b));
    assert!(hi - lo < lo / 50, "{samples:?}");
    // The floor's own echo carries no guest timestamp.
    match measure_guest_boot(&appliance, &config, "berth-floor: init ran", 1, TIMEOUT) {
        Err(BenchError::NoTimestamp { line }) => assert!(line.contains("uptime"), "{line}"),
        other => panic!("expected a line without a timestamp, got {other:?}"),
    }
}
