//! The workload every lab pod runs, like podinfo/echo-server: HTTP that answers with the pod's
//! name and the client address it saw, and UDP echo.
//!
//! No process per pod: the sockets are bound by a short-lived thread that `setns`-es into the
//! pod's network namespace (a socket keeps the namespace it was created in), then served by the
//! supervisor's async runtime. Stopping the pod drops the tasks and with them the sockets; a
//! killed supervisor takes them along, so nothing of a pod outlives the lab.
//!
//! Ports: every TCP `containerPort` serves HTTP, every UDP one echoes; with no ports declared, HTTP
//! on 80. Sockets are dual-stack (`[::]`), falling back to `0.0.0.0` when the namespace has no IPv6.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Pod;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use crate::datapath::netns::NetNs;

/// Default HTTP port when a pod declares none.
pub const DEFAULT_HTTP_PORT: u16 = 80;
/// Upper bound of a request read (headers only; bodies are ignored).
const MAX_REQUEST: usize = 16 * 1024;

/// What the server answers (JSON body of every HTTP response).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EchoReply {
    pub pod: String,
    pub namespace: String,
    pub node: String,
    /// The peer address as the pod saw it (no SNAT between pods means the client pod's IP).
    pub client: SocketAddr,
    pub path: String,
}

/// The identity the server reports.
#[derive(Clone, Debug)]
pub struct Identity {
    pub pod: String,
    pub namespace: String,
    pub node: String,
}

/// The (tcp, udp) ports a pod serves.
pub fn ports(pod: &Pod) -> (Vec<u16>, Vec<u16>) {
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        for p in c.ports.iter().flatten() {
            let Ok(port) = u16::try_from(p.container_port) else { continue };
            match p.protocol.as_deref().unwrap_or("TCP") {
                "UDP" => udp.push(port),
                "TCP" => tcp.push(port),
                _ => {}
            }
        }
    }
    if tcp.is_empty() && udp.is_empty() {
        tcp.push(DEFAULT_HTTP_PORT);
    }
    tcp.sort_unstable();
    tcp.dedup();
    udp.sort_unstable();
    udp.dedup();
    (tcp, udp)
}

/// A running workload; dropping it stops it.
pub struct PodServer {
    tasks: JoinSet<()>,
}

fn bind_dual<T>(port: u16, bind: impl Fn(SocketAddr) -> std::io::Result<T>) -> std::io::Result<T> {
    bind(SocketAddr::from(([0u16; 8], port))).or_else(|_| bind(SocketAddr::from(([0u8; 4], port))))
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl PodServer {
    /// Binds every port inside `netns` and starts serving (call from within a tokio runtime).
    pub fn start(netns: &str, identity: Identity, tcp: &[u16], udp: &[u16]) -> std::io::Result<PodServer> {
        let ns = NetNs::open(netns)?;
        let (listeners, sockets) = ns.run(|| -> std::io::Result<_> {
            let listeners: Vec<std::net::TcpListener> =
                tcp.iter().map(|p| bind_dual(*p, std::net::TcpListener::bind)).collect::<Result<_, _>>()?;
            let sockets: Vec<std::net::UdpSocket> =
                udp.iter().map(|p| bind_dual(*p, std::net::UdpSocket::bind)).collect::<Result<_, _>>()?;
            Ok((listeners, sockets))
        })??;
        let mut tasks = JoinSet::new();
        for listener in listeners {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let identity = identity.clone();
            tasks.spawn(async move {
                while let Ok((conn, peer)) = listener.accept().await {
                    tokio::spawn(answer_http(conn, canonical(peer), identity.clone()));
                }
            });
        }
        for socket in sockets {
            socket.set_nonblocking(true)?;
            let socket = tokio::net::UdpSocket::from_std(socket)?;
            tasks.spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                    let _ = socket.send_to(&buf[..n], peer).await;
                }
            });
        }
        Ok(PodServer { tasks })
    }

    pub fn stop(mut self) {
        self.tasks.abort_all();
    }
}

async fn answer_http(mut conn: tokio::net::TcpStream, peer: SocketAddr, identity: Identity) {
    let mut request = Vec::new();
    let mut buf = [0u8; 2048];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    if read.is_err() {
        return;
    }
    let path = String::from_utf8_lossy(&request).split_whitespace().nth(1).unwrap_or("/").to_string();
    let reply = EchoReply { pod: identity.pod, namespace: identity.namespace, node: identity.node, client: peer, path };
    let body = serde_json::to_string(&reply).expect("serialisable") + "\n";
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(response.as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// The client address an [`EchoReply`] body reports, for checks that want to see SNAT (or its absence).
pub fn reply_client_ip(body: &str) -> Option<IpAddr> {
    serde_json::from_str::<EchoReply>(body.trim()).ok().map(|r| r.client.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_from_the_pod_spec_with_an_http_default() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "spec": {"containers": [
                {"name": "a", "ports": [{"containerPort": 8080}, {"containerPort": 53, "protocol": "UDP"}]},
                {"name": "b", "ports": [{"containerPort": 8080, "protocol": "TCP"}, {"containerPort": 132, "protocol": "SCTP"}]}
            ]}
        }))
        .unwrap();
        assert_eq!(ports(&pod), (vec![8080], vec![53]));
        let bare: Pod = serde_json::from_value(serde_json::json!({"spec": {"containers": [{"name": "a"}]}})).unwrap();
        assert_eq!(ports(&bare), (vec![DEFAULT_HTTP_PORT], vec![]));
    }

    #[tokio::test]
    async fn http_reply_names_the_pod_and_the_client() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let identity = Identity { pod: "web-1".into(), namespace: "default".into(), node: "kind-worker".into() };
        let server = tokio::spawn(async move {
            let (conn, peer) = listener.accept().await.unwrap();
            answer_http(conn, canonical(peer), identity).await;
        });
        let (code, body) =
            tokio::task::spawn_blocking(move || super::super::probe::http_get(addr, "/hello")).await.unwrap().unwrap();
        server.await.unwrap();
        assert_eq!(code, 200);
        let reply: EchoReply = serde_json::from_str(body.trim()).unwrap();
        assert_eq!((reply.pod.as_str(), reply.path.as_str(), reply.node.as_str()), ("web-1", "/hello", "kind-worker"));
        assert_eq!(reply.client.ip(), "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(reply_client_ip(&body), Some(reply.client.ip()));
    }
}
