//! berth-runc: a runc-compatible command line over berth-runtime.
#![forbid(unsafe_code)]

fn main() {
    eprintln!("berth-runc: not built yet");
    std::process::exit(1);
}
