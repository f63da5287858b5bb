//! How a berth-init binary names itself. `--version` prints [`IDENTITY`],
//! one piece of text the binary therefore holds as written; berth-build
//! finds it in the file given as `--init` ([`find_identity`]) to tell
//! berth-init from any other static program (busybox's init would boot
//! and ignore the manifest) and to learn which manifest format it reads.

use crate::manifest;

/// `berth-init VERSION (reads manifest version N)`. N is
/// [`manifest::VERSION`]; `concat!` needs a literal, a test keeps the two
/// in step.
pub const IDENTITY: &str = concat!(
    "berth-init ",
    env!("CARGO_PKG_VERSION"),
    " (reads manifest version 1)"
);

const HEAD: &[u8] = b"berth-init ";
const MIDDLE: &[u8] = b" (reads manifest version ";
/// A crate version is short; anything longer is not an identity.
const MAX_VERSION: usize = 64;

/// What a binary's identity says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// berth-init's crate version, e.g. `0.1.0`.
    pub version: String,
    /// The manifest format version it reads.
    pub manifest_version: u32,
}

/// The first well-formed identity in `binary`, if any.
pub fn find_identity(binary: &[u8]) -> Option<Identity> {
    let mut from = 0;
    while let Some(at) = find(binary.get(from..)?, HEAD) {
        let start = from + at + HEAD.len();
        if let Some(id) = binary.get(start..).and_then(parse_rest) {
            return Some(id);
        }
        from = start;
    }
    None
}

/// Parses `VERSION (reads manifest version N)` at the start of `rest`.
fn parse_rest(rest: &[u8]) -> Option<Identity> {
    let len = rest
        .iter()
        .take(MAX_VERSION + 1)
        .position(|b| !(b.is_ascii_alphanumeric() || b".+-".contains(b)))?;
    let version = rest.get(..len).filter(|v| !v.is_empty())?;
    let after = rest.get(len..)?.strip_prefix(MIDDLE)?;
    let digits = after.iter().take_while(|b| b.is_ascii_digit()).count();
    if after.get(digits) != Some(&b')') {
        return None;
    }
    let manifest_version = std::str::from_utf8(after.get(..digits)?)
        .ok()?
        .parse()
        .ok()?;
    Some(Identity {
        version: String::from_utf8_lossy(version).into_owned(),
        manifest_version,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The identity of this build, as [`find_identity`] reads it back.
pub fn own() -> Identity {
    Identity {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        manifest_version: manifest::VERSION,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_names_the_manifest_version_this_build_reads() {
        assert_eq!(find_identity(IDENTITY.as_bytes()), Some(own()));
    }

    #[test]
    fn found_among_other_bytes_and_only_when_whole() {
        let mut bin = b"\x7fELF\0berth-init \0berth-init 9.9 (reads manifest".to_vec();
        bin.extend_from_slice(b"\0berth-init 1.2.3-rc.1 (reads manifest version 2)\0tail");
        assert_eq!(
            find_identity(&bin),
            Some(Identity {
                version: "1.2.3-rc.1".into(),
                manifest_version: 2
            })
        );
        for partial in [
            &b"berth-init"[..],
            b"berth-init  (reads manifest version 1)",
            b"berth-init 0.1.0 (reads manifest version )",
            b"berth-init 0.1.0 (reads manifest version 1",
            b"berth-init 0.1.0 (reads manifest version 1x)",
            b"berth-init 0.1.0 (reads manifest version 99999999999)",
            b"busybox init",
            b"",
        ] {
            assert_eq!(
                find_identity(partial),
                None,
                "{:?}",
                String::from_utf8_lossy(partial)
            );
        }
        let long = format!("berth-init {} (reads manifest version 1)", "1".repeat(65));
        assert_eq!(find_identity(long.as_bytes()), None);
    }
}
