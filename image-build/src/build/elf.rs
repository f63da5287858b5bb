//! Just enough ELF64 reading for two questions: is this binary static (no
//! `PT_INTERP`), and what does a kernel module's `.modinfo` section say.
//!
//! Every offset is bounds-checked, and every sum of offsets checked for
//! overflow: the input is a file given on the command line, so a truncated
//! or hostile file gives an error, never a panic.

/// Why an ELF file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("not a little-endian ELF64 file (class {class}, data {data})")]
    Unsupported { class: u8, data: u8 },
    #[error("truncated: {what} at offset {offset} is past the end ({len} bytes)")]
    Truncated {
        what: &'static str,
        offset: u64,
        len: usize,
    },
}

/// `p_type` of the program header naming the dynamic loader.
const PT_INTERP: u32 = 3;

fn slice<'a>(b: &'a [u8], at: u64, n: u64, what: &'static str) -> Result<&'a [u8], ElfError> {
    let err = || ElfError::Truncated {
        what,
        offset: at,
        len: b.len(),
    };
    let start = usize::try_from(at).map_err(|_| err())?;
    let end = start
        .checked_add(usize::try_from(n).map_err(|_| err())?)
        .ok_or_else(err)?;
    b.get(start..end).ok_or_else(err)
}

fn u16_at(b: &[u8], at: u64, what: &'static str) -> Result<u16, ElfError> {
    let s = slice(b, at, 2, what)?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: u64, what: &'static str) -> Result<u32, ElfError> {
    let s = slice(b, at, 4, what)?;
    let mut a = [0u8; 4];
    a.copy_from_slice(s);
    Ok(u32::from_le_bytes(a))
}

fn u64_at(b: &[u8], at: u64, what: &'static str) -> Result<u64, ElfError> {
    let s = slice(b, at, 8, what)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(u64::from_le_bytes(a))
}

/// The offset of entry `i` of a header table at `table` with entries of
/// `entsize` bytes. The three come from the file: a hostile one can make
/// the sum overflow, which is an error like an offset past the end.
fn table_entry(
    b: &[u8],
    table: u64,
    i: u64,
    entsize: u64,
    what: &'static str,
) -> Result<u64, ElfError> {
    i.checked_mul(entsize)
        .and_then(|off| table.checked_add(off))
        .ok_or(ElfError::Truncated {
            what,
            offset: table,
            len: b.len(),
        })
}

fn check_header(b: &[u8]) -> Result<(), ElfError> {
    if b.len() < 0x40 || &b[..4] != b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    // EI_CLASS 2 = ELF64, EI_DATA 1 = little-endian (x86_64).
    if b[4] != 2 || b[5] != 1 {
        return Err(ElfError::Unsupported {
            class: b[4],
            data: b[5],
        });
    }
    Ok(())
}

/// True when the binary names no program interpreter: static or static-pie.
pub fn is_static(b: &[u8]) -> Result<bool, ElfError> {
    check_header(b)?;
    let phoff = u64_at(b, 0x20, "e_phoff")?;
    let phentsize = u64::from(u16_at(b, 0x36, "e_phentsize")?);
    let phnum = u64::from(u16_at(b, 0x38, "e_phnum")?);
    if phnum == 0 {
        return Err(ElfError::Truncated {
            what: "program headers (none: not an executable)",
            offset: phoff,
            len: b.len(),
        });
    }
    for i in 0..phnum {
        let at = table_entry(b, phoff, i, phentsize, "program header")?;
        if u32_at(b, at, "program header")? == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The contents of the section called `name`, if the file has one.
pub fn section<'a>(b: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, ElfError> {
    check_header(b)?;
    let shoff = u64_at(b, 0x28, "e_shoff")?;
    let shentsize = u64::from(u16_at(b, 0x3a, "e_shentsize")?);
    let shnum = u64::from(u16_at(b, 0x3c, "e_shnum")?);
    let shstrndx = u64::from(u16_at(b, 0x3e, "e_shstrndx")?);
    // Section header fields: sh_name @0 (u32), sh_offset @0x18, sh_size @0x20.
    let header = |i: u64| -> Result<(u32, u64, u64), ElfError> {
        let at = table_entry(b, shoff, i, shentsize, "section header")?;
        let field = |delta: u64| {
            at.checked_add(delta).ok_or(ElfError::Truncated {
                what: "section header",
                offset: at,
                len: b.len(),
            })
        };
        Ok((
            u32_at(b, at, "section header")?,
            u64_at(b, field(0x18)?, "section header")?,
            u64_at(b, field(0x20)?, "section header")?,
        ))
    };
    if shnum == 0 {
        return Ok(None);
    }
    let (_, str_off, str_size) = header(shstrndx)?;
    let names = slice(b, str_off, str_size, "section name table")?;
    for i in 0..shnum {
        let (name_off, off, size) = header(i)?;
        let Some(rest) = names.get(name_off as usize..) else {
            continue;
        };
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        if &rest[..end] == name.as_bytes() {
            return slice(b, off, size, "section").map(Some);
        }
    }
    Ok(None)
}

/// `key=value` strings of a module's `.modinfo` section, in file order.
pub fn modinfo(b: &[u8]) -> Result<Vec<(String, String)>, ElfError> {
    let Some(sec) = section(b, ".modinfo")? else {
        return Ok(Vec::new());
    };
    Ok(sec
        .split(|&c| c == 0)
        .filter_map(|entry| {
            let text = String::from_utf8_lossy(entry);
            text.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fake_module;

    #[test]
    fn modinfo_of_a_built_file() {
        let b = fake_module(b"license=GPL\0depends=virtio,virtio_ring\0name=virtio_net\0\0");
        let info = modinfo(&b).unwrap();
        assert!(info.contains(&("depends".into(), "virtio,virtio_ring".into())));
        assert!(info.contains(&("name".into(), "virtio_net".into())));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(modinfo(b"nope").unwrap_err(), ElfError::NotElf);
        let mut b = fake_module(b"depends=\0");
        b.truncate(b.len() - 40);
        assert!(matches!(
            modinfo(&b).unwrap_err(),
            ElfError::Truncated { .. }
        ));
        let mut b = fake_module(b"depends=\0");
        b[4] = 1;
        assert!(matches!(
            is_static(&b).unwrap_err(),
            ElfError::Unsupported { .. }
        ));
        // Every truncation of a valid file errors or answers, never panics.
        let full = fake_module(b"depends=a\0");
        for n in 0..full.len() {
            let _ = modinfo(&full[..n]);
            let _ = is_static(&full[..n]);
        }
    }

    /// Table offsets near `u64::MAX` (a hostile `.ko` or `--init`) are
    /// errors: the entry offsets overflow, which must not panic.
    #[test]
    fn huge_table_offsets_are_errors_not_overflows() {
        let mut b = fake_module(b"depends=\0");
        b[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            modinfo(&b).unwrap_err(),
            ElfError::Truncated {
                what: "section header",
                offset: u64::MAX,
                len: b.len()
            }
        );
        let mut b = fake_module(b"depends=\0");
        b[0x20..0x28].copy_from_slice(&(u64::MAX - 8).to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        assert!(matches!(
            is_static(&b).unwrap_err(),
            ElfError::Truncated { .. }
        ));
    }

    #[test]
    fn static_and_dynamic_binaries() {
        // /bin/busybox from busybox-static has no PT_INTERP; /bin/sh does.
        let busybox = std::fs::read("/bin/busybox")
            .expect("busybox-static missing: apt-get install busybox-static");
        assert!(is_static(&busybox).unwrap());
        let sh = std::fs::read("/usr/bin/dash").expect("dash missing");
        assert!(!is_static(&sh).unwrap());
    }
}
