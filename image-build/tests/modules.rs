//! The kernel modules `berth-build build` ships, from kernel trees made
//! here: compressed modules (Debian's `.ko.xz`, Ubuntu's `.ko.zst`), modules
//! named by an alias (`fs-iso9660`). Needs the static berth-init (built by
//! the test) and xz, zstd, cpio; no QEMU.

mod common;

use std::fs;

use common::{
    FAKE_RELEASE, XZ, ZSTD, build_with_kernel, compress, extract, fake_kernel, fake_module, scratch,
};

/// A kernel whose modules are all compressed builds (before, evdev, which
/// every build ships for the power button, failed it): the initrd holds
/// them as plain `.ko` files, byte for byte what was compressed, and
/// `modules.dep` names those.
#[test]
fn a_kernel_with_compressed_modules_builds_and_ships_them_plain() {
    let dir = scratch("compressed-modules");
    let evdev = fake_module(b"name=evdev\0depends=\0license=GPL\0");
    let button = fake_module(b"name=button\0depends=\0");
    let foo = fake_module(b"name=foo\0depends=bar\0");
    let bar = fake_module(b"name=bar\0depends=\0");
    let kernel = dir.join("kernel");
    fake_kernel(
        &kernel,
        &[
            ("kernel/drivers/input/evdev.ko.xz", compress(XZ, &evdev)),
            ("kernel/drivers/acpi/button.ko.zst", compress(ZSTD, &button)),
            ("kernel/foo/foo.ko.zst", compress(ZSTD, &foo)),
            ("kernel/bar/bar.ko.xz", compress(XZ, &bar)),
        ],
        "",
    );
    let manifest = dir.join("manifest.json");
    fs::write(&manifest, r#"{"version": 1, "modules": ["foo"]}"#).unwrap();
    let out = dir.join("out");
    let o = build_with_kernel(&manifest, &out, &kernel);
    assert!(
        o.status.success(),
        "berth-build failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(
        summary.contains("modules: bar button evdev foo"),
        "{summary}"
    );
    let x = dir.join("x");
    extract(&out.join("initrd.img"), &x);
    let mods = x.join(format!("lib/modules/{FAKE_RELEASE}"));
    for (path, plain) in [
        ("kernel/drivers/input/evdev.ko", &evdev),
        ("kernel/drivers/acpi/button.ko", &button),
        ("kernel/foo/foo.ko", &foo),
        ("kernel/bar/bar.ko", &bar),
    ] {
        assert_eq!(&fs::read(mods.join(path)).unwrap(), plain, "{path}");
        assert!(!mods.join(format!("{path}.xz")).exists());
        assert!(!mods.join(format!("{path}.zst")).exists());
    }
    let dep = fs::read_to_string(mods.join("modules.dep")).unwrap();
    assert_eq!(
        dep,
        "kernel/bar/bar.ko:\nkernel/drivers/acpi/button.ko:\n\
         kernel/drivers/input/evdev.ko:\nkernel/foo/foo.ko: kernel/bar/bar.ko\n"
    );

    // A module that does not decompress fails the build, named.
    let mut broken = compress(XZ, &evdev);
    broken.truncate(broken.len() - 20);
    let path = kernel.join(format!(
        "lib/modules/{FAKE_RELEASE}/kernel/drivers/input/evdev.ko.xz"
    ));
    fs::write(&path, broken).unwrap();
    let out = dir.join("out2");
    let o = build_with_kernel(&manifest, &out, &kernel);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains(&format!("decompress kernel module {}", path.display())),
        "{err}"
    );
    assert!(!out.exists());
    let _ = fs::remove_dir_all(&dir);
}

/// `data_disk.fstype: "iso9660"` ships isofs, whose alias `fs-iso9660` is
/// what the kernel asks for at mount time; a manifest module given by an
/// alias is written into the appliance's manifest by its module's name,
/// the one berth-init loads.
#[test]
fn a_filesystem_or_module_given_by_an_alias_is_shipped_by_its_module() {
    let dir = scratch("alias-modules");
    let isofs = fake_module(b"name=isofs\0alias=fs-iso9660\0depends=\0");
    let ipv6 = fake_module(b"name=ipv6\0alias=net-pf-10\0depends=\0");
    let kernel = dir.join("kernel");
    fake_kernel(
        &kernel,
        &[
            ("kernel/fs/isofs/isofs.ko.xz", compress(XZ, &isofs)),
            ("kernel/net/ipv6/ipv6.ko.zst", compress(ZSTD, &ipv6)),
            (
                "kernel/drivers/input/evdev.ko",
                fake_module(b"name=evdev\0depends=\0"),
            ),
        ],
        "kernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/block/virtio_blk.ko\n",
    );
    let manifest = dir.join("manifest.json");
    fs::write(
        &manifest,
        r#"{"version": 1, "modules": ["net-pf-10"],
            "data_disk": {"device": "/dev/vda", "fstype": "iso9660"}}"#,
    )
    .unwrap();
    let out = dir.join("out");
    let o = build_with_kernel(&manifest, &out, &kernel);
    assert!(
        o.status.success(),
        "berth-build failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let x = dir.join("x");
    extract(&out.join("initrd.img"), &x);
    let written: serde_json::Value =
        serde_json::from_slice(&fs::read(x.join("etc/berth/manifest.json")).unwrap()).unwrap();
    // virtio_pci and virtio_blk are built in here: nothing to ship.
    assert_eq!(written["modules"], serde_json::json!(["ipv6", "isofs"]));
    let mods = x.join(format!("lib/modules/{FAKE_RELEASE}"));
    assert_eq!(
        fs::read(mods.join("kernel/fs/isofs/isofs.ko")).unwrap(),
        isofs
    );
    assert_eq!(
        fs::read(mods.join("kernel/net/ipv6/ipv6.ko")).unwrap(),
        ipv6
    );
    let _ = fs::remove_dir_all(&dir);
}

/// ext4's `softdep pre: crc32c` names an alias, which sends the build
/// through every module's `.modinfo`: one there that does not decompress,
/// which nothing asked for, is a warning naming it, not the build's
/// failure, and crc32c's module ships, loaded before ext4.
#[test]
fn an_unreadable_module_nobody_asked_for_is_a_warning() {
    let dir = scratch("unreadable-module");
    let ext4 = fake_module(b"name=ext4\0depends=\0softdep=pre: crc32c\0");
    let crc = fake_module(b"name=crc32c_generic\0alias=crc32c\0depends=\0");
    let kernel = dir.join("kernel");
    fake_kernel(
        &kernel,
        &[
            ("kernel/fs/ext4/ext4.ko.xz", compress(XZ, &ext4)),
            ("kernel/crypto/crc32c_generic.ko.xz", compress(XZ, &crc)),
            (
                "kernel/drivers/gpu/junk.ko.xz",
                b"\xfd7zXZ\0 not really".to_vec(),
            ),
        ],
        "kernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/block/virtio_blk.ko\n",
    );
    let manifest = dir.join("manifest.json");
    fs::write(
        &manifest,
        r#"{"version": 1, "data_disk": {"device": "/dev/vda", "fstype": "ext4"}}"#,
    )
    .unwrap();
    let out = dir.join("out");
    let o = build_with_kernel(&manifest, &out, &kernel);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "berth-build failed: {err}");
    let junk = kernel.join(format!(
        "lib/modules/{FAKE_RELEASE}/kernel/drivers/gpu/junk.ko.xz"
    ));
    let warning = format!(
        "berth-build: warning: --kernel {}: decompress kernel module {}: ",
        kernel.display(),
        junk.display()
    );
    assert!(err.starts_with(&warning), "{err}");
    assert!(
        err.trim_end()
            .ends_with("(skipped when looking up module aliases)"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let x = dir.join("x");
    extract(&out.join("initrd.img"), &x);
    let dep =
        fs::read_to_string(x.join(format!("lib/modules/{FAKE_RELEASE}/modules.dep"))).unwrap();
    assert_eq!(
        dep,
        "kernel/crypto/crc32c_generic.ko:\nkernel/fs/ext4/ext4.ko: kernel/crypto/crc32c_generic.ko\n"
    );
    let _ = fs::remove_dir_all(&dir);
}
