//! Image reading and verification: every failure names the image and the
//! blob, and good images unpack into runnable bundles.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use berth_bundles::{ImageRef, Platform, UnpackOptions, unpack_bundle};
use common::{Comp, E, Layout, Scratch, chain, require_root, sha256_hex, tar};
use serde_json::json;

fn sample_layers() -> Vec<Vec<u8>> {
    vec![
        tar(&[
            E::dir("etc"),
            E::file(
                "etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
            ),
            E::file("etc/group", "root:x:0:\napp:x:1000:\n"),
            E::file("gone", b"x"),
        ]),
        tar(&[
            E::file("hello", vec![b'h'; 100_000]),
            E::whiteout(".wh.gone"),
        ]),
    ]
}

fn unpack(image: &str, dest: &Path, platform: Option<&str>) -> Result<(), String> {
    let r = ImageRef::parse(image).map_err(|e| chain(&e))?;
    let opts = UnpackOptions {
        platform: platform
            .map(|p| Platform::parse(p).unwrap())
            .unwrap_or_default(),
        ..Default::default()
    };
    unpack_bundle(&r, dest, opts)
        .map(|_| ())
        .map_err(|e| chain(&e))
}

#[test]
fn good_images_all_compressions() {
    require_root();
    for comp in [Comp::None, Comp::Gzip, Comp::Zstd] {
        let s = Scratch::new("good");
        let l = Layout::new(&s.path().join("img"));
        let (m, _) = l.image(&sample_layers(), comp, "amd64");
        l.index(&[(m, Some("v1"))]);
        let dest = s.path().join("bundle");
        unpack(&format!("oci:{}:v1", l.dir.display()), &dest, None).unwrap();
        // Untagged works too when the layout holds one image.
        unpack(
            &format!("oci:{}", l.dir.display()),
            &s.path().join("b2"),
            None,
        )
        .unwrap();
        assert_eq!(
            fs::read(dest.join("rootfs/hello")).unwrap(),
            vec![b'h'; 100_000]
        );
        assert!(!dest.join("rootfs/gone").exists());
        // The root starts at time 0 (umoci) and layers that add to it or
        // remove from it without an entry for it leave it there: a bundle
        // does not carry the time it was unpacked.
        let root = fs::metadata(dest.join("rootfs")).unwrap();
        assert_eq!((root.mtime(), root.atime()), (0, 0));
        let etc = fs::metadata(dest.join("rootfs/etc")).unwrap();
        assert_eq!(etc.mtime(), 1_600_000_000);
        let spec: serde_json::Value =
            serde_json::from_slice(&fs::read(dest.join("config.json")).unwrap()).unwrap();
        assert_eq!(spec["process"]["args"], json!(["/bin/sh"]));
        assert_eq!(spec["root"]["path"], "rootfs");
    }
}

/// Builds a one-image layout and lets `tamper` break it; returns the
/// unpack error and the layer descriptors.
fn broken(
    tamper: impl Fn(&Layout, &serde_json::Value, &[serde_json::Value]),
) -> (String, String, Scratch) {
    require_root();
    let s = Scratch::new("broken");
    let l = Layout::new(&s.path().join("img"));
    let (m, layers) = l.image(&sample_layers(), Comp::Gzip, "amd64");
    l.index(&[(m.clone(), Some("v1"))]);
    tamper(&l, &m, &layers);
    let dest = s.path().join("bundle");
    let err = unpack(&format!("oci:{}:v1", l.dir.display()), &dest, None).unwrap_err();
    // A failed unpack leaves no half-made bundle behind.
    assert!(!dest.exists(), "bundle left behind after: {err}");
    let layer0 = layers[0]["digest"].as_str().unwrap().to_string();
    (err, layer0, s)
}

#[test]
fn wrong_digest_names_image_and_blob() {
    let (err, blob, _s) = broken(|l, _, layers| {
        let p = l.blob_path(&layers[0]);
        let mut data = fs::read(&p).unwrap();
        let n = data.len();
        data[n - 5] ^= 0xff; // gzip trailer byte: decompression may still work
        fs::write(&p, data).unwrap();
    });
    assert!(err.contains("oci:") && err.contains(&blob), "{err}");
    assert!(
        err.contains("does not match its digest") || err.contains("corrupt"),
        "{err}"
    );
}

#[test]
fn corrupt_content_same_size_detected() {
    let (err, blob, _s) = broken(|l, _, layers| {
        let p = l.blob_path(&layers[0]);
        let mut data = fs::read(&p).unwrap();
        data[20] ^= 0x01;
        fs::write(&p, data).unwrap();
    });
    assert!(err.contains(&blob), "{err}");
}

#[test]
fn missing_blob() {
    let (err, blob, _s) = broken(|l, _, layers| fs::remove_file(l.blob_path(&layers[0])).unwrap());
    assert!(
        err.contains("missing layer") && err.contains(&blob),
        "{err}"
    );
}

#[test]
fn truncated_layer() {
    // The blob is cut and its descriptor made to match, so only the
    // decompressor can tell: corrupt or truncated.
    require_root();
    let s = Scratch::new("trunc");
    let l = Layout::new(&s.path().join("img"));
    let tars = sample_layers();
    let (full, mt) = common::compress(Comp::Zstd, &tars[1]);
    let cut = &full[..full.len() / 2];
    let l0 = l.blob("application/vnd.oci.image.layer.v1.tar", &tars[0]);
    let l1 = l.blob(mt, cut);
    let cfg = l.config(&tars, "amd64", json!({}));
    let c = l.blob(
        "application/vnd.oci.image.config.v1+json",
        &serde_json::to_vec(&cfg).unwrap(),
    );
    let m = l.manifest(c, &[l0, l1.clone()]);
    l.index(&[(m, None)]);
    let err = unpack(
        &format!("oci:{}", l.dir.display()),
        &s.path().join("b"),
        None,
    )
    .unwrap_err();
    assert!(
        err.contains("corrupt or truncated") && err.contains(l1["digest"].as_str().unwrap()),
        "{err}"
    );
}

#[test]
fn wrong_diff_id() {
    require_root();
    let s = Scratch::new("diffid");
    let l = Layout::new(&s.path().join("img"));
    let tars = sample_layers();
    let l0 = l.blob("application/vnd.oci.image.layer.v1.tar", &tars[0]);
    let mut cfg = l.config(&tars[..1], "amd64", json!({}));
    cfg["rootfs"]["diff_ids"] = json!([format!("sha256:{}", sha256_hex(b"other"))]);
    let c = l.blob(
        "application/vnd.oci.image.config.v1+json",
        &serde_json::to_vec(&cfg).unwrap(),
    );
    let m = l.manifest(c, std::slice::from_ref(&l0));
    l.index(&[(m, None)]);
    let err = unpack(
        &format!("oci:{}", l.dir.display()),
        &s.path().join("b"),
        None,
    )
    .unwrap_err();
    assert!(
        err.contains("diff_id") && err.contains(l0["digest"].as_str().unwrap()),
        "{err}"
    );
}

#[test]
fn unsupported_media_types() {
    for mt in [
        "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/octet-stream",
    ] {
        let (err, blob, _s) = broken(|l, m, layers| {
            let mut layers = layers.to_vec();
            layers[0]["mediaType"] = json!(mt);
            let manifest: serde_json::Value =
                serde_json::from_slice(&fs::read(l.blob_path(m)).unwrap()).unwrap();
            let m2 = l.manifest(manifest["config"].clone(), &layers);
            l.index(&[(m2, Some("v1"))]);
        });
        assert!(
            err.contains("unsupported media type") && err.contains(&blob) && err.contains(mt),
            "{err}"
        );
    }
}

#[test]
fn malformed_json_and_bad_digests() {
    let (err, _, _s) = broken(|l, _, _| {
        let bad = l.blob("application/vnd.oci.image.manifest.v1+json", b"{not json");
        l.index(&[(bad, Some("v1"))]);
    });
    assert!(err.contains("malformed manifest"), "{err}");
    let (err, _, _s) = broken(|l, _, _| fs::write(l.dir.join("index.json"), b"[]").unwrap());
    assert!(err.contains("malformed index"), "{err}");
    let (err, _, _s) = broken(|l, m, _| {
        let mut m = m.clone();
        m["digest"] = json!("sha256:../../../../etc/passwd");
        l.index(&[(m, Some("v1"))]);
    });
    assert!(err.contains("invalid digest"), "{err}");
    // Size in the descriptor smaller / larger than the blob.
    let (err, _, _s) = broken(|l, m, _| {
        let mut m = m.clone();
        m["size"] = json!(m["size"].as_u64().unwrap() - 1);
        l.index(&[(m, Some("v1"))]);
    });
    assert!(err.contains("larger than its descriptor size"), "{err}");
    let (err, _, _s) = broken(|l, m, _| {
        let mut m = m.clone();
        m["size"] = json!(m["size"].as_u64().unwrap() + 1);
        l.index(&[(m, Some("v1"))]);
    });
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn dest_must_be_empty() {
    require_root();
    let s = Scratch::new("dest");
    let l = Layout::new(&s.path().join("img"));
    let (m, _) = l.image(&sample_layers(), Comp::Gzip, "amd64");
    l.index(&[(m, None)]);
    let dest = s.path().join("bundle");
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("x"), b"").unwrap();
    let err = unpack(&format!("oci:{}", l.dir.display()), &dest, None).unwrap_err();
    assert!(err.contains("not an empty directory"), "{err}");
    assert!(dest.join("x").exists());
    // An existing empty directory is fine, and made private as a new one
    // is (the image's setuid programs are not for every host user).
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let empty = s.path().join("empty");
    fs::DirBuilder::new().mode(0o755).create(&empty).unwrap();
    unpack(&format!("oci:{}", l.dir.display()), &empty, None).unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&empty), 0o700);
    let new = s.path().join("new");
    unpack(&format!("oci:{}", l.dir.display()), &new, None).unwrap();
    assert_eq!(mode(&new), 0o700);
}

/// A DEST whose parents are missing gets them (as with umoci); a failed
/// unpack removes them again, and only them.
#[test]
fn missing_parents_of_dest_are_made_and_a_failure_removes_them() {
    require_root();
    let s = Scratch::new("dest-parents");
    let l = Layout::new(&s.path().join("img"));
    let (m, layers) = l.image(&sample_layers(), Comp::Gzip, "amd64");
    l.index(&[(m, None)]);
    let image = format!("oci:{}", l.dir.display());
    let deep = s.path().join("a/b/bundle");
    unpack(&image, &deep, None).unwrap();
    assert!(deep.join("rootfs").is_dir() && deep.join("config.json").is_file());
    // The last layer's blob damaged: the unpack fails after it made
    // x/y/bundle and filled part of it. An existing sibling stays.
    let blob = l.blob_path(layers.last().unwrap());
    let mut bytes = fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&blob, bytes).unwrap();
    let err = unpack(&image, &s.path().join("x/y/bundle"), None).unwrap_err();
    assert!(err.contains("layer sha256:"), "{err}");
    assert!(
        !s.path().join("x").exists(),
        "made parents left after: {err}"
    );
    fs::create_dir_all(s.path().join("p/keep")).unwrap();
    unpack(&image, &s.path().join("p/q/bundle"), None).unwrap_err();
    assert!(!s.path().join("p/q").exists());
    assert!(s.path().join("p/keep").is_dir());
    // A parent that could not be made (its name is too long): the ones
    // made before it go all the same.
    let long = s.path().join("nd").join("n".repeat(300)).join("bundle");
    let err = unpack(&image, &long, None).unwrap_err();
    assert!(err.contains("create"), "{err}");
    assert!(
        !s.path().join("nd").exists(),
        "made parents left after: {err}"
    );
    // A DEST that was there empty is left so, with its mode.
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let given = s.path().join("given");
    fs::DirBuilder::new().mode(0o750).create(&given).unwrap();
    unpack(&image, &given, None).unwrap_err();
    assert_eq!(
        fs::metadata(&given).unwrap().permissions().mode() & 0o7777,
        0o750
    );
    assert_eq!(fs::read_dir(&given).unwrap().count(), 0);
}

#[test]
fn platform_selection_in_nested_index() {
    require_root();
    let s = Scratch::new("platform");
    let l = Layout::new(&s.path().join("img"));
    let mk = |arch: &str, marker: &str| {
        let tars = vec![tar(&[E::file("arch", marker)])];
        l.image(&tars, Comp::Zstd, arch).0
    };
    let mut amd = mk("amd64", "amd64");
    amd["platform"] = json!({"os": "linux", "architecture": "amd64"});
    let mut arm = mk("arm64", "arm64");
    arm["platform"] = json!({"os": "linux", "architecture": "arm64", "variant": "v8"});
    let mut v3 = mk("amd64", "amd64/v3");
    v3["platform"] = json!({"os": "linux", "architecture": "amd64", "variant": "v3"});
    let att = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{}", "0".repeat(64)), "size": 1,
        "platform": {"os": "unknown", "architecture": "unknown"}});
    // v3 listed first: without a variant asked for, the plain image wins
    // all the same (v3 may not run on this CPU).
    let idx = json!({"schemaVersion": 2, "manifests": [att, arm, v3, amd]});
    let idx_desc = l.blob(
        "application/vnd.oci.image.index.v1+json",
        &serde_json::to_vec(&idx).unwrap(),
    );
    l.index(&[(idx_desc, Some("multi"))]);
    let img = format!("oci:{}:multi", l.dir.display());
    unpack(&img, &s.path().join("a"), None).unwrap();
    assert_eq!(fs::read(s.path().join("a/rootfs/arch")).unwrap(), b"amd64");
    unpack(&img, &s.path().join("b"), Some("linux/aarch64")).unwrap();
    assert_eq!(fs::read(s.path().join("b/rootfs/arch")).unwrap(), b"arm64");
    // A variant takes the newest image it can run (containerd's order):
    // amd64/v2 runs plain amd64 but not v3; amd64/v4 prefers v3.
    unpack(&img, &s.path().join("v2"), Some("linux/amd64/v2")).unwrap();
    assert_eq!(fs::read(s.path().join("v2/rootfs/arch")).unwrap(), b"amd64");
    unpack(&img, &s.path().join("v4"), Some("linux/amd64/v4")).unwrap();
    assert_eq!(
        fs::read(s.path().join("v4/rootfs/arch")).unwrap(),
        b"amd64/v3"
    );
    let err = unpack(&img, &s.path().join("c"), Some("linux/riscv64")).unwrap_err();
    assert!(
        err.contains("no image for linux/riscv64") && err.contains("linux/amd64"),
        "{err}"
    );
}

#[test]
fn tags_and_single_platform_mismatch() {
    require_root();
    let s = Scratch::new("tags");
    let l = Layout::new(&s.path().join("img"));
    let (a, _) = l.image(&[tar(&[E::file("t", "a")])], Comp::Gzip, "amd64");
    let (b, _) = l.image(&[tar(&[E::file("t", "b")])], Comp::Gzip, "arm64");
    l.index(&[(a, Some("a")), (b, Some("b"))]);
    let base = format!("oci:{}", l.dir.display());
    let err = unpack(&base, &s.path().join("x"), None).unwrap_err();
    assert!(
        err.contains("name one with :TAG") && err.contains("a, b"),
        "{err}"
    );
    let err = unpack(&format!("{base}:nope"), &s.path().join("x"), None).unwrap_err();
    assert!(err.contains("no image tagged \"nope\""), "{err}");
    unpack(&format!("{base}:a"), &s.path().join("ok"), None).unwrap();
    let err = unpack(&format!("{base}:b"), &s.path().join("x"), None).unwrap_err();
    assert!(
        err.contains("image is for linux/arm64, not linux/amd64"),
        "{err}"
    );
    unpack(
        &format!("{base}:b"),
        &s.path().join("ok2"),
        Some("linux/arm64"),
    )
    .unwrap();
}

/// Writes a tar of (name, data) members plus symlinks.
fn archive(path: &Path, files: &[(String, Vec<u8>)], links: &[(String, String)]) {
    let mut entries: Vec<E> = files.iter().map(|(n, d)| E::file(n, d)).collect();
    entries.extend(links.iter().map(|(n, t)| E::symlink(n, t)));
    fs::write(path, tar(&entries)).unwrap();
}

#[test]
fn docker_archive_legacy_and_oci_flavours() {
    require_root();
    let s = Scratch::new("docker");
    let tars = sample_layers();
    let cfg = Layout::new(&s.path().join("tmp")).config(&tars, "amd64", json!({}));
    let cfg_bytes = serde_json::to_vec(&cfg).unwrap();
    let cfg_hex = sha256_hex(&cfg_bytes);
    // Legacy: <id>/layer.tar (the second one gzipped, sniffed by magic, and
    // reached through a symlink), <config>.json, manifest.json last.
    let legacy = s.path().join("legacy.tar");
    let manifest = json!([{"Config": format!("{cfg_hex}.json"), "RepoTags": ["busybox:latest", "example.com/app:1"],
        "Layers": ["aaaa/layer.tar", "bbbb/layer.tar"]}]);
    archive(
        &legacy,
        &[
            ("aaaa/layer.tar".into(), tars[0].clone()),
            ("cccc/layer.tar".into(), common::gzip(&tars[1])),
            (format!("{cfg_hex}.json"), cfg_bytes.clone()),
            (
                "manifest.json".into(),
                serde_json::to_vec(&manifest).unwrap(),
            ),
        ],
        &[("bbbb/layer.tar".into(), "../cccc/layer.tar".into())],
    );
    for r in ["", ":busybox", ":busybox:latest", ":example.com/app:1"] {
        let dest = s
            .path()
            .join(format!("legacy{}", r.replace([':', '/'], "_")));
        unpack(
            &format!("docker-archive:{}{r}", legacy.display()),
            &dest,
            None,
        )
        .unwrap();
        assert_eq!(fs::read(dest.join("rootfs/hello")).unwrap().len(), 100_000);
        assert!(!dest.join("rootfs/gone").exists());
    }
    let err = unpack(
        &format!("docker-archive:{}:other", legacy.display()),
        &s.path().join("x"),
        None,
    )
    .unwrap_err();
    assert!(err.contains("no image tagged \"other:latest\""), "{err}");

    // OCI flavour (Docker 25+): blobs/sha256 plus manifest.json pointing
    // at them; a tampered layer is caught by the digest in its name.
    let l0 = common::zstd(&tars[0]);
    let l1 = tars[1].clone();
    let (h0, h1) = (sha256_hex(&l0), sha256_hex(&l1));
    let manifest = json!([{"Config": format!("blobs/sha256/{cfg_hex}"), "RepoTags": null,
        "Layers": [format!("blobs/sha256/{h0}"), format!("blobs/sha256/{h1}")]}]);
    let files = |l1: Vec<u8>| {
        vec![
            (
                "oci-layout".to_string(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            (format!("blobs/sha256/{h0}"), l0.clone()),
            (format!("blobs/sha256/{h1}"), l1),
            (format!("blobs/sha256/{cfg_hex}"), cfg_bytes.clone()),
            (
                "manifest.json".to_string(),
                serde_json::to_vec(&manifest).unwrap(),
            ),
        ]
    };
    let oci = s.path().join("oci.tar");
    archive(&oci, &files(l1.clone()), &[]);
    let dest = s.path().join("oci");
    unpack(&format!("docker-archive:{}", oci.display()), &dest, None).unwrap();
    assert_eq!(fs::read(dest.join("rootfs/hello")).unwrap().len(), 100_000);
    let mut bad = l1.clone();
    bad[600] ^= 1;
    archive(&oci, &files(bad), &[]);
    let err = unpack(
        &format!("docker-archive:{}", oci.display()),
        &s.path().join("bad"),
        None,
    )
    .unwrap_err();
    assert!(
        err.contains(&format!("sha256:{h1}")) && err.contains("does not match"),
        "{err}"
    );
    // No manifest.json: not a docker archive.
    archive(&oci, &files(l1)[..4], &[]);
    let err = unpack(
        &format!("docker-archive:{}", oci.display()),
        &s.path().join("nm"),
        None,
    )
    .unwrap_err();
    assert!(err.contains("missing manifest manifest.json"), "{err}");
}

#[test]
fn unpadded_layer_tar_like_umoci_writes() {
    // umoci 0.4.7 ends a layer right after the last entry's data: no
    // padding, no end-of-archive blocks. The DiffID is of those bytes.
    require_root();
    let s = Scratch::new("unpadded");
    let l = Layout::new(&s.path().join("img"));
    let mut t = tar(&[E::file("a", b"first"), E::file("b", b"last!")]);
    t.truncate(512 * 3 + 5);
    // And one cut inside the last file's data: more than padding missing.
    let mut cut = tar(&[E::file("c", vec![b'c'; 2000])]);
    cut.truncate(512 + 1000);
    for (tars, ok) in [(vec![t], true), (vec![cut], false)] {
        let (m, _) = l.image(&tars, Comp::Gzip, "amd64");
        l.index(&[(m, None)]);
        let dest = s.path().join(format!("b{ok}"));
        let res = unpack(&format!("oci:{}", l.dir.display()), &dest, None);
        assert_eq!(res.is_ok(), ok, "{res:?}");
        if ok {
            assert_eq!(fs::read(dest.join("rootfs/b")).unwrap(), b"last!");
        } else {
            assert!(res.unwrap_err().contains("truncated"));
        }
    }
}

#[test]
fn passwd_is_read_in_root_only() {
    require_root();
    let s = Scratch::new("passwd");
    // A host file the image points at: must never be consulted.
    let host = s.path().join("host-passwd");
    fs::write(&host, "app:x:4242:4242::/h:/bin/sh\n").unwrap();
    let cases: Vec<(&str, Vec<E>, &str)> = vec![
        (
            "symlink to host path",
            vec![
                E::dir("etc"),
                E::symlink("etc/passwd", host.to_str().unwrap()),
            ],
            "unable to find user \"app\"",
        ),
        (
            "symlink with ..",
            vec![
                E::dir("etc"),
                E::symlink("etc/passwd", "../../../../host-passwd"),
            ],
            "unable to find user \"app\"",
        ),
        (
            "fifo",
            vec![E::dir("etc"), E::node("etc/passwd", b'6', 0, 0)],
            "not a regular file",
        ),
        (
            "char device",
            vec![E::dir("etc"), E::node("etc/passwd", b'3', 1, 5)],
            "not a regular file",
        ),
    ];
    for (name, entries, want) in cases {
        let l = Layout::new(&s.path().join(format!("img-{}", name.replace(' ', "-"))));
        let t = tar(&entries);
        let l0 = l.blob("application/vnd.oci.image.layer.v1.tar", &t);
        let cfg = l.config(
            std::slice::from_ref(&t),
            "amd64",
            json!({"config": {"User": "app", "Cmd": ["/bin/sh"]}}),
        );
        let c = l.blob(
            "application/vnd.oci.image.config.v1+json",
            &serde_json::to_vec(&cfg).unwrap(),
        );
        let m = l.manifest(c, &[l0]);
        l.index(&[(m, None)]);
        let err = unpack(
            &format!("oci:{}", l.dir.display()),
            &s.path().join(format!("b-{}", name.replace(' ', "-"))),
            None,
        )
        .unwrap_err();
        assert!(err.contains(want), "{name}: {err}");
    }
}

#[test]
fn docker_archive_hostile_manifest() {
    require_root();
    let s = Scratch::new("docker-hostile");
    let tars = vec![tar(&[E::file("x", b"x")])];
    let cfg = Layout::new(&s.path().join("tmp")).config(&tars, "amd64", json!({}));
    let cfg_bytes = serde_json::to_vec(&cfg).unwrap();
    let cfg_hex = sha256_hex(&cfg_bytes);
    let cases = [
        // Paths are keys into the archive's member map, never host paths.
        ("../../../../etc/passwd", "missing layer etc/passwd"),
        ("/etc/passwd", "missing layer etc/passwd"),
        // A symlink loop between members ends with an error, not a hang.
        ("loop/a", "too many levels"),
    ];
    for (layer, want) in cases {
        let path = s.path().join("a.tar");
        let manifest =
            json!([{"Config": format!("{cfg_hex}.json"), "RepoTags": [], "Layers": [layer]}]);
        archive(
            &path,
            &[
                (format!("{cfg_hex}.json"), cfg_bytes.clone()),
                (
                    "manifest.json".into(),
                    serde_json::to_vec(&manifest).unwrap(),
                ),
            ],
            &[("loop/a".into(), "b".into()), ("loop/b".into(), "a".into())],
        );
        let err = unpack(
            &format!("docker-archive:{}", path.display()),
            &s.path().join("b"),
            None,
        )
        .unwrap_err();
        assert!(err.contains(want), "{layer}: {err}");
    }
    // Members hidden from Go's archive/tar (Docker, skopeo) behind a
    // directory entry with a size, and a second manifest.json: berth would
    // load another image than the tool that checked the archive.
    let good = [
        (format!("{cfg_hex}.json"), cfg_bytes.clone()),
        ("l.tar".into(), tars[0].clone()),
        (
            "manifest.json".into(),
            serde_json::to_vec(
                &json!([{"Config": format!("{cfg_hex}.json"), "Layers": ["l.tar"]}]),
            )
            .unwrap(),
        ),
    ];
    let mut pad = E::dir("pad");
    pad.data = vec![0; 1024];
    let mut entries: Vec<E> = good.iter().map(|(n, d)| E::file(n, d)).collect();
    entries.push(pad);
    entries.push(E::file("manifest.json", b"[]"));
    let hiding = s.path().join("hiding.tar");
    fs::write(&hiding, tar(&entries)).unwrap();
    let mut entries: Vec<E> = good.iter().map(|(n, d)| E::file(n, d)).collect();
    entries.push(E::file("./manifest.json", b"[]"));
    let twice = s.path().join("twice.tar");
    fs::write(&twice, tar(&entries)).unwrap();
    for (path, want) in [
        (
            &hiding,
            r#"member "pad": a directory entry with 1024 bytes of data"#,
        ),
        (
            &twice,
            r#"member "manifest.json": appears twice in the archive"#,
        ),
    ] {
        let err = unpack(
            &format!("docker-archive:{}", path.display()),
            &s.path().join("d"),
            None,
        )
        .unwrap_err();
        assert!(err.contains(want), "{err}");
        assert!(!s.path().join("d").exists());
    }
    // A config whose name carries a digest is verified against it.
    let path = s.path().join("c.tar");
    let manifest = json!([{"Config": format!("{}.json", "0".repeat(64)), "Layers": ["l.tar"]}]);
    archive(
        &path,
        &[
            (format!("{}.json", "0".repeat(64)), cfg_bytes.clone()),
            ("l.tar".into(), tars[0].clone()),
            (
                "manifest.json".into(),
                serde_json::to_vec(&manifest).unwrap(),
            ),
        ],
        &[],
    );
    let err = unpack(
        &format!("docker-archive:{}", path.display()),
        &s.path().join("c"),
        None,
    )
    .unwrap_err();
    assert!(err.contains("does not match its digest"), "{err}");
}

/// zstd with a window above the decoder's 128 MiB limit (what `zstd
/// --long=30` writes for a stream of unknown size): refused, and the
/// message says why and how to recompress, not "corrupt". The first
/// frame's window is read before decoding; a later frame's shows only as
/// the decoder's refusal.
#[test]
fn zstd_window_above_the_limit_is_named() {
    use std::io::Write;
    require_root();
    let frame = |data: &[u8], window_log: Option<u32>| {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        if let Some(log) = window_log {
            enc.window_log(log).unwrap();
        }
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    };
    let t = tar(&[E::file("f", vec![b'z'; 300_000])]);
    let (head, rest) = t.split_at(100_000);
    let cases = [
        // One frame asking for 256 MiB.
        (
            frame(&t, Some(28)),
            "a zstd frame needs a 256 MiB window, above the 128 MiB",
        ),
        // A good first frame, then one asking for 1 GiB.
        (
            [frame(head, None), frame(rest, Some(30))].concat(),
            "a zstd frame needs a window above the 128 MiB",
        ),
    ];
    for (blob, want) in cases {
        for execution in [
            berth_bundles::Execution::Inline,
            berth_bundles::Execution::Threaded,
        ] {
            let s = Scratch::new("zwindow");
            let l = Layout::new(&s.path().join("img"));
            let layer = l.blob("application/vnd.oci.image.layer.v1.tar+zstd", &blob);
            let cfg = l.config(std::slice::from_ref(&t), "amd64", json!({}));
            let cfg = l.blob(
                "application/vnd.oci.image.config.v1+json",
                &serde_json::to_vec(&cfg).unwrap(),
            );
            let m = l.manifest(cfg, std::slice::from_ref(&layer));
            l.index(&[(m, Some("v1"))]);
            let r = ImageRef::parse(&format!("oci:{}:v1", l.dir.display())).unwrap();
            let opts = UnpackOptions {
                layer: berth_bundles::LayerOptions {
                    execution,
                    ..Default::default()
                },
                ..Default::default()
            };
            let err = unpack_bundle(&r, &s.path().join("b"), opts).unwrap_err();
            let msg = chain(&err);
            assert!(msg.contains(want), "{execution:?}: {msg}");
            assert!(msg.contains("recompress the layer without --long"), "{msg}");
            assert!(!msg.contains("corrupt"), "{msg}");
        }
    }
}

/// Opens an image (index, manifest and config read and verified, no
/// layer read): the error as one line.
fn open(image: &str, platform: Option<&str>) -> Result<berth_bundles::Image, String> {
    let r = ImageRef::parse(image).map_err(|e| chain(&e))?;
    let platform = platform
        .map(|p| Platform::parse(p).unwrap())
        .unwrap_or_default();
    berth_bundles::Image::open(&r, &platform).map_err(|e| chain(&e))
}

/// The JSON document a descriptor points at.
fn document(l: &Layout, desc: &serde_json::Value) -> serde_json::Value {
    serde_json::from_slice(&fs::read(l.blob_path(desc)).unwrap()).unwrap()
}

/// Stores `doc` as a blob under a descriptor of media type `mt`.
fn store(l: &Layout, mt: &str, doc: &serde_json::Value) -> serde_json::Value {
    l.blob(mt, &serde_json::to_vec(doc).unwrap())
}

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A manifest that also lists `manifests` reads as an index to another
/// tool: two images under one digest (CVE-2021-41190). Refused, whether
/// its own mediaType says manifest, says nothing, or says index (then as
/// a mediaType its descriptor does not give it).
#[test]
fn manifest_that_is_also_an_index_is_refused() {
    let s = Scratch::new("ambig-manifest");
    let l = Layout::new(&s.path().join("img"));
    let (m, _) = l.image(&sample_layers(), Comp::Gzip, "amd64");
    let (other, _) = l.image(&[tar(&[E::file("other", "o")])], Comp::Gzip, "amd64");
    let img = format!("oci:{}", l.dir.display());
    // With its own mediaType (a manifest's, as written) and without.
    for own_type in [true, false] {
        let mut doc = document(&l, &m);
        doc["manifests"] = json!([other]);
        if !own_type {
            doc.as_object_mut().unwrap().remove("mediaType");
        }
        let both = store(&l, OCI_MANIFEST, &doc);
        l.index(&[(both.clone(), None)]);
        let err = open(&img, None).expect_err("ambiguous manifest accepted");
        let want = format!(
            "manifest {} is also an index (it has \"manifests\")",
            both["digest"].as_str().unwrap()
        );
        assert!(err.contains(&want), "{err}");
    }
    // The reviewer's shape: mediaType and `manifests` of an index, the
    // config and layers of a manifest, reached as a manifest.
    let mut doc = document(&l, &m);
    doc["mediaType"] = json!(OCI_INDEX);
    doc["manifests"] = json!([other]);
    let both = store(&l, OCI_MANIFEST, &doc);
    l.index(&[(both.clone(), None)]);
    let err = open(&img, None).expect_err("ambiguous manifest accepted");
    let want = format!(
        "manifest {} has mediaType \"{OCI_INDEX}\", but its descriptor says \"{OCI_MANIFEST}\"",
        both["digest"].as_str().unwrap()
    );
    assert!(err.contains(&want), "{err}");
}

/// An index that also has a manifest's `config` and `layers`: refused,
/// nested or as the layout's index.json.
#[test]
fn index_that_is_also_a_manifest_is_refused() {
    let s = Scratch::new("ambig-index");
    let l = Layout::new(&s.path().join("img"));
    let (m, _) = l.image(&sample_layers(), Comp::Gzip, "amd64");
    let manifest = document(&l, &m);
    let img = format!("oci:{}", l.dir.display());
    let idx = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [m],
        "config": manifest["config"], "layers": manifest["layers"]});
    let both = store(&l, OCI_INDEX, &idx);
    l.index(&[(both.clone(), None)]);
    let err = open(&img, None).expect_err("ambiguous index accepted");
    let want = format!(
        "index {} is also a manifest (it has \"config\" and \"layers\")",
        both["digest"].as_str().unwrap()
    );
    assert!(err.contains(&want), "{err}");
    // One of the two is enough.
    let mut idx = idx.clone();
    idx.as_object_mut().unwrap().remove("config");
    let both = store(&l, OCI_INDEX, &idx);
    l.index(&[(both.clone(), None)]);
    let err = open(&img, None).expect_err("ambiguous index accepted");
    assert!(
        err.contains("is also a manifest (it has \"layers\")"),
        "{err}"
    );
    // The layout's own index.json.
    let top = json!({"schemaVersion": 2, "manifests": [m], "layers": []});
    fs::write(l.dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    let err = open(&img, None).expect_err("ambiguous index.json accepted");
    assert!(
        err.contains("index index.json is also a manifest (it has \"layers\")"),
        "{err}"
    );
}

/// An index must have schemaVersion 2, as a manifest must.
#[test]
fn index_schema_version_other_than_2_is_refused() {
    let s = Scratch::new("index-schema");
    let l = Layout::new(&s.path().join("img"));
    let (m, _) = l.image(&sample_layers(), Comp::Gzip, "amd64");
    let img = format!("oci:{}", l.dir.display());
    let nested = store(
        &l,
        OCI_INDEX,
        &json!({"schemaVersion": 1, "manifests": [m]}),
    );
    l.index(&[(nested.clone(), None)]);
    let err = open(&img, None).expect_err("schemaVersion 1 accepted");
    let want = format!(
        "index {} has schemaVersion 1",
        nested["digest"].as_str().unwrap()
    );
    assert!(err.contains(&want), "{err}");
    let top = json!({"schemaVersion": 1, "manifests": [m]});
    fs::write(l.dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    let err = open(&img, None).expect_err("schemaVersion 1 accepted");
    assert!(
        err.contains("index index.json has schemaVersion 1"),
        "{err}"
    );
}

/// A document's own mediaType must be the one its descriptor gives it,
/// also within one kind (a Docker manifest behind an OCI descriptor), and
/// index.json's must be an index's.
#[test]
fn document_media_type_must_match_its_descriptor() {
    let s = Scratch::new("doc-media-type");
    let l = Layout::new(&s.path().join("img"));
    let (m, _) = l.image(&sample_layers(), Comp::Gzip, "amd64");
    let img = format!("oci:{}", l.dir.display());
    let docker_manifest = "application/vnd.docker.distribution.manifest.v2+json";
    let mut doc = document(&l, &m);
    doc["mediaType"] = json!(docker_manifest);
    let odd = store(&l, OCI_MANIFEST, &doc);
    l.index(&[(odd.clone(), None)]);
    let err = open(&img, None).expect_err("mismatched mediaType accepted");
    let want = format!(
        "manifest {} has mediaType \"{docker_manifest}\", but its descriptor says \"{OCI_MANIFEST}\"",
        odd["digest"].as_str().unwrap()
    );
    assert!(err.contains(&want), "{err}");
    // A nested index that calls itself a manifest.
    let idx = store(
        &l,
        OCI_INDEX,
        &json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "manifests": [m]}),
    );
    l.index(&[(idx.clone(), None)]);
    let err = open(&img, None).expect_err("mismatched mediaType accepted");
    let want = format!(
        "index {} has mediaType \"{OCI_MANIFEST}\", but its descriptor says \"{OCI_INDEX}\"",
        idx["digest"].as_str().unwrap()
    );
    assert!(err.contains(&want), "{err}");
    let top = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "manifests": [m]});
    fs::write(l.dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    let err = open(&img, None).expect_err("mismatched mediaType accepted");
    assert!(
        err.contains(&format!(
            "index index.json has mediaType \"{OCI_MANIFEST}\", not an image index's"
        )),
        "{err}"
    );
}

/// Docker's schema2 manifest list and manifest in a layout (as buildx and
/// Docker's containerd store write them), their own mediaTypes given, and
/// OCI documents that omit theirs, still open.
#[test]
fn docker_schema2_and_untyped_documents_still_open() {
    let s = Scratch::new("docker-types");
    let l = Layout::new(&s.path().join("img"));
    let tars = sample_layers();
    let layers: Vec<serde_json::Value> = tars
        .iter()
        .map(|t| {
            l.blob(
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                &common::gzip(t),
            )
        })
        .collect();
    let cfg = l.config(&tars, "amd64", json!({}));
    let cfg = store(&l, "application/vnd.docker.container.image.v1+json", &cfg);
    let manifest_type = "application/vnd.docker.distribution.manifest.v2+json";
    let list_type = "application/vnd.docker.distribution.manifest.list.v2+json";
    let mut m = store(
        &l,
        manifest_type,
        &json!({"schemaVersion": 2, "mediaType": manifest_type, "config": cfg, "layers": layers}),
    );
    m["platform"] = json!({"os": "linux", "architecture": "amd64"});
    let list = store(
        &l,
        list_type,
        &json!({"schemaVersion": 2, "mediaType": list_type, "manifests": [m]}),
    );
    l.index(&[(list, Some("docker"))]);
    let image = open(&format!("oci:{}:docker", l.dir.display()), None).unwrap();
    assert_eq!(image.layers.len(), 2);
    // OCI documents without a mediaType of their own (older tools).
    let (m, _) = l.image(&tars, Comp::Gzip, "amd64");
    let mut doc = document(&l, &m);
    doc.as_object_mut().unwrap().remove("mediaType");
    let bare = store(&l, OCI_MANIFEST, &doc);
    let idx = store(
        &l,
        OCI_INDEX,
        &json!({"schemaVersion": 2, "manifests": [bare]}),
    );
    l.index(&[(idx, Some("bare"))]);
    open(&format!("oci:{}:bare", l.dir.display()), None).unwrap();
}

/// Text from the image (tags, platforms, archive member names) reaches
/// messages and `inspect` with its control characters escaped: a newline
/// would forge a `berth-build unpack: …` line, an escape sequence would
/// talk to the terminal.
#[test]
fn control_characters_from_the_image_are_escaped() {
    const EVIL: &str = "x\nberth-build unpack: forged\x1b[31mred";
    let escaped = |what: &str, text: &str| {
        assert!(
            !text.chars().any(char::is_control),
            "{what}: raw control characters in {text:?}"
        );
        assert!(
            text.contains(r"x\nberth-build unpack: forged\u{1b}[31mred"),
            "{what}: {text}"
        );
    };
    let s = Scratch::new("ctrl");
    let l = Layout::new(&s.path().join("img"));
    let base = format!("oci:{}", l.dir.display());
    // Tags of index.json.
    let (a, _) = l.image(&sample_layers(), Comp::Gzip, "amd64");
    let (b, _) = l.image(&[tar(&[E::file("t", "b")])], Comp::Gzip, "amd64");
    l.index(&[(a.clone(), Some(EVIL)), (b, Some("b"))]);
    escaped(
        "tag list",
        &open(&format!("{base}:nope"), None).unwrap_err(),
    );
    escaped("untagged choice", &open(&base, None).unwrap_err());
    // The config's variant: what inspect and unpack print, and the
    // mismatch error.
    let tars = vec![tar(&[E::file("f", "x")])];
    let layer = l.blob("application/vnd.oci.image.layer.v1.tar", &tars[0]);
    let cfg = l.config(&tars, "amd64", json!({"variant": EVIL}));
    let cfg = store(&l, "application/vnd.oci.image.config.v1+json", &cfg);
    let m = l.manifest(cfg, &[layer]);
    l.index(&[(m.clone(), None)]);
    let image = open(&base, None).unwrap();
    escaped("platform", &image.platform.to_string());
    escaped(
        "wrong platform",
        &open(&base, Some("linux/arm64")).unwrap_err(),
    );
    // The platforms an index offers.
    let mut entry = m.clone();
    entry["platform"] = json!({"os": "linux", "architecture": "amd64", "variant": EVIL});
    let idx = store(
        &l,
        OCI_INDEX,
        &json!({"schemaVersion": 2, "manifests": [entry]}),
    );
    l.index(&[(idx, None)]);
    escaped(
        "available platforms",
        &open(&base, Some("linux/riscv64")).unwrap_err(),
    );
    // A docker-archive's RepoTags and member names.
    let cfg = l.config(&tars, "amd64", json!({}));
    let cfg_bytes = serde_json::to_vec(&cfg).unwrap();
    let cfg_name = format!("{}.json", sha256_hex(&cfg_bytes));
    let path = s.path().join("a.tar");
    let manifest = json!([
        {"Config": cfg_name, "RepoTags": [EVIL], "Layers": ["l.tar"]},
        {"Config": cfg_name, "RepoTags": ["b:1"], "Layers": [EVIL]},
    ]);
    archive(
        &path,
        &[
            (cfg_name.clone(), cfg_bytes),
            ("l.tar".into(), tars[0].clone()),
            (
                "manifest.json".into(),
                serde_json::to_vec(&manifest).unwrap(),
            ),
        ],
        &[],
    );
    let archive_ref = format!("docker-archive:{}", path.display());
    escaped("archive tags", &open(&archive_ref, None).unwrap_err());
    let err = open(&format!("{archive_ref}:b:1"), None).unwrap_err();
    assert!(err.contains("missing layer"), "{err}");
    escaped("archive member", &err);
}
