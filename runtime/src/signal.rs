//! Signal names and numbers as `kill` takes them: `TERM`, `SIGTERM`, `term`,
//! `15`, `SIGRTMIN+3`, `RTMAX-1`.
//!
//! nix's `Signal` enum has no realtime signals, so [`Signal`] is a checked
//! newtype over the raw number (1..=64 on Linux x86_64).
//!
//! Realtime numbering follows glibc and `kill -l`: the kernel's first realtime
//! signal is 32, but glibc reserves 32 and 33 for its threading library, so
//! user-visible `SIGRTMIN` is 34 and `SIGRTMAX` is 64 (signal(7), "Real-time
//! signals"). Docker, runc and bash use the same numbers. 32 and 33 are
//! accepted by number (and as `SIG32`/`SIG33`), as `kill` accepts them.

use std::fmt;

/// First realtime signal a program may use (glibc's `SIGRTMIN`).
pub const SIGRTMIN: i32 = 34;
/// Last realtime signal (`SIGRTMAX`, `_NSIG - 1`).
pub const SIGRTMAX: i32 = 64;

/// The classic signals of Linux x86_64 with their numbers (signal(7)),
/// canonical name first where there are aliases.
const NAMED: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("IOT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("POLL", 29),
    ("PWR", 30),
    ("SYS", 31),
];

/// A valid Linux signal number, 1..=64, realtime signals included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Signal(i32);

/// A signal string or number that is not a valid signal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    #[error("parse signal: empty string")]
    Empty,
    #[error("parse signal {input:?}: 0 is not a signal (it only checks that the process exists)")]
    Zero { input: String },
    #[error("parse signal {input:?}: {number} is out of range 1..=64")]
    OutOfRange { input: String, number: i64 },
    #[error("parse signal {input:?}: unknown signal name")]
    UnknownName { input: String },
    #[error("parse signal {input:?}: realtime offset must be a number 0..=30")]
    BadRealtimeOffset { input: String },
}

impl Signal {
    pub const HUP: Signal = Signal(1);
    pub const INT: Signal = Signal(2);
    pub const QUIT: Signal = Signal(3);
    pub const KILL: Signal = Signal(9);
    pub const USR1: Signal = Signal(10);
    pub const USR2: Signal = Signal(12);
    pub const TERM: Signal = Signal(15);
    pub const CHLD: Signal = Signal(17);
    pub const CONT: Signal = Signal(18);
    pub const STOP: Signal = Signal(19);
    pub const PWR: Signal = Signal(30);

    /// A signal from its number; 0 and anything outside 1..=64 are refused.
    pub fn from_raw(number: i32) -> Result<Signal, SignalError> {
        check_number(&number.to_string(), i64::from(number))
    }

    /// The number to pass to kill(2).
    pub fn as_raw(self) -> i32 {
        self.0
    }

    /// The canonical name with its `SIG` prefix: `SIGTERM`, `SIGRTMIN+3`.
    pub fn name(self) -> String {
        let n = self.0;
        if let Some((name, _)) = NAMED.iter().find(|(_, num)| *num == n) {
            return format!("SIG{name}");
        }
        // Same split as `kill -l`: the lower half counts up from RTMIN,
        // the upper half down from RTMAX.
        let mid = (SIGRTMIN + SIGRTMAX) / 2;
        match n {
            SIGRTMIN => "SIGRTMIN".to_string(),
            SIGRTMAX => "SIGRTMAX".to_string(),
            _ if (SIGRTMIN..=mid).contains(&n) => format!("SIGRTMIN+{}", n - SIGRTMIN),
            _ if (mid..SIGRTMAX).contains(&n) => format!("SIGRTMAX-{}", SIGRTMAX - n),
            // 32 and 33: reserved by glibc, no symbolic name.
            _ => format!("SIG{n}"),
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl std::str::FromStr for Signal {
    type Err = SignalError;
    fn from_str(s: &str) -> Result<Signal, SignalError> {
        parse_signal(s)
    }
}

/// The canonical name of signal number `n` (`SIGTERM`, `SIGRTMAX-1`), or
/// `None` when `n` is not a signal.
pub fn signal_name(n: i32) -> Option<String> {
    Signal::from_raw(n).ok().map(Signal::name)
}

fn check_number(input: &str, number: i64) -> Result<Signal, SignalError> {
    match number {
        0 => Err(SignalError::Zero {
            input: input.to_string(),
        }),
        1..=64 => Ok(Signal(number as i32)),
        _ => Err(SignalError::OutOfRange {
            input: input.to_string(),
            number,
        }),
    }
}

/// Parses a signal as `kill` and `runc kill` take it: a decimal number, or a
/// name with or without the `SIG` prefix in any case, including
/// `RTMIN`, `RTMIN+n`, `RTMAX` and `RTMAX-n`.
pub fn parse_signal(s: &str) -> Result<Signal, SignalError> {
    if s.is_empty() {
        return Err(SignalError::Empty);
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: a number; too long to fit is out of range, not garbage.
        let number = s.parse::<i64>().unwrap_or(i64::MAX);
        return check_number(s, number);
    }
    if s.starts_with('-') && s.len() > 1 && s[1..].bytes().all(|b| b.is_ascii_digit()) {
        let number = s.parse::<i64>().unwrap_or(i64::MIN);
        return check_number(s, number);
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some((_, n)) = NAMED.iter().find(|(known, _)| *known == name) {
        return Ok(Signal(*n));
    }
    if let Some(rest) = name.strip_prefix("RTMIN") {
        let offset = realtime_offset(s, rest, '+')?;
        return Ok(Signal(SIGRTMIN + offset));
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        let offset = realtime_offset(s, rest, '-')?;
        return Ok(Signal(SIGRTMAX - offset));
    }
    // `SIG32`, `SIG33`: the numbers glibc reserves, as `name()` spells them.
    if upper.starts_with("SIG") && (name == "32" || name == "33") {
        return check_number(s, i64::from(name == "33") + 32);
    }
    Err(SignalError::UnknownName {
        input: s.to_string(),
    })
}

/// The `+n` / `-n` after RTMIN / RTMAX; empty means 0.
fn realtime_offset(input: &str, rest: &str, sign: char) -> Result<i32, SignalError> {
    if rest.is_empty() {
        return Ok(0);
    }
    let bad = || SignalError::BadRealtimeOffset {
        input: input.to_string(),
    };
    let digits = rest.strip_prefix(sign).ok_or_else(bad)?;
    if digits.is_empty() || digits.len() > 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let offset: i32 = digits.parse().map_err(|_| bad())?;
    if offset > SIGRTMAX - SIGRTMIN {
        return Err(bad());
    }
    Ok(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(s: &str) -> i32 {
        parse_signal(s).unwrap().as_raw()
    }

    #[test]
    fn term_in_every_spelling() {
        for s in ["TERM", "SIGTERM", "term", "sigterm", "SigTerm", "15"] {
            assert_eq!(num(s), 15, "{s}");
        }
    }

    #[test]
    fn classic_names_match_libc_numbers() {
        let expect = [
            ("HUP", libc::SIGHUP),
            ("INT", libc::SIGINT),
            ("QUIT", libc::SIGQUIT),
            ("ILL", libc::SIGILL),
            ("TRAP", libc::SIGTRAP),
            ("ABRT", libc::SIGABRT),
            ("IOT", libc::SIGIOT),
            ("BUS", libc::SIGBUS),
            ("FPE", libc::SIGFPE),
            ("KILL", libc::SIGKILL),
            ("USR1", libc::SIGUSR1),
            ("SEGV", libc::SIGSEGV),
            ("USR2", libc::SIGUSR2),
            ("PIPE", libc::SIGPIPE),
            ("ALRM", libc::SIGALRM),
            ("TERM", libc::SIGTERM),
            ("STKFLT", libc::SIGSTKFLT),
            ("CHLD", libc::SIGCHLD),
            ("CONT", libc::SIGCONT),
            ("STOP", libc::SIGSTOP),
            ("TSTP", libc::SIGTSTP),
            ("TTIN", libc::SIGTTIN),
            ("TTOU", libc::SIGTTOU),
            ("URG", libc::SIGURG),
            ("XCPU", libc::SIGXCPU),
            ("XFSZ", libc::SIGXFSZ),
            ("VTALRM", libc::SIGVTALRM),
            ("PROF", libc::SIGPROF),
            ("WINCH", libc::SIGWINCH),
            ("IO", libc::SIGIO),
            ("POLL", libc::SIGPOLL),
            ("PWR", libc::SIGPWR),
            ("SYS", libc::SIGSYS),
        ];
        for (name, n) in expect {
            assert_eq!(num(name), n, "{name}");
            assert_eq!(num(&format!("SIG{name}")), n, "SIG{name}");
        }
    }

    #[test]
    fn realtime_signals() {
        assert_eq!(num("SIGRTMIN"), 34);
        assert_eq!(num("RTMIN"), 34);
        assert_eq!(num("SIGRTMIN+3"), 37);
        assert_eq!(num("RTMIN+3"), 37);
        assert_eq!(num("rtmin+0"), 34);
        assert_eq!(num("RTMAX-1"), 63);
        assert_eq!(num("SIGRTMAX"), 64);
        assert_eq!(num("RTMAX-30"), 34);
        assert_eq!(num("RTMIN+30"), 64);
        assert_eq!(num("64"), 64);
        assert_eq!(num("32"), 32);
    }

    #[test]
    fn names_round_trip_for_every_number() {
        for n in 1..=64 {
            let name = signal_name(n).unwrap();
            assert!(name.starts_with("SIG"), "{name}");
            assert_eq!(num(&name), n, "{name}");
            assert_eq!(num(&name[3..].to_lowercase()), n, "{name}");
        }
        assert_eq!(signal_name(15).as_deref(), Some("SIGTERM"));
        assert_eq!(signal_name(6).as_deref(), Some("SIGABRT"));
        assert_eq!(signal_name(37).as_deref(), Some("SIGRTMIN+3"));
        assert_eq!(signal_name(63).as_deref(), Some("SIGRTMAX-1"));
        assert_eq!(signal_name(49).as_deref(), Some("SIGRTMIN+15"));
        assert_eq!(signal_name(50).as_deref(), Some("SIGRTMAX-14"));
        assert_eq!(Signal::KILL.to_string(), "SIGKILL");
    }

    #[test]
    fn rejects_zero_and_out_of_range() {
        assert!(matches!(parse_signal("0"), Err(SignalError::Zero { .. })));
        assert!(matches!(
            parse_signal("65"),
            Err(SignalError::OutOfRange { number: 65, .. })
        ));
        assert!(matches!(
            parse_signal("-9"),
            Err(SignalError::OutOfRange { number: -9, .. })
        ));
        assert!(matches!(
            parse_signal("99999999999999999999999"),
            Err(SignalError::OutOfRange { .. })
        ));
        assert!(Signal::from_raw(0).is_err());
        assert!(Signal::from_raw(65).is_err());
        assert!(Signal::from_raw(-1).is_err());
        assert_eq!(signal_name(0), None);
        assert_eq!(signal_name(65), None);
    }

    #[test]
    fn rejects_garbage_with_the_input_in_the_message() {
        for bad in [
            "TERMX",
            "SIG",
            "sig",
            "FOO",
            " 15",
            "15 ",
            "1.5",
            "SIGSIGTERM",
            "+15",
        ] {
            let err = parse_signal(bad).unwrap_err();
            assert!(
                matches!(err, SignalError::UnknownName { .. }),
                "{bad}: {err:?}"
            );
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        assert_eq!(parse_signal(""), Err(SignalError::Empty));
    }

    #[test]
    fn rejects_bad_realtime_offsets() {
        for bad in [
            "RTMIN+31",
            "RTMAX-31",
            "RTMIN-1",
            "RTMAX+1",
            "RTMIN+",
            "RTMIN+x",
            "RTMIN3",
            "RTMAX-001",
        ] {
            assert!(
                matches!(
                    parse_signal(bad),
                    Err(SignalError::BadRealtimeOffset { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn from_str_matches_parse_signal() {
        let s: Signal = "SIGUSR1".parse().unwrap();
        assert_eq!(s, Signal::USR1);
    }
}
