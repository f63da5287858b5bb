//! berth-runtime: the OCI runtime spec, in process.
//!
//! `sys` is the one module of the whole workspace that holds `unsafe` code
//! and raw syscalls; every other crate reaches the kernel through its safe
//! wrappers.
//!
//! # Use
//!
//! The process that calls [`Runtime::create`] (from a bundle directory) or
//! [`Runtime::create_from_spec`] (from an in-memory spec and a rootfs, as
//! PID 1 does) becomes the parent of the container's first process: one
//! `clone3` straight into the spec's namespaces (and its cgroup, with
//! `CLONE_INTO_CGROUP`). The child sets everything up from a plan computed
//! before the clone, without allocating, reports ready, and waits on the
//! exec fifo in the state directory until [`Container::start`]. Then
//! [`Container::kill`], and either [`Container::wait`] or, for a caller
//! with its own `waitpid(-1)` loop, [`Container::set_exited`]; finally
//! [`Container::delete`].
//!
//! A caller whose binary stops running while its containers live on (a
//! CLI that exits after `create`) should first call
//! [`exeseal::reexec_from_sealed_copy`], as `berth-runc` does, so no
//! container can reach its binary on the host (CVE-2019-5736); PID 1 does
//! not need to (see [`exeseal`]).
//!
//! ```no_run
//! use berth_runtime::{CreateOptions, Runtime};
//!
//! let rt = Runtime::new("/run/berth");
//! let mut c = rt.create("web", "/srv/bundles/web".as_ref(), CreateOptions::default())?;
//! c.start()?;
//! let status = c.wait()?; // or: own waitpid(-1) loop, then c.set_exited(status)
//! c.delete(false)?;
//! println!("web ended: {status} (shell code {})", status.code());
//! # Ok::<(), berth_runtime::ContainerError>(())
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod caps;
pub mod cgroup;
pub mod container;
pub mod exeseal;
pub mod hooks;
pub mod host;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod signal;
pub mod spec;
pub mod state;
pub mod sys;

pub use container::{
    Container, ContainerError, CreateOptions, ExitStatus, InitProgram, RuncState, Runtime, Stdio,
};
