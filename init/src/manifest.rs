//! The appliance manifest: what PID 1 boots and supervises.
//!
//! Flow: bytes → [`raw`] serde types (`deny_unknown_fields`) → [`validate`] →
//! the domain types of this module. Only domain types leave this module, and
//! a domain value is always valid: durations parsed, names checked, the
//! dependency graph acyclic, images known.
//!
//! # Format (JSON, what PID 1 reads)
//!
//! A complete example is `init/examples/manifest.json`. Top level:
//!
//! | field | type | default | meaning |
//! | --- | --- | --- | --- |
//! | `version` | `1` | required | format version |
//! | `hostname` | string | unset | hostname of the VM (RFC 1123 label) and of every image unit (`berth` when unset) |
//! | `modules` | [string] | `[]` | kernel modules to load, dependencies resolved from `modules.dep` |
//! | `sysctls` | {key: string} | `{}` | written to `/proc/sys/<key with . as />` before any unit starts; a `net.*` key that appears with the NIC's driver, with the network |
//! | `network` | object | none | `interfaces`: [{`name`, `address`, `prefix`, `gateway`?}], `dns`: {`nameservers`, `search`}, `modules`: [string] (the NIC's drivers) |
//! | `data_disk` | object | none | `device` (a kernel name such as `/dev/vda`: no udev, so no `/dev/disk/*` links), `fstype`, `options`? — mounted at `/data` (always `nosuid,nodev`), source of `persistent` mounts |
//! | `log` | object | see below | PID 1's own level and the service log routing |
//! | `on_fatal` | `"poweroff"` \| `"reboot"` | `"poweroff"` | what PID 1 does when boot fails or it hits an internal bug |
//! | `tasks` | [task] | `[]` | one-shot boot tasks, run in order before services |
//! | `services` | [service] | `[]` | long-running services |
//!
//! `log`: `level` (`off|error|warn|info|debug|trace`, any case, default `info`), `ring_size`
//! (per-service in-memory ring, size string, default `64KiB`), `max_line`
//! (longer lines are cut, default 4096 bytes, 80 to 8192), `rate` {`lines_per_sec`,
//! `burst`} (per service; lines over the budget are dropped from the console,
//! file and syslog, and counted; default 1000/s, burst 2000), `files`
//! {`dir` (absolute), `max_size` (default `1MiB`), `keep` (rotated files kept,
//! default 3)}, `syslog` {`unix`: path | `udp`: "host:port" | `tcp`: "host:port"}.
//!
//! A task or service names what to run with exactly one of `image` (a name in
//! the embedded OCI layout), `bundle` (an OCI runtime bundle directory) or
//! `host: true` (the command runs in PID 1's own root without isolation —
//! for boot chores with programs that root has: in an appliance, the
//! initramfs; container-only fields are refused for host programs). A bundle's `config.json` runs as it is: the
//! overriding fields below are refused for bundles by validation.
//! Then: `command` (replaces the image entrypoint), `args` (replaces the
//! image cmd), `env` {K: V} (merged over the image env), `cwd`, `user`
//! (`name`, `uid` or `uid:gid`), `mounts` [{`type`: `persistent`, `source`
//! (relative to the data disk), `target`, `read_only`?} | {`type`: `tmpfs`,
//! `target`, `size`?, `mode`? (octal string)}], `network` (`host`: the VM's
//! network, default; `none`: a namespace of its own with only loopback),
//! `resources` {`memory` (size), `cpus` (number, e.g. 0.5), `pids`},
//! `capabilities` ([`CAP_…`], replaces the default set), `read_only` (root
//! filesystem read-only), `seccomp` (`default`: berth's profile, which denies
//! new user namespaces, keyrings, io_uring, and bpf, perf_event_open and
//! userfaultfd unless a capability allows them; `unconfined`: no filter),
//! `init` (bool: berth-init's reaper runs as the container's first process
//! in front of the program, reaping orphans and forwarding signals, as
//! `docker run --init`; image units), `rlimits` [`"name=limit"`] (image and host units; a bundle's are its config.json's
//! `process.rlimits`; setrlimit(2) before exec; Docker's `--ulimit` and
//! Podman's `default_ulimits` syntax: `["nofile=4096:65536", "core=0"]`;
//! names `as`, `core`, `cpu`, `data`, `fsize`, `locks`, `memlock`,
//! `msgqueue`, `nice`, `nofile`, `nproc`, `rss`, `rtprio`, `rttime`,
//! `sigpending`, `stack`, each once; a limit is one value for soft and
//! hard or `soft:hard`, each a number, `unlimited`, or a size for those in
//! bytes (`as`, `core`, `data`, `fsize`, `memlock`, `msgqueue`, `rss`,
//! `stack`); soft ≤ hard; `nofile` is never unlimited. Without one, a unit
//! has `nofile` soft 1024 and PID 1's hard limit, and PID 1's other limits;
//! a hard limit above PID 1's needs CAP_SYS_RESOURCE, which a machine's
//! PID 1 has — `nofile` up to `fs.nr_open`, 1048576 unless `sysctls` raise it).
//!
//! A task adds `optional` (a failure is logged, the boot goes on) and
//! `timeout` (killed after it; default none). A service adds `restart`
//! {`policy` (`no|on-failure|always`, default `on-failure`), `backoff`
//! {`initial` `400ms`, `factor` 2, `max` `30s`, `reset_after` `60s`},
//! `start_limit` {`count` 5, `interval` `10s`}, `no_restart_codes` [int]},
//! `depends_on` [service name], `stop_signal` (default `SIGTERM`) and
//! `stop_timeout` (default `10s`).
//!
//! Durations are strings like `"400ms"`, `"5s"`, `"1m30s"`; sizes are bytes
//! or strings like `"64KiB"`, `"256MiB"` (binary) or `"64K"`, `"64MB"`
//! (decimal: `"64M"` is 64,000,000 bytes, not 64 MiB).

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use oci_spec::runtime::PosixRlimitType;

use crate::order::{self, Node};
use crate::rlimits::{self, RESOURCES, Rlimit, UNLIMITED};
use crate::units::{parse_duration, parse_size};

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("read manifest {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse manifest at {location}: {message}")]
    Parse { location: String, message: String },
    #[error("invalid manifest:{}", Problems(.problems))]
    Invalid { problems: Vec<Problem> },
}

/// One validation finding: where (`services.web.restart.backoff.max`) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The path holds names the manifest gave (units, keys).
        write!(
            f,
            "{}: {}",
            berth_bundles::printable(&self.path),
            self.message
        )
    }
}

struct Problems<'a>(&'a [Problem]);

/// One problem on the same line; several one per line, indented.
impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [one] = self.0 {
            return write!(f, " {one}");
        }
        for p in self.0 {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Domain types: what leaves this module.

#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub hostname: Option<String>,
    pub modules: Vec<String>,
    pub sysctls: Vec<(String, String)>,
    pub network: Network,
    pub data_disk: Option<DataDisk>,
    pub log: LogConfig,
    pub on_fatal: FatalAction,
    pub tasks: Vec<Task>,
    pub services: Vec<Service>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Network {
    pub interfaces: Vec<Interface>,
    pub nameservers: Vec<Ipv4Addr>,
    pub search: Vec<String>,
    /// Kernel modules the network needs (the NIC's driver): loaded with
    /// it, in the background, not before every unit like `modules`.
    pub modules: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Interface {
    pub name: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
}

/// The persistent disk; mounted at [`DATA_DIR`].
#[derive(Debug, Clone, PartialEq)]
pub struct DataDisk {
    pub device: PathBuf,
    pub fstype: String,
    pub options: Vec<String>,
}

/// Where the data disk is mounted; `persistent` mount sources are below it.
pub const DATA_DIR: &str = "/data";

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub level: log::LevelFilter,
    pub ring_size: usize,
    pub max_line: usize,
    pub lines_per_sec: u32,
    pub burst: u32,
    pub files: Option<LogFiles>,
    pub syslog: Option<SyslogTarget>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: log::LevelFilter::Info,
            ring_size: 64 * 1024,
            max_line: 4096,
            lines_per_sec: 1000,
            burst: 2000,
            files: None,
            syslog: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogFiles {
    pub dir: PathBuf,
    pub max_size: u64,
    pub keep: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogTarget {
    Unix(PathBuf),
    Udp(String),
    Tcp(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FatalAction {
    #[default]
    Poweroff,
    Reboot,
}

impl FromStr for FatalAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "poweroff" => Ok(Self::Poweroff),
            "reboot" => Ok(Self::Reboot),
            other => Err(format!(
                "unknown action {other:?} (expected poweroff or reboot)"
            )),
        }
    }
}

/// What a task or a service runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    pub source: Source,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub user: Option<String>,
    pub mounts: Vec<Mount>,
    pub network: NetworkMode,
    pub resources: Resources,
    pub capabilities: Option<Vec<String>>,
    pub read_only: bool,
    /// berth-init's reaper runs in front of the program as the container's
    /// first process (`docker run --init`; [`crate::reaper`]).
    pub init: bool,
    pub seccomp: SeccompMode,
    /// The manifest's `rlimits` (image and host units), one per type; a unit's
    /// defaults are [`crate::rlimits::unit_rlimits`]'s.
    pub rlimits: Vec<Rlimit>,
}

/// The seccomp filter of an image unit (a bundle's config.json brings its
/// own, a host program has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// berth's default profile (`berth_runtime::seccomp::default_profile`).
    #[default]
    Default,
    /// No filter.
    Unconfined,
}

impl Program {
    /// The argv of a host program: command then args (validated non-empty).
    pub fn host_argv(&self) -> Vec<String> {
        let mut argv = self.command.clone().unwrap_or_default();
        argv.extend(self.args.iter().flatten().cloned());
        argv
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Image(String),
    Bundle(PathBuf),
    Host,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    Persistent {
        source: PathBuf,
        target: PathBuf,
        read_only: bool,
    },
    Tmpfs {
        target: PathBuf,
        size: Option<u64>,
        mode: Option<u32>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    #[default]
    Host,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Resources {
    pub memory: Option<u64>,
    /// CPU bandwidth in CPUs (0.5 = half a CPU), converted to quota/period by the runtime.
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        self.memory.is_none() && self.cpus.is_none() && self.pids.is_none()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub name: String,
    pub program: Program,
    pub optional: bool,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub program: Program,
    pub restart: RestartPolicy,
    pub depends_on: Vec<String>,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
}

impl Node for Service {
    fn name(&self) -> &str {
        &self.name
    }
    fn depends_on(&self) -> &[String] {
        &self.depends_on
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartMode {
    No,
    #[default]
    OnFailure,
    Always,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RestartPolicy {
    pub mode: RestartMode,
    pub backoff: Backoff,
    pub start_limit: StartLimit,
    pub no_restart_codes: Vec<i32>,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            mode: RestartMode::OnFailure,
            backoff: Backoff::default(),
            start_limit: StartLimit::default(),
            no_restart_codes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub factor: f64,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(400),
            factor: 2.0,
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartLimit {
    pub count: u32,
    pub interval: Duration,
}

impl Default for StartLimit {
    fn default() -> Self {
        Self {
            count: 5,
            interval: Duration::from_secs(10),
        }
    }
}

// ---------------------------------------------------------------------------
// Serde types: exactly the JSON, nothing checked yet.

pub mod raw {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    /// A number or a string with a unit (`4096` or `"4KiB"`).
    #[derive(Debug, Clone, Deserialize)]
    #[serde(untagged)]
    pub enum Size {
        Bytes(u64),
        Text(String),
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Manifest {
        pub version: u32,
        /// A build manifest's `{NAME: IMAGE_REF}` map: berth-build reads
        /// it and leaves it out of the appliance; PID 1 ignores it.
        #[serde(default)]
        pub images: BTreeMap<String, String>,
        pub hostname: Option<String>,
        #[serde(default)]
        pub modules: Vec<String>,
        #[serde(default)]
        pub sysctls: BTreeMap<String, String>,
        pub network: Option<Network>,
        pub data_disk: Option<DataDisk>,
        pub log: Option<Log>,
        pub on_fatal: Option<String>,
        #[serde(default)]
        pub tasks: Vec<Task>,
        #[serde(default)]
        pub services: Vec<Service>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Network {
        #[serde(default)]
        pub interfaces: Vec<Interface>,
        pub dns: Option<Dns>,
        #[serde(default)]
        pub modules: Vec<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Interface {
        pub name: String,
        pub address: String,
        pub prefix: u8,
        pub gateway: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Dns {
        #[serde(default)]
        pub nameservers: Vec<String>,
        #[serde(default)]
        pub search: Vec<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct DataDisk {
        pub device: String,
        pub fstype: String,
        #[serde(default)]
        pub options: Vec<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Log {
        pub level: Option<String>,
        pub ring_size: Option<Size>,
        pub max_line: Option<u64>,
        pub rate: Option<Rate>,
        pub files: Option<Files>,
        pub syslog: Option<Syslog>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Rate {
        pub lines_per_sec: Option<u32>,
        pub burst: Option<u32>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Files {
        pub dir: String,
        pub max_size: Option<Size>,
        pub keep: Option<u32>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Syslog {
        pub unix: Option<String>,
        pub udp: Option<String>,
        pub tcp: Option<String>,
    }

    /// Fields shared by tasks and services.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Program {
        pub image: Option<String>,
        pub bundle: Option<String>,
        #[serde(default)]
        pub host: bool,
        pub command: Option<Vec<String>>,
        pub args: Option<Vec<String>>,
        #[serde(default)]
        pub env: BTreeMap<String, String>,
        pub cwd: Option<String>,
        pub user: Option<String>,
        #[serde(default)]
        pub mounts: Vec<Mount>,
        pub network: Option<String>,
        pub resources: Option<Resources>,
        pub capabilities: Option<Vec<String>>,
        #[serde(default)]
        pub read_only: bool,
        #[serde(default)]
        pub init: bool,
        pub seccomp: Option<String>,
        /// `name=limit` strings, as `docker run --ulimit` takes them: a list
        /// of strings reuses serde code the static binary already holds (a
        /// map measured 6 KiB more).
        #[serde(default)]
        pub rlimits: Vec<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
    pub enum Mount {
        Persistent {
            source: String,
            target: String,
            #[serde(default)]
            read_only: bool,
        },
        Tmpfs {
            target: String,
            size: Option<Size>,
            mode: Option<String>,
        },
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Resources {
        pub memory: Option<Size>,
        pub cpus: Option<f64>,
        pub pids: Option<u64>,
    }

    // serde's `flatten` and `deny_unknown_fields` do not combine, so the
    // program fields are repeated in Task and Service and moved into
    // `Program` by hand in `validate`.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Task {
        pub name: String,
        pub image: Option<String>,
        pub bundle: Option<String>,
        #[serde(default)]
        pub host: bool,
        pub command: Option<Vec<String>>,
        pub args: Option<Vec<String>>,
        #[serde(default)]
        pub env: BTreeMap<String, String>,
        pub cwd: Option<String>,
        pub user: Option<String>,
        #[serde(default)]
        pub mounts: Vec<Mount>,
        pub network: Option<String>,
        pub resources: Option<Resources>,
        pub capabilities: Option<Vec<String>>,
        #[serde(default)]
        pub read_only: bool,
        #[serde(default)]
        pub init: bool,
        pub seccomp: Option<String>,
        #[serde(default)]
        pub rlimits: Vec<String>,
        #[serde(default)]
        pub optional: bool,
        pub timeout: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Service {
        pub name: String,
        pub image: Option<String>,
        pub bundle: Option<String>,
        #[serde(default)]
        pub host: bool,
        pub command: Option<Vec<String>>,
        pub args: Option<Vec<String>>,
        #[serde(default)]
        pub env: BTreeMap<String, String>,
        pub cwd: Option<String>,
        pub user: Option<String>,
        #[serde(default)]
        pub mounts: Vec<Mount>,
        pub network: Option<String>,
        pub resources: Option<Resources>,
        pub capabilities: Option<Vec<String>>,
        #[serde(default)]
        pub read_only: bool,
        #[serde(default)]
        pub init: bool,
        pub seccomp: Option<String>,
        #[serde(default)]
        pub rlimits: Vec<String>,
        pub restart: Option<Restart>,
        #[serde(default)]
        pub depends_on: Vec<String>,
        pub stop_signal: Option<String>,
        pub stop_timeout: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Restart {
        pub policy: Option<String>,
        pub backoff: Option<Backoff>,
        pub start_limit: Option<StartLimit>,
        #[serde(default)]
        pub no_restart_codes: Vec<i64>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Backoff {
        pub initial: Option<String>,
        pub factor: Option<f64>,
        pub max: Option<String>,
        pub reset_after: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct StartLimit {
        pub count: Option<u32>,
        pub interval: Option<String>,
    }

    macro_rules! program_of {
        ($t:ty) => {
            impl $t {
                pub fn take_program(&mut self) -> Program {
                    Program {
                        image: self.image.take(),
                        bundle: self.bundle.take(),
                        host: self.host,
                        command: self.command.take(),
                        args: self.args.take(),
                        env: std::mem::take(&mut self.env),
                        cwd: self.cwd.take(),
                        user: self.user.take(),
                        mounts: std::mem::take(&mut self.mounts),
                        network: self.network.take(),
                        resources: self.resources.take(),
                        capabilities: self.capabilities.take(),
                        read_only: self.read_only,
                        init: self.init,
                        seccomp: self.seccomp.take(),
                        rlimits: std::mem::take(&mut self.rlimits),
                    }
                }
            }
        };
    }
    program_of!(Task);
    program_of!(Service);
}

// ---------------------------------------------------------------------------
// Parsing and validation.

/// Parses manifest JSON and validates it; `images` are the names available
/// in the embedded OCI layout.
pub fn parse(bytes: &[u8], images: &[String]) -> Result<Manifest, ManifestError> {
    validate(parse_raw(bytes)?, images)
}

/// The text after a UTF-8 byte order mark, which some editors write and
/// JSON parsers refuse ("expected value at line 1 column 1").
pub fn without_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

/// Checks the JSON's shape only (syntax, field names, types), as `parse`
/// does first: berth-build runs it on the file as written, so a problem's
/// line and column are the user's.
pub fn check_shape(bytes: &[u8]) -> Result<(), ManifestError> {
    parse_raw(bytes).map(drop)
}

fn parse_raw(bytes: &[u8]) -> Result<raw::Manifest, ManifestError> {
    let de = &mut serde_json::Deserializer::from_slice(without_bom(bytes));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let location = e.path().to_string();
        let inner = e.into_inner();
        ManifestError::Parse {
            // serde_path_to_error says "." or "?" when the error is not
            // inside a field (syntax errors); the message carries line and column.
            location: if location == "." || location == "?" {
                "top level".to_owned()
            } else {
                location
            },
            message: inner.to_string(),
        }
    })
}

/// The bytes of a manifest file, which may be a pipe (`<(command)`), up to
/// 16 MiB.
pub fn read_manifest(path: &Path) -> std::io::Result<Vec<u8>> {
    use berth_bundles::small_file::{Accept, read_small_file};
    read_small_file(path, berth_bundles::image::MAX_JSON, Accept::Any)
}

/// Reads, parses and validates the manifest file at `path`.
pub fn load(path: &Path, images: &[String]) -> Result<Manifest, ManifestError> {
    let bytes = read_manifest(path).map_err(|source| ManifestError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&bytes, images)
}

/// Collects every problem, so a person fixes a manifest in one round.
struct Checker<'a> {
    problems: Vec<Problem>,
    images: &'a [String],
}

impl Checker<'_> {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, path: &str, text: Option<&str>, default: Duration) -> Duration {
        match text.map(parse_duration) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.problem(
                    path,
                    format!("invalid duration {:?}: {e}", text.unwrap_or_default()),
                );
                default
            }
        }
    }

    fn size(&mut self, path: &str, size: Option<&raw::Size>, default: u64) -> u64 {
        size.and_then(|s| self.parsed_size(path, s))
            .unwrap_or(default)
    }

    /// The size in bytes; `None` (the problem noted) when it does not parse.
    fn parsed_size(&mut self, path: &str, size: &raw::Size) -> Option<u64> {
        match size {
            raw::Size::Bytes(b) => Some(*b),
            raw::Size::Text(t) => match parse_size(t) {
                Ok(b) => Some(b),
                Err(e) => {
                    self.problem(path, format!("invalid size {t:?}: {e}"));
                    None
                }
            },
        }
    }

    /// A limit: a number, `"unlimited"`, or for a limit in bytes a size;
    /// `None` (the problem noted) otherwise.
    fn rlimit_value(&mut self, path: &str, text: &str, bytes: bool) -> Option<u64> {
        if text == "unlimited" {
            return Some(UNLIMITED);
        }
        if let Ok(n) = text.parse() {
            return Some(n);
        }
        if bytes {
            return self.parsed_size(path, &raw::Size::Text(text.to_owned()));
        }
        self.problem(
            path,
            format!("{text:?} is not a number or \"unlimited\" (a limit is N, \"unlimited\" or \"soft:hard\")"),
        );
        None
    }

    fn absolute_path(&mut self, path: &str, value: &str) -> PathBuf {
        let p = PathBuf::from(value);
        if !p.is_absolute() {
            self.problem(path, format!("{value:?} must be an absolute path"));
        } else if p.components().any(|c| c == Component::ParentDir) {
            self.problem(path, format!("{value:?} must not contain .."));
        }
        p
    }
}

fn valid_unit_name(name: &str) -> bool {
    // Names appear in marker lines, log file names and cgroup paths.
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn check_module_names(c: &mut Checker<'_>, path: &str, modules: &[String]) {
    for (i, m) in modules.iter().enumerate() {
        if m.is_empty() || m.contains(['/', '\0', ' ']) || m.contains(".ko") {
            c.problem(
                format!("{path}[{i}]"),
                format!("{m:?} is not a module name (like \"virtio_net\")"),
            );
        }
    }
}

fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// The longest `log.max_line`: a line with its control characters
/// escaped (up to 4 bytes each) and its stamp must fit the console's queue
/// and the TCP syslog buffer, or it could never be written whole.
pub const MAX_LINE_LIMIT: usize = 8192;

/// A DNS domain name (a `search` domain): labels as in a hostname, up to
/// 253 characters in all (RFC 1035), not a hostname's 64.
fn valid_domain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(valid_hostname)
}

/// Capability names the kernel knows: the runtime's table (capability.h).
pub use berth_runtime::caps::CAP_NAMES as CAPABILITIES;

/// Parses `SIGTERM`, `TERM` or a number.
pub fn parse_signal(text: &str) -> Result<Signal, String> {
    if let Ok(n) = text.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("unknown signal number {n}"));
    }
    let name = if text.starts_with("SIG") {
        text.to_owned()
    } else {
        format!("SIG{text}")
    };
    Signal::from_str(&name).map_err(|_| format!("unknown signal {text:?}"))
}

fn validate_program(c: &mut Checker<'_>, path: &str, p: raw::Program, data_disk: bool) -> Program {
    let sources =
        usize::from(p.image.is_some()) + usize::from(p.bundle.is_some()) + usize::from(p.host);
    let source = if sources != 1 {
        c.problem(path, "exactly one of image, bundle or host must be given");
        Source::Host
    } else if let Some(image) = p.image {
        if !c.images.contains(&image) {
            let available = if c.images.is_empty() {
                "none".to_owned()
            } else {
                c.images.join(", ")
            };
            c.problem(
                format!("{path}.image"),
                format!("unknown image {image:?} (available: {available})"),
            );
        }
        Source::Image(image)
    } else if let Some(bundle) = p.bundle {
        Source::Bundle(c.absolute_path(&format!("{path}.bundle"), &bundle))
    } else {
        Source::Host
    };

    for (field, list) in [("command", &p.command), ("args", &p.args)] {
        if let Some(list) = list {
            if field == "command" && list.is_empty() {
                c.problem(
                    format!("{path}.command"),
                    "must not be empty (leave it out to use the image's)",
                );
            }
            if field == "command" && list.first().is_some_and(String::is_empty) {
                c.problem(format!("{path}.command[0]"), "the program must not be \"\"");
            }
            if list.iter().any(|a| a.contains('\0')) {
                c.problem(format!("{path}.{field}"), "must not contain NUL bytes");
            }
        }
    }
    let mut env = Vec::with_capacity(p.env.len());
    for (k, v) in p.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            c.problem(
                format!("{path}.env.{k}"),
                "names must be non-empty without = or NUL",
            );
        }
        env.push((k, v));
    }
    let cwd = p.cwd.map(|d| c.absolute_path(&format!("{path}.cwd"), &d));
    if let Some(user) = &p.user {
        let ok = match user.split_once(':') {
            Some((u, g)) => u.parse::<u32>().is_ok() && g.parse::<u32>().is_ok(),
            None => !user.is_empty() && !user.contains(['/', '\0', ' ']),
        };
        if !ok {
            c.problem(
                format!("{path}.user"),
                format!("{user:?} is not a name, uid or uid:gid"),
            );
        }
    }

    let mut mounts = Vec::with_capacity(p.mounts.len());
    for (i, m) in p.mounts.into_iter().enumerate() {
        let mpath = format!("{path}.mounts[{i}]");
        match m {
            raw::Mount::Persistent {
                source,
                target,
                read_only,
            } => {
                if !data_disk {
                    c.problem(&mpath, "persistent mounts need a data_disk");
                }
                let src = PathBuf::from(&source);
                if source.is_empty()
                    || src.is_absolute()
                    || src
                        .components()
                        .any(|comp| !matches!(comp, Component::Normal(_)))
                {
                    c.problem(
                        format!("{mpath}.source"),
                        format!("{source:?} must be a relative path below the data disk"),
                    );
                }
                let target = c.absolute_path(&format!("{mpath}.target"), &target);
                mounts.push(Mount::Persistent {
                    source: src,
                    target,
                    read_only,
                });
            }
            raw::Mount::Tmpfs { target, size, mode } => {
                let target = c.absolute_path(&format!("{mpath}.target"), &target);
                // A size that does not parse is one problem, not also a 0.
                let size = size
                    .as_ref()
                    .and_then(|s| c.parsed_size(&format!("{mpath}.size"), s));
                if size == Some(0) {
                    c.problem(format!("{mpath}.size"), "must be greater than 0");
                }
                let mode = mode.and_then(|m| match u32::from_str_radix(&m, 8) {
                    Ok(v) if v <= 0o7777 => Some(v),
                    _ => {
                        c.problem(
                            format!("{mpath}.mode"),
                            format!("{m:?} is not an octal mode like \"1777\""),
                        );
                        None
                    }
                });
                mounts.push(Mount::Tmpfs { target, size, mode });
            }
        }
    }
    let mut seen_targets: Vec<&Path> = Vec::new();
    for m in &mounts {
        let (Mount::Persistent { target, .. } | Mount::Tmpfs { target, .. }) = m;
        if seen_targets.contains(&target.as_path()) {
            c.problem(
                format!("{path}.mounts"),
                format!("target {} is mounted twice", target.display()),
            );
        }
        seen_targets.push(target);
    }

    let network = match p.network.as_deref() {
        None | Some("host") => NetworkMode::Host,
        Some("none") => NetworkMode::None,
        Some(other) => {
            c.problem(
                format!("{path}.network"),
                format!("unknown mode {other:?} (expected host or none)"),
            );
            NetworkMode::Host
        }
    };

    let seccomp = match p.seccomp.as_deref() {
        None | Some("default") => SeccompMode::Default,
        Some("unconfined") => SeccompMode::Unconfined,
        Some(other) => {
            c.problem(
                format!("{path}.seccomp"),
                format!("unknown profile {other:?} (expected default or unconfined)"),
            );
            SeccompMode::Default
        }
    };

    let mut resources = Resources::default();
    if let Some(r) = p.resources {
        resources.memory = r
            .memory
            .as_ref()
            .and_then(|m| c.parsed_size(&format!("{path}.resources.memory"), m));
        if let Some(m) = resources.memory {
            // Below a few pages the kernel OOM-kills the process before exec.
            if m < 1 << 20 {
                c.problem(format!("{path}.resources.memory"), "must be at least 1MiB");
            }
        }
        if let Some(cpus) = r.cpus
            && !(cpus.is_finite() && (0.01..=1024.0).contains(&cpus))
        {
            c.problem(
                format!("{path}.resources.cpus"),
                format!("{cpus} is not between 0.01 and 1024"),
            );
        }
        resources.cpus = r.cpus;
        if r.pids == Some(0) {
            c.problem(format!("{path}.resources.pids"), "must be at least 1");
        }
        resources.pids = r.pids;
    }

    let rlimits_set = !p.rlimits.is_empty();
    let rlimits = validate_rlimits(c, path, p.rlimits);

    if let Some(caps) = &p.capabilities {
        for cap in caps {
            if !CAPABILITIES.contains(&cap.as_str()) {
                c.problem(
                    format!("{path}.capabilities"),
                    format!("unknown capability {cap:?}"),
                );
            }
        }
    }

    if source == Source::Host && p.command.is_none() {
        c.problem(format!("{path}.command"), "host programs need a command");
    }
    // Fields that shape a container, set or not: refused where they cannot
    // apply, never ignored.
    let container_fields = [
        ("user", p.user.is_some()),
        ("mounts", !mounts.is_empty()),
        ("network", network != NetworkMode::Host),
        ("resources", !resources.is_empty()),
        ("capabilities", p.capabilities.is_some()),
        ("read_only", p.read_only),
        ("init", p.init),
        ("seccomp", p.seccomp.is_some()),
    ];
    if source == Source::Host {
        // A host program runs in PID 1's own root: nothing to isolate it with.
        let why = "not supported for host programs (needs an image or bundle)";
        refuse_set_fields(c, path, &container_fields, why);
    }
    if matches!(source, Source::Bundle(_)) {
        // A bundle's config.json is the whole spec; refused at build time too
        // (berth-build validates with these rules).
        let program_fields = [
            ("command", p.command.is_some()),
            ("args", p.args.is_some()),
            ("env", !env.is_empty()),
            ("cwd", cwd.is_some()),
            ("rlimits", rlimits_set),
        ];
        let why = "not supported for bundles (their config.json runs as it is: edit the bundle)";
        refuse_set_fields(c, path, &program_fields, why);
        refuse_set_fields(c, path, &container_fields, why);
    }

    Program {
        source,
        command: p.command,
        args: p.args,
        env,
        cwd,
        user: p.user,
        mounts,
        network,
        resources,
        capabilities: p.capabilities,
        read_only: p.read_only,
        init: p.init,
        seccomp,
        rlimits,
    }
}

/// `rlimits`: `name=limit` entries (Docker's `--ulimit`), known names
/// each set once, values that parse, soft not above hard. Host programs
/// and bundles refuse the field (`validate_program`).
fn validate_rlimits(c: &mut Checker<'_>, path: &str, limits: Vec<String>) -> Vec<Rlimit> {
    let mut out: Vec<Rlimit> = Vec::with_capacity(limits.len());
    for (i, entry) in limits.iter().enumerate() {
        let rpath = format!("{path}.rlimits[{i}]");
        let Some((name, value)) = entry.split_once('=') else {
            c.problem(
                rpath,
                format!("{entry:?} is not name=limit (like \"nofile=1024:65536\")"),
            );
            continue;
        };
        let Some(&(_, typ, bytes)) = RESOURCES.iter().find(|(n, ..)| *n == name) else {
            let hint = match name.strip_prefix("RLIMIT_") {
                Some(short) => format!("write {:?}", short.to_ascii_lowercase()),
                None => rlimits::RESOURCE_NAMES.to_owned(),
            };
            c.problem(rpath, format!("unknown resource {name:?} ({hint})"));
            continue;
        };
        let (soft, hard) = match value.split_once(':') {
            Some((soft, hard)) => (
                c.rlimit_value(&rpath, soft, bytes),
                c.rlimit_value(&rpath, hard, bytes),
            ),
            None => {
                let v = c.rlimit_value(&rpath, value, bytes);
                (v, v)
            }
        };
        let (Some(soft), Some(hard)) = (soft, hard) else {
            continue;
        };
        if out.iter().any(|r| r.typ == typ) {
            c.problem(rpath, format!("{name} is set twice"));
        } else if soft > hard {
            c.problem(
                rpath,
                format!("{name}: the soft limit is above the hard limit"),
            );
        } else if typ == PosixRlimitType::RlimitNofile && hard == UNLIMITED {
            // setrlimit(2): EPERM for any RLIMIT_NOFILE above fs.nr_open.
            c.problem(
                rpath,
                "nofile cannot be unlimited: the kernel caps open files at fs.nr_open (1048576 unless a sysctl raises it)",
            );
        } else {
            out.push(Rlimit { typ, soft, hard });
        }
    }
    out
}

/// One problem `{path}.{field}: {why}` per field that is set.
fn refuse_set_fields(c: &mut Checker<'_>, path: &str, fields: &[(&str, bool)], why: &str) {
    for (field, set) in fields {
        if *set {
            c.problem(format!("{path}.{field}"), why);
        }
    }
}

fn validate_restart(c: &mut Checker<'_>, path: &str, r: Option<raw::Restart>) -> RestartPolicy {
    let mut policy = RestartPolicy::default();
    let Some(r) = r else { return policy };
    policy.mode = match r.policy.as_deref() {
        None | Some("on-failure") => RestartMode::OnFailure,
        Some("no") => RestartMode::No,
        Some("always") => RestartMode::Always,
        Some(other) => {
            c.problem(
                format!("{path}.policy"),
                format!("unknown policy {other:?} (expected no, on-failure or always)"),
            );
            RestartMode::OnFailure
        }
    };
    if let Some(b) = r.backoff {
        let d = Backoff::default();
        let bpath = format!("{path}.backoff");
        policy.backoff = Backoff {
            initial: c.duration(&format!("{bpath}.initial"), b.initial.as_deref(), d.initial),
            factor: b.factor.unwrap_or(d.factor),
            max: c.duration(&format!("{bpath}.max"), b.max.as_deref(), d.max),
            reset_after: c.duration(
                &format!("{bpath}.reset_after"),
                b.reset_after.as_deref(),
                d.reset_after,
            ),
        };
        let f = policy.backoff.factor;
        if !(f.is_finite() && (1.0..=100.0).contains(&f)) {
            c.problem(
                format!("{bpath}.factor"),
                format!("{f} is not between 1 and 100"),
            );
        }
        if policy.backoff.initial.is_zero() {
            // A zero delay is a crash loop that burns the CPU.
            c.problem(format!("{bpath}.initial"), "must be greater than 0");
        }
        if policy.backoff.max < policy.backoff.initial {
            c.problem(format!("{bpath}.max"), "must not be smaller than initial");
        }
    }
    if let Some(l) = r.start_limit {
        let lpath = format!("{path}.start_limit");
        policy.start_limit = StartLimit {
            count: l.count.unwrap_or(StartLimit::default().count),
            interval: c.duration(
                &format!("{lpath}.interval"),
                l.interval.as_deref(),
                StartLimit::default().interval,
            ),
        };
        if policy.start_limit.count == 0 {
            c.problem(format!("{lpath}.count"), "must be at least 1");
        }
        if policy.start_limit.interval.is_zero() {
            c.problem(format!("{lpath}.interval"), "must be greater than 0");
        }
    }
    for code in r.no_restart_codes {
        match i32::try_from(code) {
            Ok(c32) if (0..=255).contains(&c32) => policy.no_restart_codes.push(c32),
            _ => c.problem(
                format!("{path}.no_restart_codes"),
                format!("{code} is not an exit code (0-255)"),
            ),
        }
    }
    policy
}

/// The manifest format version this berth-init reads (`"version"`).
pub const VERSION: u32 = 1;

/// Checks a parsed manifest and turns it into domain types.
pub fn validate(raw: raw::Manifest, images: &[String]) -> Result<Manifest, ManifestError> {
    let mut c = Checker {
        problems: Vec::new(),
        images,
    };
    if raw.version != VERSION {
        c.problem(
            "version",
            format!("unsupported version {} (expected {VERSION})", raw.version),
        );
    }
    if let Some(h) = &raw.hostname
        && !valid_hostname(h)
    {
        c.problem("hostname", format!("{h:?} is not a valid hostname"));
    }
    check_module_names(&mut c, "modules", &raw.modules);
    let mut sysctls = Vec::with_capacity(raw.sysctls.len());
    for (k, v) in raw.sysctls {
        if k.is_empty()
            || k.split(['.', '/'])
                .any(|part| part.is_empty() || part == "..")
            || k.contains('\0')
            || v.contains('\0')
        {
            c.problem(
                format!("sysctls.{k}"),
                "is not a sysctl key like \"net.ipv4.ip_forward\"",
            );
        }
        sysctls.push((k, v));
    }

    let mut network = Network::default();
    if let Some(n) = raw.network {
        check_module_names(&mut c, "network.modules", &n.modules);
        network.modules = n.modules;
        for (i, iface) in n.interfaces.into_iter().enumerate() {
            let ipath = format!("network.interfaces[{i}]");
            if iface.name.is_empty()
                || iface.name.len() > 15
                || iface.name.contains(['/', ' ', '\0'])
            {
                c.problem(
                    format!("{ipath}.name"),
                    format!("{:?} is not an interface name", iface.name),
                );
            }
            let address = iface.address.parse::<Ipv4Addr>().unwrap_or_else(|_| {
                c.problem(
                    format!("{ipath}.address"),
                    format!("{:?} is not an IPv4 address", iface.address),
                );
                Ipv4Addr::UNSPECIFIED
            });
            if iface.prefix > 32 {
                c.problem(
                    format!("{ipath}.prefix"),
                    format!("{} is not between 0 and 32", iface.prefix),
                );
            }
            let gateway = iface.gateway.map(|g| {
                g.parse::<Ipv4Addr>().unwrap_or_else(|_| {
                    c.problem(
                        format!("{ipath}.gateway"),
                        format!("{g:?} is not an IPv4 address"),
                    );
                    Ipv4Addr::UNSPECIFIED
                })
            });
            if network
                .interfaces
                .iter()
                .any(|x: &Interface| x.name == iface.name)
            {
                c.problem(
                    format!("{ipath}.name"),
                    format!("interface {:?} is configured twice", iface.name),
                );
            }
            network.interfaces.push(Interface {
                name: iface.name,
                address,
                prefix: iface.prefix,
                gateway,
            });
        }
        if let Some(dns) = n.dns {
            for (i, ns) in dns.nameservers.iter().enumerate() {
                match ns.parse::<Ipv4Addr>() {
                    Ok(a) => network.nameservers.push(a),
                    Err(_) => c.problem(
                        format!("network.dns.nameservers[{i}]"),
                        format!("{ns:?} is not an IPv4 address"),
                    ),
                }
            }
            for (i, s) in dns.search.iter().enumerate() {
                if !valid_domain(s) {
                    c.problem(
                        format!("network.dns.search[{i}]"),
                        format!("{s:?} is not a domain"),
                    );
                }
            }
            network.search = dns.search;
        }
    }

    let data_disk = raw.data_disk.map(|d| {
        let device = c.absolute_path("data_disk.device", &d.device);
        // devtmpfs makes /dev/vda; the /dev/disk/by-* links are udev's,
        // which an appliance does not run.
        if device.starts_with("/dev/disk") {
            c.problem(
                "data_disk.device",
                format!(
                    "{}: the appliance has no udev to make /dev/disk links; name the device (/dev/vda)",
                    device.display()
                ),
            );
        }
        DataDisk {
            device,
            fstype: d.fstype,
            options: d.options,
        }
    });

    let mut log_cfg = LogConfig::default();
    if let Some(l) = raw.log {
        if let Some(level) = &l.level {
            match log::LevelFilter::from_str(level) {
                Ok(f) => log_cfg.level = f,
                Err(_) => c.problem(
                    "log.level",
                    format!("unknown level {level:?} (off, error, warn, info, debug, trace)"),
                ),
            }
        }
        let ring = c.size(
            "log.ring_size",
            l.ring_size.as_ref(),
            log_cfg.ring_size as u64,
        );
        // The ring holds at least a few full lines; more than 64 MiB per
        // service is not "bounded memory" for a small VM.
        if !(1024..=64 << 20).contains(&ring) {
            c.problem("log.ring_size", "must be between 1KiB and 64MiB");
        }
        log_cfg.ring_size = usize::try_from(ring).unwrap_or(log_cfg.ring_size);
        if let Some(max_line) = l.max_line {
            if !(80..=MAX_LINE_LIMIT as u64).contains(&max_line) {
                c.problem(
                    "log.max_line",
                    format!("must be between 80 and {MAX_LINE_LIMIT}"),
                );
            }
            log_cfg.max_line = usize::try_from(max_line).unwrap_or(log_cfg.max_line);
        }
        if let Some(rate) = l.rate {
            let lines_per_sec = rate.lines_per_sec.unwrap_or(log_cfg.lines_per_sec);
            if lines_per_sec == 0 {
                c.problem("log.rate.lines_per_sec", "must be at least 1");
            }
            log_cfg.lines_per_sec = lines_per_sec;
            log_cfg.burst = rate.burst.unwrap_or(lines_per_sec.saturating_mul(2));
            if rate.burst == Some(0) {
                c.problem("log.rate.burst", "must be at least 1");
            }
        }
        if let Some(f) = l.files {
            let dir = c.absolute_path("log.files.dir", &f.dir);
            if dir.starts_with(DATA_DIR) && data_disk.is_none() {
                c.problem(
                    "log.files.dir",
                    format!(
                        "{} is on the data disk ({DATA_DIR}), but there is no data_disk (the files would only be in memory)",
                        dir.display()
                    ),
                );
            }
            let max_size = c.size("log.files.max_size", f.max_size.as_ref(), 1 << 20);
            if max_size < 4096 {
                c.problem("log.files.max_size", "must be at least 4KiB");
            }
            let keep = f.keep.unwrap_or(3);
            if keep > 100 {
                c.problem("log.files.keep", "must be at most 100");
            }
            log_cfg.files = Some(LogFiles {
                dir,
                max_size,
                keep,
            });
        }
        if let Some(s) = l.syslog {
            let given = [s.unix.is_some(), s.udp.is_some(), s.tcp.is_some()]
                .iter()
                .filter(|b| **b)
                .count();
            if given != 1 {
                c.problem(
                    "log.syslog",
                    "exactly one of unix, udp or tcp must be given",
                );
            }
            let addr_ok = |a: &str| {
                a.rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            };
            log_cfg.syslog = if let Some(u) = s.unix {
                Some(SyslogTarget::Unix(c.absolute_path("log.syslog.unix", &u)))
            } else if let Some(a) = s.udp {
                if !addr_ok(&a) {
                    c.problem("log.syslog.udp", format!("{a:?} is not host:port"));
                }
                Some(SyslogTarget::Udp(a))
            } else if let Some(a) = s.tcp {
                if !addr_ok(&a) {
                    c.problem("log.syslog.tcp", format!("{a:?} is not host:port"));
                }
                Some(SyslogTarget::Tcp(a))
            } else {
                None
            };
        }
    }

    let on_fatal = match raw.on_fatal.as_deref().map(FatalAction::from_str) {
        None => FatalAction::default(),
        Some(Ok(a)) => a,
        Some(Err(e)) => {
            c.problem("on_fatal", e);
            FatalAction::default()
        }
    };

    let mut names: BTreeMap<String, &'static str> = BTreeMap::new();
    let mut check_name = |c: &mut Checker<'_>, path: &str, name: &str, kind: &'static str| {
        if !valid_unit_name(name) {
            c.problem(
                format!("{path}.name"),
                format!(
                    "{name:?} must be 1-63 of a-z, 0-9, - and _, starting with a letter or digit"
                ),
            );
        }
        if name == crate::logging::OWN_UNIT {
            c.problem(
                format!("{path}.name"),
                format!("{name:?} is reserved for PID 1's own log"),
            );
        }
        if let Some(other) = names.insert(name.to_owned(), kind) {
            c.problem(
                format!("{path}.name"),
                format!("{name:?} is already the name of a {other}"),
            );
        }
    };

    let mut tasks = Vec::with_capacity(raw.tasks.len());
    for mut t in raw.tasks {
        let path = format!("tasks.{}", t.name);
        check_name(&mut c, &path, &t.name, "task");
        let program = validate_program(&mut c, &path, t.take_program(), data_disk.is_some());
        let timeout = t
            .timeout
            .as_deref()
            .map(|s| c.duration(&format!("{path}.timeout"), Some(s), Duration::ZERO));
        if timeout.is_some_and(|d| d.is_zero()) {
            c.problem(format!("{path}.timeout"), "must be greater than 0");
        }
        tasks.push(Task {
            name: t.name,
            program,
            optional: t.optional,
            timeout,
        });
    }

    let mut services = Vec::with_capacity(raw.services.len());
    for mut s in raw.services {
        let path = format!("services.{}", s.name);
        check_name(&mut c, &path, &s.name, "service");
        let program = validate_program(&mut c, &path, s.take_program(), data_disk.is_some());
        let restart = validate_restart(&mut c, &format!("{path}.restart"), s.restart.take());
        let stop_signal = match s.stop_signal.as_deref().map(parse_signal) {
            None => Signal::SIGTERM,
            Some(Ok(sig)) => sig,
            Some(Err(e)) => {
                c.problem(format!("{path}.stop_signal"), e);
                Signal::SIGTERM
            }
        };
        let stop_timeout = c.duration(
            &format!("{path}.stop_timeout"),
            s.stop_timeout.as_deref(),
            Duration::from_secs(10),
        );
        let mut depends_on: Vec<String> = Vec::with_capacity(s.depends_on.len());
        for d in s.depends_on {
            if depends_on.contains(&d) {
                c.problem(
                    format!("{path}.depends_on"),
                    format!("{d:?} is listed twice"),
                );
            } else {
                depends_on.push(d);
            }
        }
        services.push(Service {
            name: s.name,
            program,
            restart,
            depends_on,
            stop_signal,
            stop_timeout,
        });
    }
    // Every dependency on a name that is not a service, each named; the
    // order (and its cycle check) only when there are none.
    let mut unknown = false;
    for s in &services {
        for d in &s.depends_on {
            if !services.iter().any(|o| &o.name == d) {
                unknown = true;
                let what = if names.get(d.as_str()) == Some(&"task") {
                    "a task, not a service"
                } else {
                    "unknown service"
                };
                c.problem(
                    format!("services.{}.depends_on", s.name),
                    format!("{d:?} is {what}"),
                );
            }
        }
    }
    match order::start_order(&services) {
        _ if unknown => {}
        Ok(_) => {}
        Err(order::OrderError::UnknownDependency {
            service,
            dependency,
        }) => {
            let what = if names.get(&dependency) == Some(&"task") {
                "a task, not a service"
            } else {
                "unknown service"
            };
            c.problem(
                format!("services.{service}.depends_on"),
                format!("{dependency:?} is {what}"),
            );
        }
        Err(e @ order::OrderError::Cycle { .. }) => c.problem("services", e.to_string()),
    }

    if !c.problems.is_empty() {
        return Err(ManifestError::Invalid {
            problems: c.problems,
        });
    }
    Ok(Manifest {
        hostname: raw.hostname,
        modules: raw.modules,
        sysctls,
        network,
        data_disk,
        log: log_cfg,
        on_fatal,
        tasks,
        services,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images() -> Vec<String> {
        vec!["web".into(), "db".into(), "busybox".into()]
    }

    fn problems(json: &str) -> Vec<String> {
        match parse(json.as_bytes(), &images()) {
            Err(ManifestError::Invalid { problems }) => {
                problems.iter().map(|p| p.to_string()).collect()
            }
            Err(e) => vec![e.to_string()],
            Ok(_) => vec![],
        }
    }

    /// Review fixes: a search domain may be up to 253 characters; a bad
    /// tmpfs size is one problem, not also "must be greater than 0";
    /// max_line stops where an escaped line still fits the sinks' buffers.
    #[test]
    fn search_domains_tmpfs_sizes_and_max_line() {
        let long = format!(
            "{}.example.com",
            ["a".repeat(63), "b".repeat(63), "c".repeat(50)].join(".")
        );
        assert!(long.len() > 64 && long.len() <= 253);
        let dns = |search: &str| {
            format!(
                r#"{{"version":1,"network":{{"interfaces":[],"dns":{{"nameservers":["10.0.0.1"],"search":[{search}]}}}}}}"#
            )
        };
        assert_eq!(problems(&dns(&format!("{long:?}"))), Vec::<String>::new());
        let too_long = format!("{}.{long}", "d".repeat(80));
        assert_eq!(
            problems(&dns(&format!("{too_long:?}"))),
            [format!(
                "network.dns.search[0]: {too_long:?} is not a domain"
            )]
        );
        let tmpfs = r#"{"version":1,"services":[{"name":"a","image":"web","mounts":[{"type":"tmpfs","target":"/t","size":"1XB"}]}]}"#;
        let got = problems(tmpfs);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("services.a.mounts[0].size: invalid size \"1XB\""),
            "{got:?}"
        );
        let line = |n: usize| format!(r#"{{"version":1,"log":{{"max_line":{n}}}}}"#);
        assert_eq!(problems(&line(MAX_LINE_LIMIT)), Vec::<String>::new());
        assert_eq!(
            problems(&line(MAX_LINE_LIMIT + 1)),
            ["log.max_line: must be between 80 and 8192"]
        );
    }

    #[test]
    fn example_manifest_is_valid() {
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/manifest.json"
        ))
        .unwrap();
        let m = parse(&bytes, &images()).unwrap();
        assert_eq!(m.hostname.as_deref(), Some("edge-1"));
        assert_eq!(m.tasks.len(), 2);
        let web = m.services.iter().find(|s| s.name == "web").unwrap();
        assert_eq!(web.restart.mode, RestartMode::Always);
        assert_eq!(web.restart.backoff.initial, Duration::from_millis(400));
        assert_eq!(web.stop_signal, Signal::SIGQUIT);
        assert_eq!(web.depends_on, vec!["db".to_owned()]);
        assert_eq!(web.program.resources.memory, Some(256 << 20));
        assert_eq!(m.log.ring_size, 128 << 10);
        assert_eq!(m.log.syslog, Some(SyslogTarget::Udp("10.0.2.2:514".into())));
        assert_eq!(m.on_fatal, FatalAction::Reboot);
    }

    #[test]
    fn minimal_manifest_gets_defaults() {
        let m = parse(
            br#"{"version":1,"services":[{"name":"a","host":true,"command":["/bin/true"]}]}"#,
            &[],
        )
        .unwrap();
        let a = &m.services[0];
        assert_eq!(a.restart, RestartPolicy::default());
        assert_eq!(a.stop_signal, Signal::SIGTERM);
        assert_eq!(a.stop_timeout, Duration::from_secs(10));
        assert_eq!(a.program.host_argv(), vec!["/bin/true".to_owned()]);
        assert_eq!(m.log, LogConfig::default());
        assert_eq!(m.on_fatal, FatalAction::Poweroff);
    }

    #[test]
    fn parse_errors_name_the_field() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"version":1,"hostnme":"x"}"#,
                "parse manifest at hostnme: unknown field `hostnme`",
            ),
            (
                r#"{"version":1,"services":[{"name":"a","host":true,"command":["x"],"restart":{"polcy":"no"}}]}"#,
                "parse manifest at services[0].restart.polcy: unknown field `polcy`",
            ),
            (
                r#"{"version":1,"services":[{"name":"a","host":true,"mounts":[{"type":"nfs","target":"/x"}]}]}"#,
                "services[0].mounts[0]",
            ),
            (
                r#"{"version":"1"}"#,
                "parse manifest at version: invalid type",
            ),
            (
                r#"{"version":1,"#,
                "parse manifest at top level: EOF while parsing a value at line 1 column 13",
            ),
            (r#"{}"#, "missing field `version`"),
            (
                r#"{"version":1,"services":[{"name":"a","image":"web","rlimits":{"nofile":4096}}]}"#,
                "parse manifest at services[0].rlimits: invalid type: map, expected a sequence",
            ),
            (
                r#"{"version":1,"tasks":[{"name":"a","image":"web","rlimits":["core=0",0]}]}"#,
                "parse manifest at tasks[0].rlimits[1]: invalid type: integer `0`, expected a string",
            ),
        ];
        for (json, want) in cases {
            let err = parse(json.as_bytes(), &images()).unwrap_err().to_string();
            assert!(err.contains(want), "{json}\n got: {err}\nwant: {want}");
        }
    }

    #[test]
    fn validation_problems() {
        let svc = |extra: &str| {
            format!(
                r#"{{"version":1,"services":[{{"name":"a","host":true,"command":["/bin/true"]{extra}}}]}}"#
            )
        };
        let img = |extra: &str| {
            format!(r#"{{"version":1,"services":[{{"name":"a","image":"web"{extra}}}]}}"#)
        };
        let cases: Vec<(String, &str)> = vec![
            (r#"{"version":2}"#.into(), "version: unsupported version 2 (expected 1)"),
            (r#"{"version":1,"hostname":"-bad"}"#.into(), "hostname: \"-bad\" is not a valid hostname"),
            (r#"{"version":1,"modules":["ext4.ko"]}"#.into(), "modules[0]: \"ext4.ko\" is not a module name"),
            (r#"{"version":1,"network":{"modules":["virtio_net","a/b"]}}"#.into(), "network.modules[1]: \"a/b\" is not a module name"),
            (r#"{"version":1,"sysctls":{"net..x":"1"}}"#.into(), "sysctls.net..x: is not a sysctl key"),
            (r#"{"version":1,"on_fatal":"halt"}"#.into(), "on_fatal: unknown action \"halt\""),
            (
                r#"{"version":1,"network":{"interfaces":[{"name":"eth0","address":"10.0.0.300","prefix":33}]}}"#.into(),
                "network.interfaces[0].address: \"10.0.0.300\" is not an IPv4 address",
            ),
            (
                r#"{"version":1,"network":{"interfaces":[{"name":"eth0","address":"10.0.0.3","prefix":33}]}}"#.into(),
                "network.interfaces[0].prefix: 33 is not between 0 and 32",
            ),
            (r#"{"version":1,"log":{"level":"loud"}}"#.into(), "log.level: unknown level \"loud\""),
            (r#"{"version":1,"log":{"ring_size":"10"}}"#.into(), "log.ring_size: must be between 1KiB and 64MiB"),
            (r#"{"version":1,"log":{"ring_size":"1XB"}}"#.into(), "log.ring_size: invalid size \"1XB\": unknown unit \"XB\""),
            (r#"{"version":1,"log":{"files":{"dir":"log"}}}"#.into(), "log.files.dir: \"log\" must be an absolute path"),
            (r#"{"version":1,"log":{"syslog":{}}}"#.into(), "log.syslog: exactly one of unix, udp or tcp"),
            (r#"{"version":1,"log":{"syslog":{"udp":"host"}}}"#.into(), "log.syslog.udp: \"host\" is not host:port"),
            (r#"{"version":1,"services":[{"name":"a","image":"nginx"}]}"#.into(), "services.a.image: unknown image \"nginx\" (available: web, db, busybox)"),
            (r#"{"version":1,"services":[{"name":"a"}]}"#.into(), "services.a: exactly one of image, bundle or host"),
            (r#"{"version":1,"services":[{"name":"a","image":"web","host":true}]}"#.into(), "services.a: exactly one of image, bundle or host"),
            (r#"{"version":1,"services":[{"name":"a","bundle":"rel/dir"}]}"#.into(), "services.a.bundle: \"rel/dir\" must be an absolute path"),
            (r#"{"version":1,"services":[{"name":"a","host":true}]}"#.into(), "services.a.command: host programs need a command"),
            (r#"{"version":1,"services":[{"name":"a","bundle":"/b","args":["x"]}]}"#.into(), "services.a.args: not supported for bundles (their config.json runs as it is"),
            (r#"{"version":1,"tasks":[{"name":"a","bundle":"/b","read_only":true}]}"#.into(), "tasks.a.read_only: not supported for bundles"),
            (svc(r#","capabilities":["CAP_NET_ADMIN"]"#), "services.a.capabilities: not supported for host programs"),
            (svc(r#","read_only":true"#), "services.a.read_only: not supported for host programs"),
            (svc(r#","init":true"#), "services.a.init: not supported for host programs"),
            (r#"{"version":1,"tasks":[{"name":"a","bundle":"/b","init":true}]}"#.into(), "tasks.a.init: not supported for bundles"),
            (img(r#","command":[]"#), "services.a.command: must not be empty"),
            (img(r#","capabilities":["NET_ADMIN"]"#), "services.a.capabilities: unknown capability \"NET_ADMIN\""),
            (img(r#","cwd":"srv""#), "services.a.cwd: \"srv\" must be an absolute path"),
            (img(r#","user":"1000:x""#), "services.a.user: \"1000:x\" is not a name, uid or uid:gid"),
            (img(r#","network":"bridge""#), "services.a.network: unknown mode \"bridge\""),
            (
                r#"{"version":1,"services":[{"name":"a\nb\u001b[31m","host":true,"command":["x"]}]}"#.into(),
                "services.a\\nb\\u{1b}[31m.name: ",
            ),
            (img(r#","seccomp":"runtime/default""#), "services.a.seccomp: unknown profile \"runtime/default\" (expected default or unconfined)"),
            (svc(r#","seccomp":"unconfined""#), "services.a.seccomp: not supported for host programs"),
            (r#"{"version":1,"tasks":[{"name":"a","bundle":"/b","seccomp":"default"}]}"#.into(), "tasks.a.seccomp: not supported for bundles"),
            (img(r#","rlimits":["nofile"]"#), "services.a.rlimits[0]: \"nofile\" is not name=limit (like \"nofile=1024:65536\")"),
            (img(r#","rlimits":["core=0","nfile=10"]"#), "services.a.rlimits[1]: unknown resource \"nfile\" (expected as, core, cpu, data, fsize, locks, memlock, msgqueue, nice, nofile, nproc, rss, rtprio, rttime, sigpending, stack)"),
            (img(r#","rlimits":["RLIMIT_NOFILE=10"]"#), "services.a.rlimits[0]: unknown resource \"RLIMIT_NOFILE\" (write \"nofile\")"),
            (img(r#","rlimits":["nofile=4096:1024"]"#), "services.a.rlimits[0]: nofile: the soft limit is above the hard limit"),
            (img(r#","rlimits":["core=unlimited:0"]"#), "services.a.rlimits[0]: core: the soft limit is above the hard limit"),
            (img(r#","rlimits":["nofile=unlimited"]"#), "services.a.rlimits[0]: nofile cannot be unlimited: the kernel caps open files at fs.nr_open"),
            (img(r#","rlimits":["core=0","core=1"]"#), "services.a.rlimits[1]: core is set twice"),
            (img(r#","rlimits":["nproc=lots"]"#), "services.a.rlimits[0]: \"lots\" is not a number or \"unlimited\" (a limit is N, \"unlimited\" or \"soft:hard\")"),
            (img(r#","rlimits":["nofile=64KiB"]"#), "services.a.rlimits[0]: \"64KiB\" is not a number or \"unlimited\""),
            (img(r#","rlimits":["nofile=1024:"]"#), "services.a.rlimits[0]: \"\" is not a number or \"unlimited\""),
            (img(r#","rlimits":["nofile=1:2:3"]"#), "services.a.rlimits[0]: \"2:3\" is not a number or \"unlimited\""),
            (img(r#","rlimits":["memlock=1XB:unlimited"]"#), "services.a.rlimits[0]: invalid size \"1XB\": unknown unit \"XB\""),
            // Host units take them too (their child sets them before exec),
            // with the same checks.
            (svc(r#","rlimits":["core=2:1"]"#), "services.a.rlimits[0]: core: the soft limit is above the hard limit"),
            (r#"{"version":1,"tasks":[{"name":"a","bundle":"/b","rlimits":["core=0"]}]}"#.into(), "tasks.a.rlimits: not supported for bundles (their config.json runs as it is"),
            (img(r#","resources":{"memory":"1KiB"}"#), "services.a.resources.memory: must be at least 1MiB"),
            (img(r#","resources":{"cpus":0}"#), "services.a.resources.cpus: 0 is not between 0.01 and 1024"),
            (img(r#","resources":{"pids":0}"#), "services.a.resources.pids: must be at least 1"),
            (img(r#","mounts":[{"type":"persistent","source":"db","target":"/var/db"}]"#), "services.a.mounts[0]: persistent mounts need a data_disk"),
            (img(r#","mounts":[{"type":"tmpfs","target":"/tmp","mode":"999"}]"#), "services.a.mounts[0].mode: \"999\" is not an octal mode"),
            (img(r#","mounts":[{"type":"tmpfs","target":"/tmp"},{"type":"tmpfs","target":"/tmp"}]"#), "services.a.mounts: target /tmp is mounted twice"),
            (img(r#","mounts":[{"type":"tmpfs","target":"/x/../etc"}]"#), "services.a.mounts[0].target: \"/x/../etc\" must not contain .."),
            (img(r#","stop_signal":"SIGFOO""#), "services.a.stop_signal: unknown signal \"SIGFOO\""),
            (img(r#","stop_timeout":"10""#), "services.a.stop_timeout: invalid duration \"10\": missing unit after 10"),
            (img(r#","restart":{"policy":"sometimes"}"#), "services.a.restart.policy: unknown policy \"sometimes\""),
            (img(r#","restart":{"backoff":{"factor":0.5}}"#), "services.a.restart.backoff.factor: 0.5 is not between 1 and 100"),
            (img(r#","restart":{"backoff":{"initial":"0ms"}}"#), "services.a.restart.backoff.initial: must be greater than 0"),
            (img(r#","restart":{"backoff":{"initial":"5s","max":"1s"}}"#), "services.a.restart.backoff.max: must not be smaller than initial"),
            (img(r#","restart":{"start_limit":{"count":0,"interval":"10s"}}"#), "services.a.restart.start_limit.count: must be at least 1"),
            (img(r#","restart":{"no_restart_codes":[256]}"#), "services.a.restart.no_restart_codes: 256 is not an exit code"),
            (img(r#","depends_on":["db"]"#), "services.a.depends_on: \"db\" is unknown service"),
            (img(r#","depends_on":["a"]"#), "services: dependency cycle: a -> a"),
            (
                r#"{"version":1,"services":[{"name":"a","image":"web","depends_on":["b"]},{"name":"b","image":"web","depends_on":["a"]}]}"#.into(),
                "services: dependency cycle: a -> b -> a",
            ),
            (
                r#"{"version":1,"tasks":[{"name":"a","host":true,"command":["x"]}],"services":[{"name":"a","image":"web"}]}"#.into(),
                "services.a.name: \"a\" is already the name of a task",
            ),
            (
                r#"{"version":1,"tasks":[{"name":"t","host":true,"command":["x"]}],"services":[{"name":"a","image":"web","depends_on":["t"]}]}"#.into(),
                "services.a.depends_on: \"t\" is a task, not a service",
            ),
            (r#"{"version":1,"services":[{"name":"Web","image":"web"}]}"#.into(), "services.Web.name: \"Web\" must be 1-63 of a-z"),
            (r#"{"version":1,"services":[{"name":"berth","image":"web"}]}"#.into(), "services.berth.name: \"berth\" is reserved for PID 1's own log"),
            (r#"{"version":1,"tasks":[{"name":"t","host":true,"command":["x"],"timeout":"0s"}]}"#.into(), "tasks.t.timeout: must be greater than 0"),
        ];
        for (json, want) in cases {
            let got = problems(&json);
            assert!(
                got.iter().any(|p| p.starts_with(want)),
                "{json}\n got: {got:?}\nwant: {want}"
            );
        }
    }

    #[test]
    fn one_mistake_is_one_problem() {
        let img = |extra: &str| {
            format!(r#"{{"version":1,"services":[{{"name":"a","image":"web"{extra}}}]}}"#)
        };
        for (json, want) in [
            (
                img(r#","resources":{"memory":"64X"}"#),
                "services.a.resources.memory: invalid size \"64X\": unknown unit \"X\"",
            ),
            (
                r#"{"version":1,"log":{"rate":{"lines_per_sec":0}}}"#.into(),
                "log.rate.lines_per_sec: must be at least 1",
            ),
            (
                r#"{"version":1,"log":{"level":"verbose"}}"#.into(),
                "log.level: unknown level \"verbose\" (off, error, warn, info, debug, trace)",
            ),
            (
                img(r#","command":[""]"#),
                "services.a.command[0]: the program must not be \"\"",
            ),
            (
                img(r#","rlimits":["nproc=many"]"#),
                "services.a.rlimits[0]: \"many\" is not a number or \"unlimited\" (a limit is N, \"unlimited\" or \"soft:hard\")",
            ),
            (
                r#"{"version":1,"log":{"files":{"dir":"/data/log"}}}"#.into(),
                "log.files.dir: /data/log is on the data disk (/data), but there is no data_disk (the files would only be in memory)",
            ),
            (
                r#"{"version":1,"data_disk":{"device":"/dev/disk/by-label/x","fstype":"ext4"}}"#
                    .into(),
                "data_disk.device: /dev/disk/by-label/x: the appliance has no udev to make /dev/disk links; name the device (/dev/vda)",
            ),
        ] {
            assert_eq!(problems(&json), [want], "{json}");
        }
    }

    #[test]
    fn all_problems_reported_at_once() {
        let json = r#"{"version":1,"hostname":"a b","services":[{"name":"a","image":"nope","stop_timeout":"x"}]}"#;
        let err = parse(json.as_bytes(), &images()).unwrap_err();
        let ManifestError::Invalid { problems } = &err else {
            panic!("{err}")
        };
        assert_eq!(problems.len(), 3, "{err}");
        let text = err.to_string();
        assert!(
            text.starts_with("invalid manifest:\n  hostname: "),
            "{text}"
        );
        // One problem is one line.
        let err = parse(br#"{"version":2}"#, &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid manifest: version: unsupported version 2 (expected 1)"
        );
    }

    /// Each field of `start_limit` and `log.rate` has its documented
    /// default on its own (a lone `count` used to be refused for the
    /// missing `interval`).
    #[test]
    fn partial_objects_take_the_other_defaults() {
        let m = parse(
            br#"{"version":1,"log":{"rate":{"burst":50}},"services":[{"name":"a","host":true,"command":["/bin/true"],
                "restart":{"start_limit":{"count":3}}},{"name":"b","host":true,"command":["/bin/true"],
                "restart":{"start_limit":{"interval":"1m"}}}]}"#,
            &[],
        )
        .unwrap();
        let limit = |i: usize| m.services[i].restart.start_limit;
        assert_eq!(
            (limit(0).count, limit(0).interval),
            (3, Duration::from_secs(10))
        );
        assert_eq!(
            (limit(1).count, limit(1).interval),
            (5, Duration::from_secs(60))
        );
        assert_eq!((m.log.lines_per_sec, m.log.burst), (1000, 50));
    }

    /// Every dependency on a missing service is named, not just the first.
    #[test]
    fn every_unknown_dependency_is_reported() {
        let json = r#"{"version":1,"services":[{"name":"a","image":"web","depends_on":["x","y"]},
            {"name":"b","image":"web","depends_on":["a","z"]}]}"#;
        let err = parse(json.as_bytes(), &images()).unwrap_err();
        let text = err.to_string();
        for missing in [
            "services.a.depends_on: \"x\"",
            "services.a.depends_on: \"y\"",
            "services.b.depends_on: \"z\"",
        ] {
            assert!(text.contains(missing), "{missing} not in {text}");
        }
    }

    #[test]
    fn rlimits_are_name_equals_one_value_or_soft_colon_hard() {
        use oci_spec::runtime::PosixRlimitType as T;
        let m = parse(
            br#"{"version":1,"services":[{"name":"a","image":"web","rlimits":[
                "nofile=1024:65536","core=unlimited","memlock=64MiB",
                "nproc=100:unlimited","stack=8388608","locks=4096"]}]}"#,
            &images(),
        )
        .unwrap();
        let limit = |typ, soft, hard| Rlimit { typ, soft, hard };
        // In the manifest's order.
        assert_eq!(
            m.services[0].program.rlimits,
            [
                limit(T::RlimitNofile, 1024, 65536),
                limit(T::RlimitCore, UNLIMITED, UNLIMITED),
                limit(T::RlimitMemlock, 64 << 20, 64 << 20),
                limit(T::RlimitNproc, 100, UNLIMITED),
                limit(T::RlimitStack, 8 << 20, 8 << 20),
                limit(T::RlimitLocks, 4096, 4096),
            ]
        );
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let m = parse(b"\xEF\xBB\xBF{\"version\":1,\"hostname\":\"bom\"}", &[]).unwrap();
        assert_eq!(m.hostname.as_deref(), Some("bom"));
    }

    #[test]
    fn signals_parse() {
        assert_eq!(parse_signal("SIGTERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("HUP"), Ok(Signal::SIGHUP));
        assert_eq!(parse_signal("9"), Ok(Signal::SIGKILL));
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("sigterm").is_err());
    }
}
