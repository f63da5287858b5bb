//! `berth-build inspect IMAGE_REF [--json]`.

use std::error::Error;
use std::fmt::Write as _;

use berth_bundles::{Image, ImageRef, Platform};
use serde_json::json;

use crate::args::Args;

pub fn run(argv: &[String]) -> Result<(), Box<dyn Error>> {
    let args = Args::parse(argv, &["--json"], &["--platform"])?;
    args.expect(1, "IMAGE_REF")?;
    let reference = ImageRef::parse(&args.positional[0])?;
    let platform = match args.value("--platform") {
        Some(p) => Platform::parse(p)?,
        None => Platform::default(),
    };
    let image = Image::open(&reference, &platform)?;
    if args.flag("--json") {
        out!("{}", serde_json::to_string_pretty(&to_json(&image))?);
    } else {
        out_nonl!("{}", to_text(&image));
    }
    Ok(())
}

/// The machine-readable form.
pub fn to_json(image: &Image) -> serde_json::Value {
    let cfg = image.config.config.clone().unwrap_or_default();
    json!({
        "reference": image.name,
        "manifestDigest": image.manifest_digest.as_ref().map(|d| d.to_string()),
        "configDigest": image.config_digest.to_string(),
        "platform": image.platform.to_string(),
        "config": {
            "entrypoint": cfg.entrypoint,
            "cmd": cfg.cmd,
            "env": cfg.env,
            "user": cfg.user,
            "workingDir": cfg.working_dir,
            "exposedPorts": cfg.exposed_ports.keys().collect::<Vec<_>>(),
            "volumes": cfg.volumes.keys().collect::<Vec<_>>(),
            "stopSignal": cfg.stop_signal,
            "labels": cfg.labels,
        },
        "layers": image.layers,
    })
}

/// The human-readable form.
pub fn to_text(image: &Image) -> String {
    let cfg = image.config.config.clone().unwrap_or_default();
    let mut s = String::new();
    let _ = writeln!(s, "image:      {}", image.name);
    match &image.manifest_digest {
        Some(d) => {
            let _ = writeln!(s, "manifest:   {d}");
        }
        None => {
            let _ = writeln!(s, "manifest:   (docker-archive: none)");
        }
    }
    let _ = writeln!(s, "config:     {}", image.config_digest);
    let _ = writeln!(s, "platform:   {}", image.platform);
    let _ = writeln!(s, "entrypoint: {:?}", cfg.entrypoint);
    let _ = writeln!(s, "cmd:        {:?}", cfg.cmd);
    let _ = writeln!(s, "user:       {:?}", cfg.user);
    let _ = writeln!(s, "workdir:    {:?}", cfg.working_dir);
    let _ = writeln!(s, "env:");
    // From the image: a newline would forge a line of this output, an
    // escape sequence would reach the terminal.
    for e in &cfg.env {
        let _ = writeln!(s, "  {}", berth_bundles::printable(e));
    }
    let _ = writeln!(s, "layers:");
    for l in &image.layers {
        let digest = l
            .digest
            .as_ref()
            .map_or_else(|| "(none)".to_string(), |d| d.to_string());
        let media = if l.media_type.is_empty() {
            format!("(docker-archive, {:?})", l.compression).to_lowercase()
        } else {
            l.media_type.clone()
        };
        let _ = writeln!(s, "  {digest}  {media}  {} bytes", l.size);
        let _ = writeln!(s, "    diff_id {}", l.diff_id);
    }
    s
}
