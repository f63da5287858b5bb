//! Sparse files in layers, as GNU tar writes them in each of its four
//! formats (old GNU `S`, PAX 0.0, 0.1 and 1.0), unpacked by berth: the
//! contents byte for byte, the real size, holes that stay holes, the
//! metadata of a regular file and hardlinks to it. Then hand-made
//! malformed maps, refused by name with nothing written outside the root,
//! and the same tree as `umoci raw unpack` makes of a sparse layer.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_bundles::apply::{ApplyError, Rootfs};
use berth_bundles::{Execution, ImageRef, UnpackOptions, unpack_bundle};
use common::{E, Node, Scratch, chain, require_root, require_tool, run, sh, snapshot, tar};

const MIB: u64 = 1 << 20;

/// `src/` with three sparse files, `holes` (10 MiB, data at 12 KiB, at
/// 5 MiB + 100, and a hole at its end), `ends` (3 MiB, data at its
/// start and at its very end) and `many` (30 chunks: old GNU extension
/// blocks), one hardlink, and metadata to carry.
fn sparse_tree(t: &Path) -> PathBuf {
    require_tool("tar", "tar");
    require_tool("truncate", "coreutils");
    let src = t.join("src");
    let d = src.display();
    sh(&format!(
        "mkdir -p {d}/dir
         truncate -s 10M {d}/dir/holes
         head -c 8192 /dev/urandom | dd of={d}/dir/holes bs=4096 seek=3 conv=notrunc status=none
         printf 'middle' | dd of={d}/dir/holes bs=1 seek=$((5*1024*1024+100)) conv=notrunc status=none
         truncate -s 3M {d}/ends
         head -c 5000 /dev/urandom | dd of={d}/ends conv=notrunc status=none
         printf 'last' | dd of={d}/ends bs=1 seek=$((3*1024*1024-4)) conv=notrunc status=none
         truncate -s 2M {d}/many
         for i in $(seq 0 29); do printf x | dd of={d}/many bs=1 seek=$((i*65536+7)) conv=notrunc status=none; done
         ln {d}/dir/holes {d}/hardlink
         chown 1000:1001 {d}/dir/holes && chmod 4750 {d}/dir/holes
         touch -d @1600000000 {d}/dir/holes {d}/ends {d}/many"
    ));
    rustix::fs::setxattr(
        src.join("ends"),
        "user.berth",
        b"sparse",
        rustix::fs::XattrFlags::empty(),
    )
    .expect("setxattr user.berth on the test filesystem");
    src
}

/// GNU tar's arguments for each sparse format.
const FORMATS: [(&str, &[&str]); 4] = [
    ("gnu", &["--format=gnu"]),
    ("pax-0.0", &["--format=posix", "--sparse-version=0.0"]),
    ("pax-0.1", &["--format=posix", "--sparse-version=0.1"]),
    ("pax-1.0", &["--format=posix", "--sparse-version=1.0"]),
];

fn gnu_tar(src: &Path, out: &Path, args: &[&str]) {
    run(Command::new("tar")
        .arg("--sparse")
        .args(args)
        .arg("--numeric-owner")
        .arg("--no-recursion")
        // PAX headers for xattrs would make GNU tar write a PAX sparse
        // format even with --format=gnu.
        .args(if args[0] == "--format=gnu" {
            &[][..]
        } else {
            &["--xattrs", "--xattrs-include=user.*"][..]
        })
        .arg("-C")
        .arg(src)
        .arg("-cf")
        .arg(out)
        .args(["dir", "dir/holes", "ends", "many", "hardlink"]));
}

/// The archive holds sparse members of the format asked for (so the test
/// tests what it says).
fn assert_format(tar: &[u8], format: &str) {
    let has = |needle: &[u8]| tar.windows(needle.len()).any(|w| w == needle);
    match format {
        "gnu" => {
            let headers = tar
                .chunks(512)
                .filter(|h| h.len() == 512 && h[156] == b'S' && &h[257..265] == b"ustar  \0");
            // One of them with extension blocks (isextended).
            let n = headers.clone().count();
            assert!(n == 3, "{n} S members, not 3");
            assert!(headers.into_iter().any(|h| h[482] == 1), "no isextended");
        }
        "pax-0.0" => assert!(has(b"GNU.sparse.offset=")),
        "pax-0.1" => assert!(has(b"GNU.sparse.map=")),
        _ => assert!(has(b"GNU.sparse.major=1") && has(b"GNUSparseFile.")),
    }
}

fn allocated(p: &Path) -> u64 {
    fs::metadata(p).unwrap().blocks() * 512
}

#[test]
fn gnu_tar_sparse_formats_unpack_with_holes() {
    require_root();
    let scratch = Scratch::new("sparse");
    let t = scratch.path();
    let src = sparse_tree(t);
    // Holes must be possible here for the check to mean anything.
    assert!(
        allocated(&src.join("dir/holes")) < MIB,
        "the test filesystem at {} keeps no holes",
        t.display()
    );
    for (format, args) in FORMATS {
        let layer = t.join(format!("{format}.tar"));
        gnu_tar(&src, &layer, args);
        let bytes = fs::read(&layer).unwrap();
        assert_format(&bytes, format);
        let root = t.join(format!("root-{format}"));
        fs::create_dir(&root).unwrap();
        let stats = Rootfs::open(&root)
            .unwrap()
            .apply_layer(&bytes[..])
            .unwrap_or_else(|e| panic!("{format}: {}", chain(&e)));
        for name in ["dir/holes", "ends", "many", "hardlink"] {
            let (want, got) = (src.join(name), root.join(name));
            let (wm, gm) = (fs::metadata(&want).unwrap(), fs::metadata(&got).unwrap());
            assert_eq!(gm.len(), wm.len(), "{format} {name}: size");
            assert!(
                fs::read(&got).unwrap() == fs::read(&want).unwrap(),
                "{format} {name}: contents differ"
            );
            // Holes stay holes: a few blocks of data, not megabytes.
            assert!(
                allocated(&got) <= 256 * 1024,
                "{format} {name}: {} bytes allocated for {} of data",
                allocated(&got),
                allocated(&want)
            );
            assert_eq!(gm.mode(), wm.mode(), "{format} {name}: mode");
            assert_eq!(
                (gm.uid(), gm.gid()),
                (wm.uid(), wm.gid()),
                "{format} {name}"
            );
            assert_eq!(gm.mtime(), 1_600_000_000, "{format} {name}: mtime");
        }
        // The hardlink is the sparse file itself.
        let (a, b) = (root.join("dir/holes"), root.join("hardlink"));
        assert_eq!(
            fs::metadata(a).unwrap().ino(),
            fs::metadata(b).unwrap().ino()
        );
        // Only the real names: no GNUSparseFile.PID placeholder.
        let names: Vec<_> = snapshot(&root).into_keys().collect();
        assert_eq!(
            names,
            ["", "dir", "dir/holes", "ends", "hardlink", "many"].map(PathBuf::from),
            "{format}"
        );
        if format != "gnu" {
            let mut value = [0u8; 16];
            let n = rustix::fs::getxattr(root.join("ends"), "user.berth", &mut value[..])
                .unwrap_or_else(|e| panic!("{format}: user.berth: {e}"));
            assert_eq!(&value[..n], b"sparse", "{format}: xattr");
        }
        // Only the chunks were written: at most the data GNU tar stored.
        assert!(stats.bytes <= 256 * 1024, "{format}: {} bytes", stats.bytes);
        // The layer reader follows maps and chunks however the stream is
        // cut: 7 bytes a read gives the same files.
        let trickled = t.join(format!("trickle-{format}"));
        fs::create_dir(&trickled).unwrap();
        Rootfs::open(&trickled)
            .unwrap()
            .apply_layer(Trickle(&bytes[..]))
            .unwrap_or_else(|e| panic!("{format} trickled: {}", chain(&e)));
        for name in ["dir/holes", "ends", "many"] {
            assert!(
                fs::read(trickled.join(name)).unwrap() == fs::read(src.join(name)).unwrap(),
                "{format} {name}: trickled contents differ"
            );
        }
    }
}

/// A reader that gives at most 7 bytes a read.
struct Trickle<'a>(&'a [u8]);

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(7).min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

/// A sparse file over a lower layer's file, then whited out by a third
/// layer: the rules of a regular file.
#[test]
fn sparse_files_follow_the_whiteout_rules() {
    require_root();
    let scratch = Scratch::new("sparse-wh");
    let t = scratch.path();
    let src = sparse_tree(t);
    let layer = t.join("l.tar");
    gnu_tar(&src, &layer, FORMATS[3].1);
    let root = t.join("root");
    fs::create_dir(&root).unwrap();
    let rootfs = Rootfs::open(&root).unwrap();
    rootfs
        .apply_layer(&tar(&[E::dir("dir"), E::file("dir/holes", b"lower")])[..])
        .unwrap();
    rootfs.apply_layer(fs::File::open(&layer).unwrap()).unwrap();
    assert_eq!(
        fs::metadata(root.join("dir/holes")).unwrap().len(),
        10 * MIB
    );
    rootfs
        .apply_layer(&tar(&[E::file("dir/.wh.holes", b"")])[..])
        .unwrap();
    assert!(!root.join("dir/holes").exists());
    assert!(root.join("hardlink").exists());
}

/// A header block's checksum, after a change.
fn set_cksum(h: &mut [u8]) {
    h[148..156].fill(b' ');
    let sum: u32 = h[..512].iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// An old GNU sparse member, by hand: `map` of (offset, length), real
/// size, the data GNU tar would store, and `isextended` blocks as needed
/// (the header holds 4 entries, an extension block 21).
fn old_gnu(name: &str, real_size: u64, map: &[(u64, u64)], data_len: u64) -> Vec<u8> {
    let field = |v: u64| format!("{v:011o}\0").into_bytes();
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(&field(data_len));
    h[136..148].copy_from_slice(&field(1_600_000_000));
    h[156] = b'S';
    h[257..265].copy_from_slice(b"ustar  \0");
    h[483..495].copy_from_slice(&field(real_size));
    let mut blocks = vec![];
    for (i, (off, len)) in map.iter().take(4).enumerate() {
        h[386 + i * 24..398 + i * 24].copy_from_slice(&field(*off));
        h[398 + i * 24..410 + i * 24].copy_from_slice(&field(*len));
    }
    let rest: Vec<_> = map.iter().skip(4).collect();
    h[482] = u8::from(!rest.is_empty());
    for (n, group) in rest.chunks(21).enumerate() {
        let mut b = [0u8; 512];
        for (i, (off, len)) in group.iter().enumerate() {
            b[i * 24..i * 24 + 12].copy_from_slice(&field(*off));
            b[i * 24 + 12..i * 24 + 24].copy_from_slice(&field(*len));
        }
        b[504] = u8::from((n + 1) * 21 < rest.len());
        blocks.extend_from_slice(&b);
    }
    set_cksum(&mut h);
    let mut out = h.to_vec();
    out.extend_from_slice(&blocks);
    out.extend(std::iter::repeat_n(b'd', data_len as usize));
    out.resize(out.len().next_multiple_of(512), 0);
    out
}

fn end(mut tar: Vec<u8>) -> Vec<u8> {
    tar.extend_from_slice(&[0; 1024]);
    tar
}

/// A PAX sparse member by hand: `records`, then a regular header named
/// `name` with `data`.
fn pax_member(name: &str, records: &[(&str, &str)], data: &[u8]) -> Vec<u8> {
    let mut e = E::file(name, data);
    for (k, v) in records {
        e = e.pax(k, v);
    }
    let mut t = tar(&[e]);
    t.truncate(t.len() - 1024);
    t
}

#[test]
fn malformed_sparse_maps_are_refused_by_name() {
    require_root();
    let v01 = |size: &str, numblocks: &str, map: &str, data: &[u8]| {
        pax_member(
            "GNUSparseFile.1/f",
            &[
                ("GNU.sparse.major", "0"),
                ("GNU.sparse.minor", "1"),
                ("GNU.sparse.name", "f"),
                ("GNU.sparse.size", size),
                ("GNU.sparse.numblocks", numblocks),
                ("GNU.sparse.map", map),
            ],
            data,
        )
    };
    let v10 = |map: &[u8], data_len: usize| {
        let mut data = map.to_vec();
        data.resize(map.len().next_multiple_of(512), 0);
        data.extend(std::iter::repeat_n(b'd', data_len));
        pax_member(
            "GNUSparseFile.1/f",
            &[
                ("GNU.sparse.major", "1"),
                ("GNU.sparse.minor", "0"),
                ("GNU.sparse.name", "f"),
                ("GNU.sparse.realsize", "4096"),
            ],
            &data,
        )
    };
    let many: Vec<(u64, u64)> = (0..70_000u64).map(|i| (i, 0)).collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "old gnu overlap",
            old_gnu("f", 4096, &[(0, 1024), (512, 512)], 1536),
            "out of order or overlapping",
        ),
        (
            "old gnu out of order",
            old_gnu("f", 4096, &[(2048, 512), (0, 512)], 1024),
            "out of order or overlapping",
        ),
        (
            "old gnu past the real size",
            old_gnu("f", 1024, &[(512, 1024)], 1024),
            "ends at 1536, past the real size 1024",
        ),
        (
            "old gnu data size",
            old_gnu("f", 4096, &[(0, 512), (4096, 0)], 1024),
            "sparse data of 1024 bytes is not the 512 bytes",
        ),
        (
            "old gnu extension blocks past the bound",
            old_gnu("f", 70_000, &many, 0),
            "more than 65536 chunks",
        ),
        (
            "pax 0.1 overlap",
            v01("100", "2", "0,10,5,10", &[1; 20]),
            "out of order or overlapping",
        ),
        (
            "pax 0.1 past the real size",
            v01("100", "1", "95,10", &[1; 10]),
            "past the real size 100",
        ),
        (
            "pax 0.1 not a number",
            v01("100", "1", "0,1x", &[1; 1]),
            "numbytes \"1x\" is not a decimal number",
        ),
        (
            "pax 0.1 overflow",
            v01("100", "1", "0,99999999999999999999", &[1; 1]),
            "is not a decimal number below 2^63",
        ),
        (
            "pax 0.1 count",
            v01("100", "2", "0,1", &[1; 1]),
            "numblocks 2 but the map has 2 numbers",
        ),
        (
            "pax 0.1 data size",
            v01("100", "1", "0,10", &[1; 11]),
            "sparse data of 11 bytes is not the 10 bytes",
        ),
        (
            "pax 0.1 too many",
            v01("100", "100000", "0,1", &[1; 1]),
            "more than 65536 chunks",
        ),
        (
            "pax 0.0 out of turn",
            pax_member(
                "f",
                &[
                    ("GNU.sparse.size", "100"),
                    ("GNU.sparse.numblocks", "1"),
                    ("GNU.sparse.numbytes", "1"),
                    ("GNU.sparse.offset", "0"),
                ],
                &[1],
            ),
            "out of turn",
        ),
        (
            "pax 1.0 map past the data",
            v10(b"2\n0\n10\n", 10),
            "does not fit the entry's",
        ),
        (
            "pax 1.0 out of order",
            v10(b"2\n100\n10\n0\n10\n", 20),
            "out of order or overlapping",
        ),
        (
            "pax 1.0 data size",
            v10(b"1\n0\n10\n", 11),
            "sparse data of 11 bytes is not the 10 bytes",
        ),
        (
            "pax 1.0 bad count",
            v10(b"-1\n", 0),
            "chunk count \"-1\" is not a decimal number",
        ),
        (
            "pax 1.0 without a name",
            pax_member(
                // Named by its header here (GNU tar's placeholder is no
                // more use in a message than this).
                "f",
                &[
                    ("GNU.sparse.major", "1"),
                    ("GNU.sparse.minor", "0"),
                    ("GNU.sparse.realsize", "10"),
                ],
                b"0\n",
            ),
            "without GNU.sparse.name",
        ),
        (
            "unknown pax sparse version",
            pax_member(
                "f",
                &[("GNU.sparse.major", "2"), ("GNU.sparse.minor", "0")],
                b"",
            ),
            "unknown GNU sparse format",
        ),
    ];
    for (what, layer, want) in cases {
        let scratch = Scratch::new("sparse-bad");
        let t = scratch.path();
        let root = t.join("rootfs");
        fs::create_dir_all(t.join("sentinel")).unwrap();
        fs::write(t.join("sentinel/file"), b"precious").unwrap();
        fs::create_dir(&root).unwrap();
        let before = snapshot(&t.join("sentinel"));
        let err: ApplyError = Rootfs::open(&root)
            .unwrap()
            .apply_layer(&end(layer)[..])
            .expect_err(what);
        let msg = chain(&err);
        assert!(msg.contains("tar entry \"f\""), "{what}: not named: {msg}");
        assert!(msg.contains(want), "{what}: {msg}");
        assert_eq!(snapshot(&t.join("sentinel")), before, "{what}");
        let inside: Vec<_> = snapshot(&root).into_keys().collect();
        assert!(
            inside
                .iter()
                .all(|p| p == Path::new("") || p == Path::new("f")),
            "{what}: {inside:?}"
        );
    }
}

/// `umoci raw unpack` of the same sparse layer gives the same files, in
/// each PAX format (umoci refuses the old GNU `S` type: "unknown
/// typeflag", which berth reads as Go's archive/tar does).
#[test]
fn same_tree_as_umoci_raw_unpack() {
    require_root();
    require_tool("umoci", "umoci");
    let scratch = Scratch::new("sparse-umoci");
    let t = scratch.path();
    let src = sparse_tree(t);
    for (format, args) in &FORMATS[1..] {
        let layer = t.join(format!("{format}.tar"));
        gnu_tar(&src, &layer, args);
        let image = t.join(format!("image-{format}"));
        let img = format!("{}:t", image.display());
        run(Command::new("umoci").args(["init", "--layout"]).arg(&image));
        run(Command::new("umoci").args(["new", "--image", &img]));
        run(Command::new("umoci")
            .args(["raw", "add-layer", "--image", &img])
            .arg(&layer));
        // A bundle needs a command.
        run(Command::new("umoci").args(["config", "--image", &img, "--config.cmd=/none"]));
        let theirs = t.join(format!("umoci-{format}"));
        run(Command::new("umoci")
            .args(["raw", "unpack", "--image", &img])
            .arg(&theirs));
        // The whole unpack (gzip, digests, both ways of running the
        // stages), as at boot.
        for execution in [Execution::Inline, Execution::Threaded] {
            let bundle = t.join(format!("berth-{format}-{execution:?}"));
            let mut opts = UnpackOptions::default();
            opts.layer.execution = execution;
            let reference = ImageRef::parse(&format!("oci:{img}")).unwrap();
            unpack_bundle(&reference, &bundle, opts)
                .unwrap_or_else(|e| panic!("{format} {execution:?}: {}", chain(&e)));
            same_tree(&theirs, &bundle.join("rootfs"), format);
        }
    }
}

/// The same files (inodes aside), contents and sizes, and no more blocks
/// allocated than umoci's.
fn same_tree(theirs: &Path, ours: &Path, format: &str) {
    let (a, b) = (snapshot(theirs), snapshot(ours));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{format}"
    );
    for (path, node) in &a {
        let mine = &b[path];
        // Inodes differ between two trees; the rest must not.
        let same_ino = |n: &Node| Node {
            ino: 0,
            ..n.clone()
        };
        assert_eq!(same_ino(mine), same_ino(node), "{format} {path:?}");
        let (x, y) = (theirs.join(path), ours.join(path));
        let (mx, my) = (fs::metadata(&x).unwrap(), fs::metadata(&y).unwrap());
        assert_eq!(mx.len(), my.len(), "{format} {path:?}");
        if mx.is_file() {
            assert!(
                fs::read(&x).unwrap() == fs::read(&y).unwrap(),
                "{format} {path:?}: contents differ from umoci's"
            );
            // umoci keeps the holes too; berth keeps no fewer.
            assert!(
                allocated(&y) <= allocated(&x) + 64 * 1024,
                "{format} {path:?}"
            );
        }
    }
}

/// Old GNU sparse headers and extension blocks with bytes changed at
/// random: refused or read, never a panic (the reader follows every map
/// block as it arrives).
#[test]
fn mutated_old_gnu_maps_never_panic() {
    let map: Vec<(u64, u64)> = (0..30u64).map(|i| (i * 4096, 512)).collect();
    let seed = end(old_gnu("f", 29 * 4096 + 512, &map, 30 * 512));
    assert_eq!(
        berth_bundles::fuzz::fuzz_tar_headers(&seed).unwrap(),
        1,
        "the seed must parse"
    );
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // The header and the two extension blocks.
    for _ in 0..3000 {
        let mut data = seed.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() % (3 * 512)) as usize;
            data[i] = next() as u8;
        }
        let _ = berth_bundles::fuzz::fuzz_tar_headers(&data);
    }
}

/// The words `GNU.sparse.` in a path or in an xattr value do not make a
/// sparse file: a record's key decides, as for Go's archive/tar. Both entries unpack as the plain
/// files they are.
#[test]
fn the_words_gnu_sparse_in_a_value_do_not_make_a_sparse_file() {
    require_root();
    let s = Scratch::new("sparse-words");
    let root = s.path().join("rootfs");
    fs::create_dir(&root).unwrap();
    let mut layer = pax_member("GNU.sparse.notes", &[("path", "GNU.sparse.notes")], b"abcd");
    layer.extend(pax_member(
        "plain",
        &[("SCHILY.xattr.user.note", "see GNU.sparse.map")],
        b"efgh",
    ));
    let layer = end(layer);
    Rootfs::open(&root)
        .unwrap()
        .apply_layer(layer.as_slice())
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    assert_eq!(fs::read(root.join("GNU.sparse.notes")).unwrap(), b"abcd");
    assert_eq!(fs::read(root.join("plain")).unwrap(), b"efgh");
}
