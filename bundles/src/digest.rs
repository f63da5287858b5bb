//! Content digests: validation of the `algorithm:encoded` grammar and a reader
//! that checks size and sha256 while a blob streams through it.

use std::fmt;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

/// Errors of digest parsing and blob verification.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DigestError {
    #[error("invalid digest {digest:?}: expected sha256 followed by 64 lower-case hex digits")]
    Invalid { digest: String },
    #[error("unsupported digest algorithm in {digest:?}: only sha256 is supported")]
    UnsupportedAlgorithm { digest: String },
    #[error("blob {digest} is larger than its descriptor size {expected}")]
    TooLarge { digest: String, expected: u64 },
    #[error("blob {digest} is truncated: read {actual} bytes, descriptor size is {expected}")]
    Truncated {
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("blob {digest} does not match its digest: content hashes to {actual}")]
    Mismatch { digest: String, actual: String },
}

/// A validated sha256 digest. Only constructed by [`Sha256Digest::parse`],
/// so its hex part is always safe to use as a file name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest {
    hex: String,
}

impl Sha256Digest {
    /// Parses `sha256:<64 lower-case hex>`; anything else is refused, so a
    /// digest like `sha256:../../x` never becomes a path.
    pub fn parse(text: &str) -> Result<Self, DigestError> {
        let Some((alg, enc)) = text.split_once(':') else {
            return Err(DigestError::Invalid {
                digest: text.to_string(),
            });
        };
        if alg != "sha256" {
            let alg_ok = !alg.is_empty()
                && alg
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
            return Err(if alg_ok {
                DigestError::UnsupportedAlgorithm {
                    digest: text.to_string(),
                }
            } else {
                DigestError::Invalid {
                    digest: text.to_string(),
                }
            });
        }
        if enc.len() != 64
            || !enc
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DigestError::Invalid {
                digest: text.to_string(),
            });
        }
        Ok(Self {
            hex: enc.to_string(),
        })
    }

    /// Digest of a byte string.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    fn from_hasher(hasher: Sha256) -> Self {
        let out = hasher.finalize();
        let mut hex = String::with_capacity(64);
        for b in out.iter() {
            hex.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            hex.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        Self { hex }
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Incremental sha256 with a byte count.
#[derive(Clone, Default)]
pub struct Hasher {
    inner: Sha256,
    count: u64,
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
        self.count += bytes.len() as u64;
    }
    pub fn count(&self) -> u64 {
        self.count
    }
    pub fn finish(self) -> Sha256Digest {
        Sha256Digest::from_hasher(self.inner)
    }
}

/// Reads a blob while checking it against its descriptor: never more than
/// `size` bytes, and at end of stream the exact size and the sha256. A
/// failure is returned as an `io::Error` of kind `InvalidData` whose inner
/// error is the [`DigestError`], so callers can recover it.
pub struct VerifyingReader<R> {
    inner: R,
    digest: Sha256Digest,
    size: Option<u64>,
    hasher: Hasher,
    done: bool,
}

impl<R: Read> VerifyingReader<R> {
    /// `size` is the descriptor's size; `None` where the format has none
    /// (docker-archive config files).
    pub fn new(inner: R, digest: Sha256Digest, size: Option<u64>) -> Self {
        Self {
            inner,
            digest,
            size,
            hasher: Hasher::default(),
            done: false,
        }
    }

    fn fail(err: DigestError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, err)
    }

    fn check_end(&mut self) -> Result<(), DigestError> {
        let count = self.hasher.count();
        if let Some(expected) = self.size
            && count != expected
        {
            return Err(DigestError::Truncated {
                digest: self.digest.to_string(),
                expected,
                actual: count,
            });
        }
        let actual = std::mem::take(&mut self.hasher).finish();
        if actual != self.digest {
            return Err(DigestError::Mismatch {
                digest: self.digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(())
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        // Read one byte past the declared size at most, to detect an
        // oversized blob without trusting the descriptor for allocation.
        let limit = match self.size {
            Some(size) => {
                let left = size.saturating_sub(self.hasher.count()) + 1;
                buf.len().min(usize::try_from(left).unwrap_or(usize::MAX))
            }
            None => buf.len(),
        };
        let n = self.inner.read(&mut buf[..limit])?;
        if n == 0 {
            self.done = true;
            self.check_end().map_err(Self::fail)?;
            return Ok(0);
        }
        self.hasher.update(&buf[..n]);
        if let Some(size) = self.size
            && self.hasher.count() > size
        {
            self.done = true;
            return Err(Self::fail(DigestError::TooLarge {
                digest: self.digest.to_string(),
                expected: size,
            }));
        }
        Ok(n)
    }
}

/// Recovers a [`DigestError`] carried inside an `io::Error`, if any.
pub fn digest_error(err: &io::Error) -> Option<DigestError> {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<DigestError>())
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parse_table() {
        let cases: &[(&str, bool)] = &[
            (EMPTY, true),
            ("sha256:../../etc/passwd", false),
            (
                "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
                false,
            ),
            ("sha256:e3b0", false),
            ("sha256", false),
            ("", false),
            ("sha512:abcd", false),
            (
                "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85/",
                false,
            ),
        ];
        for (text, ok) in cases {
            assert_eq!(Sha256Digest::parse(text).is_ok(), *ok, "{text}");
        }
        assert!(matches!(
            Sha256Digest::parse("sha512:abcd"),
            Err(DigestError::UnsupportedAlgorithm { .. })
        ));
        assert_eq!(Sha256Digest::of(b"").to_string(), EMPTY);
    }

    fn read_all(
        data: &[u8],
        digest: &Sha256Digest,
        size: Option<u64>,
    ) -> Result<Vec<u8>, DigestError> {
        let mut r = VerifyingReader::new(data, digest.clone(), size);
        let mut out = Vec::new();
        r.read_to_end(&mut out)
            .map_err(|e| digest_error(&e).unwrap())?;
        Ok(out)
    }

    #[test]
    fn verifying_reader_checks_size_and_digest() {
        let data = b"hello world".to_vec();
        let d = Sha256Digest::of(&data);
        assert_eq!(read_all(&data, &d, Some(11)).unwrap(), data);
        assert_eq!(read_all(&data, &d, None).unwrap(), data);
        assert!(matches!(
            read_all(&data, &d, Some(12)),
            Err(DigestError::Truncated { .. })
        ));
        assert!(matches!(
            read_all(&data, &d, Some(5)),
            Err(DigestError::TooLarge { .. })
        ));
        let other = Sha256Digest::of(b"x");
        assert!(matches!(
            read_all(&data, &other, Some(11)),
            Err(DigestError::Mismatch { .. })
        ));
    }
}
