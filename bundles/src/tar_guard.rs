//! A bound on the tar extension headers of a layer stream.
//!
//! The tar crate reads a GNU long name (`L`), long link (`K`) or PAX
//! extension (`x`) member whole into memory, whatever size its header
//! declares. A layer is compressed, so 36 KB of zstd can declare a 1 GiB
//! long name: gigabytes of memory for the unpacker (PID 1 at boot, or the
//! build), and a name as long in the error message. Go's archive/tar
//! (containerd, Docker, umoci) refuses such headers past 1 MiB; so does
//! this reader, which sits between the decompressor and the tar crate and
//! follows the archive's block structure as the tar crate does: a 512-byte
//! header, then the member's data rounded up to 512 bytes, where the size
//! is the header's (octal, or base-256 when the top bit is set) unless a
//! PAX `size` record of the member's own `x` header overrides it. Bytes go
//! through unchanged; only header blocks are looked at, so file data that
//! the layer stream writes straight to its file (`apply::DirectWrite`)
//! needs no copy here.
//!
//! At the end-of-archive block, or at a GNU sparse member (whose extra
//! header blocks the unpacker refuses anyway), it stops looking.

use std::io::{self, Read};

/// The most an `L`, `K` or `x` member may hold: Go's archive/tar limit.
pub const MAX_EXTENSION: u64 = 1 << 20;

const BLOCK: usize = 512;

/// What the next bytes of the stream are.
enum Phase {
    /// `have` bytes of a header block read so far.
    Header { have: usize },
    /// A member's data and padding: `left` bytes, of which the first `keep`
    /// are kept (the data of a PAX `x` member, for its `size` record).
    Data { left: u64, keep: u64 },
    /// Past the end of the archive, or past what this reader follows.
    Done,
}

/// A [`Read`] that refuses oversized tar extension headers.
pub struct TarGuard<R> {
    inner: R,
    phase: Phase,
    header: [u8; BLOCK],
    /// Data of the `x` member being read.
    pax: Vec<u8>,
    /// PAX records waiting for the member they describe.
    pending_pax: Option<Vec<u8>>,
}

impl<R: Read> TarGuard<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            phase: Phase::Header { have: 0 },
            header: [0; BLOCK],
            pax: Vec::new(),
            pending_pax: None,
        }
    }

    /// Follows `bytes`, the next bytes of the stream.
    fn follow(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match &mut self.phase {
                Phase::Done => return Ok(()),
                Phase::Data { left, keep } => {
                    let n = (bytes.len() as u64).min(*left);
                    let kept = n.min(*keep);
                    self.pax.extend_from_slice(&bytes[..kept as usize]);
                    *keep -= kept;
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        if !self.pax.is_empty() {
                            self.pending_pax = Some(std::mem::take(&mut self.pax));
                        }
                        self.phase = Phase::Header { have: 0 };
                    }
                }
                Phase::Header { have } => {
                    let n = bytes.len().min(BLOCK - *have);
                    self.header[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have == BLOCK {
                        self.phase = self.next_phase()?;
                    }
                }
            }
        }
        Ok(())
    }

    /// What follows the header block just read.
    fn next_phase(&mut self) -> io::Result<Phase> {
        if self.header.iter().all(|&b| b == 0) {
            return Ok(Phase::Done);
        }
        let kind = self.header[156];
        let Some(mut size) = header_size(&self.header[124..136]) else {
            // The tar crate fails on this header itself.
            return Ok(Phase::Done);
        };
        match kind {
            b'L' | b'K' | b'x' => {
                if size > MAX_EXTENSION {
                    let what = match kind {
                        b'L' => "long name",
                        b'K' => "long link name",
                        _ => "pax extension",
                    };
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "tar {what} header of {size} bytes (at most {MAX_EXTENSION}, as Go's archive/tar)"
                        ),
                    ));
                }
            }
            // A global header takes the pending records and ignores their
            // size (tar crate: they describe it, an extension header).
            b'g' => self.pending_pax = None,
            b'S' => return Ok(Phase::Done),
            _ => {
                if let Some(pax) = self.pending_pax.take()
                    && let Some(pax_size) = pax_size(&pax)
                {
                    size = pax_size;
                }
            }
        }
        let keep = if kind == b'x' { size } else { 0 };
        let Some(left) = size.checked_next_multiple_of(BLOCK as u64) else {
            // The tar crate fails on "size overflow".
            return Ok(Phase::Done);
        };
        Ok(if left == 0 {
            Phase::Header { have: 0 }
        } else {
            Phase::Data { left, keep }
        })
    }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.follow(&buf[..n])?;
        Ok(n)
    }
}

/// A header's size field as the tar crate reads it: base-256 when the top
/// bit of its first byte is set, else octal text up to the first NUL,
/// trimmed of whitespace.
fn header_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        // The last 8 bytes, big-endian.
        let tail = &field[field.len() - 8..];
        return Some(tail.iter().fold(0u64, |n, &b| n << 8 | u64::from(b)));
    }
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let text = std::str::from_utf8(&field[..end]).ok()?;
    u64::from_str_radix(text.trim(), 8).ok()
}

/// The `size` of PAX records as the tar crate takes it: the first `size`
/// record, if every record before it is well formed.
fn pax_size(records: &[u8]) -> Option<u64> {
    for line in records.split(|&b| b == b'\n') {
        if line.is_empty() {
            return None;
        }
        let space = line.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&line[..space]).ok()?.parse().ok()?;
        if line.len() + 1 != len {
            return None;
        }
        let kv = &line[space + 1..];
        let equals = kv.iter().position(|&b| b == b'=')?;
        if &kv[..equals] == b"size" {
            return std::str::from_utf8(&kv[equals + 1..]).ok()?.parse().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, kind: u8, size: u64) -> [u8; BLOCK] {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        *h.as_bytes()
    }

    fn member(out: &mut Vec<u8>, name: &str, kind: u8, data: &[u8]) {
        out.extend_from_slice(&header(name, kind, data.len() as u64));
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(BLOCK), 0);
    }

    fn names(bytes: &[u8]) -> io::Result<Vec<String>> {
        let mut archive = tar::Archive::new(TarGuard::new(bytes));
        let mut names = Vec::new();
        for e in archive.entries()? {
            let mut e = e?;
            names.push(String::from_utf8_lossy(&e.path_bytes()).into_owned());
            io::copy(&mut e, &mut io::sink())?;
        }
        Ok(names)
    }

    #[test]
    fn follows_long_names_pax_sizes_and_passes_every_byte() {
        let long = "d/".repeat(300) + "f";
        let mut tar = Vec::new();
        member(
            &mut tar,
            "././@LongLink",
            b'L',
            format!("{long}\0").as_bytes(),
        );
        member(&mut tar, "x", b'0', b"one");
        // A PAX size that overrides the header's (the header says 0).
        let data = vec![7u8; 1500];
        let record = "size=1500\n";
        let pax = format!("{} {record}", record.len() + 3);
        member(&mut tar, "PaxHeaders/y", b'x', pax.as_bytes());
        tar.extend_from_slice(&header("y", b'0', 0));
        tar.extend_from_slice(&data);
        tar.resize(tar.len().next_multiple_of(BLOCK), 0);
        member(&mut tar, "z", b'0', b"three");
        tar.extend_from_slice(&[0; 1024]);
        assert_eq!(names(&tar).unwrap(), [long.as_str(), "y", "z"]);
        // Unchanged, in reads of any size.
        let mut out = Vec::new();
        let mut guard = TarGuard::new(&tar[..]);
        let mut buf = [0u8; 7];
        loop {
            let n = guard.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out, tar);
    }

    #[test]
    fn refuses_an_extension_header_past_a_mebibyte() {
        for (kind, what) in [
            (b'L', "long name"),
            (b'K', "long link name"),
            (b'x', "pax extension"),
        ] {
            let mut tar = header("././@LongLink", kind, 1 << 30).to_vec();
            tar.extend_from_slice(&[0; 4096]);
            let err = names(&tar).unwrap_err().to_string();
            assert!(
                err.contains(&format!("tar {what} header of 1073741824 bytes")),
                "{err}"
            );
        }
        // Exactly the limit is taken.
        let mut tar = Vec::new();
        let name = vec![b'n'; MAX_EXTENSION as usize];
        member(&mut tar, "././@LongLink", b'L', &name);
        member(&mut tar, "ignored", b'0', b"");
        tar.extend_from_slice(&[0; 1024]);
        assert_eq!(names(&tar).unwrap()[0].len(), MAX_EXTENSION as usize);
    }

    #[test]
    fn sizes_are_read_as_the_tar_crate_reads_them() {
        assert_eq!(header_size(b"00000001750\0"), Some(0o1750));
        assert_eq!(header_size(b" 1750 \0\0\0\0\0\0"), Some(0o1750));
        let mut base256 = [0u8; 12];
        base256[0] = 0x80;
        base256[4..].copy_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(header_size(&base256), Some(1 << 40));
        assert_eq!(header_size(b"12x45\0\0\0\0\0\0\0"), None);
        assert_eq!(pax_size(b"15 path=abcdef\n10 size=9\n"), Some(9));
        // A malformed record before it: the tar crate takes no size.
        assert_eq!(pax_size(b"99 path=abcdef\n10 size=9\n"), None);
        assert_eq!(pax_size(b"10 size=9\n10 size=8\n"), Some(9));
    }
}
