//! berth-qemu: boot a berth appliance under QEMU.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berth-qemu", about = "Boot a berth appliance under QEMU")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Download Debian's cloud kernel (apt-get download linux-image-*-cloud-amd64)
    /// and unpack it; prints the paths. Reuses a cached extraction.
    FetchKernel {
        /// Cache directory [default: $XDG_CACHE_HOME/berth/kernel or ~/.cache/berth/kernel]
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("berth-qemu: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::FetchKernel { dir } => fetch_kernel(dir),
    }
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
