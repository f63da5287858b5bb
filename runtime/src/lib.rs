//! berth-runtime: the OCI runtime spec, in process.
//!
//! `sys` is the one module of the whole workspace that holds `unsafe` code
//! and raw syscalls; every other crate reaches the kernel through its safe
//! wrappers.
//!
//! Use: [`Runtime::create`] (from a bundle) or [`Runtime::create_from_spec`]
//! (from an in-memory spec and a rootfs), then [`Container::start`],
//! [`Container::kill`], [`Container::wait`] (or the caller's own
//! `waitpid(-1)` and [`Container::set_exited`]), [`Container::delete`].
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod caps;
pub mod cgroup;
pub mod container;
pub mod hooks;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod signal;
pub mod spec;
pub mod state;
pub mod sys;

pub use container::{
    Container, ContainerError, CreateOptions, ExitStatus, RuncState, Runtime, Stdio,
};
