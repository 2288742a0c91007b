//! Small blocking probes the lab's commands share: HTTP GET (also from inside a node namespace,
//! where each node has its own loopback), and pid files checked against the process's command
//! line so a recycled pid is never signalled.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use crate::datapath::netns::NetNs;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET path` over HTTP/1.0 (so the answer is never chunked); `(status, body)`.
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut conn = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
    conn.set_read_timeout(Some(PROBE_TIMEOUT))?;
    conn.set_write_timeout(Some(PROBE_TIMEOUT))?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json, */*\r\n\r\n")?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP answer from {addr}{path}")))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// [`http_get`] from inside network namespace `netns`.
pub fn http_get_in(netns: &str, addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    NetNs::open(netns)?.run(|| http_get(addr, path))?
}

pub fn write_pid(path: &Path, pid: u32) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, format!("{pid}\n"))
}

pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether `pid` is a live process whose command line mentions `marker` (the lab's state
/// directory, which every lab process has in its arguments). Zombies count as gone.
pub fn is_ours(pid: u32, marker: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    if cmdline.is_empty() {
        return false; // zombie or kernel thread
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    if state == Some("Z") {
        return false;
    }
    String::from_utf8_lossy(&cmdline).contains(marker)
}

pub fn is_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks existence and permission.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: plain kill(2); callers checked the pid is one of ours.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// SIGTERM, then SIGKILL after `grace` if it is still there; returns whether it had to be killed.
pub fn stop(pid: u32, marker: &str, grace: Duration) -> bool {
    if !is_ours(pid, marker) {
        return false;
    }
    signal(pid, libc::SIGTERM);
    if wait_gone(pid, marker, grace) {
        return false;
    }
    signal(pid, libc::SIGKILL);
    wait_gone(pid, marker, Duration::from_secs(5));
    true
}

/// Waits (bounded) until `pid` is no longer one of ours.
pub fn wait_gone(pid: u32, marker: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !is_ours(pid, marker) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    !is_ours(pid, marker)
}

/// The pids inside network namespace `name` (`ip netns pids`).
pub fn netns_pids(name: &str) -> Vec<u32> {
    let Ok(out) = std::process::Command::new("ip").args(["netns", "pids", name]).output() else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// The last `lines` lines of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
