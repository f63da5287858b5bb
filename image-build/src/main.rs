//! berth-build: turn OCI images and bundles into a bootable appliance.
//!
//! A small subcommand dispatcher; each subcommand lives in its own module
//! and parses its own arguments with [`args::Args`].
#![forbid(unsafe_code)]

// Output that cannot panic: into a pipe whose reader is gone (`| head`)
// or a closed terminal it is dropped. SIGPIPE stays ignored, so a build
// always gets to clean up, whatever happened to its terminal.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
macro_rules! out_nonl {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod args;
mod build;
mod inspect;
mod interrupt;
#[cfg(test)]
mod testing;
mod unpack;

use std::error::Error;
use std::process::ExitCode;

const USAGE: &str = "usage: berth-build <command> [options]

commands:
  build MANIFEST -o OUTDIR --kernel DEB_OR_DIR [--init PATH]
      build an appliance: OUTDIR/initrd.img (zstd newc cpio with /init, the
      manifest, the images as one OCI layout, bundles and kernel modules)
      and OUTDIR/vmlinuz; --kernel is a Debian linux-image-*-cloud-amd64
      package or its unpacked tree, --init a static berth-init
  unpack IMAGE_REF DEST [--platform OS/ARCH[/VARIANT]]
      unpack an image into the runtime bundle DEST (config.json + rootfs);
      DEST must not exist or be empty
  inspect IMAGE_REF [--json] [--platform OS/ARCH[/VARIANT]]
      show the manifest, platform, config and layers of an image

IMAGE_REF is oci:PATH[:TAG] (an OCI image layout) or
docker-archive:PATH[:REF] (a `docker save` tar).";

/// Whether an image was refused for its platform (which `unpack` and
/// `inspect` can choose; an appliance runs linux/amd64 images only).
fn wrong_platform(err: &(dyn Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(berth_bundles::image::ImageError::Platform { .. }) = e.downcast_ref() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Prints an error and its causes on one line.
fn report(err: &dyn Error) -> String {
    let mut line = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let msg = e.to_string();
        if !line.ends_with(&msg) {
            line.push_str(": ");
            line.push_str(&msg);
        }
        cur = e.source();
    }
    line
}

/// Raises the soft limit on open files to the hard one: the unpack's
/// writer threads and the layer readers each hold a few, and a bounded
/// number are held while a tree is removed (bundles/README.md); the usual
/// soft limit of 1,024 is no bound berth-build needs to live with.
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        // Best effort: without it only pathologically deep trees fail.
        let _ = setrlimit(Resource::Nofile, lim);
    }
}

fn main() -> ExitCode {
    raise_open_files_limit();
    let mut argv = Vec::new();
    for a in std::env::args_os().skip(1) {
        match a.into_string() {
            Ok(a) => argv.push(a),
            Err(a) => {
                // A path changed into another (U+FFFD) would be written to.
                note!("berth-build: argument {a:?} is not UTF-8");
                return ExitCode::from(2);
            }
        }
    }
    let mut argv = argv.into_iter();
    let Some(cmd) = argv.next() else {
        note!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest: Vec<String> = argv.collect();
    // `berth-build CMD --help` (before any `--`) prints the usage.
    if rest
        .iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "-h" || a == "--help")
        && ["build", "unpack", "inspect"].contains(&cmd.as_str())
    {
        out!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let res: Result<(), Box<dyn Error>> = match cmd.as_str() {
        "build" => match interrupt::install(interrupt::Mode::Exit) {
            Ok(()) => build::run(&rest),
            Err(e) => Err(format!("installing signal handlers: {e}").into()),
        },
        "unpack" => match interrupt::install(interrupt::Mode::Cancel) {
            Ok(()) => unpack::run(&rest),
            Err(e) => Err(format!("installing signal handlers: {e}").into()),
        },
        "inspect" => inspect::run(&rest),
        "-h" | "--help" | "help" => {
            out!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => {
            note!("berth-build: unknown command {other:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) if interrupt::interrupted() && interrupt::cancelled().is_none() => {
            // The failure is the interruption's doing (dpkg killed, the
            // temporary directory removed): the signal thread reports it
            // and ends the process.
            loop {
                std::thread::park();
            }
        }
        Err(e) => {
            let hint = if cmd != "build" && wrong_platform(e.as_ref()) {
                " (choose with --platform)"
            } else {
                ""
            };
            note!("berth-build {cmd}: {}{hint}", report(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
