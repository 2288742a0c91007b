//! The service load balancer in `from_container` under `BPF_PROG_TEST_RUN`: DNAT with checksums,
//! conntrack-pinned backends, reverse NAT of replies, ClientIP affinity, terminating backends, the
//! ICMP reject of a service without backends, `internalTrafficPolicy: Local`, the internal scope
//! of two-scope frontends and `loadBalancerSourceRanges`. Root, no namespaces.
//!
//! The LB rows come from the real services core ([`beeline::services::desired_state`]) over
//! Kubernetes objects, programmed straight into the pinned maps. test_run runs the program as if
//! the packet arrived on the loopback device (ifindex 1), so the sending pod is registered there;
//! for a reply the backend is moved onto ifindex 1 and the client onto its own veth.
//!
//! The second half runs `from_netdev` (the uplink) with clients outside the cluster: NodePort,
//! LoadBalancer and externalIP frontends, SNAT for remote backends and the way back, eTP=Local, a
//! ClusterIP from outside, source ranges. Where the datapath routes by the kernel's FIB, the
//! program runs inside a namespace the test builds ([`UplinkNs`]), so the lookup sees our routes.

mod integration;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use beeline::config::LbAlgorithm;
use beeline::datapath::manager::{backend::MapBackend, kernel::KernelMap, maps::Lb4Maglev};
use beeline::datapath::{
    lb_tables,
    loader::programs::{FROM_CONTAINER, FROM_NETDEV},
    tables,
    testing::{
        self,
        packet::{parse, tcp_flags, verify_checksums, FrameBuilder, ParsedL3, ParsedL4},
        test_run::run_tc,
    },
    Datapath,
};
use beeline::services::{desired_state, DesiredLb, Inputs, LbIds, ServicesConfig};
use beeline_common::{
    datapath::{drop_reason, DatapathConfig, TUNNEL_NONE, TUNNEL_VXLAN},
    endpoint::EndpointInfo,
    lb::{
        ct_flags, Lb4AffinityKey, LbAffinityValue, LbConfig, LbMaglevKey, CT_CLOSE_TIMEOUT, TUPLE_F_OUT,
        TUPLE_F_SERVICE,
    },
};
use integration::{require_root, BpffsDir, NetNs, Topology};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};

const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const LOOPBACK: u32 = 1;
const NODE: &str = "node-a";

const CLIENT_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x0a];
const CLIENT_LXC_MAC: [u8; 6] = [0x1a, 0, 0, 0, 0, 0x0a];
const CLIENT_IFINDEX: u32 = 4241;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn client() -> Ipv4Addr {
    ip("10.0.1.2")
}
fn vip() -> Ipv4Addr {
    ip("10.96.0.10")
}
fn lb_ip() -> Ipv4Addr {
    ip("172.18.0.100")
}

/// The local backend pods: address, host-side ifindex, MAC of the pod.
const LOCAL_BACKENDS: [(&str, u32, [u8; 6]); 3] = [
    ("10.0.1.3", 4243, [0x0a, 0, 0, 0, 0, 3]),
    ("10.0.1.4", 4244, [0x0a, 0, 0, 0, 0, 4]),
    ("10.0.1.5", 4245, [0x0a, 0, 0, 0, 0, 5]),
];

fn lxc_mac(pod_mac: [u8; 6]) -> [u8; 6] {
    let mut m = pod_mac;
    m[0] = 0x1a;
    m
}

fn cfg() -> ServicesConfig {
    ServicesConfig {
        node_name: NODE.into(),
        // The NodePort address of this node (the Node object is not among the inputs here).
        extra_node_addresses: vec![node_ip().into()],
        kube_proxy_replacement: true,
        node_port_range: (30000, 32767),
        lb_algorithm: LbAlgorithm::Random,
        service_proxy_name: None,
        maglev_table_size: 251,
    }
}

/// Service `web`: ClusterIP 10.96.0.10, TCP 80 → "http" (8080) and UDP 53 → "dns" (5353), with
/// `extra` merged into the spec and `status` as given.
fn web(extra: Value, status: Value) -> Service {
    let mut spec = json!({
        "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
        "ports": [
            {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
            {"name": "dns", "port": 53, "targetPort": "dns", "protocol": "UDP"},
        ],
    });
    if let Value::Object(extra) = extra {
        spec.as_object_mut().unwrap().extend(extra);
    }
    serde_json::from_value(json!({"metadata": {"namespace": "default", "name": "web"}, "spec": spec, "status": status}))
        .unwrap()
}

/// One endpoint: (address, node, ready, terminating).
fn endpoints(eps: &[(&str, &str, bool, bool)]) -> EndpointSlice {
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|(addr, node, ready, terminating)| {
            json!({"addresses": [addr], "nodeName": node,
                   "conditions": {"ready": ready, "serving": ready | terminating, "terminating": terminating}})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}],
        "endpoints": endpoints,
    }))
    .unwrap()
}

fn ready(addrs: &[&'static str]) -> Vec<(&'static str, &'static str, bool, bool)> {
    addrs.iter().map(|a| (*a, NODE, true, false)).collect()
}

struct Fixture {
    bpffs: BpffsDir,
    datapath: Datapath,
    ids: LbIds,
    programmed: DesiredLb,
}

impl Fixture {
    /// A loaded datapath with the client on loopback and the local backend pods registered.
    fn new(label: &str) -> Fixture {
        require_root();
        let bpffs = BpffsDir::new(label);
        let datapath = Datapath::load(&bpffs.pin_dir()).expect("load the datapath");
        let f = Fixture { bpffs, datapath, ids: LbIds::new(), programmed: DesiredLb::default() };
        f.endpoint(client(), LOOPBACK, CLIENT_MAC);
        for (addr, ifindex, mac) in LOCAL_BACKENDS {
            f.endpoint(ip(addr), ifindex, mac);
        }
        f
    }

    fn endpoint(&self, addr: Ipv4Addr, ifindex: u32, mac: [u8; 6]) {
        let info =
            EndpointInfo { ifindex, lxc_id: 100, mac, node_mac: lxc_mac(mac), sec_id: 1000, ..Default::default() };
        tables::upsert_endpoint(&self.bpffs.pin_dir(), addr.into(), &info).unwrap();
    }

    /// Runs the services core over `service` + `slice` and programs the result, removing the rows
    /// of the previous state that are gone (as the map manager would).
    fn services(&mut self, service: Service, slice: EndpointSlice) -> DesiredLb {
        let (services, slices) = (vec![service], vec![slice]);
        let desired = desired_state(
            &Inputs { services: &services, endpoint_slices: &slices, ..Default::default() },
            &cfg(),
            &mut self.ids,
        );
        testing::lb::replace(&self.bpffs.pin_dir(), &self.programmed, &desired);
        self.programmed = desired.clone();
        desired
    }

    fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run_prog(FROM_CONTAINER, frame)
    }

    fn run_prog(&self, program: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        let out = run_tc(self.datapath.program(program).unwrap(), frame).expect("test_run");
        (out.retval, out.data)
    }

    fn drops(&self) -> Vec<(u32, u64)> {
        tables::read_drops(&self.bpffs.pin_dir()).unwrap().into_iter().map(|(r, s)| (r, s.packets)).collect()
    }

    fn affinity(&self) -> Vec<(Lb4AffinityKey, LbAffinityValue)> {
        lb_tables::list_affinity(&self.bpffs.pin_dir()).unwrap()
    }

    /// The backend ID of `addr`:8080 (the TCP backend) in the last programmed state.
    fn backend_id(&self, addr: &str) -> u32 {
        let (be, port) = (tables::be(ip(addr)), 8080u16.to_be());
        let row = self.programmed.backends.iter().find(|(_, v)| v.address == be && v.port == port);
        row.map(|(k, _)| k.backend_id).unwrap()
    }

    /// Sends a TCP packet from the client and returns where it went (backend address, port), after
    /// checking the verdict and every checksum.
    fn tcp_from_client(&self, dst: Ipv4Addr, sport: u16, flags: u8) -> (Ipv4Addr, u16) {
        let frame = FrameBuilder::new(CLIENT_MAC, CLIENT_LXC_MAC).ipv4(client(), dst).tcp(sport, 80, flags).build();
        let (verdict, out) = self.run(&frame);
        assert_eq!(verdict, TC_ACT_REDIRECT, "port {sport}: delivered to a local backend");
        destination(&out)
    }
}

/// (destination address, destination port) of a frame whose checksums must all be right.
fn destination(frame: &[u8]) -> (Ipv4Addr, u16) {
    verify_checksums(frame).unwrap_or_else(|e| panic!("checksums after NAT: {e}"));
    let parsed = parse(frame).unwrap();
    let ParsedL3::Ipv4 { dst, .. } = parsed.l3 else { panic!("not IPv4: {:?}", parsed.l3) };
    (dst, parsed.ports().unwrap().1)
}

fn local_backend_ips() -> BTreeSet<Ipv4Addr> {
    LOCAL_BACKENDS.iter().map(|b| ip(b.0)).collect()
}

#[test]
fn the_map_manager_and_the_object_agree_on_the_shape_of_the_lb_maps() {
    use beeline::datapath::manager::{kernel::pinned_spec, maps, MapDef, MapSpec};
    let f = Fixture::new("lb-shapes");
    let pin = f.bpffs.pin_dir();
    fn check<M: MapDef>(pin: &std::path::Path) {
        assert_eq!(pinned_spec(&pin.join(M::NAME), M::NAME).unwrap(), MapSpec::of::<M>(), "{}", M::NAME);
    }
    check::<maps::Lb4Services>(&pin);
    check::<maps::Lb4Backends>(&pin);
    check::<maps::Lb4RevNat>(&pin);
    check::<maps::LbAffinityMatch>(&pin);
    check::<maps::Lb4Maglev>(&pin);
    check::<maps::Lb4SourceRange>(&pin);
}

#[test]
fn tcp_and_udp_to_a_cluster_ip_are_dnated_with_valid_checksums_and_pinned_by_conntrack() {
    let mut f = Fixture::new("lb-dnat");
    f.services(web(json!({}), json!({})), endpoints(&ready(&["10.0.1.3", "10.0.1.4", "10.0.1.5"])));

    let mut chosen = BTreeSet::new();
    for sport in 40000..40048u16 {
        let (dst, dport) = f.tcp_from_client(vip(), sport, tcp_flags::SYN);
        assert!(local_backend_ips().contains(&dst), "port {sport}: {dst} is a backend");
        assert_eq!(dport, 8080, "port {sport}: the target port");
        chosen.insert(dst);
        // Every later packet of the connection goes to the same backend.
        for flags in [tcp_flags::ACK, tcp_flags::ACK | tcp_flags::PSH] {
            assert_eq!(
                f.tcp_from_client(vip(), sport, flags),
                (dst, 8080),
                "port {sport}: conntrack keeps the backend"
            );
        }
    }
    // 48 random choices among 3: all land on one or two with probability below 1e-8.
    assert_eq!(chosen, local_backend_ips(), "new connections spread over every backend");

    // UDP, with a payload the checksum covers, keeps the client's source port and the payload.
    let frame =
        FrameBuilder::new(CLIENT_MAC, CLIENT_LXC_MAC).ipv4(client(), vip()).udp(5000, 53).payload(b"query").build();
    let (verdict, out) = f.run(&frame);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let (dst, dport) = destination(&out);
    assert!(local_backend_ips().contains(&dst) && dport == 5353, "{dst}:{dport}");
    let parsed = parse(&out).unwrap();
    assert_eq!((parsed.ports().unwrap().0, parsed.payload.as_slice()), (5000, &b"query"[..]));

    // Conntrack: a service entry (client → VIP) and a connection entry (client → backend) per flow.
    let ct = lb_tables::list_ct(&f.bpffs.pin_dir()).unwrap();
    let count = |flag| ct.iter().filter(|(t, _)| t.flags == flag).count();
    assert_eq!((count(TUPLE_F_SERVICE), count(TUPLE_F_OUT)), (49, 49));
    assert!(ct.iter().all(|(_, e)| e.rev_nat_index != 0), "every entry knows its frontend");
    assert!(f.drops().is_empty(), "{:?}", f.drops());
}

#[test]
fn replies_from_a_local_backend_come_back_from_the_frontend() {
    let mut f = Fixture::new("lb-revnat");
    f.services(web(json!({}), json!({})), endpoints(&ready(&["10.0.1.3", "10.0.1.4"])));
    let (backend, _) = f.tcp_from_client(vip(), 41000, tcp_flags::SYN);
    let (_, _, backend_mac) = *LOCAL_BACKENDS.iter().find(|b| ip(b.0) == backend).unwrap();

    // The backend answers from its own veth (now the test_run device); the client has its own.
    f.endpoint(client(), CLIENT_IFINDEX, CLIENT_MAC);
    f.endpoint(backend, LOOPBACK, backend_mac);
    let reply = FrameBuilder::new(backend_mac, lxc_mac(backend_mac))
        .ipv4(backend, client())
        .tcp(8080, 41000, tcp_flags::SYN | tcp_flags::ACK)
        .tcp_seq(7, 1)
        .payload(b"hello")
        .build();
    let (verdict, out) = f.run(&reply);
    assert_eq!(verdict, TC_ACT_REDIRECT, "delivered to the client");
    verify_checksums(&out).unwrap();
    let parsed = parse(&out).unwrap();
    assert_eq!(parsed.src_ip(), Some(vip().into()), "the source is the ClusterIP again");
    assert_eq!(parsed.dst_ip(), Some(client().into()));
    assert_eq!(parsed.ports(), Some((80, 41000)), "and the service port");
    assert_eq!(parsed.dst_mac, CLIENT_MAC);
    assert!(matches!(parsed.l4, Some(ParsedL4::Tcp { seq: 7, ack: 1, .. })));
    assert_eq!(parsed.payload, b"hello");

    // Traffic from the backend that belongs to no balanced connection is left alone.
    let unrelated = FrameBuilder::new(backend_mac, lxc_mac(backend_mac))
        .ipv4(backend, client())
        .tcp(8080, 41001, tcp_flags::ACK)
        .build();
    let (_, out) = f.run(&unrelated);
    assert_eq!(parse(&out).unwrap().src_ip(), Some(backend.into()));
    assert!(f.drops().is_empty(), "{:?}", f.drops());
}

/// Native routing: the reply of a backend on another node arrives on the uplink (`from_netdev`),
/// not from the overlay, and must get the frontend back there too.
#[test]
fn replies_from_a_remote_backend_on_the_uplink_come_back_from_the_frontend() {
    let mut f = Fixture::new("lb-revnat-netdev");
    let remote = ip("10.0.2.3");
    f.services(web(json!({}), json!({})), endpoints(&ready(&["10.0.2.3"])));
    let syn =
        FrameBuilder::new(CLIENT_MAC, CLIENT_LXC_MAC).ipv4(client(), vip()).tcp(41000, 80, tcp_flags::SYN).build();
    let (_, out) = f.run(&syn);
    assert_eq!(destination(&out), (remote, 8080), "DNATed to the remote backend");

    f.endpoint(client(), CLIENT_IFINDEX, CLIENT_MAC);
    let reply = FrameBuilder::new([0x0e; 6], [0x0f; 6])
        .ipv4(remote, client())
        .tcp(8080, 41000, tcp_flags::SYN | tcp_flags::ACK)
        .build();
    let out = run_tc(f.datapath.program(FROM_NETDEV).unwrap(), &reply).expect("test_run");
    assert_eq!(out.retval, TC_ACT_REDIRECT, "delivered to the client");
    verify_checksums(&out.data).unwrap();
    let parsed = parse(&out.data).unwrap();
    assert_eq!(parsed.src_ip(), Some(vip().into()), "the source is the ClusterIP again");
    assert_eq!(parsed.ports(), Some((80, 41000)));
    assert!(f.drops().is_empty(), "{:?}", f.drops());
}

#[test]
fn established_flows_keep_a_terminating_backend_while_new_flows_avoid_it() {
    let mut f = Fixture::new("lb-terminating");
    f.services(web(json!({}), json!({})), endpoints(&ready(&["10.0.1.3", "10.0.1.4"])));
    // Open connections until one sits on 10.0.1.4 (bounded: 64 tries at 1/2 each).
    let sport = (42000..42064u16)
        .find(|p| f.tcp_from_client(vip(), *p, tcp_flags::SYN).0 == ip("10.0.1.4"))
        .expect("a connection on 10.0.1.4");

    // 10.0.1.4 starts terminating (ready=false, serving, terminating) while 10.0.1.3 is ready.
    let desired = f.services(
        web(json!({}), json!({})),
        endpoints(&[("10.0.1.3", NODE, true, false), ("10.0.1.4", NODE, false, true)]),
    );
    let master = desired.services.iter().find(|(k, _)| k.backend_slot == 0 && k.dport == 80u16.to_be()).unwrap().1;
    assert_eq!((master.count, master.qcount), (1, 1), "one active slot, one kept for existing flows");

    assert_eq!(f.tcp_from_client(vip(), sport, tcp_flags::ACK).0, ip("10.0.1.4"), "the established flow stays");
    for p in 43000..43020u16 {
        assert_eq!(
            f.tcp_from_client(vip(), p, tcp_flags::SYN).0,
            ip("10.0.1.3"),
            "new flow {p} avoids the terminating backend"
        );
    }

    // Once the backend is gone altogether, its flow is balanced afresh instead of black-holed.
    f.services(web(json!({}), json!({})), endpoints(&ready(&["10.0.1.3"])));
    assert_eq!(f.tcp_from_client(vip(), sport, tcp_flags::ACK).0, ip("10.0.1.3"));
    assert!(f.drops().is_empty(), "{:?}", f.drops());
}

#[test]
fn a_service_without_backends_is_answered_with_icmp_port_unreachable() {
    let mut f = Fixture::new("lb-reject");
    f.services(web(json!({}), json!({})), endpoints(&[]));
    let frame =
        FrameBuilder::new(CLIENT_MAC, CLIENT_LXC_MAC).ipv4(client(), vip()).tcp(44000, 80, tcp_flags::SYN).build();
    let (verdict, out) = f.run(&frame);
    assert_eq!(verdict, TC_ACT_REDIRECT, "the reply goes back out of the client's veth");
    verify_checksums(&out).unwrap();
    let parsed = parse(&out).unwrap();
    assert_eq!((parsed.dst_mac, parsed.src_mac), (CLIENT_MAC, CLIENT_LXC_MAC));
    assert_eq!(parsed.src_ip(), Some(vip().into()), "from the service address");
    assert_eq!(parsed.dst_ip(), Some(client().into()));
    assert!(matches!(parsed.l4, Some(ParsedL4::Icmp { ty: 3, code: 3, .. })), "port unreachable: {:?}", parsed.l4);
    // The quote: the original IPv4 header and the first 8 bytes of TCP (the ports).
    let quote = &parsed.payload;
    assert_eq!(quote.len(), 28);
    assert_eq!(&quote[12..20], &[10, 0, 1, 2, 10, 96, 0, 10], "original source and destination");
    assert_eq!(&quote[20..24], &[0xab, 0xe0, 0, 80], "original ports 44000 → 80");
    assert_eq!(f.drops(), vec![(drop_reason::NO_SERVICE, 1)]);

    // UDP gets the same answer.
    let frame = FrameBuilder::new(CLIENT_MAC, CLIENT_LXC_MAC).ipv4(client(), vip()).udp(5000, 53).build();
    let (verdict, out) = f.run(&frame);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert!(matches!(parse(&out).unwrap().l4, Some(ParsedL4::Icmp { ty: 3, code: 3, .. })));
}

#[test]
fn client_ip_affinity_sticks_expires_and_follows_the_backend_away() {
    let mut f = Fixture::new("lb-affinity");
    let spec = json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 30}}});
    f.services(web(spec.clone(), json!({})), endpoints(&ready(&["10.0.1.3", "10.0.1.4", "10.0.1.5"])));

    let (first, _) = f.tcp_from_client(vip(), 45000, tcp_flags::SYN);
    for p in 45001..45021u16 {
        assert_eq!(f.tcp_from_client(vip(), p, tcp_flags::SYN).0, first, "flow {p}: same backend as the first");
    }
    let tcp_entry = |f: &Fixture| {
        let rows = f.affinity();
        let http_rev_nat = rows.iter().map(|(k, _)| k.rev_nat_id).min().unwrap();
        *rows.iter().find(|(k, _)| k.rev_nat_id == http_rev_nat && k.client_ip == tables::be(client())).unwrap()
    };
    let (key, value) = tcp_entry(&f);
    assert_eq!(value.backend_id, f.backend_id(&first.to_string()));

    // Age the entry past the timeout: the next connection writes a fresh one.
    let now = lb_tables::monotonic_secs();
    let stale = LbAffinityValue { last_used: now - 100, ..value };
    lb_tables::upsert_affinity(&f.bpffs.pin_dir(), &key, &stale).unwrap();
    f.tcp_from_client(vip(), 45100, tcp_flags::SYN);
    let (_, fresh) = tcp_entry(&f);
    assert!(fresh.last_used >= now, "expired entry replaced: last_used {} (now {now})", fresh.last_used);

    // The remembered backend leaves: new connections go elsewhere and the entry follows.
    let remembered = fresh.backend_id;
    let remaining: Vec<&'static str> =
        ["10.0.1.3", "10.0.1.4", "10.0.1.5"].into_iter().filter(|a| f.backend_id(a) != remembered).collect();
    f.services(web(spec, json!({})), endpoints(&ready(&remaining)));
    let (moved, _) = f.tcp_from_client(vip(), 45200, tcp_flags::SYN);
    assert!(remaining.contains(&moved.to_string().as_str()), "{moved}");
    assert_eq!(tcp_entry(&f).1.backend_id, f.backend_id(&moved.to_string()));
    for p in 45201..45211u16 {
        assert_eq!(f.tcp_from_client(vip(), p, tcp_flags::SYN).0, moved, "flow {p} sticks to the new backend");
    }
}

#[test]
fn internal_traffic_policy_local_uses_only_this_nodes_backends() {
    let mut f = Fixture::new("lb-itp");
    let spec = json!({"internalTrafficPolicy": "Local"});
    let eps =
        [("10.0.1.3", NODE, true, false), ("10.0.2.7", "node-b", true, false), ("10.0.2.8", "node-b", true, false)];
    f.services(web(spec.clone(), json!({})), endpoints(&eps));
    for p in 46000..46020u16 {
        assert_eq!(f.tcp_from_client(vip(), p, tcp_flags::SYN).0, ip("10.0.1.3"), "flow {p}: the node-local backend");
    }
    // Without a local backend the ClusterIP has none at all: rejected, not sent to another node.
    f.services(web(spec, json!({})), endpoints(&eps[1..]));
    let frame =
        FrameBuilder::new(CLIENT_MAC, CLIENT_LXC_MAC).ipv4(client(), vip()).tcp(46100, 80, tcp_flags::SYN).build();
    let (verdict, out) = f.run(&frame);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert!(matches!(parse(&out).unwrap().l4, Some(ParsedL4::Icmp { ty: 3, code: 3, .. })));
}

/// A LoadBalancer Service (ingress 172.18.0.100) with `extra` in its spec.
fn load_balancer(extra: Value) -> Service {
    let mut spec = json!({"type": "LoadBalancer"});
    spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    web(spec, json!({"loadBalancer": {"ingress": [{"ip": "172.18.0.100"}]}}))
}

fn vxlan_config() -> DatapathConfig {
    DatapathConfig {
        router_ip: tables::be(ip("10.0.1.1")),
        node_ip: tables::be(ip("192.168.0.1")),
        tunnel_ifindex: 77,
        tunnel_proto: TUNNEL_VXLAN,
        pod_cidr_prefix_len: 24,
        ..Default::default()
    }
}

#[test]
fn pods_reach_an_external_traffic_policy_local_frontend_through_its_internal_scope() {
    let mut f = Fixture::new("lb-scopes");
    let pin = f.bpffs.pin_dir();
    tables::write_config(&pin, &vxlan_config()).unwrap();
    tables::upsert_tunnel(&pin, "10.0.2.0/24".parse().unwrap(), ip("192.168.0.2")).unwrap();
    // eTP=Local with only a remote backend: the external scope has no backend on this node, but a
    // pod is in-cluster traffic and uses the internal scope (iTP=Cluster): the remote backend.
    let desired = f.services(
        load_balancer(json!({"externalTrafficPolicy": "Local"})),
        endpoints(&[("10.0.2.7", "node-b", true, false)]),
    );
    let ext = desired
        .frontends
        .iter()
        .find(|fe| fe.addr.ip == lb_ip() && fe.addr.port == 80 && fe.addr.scope.number() == 0)
        .unwrap();
    assert_eq!(ext.count, 0, "no local backend in the external scope");
    let frame =
        FrameBuilder::new(CLIENT_MAC, CLIENT_LXC_MAC).ipv4(client(), lb_ip()).tcp(47000, 80, tcp_flags::SYN).build();
    let (verdict, out) = f.run(&frame);
    assert_eq!(verdict, TC_ACT_REDIRECT, "into the tunnel");
    assert_eq!(destination(&out), (ip("10.0.2.7"), 8080));
}

#[test]
fn load_balancer_source_ranges_admit_listed_clients_only() {
    let mut f = Fixture::new("lb-ranges");
    let eps = endpoints(&ready(&["10.0.1.3"]));
    f.services(load_balancer(json!({"loadBalancerSourceRanges": ["10.0.1.0/30"]})), eps.clone());
    assert_eq!(f.tcp_from_client(lb_ip(), 48000, tcp_flags::SYN), (ip("10.0.1.3"), 8080), "10.0.1.2 is in 10.0.1.0/30");

    f.services(load_balancer(json!({"loadBalancerSourceRanges": ["192.0.2.0/24"]})), eps);
    let frame =
        FrameBuilder::new(CLIENT_MAC, CLIENT_LXC_MAC).ipv4(client(), lb_ip()).tcp(48001, 80, tcp_flags::SYN).build();
    let (verdict, _) = f.run(&frame);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(f.drops(), vec![(drop_reason::NOT_IN_SRC_RANGE, 1)]);
    // The ClusterIP of the same Service is not subject to the ranges (LoadBalancer frontends only).
    assert_eq!(f.tcp_from_client(vip(), 48002, tcp_flags::SYN), (ip("10.0.1.3"), 8080));
}

#[test]
fn maglev_services_pick_backends_from_their_lookup_table() {
    let mut f = Fixture::new("lb-maglev");
    let mut svc = load_balancer(json!({}));
    svc.metadata.annotations = Some([("service.cilium.io/lb-algorithm".to_string(), "maglev".to_string())].into());
    let desired = f.services(svc, endpoints(&ready(&["10.0.1.3", "10.0.1.4", "10.0.1.5"])));
    let lb_id = desired.frontends.iter().find(|fe| fe.addr.ip == lb_ip() && fe.addr.port == 80).unwrap().id;
    let table = &desired.maglev[&lb_id];
    assert_eq!(table.len(), 251, "the configured table size");
    lb_tables::write_lb_config(&f.bpffs.pin_dir(), &LbConfig { algorithm: 0, maglev_table_size: 251 }).unwrap();

    // Point every entry of the table at one backend: if the datapath consults the table, every new
    // flow lands there although the service has three active slots.
    let only = f.backend_id("10.0.1.4");
    let mut maglev = KernelMap::open_pinned::<Lb4Maglev>(&f.bpffs.pin_dir()).unwrap();
    for index in 0..table.len() as u32 {
        maglev.upsert(&LbMaglevKey { rev_nat_id: lb_id, pad: 0, index }, &only).unwrap();
    }
    for p in 49000..49030u16 {
        assert_eq!(f.tcp_from_client(lb_ip(), p, tcp_flags::SYN).0, ip("10.0.1.4"), "flow {p}");
    }
    // The ClusterIP of the same Service has no table (Cilium builds none for ClusterIPs): random.
    let chosen: BTreeSet<Ipv4Addr> = (49100..49148u16).map(|p| f.tcp_from_client(vip(), p, tcp_flags::SYN).0).collect();
    assert_eq!(chosen, local_backend_ips());
}

#[test]
fn closing_tcp_connections_get_the_short_lifetime() {
    let mut f = Fixture::new("lb-ct-close");
    f.services(web(json!({}), json!({})), endpoints(&ready(&["10.0.1.3"])));
    let backend = ip("10.0.1.3");
    let backend_mac = LOCAL_BACKENDS[0].2;
    f.tcp_from_client(vip(), 50000, tcp_flags::SYN);
    f.tcp_from_client(vip(), 50000, tcp_flags::ACK);
    let connection = |f: &Fixture| {
        let ct = lb_tables::list_ct(&f.bpffs.pin_dir()).unwrap();
        ct.into_iter().find(|(t, _)| t.flags == TUPLE_F_OUT).unwrap().1
    };
    let now = lb_tables::monotonic_secs() as i64;
    let established = i64::from(connection(&f).lifetime) - now;
    assert!(established > 3600, "established TCP lives for hours: {established}s");

    f.tcp_from_client(vip(), 50000, tcp_flags::FIN | tcp_flags::ACK);
    f.endpoint(client(), CLIENT_IFINDEX, CLIENT_MAC);
    f.endpoint(backend, LOOPBACK, backend_mac);
    let fin = FrameBuilder::new(backend_mac, lxc_mac(backend_mac))
        .ipv4(backend, client())
        .tcp(8080, 50000, tcp_flags::FIN | tcp_flags::ACK)
        .build();
    assert_eq!(f.run(&fin).0, TC_ACT_REDIRECT);
    let closing = connection(&f);
    assert_eq!(
        closing.flags & (ct_flags::RX_CLOSING | ct_flags::TX_CLOSING),
        ct_flags::RX_CLOSING | ct_flags::TX_CLOSING
    );
    let left = i64::from(closing.lifetime) - lb_tables::monotonic_secs() as i64;
    assert!((0..=CT_CLOSE_TIMEOUT as i64).contains(&left), "closed connections expire within 10 s: {left}s");
}

// ----- from outside the cluster: from_netdev on the uplink ---------------------------------------

fn node_ip() -> Ipv4Addr {
    ip("192.168.0.1")
}
/// A client outside the cluster (routed via the uplink's peer in [`UplinkNs`]).
fn outside() -> Ipv4Addr {
    ip("172.18.255.254")
}
const NODE_PORT: u16 = 30080;
const OUTSIDE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xff, 0xfe];
const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// A namespace whose FIB the test owns: `eth0` 192.168.0.1/24 (the node IP) with the router
/// 192.168.0.254 towards the outside client, remote pod CIDR 10.0.2.0/24 via node 192.168.0.2,
/// forwarding on. Removed on drop.
struct UplinkNs {
    _topo: Topology,
    ns: NetNs,
}

impl UplinkNs {
    fn new(label: &str) -> UplinkNs {
        let mut topo = Topology::new(label);
        let ns = topo.namespace("node").unwrap();
        let peer = topo.namespace("router").unwrap();
        topo.veth((&ns, "eth0"), (&peer, "eth0")).unwrap();
        topo.address(&ns, "eth0", "192.168.0.1/24").unwrap();
        topo.address(&peer, "eth0", "192.168.0.254/24").unwrap();
        topo.sysctl(&ns, "net.ipv4.ip_forward", "1").unwrap();
        topo.route(&ns, &["172.18.0.0/16", "via", "192.168.0.254"]).unwrap();
        topo.route(&ns, &["10.0.2.0/24", "via", "192.168.0.2"]).unwrap();
        let router =
            ["-n", ns.name(), "neigh", "replace", "192.168.0.254", "lladdr", "02:00:00:00:00:fe", "dev", "eth0"];
        beeline::datapath::netns::run_ip(&router).unwrap();
        UplinkNs { _topo: topo, ns }
    }

    fn run(&self, f: &Fixture, program: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        self.ns.run(|| f.run_prog(program, frame)).unwrap()
    }
}

fn uplink_config(tunnel: bool) -> DatapathConfig {
    let tunnel_proto = if tunnel { TUNNEL_VXLAN } else { TUNNEL_NONE };
    DatapathConfig { node_ip: tables::be(node_ip()), tunnel_proto, ..vxlan_config() }
}

/// A NodePort Service (TCP 80 → nodePort 30080 → "http") with `extra` in its spec.
fn node_port(extra: Value) -> Service {
    let mut svc = web(json!({"type": "NodePort"}), json!({}));
    let spec = svc.spec.as_mut().unwrap();
    spec.ports.as_mut().unwrap()[0].node_port = Some(i32::from(NODE_PORT));
    let mut value = serde_json::to_value(&svc).unwrap();
    value["spec"].as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    serde_json::from_value(value).unwrap()
}

/// A TCP frame from the outside client, as it arrives on the uplink.
fn from_outside(dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    FrameBuilder::new(OUTSIDE_MAC, UPLINK_MAC).ipv4(outside(), dst).tcp(sport, dport, flags).build()
}

/// (source, source port, destination, destination port) of a frame with valid checksums.
fn four_tuple(frame: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
    verify_checksums(frame).unwrap_or_else(|e| panic!("checksums after NAT: {e}"));
    let parsed = parse(frame).unwrap();
    let ParsedL3::Ipv4 { src, dst, .. } = parsed.l3 else { panic!("not IPv4: {:?}", parsed.l3) };
    let (sport, dport) = parsed.ports().unwrap();
    (src, sport, dst, dport)
}

#[test]
fn node_port_from_outside_to_a_local_backend_keeps_the_client_and_answers_from_the_node_port() {
    let mut f = Fixture::new("np-local");
    tables::write_config(&f.bpffs.pin_dir(), &uplink_config(true)).unwrap();
    f.services(node_port(json!({})), endpoints(&ready(&["10.0.1.3"])));
    let ns = UplinkNs::new("np-local");

    let (verdict, out) = ns.run(&f, FROM_NETDEV, &from_outside(node_ip(), 51000, NODE_PORT, tcp_flags::SYN));
    assert_eq!(verdict, TC_ACT_REDIRECT, "delivered to the local backend");
    assert_eq!(four_tuple(&out), (outside(), 51000, ip("10.0.1.3"), 8080), "DNAT only: the client is kept");
    assert_eq!(parse(&out).unwrap().dst_mac, LOCAL_BACKENDS[0].2);

    // The backend's reply leaves its veth: source back to node IP:nodePort, routed to the client by
    // the FIB (the stack would drop a packet from its own address arriving on a veth).
    f.endpoint(ip("10.0.1.3"), LOOPBACK, LOCAL_BACKENDS[0].2);
    let reply = FrameBuilder::new(LOCAL_BACKENDS[0].2, lxc_mac(LOCAL_BACKENDS[0].2))
        .ipv4(ip("10.0.1.3"), outside())
        .tcp(8080, 51000, tcp_flags::SYN | tcp_flags::ACK)
        .build();
    let (verdict, out) = ns.run(&f, FROM_CONTAINER, &reply);
    assert_eq!(verdict, TC_ACT_REDIRECT, "routed out of the uplink");
    assert_eq!(four_tuple(&out), (node_ip(), NODE_PORT, outside(), 51000));
    assert_eq!(parse(&out).unwrap().dst_mac, [0x02, 0, 0, 0, 0, 0xfe], "to the router's MAC, by the FIB");

    // A pod on this node using the node port: its reply goes straight back to the pod, not to
    // the FIB (which knows no route to a single local pod).
    f.endpoint(ip("10.0.1.3"), 4243, LOCAL_BACKENDS[0].2);
    f.endpoint(client(), LOOPBACK, CLIENT_MAC);
    let request = FrameBuilder::new(CLIENT_MAC, CLIENT_LXC_MAC)
        .ipv4(client(), node_ip())
        .tcp(51001, NODE_PORT, tcp_flags::SYN)
        .build();
    let (verdict, out) = ns.run(&f, FROM_CONTAINER, &request);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(four_tuple(&out), (client(), 51001, ip("10.0.1.3"), 8080));
    f.endpoint(client(), CLIENT_IFINDEX, CLIENT_MAC);
    f.endpoint(ip("10.0.1.3"), LOOPBACK, LOCAL_BACKENDS[0].2);
    let reply = FrameBuilder::new(LOCAL_BACKENDS[0].2, lxc_mac(LOCAL_BACKENDS[0].2))
        .ipv4(ip("10.0.1.3"), client())
        .tcp(8080, 51001, tcp_flags::SYN | tcp_flags::ACK)
        .build();
    let (verdict, out) = ns.run(&f, FROM_CONTAINER, &reply);
    assert_eq!(verdict, TC_ACT_REDIRECT, "delivered to the client pod");
    assert_eq!(four_tuple(&out), (node_ip(), NODE_PORT, client(), 51001));
    assert_eq!(parse(&out).unwrap().dst_mac, CLIENT_MAC);
    assert!(f.drops().is_empty(), "{:?}", f.drops());
}

#[test]
fn node_port_to_a_remote_backend_is_snated_to_the_node_ip_and_the_reply_is_translated_back() {
    for tunnel in [true, false] {
        let mut f = Fixture::new("np-remote");
        let pin = f.bpffs.pin_dir();
        tables::write_config(&pin, &uplink_config(tunnel)).unwrap();
        tables::upsert_tunnel(&pin, "10.0.2.0/24".parse().unwrap(), ip("192.168.0.2")).unwrap();
        f.services(node_port(json!({})), endpoints(&[("10.0.2.7", "node-b", true, false)]));
        let ns = UplinkNs::new("np-remote");

        let mut seen = None;
        for flags in [tcp_flags::SYN, tcp_flags::ACK] {
            let (verdict, out) = ns.run(&f, FROM_NETDEV, &from_outside(node_ip(), 52000, NODE_PORT, flags));
            assert_eq!(verdict, TC_ACT_REDIRECT, "tunnel={tunnel}: into the tunnel / routed");
            let (src, sport, dst, dport) = four_tuple(&out);
            assert_eq!((src, dst, dport), (node_ip(), ip("10.0.2.7"), 8080), "tunnel={tunnel}: DNAT + SNAT");
            assert!(sport >= 32768, "tunnel={tunnel}: a NAT port above the NodePort range: {sport}");
            assert_eq!(*seen.get_or_insert(sport), sport, "tunnel={tunnel}: one mapping per flow");
        }
        let nat_port = seen.unwrap();

        // The backend's reply arrives on the uplink, to the node IP and the NAT port.
        let reply = FrameBuilder::new([0x02, 0, 0, 0, 0, 2], UPLINK_MAC)
            .ipv4(ip("10.0.2.7"), node_ip())
            .tcp(8080, nat_port, tcp_flags::SYN | tcp_flags::ACK)
            .payload(b"hi")
            .build();
        let (verdict, out) = ns.run(&f, FROM_NETDEV, &reply);
        assert_eq!(verdict, TC_ACT_REDIRECT, "tunnel={tunnel}: back out to the client");
        assert_eq!(
            four_tuple(&out),
            (node_ip(), NODE_PORT, outside(), 52000),
            "tunnel={tunnel}: rev-SNAT then rev-DNAT"
        );
        assert_eq!(parse(&out).unwrap().payload, b"hi");
        assert!(f.drops().is_empty(), "tunnel={tunnel}: {:?}", f.drops());
    }
}

#[test]
fn external_traffic_policy_local_drops_without_a_local_backend_and_keeps_the_client_with_one() {
    let mut f = Fixture::new("np-etp-local");
    tables::write_config(&f.bpffs.pin_dir(), &uplink_config(true)).unwrap();
    let spec = json!({"externalTrafficPolicy": "Local"});
    f.services(node_port(spec.clone()), endpoints(&[("10.0.2.7", "node-b", true, false)]));
    let (verdict, _) = f.run_prog(FROM_NETDEV, &from_outside(node_ip(), 53000, NODE_PORT, tcp_flags::SYN));
    assert_eq!(verdict, TC_ACT_SHOT, "no local backend: dropped, not forwarded and not answered");
    assert_eq!(f.drops(), vec![(drop_reason::NO_SERVICE, 1)]);

    f.services(node_port(spec), endpoints(&[("10.0.2.7", "node-b", true, false), ("10.0.1.4", NODE, true, false)]));
    for sport in 53001..53011u16 {
        let (verdict, out) = f.run_prog(FROM_NETDEV, &from_outside(node_ip(), sport, NODE_PORT, tcp_flags::SYN));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(four_tuple(&out), (outside(), sport, ip("10.0.1.4"), 8080), "only the local backend, source kept");
    }
}

#[test]
fn from_outside_a_cluster_ip_is_dropped_source_ranges_apply_and_no_backends_are_rejected() {
    let mut f = Fixture::new("np-edges");
    tables::write_config(&f.bpffs.pin_dir(), &uplink_config(true)).unwrap();
    let eps = endpoints(&ready(&["10.0.1.3"]));
    f.services(load_balancer(json!({"loadBalancerSourceRanges": ["172.18.0.0/16"]})), eps.clone());

    // The ClusterIP of the Service is not reachable from outside (Cilium: DROP_IS_CLUSTER_IP).
    let (verdict, _) = f.run_prog(FROM_NETDEV, &from_outside(vip(), 54000, 80, tcp_flags::SYN));
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(f.drops(), vec![(drop_reason::IS_CLUSTER_IP, 1)]);
    // The LoadBalancer address admits the listed range.
    let (verdict, out) = f.run_prog(FROM_NETDEV, &from_outside(lb_ip(), 54001, 80, tcp_flags::SYN));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(four_tuple(&out), (outside(), 54001, ip("10.0.1.3"), 8080));

    f.services(load_balancer(json!({"loadBalancerSourceRanges": ["10.0.0.0/8"]})), eps);
    let (verdict, _) = f.run_prog(FROM_NETDEV, &from_outside(lb_ip(), 54002, 80, tcp_flags::SYN));
    assert_eq!(verdict, TC_ACT_SHOT);
    assert!(f.drops().contains(&(drop_reason::NOT_IN_SRC_RANGE, 1)), "{:?}", f.drops());

    // An externalIP without backends: ICMP port unreachable back out of the uplink.
    f.services(web(json!({"externalIPs": ["172.18.0.200"]}), json!({})), endpoints(&[]));
    let (verdict, out) = f.run_prog(FROM_NETDEV, &from_outside(ip("172.18.0.200"), 54003, 80, tcp_flags::SYN));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let parsed = parse(&out).unwrap();
    assert_eq!((parsed.dst_mac, parsed.dst_ip()), (OUTSIDE_MAC, Some(outside().into())));
    assert!(matches!(parsed.l4, Some(ParsedL4::Icmp { ty: 3, code: 3, .. })), "{:?}", parsed.l4);

    // Traffic to the node that is no frontend (its own services, the tunnel) is left alone.
    let other = from_outside(node_ip(), 54004, 22, tcp_flags::SYN);
    assert_eq!(f.run_prog(FROM_NETDEV, &other), (0, other));
}

/// A LoadBalancer address belongs to its Services only: from outside, a port no Service declares
/// on it is dropped (Cilium's wildcard entry), while a declared port is balanced and addresses that
/// are no LoadBalancer address (an externalIP's other ports) are left to the stack.
#[test]
fn from_outside_undeclared_ports_of_a_load_balancer_address_are_dropped() {
    let mut f = Fixture::new("np-wildcard");
    tables::write_config(&f.bpffs.pin_dir(), &uplink_config(true)).unwrap();
    f.services(load_balancer(json!({"externalIPs": ["172.18.0.200"]})), endpoints(&ready(&["10.0.1.3"])));

    let (verdict, out) = f.run_prog(FROM_NETDEV, &from_outside(lb_ip(), 54010, 80, tcp_flags::SYN));
    assert_eq!(verdict, TC_ACT_REDIRECT, "the declared port is balanced");
    assert_eq!(four_tuple(&out), (outside(), 54010, ip("10.0.1.3"), 8080));
    assert!(f.drops().is_empty(), "{:?}", f.drops());

    let (verdict, _) = f.run_prog(FROM_NETDEV, &from_outside(lb_ip(), 54011, 22, tcp_flags::SYN));
    assert_eq!(verdict, TC_ACT_SHOT, "an undeclared port of the LoadBalancer address");
    assert_eq!(f.drops(), vec![(drop_reason::NO_SERVICE, 1)]);

    let other = from_outside(ip("172.18.0.200"), 54012, 22, tcp_flags::SYN);
    assert_eq!(f.run_prog(FROM_NETDEV, &other), (0, other), "externalIPs get no wildcard");
}
