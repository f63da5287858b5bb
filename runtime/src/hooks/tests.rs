//! Real hooks run by /bin/sh (Debian's dash; part of every base system).

use super::*;
use crate::state::Status;
use std::fs;
use std::path::Path;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("berth-hooks-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn sh_hook(script: &str, env: &[&str], timeout: Option<i64>) -> Hook {
    assert!(
        Path::new("/bin/sh").exists(),
        "/bin/sh missing: apt-get install dash"
    );
    let mut json = serde_json::json!({
        "path": "/bin/sh",
        "args": ["sh", "-c", script],
        "env": env,
    });
    if let Some(t) = timeout {
        json["timeout"] = t.into();
    }
    serde_json::from_value(json).unwrap()
}

fn state() -> State {
    let mut st = State::new("web", "/run/bundles/web");
    st.status = Status::Created;
    st.pid = Some(4242);
    st.annotations
        .insert("org.example/key".into(), "value".into());
    st
}

#[test]
fn hooks_run_in_order() {
    let dir = scratch("order");
    let log = dir.join("log");
    let env = [format!("LOG={}", log.display())];
    let env: Vec<&str> = env.iter().map(String::as_str).collect();
    let hooks = [
        sh_hook("echo one >> \"$LOG\"", &env, None),
        sh_hook("echo two >> \"$LOG\"", &env, None),
        sh_hook("echo three >> \"$LOG\"", &env, Some(30)),
    ];
    run_hooks(HookKind::CreateRuntime, &hooks, &state()).unwrap();
    assert_eq!(fs::read_to_string(&log).unwrap(), "one\ntwo\nthree\n");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn state_json_arrives_on_stdin() {
    let dir = scratch("stdin");
    let out = dir.join("stdin.json");
    let env = [format!("OUT={}", out.display())];
    let hooks = [sh_hook("cat > \"$OUT\"", &[env[0].as_str()], Some(30))];
    let st = state();
    run_hooks(HookKind::Poststart, &hooks, &st).unwrap();
    let got = fs::read(&out).unwrap();
    assert_eq!(got, st.to_json().unwrap());
    assert_eq!(State::from_json(&got).unwrap(), st);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn large_state_reaches_a_reading_hook_and_does_not_block_a_deaf_one() {
    let dir = scratch("large");
    let out = dir.join("count");
    let mut st = state();
    // Far more than a pipe buffer (64 KiB).
    st.annotations.insert("big".into(), "x".repeat(1 << 20));
    let len = st.to_json().unwrap().len();
    let env = [format!("OUT={}", out.display())];
    let hooks = [
        sh_hook("wc -c > \"$OUT\"", &[env[0].as_str()], Some(60)),
        // Never reads stdin: the write gets EPIPE, which is not an error.
        sh_hook("exit 0", &[], Some(60)),
    ];
    run_hooks(HookKind::Prestart, &hooks, &st).unwrap();
    assert_eq!(fs::read_to_string(&out).unwrap().trim(), len.to_string());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn env_is_exactly_the_hooks_env_and_args0_is_argv0() {
    let dir = scratch("env");
    let out = dir.join("env");
    let argv = dir.join("argv");
    // The caller's environment must not leak: the test process has PATH.
    assert!(std::env::var_os("PATH").is_some());
    let hook: Hook = serde_json::from_value(serde_json::json!({
        "path": "/bin/sh",
        "args": ["custom-argv0", "-c", "env > \"$OUT\"; tr '\\0' '|' < /proc/$$/cmdline > \"$ARGV\"", "first", "second arg"],
        "env": [format!("OUT={}", out.display()), format!("ARGV={}", argv.display()), "GREETING=hello world"],
    }))
    .unwrap();
    run_hooks(HookKind::CreateContainer, &[hook], &state()).unwrap();
    let env = fs::read_to_string(&out).unwrap();
    let vars: Vec<&str> = env.lines().collect();
    assert!(vars.contains(&"GREETING=hello world"), "{env}");
    for leaked in ["PATH=", "HOME=", "CARGO", "RUST"] {
        assert!(
            !vars.iter().any(|v| v.starts_with(leaked)),
            "{leaked} leaked into the hook: {env}"
        );
    }
    // The kernel's argv of the hook process: args[0] is argv[0].
    let cmdline = fs::read_to_string(&argv).unwrap();
    assert!(cmdline.starts_with("custom-argv0|-c|env > "), "{cmdline}");
    assert!(cmdline.ends_with("|first|second arg|"), "{cmdline}");
    fs::remove_dir_all(&dir).unwrap();
}

/// Whether `pid` is gone or a zombie (dead, waiting for its reaper).
fn is_dead(pid: &str) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

#[test]
fn timeout_kills_the_hook_and_what_it_started() {
    let dir = scratch("timeout");
    let pidfile = dir.join("child-pid");
    let env = [format!("P={}", pidfile.display())];
    // A background child of the hook, then the hook waits for it.
    let hooks = [sh_hook(
        "sleep 600 & echo $! > \"$P\"; wait",
        &[env[0].as_str()],
        Some(1),
    )];
    let err = run_hooks(HookKind::StartContainer, &hooks, &state()).unwrap_err();
    assert!(
        matches!(
            err,
            HookError::Timeout {
                kind: HookKind::StartContainer,
                index: 0,
                timeout: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "startContainer hook 0 (/bin/sh) timed out after 1s and was killed"
    );
    // The hook's process group was killed, its background sleep with it.
    // SIGKILL is delivered asynchronously: wait for it, do not time it.
    let pid = fs::read_to_string(&pidfile).unwrap().trim().to_string();
    let mut dead = false;
    for _ in 0..500 {
        if is_dead(&pid) {
            dead = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(dead, "background process {pid} of the hook survived");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn failure_reports_status_and_stderr_tail() {
    let hooks = [sh_hook("echo starting; echo boom >&2; exit 3", &[], None)];
    let err = run_hooks(HookKind::CreateRuntime, &hooks, &state()).unwrap_err();
    match &err {
        HookError::Failed {
            kind,
            index,
            status,
            stderr,
            ..
        } => {
            assert_eq!(*kind, HookKind::CreateRuntime);
            assert_eq!(*index, 0);
            assert_eq!(*status, HookStatus::Exited(3));
            assert_eq!(stderr, "boom");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "createRuntime hook 0 (/bin/sh) failed with exit status 3; stderr: \"boom\""
    );
}

#[test]
fn killed_hook_reports_the_signal() {
    let hooks = [sh_hook("kill -KILL $$", &[], None)];
    let err = run_hooks(HookKind::Prestart, &hooks, &state()).unwrap_err();
    assert!(
        err.to_string().contains("failed with signal SIGKILL"),
        "{err}"
    );
}

#[test]
fn stderr_flood_is_drained_and_only_the_tail_kept() {
    // 200 KiB on stderr would block a hook whose pipe nobody drains.
    let script = "i=0; while [ $i -lt 2000 ]; do printf '%0100d\\n' $i >&2; i=$((i+1)); done; echo LAST >&2; exit 1";
    let hooks = [sh_hook(script, &[], Some(120))];
    let err = run_hooks(HookKind::CreateRuntime, &hooks, &state()).unwrap_err();
    let HookError::Failed { stderr, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(stderr.len() <= STDERR_TAIL, "{}", stderr.len());
    assert!(stderr.ends_with("LAST"), "{stderr}");
}

#[test]
fn a_failed_create_hook_stops_the_sequence() {
    let dir = scratch("stop");
    let marker = dir.join("second-ran");
    let env = [format!("M={}", marker.display())];
    let hooks = [
        sh_hook("exit 1", &[], None),
        sh_hook("touch \"$M\"", &[env[0].as_str()], None),
    ];
    for kind in [
        HookKind::Prestart,
        HookKind::CreateRuntime,
        HookKind::CreateContainer,
        HookKind::StartContainer,
    ] {
        let err = run_hooks(kind, &hooks, &state()).unwrap_err();
        assert!(matches!(err, HookError::Failed { index: 0, .. }), "{err:?}");
        assert!(!marker.exists(), "{kind}: second hook ran");
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn post_hooks_carry_on_after_a_failure() {
    let dir = scratch("post");
    let marker = dir.join("ran");
    let env = [format!("M={}", marker.display())];
    let env = [env[0].as_str()];
    for kind in [HookKind::Poststart, HookKind::Poststop] {
        let _ = fs::remove_file(&marker);
        let hooks = [
            sh_hook("exit 1", &[], None),
            sh_hook("touch \"$M\"", &env, None),
        ];
        let err = run_hooks(kind, &hooks, &state()).unwrap_err();
        assert!(matches!(err, HookError::Failed { index: 0, .. }), "{err:?}");
        assert!(marker.exists(), "{kind}: second hook did not run");

        let hooks = [
            sh_hook("exit 1", &[], None),
            sh_hook("exit 2", &[], None),
            sh_hook("touch \"$M\"", &env, None),
        ];
        let err = run_hooks(kind, &hooks, &state()).unwrap_err();
        let HookError::Several { errors, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(errors.len(), 2);
        assert!(
            err.to_string()
                .starts_with(&format!("{kind} hooks: 2 failed, first: {kind} hook 0")),
            "{err}"
        );
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hook_leaving_a_daemon_behind_still_completes() {
    // The background sleep keeps the stdout/stderr pipes open after the
    // hook exits; run_hooks must return on the hook's exit, not on EOF.
    let hooks = [sh_hook("sleep 3 & exit 0", &[], Some(60))];
    run_hooks(HookKind::Poststop, &hooks, &state()).unwrap();
}

#[test]
fn invalid_hooks_are_refused_before_running() {
    let relative: Hook = serde_json::from_value(serde_json::json!({"path": "bin/true"})).unwrap();
    let err = run_hooks(HookKind::Prestart, &[relative], &state()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "prestart hook 0 (bin/true): path must be absolute"
    );

    let zero = sh_hook("true", &[], Some(0));
    let err = run_hooks(HookKind::Prestart, &[zero], &state()).unwrap_err();
    assert!(
        err.to_string()
            .contains("timeout 0 must be greater than zero"),
        "{err}"
    );

    let bad_env = sh_hook("true", &["NOEQUALS"], None);
    let err = run_hooks(HookKind::Prestart, &[bad_env], &state()).unwrap_err();
    assert!(
        err.to_string()
            .contains("env entry \"NOEQUALS\" is not KEY=VALUE"),
        "{err}"
    );
}

#[test]
fn missing_binary_is_a_spawn_error_naming_it() {
    let hook: Hook =
        serde_json::from_value(serde_json::json!({"path": "/nonexistent/berth-hook"})).unwrap();
    let err = run_hooks(HookKind::Poststop, &[hook], &state()).unwrap_err();
    assert!(matches!(err, HookError::Spawn { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "poststop hook 0 (/nonexistent/berth-hook): spawn"
    );
}

#[test]
fn no_args_means_argv0_is_the_path() {
    let dir = scratch("noargs");
    let script = dir.join("hook.sh");
    let out = dir.join("argv0");
    fs::write(
        &script,
        format!("#!/bin/sh\necho \"$0\" > {}\n", out.display()),
    )
    .unwrap();
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let hook: Hook = serde_json::from_value(serde_json::json!({"path": script})).unwrap();
    run_hooks(HookKind::CreateRuntime, &[hook], &state()).unwrap();
    assert_eq!(
        fs::read_to_string(&out).unwrap().trim(),
        script.display().to_string()
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn no_hooks_is_ok() {
    run_hooks(HookKind::Poststop, &[], &state()).unwrap();
}

#[test]
fn a_huge_timeout_is_no_timeout_and_no_panic() {
    // A config may give any i64: the deadline must not overflow Instant
    // (a panic in PID 1). Such a deadline is simply never reached.
    let hooks = [sh_hook("exit 0", &[], Some(i64::MAX))];
    run_hooks(HookKind::Poststart, &hooks, &state()).unwrap();
    let hooks = [sh_hook("exit 3", &[], Some(i64::MAX))];
    assert!(matches!(
        run_hooks(HookKind::Prestart, &hooks, &state()),
        Err(HookError::Failed {
            status: HookStatus::Exited(3),
            ..
        })
    ));
}
