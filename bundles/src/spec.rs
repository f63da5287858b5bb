//! Image config → OCI runtime spec, the way umoci does it (see the module
//! notes in the README for where we differ), on top of a default spec in
//! the spirit of `runc spec`.

use std::collections::BTreeMap;
use std::io::Read;

use oci_spec::runtime::{Mount, Root, Spec, User};
use rustix::fs::{FileType, OFlags};
use rustix::io::Errno;

use crate::apply::Rootfs;
use crate::image::ImageConfig;

/// Errors of converting an image config into a runtime spec.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("image os is {os:?}, only linux images can run")]
    NotLinux { os: String },
    #[error("no command: the image has no Entrypoint or Cmd and no args were given")]
    NoArgs,
    #[error("working directory {cwd:?} is not absolute")]
    RelativeCwd { cwd: String },
    #[error("invalid environment entry {entry:?}: expected NAME=VALUE")]
    BadEnv { entry: String },
    #[error("invalid user {user:?}: {reason}")]
    BadUser { user: String, reason: &'static str },
    #[error("unable to find user {user:?} in the image's /etc/passwd")]
    UnknownUser { user: String },
    #[error("unable to find group {group:?} in the image's /etc/group")]
    UnknownGroup { group: String },
    #[error("read {path} in the image: {reason}")]
    ReadFile { path: &'static str, reason: String },
}

/// What a caller changes on top of the image config.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Replaces the image Entrypoint; when set, the image Cmd is dropped
    /// unless `cmd` is also set (Docker's rule).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image Cmd.
    pub cmd: Option<Vec<String>>,
    /// `NAME=VALUE` sets (replacing an image value), `NAME` alone unsets.
    pub env: Vec<String>,
    /// Replaces the image User (same syntax).
    pub user: Option<String>,
    /// Replaces the image WorkingDir.
    pub cwd: Option<String>,
    /// Added mounts; one with the destination of a default mount replaces it.
    pub mounts: Vec<Mount>,
    pub hostname: Option<String>,
    /// Extra annotations, applied last.
    pub annotations: BTreeMap<String, String>,
    /// The command when neither these overrides nor the image give one
    /// (no Entrypoint, no Cmd). `None`, the default, makes that an error
    /// ([`SpecError::NoArgs`]); `berth-build unpack` uses `["sh"]`, as
    /// umoci does, so a base image still unpacks into a bundle.
    pub fallback_args: Option<Vec<String>>,
}

/// Default PATH when the image sets none (containerd `defaultUnixEnv`).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The base spec: oci-spec's default (namespaces pid, network, ipc, uts,
/// mount, cgroup; `/proc`, `/dev`, `/dev/pts`, `/dev/shm`, `/dev/mqueue`,
/// `/sys`, `/sys/fs/cgroup`; masked and read-only paths; the three default
/// capabilities; RLIMIT_NOFILE 1024; no_new_privs) adjusted to `runc spec`:
/// no terminal, no inheritable or ambient capabilities, and no
/// `linux.resources` at all — runc's default device-cgroup rule is left out
/// because berth's runtime refuses device rules where cgroup v2 is missing,
/// and runc runs fine without it. The root is writable, as with umoci.
pub fn default_spec() -> Spec {
    let mut spec = Spec::default();
    spec.set_hostname(Some("berth".into()));
    spec.set_root(Some({
        let mut r = Root::default();
        r.set_path("rootfs".into());
        r.set_readonly(Some(false));
        r
    }));
    if let Some(linux) = spec.linux_mut() {
        linux.set_resources(None);
    }
    if let Some(process) = spec.process_mut() {
        process.set_terminal(Some(false));
        if let Some(mut caps) = process.capabilities().clone() {
            caps.set_inheritable(None);
            caps.set_ambient(None);
            process.set_capabilities(Some(caps));
        }
    }
    spec
}

/// One line of /etc/passwd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// One line of /etc/group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Parses /etc/passwd; malformed lines are skipped, as libc does.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 || line.starts_with('#') {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

/// Parses /etc/group; malformed lines are skipped.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || line.starts_with('#') {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: Option<String>,
}

fn parse_id(user: &str, text: &str) -> Result<Option<u32>, SpecError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    // runc and containerd cap ids at MaxInt32.
    match text.parse::<u32>() {
        Ok(v) if v <= i32::MAX as u32 => Ok(Some(v)),
        _ => Err(SpecError::BadUser {
            user: user.to_string(),
            reason: "id out of range",
        }),
    }
}

/// Resolves `user[:group]` (names or numbers) like moby/sys/user
/// `GetExecUser`, with umoci's choice of additional gids: the groups that
/// list the user by name, and none when a group is given.
pub fn resolve_user(
    spec: &str,
    passwd: &[PasswdEntry],
    groups: &[GroupEntry],
) -> Result<ResolvedUser, SpecError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_part = if user_part.is_empty() {
        "root"
    } else {
        user_part
    };
    if group_part == Some("") {
        return Err(SpecError::BadUser {
            user: spec.to_string(),
            reason: "empty group",
        });
    }
    let numeric = parse_id(spec, user_part)?;
    let entry = passwd.iter().find(|p| match numeric {
        Some(uid) => p.uid == uid,
        None => p.name == user_part,
    });
    let (uid, mut gid, name, home) = match (entry, numeric) {
        (Some(p), _) => (p.uid, p.gid, Some(p.name.clone()), Some(p.home.clone())),
        (None, Some(uid)) => (uid, 0, None, None),
        (None, None) if user_part == "root" && spec.is_empty() => (0, 0, None, None),
        (None, None) => {
            return Err(SpecError::UnknownUser {
                user: user_part.to_string(),
            });
        }
    };
    let mut additional = Vec::new();
    match group_part {
        Some(g) => {
            gid = match parse_id(spec, g)? {
                Some(n) => n,
                None => {
                    groups
                        .iter()
                        .find(|e| e.name == g)
                        .ok_or_else(|| SpecError::UnknownGroup {
                            group: g.to_string(),
                        })?
                        .gid
                }
            };
        }
        None => {
            if let Some(name) = &name {
                for g in groups
                    .iter()
                    .filter(|g| g.members.iter().any(|m| m == name))
                {
                    if !additional.contains(&g.gid) {
                        additional.push(g.gid);
                    }
                }
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: additional,
        home,
    })
}

/// Reads a small text file of the image, resolved inside the root.
fn read_image_file(rootfs: &Rootfs, path: &'static str) -> Result<Option<String>, SpecError> {
    let err = |reason: String| SpecError::ReadFile { path, reason };
    let rel = path.trim_start_matches('/');
    // Look before opening for reading: opening a fifo blocks and opening a
    // device node reaches a host driver, and the image chooses what
    // /etc/passwd is. O_PATH opens nothing; only a regular file is then
    // opened for reading (nothing else writes the tree meanwhile).
    let probe = match rootfs.open_in_root(rel.as_bytes(), OFlags::PATH) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::NOTDIR) => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
    };
    let stat = rustix::fs::fstat(&probe).map_err(|e| err(e.to_string()))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(err("not a regular file".into()));
    }
    let fd = rootfs
        .open_in_root(rel.as_bytes(), OFlags::RDONLY | OFlags::NONBLOCK)
        .map_err(|e| err(e.to_string()))?;
    let again = rustix::fs::fstat(&fd).map_err(|e| err(e.to_string()))?;
    if (again.st_dev, again.st_ino) != (stat.st_dev, stat.st_ino) {
        return Err(err("changed while being opened".into()));
    }
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(8 << 20)
        .read_to_string(&mut text)
        .map_err(|e| err(e.to_string()))?;
    Ok(Some(text))
}

/// Validates an env entry (NAME=VALUE, non-empty name, no NUL).
fn check_env(entry: &str) -> Result<(&str, &str), SpecError> {
    match entry.split_once('=') {
        Some((name, value)) if !name.is_empty() && !entry.contains('\0') => Ok((name, value)),
        _ => Err(SpecError::BadEnv {
            entry: entry.to_string(),
        }),
    }
}

/// An environment being built: entries in the order their names first
/// appeared, found by name in constant time (an image may list hundreds of
/// thousands; a search per entry made that quadratic).
#[derive(Default)]
struct Env {
    slots: Vec<Option<String>>,
    by_name: std::collections::HashMap<String, usize>,
}

impl Env {
    fn set(&mut self, name: &str, entry: String) {
        match self.by_name.get(name) {
            Some(&i) => self.slots[i] = Some(entry),
            None => {
                self.by_name.insert(name.to_owned(), self.slots.len());
                self.slots.push(Some(entry));
            }
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        let i = *self.by_name.get(name)?;
        self.slots[i].as_deref()
    }

    fn remove(&mut self, name: &str) {
        if let Some(i) = self.by_name.remove(name) {
            self.slots[i] = None;
        }
    }

    fn into_vec(self) -> Vec<String> {
        self.slots.into_iter().flatten().collect()
    }
}

/// Builds the environment: image Env (last duplicate wins), PATH if
/// absent, the overrides, then HOME if absent or empty.
pub fn build_env(
    image: &[String],
    overrides: &[String],
    home: Option<&str>,
) -> Result<Vec<String>, SpecError> {
    let mut env = Env::default();
    for e in image {
        let (name, _) = check_env(e)?;
        env.set(name, e.clone());
    }
    if env.get("PATH").is_none() {
        env.set("PATH", DEFAULT_PATH.to_string());
    }
    for o in overrides {
        if o.contains('=') {
            let (name, _) = check_env(o)?;
            env.set(name, o.clone());
        } else if o.is_empty() || o.contains('\0') {
            return Err(SpecError::BadEnv { entry: o.clone() });
        } else {
            env.remove(o);
        }
    }
    if env.get("HOME").is_none_or(|h| h == "HOME=") {
        // An empty HOME goes, and HOME comes last.
        env.remove("HOME");
        env.set(
            "HOME",
            format!("HOME={}", home.filter(|h| !h.is_empty()).unwrap_or("/")),
        );
    }
    Ok(env.into_vec())
}

/// `args = E ++ C` with Docker's override rule.
pub fn build_args(image: &ImageConfig, o: &Overrides) -> Result<Vec<String>, SpecError> {
    let cfg = image.config.clone().unwrap_or_default();
    let (entry, cmd) = match (&o.entrypoint, &o.cmd) {
        (Some(e), Some(c)) => (e.clone(), c.clone()),
        (Some(e), None) => (e.clone(), Vec::new()),
        (None, Some(c)) => (cfg.entrypoint, c.clone()),
        (None, None) => (cfg.entrypoint, cfg.cmd),
    };
    let args: Vec<String> = entry.into_iter().chain(cmd).collect();
    if !args.is_empty() {
        return Ok(args);
    }
    match &o.fallback_args {
        Some(fallback) if !fallback.is_empty() => Ok(fallback.clone()),
        _ => Err(SpecError::NoArgs),
    }
}

/// The annotations umoci writes, then Labels (which win), then overrides.
pub fn build_annotations(image: &ImageConfig, o: &Overrides) -> BTreeMap<String, String> {
    let cfg = image.config.clone().unwrap_or_default();
    let mut a = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        if !v.is_empty() {
            a.insert(format!("org.opencontainers.image.{k}"), v.to_string());
        }
    };
    put("os", &image.os);
    put("architecture", &image.architecture);
    put("variant", image.variant.as_deref().unwrap_or(""));
    put("os.version", image.os_version.as_deref().unwrap_or(""));
    put("author", image.author.as_deref().unwrap_or(""));
    put("created", image.created.as_deref().unwrap_or(""));
    put("stopSignal", &cfg.stop_signal);
    // BTreeMap keys are sorted already.
    put(
        "exposedPorts",
        &cfg.exposed_ports
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(","),
    );
    put(
        "volumes",
        &cfg.volumes.keys().cloned().collect::<Vec<_>>().join(","),
    );
    for (k, v) in cfg.labels {
        a.insert(k, v);
    }
    for (k, v) in &o.annotations {
        a.insert(k.clone(), v.clone());
    }
    a
}

/// Converts an image config into a runtime spec. `rootfs` is the unpacked
/// root, where user and group names are looked up (in-root, never on the
/// host: a symlinked /etc/passwd cannot leak host files, unlike umoci's
/// `filepath.Join`).
pub fn runtime_spec(
    image: &ImageConfig,
    rootfs: &Rootfs,
    o: &Overrides,
) -> Result<Spec, SpecError> {
    let user_spec = o.user.clone().unwrap_or_else(|| {
        image
            .config
            .as_ref()
            .map(|c| c.user.clone())
            .unwrap_or_default()
    });
    let passwd = read_image_file(rootfs, "/etc/passwd")?
        .map(|t| parse_passwd(&t))
        .unwrap_or_default();
    let groups = read_image_file(rootfs, "/etc/group")?
        .map(|t| parse_group(&t))
        .unwrap_or_default();
    let user = resolve_user(&user_spec, &passwd, &groups)?;
    convert(image, o, &user)
}

/// The pure part of [`runtime_spec`], with the user already resolved.
pub fn convert(image: &ImageConfig, o: &Overrides, user: &ResolvedUser) -> Result<Spec, SpecError> {
    if image.os != "linux" {
        return Err(SpecError::NotLinux {
            os: image.os.clone(),
        });
    }
    let cfg = image.config.clone().unwrap_or_default();
    let args = build_args(image, o)?;
    let cwd = o.cwd.clone().unwrap_or(cfg.working_dir.clone());
    let cwd = if cwd.is_empty() { "/".to_string() } else { cwd };
    if !cwd.starts_with('/') {
        return Err(SpecError::RelativeCwd { cwd });
    }
    let env = build_env(&cfg.env, &o.env, user.home.as_deref())?;

    let mut spec = default_spec();
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(args));
    process.set_env(Some(env));
    process.set_cwd(cwd.into());
    let mut u = User::default();
    u.set_uid(user.uid);
    u.set_gid(user.gid);
    u.set_additional_gids(if user.additional_gids.is_empty() {
        None
    } else {
        Some(user.additional_gids.clone())
    });
    process.set_user(u);
    spec.set_process(Some(process));
    if let Some(h) = &o.hostname {
        spec.set_hostname(Some(h.clone()));
    }
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for m in &o.mounts {
        mounts.retain(|d| d.destination() != m.destination());
        mounts.push(m.clone());
    }
    spec.set_mounts(Some(mounts));
    spec.set_annotations(Some(build_annotations(image, o).into_iter().collect()));
    Ok(spec)
}

#[cfg(test)]
#[allow(clippy::type_complexity)]
mod tests {
    use super::*;
    use crate::image::ContainerConfig;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        testuser:x:1337:8888:test:/my home dir :/bin/sh\n\
        app:x:1000:1000::/home/app:/bin/sh\n\
        broken line\n";
    const GROUP: &str = "root:x:0:\n\
        testgroup:x:2581:root,testuser\n\
        group:x:9001:testuser\n\
        emptygroup:x:2222:\n\
        app:x:1000:\n";

    fn resolve(spec: &str) -> Result<ResolvedUser, SpecError> {
        resolve_user(spec, &parse_passwd(PASSWD), &parse_group(GROUP))
    }

    #[test]
    fn user_table() {
        // (User, uid, gid, additional gids, home) as in umoci's config.bats
        // and moby/sys/user's GetExecUser.
        let cases: &[(&str, u32, u32, &[u32], Option<&str>)] = &[
            ("", 0, 0, &[2581], Some("/root")),
            ("root", 0, 0, &[2581], Some("/root")),
            ("testuser", 1337, 8888, &[2581, 9001], Some("/my home dir ")),
            (
                "testuser:emptygroup",
                1337,
                2222,
                &[],
                Some("/my home dir "),
            ),
            ("1337:8888", 1337, 8888, &[], Some("/my home dir ")),
            ("1337", 1337, 8888, &[2581, 9001], Some("/my home dir ")),
            ("4242", 4242, 0, &[], None),
            ("4242:77", 4242, 77, &[], None),
            ("app", 1000, 1000, &[], Some("/home/app")),
        ];
        for (spec, uid, gid, add, home) in cases {
            let u = resolve(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(
                (u.uid, u.gid, &u.additional_gids[..], u.home.as_deref()),
                (*uid, *gid, *add, *home),
                "{spec}"
            );
        }
        assert!(matches!(
            resolve("nobody"),
            Err(SpecError::UnknownUser { .. })
        ));
        assert!(matches!(
            resolve("app:nogroup"),
            Err(SpecError::UnknownGroup { .. })
        ));
        assert!(matches!(
            resolve("2147483648"),
            Err(SpecError::BadUser { .. })
        ));
        assert!(matches!(resolve("app:"), Err(SpecError::BadUser { .. })));
        // No passwd at all: root and numeric users still work.
        assert_eq!(resolve_user("", &[], &[]).unwrap().uid, 0);
        assert_eq!(resolve_user("5", &[], &[]).unwrap().gid, 0);
        assert!(resolve_user("root", &[], &[]).is_err());
    }

    #[test]
    fn env_table() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let cases: &[(&[&str], &[&str], Option<&str>, &[&str])] = &[
            (&[], &[], None, &[DEFAULT_PATH, "HOME=/"]),
            (
                &["PATH=/x", "A=1"],
                &[],
                Some("/root"),
                &["PATH=/x", "A=1", "HOME=/root"],
            ),
            (&["A=1", "A=2"], &[], None, &["A=2", DEFAULT_PATH, "HOME=/"]),
            (
                &["A=1", "B=2"],
                &["A=3", "B", "C=4"],
                None,
                &["A=3", DEFAULT_PATH, "C=4", "HOME=/"],
            ),
            (&["HOME=/h"], &[], Some("/root"), &["HOME=/h", DEFAULT_PATH]),
            (
                &["HOME="],
                &[],
                Some("/root"),
                &[DEFAULT_PATH, "HOME=/root"],
            ),
            (&["A=x=y"], &[], None, &["A=x=y", DEFAULT_PATH, "HOME=/"]),
        ];
        for (image, over, home, want) in cases {
            assert_eq!(
                build_env(&s(image), &s(over), *home).unwrap(),
                s(want),
                "{image:?} {over:?}"
            );
        }
        for bad in ["=x", "NOEQUALS", "A=\0"] {
            assert!(build_env(&s(&[bad]), &[], None).is_err(), "{bad}");
        }
        // A config of 200,000 entries (2 MB, well under the 16 MiB cap):
        // each name twice, the second one wins, in first-seen order.
        let image: Vec<String> = (0..2)
            .flat_map(|round| (0..100_000).map(move |i| format!("V{i}={round}")))
            .collect();
        let env = build_env(&image, &s(&["V7", "V8=x"]), None).unwrap();
        assert_eq!(env.len(), 100_000 - 1 + 2);
        assert_eq!(env[0], "V0=1");
        assert_eq!(env[7], "V8=x");
        assert_eq!(env[99_998], "V99999=1");
    }

    fn config(entry: &[&str], cmd: &[&str]) -> ImageConfig {
        ImageConfig {
            os: "linux".into(),
            architecture: "amd64".into(),
            config: Some(ContainerConfig {
                entrypoint: entry.iter().map(|s| s.to_string()).collect(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn args_table() {
        let v = |x: &[&str]| Some(x.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let cases: &[(
            &[&str],
            &[&str],
            Option<Vec<String>>,
            Option<Vec<String>>,
            Option<&[&str]>,
        )] = &[
            (&["/ep"], &["c1"], None, None, Some(&["/ep", "c1"])),
            (
                &[],
                &["sh", "-c", "x"],
                None,
                None,
                Some(&["sh", "-c", "x"]),
            ),
            (&["/ep"], &["c1"], v(&["/o"]), None, Some(&["/o"])),
            (&["/ep"], &["c1"], v(&["/o"]), v(&["a"]), Some(&["/o", "a"])),
            (&["/ep"], &["c1"], None, v(&["a"]), Some(&["/ep", "a"])),
            (&[], &[], None, None, None),
        ];
        for (e, c, oe, oc, want) in cases {
            let o = Overrides {
                entrypoint: oe.clone(),
                cmd: oc.clone(),
                ..Default::default()
            };
            let got = build_args(&config(e, c), &o).ok();
            let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(got, want, "{e:?} {c:?}");
        }
    }

    #[test]
    fn fallback_args_only_when_nothing_else_gives_a_command() {
        let sh = Overrides {
            fallback_args: Some(vec!["sh".into()]),
            ..Default::default()
        };
        assert_eq!(build_args(&config(&[], &[]), &sh).unwrap(), ["sh"]);
        assert_eq!(build_args(&config(&[], &["/c"]), &sh).unwrap(), ["/c"]);
        let with_cmd = Overrides {
            cmd: Some(vec!["/o".into()]),
            ..sh.clone()
        };
        assert_eq!(build_args(&config(&[], &[]), &with_cmd).unwrap(), ["/o"]);
        let empty = Overrides {
            fallback_args: Some(Vec::new()),
            ..Default::default()
        };
        assert!(matches!(
            build_args(&config(&[], &[]), &empty),
            Err(SpecError::NoArgs)
        ));
    }

    #[test]
    fn convert_full() {
        let mut img = config(&["/bin/app"], &["--serve"]);
        img.created = Some("2024-01-01T00:00:00Z".into());
        if let Some(c) = img.config.as_mut() {
            c.working_dir = "/srv".into();
            c.env = vec!["A=1".into()];
            c.stop_signal = "SIGINT".into();
            c.exposed_ports = [("8080/tcp", ()), ("53/udp", ())]
                .into_iter()
                .map(|(k, _)| (k.to_string(), serde_json::json!({})))
                .collect();
            c.volumes = [("/data".to_string(), serde_json::json!({}))]
                .into_iter()
                .collect();
            c.labels = [(
                "org.opencontainers.image.os".to_string(),
                "label-wins".to_string(),
            )]
            .into_iter()
            .collect();
        }
        let user = resolve("testuser").unwrap();
        let spec = convert(&img, &Overrides::default(), &user).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(
            p.args().as_ref().unwrap(),
            &vec!["/bin/app".to_string(), "--serve".to_string()]
        );
        assert_eq!(p.cwd().to_str(), Some("/srv"));
        assert_eq!(p.user().uid(), 1337);
        assert_eq!(
            p.user().additional_gids().as_ref().unwrap(),
            &vec![2581, 9001]
        );
        assert_eq!(p.terminal(), Some(false));
        assert!(
            p.env()
                .as_ref()
                .unwrap()
                .contains(&"HOME=/my home dir ".to_string())
        );
        let a = spec.annotations().as_ref().unwrap();
        assert_eq!(
            a["org.opencontainers.image.exposedPorts"],
            "53/udp,8080/tcp"
        );
        assert_eq!(a["org.opencontainers.image.stopSignal"], "SIGINT");
        assert_eq!(a["org.opencontainers.image.volumes"], "/data");
        assert_eq!(a["org.opencontainers.image.os"], "label-wins");
        assert_eq!(
            a["org.opencontainers.image.created"],
            "2024-01-01T00:00:00Z"
        );
        assert!(spec.linux().as_ref().unwrap().resources().is_none());
        assert_eq!(
            spec.root().as_ref().unwrap().path().to_str(),
            Some("rootfs")
        );

        let mut bad = img.clone();
        bad.os = "windows".into();
        assert!(matches!(
            convert(&bad, &Overrides::default(), &user),
            Err(SpecError::NotLinux { .. })
        ));
        let o = Overrides {
            cwd: Some("rel".into()),
            ..Default::default()
        };
        assert!(matches!(
            convert(&img, &o, &user),
            Err(SpecError::RelativeCwd { .. })
        ));
    }
}
