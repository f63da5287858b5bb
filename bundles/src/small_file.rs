//! Whole-file reads with a size cap, for the JSON documents and programs
//! the tools read from paths they are given or find in a layout: a path that
//! is `/dev/zero`, a FIFO or a runaway file must end in an error, not fill
//! the memory or block forever (PID 1 reads `index.json` at every boot).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// What a path may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Regular files only, opened without blocking (a FIFO never waits for
    /// a writer): for files found in a layout or a bundle.
    Regular,
    /// Anything readable, pipes included (`<(command)`): for a file the
    /// user names on the command line.
    Any,
}

/// Opens `path` for reading if it is a regular file, without blocking on
/// the way (a FIFO never waits for a writer), and returns its size.
pub fn open_regular(path: &Path) -> io::Result<(File, u64)> {
    let flags = rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY;
    let file = File::options()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok((file, meta.len()))
}

/// Reads the whole of `path`, refusing more than `max` bytes.
pub fn read_small_file(path: &Path, max: u64, accept: Accept) -> io::Result<Vec<u8>> {
    let (file, len) = match accept {
        Accept::Regular => open_regular(path)?,
        Accept::Any => {
            let file = File::open(path)?;
            let len = file.metadata()?.len();
            (file, len)
        }
    };
    let mut bytes = Vec::with_capacity(len.min(max) as usize);
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_sizes_and_refuses_what_is_not_a_file() {
        let dir = std::env::temp_dir().join(format!("berth-small-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f");
        std::fs::write(&file, b"0123456789").unwrap();
        assert_eq!(
            read_small_file(&file, 10, Accept::Regular).unwrap(),
            b"0123456789"
        );
        let err = read_small_file(&file, 9, Accept::Any).unwrap_err();
        assert_eq!(err.to_string(), "larger than 9 bytes");
        // An endless device ends at the cap.
        let err = read_small_file(Path::new("/dev/zero"), 1 << 20, Accept::Any).unwrap_err();
        assert_eq!(err.to_string(), "larger than 1048576 bytes");
        let err = read_small_file(Path::new("/dev/zero"), 1 << 20, Accept::Regular).unwrap_err();
        assert_eq!(err.to_string(), "not a regular file");
        // A FIFO without a writer: refused at once, not waited on.
        let fifo = dir.join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from(0o600),
            0,
        )
        .unwrap();
        let err = read_small_file(&fifo, 10, Accept::Regular).unwrap_err();
        assert_eq!(err.to_string(), "not a regular file");
        let err = read_small_file(&dir, 10, Accept::Regular).unwrap_err();
        assert_eq!(err.to_string(), "not a regular file");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
