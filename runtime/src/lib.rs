//! berth-runtime: the OCI runtime spec, in process.
//!
//! `sys` is the one module of the whole workspace that holds `unsafe` code
//! and raw syscalls; every other crate reaches the kernel through its safe
//! wrappers.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod caps;
pub mod cgroup;
pub mod hooks;
pub mod seccomp;
pub mod signal;
pub mod state;
pub mod sys;
