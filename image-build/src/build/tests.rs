use super::*;

fn prep(json: &str) -> Result<Prepared, BuildError> {
    // ext4 is built in, everything else a module of that name.
    prepare(
        Path::new("/src/app/manifest.json"),
        Path::new("/src/app"),
        json.as_bytes(),
        &|m| {
            Ok(if m == "ext4" {
                kernel::Provider::Builtin(m.to_owned())
            } else {
                kernel::Provider::Modules(vec![berth_init::modules::module_name(m)])
            })
        },
    )
}

#[test]
fn images_are_taken_out_and_named() {
    let p = prep(
        r#"{"version": 1,
            "images": {"web": "oci:img/web:latest", "db": "docker-archive:db.tar"},
            "services": [{"name": "web", "image": "web"}, {"name": "db", "image": "db"}]}"#,
    )
    .unwrap();
    assert!(p.manifest.get("images").is_none());
    assert_eq!(
        p.images,
        vec![
            ("db".to_string(), "docker-archive:db.tar".to_string()),
            ("web".to_string(), "oci:img/web:latest".to_string())
        ]
    );
}

#[test]
fn unknown_image_is_refused_with_the_available_names() {
    let err = prep(
        r#"{"version": 1, "images": {"web": "oci:x"},
            "services": [{"name": "web", "image": "nginx"}]}"#,
    )
    .unwrap_err();
    let text = crate::report(&err);
    assert!(text.contains("services.web.image"), "{text}");
    assert!(
        text.contains("unknown image \"nginx\" (available: web)"),
        "{text}"
    );
}

#[test]
fn invalid_manifests_are_refused_at_build_time() {
    for (json, needle) in [
        (r#"{"version": 1, "bogus": true}"#, "bogus"),
        (
            r#"{"version": 1, "images": ["x"]}"#,
            "images: must be an object",
        ),
        (
            r#"{"version": 1, "images": {"a": 1}}"#,
            "images.a: must be a string",
        ),
        (r#"[1]"#, "top level must be an object"),
        (r#"{"version": 1,"#, "parse build manifest"),
        (
            r#"{"version": 1, "services": [{"name": "a", "host": true, "command": ["x"],
                "depends_on": ["b"]}]}"#,
            "services.a.depends_on",
        ),
        (
            r#"{"version": 1, "services": [{"name": "a", "host": true, "command": ["x"],
                "restart": {"backoff": {"initial": "soon"}}}]}"#,
            "services.a.restart.backoff.initial",
        ),
        // Line and column are those of the file as written.
        (
            "{\n  \"version\": 1,\n  \"images\": {},\n\n  \"servics\": []\n}",
            "unknown field `servics`, expected one of `version`, `images`, ",
        ),
        (
            "{\n  \"version\": 1,\n  \"images\": {},\n\n  \"servics\": []\n}",
            "at line 5 column 11",
        ),
    ] {
        let err = prep(json).unwrap_err();
        let text = crate::report(&err);
        assert!(text.contains(needle), "{json}: {text}");
    }
}

#[test]
fn bundles_are_rewritten_to_their_place_in_the_initramfs() {
    let p = prep(
        r#"{"version": 1,
            "tasks": [{"name": "setup", "bundle": "bundles/setup"}],
            "services": [{"name": "web", "bundle": "/abs/web"}]}"#,
    )
    .unwrap();
    assert_eq!(
        p.manifest["tasks"][0]["bundle"],
        "/berth/bundles/tasks/setup"
    );
    assert_eq!(
        p.manifest["services"][0]["bundle"],
        "/berth/bundles/services/web"
    );
    assert_eq!(p.bundles[0].host, Path::new("/src/app/bundles/setup"));
    assert_eq!(p.bundles[1].host, Path::new("/abs/web"));
}

#[test]
fn machine_modules_follow_disk_and_network() {
    let p = prep(
        r#"{"version": 1, "modules": ["virtio_blk", "loop"],
            "data_disk": {"device": "/dev/vda", "fstype": "ext4"},
            "network": {"interfaces": [{"name": "eth0", "address": "10.0.2.15", "prefix": 24}]}}"#,
    )
    .unwrap();
    // ext4 is built into the kernel here (has_module says no): not added.
    // The NIC's drivers go with the network, loaded in the background.
    assert_eq!(
        p.manifest["modules"],
        serde_json::json!(["virtio_blk", "loop", "virtio_pci"])
    );
    assert_eq!(
        p.manifest["network"]["modules"],
        serde_json::json!(["virtio_pci", "virtio_net"])
    );
    // Named by the manifest already: kept once, in its place.
    let p = prep(
        r#"{"version": 1, "network": {"modules": ["virtio_net", "e1000"],
            "interfaces": [{"name": "eth0", "address": "10.0.2.15", "prefix": 24}]}}"#,
    )
    .unwrap();
    assert_eq!(
        p.manifest["network"]["modules"],
        serde_json::json!(["virtio_net", "e1000", "virtio_pci"])
    );
    assert!(p.manifest.get("modules").is_none(), "{}", p.manifest);
    let p = prep(r#"{"version": 1}"#).unwrap();
    assert!(p.manifest.get("modules").is_none());
    // overlay: only for an image unit that writes to its root.
    let units = |ro: &str| {
        format!(
            r#"{{"version": 1, "images": {{"bb": "oci:layout:bb"}},
                "tasks": [{{"name": "t", "image": "bb", "read_only": true}}],
                "services": [{{"name": "s", "image": "bb"{ro}}}]}}"#
        )
    };
    let p = prep(&units("")).unwrap();
    assert_eq!(p.manifest["modules"], serde_json::json!(["overlay"]));
    let p = prep(&units(r#", "read_only": true"#)).unwrap();
    assert!(p.manifest.get("modules").is_none(), "{}", p.manifest);
    let p = prep(&units(
        r#", "read_only": true, "capabilities": ["CAP_SYS_ADMIN"]"#,
    ))
    .unwrap();
    assert_eq!(p.manifest["modules"], serde_json::json!(["overlay"]));
}

/// A bundle in a fresh temporary directory (`berth-build-TAG-PID`): an
/// executable `rootfs/bin/tool`, and a config.json running `/bin/tool`
/// with `mounts` (a JSON array); copied for service web.
fn test_bundle(tag: &str, mounts: &str) -> (PathBuf, BundleCopy) {
    let dir = std::env::temp_dir().join(format!("berth-build-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("rootfs/bin")).unwrap();
    fs::write(dir.join("rootfs/bin/tool"), b"tool").unwrap();
    make_executable(&dir.join("rootfs/bin/tool"));
    fs::write(
        dir.join("config.json"),
        format!(
            r#"{{"ociVersion": "1.0.2", "root": {{"path": "rootfs"}},
                "process": {{"args": ["/bin/tool"], "cwd": "/", "env": ["PATH=/usr/bin:/bin"],
                            "user": {{"uid": 0, "gid": 0}}}},
                "mounts": {mounts},
                "linux": {{"namespaces": [{{"type": "mount"}}]}}}}"#
        ),
    )
    .unwrap();
    let b = BundleCopy {
        kind: "service",
        unit: "web".into(),
        host: dir.clone(),
        archive: "berth/bundles/services/web".into(),
    };
    (dir, b)
}

/// [`bundle_entries`] for an appliance kernel whose tmpfs keeps `user.*`
/// attributes.
fn pack_bundle(tree: &mut Tree, b: &BundleCopy, scratch: &Path) -> Result<(u64, u64), BuildError> {
    bundle_entries(
        tree,
        b,
        scratch,
        &pack::PackOptions::for_kernel("6.18.0", true),
    )
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Unpacks the root filesystem layer a bundle's copy left in `scratch`
/// (`rootfs.oci`) into `dest`, as berth-init does at boot.
fn unpack_packed(scratch: &Path, dest: &Path) {
    let _ = fs::remove_dir_all(dest);
    fs::create_dir_all(dest).unwrap();
    let image = berth_bundles::image::Image::open(
        &ImageRef::Oci {
            path: scratch.join("rootfs.oci"),
            tag: Some(pack::ROOTFS_IMAGE.into()),
        },
        &berth_bundles::Platform::default(),
    )
    .unwrap();
    let rootfs = berth_bundles::apply::Rootfs::open(dest).unwrap();
    berth_bundles::unpack::unpack_rootfs(&image, &rootfs, None).unwrap();
}

#[test]
fn bundle_rootfs_is_packed_as_a_layer_with_owners_kept() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
    let dir = std::env::temp_dir().join(format!("berth-build-bundle-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("myroot/bin")).unwrap();
    fs::write(dir.join("myroot/bin/tool"), b"tool").unwrap();
    // chown clears set-user-ID: it goes first.
    std::os::unix::fs::chown(dir.join("myroot/bin/tool"), Some(1000), Some(1001)).unwrap();
    fs::set_permissions(
        dir.join("myroot/bin/tool"),
        fs::Permissions::from_mode(0o4750),
    )
    .unwrap();
    symlink("tool", dir.join("myroot/bin/alias")).unwrap();
    // Longer than ustar's 100 + 155 bytes: a PAX path record.
    let deep = format!("{}/{}", "d".repeat(120), "e".repeat(150));
    fs::create_dir_all(dir.join("myroot").join(&deep)).unwrap();
    let long_name = "f".repeat(200);
    fs::write(dir.join("myroot").join(&deep).join(&long_name), b"deep").unwrap();
    symlink(
        "/".to_owned() + &"t".repeat(300),
        dir.join("myroot/bin/far"),
    )
    .unwrap();
    let fifo = dir.join("myroot/bin/fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    fs::write(
        dir.join("config.json"),
        br#"{"ociVersion": "1.0.2", "root": {"path": "myroot"},
            "process": {"args": ["/bin/tool"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "linux": {"namespaces": [{"type": "mount"}]}}"#,
    )
    .unwrap();
    let mut tree = Tree::default();
    let b = BundleCopy {
        kind: "service",
        unit: "web".into(),
        host: dir.clone(),
        archive: "berth/bundles/services/web".into(),
    };
    let scratch = dir.join("scratch");
    pack_bundle(&mut tree, &b, &scratch).unwrap();
    let Some(Entry {
        kind: Kind::File(cpio::Data::Bytes(config)),
        ..
    }) = tree.get("berth/bundles/services/web/config.json")
    else {
        panic!("no config.json");
    };
    let config: Value = serde_json::from_slice(config).unwrap();
    assert_eq!(config["root"]["path"], "rootfs");
    assert_eq!(config["process"]["args"][0], "/bin/tool");
    // The layout goes in; no tree of the root filesystem does.
    assert!(
        tree.get("berth/bundles/services/web/rootfs.oci/index.json")
            .is_some()
    );
    assert!(tree.get("berth/bundles/services/web/rootfs").is_none());
    assert!(
        tree.get("berth/bundles/services/web/rootfs/bin/tool")
            .is_none()
    );

    let x = dir.join("x");
    unpack_packed(&scratch, &x);
    let tool = fs::symlink_metadata(x.join("bin/tool")).unwrap();
    assert_eq!((tool.uid(), tool.gid()), (1000, 1001));
    assert_eq!(tool.mode() & 0o7777, 0o4750);
    assert_eq!(tool.mtime(), 0);
    assert_eq!(fs::read(x.join("bin/tool")).unwrap(), b"tool");
    assert_eq!(
        fs::read_link(x.join("bin/alias")).unwrap(),
        Path::new("tool")
    );
    assert_eq!(
        fs::read_link(x.join("bin/far")).unwrap(),
        Path::new(&("/".to_owned() + &"t".repeat(300)))
    );
    assert_eq!(fs::read(x.join(&deep).join(&long_name)).unwrap(), b"deep");
    let fifo = fs::symlink_metadata(x.join("bin/fifo")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&fifo.file_type()));
    assert_eq!(fifo.mode() & 0o7777, 0o640);

    // The same tree packs to the same bytes.
    let again = dir.join("again");
    pack_bundle(&mut Tree::default(), &b, &again).unwrap();
    let index = |s: &Path| fs::read(s.join("rootfs.oci/index.json")).unwrap();
    assert_eq!(index(&scratch), index(&again));

    // A bundle without its root directory is refused with the unit named.
    fs::remove_dir_all(dir.join("myroot")).unwrap();
    let err = pack_bundle(&mut Tree::default(), &b, &dir.join("s3")).unwrap_err();
    let text = crate::report(&err);
    assert!(text.contains("bundle") && text.contains("of web"), "{text}");
    assert!(text.contains("\"myroot\" is not a directory"), "{text}");
    let _ = fs::remove_dir_all(&dir);
}

/// The image layout the build writes goes in as root's 0755/0644 whatever
/// the umask made of it on disk (`umask 077` gave 0700/0600 and other
/// bytes); a bundle's root keeps its modes.
#[test]
fn written_trees_do_not_depend_on_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("berth-build-umask-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    fs::write(dir.join("blobs/sha256/abc"), b"blob").unwrap();
    fs::write(dir.join("tool"), b"tool").unwrap();
    for (path, mode) in [("", 0o700), ("blobs", 0o700), ("blobs/sha256", 0o700)] {
        fs::set_permissions(dir.join(path), fs::Permissions::from_mode(mode)).unwrap();
    }
    fs::set_permissions(
        dir.join("blobs/sha256/abc"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    fs::set_permissions(dir.join("tool"), fs::Permissions::from_mode(0o4750)).unwrap();
    let mut written = Tree::default();
    add_host_tree(&mut written, &dir, "layout", false).unwrap();
    let perm = |t: &Tree, p: &str| t.get(p).unwrap().perm;
    assert_eq!(perm(&written, "layout"), 0o755);
    assert_eq!(perm(&written, "layout/blobs/sha256"), 0o755);
    assert_eq!(perm(&written, "layout/blobs/sha256/abc"), 0o644);
    let mut copied = Tree::default();
    add_host_tree(&mut copied, &dir, "rootfs", true).unwrap();
    assert_eq!(perm(&copied, "rootfs/blobs"), 0o700);
    assert_eq!(perm(&copied, "rootfs/tool"), 0o4750);
    let _ = fs::remove_dir_all(&dir);
}

/// A failed build removes the directories it made above OUTDIR and keeps
/// the ones that were there.
#[test]
fn a_failed_build_removes_the_parents_it_made() {
    let dir = std::env::temp_dir().join(format!("berth-build-parents-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("kept")).unwrap();
    let parent = dir.join("kept/a/b");
    assert_eq!(first_missing(&parent), Some(dir.join("kept/a")));
    assert_eq!(first_missing(&dir), None);
    let tmp = TempDir {
        path: parent.join(".out.berth-build-1"),
        keep: false,
        made: first_missing(&parent),
    };
    fs::create_dir_all(tmp.path.join("work")).unwrap();
    drop(tmp);
    assert!(!dir.join("kept/a").exists());
    assert!(dir.join("kept").is_dir());
    // A directory that holds something else meanwhile stays.
    fs::create_dir_all(dir.join("kept/a/other")).unwrap();
    let tmp = TempDir {
        path: dir.join("kept/a/b/.out.berth-build-1"),
        keep: false,
        made: Some(dir.join("kept/a")),
    };
    fs::create_dir_all(&tmp.path).unwrap();
    drop(tmp);
    assert!(!dir.join("kept/a/b").exists());
    assert!(dir.join("kept/a/other").is_dir());
    // -o naming a link to a previous output is refused, not replaced.
    std::os::unix::fs::symlink(dir.join("kept"), dir.join("link")).unwrap();
    let text = crate::report(&check_replaceable(&dir.join("link")).unwrap_err());
    assert!(
        text.ends_with("is a symbolic link: give the directory it points to"),
        "{text}"
    );
    std::os::unix::fs::symlink(dir.join("nothing"), dir.join("dangling")).unwrap();
    let text = crate::report(&check_replaceable(&dir.join("dangling")).unwrap_err());
    assert!(
        text.ends_with("is a symbolic link to nothing: give a directory path"),
        "{text}"
    );
    let _ = fs::remove_dir_all(&dir);
}

/// A busybox-like bundle: one 1 MiB binary under many names (hard links).
/// Its layer holds the data once, and the names unpack as one inode; a
/// name outside the tree does not count.
#[test]
fn a_bundles_hard_links_are_one_file_in_its_layer() {
    use std::os::unix::fs::MetadataExt;
    let dir = std::env::temp_dir().join(format!("berth-build-links-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("rootfs/bin")).unwrap();
    fs::create_dir_all(dir.join("rootfs/usr/sbin")).unwrap();
    // Not compressible: the layer's size shows the data's copies.
    let mut big = vec![0u8; 1 << 20];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for b in big.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    fs::write(dir.join("rootfs/bin/busybox"), &big).unwrap();
    make_executable(&dir.join("rootfs/bin/busybox"));
    let mut names = vec!["bin/busybox".to_owned()];
    for i in 0..150 {
        let name = format!("{}/tool{i:03}", if i % 2 == 0 { "bin" } else { "usr/sbin" });
        fs::hard_link(
            dir.join("rootfs/bin/busybox"),
            dir.join("rootfs").join(&name),
        )
        .unwrap();
        names.push(name);
    }
    // Linked from outside the bundle's tree: one name in it.
    fs::write(dir.join("rootfs/bin/config"), b"conf").unwrap();
    fs::hard_link(dir.join("rootfs/bin/config"), dir.join("outside")).unwrap();
    fs::write(
        dir.join("config.json"),
        br#"{"ociVersion": "1.0.2", "root": {"path": "rootfs"},
            "process": {"args": ["/bin/busybox"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "linux": {"namespaces": [{"type": "mount"}]}}"#,
    )
    .unwrap();
    let b = BundleCopy {
        kind: "service",
        unit: "bb".into(),
        host: dir.clone(),
        archive: "berth/bundles/services/bb".into(),
    };
    let mut tree = Tree::default();
    let scratch = dir.join("scratch");
    let (copied, stored) = pack_bundle(&mut tree, &b, &scratch).unwrap();
    assert!(copied < (1 << 20) + 4096, "counted {copied} bytes");
    assert!(
        stored > 1 << 20 && stored < (1 << 20) + 64 * 1024,
        "stored {stored} bytes"
    );
    let mut bytes = Vec::new();
    tree.write(&mut bytes).unwrap();
    assert!(bytes.len() < (1 << 20) + 64 * 1024, "{} bytes", bytes.len());

    let x = dir.join("x");
    unpack_packed(&scratch, &x);
    let first = fs::metadata(x.join(&names[0])).unwrap();
    assert_eq!(first.nlink(), 151);
    for name in &names {
        let m = fs::metadata(x.join(name)).unwrap();
        assert_eq!(m.ino(), first.ino(), "{name}");
    }
    assert_eq!(fs::read(x.join("bin/tool000")).unwrap(), big);
    let config = fs::metadata(x.join("bin/config")).unwrap();
    assert_eq!(config.nlink(), 1);
    assert_eq!(fs::read(x.join("bin/config")).unwrap(), b"conf");
    let _ = fs::remove_dir_all(&dir);
}

/// A bundle file's extended attributes that berth-init's unpacker sets
/// (`user.*`, a file capability) are packed and come back at unpack; one
/// it would drop (`trusted.*`) is refused, naming file and attribute; the
/// host's own labels are left behind. A bind source copied as a tree (no
/// layer) still cannot carry any.
#[test]
fn bundle_xattrs_are_packed_or_refused() {
    use rustix::fs::{XattrFlags, lgetxattr, lremovexattr, lsetxattr};
    let (dir, b) = test_bundle(
        "xattr",
        r#"[{"destination": "/etc/app", "type": "bind", "source": "conf", "options": ["rbind", "ro"]}]"#,
    );
    let tool = dir.join("rootfs/bin/tool");
    fs::create_dir_all(dir.join("conf")).unwrap();
    fs::write(dir.join("conf/app.conf"), b"x").unwrap();
    assert!(
        rustix::process::geteuid().is_root(),
        "security.* and trusted.* xattrs need root: run the tests as root"
    );
    lsetxattr(&tool, "user.origin", b"build-host", XattrFlags::empty())
        .expect("user.* xattrs on the temporary directory's filesystem (ext4, tmpfs)");
    lsetxattr(
        dir.join("rootfs/bin"),
        "user.dir",
        b"d",
        XattrFlags::empty(),
    )
    .unwrap();
    // struct vfs_cap_data, revision 2, effective: cap_net_raw (13).
    let mut cap = Vec::new();
    for word in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
        cap.extend_from_slice(&word.to_le_bytes());
    }
    lsetxattr(&tool, "security.capability", &cap, XattrFlags::empty()).unwrap();
    // An SELinux host labels every file: that is no reason to fail.
    lsetxattr(
        &tool,
        "security.selinux",
        b"system_u:object_r:bin_t:s0\0",
        XattrFlags::empty(),
    )
    .unwrap();
    let scratch = dir.join("scratch");
    pack_bundle(&mut Tree::default(), &b, &scratch).unwrap();
    let x = dir.join("x");
    unpack_packed(&scratch, &x);
    let get = |path: &Path, name: &str| {
        let mut buf = vec![0u8; 256];
        lgetxattr(path, name, &mut buf[..]).map(|n| buf[..n].to_vec())
    };
    assert_eq!(
        get(&x.join("bin/tool"), "user.origin").unwrap(),
        b"build-host"
    );
    assert_eq!(
        get(&x.join("bin/tool"), "security.capability").unwrap(),
        cap
    );
    assert_eq!(get(&x.join("bin"), "user.dir").unwrap(), b"d");
    assert!(get(&x.join("bin/tool"), "security.selinux").is_err());

    lsetxattr(&tool, "trusted.note", b"x", XattrFlags::empty()).unwrap();
    let err = pack_bundle(&mut Tree::default(), &b, &dir.join("s2")).unwrap_err();
    let text = crate::report(&err);
    assert!(
        text.contains(&format!(
            "{}: has the extended attribute trusted.note, which berth-init does not set",
            tool.display()
        )) && text.contains("setfattr -x trusted.note"),
        "{text}"
    );
    lremovexattr(&tool, "trusted.note").unwrap();

    lsetxattr(
        dir.join("conf/app.conf"),
        "user.x",
        b"1",
        XattrFlags::empty(),
    )
    .unwrap();
    let err = pack_bundle(&mut Tree::default(), &b, &dir.join("s3")).unwrap_err();
    let text = crate::report(&err);
    assert!(
        text.contains(&format!(
            "{}: has the extended attribute user.x, and files outside a bundle's root \
             filesystem cannot carry extended attributes in an initramfs",
            dir.join("conf/app.conf").display()
        )),
        "{text}"
    );
    let _ = fs::remove_dir_all(&dir);
}

/// A bind source inside the bundle's root filesystem is refused: the root
/// is packed as a layer and unpacked elsewhere at boot.
#[test]
fn bind_sources_inside_a_packed_rootfs_are_refused() {
    let (dir, b) = test_bundle(
        "bindroot",
        r#"[{"destination": "/mnt", "type": "bind", "source": "rootfs/etc", "options": ["rbind"]}]"#,
    );
    fs::create_dir_all(dir.join("rootfs/etc")).unwrap();
    let err = pack_bundle(&mut Tree::default(), &b, &dir.join("s")).unwrap_err();
    let text = crate::report(&err);
    assert!(
        text.contains(
            "bind source \"rootfs/etc\" (relative to the bundle) is in its root filesystem"
        ),
        "{text}"
    );
    let _ = fs::remove_dir_all(&dir);
}

/// A module named by an alias (`fs-iso9660`, `crypto-crc32c`), in the
/// manifest's lists or as the data disk's filesystem type, is written as
/// the module that has it: berth-init loads modules by name only.
#[test]
fn modules_given_by_an_alias_are_written_by_their_names() {
    use crate::testing::{fake_kernel, fake_module as module, scratch};
    let root = scratch("aliases");
    fake_kernel(
        &root,
        &[
            (
                "kernel/fs/isofs/isofs.ko",
                module(b"name=isofs\0alias=fs-iso9660\0depends=\0"),
            ),
            (
                "kernel/net/ipv6/ipv6.ko",
                module(b"name=ipv6\0alias=net-pf-10\0depends=\0"),
            ),
            (
                "kernel/drivers/virtio/virtio_pci.ko",
                module(b"name=virtio_pci\0depends=\0"),
            ),
            (
                "kernel/drivers/block/virtio_blk.ko",
                module(b"name=virtio_blk\0depends=\0"),
            ),
            (
                "modules.builtin.modinfo",
                b"crc32c_generic.alias=crypto-crc32c\0crc32c_generic.license=GPL\0".to_vec(),
            ),
        ],
        "kernel/crypto/crc32c_generic.ko\n",
    );
    let kt = KernelTree::open(&root).unwrap();
    let lookup = |m: &str| {
        kt.provider(m).map_err(|source| BuildError::Kernel {
            path: root.clone(),
            source,
        })
    };
    let p = prepare(
        Path::new("m.json"),
        Path::new("."),
        br#"{"version": 1, "modules": ["crypto-crc32c", "virtio_blk", "fs_iso9660"],
            "network": {"modules": ["net-pf-10"]},
            "data_disk": {"device": "/dev/vda", "fstype": "iso9660"}}"#,
        &lookup,
    )
    .unwrap();
    assert_eq!(
        p.manifest["modules"],
        serde_json::json!(["crc32c_generic", "virtio_blk", "isofs", "virtio_pci"])
    );
    assert_eq!(
        p.manifest["network"]["modules"],
        serde_json::json!(["ipv6"])
    );
    // The data disk's driver alone, by its fs- alias.
    let p = prepare(
        Path::new("m.json"),
        Path::new("."),
        br#"{"version": 1, "data_disk": {"device": "/dev/vda", "fstype": "iso9660"}}"#,
        &lookup,
    )
    .unwrap();
    assert_eq!(
        p.manifest["modules"],
        serde_json::json!(["virtio_pci", "virtio_blk", "isofs"])
    );
    let wanted: Vec<String> = p.parsed.modules.clone();
    let names: Vec<String> = kt
        .resolve(&wanted)
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["isofs", "virtio_blk", "virtio_pci"]);
    // What nothing provides is left as written, for the resolution to
    // refuse, naming it.
    let p = prepare(
        Path::new("m.json"),
        Path::new("."),
        br#"{"version": 1, "modules": ["fs-nothing"]}"#,
        &lookup,
    )
    .unwrap();
    assert_eq!(p.manifest["modules"], serde_json::json!(["fs-nothing"]));
    let err = kt.resolve(&p.parsed.modules).unwrap_err().to_string();
    assert!(
        err.starts_with("kernel module fs_nothing not found in "),
        "{err}"
    );
    let _ = fs::remove_dir_all(&root);
}

/// A bundle's program is looked for in its packed root filesystem as the
/// runtime looks for it at boot: a missing or non-executable one fails the
/// build, naming unit, bundle and command.
#[test]
fn a_bundle_without_its_program_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, b) = test_bundle("noprog", "[]");
    fs::set_permissions(
        dir.join("rootfs/bin/tool"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::os::unix::fs::symlink("tool", dir.join("rootfs/bin/sh")).unwrap();
    let config = |args: &str| {
        fs::write(
            dir.join("config.json"),
            format!(
                r#"{{"ociVersion": "1.0.2", "root": {{"path": "rootfs"}},
                    "process": {{"args": {args}, "cwd": "/", "env": ["PATH=/usr/bin:/bin"],
                                "user": {{"uid": 0, "gid": 0}}}},
                    "linux": {{"namespaces": [{{"type": "mount"}}]}}}}"#
            ),
        )
        .unwrap();
    };
    let refused = |args: &str, i: usize| {
        config(args);
        let err = pack_bundle(&mut Tree::default(), &b, &dir.join(format!("s{i}"))).unwrap_err();
        crate::report(&err)
    };
    let text = refused(r#"["/bin/nope"]"#, 0);
    assert!(
        text.contains(&format!(
            "service web: bundle {}: its command /bin/nope is not an executable file in the bundle's root filesystem",
            dir.display()
        )),
        "{text}"
    );
    // Found through PATH and a link, but without an execute bit.
    let text = refused(r#"["sh"]"#, 1);
    assert!(
        text.contains("its command sh is not an executable file in the bundle's root filesystem (looked for /usr/bin/sh, /bin/sh)"),
        "{text}"
    );
    fs::set_permissions(
        dir.join("rootfs/bin/tool"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    config(r#"["sh"]"#);
    pack_bundle(&mut Tree::default(), &b, &dir.join("s2")).unwrap();
    let _ = fs::remove_dir_all(&dir);
}

/// What a layer cannot carry, or the appliance would lose, fails the pack
/// naming the file: a `.wh.` name (a whiteout to the unpacker), `user.*`
/// attributes for a kernel whose tmpfs keeps none (before 6.6), an empty
/// value (a removal to the unpacker), a name with `=`, a file capability
/// bound to a user namespace's root. Device nodes pack and unpack.
#[test]
fn what_a_packed_root_cannot_carry_is_refused() {
    use rustix::fs::{XattrFlags, lremovexattr, lsetxattr};
    use std::os::unix::fs::FileTypeExt;
    let (dir, b) = test_bundle("refuse", "[]");
    let tool = dir.join("rootfs/bin/tool");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.join("rootfs/null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .expect("mknod needs root: run the tests as root");
    let scratch = dir.join("ok");
    pack_bundle(&mut Tree::default(), &b, &scratch).unwrap();
    let x = dir.join("x");
    unpack_packed(&scratch, &x);
    let null = fs::symlink_metadata(x.join("null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(
        std::os::unix::fs::MetadataExt::rdev(&null),
        rustix::fs::makedev(1, 3)
    );

    let mut n = 0;
    let mut refused = |opts: &pack::PackOptions| {
        n += 1;
        let err =
            bundle_entries(&mut Tree::default(), &b, &dir.join(format!("s{n}")), opts).unwrap_err();
        crate::report(&err)
    };
    let new = pack::PackOptions::for_kernel("6.18.0", true);
    fs::write(dir.join("rootfs/bin/.wh.x"), b"").unwrap();
    let text = refused(&new);
    assert!(
        text.contains(&format!(
            "{}: a name starting with .wh. cannot go into a layer",
            dir.join("rootfs/bin/.wh.x").display()
        )),
        "{text}"
    );
    fs::remove_file(dir.join("rootfs/bin/.wh.x")).unwrap();

    lsetxattr(&tool, "user.origin", b"host", XattrFlags::empty()).unwrap();
    let old = pack::PackOptions::for_kernel("6.1.0-28-cloud-amd64", true);
    let text = refused(&old);
    assert!(
        text.contains("has the extended attribute user.origin, the appliance's kernel 6.1.0-28-cloud-amd64 keeps no user.* attributes on tmpfs"),
        "{text}"
    );
    assert!(
        pack::PackOptions::for_kernel("6.6.0", true)
            .user_xattrs_lost
            .is_none()
    );
    assert!(
        pack::PackOptions::for_kernel("7.0", true)
            .user_xattrs_lost
            .is_none()
    );
    assert!(
        pack::PackOptions::for_kernel("5.10.0-30-amd64", true)
            .user_xattrs_lost
            .is_some()
    );
    lsetxattr(&tool, "user.origin", b"", XattrFlags::empty()).unwrap();
    let text = refused(&new);
    assert!(text.contains("user.origin, whose value is empty"), "{text}");
    lremovexattr(&tool, "user.origin").unwrap();
    lsetxattr(&tool, "user.a=b", b"v", XattrFlags::empty()).unwrap();
    let text = refused(&new);
    assert!(
        text.contains("user.a=b, whose name a layer cannot carry"),
        "{text}"
    );
    lremovexattr(&tool, "user.a=b").unwrap();

    // A kernel without extended attributes on tmpfs keeps not even a
    // file capability there.
    let mut cap2 = Vec::new();
    for word in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
        cap2.extend_from_slice(&word.to_le_bytes());
    }
    lsetxattr(&tool, "security.capability", &cap2, XattrFlags::empty()).unwrap();
    let text = refused(&pack::PackOptions::for_kernel("6.18.0", false));
    assert!(
        text.contains("security.capability, and the appliance's kernel has no extended attributes on tmpfs (CONFIG_TMPFS_XATTR)"),
        "{text}"
    );
    lremovexattr(&tool, "security.capability").unwrap();

    // struct vfs_ns_cap_data, revision 3, cap_net_raw, root uid 100000.
    let mut cap = Vec::new();
    for word in [0x0300_0001u32, 1 << 13, 0, 0, 0, 100_000] {
        cap.extend_from_slice(&word.to_le_bytes());
    }
    if lsetxattr(&tool, "security.capability", &cap, XattrFlags::empty()).is_ok() {
        let text = refused(&new);
        assert!(
            text.contains(
                "security.capability, a file capability bound to a user namespace's root"
            ),
            "{text}"
        );
    } else {
        // The kernel turns a v3 capability it cannot map into an error;
        // nothing to pack then.
        assert!(lremovexattr(&tool, "security.capability").is_err());
    }
    let _ = fs::remove_dir_all(&dir);
}
