//! berth-qemu: boot a berth appliance under QEMU.
#![forbid(unsafe_code)]

fn main() {
    eprintln!("berth-qemu: not built yet");
    std::process::exit(1);
}
