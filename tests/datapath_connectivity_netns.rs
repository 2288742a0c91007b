//! Layer 4: pod connectivity on the real kernel. Two "nodes" (namespaces) on an underlay bridge,
//! each with its node devices (`cilium_host`/`cilium_net`, the tunnel device) made by
//! `datapath::devices`, two "pods" plugged in like Cilium's CNI does (veth, /32, default route via
//! the router IP), the programs attached with TCX and the maps written directly (the controllers
//! that will write them come later). Real ICMP and TCP: pod to pod on one node, and across nodes
//! over VXLAN and over Geneve, with a capture on the underlay showing the tunnel's UDP port and
//! the source pod's identity as VNI.
//!
//! Everything is bounded (ping counts and deadlines, socket timeouts, a capped capture loop) and
//! cleaned up on drop (namespaces by `Topology`, pins and links by `BpffsDir`).

mod integration;

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use beeline::{
    datapath::{
        devices::{self, NodeDevicesSpec, TunnelProtocol},
        loader::programs::{FROM_CONTAINER, FROM_OVERLAY},
        tables, AttachMode,
    },
    lab::topology::RoutedPod,
};
use beeline_common::{
    datapath::{DatapathConfig, TUNNEL_GENEVE, TUNNEL_VXLAN},
    endpoint::EndpointInfo,
    ipcache::RemoteEndpointInfo,
};
use integration::{ifindex_in, require_root, traffic, BpffsDir, Datapath, Direction, NetNs, Topology};

const UNDERLAY_MTU: u32 = 1500;

struct Pod {
    pod: RoutedPod,
    identity: u32,
}

struct Node {
    ns: NetNs,
    ip: Ipv4Addr,
    router: Ipv4Addr,
    pod_cidr: ipnet::Ipv4Net,
    bpffs: BpffsDir,
    _datapath: Datapath,
    pods: Vec<Pod>,
}

struct Cluster {
    nodes: Vec<Node>,
    // Dropped last: namespaces go after the pins/links that refer to their devices.
    topo: Topology,
}

impl Cluster {
    fn new(label: &str, tunnel: TunnelProtocol, net: u8) -> Cluster {
        require_root();
        let mut topo = Topology::new(label);
        let mtu = devices::pod_mtu(UNDERLAY_MTU, Some(tunnel));
        let mut nodes = Vec::new();
        for n in 1..=2u8 {
            let ns = topo.namespace(&format!("node{n}")).unwrap();
            let node_ip = Ipv4Addr::new(192, 168, net, n);
            topo.connect_to_underlay(&ns, "eth0", &[&format!("{node_ip}/24")]).unwrap();
            let router = Ipv4Addr::new(10, net, n, 1);
            let spec = NodeDevicesSpec { router_ip: router, tunnel: Some(tunnel) };
            let (devs, _) = ns.run(|| devices::ensure(&spec)).unwrap().expect("node devices");
            // A second pass (an agent restart) finds everything in place.
            let (again, steps) = ns.run(|| devices::ensure(&spec)).unwrap().unwrap();
            assert_eq!(again, devs, "ifindexes stable across ensure()");
            assert!(steps.iter().all(|s| !matches!(s, devices::Step::Ip(a) if a[0] == "link")), "{steps:?}");

            let bpffs = BpffsDir::new(&format!("{label}-n{n}"));
            let mut datapath = Datapath::load(&bpffs.pin_dir()).unwrap();
            let pin = bpffs.pin_dir();
            tables::write_config(
                &pin,
                &DatapathConfig {
                    router_ip: tables::be(router),
                    node_ip: tables::be(node_ip),
                    tunnel_ifindex: devs.tunnel.unwrap(),
                    tunnel_proto: match tunnel {
                        TunnelProtocol::Vxlan => TUNNEL_VXLAN,
                        TunnelProtocol::Geneve => TUNNEL_GENEVE,
                    },
                    pod_cidr_prefix_len: 24,
                    flags: 0,
                },
            )
            .unwrap();
            ns.run(|| datapath.attach(FROM_OVERLAY, tunnel.device(), Direction::Ingress, AttachMode::Tcx))
                .unwrap()
                .expect("attach from_overlay");

            let mut pods = Vec::new();
            for p in 1..=2u8 {
                let addr = Ipv4Addr::new(10, net, n, 10 + p);
                let host_if = format!("lxc{n}{p}");
                let pod = topo.routed_pod(&ns, &format!("n{n}p{p}"), &host_if, addr, router, mtu).unwrap();
                let identity = 1000 * u32::from(n) + u32::from(p);
                let info = EndpointInfo {
                    ifindex: ifindex_in(&ns, &host_if),
                    lxc_id: u16::from(p),
                    mac: topo.mac(&pod.ns, "eth0").unwrap(),
                    node_mac: topo.mac(&ns, &host_if).unwrap(),
                    sec_id: identity,
                    ..Default::default()
                };
                tables::upsert_endpoint(&pin, addr, &info).unwrap();
                ns.run(|| datapath.attach(FROM_CONTAINER, &host_if, Direction::Ingress, AttachMode::Tcx))
                    .unwrap()
                    .expect("attach from_container");
                pods.push(Pod { pod, identity });
            }
            let pod_cidr = format!("10.{net}.{n}.0/24").parse().unwrap();
            nodes.push(Node { ns, ip: node_ip, router, pod_cidr, bpffs, _datapath: datapath, pods });
        }
        // Each node learns the other's pods: the /32s with identity and tunnel endpoint in the
        // ipcache (what the CiliumEndpoint controller will write), the pod CIDR in the tunnel map
        // and a route via cilium_host (what the CiliumNode controller will write).
        for (i, node) in nodes.iter().enumerate() {
            let peer = &nodes[1 - i];
            let pin = node.bpffs.pin_dir();
            for pod in &peer.pods {
                let info = RemoteEndpointInfo {
                    sec_identity: pod.identity,
                    tunnel_endpoint: tables::be(peer.ip),
                    ..Default::default()
                };
                tables::upsert_ipcache(&pin, ipnet::Ipv4Net::new(pod.pod.addr, 32).unwrap(), &info).unwrap();
            }
            tables::upsert_tunnel(&pin, peer.pod_cidr, peer.ip).unwrap();
            let route = devices::tunnel_route(peer.pod_cidr, node.router, mtu);
            node.ns.run(|| devices::replace_route(&route)).unwrap().unwrap();
        }
        Cluster { nodes, topo }
    }

    fn pod(&self, node: usize, pod: usize) -> &Pod {
        &self.nodes[node].pods[pod]
    }
}

fn assert_ping(from: &Pod, to: &Pod) {
    let (tx, rx) = traffic::ping(&from.pod.ns, IpAddr::V4(to.pod.addr), 3).unwrap();
    assert_eq!((tx, rx), (3, 3), "ping {} -> {}", from.pod.addr, to.pod.addr);
}

/// A TCP echo of `len` bytes (several segments, beyond one MTU) from `from` to `to`, bounded by
/// socket timeouts.
fn assert_tcp(from: &Pod, to: &Pod, port: u16, len: usize) {
    let server = SocketAddr::new(IpAddr::V4(to.pod.addr), port);
    let listener = to.pod.ns.run(|| TcpListener::bind(server)).unwrap().unwrap();
    let echo = std::thread::spawn(move || -> std::io::Result<usize> {
        listener.set_nonblocking(false)?;
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = vec![0u8; 16 * 1024];
        let mut total = 0;
        while total < len {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            conn.write_all(&buf[..n])?;
            total += n;
        }
        Ok(total)
    });
    let mut client = from
        .pod
        .ns
        .run(|| TcpStream::connect_timeout(&server, Duration::from_secs(5)))
        .unwrap()
        .unwrap_or_else(|e| panic!("connect {} -> {server}: {e}", from.pod.addr));
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let writer = {
        let mut c = client.try_clone().unwrap();
        let data = data.clone();
        std::thread::spawn(move || c.write_all(&data))
    };
    let mut back = vec![0u8; len];
    client.read_exact(&mut back).unwrap_or_else(|e| panic!("echo {} -> {server}: {e}", from.pod.addr));
    writer.join().unwrap().unwrap();
    assert!(back == data, "echoed bytes differ");
    assert_eq!(echo.join().unwrap().unwrap(), len);
}

/// The pod's neighbour entry for its gateway: the router IP at the host-side veth's MAC.
fn assert_gateway_neighbour(cluster: &Cluster, node: usize, pod: usize) {
    let n = &cluster.nodes[node];
    let p = &n.pods[pod];
    let out = std::process::Command::new("ip")
        .args(["-n", p.pod.ns.name(), "neigh", "show", "dev", "eth0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lxc_mac = cluster.topo.mac(&n.ns, &p.pod.host_if).unwrap();
    let want = lxc_mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    assert!(
        text.lines().any(|l| l.starts_with(&format!("{} ", n.router)) && l.contains(&want)),
        "pod {} should see gateway {} at {want}:\n{text}",
        p.pod.addr,
        n.router
    );
}

/// One tunnelled packet seen on the underlay.
#[derive(Debug)]
struct Tunnelled {
    outer_src: Ipv4Addr,
    outer_dst: Ipv4Addr,
    dport: u16,
    vni: u32,
    inner_src: Ipv4Addr,
    inner_dst: Ipv4Addr,
}

/// A raw packet socket in the underlay namespace (all its interfaces).
struct Capture {
    fd: OwnedFd,
}

impl Capture {
    fn open(ns: &NetNs) -> Capture {
        let fd = ns
            .run(|| {
                // SAFETY: plain syscalls; the descriptor is owned right away.
                unsafe {
                    let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from((libc::ETH_P_ALL as u16).to_be()));
                    assert!(fd >= 0, "packet socket: {}", std::io::Error::last_os_error());
                    let tv = libc::timeval { tv_sec: 0, tv_usec: 200_000 };
                    libc::setsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_RCVTIMEO,
                        (&tv as *const libc::timeval).cast(),
                        size_of::<libc::timeval>() as u32,
                    );
                    OwnedFd::from_raw_fd(fd)
                }
            })
            .unwrap();
        Capture { fd }
    }

    /// Tunnelled packets to `port` read until the queue is empty, at most 2 s or 10 000 frames.
    fn tunnelled(&self, port: u16) -> Vec<Tunnelled> {
        let mut found = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut buf = vec![0u8; 65536];
        for _ in 0..10_000 {
            if Instant::now() > deadline {
                break;
            }
            // SAFETY: reading into our buffer.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                break; // timeout: nothing more queued
            }
            if let Some(t) = parse_tunnelled(&buf[..n as usize], port) {
                found.push(t);
            }
        }
        found
    }
}

fn parse_tunnelled(f: &[u8], port: u16) -> Option<Tunnelled> {
    let v4 = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    if f.len() < 14 + 20 + 8 + 8 + 14 + 20 || f[12..14] != [0x08, 0x00] || f[14 + 9] != 17 {
        return None;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let udp = 14 + ihl;
    if u16::from_be_bytes([f[udp + 2], f[udp + 3]]) != port {
        return None;
    }
    let tun = udp + 8;
    // VXLAN and Geneve both carry the VNI in bytes 4..7; Geneve has options of 4 * optlen bytes.
    let vni = u32::from_be_bytes([0, f[tun + 4], f[tun + 5], f[tun + 6]]);
    let options = if port == devices::GENEVE_PORT { usize::from(f[tun] & 0x3f) * 4 } else { 0 };
    let inner = tun + 8 + options;
    let ip = inner + 14;
    if f.len() < ip + 20 || f[inner + 12..inner + 14] != [0x08, 0x00] {
        return None;
    }
    Some(Tunnelled {
        outer_src: v4(&f[26..30]),
        outer_dst: v4(&f[30..34]),
        dport: port,
        vni,
        inner_src: v4(&f[ip + 12..ip + 16]),
        inner_dst: v4(&f[ip + 16..ip + 20]),
    })
}

fn underlay(cluster: &Cluster) -> NetNs {
    let name = cluster.topo.namespace_names().iter().find(|n| n.ends_with("-underlay")).unwrap();
    NetNs::open(name).unwrap()
}

fn run_scenario(label: &str, tunnel: TunnelProtocol, net: u8) {
    let cluster = Cluster::new(label, tunnel, net);
    let underlay = underlay(&cluster);

    // Same node: straight from one pod's veth to the other's.
    assert_ping(cluster.pod(0, 0), cluster.pod(0, 1));
    assert_tcp(cluster.pod(0, 0), cluster.pod(0, 1), 8080, 200_000);
    assert_gateway_neighbour(&cluster, 0, 0);
    assert_gateway_neighbour(&cluster, 0, 1);

    // Across nodes, both directions, captured on the underlay.
    let capture = Capture::open(&underlay);
    assert_ping(cluster.pod(0, 0), cluster.pod(1, 1));
    let seen = capture.tunnelled(tunnel.port());
    let (a, b) = (cluster.pod(0, 0), cluster.pod(1, 1));
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let request = seen.iter().find(|t| t.inner_src == a.pod.addr && t.inner_dst == b.pod.addr);
    let reply = seen.iter().find(|t| t.inner_src == b.pod.addr && t.inner_dst == a.pod.addr);
    let request = request.unwrap_or_else(|| panic!("no tunnelled request on UDP {}: {seen:?}", tunnel.port()));
    let reply = reply.unwrap_or_else(|| panic!("no tunnelled reply on UDP {}: {seen:?}", tunnel.port()));
    assert_eq!((request.outer_src, request.outer_dst, request.dport), (n1.ip, n2.ip, tunnel.port()));
    assert_eq!(request.vni, a.identity, "VNI is the source pod's identity");
    assert_eq!((reply.outer_src, reply.outer_dst), (n2.ip, n1.ip));
    assert_eq!(reply.vni, b.identity, "VNI is the source pod's identity");

    assert_tcp(cluster.pod(1, 0), cluster.pod(0, 1), 8081, 200_000);
    assert_ping(cluster.pod(1, 1), cluster.pod(0, 0));

    for node in &cluster.nodes {
        let drops = tables::read_drops(&node.bpffs.pin_dir()).unwrap();
        assert!(drops.is_empty(), "no drops expected on {}: {drops:?}", node.ns.name());
    }
}

#[test]
fn pods_reach_each_other_on_one_node_and_across_nodes_over_vxlan() {
    run_scenario("conn-vxlan", TunnelProtocol::Vxlan, 61);
}

/// Ignored, with its reason visible in every test run: this machine's kernel (6.18, built without
/// `CONFIG_GENEVE`) cannot create Geneve devices — `devices::ensure` reports exactly that. Run it
/// with `cargo test -- --ignored` on a kernel with Geneve; the BPF side is the same code path as
/// VXLAN (only the device differs), covered by the VXLAN scenario and the test_run tests.
#[test]
#[ignore = "needs a kernel with CONFIG_GENEVE (not available on the CI machine's kernel)"]
fn pods_reach_each_other_on_one_node_and_across_nodes_over_geneve() {
    run_scenario("conn-geneve", TunnelProtocol::Geneve, 62);
}

/// The service load balancer with real TCP: pod (0,0) connects 30 times to a ClusterIP whose three
/// backends are one pod on its node and two on the other node (over VXLAN). Every connection
/// completes — the kernel only accepts the SYN-ACK because it comes back from the VIP, i.e. reverse
/// NAT ran in the local backend's `from_container` and in `from_overlay` for the remote ones — and
/// new connections spread over all three backends.
#[test]
fn a_cluster_ip_spreads_connections_over_local_and_remote_backends_with_replies_from_the_vip() {
    use beeline::config::LbAlgorithm;
    use beeline::services::{desired_state, Inputs, LbIds, ServicesConfig};
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };

    let cluster = Cluster::new("lb-vxlan", TunnelProtocol::Vxlan, 63);
    let backends = [cluster.pod(0, 1), cluster.pod(1, 0), cluster.pod(1, 1)];
    let vip = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)), 80);
    let service = serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "default", "name": "echo"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
    }))
    .unwrap();
    let endpoints: Vec<serde_json::Value> = backends
        .iter()
        .map(|p| serde_json::json!({"addresses": [p.pod.addr.to_string()], "conditions": {"ready": true}}))
        .collect();
    let slice = serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "default", "name": "echo-1", "labels": {"kubernetes.io/service-name": "echo"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": endpoints,
    }))
    .unwrap();
    let cfg = ServicesConfig {
        node_name: "node1".into(),
        extra_node_addresses: Vec::new(),
        kube_proxy_replacement: true,
        node_port_range: (30000, 32767),
        lb_algorithm: LbAlgorithm::Random,
        service_proxy_name: None,
        maglev_table_size: 251,
    };
    let (services, slices) = (vec![service], vec![slice]);
    let inputs = Inputs { services: &services, endpoint_slices: &slices, ..Default::default() };
    let desired = desired_state(&inputs, &cfg, &mut LbIds::new());
    assert_eq!(desired.frontends.len(), 1, "{:?}", desired.notes);
    beeline::datapath::testing::lb::program(&cluster.nodes[0].bpffs.pin_dir(), &desired);

    // Each backend answers every connection with its own address, until told to stop (bounded).
    let stop = Arc::new(AtomicBool::new(false));
    let servers: Vec<_> = backends
        .iter()
        .map(|p| {
            let addr = SocketAddr::new(IpAddr::V4(p.pod.addr), 8080);
            let listener = p.pod.ns.run(|| TcpListener::bind(addr)).unwrap().unwrap();
            listener.set_nonblocking(true).unwrap();
            let (stop, octets) = (stop.clone(), p.pod.addr.octets());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match listener.accept() {
                        Ok((mut conn, _)) => {
                            let _ = conn.write_all(&octets);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        })
        .collect();

    let client = cluster.pod(0, 0);
    let mut seen = std::collections::BTreeMap::<Ipv4Addr, u32>::new();
    for i in 0..30 {
        let mut conn = client
            .pod
            .ns
            .run(|| TcpStream::connect_timeout(&vip, Duration::from_secs(5)))
            .unwrap()
            .unwrap_or_else(|e| panic!("connection {i} to {vip}: {e}"));
        assert_eq!(conn.peer_addr().unwrap(), vip);
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut octets = [0u8; 4];
        conn.read_exact(&mut octets).unwrap_or_else(|e| panic!("reply on connection {i}: {e}"));
        *seen.entry(Ipv4Addr::from(octets)).or_default() += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for server in servers {
        server.join().unwrap();
    }
    let expected: std::collections::BTreeSet<Ipv4Addr> = backends.iter().map(|p| p.pod.addr).collect();
    // 30 random choices among 3: one backend left out with probability below 2e-5.
    assert_eq!(seen.keys().copied().collect::<std::collections::BTreeSet<_>>(), expected, "{seen:?}");
    assert_eq!(seen.values().sum::<u32>(), 30);
    for node in &cluster.nodes {
        let drops = tables::read_drops(&node.bpffs.pin_dir()).unwrap();
        assert!(drops.is_empty(), "no drops expected on {}: {drops:?}", node.ns.name());
    }
}
