//! The fuzz entry points, driven with random and crafted bytes (cargo-fuzz
//! needs nightly; these runs keep the entry points exercised on stable),
//! plus a randomised escape test: random layers built from a hostile
//! vocabulary never change anything outside the root.

mod common;

use std::fs;

use berth_bundles::apply::Rootfs;
use berth_bundles::fuzz::{fuzz_image_json, fuzz_tar_headers};
use common::{E, Scratch, require_root, snapshot, tar};

/// xorshift64*: deterministic, seeded per test.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn seed_tars() -> Vec<Vec<u8>> {
    vec![
        tar(&[
            E::dir("a"),
            E::file("a/b", b"hello"),
            E::symlink("l", "/etc"),
            E::hardlink("h", "a/b"),
        ]),
        tar(&[
            E::file(format!("{}/x", "p".repeat(130)), b"pax"),
            E::file("g".repeat(140), b"gnu").gnu(),
        ]),
        tar(&[
            E::file("x", b"1")
                .pax("SCHILY.xattr.user.a", b"v")
                .pax("mtime", "1.5"),
            E::whiteout("a/.wh..wh..opq"),
        ]),
        tar(&[E::node("n", b'3', 1, 3), E::node("f", b'6', 0, 0)]),
        // Sparse files, PAX 0.1 and 1.0 (the map in the data).
        tar(&[
            E::file("GNUSparseFile.0/s", b"abcdefgh")
                .pax("GNU.sparse.major", "0")
                .pax("GNU.sparse.minor", "1")
                .pax("GNU.sparse.name", "s")
                .pax("GNU.sparse.size", "100")
                .pax("GNU.sparse.numblocks", "2")
                .pax("GNU.sparse.map", "0,4,96,4"),
            E::file("GNUSparseFile.0/t", {
                let mut d = b"2\n0\n4\n96\n4\n".to_vec();
                d.resize(512, 0);
                d.extend_from_slice(b"abcdefgh");
                d
            })
            .pax("GNU.sparse.major", "1")
            .pax("GNU.sparse.minor", "0")
            .pax("GNU.sparse.name", "t")
            .pax("GNU.sparse.realsize", "100"),
        ]),
    ]
}

#[test]
fn fuzz_entry_points_random_bytes() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..3000 {
        let n = rng.below(2048);
        let data = rng.bytes(n);
        let _ = fuzz_tar_headers(&data);
        fuzz_image_json(&data);
    }
}

#[test]
fn fuzz_tar_headers_mutated_archives() {
    let mut rng = Rng(42);
    let seeds = seed_tars();
    for s in &seeds {
        assert!(fuzz_tar_headers(s).unwrap() >= 2, "seed must parse");
    }
    for _ in 0..4000 {
        let mut data = seeds[rng.below(seeds.len())].clone();
        match rng.below(3) {
            0 => {
                for _ in 0..1 + rng.below(8) {
                    let i = rng.below(data.len());
                    data[i] = rng.next() as u8;
                }
            }
            1 => {
                // Mutate header fields only (first block of some member),
                // keeping the checksum wrong or right at random.
                let block = rng.below(data.len() / 512) * 512;
                let i = block + rng.below(345);
                data[i] = b"0123456789 \0/.x"[rng.below(15)];
            }
            _ => {
                let keep = rng.below(data.len());
                data.truncate(keep);
            }
        }
        let _ = fuzz_tar_headers(&data);
    }
}

#[test]
fn fuzz_image_json_mutated_documents() {
    let mut rng = Rng(7);
    let seeds: Vec<Vec<u8>> = vec![
        br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1,"platform":{"os":"linux","architecture":"aarch64","variant":"8"}}]}"#.to_vec(),
        br#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:../../x","size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"sha256:1","size":3}]}"#.to_vec(),
        br#"{"architecture":"amd64","os":"linux","config":{"User":"app:app","Env":["A=1","=bad"],"Entrypoint":null,"Cmd":["sh"],"WorkingDir":"rel","ExposedPorts":{"80/tcp":{}},"Volumes":{"/v":{}},"Labels":{"a":"b"}},"rootfs":{"type":"layers","diff_ids":["sha256:x"]}}"#.to_vec(),
        b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\napp:x:1000:root,app\n".to_vec(),
    ];
    for _ in 0..4000 {
        let mut data = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(data.len());
            match rng.below(3) {
                0 => data[i] = rng.next() as u8,
                1 => data[i] = b"{}[]\":,0-9a"[rng.below(11)],
                _ => {
                    data.remove(i);
                }
            }
        }
        fuzz_image_json(&data);
    }
}

#[test]
fn random_hostile_layers_never_escape() {
    require_root();
    let mut rng = Rng(1234);
    let s = Scratch::new("fuzz-escape");
    let t = s.path();
    fs::create_dir_all(t.join("sentinel/d")).unwrap();
    fs::write(t.join("sentinel/f"), b"keep").unwrap();
    let sentinel = t.join("sentinel").to_str().unwrap().to_string();
    let parts = [
        "..",
        ".",
        "a",
        "b",
        "lnk",
        "sentinel",
        "f",
        "d",
        ".wh.a",
        ".wh..wh..opq",
        ".wh..",
        "",
        "/",
    ];
    let targets = [
        "..".to_string(),
        "../..".to_string(),
        "/".to_string(),
        sentinel.clone(),
        format!("{sentinel}/f"),
        "../sentinel".to_string(),
        "a".to_string(),
        "lnk/f".to_string(),
    ];
    let before = snapshot(&t.join("sentinel"));
    for round in 0..150 {
        let root = t.join(format!("root{round}"));
        fs::create_dir(&root).unwrap();
        let rootfs = Rootfs::open(&root).unwrap();
        for _layer in 0..3 {
            let mut entries = Vec::new();
            for _ in 0..1 + rng.below(10) {
                let depth = 1 + rng.below(4);
                let name: Vec<&str> = (0..depth).map(|_| parts[rng.below(parts.len())]).collect();
                let name = name.join("/");
                let target = &targets[rng.below(targets.len())];
                let e = match rng.below(6) {
                    0 => E::file(&name, b"evil").mode(0o4777),
                    1 => E::dir(&name).mode(0o777),
                    2 => E::symlink(&name, target),
                    3 => E::hardlink(&name, target),
                    4 => E::node(&name, b'6', 0, 0),
                    _ => E::whiteout(&name),
                };
                entries.push(e);
            }
            // Errors are fine; escapes and panics are not.
            let _ = rootfs.apply_layer(&tar(&entries)[..]);
        }
        assert_eq!(
            before,
            snapshot(&t.join("sentinel")),
            "round {round} changed the sentinel"
        );
    }
    let outside: Vec<_> = fs::read_dir(t)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        outside
            .iter()
            .all(|n| n == "sentinel" || n.to_string_lossy().starts_with("root")),
        "stray entries next to the roots: {outside:?}"
    );
}
