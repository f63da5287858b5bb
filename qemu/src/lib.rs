//! berth-qemu: run a berth appliance under QEMU, for people (the
//! `berth-qemu` binary) and for the end-to-end tests that boot real VMs.
//!
//! - [`kernel`]: fetch Debian's cloud kernel with `apt-get download` and unpack it.
//! - [`vm`]: boot an [`Appliance`] (kernel + initramfs) with a [`VmConfig`]; the
//!   [`Vm`] handle reads the serial console, speaks QMP, waits for the exit.
//! - [`disk`]: the ext4 data disk, created on the host when missing.
//! - [`net`]: requests through the forwarded ports on 127.0.0.1.
//! - [`bench`](mod@bench): time from QEMU's spawn to a console line.
#![forbid(unsafe_code)]

pub mod bench;
pub mod console;
pub mod disk;
pub mod kernel;
pub mod net;
pub mod qmp;
pub mod vm;

pub use bench::{
    BenchError, BootSample, guest_timestamp, measure_boot, measure_guest_boot, median,
    median_translated_blocks, tb_count,
};
pub use disk::{DataDisk, DiskError, prepare_data_disk};
pub use kernel::{Kernel, KernelError, default_cache_dir, fetch_kernel};
pub use net::{NetError, http_get};
pub use qmp::QmpError;
pub use vm::{
    Accel, Appliance, CPUS_RANGE, HostChecked, MEMORY_MB_RANGE, Outcome, Vm, VmConfig, VmError,
    check_host_kvm, check_kvm, free_port, is_pid1_failure, pid1_message,
};

/// An error and its sources as one line (`a: b: c`), for messages at the
/// edge. Control characters are escaped (see [`escape_controls`]): a
/// source may carry bytes from the guest's console or a file name, and an
/// escape sequence or a newline in them would drive the terminal or forge
/// a line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = escape_controls(&err.to_string()).into_owned();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&escape_controls(&s.to_string()));
        source = s.source();
    }
    out
}

/// `text` with its control characters escaped by the rule berth-init
/// applies to a service's lines: C0 controls and DEL as `\x1b`, C1
/// controls as `\u{9b}`; tabs stay. Escaping twice changes nothing more.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    let escaped = |c: char| c.is_control() && c != '\t';
    if !text.chars().any(escaped) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if !escaped(c) => out.push(c),
            '\0'..='\x7f' => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("boot {name}")]
    struct Outer {
        name: String,
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn error_chain_escapes_control_characters_in_every_source() {
        let err = Outer {
            name: "a\tb\x1b[2J".into(),
            source: std::io::Error::other("console said \x1b]0;pwned\x07\nberth: ready\r\u{9b}31m"),
        };
        let line = error_chain(&err);
        assert_eq!(
            line,
            "boot a\tb\\x1b[2J: console said \\x1b]0;pwned\\x07\\x0aberth: ready\\x0d\\u{9b}31m"
        );
        assert!(
            !line.chars().any(|c| c.is_control() && c != '\t'),
            "{line:?}"
        );
        assert_eq!(
            escape_controls(&line),
            line,
            "escaping twice changes nothing"
        );
        let plain = Outer {
            name: "web".into(),
            source: std::io::Error::other("no such file, é"),
        };
        assert_eq!(error_chain(&plain), "boot web: no such file, é");
        assert!(matches!(
            escape_controls("no such file, é"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(escape_controls("\x7f\0"), "\\x7f\\x00");
    }
}
