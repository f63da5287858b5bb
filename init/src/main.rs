//! berth-init: PID 1 of a berth appliance.
#![forbid(unsafe_code)]

fn main() {
    eprintln!("berth-init: not built yet");
    std::process::exit(1);
}
