//! berth-qemu: run a berth appliance under QEMU, for people (the
//! `berth-qemu` binary) and for the end-to-end tests that boot real VMs.
//!
//! - [`kernel`]: fetch Debian's cloud kernel with `apt-get download` and unpack it.
//! - [`vm`]: boot an [`Appliance`] (kernel + initramfs) with a [`VmConfig`]; the
//!   [`Vm`] handle reads the serial console, speaks QMP, waits for the exit.
//! - [`disk`]: the ext4 data disk, created on the host when missing.
//! - [`net`]: requests through the forwarded ports on 127.0.0.1.
//! - [`bench`](mod@bench): time from QEMU's spawn to a console line.
#![forbid(unsafe_code)]

pub mod bench;
pub mod console;
pub mod disk;
pub mod kernel;
pub mod net;
pub mod qmp;
pub mod vm;

pub use bench::{
    BenchError, BootSample, guest_timestamp, measure_boot, measure_guest_boot, median,
    median_translated_blocks, tb_count,
};
pub use disk::{DataDisk, DiskError, prepare_data_disk};
pub use kernel::{Kernel, KernelError, default_cache_dir, fetch_kernel};
pub use net::{NetError, http_get};
pub use qmp::QmpError;
pub use vm::{
    Accel, Appliance, CPUS_RANGE, MEMORY_MB_RANGE, Outcome, Vm, VmConfig, VmError, check_host_kvm,
    check_kvm, free_port, is_pid1_failure, pid1_message,
};

/// An error and its sources as one line (`a: b: c`), for messages at the edge.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
