//! The layer options: inline and threaded execution make the same tree and
//! the same errors; `DiffIdCheck::TrustBlobDigest` skips only the DiffID
//! check, never the blob digest.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use berth_bundles::unpack::Progress;
use berth_bundles::{
    Cancel, DiffIdCheck, Execution, ImageRef, LayerOptions, UnpackOptions, unpack_bundle,
};
use common::{Comp, E, Layout, Node, Scratch, chain, require_root, sha256_hex, snapshot, tar};
use serde_json::json;

const MODES: [Execution; 2] = [Execution::Inline, Execution::Threaded];

fn unpack(image: &str, dest: &Path, layer: LayerOptions) -> Result<(), String> {
    let r = ImageRef::parse(image).map_err(|e| chain(&e))?;
    let opts = UnpackOptions {
        layer,
        ..Default::default()
    };
    let res = unpack_bundle(&r, dest, opts)
        .map(|_| ())
        .map_err(|e| chain(&e));
    if res.is_err() {
        assert!(!dest.exists(), "bundle left behind after {res:?}");
    }
    res
}

fn opts(execution: Execution, diff_id: DiffIdCheck) -> LayerOptions {
    LayerOptions {
        execution,
        diff_id,
        cancel: None,
    }
}

/// Bytes that compress poorly, so large files span many decoder reads.
fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Layers with every entry type, large and small files (above and below
/// the inline mode's direct-read size), long names, whiteouts.
fn rich_layers() -> Vec<Vec<u8>> {
    let long = format!("d/{}", "n".repeat(150));
    vec![
        tar(&[
            E::dir("d"),
            E::dir("d/sub")
                .mode(0o750)
                .owner(1000, 1000)
                .mtime(1_234_567),
            E::file("d/small", b"small file"),
            E::file("d/big", noise(3 << 19, 7)).mode(0o4755),
            E::file("d/mid", noise(70_000, 9)).owner(1, 2),
            E::file("d/xattr", b"x").pax("SCHILY.xattr.user.k", b"v"),
            E::file(&long, b"long name"),
            E::file(format!("{long}-gnu"), b"gnu name").gnu(),
            E::symlink("d/link", "/d/small"),
            E::hardlink("d/hard", "d/big"),
            E::node("d/fifo", b'6', 0, 0),
            E::node("d/null", b'3', 1, 3),
            E::dir("gone"),
            E::file("gone/f", b"f"),
            E::dir("opq"),
            E::file("opq/lower", b"lower"),
            E::file("replaced", b"file first"),
        ]),
        tar(&[
            E::whiteout(".wh.gone"),
            E::dir("opq"),
            E::whiteout("opq/.wh..wh..opq"),
            E::file("opq/upper", noise(100_000, 3)),
            E::dir("replaced"),
            E::file("replaced/now-a-dir", b"y"),
        ]),
    ]
}

/// A snapshot with inode numbers replaced by hardlink groups (the first
/// path of each inode), so two trees can be compared; without the root
/// itself, which the unpack made (its mtime is when).
fn tree(root: &Path) -> BTreeMap<PathBuf, (Node, PathBuf)> {
    let snap = snapshot(root);
    let mut first: HashMap<u64, PathBuf> = HashMap::new();
    snap.into_iter()
        .filter(|(p, _)| !p.as_os_str().is_empty())
        .map(|(p, mut n)| {
            let group = first.entry(n.ino).or_insert_with(|| p.clone()).clone();
            n.ino = 0;
            (p, (n, group))
        })
        .collect()
}

#[test]
fn inline_and_threaded_make_the_same_tree() {
    require_root();
    let s = Scratch::new("modes-tree");
    for comp in [Comp::None, Comp::Gzip, Comp::Zstd] {
        let l = Layout::new(&s.path().join(format!("img-{comp:?}")));
        let (m, _) = l.image(&rich_layers(), comp, "amd64");
        l.index(&[(m, None)]);
        let image = format!("oci:{}", l.dir.display());
        let mut trees = Vec::new();
        for mode in MODES {
            let dest = s.path().join(format!("b-{comp:?}-{mode:?}"));
            unpack(&image, &dest, opts(mode, DiffIdCheck::Verify)).unwrap();
            let t = tree(&dest.join("rootfs"));
            let big = dest.join("rootfs/d/big");
            assert_eq!(fs::read(&big).unwrap(), noise(3 << 19, 7), "{mode:?}");
            assert!(!dest.join("rootfs/gone").exists(), "{mode:?}");
            assert!(!dest.join("rootfs/opq/lower").exists(), "{mode:?}");
            trees.push(t);
        }
        for (p, a) in &trees[0] {
            assert_eq!(Some(a), trees[1].get(p), "{comp:?} {}", p.display());
        }
        assert_eq!(trees[0].len(), trees[1].len(), "{comp:?}");
        assert_eq!(trees[0][Path::new("d/hard")].1, PathBuf::from("d/big"));
    }
}

/// A cancel raised as the first layer starts stops the unpack at its
/// first read of the blob, in either mode, whatever the compression, and
/// the unpack removes the bundle it made.
#[test]
fn a_cancelled_unpack_stops_at_the_next_read_and_removes_the_bundle() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static FLAG: AtomicBool = AtomicBool::new(false);
    require_root();
    let s = Scratch::new("modes-cancel");
    for comp in [Comp::None, Comp::Gzip, Comp::Zstd] {
        let l = Layout::new(&s.path().join(format!("img-{comp:?}")));
        let (m, _) = l.image(&rich_layers(), comp, "amd64");
        l.index(&[(m, None)]);
        let r = ImageRef::parse(&format!("oci:{}", l.dir.display())).unwrap();
        for mode in MODES {
            FLAG.store(false, Ordering::SeqCst);
            let mut done = 0;
            let mut raise = |p: Progress<'_>| match p {
                Progress::LayerStart { index: 0, .. } => FLAG.store(true, Ordering::SeqCst),
                Progress::LayerDone { .. } => done += 1,
                Progress::LayerStart { .. } => {}
            };
            let dest = s.path().join(format!("b-{comp:?}-{mode:?}"));
            let opts = UnpackOptions {
                layer: LayerOptions {
                    cancel: Some(Cancel(&FLAG)),
                    ..opts(mode, DiffIdCheck::Verify)
                },
                progress: Some(&mut raise),
                ..Default::default()
            };
            let err = chain(&unpack_bundle(&r, &dest, opts).unwrap_err());
            assert!(
                err.contains(": unpack of layer sha256:"),
                "{comp:?} {mode:?}: {err}"
            );
            assert!(err.ends_with(" cancelled"), "{comp:?} {mode:?}: {err}");
            assert!(!dest.exists(), "{comp:?} {mode:?}: bundle left behind");
            assert_eq!(done, 0, "{comp:?} {mode:?}: the first layer went on");
        }
    }
}

#[test]
fn inline_and_threaded_read_unpadded_layers_alike() {
    // umoci 0.4.7 ends a layer right after the last entry's data.
    require_root();
    let s = Scratch::new("modes-unpadded");
    let mut t = tar(&[E::file("a", b"first"), E::file("b", b"last!")]);
    t.truncate(512 * 3 + 5);
    let mut cut = tar(&[E::file("c", vec![b'c'; 2000])]);
    cut.truncate(512 + 1000);
    for (i, layer) in [t, cut].into_iter().enumerate() {
        let l = Layout::new(&s.path().join(format!("img{i}")));
        let (m, _) = l.image(&[layer], Comp::Zstd, "amd64");
        l.index(&[(m, None)]);
        let image = format!("oci:{}", l.dir.display());
        let res = both_modes(&s, &image, DiffIdCheck::Verify);
        if i == 0 {
            assert!(res.is_ok(), "{res:?}");
        } else {
            assert!(res.as_ref().unwrap_err().contains("truncated"), "{res:?}");
        }
    }
}

/// A one-layer image whose layer `tamper` may break; returns the image
/// reference and the layer's blob digest.
fn image_with(
    s: &Scratch,
    tag: &str,
    comp: Comp,
    tamper: impl Fn(&Layout, &[serde_json::Value], &mut serde_json::Value),
) -> (String, String) {
    let l = Layout::new(&s.path().join(tag));
    let tars = rich_layers();
    let (data, mt) = common::compress(comp, &tars[0]);
    let layer = l.blob(mt, &data);
    let mut cfg = l.config(&tars[..1], "amd64", json!({}));
    tamper(&l, std::slice::from_ref(&layer), &mut cfg);
    let c = l.blob(
        "application/vnd.oci.image.config.v1+json",
        &serde_json::to_vec(&cfg).unwrap(),
    );
    let m = l.manifest(c, std::slice::from_ref(&layer));
    l.index(&[(m, None)]);
    (
        format!("oci:{}", l.dir.display()),
        layer["digest"].as_str().unwrap().to_string(),
    )
}

/// Where in a blob of the given length to flip a bit.
type At = fn(usize) -> usize;

fn flip(l: &Layout, layer: &serde_json::Value, at: At) {
    let p = l.blob_path(layer);
    let mut data = fs::read(&p).unwrap();
    let i = at(data.len());
    data[i] ^= 0x01;
    fs::write(&p, data).unwrap();
}

/// Unpacks `image` in both modes with `diff_id`; asserts both give the
/// same result and returns it.
fn both_modes(s: &Scratch, image: &str, diff_id: DiffIdCheck) -> Result<(), String> {
    let dest = s.path().join("bundle");
    let mut results = Vec::new();
    for mode in MODES {
        let res = unpack(image, &dest, opts(mode, diff_id));
        if res.is_ok() {
            fs::remove_dir_all(&dest).unwrap();
        }
        results.push(res);
    }
    assert_eq!(results[0], results[1], "inline vs threaded");
    results.pop().unwrap()
}

#[test]
fn inline_and_threaded_give_the_same_errors() {
    require_root();
    let s = Scratch::new("modes-errors");
    let wrong_diff_id = |_: &Layout, _: &[serde_json::Value], cfg: &mut serde_json::Value| {
        cfg["rootfs"]["diff_ids"] = json!([format!("sha256:{}", sha256_hex(b"other"))]);
    };
    for comp in [Comp::None, Comp::Gzip, Comp::Zstd] {
        // A byte in the middle (the decompressor or the digest notices),
        // one near the end (for gzip: the CRC), the blob made shorter.
        let cases: [(&str, At); 3] = [("mid", |n| n / 2), ("end", |n| n - 5), ("start", |_| 700)];
        for (what, at) in cases {
            let tag = format!("{comp:?}-{what}");
            let (image, blob) = image_with(&s, &tag, comp, |l, layers, _| flip(l, &layers[0], at));
            let err = both_modes(&s, &image, DiffIdCheck::Verify).unwrap_err();
            assert!(err.contains(&blob), "{tag}: {err}");
            assert!(
                err.contains("does not match its digest") || err.contains("corrupt"),
                "{tag}: {err}"
            );
        }
        let (image, blob) = image_with(&s, &format!("{comp:?}-diffid"), comp, wrong_diff_id);
        let err = both_modes(&s, &image, DiffIdCheck::Verify).unwrap_err();
        assert!(err.contains("diff_id") && err.contains(&blob), "{err}");
        let (image, blob) = image_with(&s, &format!("{comp:?}-short"), comp, |l, layers, _| {
            let p = l.blob_path(&layers[0]);
            let data = fs::read(&p).unwrap();
            fs::write(&p, &data[..data.len() - 100]).unwrap();
        });
        let err = both_modes(&s, &image, DiffIdCheck::Verify).unwrap_err();
        assert!(err.contains(&blob), "{err}");
    }
}

#[test]
fn trusting_the_blob_digest_skips_only_the_diff_id() {
    require_root();
    let s = Scratch::new("modes-trust");
    for comp in [Comp::None, Comp::Gzip, Comp::Zstd] {
        // A config whose diff_id lies: found by Verify only.
        let (image, blob) = image_with(&s, &format!("{comp:?}-diffid"), comp, |_, _, cfg| {
            cfg["rootfs"]["diff_ids"] = json!([format!("sha256:{}", sha256_hex(b"other"))]);
        });
        let err = both_modes(&s, &image, DiffIdCheck::Verify).unwrap_err();
        assert!(err.contains("diff_id") && err.contains(&blob), "{err}");
        both_modes(&s, &image, DiffIdCheck::TrustBlobDigest).unwrap();

        // A damaged blob: still refused. Uncompressed, nothing but the
        // blob digest can notice (no decompressor, no DiffID hash).
        let (image, blob) = image_with(&s, &format!("{comp:?}-flip"), comp, |l, layers, _| {
            flip(l, &layers[0], |n| n / 2)
        });
        let err = both_modes(&s, &image, DiffIdCheck::TrustBlobDigest).unwrap_err();
        assert!(err.contains(&blob), "{err}");
        if matches!(comp, Comp::None) {
            assert!(err.contains("does not match its digest"), "{err}");
        } else {
            assert!(
                err.contains("does not match its digest") || err.contains("corrupt"),
                "{err}"
            );
        }
    }
}

#[test]
fn a_layer_without_blob_digest_always_checks_its_diff_id() {
    // Legacy docker-archive layers (`<id>/layer.tar`) have no content
    // digest: the DiffID is all that binds them, so TrustBlobDigest
    // cannot skip it.
    require_root();
    let s = Scratch::new("modes-legacy");
    let tars = rich_layers();
    let mut cfg = Layout::new(&s.path().join("tmp")).config(&tars[..1], "amd64", json!({}));
    cfg["rootfs"]["diff_ids"] = json!([format!("sha256:{}", sha256_hex(b"other"))]);
    let cfg_bytes = serde_json::to_vec(&cfg).unwrap();
    let cfg_hex = sha256_hex(&cfg_bytes);
    let manifest = json!([{"Config": format!("{cfg_hex}.json"), "RepoTags": ["x:latest"],
        "Layers": ["aaaa/layer.tar"]}]);
    let archive = s.path().join("legacy.tar");
    fs::write(
        &archive,
        tar(&[
            E::file("aaaa/layer.tar", &tars[0]),
            E::file(format!("{cfg_hex}.json"), &cfg_bytes),
            E::file("manifest.json", serde_json::to_vec(&manifest).unwrap()),
        ]),
    )
    .unwrap();
    let image = format!("docker-archive:{}", archive.display());
    for diff_id in [DiffIdCheck::Verify, DiffIdCheck::TrustBlobDigest] {
        let err = both_modes(&s, &image, diff_id).unwrap_err();
        assert!(err.contains("diff_id"), "{diff_id:?}: {err}");
    }
}

/// Unmounts on drop (before the scratch directory is removed).
struct Mounted(PathBuf);
impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_failed_write_is_reported_alike_in_both_modes() {
    // Threaded execution writes file data straight from the decoder's
    // chunks; a write error must still name the file, as inline does.
    require_root();
    let s = Scratch::new("modes-enospc");
    let l = Layout::new(&s.path().join("img"));
    let layer = tar(&[E::dir("d"), E::file("d/big", noise(3 << 20, 5))]);
    let (m, _) = l.image(&[layer], Comp::Zstd, "amd64");
    l.index(&[(m, None)]);
    let image = format!("oci:{}", l.dir.display());
    let mnt = s.path().join("small");
    fs::create_dir(&mnt).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "berth-test"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(status.success(), "mount a 1 MiB tmpfs");
    let _mounted = Mounted(mnt.clone());
    for mode in MODES {
        let err = unpack(&image, &mnt.join("bundle"), opts(mode, DiffIdCheck::Verify)).unwrap_err();
        assert!(
            err.contains("write") && err.contains("d/big") && err.contains("No space left"),
            "{mode:?}: {err}"
        );
    }
}
