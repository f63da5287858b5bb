//! The bounded, allocation-free-after-setup pieces of log capture: line
//! splitting from pipe reads, the per-service ring, and flood control.

use std::collections::VecDeque;

use crate::service::Millis;

/// One line copied out of a [`Ring`]: time, stream, bytes.
pub type RingLine = (Millis, Stream, Vec<u8>);

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Cuts pipe reads into lines. A read may end mid-line (kept until the rest
/// arrives) and a line may be longer than `max` (its first `max` bytes are
/// emitted, marked cut, and the rest is skipped up to the newline, so one
/// service cannot make PID 1 buffer without bound).
#[derive(Debug)]
pub struct LineSplitter {
    partial: Vec<u8>,
    max: usize,
    /// Skipping the tail of a cut line.
    skipping: bool,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            partial: Vec::with_capacity(max),
            max,
            skipping: false,
        }
    }

    /// Feeds one read; `emit(line, cut)` gets each finished line without
    /// its newline (and without a trailing `\r`).
    pub fn feed(&mut self, mut data: &[u8], emit: &mut dyn FnMut(&[u8], bool)) {
        while !data.is_empty() {
            let newline = data.iter().position(|&b| b == b'\n');
            let (chunk, rest, ends_line) = match newline {
                Some(pos) => {
                    let (head, tail) = data.split_at(pos);
                    (head, tail.get(1..).unwrap_or_default(), true)
                }
                None => (data, &[][..], false),
            };
            data = rest;
            if self.skipping {
                if ends_line {
                    self.skipping = false;
                }
                continue;
            }
            if self.partial.is_empty() && ends_line && chunk.len() <= self.max {
                // The common case: a whole line inside one read, no copy.
                emit(trim_cr(chunk), false);
                continue;
            }
            let room = self.max - self.partial.len();
            if chunk.len() > room {
                self.partial
                    .extend_from_slice(chunk.get(..room).unwrap_or(chunk));
                emit(&self.partial, true);
                self.partial.clear();
                self.skipping = !ends_line;
                continue;
            }
            self.partial.extend_from_slice(chunk);
            // A full buffer is cut only when one more byte that is not the
            // newline arrives, so a line of exactly `max` bytes is whole
            // however the reads fall.
            if ends_line {
                emit(trim_cr(&self.partial), false);
                self.partial.clear();
            }
        }
    }

    /// End of the stream: a last line without newline is still a line.
    pub fn finish(&mut self, emit: &mut dyn FnMut(&[u8], bool)) {
        if !self.partial.is_empty() {
            emit(trim_cr(&self.partial), false);
            self.partial.clear();
        }
        self.skipping = false;
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// A service's recent output, bounded in bytes: the oldest lines make room.
/// Records are stored back to back in one preallocated buffer as
/// `len: u32 | time: u64 | stream: u8 | bytes`.
#[derive(Debug)]
pub struct Ring {
    bytes: VecDeque<u8>,
    capacity: usize,
    lines: usize,
}

const HEADER: usize = 4 + 8 + 1;

impl Ring {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(HEADER + 1);
        Self {
            bytes: VecDeque::with_capacity(capacity),
            capacity,
            lines: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.lines
    }

    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    /// Bytes in use (never above the capacity given at creation).
    pub fn used(&self) -> usize {
        self.bytes.len()
    }

    pub fn push(&mut self, time: Millis, stream: Stream, line: &[u8]) {
        let line = line.get(..self.capacity - HEADER).unwrap_or(line);
        let need = HEADER + line.len();
        while self.bytes.len() + need > self.capacity {
            self.pop_front();
        }
        let len = u32::try_from(line.len()).unwrap_or(u32::MAX);
        self.bytes.extend(len.to_le_bytes());
        self.bytes.extend(time.to_le_bytes());
        self.bytes.push_back(match stream {
            Stream::Stdout => 1,
            Stream::Stderr => 2,
        });
        self.bytes.extend(line);
        self.lines += 1;
    }

    fn pop_front(&mut self) {
        let mut len = [0u8; 4];
        for (dst, src) in len.iter_mut().zip(self.bytes.iter()) {
            *dst = *src;
        }
        let total = HEADER + u32::from_le_bytes(len) as usize;
        self.bytes.drain(..total.min(self.bytes.len()));
        self.lines = self.lines.saturating_sub(1);
    }

    /// Copies the lines out, oldest first.
    pub fn lines(&self) -> Vec<RingLine> {
        let mut out = Vec::with_capacity(self.lines);
        self.visit(0, &mut |time, stream, line| {
            out.push((time, stream, line.to_vec()));
            true
        });
        out
    }

    /// Calls `f` with each line from the `from`-th (0: the oldest) on,
    /// oldest first, until it returns false; one line at a time through
    /// one buffer, so a dump of a large ring copies nothing else.
    pub fn visit(&self, from: usize, f: &mut dyn FnMut(Millis, Stream, &[u8]) -> bool) {
        let mut buf = Vec::new();
        let mut pos = 0;
        let mut index = 0;
        while pos + HEADER <= self.bytes.len() {
            let mut header = [0u8; HEADER];
            for (dst, src) in header.iter_mut().zip(self.bytes.range(pos..pos + HEADER)) {
                *dst = *src;
            }
            let (len, rest) = header.split_at(4);
            let (time, stream) = rest.split_at(8);
            let len = u32::from_le_bytes(len.try_into().unwrap_or_default()) as usize;
            let end = (pos + HEADER + len).min(self.bytes.len());
            if index >= from {
                let time = u64::from_le_bytes(time.try_into().unwrap_or_default());
                let stream = if stream.first() == Some(&2) {
                    Stream::Stderr
                } else {
                    Stream::Stdout
                };
                buf.clear();
                buf.extend(self.bytes.range(pos + HEADER..end));
                if !f(time, stream, &buf) {
                    return;
                }
            }
            pos = end;
            index += 1;
        }
    }
}

/// Flood control: a token bucket per service, `rate` lines per second with
/// bursts up to `burst`. Tokens are counted in thousandths of a line so the
/// integer arithmetic is exact at any rate.
#[derive(Debug)]
pub struct LineBudget {
    rate: u64,
    burst_milli: u64,
    milli_tokens: u64,
    last: Millis,
}

impl LineBudget {
    pub fn new(lines_per_sec: u32, burst: u32, now: Millis) -> Self {
        let burst_milli = u64::from(burst.max(1)) * 1000;
        Self {
            rate: u64::from(lines_per_sec.max(1)),
            burst_milli,
            milli_tokens: burst_milli,
            last: now,
        }
    }

    /// Takes one line's token; false means drop the line.
    pub fn take(&mut self, now: Millis) -> bool {
        let elapsed = now.saturating_sub(self.last);
        self.last = self.last.max(now);
        // rate lines/s = rate milli-lines per ms.
        self.milli_tokens = self
            .milli_tokens
            .saturating_add(elapsed.saturating_mul(self.rate))
            .min(self.burst_milli);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(max: usize, reads: &[&[u8]], finish: bool) -> Vec<(String, bool)> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        let mut emit =
            |l: &[u8], cut: bool| out.push((String::from_utf8_lossy(l).into_owned(), cut));
        for r in reads {
            s.feed(r, &mut emit);
        }
        if finish {
            s.finish(&mut emit);
        }
        out
    }

    fn lines(v: &[(&str, bool)]) -> Vec<(String, bool)> {
        v.iter().map(|(s, c)| (s.to_string(), *c)).collect()
    }

    #[test]
    fn splitting() {
        type Case<'a> = (usize, Vec<&'a [u8]>, bool, Vec<(&'a str, bool)>);
        let cases: Vec<Case<'_>> = vec![
            (80, vec![b"a\nb\n"], false, vec![("a", false), ("b", false)]),
            (
                80,
                vec![b"hel", b"lo\nwor", b"ld\n"],
                false,
                vec![("hello", false), ("world", false)],
            ),
            (80, vec![b"no newline"], false, vec![]),
            (80, vec![b"no newline"], true, vec![("no newline", false)]),
            (80, vec![b"crlf\r\n"], false, vec![("crlf", false)]),
            (80, vec![b"\n\n"], false, vec![("", false), ("", false)]),
            // Long lines: first `max` bytes, marked cut, the rest skipped.
            (
                4,
                vec![b"abcdefgh\nxy\n"],
                false,
                vec![("abcd", true), ("xy", false)],
            ),
            (
                4,
                vec![b"ab", b"cdef", b"gh\nok\n"],
                false,
                vec![("abcd", true), ("ok", false)],
            ),
            (4, vec![b"abcd\n"], false, vec![("abcd", false)]),
            (4, vec![b"ab", b"cd\n"], false, vec![("abcd", false)]),
            (
                4,
                vec![b"ab", b"cde", b"\nz\n"],
                false,
                vec![("abcd", true), ("z", false)],
            ),
            (4, vec![b"abcd", b"e\n"], false, vec![("abcd", true)]),
            (4, vec![b"abcd", b"\n"], false, vec![("abcd", false)]),
        ];
        for (max, reads, finish, want) in cases {
            assert_eq!(
                split(max, &reads, finish),
                lines(&want),
                "max {max} reads {reads:?}"
            );
        }
    }

    #[test]
    fn splitting_bounded_memory() {
        let mut s = LineSplitter::new(100);
        let big = vec![b'x'; 1 << 20];
        let mut n = 0;
        s.feed(&big, &mut |l, cut| {
            assert_eq!(l.len(), 100);
            assert!(cut);
            n += 1;
        });
        assert_eq!(n, 1);
        assert!(s.partial.capacity() <= 100 * 2);
    }

    #[test]
    fn ring_keeps_newest_within_capacity() {
        let mut r = Ring::new(64);
        for i in 0..100u64 {
            r.push(
                i,
                if i % 2 == 0 {
                    Stream::Stdout
                } else {
                    Stream::Stderr
                },
                format!("line {i}").as_bytes(),
            );
            assert!(r.used() <= 64);
        }
        let got = r.lines();
        assert_eq!(got.len(), r.len());
        let last = got.last().unwrap();
        assert_eq!(last, &(99, Stream::Stderr, b"line 99".to_vec()));
        // 13-byte header + 7 bytes each: 3 fit in 64.
        assert_eq!(
            got.iter().map(|l| l.0).collect::<Vec<_>>(),
            vec![97, 98, 99]
        );
        // A line larger than the ring is truncated, not refused.
        r.push(100, Stream::Stdout, &[b'y'; 500]);
        assert_eq!(
            r.lines(),
            vec![(100, Stream::Stdout, vec![b'y'; 64 - HEADER])]
        );
        assert!(!r.is_empty());
    }

    #[test]
    fn budget_refills_with_time() {
        let mut b = LineBudget::new(10, 5, 0);
        let taken = (0..20).filter(|_| b.take(0)).count();
        assert_eq!(taken, 5, "the burst");
        assert!(!b.take(99), "0.99 lines earned");
        assert!(b.take(100), "one line per 100 ms at 10/s");
        assert!(!b.take(100));
        // A long pause refills only up to the burst.
        let taken = (0..20).filter(|_| b.take(1_000_000)).count();
        assert_eq!(taken, 5);
        // Time going backwards (it does not, but) earns nothing.
        assert!(!b.take(10));
    }
}
