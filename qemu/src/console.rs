//! The accumulated serial console of a VM: a byte log that a reader thread
//! appends to and any number of waiters search line by line.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Shared console log. Lines are `\n`-terminated; a trailing `\r` (the guest
/// tty's `onlcr`, the kernel's console) is dropped when a line is returned.
#[derive(Debug, Default)]
pub struct ConsoleLog {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    bytes: Vec<u8>,
    /// The writer is gone (QEMU closed its end): nothing more will arrive.
    closed: bool,
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

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking reader thread cannot leave the byte log inconsistent
        // (appends are a single extend), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn append(&self, bytes: &[u8]) {
        self.lock().bytes.extend_from_slice(bytes);
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
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while !state.closed {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Bytes logged so far: an offset to search from later.
    pub fn len(&self) -> usize {
        self.lock().bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole log as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock().bytes).into_owned()
    }

    /// Complete lines containing `pattern`, from the start of the log.
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
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        // Start at the beginning of the line holding `from`, so an offset from
        // `len()` taken mid-line still sees that line whole.
        let mut pos = state.bytes[..from.min(state.bytes.len())]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        loop {
            while let Some((line, next)) = next_line(&state.bytes, pos, state.closed) {
                pos = next;
                if line.contains(pattern) {
                    return LineWait::Found { line, end: next };
                }
            }
            if state.closed {
                return LineWait::Closed;
            }
            let now = Instant::now();
            if now >= deadline {
                return LineWait::TimedOut;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
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
