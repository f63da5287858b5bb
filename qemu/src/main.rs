//! berth-qemu: boot a berth appliance under QEMU.
//!
//! Exit codes of `run` (how the appliance ended):
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | the guest powered off cleanly |
//! | 1 | berth-qemu itself failed (bad arguments, QEMU did not start, ...) |
//! | 2 | the guest kernel panicked: PID 1 died or crashed |
//! | 3 | the guest rebooted (QEMU runs with `-no-reboot`, so it stopped) |
//! | 4 | QEMU failed on its own (non-zero exit) |
//! | 5 | QEMU exited without a power-off, reboot or panic on the console |
//! | 130 | stopped from the host: a second Ctrl-C |
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::{Context, bail};
use berth_qemu::{
    Accel, Appliance, DataDisk, Outcome, Vm, VmConfig, error_chain, measure_boot,
    measure_guest_boot, median, median_translated_blocks,
};
use clap::{Args, Parser, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

#[derive(Parser)]
#[command(name = "berth-qemu", about = "Boot a berth appliance under QEMU")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot OUTDIR (vmlinuz + initrd.img) with the serial console on the
    /// terminal. Ctrl-C once: ACPI power button (QMP system_powerdown);
    /// twice: stop QEMU. The exit code tells how the appliance ended.
    Run {
        /// Directory holding vmlinuz and initrd.img (berth-build's OUTDIR)
        outdir: PathBuf,
        #[command(flatten)]
        vm: VmArgs,
    },
    /// Download Debian's cloud kernel (apt-get download linux-image-*-cloud-amd64)
    /// and unpack it; prints the paths. Reuses a cached extraction.
    FetchKernel {
        /// Cache directory [default: $XDG_CACHE_HOME/berth/kernel or ~/.cache/berth/kernel]
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Boot OUTDIR several times and print the time from QEMU's start to the
    /// first console line containing PATTERN (each VM is then stopped).
    BootTime {
        /// Directory holding vmlinuz and initrd.img
        outdir: PathBuf,
        /// Console text that marks the end of the measured boot
        #[arg(long)]
        until: String,
        /// Number of boots
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Give up on one boot after this many seconds
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Measure guest time instead: QEMU counts one instruction as one
        /// nanosecond of the guest's clock (-icount shift=0,sleep=off), and
        /// the sample is the timestamp on the matched line (printk's or
        /// berth-init's `[seconds]`). Independent of the host's load.
        #[arg(long, conflicts_with = "kvm")]
        icount: bool,
        #[command(flatten)]
        vm: VmArgs,
    },
}

#[derive(Args)]
struct VmArgs {
    /// Raw ext4 data disk as a virtio-blk device; created and formatted when
    /// missing (default size 256M; K/M/G/T suffixes)
    #[arg(long, value_name = "FILE[:SIZE]")]
    data_disk: Option<DataDisk>,
    /// Forward 127.0.0.1:HOST on this machine to GUEST in the appliance (repeatable)
    #[arg(long = "port", value_name = "HOST:GUEST", value_parser = parse_port)]
    ports: Vec<(u16, u16)>,
    /// Guest memory in MiB
    #[arg(long, default_value_t = 512)]
    memory: u32,
    /// Virtual CPUs
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Extra kernel command line (after console=ttyS0 panic=-1)
    #[arg(long, value_name = "ARGS", default_value = "")]
    append: String,
    /// Use KVM instead of TCG software emulation; fails if /dev/kvm is unusable
    #[arg(long)]
    kvm: bool,
}

impl VmArgs {
    fn config(self) -> VmConfig {
        VmConfig {
            memory_mb: self.memory,
            cpus: self.cpus,
            ports: self.ports,
            data_disk: self.data_disk,
            extra_cmdline: self.append,
            accel: if self.kvm { Accel::Kvm } else { Accel::Tcg },
            ..VmConfig::default()
        }
    }
}

fn parse_port(s: &str) -> Result<(u16, u16), String> {
    let (host, guest) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected HOST:GUEST"))?;
    let port = |p: &str| match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{s:?}: {p:?} is not a port (1-65535)")),
        Ok(n) => Ok(n),
    };
    Ok((port(host)?, port(guest)?))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run { outdir, vm } => run(outdir, vm.config()),
        Cmd::FetchKernel { dir } => fetch_kernel(dir),
        Cmd::BootTime {
            outdir,
            until,
            runs,
            timeout,
            icount,
            vm,
        } => {
            let mut config = vm.config();
            if icount {
                config.accel = Accel::TcgIcount;
            }
            boot_time(outdir, &until, runs, timeout, config)
        }
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("berth-qemu: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn run(outdir: PathBuf, config: VmConfig) -> anyhow::Result<ExitCode> {
    let appliance = Appliance::from_dir(&outdir).map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    // Registered before QEMU starts, so a Ctrl-C during boot is not lost
    // (QEMU runs in its own process group and does not see it).
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
    let signal_handle = signals.handle();

    let forwards: Vec<String> = config
        .ports
        .iter()
        .map(|(h, g)| format!("127.0.0.1:{h} -> {g}"))
        .collect();
    eprintln!(
        "berth-qemu: booting {} ({}, {} MiB{}{}); Ctrl-C powers it down, twice stops QEMU",
        outdir.display(),
        if config.accel == Accel::Kvm {
            "kvm"
        } else {
            "tcg"
        },
        config.memory_mb,
        if forwards.is_empty() {
            String::new()
        } else {
            format!(", ports {}", forwards.join(", "))
        },
        config.data_disk.as_ref().map_or(String::new(), |d| format!(
            ", data disk {}",
            d.path.display()
        )),
    );
    let vm = Vm::boot_with_echo(&appliance, &config, Some(Box::new(std::io::stdout())))
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    let vm = Arc::new(vm);

    let signal_thread = {
        let vm = Arc::clone(&vm);
        std::thread::spawn(move || {
            let mut presses = 0;
            for _signal in signals.forever() {
                presses += 1;
                if presses == 1 {
                    eprintln!(
                        "\r\nberth-qemu: asking the appliance to power down (QMP system_powerdown); Ctrl-C again stops QEMU"
                    );
                    if let Err(err) = vm.qmp_powerdown() {
                        eprintln!(
                            "berth-qemu: power-down request failed: {}",
                            error_chain(&err)
                        );
                    }
                } else {
                    eprintln!("\r\nberth-qemu: stopping QEMU");
                    if vm.qmp_quit().is_err() {
                        let _ = vm.kill();
                    }
                    break;
                }
            }
        })
    };
    spawn_console_input(Arc::downgrade(&vm));

    let status = vm
        .wait_exit(Duration::MAX)
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    signal_handle.close();
    let _ = signal_thread.join();
    let outcome = vm
        .outcome()
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))?
        .context("qemu has not exited")?;
    let _ = std::io::stdout().flush();
    let code = match outcome {
        Outcome::PoweredOff => {
            eprintln!("berth-qemu: the appliance powered off");
            0
        }
        Outcome::Panicked { line } => {
            eprintln!("berth-qemu: the guest kernel panicked (PID 1 died or crashed): {line}");
            2
        }
        Outcome::Rebooted => {
            eprintln!(
                "berth-qemu: the appliance rebooted; QEMU runs with -no-reboot, so it stopped"
            );
            3
        }
        Outcome::QemuFailed { status } => {
            eprintln!(
                "berth-qemu: qemu failed ({status}): {}",
                vm.qemu_stderr().trim()
            );
            4
        }
        Outcome::Unexplained { status } => {
            eprintln!(
                "berth-qemu: qemu exited ({status}) without a power-off, reboot or panic on the console"
            );
            5
        }
        Outcome::StoppedByHost => {
            eprintln!("berth-qemu: qemu stopped ({status})");
            130
        }
    };
    Ok(ExitCode::from(code))
}

/// Copies our stdin to the guest's serial console (line by line, as the
/// terminal stays in cooked mode so Ctrl-C remains a signal to us). Holds
/// only a weak reference: it never keeps the VM alive, and on EOF it just
/// stops, leaving QEMU's console input open.
fn spawn_console_input(vm: Weak<Vm>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 1024];
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let Some(vm) = vm.upgrade() else { return };
            if vm.write_console(&buf[..n]).is_err() {
                return;
            }
        }
    });
}

fn fetch_kernel(dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let dir = match dir {
        Some(dir) => dir,
        None => berth_qemu::default_cache_dir()?,
    };
    let kernel = berth_qemu::fetch_kernel(&dir)
        .with_context(|| format!("fetching the cloud kernel into {}", dir.display()))?;
    println!("release:     {}", kernel.release);
    println!("package:     {}={}", kernel.package, kernel.package_version);
    println!("deb:         {}", kernel.deb.display());
    println!("vmlinuz:     {}", kernel.vmlinuz.display());
    println!("modules_dir: {}", kernel.modules_dir.display());
    println!("config:      {}", kernel.config.display());
    Ok(ExitCode::SUCCESS)
}

fn boot_time(
    outdir: PathBuf,
    until: &str,
    runs: usize,
    timeout: u64,
    config: VmConfig,
) -> anyhow::Result<ExitCode> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let appliance = Appliance::from_dir(&outdir).map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    let timeout = Duration::from_secs(timeout);
    let guest = config.accel == Accel::TcgIcount;
    let samples = if guest {
        measure_guest_boot(&appliance, &config, until, runs, timeout)
            .map_err(|e| anyhow::anyhow!(error_chain(&e)))
    } else {
        measure_boot(&appliance, &config, until, runs, timeout)
            .map_err(|e| anyhow::anyhow!(error_chain(&e)))
    }
    .with_context(|| format!("measuring the boot of {}", outdir.display()))?;
    let times: Vec<Duration> = samples.iter().map(|s| s.time).collect();
    let ms: Vec<String> = times
        .iter()
        .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
        .collect();
    println!(
        "boot to {until:?}: median {:.0} ms{} over {runs} runs (samples ms: {})",
        median(&times).as_secs_f64() * 1000.0,
        if guest {
            " of guest time (icount: 1 ns per instruction)"
        } else {
            ""
        },
        ms.join(" ")
    );
    if let Some(mid) = median_translated_blocks(&samples) {
        let list: Vec<String> = samples
            .iter()
            .filter_map(|s| s.translated_blocks)
            .map(|n| n.to_string())
            .collect();
        println!(
            "code translated by TCG up to the line: median {mid} blocks (samples: {})",
            list.join(" ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_parsed() {
        assert_eq!(parse_port("8080:80"), Ok((8080, 80)));
        for bad in ["8080", "0:80", "80:0", "x:80", "70000:80", ":80"] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }
}
