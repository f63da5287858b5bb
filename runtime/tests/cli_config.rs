//! berth-runc on a config.json that is not a spec it can run: one line
//! naming the file and the reason in the config's own terms.

mod common;

use std::fs;
use std::process::Command;

use common::{Bundle, TempDir};
use serde_json::json;

/// The stderr of `berth-runc create` on `b`, which must fail with status 1
/// and one line.
fn create_error(root: &TempDir, b: &Bundle) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_berth-runc"))
        .arg("--root")
        .arg(root.0.join("state"))
        .args(["create", "--bundle"])
        .arg(b.dir())
        .arg("bad")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run berth-runc");
    let e = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert_eq!(e.lines().count(), 1, "one line: {e:?}");
    e
}

#[test]
fn an_unknown_capability_is_named_with_its_set_and_the_file() {
    let root = TempDir::new("cli-root");
    let mut b = Bundle::new();
    b.config["process"]["capabilities"] = json!({
        "bounding": ["CAP_KILL", "CAP_BOGUS"],
        "permitted": ["CAP_KILL"],
    });
    b.write();
    let config = b.dir().join("config.json");
    assert_eq!(
        create_error(&root, &b),
        format!(
            "berth-runc: parse config {}: unknown capability \"CAP_BOGUS\" in process.capabilities.bounding\n",
            config.display()
        )
    );
    // Escaped: a name can hold anything JSON can.
    b.config["process"]["capabilities"] = json!({"ambient": ["CAP_\u{1b}[2J\n"]});
    b.write();
    assert!(
        create_error(&root, &b).ends_with(
            ": unknown capability \"CAP_\\u{1b}[2J\\n\" in process.capabilities.ambient\n"
        ),
        "{}",
        create_error(&root, &b)
    );
}

#[test]
fn a_config_that_is_not_a_json_object_or_not_utf8_says_so() {
    let root = TempDir::new("cli-root");
    let b = Bundle::new();
    let config = b.dir().join("config.json");
    let line = |why: &str| format!("berth-runc: parse config {}: {why}\n", config.display());
    for not_object in ["[]", "\"x\"", "1", "null"] {
        fs::write(&config, not_object).unwrap();
        assert_eq!(
            create_error(&root, &b),
            line("not a JSON object (a runtime spec is one)"),
            "{not_object}"
        );
    }
    fs::write(&config, "{}").unwrap();
    assert_eq!(create_error(&root, &b), line("missing ociVersion"));
    fs::write(&config, b"\xff\xfe{\0}").unwrap();
    assert_eq!(
        create_error(&root, &b),
        line("not UTF-8 (invalid byte at offset 0)")
    );
    fs::write(&config, r#"{"ociVersion": "1.0.2", "root": {"pa"#).unwrap();
    assert_eq!(
        create_error(&root, &b),
        line("EOF while parsing a string at line 1 column 36")
    );
}
