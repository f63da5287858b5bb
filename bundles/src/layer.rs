//! Streaming a layer blob into a root directory: read and verify the blob
//! (size and sha256), decompress, hash the tar (DiffID) and extract, all in
//! one pass. Two ways to run the stages ([`Execution`]):
//!
//! - threaded: two threads joined by a small channel of 256 KiB tar chunks,
//!
//!   ```text
//!   decoder thread: read + size/sha256 of the blob → gzip/zstd ─┐
//!                                                 tar chunks ←─┘
//!   calling thread: tar parsing + filesystem (extraction)
//!   both:           sha256 of the blob and of the tar (DiffID), chunk by
//!                   chunk, in order, by whichever thread is ahead: the
//!                   decoder when many chunks wait for the extractor, the
//!                   extractor when few do, and either rather than wait
//!   ```
//!
//!   On two cores, two threads whose work balances itself beat a pipeline
//!   of four fixed stages, which the scheduler must time-slice: the blob
//!   digest plus decompression and the extraction differ in cost, and the
//!   DiffID hash fills the gap on either side.
//!
//! - inline, for one CPU: the extractor pulls, and each read decompresses
//!   (and hashes) on demand, straight into the extractor's buffer for file
//!   data. No threads, no channels, no copies between stages.
//!
//! Both run the same checks and give the same errors; nothing is read
//! twice.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io::{self, BufRead, Read, Write};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Condvar, Mutex};
use std::thread;

use crate::apply::{ApplyError, DirectSink, DirectWrite, LayerStats, Rootfs};
use crate::digest::{DigestError, Hasher, Sha256Digest, digest_error};
use crate::image::{BlobReader, Compression, Image, ImageError, Layer};

/// Errors of unpacking one layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{image}: layer {blob}")]
    Blob {
        image: String,
        blob: String,
        #[source]
        source: DigestError,
    },
    #[error("{image}: layer {blob} is corrupt or truncated ({compression} stream)")]
    Corrupt {
        image: String,
        blob: String,
        compression: Compression,
        #[source]
        source: io::Error,
    },
    #[error("{image}: layer {blob}: {}", zstd_window_refusal(*.window))]
    ZstdWindow {
        image: String,
        blob: String,
        /// The window the frame asks for, when known (the first frame's
        /// is read before decoding; a later frame's only shows as the
        /// decoder's refusal).
        window: Option<u64>,
    },
    #[error("{image}: read layer {blob}")]
    Read {
        image: String,
        blob: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{image}: layer {blob}: uncompressed content hashes to {actual}, config diff_id is {expected}"
    )]
    DiffId {
        image: String,
        blob: String,
        expected: String,
        actual: String,
    },
    #[error("{image}: apply layer {blob}")]
    Apply {
        image: String,
        blob: String,
        #[source]
        source: ApplyError,
    },
    #[error("{image}: unpack of layer {blob} cancelled")]
    Cancelled { image: String, blob: String },
    #[error("{image}: prepare the root directory")]
    Root {
        image: String,
        #[source]
        source: ApplyError,
    },
    #[error("{image}: layer {blob}: start reader thread")]
    Thread {
        image: String,
        blob: String,
        #[source]
        source: io::Error,
    },
}

/// The largest zstd window (back-reference distance) accepted: 2^27 =
/// 128 MiB, zstd's own default limit for decoding (`zstd -d` refuses more
/// without `--long` or `--memory`), set explicitly so that it does not move
/// with the library. The decoder allocates the window, and berth-init
/// unpacks into RAM at boot; RFC 8878 only asks decoders to support 8 MiB.
/// `zstd --long=N` with N above 27 on a stream of unknown size (a pipe)
/// writes frames with larger windows.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 27;
const ZSTD_WINDOW_MAX: u64 = 1 << ZSTD_WINDOW_LOG_MAX;

/// Why a zstd frame asking for `window` bytes (`None`: not known) is
/// refused, and what to do about it.
pub fn zstd_window_refusal(window: Option<u64>) -> String {
    let what = match window {
        Some(w) => format!("a zstd frame needs a {} MiB window,", w.div_ceil(1 << 20)),
        None => "a zstd frame needs a window".to_string(),
    };
    format!(
        "{what} above the {} MiB the zstd decoder allows (berth-init unpacks into memory); recompress the layer without --long, or with --long={ZSTD_WINDOW_LOG_MAX} or less",
        ZSTD_WINDOW_MAX >> 20
    )
}

/// The refusal of a zstd stream that starts with `head`, when its first
/// frame asks for a window above the limit.
pub fn zstd_window_check(head: &[u8]) -> Result<(), String> {
    match zstd_first_window(head) {
        Some(w) if w > ZSTD_WINDOW_MAX => Err(zstd_window_refusal(Some(w))),
        _ => Ok(()),
    }
}

/// The window size the first zstd frame in `buf` declares (RFC 8878
/// §3.1.1.1), after any skippable frames; `None` when `buf` does not hold
/// a whole frame header or is no zstd frame.
fn zstd_first_window(mut buf: &[u8]) -> Option<u64> {
    const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    loop {
        let magic = buf.get(..4)?;
        if magic[0] & 0xf0 == 0x50 && magic[1..] == [0x2a, 0x4d, 0x18] {
            // Skippable frame: magic, 4-byte little-endian size, data.
            let size = u32::from_le_bytes(buf.get(4..8)?.try_into().ok()?);
            buf = buf.get(8 + usize::try_from(size).ok()?..)?;
            continue;
        }
        if magic != MAGIC {
            return None;
        }
        let fhd = *buf.get(4)?;
        let single_segment = fhd & 0x20 != 0;
        if !single_segment {
            // Window_Descriptor: exponent and mantissa.
            let wd = *buf.get(5)?;
            let log = 10 + u32::from(wd >> 3);
            let base = 1u64 << log;
            return Some(base + (base / 8) * u64::from(wd & 7));
        }
        // Single segment: the window is the frame content size, which
        // follows the dictionary id.
        let dict_len = [0, 1, 2, 4][usize::from(fhd & 3)];
        let fcs_len = [1, 2, 4, 8][usize::from(fhd >> 6)];
        let at = 5 + dict_len;
        let field = buf.get(at..at + fcs_len)?;
        let mut le = [0u8; 8];
        le[..fcs_len].copy_from_slice(field);
        let fcs = u64::from_le_bytes(le);
        return Some(if fcs_len == 2 { fcs + 256 } else { fcs });
    }
}

/// Whether a zstd decoding error is its refusal of a frame's window (the
/// zstd crate carries only zstd's error text; `ZSTD_error_frameParameter_
/// windowTooLarge`).
pub fn is_zstd_window_error(e: &io::Error) -> bool {
    e.to_string() == "Frame requires too much memory for decoding"
}

/// The size of the tar chunks the decoding thread hands over, and of the
/// blob reads. 256 KiB rather than 1 MiB: the ~20 buffers in flight then
/// stay within the caches and cost fewer page faults (7 % less CPU on the
/// minbase benchmark, measured against 128 KiB to 1 MiB chunks).
const CHUNK: usize = 256 << 10;
/// Chunks in flight between the decoding and the extracting thread.
const DEPTH: usize = 16;
/// Below this many queued chunks the extractor hashes before it takes the
/// next one; at this many or more the decoder hashes after each send.
const LOW: usize = DEPTH / 4;
const HIGH: usize = DEPTH / 2;

/// What one pipeline stage sends the next.
enum Msg<T> {
    Data(T),
    /// End of the stream, or why it broke.
    End(Result<(), StreamError>),
}

/// A failure in the pipeline, classified for the message.
#[derive(Debug)]
enum StreamError {
    Digest(DigestError),
    Decode(io::Error),
    /// A zstd frame's window is above [`ZSTD_WINDOW_MAX`].
    Window(Option<u64>),
    Read(io::Error),
    Cancelled,
}

fn classify(err: io::Error, decoding: bool) -> StreamError {
    if err.get_ref().is_some_and(|e| e.is::<CancelledRead>()) {
        return StreamError::Cancelled;
    }
    match digest_error(&err) {
        Some(d) => StreamError::Digest(d),
        None if decoding => StreamError::Decode(err),
        None => StreamError::Read(err),
    }
}

fn stage_gone() -> StreamError {
    StreamError::Read(io::Error::other("pipeline stage ended early"))
}

/// Reads `r` into `chunk` until it is full or the stream ends.
fn fill(r: &mut impl Read, chunk: &mut Vec<u8>) -> io::Result<usize> {
    chunk.resize(CHUNK, 0);
    let mut filled = 0;
    while filled < CHUNK {
        match r.read(&mut chunk[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    chunk.truncate(filled);
    Ok(filled)
}

/// How the stages of [`unpack_layer_with`] run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Execution {
    /// [`Execution::Inline`] when `std::thread::available_parallelism()`
    /// is 1 (or unknown), [`Execution::Threaded`] otherwise.
    #[default]
    Auto,
    /// Every stage in the calling thread: no threads, no channels, and the
    /// decompressor writes straight into the extractor's buffers. For one
    /// CPU, where threads only add switches and copies.
    Inline,
    /// Reading, decompressing and hashing in their own threads, overlapping
    /// with the extraction in the calling thread.
    Threaded,
}

impl Execution {
    fn inline(self) -> bool {
        match self {
            Execution::Auto => thread::available_parallelism().map_or(true, |n| n.get() == 1),
            Execution::Inline => true,
            Execution::Threaded => false,
        }
    }
}

/// Whether [`unpack_layer_with`] hashes the uncompressed tar and compares
/// it with the config's `diff_ids` entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DiffIdCheck {
    /// Hash the uncompressed tar and refuse the layer unless it matches
    /// the config's DiffID. The default.
    #[default]
    Verify,
    /// Skip the DiffID hash when the layer has a blob digest; the blob's
    /// size and sha256 are still checked while it streams.
    ///
    /// Sound only when whoever wrote the image checked each DiffID against
    /// the bytes the blob decompresses to (as `berth-build` does when it
    /// recompresses layers into the initrd): the blob digest, bound to the
    /// config through the manifest, then fixes the decompressed bytes too,
    /// because decompression is deterministic. For an image from anywhere
    /// else a wrong `diff_ids` entry (a config that lies about its layers)
    /// goes unnoticed in this mode. A layer without a blob digest (legacy
    /// docker-archive `layer.tar`) has only its DiffID to bind it, so it is
    /// always verified.
    TrustBlobDigest,
}

/// Options of [`unpack_layer_with`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerOptions {
    pub execution: Execution,
    pub diff_id: DiffIdCheck,
    /// Stops the unpack when raised (by a signal handler, say).
    pub cancel: Option<Cancel>,
}

/// A flag that stops an unpack from another thread: once it is set, the
/// next read of the layer blob fails and the unpack ends with
/// [`LayerError::Cancelled`]. The unpacking thread itself stops, so the
/// caller can then remove what it made without racing a writer. Reads come
/// every 256 KiB of blob, and before each layer.
#[derive(Clone, Copy, Debug)]
pub struct Cancel(pub &'static AtomicBool);

impl Cancel {
    pub fn raised(self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Two cancels are the same when they watch the same flag.
impl PartialEq for Cancel {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.0, other.0)
    }
}

impl Eq for Cancel {}

/// What a blob read fails with once the unpack is cancelled; the stages
/// pass it on as they pass on digest errors.
#[derive(Debug, thiserror::Error)]
#[error("unpack cancelled")]
struct CancelledRead;

/// Where the blob's sha256 is computed.
enum BlobHash {
    /// The blob has no digest to check (legacy docker-archive layers).
    None,
    /// Here, as the blob is read; checked at its end.
    Inline(Hasher),
    /// By whichever thread is free ([`HashShare`]); checked once both
    /// threads are done.
    Shared(Arc<HashShare>, Receiver<Vec<u8>>),
}

/// The two hashes a [`HashShare`] computes.
const BLOB: usize = 0;
const TAR: usize = 1;

/// The raw blob, read in chunks, checked against its descriptor: never
/// more than `size` + 1 bytes are read, and at its end the size is checked
/// (and the digest, when hashed inline). A failure is an `io::Error` that
/// carries the [`DigestError`], so the decoder passes it on.
struct RawInput {
    raw: BlobReader,
    cancel: Option<Cancel>,
    /// The descriptor's digest and size, when the format has them.
    expect: Option<(Sha256Digest, u64)>,
    count: u64,
    cur: Arc<Vec<u8>>,
    pos: usize,
    done: bool,
    hash: BlobHash,
}

impl RawInput {
    fn new(
        raw: BlobReader,
        expect: Option<(Sha256Digest, u64)>,
        hash: BlobHash,
        cancel: Option<Cancel>,
    ) -> Self {
        Self {
            raw,
            cancel,
            hash: if expect.is_some() {
                hash
            } else {
                BlobHash::None
            },
            expect,
            count: 0,
            cur: Arc::new(Vec::new()),
            pos: 0,
            done: false,
        }
    }

    fn fail(err: DigestError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, err)
    }

    /// Reads the next chunk of the blob (empty at its end).
    fn refill(&mut self) -> io::Result<()> {
        if self.cancel.is_some_and(Cancel::raised) {
            // Every later read fails the same way, the draining ones too.
            return Err(io::Error::other(CancelledRead));
        }
        let mut buf = match Arc::get_mut(&mut self.cur) {
            Some(v) => std::mem::take(v),
            None => match &self.hash {
                BlobHash::Shared(_, recycled) => recycled.try_recv().unwrap_or_default(),
                _ => Vec::new(),
            },
        };
        // One byte past the declared size at most, to notice an oversized
        // blob without trusting the descriptor for allocation.
        let limit = match &self.expect {
            Some((_, size)) => {
                let left = size.saturating_sub(self.count).saturating_add(1);
                CHUNK.min(usize::try_from(left).unwrap_or(CHUNK))
            }
            None => CHUNK,
        };
        buf.resize(limit, 0);
        let mut filled = 0;
        while filled < limit {
            match self.raw.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        self.count += filled as u64;
        // The spent chunk is consumed; on an error nothing more is served.
        self.pos = self.cur.len();
        if let Some((digest, size)) = &self.expect {
            if self.count > *size {
                self.done = true;
                return Err(Self::fail(DigestError::TooLarge {
                    digest: digest.to_string(),
                    expected: *size,
                }));
            }
            if filled == 0 && self.count != *size {
                self.done = true;
                return Err(Self::fail(DigestError::Truncated {
                    digest: digest.to_string(),
                    expected: *size,
                    actual: self.count,
                }));
            }
        }
        match &mut self.hash {
            BlobHash::None => {}
            BlobHash::Inline(h) => h.update(&buf),
            BlobHash::Shared(share, _) => {
                if filled > 0 {
                    share.bound(BLOB);
                }
            }
        }
        let spent = std::mem::replace(&mut self.cur, Arc::new(buf));
        self.pos = 0;
        if let BlobHash::Shared(share, _) = &self.hash {
            give_back(spent, &share.backs[BLOB]);
        }
        if filled > 0 {
            if let BlobHash::Shared(share, _) = &self.hash {
                share.push(BLOB, self.cur.clone());
            }
            return Ok(());
        }
        self.done = true;
        if let (BlobHash::Inline(h), Some((digest, _))) = (&mut self.hash, &self.expect) {
            let actual = std::mem::take(h).finish();
            if actual != *digest {
                return Err(Self::fail(DigestError::Mismatch {
                    digest: digest.to_string(),
                    actual: actual.to_string(),
                }));
            }
        }
        Ok(())
    }

    /// Reads the blob to its end, so its size (and inline digest) are
    /// checked, and returns the verdict.
    fn drain(&mut self) -> Result<(), StreamError> {
        loop {
            match self.fill_buf() {
                Ok([]) => return Ok(()),
                Ok(buf) => {
                    let n = buf.len();
                    self.consume(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(classify(e, false)),
            }
        }
    }
}

impl Read for RawInput {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for RawInput {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos >= self.cur.len() && !self.done {
            self.refill()?;
        }
        Ok(&self.cur[self.pos.min(self.cur.len())..])
    }
    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.cur.len());
    }
}

/// The decompressor of a layer stream, which can give its input back.
/// One lives per layer, so the size of the gzip state does not matter.
#[allow(clippy::large_enum_variant)]
enum Decoder {
    Plain(RawInput),
    Gzip(flate2::bufread::MultiGzDecoder<RawInput>),
    Zstd(zstd::stream::read::Decoder<'static, RawInput>),
}

impl Decoder {
    /// Picks the decompressor (sniffing the magic number if asked to).
    fn new(mut input: RawInput, compression: Compression) -> Result<Self, StreamError> {
        let compression = match compression {
            Compression::Sniff => match input.fill_buf() {
                Ok(head) => sniff(head),
                Err(e) => {
                    let err = classify(e, false);
                    return Err(input.drain().err().unwrap_or(err));
                }
            },
            c => c,
        };
        Ok(match compression {
            Compression::None | Compression::Sniff => Decoder::Plain(input),
            // Multi-member gzip is valid (RFC 1952); GzDecoder would stop
            // after the first member.
            Compression::Gzip => Decoder::Gzip(flate2::bufread::MultiGzDecoder::new(input)),
            Compression::Zstd => {
                // Known before anything is decoded for the first frame
                // (usually the only one), and then with its size.
                let window = match input.fill_buf() {
                    Ok(head) => zstd_first_window(head),
                    Err(e) => {
                        let err = classify(e, false);
                        return Err(input.drain().err().unwrap_or(err));
                    }
                };
                if let Some(w) = window.filter(|w| *w > ZSTD_WINDOW_MAX) {
                    // The digest's verdict first, as for any decoding
                    // error: a damaged blob may show a bogus window.
                    return Err(input.drain().err().unwrap_or(StreamError::Window(Some(w))));
                }
                let mut d =
                    zstd::stream::read::Decoder::with_buffer(input).map_err(StreamError::Decode)?;
                d.window_log_max(ZSTD_WINDOW_LOG_MAX)
                    .map_err(StreamError::Decode)?;
                Decoder::Zstd(d)
            }
        })
    }

    fn decoding(&self) -> bool {
        !matches!(self, Decoder::Plain(_))
    }

    fn into_inner(self) -> RawInput {
        match self {
            Decoder::Plain(r) => r,
            Decoder::Gzip(d) => d.into_inner(),
            Decoder::Zstd(d) => d.finish(),
        }
    }

    /// Ends the stream after the decompressor returned `res` (`Ok` at its
    /// end): drains the blob so the size and digest checks run, and
    /// prefers their verdict. A damaged blob usually breaks the
    /// decompressor before its digest is known, and a blob read failure
    /// surfaces as a decoder error; the digest error is the more precise.
    fn end(self, res: io::Result<()>) -> Result<(), StreamError> {
        let decoding = self.decoding();
        let zstd = matches!(self, Decoder::Zstd(_));
        let drained = self.into_inner().drain();
        match res {
            Ok(()) => drained,
            Err(e) => Err(drained.err().unwrap_or_else(|| {
                if zstd && is_zstd_window_error(&e) {
                    // A later frame's (the first was checked up front).
                    StreamError::Window(None)
                } else {
                    classify(e, decoding)
                }
            })),
        }
    }
}

impl Read for Decoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(d) => d.read(buf),
            Decoder::Zstd(d) => d.read(buf),
        }
    }
}

/// Sniffs the compression of a docker-archive layer by its magic number.
fn sniff(buf: &[u8]) -> Compression {
    const ZSTD: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    if buf.starts_with(&[0x1f, 0x8b, 0x08]) {
        Compression::Gzip
    } else if buf.starts_with(&ZSTD)
        || (buf.len() >= 4 && buf[0] & 0xf0 == 0x50 && buf[1..4] == [0x2a, 0x4d, 0x18])
    {
        // zstd frame, or a skippable frame (0x184D2A5?) as zstd:chunked
        // writes first.
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// The end of the tar stream as the extractor sees it.
///
/// umoci 0.4.7 writes layers that stop right after the last entry's data:
/// no padding to 512 bytes and no end-of-archive blocks (GNU tar rejects
/// them, umoci reads them). Such an end reads as zeros here, enough to
/// finish the block and end the archive. The DiffID covers the real bytes
/// only, and `apply` refuses file data that reaches into the zeros.
struct ZeroTail {
    /// Bytes of real stream handed out so far.
    delivered: u64,
    /// Zero bytes still to hand out after the real stream ended.
    tail: Option<u64>,
    /// Set to the real stream length when the zero tail starts.
    real_end: Rc<Cell<Option<u64>>>,
}

impl ZeroTail {
    fn new() -> Self {
        Self {
            delivered: 0,
            tail: None,
            real_end: Rc::new(Cell::new(None)),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> usize {
        let delivered = self.delivered;
        self.real_end.set(Some(delivered));
        let tail = self.tail.get_or_insert_with(|| {
            if !delivered.is_multiple_of(512) {
                log::debug!("layer tar ends without padding; reading it as zeros");
            }
            (512 - delivered % 512) % 512 + 1024
        });
        let n = buf.len().min(usize::try_from(*tail).unwrap_or(usize::MAX));
        buf[..n].fill(0);
        *tail -= n as u64;
        n
    }
}

fn stream_failed() -> io::Error {
    io::Error::other("layer stream failed")
}

/// Reads below this size go through the [`Inline`] buffer; larger ones
/// (file data) are decompressed straight into the caller's buffer.
const DIRECT: usize = 64 << 10;
/// The [`Inline`] buffer for headers and small files.
const INLINE_BUF: usize = 256 << 10;

/// [`Execution::Inline`]: the blob is read, verified, decompressed and
/// hashed on demand, as the extractor reads.
struct Inline {
    /// `None` once the stream ended.
    decoder: Option<Decoder>,
    hasher: Option<Hasher>,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    end: Option<Result<(), StreamError>>,
    tail: ZeroTail,
}

impl Inline {
    /// Decompresses into `dst` (hashing what comes out); at the end of the
    /// stream or on an error, settles the verdict.
    fn pull(&mut self, dst: &mut [u8]) -> usize {
        let Some(decoder) = self.decoder.as_mut() else {
            return 0;
        };
        let res = loop {
            match decoder.read(dst) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    if let Some(h) = self.hasher.as_mut() {
                        h.update(&dst[..n]);
                    }
                    return n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        if let Some(decoder) = self.decoder.take() {
            self.end = Some(decoder.end(res));
        }
        0
    }

    /// Refills the buffer; false at the end of the stream.
    fn refill(&mut self) -> bool {
        let mut buf = std::mem::take(&mut self.buf);
        let n = self.pull(&mut buf);
        self.buf = buf;
        self.pos = 0;
        self.len = n;
        n > 0
    }

    /// Reads to the end of the stream (bytes after the tar's end-of-archive
    /// marker count toward the DiffID, as in umoci) and returns the verdict
    /// and the DiffID, if hashed.
    fn finish(mut self) -> Result<Option<Sha256Digest>, StreamError> {
        self.pos = self.len;
        while self.end.is_none() {
            if self.refill() && self.buf[..self.len].iter().any(|b| *b != 0) {
                log::debug!("ignoring trailing bytes after the end of a layer tar");
            }
        }
        self.end.take().unwrap_or(Ok(()))?;
        Ok(self.hasher.map(Hasher::finish))
    }
}

/// What both extractor inputs do first: serve what is left of the current
/// `chunk` from `pos`, then the end of the stream (its failure, or the zero
/// tail). `None`: the caller must fetch more.
fn serve_buffered(
    buf: &mut [u8],
    chunk: &[u8],
    pos: &mut usize,
    end: &Option<Result<(), StreamError>>,
    tail: &mut ZeroTail,
) -> Option<io::Result<usize>> {
    if *pos < chunk.len() {
        let n = buf.len().min(chunk.len() - *pos);
        buf[..n].copy_from_slice(&chunk[*pos..*pos + n]);
        *pos += n;
        tail.delivered += n as u64;
        return Some(Ok(n));
    }
    match end {
        Some(Err(_)) => Some(Err(stream_failed())),
        Some(Ok(())) => Some(Ok(tail.read(buf))),
        None => None,
    }
}

impl Read for Inline {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let chunk = &self.buf[..self.len];
            if let Some(r) = serve_buffered(buf, chunk, &mut self.pos, &self.end, &mut self.tail) {
                return r;
            }
            if buf.len() >= DIRECT {
                let n = self.pull(buf);
                if n > 0 {
                    self.tail.delivered += n as u64;
                    return Ok(n);
                }
            } else {
                self.refill();
            }
        }
    }
}

/// What running the stages gave: the extraction's result, and the
/// stream's verdict with the DiffID (if hashed).
type Outcome = (
    Result<LayerStats, ApplyError>,
    Result<Option<Sha256Digest>, StreamError>,
);

/// Runs every stage in the calling thread.
fn run_inline(
    raw: BlobReader,
    expect: Option<(Sha256Digest, u64)>,
    compression: Compression,
    hash: bool,
    rootfs: &Rootfs,
    cancel: Option<Cancel>,
) -> Outcome {
    let input = RawInput::new(raw, expect, BlobHash::Inline(Hasher::default()), cancel);
    let (decoder, end) = match Decoder::new(input, compression) {
        Ok(d) => (Some(d), None),
        Err(e) => (None, Some(Err(e))),
    };
    let mut stream = Inline {
        decoder,
        hasher: hash.then(Hasher::default),
        buf: vec![0; INLINE_BUF],
        pos: 0,
        len: 0,
        end,
        tail: ZeroTail::new(),
    };
    let real_end = Some(stream.tail.real_end.clone());
    let applied = rootfs.apply_layer_stream(&mut stream, real_end, None);
    (applied, stream.finish())
}

/// The extractor's input in [`Execution::Threaded`]: the decoder's tar
/// chunks.
struct ChannelReader {
    rx: Receiver<Msg<Arc<Vec<u8>>>>,
    back: SyncSender<Vec<u8>>,
    /// The hashes, worked on while the decoder is behind.
    share: Arc<HashShare>,
    cur: Arc<Vec<u8>>,
    pos: usize,
    end: Option<Result<(), StreamError>>,
    tail: ZeroTail,
    /// File data goes from `cur` straight to the file while set.
    direct: DirectSink,
}

fn direct_failed() -> io::Error {
    io::Error::other("writing file data failed")
}

impl ChannelReader {
    /// A read in [`DirectWrite`] mode: writes (part of) what the read would
    /// hand out to `file` and returns how much.
    fn read_direct(&mut self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        let mut sink = self.direct.borrow_mut();
        let DirectWrite {
            file: Some(file),
            written,
            error,
        } = &mut *sink
        else {
            return None;
        };
        let chunk = self.cur.as_slice();
        let res = if self.pos < chunk.len() {
            let n = buf.len().min(chunk.len() - self.pos);
            match file.write(&chunk[self.pos..self.pos + n]) {
                Ok(0) if n > 0 => Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => {
                    self.pos += k;
                    self.tail.delivered += k as u64;
                    Ok(k)
                }
                Err(e) => Err(e),
            }
        } else {
            // The end of the stream: its failure, or the zero tail.
            match serve_buffered(buf, chunk, &mut self.pos, &self.end, &mut self.tail)? {
                Ok(n) => file.write_all(&buf[..n]).map(|()| n),
                Err(e) => return Some(Err(e)),
            }
        };
        Some(match res {
            Ok(n) => {
                *written += n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                *error = Some(e);
                Err(direct_failed())
            }
        })
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(r) = self.read_direct(buf) {
                return r;
            }
            let chunk = self.cur.as_slice();
            if let Some(r) = serve_buffered(buf, chunk, &mut self.pos, &self.end, &mut self.tail) {
                return r;
            }
            match self.next_msg() {
                Ok(Msg::Data(chunk)) => {
                    let spent = std::mem::replace(&mut self.cur, chunk);
                    give_back(spent, &self.back);
                    self.pos = 0;
                }
                Ok(Msg::End(res)) => self.end = Some(res),
                Err(_) => self.end = Some(Err(stage_gone())),
            }
        }
    }
}

impl ChannelReader {
    /// The next message; while none is there, hashes pending chunks.
    fn next_msg(&mut self) -> Result<Msg<Arc<Vec<u8>>>, std::sync::mpsc::RecvError> {
        // Few chunks queued: the decoder is the slower side, so take
        // hashing off it before it has to.
        while self.share.queued.load(Ordering::Relaxed) < LOW && self.share.work() {}
        loop {
            match self.rx.try_recv() {
                Ok(m) => {
                    self.share.queued.fetch_sub(1, Ordering::Relaxed);
                    return Ok(m);
                }
                Err(TryRecvError::Disconnected) => return Err(std::sync::mpsc::RecvError),
                Err(TryRecvError::Empty) => {
                    if !self.share.work() {
                        break;
                    }
                }
            }
        }
        let m = self.rx.recv();
        if m.is_ok() {
            self.share.queued.fetch_sub(1, Ordering::Relaxed);
        }
        m
    }

    /// Reads to the end of the stream (bytes after the tar's end-of-archive
    /// marker count toward the DiffID, as in umoci) and returns the verdict
    /// of the earlier stages.
    fn finish(&mut self) -> Result<(), StreamError> {
        self.pos = self.cur.len();
        while self.end.is_none() {
            match self.next_msg() {
                Ok(Msg::Data(chunk)) => {
                    if chunk.iter().any(|b| *b != 0) {
                        log::debug!("ignoring trailing bytes after the end of a layer tar");
                    }
                    give_back(chunk, &self.back);
                }
                Ok(Msg::End(res)) => self.end = Some(res),
                Err(_) => self.end = Some(Err(stage_gone())),
            }
        }
        self.end.take().unwrap_or(Ok(()))
    }
}

/// Hands a tar chunk back to the decoder once its last user (hasher or
/// extractor) is done with it, saving an allocation and a memset.
fn give_back(chunk: Arc<Vec<u8>>, back: &SyncSender<Vec<u8>>) {
    if let Ok(v) = Arc::try_unwrap(chunk) {
        let _ = back.try_send(v);
    }
}

fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<thread::JoinHandle<T>> {
    thread::Builder::new().name(name.into()).spawn(f)
}

/// The hashes of [`Execution::Threaded`] (the blob's sha256 and the
/// DiffID), shared by the decoding and the extracting thread: chunks of
/// each queue up in order, and the thread that is ahead hashes the oldest
/// one: the decoder while [`HIGH`] or more chunks wait in the channel, the
/// extractor while fewer than [`LOW`] do (`queued` counts them), and either
/// rather than block. Two threads then keep two cores busy however the work
/// splits, without a third thread competing for them.
struct HashShare {
    lanes: Mutex<[Lane; 2]>,
    /// Signalled when a chunk was hashed.
    hashed: Condvar,
    /// Where hashed chunks go back to, per lane, to be reused.
    backs: [SyncSender<Vec<u8>>; 2],
    /// Messages in the channel to the extractor: how far the decoder is
    /// ahead, which says which side should hash.
    queued: AtomicUsize,
}

struct Lane {
    /// `None` while a thread hashes.
    hasher: Option<Hasher>,
    pending: VecDeque<Arc<Vec<u8>>>,
}

/// Chunks waiting for a hash, at most, before the decoder stops to hash.
const MAX_PENDING: usize = 2 * DEPTH;

impl HashShare {
    fn new(backs: [SyncSender<Vec<u8>>; 2]) -> Self {
        let lane = || Lane {
            hasher: Some(Hasher::default()),
            pending: VecDeque::new(),
        };
        Self {
            lanes: Mutex::new([lane(), lane()]),
            hashed: Condvar::new(),
            backs,
            queued: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Lane; 2]> {
        // A panic while hashing leaves the hasher `None`: that digest is
        // then missing and the layer refused, never wrong.
        self.lanes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, lane: usize, chunk: Arc<Vec<u8>>) {
        self.lock()[lane].pending.push_back(chunk);
    }

    /// Hashes the oldest pending chunk of `lane` (of any lane if `None`)
    /// unless another thread holds that hash or nothing is pending;
    /// returns whether it did.
    fn work_on(&self, lane: Option<usize>) -> bool {
        let (i, mut hasher, chunk) = {
            let mut lanes = self.lock();
            let ready = |l: &Lane| l.hasher.is_some() && !l.pending.is_empty();
            let Some(i) = (0..2).find(|i| lane.is_none_or(|l| l == *i) && ready(&lanes[*i])) else {
                return false;
            };
            let l = &mut lanes[i];
            match (l.hasher.take(), l.pending.pop_front()) {
                (Some(h), Some(c)) => (i, h, c),
                (h, _) => {
                    l.hasher = h;
                    return false;
                }
            }
        };
        hasher.update(&chunk);
        give_back(chunk, &self.backs[i]);
        self.lock()[i].hasher = Some(hasher);
        self.hashed.notify_all();
        true
    }

    fn work(&self) -> bool {
        self.work_on(None)
    }

    /// Keeps `lane`'s queue bounded: hashes (or waits for the other thread
    /// to) until fewer than [`MAX_PENDING`] chunks wait.
    fn bound(&self, lane: usize) {
        loop {
            {
                let lanes = self.lock();
                if lanes[lane].pending.len() < MAX_PENDING {
                    return;
                }
                if lanes[lane].hasher.is_none() {
                    // The other thread hashes; it signals when done.
                    drop(self.hashed.wait(lanes).unwrap_or_else(|e| e.into_inner()));
                    continue;
                }
            }
            self.work_on(Some(lane));
        }
    }

    /// Hashes whatever is pending in `lane` and returns its digest; once
    /// the decoder thread has ended.
    fn finish(&self, lane: usize) -> Option<Sha256Digest> {
        while self.work_on(Some(lane)) {}
        let mut lanes = self.lock();
        if !lanes[lane].pending.is_empty() {
            return None;
        }
        lanes[lane].hasher.take().map(Hasher::finish)
    }
}

/// The decoding thread of [`run_threaded`]: reads the blob (its chunks
/// queued for the blob hash), decompresses it, queues each tar chunk for
/// the DiffID hash and sends it to the extractor, hashing while the
/// extractor is behind.
fn decode_stage(
    input: RawInput,
    compression: Compression,
    share: &HashShare,
    hash_tar: bool,
    to_apply: &SyncSender<Msg<Arc<Vec<u8>>>>,
    recycled: &Receiver<Vec<u8>>,
) -> Result<(), StreamError> {
    let mut decoder = Decoder::new(input, compression)?;
    loop {
        if hash_tar {
            share.bound(TAR);
        }
        let mut chunk = recycled.try_recv().unwrap_or_default();
        match fill(&mut decoder, &mut chunk) {
            Ok(0) => return decoder.end(Ok(())),
            Ok(_) => {
                let chunk = Arc::new(chunk);
                if hash_tar {
                    share.push(TAR, chunk.clone());
                }
                send_helping(to_apply, Msg::Data(chunk), share).map_err(|()| stage_gone())?;
            }
            Err(e) => return decoder.end(Err(e)),
        }
    }
}

/// Sends `msg` to the extractor; while the channel is full, hashes pending
/// chunks instead of blocking. `Err` when the extractor is gone.
fn send_helping(
    to_apply: &SyncSender<Msg<Arc<Vec<u8>>>>,
    mut msg: Msg<Arc<Vec<u8>>>,
    share: &HashShare,
) -> Result<(), ()> {
    // Counted before the send, so the extractor never sees it negative.
    share.queued.fetch_add(1, Ordering::Relaxed);
    loop {
        match to_apply.try_send(msg) {
            Ok(()) => {
                // Well ahead of the extractor: hash while it catches up.
                while share.queued.load(Ordering::Relaxed) >= HIGH && share.work() {}
                return Ok(());
            }
            Err(TrySendError::Full(m)) => {
                if share.work() {
                    msg = m;
                    continue;
                }
                return to_apply.send(m).map_err(|_| ());
            }
            Err(TrySendError::Disconnected(_)) => return Err(()),
        }
    }
}

/// Two threads: reading and decompressing in one, extraction in the
/// calling thread, the blob and DiffID hashes shared between them.
fn run_threaded(
    raw: BlobReader,
    expect: Option<(Sha256Digest, u64)>,
    compression: Compression,
    hash_tar: bool,
    rootfs: &Rootfs,
    cancel: Option<Cancel>,
) -> io::Result<Outcome> {
    let (tar_back, tar_recycled) = sync_channel(2 * DEPTH + MAX_PENDING + 2);
    let (blob_back, blob_recycled) = sync_channel(MAX_PENDING + 2);
    let share = Arc::new(HashShare::new([blob_back, tar_back.clone()]));
    let (tx, rx) = sync_channel(DEPTH);
    let dec_share = share.clone();
    let dec_expect = expect.clone();
    let decoder = spawn("layer-decode", move || {
        let hash = BlobHash::Shared(dec_share.clone(), blob_recycled);
        let input = RawInput::new(raw, dec_expect, hash, cancel);
        let res = decode_stage(input, compression, &dec_share, hash_tar, &tx, &tar_recycled);
        let _ = send_helping(&tx, Msg::End(res), &dec_share);
        // Nothing left to decode: help with the hashes until they are done.
        while dec_share.work() {}
    })?;
    let mut stream = ChannelReader {
        rx,
        back: tar_back,
        share: share.clone(),
        cur: Arc::new(Vec::new()),
        pos: 0,
        end: None,
        tail: ZeroTail::new(),
        direct: DirectSink::default(),
    };
    let real_end = Some(stream.tail.real_end.clone());
    let direct = Some(stream.direct.clone());
    let applied = rootfs.apply_layer_stream(&mut stream, real_end, direct);
    // On success, read to the end (trailing bytes count toward the DiffID).
    // On failure too: a damaged blob can reach the tar parser as garbage
    // before the decompressor or the digest notices, and the stream's
    // verdict then explains the failure better than the tar error.
    let end = stream.finish();
    drop(stream);
    // Once the decoding thread is gone, no one else holds the hashes.
    let _ = decoder.join();
    let blob_check = match (&expect, share.finish(BLOB)) {
        (None, _) => Ok(()),
        (Some((want, _)), Some(actual)) if actual == *want => Ok(()),
        (Some((want, _)), Some(actual)) => Err(StreamError::Digest(DigestError::Mismatch {
            digest: want.to_string(),
            actual: actual.to_string(),
        })),
        (Some(_), None) => Err(stage_gone()),
    };
    let diff_id = if hash_tar {
        share.finish(TAR).map(Some).ok_or_else(stage_gone)
    } else {
        Ok(None)
    };
    // The same precedence as a blob verified while read (inline): size
    // and read errors, then the digest, then the decompressor's error.
    let verdict = match end {
        Err(e @ (StreamError::Digest(_) | StreamError::Read(_) | StreamError::Cancelled)) => Err(e),
        other => blob_check.and(other),
    };
    Ok((applied, verdict.and(diff_id)))
}

/// Unpacks one layer of `image` into `rootfs`, verifying the blob and its
/// DiffID on the way, with the default [`LayerOptions`].
pub fn unpack_layer(
    image: &Image,
    layer: &Layer,
    rootfs: &Rootfs,
) -> Result<LayerStats, LayerError> {
    unpack_layer_with(image, layer, rootfs, &LayerOptions::default())
}

/// Unpacks one layer of `image` into `rootfs`: the blob's size and sha256
/// are always checked while it streams, its DiffID as `opts.diff_id` says.
pub fn unpack_layer_with(
    image: &Image,
    layer: &Layer,
    rootfs: &Rootfs,
    opts: &LayerOptions,
) -> Result<LayerStats, LayerError> {
    let blob = layer.name();
    // Verified here, as it is read: size and sha256.
    let raw = image.open_layer_unverified(layer)?;
    let expect = layer.digest.clone().map(|d| (d, layer.size));
    let compression = layer.compression;
    let hash = opts.diff_id == DiffIdCheck::Verify || layer.digest.is_none();
    let (applied, stream) = if opts.execution.inline() {
        run_inline(raw, expect, compression, hash, rootfs, opts.cancel)
    } else {
        run_threaded(raw, expect, compression, hash, rootfs, opts.cancel).map_err(|source| {
            LayerError::Thread {
                image: image.name.clone(),
                blob: blob.clone(),
                source,
            }
        })?
    };
    // The stream's verdict first: it explains a tar error caused by a
    // damaged blob better than the tar error.
    let diff_id = stream.map_err(|e| match e {
        StreamError::Digest(source) => LayerError::Blob {
            image: image.name.clone(),
            blob: blob.clone(),
            source,
        },
        StreamError::Decode(source) => LayerError::Corrupt {
            image: image.name.clone(),
            blob: blob.clone(),
            compression,
            source,
        },
        StreamError::Window(window) => LayerError::ZstdWindow {
            image: image.name.clone(),
            blob: blob.clone(),
            window,
        },
        StreamError::Read(source) => LayerError::Read {
            image: image.name.clone(),
            blob: blob.clone(),
            source,
        },
        StreamError::Cancelled => LayerError::Cancelled {
            image: image.name.clone(),
            blob: blob.clone(),
        },
    })?;
    let stats = applied.map_err(|source| LayerError::Apply {
        image: image.name.clone(),
        blob: blob.clone(),
        source,
    })?;
    if let Some(diff_id) = diff_id
        && diff_id != layer.diff_id
    {
        return Err(LayerError::DiffId {
            image: image.name.clone(),
            blob,
            expected: layer.diff_id.to_string(),
            actual: diff_id.to_string(),
        });
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared DiffID hash sees every chunk once, in order, whichever
    /// thread hashes it, with the queue kept bounded.
    #[test]
    fn shared_hash_in_order() {
        let chunks: Vec<Vec<u8>> = (0..200u32)
            .map(|i| (0..(i * 37 % 5000 + 1)).map(|j| (i ^ j) as u8).collect())
            .collect();
        let mut want = Hasher::default();
        chunks.iter().for_each(|c| want.update(c));
        let mut want_rev = Hasher::default();
        chunks.iter().rev().for_each(|c| want_rev.update(c));
        let (back, _recycled) = sync_channel(4);
        let share = Arc::new(HashShare::new([back.clone(), back]));
        let producer = {
            let (share, chunks) = (share.clone(), chunks.clone());
            thread::spawn(move || {
                for (i, c) in chunks.into_iter().enumerate() {
                    let c = Arc::new(c);
                    share.bound(TAR);
                    share.bound(BLOB);
                    assert!(share.lock().iter().all(|l| l.pending.len() < MAX_PENDING));
                    share.push(TAR, c.clone());
                    share.push(BLOB, c);
                    if i % 3 == 0 {
                        share.work();
                    }
                }
            })
        };
        while !producer.is_finished() {
            share.work();
        }
        producer.join().unwrap();
        let want = want.finish();
        assert_ne!(want, want_rev.finish());
        assert_eq!(share.finish(TAR), Some(want.clone()));
        assert_eq!(share.finish(BLOB), Some(want));
    }

    #[test]
    fn zstd_frame_header_window() {
        let magic = [0x28, 0xb5, 0x2f, 0xfd];
        let frame = |rest: &[u8]| [&magic[..], rest].concat();
        // Window_Descriptor 0x88: exponent 17 (2^27), mantissa 0.
        assert_eq!(zstd_first_window(&frame(&[0x00, 0x88])), Some(1 << 27));
        // Exponent 20 (2^30), mantissa 1: 2^30 + 2^27.
        assert_eq!(
            zstd_first_window(&frame(&[0x00, 0xa1])),
            Some((1 << 30) + (1 << 27))
        );
        // Single segment with a 4-byte content size after a 1-byte dict id.
        let fcs = 300_000_000u32.to_le_bytes();
        let single = frame(&[0xa1, 7, fcs[0], fcs[1], fcs[2], fcs[3]]);
        assert_eq!(zstd_first_window(&single), Some(300_000_000));
        // Single segment, 2-byte content size (stored minus 256).
        assert_eq!(zstd_first_window(&frame(&[0x60, 0x00, 0x01])), Some(512));
        // A skippable frame first (zstd:chunked).
        let skip = [
            &[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3][..],
            &frame(&[0x00, 0x88]),
        ]
        .concat();
        assert_eq!(zstd_first_window(&skip), Some(1 << 27));
        // Cut short, or not zstd.
        assert_eq!(zstd_first_window(&frame(&[0x00])), None);
        assert_eq!(zstd_first_window(&skip[..12]), None);
        assert_eq!(zstd_first_window(b"ustar"), None);
    }

    #[test]
    fn sniff_table() {
        assert_eq!(sniff(&[0x1f, 0x8b, 0x08, 0]), Compression::Gzip);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(sniff(&[0x50, 0x2a, 0x4d, 0x18]), Compression::Zstd);
        assert_eq!(sniff(&[0x5f, 0x2a, 0x4d, 0x18]), Compression::Zstd);
        assert_eq!(sniff(b"ustar"), Compression::None);
        assert_eq!(sniff(b""), Compression::None);
    }
}
