//! Streaming a layer blob into a root directory: read and verify the blob
//! (size and sha256), decompress, hash the tar (DiffID) and extract, all in
//! one pass. Reading, verification and decompression run on their own
//! thread, pipelined through a small channel of large buffers into the
//! extracting thread, so the CPU work overlaps the filesystem work.

use std::cell::Cell;
use std::io::{self, BufRead, BufReader, Read};
use std::rc::Rc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread;

use crate::apply::{ApplyError, LayerStats, Rootfs};
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

/// What the reader thread sends.
enum Msg {
    Data(Vec<u8>),
    /// End of the uncompressed stream, or why it broke.
    End(Result<(), StreamError>),
}

/// A failure on the reader thread, classified for the message.
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

/// The extracting side of the pipeline.
struct ChannelReader {
    rx: Receiver<Msg>,
    back: SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    end: Option<Result<(), StreamError>>,
    /// The DiffID, hashed here on the extracting thread so the reader
    /// thread only reads, verifies and decompresses: the two threads then
    /// carry similar loads on a two-core machine.
    hasher: Hasher,
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
                // end the archive. The DiffID covers the real bytes only, so
                // nothing unverified is added; an entry cut short by more
                // than its padding still fails as truncated.
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
                    self.hasher.update(&chunk);
                    let spent = std::mem::replace(&mut self.cur, chunk);
                    self.pos = 0;
                    // Hand the buffer back for reuse; if the reader is gone,
                    // drop it.
                    let _ = self.back.try_send(spent);
                }
                Ok(Msg::End(res)) => self.end = Some(res),
                Err(_) => {
                    self.end = Some(Err(StreamError::Read(io::Error::other(
                        "reader thread ended early",
                    ))));
                }
            }
        }
    }
}

impl ChannelReader {
    /// Reads to the end of the stream (bytes after the tar's end-of-archive
    /// marker count toward the DiffID, as in umoci) and returns the DiffID.
    fn finish(&mut self) -> Result<Sha256Digest, StreamError> {
        self.pos = self.cur.len();
        while self.end.is_none() {
            match self.rx.recv() {
                Ok(Msg::Data(chunk)) => {
                    self.hasher.update(&chunk);
                    if chunk.iter().any(|b| *b != 0) {
                        log::debug!("ignoring trailing bytes after the end of a layer tar");
                    }
                    let _ = self.back.try_send(chunk);
                }
                Ok(Msg::End(res)) => self.end = Some(res),
                Err(_) => {
                    self.end = Some(Err(StreamError::Read(io::Error::other(
                        "reader thread ended early",
                    ))))
                }
            }
        }
        match self.end.take() {
            Some(res) => res.map(|()| std::mem::take(&mut self.hasher).finish()),
            None => unreachable!("loop ends with end set"),
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

/// Body of the reader thread: raw blob → decompress → hash → chunks.
fn pump(raw: BlobReader, compression: Compression, tx: SyncSender<Msg>, back: Receiver<Vec<u8>>) {
    let res = pump_inner(raw, compression, &tx, &back);
    let _ = tx.send(Msg::End(res));
}

fn pump_inner(
    raw: BlobReader,
    compression: Compression,
    tx: &SyncSender<Msg>,
    back: &Receiver<Vec<u8>>,
) -> Result<(), StreamError> {
    let mut buffered = BufReader::with_capacity(256 << 10, raw);
    let compression = match compression {
        Compression::Sniff => sniff(buffered.fill_buf().map_err(|e| classify(e, false))?),
        c => c,
    };
    let mut decoder = match compression {
        Compression::None | Compression::Sniff => Decoder::Plain(buffered),
        // Multi-member gzip is valid (RFC 1952); GzDecoder would stop after
        // the first member.
        Compression::Gzip => Decoder::Gzip(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Decoder::Zstd(
            zstd::stream::read::Decoder::with_buffer(buffered).map_err(StreamError::Decode)?,
        ),
    };
    let decoding = compression != Compression::None && compression != Compression::Sniff;
    loop {
        let mut chunk = back
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        chunk.resize(CHUNK, 0);
        let mut filled = 0;
        while filled < CHUNK {
            match decoder.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // A damaged blob usually breaks the decompressor before
                    // the digest is known; read the rest so a digest
                    // mismatch, the more precise error, is reported.
                    let first = classify(e, decoding);
                    if matches!(first, StreamError::Decode(_)) {
                        let mut raw = decoder.into_inner();
                        if let Err(e) = io::copy(&mut raw, &mut io::sink())
                            && let Some(d) = digest_error(&e)
                        {
                            return Err(StreamError::Digest(d));
                        }
                    }
                    return Err(first);
                }
            }
        }
        chunk.truncate(filled);
        if filled == 0 {
            break;
        }
        if tx.send(Msg::Data(chunk)).is_err() {
            // The extractor gave up; its error is the one reported.
            return Err(StreamError::Read(io::Error::other("extractor stopped")));
        }
    }
    // The decompressor may stop at the end of its last frame: drain the
    // raw blob so the verifying reader sees its end and checks size and
    // digest in full.
    let mut raw = decoder.into_inner();
    io::copy(&mut raw, &mut io::sink()).map_err(|e| classify(e, false))?;
    Ok(())
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
    let raw = image.open_layer(layer)?;
    let (tx, rx) = sync_channel(DEPTH);
    let (back_tx, back_rx) = sync_channel(DEPTH + 2);
    let compression = layer.compression;
    let handle = thread::Builder::new()
        .name("layer-reader".into())
        .spawn(move || pump(raw, compression, tx, back_rx))
        .map_err(|source| LayerError::Thread {
            image: image.name.clone(),
            blob: blob.clone(),
            source,
        })?;
    let mut reader = ChannelReader {
        rx,
        back: back_tx,
        cur: Vec::new(),
        pos: 0,
        end: None,
        hasher: Hasher::default(),
        delivered: 0,
        tail: None,
        real_end: Rc::new(Cell::new(None)),
    };
    let real_end = Some(reader.real_end.clone());
    let applied = rootfs.apply_layer_stream(&mut reader, real_end);
    let stream = match &applied {
        Ok(_) => reader.finish(),
        // A broken stream explains a failed extraction better than the tar
        // error it caused, so it is reported first.
        // A damaged blob can reach the tar parser as garbage before the
        // decompressor or the digest notices; read the stream to its end
        // so such a failure is reported as what it is.
        Err(_) => match reader.finish() {
            Err(e) => Err(e),
            Ok(_) => {
                let _ = handle.join();
                return Err(LayerError::Apply {
                    image: image.name.clone(),
                    blob,
                    source: applied.err().unwrap_or_else(|| unreachable!()),
                });
            }
        },
    };
    let _ = handle.join();
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
    let diff_id = stream.map_err(stream_err)?;
    let stats = applied.map_err(|source| LayerError::Apply {
        image: image.name.clone(),
        blob: blob.clone(),
        source,
    })?;
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

/// The decompressor of a layer stream, which can give its input back.
/// One lives per layer, so the size of the gzip state does not matter.
#[allow(clippy::large_enum_variant)]
enum Decoder {
    Plain(BufReader<BlobReader>),
    Gzip(flate2::bufread::MultiGzDecoder<BufReader<BlobReader>>),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<BlobReader>>),
}

impl Decoder {
    fn into_inner(self) -> BufReader<BlobReader> {
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
