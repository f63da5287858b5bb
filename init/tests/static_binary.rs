//! The PID 1 that ships: a static musl build of berth-init, within its size
//! budget. Builds it with the release profile into `target/static-check`
//! (its own target dir, so it never waits on the cargo running this test),
//! checks the ELF has no program interpreter (PT_INTERP) and is
//! position-independent (static-pie: ET_DYN, loaded at a random address),
//! and prints the size.

use std::path::Path;
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-musl";
/// Issue target: ≤ 3 MiB stripped.
const BUDGET: u64 = 3 << 20;
const PT_INTERP: u32 = 3;
/// `e_type` of a position-independent executable (or shared object).
const ET_DYN: u16 = 3;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Program header types of a little-endian ELF64 file.
fn program_header_types(elf: &[u8]) -> Vec<u32> {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not ELF64");
    assert_eq!(elf[5], 1, "not little-endian");
    let phoff = u64_at(elf, 0x20) as usize;
    let phentsize = u16_at(elf, 0x36) as usize;
    let phnum = u16_at(elf, 0x38) as usize;
    (0..phnum)
        .map(|i| u32_at(elf, phoff + i * phentsize))
        .collect()
}

#[test]
fn release_binary_is_static_and_within_budget() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let target_dir = workspace.join("target/static-check");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            TARGET,
            "-p",
            "berth-init",
            "--bin",
            "berth-init",
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "static build failed (needs `rustup target add {TARGET}` and `apt-get install musl-tools lld`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = target_dir.join(TARGET).join("release/berth-init");
    let elf = std::fs::read(&bin).unwrap();
    let types = program_header_types(&elf);
    assert!(!types.is_empty());
    assert!(
        !types.contains(&PT_INTERP),
        "{} asks for a dynamic loader",
        bin.display()
    );
    // PID 1 reads every container's output: its code is address-randomised
    // like the rest of the system's (.cargo/config.toml), not ET_EXEC.
    assert_eq!(
        u16_at(&elf, 0x10),
        ET_DYN,
        "{} is not position-independent (static-pie)",
        bin.display()
    );
    // berth-build tells berth-init from other static programs by this.
    assert_eq!(
        berth_init::identity::find_identity(&elf),
        Some(berth_init::identity::own()),
        "{} lacks its identity",
        bin.display()
    );
    let size = elf.len() as u64;
    println!(
        "berth-init static binary: {size} bytes ({:.2} MiB), budget {} MiB",
        size as f64 / (1 << 20) as f64,
        BUDGET >> 20
    );
    assert!(
        size <= BUDGET,
        "berth-init is {size} bytes, over the {BUDGET}-byte budget"
    );
}

#[test]
fn elf_reader_sees_the_interpreter_of_a_dynamic_binary() {
    // /bin/sh on Debian is dynamically linked (dash): the check can fail.
    let elf = std::fs::read("/bin/sh").unwrap();
    assert!(program_header_types(&elf).contains(&PT_INTERP));
}
