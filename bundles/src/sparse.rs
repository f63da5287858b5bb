//! GNU sparse files in layer tars, read as Go's archive/tar (and so umoci,
//! containerd and Docker) reads them.
//!
//! A sparse member stores only the data chunks of a file; a map says where
//! each chunk goes in the real file, and the rest is holes. GNU tar writes
//! four formats of it:
//! - old GNU (typeflag `S`): four map entries in the header, more in
//!   512-byte extension blocks while the `isextended` byte is set; the real
//!   size is in the header's `realsize` field;
//! - PAX 0.0: repeated `GNU.sparse.offset` / `GNU.sparse.numbytes` records;
//! - PAX 0.1: one `GNU.sparse.map` record, `offset,length,...`;
//! - PAX 1.0 (`GNU.sparse.major=1`, `GNU.sparse.minor=0`): the map is at the
//!   start of the member's data, decimal numbers one a line (the count,
//!   then offset and length of each chunk), padded to whole 512-byte blocks.
//!
//! The PAX formats name the file in `GNU.sparse.name` (the header carries
//! a `GNUSparseFile.PID/NAME` placeholder) and its size in
//! `GNU.sparse.size` or `GNU.sparse.realsize`.
//!
//! This module parses and checks maps; [`crate::tar_guard`] follows the
//! members in the stream (it sees every byte, the map blocks included) and
//! writes the chunks where they go. The checks are Go's: chunks in order,
//! not overlapping, inside the real size, numbers that parse into a signed
//! 64-bit integer, data that is exactly the chunks. Stricter than Go where
//! the tar crate and Go would read a member differently (see [`old_gnu`]),
//! or where Go would fall back to a plain file holding the map (a PAX
//! sparse member without a map, a version or a real size): refused.

/// Most chunks a map may have. Go bounds a PAX 1.0 map by its text (1 MiB,
/// at least 4 bytes a chunk, so about 2^18 chunks) and PAX 0.x maps by the
/// PAX header (1 MiB too); old GNU maps only by the archive. Here every
/// format has the same bound, well above what a real file needs (GNU tar
/// makes one chunk per data region) and small enough that a hostile layer
/// costs at most 1 MiB of map.
pub const MAX_CHUNKS: usize = 1 << 16;

/// Most bytes of PAX 1.0 map text (Go's `maxSpecialFileSize`).
pub const MAX_MAP_TEXT: usize = 1 << 20;

/// The tar block size: the 1.0 map fills whole blocks.
pub const BLOCK: usize = 512;

/// Go reads every number as an `int64`.
const MAX_NUMBER: u64 = i64::MAX as u64;

/// One data chunk: `length` bytes of the member's data go at `offset` of
/// the real file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub offset: u64,
    pub length: u64,
}

/// Why a sparse member is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SparseError {
    #[error("sparse map has more than {MAX_CHUNKS} chunks")]
    TooManyChunks,
    #[error("sparse map text is longer than {MAX_MAP_TEXT} bytes")]
    MapTextTooLong,
    #[error("sparse map {field} {text:?} is not a decimal number below 2^63")]
    BadDecimal { field: &'static str, text: String },
    #[error("sparse map field {field} {text:?} is not a number below 2^63")]
    BadNumeric { field: &'static str, text: String },
    #[error("sparse map chunk {index} ({offset}+{length}) overflows")]
    Overflow {
        index: usize,
        offset: u64,
        length: u64,
    },
    #[error(
        "sparse map chunk {index} at {offset} starts before the end {previous_end} of the one before it (out of order or overlapping)"
    )]
    OutOfOrder {
        index: usize,
        offset: u64,
        previous_end: u64,
    },
    #[error("sparse map chunk {index} ends at {end}, past the real size {real_size}")]
    PastEnd {
        index: usize,
        end: u64,
        real_size: u64,
    },
    #[error("sparse data of {data} bytes is not the {mapped} bytes the map's chunks hold")]
    DataSize { data: u64, mapped: u64 },
    #[error("sparse map does not fit the entry's {data} bytes of data")]
    MapPastData { data: u64 },
    #[error("GNU.sparse.numblocks {numblocks} but the map has {values} numbers")]
    CountMismatch { numblocks: u64, values: usize },
    #[error("GNU.sparse.offset and GNU.sparse.numbytes records out of turn")]
    RecordOrder,
    #[error("both GNU.sparse.map and GNU.sparse.offset/numbytes records")]
    TwoMaps,
    #[error("unknown GNU sparse format {major:?}.{minor:?}")]
    UnknownFormat { major: String, minor: String },
    #[error("GNU.sparse records without a map or a format version")]
    NoMap,
    #[error("GNU sparse format 1.0 without GNU.sparse.name")]
    NoName,
    #[error("GNU.sparse records without a real size (GNU.sparse.size or GNU.sparse.realsize)")]
    NoRealSize,
    #[error("sparse records on a {kind} entry")]
    NotAFile { kind: String },
    #[error("old GNU sparse entry without a GNU header")]
    NotGnu,
    #[error("old GNU sparse map: {0}")]
    OldGnu(&'static str),
    #[error("malformed pax records with GNU.sparse records")]
    BadRecords,
}

/// Checks `map` against the real size as Go's `validateSparseEntries`
/// does; returns the bytes of data its chunks hold.
pub fn validate(map: &[Chunk], real_size: u64) -> Result<u64, SparseError> {
    let mut check = MapCheck::new(real_size);
    for c in map {
        check.push(*c)?;
    }
    Ok(check.mapped)
}

/// [`validate`], one chunk at a time: a map that arrives in blocks is
/// refused at the first bad chunk.
pub struct MapCheck {
    real_size: u64,
    count: usize,
    /// Where the last chunk ended.
    pub end: u64,
    /// Bytes of data of the chunks so far.
    pub mapped: u64,
}

impl MapCheck {
    pub fn new(real_size: u64) -> Self {
        Self {
            real_size,
            count: 0,
            end: 0,
            mapped: 0,
        }
    }

    pub fn push(&mut self, c: Chunk) -> Result<(), SparseError> {
        let index = self.count;
        let end = c
            .offset
            .checked_add(c.length)
            .filter(|&e| e <= MAX_NUMBER)
            .ok_or(SparseError::Overflow {
                index,
                offset: c.offset,
                length: c.length,
            })?;
        if c.offset < self.end {
            return Err(SparseError::OutOfOrder {
                index,
                offset: c.offset,
                previous_end: self.end,
            });
        }
        if end > self.real_size {
            return Err(SparseError::PastEnd {
                index,
                end,
                real_size: self.real_size,
            });
        }
        self.end = end;
        self.count += 1;
        // Chunks are disjoint and inside real_size: no overflow.
        self.mapped += c.length;
        Ok(())
    }
}

/// A decimal number as GNU tar writes it: ASCII digits only, below 2^63.
pub fn decimal(field: &'static str, text: &[u8]) -> Result<u64, SparseError> {
    let bad = || SparseError::BadDecimal {
        field,
        text: String::from_utf8_lossy(&text[..text.len().min(40)]).into_owned(),
    };
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|&n| n <= MAX_NUMBER)
        .ok_or_else(bad)
}

/// A numeric header field, where Go and the tar crate read it alike:
/// octal text up to the first NUL, trimmed of spaces and not empty, or
/// base-256 (first byte 0x80) whose value fits in 63 bits. Everything else
/// (an empty field, which Go reads as 0 and the tar crate refuses, a
/// negative or overlong base-256 value, which they wrap differently) is
/// refused.
pub fn numeric(field: &'static str, bytes: &[u8]) -> Result<u64, SparseError> {
    let bad = || SparseError::BadNumeric {
        field,
        text: String::from_utf8_lossy(bytes).escape_default().to_string(),
    };
    if bytes[0] & 0x80 != 0 {
        let (head, tail) = bytes.split_at(bytes.len() - 8);
        if head[0] != 0x80 || head[1..].iter().any(|&b| b != 0) {
            return Err(bad());
        }
        let n = u64::from_be_bytes(tail.try_into().map_err(|_| bad())?);
        return if n <= MAX_NUMBER { Ok(n) } else { Err(bad()) };
    }
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let text = bytes[..end].trim_ascii();
    if text.is_empty() || !text.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return Err(bad());
    }
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| u64::from_str_radix(t, 8).ok())
        .filter(|&n| n <= MAX_NUMBER)
        .ok_or_else(bad)
}

/// The map entries of an old GNU header (`entries` is its 96-byte sparse
/// area) or extension block (504 bytes), appended to `map`.
///
/// Go stops at the first entry whose offset starts with NUL; the tar crate
/// skips such entries and also those whose length starts with NUL, and
/// reads on. So that both read the same map, an entry after the end mark
/// must be all zeros, and an entry with an offset must have a length.
pub fn old_gnu(entries: &[u8], map: &mut Vec<Chunk>) -> Result<(), SparseError> {
    let mut ended = false;
    for entry in entries.chunks_exact(24) {
        let (offset, length) = entry.split_at(12);
        if ended || offset[0] == 0 {
            ended = true;
            if entry.iter().any(|&b| b != 0) {
                return Err(SparseError::OldGnu("an entry after the end of the map"));
            }
            continue;
        }
        if length[0] == 0 {
            return Err(SparseError::OldGnu("an entry without a length"));
        }
        if map.len() >= MAX_CHUNKS {
            return Err(SparseError::TooManyChunks);
        }
        map.push(Chunk {
            offset: numeric("offset", offset)?,
            length: numeric("numbytes", length)?,
        });
    }
    Ok(())
}

/// Checks the chunks `map[checked..]` of an old GNU map, those of the
/// block just read, and the whole map once `last`: Go's checks, and two
/// the tar crate makes of this format only (it reads the data in 512-byte
/// blocks and expects the map to end at the real size). GNU tar meets
/// both: its chunks are whole blocks but the last, and it ends a map with
/// an empty chunk at the real size when the file ends in a hole. Block by
/// block, so that a bad map is refused here before the tar crate, which
/// reads the same blocks after this reader, refuses it less clearly.
pub fn check_old_gnu(
    check: &mut MapCheck,
    new: &[Chunk],
    data: u64,
    last: bool,
) -> Result<(), SparseError> {
    for c in new {
        if c.length != 0 && !check.mapped.is_multiple_of(BLOCK as u64) {
            return Err(SparseError::OldGnu(
                "a chunk other than the last is not a whole number of 512-byte blocks",
            ));
        }
        check.push(*c)?;
        if check.mapped > data {
            let mapped = check.mapped;
            return Err(SparseError::DataSize { data, mapped });
        }
    }
    if last {
        if check.mapped != data {
            let mapped = check.mapped;
            return Err(SparseError::DataSize { data, mapped });
        }
        if check.end != check.real_size {
            return Err(SparseError::OldGnu(
                "the last chunk does not end at the real size",
            ));
        }
    }
    Ok(())
}

/// Which PAX sparse format a member is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaxFormat {
    /// 0.0 or 0.1: the map was in the records.
    Records(Vec<Chunk>),
    /// 1.0: the map starts the data.
    InData,
}

/// What the `GNU.sparse.*` records of a member say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaxSparse {
    /// `GNU.sparse.name`, when set and not empty.
    pub name: Option<Vec<u8>>,
    pub real_size: u64,
    pub format: PaxFormat,
}

/// Reads the `GNU.sparse.*` records among a member's PAX records (in
/// order; later ones win, as in Go): `None` when there are none. The map
/// of formats 0.x is checked against the real size here.
pub fn pax_sparse<'a>(
    records: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<Option<PaxSparse>, SparseError> {
    let mut any = false;
    let mut pairs: Vec<&[u8]> = Vec::new();
    let (mut major, mut minor, mut map, mut numblocks) = (None, None, None, None);
    let (mut name, mut size, mut realsize) = (None, None, None);
    for (key, value) in records {
        let Some(key) = key.strip_prefix(b"GNU.sparse.") else {
            continue;
        };
        any = true;
        match key {
            b"offset" | b"numbytes" => {
                let want: &[u8] = if pairs.len().is_multiple_of(2) {
                    b"offset"
                } else {
                    b"numbytes"
                };
                if key != want {
                    return Err(SparseError::RecordOrder);
                }
                if pairs.len() >= 2 * MAX_CHUNKS {
                    return Err(SparseError::TooManyChunks);
                }
                pairs.push(value);
            }
            b"major" => major = Some(value),
            b"minor" => minor = Some(value),
            b"map" => map = Some(value),
            b"numblocks" => numblocks = Some(value),
            b"name" => name = Some(value),
            b"size" => size = Some(value),
            b"realsize" => realsize = Some(value),
            _ => {}
        }
    }
    if !any {
        return Ok(None);
    }
    let text = |v: Option<&[u8]>| String::from_utf8_lossy(v.unwrap_or_default()).into_owned();
    let v1 = match (major, minor) {
        (Some(b"0"), Some(b"0" | b"1")) => false,
        (Some(b"1"), Some(b"0")) => true,
        (None, None) if !pairs.is_empty() || map.is_some_and(|m| !m.is_empty()) => false,
        (None, None) => return Err(SparseError::NoMap),
        _ => {
            return Err(SparseError::UnknownFormat {
                major: text(major),
                minor: text(minor),
            });
        }
    };
    let name = name.filter(|n| !n.is_empty()).map(<[u8]>::to_vec);
    if v1 && name.is_none() {
        return Err(SparseError::NoName);
    }
    let real_size = match size.or(realsize) {
        Some(v) => decimal("real size", v)?,
        None => return Err(SparseError::NoRealSize),
    };
    let format = if v1 {
        PaxFormat::InData
    } else {
        let values: Vec<&[u8]> = match (map, pairs.is_empty()) {
            (Some(b""), true) => Vec::new(),
            (Some(m), true) => m.split(|&b| b == b',').collect(),
            (None, _) => pairs,
            (Some(_), false) => return Err(SparseError::TwoMaps),
        };
        let numblocks = decimal("numblocks", numblocks.unwrap_or_default())?;
        if numblocks > MAX_CHUNKS as u64 || values.len() > 2 * MAX_CHUNKS {
            return Err(SparseError::TooManyChunks);
        }
        if values.len() as u64 != 2 * numblocks {
            return Err(SparseError::CountMismatch {
                numblocks,
                values: values.len(),
            });
        }
        let mut chunks = Vec::with_capacity(values.len() / 2);
        for pair in values.chunks_exact(2) {
            chunks.push(Chunk {
                offset: decimal("offset", pair[0])?,
                length: decimal("numbytes", pair[1])?,
            });
        }
        validate(&chunks, real_size)?;
        PaxFormat::Records(chunks)
    };
    Ok(Some(PaxSparse {
        name,
        real_size,
        format,
    }))
}

/// The map at the start of a PAX 1.0 member's data, read block by block
/// as Go reads it.
#[derive(Default)]
pub struct MapText {
    text: Vec<u8>,
    newlines: usize,
    /// Lines the map needs, once its first line (the count) is in.
    lines: Option<usize>,
}

impl MapText {
    /// Takes the next 512-byte block of data; returns the map once it is
    /// complete (it then took [`Self::len`] bytes of the data).
    pub fn push_block(&mut self, block: &[u8]) -> Result<Option<Vec<Chunk>>, SparseError> {
        if self.text.len() + block.len() > MAX_MAP_TEXT {
            return Err(SparseError::MapTextTooLong);
        }
        self.text.extend_from_slice(block);
        self.newlines += block.iter().filter(|&&b| b == b'\n').count();
        if self.lines.is_none() && self.newlines > 0 {
            let first = self.text.split(|&b| b == b'\n').next().unwrap_or_default();
            let count = decimal("chunk count", first)?;
            if count > MAX_CHUNKS as u64 {
                return Err(SparseError::TooManyChunks);
            }
            self.lines = Some(1 + 2 * count as usize);
        }
        let count = match self.lines {
            Some(lines) if self.newlines >= lines => (lines - 1) / 2,
            _ => return Ok(None),
        };
        // Every line is there: `newlines` counted them.
        let mut tokens = self.text.split(|&b| b == b'\n').skip(1);
        let mut token = || tokens.next().unwrap_or_default();
        let mut map = Vec::with_capacity(count);
        for _ in 0..count {
            let offset = decimal("offset", token())?;
            let length = decimal("numbytes", token())?;
            map.push(Chunk { offset, length });
        }
        Ok(Some(map))
    }

    /// Bytes of data the map text took so far (whole blocks).
    pub fn len(&self) -> usize {
        self.text.len()
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }
}

/// How a sparse entry is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SparseFormat {
    /// Typeflag `S`: the tar crate makes up the holes when the entry is
    /// read.
    OldGnu,
    /// PAX: the entry's data is the chunks (after the map, for 1.0).
    Pax(PaxFormat),
}

/// A sparse entry, as [`crate::apply::read_entry`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseFile {
    /// The size of the file it makes.
    pub real_size: u64,
    /// The bytes it takes in the layer stream (map and chunks).
    pub stored_size: u64,
    pub format: SparseFormat,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(offset: u64, length: u64) -> Chunk {
        Chunk { offset, length }
    }

    #[test]
    fn maps_are_checked_as_go_checks_them() {
        assert_eq!(validate(&[c(0, 5), c(5, 5), c(20, 0)], 20), Ok(10));
        assert_eq!(validate(&[], 0), Ok(0));
        assert!(matches!(
            validate(&[c(0, 10), c(5, 5)], 20),
            Err(SparseError::OutOfOrder { index: 1, .. })
        ));
        assert!(matches!(
            validate(&[c(10, 1), c(0, 1)], 20),
            Err(SparseError::OutOfOrder { .. })
        ));
        assert!(matches!(
            validate(&[c(15, 6)], 20),
            Err(SparseError::PastEnd { end: 21, .. })
        ));
        assert!(matches!(
            validate(&[c(MAX_NUMBER, 1)], u64::MAX),
            Err(SparseError::Overflow { .. })
        ));
    }

    #[test]
    fn numbers() {
        assert_eq!(decimal("x", b"0"), Ok(0));
        assert_eq!(decimal("x", b"9223372036854775807"), Ok(MAX_NUMBER));
        for bad in [&b""[..], b"-1", b"+1", b" 1", b"1a", b"9223372036854775808"] {
            assert!(decimal("x", bad).is_err(), "{bad:?}");
        }
        assert_eq!(numeric("x", b"00000030000\0"), Ok(0o30000));
        assert_eq!(numeric("x", b" 17 \0\0\0\0\0\0\0\0"), Ok(0o17));
        let mut b256 = [0u8; 12];
        b256[0] = 0x80;
        b256[11] = 7;
        assert_eq!(numeric("x", &b256), Ok(7));
        b256[0] = 0xff;
        assert!(numeric("x", &b256).is_err());
        assert!(numeric("x", &[0u8; 12]).is_err());
        assert!(numeric("x", b"0000000008\0\0").is_err());
    }

    #[test]
    fn pax_formats() {
        let r = |list: &[(&'static str, &'static str)]| {
            pax_sparse(list.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())))
        };
        assert_eq!(r(&[("path", "x")]), Ok(None));
        let v00 = r(&[
            ("GNU.sparse.size", "100"),
            ("GNU.sparse.numblocks", "2"),
            ("GNU.sparse.offset", "0"),
            ("GNU.sparse.numbytes", "10"),
            ("GNU.sparse.offset", "50"),
            ("GNU.sparse.numbytes", "0"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(v00.format, PaxFormat::Records(vec![c(0, 10), c(50, 0)]));
        assert_eq!((v00.real_size, v00.name), (100, None));
        let v01 = r(&[
            ("GNU.sparse.size", "100"),
            ("GNU.sparse.numblocks", "1"),
            ("GNU.sparse.name", "a/b"),
            ("GNU.sparse.map", "4,6"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(v01.format, PaxFormat::Records(vec![c(4, 6)]));
        assert_eq!(v01.name.as_deref(), Some(&b"a/b"[..]));
        let v10 = r(&[
            ("GNU.sparse.major", "1"),
            ("GNU.sparse.minor", "0"),
            ("GNU.sparse.name", "f"),
            ("GNU.sparse.realsize", "7"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((v10.format, v10.real_size), (PaxFormat::InData, 7));
        let refused: &[(&[(&str, &str)], SparseError)] = &[
            (
                &[("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0")],
                SparseError::NoName,
            ),
            (&[("GNU.sparse.name", "x")], SparseError::NoMap),
            (
                &[("GNU.sparse.major", "2"), ("GNU.sparse.minor", "0")],
                SparseError::UnknownFormat {
                    major: "2".into(),
                    minor: "0".into(),
                },
            ),
            (
                &[("GNU.sparse.numblocks", "1"), ("GNU.sparse.map", "0,1")],
                SparseError::NoRealSize,
            ),
            (
                &[
                    ("GNU.sparse.size", "9"),
                    ("GNU.sparse.numbytes", "1"),
                    ("GNU.sparse.offset", "0"),
                ],
                SparseError::RecordOrder,
            ),
            (
                &[
                    ("GNU.sparse.size", "9"),
                    ("GNU.sparse.numblocks", "2"),
                    ("GNU.sparse.map", "0,1"),
                ],
                SparseError::CountMismatch {
                    numblocks: 2,
                    values: 2,
                },
            ),
            (
                &[
                    ("GNU.sparse.size", "9"),
                    ("GNU.sparse.numblocks", "1"),
                    ("GNU.sparse.map", "0,1"),
                    ("GNU.sparse.offset", "0"),
                    ("GNU.sparse.numbytes", "1"),
                ],
                SparseError::TwoMaps,
            ),
            (
                &[
                    ("GNU.sparse.size", "9"),
                    ("GNU.sparse.numblocks", "99999999"),
                    ("GNU.sparse.map", "0,1"),
                ],
                SparseError::TooManyChunks,
            ),
        ];
        for (records, want) in refused {
            assert_eq!(r(records).as_ref(), Err(want), "{records:?}");
        }
        assert!(matches!(
            r(&[
                ("GNU.sparse.size", "9"),
                ("GNU.sparse.numblocks", "1"),
                ("GNU.sparse.map", "5,5"),
            ]),
            Err(SparseError::PastEnd { .. })
        ));
    }

    #[test]
    fn map_text_comes_in_blocks() {
        // The text runs on across blocks; only the last is padded (and
        // its padding ignored).
        let mut map = b"2\n".to_vec();
        map.extend_from_slice(&[b'0'; 600]);
        map.extend_from_slice(b"\n5\n9\n1\n");
        map.resize(2 * BLOCK, 0);
        let mut text = MapText::default();
        assert_eq!(text.push_block(&map[..BLOCK]), Ok(None));
        assert_eq!(
            text.push_block(&map[BLOCK..]),
            Ok(Some(vec![c(0, 5), c(9, 1)]))
        );
        assert_eq!(text.len(), 2 * BLOCK);
        // Padding inside the map is no number.
        let mut text = MapText::default();
        let mut block = [0u8; BLOCK];
        block[..6].copy_from_slice(b"2\n0\n5\n");
        assert_eq!(text.push_block(&block), Ok(None));
        block.fill(0);
        block[..4].copy_from_slice(b"9\n1\n");
        assert!(matches!(
            text.push_block(&block),
            Err(SparseError::BadDecimal { .. })
        ));
        let mut text = MapText::default();
        block.fill(0);
        block[..8].copy_from_slice(b"70000\n0\n");
        assert_eq!(text.push_block(&block), Err(SparseError::TooManyChunks));
        let mut text = MapText::default();
        let zeros = [0u8; BLOCK];
        let mut res = Ok(None);
        for _ in 0..=MAX_MAP_TEXT / BLOCK {
            res = text.push_block(&zeros);
            if res.is_err() {
                break;
            }
        }
        assert_eq!(res, Err(SparseError::MapTextTooLong));
    }

    #[test]
    fn old_gnu_entries_both_readers_agree_on() {
        let mut area = [0u8; 96];
        area[..12].copy_from_slice(b"00000001000\0");
        area[12..24].copy_from_slice(b"00000001000\0");
        let mut map = Vec::new();
        old_gnu(&area, &mut map).unwrap();
        assert_eq!(map, [c(512, 512)]);
        let check =
            |map: &[Chunk], real, data| check_old_gnu(&mut MapCheck::new(real), map, data, true);
        check(&map, 1024, 512).unwrap();
        assert_eq!(
            check(&map, 2048, 512),
            Err(SparseError::OldGnu(
                "the last chunk does not end at the real size"
            ))
        );
        area[60] = b'1';
        assert!(old_gnu(&area, &mut Vec::new()).is_err());
        area[60] = 0;
        area[12] = 0;
        assert!(old_gnu(&area, &mut Vec::new()).is_err());
        let unaligned = [c(0, 100), c(1000, 10)];
        assert!(check(&unaligned, 1010, 110).is_err());
    }
}
