//! berth-build: turn OCI images and bundles into a bootable appliance.
#![forbid(unsafe_code)]

fn main() {
    eprintln!("berth-build: not built yet");
    std::process::exit(1);
}
