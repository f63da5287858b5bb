//! PID 1's logging: its own messages through the `log` facade, and every
//! service's output, stamped and routed to the console, a per-service ring,
//! optional rotated files and optional syslog.
//!
//! Levels, as PID 1 uses them:
//! - `error`: something a person must look at — a fatal boot error, a
//!   service given up on (start limit), a sink that stopped working.
//! - `warn`: a failure PID 1 handles by itself — a crash and its restart,
//!   dropped log lines, an ignored command-line option.
//! - `info` (default): lifecycle marker lines and the boot timeline.
//! - `debug`: why PID 1 did what it did (each mount, each module, reaped
//!   orphans one by one).
//! - `trace`: every wakeup of the event loop.
//!
//! Every line PID 1 prints starts with a timestamp in seconds since the
//! monotonic clock's zero (boot on a VM, like the kernel's own console
//! lines): `[    12.345] berth: service web started pid=123` for PID 1's
//! own lines, `[    12.345] web: <text>` for a service's stdout and stderr.
//! Debug and trace lines say `berth: debug: …`.
//!
//! Once the manifest is read, PID 1's own lines also go to a ring and a
//! file of their own, under the reserved name `berth` (`berth.log`), and to
//! syslog with tag `berth`.
//!
//! The console never blocks PID 1: it is written through a bounded
//! [`sinks::Outbox`]; a flooding service is held to its line budget
//! ([`buffers::LineBudget`]); lines over the budget are kept in the ring
//! only, dropped from the console, files and syslog, and counted in a
//! `berth: service web: N lines dropped (rate limit)` line at most once a
//! second.

pub mod buffers;
pub mod sinks;

use std::fs::File;
use std::io::{Cursor, Write};
use std::net::{ToSocketAddrs, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::{Mutex, MutexGuard};

use buffers::{LineBudget, Ring, Stream};
use sinks::{Offer, Outbox, RotatingFile};

use crate::clock::now_ms;
use crate::manifest::{LogConfig, SyslogTarget};
use crate::service::Millis;

/// The log name of PID 1's own lines (reserved in the manifest).
pub const OWN_UNIT: &str = "berth";

/// Console queue size: about two seconds of a 115200-baud serial line.
/// Room for the longest line escaped (4 × `MAX_LINE_LIMIT`) and its
/// stamp, twice.
const CONSOLE_QUEUE: usize = 80 * 1024;
const _: () = assert!(CONSOLE_QUEUE >= 2 * (4 * crate::manifest::MAX_LINE_LIMIT + 256));

/// Why a log sink could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("install the logger")]
    Install { source: log::SetLoggerError },
    #[error("log directory {dir}")]
    LogDir {
        dir: std::path::PathBuf,
        source: crate::beneath::BeneathError,
    },
}

/// A unit's log state; index = the id [`register_unit`] returned.
struct UnitLog {
    name: String,
    ring: Ring,
    budget: LineBudget,
    dropped: u64,
    last_notice: Millis,
    file: Option<RotatingFile>,
}

enum SyslogSink {
    Unix {
        path: std::path::PathBuf,
        socket: Option<UnixDatagram>,
        last_try: Option<Millis>,
        /// Messages a full receive queue refused since the last one sent.
        dropped: u64,
    },
    Udp {
        socket: UdpSocket,
    },
    /// RFC 6587 non-transparent framing (one message per line, LF). The
    /// socket is non-blocking from `socket(2)` on, its connect included, so
    /// a slow, stalled or absent receiver never blocks PID 1: messages wait
    /// in `pending` (bounded) and what does not fit is dropped and counted.
    Tcp {
        addr: std::net::SocketAddr,
        stream: Option<std::net::TcpStream>,
        last_try: Option<Millis>,
        pending: Vec<u8>,
        /// `pending` starts in the middle of a message (a partial write).
        mid: bool,
        dropped: u64,
    },
}

/// Bytes of syslog messages held for a TCP receiver that is not keeping up.
const TCP_PENDING_MAX: usize = 64 * 1024;
const _: () = assert!(TCP_PENDING_MAX >= 4 * crate::manifest::MAX_LINE_LIMIT + 512);

/// Starts a non-blocking TCP connect (it completes in the background).
fn tcp_connect_nonblocking(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpStream> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6, connect, socket,
    };
    use std::os::fd::AsRawFd;
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let res = match addr {
        std::net::SocketAddr::V4(a) => connect(fd.as_raw_fd(), &SockaddrIn::from(a)),
        std::net::SocketAddr::V6(a) => connect(fd.as_raw_fd(), &SockaddrIn6::from(a)),
    };
    match res {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => Ok(std::net::TcpStream::from(fd)),
        Err(e) => Err(e.into()),
    }
}

struct Hub {
    console: Option<Outbox<File>>,
    kmsg: Option<File>,
    config: LogConfig,
    units: Vec<UnitLog>,
    syslog: Option<SyslogSink>,
    console_dropped: u64,
    /// The unit that keeps PID 1's own lines (ring and file): "berth".
    own: Option<usize>,
    /// `config.files.dir`, opened.
    log_dir: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// The syslog receiver is unreachable (said once on the console).
    syslog_down: bool,
}

static HUB: Mutex<Option<Hub>> = Mutex::new(None);

/// PID 1's threads (the main one; the unpack's and the machine set-up's,
/// see `crate::machine`) share the hub. A poisoned lock (a panic while
/// logging) must not silence PID 1.
fn hub() -> MutexGuard<'static, Option<Hub>> {
    HUB.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Logger;

static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut guard = hub();
        if let Some(hub) = guard.as_mut() {
            hub.own_line(record.level(), record.args());
        }
    }

    fn flush(&self) {
        if let Some(hub) = hub().as_mut()
            && let Some(console) = hub.console.as_mut()
        {
            console.flush();
        }
    }
}

/// Installs the logger. `console` should be non-blocking (PID 1 opens it so);
/// without one, PID 1's own lines go to `kmsg` (`/dev/kmsg`) if given.
pub fn init(
    console: Option<File>,
    kmsg: Option<File>,
    level: log::LevelFilter,
) -> Result<(), LoggingError> {
    *hub() = Some(Hub {
        console: console.map(|c| Outbox::new(c, CONSOLE_QUEUE)),
        kmsg,
        config: LogConfig {
            level,
            ..LogConfig::default()
        },
        units: Vec::new(),
        syslog: None,
        console_dropped: 0,
        own: None,
        log_dir: None,
        syslog_down: false,
    });
    log::set_logger(&LOGGER).map_err(|source| LoggingError::Install { source })?;
    log::set_max_level(level);
    Ok(())
}

/// Applies the manifest's `log` settings (units registered later use them).
pub fn configure(config: &LogConfig) -> Result<(), LoggingError> {
    // A log directory that cannot be opened costs the log files, not the
    // boot: it usually lives on the data disk, where a unit with a
    // persistent mount above it could plant a link or a file in its place
    // and so stop every later boot.
    let log_dir = match &config.files {
        Some(files) => match sinks::open_log_dir(&files.dir) {
            Ok(dir) => Some(dir),
            Err(source) => {
                let e = LoggingError::LogDir {
                    dir: files.dir.clone(),
                    source,
                };
                log::error!(
                    "{}; no log files this boot (the console, the rings and syslog go on)",
                    error_chain(&e)
                );
                None
            }
        },
        None => None,
    };
    let syslog = match &config.syslog {
        None => None,
        Some(SyslogTarget::Unix(path)) => Some(SyslogSink::Unix {
            path: path.clone(),
            socket: None,
            last_try: None,
            dropped: 0,
        }),
        Some(target @ (SyslogTarget::Tcp(addr) | SyslogTarget::Udp(addr))) => {
            match network_sink(target) {
                Ok(sink) => Some(sink),
                // A name the resolver cannot answer yet (DNS not up at
                // boot), a network not reachable yet: tried again in the
                // background, or an appliance would forward nothing until
                // its next boot, months later.
                Err(e) => {
                    log::error!(
                        "syslog {addr}: {e}; not forwarding, trying again every {} s",
                        SYSLOG_RETRY.as_secs()
                    );
                    let target = target.clone();
                    let spawned = std::thread::Builder::new()
                        .name("syslog-resolve".into())
                        .spawn(move || {
                            retry_until_open(
                                SYSLOG_RETRY,
                                || network_sink(&target),
                                |sink| install_syslog(&target, sink),
                            )
                        });
                    if let Err(e) = spawned {
                        log::error!("syslog {addr}: no thread to try again: {e}");
                    }
                    None
                }
            }
        }
    };
    log::set_max_level(config.level);
    if let Some(hub) = hub().as_mut() {
        hub.config = config.clone();
        hub.log_dir = log_dir;
        hub.syslog = syslog;
        // PID 1's own lines get a ring and a file like a service's.
        hub.own = Some(hub.register(OWN_UNIT));
    }
    Ok(())
}

/// Fills in the sinks that were missing at [`init`] (a machine's /dev is
/// only complete once devtmpfs is mounted): a console, else /dev/kmsg.
pub fn add_missing_sinks(
    console: impl FnOnce() -> Option<File>,
    kmsg: impl FnOnce() -> Option<File>,
) {
    let mut guard = hub();
    let Some(hub) = guard.as_mut() else { return };
    if hub.console.is_none() {
        hub.console = console().map(|c| Outbox::new(c, CONSOLE_QUEUE));
    }
    if hub.console.is_none() && hub.kmsg.is_none() {
        hub.kmsg = kmsg();
    }
}

/// Sets PID 1's own level (the kernel command line overrides the manifest).
pub fn set_level(level: log::LevelFilter) {
    log::set_max_level(level);
    if let Some(hub) = hub().as_mut() {
        hub.config.level = level;
    }
}

/// The id of `name`'s log, created on first use. A service keeps its ring
/// and file across restarts.
pub fn register_unit(name: &str) -> usize {
    match hub().as_mut() {
        Some(hub) => hub.register(name),
        None => usize::MAX,
    }
}

/// The longest line kept whole; longer ones are cut.
pub fn max_line() -> usize {
    hub()
        .as_ref()
        .map(|h| h.config.max_line)
        .unwrap_or(LogConfig::default().max_line)
}

/// One line of a unit's output.
pub fn unit_line(unit: usize, stream: Stream, line: &[u8], cut: bool) {
    let now = now_ms();
    if let Some(hub) = hub().as_mut() {
        hub.unit_line(unit, stream, line, cut, now);
    }
}

/// Closes every log file and the log directory, for the shutdown: an open
/// file keeps the data disk busy, and a busy disk is not cleanly
/// unmounted. Lines after this go to the console (and syslog) only.
pub fn close_files() {
    if let Some(hub) = hub().as_mut() {
        for u in &mut hub.units {
            u.file = None;
        }
        hub.log_dir = None;
    }
}

/// Writes what waits for a TCP syslog receiver (see `SyslogSink::pump`);
/// whether some still waits, for the caller to come back within a second.
pub fn flush_syslog() -> bool {
    let now = now_ms();
    hub().as_mut().is_some_and(|hub| hub.pump_syslog(now))
}

/// At shutdown: gives what waits for the TCP syslog receiver up to `limit`
/// to go out.
pub fn flush_syslog_for(limit: std::time::Duration) {
    let until = std::time::Instant::now() + limit;
    while flush_syslog() && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Writes what the console's queue holds, unless the log lock is taken
/// (for the panic hook: the panic may have come from code that holds it,
/// and this thread would wait for itself for ever).
pub fn flush_if_free() {
    if let Ok(mut guard) = HUB.try_lock()
        && let Some(console) = guard.as_mut().and_then(|h| h.console.as_mut())
    {
        console.flush();
    }
}

/// Writes what the console takes now; true if bytes are still waiting.
pub fn flush_console() -> bool {
    let mut guard = hub();
    let Some(hub) = guard.as_mut() else {
        return false;
    };
    // A flood that stopped still has its last count to tell.
    let now = now_ms();
    for unit in 0..hub.units.len() {
        hub.report_drops(unit, now);
    }
    hub.note_console_drops();
    hub.console.as_mut().is_some_and(|c| {
        c.flush();
        c.pending() > 0 && !c.is_broken()
    })
}

/// Runs `f` with the console fd, for the event loop to wait for POLLOUT.
pub fn with_console_fd<T>(f: impl FnOnce(Option<BorrowedFd<'_>>) -> T) -> T {
    let guard = hub();
    let fd = guard
        .as_ref()
        .and_then(|h| h.console.as_ref())
        .map(|c| c.writer().as_fd());
    f(fd)
}

/// A service's line as it may go to the console, the files and syslog:
/// its control characters escaped (`\x0d`, `\x1b`, and C1 controls as
/// `\u{9b}`). A carriage return would let a service write over a line
/// and forge one of PID 1's; an escape sequence would reach the terminal
/// of whoever reads the console (through `berth-qemu run`, the host's).
/// Tabs stay; other bytes, UTF-8 or not, pass unchanged. The ring keeps
/// the line as it was.
fn escape_controls(line: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let control = |b: u8| (b < 0x20 && b != b'\t') || b == 0x7f;
    let c1 = |w: &[u8]| matches!(w, [0xc2, 0x80..=0x9f]);
    if !line.iter().any(|&b| control(b)) && !line.windows(2).any(c1) {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = Vec::with_capacity(line.len() + 8);
    let mut bytes = line.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        if control(b) {
            let _ = write!(out, "\\x{b:02x}");
        } else if let (0xc2, Some(&next @ 0x80..=0x9f)) = (b, bytes.peek()) {
            let _ = write!(out, "\\u{{{next:x}}}");
            bytes.next();
        } else {
            out.push(b);
        }
    }
    std::borrow::Cow::Owned(out)
}

fn file_paused(e: &sinks::LogFileError) -> String {
    format!(
        "log file paused, next try in {} s: {}",
        sinks::RETRY_MS / 1000,
        error_chain(e)
    )
}

fn file_resumed(missed: u64) -> String {
    format!("log file written again, {missed} lines missed")
}

/// How often a syslog target that could not be opened at boot is tried.
const SYSLOG_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// The sink for a TCP or UDP target (`host:port`): the name resolved (once:
/// sends never resolve again), a UDP socket connected.
fn network_sink(target: &SyslogTarget) -> std::io::Result<SyslogSink> {
    match target {
        SyslogTarget::Tcp(addr) => {
            let addr = addr
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
            Ok(SyslogSink::Tcp {
                addr,
                stream: None,
                last_try: None,
                pending: Vec::new(),
                mid: false,
                dropped: 0,
            })
        }
        SyslogTarget::Udp(addr) => udp_socket(addr).map(|socket| SyslogSink::Udp { socket }),
        SyslogTarget::Unix(_) => Err(std::io::Error::from(std::io::ErrorKind::Unsupported)),
    }
}

/// Every `interval`, `open` until it succeeds, then `install` what it
/// opened. Runs on a thread of its own: resolving a name can block for
/// seconds, and PID 1's loop must not.
fn retry_until_open<T>(
    interval: std::time::Duration,
    mut open: impl FnMut() -> std::io::Result<T>,
    install: impl FnOnce(T),
) {
    loop {
        std::thread::sleep(interval);
        if let Ok(opened) = open() {
            install(opened);
            return;
        }
    }
}

/// Puts a syslog sink opened late in place, unless the configuration has
/// changed meanwhile.
fn install_syslog(target: &SyslogTarget, sink: SyslogSink) {
    if let Some(hub) = hub().as_mut()
        && hub.syslog.is_none()
        && hub.config.syslog.as_ref() == Some(target)
    {
        let name = sink.target();
        hub.syslog = Some(sink);
        hub.own_line(log::Level::Info, &format_args!("syslog {name}: forwarding"));
    }
}

/// A non-blocking UDP socket connected to `addr` (`host:port`), bound in
/// the target's address family: an IPv4 socket cannot connect to an IPv6
/// address.
fn udp_socket(addr: &str) -> std::io::Result<UdpSocket> {
    let target = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
    let local = if target.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(target)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// One of PID 1's lines whatever the level: what an operator asked for.
pub fn always(line: std::fmt::Arguments<'_>) {
    if let Some(hub) = hub().as_mut() {
        hub.own_line(log::Level::Info, &line);
    }
}

/// The most lines of one unit's ring a dump shows: its newest.
const DUMP_LINES: usize = 10_000;

/// Prints every unit's ring to the console (SIGUSR2): at most the newest
/// [`DUMP_LINES`] of each, streamed from the ring (no copy of it), and a
/// unit's dump ends when the console's queue is full (a slow serial line):
/// PID 1 holds the log lock meanwhile and must get back to its loop.
pub fn dump_rings() {
    if let Some(hub) = hub().as_mut() {
        hub.dump_rings();
    }
}

impl Hub {
    fn dump_rings(&mut self) {
        let hub = self;
        for i in 0..hub.units.len() {
            let Some(unit) = hub.units.get(i) else { break };
            let (name, total) = (unit.name.clone(), unit.ring.len());
            let from = total.saturating_sub(DUMP_LINES);
            let newest = if from > 0 {
                format!(", the newest {DUMP_LINES} shown")
            } else {
                String::new()
            };
            hub.own_line(
                log::Level::Info,
                &format_args!("ring {name}: {total} lines{newest}"),
            );
            let Hub { units, console, .. } = &mut *hub;
            let (Some(unit), Some(console)) = (units.get(i), console.as_mut()) else {
                continue;
            };
            // Counted again: PID 1's own ring has just taken the line
            // above (and may have let older ones go for it).
            let total = unit.ring.len();
            let from = total.saturating_sub(DUMP_LINES);
            let mut shown = 0;
            let mut refused = false;
            unit.ring.visit(from, &mut |time, _stream, text| {
                let stamp = Stamp::new(time);
                let queued = console.push(&[
                    stamp.as_bytes(),
                    b"ring ",
                    name.as_bytes(),
                    b": ",
                    &escape_controls(text),
                    b"\n",
                ]);
                shown += usize::from(queued);
                refused = !queued;
                queued
            });
            if refused {
                hub.own_line(
                    log::Level::Info,
                    &format_args!(
                        "ring {name}: console busy, {} lines not shown",
                        total - from - shown
                    ),
                );
            }
        }
    }
}

/// An error and its sources on one line: `open log file /x: permission denied`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `[    12.345] ` without allocating.
struct Stamp {
    buf: [u8; 24],
    len: usize,
}

impl Stamp {
    fn new(ms: Millis) -> Self {
        let mut buf = [0u8; 24];
        let mut cursor = Cursor::new(&mut buf[..]);
        // 24 bytes hold any u64 seconds value plus the decoration.
        let _ = write!(cursor, "[{:>6}.{:03}] ", ms / 1000, ms % 1000);
        let len = usize::try_from(cursor.position()).unwrap_or(0);
        Self { buf, len }
    }

    fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
}

impl Hub {
    fn register(&mut self, name: &str) -> usize {
        if let Some(i) = self.units.iter().position(|u| u.name == name) {
            return i;
        }
        let file = self
            .config
            .files
            .clone()
            .zip(self.log_dir.clone())
            .and_then(|(f, dir)| {
                match RotatingFile::open(&dir, &f.dir, name, f.max_size, f.keep) {
                    Ok(file) => Some(file),
                    Err(e) => {
                        self.own_line(log::Level::Error, &format_args!("{}", error_chain(&e)));
                        None
                    }
                }
            });
        self.units.push(UnitLog {
            name: name.to_owned(),
            ring: Ring::new(self.config.ring_size),
            budget: LineBudget::new(self.config.lines_per_sec, self.config.burst, now_ms()),
            dropped: 0,
            last_notice: 0,
            file,
        });
        self.units.len() - 1
    }

    fn own_line(&mut self, level: log::Level, args: &std::fmt::Arguments<'_>) {
        self.own_line_at(level, args, now_ms());
    }

    fn own_line_at(&mut self, level: log::Level, args: &std::fmt::Arguments<'_>, now: Millis) {
        let text = args.to_string();
        // Every console line of PID 1's carries its stamp and `berth: `,
        // the lines after a message's first included.
        for line in text.trim_end_matches('\n').split('\n') {
            self.own_one_line(level, line, now);
        }
    }

    fn own_one_line(&mut self, level: log::Level, text: &str, now: Millis) {
        let tag: &[u8] = match level {
            log::Level::Debug => b"berth: debug: ",
            log::Level::Trace => b"berth: trace: ",
            _ => b"berth: ",
        };
        let stamp = Stamp::new(now);
        match self.console.as_mut() {
            Some(c) if !c.is_broken() => {
                c.push(&[stamp.as_bytes(), tag, text.as_bytes(), b"\n"]);
            }
            _ => {
                if let Some(kmsg) = self.kmsg.as_mut() {
                    // /dev/kmsg takes one record per write, "<prio>text".
                    let prio = match level {
                        log::Level::Error => 3,
                        log::Level::Warn => 4,
                        log::Level::Info => 6,
                        _ => 7,
                    };
                    let _ = kmsg.write_all(format!("<{prio}>berth: {text}\n").as_bytes());
                }
            }
        }
        if let Some(own) = self.own.and_then(|i| self.units.get_mut(i)) {
            own.ring.push(now, Stream::Stderr, text.as_bytes());
            let note = match own
                .file
                .as_mut()
                .map(|f| f.offer(&[stamp.as_bytes(), tag, text.as_bytes(), b"\n"], now))
            {
                Some(Offer::Failed(e)) => Some(file_paused(&e)),
                Some(Offer::Resumed { missed }) => Some(file_resumed(missed)),
                _ => None,
            };
            // Said on the console only: logging it would write the file again.
            if let Some(msg) = note
                && let Some(c) = self.console.as_mut()
            {
                c.push(&[stamp.as_bytes(), b"berth: ", msg.as_bytes(), b"\n"]);
            }
        }
        self.send_syslog("berth", syslog_severity(level), text.as_bytes(), now);
    }

    /// A line of PID 1's about the syslog sink itself: everywhere but to
    /// syslog (which would report on itself).
    fn syslog_note(&mut self, level: log::Level, text: &str, now: Millis) {
        let sink = self.syslog.take();
        self.own_one_line(level, text, now);
        self.syslog = sink;
    }

    fn unit_line(&mut self, unit: usize, stream: Stream, line: &[u8], cut: bool, now: Millis) {
        let Some(u) = self.units.get_mut(unit) else {
            return;
        };
        u.ring.push(now, stream, line);
        if !u.budget.take(now) {
            u.dropped = u.dropped.saturating_add(1);
            self.report_drops(unit, now);
            return;
        }
        // Under a steady flood every refilled token lets one line through:
        // the count waits for its second like the drops themselves.
        self.report_drops(unit, now);
        let Some(u) = self.units.get_mut(unit) else {
            return;
        };
        let stamp = Stamp::new(now);
        let suffix: &[u8] = if cut { b" [cut]\n" } else { b"\n" };
        let line = escape_controls(line);
        let parts: [&[u8]; 5] = [stamp.as_bytes(), u.name.as_bytes(), b": ", &line, suffix];
        let file_note = match u.file.as_mut().map(|f| f.offer(&parts, now)) {
            Some(Offer::Failed(e)) => Some((log::Level::Error, file_paused(&e))),
            Some(Offer::Resumed { missed }) => Some((log::Level::Warn, file_resumed(missed))),
            _ => None,
        }
        .map(|(level, msg)| (level, format!("service {}: {msg}", u.name)));
        if let Some(c) = self.console.as_mut() {
            c.push(&parts);
        }
        if self.syslog.is_some() {
            let name = u.name.clone();
            self.send_syslog(&name, 6, &line, now);
        }
        if let Some((level, msg)) = file_note {
            self.own_line_at(level, &format_args!("{msg}"), now);
        }
    }

    /// Says how many lines of `unit` the budget dropped, if any and if the
    /// last such notice is a second old.
    fn report_drops(&mut self, unit: usize, now: Millis) {
        let Some(u) = self.units.get_mut(unit) else {
            return;
        };
        if u.dropped == 0 || now.saturating_sub(u.last_notice) < 1000 {
            return;
        }
        u.last_notice = now;
        let (name, dropped) = (u.name.clone(), std::mem::take(&mut u.dropped));
        self.own_line_at(
            log::Level::Warn,
            &format_args!("service {name}: {dropped} lines dropped (rate limit)"),
            now,
        );
    }

    fn note_console_drops(&mut self) {
        let Some(c) = self.console.as_mut() else {
            return;
        };
        self.console_dropped = self.console_dropped.saturating_add(c.take_dropped());
        // Say so once the queue has room again, or the notice is dropped too.
        if self.console_dropped > 0 && c.pending() < CONSOLE_QUEUE / 2 {
            let dropped = std::mem::take(&mut self.console_dropped);
            self.own_line(
                log::Level::Warn,
                &format_args!("console: {dropped} lines dropped (console too slow)"),
            );
        }
    }

    fn send_syslog(&mut self, tag: &str, severity: u8, text: &[u8], now: Millis) {
        let Some(sink) = self.syslog.as_mut() else {
            return;
        };
        let delivery = sink.send(tag, severity, text, now);
        self.syslog_delivered(delivery, now);
    }

    /// Writes what waits for the TCP syslog receiver; whether some still
    /// waits.
    fn pump_syslog(&mut self, now: Millis) -> bool {
        let Some(sink) = self.syslog.as_mut().filter(|s| s.holds()) else {
            return false;
        };
        if let Some(delivery) = sink.pump(now) {
            self.syslog_delivered(delivery, now);
        }
        self.syslog.as_ref().is_some_and(SyslogSink::holds)
    }

    fn syslog_delivered(&mut self, delivery: Delivery, now: Millis) {
        // Named only on a change (not per message: this is every line's path).
        let target = || {
            self.syslog
                .as_ref()
                .map_or_else(String::new, SyslogSink::target)
        };
        match delivery {
            Delivery::Failed(reason) if !self.syslog_down => {
                let target = target();
                self.syslog_down = true;
                self.syslog_note(
                    log::Level::Warn,
                    &format!(
                        "syslog {target}: {reason}; messages are {} until it is back",
                        match self.syslog {
                            Some(SyslogSink::Tcp { .. }) =>
                                "held (64KiB), then dropped and counted,",
                            _ => "dropped",
                        }
                    ),
                    now,
                );
            }
            Delivery::Sent if self.syslog_down => {
                let target = target();
                self.syslog_down = false;
                self.syslog_note(
                    log::Level::Info,
                    &format!("syslog {target}: forwarding again"),
                    now,
                );
            }
            _ => {}
        }
    }
}

/// What became of one syslog message.
enum Delivery {
    /// Handed to the receiver (or to the kernel for it).
    Sent,
    /// Held for a receiver that is still connecting or slow.
    Held,
    /// Not deliverable now, and why.
    Failed(String),
}

impl SyslogSink {
    fn target(&self) -> String {
        match self {
            SyslogSink::Unix { path, .. } => path.display().to_string(),
            SyslogSink::Udp { socket } => socket
                .peer_addr()
                .map_or_else(|_| "udp".to_owned(), |a| a.to_string()),
            SyslogSink::Tcp { addr, .. } => addr.to_string(),
        }
    }

    /// TCP: whether messages wait to be written.
    fn holds(&self) -> bool {
        matches!(self, SyslogSink::Tcp { pending, .. } if !pending.is_empty())
    }

    /// TCP: connects when it is time to try again, and writes what waits,
    /// as far as the socket takes it without blocking. Called with each
    /// message and, while messages wait, from PID 1's loop (at least once a
    /// second) and at shutdown: a quiet machine's last lines, and those
    /// held while the receiver was away, go out without waiting for a next
    /// line. `None` for the other sinks.
    fn pump(&mut self, now: Millis) -> Option<Delivery> {
        let SyslogSink::Tcp {
            addr,
            stream,
            last_try,
            pending,
            mid,
            dropped,
        } = self
        else {
            return None;
        };
        let mut delivery = Delivery::Held;
        if stream.is_none() && last_try.is_none_or(|t| now.saturating_sub(t) >= 1000) {
            *last_try = Some(now);
            match tcp_connect_nonblocking(*addr) {
                Ok(s) => *stream = Some(s),
                Err(e) => delivery = Delivery::Failed(format!("cannot connect: {e}")),
            }
        }
        if let Some(s) = stream {
            while !pending.is_empty() {
                match s.write(pending) {
                    Ok(0) => {
                        *stream = None;
                        break;
                    }
                    Ok(n) => {
                        delivery = Delivery::Sent;
                        *mid = pending.get(n - 1) != Some(&b'\n');
                        pending.drain(..n);
                    }
                    // Still connecting, or the receiver is slow.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // Refused, reset: reconnect later. The rest of a partly
                    // sent message is dropped (the new connection must
                    // start on a message), whole ones wait.
                    Err(e) => {
                        delivery = Delivery::Failed(e.to_string());
                        *stream = None;
                        if std::mem::take(mid)
                            && let Some(end) = pending.iter().position(|b| *b == b'\n')
                        {
                            pending.drain(..=end);
                        }
                        break;
                    }
                }
            }
        }
        if *dropped > 0 && pending.is_empty() {
            let n = std::mem::take(dropped);
            let note = format!("<{}>berth: syslog: {n} messages dropped\n", 3 * 8 + 4);
            pending.extend_from_slice(note.as_bytes());
        }
        Some(delivery)
    }

    fn send(&mut self, tag: &str, severity: u8, text: &[u8], now: Millis) -> Delivery {
        let sink = self;
        // RFC 3164 framing without timestamp or host (the receiver adds
        // them): "<PRI>TAG: MSG", facility daemon (3).
        let pri = 3 * 8 + u32::from(severity);
        let mut msg = Vec::with_capacity(text.len() + tag.len() + 8);
        let _ = write!(msg, "<{pri}>{tag}: ");
        msg.extend_from_slice(text);
        match sink {
            // Connectionless: what the receiver does is not known here.
            SyslogSink::Udp { socket } => {
                let _ = socket.send(&msg);
                Delivery::Sent
            }
            SyslogSink::Tcp {
                pending, dropped, ..
            } => {
                if pending.len() + msg.len() < TCP_PENDING_MAX {
                    pending.extend_from_slice(&msg);
                    pending.push(b'\n');
                } else {
                    *dropped += 1;
                }
                sink.pump(now).unwrap_or(Delivery::Held)
            }
            SyslogSink::Unix {
                path,
                socket,
                last_try,
                dropped,
            } => {
                let mut failure = None;
                if socket.is_none() && last_try.is_none_or(|t| now.saturating_sub(t) >= 1000) {
                    *last_try = Some(now);
                    match UnixDatagram::unbound()
                        .and_then(|s| s.connect(&*path).map(|()| s))
                        .and_then(|s| s.set_nonblocking(true).map(|()| s))
                    {
                        Ok(s) => *socket = Some(s),
                        Err(e) => failure = Some(format!("cannot connect: {e}")),
                    }
                }
                match socket.as_ref().map(|s| s.send(&msg)) {
                    Some(Ok(_)) => {
                        // The receiver has room again: it learns what it
                        // missed, as the TCP sink tells it.
                        if *dropped > 0
                            && let Some(s) = socket.as_ref()
                        {
                            let note = format!(
                                "<{}>berth: syslog: {dropped} messages dropped (receiver too slow)",
                                3 * 8 + 4
                            );
                            if s.send(note.as_bytes()).is_ok() {
                                *dropped = 0;
                            }
                        }
                        Delivery::Sent
                    }
                    // A full receive queue: this one is lost (and counted),
                    // the daemon lives.
                    Some(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        *dropped += 1;
                        Delivery::Held
                    }
                    Some(Err(e)) => {
                        // The syslog daemon restarted: reconnect on a later line.
                        *socket = None;
                        Delivery::Failed(e.to_string())
                    }
                    None => failure.map_or(Delivery::Held, Delivery::Failed),
                }
            }
        }
    }
}

fn syslog_severity(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hub writing its console to `console`, without the global logger.
    fn test_hub(console: File, config: LogConfig, syslog: Option<SyslogSink>) -> Hub {
        Hub {
            console: Some(Outbox::new(console, 1 << 20)),
            kmsg: None,
            config,
            units: Vec::new(),
            syslog,
            console_dropped: 0,
            own: None,
            log_dir: None,
            syslog_down: false,
        }
    }

    #[test]
    fn stamps() {
        assert_eq!(Stamp::new(0).as_bytes(), b"[     0.000] ");
        assert_eq!(Stamp::new(12_345).as_bytes(), b"[    12.345] ");
        assert_eq!(Stamp::new(u64::MAX).as_bytes(), b"[18446744073709551.615] ");
    }

    #[test]
    fn chains() {
        let e = sinks::LogFileError::Open(crate::beneath::BeneathError::Io {
            op: "open",
            path: "/x".into(),
            source: std::io::Error::from_raw_os_error(nix::libc::EACCES),
        });
        assert_eq!(
            error_chain(&e),
            "log file: open /x: Permission denied (os error 13)"
        );
    }

    /// An unreachable syslog receiver is said once on the console (not to
    /// syslog), and so is its return.
    #[test]
    fn an_unreachable_syslog_is_said_once_and_its_return_too() {
        let dir = std::env::temp_dir().join(format!("berth-syslog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log.sock");
        let console = File::create(dir.join("console")).unwrap();
        let mut hub = test_hub(
            console,
            LogConfig::default(),
            Some(SyslogSink::Unix {
                path: path.clone(),
                socket: None,
                last_try: None,
                dropped: 0,
            }),
        );
        hub.own_line_at(log::Level::Info, &format_args!("one"), 0);
        hub.own_line_at(log::Level::Info, &format_args!("two"), 100);
        hub.own_line_at(log::Level::Info, &format_args!("three"), 1200);
        let receiver = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        hub.own_line_at(log::Level::Info, &format_args!("four"), 1300);
        hub.own_line_at(log::Level::Info, &format_args!("five"), 2300);
        let console = std::fs::read_to_string(dir.join("console")).unwrap();
        let want = format!(
            "[     0.000] berth: one\n\
             [     0.000] berth: syslog {0}: cannot connect: No such file or directory (os error 2); messages are dropped until it is back\n\
             [     0.100] berth: two\n\
             [     1.200] berth: three\n\
             [     1.300] berth: four\n\
             [     2.300] berth: five\n\
             [     2.300] berth: syslog {0}: forwarding again\n",
            path.display()
        );
        assert_eq!(console, want);
        let mut buf = [0u8; 256];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"<30>berth: five");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A flood that never stops: each refilled token lets a line through,
    /// and the count of what was dropped in between still comes once a
    /// second, not before every line let through.
    #[test]
    fn a_steady_flood_is_counted_once_a_second() {
        let dir = std::env::temp_dir().join(format!("berth-hub-steady-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let console = File::create(dir.join("console")).unwrap();
        let mut hub = test_hub(console, LogConfig::default(), None);
        hub.units.push(UnitLog {
            name: "yes".into(),
            ring: Ring::new(1 << 16),
            budget: LineBudget::new(100, 10, 0),
            dropped: 0,
            last_notice: 0,
            file: None,
        });
        // Ten lines a millisecond for 3.5 s.
        for ms in 0..3500u64 {
            for _ in 0..10 {
                hub.unit_line(0, Stream::Stdout, b"y", false, 1000 + ms);
            }
        }
        let console = || std::fs::read_to_string(dir.join("console")).unwrap();
        let counts = |console: &str| -> Vec<u64> {
            console
                .lines()
                .filter_map(|l| l.split_once("] berth: service yes: "))
                .filter_map(|(_, rest)| rest.strip_suffix(" lines dropped (rate limit)"))
                .map(|n| n.parse().unwrap())
                .collect()
        };
        let text = console();
        assert_eq!(counts(&text).len(), 4, "one a second:\n{}", &text[..2000]);
        // 100 a second after a burst of 10.
        let passed = text.lines().filter(|l| l.ends_with("] yes: y")).count() as u64;
        assert!((355..=365).contains(&passed), "{passed} lines let through");
        // After the flood the last count is told when the event loop
        // flushes the console, a second after the previous one.
        assert!(hub.units[0].dropped > 0);
        hub.report_drops(0, 4400);
        assert_eq!(counts(&console()).len(), 4, "not within the second");
        hub.report_drops(0, 5600);
        let counted: u64 = counts(&console()).iter().sum();
        assert_eq!(
            counted + passed,
            35_000,
            "every line let through or counted"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn control_characters_of_service_lines_are_escaped() {
        assert!(matches!(
            escape_controls(b"plain\ttext \xff\xfe caf\xc3\xa9"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(
            &*escape_controls(b"ok\r[  1.000] berth: fake\x1b]0;title\x07\x00\x7f"),
            b"ok\\x0d[  1.000] berth: fake\\x1b]0;title\\x07\\x00\\x7f"
        );
        // C1 CSI as UTF-8 (U+009B), which some terminals obey.
        assert_eq!(&*escape_controls(b"a\xc2\x9b31mb"), b"a\\u{9b}31mb");
        // A lone 0xc2 at the end is not a control.
        assert_eq!(&*escape_controls(b"a\xc2"), b"a\xc2");
    }

    /// A receiver whose queue is full loses messages, counted; once it has
    /// room it is told how many, as the TCP sink tells it.
    #[test]
    fn a_full_unix_syslog_queue_is_counted_and_told() {
        let dir = std::env::temp_dir().join(format!("berth-syslog-full-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log.sock");
        let receiver = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let mut sink = SyslogSink::Unix {
            path: path.clone(),
            socket: None,
            last_try: None,
            dropped: 0,
        };
        // The queue fills (max_dgram_qlen, 10 by default, or the buffer).
        let mut held = 0;
        for i in 0..5000 {
            if let Delivery::Held = sink.send("web", 6, format!("line {i}").as_bytes(), 0) {
                held += 1;
            }
        }
        assert!(held > 0, "the queue never filled");
        receiver.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        let mut got = 0;
        while receiver.recv(&mut buf).is_ok() {
            got += 1;
        }
        assert!(matches!(sink.send("web", 6, b"after", 0), Delivery::Sent));
        let mut last = Vec::new();
        while let Ok(n) = receiver.recv(&mut buf) {
            last.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert_eq!(
            last,
            [
                "<30>web: after".to_owned(),
                format!("<28>berth: syslog: {held} messages dropped (receiver too slow)")
            ],
            "{got} received before"
        );
        assert_eq!(got + held, 5000);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A TCP syslog line held while the receiver was away goes out once it
    /// is back without waiting for another line: PID 1's loop pumps what
    /// waits (it used to be written only with the next line, which on a
    /// quiet machine could be hours later).
    #[test]
    fn tcp_syslog_lines_held_while_the_receiver_was_away_go_out_without_another_line() {
        use std::io::Read as _;
        // A port nobody listens on, for now.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let console = File::create("/dev/null").unwrap();
        let sink = SyslogSink::Tcp {
            addr,
            stream: None,
            last_try: None,
            pending: Vec::new(),
            mid: false,
            dropped: 0,
        };
        let mut hub = test_hub(console, LogConfig::default(), Some(sink));
        hub.send_syslog("web", 6, b"held line", 1000);
        let mut now = 1000;
        // Refused until a receiver listens; the line waits.
        assert!(hub.pump_syslog(now));
        let listener = std::net::TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut conn = None;
        for _ in 0..200 {
            now += 1000;
            let waiting = hub.pump_syslog(now);
            if conn.is_none()
                && let Ok((c, _)) = listener.accept()
            {
                c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .unwrap();
                conn = Some(c);
            }
            if !waiting && conn.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let mut conn = conn.expect("the sink never connected");
        let mut buf = [0u8; 256];
        while !got.ends_with(b"\n") {
            let n = conn.read(&mut buf).unwrap();
            assert!(n > 0, "connection closed; got {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"<30>web: held line\n");
    }

    /// A syslog target that could not be opened at boot is tried again on
    /// its own thread until it opens, then put in place once.
    #[test]
    fn a_syslog_target_is_tried_again_until_it_opens() {
        let tries = std::cell::Cell::new(0);
        let mut installed = None;
        retry_until_open(
            std::time::Duration::from_millis(1),
            || {
                tries.set(tries.get() + 1);
                if tries.get() < 3 {
                    Err(std::io::Error::other(
                        "Temporary failure in name resolution",
                    ))
                } else {
                    Ok(tries.get())
                }
            },
            |n| installed = Some(n),
        );
        assert_eq!(installed, Some(3));
        // What is retried: a name that resolves (UDP, TCP) opens.
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = format!("localhost:{}", udp.local_addr().unwrap().port());
        assert!(network_sink(&SyslogTarget::Udp(addr.clone())).is_ok());
        assert!(network_sink(&SyslogTarget::Tcp(addr)).is_ok());
        assert!(network_sink(&SyslogTarget::Tcp("no-port-given".into())).is_err());
    }

    /// A UDP syslog target given as an IPv6 address works (the socket was
    /// bound to 0.0.0.0, and connecting it to [::1] failed at boot).
    #[test]
    fn udp_syslog_reaches_ipv4_and_ipv6_targets() {
        for local in ["127.0.0.1:0", "[::1]:0"] {
            let receiver = UdpSocket::bind(local).unwrap();
            let addr = receiver.local_addr().unwrap().to_string();
            let socket = udp_socket(&addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
            socket.send(b"<14>hello").unwrap();
            let mut buf = [0u8; 64];
            let n = receiver.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"<14>hello", "{addr}");
        }
    }

    /// The panic hook's flush does not wait for a lock its own thread may
    /// hold (a panic inside the logger).
    #[test]
    fn the_panic_flush_does_not_wait_for_the_log_lock() {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _held = hub();
            flush_if_free();
            let _ = done.send(());
        });
        assert!(
            finished
                .recv_timeout(std::time::Duration::from_secs(10))
                .is_ok(),
            "flush_if_free waited for the lock its own thread holds"
        );
    }

    /// SIGUSR2's dump: the newest DUMP_LINES lines of a larger ring, then
    /// on a console that takes nothing more (its reader gone quiet), the
    /// dump stops and says how much it did not show.
    #[test]
    fn ring_dumps_are_bounded() {
        let dir = std::env::temp_dir().join(format!("berth-dump-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let console = File::create(dir.join("console")).unwrap();
        let mut hub = test_hub(console, LogConfig::default(), None);
        let unit = |name: &str, lines: usize| {
            let mut ring = Ring::new(1 << 20);
            for i in 0..lines {
                ring.push(1000, Stream::Stdout, format!("line {i}").as_bytes());
            }
            UnitLog {
                name: name.into(),
                ring,
                budget: LineBudget::new(10, 5, 0),
                dropped: 0,
                last_notice: 0,
                file: None,
            }
        };
        hub.units.push(unit("big", DUMP_LINES + 2000));
        hub.dump_rings();
        let console = std::fs::read_to_string(dir.join("console")).unwrap();
        let lines: Vec<&str> = console.lines().collect();
        assert!(
            lines[0].ends_with("berth: ring big: 12000 lines, the newest 10000 shown"),
            "{}",
            lines[0]
        );
        assert_eq!(lines.len(), 1 + DUMP_LINES);
        assert_eq!(lines[1], "[     1.000] ring big: line 2000");
        assert_eq!(lines[DUMP_LINES], "[     1.000] ring big: line 11999");

        // A pipe nobody reads: the queue fills, and the dump stops. What it
        // did not show is said in PID 1's own lines (its ring here).
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)
                .unwrap();
        let mut hub = test_hub(File::from(write), LogConfig::default(), None);
        hub.console = hub
            .console
            .take()
            .map(|c| Outbox::new(c.into_writer(), 4096));
        hub.units.push(unit("big", DUMP_LINES));
        hub.units.push(unit("berth", 0));
        hub.own = Some(1);
        hub.dump_rings();
        let own: Vec<String> = hub.units[1]
            .ring
            .lines()
            .into_iter()
            .map(|l| String::from_utf8_lossy(&l.2).into_owned())
            .collect();
        assert!(
            own.iter()
                .any(|l| l.starts_with("ring big: console busy, ")
                    && l.ends_with(" lines not shown")),
            "{own:?}"
        );
        drop(read);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The hub's routing, without the global logger: a unit over its budget
    /// keeps its ring but stays off the console, and says so.
    #[test]
    fn flood_is_dropped_and_counted() {
        let dir = std::env::temp_dir().join(format!("berth-hub-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let console = File::create(dir.join("console")).unwrap();
        let config = LogConfig {
            lines_per_sec: 10,
            burst: 5,
            ..LogConfig::default()
        };
        let mut hub = test_hub(console, config, None);
        let dir_fd = sinks::open_log_dir(&dir).unwrap();
        hub.units.push(UnitLog {
            name: "spam".into(),
            ring: Ring::new(1 << 16),
            budget: LineBudget::new(10, 5, 0),
            dropped: 0,
            last_notice: 0,
            file: Some(RotatingFile::open(&dir_fd, &dir, "spam", 1 << 20, 1).unwrap()),
        });
        for i in 0..100 {
            hub.unit_line(
                0,
                Stream::Stdout,
                format!("line {i}").as_bytes(),
                false,
                1000,
            );
        }
        hub.unit_line(0, Stream::Stderr, b"later", true, 2000);
        let console = std::fs::read_to_string(dir.join("console")).unwrap();
        let lines: Vec<&str> = console.lines().collect();
        assert_eq!(lines.len(), 5 + 1 + 1 + 1, "{console}");
        assert_eq!(lines[0], "[     1.000] spam: line 0");
        assert_eq!(
            lines[5],
            "[     1.000] berth: service spam: 1 lines dropped (rate limit)"
        );
        assert_eq!(
            lines[6],
            "[     2.000] berth: service spam: 94 lines dropped (rate limit)"
        );
        assert_eq!(lines[7], "[     2.000] spam: later [cut]");
        assert_eq!(hub.units[0].ring.len(), 101, "the ring keeps everything");
        let file = std::fs::read_to_string(dir.join("spam.log")).unwrap();
        assert_eq!(file.lines().count(), 6, "{file}");
        // What reaches the console and the file has its controls escaped;
        // the ring keeps the line as written.
        hub.unit_line(0, Stream::Stdout, b"x\r\x1b[2Kforged", false, 2500);
        let console = std::fs::read_to_string(dir.join("console")).unwrap();
        assert!(
            console.ends_with("[     2.500] spam: x\\x0d\\x1b[2Kforged\n"),
            "{console:?}"
        );
        let file = std::fs::read_to_string(dir.join("spam.log")).unwrap();
        assert!(file.ends_with("spam: x\\x0d\\x1b[2Kforged\n"), "{file:?}");
        assert_eq!(
            hub.units[0].ring.lines().last().map(|l| l.2.clone()),
            Some(b"x\r\x1b[2Kforged".to_vec())
        );

        // PID 1's own message of several lines: each line is its own.
        hub.own_line_at(
            log::Level::Error,
            &format_args!("fatal: invalid manifest:\n  - a: x\n  - b: y"),
            3000,
        );
        let console = std::fs::read_to_string(dir.join("console")).unwrap();
        let tail: Vec<&str> = console.lines().skip(9).collect();
        assert_eq!(
            tail,
            [
                "[     3.000] berth: fatal: invalid manifest:",
                "[     3.000] berth:   - a: x",
                "[     3.000] berth:   - b: y"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
