//! The accumulated serial console of a VM: a byte log that a reader thread
//! appends to and any number of waiters search line by line.
//!
//! The log keeps at most a limit of bytes (64 MiB by default): a person may
//! leave `berth-qemu run` going for days with a chatty appliance. Beyond it
//! the oldest half is dropped at a line boundary. Offsets stay absolute
//! (bytes seen since boot), so marks taken earlier remain valid.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Shared console log. Lines are `\n`-terminated; a trailing `\r` (the guest
/// tty's `onlcr`, the kernel's console) is dropped when a line is returned.
#[derive(Debug)]
pub struct ConsoleLog {
    state: Mutex<State>,
    changed: Condvar,
    limit: usize,
}

/// Default for [`ConsoleLog::with_limit`].
pub const DEFAULT_LOG_LIMIT: usize = 64 * 1024 * 1024;

#[derive(Debug, Default)]
struct State {
    /// The retained tail of the log.
    bytes: Vec<u8>,
    /// Bytes dropped from the front: `bytes[0]` is absolute offset `dropped`.
    dropped: usize,
    /// The writer is gone (QEMU closed its end): nothing more will arrive.
    closed: bool,
}

impl Default for ConsoleLog {
    fn default() -> Self {
        Self::with_limit(DEFAULT_LOG_LIMIT)
    }
}

/// What a wait ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineWait {
    /// The first matching line, and the log offset just after it.
    Found { line: String, end: usize },
    /// The deadline passed.
    TimedOut,
    /// The log was closed without a match.
    Closed,
}

impl ConsoleLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// A log retaining at most about `limit` bytes (at least 2).
    pub fn with_limit(limit: usize) -> Self {
        ConsoleLog {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            limit: limit.max(2),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking reader thread cannot leave the byte log inconsistent
        // (appends are a single extend), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn append(&self, bytes: &[u8]) {
        let mut state = self.lock();
        state.bytes.extend_from_slice(bytes);
        if state.bytes.len() > self.limit {
            // Keep about half the limit, starting at a line.
            let mut cut = state.bytes.len() - self.limit / 2;
            if let Some(nl) = state.bytes[cut..].iter().position(|&b| b == b'\n') {
                cut += nl + 1;
            }
            state.bytes.drain(..cut);
            state.dropped += cut;
        }
        drop(state);
        self.changed.notify_all();
    }

    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Waits until the writer closed the log; false on timeout.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let mut state = self.lock();
        while !state.closed {
            let Some(wait) = time_left(deadline) else {
                return false;
            };
            state = self
                .changed
                .wait_timeout(state, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Bytes logged so far (dropped ones included): an offset to search
    /// from later.
    pub fn len(&self) -> usize {
        let state = self.lock();
        state.dropped + state.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The retained log as text (invalid UTF-8 replaced), after a note when
    /// older bytes were dropped.
    pub fn text(&self) -> String {
        let state = self.lock();
        let text = String::from_utf8_lossy(&state.bytes);
        if state.dropped == 0 {
            text.into_owned()
        } else {
            format!(
                "[berth-qemu: {} earlier console bytes dropped]\n{text}",
                state.dropped
            )
        }
    }

    /// Retained complete lines containing `pattern`.
    pub fn count_lines(&self, pattern: &str) -> usize {
        let state = self.lock();
        let mut count = 0;
        let mut pos = 0;
        while let Some((line, next)) = next_line(&state.bytes, pos, state.closed) {
            if line.contains(pattern) {
                count += 1;
            }
            pos = next;
        }
        count
    }

    /// Waits until a complete line at or after byte offset `from` contains
    /// `pattern`. A final unterminated line counts once the log is closed.
    pub fn wait_for_line(&self, from: usize, pattern: &str, timeout: Duration) -> LineWait {
        self.wait_for_line_where(from, |line| line.contains(pattern), timeout)
    }

    /// Like [`ConsoleLog::wait_for_line`], for the first line `matches` accepts.
    pub fn wait_for_line_where(
        &self,
        from: usize,
        matches: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> LineWait {
        let deadline = Instant::now().checked_add(timeout);
        let mut state = self.lock();
        // Start at the beginning of the line holding `from`, so an offset from
        // `len()` taken mid-line still sees that line whole. `pos` is absolute.
        let rel = from.saturating_sub(state.dropped).min(state.bytes.len());
        let mut pos = state.dropped
            + state.bytes[..rel]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
        loop {
            // Lines dropped while we waited cannot match any more.
            pos = pos.max(state.dropped);
            while let Some((line, next)) =
                next_line(&state.bytes, pos - state.dropped, state.closed)
            {
                pos = state.dropped + next;
                if matches(&line) {
                    return LineWait::Found { line, end: pos };
                }
            }
            if state.closed {
                return LineWait::Closed;
            }
            let Some(wait) = time_left(deadline) else {
                return LineWait::TimedOut;
            };
            state = self
                .changed
                .wait_timeout(state, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Time until `deadline`, `None` once it passed. No deadline (a timeout too
/// large for `Instant`, e.g. `Duration::MAX`) waits in hour-long steps.
pub(crate) fn time_left(deadline: Option<Instant>) -> Option<Duration> {
    match deadline {
        None => Some(Duration::from_secs(3600)),
        Some(d) => {
            let now = Instant::now();
            (now < d).then(|| d - now)
        }
    }
}

/// The line starting at `pos` (without `\n` and a trailing `\r`) and the
/// offset after it; the unterminated tail only when `closed`.
fn next_line(bytes: &[u8], pos: usize, closed: bool) -> Option<(String, usize)> {
    let rest = bytes.get(pos..)?;
    if rest.is_empty() {
        return None;
    }
    let (raw, next) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], pos + i + 1),
        None if closed => (rest, bytes.len()),
        None => return None,
    };
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    Some((String::from_utf8_lossy(raw).into_owned(), next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn finds_complete_lines_only() {
        let log = ConsoleLog::new();
        log.append(b"[ 0.1] booting\r\nberth: rea");
        assert_eq!(
            log.wait_for_line(0, "berth: ready", Duration::from_millis(10)),
            LineWait::TimedOut
        );
        log.append(b"dy\r\nmore");
        match log.wait_for_line(0, "berth: ready", Duration::from_millis(10)) {
            LineWait::Found { line, end } => {
                assert_eq!(line, "berth: ready");
                assert_eq!(end, "[ 0.1] booting\r\nberth: ready\r\n".len());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(log.count_lines("more"), 0);
        log.close();
        assert_eq!(log.count_lines("more"), 1);
    }

    #[test]
    fn searches_from_an_offset() {
        let log = ConsoleLog::new();
        log.append(b"tick\ntick\n");
        let mark = log.len();
        assert_eq!(
            log.wait_for_line(mark, "tick", Duration::from_millis(10)),
            LineWait::TimedOut
        );
        log.append(b"tick 3\n");
        assert!(matches!(
            log.wait_for_line(mark, "tick", Duration::from_millis(10)),
            LineWait::Found { line, .. } if line == "tick 3"
        ));
        assert_eq!(log.count_lines("tick"), 3);
    }

    #[test]
    fn an_offset_inside_a_line_sees_the_whole_line() {
        let log = ConsoleLog::new();
        log.append(b"berth: ");
        let mark = log.len();
        log.append(b"ready\n");
        assert!(matches!(
            log.wait_for_line(mark, "berth: ready", Duration::from_millis(10)),
            LineWait::Found { .. }
        ));
    }

    #[test]
    fn closed_log_ends_the_wait() {
        let log = Arc::new(ConsoleLog::new());
        let writer = Arc::clone(&log);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            writer.append(b"no marker here\n");
            writer.close();
        });
        assert_eq!(
            log.wait_for_line(0, "marker line", Duration::from_secs(30)),
            LineWait::Closed
        );
        t.join().unwrap();
        assert!(log.is_closed());
    }

    #[test]
    fn waiter_is_woken_by_a_later_append() {
        let log = Arc::new(ConsoleLog::new());
        let writer = Arc::clone(&log);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            writer.append(b"late line\n");
        });
        assert!(matches!(
            log.wait_for_line(0, "late", Duration::from_secs(30)),
            LineWait::Found { .. }
        ));
        t.join().unwrap();
    }

    #[test]
    fn unbounded_timeouts_do_not_overflow() {
        let log = ConsoleLog::new();
        log.append(b"x\n");
        log.close();
        assert!(log.wait_closed(Duration::MAX));
        assert_eq!(log.wait_for_line(0, "y", Duration::MAX), LineWait::Closed);
        assert!(time_left(Some(Instant::now())).is_none());
    }

    #[test]
    fn old_output_is_dropped_beyond_the_limit_and_offsets_stay_absolute() {
        let log = ConsoleLog::with_limit(64);
        log.append(b"first line\n");
        let mark = log.len();
        for i in 0..20 {
            log.append(format!("line {i:02}\n").as_bytes());
        }
        assert_eq!(log.len(), 11 + 20 * 8);
        let text = log.text();
        assert!(text.starts_with("[berth-qemu: "), "{text}");
        assert!(!text.contains("first line"), "{text}");
        assert!(text.ends_with("line 19\n"), "{text}");
        // Whole lines only were kept.
        assert!(
            text.lines().skip(1).all(|l| l.starts_with("line ")),
            "{text}"
        );
        assert!(matches!(
            log.wait_for_line(mark, "line 19", Duration::from_millis(10)),
            LineWait::Found { end, .. } if end == log.len()
        ));
        assert_eq!(
            log.wait_for_line(0, "first line", Duration::from_millis(10)),
            LineWait::TimedOut
        );
        assert_eq!(
            log.wait_for_line(log.len(), "line", Duration::from_millis(10)),
            LineWait::TimedOut
        );
    }

    #[test]
    fn a_predicate_picks_the_line() {
        let log = ConsoleLog::new();
        log.append(b"[ 1.0] web: berth: ready\r\n[ 1.1] berth: ready\r\n");
        assert!(matches!(
            log.wait_for_line_where(0, |l| l.ends_with("] berth: ready"), Duration::from_millis(10)),
            LineWait::Found { line, .. } if line == "[ 1.1] berth: ready"
        ));
        assert_eq!(
            log.wait_for_line_where(0, |l| l.is_empty(), Duration::from_millis(10)),
            LineWait::TimedOut
        );
    }

    #[test]
    fn invalid_utf8_does_not_break_lines() {
        let log = ConsoleLog::new();
        log.append(b"\xff\xfe garbage\nok\n");
        assert!(matches!(
            log.wait_for_line(0, "ok", Duration::from_millis(10)),
            LineWait::Found { line, .. } if line == "ok"
        ));
        assert!(log.text().contains("garbage"));
    }
}
