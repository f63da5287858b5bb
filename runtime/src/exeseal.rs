//! Running the runtime from a sealed copy of its own binary (CVE-2019-5736).
//!
//! Until its `execve` the container's first process is the runtime binary,
//! and a container can make the kernel execute `/proc/self/exe` inside it
//! (a `#!/proc/self/exe` entrypoint). A process in the container that
//! holds that file open can reopen it for writing once nothing executes
//! it any more, and so replace the host's runtime binary. A CLI such as
//! `berth-runc` exits after `create`, so it re-executes itself from a
//! memfd copy sealed against writes, shrinking and growing first (as crun
//! does): what a container can reach is that copy, never the host file.
//!
//! PID 1 does not need this: it executes its binary for as long as the
//! system runs, so the kernel refuses to open it for writing (ETXTBSY).

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{MemfdFlags, SealFlags};

use crate::sys;

/// Failures while re-executing from a sealed copy; each names the step.
#[derive(Debug, thiserror::Error)]
pub enum ExeSealError {
    #[error("open /proc/self/exe")]
    OpenSelf {
        #[source]
        source: io::Error,
    },
    #[error("create a memfd for the sealed copy of the runtime")]
    Memfd {
        #[source]
        source: io::Error,
    },
    /// `vm.memfd_noexec=2` (Linux 6.3+, per pid namespace): no memfd may
    /// be executable, and the runtime runs from nothing else.
    #[error(
        "create an executable memfd for the sealed copy of the runtime: vm.memfd_noexec=2 forbids them in this pid namespace (the runtime runs from such a copy so that no container can reach its binary, CVE-2019-5736; set it to 0 or 1)"
    )]
    MemfdNoexec,
    #[error("copy the runtime binary into the memfd")]
    Copy {
        #[source]
        source: io::Error,
    },
    #[error("seal the memfd copy of the runtime")]
    Seal {
        #[source]
        source: io::Error,
    },
    #[error("argument or environment entry contains a NUL byte: {entry:?}")]
    Nul { entry: OsString },
    #[error("execute the sealed copy of the runtime")]
    Exec {
        #[source]
        source: io::Error,
    },
}

fn seals() -> SealFlags {
    SealFlags::SEAL | SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE
}

/// A memfd copy of the running binary, sealed against writes, shrinking
/// and growing (close-on-exec; `name` shows in `/proc/PID/exe`): what a
/// container may be given to execute instead of the host file.
pub fn sealed_copy_of_self(name: &str) -> Result<File, ExeSealError> {
    // Read whole (3 MiB, once): std's generic copy would add its
    // copy_file_range machinery to PID 1's size-bound binary.
    let exe =
        std::fs::read("/proc/self/exe").map_err(|source| ExeSealError::OpenSelf { source })?;
    // MFD_EXEC: with vm.memfd_noexec=1 (Linux 6.3+) a memfd is otherwise
    // sealed non-executable; kernels before 6.3 refuse the flag (EINVAL).
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    // With vm.memfd_noexec=2 an executable memfd is refused (EACCES).
    let memfd = match rustix::fs::memfd_create(name, flags | MemfdFlags::EXEC) {
        Err(rustix::io::Errno::INVAL) => rustix::fs::memfd_create(name, flags),
        Err(rustix::io::Errno::ACCESS)
            if std::fs::read_to_string("/proc/sys/vm/memfd_noexec")
                .is_ok_and(|v| v.trim() == "2") =>
        {
            return Err(ExeSealError::MemfdNoexec);
        }
        other => other,
    }
    .map_err(|e| ExeSealError::Memfd { source: e.into() })?;
    let mut copy = File::from(memfd);
    copy.write_all(&exe)
        .map_err(|source| ExeSealError::Copy { source })?;
    rustix::fs::fcntl_add_seals(&copy, seals())
        .map_err(|e| ExeSealError::Seal { source: e.into() })?;
    Ok(copy)
}

/// Whether the running binary is already a sealed copy.
pub fn running_sealed() -> Result<bool, ExeSealError> {
    let exe = File::open("/proc/self/exe").map_err(|source| ExeSealError::OpenSelf { source })?;
    // F_GET_SEALS fails (EINVAL) on anything but a memfd.
    Ok(rustix::fs::fcntl_get_seals(&exe).is_ok_and(|s| s.contains(seals())))
}

/// Re-executes the process from a sealed memfd copy of its binary, with
/// the same arguments and an environment of `RUST_BACKTRACE` alone;
/// returns at once when it already runs from one. Never returns `Ok`
/// after copying: on success the process image is replaced.
///
/// The runtime reads no variable, and until start a created container's
/// process is this process: a neighbour container sharing its pid
/// namespace with CAP_SYS_PTRACE could read `/proc/PID/environ`, so the
/// caller's environment (tokens, credentials) must not be there.
pub fn reexec_from_sealed_copy() -> Result<(), ExeSealError> {
    if running_sealed()? {
        return Ok(());
    }
    let copy = sealed_copy_of_self("berth-runtime")?;
    let cstring = |entry: OsString| {
        CString::new(entry.as_bytes().to_vec()).map_err(|_| ExeSealError::Nul { entry })
    };
    let args = std::env::args_os()
        .map(cstring)
        .collect::<Result<Vec<_>, _>>()?;
    let env = std::env::vars_os()
        .filter(|(k, _)| k == "RUST_BACKTRACE")
        .map(|(k, v)| {
            let mut e = k;
            e.push("=");
            e.push(v);
            cstring(e)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let argv = crate::process::pointer_array(&args);
    let envp = crate::process::pointer_array(&env);
    let source = sys::fexecve(copy.as_fd(), &argv, &envp);
    Err(ExeSealError::Exec { source })
}
