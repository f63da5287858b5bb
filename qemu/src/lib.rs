//! berth-qemu: run a berth appliance under QEMU.
#![forbid(unsafe_code)]
