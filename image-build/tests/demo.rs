//! The demo appliance (image-build/examples/demo) end to end, built exactly
//! as `.ci/demo` builds it (the same prepare.sh, the same manifest) and booted
//! twice under QEMU with the same data disk: the boot task, service order,
//! the page on a forwarded port, restarts with growing delays, the ordered
//! power-off, and the boot count surviving on the data disk.
//!
//! Root and QEMU; a missing tool fails with an install hint, never a skip.

mod common;

use std::time::Duration;

use berth_qemu::{DataDisk, Outcome, Vm, VmConfig, free_port, http_get};
use common::{TIMEOUT, build_ok, ok, prepare_demo, require_root, require_tool, scratch};

/// A console line's position, or a panic with the log.
fn position(log: &str, line: &str) -> usize {
    log.find(line)
        .unwrap_or_else(|| panic!("{line:?} not on the console:\n{log}"))
}

/// `restart in 500ms` / `1s` / `2m` → the delay.
fn restart_delay(line: &str) -> Duration {
    let text = line
        .rsplit("restart in ")
        .next()
        .unwrap_or_else(|| panic!("no delay in {line:?}"))
        .trim();
    let (num, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = num
        .parse()
        .unwrap_or_else(|_| panic!("bad delay in {line:?}"));
    match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => panic!("unknown unit in {line:?}"),
    }
}

/// Powers the VM off through QMP and checks it ended cleanly; returns the log.
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

#[test]
fn demo_boots_serves_restarts_and_counts_boots_across_power_off() {
    require_root();
    require_tool("qemu-system-x86_64", "apt-get install qemu-system-x86");
    require_tool("mkfs.ext4", "apt-get install e2fsprogs");
    let dir = scratch("demo");
    let manifest = prepare_demo(&dir.join("src"));
    let out = dir.join("out");
    build_ok(&manifest, &out);
    let appliance = berth_qemu::Appliance::from_dir(&out).unwrap();
    let disk = DataDisk {
        path: dir.join("data.img"),
        size: Some(64 << 20),
    };

    // First boot: a fresh data disk.
    let port = free_port().unwrap();
    let config = VmConfig {
        ports: vec![(port, 80)],
        data_disk: Some(disk.clone()),
        ..VmConfig::default()
    };
    let vm = Vm::boot(&appliance, &config).expect("boot");
    ok(&vm, vm.wait_for_line("count-boot: boot-count: 1", TIMEOUT));
    ok(
        &vm,
        vm.wait_for_line("web: serving /www on port 80", TIMEOUT),
    );
    ok(&vm, vm.wait_for_line("berth: ready", TIMEOUT));
    let log = vm.serial_log();
    // The boot task before any service; heartbeat before web (web depends on it).
    let task_done = position(&log, "berth: task count-boot exited status=0");
    let heartbeat = position(&log, "berth: service heartbeat started");
    let web = position(&log, "berth: service web started");
    assert!(task_done < heartbeat && heartbeat < web, "{log}");
    // The network is set up in the background (the boot task and heartbeat
    // have namespaces of their own), but before web, which shares it.
    let network = position(&log, "ms: network configured");
    assert!(network < web, "{log}");
    // So is the power button (the power-off below presses it).
    ok(
        &vm,
        vm.wait_for_line("berth: watching power button /dev/input/event", TIMEOUT),
    );
    // Every unit is read-only: its root is the image's tree, bound read-only.
    for unit in [
        "task count-boot",
        "service heartbeat",
        "service web",
        "service flaky",
    ] {
        let line = format!("image demo shared with {unit} (read-only bind in ");
        assert!(log.contains(&line), "{line}\n{log}");
    }

    let page = http_get(port, "/", TIMEOUT).unwrap_or_else(|e| {
        vm.print_serial_log();
        panic!("GET / through 127.0.0.1:{port}: {e}")
    });
    assert!(page.contains("<p>boot count: 1</p>"), "{page}");
    let status = http_get(port, "/cgi-bin/status", TIMEOUT).unwrap_or_else(|e| {
        vm.print_serial_log();
        panic!("GET /cgi-bin/status: {e}")
    });
    assert!(status.contains("boot count: 1"), "{status}");
    assert!(status.contains("uptime (s): "), "{status}");

    // The failing service: restarted with growing delays (500ms, 1s, 2s, ...).
    let mut delays = Vec::new();
    let mut mark = 0;
    while delays.len() < 3 {
        let line = ok(
            &vm,
            vm.wait_for_line_after(
                mark,
                "berth: service flaky exited status=1, restart in ",
                TIMEOUT,
            ),
        );
        delays.push(restart_delay(&line));
        mark = vm.serial_mark();
    }
    assert!(
        delays.windows(2).all(|w| w[0] < w[1]),
        "restart delays do not grow: {delays:?}\n{}",
        vm.serial_log()
    );

    // Ordered shutdown: web (the dependent) stops before heartbeat.
    let log = power_off(&vm);
    let order = [
        "berth: power button pressed",
        "berth: service web stopping",
        "web: stopping",
        "berth: service web stopped",
        "berth: service heartbeat stopping",
        "berth: service heartbeat stopped",
        "berth: powering off",
    ]
    .map(|line| position(&log, line));
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "shutdown out of order:\n{log}"
    );
    assert!(!log.contains("did not stop within"), "{log}");
    drop(vm);

    // Second boot, same data disk: the count read back is 2.
    let port = free_port().unwrap();
    let config = VmConfig {
        ports: vec![(port, 80)],
        data_disk: Some(DataDisk {
            path: disk.path.clone(),
            size: None,
        }),
        ..VmConfig::default()
    };
    let vm = Vm::boot(&appliance, &config).expect("second boot");
    ok(&vm, vm.wait_for_line("count-boot: boot-count: 2", TIMEOUT));
    ok(
        &vm,
        vm.wait_for_line("web: serving /www on port 80", TIMEOUT),
    );
    let page = http_get(port, "/", TIMEOUT).unwrap_or_else(|e| {
        vm.print_serial_log();
        panic!("GET / after the reboot: {e}")
    });
    assert!(page.contains("<p>boot count: 2</p>"), "{page}");
    let status = http_get(port, "/cgi-bin/status", TIMEOUT).unwrap();
    assert!(status.contains("boot count: 2"), "{status}");
    power_off(&vm);
    let _ = std::fs::remove_dir_all(&dir);
}
