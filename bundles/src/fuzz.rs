//! Fuzz entry points: plain functions over untrusted bytes, driven by the
//! cargo-fuzz targets in `bundles/fuzz` and, with random and crafted
//! inputs, by the normal test suite. They must never panic.

use std::io;

use crate::apply::{classify_whiteout, clean_name, parse_pax_time};
use crate::digest::Sha256Digest;
use crate::image::{Descriptor, ImageConfig, Index, Manifest, Platform, layer_compression};
use crate::spec::{
    Overrides, ResolvedUser, build_env, convert, parse_group, parse_passwd, resolve_user,
};

/// Parses a layer tar the way [`crate::apply::Rootfs::apply_layer`] reads
/// it: every header field, long names, PAX records (size, path, mtime,
/// xattrs), name cleaning and whiteout classification, and the data.
/// Returns the number of entries, or the first error.
pub fn fuzz_tar_headers(data: &[u8]) -> io::Result<u64> {
    let mut archive = tar::Archive::new(crate::tar_guard::TarGuard::new(data));
    archive.set_ignore_zeros(false);
    let mut count = 0;
    for entry in archive.entries()? {
        let mut entry = entry?;
        count += 1;
        let h = entry.header();
        let _ = (h.entry_type(), h.mode(), h.uid(), h.gid(), h.mtime());
        let _ = (h.device_major(), h.device_minor());
        let path = entry.path_bytes().into_owned();
        if let Ok(clean) = clean_name(&path) {
            let base = clean.rsplit(|b| *b == b'/').next().unwrap_or_default();
            let _ = classify_whiteout(base);
        }
        if let Some(link) = entry.link_name_bytes() {
            let _ = clean_name(&link);
        }
        if let Some(exts) = entry.pax_extensions()? {
            for ext in exts {
                let ext = ext?;
                if ext.key_bytes() == b"mtime" {
                    let _ = parse_pax_time(ext.value_bytes());
                }
            }
        }
        if entry.header().entry_type().is_gnu_sparse() {
            // The tar crate makes up the holes when such an entry is read
            // (a real size of 2^63 would be read for ever); the unpacker
            // never reads it so, and the reader skips its stored data.
            continue;
        }
        let size = entry.size();
        let read = io::copy(&mut entry, &mut io::sink())?;
        if read != size {
            return Err(io::Error::other("short entry"));
        }
    }
    Ok(count)
}

/// Parses bytes as every JSON document an image holds (index, manifest,
/// config, docker-archive manifest.json) and, where that works, runs the
/// code that consumes them: digest validation, media types, platforms,
/// config → runtime spec. Also treats the bytes as /etc/passwd and
/// /etc/group for user resolution.
pub fn fuzz_image_json(data: &[u8]) {
    let check_desc = |d: &Descriptor| {
        let _ = Sha256Digest::parse(&d.digest);
        let _ = layer_compression(&d.media_type);
        if let Some(p) = &d.platform {
            let p = Platform::new(&p.os, &p.architecture, p.variant.as_deref());
            let _ = Platform::default().matches(&p);
            let _ = p.to_string();
        }
    };
    if let Ok(index) = serde_json::from_slice::<Index>(data) {
        index.manifests.iter().for_each(check_desc);
    }
    if let Ok(m) = serde_json::from_slice::<Manifest>(data) {
        check_desc(&m.config);
        m.layers.iter().for_each(check_desc);
    }
    if let Ok(cfg) = serde_json::from_slice::<ImageConfig>(data) {
        for d in &cfg.rootfs.diff_ids {
            let _ = Sha256Digest::parse(d);
        }
        let user = ResolvedUser {
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            home: None,
        };
        let _ = convert(&cfg, &Overrides::default(), &user);
    }
    let _ = serde_json::from_slice::<serde_json::Value>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Platform::parse(text);
        let _ = Sha256Digest::parse(text);
        let passwd = parse_passwd(text);
        let groups = parse_group(text);
        for spec in ["", "root", "0", "1000:1000", "app", "app:app"] {
            let _ = resolve_user(spec, &passwd, &groups);
        }
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        let _ = build_env(&lines, &lines, None);
    }
}
