//! Network namespaces by name (`/run/netns/<name>`, the `ip netns` convention) and ways to run
//! code inside one.
//!
//! Entering uses `setns(2)` on the calling *thread* only. That is deliberate: `ip netns exec`
//! also unshares the mount namespace and remounts /sys, which hides the bpffs mounted at
//! /sys/fs/bpf — a process started that way cannot see or pin BPF objects. `setns` on the
//! network namespace alone leaves mounts untouched.
//!
//! Sockets and netlink requests made by a thread after entering stay in that namespace for their
//! lifetime, even after the thread leaves (the lab's API server relies on this).

use std::{
    fs::File,
    io,
    marker::PhantomData,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    path::{Path, PathBuf},
    process::Command,
};

pub const NETNS_RUN_DIR: &str = "/run/netns";

/// An open handle on a named network namespace.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
    file: File,
}

impl NetNs {
    /// Creates `/run/netns/<name>` (fails if it exists) with `ip netns add`, which also sets up
    /// the shared bind-mount directory the way every other tool expects.
    pub fn create(name: &str) -> io::Result<NetNs> {
        run_ip(&["netns", "add", name])?;
        NetNs::open(name)
    }

    pub fn open(name: &str) -> io::Result<NetNs> {
        let path = Path::new(NETNS_RUN_DIR).join(name);
        let mut ns = NetNs::open_path(&path)?;
        ns.name = name.to_string();
        Ok(ns)
    }

    /// Opens a namespace by file path (a container runtime's `CNI_NETNS`, `/proc/<pid>/ns/net`);
    /// its name is the path.
    pub fn open_path(path: &Path) -> io::Result<NetNs> {
        let file = File::open(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(NetNs { name: path.display().to_string(), path: path.to_path_buf(), file })
    }

    /// Deletes the named namespace (its interfaces go with it once no process is inside).
    pub fn delete(name: &str) -> io::Result<()> {
        run_ip(&["netns", "delete", name])
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Moves the calling thread into this namespace until the guard drops.
    pub fn enter(&self) -> io::Result<NsGuard> {
        let previous = File::open("/proc/thread-self/ns/net")?;
        setns(self.file.as_raw_fd())?;
        Ok(NsGuard { previous, _not_send: PhantomData })
    }

    /// Runs `f` on a fresh thread inside this namespace and returns its result; the caller's
    /// thread never changes namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let _guard = self.enter()?;
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// A command whose process starts inside this namespace (mounts untouched, so bpffs stays
    /// visible). The namespace file stays open until the command is dropped.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> io::Result<Command> {
        let fd: OwnedFd = self.file.try_clone()?.into();
        let mut cmd = Command::new(program);
        // SAFETY: the closure only calls setns(2), which is async-signal-safe, between fork and exec.
        unsafe {
            cmd.pre_exec(move || setns(fd.as_raw_fd()));
        }
        Ok(cmd)
    }
}

/// Restores the thread's previous network namespace on drop. Not `Send`: it must drop on the
/// thread that entered.
#[derive(Debug)]
pub struct NsGuard {
    previous: File,
    _not_send: PhantomData<*const ()>,
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(self.previous.as_raw_fd()) {
            // Continuing in the wrong namespace would silently misdirect every later operation.
            panic!("cannot return to the previous network namespace: {e}");
        }
    }
}

fn setns(fd: i32) -> io::Result<()> {
    // SAFETY: plain syscall on a file descriptor we own.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `ip <args>` and turns a failure into an error carrying its stderr.
pub fn run_ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
