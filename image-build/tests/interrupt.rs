//! An interrupted `berth-build build` leaves nothing behind: Ctrl-C
//! (SIGINT) while dpkg unpacks the kernel package kills dpkg and removes
//! the build's temporary directory; a build removes the temporary
//! directories that dead builds left next to its OUTDIR.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{kernel, one_layer_layout, require_root, scratch, static_init};

/// Starts `berth-build build` of an empty appliance into `dir/out` from
/// the kernel package, and returns once dpkg is writing the package into
/// its temporary directory (returned too).
fn build_until_dpkg_runs(dir: &Path, stderr: Stdio) -> (Child, PathBuf) {
    let manifest = dir.join("manifest.json");
    fs::write(&manifest, r#"{"version": 1}"#).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_berth-build"))
        .arg("build")
        .arg(&manifest)
        .arg("-o")
        .arg(dir.join("out"))
        .arg("--kernel")
        .arg(&kernel().deb)
        .arg("--init")
        .arg(static_init())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let temp = dir.join(format!(".out.berth-build-{}", child.id()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !temp.join("work/kernel/boot").exists() {
        assert!(
            Instant::now() < deadline,
            "the build never unpacked the kernel into {}",
            temp.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    (child, temp)
}

fn send(child: &Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

#[test]
fn an_interrupted_build_removes_its_temporary_directory() {
    require_root();
    let dir = scratch("interrupt");
    // Left by builds that were killed outright: PIDs that cannot exist
    // (above the kernel's pid_max of 2^22). One of a live process stays.
    let stale = dir.join(".out.berth-build-4294967295");
    let stale_old = dir.join(".out.berth-build-old-4294967294");
    let live = dir.join(format!(".out.berth-build-{}", std::process::id()));
    for d in [&stale, &stale_old, &live] {
        fs::create_dir_all(d.join("work")).unwrap();
    }
    let out = dir.join("out");
    let (child, temp) = build_until_dpkg_runs(&dir, Stdio::piped());
    assert!(
        !stale.exists() && !stale_old.exists(),
        "stale directories kept"
    );
    send(&child, rustix::process::Signal::INT);
    let result = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(130), "{err}");
    assert_eq!(
        err.trim(),
        format!("berth-build: interrupted; removed {}", temp.display())
    );
    // dpkg and its tar were killed too: nothing brings the directory back.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!temp.exists(), "{} left behind", temp.display());
    assert!(!out.exists());
    assert!(live.exists(), "the directory of a live process was removed");
    let _ = fs::remove_dir_all(&dir);
}

/// A hang-up (the terminal went away) while dpkg runs, with stderr gone
/// too: the build still removes its directory and exits 129 (a panic
/// writing the message used to be possible, leaving the build hanging).
#[test]
fn a_hung_up_build_without_stderr_still_cleans_up_and_exits() {
    require_root();
    let dir = scratch("hangup");
    let out = dir.join("out");
    let (mut child, temp) = build_until_dpkg_runs(&dir, Stdio::piped());
    // Every write to stderr now fails (EPIPE).
    drop(child.stderr.take());
    send(&child, rustix::process::Signal::HUP);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the hung-up build did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(129));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!temp.exists(), "{} left behind", temp.display());
    assert!(!out.exists());
    let _ = fs::remove_dir_all(&dir);
}

/// `berth-build unpack` of an image of 60,000 files, stopped by SIGTERM
/// once its rootfs has files: the unpacker stops at its next read and
/// removes what it made. A DEST it made is gone, a DEST it was given is
/// empty again and takes a whole unpack.
#[test]
fn an_interrupted_unpack_leaves_dest_as_it_was() {
    require_root();
    let dir = scratch("unpack-interrupt");
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..60_000 {
        let mut h = tar::Header::new_ustar();
        h.set_path(format!("d{}/f{i}", i % 100)).unwrap();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
    }
    let layout = one_layer_layout(
        &dir,
        "many",
        &b.into_inner().unwrap(),
        serde_json::json!({"Cmd": ["/bin/true"]}),
    );
    let image = format!("oci:{}:many", layout.display());
    let given = dir.join("given");
    fs::create_dir(&given).unwrap();
    for dest in [dir.join("made"), given.clone()] {
        let child = Command::new(env!("CARGO_BIN_EXE_berth-build"))
            .args(["unpack", &image])
            .arg(&dest)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while fs::read_dir(dest.join("rootfs")).map_or(true, |mut d| d.next().is_none()) {
            assert!(Instant::now() < deadline, "the unpack never wrote a file");
            std::thread::sleep(Duration::from_millis(1));
        }
        send(&child, rustix::process::Signal::TERM);
        let result = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(143), "{err}");
        assert_eq!(
            err.trim(),
            format!(
                "berth-build: terminated; {} is as it was before the unpack",
                dest.display()
            )
        );
        if dest == given {
            let left: Vec<_> = fs::read_dir(&dest).unwrap().collect();
            assert!(left.is_empty(), "{left:?} left in {}", dest.display());
        } else {
            assert!(!dest.exists(), "{} left behind", dest.display());
        }
    }
    let o = Command::new(env!("CARGO_BIN_EXE_berth-build"))
        .args(["unpack", &image])
        .arg(&given)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(given.join("rootfs/d99/f59999").is_file());
    let _ = fs::remove_dir_all(&dir);
}
