//! `berth-build unpack IMAGE_REF DEST`.

use std::error::Error;
use std::io::{IsTerminal, Write};
use std::path::Path;

use berth_bundles::unpack::Progress;
use berth_bundles::{ImageRef, LayerOptions, Overrides, Platform, UnpackOptions, unpack_bundle};

use crate::args::Args;

pub fn run(argv: &[String]) -> Result<(), Box<dyn Error>> {
    let args = Args::parse(argv, &[], &["--platform"])?;
    args.expect(2, "IMAGE_REF DEST")?;
    let reference = ImageRef::parse(&args.positional[0])?;
    let platform = match args.value("--platform") {
        Some(p) => Platform::parse(p)?,
        None => Platform::default(),
    };
    let dest = Path::new(&args.positional[1]);
    let tty = std::io::stderr().is_terminal();
    let mut show = |p: Progress<'_>| {
        let mut err = std::io::stderr().lock();
        match p {
            Progress::LayerStart {
                index,
                count,
                layer,
            } => {
                let _ = write!(
                    err,
                    "\rlayer {}/{count}: {} ({:.1} MB) ...",
                    index + 1,
                    layer.name(),
                    layer.size as f64 / 1e6
                );
            }
            Progress::LayerDone {
                index,
                count,
                stats,
            } => {
                let _ = writeln!(
                    err,
                    "\rlayer {}/{count}: {} entries, {:.1} MB written{:>20}",
                    index + 1,
                    stats.entries,
                    stats.bytes as f64 / 1e6,
                    ""
                );
            }
        }
    };
    let opts = UnpackOptions {
        platform,
        // A base image without Entrypoint or Cmd still makes a bundle, as
        // with umoci: its process runs `sh` (warned about below).
        overrides: Overrides {
            fallback_args: Some(vec!["sh".into()]),
            ..Default::default()
        },
        progress: if tty { Some(&mut show) } else { None },
        // Ctrl-C, SIGTERM or SIGHUP stop the unpack, which then removes
        // what it made (crate::interrupt).
        layer: LayerOptions {
            cancel: Some(crate::interrupt::cancel()),
            ..Default::default()
        },
    };
    let res = unpack_bundle(&reference, dest, opts);
    if let Some((code, what)) = crate::interrupt::cancelled() {
        if tty {
            // Past the progress line.
            note!("");
        }
        match res {
            Ok(_) => note!(
                "berth-build: {what} once the unpack had finished; {} is whole",
                dest.display()
            ),
            Err(_) => note!(
                "berth-build: {what}; {} is as it was before the unpack",
                dest.display()
            ),
        }
        std::process::exit(code.into());
    }
    let report = res?;
    let no_command = report
        .image
        .config
        .config
        .as_ref()
        .is_none_or(|c| c.entrypoint.is_empty() && c.cmd.is_empty());
    if no_command {
        note!(
            "berth-build unpack: warning: {} has no Entrypoint or Cmd; {}/config.json runs `sh` (set process.args to change it)",
            report.image.name,
            dest.display()
        );
    }
    let lost: u64 = report.layers.iter().map(|l| l.unsupported_xattrs).sum();
    if lost > 0 {
        note!(
            "berth-build unpack: warning: {lost} user.* extended attributes of {} not set: the filesystem of {} does not support them",
            report.image.name,
            dest.display()
        );
    }
    if tty {
        note!(
            "unpacked {} ({}) into {}",
            report.image.name,
            report.image.platform,
            dest.display()
        );
    }
    Ok(())
}
