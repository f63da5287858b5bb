//! Equivalence with `umoci unpack` on real images made by other tools: a
//! busybox image built with umoci (several layers: content, whiteouts, an
//! opaque directory, file/dir replacement), and the same image recompressed
//! to zstd by skopeo. The trees are compared entry by entry: paths, types,
//! modes, owners, contents, symlink targets, hardlink groups, device
//! numbers, xattrs and mtimes (of directories too, the root included).
//!
//! `BERTH_EQUIV_ROOTFS=/path/to/rootfs cargo test -p berth-bundles --test
//! umoci` runs the same comparison on another root filesystem, e.g. a
//! Debian minbase made with `debootstrap --variant=minbase bookworm DIR`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_bundles::{ImageRef, UnpackOptions, unpack_bundle};
use common::{Node, Scratch, require_root, require_tool, run, sh, snapshot};

/// A busybox root with every file type and metadata that matters.
fn busybox_rootfs(dir: &Path) {
    require_tool("busybox", "busybox-static");
    let d = dir.display();
    sh(&format!(
        "mkdir -p {d}/bin {d}/etc {d}/tmp {d}/dev {d}/opt/old {d}/var/run-real {d}/replace-me/sub {d}/usr/share
         cp /bin/busybox {d}/bin/busybox
         for a in $(/bin/busybox --list); do ln -sf busybox {d}/bin/$a; done
         ln {d}/bin/busybox {d}/bin/busybox-hardlink
         ln {d}/bin/busybox {d}/bin/busybox-hardlink2
         printf 'root:x:0:0:root:/root:/bin/sh\\napp:x:1000:1000::/home/app:/bin/sh\\n' > {d}/etc/passwd
         printf 'root:x:0:\\napp:x:1000:\\n' > {d}/etc/group
         echo motd > {d}/etc/motd
         chmod 1777 {d}/tmp
         mknod {d}/dev/null c 1 3 && chmod 666 {d}/dev/null
         mknod {d}/dev/loop9 b 7 9
         mkfifo {d}/dev/fifo && chmod 640 {d}/dev/fifo
         cp /bin/busybox {d}/bin/suid && chmod 4755 {d}/bin/suid
         echo x > {d}/bin/sgid && chown 1000:1000 {d}/bin/sgid && chmod 2750 {d}/bin/sgid
         echo app > {d}/opt/old/file && chown -R 1000:1000 {d}/opt
         ln -s /var/run-real {d}/var/run
         ln -s ../../nowhere/at/all {d}/usr/dangling
         mkdir -p {d}/usr/share/{long}
         echo long > {d}/usr/share/{long}/{long}
         echo f > {d}/replace-me/sub/f
         touch -d @1600000000 {d}/etc/motd",
        long = "l".repeat(120),
    ));
    // xattrs umoci carries as PAX SCHILY.xattr records.
    rustix::fs::setxattr(
        dir.join("bin/sgid"),
        "user.note",
        b"hello",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let cap = [
        1u8, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    rustix::fs::setxattr(
        dir.join("bin/suid"),
        "security.capability",
        &cap,
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    // CAP_DAC_OVERRIDE + CAP_FOWNER: the mask's first byte is 0x0a, a
    // newline inside the PAX record's value.
    fs::write(dir.join("bin/capnl"), b"capnl").unwrap();
    rustix::fs::setxattr(
        dir.join("bin/capnl"),
        "security.capability",
        &CAP_WITH_NEWLINE,
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
}

const CAP_WITH_NEWLINE: [u8; 20] = [
    1, 0, 0, 2, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// Builds `layout:t` with umoci: the rootfs, then a layer of changes.
fn umoci_image(s: &Path, rootfs: &Path) -> PathBuf {
    require_tool("umoci", "umoci");
    let layout = s.join("layout");
    let l = layout.display();
    sh(&format!(
        "umoci init --layout {l} && umoci new --image {l}:t"
    ));
    run(Command::new("umoci")
        .args(["insert", "--image", &format!("{l}:t")])
        .arg(rootfs)
        .arg("/"));
    if rootfs.join("etc/motd").exists() {
        // Layer 2: a whiteout; layer 3: an opaque /opt; layer 4: a file
        // where a directory was and a new directory.
        let extra = s.join("extra");
        sh(&format!(
            "mkdir -p {e}/opt {e}/newdir && echo new > {e}/opt/new && echo file > {e}/replace
             chmod 700 {e}/newdir",
            e = extra.display()
        ));
        sh(&format!("umoci insert --image {l}:t --whiteout /etc/motd"));
        sh(&format!(
            "umoci insert --image {l}:t --opaque {}/opt /opt",
            extra.display()
        ));
        sh(&format!(
            "umoci insert --image {l}:t --whiteout /replace-me"
        ));
        sh(&format!(
            "umoci insert --image {l}:t {}/replace /replace-me",
            extra.display()
        ));
        sh(&format!(
            "umoci insert --image {l}:t {}/newdir /newdir",
            extra.display()
        ));
    }
    sh(&format!("umoci config --image {l}:t --config.cmd /bin/sh"));
    layout
}

/// A node reduced to what must match, with hardlink groups by path.
type View = BTreeMap<PathBuf, (Node, Option<BTreeSet<PathBuf>>, Vec<(String, Vec<u8>)>)>;

fn view(root: &Path) -> View {
    let snap = snapshot(root);
    let mut groups: BTreeMap<u64, BTreeSet<PathBuf>> = BTreeMap::new();
    for (p, n) in &snap {
        if n.kind != "dir" {
            groups.entry(n.ino).or_default().insert(p.clone());
        }
    }
    snap.into_iter()
        .map(|(p, mut n)| {
            let group = (n.kind != "dir")
                .then(|| groups[&n.ino].clone())
                .filter(|g| g.len() > 1);
            n.ino = 0;
            if p.as_os_str().is_empty() {
                // umoci chmods the root to its own choice; ours is 0755.
                n.mode = 0;
            }
            let xattrs = xattrs(&root.join(&p), &n);
            (p, (n, group, xattrs))
        })
        .collect()
}

fn xattrs(path: &Path, n: &Node) -> Vec<(String, Vec<u8>)> {
    if n.kind == "symlink" {
        return Vec::new();
    }
    let mut names = vec![0u8; 4096];
    let len = rustix::fs::llistxattr(path, &mut names).unwrap_or(0);
    let mut out = Vec::new();
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        if !(name.starts_with("user.") || name == "security.capability") {
            continue;
        }
        let mut v = vec![0u8; 4096];
        let l = rustix::fs::lgetxattr(path, name.as_str(), &mut v).unwrap();
        out.push((name, v[..l].to_vec()));
    }
    out
}

fn compare(ours: &Path, theirs: &Path) {
    let (a, b) = (view(ours), view(theirs));
    let mut diffs = Vec::new();
    for (p, x) in &a {
        match b.get(p) {
            None => diffs.push(format!("only in berth: {p:?}")),
            Some(y) if x != y => diffs.push(format!("{p:?}: berth {x:?} umoci {y:?}")),
            _ => {}
        }
    }
    for p in b.keys().filter(|p| !a.contains_key(*p)) {
        diffs.push(format!("only in umoci: {p:?}"));
    }
    assert!(
        diffs.is_empty(),
        "{} differences, first ones:\n{}",
        diffs.len(),
        diffs
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(a.len() > 10, "suspiciously small tree: {}", a.len());
}

fn berth_unpack(image: &str, dest: &Path) {
    let r = ImageRef::parse(image).unwrap();
    unpack_bundle(&r, dest, UnpackOptions::default()).unwrap_or_else(|e| {
        let mut msg = e.to_string();
        let mut cur = std::error::Error::source(&e);
        while let Some(c) = cur {
            msg.push_str(&format!(": {c}"));
            cur = c.source();
        }
        panic!("berth unpack {image}: {msg}")
    });
}

fn equivalence(rootfs: &Path, s: &Path) {
    require_tool("skopeo", "skopeo");
    let layout = umoci_image(s, rootfs);
    let l = layout.display();
    let theirs = s.join("umoci-bundle");
    sh(&format!("umoci unpack --image {l}:t {}", theirs.display()));
    // gzip layers as umoci wrote them.
    let ours = s.join("berth-gzip");
    berth_unpack(&format!("oci:{l}:t"), &ours);
    compare(&ours.join("rootfs"), &theirs.join("rootfs"));
    // The same image recompressed to zstd by skopeo (umoci 0.4.7 cannot
    // read zstd, so the reference stays umoci's gzip unpack; the layers'
    // uncompressed content and diff_ids are unchanged by recompression).
    let zlayout = s.join("zstd-layout");
    sh(&format!(
        "skopeo copy --quiet --dest-compress-format zstd oci:{l}:t oci:{}:t",
        zlayout.display()
    ));
    let idx = fs::read_to_string(zlayout.join("index.json")).unwrap();
    let mdigest = idx.split("sha256:").nth(1).unwrap()[..64].to_string();
    let manifest = fs::read_to_string(zlayout.join("blobs/sha256").join(mdigest)).unwrap();
    assert!(
        manifest.contains("tar+zstd"),
        "skopeo did not write zstd layers: {manifest}"
    );
    let ours_z = s.join("berth-zstd");
    berth_unpack(&format!("oci:{}:t", zlayout.display()), &ours_z);
    compare(&ours_z.join("rootfs"), &theirs.join("rootfs"));
    // The bundle's spec is valid JSON with the image's command.
    let spec: serde_json::Value =
        serde_json::from_slice(&fs::read(ours.join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["process"]["args"], serde_json::json!(["/bin/sh"]));
}

#[test]
fn umoci_equivalence_busybox() {
    require_root();
    let s = Scratch::new("umoci");
    let rootfs = s.path().join("src");
    busybox_rootfs(&rootfs);
    fs::set_permissions(&rootfs, fs::Permissions::from_mode(0o755)).unwrap();
    equivalence(&rootfs, s.path());
    // The xattrs made it through both unpackers (so the comparison above
    // covered them).
    let ours = s.path().join("berth-zstd/rootfs");
    let mut v = vec![0u8; 64];
    let n = rustix::fs::getxattr(ours.join("bin/sgid"), "user.note", &mut v).unwrap();
    assert_eq!(&v[..n], b"hello");
    assert!(rustix::fs::getxattr(ours.join("bin/suid"), "security.capability", &mut v).is_ok());
    let n = rustix::fs::getxattr(ours.join("bin/capnl"), "security.capability", &mut v).unwrap();
    assert_eq!(&v[..n], CAP_WITH_NEWLINE);
}

/// Opt-in: compare on a full root filesystem (see the module docs), e.g.
/// `BERTH_EQUIV_ROOTFS=/var/tmp/berth-bench/minbase cargo test -p
/// berth-bundles --test umoci -- --ignored`.
#[test]
#[ignore = "needs BERTH_EQUIV_ROOTFS=<root filesystem dir>, e.g. a debootstrap minbase"]
fn umoci_equivalence_external_rootfs() {
    let dir = std::env::var_os("BERTH_EQUIV_ROOTFS")
        .expect("set BERTH_EQUIV_ROOTFS to a root filesystem, e.g. debootstrap --variant=minbase bookworm DIR");
    require_root();
    let s = Scratch::new("umoci-ext");
    equivalence(Path::new(&dir), s.path());
}
