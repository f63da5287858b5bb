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
//! It also follows sparse members ([`crate::sparse`]): an old GNU one's
//! extension blocks, a PAX one's `GNU.sparse.*` records and a PAX 1.0
//! one's map at the start of its data. It checks each map as the member
//! arrives (a bad one fails the read that brought it, naming the entry)
//! and, when the unpacker hands it the file ([`SparseSink`]), writes each
//! chunk of data at its offset in the file as the bytes go by: the tar
//! crate would hand them out with every hole made up of zeros.
//!
//! At the end-of-archive block it stops looking.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::rc::Rc;

use crate::sparse::{self, Chunk, MapCheck, MapText, PaxFormat, SparseError};

/// The most an `L`, `K` or `x` member may hold: Go's archive/tar limit.
pub const MAX_EXTENSION: u64 = 1 << 20;

const BLOCK: usize = 512;

/// What the next bytes of the stream are.
enum Phase {
    /// `have` bytes of a header block read so far.
    Header { have: usize },
    /// `have` bytes of an old GNU sparse extension block read so far.
    SparseExt { have: usize },
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
    /// Bytes of the stream followed so far.
    pos: u64,
    /// Data and padding of the old GNU sparse member whose extension
    /// blocks are being read.
    data_left_after_ext: u64,
    /// The sparse member being read.
    sparse: Option<SparseRead>,
    out: SparseSink,
}

/// Where the chunks of a sparse member go, shared between the unpacker
/// and the [`TarGuard`] under its tar reader.
pub type SparseSink = Rc<RefCell<SparseOut>>;

/// See [`SparseSink`].
#[derive(Default)]
pub struct SparseOut {
    /// The real size of the sparse member whose header was read last,
    /// while none of its data has gone by: the file may be handed over;
    /// and where its data is when it has none.
    ready: Option<(u64, Option<(u64, u64)>)>,
    /// Where the data of the sparse member whose header was read last
    /// starts in the stream (after an old GNU map's extension blocks).
    start: Option<u64>,
    /// The file of the member being read.
    current: Option<SparseDone>,
    /// The file of a member the reader is past (it read the next header).
    done: Option<SparseDone>,
    /// The PAX records (`x` member data) of the member whose header was
    /// read last, and where that header starts in the stream.
    pax: Option<(u64, Vec<u8>)>,
}

/// Where a sparse member's chunks go.
pub enum SparseTarget {
    /// At their offsets in the file (the unpacker).
    File(File),
    /// Into the bytes, as far as they reach: the start of the file, zeros
    /// for holes (`berth-build` reads a few small files of each image).
    Memory(Vec<u8>),
}

impl SparseTarget {
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        match self {
            SparseTarget::File(file) => file.write_all_at(data, offset),
            SparseTarget::Memory(bytes) => {
                let len = bytes.len() as u64;
                if offset < len {
                    let n = (len - offset).min(data.len() as u64) as usize;
                    let at = offset as usize;
                    bytes[at..at + n].copy_from_slice(&data[..n]);
                }
                Ok(())
            }
        }
    }
}

/// What became of a sparse member's data, for the unpacker.
pub struct SparseDone {
    pub target: SparseTarget,
    /// Chunk bytes written to `target`.
    pub written: u64,
    /// Start and end of its data in the stream, once it all went by with
    /// a valid map; `None` when it did not.
    pub data: Option<(u64, u64)>,
    /// The first write that failed (the stream goes on).
    pub error: Option<io::Error>,
}

impl SparseOut {
    /// Hands over where the chunks of the sparse member whose header was
    /// just read go, of real size `real_size`; gives it back when that is
    /// not the member being read (the tar crate and this reader disagree).
    pub fn attach(&mut self, target: SparseTarget, real_size: u64) -> Result<(), SparseTarget> {
        match self.ready {
            Some((real, data)) if real == real_size && self.current.is_none() => {
                self.current = Some(SparseDone {
                    target,
                    written: 0,
                    data,
                    error: None,
                });
                Ok(())
            }
            _ => Err(target),
        }
    }

    /// Where the data of the sparse member whose header was just read
    /// starts in the stream: after its extension blocks, for an old GNU
    /// one, where the tar crate's `raw_file_position` is before them.
    pub fn data_start(&self) -> Option<u64> {
        self.start
    }

    /// Takes the PAX records of the member whose header starts at
    /// `header_pos` (the tar crate's `raw_header_position`), as they are in
    /// the stream, when it is the member whose header this reader read
    /// last. The tar crate splits records at every newline, even inside a
    /// value; a caller can split these by their lengths instead
    /// ([`split_pax_records`]).
    pub fn take_pax_records(&mut self, header_pos: u64) -> Option<Vec<u8>> {
        match &self.pax {
            Some((pos, _)) if *pos == header_pos => self.pax.take().map(|(_, records)| records),
            _ => None,
        }
    }

    /// Takes the target back once its member is behind the reader.
    pub fn finish(&mut self) -> Option<SparseDone> {
        self.done.take().or_else(|| self.current.take())
    }

    /// A new header: the member before is behind the reader.
    fn next_member(&mut self) {
        self.ready = None;
        self.start = None;
        if let Some(current) = self.current.take() {
            self.done = Some(current);
        }
    }
}

/// A sparse member on its way through the stream.
struct SparseRead {
    /// For messages.
    name: String,
    real_size: u64,
    /// Bytes of its data (not padding), and those not yet seen.
    data_size: u64,
    data_left: u64,
    /// The map, once known; old GNU: the entries read so far.
    map: Vec<Chunk>,
    /// PAX 1.0 before its map is complete: the text, and a partial block.
    text: Option<(MapText, Vec<u8>)>,
    /// The chunk the next data bytes belong to, and how much of it is done.
    chunk: usize,
    within: u64,
    /// Where its data starts in the stream.
    start: u64,
    /// Old GNU: the checks of the map so far.
    check: Option<MapCheck>,
}

impl<R: Read> TarGuard<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            phase: Phase::Header { have: 0 },
            header: [0; BLOCK],
            pax: Vec::new(),
            pending_pax: None,
            pos: 0,
            data_left_after_ext: 0,
            sparse: None,
            out: SparseSink::default(),
        }
    }

    /// Where the chunks of sparse members go: see [`SparseOut::attach`].
    pub fn sparse_sink(&self) -> SparseSink {
        self.out.clone()
    }

    /// A refusal of the sparse member being read.
    fn refuse(&self, err: SparseError) -> io::Error {
        let name = self.sparse.as_ref().map_or("", |s| &s.name);
        refusal(name, err)
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
                    let done = *left == 0;
                    if self.sparse.is_some() {
                        self.sparse_data(&bytes[..n as usize])?;
                    }
                    self.pos += n;
                    bytes = &bytes[n as usize..];
                    if done {
                        if !self.pax.is_empty() {
                            self.pending_pax = Some(std::mem::take(&mut self.pax));
                        }
                        self.phase = Phase::Header { have: 0 };
                    }
                }
                Phase::Header { have } | Phase::SparseExt { have } => {
                    let n = bytes.len().min(BLOCK - *have);
                    self.header[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    let full = *have == BLOCK;
                    self.pos += n as u64;
                    bytes = &bytes[n..];
                    if full {
                        self.phase = match self.phase {
                            Phase::SparseExt { .. } => self.extension_block()?,
                            _ => self.next_phase()?,
                        };
                    }
                }
            }
        }
        Ok(())
    }

    /// Bytes of a sparse member's data and padding.
    fn sparse_data(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(sp) = self.sparse.as_mut() else {
            return Ok(());
        };
        let n = (bytes.len() as u64).min(sp.data_left) as usize;
        let mut data = &bytes[..n];
        sp.data_left -= n as u64;
        if let Some((text, block)) = &mut sp.text {
            while !data.is_empty() {
                let take = data.len().min(BLOCK - block.len());
                block.extend_from_slice(&data[..take]);
                data = &data[take..];
                if block.len() < BLOCK {
                    break;
                }
                let map = text.push_block(block);
                block.clear();
                match map {
                    Ok(None) => {}
                    Ok(Some(map)) => {
                        let prefix = text.len() as u64;
                        let err = self.map_in_data(map, prefix);
                        err.map_err(|e| self.refuse(e))?;
                        return self.sparse_data_rest(data);
                    }
                    Err(e) => return Err(self.refuse(e)),
                }
            }
            let sp = self.sparse.as_ref().expect("sparse member");
            if sp.data_left == 0 {
                let data = sp.data_size;
                return Err(self.refuse(SparseError::MapPastData { data }));
            }
            return Ok(());
        }
        self.sparse_data_rest(data)
    }

    /// A PAX 1.0 map, complete after `prefix` bytes of data.
    fn map_in_data(&mut self, map: Vec<Chunk>, prefix: u64) -> Result<(), SparseError> {
        let sp = self.sparse.as_mut().expect("sparse member");
        let mapped = sparse::validate(&map, sp.real_size)?;
        let data = sp.data_size - prefix;
        if mapped != data {
            return Err(SparseError::DataSize { data, mapped });
        }
        sp.map = map;
        sp.text = None;
        Ok(())
    }

    /// Chunk data of a sparse member: to the file, if there is one.
    fn sparse_data_rest(&mut self, mut data: &[u8]) -> io::Result<()> {
        let sp = self.sparse.as_mut().expect("sparse member");
        let mut out = self.out.borrow_mut();
        out.ready = None;
        while !data.is_empty() {
            let Some(chunk) = sp.map.get(sp.chunk) else {
                // The map's chunks hold exactly the data (checked).
                break;
            };
            let take = (chunk.length - sp.within).min(data.len() as u64) as usize;
            if let Some(cur) = &mut out.current
                && cur.error.is_none()
            {
                match cur.target.write_at(&data[..take], chunk.offset + sp.within) {
                    Ok(()) => cur.written += take as u64,
                    Err(e) => cur.error = Some(e),
                }
            }
            sp.within += take as u64;
            data = &data[take..];
            while sp.map.get(sp.chunk).is_some_and(|c| sp.within == c.length) {
                sp.chunk += 1;
                sp.within = 0;
            }
        }
        if sp.data_left == 0
            && sp.text.is_none()
            && let Some(cur) = &mut out.current
        {
            cur.data = Some((sp.start, sp.start + sp.data_size));
        }
        Ok(())
    }

    /// What follows the header block just read.
    fn next_phase(&mut self) -> io::Result<Phase> {
        self.sparse = None;
        self.out.borrow_mut().next_member();
        if self.header.iter().all(|&b| b == 0) {
            return Ok(Phase::Done);
        }
        let kind = self.header[156];
        let Some(mut size) = header_size(&self.header[124..136]) else {
            // The tar crate fails on this header itself.
            return Ok(Phase::Done);
        };
        // The records of a member that is not an extension header.
        let own_pax = match kind {
            b'L' | b'K' | b'x' | b'g' => None,
            _ => self.pending_pax.take(),
        };
        self.out.borrow_mut().pax = own_pax
            .as_ref()
            .map(|records| (self.pos - BLOCK as u64, records.clone()));
        let name = || name_field(&self.header, own_pax.as_deref());
        // Sparse when a record's key is GNU.sparse.*: a path or an xattr
        // value that merely holds the words is an ordinary entry.
        let pax_sparse = match own_pax.as_deref().map(|r| (r, split_pax_records(r))) {
            Some((_, Some(records)))
                if records.iter().any(|(k, _)| k.starts_with(b"GNU.sparse.")) =>
            {
                let parsed = sparse::pax_sparse(records.iter().copied())
                    // Some: the records hold a GNU.sparse key.
                    .and_then(|p| p.ok_or(SparseError::BadRecords));
                Some(parsed.map_err(|e| refusal(&name(), e))?)
            }
            // Records this reader cannot split: if they may say sparse,
            // refuse rather than let the tar crate read them as plain.
            Some((raw, None)) if contains(raw, b"GNU.sparse.") => {
                return Err(refusal(&name(), SparseError::BadRecords));
            }
            _ => None,
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
            _ => {
                if let Some(pax) = &own_pax
                    && let Some(pax_size) = pax_size(pax)
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
        if kind == b'S' {
            if pax_sparse.is_some() {
                return Err(refusal(&name(), SparseError::TwoMaps));
            }
            if &self.header[257..265] != b"ustar  \0" {
                return Err(refusal(&name(), SparseError::NotGnu));
            }
            let real_size = sparse::numeric("realsize", &self.header[483..495])
                .map_err(|e| refusal(&name(), e))?;
            self.sparse = Some(SparseRead {
                name: name(),
                real_size,
                data_size: size,
                data_left: size,
                map: Vec::new(),
                text: None,
                chunk: 0,
                within: 0,
                start: 0,
                check: Some(MapCheck::new(real_size)),
            });
            return self.old_gnu_block(386..482, 482, left);
        }
        if let Some(ps) = pax_sparse {
            if !matches!(kind, b'0' | 0) {
                let kind = format!("typeflag {:?}", char::from(kind));
                return Err(refusal(&name(), SparseError::NotAFile { kind }));
            }
            let mut read = SparseRead {
                name: ps
                    .name
                    .as_deref()
                    .map_or_else(name, |n| String::from_utf8_lossy(n).into_owned()),
                real_size: ps.real_size,
                data_size: size,
                data_left: size,
                map: Vec::new(),
                text: None,
                chunk: 0,
                within: 0,
                start: self.pos,
                check: None,
            };
            match ps.format {
                PaxFormat::Records(map) => {
                    let mapped = sparse::validate(&map, ps.real_size);
                    read.map = map;
                    self.sparse = Some(read);
                    let mapped = mapped.map_err(|e| self.refuse(e))?;
                    if mapped != size {
                        let e = SparseError::DataSize { data: size, mapped };
                        return Err(self.refuse(e));
                    }
                }
                PaxFormat::InData => {
                    read.text = Some((MapText::default(), Vec::new()));
                    self.sparse = Some(read);
                    if size == 0 {
                        return Err(self.refuse(SparseError::MapPastData { data: 0 }));
                    }
                }
            }
            self.sparse_ready();
        }
        Ok(if left == 0 {
            Phase::Header { have: 0 }
        } else {
            Phase::Data { left, keep }
        })
    }

    /// A sparse member's map is read (or, for PAX 1.0, its data is next):
    /// the unpacker may hand over the file.
    fn sparse_ready(&mut self) {
        let Some(sp) = &self.sparse else { return };
        let empty = sp.data_size == 0 && sp.text.is_none();
        let data = empty.then_some((sp.start, sp.start));
        let mut out = self.out.borrow_mut();
        out.ready = Some((sp.real_size, data));
        out.start = Some(sp.start);
    }

    /// The map entries of an old GNU header or extension block (`entries`
    /// of the block, `isextended` at `extended`); then another extension
    /// block, or the data (`left` bytes with padding).
    fn old_gnu_block(
        &mut self,
        entries: std::ops::Range<usize>,
        extended: usize,
        left: u64,
    ) -> io::Result<Phase> {
        let extended = self.header[extended];
        // Go reads on for any other value than 0, the tar crate only for 1.
        if extended > 1 {
            return Err(self.refuse(SparseError::OldGnu("isextended is neither 0 nor 1")));
        }
        let sp = self.sparse.as_mut().expect("sparse member");
        let before = sp.map.len();
        let mut res = sparse::old_gnu(&self.header[entries], &mut sp.map);
        if res.is_ok() {
            let check = sp.check.as_mut().expect("old GNU map check");
            res = sparse::check_old_gnu(check, &sp.map[before..], sp.data_size, extended == 0);
        }
        res.map_err(|e| self.refuse(e))?;
        if extended == 1 {
            self.data_left_after_ext = left;
            return Ok(Phase::SparseExt { have: 0 });
        }
        let sp = self.sparse.as_mut().expect("sparse member");
        sp.start = self.pos;
        self.sparse_ready();
        Ok(if left == 0 {
            Phase::Header { have: 0 }
        } else {
            Phase::Data { left, keep: 0 }
        })
    }

    /// An old GNU sparse extension block just read.
    fn extension_block(&mut self) -> io::Result<Phase> {
        self.old_gnu_block(0..504, 504, self.data_left_after_ext)
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

/// A sparse member refused, by name.
fn refusal(name: &str, err: SparseError) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("tar entry {name:?}: bad sparse file: {err}"),
    )
}

/// PAX records split by their lengths, as Go's archive/tar and POSIX read
/// them (the tar crate splits at every newline): `LEN key=value` records up
/// to the padding; `None` when one is malformed.
pub fn split_pax_records(records: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    // `LEN key=value\n`, LEN counting the whole record: a value may hold
    // newlines (a binary xattr), so records are cut by their length.
    let mut out = Vec::new();
    let mut rest = records;
    while let Some(&first) = rest.first() {
        if first == b'\n' || first == 0 {
            // Padding after the last record, as before.
            break;
        }
        let space = rest.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(rest.get(..space)?).ok()?.parse().ok()?;
        let record = rest.get(space + 1..len)?.strip_suffix(b"\n")?;
        let equals = record.iter().position(|&b| b == b'=')?;
        out.push((record.get(..equals)?, record.get(equals + 1..)?));
        rest = rest.get(len..)?;
    }
    Some(out)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A member's name for messages: its `GNU.sparse.name` or PAX `path`,
/// else the header's name field.
fn name_field(header: &[u8; BLOCK], pax: Option<&[u8]>) -> String {
    let records = pax.and_then(split_pax_records).unwrap_or_default();
    let last = |key: &[u8]| {
        records
            .iter()
            .rev()
            .find(|(k, v)| *k == key && !v.is_empty())
            .map(|(_, v)| *v)
    };
    let from_pax = last(b"GNU.sparse.name").or_else(|| last(b"path"));
    let name = from_pax.unwrap_or_else(|| {
        let end = header[..100].iter().position(|&b| b == 0).unwrap_or(100);
        &header[..end]
    });
    let name = &name[..name.len().min(256)];
    String::from_utf8_lossy(name).into_owned()
}

/// PAX records as the tar crate splits them: one per line, up to the first
/// empty line; `None` for a line whose length prefix is not its own length
/// or that has no `=`.
pub(crate) fn tar_crate_records(records: &[u8]) -> impl Iterator<Item = Option<(&[u8], &[u8])>> {
    records
        .split(|&b| b == b'\n')
        .take_while(|line| !line.is_empty())
        .map(|line| {
            let space = line.iter().position(|&b| b == b' ')?;
            let len: usize = std::str::from_utf8(&line[..space]).ok()?.parse().ok()?;
            if line.len() + 1 != len {
                return None;
            }
            let kv = &line[space + 1..];
            let equals = kv.iter().position(|&b| b == b'=')?;
            Some((&kv[..equals], &kv[equals + 1..]))
        })
}

/// A number of PAX records as the tar crate takes it (its `size`, `uid`,
/// `gid`): the first record of `key`, if every record before it is well
/// formed.
pub(crate) fn tar_crate_number(records: &[u8], key: &[u8]) -> Option<u64> {
    for record in tar_crate_records(records) {
        let (k, v) = record?;
        if k == key {
            return std::str::from_utf8(v).ok()?.parse().ok();
        }
    }
    None
}

/// The `size` of PAX records as the tar crate takes it.
fn pax_size(records: &[u8]) -> Option<u64> {
    tar_crate_number(records, b"size")
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
