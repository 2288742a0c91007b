//! Real traffic between namespaces: ping, a counted UDP exchange, and a continuous UDP stream
//! that reports every lost datagram (to show an agent restart never interrupts forwarding).
//! Every loop is bounded in count and time.

use std::{
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::datapath::netns::NetNs;

/// `ping -c <count>` from inside `ns`; returns (transmitted, received).
pub fn ping(ns: &NetNs, dst: IpAddr, count: u32) -> io::Result<(u32, u32)> {
    let out = ns
        .command("ping")?
        .args(["-n", "-q", "-c", &count.to_string(), "-i", "0.2", "-W", "1"])
        .arg("-w")
        .arg((count + 5).to_string())
        .arg(dst.to_string())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run ping (iputils-ping): {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "5 packets transmitted, 5 received, 0% packet loss, time 804ms"
    let summary = text.lines().find(|l| l.contains("packets transmitted")).ok_or_else(|| {
        io::Error::other(format!("unexpected ping output: {text}{}", String::from_utf8_lossy(&out.stderr)))
    })?;
    let numbers: Vec<u32> = summary.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
    match numbers.as_slice() {
        [tx, rx, ..] => Ok((*tx, *rx)),
        _ => Err(io::Error::other(format!("unexpected ping summary: {summary}"))),
    }
}

/// A UDP socket bound to `addr` inside `ns` (the socket stays in `ns` for its lifetime).
pub fn udp_socket_in(ns: &NetNs, addr: SocketAddr) -> io::Result<UdpSocket> {
    ns.run(|| UdpSocket::bind(addr))?
}

/// Sends `count` datagrams of `payload_len` bytes from `client_ns` to `server` (inside
/// `server_ns`) and returns how many arrived (each waited for at most one second).
pub fn udp_exchange(
    client_ns: &NetNs,
    client_ip: IpAddr,
    server_ns: &NetNs,
    server: SocketAddr,
    count: u32,
    payload_len: usize,
) -> io::Result<u32> {
    let rx = udp_socket_in(server_ns, server)?;
    rx.set_read_timeout(Some(Duration::from_secs(1)))?;
    let tx = udp_socket_in(client_ns, SocketAddr::new(client_ip, 0))?;
    let payload = vec![0xabu8; payload_len];
    let mut buf = vec![0u8; payload_len + 16];
    let mut received = 0;
    for _ in 0..count {
        tx.send_to(&payload, server)?;
        match rx.recv_from(&mut buf) {
            Ok((n, _)) if n == payload_len => received += 1,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(received)
}

/// A background UDP stream: one numbered datagram every `interval` until stopped (or
/// `max_duration` passed), and a receiver that records which numbers arrived.
pub struct UdpStream {
    stop: Arc<AtomicBool>,
    sender: Option<JoinHandle<io::Result<u32>>>,
    receiver: Option<JoinHandle<io::Result<Vec<u32>>>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamReport {
    pub sent: u32,
    pub received: u32,
    /// Sequence numbers that never arrived.
    pub lost: Vec<u32>,
}

impl UdpStream {
    pub fn start(
        client_ns: &NetNs,
        client_ip: IpAddr,
        server_ns: &NetNs,
        server: SocketAddr,
        interval: Duration,
        max_duration: Duration,
    ) -> io::Result<UdpStream> {
        let rx = udp_socket_in(server_ns, server)?;
        rx.set_read_timeout(Some(Duration::from_millis(200)))?;
        let tx = udp_socket_in(client_ns, SocketAddr::new(client_ip, 0))?;
        let stop = Arc::new(AtomicBool::new(false));
        let sender_stop = stop.clone();
        let sender = std::thread::spawn(move || -> io::Result<u32> {
            let deadline = Instant::now() + max_duration;
            let mut seq = 0u32;
            while !sender_stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                tx.send_to(&seq.to_be_bytes(), server)?;
                seq += 1;
                std::thread::sleep(interval);
            }
            Ok(seq)
        });
        let receiver_stop = stop.clone();
        let receiver = std::thread::spawn(move || -> io::Result<Vec<u32>> {
            let mut seen = Vec::new();
            let mut buf = [0u8; 64];
            // After the stop flag, drain for a short grace period so in-flight datagrams count.
            let mut drain_until: Option<Instant> = None;
            loop {
                if drain_until.is_none() && receiver_stop.load(Ordering::Relaxed) {
                    drain_until = Some(Instant::now() + Duration::from_millis(500));
                }
                if drain_until.is_some_and(|t| Instant::now() >= t) {
                    return Ok(seen);
                }
                match rx.recv_from(&mut buf) {
                    Ok((4, _)) => seen.push(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]])),
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                    Err(e) => return Err(e),
                }
            }
        });
        Ok(UdpStream { stop, sender: Some(sender), receiver: Some(receiver) })
    }

    pub fn stop(mut self) -> io::Result<StreamReport> {
        self.stop.store(true, Ordering::Relaxed);
        let sent = join(self.sender.take())??;
        let mut seen = join(self.receiver.take())??;
        seen.sort_unstable();
        seen.dedup();
        let lost = (0..sent).filter(|s| seen.binary_search(s).is_err()).collect();
        Ok(StreamReport { sent, received: seen.len() as u32, lost })
    }
}

fn join<T>(handle: Option<JoinHandle<T>>) -> io::Result<T> {
    handle.expect("joined once").join().map_err(|_| io::Error::other("traffic thread panicked"))
}

impl Drop for UdpStream {
    fn drop(&mut self) {
        // Both threads end by themselves within their time bounds once the flag is set.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One bulk TCP transfer, measured at the receiver.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BulkReport {
    pub bytes: u64,
    /// From the accept to the sender's EOF.
    pub seconds: f64,
}

impl BulkReport {
    pub fn gbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds.max(1e-9) / 1e9
    }
}

/// One TCP stream from `client_ns` to `dst` for `duration`, received by whichever of `listeners`
/// (bound beforehand in the server namespaces; several when `dst` is a load-balanced service and
/// any backend may get it) accepts. Bounded: the sender stops after `duration`, the receivers
/// give up `duration` + 5 s after the start.
pub fn tcp_bulk(
    client_ns: &NetNs,
    dst: SocketAddr,
    listeners: Vec<std::net::TcpListener>,
    duration: Duration,
) -> io::Result<BulkReport> {
    use std::io::{Read, Write};
    let give_up = Instant::now() + duration + Duration::from_secs(5);
    let done = Arc::new(AtomicBool::new(false));
    let receivers: Vec<JoinHandle<io::Result<Option<BulkReport>>>> = listeners
        .into_iter()
        .map(|listener| {
            let done = done.clone();
            std::thread::spawn(move || {
                listener.set_nonblocking(true)?;
                let (mut conn, started) = loop {
                    match listener.accept() {
                        Ok((conn, _)) => break (conn, Instant::now()),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            if done.load(Ordering::Relaxed) || Instant::now() > give_up {
                                return Ok(None);
                            }
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Err(e) => return Err(e),
                    }
                };
                conn.set_nonblocking(false)?;
                conn.set_read_timeout(Some(Duration::from_secs(1)))?;
                let mut buf = vec![0u8; 256 * 1024];
                let mut bytes = 0u64;
                while Instant::now() < give_up {
                    match conn.read(&mut buf) {
                        Ok(0) => return Ok(Some(BulkReport { bytes, seconds: started.elapsed().as_secs_f64() })),
                        Ok(n) => bytes += n as u64,
                        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(io::Error::new(io::ErrorKind::TimedOut, "bulk receiver: no EOF before the deadline"))
            })
        })
        .collect();
    let sent = client_ns.run(|| -> io::Result<u64> {
        let mut conn = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(2))?;
        conn.set_write_timeout(Some(Duration::from_secs(2)))?;
        let chunk = vec![0x5au8; 128 * 1024];
        let stop_at = Instant::now() + duration;
        let mut sent = 0u64;
        while Instant::now() < stop_at {
            conn.write_all(&chunk)?;
            sent += chunk.len() as u64;
        }
        conn.shutdown(std::net::Shutdown::Write)?;
        Ok(sent)
    });
    done.store(true, Ordering::Relaxed);
    let mut report = None;
    for r in receivers {
        if let Some(got) = join(Some(r))?? {
            report = Some(got);
        }
    }
    let sent = sent??;
    let report = report.ok_or_else(|| io::Error::other(format!("bulk transfer to {dst}: no listener accepted")))?;
    if report.bytes != sent {
        return Err(io::Error::other(format!("bulk transfer to {dst}: sent {sent} bytes, received {}", report.bytes)));
    }
    Ok(report)
}
