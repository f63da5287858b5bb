//! Unpacks an image with chosen layer options, for profiling:
//!
//!     cargo build --profile bench-release -p berth-bundles --example unpack_modes
//!     target/bench-release/examples/unpack_modes IMAGE_REF DEST [inline|threaded] [trust]

use std::path::Path;
use std::process::ExitCode;

use berth_bundles::{DiffIdCheck, Execution, ImageRef, LayerOptions, UnpackOptions, unpack_bundle};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: unpack_modes IMAGE_REF DEST [inline|threaded|auto] [trust|verify]");
        return ExitCode::from(2);
    }
    let execution = match args.get(3).map(String::as_str) {
        Some("inline") => Execution::Inline,
        Some("threaded") => Execution::Threaded,
        _ => Execution::Auto,
    };
    let diff_id = match args.get(4).map(String::as_str) {
        Some("trust") => DiffIdCheck::TrustBlobDigest,
        _ => DiffIdCheck::Verify,
    };
    let reference = match ImageRef::parse(&args[1]) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("unpack_modes: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = UnpackOptions {
        layer: LayerOptions {
            execution,
            diff_id,
            cancel: None,
        },
        ..Default::default()
    };
    match unpack_bundle(&reference, Path::new(&args[2]), opts) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut cur = std::error::Error::source(&e);
            while let Some(c) = cur {
                msg.push_str(": ");
                msg.push_str(&c.to_string());
                cur = c.source();
            }
            eprintln!("unpack_modes: {msg}");
            ExitCode::FAILURE
        }
    }
}
