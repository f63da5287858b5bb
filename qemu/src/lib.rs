//! berth-qemu: run a berth appliance under QEMU.
//!
//! - [`kernel`]: fetch Debian's cloud kernel with `apt-get download` and unpack it.
#![forbid(unsafe_code)]

pub mod kernel;

pub use kernel::{Kernel, KernelError, default_cache_dir, fetch_kernel};

/// An error and its sources as one line (`a: b: c`), for messages at the edge.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
