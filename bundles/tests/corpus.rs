//! A corpus of crafted layers, generated here, covering every rule of
//! layer application and every escape attempt. Each escape case proves
//! that nothing outside the destination changed: a sentinel tree next to
//! the root, and the scratch directory around both, are snapshotted
//! before and after.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use berth_bundles::apply::{ApplyError, LayerStats, Rootfs};
use berth_bundles::unpack::Progress;
use berth_bundles::{ImageRef, UnpackOptions, unpack_bundle};
use common::{Comp, E, Layout, Scratch, chain, require_root, snapshot, tar};

struct World {
    scratch: Scratch,
}

impl World {
    fn new(tag: &str) -> Self {
        require_root();
        let scratch = Scratch::new(tag);
        let t = scratch.path();
        fs::create_dir(t.join("rootfs")).unwrap();
        fs::create_dir_all(t.join("sentinel/dir")).unwrap();
        fs::write(t.join("sentinel/file"), b"precious").unwrap();
        fs::write(t.join("sentinel/dir/inner"), b"inner").unwrap();
        std::os::unix::fs::symlink("file", t.join("sentinel/link")).unwrap();
        World { scratch }
    }
    fn t(&self) -> &Path {
        self.scratch.path()
    }
    fn root(&self) -> std::path::PathBuf {
        self.t().join("rootfs")
    }
    /// Absolute host path of the sentinel, as text for crafted names.
    fn sentinel(&self) -> String {
        self.t().join("sentinel").to_str().unwrap().to_string()
    }
    /// Everything outside rootfs.
    fn outside(&self) -> Vec<(std::path::PathBuf, common::Node)> {
        let mut snap: Vec<_> = snapshot(self.t())
            .into_iter()
            .filter(|(p, _)| !p.starts_with("rootfs"))
            .collect();
        // The scratch dir's own times change when rootfs changes; compare
        // the rest exactly.
        snap.retain(|(p, _)| p.as_os_str() != "");
        snap
    }
    fn apply(&self, layers: &[Vec<E>]) -> Result<Vec<LayerStats>, ApplyError> {
        let rootfs = Rootfs::open(&self.root()).unwrap();
        layers
            .iter()
            .map(|l| rootfs.apply_layer(&tar(l)[..]))
            .collect()
    }
}

/// Runs an escape case: the outcome may be an error or a success inside
/// the root, but nothing outside may change.
fn escape_case(name: &str, layers: impl Fn(&World) -> Vec<Vec<E>>, want_ok: bool) {
    let w = World::new("escape");
    let before = w.outside();
    let res = w.apply(&layers(&w));
    let after = w.outside();
    assert_eq!(before, after, "{name}: something outside the root changed");
    assert_eq!(
        res.is_ok(),
        want_ok,
        "{name}: unexpected outcome {:?}",
        res.as_ref().err().map(|e| e.to_string())
    );
    // And the host's own root was not written: no stray file named evil.
    assert!(
        !Path::new("/evil").exists(),
        "{name}: /evil created on the host"
    );
}

#[test]
fn escape_dotdot_names() {
    escape_case(
        "../",
        |_| vec![vec![E::file("../sentinel/file", b"evil")]],
        false,
    );
    escape_case(
        "a/../../",
        |_| vec![vec![E::file("a/../../sentinel/evil", b"evil")]],
        false,
    );
    escape_case(
        "/../",
        |_| vec![vec![E::file("/../sentinel/evil", b"evil")]],
        false,
    );
    escape_case("bare ..", |_| vec![vec![E::dir("..")]], false);
    escape_case(
        "dir ../",
        |_| vec![vec![E::dir("../sentinel/dir").mode(0o777)]],
        false,
    );
    escape_case(
        "PAX path ..",
        |_| {
            vec![vec![
                E::file("harmless", b"evil").pax("path", "../sentinel/file"),
            ]]
        },
        false,
    );
    let long = format!("{}{}sentinel/evil", "a/".repeat(60), "../".repeat(62));
    escape_case(
        "GNU long name ..",
        move |_| vec![vec![E::file(long.clone(), b"x").gnu()]],
        false,
    );
}

#[test]
fn escape_absolute_names_stay_inside() {
    let w = World::new("abs");
    let s = w.sentinel();
    let before = w.outside();
    w.apply(&[vec![
        E::file(format!("{s}/file"), b"evil"),
        E::file("/evil", b"evil"),
    ]])
    .unwrap();
    assert_eq!(before, w.outside());
    // Re-rooted under the root.
    let inside = w.root().join(s.trim_start_matches('/')).join("file");
    assert_eq!(fs::read(inside).unwrap(), b"evil");
    assert_eq!(fs::read(w.root().join("evil")).unwrap(), b"evil");
}

#[test]
fn escape_symlinks_same_layer() {
    for target in [
        "SENTINEL",
        "../sentinel",
        "../../../../../../../SENTINEL",
        "/",
    ] {
        escape_case(
            &format!("symlink {target} then write through it"),
            |w| {
                let t = target.replace("SENTINEL", &w.sentinel());
                vec![vec![
                    E::symlink("lnk", t),
                    E::file("lnk/file", b"evil"),
                    E::file("lnk/new", b"evil"),
                ]]
            },
            // "/" resolves to the root itself; the others to a missing
            // in-root path, which is a dangling-parent error.
            target == "/",
        );
    }
}

#[test]
fn escape_symlinks_earlier_layer() {
    for target in ["SENTINEL", "../sentinel", "SENTINEL/dir"] {
        escape_case(
            &format!("layer 1 symlink {target}, layer 2 writes through it"),
            |w| {
                let t = target.replace("SENTINEL", &w.sentinel());
                vec![
                    vec![E::symlink("lnk", t)],
                    vec![E::file("lnk/file", b"evil"), E::dir("lnk/dir").mode(0o777)],
                ]
            },
            false,
        );
    }
    // An in-root directory at the symlink's in-root target: writes land
    // there, inside.
    let w = World::new("symlink-inside");
    let s = w.sentinel();
    let before = w.outside();
    w.apply(&[
        vec![E::dir(s.clone()), E::symlink("lnk", s.clone())],
        vec![E::file("lnk/file", b"inside")],
    ])
    .unwrap();
    assert_eq!(before, w.outside());
    assert_eq!(
        fs::read(w.root().join(s.trim_start_matches('/')).join("file")).unwrap(),
        b"inside"
    );
}

#[test]
fn escape_hardlinks() {
    escape_case(
        "hardlink ../",
        |_| vec![vec![E::hardlink("hl", "../sentinel/file")]],
        false,
    );
    escape_case(
        "hardlink absolute host path",
        |w| vec![vec![E::hardlink("hl", format!("{}/file", w.sentinel()))]],
        false,
    );
    escape_case(
        "hardlink through symlink",
        |w| {
            vec![vec![
                E::symlink("lnk", w.sentinel()),
                E::hardlink("hl", "lnk/file"),
            ]]
        },
        false,
    );
    escape_case(
        "hardlink through earlier-layer symlink",
        |w| {
            vec![
                vec![E::symlink("lnk", w.sentinel())],
                vec![E::hardlink("hl", "lnk/file")],
            ]
        },
        false,
    );
    // CVE-2021-32760: a hardlink to a symlink pointing outside, then
    // metadata applied to the hardlink name. The link itself is linked,
    // and nothing is chmod'ed through it.
    escape_case(
        "hardlink to outside symlink, then chmod",
        |w| {
            vec![
                vec![
                    E::symlink("s", format!("{}/file", w.sentinel())),
                    E::hardlink("hl", "s"),
                ],
                vec![E::dir("hl").mode(0o777), E::file("s", b"evil").mode(0o777)],
            ]
        },
        true,
    );
}

#[test]
fn escape_whiteouts() {
    escape_case("whiteout ..", |_| vec![vec![E::whiteout(".wh..")]], false);
    escape_case(
        "whiteout .",
        |_| vec![vec![E::whiteout("sub/.wh..")]],
        false,
    );
    escape_case("whiteout empty", |_| vec![vec![E::whiteout(".wh.")]], false);
    escape_case(
        "whiteout path ../",
        |_| vec![vec![E::whiteout("../sentinel/.wh.file")]],
        false,
    );
    for target in ["SENTINEL", "../sentinel", "../../SENTINEL/dir"] {
        escape_case(
            &format!("whiteout through symlink {target}"),
            |w| {
                let t = target.replace("SENTINEL", &w.sentinel());
                vec![
                    vec![E::symlink("lnk", t)],
                    vec![
                        E::whiteout("lnk/.wh.file"),
                        E::whiteout("lnk/.wh.dir"),
                        E::whiteout("lnk/.wh..wh..opq"),
                    ],
                ]
            },
            true,
        );
    }
    // Whiteout of a symlink to outside removes the link only.
    escape_case(
        "whiteout the symlink itself",
        |w| {
            vec![
                vec![E::symlink("lnk", w.sentinel())],
                vec![E::whiteout(".wh.lnk")],
            ]
        },
        true,
    );
    escape_case(
        "opaque dir that is a symlink",
        |w| {
            vec![
                vec![E::symlink("lnk", w.sentinel())],
                vec![E::whiteout("lnk/.wh..wh..opq")],
            ]
        },
        true,
    );
}

#[test]
fn escape_metadata_through_symlinks() {
    // chmod/chown/utimes of an entry whose name is an existing symlink to
    // outside: the link is replaced, the target untouched.
    for (what, entry) in [
        ("dir", E::dir("lnk").mode(0o777).owner(1000, 1000)),
        (
            "file",
            E::file("lnk", b"evil").mode(0o4777).owner(1000, 1000),
        ),
        ("fifo", E::node("lnk", b'6', 0, 0).mode(0o777)),
        ("symlink", E::symlink("lnk", "elsewhere").owner(1000, 1000)),
        ("char", E::node("lnk", b'3', 1, 3).mode(0o666)),
    ] {
        escape_case(
            &format!("{what} over symlink to outside, same layer"),
            |w| {
                vec![vec![
                    E::symlink("lnk", format!("{}/file", w.sentinel())),
                    entry.clone(),
                ]]
            },
            true,
        );
        escape_case(
            &format!("{what} over symlink to outside dir, next layer"),
            |w| {
                vec![
                    vec![E::symlink("lnk", format!("{}/dir", w.sentinel()))],
                    vec![entry.clone()],
                ]
            },
            true,
        );
    }
    // The root entry itself cannot become a symlink.
    escape_case(
        "root as symlink",
        |w| vec![vec![E::symlink("./", w.sentinel())]],
        false,
    );
}

#[test]
fn regular_files_modes_owners_times() {
    let w = World::new("files");
    w.apply(&[vec![
        E::dir("bin").mode(0o755).mtime(1_000_000),
        E::file("bin/suid", b"#!x")
            .mode(0o4755)
            .owner(1000, 1001)
            .mtime(2_000_000),
        E::file("bin/sgid", b"y").mode(0o2711).owner(5, 6),
        E::dir("tmp").mode(0o1777),
        E::file("big", vec![7u8; 3 << 20]),
        E::file("empty", b""),
    ]])
    .unwrap();
    let r = w.root();
    let m = fs::metadata(r.join("bin/suid")).unwrap();
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()),
        (0o4755, 1000, 1001, 2_000_000)
    );
    let m = fs::metadata(r.join("bin/sgid")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o2711, 5, 6));
    assert_eq!(fs::metadata(r.join("tmp")).unwrap().mode() & 0o7777, 0o1777);
    // Directory mtime set after its children were created.
    assert_eq!(fs::metadata(r.join("bin")).unwrap().mtime(), 1_000_000);
    assert_eq!(fs::read(r.join("big")).unwrap(), vec![7u8; 3 << 20]);
    assert_eq!(fs::metadata(r.join("empty")).unwrap().len(), 0);
}

/// The tar crate quotes a bad header's raw name in its error: a newline in
/// it must not forge a second line of the one-line error, nor an escape
/// sequence reach the terminal.
#[test]
fn tar_errors_print_no_control_characters() {
    let w = World::new("tar-error-text");
    let mut bytes = tar(&[E::file("x\u{1b}]0;PWNED\u{7}\nforged line", b"")]);
    bytes[148..156].copy_from_slice(b"zzzzzzzz");
    let rootfs = Rootfs::open(&w.root()).unwrap();
    let err = rootfs.apply_layer(&bytes[..]).unwrap_err();
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(chain.contains("cksum"), "{chain}");
    assert!(
        !chain.contains('\n') && !chain.contains('\u{1b}'),
        "{chain:?}"
    );
    assert!(chain.contains("\\nforged line"), "{chain}");
}

/// A symlink replaced within a layer: the entries after it go where the
/// new link (or file) leads, as for every other tar reader, not where the
/// old one led.
#[test]
fn a_replaced_symlink_is_not_followed_by_later_entries() {
    let w = World::new("relink");
    let base = vec![E::dir("usr"), E::dir("usr/bin"), E::dir("opt")];
    let mut layer = base.clone();
    layer.extend([
        E::symlink("bin", "usr/bin"),
        E::file("bin/a", b"a"),
        E::symlink("bin", "opt"),
        E::file("bin/b", b"b"),
    ]);
    w.apply(&[layer]).unwrap();
    assert!(w.root().join("usr/bin/a").exists());
    assert!(w.root().join("opt/b").exists());
    assert!(!w.root().join("usr/bin/b").exists());
    // A file in the link's place: what is below it has no parent.
    let w = World::new("relink-file");
    let mut layer = base;
    layer.extend([
        E::symlink("bin", "usr/bin"),
        E::file("bin/a", b"a"),
        E::file("bin", b"now a file"),
        E::file("bin/c", b"c"),
    ]);
    let err = w.apply(&[layer]).unwrap_err().to_string();
    assert!(
        err.contains(r#"tar entry "bin/c": parent "bin" is not a directory"#),
        "{err}"
    );
    assert!(!w.root().join("usr/bin/c").exists());
}

/// Before ustar, a directory was a NUL-typed entry whose name ends in `/`:
/// Go's archive/tar, GNU tar and Python's tarfile read it so.
#[test]
fn old_style_entries_ending_in_a_slash_are_directories() {
    let w = World::new("v7-dir");
    let mut dir = E::file("vd/", b"");
    dir.kind = 0;
    let mut file = E::file("vd/x", b"abc");
    file.kind = 0;
    let mut plain = E::file("f", b"z");
    plain.kind = 0;
    w.apply(&[vec![dir, file, plain]]).unwrap();
    assert!(w.root().join("vd").is_dir());
    assert_eq!(fs::read(w.root().join("vd/x")).unwrap(), b"abc");
    assert!(w.root().join("f").is_file());
}

#[test]
fn symlinks_hardlinks_devices_fifos() {
    let w = World::new("types");
    w.apply(&[vec![
        E::file("f", b"data"),
        E::symlink("abs", "/etc/../nowhere/x"),
        E::symlink("rel", "../../../../f").owner(3, 4),
        E::hardlink("h1", "f"),
        E::hardlink("/h2", "./f"),
        E::symlink("s", "f"),
        E::hardlink("hs", "s"),
        E::node("null", b'3', 1, 3).mode(0o666),
        E::node("loop0", b'4', 7, 0).mode(0o660).owner(0, 6),
        E::node("fifo", b'6', 0, 0).mode(0o4644),
    ]])
    .unwrap();
    let r = w.root();
    assert_eq!(
        fs::read_link(r.join("abs")).unwrap().to_str(),
        Some("/etc/../nowhere/x")
    );
    let m = fs::symlink_metadata(r.join("rel")).unwrap();
    assert_eq!((m.uid(), m.gid()), (3, 4));
    let ino = fs::metadata(r.join("f")).unwrap().ino();
    assert_eq!(fs::metadata(r.join("h1")).unwrap().ino(), ino);
    assert_eq!(fs::metadata(r.join("h2")).unwrap().ino(), ino);
    assert_eq!(fs::metadata(r.join("f")).unwrap().nlink(), 3);
    // A hardlink to a symlink links the symlink itself.
    let hs = fs::symlink_metadata(r.join("hs")).unwrap();
    assert!(hs.file_type().is_symlink());
    assert_eq!(hs.ino(), fs::symlink_metadata(r.join("s")).unwrap().ino());
    let m = fs::symlink_metadata(r.join("null")).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!(
        (m.rdev(), m.mode() & 0o7777),
        (rustix::fs::makedev(1, 3), 0o666)
    );
    let m = fs::symlink_metadata(r.join("loop0")).unwrap();
    assert!(m.file_type().is_block_device());
    assert_eq!(
        (m.rdev(), m.gid(), m.mode() & 0o7777),
        (rustix::fs::makedev(7, 0), 6, 0o660)
    );
    let m = fs::symlink_metadata(r.join("fifo")).unwrap();
    assert!(m.file_type().is_fifo());
    assert_eq!(m.mode() & 0o7777, 0o4644);
    // Hardlink errors: missing target, directory target, itself.
    assert!(matches!(
        w.apply(&[vec![E::hardlink("x", "missing")]]),
        Err(ApplyError::Hardlink { .. })
    ));
    assert!(matches!(
        w.apply(&[vec![E::dir("d"), E::hardlink("x", "d")]]),
        Err(ApplyError::Hardlink { .. })
    ));
    assert!(matches!(
        w.apply(&[vec![E::hardlink("self", "self")]]),
        Err(ApplyError::Hardlink { .. })
    ));
}

#[test]
fn long_names_pax_and_gnu() {
    let w = World::new("long");
    let pax_name = format!("{}/pax-file", "p".repeat(120));
    let gnu_name = format!("{}/gnu-file", "g".repeat(150));
    let target = format!("/{}", "t".repeat(200));
    w.apply(&[vec![
        E::file(&pax_name, b"pax"),
        E::file(&gnu_name, b"gnu").gnu(),
        E::symlink("longlink", &target),
        E::file("paxowner", b"o")
            .pax("uid", "3000000")
            .pax("gid", "42"),
        E::file("paxtime", b"t").pax("mtime", "1700000000.25"),
    ]])
    .unwrap();
    let r = w.root();
    assert_eq!(fs::read(r.join(&pax_name)).unwrap(), b"pax");
    assert_eq!(fs::read(r.join(&gnu_name)).unwrap(), b"gnu");
    assert_eq!(
        fs::read_link(r.join("longlink")).unwrap().to_str(),
        Some(target.as_str())
    );
    let m = fs::metadata(r.join("paxowner")).unwrap();
    assert_eq!((m.uid(), m.gid()), (3_000_000, 42));
    let m = fs::metadata(r.join("paxtime")).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_700_000_000, 250_000_000));
}

/// The value of xattr `name` of `path` itself (not what a link points to).
fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    let len = rustix::fs::lgetxattr(path, name, &mut buf).ok()?;
    Some(buf[..len].to_vec())
}

#[test]
fn xattrs_kept_and_skipped() {
    let w = World::new("xattr");
    let stats = w
        .apply(&[vec![
            E::file("cap", b"x")
                .pax(
                    "SCHILY.xattr.security.capability",
                    [
                        1u8, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    ],
                )
                .pax("SCHILY.xattr.user.note", b"hello")
                .pax("SCHILY.xattr.trusted.secret", b"no")
                .pax(
                    "SCHILY.xattr.security.selinux",
                    b"system_u:object_r:bin_t:s0",
                ),
            E::dir("d").pax("SCHILY.xattr.user.dir", b"yes"),
            E::symlink("l", "cap").pax("SCHILY.xattr.user.link", b"no"),
            // An empty value deletes the record: no xattr at all (Go's
            // archive/tar, so umoci), not an empty one.
            E::file("empty", b"x")
                .pax("SCHILY.xattr.user.e", b"")
                .pax("SCHILY.xattr.user.k", b"v"),
            E::dir("empty-dir").pax("SCHILY.xattr.user.e", b""),
        ]])
        .unwrap();
    let r = w.root();
    let get = |p: &str, n: &str| xattr(&r.join(p), n);
    assert_eq!(get("cap", "user.note").as_deref(), Some(&b"hello"[..]));
    assert_eq!(get("cap", "security.capability").map(|v| v.len()), Some(20));
    assert_eq!(get("cap", "trusted.secret"), None);
    assert_eq!(get("d", "user.dir").as_deref(), Some(&b"yes"[..]));
    assert_eq!(get("empty", "user.e"), None);
    assert_eq!(get("empty-dir", "user.e"), None);
    assert_eq!(get("empty", "user.k").as_deref(), Some(&b"v"[..]));
    assert_eq!(stats[0].skipped_xattrs, 3);
}

/// On a filesystem without `user.*` attributes (ramfs here; tmpfs before
/// Linux 6.6, where berth-init unpacks on the appliance's 6.1 kernel) the
/// file is unpacked without them, counted apart; a file capability it
/// cannot hold still fails the layer.
#[test]
fn user_xattrs_a_filesystem_lacks_are_counted_not_fatal() {
    let w = World::new("xattr-unsupported");
    let root = w.root();
    rustix::mount::mount(
        "berth-test",
        &root,
        "ramfs",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .expect("mount ramfs (root)");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
        }
    }
    let _unmount = Unmount(root.clone());
    let stats = w
        .apply(&[vec![
            E::file("f", b"x").pax("SCHILY.xattr.user.note", b"hello"),
            E::dir("d").pax("SCHILY.xattr.user.dir", b"yes"),
        ]])
        .unwrap();
    assert_eq!(fs::read(root.join("f")).unwrap(), b"x");
    assert_eq!(xattr(&root.join("f"), "user.note"), None);
    assert_eq!(
        (stats[0].skipped_xattrs, stats[0].unsupported_xattrs),
        (2, 2)
    );
    let cap = [
        1u8, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let err = w
        .apply(&[vec![
            E::file("cap", b"x").pax("SCHILY.xattr.security.capability", cap),
        ]])
        .unwrap_err();
    assert!(chain(&err).contains("set xattr on"), "{}", chain(&err));
}

#[test]
fn xattr_values_holding_a_newline_are_kept_whole() {
    // A file capability is binary: CAP_DAC_OVERRIDE + CAP_FOWNER make the
    // permitted mask's first byte 0x0a, a newline. PAX records are framed
    // by their lengths (Go's archive/tar, GNU tar, umoci); the tar crate
    // splits them at newlines, which used to refuse the whole layer.
    let cap = [
        1u8, 0, 0, 2, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let w = World::new("xattr-newline");
    w.apply(&[vec![
        E::file("cap", b"x")
            .pax("SCHILY.xattr.security.capability", cap)
            .pax("SCHILY.xattr.user.lines", b"one\ntwo\n"),
        E::file("after", b"y").owner(7, 8),
    ]])
    .unwrap();
    let r = w.root();
    let get = |p: &str, n: &str| xattr(&r.join(p), n);
    assert_eq!(get("cap", "security.capability").as_deref(), Some(&cap[..]));
    assert_eq!(
        get("cap", "user.lines").as_deref(),
        Some(&b"one\ntwo\n"[..])
    );
    assert_eq!(fs::read(r.join("after")).unwrap(), b"y");
    let m = fs::metadata(r.join("after")).unwrap();
    assert_eq!((m.uid(), m.gid()), (7, 8));

    // Where the tar crate's split would take another path or owner than
    // the records hold, the layer is refused, and nothing is made.
    for (tag, value, more, field) in [
        // A line of the value looks like a record of its own.
        ("fake", &b"x\n13 path=evil"[..], None, "path"),
        // A real record after a value with a newline: the tar crate stops
        // at the broken line and keeps the header's uid (0).
        ("hidden", &b"a\nb"[..], Some(("uid", "5000")), "uid"),
        // The newline in a key hides the uid record the same way.
        ("key", &b"x"[..], Some(("uid", "5000")), "uid"),
    ] {
        let w = World::new(&format!("xattr-newline-{tag}"));
        let key = if tag == "key" {
            "SCHILY.xattr.user.a\nb"
        } else {
            "SCHILY.xattr.user.a"
        };
        let mut e = E::file("f", b"x").pax(key, value);
        if let Some((k, v)) = more {
            e = e.pax(k, v);
        }
        let err = chain(&w.apply(&[vec![e]]).unwrap_err());
        assert!(
            err.contains(&format!(
                "pax records whose {field} the tar reader cannot follow"
            )),
            "{tag}: {err}"
        );
        assert!(!w.root().join("f").exists() && !w.root().join("evil").exists());
    }
}

#[test]
fn replacement_across_layers() {
    let w = World::new("replace");
    w.apply(&[
        vec![
            E::dir("x"),
            E::file("x/child", b"c"),
            E::file("y", b"file"),
            E::symlink("z", "x"),
            E::dir("m").mode(0o700).owner(1, 1),
            E::file("m/keep", b"k"),
        ],
        vec![
            E::file("x", b"now a file"),
            E::dir("y").mode(0o750),
            E::file("y/inner", b"i"),
            E::dir("z"),
            E::dir("m").mode(0o755).owner(2, 2),
        ],
    ])
    .unwrap();
    let r = w.root();
    assert_eq!(fs::read(r.join("x")).unwrap(), b"now a file");
    assert_eq!(fs::metadata(r.join("y")).unwrap().mode() & 0o777, 0o750);
    assert_eq!(fs::read(r.join("y/inner")).unwrap(), b"i");
    assert!(fs::symlink_metadata(r.join("z")).unwrap().is_dir());
    // Dir over dir merges: children stay, metadata replaced.
    let m = fs::metadata(r.join("m")).unwrap();
    assert_eq!((m.mode() & 0o777, m.uid()), (0o755, 2));
    assert_eq!(fs::read(r.join("m/keep")).unwrap(), b"k");
}

#[test]
fn implied_parents_and_root_entry() {
    let w = World::new("parents");
    w.apply(&[vec![
        E::dir("./").mode(0o700).mtime(123),
        E::file("deep/er/file", b"x"),
    ]])
    .unwrap();
    let r = w.root();
    assert_eq!(fs::read(r.join("deep/er/file")).unwrap(), b"x");
    assert_eq!(fs::metadata(r.join("deep")).unwrap().mode() & 0o777, 0o755);
    let m = fs::metadata(&r).unwrap();
    assert_eq!((m.mode() & 0o777, m.mtime()), (0o700, 123));
    // A regular file in parent position is an error (containerd, moby).
    assert!(matches!(
        w.apply(&[vec![E::file("deep/er/file/sub", b"x")]]),
        Err(ApplyError::ParentNotDirectory { .. })
    ));
}

#[test]
fn whiteouts_per_spec() {
    let w = World::new("whiteout");
    w.apply(&[
        vec![
            E::dir("a"),
            E::file("a/b", b"b"),
            E::file("a/c", b"c"),
            E::dir("d"),
            E::file("d/e/f", b"f"),
            E::dir("o"),
            E::file("o/p", b"p"),
            E::dir("o/q"),
            E::file("o/q/r", b"r"),
            E::dir("o2"),
            E::file("o2/old", b"old"),
            E::file("n", b"lower"),
            E::dir("k"),
            E::file("k/lower", b"l"),
        ],
        vec![
            // A plain whiteout, of a file and of a whole tree.
            E::whiteout("a/.wh.b"),
            E::whiteout(".wh.d"),
            // Opaque dir, marker after a new child: the child stays.
            E::file("o/new", b"new"),
            E::whiteout("o/.wh..wh..opq"),
            // Opaque marker first.
            E::whiteout("o2/.wh..wh..opq"),
            E::file("o2/fresh", b"fresh"),
            // Same-layer entries are not hidden by the layer's whiteouts.
            E::file("n", b"upper"),
            E::whiteout(".wh.n"),
            // Whiteout of a dir this layer added to: lower children go,
            // this layer's stay.
            E::file("k/upper", b"u"),
            E::whiteout(".wh.k"),
            // Whiteouts of missing things are no-ops, missing parents too.
            E::whiteout(".wh.missing"),
            E::whiteout("nodir/.wh.x"),
            E::whiteout("nodir2/.wh..wh..opq"),
        ],
    ])
    .unwrap();
    let r = w.root();
    assert!(!r.join("a/b").exists());
    assert_eq!(fs::read(r.join("a/c")).unwrap(), b"c");
    assert!(!r.join("d").exists());
    let mut o: Vec<_> = fs::read_dir(r.join("o"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    o.sort();
    assert_eq!(o, vec!["new"]);
    let o2: Vec<_> = fs::read_dir(r.join("o2"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(o2, vec!["fresh"]);
    assert_eq!(fs::read(r.join("n")).unwrap(), b"upper");
    assert!(r.join("k/upper").exists());
    assert!(!r.join("k/lower").exists());
    assert!(!r.join("nodir").exists() && !r.join("nodir2").exists());
    // No marker is ever materialised.
    for (p, _) in snapshot(&r) {
        assert!(!p.to_string_lossy().contains(".wh."), "marker {p:?} left");
    }
}

/// A layer's own entries are spared by its whiteouts wherever they landed:
/// `lib/new` through `lib -> usr/lib` is `usr/lib/new`, which the same
/// layer's opaque marker of `usr/lib` must not remove, nor its whiteout of
/// `usr/share` a file it put there through `share -> /usr/share`. umoci
/// 0.4.7 unpacks the same two layers (gzip) to the same tree; berth keyed
/// the set of the layer's paths by the tar name and removed both.
#[test]
fn whiteouts_spare_the_layers_entries_reached_through_symlinks() {
    let w = World::new("whiteout-symlink");
    w.apply(&[
        vec![
            E::dir("usr"),
            E::dir("usr/lib"),
            E::file("usr/lib/old", b"old"),
            E::dir("usr/share"),
            E::file("usr/share/gone", b"gone"),
            E::symlink("lib", "usr/lib"),
            E::symlink("share", "/usr/share"),
        ],
        vec![
            E::file("lib/new", b"new"),
            E::whiteout("usr/lib/.wh..wh..opq"),
            // A whiteout of a tree the layer put a file into, through
            // an absolute link (in-root).
            E::file("share/kept", b"kept"),
            E::whiteout("usr/.wh.share"),
        ],
    ])
    .unwrap();
    let r = w.root();
    assert_eq!(names(&r.join("usr/lib")), ["new"]);
    assert_eq!(fs::read(r.join("usr/lib/new")).unwrap(), b"new");
    assert_eq!(names(&r.join("usr/share")), ["kept"]);
}

#[test]
fn refused_entries() {
    let w = World::new("refused");
    let mut sparse = E::file("sparse", b"");
    sparse.kind = b'S';
    let mut unknown = E::file("unknown", b"");
    unknown.kind = b'Z';
    let mut truncated = E::file("trunc", vec![1u8; 100]);
    truncated.size_override = Some(4096);
    for (name, entries) in [
        // Typeflag S in a ustar (not GNU) header: no map to read.
        ("sparse without a GNU header", vec![sparse]),
        ("unknown type", vec![unknown]),
        ("aufs plink", vec![E::dir(".wh..wh.plnk")]),
        (
            "uid -1",
            vec![E::file("u", b"").owner(0, 0).pax("uid", "4294967295")],
        ),
        // Records the tar crate cannot parse and would replace with the
        // header's value (root, for a setuid file meant for uid -1).
        (
            "pax uid=-1",
            vec![E::file("u", b"").mode(0o4755).pax("uid", "-1")],
        ),
        (
            "pax gid",
            vec![E::file("u", b"").pax("gid", "99999999999999999999999")],
        ),
        ("pax mtime", vec![E::file("u", b"").pax("mtime", "abc")]),
        ("pax size", vec![E::file("u", b"").pax("size", "-1")]),
        ("root as file", vec![E::file(".", b"")]),
    ] {
        assert!(w.apply(&[entries]).is_err(), "{name} accepted");
    }
    // Types are named by what they are and their typeflag.
    for (kind, says) in [
        (b'Z', "unsupported entry type unknown (typeflag 'Z')"),
        (
            b'7',
            "unsupported entry type contiguous file (typeflag '7')",
        ),
    ] {
        let mut e = E::file("t", b"");
        e.kind = kind;
        let err = w.apply(&[vec![e]]).unwrap_err().to_string();
        assert!(err.ends_with(says), "{err}");
    }
    let err = w
        .apply(&[vec![E::file("u", b"").pax("uid", "-1")]])
        .unwrap_err();
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(
        chain.contains("pax record uid=\"-1\" is not a valid value"),
        "{chain}"
    );
    assert!(!w.root().join("u").exists());
    // An empty value deletes the record (POSIX pax): the header's stands.
    w.apply(&[vec![
        E::file("empty", b"")
            .owner(7, 8)
            .pax("uid", "")
            .pax("mtime", ""),
    ]])
    .unwrap();
    let meta = fs::symlink_metadata(w.root().join("empty")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mtime()),
        (7, 8, 1_600_000_000)
    );
    // A sparse file in PAX format 1.0 (a plain file named
    // GNUSparseFile.PID/NAME that starts with the map of its data, padded
    // to a block) whose data is shorter than that block: the map does not
    // fit (tests/sparse.rs has the sparse files that do).
    let pax_sparse = E::file("GNUSparseFile.0/sp", b"1\n0\n512\n")
        .pax("GNU.sparse.major", "1")
        .pax("GNU.sparse.minor", "0")
        .pax("GNU.sparse.name", "sp")
        .pax("GNU.sparse.realsize", "10485760");
    let err = w.apply(&[vec![pax_sparse]]).unwrap_err();
    let err = common::chain(&err);
    assert!(
        err.contains("tar entry \"sp\": bad sparse file: sparse map does not fit"),
        "{err}"
    );
    assert!(!w.root().join("GNUSparseFile.0").exists());
    // Truncated archive: the tar is cut in the middle of a file.
    let mut bytes = tar(&[truncated]);
    bytes.truncate(1024);
    let rootfs = Rootfs::open(&w.root()).unwrap();
    assert!(rootfs.apply_layer(&bytes[..]).is_err());
}

/// A compressed layer can declare a long name of a gibibyte in a few
/// kilobytes: refused at its header, as Go's archive/tar refuses past
/// 1 MiB, before the tar crate would read it whole into memory.
#[test]
fn a_huge_long_name_or_pax_header_is_refused_at_its_header() {
    let w = World::new("ext-bomb");
    for (kind, what) in [(b'L', "long name"), (b'x', "pax extension")] {
        let mut bomb = E::file("././@LongLink", vec![0u8; 4096]);
        bomb.kind = kind;
        bomb.size_override = Some(1 << 30);
        let err = w.apply(&[vec![bomb, E::file("f", b"x")]]).unwrap_err();
        let text = berth_bundles::apply::ApplyError::to_string(&err);
        let chain = format!("{text}: {}", std::error::Error::source(&err).unwrap());
        assert!(
            chain.contains(&format!("tar {what} header of 1073741824 bytes")),
            "{chain}"
        );
        assert!(!w.root().join("f").exists());
    }
}

/// Only files carry data: a directory, link, device or fifo header with a
/// size would make berth and Go's archive/tar (Docker, containerd, umoci)
/// see different entries after it, so it is refused, whichever way it
/// cuts.
#[test]
fn data_on_header_only_entries_is_refused() {
    let w = World::new("header-only");
    // What follows the directory is, for Go, the end of the archive (two
    // zero blocks); for a reader that skips the size, a setuid file.
    let mut hiding = E::dir("d");
    hiding.data = vec![0; 1024];
    let hidden = E::file("hidden", b"payload").mode(0o4755);
    // Here the data is an entry that Go would create and a size-honouring
    // reader would skip.
    let smuggled = tar(&[E::file("evil", b"x")]);
    let smuggled = smuggled[..smuggled.len() - 1024].to_vec();
    let mut cases: Vec<(&str, E)> = vec![("directory", hiding)];
    for (kind, mut e) in [
        ("symlink", E::symlink("s", "target")),
        ("link", E::hardlink("h", "hidden")),
        ("fifo", E::node("f", b'6', 0, 0)),
        ("char", E::node("c", b'3', 1, 3)),
    ] {
        e.data = smuggled.clone();
        cases.push((kind, e));
    }
    for (kind, e) in cases {
        let err = w
            .apply(&[vec![e, hidden.clone()]])
            .expect_err(kind)
            .to_string();
        assert!(
            err.contains(&format!("a {kind} entry with"))
                && err.contains("bytes of data (tar readers disagree"),
            "{kind}: {err}"
        );
        assert!(!w.root().join("hidden").exists(), "{kind}");
        assert!(!w.root().join("evil").exists(), "{kind}");
    }
}

#[test]
fn owner_and_mode_under_setgid_dir() {
    // A file created in a setgid directory inherits the directory's group;
    // the entry's own group must still win. Read-only files get their data.
    let w = World::new("setgid");
    w.apply(&[vec![
        E::dir("sg").mode(0o2775).owner(0, 50),
        E::file("sg/f", b"data").mode(0o644).owner(0, 0),
        E::file("sg/ro", b"read only").mode(0o444),
        E::file("sg/none", b"no perms").mode(0o000).owner(7, 7),
        E::dir("sg/sub").mode(0o755).owner(0, 0),
    ]])
    .unwrap();
    let r = w.root();
    let m = fs::metadata(r.join("sg/f")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, 0, 0o644));
    let m = fs::metadata(r.join("sg/ro")).unwrap();
    assert_eq!((m.gid(), m.mode() & 0o7777), (0, 0o444));
    assert_eq!(fs::read(r.join("sg/ro")).unwrap(), b"read only");
    let m = fs::metadata(r.join("sg/none")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (7, 7, 0));
    let m = fs::metadata(r.join("sg/sub")).unwrap();
    assert_eq!((m.gid(), m.mode() & 0o7777), (0, 0o755));
    let m = fs::metadata(r.join("sg")).unwrap();
    assert_eq!((m.gid(), m.mode() & 0o7777), (50, 0o2775));
}

/// Directory times follow umoci: a directory keeps the times it had (a
/// lower layer's) or the ones its entry declared, whatever later entries
/// add to it or remove from it; parents the unpacker makes itself get 0.
/// So the result does not depend on when the unpack ran.
#[test]
fn directory_times_survive_later_changes() {
    let w = World::new("dirtimes");
    let r = w.root();
    // The root's times are the caller's (unpack sets them to 0 first);
    // adding top-level entries must not change them.
    rustix::fs::utimensat(
        rustix::fs::CWD,
        &r,
        &rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 4242,
                tv_nsec: 0,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: 4242,
                tv_nsec: 0,
            },
        },
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();
    let many: Vec<E> = (0..40)
        .flat_map(|i| {
            [
                E::dir(format!("many/d{i}")).mtime(20_000 + i),
                E::file(format!("many/d{i}/f"), b"x"),
            ]
        })
        .collect();
    let mut layer1 = vec![
        E::dir("d").mtime(1000),
        E::file("d/a", b"x").mtime(2000),
        E::dir("e").mtime(5000),
        E::dir("e/sub").mtime(6000),
        E::file("e/sub/x", b"x"),
        E::dir("k").mtime(7000),
        E::file("k/f", b"x"),
        E::symlink("ln", "/k"),
        E::dir("kept").mtime(9000),
        E::file("kept/old", b"x"),
        E::dir("many").mtime(10_000),
        E::dir("s").mtime(11_000),
        E::symlink("sl", "s"),
    ];
    layer1.extend(many.clone());
    let mut layer2 = vec![
        // Children added and removed in lower directories.
        E::file("d/b", b"y").mtime(3000),
        E::whiteout("d/.wh.a"),
        E::whiteout("e/.wh..wh..opq"),
        // Through a symlinked parent.
        E::file("ln/g", b"z"),
        E::file("sl/new", b"z"),
        // Parents nobody declared.
        E::file("p/q/r", b"x").mtime(7),
        // Declared in this layer, then given a child.
        E::dir("m").mtime(8000),
        E::file("m/c", b"x"),
        // A whiteout of a directory this layer also wrote into: the
        // directory stays (it holds `new`), `old` goes.
        E::file("kept/new", b"x"),
        E::whiteout(".wh.kept"),
        // A directory declared again with other times.
        E::dir("k").mtime(7500),
        E::whiteout("k/.wh.f"),
        E::whiteout(".wh.nothing-here"),
    ];
    // More directories than the unpacker keeps open, each changed again
    // after it left its cache (and the first after the cache was
    // cleared by a removal).
    layer2.extend((0..40).map(|i| E::file(format!("many/d{i}/g"), b"y")));
    layer2.push(E::file("d/late", b"x"));
    layer2.push(E::file("d", b"now a file"));
    layer2.extend((0..40).map(|i| E::whiteout(format!("many/d{i}/.wh.f"))));
    w.apply(&[layer1, layer2]).unwrap();
    let mtime = |p: &str| fs::symlink_metadata(r.join(p)).unwrap().mtime();
    assert_eq!(mtime(""), 4242, "root");
    let d = fs::symlink_metadata(r.join("d")).unwrap();
    assert!(d.is_file() && d.mtime() == 1_600_000_000, "d is a file now");
    assert_eq!(mtime("s"), 11_000);
    assert!(r.join("s/new").exists());
    assert_eq!(mtime("e"), 5000);
    assert!(!r.join("e/sub").exists());
    assert_eq!(mtime("k"), 7500);
    assert!(r.join("k/g").exists() && !r.join("k/f").exists());
    assert_eq!((mtime("p"), mtime("p/q"), mtime("p/q/r")), (0, 0, 7));
    assert_eq!(mtime("m"), 8000);
    assert_eq!(mtime("kept"), 9000);
    assert!(r.join("kept/new").exists() && !r.join("kept/old").exists());
    assert_eq!(mtime("many"), 10_000);
    for i in 0..40 {
        assert_eq!(mtime(&format!("many/d{i}")), 20_000 + i as i64, "many/d{i}");
        assert!(!r.join(format!("many/d{i}/f")).exists());
    }
    // The times do not depend on the clock: the same layers give the
    // same times again later (nothing here is "now").
    let d_w = World::new("dirtimes-d");
    d_w.apply(&[
        vec![E::dir("d").mtime(1000), E::file("d/a", b"x").mtime(2000)],
        vec![E::file("d/b", b"y").mtime(3000), E::whiteout("d/.wh.a")],
    ])
    .unwrap();
    let dm = fs::metadata(d_w.root().join("d")).unwrap();
    assert_eq!((dm.mtime(), dm.atime()), (1000, 1000));
}

/// A directory declared again ends with the new entry's xattrs only (as
/// umoci), like its owner and mode; xattrs no layer can set (here a
/// `trusted.*` one, standing for a host label) are left alone.
#[test]
fn directory_declared_again_replaces_its_xattrs() {
    let w = World::new("dirxattr");
    let r = w.root();
    w.apply(&[vec![
        E::dir("./").pax("SCHILY.xattr.user.r", b"root"),
        E::dir("d")
            .mode(0o700)
            .pax("SCHILY.xattr.user.x", b"old")
            .pax("SCHILY.xattr.user.same", b"v1"),
        E::file("d/a", b"a"),
    ]])
    .unwrap();
    let set = rustix::fs::XattrFlags::empty();
    rustix::fs::setxattr(r.join("d"), "trusted.host", b"label", set).unwrap();
    w.apply(&[vec![
        E::dir("./"),
        E::dir("d")
            .mode(0o2750)
            .owner(3, 4)
            .pax("SCHILY.xattr.user.y", b"new")
            .pax("SCHILY.xattr.user.same", b"v2"),
    ]])
    .unwrap();
    let names = |p: &Path| {
        let mut buf = vec![0u8; 1024];
        let n = rustix::fs::llistxattr(p, &mut buf).unwrap();
        let mut v: Vec<String> = buf[..n]
            .split(|b| *b == 0)
            .filter(|n| !n.is_empty())
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&r.join("d")), ["trusted.host", "user.same", "user.y"]);
    let mut buf = vec![0u8; 64];
    let n = rustix::fs::getxattr(r.join("d"), "user.same", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"v2");
    let m = fs::metadata(r.join("d")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o2750, 3, 4));
    assert_eq!(fs::read(r.join("d/a")).unwrap(), b"a");
    assert!(names(&r).iter().all(|n| !n.starts_with("user.")));
}

/// Set in the child process that [`in_child`] starts.
const CHILD: &str = "BERTH_CORPUS_CHILD";

/// Runs `body` in a child process (this test binary, `test` alone), on a
/// thread with a 2 MiB stack and with at most 256 open files: a removal
/// that recurses once per level then overflows its stack, and one that
/// holds a directory fd per level runs out of fds, well before the 20,200
/// levels of [`deep_chain`] here. A stack overflow aborts the whole process, so
/// in the harness itself it would end every test at once; here it fails
/// this test only, with the child's output. The child's scratch
/// directories live below one of the parent's, which `rm -rf` removes
/// whatever the child left (std's `remove_dir_all`, in [`Scratch`]'s drop,
/// recurses once per level too).
fn in_child(test: &str, body: fn()) {
    use rustix::process::{Resource, Rlimit, setrlimit};
    if std::env::var_os(CHILD).is_some() {
        let max = rustix::process::getrlimit(Resource::Nofile).maximum;
        let lim = Rlimit {
            current: Some(256),
            maximum: max,
        };
        setrlimit(Resource::Nofile, lim).unwrap();
        let t = std::thread::Builder::new()
            .name(test.to_string())
            .stack_size(2 << 20)
            .spawn(body)
            .unwrap();
        if let Err(p) = t.join() {
            std::panic::resume_unwind(p);
        }
        return;
    }
    // On a tmpfs where there is one (berth-init unpacks into one too):
    // ext4 takes twice as long to make and remove the deep trees.
    let shm = Path::new("/dev/shm");
    let s = if shm.is_dir() {
        let dir = shm.join(format!("berth-test-{test}-{}", std::process::id()));
        fs::create_dir(&dir).unwrap();
        Scratch(dir)
    } else {
        Scratch::new("child")
    };
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("TMPDIR", s.path())
        .output()
        .unwrap();
    common::run(std::process::Command::new("rm").arg("-rf").arg(s.path()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} in a child process: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Directories `a/a/…/a`, `depth` levels deep or a few more, with a file
/// `f` at the bottom; for 20,200 levels, ten times the depth a name within
/// PATH_MAX can reach. Every name stays under 410 bytes: each entry's
/// parent is resolved in-root through symlinks, pointers `pN` to the
/// current bottom (`/hI/a/…/a`, 200 levels more each time) and hubs `hI`
/// (`/hI-1/a/…/a`, a new one every 2,000 levels, so no target nears
/// PATH_MAX and a lookup follows at most 12 symlinks for 20,200 levels,
/// below the kernel's 40).
fn deep_chain(depth: usize) -> Vec<E> {
    const STEP: usize = 200;
    const HUB: usize = 2_000;
    let mut entries = vec![E::symlink("h0", "/")];
    let (mut hubs, mut below_hub, mut made) = (0, 0, 0);
    let step = "/a".repeat(STEP);
    let mut p = String::new();
    while made < depth {
        if below_hub + STEP > HUB {
            entries.push(E::symlink(
                format!("h{}", hubs + 1),
                format!("/h{hubs}{}", "/a".repeat(below_hub)),
            ));
            hubs += 1;
            below_hub = 0;
        }
        p = format!("p{}", entries.len());
        entries.push(E::symlink(
            &p,
            format!("/h{hubs}{}", "/a".repeat(below_hub)),
        ));
        for i in 1..=STEP {
            entries.push(E::dir(format!("{p}{}", &step[..2 * i])));
        }
        below_hub += STEP;
        made += STEP;
    }
    entries.push(E::file(format!("{p}{step}/f"), b"bottom"));
    entries
}

/// How many levels of `a` the chain below `root` has, and whether `f` is
/// at its bottom (walked by fd: the path is far longer than PATH_MAX).
fn chain_depth(root: &Path) -> (usize, bool) {
    use rustix::fs::{AtFlags, Mode, OFlags, openat, statat};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut dir = rustix::fs::open(root, flags, Mode::empty()).unwrap();
    let mut depth = 0;
    while let Ok(next) = openat(&dir, "a", flags, Mode::empty()) {
        dir = next;
        depth += 1;
    }
    (depth, statat(&dir, "f", AtFlags::SYMLINK_NOFOLLOW).is_ok())
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Removing a tree deeper than any tar name (whiteout, replacement by a
/// file, opaque directory) neither recurses once per level (a 2 MiB
/// stack) nor holds a directory fd per level (256 open files), and never
/// follows the symlinks that built it. (The recursive removal overflowed
/// the stack, and PID 1 aborted.)
#[test]
fn deep_trees_are_removed_without_recursion() {
    in_child("deep_trees_are_removed_without_recursion", || {
        let w = World::new("deep");
        let r = w.root();
        let before = w.outside();
        w.apply(&[deep_chain(20_200)]).unwrap();
        assert_eq!(chain_depth(&r), (20_200, true));
        // A whiteout of the top, in a layer that also adds `a/a/x`: `a`
        // and `a/a` stay (this layer's), all else below goes.
        w.apply(&[vec![E::file("a/a/x", b"x"), E::whiteout(".wh.a")]])
            .unwrap();
        assert_eq!(names(&r.join("a/a")), ["x"]);
        assert_eq!(names(&r.join("a")), ["a"]);
        // The symlinks are left, dangling now, and were not followed.
        assert!(fs::symlink_metadata(r.join("h9")).unwrap().is_symlink());
        assert_eq!(before, w.outside());
        // Shallower (the callers share the removal): replaced by a file,
        // and under an opaque marker.
        w.apply(&[deep_chain(4_000), vec![E::file("a", b"file")]])
            .unwrap();
        assert_eq!(fs::read(r.join("a")).unwrap(), b"file");
        w.apply(&[
            vec![E::dir("a")],
            deep_chain(4_000),
            vec![E::file("a/new", b"n"), E::whiteout("a/.wh..wh..opq")],
        ])
        .unwrap();
        assert_eq!(names(&r.join("a")), ["new"]);
        assert_eq!(before, w.outside());
    });
}

/// An unpack that fails after building a 20,200-level tree removes it
/// (std's `remove_dir_all` overflowed the stack there) and DEST with the
/// parent it made; the error is the failing entry's, on one line.
#[test]
fn a_failed_unpack_removes_a_deep_tree() {
    in_child("a_failed_unpack_removes_a_deep_tree", || {
        require_root();
        let s = Scratch::new("deep-unpack");
        let l = Layout::new(&s.path().join("img"));
        let mut layer = deep_chain(20_200);
        layer.push(E::hardlink("zz", "missing"));
        let (m, _) = l.image(&[tar(&layer)], Comp::None, "amd64");
        l.index(&[(m, Some("t"))]);
        let r = ImageRef::parse(&format!("oci:{}:t", l.dir.display())).unwrap();
        let made = s.path().join("made");
        let err = unpack_bundle(&r, &made.join("bundle"), UnpackOptions::default())
            .err()
            .map(|e| chain(&e))
            .expect("the hardlink to a missing target fails");
        assert!(
            err.ends_with("tar entry \"zz\": hardlink target \"missing\" does not exist"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
        assert!(!made.exists(), "DEST and its parent removed after: {err}");
    });
}

/// When removing the partial bundle fails too (here a directory of the
/// rootfs made immutable meanwhile), the error says so, names what was
/// left, and still ends with why the unpack failed, on one line.
#[test]
fn a_failed_cleanup_is_reported() {
    use rustix::fs::{IFlags, ioctl_getflags, ioctl_setflags};
    require_root();
    let s = Scratch::new("cleanup");
    let l = Layout::new(&s.path().join("img"));
    let layers = [
        tar(&[E::dir("d"), E::file("d/f", b"f")]),
        tar(&[E::hardlink("zz", "missing")]),
    ];
    let (m, _) = l.image(&layers, Comp::None, "amd64");
    l.index(&[(m, Some("t"))]);
    let r = ImageRef::parse(&format!("oci:{}:t", l.dir.display())).unwrap();
    let dest = s.path().join("bundle");
    let d = dest.join("rootfs/d");
    let lock = |on: bool| {
        let fd = fs::File::open(&d).unwrap();
        let flags = ioctl_getflags(&fd).unwrap();
        let flags = if on {
            flags | IFlags::IMMUTABLE
        } else {
            flags - IFlags::IMMUTABLE
        };
        ioctl_setflags(&fd, flags).unwrap();
    };
    let mut locked = false;
    let mut progress = |p: Progress<'_>| {
        if let Progress::LayerDone { index: 0, .. } = p {
            lock(true);
            locked = true;
        }
    };
    let opts = UnpackOptions {
        progress: Some(&mut progress),
        ..Default::default()
    };
    let err = unpack_bundle(&r, &dest, opts).err().map(|e| chain(&e));
    assert!(locked);
    lock(false);
    let err = err.expect("the hardlink to a missing target fails");
    let want = format!(
        "the unpack failed and left a partial bundle in {} (removing it: remove \"{}\": Operation not permitted (os error 1)): ",
        dest.display(),
        d.display()
    );
    assert!(err.starts_with(&want), "{err}");
    assert!(
        err.ends_with("tar entry \"zz\": hardlink target \"missing\" does not exist"),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");
    assert!(d.join("f").is_file() && !dest.join("config.json").exists());
}
