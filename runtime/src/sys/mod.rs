//! The one module with `unsafe` code and raw syscalls. Wrappers are thin: no
//! policy, no logging; they return `io::Result` and callers add context.

pub mod bpf;
