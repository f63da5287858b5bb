//! Streaming a layer blob into a root directory: read and verify the blob
//! (size and sha256), decompress, hash the tar (DiffID) and extract, all in
//! one pass, as a pipeline of four threads joined by small channels of
//! 1 MiB buffers:
//!
//! ```text
//! reader (read + size/sha256 of the blob) → decoder (gzip/zstd)
//!     → hasher (sha256 of the tar: DiffID)
//!     → extractor (tar parsing + filesystem, the calling thread)
//! ```
//!
//! Each stage is CPU work of a different kind; split this way they overlap
//! on any number of cores (on two cores the scheduler balances four small
//! stages better than two big ones), and nothing is read twice.

use std::cell::Cell;
use std::io::{self, BufRead, Read};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread;

use crate::apply::{ApplyError, LayerStats, Rootfs};
use crate::digest::{DigestError, Hasher, digest_error};
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
    #[error("{image}: layer {blob}: start reader thread")]
    Thread {
        image: String,
        blob: String,
        #[source]
        source: io::Error,
    },
}

const CHUNK: usize = 1 << 20;
const DEPTH: usize = 4;

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
    Read(io::Error),
}

fn classify(err: io::Error, decoding: bool) -> StreamError {
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

/// Stage 1: the raw blob, verified by size and digest as it is read (the
/// verifying reader checks both at end of stream), in chunks.
fn read_stage(mut raw: BlobReader, tx: SyncSender<Msg<Vec<u8>>>, back: Receiver<Vec<u8>>) {
    let res = loop {
        let mut chunk = back.try_recv().unwrap_or_default();
        match fill(&mut raw, &mut chunk) {
            Ok(0) => break Ok(()),
            Ok(_) => {
                if tx.send(Msg::Data(chunk)).is_err() {
                    return;
                }
            }
            Err(e) => break Err(classify(e, false)),
        }
    };
    let _ = tx.send(Msg::End(res));
}

/// The decoder's input: the reader stage's chunks, as a `BufRead` so the
/// decompressors read them in place.
struct ChunkInput {
    rx: Receiver<Msg<Vec<u8>>>,
    back: SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    end: Option<Result<(), StreamError>>,
}

impl ChunkInput {
    fn next(&mut self) -> io::Result<bool> {
        while self.pos >= self.cur.len() {
            if let Some(end) = &self.end {
                return match end {
                    Ok(()) => Ok(false),
                    // The typed error stays in `end` for the decoder stage.
                    Err(_) => Err(io::Error::other("blob read failed")),
                };
            }
            match self.rx.recv() {
                Ok(Msg::Data(chunk)) => {
                    let spent = std::mem::replace(&mut self.cur, chunk);
                    self.pos = 0;
                    let _ = self.back.try_send(spent);
                }
                Ok(Msg::End(res)) => self.end = Some(res),
                Err(_) => self.end = Some(Err(stage_gone())),
            }
        }
        Ok(true)
    }

    /// Reads to the end: the reader stage then has checked size and
    /// digest. Returns its verdict.
    fn drain(&mut self) -> Result<(), StreamError> {
        self.pos = self.cur.len();
        while self.end.is_none() {
            match self.rx.recv() {
                Ok(Msg::Data(chunk)) => {
                    let _ = self.back.try_send(chunk);
                }
                Ok(Msg::End(res)) => self.end = Some(res),
                Err(_) => self.end = Some(Err(stage_gone())),
            }
        }
        self.end.take().unwrap_or(Ok(()))
    }
}

impl Read for ChunkInput {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for ChunkInput {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if !self.next()? {
            return Ok(&[]);
        }
        Ok(&self.cur[self.pos..])
    }
    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.cur.len());
    }
}

/// The decompressor of a layer stream, which can give its input back.
/// One lives per layer, so the size of the gzip state does not matter.
#[allow(clippy::large_enum_variant)]
enum Decoder {
    Plain(ChunkInput),
    Gzip(flate2::bufread::MultiGzDecoder<ChunkInput>),
    Zstd(zstd::stream::read::Decoder<'static, ChunkInput>),
}

impl Decoder {
    fn into_inner(self) -> ChunkInput {
        match self {
            Decoder::Plain(r) => r,
            Decoder::Gzip(d) => d.into_inner(),
            Decoder::Zstd(d) => d.finish(),
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

/// Stage 2: decompression. Sends each tar chunk to the hasher and the
/// extractor.
fn decode_stage(
    input: ChunkInput,
    compression: Compression,
    to_hash: SyncSender<Arc<Vec<u8>>>,
    to_apply: SyncSender<Msg<Arc<Vec<u8>>>>,
    recycled: Receiver<Vec<u8>>,
) {
    let res = decode(input, compression, &to_hash, &to_apply, &recycled);
    // Dropping `to_hash` ends the hasher; the extractor gets the verdict.
    drop(to_hash);
    let _ = to_apply.send(Msg::End(res));
}

fn decode(
    mut owned: ChunkInput,
    compression: Compression,
    to_hash: &SyncSender<Arc<Vec<u8>>>,
    to_apply: &SyncSender<Msg<Arc<Vec<u8>>>>,
    recycled: &Receiver<Vec<u8>>,
) -> Result<(), StreamError> {
    let compression = match compression {
        Compression::Sniff => match owned.fill_buf() {
            Ok(head) => sniff(head),
            Err(_) => return Err(owned.drain().err().unwrap_or_else(stage_gone)),
        },
        c => c,
    };
    let decoding = matches!(compression, Compression::Gzip | Compression::Zstd);
    let mut decoder = match compression {
        Compression::None | Compression::Sniff => Decoder::Plain(owned),
        // Multi-member gzip is valid (RFC 1952); GzDecoder would stop after
        // the first member.
        Compression::Gzip => Decoder::Gzip(flate2::bufread::MultiGzDecoder::new(owned)),
        Compression::Zstd => Decoder::Zstd(
            zstd::stream::read::Decoder::with_buffer(owned).map_err(StreamError::Decode)?,
        ),
    };
    loop {
        let mut chunk = recycled.try_recv().unwrap_or_default();
        match fill(&mut decoder, &mut chunk) {
            Ok(0) => break,
            Ok(_) => {
                let chunk = Arc::new(chunk);
                if to_hash.send(chunk.clone()).is_err() || to_apply.send(Msg::Data(chunk)).is_err()
                {
                    return Err(stage_gone());
                }
            }
            Err(e) => {
                // A blob read failure (digest, size, I/O) surfaces here as
                // a decoder error; and a damaged blob usually breaks the
                // decompressor before its digest is known. Either way, read
                // to the end and prefer the reader stage's verdict, the
                // more precise error.
                let mut input = decoder.into_inner();
                return Err(match input.drain() {
                    Err(root) => root,
                    Ok(()) => classify(e, decoding),
                });
            }
        }
    }
    // The decompressor may stop at the end of its last frame: drain the
    // blob so the reader stage sees its end and checks size and digest.
    decoder.into_inner().drain()
}

/// The extractor's input: the decoder's tar chunks.
struct ChannelReader {
    rx: Receiver<Msg<Arc<Vec<u8>>>>,
    back: SyncSender<Vec<u8>>,
    cur: Arc<Vec<u8>>,
    pos: usize,
    end: Option<Result<(), StreamError>>,
    /// Bytes of real stream handed out so far.
    delivered: u64,
    /// Zero bytes still to hand out after the real stream ended.
    tail: Option<u64>,
    /// Set to the real stream length when the zero tail starts.
    real_end: Rc<Cell<Option<u64>>>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.cur.len() {
                let n = buf.len().min(self.cur.len() - self.pos);
                buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
                self.pos += n;
                self.delivered += n as u64;
                return Ok(n);
            }
            if let Some(end) = &self.end {
                if end.is_err() {
                    return Err(io::Error::other("layer stream failed"));
                }
                // umoci 0.4.7 writes layers that stop right after the last
                // entry's data: no padding to 512 bytes and no end-of-archive
                // blocks (GNU tar rejects them, umoci reads them). Such an
                // end reads as zeros here, enough to finish the block and
                // end the archive. The DiffID covers the real bytes only, and
                // `apply` refuses file data that reaches into the zeros.
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
                return Ok(n);
            }
            match self.rx.recv() {
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
    /// Reads to the end of the stream (bytes after the tar's end-of-archive
    /// marker count toward the DiffID, as in umoci) and returns the verdict
    /// of the earlier stages.
    fn finish(&mut self) -> Result<(), StreamError> {
        self.pos = self.cur.len();
        while self.end.is_none() {
            match self.rx.recv() {
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
/// extractor) is done with it, saving an allocation and a 1 MiB memset.
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

/// Unpacks one layer of `image` into `rootfs`, verifying the blob and its
/// DiffID on the way.
pub fn unpack_layer(
    image: &Image,
    layer: &Layer,
    rootfs: &Rootfs,
) -> Result<LayerStats, LayerError> {
    let blob = layer
        .digest
        .as_ref()
        .map_or_else(|| layer.diff_id.to_string(), |d| d.to_string());
    let thread_err = |source| LayerError::Thread {
        image: image.name.clone(),
        blob: blob.clone(),
        source,
    };
    let raw = image.open_layer(layer)?;
    let compression = layer.compression;

    let (raw_tx, raw_rx) = sync_channel(DEPTH);
    let (back_tx, back_rx) = sync_channel(DEPTH + 2);
    let reader =
        spawn("layer-read", move || read_stage(raw, raw_tx, back_rx)).map_err(thread_err)?;
    let input = ChunkInput {
        rx: raw_rx,
        back: back_tx,
        cur: Vec::new(),
        pos: 0,
        end: None,
    };
    let (hash_tx, hash_rx) = sync_channel::<Arc<Vec<u8>>>(DEPTH);
    let (recycle_tx, recycle_rx) = sync_channel(2 * DEPTH + 2);
    let hash_back = recycle_tx.clone();
    let hasher = spawn("layer-hash", move || {
        let mut h = Hasher::default();
        for chunk in hash_rx {
            h.update(&chunk);
            give_back(chunk, &hash_back);
        }
        h.finish()
    })
    .map_err(thread_err)?;
    let (tx, rx) = sync_channel(DEPTH);
    let decoder = spawn("layer-decode", move || {
        decode_stage(input, compression, hash_tx, tx, recycle_rx)
    })
    .map_err(thread_err)?;

    let mut reader_end = ChannelReader {
        rx,
        back: recycle_tx,
        cur: Arc::new(Vec::new()),
        pos: 0,
        end: None,
        delivered: 0,
        tail: None,
        real_end: Rc::new(Cell::new(None)),
    };
    let real_end = Some(reader_end.real_end.clone());
    let applied = rootfs.apply_layer_stream(&mut reader_end, real_end);
    // On success, read to the end (trailing bytes count toward the DiffID).
    // On failure too: a damaged blob can reach the tar parser as garbage
    // before the decompressor or the digest notices, and the stream's
    // verdict then explains the failure better than the tar error.
    let stream = reader_end.finish();
    drop(reader_end);
    let _ = decoder.join();
    let _ = reader.join();
    let diff_id = hasher.join().ok();
    let stream_err = |e: StreamError| match e {
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
        StreamError::Read(source) => LayerError::Read {
            image: image.name.clone(),
            blob: blob.clone(),
            source,
        },
    };
    stream.map_err(stream_err)?;
    let stats = applied.map_err(|source| LayerError::Apply {
        image: image.name.clone(),
        blob: blob.clone(),
        source,
    })?;
    let Some(diff_id) = diff_id else {
        return Err(stream_err(stage_gone()));
    };
    if diff_id != layer.diff_id {
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
