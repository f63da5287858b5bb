//! `berth-build unpack` and `inspect` end to end: a busybox image built
//! with umoci, unpacked by the binary, run with runc; and where `build`
//! finds the paths its manifest names.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_berth-build");

fn require(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(found, "{tool} missing: apt-get install {package}");
}

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests need root (runc, chown in unpack): run cargo test as root"
    );
}

struct Scratch(PathBuf);
impl Scratch {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("berth-build-test-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn sh(script: &str) {
    let out = Command::new("sh").arg("-euc").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A busybox image with a user, a workdir, env and a command.
fn busybox_image(dir: &Path) -> String {
    require("busybox", "busybox-static");
    require("umoci", "umoci");
    let d = dir.display();
    sh(&format!(
        "mkdir -p {d}/src/bin {d}/src/etc {d}/src/srv
         cp /bin/busybox {d}/src/bin/busybox
         for a in sh echo id pwd env cat; do ln -s busybox {d}/src/bin/$a; done
         printf 'root:x:0:0:root:/root:/bin/sh\\nsvc:x:1234:1234:svc:/srv:/bin/sh\\n' > {d}/src/etc/passwd
         printf 'root:x:0:\\nsvc:x:1234:\\nextra:x:777:svc\\n' > {d}/src/etc/group
         umoci init --layout {d}/img
         umoci new --image {d}/img:v1
         umoci insert --image {d}/img:v1 {d}/src /
         umoci config --image {d}/img:v1 --config.user svc --config.workingdir /srv \
           --config.env GREETING=hello --config.entrypoint /bin/sh \
           --config.cmd -c --config.cmd 'echo $GREETING $(id -u):$(id -g):$(id -G) $(pwd) $HOME' \
           --config.exposedports 8080/tcp --config.exposedports 53/udp --config.label app=demo"
    ));
    format!("oci:{d}/img:v1")
}

fn berth(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `runc run` of `bundle` with stdin at /dev/null; asserts success and
/// returns its stdout.
fn runc_run(bundle: &Path, tag: &str) -> String {
    let id = format!("berth-build-{tag}-{}", std::process::id());
    let run = Command::new("runc")
        .args(["run", "--bundle", bundle.to_str().unwrap(), &id])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = Command::new("runc").args(["delete", "-f", &id]).output();
    assert!(
        run.status.success(),
        "runc run failed: {}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    String::from_utf8_lossy(&run.stdout).into_owned()
}

#[test]
fn unpack_and_run_with_runc() {
    require_root();
    require("runc", "runc");
    let s = Scratch::new("runc");
    let image = busybox_image(&s.0);
    let bundle = s.0.join("bundle");
    let out = berth(&["unpack", &image, bundle.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Not a terminal: quiet.
    assert!(out.stderr.is_empty() && out.stdout.is_empty());
    let spec: serde_json::Value =
        serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["process"]["user"]["uid"], 1234);
    assert_eq!(
        spec["process"]["user"]["additionalGids"],
        serde_json::json!([777])
    );
    assert_eq!(
        spec["annotations"]["org.opencontainers.image.exposedPorts"],
        "53/udp,8080/tcp"
    );
    assert_eq!(spec["annotations"]["app"], "demo");
    let stdout = runc_run(&bundle, "test");
    assert_eq!(stdout.trim(), "hello 1234:1234:1234 777 /srv /srv");
}

/// A base image without Entrypoint or Cmd unpacks (as with umoci): the
/// bundle runs `sh`, and a warning says so. runc runs it (sh with stdin
/// at /dev/null reads its commands from there and exits 0).
#[test]
fn unpack_base_image_without_command() {
    require_root();
    require("runc", "runc");
    require("busybox", "busybox-static");
    require("umoci", "umoci");
    let s = Scratch::new("nocmd");
    let d = s.0.display();
    sh(&format!(
        "mkdir -p {d}/src/bin
         cp /bin/busybox {d}/src/bin/busybox
         ln -s busybox {d}/src/bin/sh
         umoci init --layout {d}/img
         umoci new --image {d}/img:base
         umoci insert --image {d}/img:base {d}/src /"
    ));
    let image = format!("oci:{d}/img:base");
    let bundle = s.0.join("bundle");
    let out = berth(&["unpack", &image, bundle.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("has no Entrypoint or Cmd") && stderr.contains("runs `sh`"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let spec: serde_json::Value =
        serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["process"]["args"], serde_json::json!(["sh"]));
    runc_run(&bundle, "nocmd");
}

/// A whiteout of a 1,500-level directory tree, made by umoci: the removal
/// holds a bounded number of fds (bundles/README.md), so it works even
/// with the open files limit at 1,024, below one fd per level.
#[test]
fn unpack_removes_a_tree_deeper_than_the_open_files_limit() {
    require_root();
    require("umoci", "umoci");
    require("prlimit", "util-linux");
    let s = Scratch::new("deep");
    let d = s.0.display();
    let deep = "a/".repeat(1500);
    sh(&format!(
        "mkdir -p {d}/src/bin {d}/src/d/{deep}
         echo bottom > {d}/src/d/{deep}f
         cp /bin/busybox {d}/src/bin/busybox
         umoci init --layout {d}/img
         umoci new --image {d}/img:deep
         umoci insert --image {d}/img:deep {d}/src /
         umoci insert --image {d}/img:deep --whiteout /d
         umoci config --image {d}/img:deep --config.cmd /bin/busybox"
    ));
    let image = format!("oci:{d}/img:deep");
    let unpack = |nofile: &str, bundle: &Path| {
        Command::new("prlimit")
            .arg(format!("--nofile={nofile}"))
            .arg(BIN)
            .args(["unpack", &image, bundle.to_str().unwrap()])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let bundle = s.0.join("bundle");
    let out = unpack("1024:4096", &bundle);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(bundle.join("rootfs/bin/busybox").is_file());
    assert!(!bundle.join("rootfs/d").exists(), "the whiteout removed d");
    let capped = s.0.join("capped");
    let out = unpack("1024:1024", &capped);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!capped.join("rootfs/d").exists(), "the whiteout removed d");
}

#[test]
fn inspect_text_and_json() {
    require_root();
    let s = Scratch::new("inspect");
    let image = busybox_image(&s.0);
    let out = berth(&["inspect", &image]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for want in [
        "manifest:   sha256:",
        "platform:   linux/amd64",
        "tar+gzip",
        "\"/bin/sh\"",
        "GREETING=hello",
        "user:       \"svc\"",
    ] {
        assert!(text.contains(want), "{want:?} missing in:\n{text}");
    }
    let out = berth(&["inspect", "--json", &image]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["platform"], "linux/amd64");
    assert_eq!(v["config"]["entrypoint"], serde_json::json!(["/bin/sh"]));
    assert_eq!(v["config"]["workingDir"], "/srv");
    let layer = &v["layers"][0];
    assert!(layer["digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(layer["compression"], "gzip");
    assert!(layer["size"].as_u64().unwrap() > 100_000);
    // An Env entry with a newline and an escape sequence: no forged line,
    // nothing for the terminal.
    let d = s.0.display();
    sh(&format!(
        "umoci config --image {d}/img:v1 --tag evil --config.env \"EVIL=a$(printf '\\nlayer sha256:fake\\033[31m')\""
    ));
    let out = berth(&["inspect", &format!("oci:{d}/img:evil")]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("  EVIL=a\\nlayer sha256:fake\\u{1b}[31m\n"),
        "{text}"
    );
    assert!(!text.contains('\u{1b}'), "{text:?}");
}

#[test]
fn errors_are_one_line_and_nonzero() {
    require_root();
    let s = Scratch::new("errors");
    let image = busybox_image(&s.0);
    let dest = s.0.join("full");
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("x"), "").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["unpack".into(), image.clone(), dest.display().to_string()],
            "not an empty directory",
        ),
        (
            vec!["inspect".into(), "oci:/nonexistent/x".into()],
            "/nonexistent/x",
        ),
        (
            vec!["inspect".into(), "registry:x".into()],
            "unknown transport",
        ),
        (
            vec![
                "inspect".into(),
                image.clone(),
                "--platform".into(),
                "linux/arm64".into(),
            ],
            "image is for linux/amd64, not linux/arm64 (choose with --platform)",
        ),
        (
            vec!["inspect".into()],
            "expected 1 argument (IMAGE_REF), got 0",
        ),
        (
            vec!["inspect".into(), image.clone(), "--bogus".into()],
            "unknown option --bogus",
        ),
    ];
    for (args, want) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = berth(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
        assert!(err.contains(want), "{args:?}: {want:?} not in {err}");
    }
    // A path that is not UTF-8 is refused, not changed into another one
    // (nor a panic).
    use std::os::unix::ffi::OsStrExt;
    let out = Command::new(BIN)
        .args(["unpack", &image])
        .arg(std::ffi::OsStr::from_bytes(b"/tmp/berth-\xff\xfe"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(
        err.trim_end(),
        r#"berth-build: argument "/tmp/berth-\xFF\xFE" is not UTF-8"#
    );
    // A corrupted layer: the message names the image and the blob.
    let blobs = s.0.join("img/blobs/sha256");
    let biggest = fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut data = fs::read(&biggest).unwrap();
    data[1000] ^= 0xff;
    fs::write(&biggest, data).unwrap();
    let out = berth(&["unpack", &image, s.0.join("bad").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let name = biggest.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(&image) && err.contains(name), "{err}");
    assert!(!s.0.join("bad").exists());
}

#[test]
fn help_of_each_command_and_the_short_out_option() {
    for cmd in ["build", "unpack", "inspect"] {
        for flag in ["--help", "-h"] {
            let out = berth(&[cmd, "x", flag]);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{cmd} {flag}: {out:?}");
            assert!(
                text.starts_with("usage: berth-build"),
                "{cmd} {flag}: {text}"
            );
        }
    }
    // After `--` it is an argument like any other.
    let out = berth(&["inspect", "--", "--help"]);
    assert!(!out.status.success());
    // The option is named as the user wrote it.
    let out = berth(&["build", "m.json", "--kernel", "k", "-o"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim(), "berth-build build: option -o needs a value");
}

#[test]
fn progress_only_on_a_terminal() {
    require_root();
    require("script", "bsdutils");
    let s = Scratch::new("progress");
    let image = busybox_image(&s.0);
    let bundle = s.0.join("bundle");
    // script(1) gives the command a pseudo-terminal as stdin/stdout/stderr.
    let out = Command::new("script")
        .args([
            "-qec",
            &format!("{BIN} unpack {image} {}", bundle.display()),
            "/dev/null",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("layer 1/1") && text.contains("unpacked"),
        "no progress on a tty: {text:?}"
    );
}

#[test]
fn unpack_and_run_with_berth_runc() {
    require_root();
    // berth-runc is built next to berth-build by `cargo test --workspace`.
    let runc = Path::new(BIN).with_file_name("berth-runc");
    assert!(
        runc.is_file(),
        "{} missing: run the workspace tests (cargo test --workspace) or cargo build -p berth-runtime",
        runc.display()
    );
    let s = Scratch::new("berth-runc");
    let image = busybox_image(&s.0);
    let bundle = s.0.join("bundle");
    let out = berth(&["unpack", &image, bundle.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = format!("berth-build-brunc-{}", std::process::id());
    let state = s.0.join("state");
    let run = Command::new(&runc)
        .args([
            "--root",
            state.to_str().unwrap(),
            "run",
            "--bundle",
            bundle.to_str().unwrap(),
            &id,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = Command::new(&runc)
        .args(["--root", state.to_str().unwrap(), "delete", "--force", &id])
        .output();
    assert!(
        run.status.success(),
        "berth-runc run failed: {}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).trim(),
        "hello 1234:1234:1234 777 /srv /srv"
    );
}

#[test]
fn docker_archive_written_by_skopeo() {
    require_root();
    require("skopeo", "skopeo");
    let s = Scratch::new("docker-archive");
    let image = busybox_image(&s.0);
    let archive = s.0.join("busybox.tar");
    sh(&format!(
        "skopeo copy --quiet {image} docker-archive:{}:example/busybox:v1",
        archive.display()
    ));
    let reference = format!("docker-archive:{}:example/busybox:v1", archive.display());
    let out = berth(&["inspect", &reference]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("manifest:   (docker-archive: none)") && text.contains("GREETING=hello"),
        "{text}"
    );
    let bundle = s.0.join("bundle");
    let out = berth(&[
        "unpack",
        &format!("docker-archive:{}", archive.display()),
        bundle.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(bundle.join("rootfs/bin/busybox").is_file());
    let spec: serde_json::Value =
        serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["process"]["user"]["uid"], 1234);
}

/// Output into a pipe whose reader is gone (`| head`) is dropped: no
/// panic, no abort (exit 134). SIGPIPE stays ignored (a build must always
/// get to clean up), so the command ends as it would have.
#[test]
fn a_closed_stdout_pipe_ends_the_command_quietly() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth-build"))
        .arg("--help")
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{:?}: {stderr}", out.status);
    assert!(stderr.is_empty(), "{stderr}");
}

/// A manifest given as a pipe (`<(jq . m.json)`, `/dev/fd/63`) has its
/// relative paths resolved from the current directory, not from
/// `/dev/fd`; one in a file, from the file's directory.
#[test]
fn a_piped_manifests_paths_are_relative_to_the_current_directory() {
    let s = Scratch::new("pipe");
    fs::create_dir_all(s.0.join("b/rootfs/bin")).unwrap();
    fs::write(s.0.join("b/rootfs/bin/tool"), "tool").unwrap();
    fs::write(
        s.0.join("b/config.json"),
        r#"{"ociVersion": "1.0.2", "root": {"path": "rootfs"},
            "process": {"args": ["/bin/tool"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "linux": {"namespaces": [{"type": "mount"}]}}"#,
    )
    .unwrap();
    let manifest = r#"{"version": 1, "services": [{"name": "web", "bundle": "b"}]}"#;
    fs::create_dir(s.0.join("elsewhere")).unwrap();
    fs::write(s.0.join("elsewhere/m.json"), manifest).unwrap();
    require("bash", "bash");
    // The build gets past the bundle (found) and stops at the init binary.
    let build = |manifest_arg: &str| {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "exec {BIN} build {manifest_arg} -o out --kernel /nonexistent --init /nonexistent/init"
            ))
            .current_dir(&s.0)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = build("<(cat elsewhere/m.json)");
    assert!(
        err.contains("read init binary /nonexistent/init"),
        "the bundle was not found from the current directory: {err}"
    );
    // From a file, relative to its directory: elsewhere/b is not there.
    let err = build("elsewhere/m.json");
    assert!(err.contains("elsewhere/b"), "{err}");
}
